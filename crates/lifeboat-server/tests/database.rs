//! The server's database on SQLite and on a real PostgreSQL server (started by
//! ./scripts/test): the same migrations and queries, the same answers.

use lifeboat_server::db::{Database, DbError, Host};
use lifeboat_testkit::{fresh_postgres_database, postgres_url};

async fn hosts_and_tokens_round_trip(url: &str) {
    let db = Database::connect(url).await.unwrap();
    let h = Host {
        id: "h1".into(),
        address: "10.0.0.1:7443".into(),
        hostname: "alpha".into(),
        fingerprint: "ab".repeat(32),
        enrolled_at: "2026-11-26T00:00:00Z".into(),
    };
    db.add_host(&h, "cred").await.unwrap();
    let again = db
        .add_host(
            &Host {
                id: "h2".into(),
                ..h.clone()
            },
            "c2",
        )
        .await;
    assert!(matches!(again, Err(DbError::Conflict(_))), "{again:?}");
    drop(db);
    // Reconnecting finds the migrations applied (none runs twice) and the data there.
    let db = Database::connect(url).await.unwrap();
    let access = db.hosts_with_access().await.unwrap();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].credential, "cred");
    let found = db.host_by_address("10.0.0.1:7443").await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.hostname.as_str()),
        ("h1", "alpha")
    );
    assert!(db.host_by_address("10.0.0.2:7443").await.unwrap().is_none());
    assert_eq!(db.token_count().await.unwrap(), 0);
    db.add_token("admin", "x").await.unwrap();
    assert_eq!(db.token_count().await.unwrap(), 1);
    assert!(db.token_exists("x").await.unwrap() && !db.token_exists("y").await.unwrap());
}

#[tokio::test]
async fn sqlite_hosts_and_tokens_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    hosts_and_tokens_round_trip(&url).await;
}

#[tokio::test]
async fn postgres_hosts_and_tokens_round_trip() {
    hosts_and_tokens_round_trip(&fresh_postgres_database()).await;
}

#[tokio::test]
async fn a_wrong_password_names_the_server_but_not_the_password() {
    let base = postgres_url();
    let (_, host) = base.rsplit_once('@').unwrap();
    let url = format!("postgres://lifeboat_test:not-the-password@{host}");
    let err = Database::connect(&url).await.err().unwrap().to_string();
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(err.contains("lifeboat_test:***@"), "{err}");
}
