//! The server's database on a real PostgreSQL server (started by ./scripts/test, which
//! sets LIFEBOAT_TEST_POSTGRES): the same migrations and queries as on SQLite.

use lifeboat_server::db::{Database, DbError, Host};
use sqlx::Connection;

fn base_url() -> String {
    std::env::var("LIFEBOAT_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "LIFEBOAT_TEST_POSTGRES is not set: run ./scripts/test, which starts PostgreSQL and sets it \
             (or set it to postgres://USER:PASSWORD@HOST:PORT/postgres for a role that may CREATE DATABASE)"
        )
    })
}

/// A new, empty database on the test server; its URL.
async fn fresh_database() -> String {
    let base = base_url();
    let name = format!("lifeboat_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}

#[tokio::test]
async fn postgres_hosts_and_tokens_round_trip() {
    let url = fresh_database().await;
    let db = Database::connect(&url).await.unwrap();
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
    // Reconnecting finds the migrations applied and the data there.
    let db = Database::connect(&url).await.unwrap();
    let access = db.hosts_with_access().await.unwrap();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].credential, "cred");
    db.add_token("admin", "x").await.unwrap();
    assert_eq!(db.token_count().await.unwrap(), 1);
    assert!(db.token_exists("x").await.unwrap() && !db.token_exists("y").await.unwrap());
    drop(db);
    drop_database(&url).await;
}

/// Removes a database `fresh_database` made (best effort: a leftover is harmless).
async fn drop_database(url: &str) {
    let (_, name) = url.rsplit_once('/').unwrap();
    if let Ok(mut conn) = sqlx::PgConnection::connect(&base_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

#[tokio::test]
async fn a_wrong_password_names_the_server_but_not_the_password() {
    let base = base_url();
    let (_, host) = base.rsplit_once('@').unwrap();
    let url = format!("postgres://lifeboat_test:not-the-password@{host}");
    let err = Database::connect(&url).await.err().unwrap().to_string();
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(err.contains("lifeboat_test:***@"), "{err}");
}
