//! The dashboard's other actions in real headless Chromium, on a VM protected with the
//! CLI: its VM lost, an unplanned failover from an older point picked in the dialog (after a network
//! mapping the server refuses, its message shown as is), a write at the recovery site,
//! commit, reversed protection (reprotect where it runs), failback, reprotect, and disable with its points deleted. The data is checked
//! through the guest's HTTP server: the recovered VM has the point's files and not the
//! later ones; home, after failback, has the recovery site's write and not its own
//! diverged one.

mod common;

use std::time::Duration;

use common::cluster::{boot_guest_with, cluster, lifeboat, run_ok, wait_points};
use common::dashboard::{act, check_page, log_in, submit, LONG, PASSWORD, SHORT};
use common::moves::write_at_recovery_site;
use lifeboat_testkit::browser::{artifacts_dir, Browser};
use lifeboat_testkit::{free_tcp_port, http_get, wait_http};

/// Reads `path` from the guest answering on `port` (once it serves `/f/before`, which
/// every copy has): Some(body), or None on a 404.
async fn file(port: u16, path: &str) -> Option<String> {
    wait_http(port, "/f/before", Duration::from_secs(120))
        .await
        .unwrap();
    let (code, body) = http_get(port, path, Duration::from_secs(10)).await.unwrap();
    match code {
        200 => Some(String::from_utf8_lossy(&body).into_owned()),
        404 => None,
        other => panic!("GET {path}: HTTP {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_fails_over_unplanned_commits_fails_back_and_disables() {
    // The server sets its dashboard password from this at start.
    std::env::set_var("LIFEBOAT_ADMIN_PASSWORD", PASSWORD);
    let cl = cluster(None);
    let url = cl.server.url.clone();
    let http_port = free_tcp_port();
    let (_web, mut console) = boot_guest_with(&cl.home("alpha"), "web", &[], Some(http_port)).await;
    console
        .run(
            "mkdir -p /data/f && echo before > /data/f/before && sync",
            SHORT,
        )
        .await
        .unwrap();
    let (ok, _, err) = cl.protect_web(&["--wait"]);
    assert!(ok, "{err}");
    let first = wait_points(&cl, "web", 1, LONG)[0]["point"]
        .as_str()
        .unwrap()
        .to_string();
    // A write after the first point, then a later point that holds it.
    console
        .run("echo second > /data/f/second && sync", SHORT)
        .await
        .unwrap();
    let n = cl.json(&["points", "web"]).as_array().unwrap().len();
    wait_points(&cl, "web", n + 1, LONG);

    let b = Browser::start(&artifacts_dir("qemu_dashboard_moves"))
        .await
        .unwrap();
    log_in(&b, &url).await;
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.click("tr[data-vm=web] a").await.unwrap();
    b.wait_for_text("h1", "web on alpha", SHORT).await.unwrap();

    // The disaster: alpha's VM is lost. (Were it still up, both copies would share this
    // machine's ports until the fence reached it; on two machines they would not.)
    let mut kill = lifeboat(&cl.home("alpha"));
    kill.args(["vm", "kill", "web"]);
    run_ok(kill);

    // Unplanned failover from the first point. A mapping to a network the recovery host
    // does not have is refused first: the server's words, and nothing changes.
    b.click("button[data-open=dlg-unplanned]").await.unwrap();
    b.select("#unplanned-point", &first).await.unwrap();
    b.fill("#unplanned-net", "user=br0").await.unwrap();
    b.click("#dlg-unplanned button[type=submit]").await.unwrap();
    let refused = b
        .wait_for_text("#dlg-unplanned [role=alert]", "no network", SHORT)
        .await
        .unwrap();
    assert!(refused.contains("br0"), "{refused}");
    b.screenshot("01-unplanned-refused").await.unwrap();
    assert!(cl
        .json(&["failover", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    b.fill("#unplanned-net", "user=isolated").await.unwrap();
    submit(&b, "dlg-unplanned", LONG).await;
    b.wait_for_text("dd[id^=state-]", "Failed over", SHORT)
        .await
        .unwrap();
    check_page(&b, "02-failed-over").await;
    b.goto(&format!("{url}/recovery-site")).await.unwrap();
    let site = b
        .wait_for_text("#recoveries", "Unplanned failover", SHORT)
        .await
        .unwrap();
    assert!(site.contains(&first), "the point picked: {site}");
    check_page(&b, "03-recovery-site").await;
    // The recovered VM is the first point: its file, not the later one.
    assert_eq!(
        file(http_port, "/f/before").await.as_deref(),
        Some("before\n")
    );
    assert_eq!(file(http_port, "/f/second").await, None);
    write_at_recovery_site(&cl, "/data/f/away").await;

    // Commit, then fail back home.
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.click("section.host:first-of-type tr[data-vm=web] a")
        .await
        .unwrap();
    b.wait_for_text("h1", "web on alpha", SHORT).await.unwrap();
    let msg = act(&b, "dlg-commit", LONG).await;
    assert!(msg.contains("committed"), "{msg}");
    assert!(b
        .text("main")
        .await
        .unwrap()
        .contains("The failover is committed."));
    assert!(!b.exists("button[data-open=dlg-commit]").await.unwrap());
    assert!(b
        .exists("button[data-open=dlg-failback-unplanned]")
        .await
        .unwrap());
    // Protected where it runs now (reversed protection), then home by a planned
    // failback, which sends only what changed since the newest reversed point.
    let msg = act(&b, "dlg-reprotect-away", LONG).await;
    assert!(msg.contains("protected where it runs now"), "{msg}");
    b.wait_for_text("dd[id^=state-]", "Protected at the recovery site", SHORT)
        .await
        .unwrap();
    assert!(!b
        .exists("button[data-open=dlg-reprotect-away]")
        .await
        .unwrap());
    check_page(&b, "03b-protected-reversed").await;
    b.click("button[data-open=dlg-failback]").await.unwrap();
    let says = b.text("#dlg-failback").await.unwrap();
    assert!(says.contains("are overwritten"), "{says}");
    b.fill("#failback-timeout", "60").await.unwrap();
    submit(&b, "dlg-failback", LONG).await;
    b.wait_for_text("dd[id^=state-]", "Failed back", SHORT)
        .await
        .unwrap();
    check_page(&b, "04-failed-back").await;
    // Home has the recovery site's write; its own diverged write is gone.
    assert_eq!(file(http_port, "/f/away").await.as_deref(), Some("away\n"));
    assert_eq!(file(http_port, "/f/second").await, None);
    assert!(cl
        .json(&["failover", "list"])
        .as_array()
        .unwrap()
        .is_empty());

    // Reprotect: replication resumes, and the VM is Protected again, live.
    act(&b, "dlg-reprotect", LONG).await;
    b.wait_for_text("dd[id^=state-]", "Protected", LONG)
        .await
        .unwrap();

    // Disable, deleting the points: the VM is unprotected and the vault holds none.
    b.click("button[data-open=dlg-disable]").await.unwrap();
    b.click("#delete-points").await.unwrap();
    submit(&b, "dlg-disable", LONG).await;
    b.wait_for_text("main", "Unprotected", SHORT).await.unwrap();
    assert!(b.exists("button[data-open=dlg-enable]").await.unwrap());
    check_page(&b, "05-disabled").await;
    assert!(cl.json(&["status"])["protections"]
        .as_array()
        .unwrap()
        .is_empty());
    let mut c = lifeboat(cl.tmp.path());
    c.args(["--json", "vault", "--vault", &cl.vault, "list"]);
    let listed = run_ok(c);
    let points: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        points.as_array().is_some_and(|p| p.is_empty()),
        "points left in the vault: {listed}"
    );
}
