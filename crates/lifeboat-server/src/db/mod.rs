//! The server's state. `sqlite://PATH` (created if missing) or `postgres://…`; the same
//! portable migrations run on both (TEXT and BIGINT only; times as RFC 3339 text).

mod audit;
mod operations;
mod protections;
mod recoveries;
mod tokens;
mod users;
mod vault_keys;

pub use audit::AuditRow;
pub use lifeboat_types::{HostId, ProtectionId, RecoveryId};
pub use operations::{CancelAsked, NewOperation, Operation, Progress};
pub use protections::{
    Event, Facts, FailoverKind, PointRow, Protection, ProtectionState, TransitionError, UNREPORTED,
};
pub use recoveries::Recovery;
pub use tokens::{TokenCaller, TokenRow};
pub use users::{SessionRow, UserRow};

use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("{0}")]
    Conflict(String),
    /// A state change the state machine does not allow (a bug in the caller, or a
    /// request that raced with another actor's move).
    #[error("{0}")]
    Refused(String),
}

/// An enrolled host, as the API shows it (never its credential).
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Host {
    #[schema(value_type = String)]
    pub id: HostId,
    pub address: String,
    pub hostname: String,
    pub fingerprint: String,
    pub enrolled_at: String,
}

/// A host with what the server needs to call its agent.
#[derive(Clone, Debug)]
pub struct HostAccess {
    pub host: Host,
    pub credential: lifeboat_agent::secret::Secret,
}

#[derive(Clone)]
pub struct Database {
    pub(crate) pool: AnyPool,
}

impl Database {
    pub async fn connect(url: &str) -> Result<Database, DbError> {
        sqlx::any::install_default_drivers();
        // SQLite: create the file if missing.
        let full = if url.starts_with("sqlite:") && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 8 })
            // What SQLite deletes or overwrites is zeroed, not left in free pages: a
            // secret the server forgets (a vault passphrase of an earlier version, a
            // revoked token's digest) is gone from the file too.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::query("PRAGMA secure_delete = ON")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&full)
            .await
            .map_err(|source| DbError::Connect {
                url: redact(url),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Database { pool })
    }

    pub async fn add_host(&self, h: &Host, credential: &str) -> Result<(), DbError> {
        let r = sqlx::query(
            "INSERT INTO hosts (id, address, hostname, fingerprint, credential, enrolled_at, generation) \
             VALUES ($1, $2, $3, $4, $5, $6, 1)",
        )
        .bind(h.id.as_str())
        .bind(&h.address)
        .bind(&h.hostname)
        .bind(&h.fingerprint)
        .bind(credential)
        .bind(&h.enrolled_at)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(DbError::Conflict(
                format!("a host at {} is enrolled already", h.address),
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn host_by_address(&self, address: &str) -> Result<Option<Host>, DbError> {
        let row = sqlx::query(
            "SELECT id, address, hostname, fingerprint, credential, enrolled_at FROM hosts WHERE address = $1",
        )
        .bind(address)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(host_access).transpose()?.map(|a| a.host))
    }

    pub async fn host_access(&self, id: &str) -> Result<Option<HostAccess>, DbError> {
        let row = sqlx::query(
            "SELECT id, address, hostname, fingerprint, credential, enrolled_at FROM hosts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(host_access).transpose()?)
    }

    pub async fn hosts(&self) -> Result<Vec<Host>, DbError> {
        Ok(self
            .hosts_with_access()
            .await?
            .into_iter()
            .map(|a| a.host)
            .collect())
    }

    pub async fn hosts_with_access(&self) -> Result<Vec<HostAccess>, DbError> {
        let rows = sqlx::query(
            "SELECT id, address, hostname, fingerprint, credential, enrolled_at FROM hosts ORDER BY hostname, address",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| host_access(r).map_err(DbError::from))
            .collect()
    }
}

fn host_access(r: &sqlx::any::AnyRow) -> Result<HostAccess, sqlx::Error> {
    Ok(HostAccess {
        host: Host {
            id: r.try_get::<String, _>("id")?.into(),
            address: r.try_get("address")?,
            hostname: r.try_get("hostname")?,
            fingerprint: r.try_get("fingerprint")?,
            enrolled_at: r.try_get("enrolled_at")?,
        },
        credential: r.try_get::<String, _>("credential")?.into(),
    })
}

/// A database URL without its password (in the user part or a `password=`/`sslpassword=`
/// parameter), for messages; the URL as given when it holds none.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s && base[s + 3..at].contains(':') => {
            let creds = &base[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &base[..s + 3], &base[at..])
        }
        _ => base.to_string(),
    };
    if let Some(q) = query {
        let hidden: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if matches!(k.to_ascii_lowercase().as_str(), "password" | "sslpassword") =>
                {
                    format!("{k}=***")
                }
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{out}?{}", hidden.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://lb:secret@db:5432/x"),
            "postgres://lb:***@db:5432/x"
        );
        assert_eq!(redact("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
        assert_eq!(
            redact("postgres://lb@db/x?sslmode=require&password=secret"),
            "postgres://lb@db/x?sslmode=require&password=***"
        );
    }

    #[test]
    fn debug_output_shows_no_credential_or_passphrase() {
        let host = HostAccess {
            host: Host {
                id: "h1".into(),
                address: "127.0.0.1:7443".into(),
                hostname: "alpha".into(),
                fingerprint: "ab".into(),
                enrolled_at: "now".into(),
            },
            credential: "agent-credential-7f3a".into(),
        };
        let protection = Protection {
            vault_passphrase: "vault-passphrase-7f3a".into(),
            ..Default::default()
        };
        let text = format!("{host:?} {protection:?} {host:#?} {protection:#?}");
        assert!(!text.contains("7f3a"), "{text}");
        assert!(text.contains("alpha"), "the rest still shows: {text}");
    }
}
