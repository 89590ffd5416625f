//! The dashboard's long tables a page at a time (`?page=N`, 1 first): a fleet of 10,000
//! VMs is 100 pages of a few dozen KiB each, not one page of megabytes. Counts and totals
//! on a paged page still cover every row; only the table is cut.

use std::ops::Range;

use maud::{html, Markup};

/// Rows of a paged table.
pub const ROWS: usize = 100;

/// `?page=N` (1 first) of a paged page.
#[derive(serde::Deserialize)]
pub struct PageNumber {
    page: Option<usize>,
}

/// Which of `total` rows the page asked for shows (past the end: the last page).
#[derive(Debug, PartialEq)]
pub struct Paging {
    pub this: usize,
    pub pages: usize,
    pub total: usize,
}

impl Paging {
    pub fn new(total: usize, asked: &PageNumber) -> Paging {
        let pages = total.div_ceil(ROWS).max(1);
        Paging {
            this: asked.page.unwrap_or(1).clamp(1, pages),
            pages,
            total,
        }
    }

    /// The rows this page shows.
    pub fn rows(&self) -> Range<usize> {
        let first = ((self.this - 1) * ROWS).min(self.total);
        first..(first + ROWS).min(self.total)
    }

    /// The page that shows row `i` (a row at the end: the last page).
    pub fn page_of(&self, i: usize) -> usize {
        (i / ROWS + 1).min(self.pages)
    }

    /// "VMs 101–200 of 1234." and links to the previous and next pages of `path`;
    /// nothing when there is one page.
    pub fn nav(&self, path: &str, label: &str) -> Markup {
        let rows = self.rows();
        let href = |n: usize| format!("{path}?page={n}");
        html! {
            @if self.pages > 1 {
                nav class="pages" aria-label=(label) {
                    "VMs " (rows.start + 1) "–" (rows.end) " of " (self.total) ". "
                    @if self.this > 1 { a href=(href(self.this - 1)) rel="prev" { "Previous" } " " }
                    @if self.this < self.pages { a href=(href(self.this + 1)) rel="next" { "Next" } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(total: usize, page: Option<usize>) -> Paging {
        Paging::new(total, &PageNumber { page })
    }

    #[test]
    fn pages_hold_a_hundred_rows_and_clamp_the_page_asked() {
        assert_eq!(at(1234, None).rows(), 0..100);
        assert_eq!(at(1234, Some(2)).rows(), 100..200);
        assert_eq!(at(1234, Some(13)).rows(), 1200..1234);
        assert_eq!(at(1234, Some(99)).this, 13, "past the end: the last page");
        assert_eq!(at(1234, Some(0)).this, 1);
        assert_eq!(at(0, Some(3)).rows(), 0..0, "no rows: one empty page");
        assert_eq!(at(200, None).pages, 2);
        let p = at(200, None);
        assert_eq!((p.page_of(0), p.page_of(199), p.page_of(200)), (1, 2, 2));
    }

    #[test]
    fn the_nav_links_the_neighbours_only_when_there_are_several_pages() {
        assert_eq!(at(100, None).nav("/x", "Pages").into_string(), "");
        let middle = at(350, Some(2)).nav("/hosts", "Pages of VMs").into_string();
        assert!(middle.contains("VMs 101–200 of 350."), "{middle}");
        assert!(
            middle.contains(r#"href="/hosts?page=1" rel="prev""#),
            "{middle}"
        );
        assert!(
            middle.contains(r#"href="/hosts?page=3" rel="next""#),
            "{middle}"
        );
        let last = at(350, Some(4)).nav("/hosts", "Pages of VMs").into_string();
        assert!(last.contains("VMs 301–350 of 350.") && !last.contains("next"));
    }
}
