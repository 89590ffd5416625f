//! Who is calling: dashboard users (argon2id passwords, roles), their login sessions,
//! CSRF tokens, and API tokens.
//!
//! A session is a random cookie (`HttpOnly`, `SameSite=Strict`, `Secure` on TLS) whose
//! SHA-256 the server keeps, with the session's CSRF token. Every state-changing request
//! made with a session must carry that token (`X-CSRF-Token` header, or a `csrf` form
//! field), so another site cannot act in the operator's name even if a browser sent the
//! cookie. The login form itself is guarded by a double-submit cookie, since there is no
//! session yet.
//!
//! - `throttle`: login throttling and lockout, and the bounded queue of password checks.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use axum::http::{header, HeaderMap, Method};
use chrono::{SecondsFormat, Utc};

use crate::db::{Database, DbError};

pub mod throttle;

// Roles sit below the database (`crate::role`), which stores them; named here as before.
pub use crate::role::{Role, UnknownRole};
pub use throttle::{Refusal, Throttle};

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the dashboard password must have at least {MIN_PASSWORD_LEN} characters")]
    TooShort,
    #[error("hashing the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The user the first start makes (and `LIFEBOAT_ADMIN_PASSWORD` resets).
pub const ADMIN: &str = "admin";
pub const SESSION_COOKIE: &str = "lifeboat_session";
pub const LOGIN_CSRF_COOKIE: &str = "lifeboat_login_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A login lasts this long; then the operator logs in again.
pub const SESSION_HOURS: i64 = 12;
/// Shorter passwords are refused when set.
pub const MIN_PASSWORD_LEN: usize = 10;
/// The pause before a wrong password is answered. It holds the address's one login
/// slot (`throttle`), so one address guesses at most about once a second; someone who
/// mistyped barely notices.
const FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// SHA-256 of an API token, hex: only this is stored.
pub fn token_digest(token: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A logged-in user. `Debug` leaves the secrets out.
#[derive(Clone)]
pub struct Session {
    pub user: String,
    /// The user's role as the request came in (a change applies to open sessions).
    pub role: Role,
    pub csrf: String,
    /// SHA-256 of the cookie: how the session is found and ended.
    pub id_sha256: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// How a request proved who it is.
#[derive(Clone, Debug)]
pub enum Via {
    Session(Session),
    Token { id: String, name: String },
}

/// Who a request comes from: found once per request (by `crate::audit`), then read by
/// the API's and the pages' gates and by handlers.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The user: the session's, or the token's owner.
    pub user: String,
    /// What the request may do: the user's role, or the token's (never above its
    /// owner's).
    pub role: Role,
    pub via: Via,
}

impl Caller {
    /// `session`, or `token NAME`: how the audit log says it.
    pub fn via_text(&self) -> String {
        match &self.via {
            Via::Session(_) => "session".into(),
            Via::Token { name, .. } => format!("token {name}"),
        }
    }

    /// `alice`, or `token grafana of alice`: for messages.
    pub fn describe(&self) -> String {
        match &self.via {
            Via::Session(_) => self.user.clone(),
            Via::Token { name, .. } => format!("token {name} of {}", self.user),
        }
    }
}

/// How a login ended. (No `Debug`: it holds the new session's cookie.)
pub enum Login {
    /// The cookie's value, and the session it opens.
    Opened(String, Session),
    /// Wrong user name or password. `user_exists` is for the audit log only (the answer
    /// does not say); `locked` is the lock this failure started.
    Wrong {
        user_exists: bool,
        locked: Option<Refusal>,
    },
    /// No password was checked.
    NotChecked(Refusal),
}

/// 32 random bytes as hex: session ids, CSRF tokens, generated passwords.
pub fn random_secret() -> String {
    let mut raw = [0u8; 32];
    // The OS's randomness failing is not something a login can work around.
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut raw)
        .expect("randomness from the operating system");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort);
    }
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| PasswordError::Hash("no randomness from the operating system".into()))?;
    // Argon2::default() is argon2id with the RFC 9106 second recommended parameters.
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &raw)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Makes sure someone can log in. `given` (LIFEBOAT_ADMIN_PASSWORD, read on the server's
/// machine) makes user `admin` an admin with that password, at first start or to reset
/// it: the way back in for whoever runs the server. Without it, the first start (no user
/// at all) makes `admin` with a random password and returns it to be shown once; later
/// starts change nothing, so a removed `admin` stays removed.
pub async fn ensure_admin_password(
    db: &Database,
    given: Option<&str>,
) -> Result<Option<String>, PasswordError> {
    if let Some(password) = given {
        let stored = db.password_hash(ADMIN).await?;
        let is_admin = db.user(ADMIN).await?.is_some_and(|u| u.role == Role::Admin);
        if !(is_admin
            && stored
                .as_deref()
                .is_some_and(|h| verify_password(h, password)))
        {
            let hash = hash_password(password)?;
            db.reset_admin(ADMIN, &hash).await?;
            tracing::info!("user admin's password set from LIFEBOAT_ADMIN_PASSWORD");
        }
        return Ok(None);
    }
    if db.user_count().await? > 0 {
        return Ok(None);
    }
    // 24 hex characters: 96 bits, typed once and then kept by a password manager.
    let password = random_secret()[..24].to_string();
    let hash = hash_password(&password)?;
    db.add_user(ADMIN, Role::Admin, &hash).await?;
    Ok(Some(password))
}

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value; `max_age` 0 removes the cookie.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age_secs: i64) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Checks `user`'s password, if the throttle lets a login from `address` through, and
/// opens a session when it is right.
pub async fn log_in(
    db: &Database,
    throttle: &Throttle,
    user: &str,
    password: &str,
    address: IpAddr,
) -> Result<Login, DbError> {
    let mut admission = match throttle.admit(user, address, Instant::now()) {
        Ok(a) => a,
        Err(refusal) => return Ok(Login::NotChecked(refusal)),
    };
    let stored = db.password_hash(user).await?;
    let user_exists = stored.is_some();
    let checked_hash = stored.clone().unwrap_or_default();
    let password = password.to_string();
    let right = admission
        .check(move || match stored {
            Some(hash) => verify_password(&hash, &password),
            None => {
                // Spend the time a real check takes, so timing does not tell which
                // users exist.
                let _ = hash_password("not-a-user-password");
                false
            }
        })
        .await;
    if !right {
        let locked = throttle.failed(user, address, Instant::now());
        tokio::time::sleep(FAILURE_PAUSE).await;
        drop(admission);
        return Ok(Login::Wrong {
            user_exists,
            locked,
        });
    }
    throttle.succeeded(user, address);
    drop(admission);
    let value = random_secret();
    let session = Session {
        user: user.to_string(),
        role: db.user(user).await?.map_or(Role::Viewer, |u| u.role),
        csrf: random_secret(),
        id_sha256: token_digest(&value),
    };
    let expires = (Utc::now() + chrono::Duration::hours(SESSION_HOURS))
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    db.delete_expired_sessions(&Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true))
        .await?;
    if !db
        .add_session(
            &session.id_sha256,
            user,
            &session.csrf,
            &expires,
            &checked_hash,
        )
        .await?
    {
        // The password was reset, or the user removed, while it was being checked.
        return Ok(Login::Wrong {
            user_exists: false,
            locked: None,
        });
    }
    Ok(Login::Opened(value, session))
}

/// The bearer token a request carries, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Who the request comes from: its API token (when it has one, only that counts), else
/// its live session. None when neither proves anyone.
pub async fn identify(db: &Database, headers: &HeaderMap) -> Result<Option<Caller>, DbError> {
    if let Some(token) = bearer(headers) {
        return Ok(db
            .token_caller(&token_digest(token))
            .await?
            .map(|t| Caller {
                user: t.owner,
                role: t.role,
                via: Via::Token {
                    id: t.id,
                    name: t.name,
                },
            }));
    }
    let Some(value) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(live_session(db, &token_digest(value))
        .await?
        .map(|s| Caller {
            user: s.user.clone(),
            role: s.role,
            via: Via::Session(s),
        }))
}

/// The session whose cookie hashes to `id_sha256`, unless it is gone or past its end
/// (then it is removed).
pub async fn live_session(db: &Database, id_sha256: &str) -> Result<Option<Session>, DbError> {
    let Some(row) = db.session(id_sha256).await? else {
        return Ok(None);
    };
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    if row.expires_at < now {
        db.delete_session(id_sha256).await?;
        return Ok(None);
    }
    Ok(Some(Session {
        user: row.user,
        role: row.role,
        csrf: row.csrf,
        id_sha256: id_sha256.to_string(),
    }))
}

/// Whether a request changes state (and so needs the CSRF token).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Compares in constant time, so the response time leaks nothing about the token.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The CSRF token a request carries in its header.
pub fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("a long enough password").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "a long enough password"));
        assert!(!verify_password(&h, "a long enough passworD"));
        assert!(!verify_password("not a hash", "x"));
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
        // Each hash has its own salt.
        assert_ne!(
            hash_password("a long enough password").unwrap(),
            hash_password("a long enough password").unwrap()
        );
    }

    /// A user's password hash stored by an earlier release (argon2 0.5, RFC 9106's second
    /// recommended parameters) still verifies: an argon2 upgrade must not lock users out.
    #[test]
    fn a_password_hashed_before_verifies() {
        let stored = "$argon2id$v=19$m=19456,t=2,p=1$CQkJCQkJCQkJCQkJCQkJCQ\
                      $pOqQirULkxHWuAH8qBQTRDGbdpw4foY2az6Q+vq2uvM";
        assert!(verify_password(stored, "correct horse battery"));
        assert!(!verify_password(stored, "correct horse batterY"));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; lifeboat_session=xyz".parse().unwrap());
        h.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "lifeboat"), None);
        let c = set_cookie(SESSION_COOKIE, "v", true, 60);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"));
        assert!(!set_cookie(SESSION_COOKIE, "v", false, 60).contains("Secure"));
    }

    #[test]
    fn sessions_debug_without_their_secrets() {
        let s = Session {
            user: "alice".into(),
            role: Role::Operator,
            csrf: "csrf-secret".into(),
            id_sha256: "digest-secret".into(),
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("alice") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", ""));
    }
}
