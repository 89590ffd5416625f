//! `lifeboat up`: the embedded default for one machine. Server, agent, a folder vault and
//! SQLite in one process; at first start it enrolls its own agent, boots the demo guest
//! and protects it, then keeps running with the commands to look at it.

use std::path::Path;

use anyhow::{bail, Result};
use lifeboat_hypervisor::{Hypervisor, QemuDriver, VmName, VmState};
use lifeboat_server::api::protection::{ProtectRequest, ProtectionList};
use lifeboat_vault::backend::{Backend, BackendOptions, VaultUrl};
use lifeboat_vault::format::KdfParams;
use lifeboat_vault::Vault;
use serde_json::Value;

use crate::cli::{AgentArgs, ServerArgs, ServerConn, UpArgs};
use crate::output::Output;
use crate::server_client::ServerClient;

/// The VM `up` boots and protects when asked to.
const DEMO_VM: &str = "demo";

pub async fn run(driver: QemuDriver, home: &Path, out: Output, args: UpArgs) -> Result<()> {
    let up_home = home.join("up");
    crate::server_cmd::private_dir(&up_home)?;
    println!(
        "Lifeboat {} — server, agent and vault on this machine",
        env!("CARGO_PKG_VERSION")
    );

    let server = crate::server_cmd::start(
        home,
        ServerArgs {
            listen: args.listen,
            database: args.database.clone(),
            insecure_http: false,
            max_connections: lifeboat_agent::serve::admission::DEFAULT_MAX_CONNECTIONS,
            files: Default::default(),
        },
    )
    .await?;
    let agent = crate::agent_cmd::start(
        driver.clone(),
        home,
        AgentArgs {
            listen: args.agent_listen,
            insecure_http: false,
            max_connections: lifeboat_agent::serve::admission::DEFAULT_MAX_CONNECTIONS,
            reset_enrollment: false,
            hostname: args.hostname.clone(),
            max_rate: None,
            hydrate_rate: None,
            // `up` runs the VM it defines itself.
            hypervisor: crate::cli::HypervisorArg::Qemu,
            files: Default::default(),
        },
    )
    .await?;
    let server_url = format!("https://{}", server.addr);
    let agent_addr = agent.addr.to_string();
    let password_note = match &server.first_password {
        Some(p) => format!(
            "password {p} (shown once; also in {})",
            server.password_path.display()
        ),
        None => format!(
            "password as printed at first start ({}; LIFEBOAT_ADMIN_PASSWORD sets another)",
            server.password_path.display()
        ),
    };
    tokio::spawn(async move {
        if let Err(e) = server.serve.await {
            eprintln!("error: the server stopped: {e:#}");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = agent.serve.await {
            eprintln!("error: the agent stopped: {e:#}");
        }
    });
    println!("  API:   {server_url} (certificate {})", server.fingerprint);
    println!("  dashboard: {server_url}/ — user admin, {password_note}");
    println!("  agent: https://{agent_addr} ({})", agent.hostname);
    let conn = ServerConn {
        server: Some(server_url.clone()),
        server_fingerprint: Some(server.fingerprint.clone()),
        token_file: Some(server.token_path.clone()),
        ca_cert: None,
    };
    let api = ServerClient::new(&conn, home)?;

    // The local agent, enrolled with the code it printed to us.
    let hosts: Vec<Value> = api.get("/api/v1/hosts").await?;
    if !hosts.iter().any(|h| h["address"] == agent_addr.as_str()) {
        let Some(code) = &agent.code else {
            bail!("the local agent is not enrolled and its code was shown before; run `lifeboat agent --reset-enrollment` once, or remove {}", home.join("agent").display());
        };
        let _: Value = api
            .post(
                "/api/v1/hosts",
                &serde_json::json!({"address": agent_addr, "code": code, "fingerprint": agent.fingerprint}),
            )
            .await?;
        println!("  enrolled the local agent ({})", agent.hostname);
    }

    let (vault_url, passphrase) = ensure_vault(home, &up_home, args.vault.as_deref()).await?;
    println!("  vault: {vault_url}");

    if !args.no_demo_vm {
        let port = ensure_demo_vm(&driver, home).await?;
        let protections: ProtectionList = api.get_all("/api/v1/protections").await?;
        let existing = protections.protections.iter().find(|p| p.vm == DEMO_VM);
        let id = match existing {
            Some(p) => p.id.to_string(),
            None => {
                let created: Value = api
                    .post(
                        "/api/v1/protections",
                        &ProtectRequest {
                            vm: DEMO_VM.into(),
                            host: None,
                            vault: vault_url.clone(),
                            vault_passphrase: passphrase.clone().into(),
                            recovery_host: agent.hostname.clone(),
                            policy: Some(args.policy.clone()),
                            network_map: Default::default(),
                        },
                    )
                    .await?;
                println!(
                    "  replication of {DEMO_VM} enabled (policy {})",
                    args.policy
                );
                created["protection_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        let v = crate::protect_cmd::wait_protected(&api, &id, None, out, None).await?;
        println!(
            "  {DEMO_VM} is Protected: recovery point {} (cut {}); its web server: http://127.0.0.1:{port}/",
            v.last_point.as_deref().unwrap_or("?"),
            v.last_point_time.as_deref().unwrap_or("?")
        );
    }

    let exe = crate::demo::exe_for_operator();
    let h = if home == Path::new("/var/lib/lifeboat") {
        String::new()
    } else {
        format!(" --home {}", home.display())
    };
    let s = if server_url == "https://127.0.0.1:7400" {
        String::new()
    } else {
        format!(" --server {server_url}")
    };
    println!("\nLifeboat is up. In another terminal:");
    println!("  {exe}{h} status{s}              # protection states and RPO");
    println!("  {exe}{h} vms list{s}            # every VM of every host");
    println!("  {exe}{h} points {DEMO_VM}{s}         # its recovery points");
    println!(
        "  curl -sk -H \"Authorization: Bearer $(cat {})\" {server_url}/metrics",
        conn.token_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    println!(
        "Ctrl-C stops Lifeboat; the VMs keep running and replication resumes at the next `up`."
    );
    println!("Running");
    crate::agent_cmd::shutdown_signal().await;
    eprintln!("stopping Lifeboat");
    Ok(())
}

/// The vault `up` uses: the one given, or a folder in HOME made at first start with a
/// random passphrase kept in HOME/up/vault.passphrase (mode 0600).
async fn ensure_vault(
    home: &Path,
    up_home: &Path,
    given: Option<&str>,
) -> Result<(String, String)> {
    let url = match given {
        Some(u) => u.to_string(),
        None => {
            let dir = home.join("vault");
            // The vault's config holds the wrapped master key: the folder is root's only.
            crate::server_cmd::private_dir(&dir)?;
            format!("file://{}", dir.canonicalize()?.display())
        }
    };
    let pass_file = up_home.join("vault.passphrase");
    let passphrase = match std::env::var(crate::secrets::PASSPHRASE_ENV) {
        Ok(p) if !p.is_empty() => p,
        _ => match std::fs::read_to_string(&pass_file) {
            Ok(p) => p.trim().to_string(),
            Err(_) => {
                let p = lifeboat_server::auth::random_secret();
                crate::server_cmd::write_private(&pass_file, &p)?;
                p
            }
        },
    };
    let backend = Backend::open(&VaultUrl::parse(&url)?, BackendOptions::default()).await?;
    if Vault::read_config(&backend).await.is_err() {
        Vault::init(backend, &passphrase, 128 << 10, KdfParams::DEFAULT).await?;
        println!(
            "  created the vault; its passphrase is in {} — keep a copy elsewhere, or export a key file:\n    lifeboat vault key export --vault {url} KEYFILE\n  Lose both and the data is gone.",
            pass_file.display()
        );
    }
    Ok((url, passphrase))
}

/// The demo guest, defined and running; returns the host port of its web server.
async fn ensure_demo_vm(driver: &QemuDriver, home: &Path) -> Result<u16> {
    let vm = VmName::new(DEMO_VM).map_err(anyhow::Error::msg)?;
    if driver.spec(&vm).await.is_err() {
        println!("  preparing the demo guest (built once from Debian packages, then cached)");
        let dir = home.join("up");
        let (builder, image) = crate::demo_guest::image().await?;
        println!(
            "  guest image: {} (from {})",
            image.display(),
            builder.display()
        );
        let disk = crate::demo_guest::disk_copy(&image, &dir, "demo.qcow2")?;
        let spec = crate::demo::demo_spec(DEMO_VM, &disk, crate::demo_guest::free_tcp_port()?)?;
        driver.define(spec).await?;
    }
    let spec = driver.spec(&vm).await?;
    let port = spec
        .nics
        .iter()
        .flat_map(|n| &n.host_forwards)
        .find(|f| f.guest_port == 80)
        .map(|f| f.host_port)
        .unwrap_or(0);
    if driver.state(&vm).await? != VmState::Running {
        println!("  booting {DEMO_VM}");
        crate::demo::boot_and_wait(driver, &vm).await?;
    }
    Ok(port)
}
