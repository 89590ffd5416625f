//! The dashboard in headless Chromium with no guest: page after page loads at once.
//!
//! Every page holds an event stream open. A browser keeps at most six connections to an
//! HTTP/1.1 server, and streams of pages already left (or kept in the back-forward cache)
//! used to hold theirs: the seventh page then waited a minute to load. Now the page closes
//! its stream when left, and over TLS the server speaks HTTP/2, where streams share one
//! connection. Both are checked: plain HTTP (loopback) and TLS.

mod common;

use std::time::{Duration, Instant};

use common::dashboard::{check_page, log_in, PASSWORD};
use common::start_server_with;
use lifeboat_testkit::browser::{artifacts_dir, Browser};

/// Far below the minute a stalled page waited, far above a page load on a busy machine.
const PAGE_LIMIT: Duration = Duration::from_secs(15);

async fn pages_keep_loading(tls: bool) {
    std::env::set_var("LIFEBOAT_ADMIN_PASSWORD", PASSWORD);
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server_with(&tmp.path().join("server"), None, tls);
    let name = if tls {
        "dashboard_tls"
    } else {
        "dashboard_http"
    };
    let b = Browser::start(&artifacts_dir(name)).await.unwrap();
    log_in(&b, &server.url).await;
    // Three rounds: well past six pages, each with its stream.
    for round in 0..3 {
        for (page, _) in lifeboat_server::web::layout::NAV {
            let start = Instant::now();
            b.goto(&format!("{}{page}", server.url)).await.unwrap();
            b.wait_for("h1", PAGE_LIMIT).await.unwrap();
            let took = start.elapsed();
            assert!(
                took < PAGE_LIMIT,
                "{page} (round {round}) took {took:?} to load"
            );
            if round == 0 && tls {
                check_page(&b, &format!("empty{}", page.replace('/', "-"))).await;
            }
        }
    }
    // The stream of the page now open delivers.
    b.wait_for("body[data-live=on]", PAGE_LIMIT).await.unwrap();
    let protocol = b
        .execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol;",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        protocol,
        if tls { "h2" } else { "http/1.1" },
        "the protocol the page came over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_keep_loading_over_plain_http() {
    pages_keep_loading(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_keep_loading_over_tls_with_http2() {
    pages_keep_loading(true).await;
}
