//! Long lists come in pages: `?offset=N&limit=M` on `GET /api/v1/status`,
//! `/api/v1/vms` and `/api/v1/protections`. Each answer says where it starts (`offset`)
//! and where the next page starts (`next_offset`, absent on the last page); the rows
//! are in a stable order, so a client that follows `next_offset` to its end reads every
//! row once (unless rows come or go between two pages).

/// A page of a long list: `?offset=N&limit=M`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// The first row (0 first).
    #[serde(default)]
    pub offset: usize,
    /// Rows in the page: 500 unless asked, at most 1,000.
    pub limit: Option<usize>,
}

impl Page {
    pub const DEFAULT_LIMIT: usize = 500;
    pub const MAX_LIMIT: usize = 1000;

    /// Cuts `rows` to this page; the next page's offset when there are more.
    pub fn cut<T>(&self, rows: &mut Vec<T>) -> Option<usize> {
        let limit = self
            .limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT);
        let total = rows.len();
        rows.drain(..self.offset.min(total));
        rows.truncate(limit);
        let end = self.offset + rows.len();
        (end < total).then_some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::Page;

    #[test]
    fn pages_cut_in_order_and_say_where_the_next_starts() {
        let page = |offset, limit| Page { offset, limit };
        let cut = |p: Page| {
            let mut rows: Vec<u32> = (0..10).collect();
            let next = p.cut(&mut rows);
            (rows, next)
        };
        assert_eq!(cut(page(0, Some(4))), (vec![0, 1, 2, 3], Some(4)));
        assert_eq!(cut(page(8, Some(4))), (vec![8, 9], None));
        assert_eq!(cut(page(4, Some(6))), (vec![4, 5, 6, 7, 8, 9], None));
        assert_eq!(cut(page(20, None)), (vec![], None), "past the end: empty");
        assert_eq!(cut(page(0, Some(0))).0.len(), 1, "at least one row");
        let mut many: Vec<u32> = (0..5000).collect();
        assert_eq!(
            page(0, Some(1_000_000)).cut(&mut many),
            Some(Page::MAX_LIMIT)
        );
        let mut many: Vec<u32> = (0..5000).collect();
        assert_eq!(page(0, None).cut(&mut many), Some(Page::DEFAULT_LIMIT));
    }
}
