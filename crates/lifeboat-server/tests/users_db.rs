//! Users and roles in the database, on SQLite and PostgreSQL: the migration makes the
//! admin and the tokens that exist admins; a demotion brings the user's tokens down; the
//! last admin can be neither demoted nor removed, even by two admins demoting each other
//! at the same moment; a removed user's tokens and sessions go with them.

use lifeboat_server::auth::Role;
use lifeboat_server::db::{Database, DbError};
use lifeboat_testkit::fresh_postgres_database;

/// A database as the server before roles left it (migrations 1 to 6) with the admin and
/// its token; then the server of now opens it.
async fn the_admin_and_old_tokens_become_admins(url: &str) {
    sqlx::any::install_default_drivers();
    let full = if url.starts_with("sqlite:") {
        format!("{url}?mode=rwc")
    } else {
        url.to_string()
    };
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&full)
        .await
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut before = sqlx::migrate::Migrator::new(dir).await.unwrap();
    let old: Vec<_> = before
        .migrations
        .iter()
        .filter(|m| m.version <= 6)
        .cloned()
        .collect();
    assert_eq!(old.len(), 6);
    before.migrations = old.into();
    before.run(&pool).await.unwrap();
    for q in [
        "INSERT INTO users (name, password_hash, updated_at) VALUES ('admin', 'h', 'now')",
        "INSERT INTO api_tokens (id, name, token_sha256, created_at) VALUES ('t1', 'admin', 'digest', 'now')",
    ] {
        sqlx::query(q).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let db = Database::connect(url).await.unwrap();
    assert_eq!(db.user("admin").await.unwrap().unwrap().role, Role::Admin);
    let t = db.token_caller("digest").await.unwrap().unwrap();
    assert_eq!((t.owner.as_str(), t.role), ("admin", Role::Admin));
}

async fn roles_and_the_last_admin(url: &str) {
    let db = Database::connect(url).await.unwrap();
    db.add_user("root", Role::Admin, "h").await.unwrap();
    db.add_user("alice", Role::Operator, "h").await.unwrap();
    assert!(matches!(
        db.add_user("alice", Role::Viewer, "h").await,
        Err(DbError::Conflict(_))
    ));
    let last = |r: Result<bool, DbError>| matches!(r, Err(DbError::Conflict(m)) if m.contains("last admin"));
    assert!(last(db.set_role("root", Role::Operator).await));
    assert!(last(db.delete_user("root").await));
    assert!(!db.set_role("nobody", Role::Admin).await.unwrap());
    assert!(!db.delete_user("nobody").await.unwrap());

    // A token of an admin comes down with its owner, and goes with them.
    db.add_token("ci", "d-root", "root", Role::Admin)
        .await
        .unwrap();
    let root_hash = db.password_hash("root").await.unwrap().unwrap();
    assert!(db
        .add_session("s-root", "root", "csrf", "2999-01-01T00:00:00Z", &root_hash)
        .await
        .unwrap());
    // A session is opened only with the password that was checked: a reset that came
    // while the check ran wins.
    assert!(!db
        .add_session(
            "s-stale",
            "root",
            "csrf",
            "2999-01-01T00:00:00Z",
            "an older hash"
        )
        .await
        .unwrap());
    assert!(db.session("s-stale").await.unwrap().is_none());
    assert!(db.set_role("alice", Role::Admin).await.unwrap());
    assert!(db.set_role("root", Role::Viewer).await.unwrap());
    assert_eq!(
        db.token_caller("d-root").await.unwrap().unwrap().role,
        Role::Viewer
    );
    assert_eq!(db.tokens(Some("root")).await.unwrap()[0].role, Role::Viewer);
    assert_eq!(
        db.session("s-root").await.unwrap().unwrap().role,
        Role::Viewer
    );
    assert!(last(db.delete_user("alice").await));
    assert!(db.delete_user("root").await.unwrap());
    assert!(db.token_caller("d-root").await.unwrap().is_none());
    assert!(db.session("s-root").await.unwrap().is_none());
}

/// Two admins demote each other at the same moment: exactly one wins, one admin is left.
async fn two_admins_demote_each_other(url: &str) {
    let db = Database::connect(url).await.unwrap();
    db.add_user("a", Role::Admin, "h").await.unwrap();
    db.add_user("b", Role::Admin, "h").await.unwrap();
    let (x, y) = tokio::join!(
        db.set_role("a", Role::Viewer),
        db.set_role("b", Role::Viewer)
    );
    let won = [&x, &y].iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(won, 1, "{x:?} {y:?}");
    let admins = db.users().await.unwrap();
    assert_eq!(
        admins.iter().filter(|u| u.role == Role::Admin).count(),
        1,
        "{admins:?}"
    );
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("s.db").display())
}

#[tokio::test]
async fn sqlite_the_admin_and_old_tokens_become_admins() {
    let dir = tempfile::tempdir().unwrap();
    the_admin_and_old_tokens_become_admins(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_the_admin_and_old_tokens_become_admins() {
    the_admin_and_old_tokens_become_admins(&fresh_postgres_database()).await;
}

#[tokio::test]
async fn sqlite_roles_and_the_last_admin() {
    let dir = tempfile::tempdir().unwrap();
    roles_and_the_last_admin(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_roles_and_the_last_admin() {
    roles_and_the_last_admin(&fresh_postgres_database()).await;
}

#[tokio::test]
async fn sqlite_two_admins_demote_each_other() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        two_admins_demote_each_other(&sqlite_url(&dir)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_admins_demote_each_other() {
    for _ in 0..5 {
        two_admins_demote_each_other(&fresh_postgres_database()).await;
    }
}
