//! Users, roles and the audit log against a real server process, on SQLite and
//! PostgreSQL: users made and changed with the CLI; a viewer's token is refused a
//! failover (403, naming the role) and nothing happens, an operator's starts one; admin
//! routes refuse an operator; pages hide what a role cannot do; the last admin stays;
//! every login, logout and change is in the audit log with who, what, when and from
//! where — and no secret is.
//!
//! The protection failed over is written into the server's database by the test (its
//! hosts answer nowhere): what is under test is who may start the failover, not the
//! failover, which the qemu_* tests prove.

mod common;

use common::login::{cli, http_from, post_login, session_as};
use common::start_server;
use lifeboat_server::db::{Database, Host, PointRow, Protection, ProtectionState};
use lifeboat_testkit::fresh_postgres_database;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "admin-password-1";
const ALICE_PASSWORD: &str = "alice-password-2";
const BOB_PASSWORD: &str = "bob-password-3";
const BOB_NEW_PASSWORD: &str = "bob-new-password-4";
/// Typed into the user field by mistake: it must not reach the audit log.
const TYPED_AS_NAME: &str = "hunter2-typed-as-user";
const ENROLL_CODE: &str = "9876-5432-1098";
const PASSPHRASE: &str = "vault-passphrase-5";
/// On a VM page, what opens an action's dialog.
const ACTION: &str = "data-open=\"dlg-";

/// Two hosts that answer nowhere and a Protected VM with one point, in the server's
/// database; the protection's id.
async fn seed_protection(database: &str) -> String {
    let db = Database::connect(database).await.unwrap();
    for (id, port) in [("home", 1), ("rescue", 2)] {
        let host = Host {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            hostname: id.into(),
            fingerprint: "0".repeat(64),
            enrolled_at: chrono::Utc::now().to_rfc3339(),
        };
        db.add_host(&host, "credential").await.unwrap();
    }
    let p = Protection {
        id: "p-web".into(),
        host_id: "home".into(),
        vm: "web".into(),
        point_name: "home.web".into(),
        vault_url: "file:///nowhere".into(),
        vault_passphrase: "stored-passphrase".into(),
        recovery_host_id: "rescue".into(),
        state: ProtectionState::Protected,
        // The replication reconciler leaves it alone for the test.
        next_sync_at: "2999-01-01T00:00:00Z".into(),
        created_at: chrono::Utc::now().to_rfc3339(),
        ..Default::default()
    };
    db.add_protection(&p).await.unwrap();
    let point = PointRow {
        point: "pt1".into(),
        cut_time: chrono::Utc::now().to_rfc3339(),
        consistency: "crash".into(),
        kind: "full".into(),
        bytes_read: 1,
        new_bytes: 1,
        note: None,
    };
    db.add_point(&p.id, &point).await.unwrap();
    p.id.into()
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A dashboard page with the session `cookie`: its status and HTML.
    async fn page(&self, cookie: &str, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_every_call_and_the_audit_log_records_them_on_sqlite() {
    roles_gate_every_call_and_the_audit_log_records_them(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_every_call_and_the_audit_log_records_them_on_postgres() {
    roles_gate_every_call_and_the_audit_log_records_them(Some(fresh_postgres_database())).await;
}

async fn roles_gate_every_call_and_the_audit_log_records_them(database: Option<String>) {
    std::env::set_var("LIFEBOAT_ADMIN_PASSWORD", ADMIN_PASSWORD);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("server");
    let server = start_server(&home, database.as_deref());
    let url = server.url.clone();
    let admin = server.token.clone();
    let database = database
        .unwrap_or_else(|| format!("sqlite://{}", home.join("server/lifeboat.db").display()));
    let pid = seed_protection(&database).await;
    let api = Api {
        url: url.clone(),
        http: http_from("127.0.0.1"),
    };

    // Users, made by the admin with the CLI; passwords come from the environment.
    for (name, role, password) in [
        ("alice", "viewer", ALICE_PASSWORD),
        ("bob", "operator", BOB_PASSWORD),
    ] {
        let (ok, out, err) = cli(
            &server,
            &admin,
            &[("LIFEBOAT_USER_PASSWORD", password)],
            &["users", "add", name, "--role", role],
        );
        assert!(
            ok && out.contains(&format!("Added {name} ({role})")),
            "{out}{err}"
        );
    }
    let (ok, _, err) = cli(
        &server,
        &admin,
        &[],
        &["users", "add", "carol", "--role", "viewer"],
    );
    assert!(
        !ok && err.contains("LIFEBOAT_USER_PASSWORD"),
        "no password, no user: {err}"
    );
    let (ok, out, err) = cli(&server, &admin, &[], &["users", "list"]);
    assert!(ok, "{err}");
    for user in [["admin", "admin"], ["alice", "viewer"], ["bob", "operator"]] {
        assert!(
            out.lines().any(|l| l.split_whitespace().take(2).eq(user)),
            "{user:?} in {out}"
        );
    }

    // Each makes a token from a session (from its own address); never above their role.
    let (alice_cookie, alice_csrf) = session_as(&url, "127.0.0.4", "alice", ALICE_PASSWORD).await;
    let (bob_cookie, bob_csrf) = session_as(&url, "127.0.0.5", "bob", BOB_PASSWORD).await;
    let make = |cookie: &str, csrf: &str, name: &str, role: &str| {
        api.http
            .post(format!("{url}/api/v1/tokens"))
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .json(&json!({ "name": name, "role": role }))
            .send()
    };
    let r = make(&alice_cookie, &alice_csrf, "too-much", "operator")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("cannot exceed its maker's") && msg.contains("alice is a viewer"),
        "{msg}"
    );
    let token_of = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let viewer = token_of(
        make(&alice_cookie, &alice_csrf, "alice-script", "viewer")
            .await
            .unwrap(),
    )
    .await;
    let operator = token_of(
        make(&bob_cookie, &bob_csrf, "bob-script", "operator")
            .await
            .unwrap(),
    )
    .await;

    // A viewer reads, and is refused the failover with the role it needs; nothing happens.
    assert_eq!(
        api.call("GET", "/api/v1/protections", &viewer, None)
            .await
            .0,
        StatusCode::OK
    );
    let failover = format!("/api/v1/protections/{pid}/failover");
    let (status, body) = api
        .call("POST", &failover, &viewer, Some(json!({ "kind": "test" })))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("needs the operator role")
            && msg.contains("token alice-script of alice is a viewer"),
        "{msg}"
    );
    let (_, ops) = api.call("GET", "/api/v1/operations", &admin, None).await;
    assert_eq!(ops, json!([]), "a refused call starts nothing");
    let (_, recoveries) = api.call("GET", "/api/v1/recoveries", &admin, None).await;
    assert_eq!(recoveries, json!([]));
    // An operator's failover gets past the gate: it starts (and fails on the recovery
    // host, which answers nowhere).
    let (status, body) = api
        .call(
            "POST",
            &failover,
            &operator,
            Some(json!({ "kind": "test" })),
        )
        .await;
    assert_ne!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, ops) = api.call("GET", "/api/v1/operations", &admin, None).await;
    assert_eq!(ops[0]["kind"], "failover-test", "{ops}");
    // An operator may not enroll a host, manage users, or see them.
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/hosts",
            Some(json!({ "address": "127.0.0.1:3", "code": ENROLL_CODE })),
        ),
        ("GET", "/api/v1/users", None),
        (
            "POST",
            "/api/v1/users",
            Some(json!({ "name": "eve", "role": "admin", "password": "eve-password-6" })),
        ),
    ] {
        let (status, answer) = api.call(method, path, &operator, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        let msg = answer["error"].as_str().unwrap();
        assert!(
            msg.contains("needs the admin role") && msg.contains("an operator"),
            "{msg}"
        );
    }
    // The operator's protect carries a passphrase: refused for the unknown VM, audited,
    // and the passphrase not.
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/protections",
            &operator,
            Some(json!({ "vm": "nosuch", "vault": "file:///nowhere", "vault_passphrase": PASSPHRASE, "recovery_host": "rescue" })),
        )
        .await;
    assert_ne!(status, StatusCode::FORBIDDEN);
    // The audit log: operators read it, viewers do not — nor with HEAD, which axum
    // answers with the GET handler (and its body's length).
    assert_eq!(
        api.call("GET", "/api/v1/audit", &viewer, None).await.0,
        StatusCode::FORBIDDEN
    );
    for path in ["/api/v1/audit", "/api/v1/users"] {
        assert_eq!(
            api.call("HEAD", path, &viewer, None).await.0,
            StatusCode::FORBIDDEN,
            "HEAD {path}"
        );
    }
    // A token name with a control character could forge lines where it is shown.
    let r = make(&alice_cookie, &alice_csrf, "evil\nname", "viewer")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        api.call("GET", "/api/v1/audit", &operator, None).await.0,
        StatusCode::OK
    );
    // The admin enrolls (the agent answers nowhere, but the gate let it through).
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/hosts",
            &admin,
            Some(json!({ "address": "127.0.0.1:3", "code": ENROLL_CODE })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // Pages: what a role may not do is not offered, and the server refuses it anyway.
    let vm_page = "/hosts/home/vms/web".to_string();
    let (status, html) = api.page(&alice_cookie, &vm_page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !html.contains(ACTION) && html.contains("You are a viewer"),
        "{html}"
    );
    assert!(!html.contains("href=\"/users\"") && !html.contains("href=\"/audit\""));
    let (_, html) = api.page(&bob_cookie, &vm_page).await;
    assert!(html.contains(ACTION), "{html}");
    assert!(html.contains("href=\"/audit\"") && !html.contains("href=\"/users\""));
    let (_, html) = api.page(&bob_cookie, "/scan").await;
    assert!(
        html.contains("scan-form") && !html.contains("enroll-template"),
        "{html}"
    );
    let (status, html) = api.page(&alice_cookie, "/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("needs the admin role"), "{html}");
    let (admin_cookie, admin_csrf) = session_as(&url, "127.0.0.1", "admin", ADMIN_PASSWORD).await;
    let (status, html) = api.page(&admin_cookie, "/users").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("data-user=\"bob\"") && html.contains("/api/v1/users/bob/role"),
        "{html}"
    );
    let (status, html) = api.page(&admin_cookie, "/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("/api/v1/protections/{id}/failover"), "{html}");

    // The last admin can be neither demoted nor removed.
    for args in [
        &["users", "set-role", "admin", "operator"][..],
        &["users", "remove", "admin"],
    ] {
        let (ok, _, err) = cli(&server, &admin, &[], args);
        assert!(
            !ok && err.contains("admin is the last admin"),
            "{args:?}: {err}"
        );
    }
    // A demotion holds at once: bob's session and token act as a viewer now.
    let (ok, out, err) = cli(
        &server,
        &admin,
        &[],
        &["users", "set-role", "bob", "viewer"],
    );
    assert!(ok && out.contains("bob is a viewer now"), "{out}{err}");
    let (status, _) = api
        .call(
            "POST",
            &failover,
            &operator,
            Some(json!({ "kind": "test" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the token came down with its owner"
    );
    let (_, html) = api.page(&bob_cookie, "/hosts/home/vms/web").await;
    assert!(!html.contains(ACTION));
    // A new password ends bob's sessions; removing alice ends her token.
    let (ok, _, err) = cli(
        &server,
        &admin,
        &[("LIFEBOAT_USER_PASSWORD", BOB_NEW_PASSWORD)],
        &["users", "passwd", "bob"],
    );
    assert!(ok, "{err}");
    let (status, _) = api.page(&bob_cookie, "/").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "bob's session ended");
    assert_eq!(
        post_login(&http_from("127.0.0.5"), &url, "bob", BOB_NEW_PASSWORD)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let (ok, _, err) = cli(&server, &admin, &[], &["users", "remove", "alice"]);
    assert!(ok, "{err}");
    assert_eq!(
        api.call("GET", "/api/v1/status", &viewer, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Calls with no valid credential are refused, and not written (docs/security.md,
    // "Users, roles and the audit log"): alice's token, revoked now, and a made-up one.
    for token in [viewer.as_str(), "not-a-token"] {
        let (status, _) = api
            .call("POST", &failover, token, Some(json!({ "kind": "test" })))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // A name that is no user (perhaps a password in the wrong field), and a logout.
    let r = post_login(
        &http_from("127.0.0.6"),
        &url,
        TYPED_AS_NAME,
        "whatever-it-was",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = api
        .http
        .post(format!("{url}/logout"))
        .header("cookie", &admin_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={admin_csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // The audit log, through the CLI: who, what, when, from where, and how it ended.
    let (ok, out, err) = cli(
        &server,
        &admin,
        &[],
        &["--json", "audit", "--limit", "1000"],
    );
    assert!(ok, "{err}");
    let log: Value = serde_json::from_str(&out).unwrap();
    let rows = log["entries"].as_array().unwrap();
    let find = |what: &dyn Fn(&Value) -> bool, why: &str| -> Value {
        rows.iter()
            .find(|r| what(r))
            .cloned()
            .unwrap_or_else(|| panic!("no audit row: {why}\n{log:#}"))
    };
    let refused = find(
        &|r| {
            r["route"] == "/api/v1/protections/{id}/failover"
                && r["status"] == 403
                && r["actor"] == "alice"
        },
        "alice's refused failover",
    );
    assert_eq!(refused["via"], "token alice-script");
    assert_eq!(refused["method"], "POST");
    assert_eq!(refused["address"], "127.0.0.1");
    assert_eq!(refused["target"], format!("id={pid} kind=test"));
    assert_eq!(refused["detail"], "refused: needs operator");
    let at = chrono::DateTime::parse_from_rfc3339(refused["at"].as_str().unwrap()).unwrap();
    assert!(
        (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs()
            < 300
    );
    let started = find(
        &|r| {
            r["route"] == "/api/v1/protections/{id}/failover"
                && r["actor"] == "bob"
                && r["status"] != 403
        },
        "bob's failover",
    );
    assert_eq!(started["via"], "token bob-script");
    assert_ne!(started["status"], 0, "finished with its status");
    // Rows that must be there, each named by the fields it must have.
    let expected: [(&str, Value); 10] = [
        (
            "alice's login",
            json!({"route": "/login", "actor": "alice", "status": 303, "address": "127.0.0.4"}),
        ),
        (
            "the unknown user's login",
            json!({"route": "/login", "actor": "", "status": 401, "detail": "no such user", "address": "127.0.0.6"}),
        ),
        (
            "the admin's logout",
            json!({"route": "/logout", "actor": "admin", "via": "session"}),
        ),
        (
            "bob's token",
            json!({"route": "/api/v1/tokens", "actor": "bob", "target": "name=bob-script role=operator", "status": 201}),
        ),
        (
            "alice added",
            json!({"route": "/api/v1/users", "method": "POST", "target": "name=alice role=viewer", "via": "token admin"}),
        ),
        (
            "bob demoted",
            json!({"route": "/api/v1/users/{name}/role", "target": "name=bob role=viewer", "status": 200}),
        ),
        (
            "the last admin kept",
            json!({"route": "/api/v1/users/{name}/role", "target": "name=admin role=operator", "status": 409}),
        ),
        (
            "bob's password",
            json!({"route": "/api/v1/users/{name}/password", "target": "name=bob", "status": 204}),
        ),
        (
            "alice removed",
            json!({"route": "/api/v1/users/{name}", "method": "DELETE", "target": "name=alice"}),
        ),
        (
            "the enrollment",
            json!({"route": "/api/v1/hosts", "actor": "admin", "target": "address=127.0.0.1:3", "status": 502}),
        ),
    ];
    for (why, fields) in &expected {
        let fields = fields.as_object().unwrap();
        find(&|r| fields.iter().all(|(k, v)| &r[k] == v), why);
    }
    find(
        &|r| {
            r["route"] == "/api/v1/protections"
                && r["actor"] == "bob"
                && r["target"].as_str().unwrap().contains("vm=nosuch")
        },
        "bob's protect",
    );
    // Reads are not audited.
    assert!(!rows.iter().any(|r| r["method"] == "GET"), "{log:#}");
    // Nor calls without a valid credential (only logins are written with a 401).
    assert!(
        !rows
            .iter()
            .any(|r| r["status"] == 401 && r["route"] != "/login"),
        "{log:#}"
    );

    // No secret anywhere in it: passwords, tokens, the enrollment code, the passphrase,
    // what was typed as a user name.
    let text = log.to_string();
    for secret in [
        ADMIN_PASSWORD,
        ALICE_PASSWORD,
        BOB_PASSWORD,
        BOB_NEW_PASSWORD,
        TYPED_AS_NAME,
        ENROLL_CODE,
        PASSPHRASE,
        "eve-password-6",
        &admin,
        &viewer,
        &operator,
        &admin_cookie["lifeboat_session=".len()..],
        &admin_csrf,
    ] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
    // Pages of the log follow one another.
    let (ok, out, err) = cli(&server, &admin, &[], &["--json", "audit", "--limit", "2"]);
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(&out).unwrap();
    let before = first["next_before"].as_str().unwrap();
    let (ok, out, _) = cli(
        &server,
        &admin,
        &[],
        &["--json", "audit", "--limit", "2", "--before", before],
    );
    assert!(ok);
    let second: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(second["entries"][0]["id"], rows[2]["id"]);
    let (ok, out, _) = cli(&server, &admin, &[], &["audit", "--limit", "5"]);
    assert!(
        ok && out.contains("WHO") && out.contains("Older rows: lifeboat audit --before"),
        "{out}"
    );
}
