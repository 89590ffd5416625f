//! `lifeboat`: the one binary. Each subcommand lives in its own module; this file only
//! parses the command line, sets up logging and maps errors to exit codes.

mod agent_cmd;
mod cbt_cmd;
mod cli;
mod config_file;
mod demo;
mod demo_guest;
mod events;
mod exit;
mod failover_cmd;
mod generate_cmd;
mod hosts_cmd;
mod image_source;
mod maintenance_cmd;
mod network_cmd;
mod operations_cmd;
mod output;
mod protect_cmd;
mod ready_probe;
mod secrets;
mod server_client;
mod server_cmd;
mod up_cmd;
mod users_cmd;
mod vault_cmd;
mod vm_cmd;

use clap::{CommandFactory, FromArgMatches};
use lifeboat_hypervisor::{QemuConfig, QemuDriver};

/// Keeps glibc from hoarding freed buffers. Chunks and read pieces are allocated on one
/// thread and freed on another; with one arena per thread, glibc kept ~350 MiB resident
/// for a 4 GiB `put-image` that needs ~100 MiB (two arenas: ~140 MiB, same speed).
/// Lowering the mmap threshold as well cut that to 74 MiB but cost 30% in page faults.
fn tame_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> std::process::ExitCode {
    tame_malloc();
    // A script that asked for JSON gets even a usage error as JSON (exit 2, as clap's).
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let json_asked = argv.iter().any(|a| a == "--json");
    let root = match cli::Cli::command().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) if e.use_stderr() => {
            let mut message = usage_error(&e);
            if let Some(hint) = cli::subcommand_name_hint(&argv) {
                message = format!("{message}\n\nhint: {hint}");
            }
            return failed(&message, exit::USAGE, json_asked);
        }
        Err(e) => e.exit(),
    };
    let mut cli = match cli::Cli::from_arg_matches(&root) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Daemons stop cleanly on Ctrl-C and SIGTERM themselves (exit 0); any other command
    // stopped by one says so and exits 130.
    let daemon = matches!(
        cli.command,
        cli::Command::Agent(_) | cli::Command::Server(_) | cli::Command::Up(_)
    );
    // Before logging starts: a daemon's file may set the log format.
    let config_read = match config_file::apply(&mut cli, &root) {
        Ok(read) => read,
        // A file that is not there or cannot be read is a usage error too: nothing started.
        Err(e) => return failed(&format!("{e:#}"), exit::USAGE, cli.json),
    };
    init_logging(cli.verbose, cli.log_format, daemon);
    if let Some(path) = config_read {
        tracing::info!(file = %path.display(), "config file read");
    }
    // Listeners size their connection limits from this (serve::admission).
    lifeboat_agent::serve::admission::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let json = cli.json;
    if !daemon {
        // On a worker thread, so that it acts even while the command blocks its own
        // thread (a passphrase prompt): the process ends there and then, as an
        // uncaught signal would end it, but saying so and with the conventional code.
        runtime.spawn(async move {
            let code = exit::stopping_signal().await;
            exit::say_interrupted(code, json);
            std::process::exit(code.into());
        });
    }
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => failed(&format!("{e:#}"), exit::code_of(&e), json),
    }
}

/// Says `error` on stderr (a JSON object when `json`) and returns `code`.
fn failed(error: &str, code: u8, json: bool) -> std::process::ExitCode {
    if json {
        // A script that asked for JSON gets its error as JSON too.
        eprintln!("{}", serde_json::json!({"error": error, "exit_code": code}));
    } else {
        eprintln!("error: {error}");
    }
    std::process::ExitCode::from(code)
}

/// clap's message for a usage error, without its "error: " prefix and colours.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.trim()
        .strip_prefix("error: ")
        .unwrap_or(text.trim())
        .to_string()
}

fn init_logging(verbose: u8, format: cli::LogFormat, daemon: bool) {
    // A daemon's log is its record of what it did (enrolled, synced, moved): Lifeboat's
    // own info lines; the libraries' only from warn.
    let default = match verbose {
        0 if daemon => {
            "warn,lifeboat=info,lifeboat_server=info,lifeboat_agent=info,\
             lifeboat_hypervisor=info,lifeboat_vault=info,lifeboat_nbd=info,lifeboat_dns=info"
        }
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn driver(cli: &cli::Cli) -> anyhow::Result<QemuDriver> {
    // Before the driver tightens the home: a home a newer Lifeboat wrote is left as it is.
    lifeboat_agent::state_version::check(&cli.home)?;
    let mut config = QemuConfig::new(&cli.home);
    config.accel = cli.accel;
    Ok(QemuDriver::new(config)?)
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let out = output::Output { json: cli.json };
    match cli.command {
        cli::Command::Generate(cmd) => return generate_cmd::run(cmd),
        cli::Command::Vault(args) => return vault_cmd::run(out, args).await,
        cli::Command::Hosts(cmd) => return hosts_cmd::run(out, &cli.home, cmd).await,
        cli::Command::Vms(cmd) => return hosts_cmd::run_vms(out, &cli.home, cmd).await,
        cli::Command::Server(args) => return server_cmd::run(&cli.home, args).await,
        cli::Command::Protect(args) => return protect_cmd::protect(out, &cli.home, args).await,
        cli::Command::Unprotect(args) => return protect_cmd::unprotect(out, &cli.home, args).await,
        cli::Command::Network(args) => return network_cmd::run(out, &cli.home, args).await,
        cli::Command::Status { conn } => return protect_cmd::status(out, &cli.home, conn).await,
        cli::Command::Operations(cmd) => return operations_cmd::run(out, &cli.home, cmd).await,
        cli::Command::Failover(args) => return failover_cmd::run(out, &cli.home, args).await,
        cli::Command::Failback(args) => return failover_cmd::failback(out, &cli.home, args).await,
        cli::Command::Reprotect { vm, no_wait, conn } => {
            return failover_cmd::reprotect(out, &cli.home, &vm, conn, no_wait).await
        }
        cli::Command::Points { vm, conn } => {
            return protect_cmd::points(out, &cli.home, &vm, conn).await
        }
        cli::Command::Users(cmd) => return users_cmd::run(out, &cli.home, cmd).await,
        cli::Command::Audit {
            limit,
            before,
            conn,
        } => return users_cmd::audit(out, &cli.home, limit, before, conn).await,
        _ => {}
    }
    let driver = driver(&cli)?;
    match cli.command {
        cli::Command::Vm(cmd) => vm_cmd::run(&driver, out, cmd).await,
        cli::Command::Cbt(cmd) => cbt_cmd::run(&driver, out, cmd).await,
        cli::Command::Demo(args) => demo::run(&driver, out, args).await,
        cli::Command::Agent(args) => agent_cmd::run(driver, &cli.home, args).await,
        cli::Command::Up(args) => up_cmd::run(driver, &cli.home, out, args).await,
        cli::Command::Vault(_)
        | cli::Command::Hosts(_)
        | cli::Command::Vms(_)
        | cli::Command::Server(_)
        | cli::Command::Protect(_)
        | cli::Command::Unprotect(_)
        | cli::Command::Network(_)
        | cli::Command::Status { .. }
        | cli::Command::Operations(_)
        | cli::Command::Failover(_)
        | cli::Command::Failback(_)
        | cli::Command::Reprotect { .. }
        | cli::Command::Points { .. }
        | cli::Command::Users(_)
        | cli::Command::Audit { .. }
        | cli::Command::Generate(_) => unreachable!("handled above"),
    }
}
