//! The audit log's rows (written by `crate::audit`, read by `GET /api/v1/audit`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use sqlx::Row;

use super::{Database, DbError};

/// One login, logout or state-changing call. Holds no secret: no password, token,
/// passphrase, enrollment code or request body.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// Sorts in time order; `before` pages with it.
    pub id: String,
    /// When the call came in (UTC).
    pub at: String,
    /// The user acting, or trying to log in (empty when the name given is no user).
    pub actor: String,
    /// `session`, `token NAME`, or `password` (a login).
    pub via: String,
    /// The client's address.
    pub address: String,
    pub method: String,
    /// The route as declared, e.g. `/api/v1/protections/{id}/failover`.
    pub route: String,
    /// Path ids and the request's naming fields, e.g. `id=… kind=test`.
    pub target: String,
    /// The HTTP status answered; 0 while the call runs, or if the server stopped during it.
    pub status: i64,
    /// Why, when the status does not say it all (`wrong password`, `needs operator`…).
    pub detail: String,
}

impl AuditRow {
    /// A row for a call that came in at `at`, with an id that sorts by time.
    pub fn begin(at: DateTime<Utc>) -> AuditRow {
        let mut raw = [0u8; 4];
        // Only a tie-break between calls of the same microsecond.
        let _ =
            aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut raw);
        let id = format!(
            "{}-{}",
            at.format("%Y%m%dT%H%M%S%.6fZ"),
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        AuditRow {
            id,
            at: at.to_rfc3339_opts(SecondsFormat::Micros, true),
            actor: String::new(),
            via: String::new(),
            address: String::new(),
            method: String::new(),
            route: String::new(),
            target: String::new(),
            status: 0,
            detail: String::new(),
        }
    }
}

fn audit_row(r: &sqlx::any::AnyRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        via: r.try_get("via")?,
        address: r.try_get("address")?,
        method: r.try_get("method")?,
        route: r.try_get("route")?,
        target: r.try_get("target")?,
        status: r.try_get("status")?,
        detail: r.try_get("detail")?,
    })
}

impl Database {
    pub async fn add_audit(&self, row: &AuditRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, via, address, method, route, target, status, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&row.id)
        .bind(&row.at)
        .bind(&row.actor)
        .bind(&row.via)
        .bind(&row.address)
        .bind(&row.method)
        .bind(&row.route)
        .bind(&row.target)
        .bind(row.status)
        .bind(&row.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records how a call written with [`Database::add_audit`] ended.
    pub async fn finish_audit(&self, row: &AuditRow) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE audit_log SET actor = $1, via = $2, status = $3, detail = $4 WHERE id = $5",
        )
        .bind(&row.actor)
        .bind(&row.via)
        .bind(row.status)
        .bind(&row.detail)
        .bind(&row.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` rows, or those older than the row `before`.
    pub async fn audit_log(
        &self,
        limit: i64,
        before: Option<&str>,
    ) -> Result<Vec<AuditRow>, DbError> {
        const COLS: &str =
            "SELECT id, at, actor, via, address, method, route, target, status, detail FROM audit_log";
        let rows = match before {
            Some(b) => {
                let sql = format!("{COLS} WHERE id < $1 ORDER BY id DESC LIMIT $2");
                sqlx::query(AssertSqlSafe(sql))
                    .bind(b)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("{COLS} ORDER BY id DESC LIMIT $1");
                sqlx::query(AssertSqlSafe(sql))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(audit_row).collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_time_order() {
        let t = DateTime::parse_from_rfc3339("2026-12-04T09:59:59.999999Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = AuditRow::begin(t);
        let b = AuditRow::begin(t + chrono::Duration::microseconds(1));
        let c = AuditRow::begin(t + chrono::Duration::hours(30));
        assert!(a.id < b.id && b.id < c.id, "{} {} {}", a.id, b.id, c.id);
        assert_eq!(a.at, "2026-12-04T09:59:59.999999Z");
        assert!(a.id.starts_with("20261204T095959.999999Z-"), "{}", a.id);
    }
}
