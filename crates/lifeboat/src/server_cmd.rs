//! `lifeboat server`: runs the control plane until stopped.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_agent::identity::Identity;
use lifeboat_agent::serve::{serve, Transport};
use lifeboat_server::api::ServerState;
use lifeboat_server::auth::token_digest;
use lifeboat_server::db::Database;

use crate::cli::ServerArgs;

/// A started server: its address, identity, first token, and the future that serves it.
pub struct StartedServer {
    pub addr: std::net::SocketAddr,
    pub fingerprint: String,
    /// The API token, printed at first start only.
    pub first_token: Option<String>,
    pub token_path: std::path::PathBuf,
    /// The dashboard's admin password, when this start made it (printed once).
    pub first_password: Option<String>,
    pub password_path: std::path::PathBuf,
    pub serve: futures::future::BoxFuture<'static, Result<()>>,
}

/// Opens the database, makes the identity and first token, binds; serving starts when
/// `serve` is polled. Replication starts at once.
pub async fn start(home: &Path, args: ServerArgs) -> Result<StartedServer> {
    if let Some(url) = &args.database {
        refuse_password_in_arguments(url)?;
    }
    let server_home = home.join("server");
    // The database holds agent credentials (and, until converted, the vault passphrases
    // of protections enabled by an earlier version): root's eyes only.
    private_dir(&server_home)?;
    // TSIG keys of the DNS records failovers move: files, never in the database.
    lifeboat_server::dns_switch::set_keys_dir(server_home.join("dns-keys"));
    let url = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", server_home.join("lifeboat.db").display()));
    let db = Database::connect(&url).await?;
    let ended = db.recover_operations().await?;
    if ended > 0 {
        tracing::warn!(
            ended,
            "operations left running by a previous server process failed"
        );
    }
    // Operations on the engine go on where they were (undoing, if they were undoing).
    let resumed = lifeboat_server::ops::resume_all(&db).await?;
    if resumed > 0 {
        tracing::warn!(resumed, "operations of a previous server process resumed");
    }
    // The server's identity: agents pin its fingerprint at enrollment.
    let identity = Identity::load_or_create(&server_home, "lifeboat-server")?;
    let fingerprint = identity.fingerprint();
    let token_path = server_home.join("admin.token");
    let first_token = if db.token_count().await? == 0 {
        let token = lifeboat_server::auth::random_secret();
        // The first token is the first admin's (made just below).
        db.add_token(
            "admin",
            &token_digest(&token),
            lifeboat_server::auth::ADMIN,
            lifeboat_server::auth::Role::Admin,
        )
        .await?;
        write_private(&token_path, &token)?;
        Some(token)
    } else {
        None
    };
    // The dashboard's password: LIFEBOAT_ADMIN_PASSWORD sets (or resets) it; else the
    // first start makes one, shown once and kept beside the token for root.
    let password_path = server_home.join("admin.password");
    let given = std::env::var("LIFEBOAT_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let first_password = lifeboat_server::auth::ensure_admin_password(&db, given.as_deref())
        .await
        .map_err(anyhow::Error::msg)
        .context("setting the dashboard password (LIFEBOAT_ADMIN_PASSWORD)")?;
    if let Some(p) = &first_password {
        write_private(&password_path, p)?;
    } else if given.is_some() {
        // The file would hold a password that no longer works.
        let _ = std::fs::remove_file(&password_path);
    }
    // The API's certificate: the operator's (`--tls-cert`), else the identity. Clients pin
    // its fingerprint or check it against their CA; agents keep the identity's.
    let (transport, api_cert) = match (&args.files.tls_cert, &args.files.tls_key) {
        _ if args.insecure_http => (Transport::PlainLoopback, identity.cert.clone()),
        (Some(cert), Some(key)) => Transport::tls_from_pem(cert, key)?,
        _ => (Transport::tls(&identity)?, identity.cert.clone()),
    };
    let api_fingerprint = lifeboat_agent::identity::fingerprint(&api_cert);
    // The CLI on this machine pins what the API serves without being told (server_client).
    write_private_bytes(&server_home.join("api-cert.der"), &api_cert)?;
    let (listener, addr) = crate::agent_cmd::bind(args.listen).await?;
    // Replication runs beside the API and picks up every protection, including ones
    // whose syncs were running when a previous server process died.
    tokio::spawn(lifeboat_server::replication::run(db.clone()));
    tokio::spawn(lifeboat_server::recovery_watch::run(db.clone()));
    let health = Arc::new(lifeboat_server::host_health::HealthBoard::default());
    tokio::spawn(lifeboat_server::host_health::run(
        db.clone(),
        health.clone(),
    ));
    // Protections enabled by an earlier version still hold their vault passphrase.
    tokio::spawn(lifeboat_server::vault_keys::run(db.clone()));
    let state = Arc::new(ServerState {
        db,
        fingerprint: fingerprint.clone(),
        tls: !args.insecure_http,
        live: Default::default(),
        throttle: Default::default(),
        health,
        agents: Default::default(),
    });
    let limits = lifeboat_agent::serve::Limits::new(args.max_connections);
    let serve = Box::pin(async move {
        serve(listener, transport, lifeboat_server::app(state), limits)
            .await
            .map_err(anyhow::Error::from)
    });
    Ok(StartedServer {
        addr,
        fingerprint: api_fingerprint,
        first_token,
        token_path,
        first_password,
        password_path,
        serve,
    })
}

/// A database URL with a password is refused on the command line, where every local user
/// reads it in the process list; LIFEBOAT_DATABASE (or PGPASSWORD) keeps it out of sight.
fn refuse_password_in_arguments(url: &str) -> Result<()> {
    let on_command_line = std::env::args().any(|a| a.contains(url));
    if on_command_line && url_has_password(url) {
        anyhow::bail!(
            "the --database URL holds a password, which every user of this machine can read in the process list: \
             set LIFEBOAT_DATABASE to the URL instead (or leave the password out and set PGPASSWORD)"
        );
    }
    Ok(())
}

/// Whether a database URL carries a password: whether hiding it changes the URL.
pub(crate) fn url_has_password(url: &str) -> bool {
    lifeboat_server::db::redact(url) != url
}

pub async fn run(home: &Path, args: ServerArgs) -> Result<()> {
    let scheme = if args.insecure_http { "http" } else { "https" };
    let server = start(home, args).await?;
    println!("Lifeboat server {}", env!("CARGO_PKG_VERSION"));
    println!("API on {scheme}://{}", server.addr);
    println!("Dashboard on {scheme}://{}/", server.addr);
    println!("Certificate fingerprint (SHA-256): {}", server.fingerprint);
    if let Some(token) = &server.first_token {
        println!(
            "API token (shown once; also in {}): {token}",
            server.token_path.display()
        );
    }
    if let Some(password) = &server.first_password {
        println!(
            "Dashboard password for admin (shown once; also in {}): {password}",
            server.password_path.display()
        );
    }
    println!("Ready");
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        api = %format!("{scheme}://{}", server.addr),
        fingerprint = %server.fingerprint,
        "server ready"
    );
    let r = tokio::select! {
        r = server.serve => r,
        _ = crate::agent_cmd::shutdown_signal() => Ok(()),
    };
    tracing::info!("server stopped");
    r
}

/// Creates `dir` if needed and makes it readable by its owner only.
pub fn private_dir(dir: &Path) -> Result<()> {
    lifeboat_hypervisor::private::private_dir(dir)
        .with_context(|| format!("making {} private", dir.display()))
}

/// Writes `text` to a file only its owner may read (an existing file is tightened too),
/// synced: a token or password printed once must be on disk.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    write_private_bytes(path, text.as_bytes())
}

fn write_private_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = lifeboat_hypervisor::private::open_private(path, true)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(f.sync_all()?)
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn passwords_in_database_urls_are_found() {
        assert!(url_has_password("postgres://lb:s3cret@db/lifeboat"));
        assert!(url_has_password(
            "postgres://lb:p%40ss@db:5432/lifeboat?sslmode=require"
        ));
        assert!(!url_has_password("postgres://lb@db/lifeboat"));
        assert!(!url_has_password("postgres://db/lifeboat"));
        assert!(!url_has_password(
            "sqlite:///var/lib/lifeboat/server/lifeboat.db"
        ));
        assert!(!url_has_password("postgres://db/lifeboat?user=a:b@c"));
        assert!(url_has_password(
            "postgres://lb@db/lifeboat?password=s3cret"
        ));
        assert!(url_has_password(
            "postgres://lb@db/lifeboat?sslmode=require&sslpassword=x"
        ));
    }
}
