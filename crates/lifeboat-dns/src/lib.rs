//! Moves a VM's DNS name to its new address after a failover, and back after failback.
//!
//! A recovered VM usually comes up on another network, so clients that find it by name
//! keep reaching the old address until its A/AAAA records change. Sites run their own
//! authoritative DNS (BIND 9, Knot), and both take RFC 2136 dynamic updates signed with a
//! TSIG key (RFC 8945). This crate sends that update to the zone's primary:
//!
//! - [`lookup`] asks the server itself (not a resolver, which would answer from its cache)
//!   for the name's A and AAAA records and their TTL;
//! - [`set_addresses`] looks first, then sends one UPDATE that deletes both address
//!   RRsets and adds the new addresses, then looks again to prove the server took it.
//!   It returns the [`Update`]: what was there before and its TTL — the time clients may
//!   go on using the old answer, which a failover report should show — and what failback
//!   needs to put it back ([`restore`]).
//!
//! The update has no prerequisites: the look-before is for reporting and undo, not a
//! guard, so a change made by someone between the look and the update is overwritten.
//! That is what a failover wants (the VM *is* at the new address now).
//!
//! Messages are built, signed and verified with hickory-proto (its TSIG signer, feature
//! `dnssec-aws-lc-rs`: HMAC-SHA256/384/512, on the crypto provider the rest of Lifeboat uses); the TCP exchange, timeouts and retries are ours
//! ([`transport`]) so every failure maps to one [`DnsError`] with the fix in its text.
//! Responses to signed requests must carry a TSIG that verifies against the same key.

mod error;
mod key;
mod records;
mod transport;

use std::net::SocketAddr;

pub use error::DnsError;
pub use key::{KeyError, TsigAlgorithm, TsigKey};
pub use records::{lookup, restore, set_addresses, Update};

/// The primary server of one zone, and the key it accepts updates signed with.
#[derive(Clone, Debug)]
pub struct DnsServer {
    /// Where it listens (TCP), usually port 53.
    pub address: SocketAddr,
    /// The zone the records live in, e.g. `lab.example.com` (a trailing dot is optional).
    pub zone: String,
    /// `None` sends unsigned updates, which only a zone that allows updates by address
    /// accepts.
    pub key: Option<TsigKey>,
}

/// Worst case for one request to a server that cannot be reached: every try times out,
/// plus the pauses between tries. Callers that show progress can quote it.
/// A server that refuses connections fails in well under a second.
pub const MAX_UNREACHABLE_WAIT: std::time::Duration = transport::MAX_WAIT;
