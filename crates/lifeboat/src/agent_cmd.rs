//! `lifeboat agent`: runs this host's agent until stopped (SIGINT or SIGTERM).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_agent::api::{router, AgentState};
use lifeboat_agent::enrollment::Enrollment;
use lifeboat_agent::identity::Identity;
use lifeboat_agent::serve::{serve, Transport};
use lifeboat_hypervisor::{Driver, Hypervisor, QemuDriver};

use crate::cli::AgentArgs;

/// A started agent: where it listens, who it is, and the future that serves it.
pub struct StartedAgent {
    pub addr: std::net::SocketAddr,
    pub hostname: String,
    pub fingerprint: String,
    /// The one-time enrollment code, at first start only.
    pub code: Option<String>,
    pub enrolled_by: Option<String>,
    pub serve: futures::future::BoxFuture<'static, Result<()>>,
}

/// Sets up the agent (identity, enrollment, listener) without serving yet.
pub async fn start(qemu: QemuDriver, home: &Path, args: AgentArgs) -> Result<StartedAgent> {
    let mut libvirt = lifeboat_hypervisor::libvirt::LibvirtConfig::new(home);
    // `--accel` says how recovered domains run too (`tcg`: libvirt's type `qemu`).
    libvirt.domain_type = match qemu.config().accel {
        lifeboat_hypervisor::Accel::Tcg => Some("qemu".into()),
        lifeboat_hypervisor::Accel::Kvm => Some("kvm".into()),
        lifeboat_hypervisor::Accel::Auto => None,
    };
    let driver = Driver::choose(
        args.hypervisor.into(),
        qemu,
        libvirt,
        Path::new(lifeboat_hypervisor::LIBVIRT_SOCKET),
    )?;
    tracing::info!(driver = driver.kind(), "hypervisor driver");
    let recovery_place = driver.recovery_place(home);
    let agent_home = lifeboat_agent::home::open(home)
        .with_context(|| format!("opening the agent's home {}", home.display()))?;
    let hostname = match args.hostname {
        Some(h) => h,
        None => system_hostname()?,
    };
    let (enrollment, code) = Enrollment::load(&agent_home, args.reset_enrollment)?;
    // The server pins the fingerprint of the certificate served: the operator's
    // (`--tls-cert`; a new one means enrolling again) or the agent's own identity.
    let (transport, fingerprint) = match (&args.files.tls_cert, &args.files.tls_key) {
        _ if args.insecure_http => (Transport::PlainLoopback, String::new()),
        (Some(cert), Some(key)) => {
            let (transport, leaf) = Transport::tls_from_pem(cert, key)?;
            (transport, lifeboat_agent::identity::fingerprint(&leaf))
        }
        _ => {
            let identity = Identity::load_or_create(&agent_home, &hostname)?;
            (Transport::tls(&identity)?, identity.fingerprint())
        }
    };
    let (listener, addr) = bind(args.listen).await?;
    let enrolled_by = enrollment.enrolled().map(|e| e.server_fingerprint);
    let state = Arc::new(AgentState {
        hostname: hostname.clone(),
        fingerprint: fingerprint.clone(),
        enrollment,
        driver,
        syncs: lifeboat_agent::sync::Syncs::open(&agent_home)
            .with_context(|| format!("opening {}/syncs", agent_home.display()))?,
        vaults: lifeboat_agent::replicate::VaultCache::new(Arc::new(
            lifeboat_agent::sealing::SealingKey::load_or_create(&agent_home)?,
        )),
        records: lifeboat_agent::replicate::Records::open(&agent_home)
            .with_context(|| format!("opening {}/replicated", agent_home.display()))?,
        jobs: Arc::new(
            lifeboat_agent::jobs::Jobs::open(&agent_home)
                .with_context(|| format!("opening {}/jobs", agent_home.display()))?,
        ),
        max_rate: args
            .max_rate
            .as_deref()
            .map(crate::vault_cmd::parse_size)
            .transpose()?
            .map(u64::from),
        recoveries: Arc::new(
            lifeboat_agent::provision::Recoveries::open(home, &agent_home)
                .with_context(|| format!("opening {}/recoveries", agent_home.display()))?
                .with_place(recovery_place)
                .with_hydrate_rate(
                    args.hydrate_rate
                        .as_deref()
                        .map(crate::vault_cmd::parse_size)
                        .transpose()?
                        .map(u64::from),
                ),
        ),
    });
    // A guest an earlier agent process left frozen (killed between freeze and thaw)
    // writes nothing until thawed.
    {
        let driver = state.driver.clone();
        tokio::spawn(async move {
            for vm in driver.list().await.unwrap_or_default() {
                if let Err(e) = driver
                    .thaw_guest(&vm.name, std::time::Duration::from_secs(10))
                    .await
                {
                    tracing::error!(vm = %vm.name, error = %e, "thawing a guest left frozen");
                }
            }
        });
    }
    let limits = lifeboat_agent::serve::Limits::new(args.max_connections);
    let serve = Box::pin(async move {
        serve(listener, transport, router(state), limits)
            .await
            .map_err(anyhow::Error::from)
    });
    Ok(StartedAgent {
        addr,
        hostname,
        fingerprint,
        code,
        enrolled_by,
        serve,
    })
}

pub async fn run(driver: QemuDriver, home: &Path, args: AgentArgs) -> Result<()> {
    let scheme = if args.insecure_http { "http" } else { "https" };
    let agent = start(driver, home, args).await?;
    let mut banner = format!(
        "Lifeboat agent {} on {}\nListening on {scheme}://{}\n",
        lifeboat_agent::VERSION,
        agent.hostname,
        agent.addr
    );
    if !agent.fingerprint.is_empty() {
        banner += &format!("Certificate fingerprint (SHA-256): {}\n", agent.fingerprint);
    }
    banner += &match (&agent.code, &agent.enrolled_by) {
        (Some(code), _) => format!(
            "Enrollment code (shown once): {code}\nEnroll this host from the server with that code.\n"
        ),
        (None, Some(server)) => format!("Enrolled by the server with fingerprint {server}\n"),
        (None, None) => "Not enrolled yet; its code was shown at first start (restart with --reset-enrollment for a new one)\n".into(),
    };
    // Best effort: an agent whose stdout was closed (a supervisor that stopped reading)
    // keeps serving.
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(banner.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "could not print the banner");
    }
    drop(out);
    tokio::select! {
        r = agent.serve => r,
        _ = shutdown_signal() => {
            eprintln!("stopping the agent");
            Ok(())
        }
    }
}

/// Listens on `listen`; the listener and the address it got (port 0 picks one).
pub async fn bind(
    listen: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (in use? pick another with --listen)"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Ctrl-C or SIGTERM: a daemon's cue to stop cleanly.
pub async fn shutdown_signal() {
    crate::exit::stopping_signal().await;
}

fn system_hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name; pass --hostname")?;
    Ok(name.trim().to_string())
}
