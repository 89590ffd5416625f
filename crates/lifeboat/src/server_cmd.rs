//! `lifeboat server`: runs the control plane until stopped.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_agent::identity::Identity;
use lifeboat_agent::serve::{serve, Transport};
use lifeboat_server::api::{router, token_digest, ServerState};
use lifeboat_server::db::Database;

use crate::cli::ServerArgs;

pub async fn run(home: &Path, args: ServerArgs) -> Result<()> {
    let server_home = home.join("server");
    std::fs::create_dir_all(&server_home)
        .with_context(|| format!("creating {}", server_home.display()))?;
    let url = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", server_home.join("lifeboat.db").display()));
    let db = Database::connect(&url).await?;
    // The server's identity: agents pin its fingerprint at enrollment.
    let identity = Identity::load_or_create(&server_home, "lifeboat-server")?;
    let fingerprint = identity.fingerprint();
    let first_token = if db.token_count().await? == 0 {
        let token = new_token()?;
        db.add_token("admin", &token_digest(&token)).await?;
        write_private(&server_home.join("admin.token"), &token)?;
        Some(token)
    } else {
        None
    };
    let transport = if args.insecure_http {
        Transport::PlainLoopback
    } else {
        Transport::tls(&identity)?
    };
    let (listener, addr) = crate::agent_cmd::bind(args.listen).await?;
    let scheme = if args.insecure_http { "http" } else { "https" };
    println!("Lifeboat server {}", env!("CARGO_PKG_VERSION"));
    println!("API on {scheme}://{addr}");
    println!("Certificate fingerprint (SHA-256): {fingerprint}");
    if let Some(token) = first_token {
        println!(
            "API token (shown once; also in {}): {token}",
            server_home.join("admin.token").display()
        );
    }
    println!("Ready");
    // Replication runs beside the API and picks up every protection, including ones
    // whose syncs were running when a previous server process died.
    tokio::spawn(lifeboat_server::replication::run(db.clone()));
    let state = Arc::new(ServerState { db, fingerprint });
    tokio::select! {
        r = serve(listener, transport, router(state)) => r.map_err(anyhow::Error::from),
        _ = crate::agent_cmd::shutdown_signal() => Ok(()),
    }
}

fn new_token() -> Result<String> {
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness from the operating system"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(f.sync_all()?)
}
