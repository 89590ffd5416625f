//! The frame every page shares (head, navigation, logout) and the small pieces pages are
//! made of: state labels, times, ages, sizes.

use axum::http::{Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::api::protection::ProtectionView;
use crate::auth::Session;
use crate::db::ProtectionState;

/// The pages in the navigation, in order: (path, name). A page shows in a user's
/// navigation when their role may open it (`api::access`).
pub const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/hosts", "Hosts & VMs"),
    ("/scan", "Scan & enroll"),
    ("/recovery-site", "Recovery site"),
    ("/operations", "Operations"),
    ("/vaults", "Vaults & policies"),
    ("/tokens", "API tokens"),
    ("/users", "Users"),
    ("/audit", "Audit log"),
];

fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(csrf) = csrf { meta name="csrf-token" content=(csrf); }
            title { (title) " · Lifeboat" }
            link rel="stylesheet" href="/static/style.css";
            script src="/static/app.js" defer {}
        }
    }
}

/// A page without navigation (the login page).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body { (body) }
        }
    }
}

/// A dashboard page: navigation (`current` marked), the title as its heading, `body`.
pub fn page(title: &str, current: &str, session: &Session, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&session.csrf)))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/" { "Lifeboat" }
                    nav aria-label="Main" {
                        ul {
                            @for (path, name) in NAV.iter().filter(|(p, _)| may(session, &Method::GET, p)) {
                                li {
                                    @if *path == current {
                                        a href=(path) aria-current="page" { (name) }
                                    } @else {
                                        a href=(path) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    form method="post" action="/logout" class="logout" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" title={ (session.user) " is " (session.role.with_article()) } { "Log out " (session.user) }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// Whether `session`'s role may make this call (or open this page): what pages ask
/// before offering an action. The server refuses regardless.
pub fn may(session: &Session, method: &Method, route: &str) -> bool {
    crate::api::access::may(session.role, method, route)
}

/// Said where an action would be, to a role that may not take it.
pub fn not_for_role(session: &Session, needed: &str) -> Markup {
    html! {
        p class="muted" { "You are " (session.role.with_article()) ": " (needed) " can act here." }
    }
}

/// A page that says what went wrong on the server's side.
pub fn failure(message: &str) -> Response {
    refused(StatusCode::INTERNAL_SERVER_ERROR, message)
}

pub fn refused(status: StatusCode, message: &str) -> Response {
    let body = html! {
        main id="main" {
            h1 { "Lifeboat" }
            p role="alert" class="error" { (message) }
            p { a href="/" { "Back to the overview" } }
        }
    };
    (status, Html(bare("Error", body).into_string())).into_response()
}

/// The operator's word for a protection's state, as the pages and the live updates show
/// it: Replicating n% (with a progress bar), Protected, Degraded (why), Failed over…
pub fn state_label(v: &ProtectionView, test_running: bool) -> Markup {
    let (class, text) = match v.state {
        ProtectionState::Enabling | ProtectionState::InitialSync => ("busy", "Replicating"),
        ProtectionState::Protected => ("good", "Protected"),
        ProtectionState::Degraded => ("bad", "Degraded"),
        ProtectionState::Disabling => ("busy", "Disabling"),
        ProtectionState::FailingOver => ("busy", "Failing over"),
        ProtectionState::FailedOver => ("moved", "Failed over"),
        ProtectionState::FailingBack => ("busy", "Failing back"),
        ProtectionState::FailedBack => ("moved", "Failed back"),
        ProtectionState::Reprotecting => ("busy", "Reprotecting"),
        ProtectionState::ProtectedReversed => ("good", "Protected at the recovery site"),
        ProtectionState::DegradedReversed => ("bad", "Degraded at the recovery site"),
    };
    let replicating = matches!(
        v.state,
        ProtectionState::Enabling | ProtectionState::InitialSync
    );
    let percent = v
        .sync
        .as_ref()
        .filter(|s| s.bytes_total > 0)
        .map_or(0, |s| (s.bytes_done * 100 / s.bytes_total).clamp(0, 100));
    html! {
        span class={ "state " (class) } {
            (text)
            @if replicating { " " (percent) "%" }
        }
        @if replicating {
            " "
            progress value=(percent) max="100" aria-label={ "Initial sync of " (v.vm) } { (percent) "%" }
        }
        @if test_running { " " span class="state test" { "Test running" } }
        @if v.state.is_degraded() && !v.reason.is_empty() {
            span class="reason" { (v.reason) }
        }
    }
}

/// A table's header row: one column header per name.
pub fn columns(names: &[&str]) -> Markup {
    html! { thead { tr { @for n in names { th scope="col" { (n) } } } } }
}

/// `2026-11-26T17:05:03.123+00:00` as `2026-11-26 17:05:03 UTC`; text that is not a time
/// as it is.
pub fn utc(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// [`utc`], wrapped in `<time>`.
pub fn time(rfc3339: &str) -> Markup {
    html! { time datetime=(rfc3339) { (utc(rfc3339)) } }
}

/// An age in seconds, short: `12 s`, `4 min 10 s`, `3 h 5 min`, `2 d 1 h`.
pub fn age(seconds: Option<f64>) -> String {
    let Some(s) = seconds else {
        return "-".into();
    };
    let s = s.max(0.0).round() as u64;
    match s {
        0..=99 => format!("{s} s"),
        100..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024.0 {
        return format!("{bytes} B");
    }
    let mut v = b / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(4.4)), "4 s");
        assert_eq!(age(Some(250.0)), "4 min 10 s");
        assert_eq!(age(Some(3.0 * 3600.0 + 300.0)), "3 h 5 min");
        assert_eq!(age(Some(2.0 * 86_400.0 + 3600.0)), "2 d 1 h");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_failing_reversed_protection_shows_degraded_at_the_recovery_site_and_why() {
        let mut p = crate::db::Protection {
            vm: "web".into(),
            state: ProtectionState::DegradedReversed,
            reason: "2 failed attempt(s) in a row; last: agent beta unreachable".into(),
            ..Default::default()
        };
        let label = |p: &crate::db::Protection| {
            state_label(&crate::api::protection::view(p, &[]), false).into_string()
        };
        let html = label(&p);
        assert!(html.contains("state bad"), "{html}");
        assert!(html.contains("Degraded at the recovery site"), "{html}");
        assert!(html.contains("agent beta unreachable"), "{html}");
        p.state = ProtectionState::ProtectedReversed;
        let html = label(&p);
        assert!(html.contains("Protected at the recovery site"), "{html}");
        assert!(!html.contains("unreachable"), "{html}");
    }

    #[test]
    fn times_show_in_utc_and_bad_ones_as_given() {
        let t = time("2026-11-26T18:05:03.5+01:00").into_string();
        assert!(t.contains("2026-11-26 17:05:03 UTC"), "{t}");
        assert!(time("soon").into_string().contains(">soon<"));
    }
}
