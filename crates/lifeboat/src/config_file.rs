//! The daemons' config files: `/etc/lifeboat/server.toml` for `lifeboat server` and
//! `/etc/lifeboat/agent.toml` for `lifeboat agent` (another with `--config`). Each key is
//! a flag's long name with `_` for `-` (`max_connections`, `tls_cert`). A setting comes
//! from its flag, else its environment variable, else the file, else the default, as
//! restic and kubectl order them. A file that is not there is no error unless `--config`
//! named it; a key the daemon does not know, or a value of the wrong kind, is refused with
//! the file, line and key (docs/install.md, "Config files").

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

use crate::cli::{AgentArgs, Cli, HypervisorArg, LogFormat, ServerArgs};

/// Where `lifeboat server` looks for its file when `--config` does not say.
pub const SERVER_FILE: &str = "/etc/lifeboat/server.toml";
/// Where `lifeboat agent` looks for its file when `--config` does not say.
pub const AGENT_FILE: &str = "/etc/lifeboat/agent.toml";

/// `server.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub home: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub listen: Option<std::net::SocketAddr>,
    /// May hold a password: then the file must be its owner's only.
    pub database: Option<String>,
    pub insecure_http: Option<bool>,
    pub max_connections: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `agent.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub home: Option<PathBuf>,
    pub accel: Option<lifeboat_hypervisor::Accel>,
    pub log_format: Option<LogFormat>,
    pub listen: Option<std::net::SocketAddr>,
    pub insecure_http: Option<bool>,
    pub max_connections: Option<usize>,
    pub hostname: Option<String>,
    pub max_rate: Option<String>,
    pub hydrate_rate: Option<String>,
    pub hypervisor: Option<HypervisorName>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `hypervisor = "auto" | "libvirt" | "qemu"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorName {
    Auto,
    Libvirt,
    Qemu,
}

impl From<HypervisorName> for HypervisorArg {
    fn from(h: HypervisorName) -> Self {
        match h {
            HypervisorName::Auto => HypervisorArg::Auto,
            HypervisorName::Libvirt => HypervisorArg::Libvirt,
            HypervisorName::Qemu => HypervisorArg::Qemu,
        }
    }
}

/// Reads `given`, else `default` if it exists; `None` when there is no file to read.
fn read<T: serde::de::DeserializeOwned>(
    given: Option<&Path>,
    default: &str,
) -> Result<Option<(PathBuf, T)>> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(default),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && given.is_none() => return Ok(None),
        Err(e) => bail!(
            "reading the config file {}: {e}{}",
            path.display(),
            if given.is_some() {
                " (named by --config)"
            } else {
                ""
            }
        ),
    };
    let parsed = parse(&path, &text)?;
    Ok(Some((path, parsed)))
}

/// A config file that does not parse: a usage error (exit 2), named by file, line and key.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}{line}: {message}{shown}")]
pub struct BadConfigFile {
    path: String,
    /// `:N`, or empty when the parser gave no place.
    line: String,
    message: String,
    /// ` (in `the line's text`)`.
    shown: String,
}

/// `text` as a config file at `path`; an error names the file, the line and the key.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, BadConfigFile> {
    toml::from_str(text).map_err(|e| {
        // The line, and its text: a wrong value's message names its kind, the line its key.
        let (line, shown) = e
            .span()
            .map(|s| {
                let start = s.start.min(text.len());
                let line = text[..start].matches('\n').count() + 1;
                let shown = text.lines().nth(line - 1).unwrap_or("").trim();
                (format!(":{line}"), format!(" (in `{shown}`)"))
            })
            .unwrap_or_default();
        BadConfigFile {
            path: path.display().to_string(),
            line,
            message: e.message().trim_end().to_string(),
            shown,
        }
    })
}

/// Whether the flag `id` was left to its default (neither given nor in the environment).
fn unset(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), None | Some(ValueSource::DefaultValue))
}

/// Fills what flags and environment left unset in `args` (and `home`) from the server's
/// config file. `root` holds the global flags (`--home`), `m` the subcommand's.
fn apply_server(
    args: &mut ServerArgs,
    globals: Globals<'_>,
    root: &ArgMatches,
    m: &ArgMatches,
) -> Result<Option<PathBuf>> {
    let Some((path, f)) = read::<ServerFile>(args.files.config.as_deref(), SERVER_FILE)? else {
        return Ok(None);
    };
    if f.database
        .as_deref()
        .is_some_and(crate::server_cmd::url_has_password)
    {
        refuse_readable(&path, "a database password")?;
    }
    set(root, "home", globals.home, f.home);
    set(root, "log_format", globals.log_format, f.log_format);
    set(m, "listen", &mut args.listen, f.listen);
    set_opt(m, "database", &mut args.database, f.database);
    set(m, "insecure_http", &mut args.insecure_http, f.insecure_http);
    set(
        m,
        "max_connections",
        &mut args.max_connections,
        f.max_connections,
    );
    set_tls(m, &mut args.files, f.tls_cert, f.tls_key);
    Ok(Some(path))
}

/// As [`apply_server`], for the agent's file.
fn apply_agent(
    args: &mut AgentArgs,
    globals: Globals<'_>,
    root: &ArgMatches,
    m: &ArgMatches,
) -> Result<Option<PathBuf>> {
    let Some((path, f)) = read::<AgentFile>(args.files.config.as_deref(), AGENT_FILE)? else {
        return Ok(None);
    };
    set(root, "home", globals.home, f.home);
    set(root, "accel", globals.accel, f.accel);
    set(root, "log_format", globals.log_format, f.log_format);
    set(m, "listen", &mut args.listen, f.listen);
    set(m, "insecure_http", &mut args.insecure_http, f.insecure_http);
    set(
        m,
        "max_connections",
        &mut args.max_connections,
        f.max_connections,
    );
    set_opt(m, "hostname", &mut args.hostname, f.hostname);
    set_opt(m, "max_rate", &mut args.max_rate, f.max_rate);
    set_opt(m, "hydrate_rate", &mut args.hydrate_rate, f.hydrate_rate);
    set(
        m,
        "hypervisor",
        &mut args.hypervisor,
        f.hypervisor.map(Into::into),
    );
    set_tls(m, &mut args.files, f.tls_cert, f.tls_key);
    Ok(Some(path))
}

/// The certificate and its key come together: from the flags, or both from the file.
fn set_tls(
    m: &ArgMatches,
    files: &mut crate::cli::DaemonFiles,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) {
    if unset(m, "tls_cert") && unset(m, "tls_key") {
        files.tls_cert = cert;
        files.tls_key = key;
    }
}

fn set<T>(m: &ArgMatches, id: &str, field: &mut T, from_file: Option<T>) {
    if let Some(v) = from_file {
        if unset(m, id) {
            *field = v;
        }
    }
}

fn set_opt<T>(m: &ArgMatches, id: &str, field: &mut Option<T>, from_file: Option<T>) {
    if from_file.is_some() && unset(m, id) {
        *field = from_file;
    }
}

/// A file that holds `what` must be readable by its owner only.
fn refuse_readable(path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "config file {} holds {what} but others can read it (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

/// The global flags a daemon's file may set too.
struct Globals<'a> {
    home: &'a mut PathBuf,
    accel: &'a mut lifeboat_hypervisor::Accel,
    log_format: &'a mut LogFormat,
}

/// Applies the config file of the daemon `cli` runs, if it runs one (before logging
/// starts: the file may set its format); the file read.
pub fn apply(cli: &mut Cli, root: &ArgMatches) -> Result<Option<PathBuf>> {
    let Some((_, m)) = root.subcommand() else {
        return Ok(None);
    };
    let globals = Globals {
        home: &mut cli.home,
        accel: &mut cli.accel,
        log_format: &mut cli.log_format,
    };
    match &mut cli.command {
        crate::cli::Command::Server(args) => apply_server(args, globals, root, m),
        crate::cli::Command::Agent(args) => apply_agent(args, globals, root, m),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn server_with(file: &str, argv: &[&str]) -> Result<crate::cli::Cli> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, file).unwrap();
        let mut full = vec!["lifeboat", "server", "--config", path.to_str().unwrap()];
        full.extend_from_slice(argv);
        let root = crate::cli::Cli::command().try_get_matches_from(full)?;
        let mut cli = crate::cli::Cli::from_arg_matches(&root)?;
        apply(&mut cli, &root)?;
        Ok(cli)
    }

    fn server(cli: &crate::cli::Cli) -> &ServerArgs {
        match &cli.command {
            crate::cli::Command::Server(args) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_file_fills_what_flags_leave_unset_and_flags_win() {
        let file = "listen = \"127.0.0.1:7500\"\nmax_connections = 40\nhome = \"/srv/lb\"\n";
        let cli = server_with(file, &[]).unwrap();
        let args = server(&cli);
        assert_eq!(args.listen.to_string(), "127.0.0.1:7500");
        assert_eq!(args.max_connections, 40);
        assert_eq!(cli.home, PathBuf::from("/srv/lb"));
        let cli = server_with(file, &["--listen", "127.0.0.1:7600", "--home", "/h"]).unwrap();
        let args = server(&cli);
        assert_eq!(args.listen.to_string(), "127.0.0.1:7600");
        assert_eq!(args.max_connections, 40);
        assert_eq!(cli.home, PathBuf::from("/h"));
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let e = server_with("listen = \"127.0.0.1:7500\"\nmax_conections = 4\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.toml:2: unknown field `max_conections`"),
            "{e}"
        );
        let e = server_with("\nmax_connections = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.toml:2: "), "{e}");
        assert!(e.contains("(in `max_connections = \"many\"`)"), "{e}");
        let e = server_with("listen = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.toml:1: ") && e.contains("listen"), "{e}");
    }

    #[test]
    fn a_named_file_must_exist_and_the_default_may_be_absent() {
        let root = crate::cli::Cli::command()
            .try_get_matches_from(["lifeboat", "server", "--config", "/nonexistent/s.toml"])
            .unwrap();
        let mut cli = crate::cli::Cli::from_arg_matches(&root).unwrap();
        let e = apply(&mut cli, &root).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/s.toml") && e.contains("--config"),
            "{e}"
        );
        assert!(read::<ServerFile>(None, "/nonexistent/default.toml")
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_database_password_in_a_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "database = \"postgres://lb:pw@db/lb\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let argv = ["lifeboat", "server", "--config", path.to_str().unwrap()];
        let root = crate::cli::Cli::command()
            .try_get_matches_from(argv)
            .unwrap();
        let mut cli = crate::cli::Cli::from_arg_matches(&root).unwrap();
        let e = apply(&mut cli, &root).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cli = crate::cli::Cli::from_arg_matches(&root).unwrap();
        apply(&mut cli, &root).unwrap();
    }

    /// The shipped files' commented-out settings, uncommented (`# key = value` lines).
    fn uncommented(shipped: &str) -> String {
        shipped
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_setting_the_shipped_files_show_is_one_the_daemon_takes() {
        let server = uncommented(include_str!("../../../deploy/config/server.toml"));
        let agent = uncommented(include_str!("../../../deploy/config/agent.toml"));
        assert!(server.lines().count() >= 7, "{server}");
        assert!(agent.lines().count() >= 10, "{agent}");
        parse::<ServerFile>(Path::new("server.toml"), &server).unwrap();
        parse::<AgentFile>(Path::new("agent.toml"), &agent).unwrap();
    }

    #[test]
    fn the_agents_file_sets_its_driver_and_tls_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "hypervisor = \"libvirt\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
        )
        .unwrap();
        let argv = ["lifeboat", "agent", "--config", path.to_str().unwrap()];
        let root = crate::cli::Cli::command()
            .try_get_matches_from(argv)
            .unwrap();
        let mut cli = crate::cli::Cli::from_arg_matches(&root).unwrap();
        apply(&mut cli, &root).unwrap();
        let crate::cli::Command::Agent(args) = &cli.command else {
            unreachable!()
        };
        assert_eq!(args.hypervisor, HypervisorArg::Libvirt);
        assert_eq!(args.files.tls_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(args.files.tls_key.as_deref(), Some(Path::new("/k.pem")));
    }
}
