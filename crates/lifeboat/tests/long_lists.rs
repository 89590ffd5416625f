//! Long lists come in pages: at 1,234 protected VMs, `GET /api/v1/status` sends 500
//! protections and where the next page starts (counts cover them all), `lifeboat status`
//! reads every page, and the dashboard's overview shows 100 VMs a page with links to the
//! others. (Unpaged, 10,000 VMs made the status answer 5 MB and the overview 2.1 MB.)

mod common;

use chrono::Utc;
use common::login::{http_from, post_login, session_cookie};
use common::{client, start_server};
use lifeboat_server::db::{Database, Host, Protection, ProtectionState};
use serde_json::Value;

const VMS: usize = 1234;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_come_in_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("server")).unwrap();
    let url = format!("sqlite://{}", home.join("server/lifeboat.db").display());
    let db = Database::connect(&url).await.unwrap();
    let host = Host {
        id: "host-a".into(),
        // Nothing listens: these VMs are not due for an hour; no agent is asked.
        address: "127.0.0.1:1".into(),
        hostname: "a".into(),
        fingerprint: "0".repeat(64),
        enrolled_at: Utc::now().to_rfc3339(),
    };
    db.add_host(&host, "credential").await.unwrap();
    let now = Utc::now();
    for i in 0..VMS {
        db.add_protection(&Protection {
            id: format!("p{i}").into(),
            host_id: "host-a".into(),
            vm: format!("vm{i:05}"),
            point_name: format!("a.vm{i:05}"),
            vault_url: "file:///nonexistent".into(),
            recovery_host_id: "host-a".into(),
            policy: "hourly".into(),
            state: ProtectionState::Protected,
            last_point: Some("p".into()),
            last_point_time: Some(now.to_rfc3339()),
            next_sync_at: (now + chrono::Duration::hours(1)).to_rfc3339(),
            created_at: now.to_rfc3339(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    drop(db);
    let server = start_server(&home, None);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{}{path}", server.url))
            .bearer_auth(&server.token)
            .send()
    };

    let first: Value = get("/api/v1/status").await.unwrap().json().await.unwrap();
    assert_eq!(first["protected_vms"], VMS, "counts cover every VM");
    assert_eq!(first["protections"].as_array().unwrap().len(), 500);
    assert_eq!(
        (first["offset"].as_u64(), first["next_offset"].as_u64()),
        (Some(0), Some(500))
    );
    let last: Value = get("/api/v1/status?offset=1000&limit=1000")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = last["protections"].as_array().unwrap();
    assert_eq!(rows.len(), VMS - 1000);
    assert_eq!(rows[0]["vm"], "vm01000", "pages are in VM order");
    assert!(
        last.get("next_offset").is_none(),
        "the last page: {}",
        last["next_offset"]
    );

    // The CLI reads every page.
    let (ok, out, err) = client(&server, Some(&server.token), &["--json", "status"]);
    assert!(ok, "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    let vms: Vec<&str> = all["protections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["vm"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..VMS).map(|i| format!("vm{i:05}")).collect();
    assert_eq!(vms, expected, "every VM once, in order");

    // The dashboard's overview: 100 a page, with links to the others.
    let password = std::fs::read_to_string(home.join("server/admin.password")).unwrap();
    let browser = http_from("127.0.0.1");
    let login = post_login(&browser, &server.url, "admin", password.trim()).await;
    let cookie = session_cookie(&login).expect("logged in");
    let page = |n: &str| {
        browser
            .get(format!("{}/{n}", server.url))
            .header("cookie", &cookie)
            .send()
    };
    let one = page("").await.unwrap().text().await.unwrap();
    let rows = one
        .matches("<tr><th scope=\"row\"><a href=\"/hosts/")
        .count();
    assert_eq!(rows, 100, "{} bytes", one.len());
    assert!(one.contains("VMs 1–100 of 1234") && one.contains("href=\"/?page=2\""));
    assert!(one.len() < 200_000, "the first page is {} bytes", one.len());
    let end = page("?page=13").await.unwrap().text().await.unwrap();
    assert_eq!(
        end.matches("<tr><th scope=\"row\"><a href=\"/hosts/")
            .count(),
        34
    );
    assert!(end.contains("VMs 1201–1234 of 1234") && !end.contains("rel=\"next\""));
    assert!(end.contains("vm01233") && !end.contains("vm01199"));
}
