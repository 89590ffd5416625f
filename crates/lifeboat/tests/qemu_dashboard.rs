//! The dashboard end to end, in real headless Chromium driven through WebDriver: log in,
//! scan and enroll two agents, enable replication of the test guest and watch it go from
//! Replicating to Protected with no reload, run a test failover and clean it up, run a
//! planned failover, closing its tab midway, and see the VM on the recovery site. Every
//! page is checked for labels and for fitting a phone's width, and saved as a screenshot
//! (artifacts: `target/artifacts/qemu_dashboard/`, or `$LIFEBOAT_ARTIFACTS`). Refusals are
//! checked too: no session, no CSRF token, a login form without its token, a wrong
//! password.
//!
//! The server serves TLS here (its own certificate, which the browser is told to accept),
//! so the session cookie's `Secure` flag is what a real deployment gets.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{boot_guest_with, unenrolled_cluster, PASSPHRASE};
use common::dashboard::{act, check_page, insecure_client, submit, LONG, PASSWORD, SHORT};
use lifeboat_testkit::browser::{artifacts_dir, Browser};
use lifeboat_testkit::wait_http;
use serde_json::json;

/// The host port in the recovery site's "port N → guest 80".
fn forwarded_port(site: &str) -> u16 {
    site.split("port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no forwarded port in: {site}"))
}

/// Scans for the agent on `port` and enrolls it with `code`; returns the error shown when
/// the server refuses.
async fn scan_and_enroll(b: &Browser, url: &str, ports: &str, port: u16, code: &str) -> String {
    b.goto(&format!("{url}/scan")).await.unwrap();
    b.fill("#cidr", "127.0.0.1").await.unwrap();
    b.fill("#ports", ports).await.unwrap();
    b.click("#scan-form button[type=submit]").await.unwrap();
    let row = format!("tr[data-address=\"127.0.0.1:{port}\"]");
    b.wait_for(&row, SHORT).await.unwrap();
    b.fill(&format!("{row} input[name=code]"), code)
        .await
        .unwrap();
    b.click(&format!("{row} button[type=submit]"))
        .await
        .unwrap();
    // Either the hosts page (enrolled) or the server's refusal in the row.
    let deadline = Instant::now() + SHORT;
    loop {
        if b.current_url().await.unwrap().ends_with("/hosts") {
            return String::new();
        }
        let e = b
            .execute(
                "const e = document.querySelector(arguments[0] + ' [role=alert]');
                 return e && !e.hidden ? e.textContent : null;",
                &[json!(row)],
            )
            .await
            .unwrap();
        if let Some(e) = e.as_str() {
            return e.to_string();
        }
        assert!(Instant::now() < deadline, "enrolling {port}: no outcome");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The only protection's network settings, as the API gives them.
async fn network_settings(
    http: &reqwest::Client,
    url: &str,
    cl: &common::cluster::Cluster,
) -> serde_json::Value {
    let list: serde_json::Value = http
        .get(format!("{url}/api/v1/protections"))
        .bearer_auth(&cl.server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["protections"][0]["network_settings"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_enrolls_protects_tests_and_fails_over_a_vm() {
    // The server sets its dashboard password from this at start.
    std::env::set_var("LIFEBOAT_ADMIN_PASSWORD", PASSWORD);
    // alpha's syncs are capped so the initial sync lasts long enough to be watched.
    let cl = unenrolled_cluster(None, None, true, &["--max-rate", "4M"]);
    let url = cl.server.url.clone();
    let http_port = lifeboat_testkit::free_tcp_port();
    let (_web, mut console) = boot_guest_with(&cl.home("alpha"), "web", &[], Some(http_port)).await;
    let http = insecure_client();

    // Refused without a session or token: the API says how to authenticate, pages send
    // the browser to the login form, and a login form without its token is refused.
    let r = http.get(format!("{url}/api/v1/vms")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("log in to the dashboard"));
    let r = http.get(format!("{url}/operations")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=/operations");
    let r = http
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=admin&password={PASSWORD}&csrf=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a login without its CSRF cookie");
    assert!(!r.headers().contains_key("set-cookie"));
    let r = http.get(format!("{url}/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let started = Instant::now();
    // Where the time goes, on stderr: seconds since the browser started, per stage.
    let stage = |what: &str| eprintln!("[{:6.1} s] {what}", started.elapsed().as_secs_f64());
    let b = Browser::start(&artifacts_dir("qemu_dashboard"))
        .await
        .unwrap();

    // Log in: a wrong password first, then the right one, landing where we were going.
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.wait_for("#password", SHORT).await.unwrap();
    check_page(&b, "01-login").await;
    b.fill("#user", "admin").await.unwrap();
    b.fill("#password", "not the password").await.unwrap();
    b.click("button[type=submit]").await.unwrap();
    b.wait_for_text("[role=alert]", "Wrong user name or password", SHORT)
        .await
        .unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.click("button[type=submit]").await.unwrap();
    b.wait_for_text("h1", "Hosts & VMs", SHORT).await.unwrap();
    let cookies = b.cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name == "lifeboat_session")
        .expect("a session cookie");
    assert!(session.http_only && session.secure, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Strict"));

    // The API refuses the session's state-changing calls without the CSRF token, and
    // takes them with it.
    let tries = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const token = document.querySelector('meta[name=csrf-token]').content;
             const call = (headers) => fetch('/api/v1/tokens', { method: 'POST',
                 headers: Object.assign({ 'Content-Type': 'application/json' }, headers),
                 body: JSON.stringify({ name: 'from-the-page' }) })
               .then(async r => ({ status: r.status, body: await r.text() }));
             Promise.all([call({}), call({ 'X-CSRF-Token': 'wrong' }), call({ 'X-CSRF-Token': token })])
               .then(done, e => done(String(e)));",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tries[0]["status"], 403, "{tries}");
    assert!(
        tries[0]["body"].as_str().unwrap().contains("CSRF"),
        "{tries}"
    );
    assert_eq!(tries[1]["status"], 403, "{tries}");
    assert_eq!(tries[2]["status"], 201, "{tries}");

    stage("logged in");

    // Scan and enroll: a wrong code shows the server's refusal as it is; then both agents.
    let ports = format!("{},{}", cl.alpha.port, cl.beta.port);
    let refused = scan_and_enroll(&b, &url, &ports, cl.beta.port, "000000").await;
    assert!(
        refused.contains("the agent refused the code"),
        "shown: {refused}"
    );
    check_page(&b, "02-scan").await;
    let alpha_code = cl.alpha.code.clone().unwrap();
    let beta_code = cl.beta.code.clone().unwrap();
    assert_eq!(
        scan_and_enroll(&b, &url, &ports, cl.alpha.port, &alpha_code).await,
        ""
    );
    assert_eq!(
        scan_and_enroll(&b, &url, &ports, cl.beta.port, &beta_code).await,
        ""
    );
    b.wait_for_text("tr[data-vm=web]", "Unprotected", SHORT)
        .await
        .unwrap();
    assert!(b.text("main").await.unwrap().contains("beta"));
    check_page(&b, "03-hosts").await;

    stage("enrolled");

    // Enable replication from the VM's page, then watch the state change live.
    b.click("tr[data-vm=web] a").await.unwrap();
    b.wait_for_text("h1", "web on alpha", SHORT).await.unwrap();
    b.click("button[data-open=dlg-enable]").await.unwrap();
    b.fill("#enable-vault", &cl.vault).await.unwrap();
    b.fill("#enable-pass", PASSPHRASE).await.unwrap();
    b.select("#enable-policy", "frequent").await.unwrap();
    check_page(&b, "04-enable-replication").await;
    submit(&b, "dlg-enable", LONG).await;
    // From here the page is not reloaded: a marker set now must survive.
    b.execute("window.lifeboatMarker = 'still here';", &[])
        .await
        .unwrap();
    let state = "dd[id^=state-]";
    let shown = b.wait_for_text(state, "Replicating", SHORT).await.unwrap();
    assert!(shown.contains('%'), "{shown}");
    b.wait_for("dd[id^=state-] progress", SHORT).await.unwrap();
    check_page(&b, "05-vm-replicating").await;
    b.wait_for_text(state, "Protected", LONG).await.unwrap();
    let live = b
        .execute(
            "return [window.lifeboatMarker, document.body.dataset.live];",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        live,
        json!(["still here", "on"]),
        "updated live, not reloaded"
    );
    // The actions drawn for a replicating VM are out of date now: the page says so.
    b.wait_for("#actions-stale:not([hidden])", SHORT)
        .await
        .unwrap();

    stage("protected");

    // A reload shows the actions of a protected VM, its points and its RPO chart.
    b.refresh().await.unwrap();
    b.wait_for("button[data-open=dlg-test]", SHORT)
        .await
        .unwrap();
    assert!(b.exists("figure.chart svg path.rpo").await.unwrap());
    let main = b.text("main").await.unwrap();
    assert!(
        main.contains("Recovery points (") && main.contains("-consistent"),
        "{main}"
    );
    check_page(&b, "06-vm-protected").await;

    // Every action is reachable by keyboard: Tab to the unplanned failover, Enter opens
    // its confirmation, which says what will happen; Escape closes it.
    b.execute(
        "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);",
        &[],
    )
    .await
    .unwrap();
    let mut reached = false;
    for _ in 0..80 {
        b.press_key("Tab").await.unwrap();
        if b.is_focused("button[data-open=dlg-unplanned]")
            .await
            .unwrap()
        {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the unplanned failover button");
    b.press_key("Enter").await.unwrap();
    b.wait_for("dialog#dlg-unplanned[open]", SHORT)
        .await
        .unwrap();
    let says = b.text("#dlg-unplanned").await.unwrap();
    assert!(
        says.contains("are not in it") && says.contains("is fenced"),
        "{says}"
    );
    b.screenshot("07-unplanned-confirmation").await.unwrap();
    b.press_key("Escape").await.unwrap();
    assert!(!b.exists("dialog#dlg-unplanned[open]").await.unwrap());

    stage("keyboard checked");

    // Test failover, then its cleanup.
    act(&b, "dlg-test", LONG).await;
    b.goto(&format!("{url}/recovery-site")).await.unwrap();
    b.wait_for_text("#recoveries", "Test copy", SHORT)
        .await
        .unwrap();
    // The row shows "-" while the copy starts, then the port it forwards.
    let site = b.wait_for_text("#recoveries", "port ", LONG).await.unwrap();
    check_page(&b, "08-recovery-site-test").await;
    // The copy runs: its guest answers on the port the page names, not production's.
    let port = forwarded_port(&site);
    assert_ne!(port, http_port);
    wait_http(port, "/boot-count", Duration::from_secs(120))
        .await
        .unwrap();
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.wait_for_text("dd[id^=state-], td[id^=state-]", "Test running", SHORT)
        .await
        .unwrap();
    b.click("tr[data-vm=web] a").await.unwrap();
    act(&b, "dlg-cleanup", LONG).await;
    b.goto(&format!("{url}/recovery-site")).await.unwrap();
    b.wait_for_text("#recoveries", "No VM runs from a recovery point", SHORT)
        .await
        .unwrap();

    stage("test failover cleaned up");

    // Network settings: a failover address with no home one is refused in the dialog,
    // saying why, and nothing is stored; a test address is stored and shown.
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.click("tr[data-vm=web] a").await.unwrap();
    b.click("button[data-open=dlg-network]").await.unwrap();
    b.wait_for("dialog#dlg-network[open]", SHORT).await.unwrap();
    check_page(&b, "08b-network-settings").await;
    b.fill("#nic0-failover", "10.0.2.50/24").await.unwrap();
    b.click("#dlg-network button[type=submit]").await.unwrap();
    let refused = b
        .wait_for_text("#dlg-network [role=alert]", "home address", SHORT)
        .await
        .unwrap();
    assert!(refused.contains("nothing was stored"), "{refused}");
    assert_eq!(network_settings(&http, &url, &cl).await["nics"], json!([]));
    b.fill("#nic0-failover", "keep").await.unwrap();
    b.fill("#nic0-test", "10.0.2.70/24").await.unwrap();
    let saved = submit(&b, "dlg-network", SHORT).await;
    assert!(saved.contains("Done") || saved.contains("Saved"), "{saved}");
    b.wait_for_text("dd[id^=net-]", "test 10.0.2.70/24", SHORT)
        .await
        .unwrap();
    assert_eq!(
        network_settings(&http, &url, &cl).await["nics"][0]["test"]["address"],
        "10.0.2.70/24"
    );

    stage("network settings set");

    // Planned failover: the VM ends up running on beta, on its own port, with a write
    // made on alpha just before (after the last periodic point: only the final sync
    // carries it).
    console
        .run("echo written-just-before > /data/last && sync", SHORT)
        .await
        .unwrap();
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.click("tr[data-vm=web] a").await.unwrap();
    b.click("button[data-open=dlg-planned]").await.unwrap();
    b.fill("#planned-timeout", "60").await.unwrap();
    // The tab goes away while the failover runs (its page follows the operation): the
    // operation runs in the server, and completes without it.
    b.click("#dlg-planned button[type=submit]").await.unwrap();
    b.wait_for_text("#dlg-planned .working", "step", SHORT)
        .await
        .unwrap();
    b.goto("about:blank").await.unwrap();
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.click("tr[data-vm=web] a").await.unwrap();
    b.wait_for_text("dd[id^=state-]", "Failed over", LONG)
        .await
        .unwrap();
    // The page was drawn while the failover ran: a reload draws a failed-over VM's
    // actions.
    b.refresh().await.unwrap();
    b.wait_for("button[data-open=dlg-failback]", SHORT)
        .await
        .unwrap();
    b.goto(&format!("{url}/recovery-site")).await.unwrap();
    let site = b
        .wait_for_text("#recoveries", "Planned failover", SHORT)
        .await
        .unwrap();
    assert!(
        site.contains("beta") && site.contains("alpha/web"),
        "{site}"
    );
    check_page(&b, "09-recovery-site-planned").await;
    // It answers on the port the recovery site names, its production port.
    assert_eq!(forwarded_port(&site), http_port, "{site}");
    let last = wait_http(http_port, "/last", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        last, b"written-just-before\n",
        "the write made just before the move"
    );
    b.goto(&format!("{url}/hosts")).await.unwrap();
    let hosts = b.wait_for_text("main", "fenced", SHORT).await.unwrap();
    assert!(hosts.contains("Planned failover of alpha/web"), "{hosts}");
    check_page(&b, "10-hosts-after-failover").await;

    stage("planned failover done, VM answers");

    // The other pages: overview, operations with their logs, vaults and policies, tokens.
    b.goto(&format!("{url}/")).await.unwrap();
    b.wait_for_text("#counts", "Failed over", SHORT)
        .await
        .unwrap();
    check_page(&b, "11-overview").await;
    b.goto(&format!("{url}/operations")).await.unwrap();
    let ops = b
        .wait_for_text("main", "failover-planned", SHORT)
        .await
        .unwrap();
    assert!(
        ops.contains("enable") && ops.contains("failover-test"),
        "{ops}"
    );
    check_page(&b, "12-operations").await;
    b.goto(&format!("{url}/vaults")).await.unwrap();
    b.wait_for_text("main", &cl.vault, SHORT).await.unwrap();
    check_page(&b, "13-vaults-policies").await;
    b.goto(&format!("{url}/tokens")).await.unwrap();
    b.fill("#token-name", "backup-script").await.unwrap();
    b.click("form[data-render=token] button[type=submit]")
        .await
        .unwrap();
    let token = b.wait_for("code.token", SHORT).await.unwrap();
    let token = b.text(token.css()).await.unwrap();
    check_page(&b, "14-tokens").await;
    let r = http
        .get(format!("{url}/api/v1/status"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the token made on the page works");

    stage("other pages checked");

    // Phone width: every page fits, nothing scrolls sideways.
    b.set_window_size(390, 844).await.unwrap();
    for (path, name) in [
        ("/", "phone-overview"),
        ("/hosts", "phone-hosts"),
        ("/recovery-site", "phone-recovery-site"),
        ("/operations", "phone-operations"),
    ] {
        b.goto(&format!("{url}{path}")).await.unwrap();
        b.wait_for("h1", SHORT).await.unwrap();
        check_page(&b, name).await;
    }

    stage("phone widths checked");

    // Logging out ends the session: the page is the login form again.
    b.set_window_size(1280, 900).await.unwrap();
    b.goto(&format!("{url}/")).await.unwrap();
    b.click(".logout button").await.unwrap();
    b.wait_for("#password", SHORT).await.unwrap();
    b.goto(&format!("{url}/hosts")).await.unwrap();
    b.wait_for("#password", SHORT).await.unwrap();
}
