//! PostgreSQL for the server's tests: the cluster `./scripts/test` starts (Debian's
//! `postgresql`), reached through `LIFEBOAT_TEST_POSTGRES`, a URL of a role that may
//! create databases. Each test gets a database of its own.

use std::process::Command;

/// The test server's URL (database `postgres`). Panics with what to do when unset: a
/// test that needs PostgreSQL must not pass without it.
pub fn postgres_url() -> String {
    std::env::var("LIFEBOAT_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "LIFEBOAT_TEST_POSTGRES is not set: run ./scripts/test, which starts PostgreSQL and sets it \
             (or set it to postgres://USER:PASSWORD@HOST:PORT/postgres for a role that may CREATE DATABASE)"
        )
    })
}

/// A new, empty database on the test server; its URL. (`./scripts/test` drops those of
/// earlier runs.)
pub fn fresh_postgres_database() -> String {
    new_postgres_database(&postgres_url()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A new, empty database (`lifeboat_test_…`) on the server at `base`, the URL of a role
/// that may create databases; its URL.
pub fn new_postgres_database(base: &str) -> anyhow::Result<String> {
    let mut raw = [0u8; 8];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let name = format!(
        "lifeboat_test_{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let out = Command::new("psql")
        .arg(base)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .map_err(|e| anyhow::anyhow!("running psql (Debian postgresql-client): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "creating database {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("{base}: a URL ending in /DATABASE"))?;
    Ok(format!("{prefix}/{name}"))
}
