//! The command line: every role and client command of the one `lifeboat` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lifeboat_hypervisor::Accel;

#[derive(Debug, Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Disaster recovery for KVM/QEMU virtual machines",
    long_about = "Lifeboat finds a host's VMs, tracks exactly which blocks their guests write, \
                  and reads consistent point-in-time cuts of just those blocks.\n\n\
                  Start with `lifeboat demo`: it boots a small test guest, writes in it and \
                  shows the changed extents that one incremental cut carries."
)]
pub struct Cli {
    /// This machine's Lifeboat home: `server` keeps `server/` in it, the agent (and `vm`,
    /// `cbt`, `demo`, `up`) `agent/`, `vms/` and `recovered/`. Client commands read only
    /// `server/` in it, on the server's own machine, for its token and certificate.
    #[arg(
        long,
        global = true,
        env = "LIFEBOAT_HOME",
        default_value = "/var/lib/lifeboat"
    )]
    pub home: PathBuf,
    /// How guests run: kvm, tcg (software), or auto (KVM only if it is seen to boot a kernel).
    #[arg(long, global = true, env = "LIFEBOAT_ACCEL", default_value = "auto")]
    pub accel: Accel,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more); or set RUST_LOG. Daemons (agent, server, up)
    /// log at info by default, other commands at warn.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text (for a terminal or journald) or as one JSON object each (for a
    /// log collector).
    #[arg(
        long,
        global = true,
        env = "LIFEBOAT_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// This host's own VMs under the QEMU driver, without a server: define, start, stop,
    /// list. (Every enrolled host's VMs, from the server: `lifeboat vms list`.)
    #[command(subcommand)]
    Vm(VmCommand),
    /// Changed-block tracking: start it with a full cut, then take incremental cuts.
    #[command(subcommand)]
    Cbt(CbtCommand),
    /// Boot the demo guest, write in it, and show what one incremental cut carries.
    Demo(DemoArgs),
    /// The vault: encrypted, compressed recovery points on a folder, S3 or Azure Blob, each
    /// storing only the chunks that differ from its parent point's at the same offset.
    Vault(VaultArgs),
    /// Run this host's agent: the HTTPS API the server drives. Prints a one-time
    /// enrollment code at first start.
    Agent(AgentArgs),
    /// Find hypervisor hosts running `lifeboat agent`, enroll them, list them.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Run the control plane: the REST API, state in SQLite (default) or PostgreSQL.
    /// Prints an API token at first start.
    Server(ServerArgs),
    /// Every enrolled host's VMs, from the server, with their protection. (This host's
    /// own QEMU-driver VMs without a server: `lifeboat vm`.)
    #[command(subcommand)]
    Vms(VmsCommand),
    /// The embedded default for one machine: server, agent, folder vault and SQLite in one
    /// process. At first start it enrolls its agent, boots the demo guest and protects it.
    Up(UpArgs),
    /// Enable replication of a VM into a vault, recoverable on a recovery host.
    Protect(ProtectArgs),
    /// Stop replicating a VM and remove its change tracking.
    Unprotect(UnprotectArgs),
    /// A protected VM's failover network settings: per NIC (by MAC), the address it
    /// takes after a failover, in a test copy, and back home at failback. Without flags:
    /// shows them. Checked against the VM's NICs and the recovery host's networks before
    /// they are stored (docs/networking.md).
    Network(NetworkArgs),
    /// Bring a protected VM up on its recovery host from a recovery point
    /// (`--test`: a copy beside production, in an isolated network); `failover cleanup VM`
    /// removes a test copy.
    Failover(FailoverArgs),
    /// Bring a failed-over VM home: its recovery copy shut down in order, only what changed
    /// on either side since the failover written at home, proven equal, started at home.
    /// `--unplanned` when the recovery site is lost: home starts from a point of the vault
    /// and the recovery copy is fenced (now, or when its host answers).
    Failback(FailbackArgs),
    /// After a failback: resume replication from home, building on the failback's point
    /// (no full resync). After a committed failover: protect the VM where it runs now, into
    /// the same vault, home its recovery host (its first point an incremental).
    Reprotect {
        /// The protected VM (or HOST/VM).
        vm: String,
        /// Return once it started (its operation id) instead of following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Operations (protect, failover…): their progress and logs; cancel one before its
    /// point of no return.
    #[command(subcommand)]
    Operations(OperationsCommand),
    /// Man pages and shell completions, for packagers (scripts/package).
    #[command(subcommand, hide = true)]
    Generate(crate::generate_cmd::GenerateCommand),
    /// Overview: VMs by protection state, worst RPO, running operations.
    Status {
        #[command(flatten)]
        conn: ServerConn,
    },
    /// A protected VM's recovery points.
    Points {
        /// The VM (or HOST/VM when several hosts have a VM of that name).
        vm: String,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Users of the dashboard and the API, and their roles: viewer (reads), operator
    /// (also runs operations on VMs), admin (also enrolls hosts, manages users and
    /// tokens). Admins only.
    #[command(subcommand)]
    Users(UsersCommand),
    /// The audit log, newest first: logins, logouts and every change, with who, from
    /// where, and how it ended. Operators and admins.
    Audit {
        /// Rows to show (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only rows older than this one (an id from an earlier page; `--json` shows
        /// `next_before`).
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        conn: ServerConn,
    },
}

/// Passwords are never given on the command line (other users could read them in the
/// process list): LIFEBOAT_USER_PASSWORD, or asked on the terminal.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Users with their roles.
    List {
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Add a user who can log in to the dashboard (password: LIFEBOAT_USER_PASSWORD or
    /// the terminal).
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: lifeboat_server::auth::Role,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Change a user's role; it holds at once, in open sessions too. The last admin
    /// stays an admin.
    SetRole {
        name: String,
        /// viewer, operator or admin.
        role: lifeboat_server::auth::Role,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Set a user's password (LIFEBOAT_USER_PASSWORD or the terminal); their sessions
    /// end.
    Passwd {
        name: String,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Remove a user with their sessions and API tokens. The last admin stays.
    Remove {
        name: String,
        #[command(flatten)]
        conn: ServerConn,
    },
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: std::net::SocketAddr,
    /// Where the local agent listens (loopback: only this machine's server uses it).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub agent_listen: std::net::SocketAddr,
    /// The vault; default: a folder vault in HOME/vault, its passphrase in
    /// HOME/up/vault.passphrase (or LIFEBOAT_PASSPHRASE).
    #[arg(long, env = "LIFEBOAT_VAULT")]
    pub vault: Option<String>,
    /// The server's database; default: SQLite in HOME/server.
    #[arg(long, env = "LIFEBOAT_DATABASE")]
    pub database: Option<String>,
    /// The policy the demo VM is protected with.
    #[arg(long, default_value = "default")]
    pub policy: String,
    /// Do not boot and protect the demo guest.
    #[arg(long)]
    pub no_demo_vm: bool,
    /// The name the local host has (default: the system's host name).
    #[arg(long)]
    pub hostname: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ProtectArgs {
    /// The VM (or HOST/VM when several hosts have a VM of that name).
    pub vm: String,
    /// The vault (it must exist: `lifeboat vault init`). Its passphrase comes from
    /// LIFEBOAT_PASSPHRASE or the terminal, and is kept by the server for the agents.
    #[arg(long, env = "LIFEBOAT_VAULT")]
    pub vault: String,
    /// Where the VM will be recovered: an enrolled host (name or address).
    #[arg(long)]
    pub recovery_host: String,
    /// default (30 s), frequent (5 s) or hourly; see GET /api/v1/policies.
    #[arg(long, default_value = "default")]
    pub policy: String,
    /// Source network → recovery host network for planned and unplanned failovers
    /// (repeatable; a failover's own --network-map wins).
    #[arg(long = "network-map", value_name = "SOURCE=TARGET")]
    pub network_map: Vec<String>,
    /// Wait until the first recovery point is committed, with a progress bar: the
    /// default, kept for scripts that say it.
    #[arg(long, hide = true)]
    pub wait: bool,
    /// Return once replication is enabled (its operation id) instead of waiting for the
    /// first recovery point; the initial sync goes on.
    #[arg(long, conflicts_with_all = ["wait", "timeout"])]
    pub no_wait: bool,
    /// Give up waiting for the first point after this long (10m, 1h…), exit 4; the
    /// protection goes on.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Debug, clap::Args)]
pub struct UnprotectArgs {
    /// The VM (or HOST/VM).
    pub vm: String,
    /// Also delete the VM's recovery points from the vault (`vault gc` frees the space).
    #[arg(long)]
    pub delete_points: bool,
    /// Return once it started (its operation id) instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Debug, clap::Args)]
pub struct NetworkArgs {
    /// The protected VM (or HOST/VM).
    pub vm: String,
    /// A NIC's address after a planned or unplanned failover:
    /// MAC=keep, MAC=dhcp or MAC=ADDRESS/PREFIX[,gw=IP][,dns=IP+IP]. Repeat per NIC.
    #[arg(long, value_name = "MAC=ADDRESSING")]
    pub failover: Vec<String>,
    /// A NIC's address in a test copy (`failover --test`), written as for --failover.
    #[arg(long, value_name = "MAC=ADDRESSING")]
    pub test: Vec<String>,
    /// A NIC's address back home after a failback (its home address, restored); needed
    /// when --failover gives it another address.
    #[arg(long, value_name = "MAC=ADDRESSING")]
    pub failback: Vec<String>,
    /// Forget every NIC's settings and the DNS record first (each NIC keeps its address).
    #[arg(long)]
    pub clear: bool,
    /// The VM's DNS record, switched to its failover addresses by a failover and back by
    /// a failback (RFC 2136 update): its full name, e.g. web.example.com.
    #[arg(long, value_name = "NAME", requires_all = ["dns_zone", "dns_server"])]
    pub dns_name: Option<String>,
    /// The zone the record is in (e.g. example.com).
    #[arg(long, value_name = "ZONE", requires = "dns_name")]
    pub dns_zone: Option<String>,
    /// The zone's primary server, which takes updates: ADDRESS[:PORT] (port 53).
    #[arg(long, value_name = "ADDRESS", requires = "dns_name")]
    pub dns_server: Option<String>,
    /// The TSIG key's name: its file (as tsig-keygen writes it) is
    /// HOME/server/dns-keys/NAME.key on the server.
    #[arg(long, value_name = "NAME", requires = "dns_name")]
    pub dns_key: Option<String>,
    /// The TTL of the moved records (30s, 5m…; whole seconds, as DNS keeps it).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60s",
        value_parser = duration,
        requires = "dns_name"
    )]
    pub dns_ttl: Duration,
    /// Remove the DNS record: moves no longer switch it.
    #[arg(long, conflicts_with = "dns_name")]
    pub no_dns: bool,
    #[command(flatten)]
    pub conn: ServerConn,
}

/// `lifeboat failback` options.
#[derive(Debug, clap::Args)]
pub struct FailbackArgs {
    /// The protected VM (or HOST/VM).
    pub vm: String,
    /// How long the recovery VM has to power off before QEMU is told to quit.
    #[arg(long, default_value = "2m", value_parser = duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,
    /// The recovery site is lost: no final sync; home starts from `--point`.
    #[arg(long)]
    pub unplanned: bool,
    /// With `--unplanned`: `latest` (default), `latest-app-consistent`, a point id, or a
    /// time (RFC 3339; the newest point at or before it).
    #[arg(long, requires = "unplanned")]
    pub point: Option<String>,
    /// Return once the failback started (its operation id) instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group(clap::ArgGroup::new("kind").required(true)))]
pub struct FailoverArgs {
    #[command(subcommand)]
    pub action: Option<FailoverAction>,
    /// The protected VM (or HOST/VM). A VM named like a subcommand (list, commit,
    /// cleanup) is written with its host: HOST/list.
    #[arg(required = true)]
    pub vm: Option<String>,
    /// A test copy, `VM-test`, beside production: isolated network, its own MAC and
    /// ports; production and replication go on untouched.
    #[arg(long, group = "kind")]
    pub test: bool,
    /// Move the VM with zero data loss: shut it down in order (ACPI, forced after
    /// --shutdown-timeout), take a final point, prove it equal to the disks, start it on
    /// the recovery host with its own MAC and network; the source is fenced.
    #[arg(long, group = "kind")]
    pub planned: bool,
    /// The source is lost: start the VM on the recovery host from --point; the source is
    /// fenced (now if its agent answers, else when it returns).
    #[arg(long, group = "kind")]
    pub unplanned: bool,
    /// With --planned: how long the guest has to power off before QEMU is told to quit.
    #[arg(long, default_value = "2m", value_parser = duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,
    /// With --planned or --unplanned: SOURCE=TARGET maps a NIC's network to one of the
    /// recovery host's (repeat per network; TARGET: a bridge, `bridge:NAME`,
    /// `network:NAME` for a libvirt network, `user` or `isolated`).
    #[arg(long = "network-map", value_name = "SOURCE=TARGET")]
    pub network_map: Vec<String>,
    /// Which point: latest (default), latest-app-consistent, a point id, or an RFC 3339
    /// time (the newest point cut at or before it). Not for --planned.
    #[arg(long)]
    pub point: Option<String>,
    /// With --test: forward a port of the recovery host (every address) to this guest
    /// port of the isolated copy, so a tester can reach it (repeatable; QEMU-driver
    /// recovery hosts). The answer's `forwards` says which host port.
    #[arg(long, value_name = "PORT", requires = "test")]
    pub expose: Vec<u16>,
    /// Return once the failover started (its operation id) instead of following it to
    /// its end. Either way it runs in the server: interrupting this command stops nothing.
    #[arg(long, conflicts_with = "wait_for")]
    pub no_wait: bool,
    /// After the failover, wait until the VM serves, not only runs: until
    /// `tcp:HOST:PORT` accepts a connection or an http(s):// URL answers, tried from
    /// this machine (a booting guest serves tens of seconds after QEMU starts).
    #[arg(long, value_name = "PROBE", value_parser = crate::ready_probe::parse)]
    pub wait_for: Option<crate::ready_probe::Probe>,
    /// With --wait-for: give up after this long (exit 4; the VM runs on).
    #[arg(long, default_value = "5m", value_parser = duration, value_name = "DURATION", requires = "wait_for")]
    pub wait_timeout: Duration,
    #[command(flatten)]
    pub conn: ServerConn,
}

#[derive(Debug, Subcommand)]
pub enum OperationsCommand {
    /// The newest 100 operations.
    List {
        #[command(flatten)]
        conn: ServerConn,
    },
    /// One operation: its progress, error and log.
    Show {
        id: String,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Follow an operation until it ends (its log as it grows): how to pick up one started
    /// with --no-wait, or whose command was interrupted. Fails unless it succeeds.
    Follow {
        id: String,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Undo an operation before its point of no return (refused after it, saying why);
    /// follows it until it is undone.
    Cancel {
        id: String,
        /// Return once the cancel is asked.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        conn: ServerConn,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum FailoverAction {
    /// VMs running on recovery hosts: their origin, point, state and hydration.
    List {
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Accept a planned or unplanned failover: the VM on the recovery host is the VM now.
    Commit {
        /// The protected VM (or HOST/VM).
        vm: String,
        /// Return once it started (its operation id) instead of following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Remove a VM's test copy and everything made for it on the recovery host.
    Cleanup {
        /// The protected VM (or HOST/VM).
        vm: String,
        /// Remove instead the copy fenced on the recovery host after an unplanned
        /// failback, with the writes it holds after the point the VM came home from.
        #[arg(long)]
        fenced: bool,
        /// Return once it started (its operation id) instead of following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        conn: ServerConn,
    },
}

/// How client commands reach the server. Each setting comes from its flag, else its
/// environment variable, else the client config file (`LIFEBOAT_CONFIG`, default
/// `~/.config/lifeboat/client.toml`: `server`, `server_fingerprint`, `token_file` or
/// `token`). The token is never taken from the command line, where other users could
/// read it: LIFEBOAT_TOKEN, a token file, the config file, or (on the server's machine)
/// HOME/server/admin.token
/// or /var/lib/lifeboat-server/server/admin.token.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerConn {
    /// The server's API: https://HOST:PORT, or http://127.0.0.1:PORT (loopback only).
    /// Default: https://127.0.0.1:7400.
    #[arg(long, env = "LIFEBOAT_SERVER")]
    pub server: Option<String>,
    /// The https server's certificate fingerprint (SHA-256, from its banner), pinned.
    /// Default on the server's own machine: the certificate its API serves, found in
    /// HOME/server or /var/lib/lifeboat-server/server (the packaged unit's home).
    #[arg(long, env = "LIFEBOAT_SERVER_FINGERPRINT")]
    pub server_fingerprint: Option<String>,
    /// A file holding the API token.
    #[arg(long, env = "LIFEBOAT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// For a server with a certificate of your CA (`server --tls-cert`): that CA's
    /// certificate (PEM), checked with the server's name instead of pinning.
    #[arg(long, env = "LIFEBOAT_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address and port to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: std::net::SocketAddr,
    /// sqlite://PATH or postgres://USER@HOST/DB (password from PGPASSWORD or the URL).
    /// Default: sqlite://HOME/server/lifeboat.db.
    #[arg(long, env = "LIFEBOAT_DATABASE")]
    pub database: Option<String>,
    /// Serve plain HTTP instead of TLS. Refused unless --listen is a loopback address.
    #[arg(long)]
    pub insecure_http: bool,
    /// Connections held at once (a quarter of them from one address), at most a quarter
    /// of this process's open-file limit. Idle ones are closed after 15 s.
    #[arg(long, default_value_t = lifeboat_agent::serve::admission::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    #[command(flatten)]
    pub files: DaemonFiles,
}

/// What a daemon reads besides its flags: its config file and the operator's TLS
/// certificate.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonFiles {
    /// The config file (TOML; keys are these flags' names with `_`). Default:
    /// /etc/lifeboat/server.toml or agent.toml, if it exists. Flags and environment
    /// variables win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM, the chain from the host's own first)
    /// instead of Lifeboat's self-signed identity. Clients then check it against their
    /// CA (`--ca-cert`) or pin its fingerprint, printed at start.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; readable by its owner only).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum VmsCommand {
    /// Every VM of every enrolled host, with its protection state.
    List {
        #[command(flatten)]
        conn: ServerConn,
    },
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Address and port to serve on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: std::net::SocketAddr,
    /// Serve plain HTTP instead of TLS. Refused unless --listen is a loopback address.
    #[arg(long)]
    pub insecure_http: bool,
    /// Connections held at once (a quarter of them from one address), at most a quarter
    /// of this process's open-file limit. Idle ones are closed after 15 s.
    #[arg(long, default_value_t = lifeboat_agent::serve::admission::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Forget the server that enrolled this agent and print a new enrollment code.
    #[arg(long)]
    pub reset_enrollment: bool,
    /// The name this host reports (default: the system's host name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Cap what syncs read per second (e.g. 50M), to spare a busy host's disks and
    /// network. Default: no cap.
    #[arg(long)]
    pub max_rate: Option<String>,
    /// Cap how fast a VM recovered here copies its disks from the vault in the background
    /// (hydration, e.g. 100M), to spare the vault's bandwidth. Default: no cap.
    #[arg(long)]
    pub hydrate_rate: Option<String>,
    /// Which driver runs this host's VMs: `libvirt` (the domains libvirt has: virsh,
    /// virt-manager, Cockpit), `qemu` (the VMs Lifeboat defines from its TOML spec), or
    /// `auto` (libvirt when its socket answers, else qemu).
    #[arg(long, value_enum, default_value = "auto")]
    pub hypervisor: HypervisorArg,
    #[command(flatten)]
    pub files: DaemonFiles,
}

/// `lifeboat agent --hypervisor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HypervisorArg {
    Auto,
    Libvirt,
    Qemu,
}

impl From<HypervisorArg> for lifeboat_hypervisor::DriverChoice {
    fn from(a: HypervisorArg) -> Self {
        match a {
            HypervisorArg::Auto => lifeboat_hypervisor::DriverChoice::Auto,
            HypervisorArg::Libvirt => lifeboat_hypervisor::DriverChoice::Libvirt,
            HypervisorArg::Qemu => lifeboat_hypervisor::DriverChoice::Qemu,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Probe every address of CIDR (e.g. 192.168.1.0/24) for agents and list them with
    /// their certificate fingerprints, so they can be checked before enrollment.
    Scan {
        cidr: String,
        /// Agent ports to try on each address.
        #[arg(long, value_delimiter = ',', default_value = "7443")]
        ports: Vec<u16>,
        /// Probes at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Give up on an address after this long (connect, handshake and answer): 2s, 10s, …
        #[arg(long, default_value = "2s", value_parser = duration, value_name = "DURATION")]
        timeout: Duration,
        /// Agents enrolled by this server are listed with their VMs (when it answers).
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Enroll the agent at ADDRESS (host:port) with the code it printed at first start.
    /// The code comes from LIFEBOAT_ENROLL_CODE or is asked on the terminal, never from
    /// the command line, where every local user could read it in the process list.
    Enroll {
        address: String,
        /// The agent's certificate fingerprint, as checked in `hosts scan` or its banner.
        /// Without it, the certificate the agent presents now is trusted and pinned.
        #[arg(long)]
        fingerprint: Option<String>,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Enrolled hosts.
    List {
        #[command(flatten)]
        conn: ServerConn,
    },
}

#[derive(Debug, clap::Args)]
pub struct VaultArgs {
    /// The vault: file:///abs/path, s3://bucket/prefix or az://container/prefix.
    /// Credentials come from the usual AWS_* / AZURE_STORAGE_* variables.
    #[arg(long, global = true, env = "LIFEBOAT_VAULT")]
    pub vault: Option<String>,
    /// A key file (from `vault key export`) instead of a passphrase. Otherwise the
    /// passphrase comes from LIFEBOAT_PASSPHRASE or is asked for on the terminal.
    #[arg(long, global = true, env = "LIFEBOAT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: VaultCommand,
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Create a vault: a random master key, wrapped by your passphrase.
    Init {
        /// Chunk size: a power of two from 64K to 4M.
        #[arg(long, default_value = "128K")]
        chunk_size: String,
        /// Target size of the pack objects chunks are gathered in: 1M to 32M.
        #[arg(long, default_value = "16M")]
        pack_size: String,
        /// One key for every VM (vault format 1): every host that protects or recovers one
        /// VM can read all of them, and a point of one VM may build on another VM's point
        /// (`put-image --parent`). Equal blocks of VMs whose points do not build on each
        /// other are stored once per VM either way. By default each VM has its own key
        /// (docs/security.md).
        #[arg(long)]
        shared_key: bool,
    },
    /// Store a raw or qcow2 image as a new recovery point of NAME.
    PutImage {
        #[arg(long)]
        name: String,
        file: PathBuf,
        /// Build on this point (an id, or `latest`): only what differs is stored.
        #[arg(long)]
        parent: Option<String>,
        /// With --parent: read only these ranges (`offset length` a line) instead of
        /// comparing the whole image by digest.
        #[arg(long, requires = "parent")]
        changed: Option<PathBuf>,
        /// The image's format; default: qcow2 if the name ends in .qcow2, else raw. Never
        /// guessed from the content (a guest controls that).
        #[arg(long, value_enum)]
        format: Option<crate::image_source::ImageFormat>,
    },
    /// List recovery points: id, name, time, size, new bytes.
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Write a point's disk back to an image file (raw, or qcow2 when OUT ends in .qcow2).
    Restore {
        point: String,
        out: PathBuf,
        /// Which disk of the point (default: its first).
        #[arg(long)]
        disk: Option<String>,
    },
    /// Re-read and re-check every chunk of the chosen points; name what is damaged.
    Verify {
        /// Points to check (ids); default: every point.
        points: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete points the retention policy does not keep (manifests only; `gc` frees data).
    Prune {
        /// Keep every point younger than this (e.g. 24h).
        #[arg(long)]
        keep_within: Option<String>,
        /// Then the newest point of each hour, for this long (e.g. 7d).
        #[arg(long)]
        keep_hourly: Option<String>,
        /// Then the newest point of each day, for this long (e.g. 4w).
        #[arg(long)]
        keep_daily: Option<String>,
        /// Then the newest point of each week, for this long (e.g. 26w).
        #[arg(long)]
        keep_weekly: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Show the plan; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete packs no point references, once older than the grace period.
    Gc {
        /// Never delete packs younger than this (they may belong to a running writer).
        #[arg(long, default_value = "24h")]
        grace: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Stored bytes, dedup and compression ratios, and what each point added.
    Stats,
    /// Key management.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write the master key to FILE (mode 0600). Anyone with it can read the vault.
    /// With --vm, the key of that VM's points only (what one host needs).
    Export {
        file: PathBuf,
        /// Export only this VM's key (a point name): it opens that VM's points, no other.
        #[arg(long)]
        vm: Option<String>,
    },
    /// Add a passphrase slot, unlocking with the key file given by --key-file.
    AddPassphrase,
    /// Change the passphrase that unlocks the vault; data is not rewritten.
    Passwd,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Record a VM from a TOML spec (see docs/vm-spec.md).
    Define { spec: PathBuf },
    /// Forget a stopped VM (its disks are kept).
    Undefine { name: String },
    /// Start a VM; it keeps running after this command exits.
    Start { name: String },
    /// Press the ACPI power button; force the VM off after --timeout (30s, 2m…).
    Stop {
        name: String,
        #[arg(long, default_value = "60s", value_parser = duration, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Pull the plug at once.
    Kill { name: String },
    /// Show one VM.
    Status { name: String },
    /// Show every VM with its state and disks.
    List,
}

#[derive(Debug, Subcommand)]
pub enum CbtCommand {
    /// Show whether a VM is tracked, and how many bytes changed since the last cut.
    Status { name: String },
    /// Start tracking with a full cut (every allocated block); --out writes it to a raw image.
    Full {
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Take an incremental cut: list the changed extents; --apply writes them onto the
    /// raw image that earlier cuts built.
    Cut {
        name: String,
        #[arg(long)]
        apply: Option<PathBuf>,
        /// Do not consume the changes: the next cut carries them again.
        #[arg(long)]
        abort: bool,
    },
    /// Drop all tracking state (after a lost bitmap); the next cut must be full.
    Reset { name: String },
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop the demo VM at the end instead of leaving it running.
    #[arg(long)]
    pub stop: bool,
}

/// Every duration flag's one syntax: a whole number and a unit, `s`, `m`, `h`, `d` or `w`
/// (30s, 10m, 24h, 7d, 4w), as `vault prune --keep-*` takes them too.
pub fn duration(text: &str) -> Result<Duration, String> {
    lifeboat_vault::store::retention::parse_duration(text)
}

/// What to say when `argv` failed to parse because a VM is named like a subcommand of
/// `failover` (`lifeboat failover list --planned`): how to name it.
pub fn subcommand_name_hint(argv: &[String]) -> Option<String> {
    let at = argv.iter().position(|a| a == "failover")?;
    let word = argv[at + 1..].iter().find(|a| !a.starts_with('-'))?;
    let kinds = ["--test", "--planned", "--unplanned"];
    let kind = argv[at + 1..]
        .iter()
        .find(|a| kinds.contains(&a.as_str()))?;
    ["list", "commit", "cleanup"]
        .contains(&word.as_str())
        .then(|| {
            format!(
                "`{word}` is a subcommand of `failover`; to fail over a VM named {word}, write it \
             with its host: `lifeboat failover HOST/{word} {kind}`"
            )
        })
}

#[cfg(test)]
mod tests {
    /// clap's own checks of every command: among them, that no subcommand's flag reuses a
    /// global one (`network --home` did, and panicked when run).
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        // debug_assert does not see it: a field named as a global (`home`) panics when read.
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "lifeboat",
            "--home",
            "/h",
            "network",
            "web",
            "--failback",
            "m=dhcp",
            "--test",
            "m=keep",
            "--failover",
            "m=dhcp",
        ])
        .unwrap();
        assert_eq!(cli.home, std::path::Path::new("/h"));
    }
}
