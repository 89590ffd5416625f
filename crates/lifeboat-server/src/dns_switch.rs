//! A protected VM's DNS record, moved by its failovers and failbacks (docs/networking.md):
//! the settings' `DnsRecord` with its TSIG key, read from the server's key folder, as a
//! `lifeboat_dns::DnsServer`; the check a move makes before anything changes, and the
//! switch it makes once the VM runs at its new site.
//!
//! Keys live in files, as `tsig-keygen` writes them, in one folder of the server's
//! (`HOME/server/dns-keys/NAME.key`, set at start): the secret never passes through the
//! API and is never stored in the database.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lifeboat_dns::{DnsError, DnsServer, TsigKey, Update};
use lifeboat_types::network::DnsRecord;

static KEYS_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where TSIG key files are read from; set once, at server start.
pub fn set_keys_dir(dir: PathBuf) {
    let _ = KEYS_DIR.set(dir);
}

fn keys_dir() -> PathBuf {
    KEYS_DIR
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/var/lib/lifeboat/server/dns-keys"))
}

/// Why a record cannot be moved.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("TSIG key {name}: {why}")]
    Key { name: String, why: String },
    #[error(transparent)]
    Dns(#[from] DnsError),
}

impl SwitchError {
    /// A fault of the settings or the server's answer to them (a wrong key, a refused
    /// zone, a name outside it), not of reaching the server: retrying does not help.
    pub fn is_settings(&self) -> bool {
        !matches!(self, SwitchError::Dns(DnsError::Unreachable { .. }))
    }
}

fn key_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// The record's server with its key loaded.
pub fn server(record: &DnsRecord) -> Result<DnsServer, SwitchError> {
    let key = match &record.key {
        None => None,
        Some(name) => {
            let path = key_file(&keys_dir(), name);
            let key = TsigKey::load_bind_file(&path).map_err(|e| SwitchError::Key {
                name: name.clone(),
                why: format!(
                    "{e}; put the key file tsig-keygen wrote at {} (readable by the server only)",
                    path.display()
                ),
            })?;
            Some(key)
        }
    };
    Ok(DnsServer {
        address: record.server,
        zone: record.zone.clone(),
        key,
    })
}

/// Asks the record's server for it, signed with its key: proves the server answers,
/// knows the key and holds the zone, before a move changes anything. Returns the
/// addresses and TTL it has now.
pub async fn check(record: &DnsRecord) -> Result<(Vec<IpAddr>, Option<u32>), SwitchError> {
    let server = server(record)?;
    Ok(lifeboat_dns::lookup(&server, &record.name).await?)
}

/// Points the record at `addresses` with the record's TTL.
pub async fn switch(record: &DnsRecord, addresses: &[IpAddr]) -> Result<Update, SwitchError> {
    let server = server(record)?;
    Ok(lifeboat_dns::set_addresses(&server, &record.name, addresses, record.ttl).await?)
}

/// A line for the operation's log: what moved, and how long clients may keep the old
/// answer (the TTL it had).
pub fn moved_line(record: &DnsRecord, u: &Update) -> String {
    let list = |a: &[IpAddr]| {
        if a.is_empty() {
            "nothing".to_string()
        } else {
            a.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let cached = match u.before_ttl {
        Some(t) => format!("clients may keep the old answer up to {t} s (its TTL)"),
        None => "no client held an answer".into(),
    };
    format!(
        "DNS {}: {} → {} (TTL {} s); {cached}",
        record.name,
        list(&u.before),
        list(&u.after),
        u.ttl
    )
}

/// How to finish a switch by hand when the server could not be reached.
pub fn by_hand(record: &DnsRecord, addresses: &[IpAddr]) -> String {
    let mut cmds = format!(
        "nsupdate{} <<EOF\nserver {} {}\nzone {}\nupdate delete {} A\nupdate delete {} AAAA\n",
        record
            .key
            .as_ref()
            .map(|k| format!(" -k {}", key_file(&keys_dir(), k).display()))
            .unwrap_or_default(),
        record.server.ip(),
        record.server.port(),
        record.zone,
        record.name,
        record.name
    );
    for a in addresses {
        let kind = if a.is_ipv4() { "A" } else { "AAAA" };
        cmds += &format!("update add {} {} {kind} {a}\n", record.name, record.ttl);
    }
    cmds += "send\nEOF";
    cmds
}
