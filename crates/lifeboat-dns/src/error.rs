//! What can go wrong talking to a site's DNS server, each case with the fix an operator
//! would make. Callers match on the variant (a failover step reports `Unreachable`
//! differently from a refused key); the text is for the operator.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS server {server} did not answer after {tries} tries ({reason}): check that it runs and listens on TCP port {port}, and that no firewall drops the traffic", port = server.port())]
    Unreachable {
        server: SocketAddr,
        tries: u32,
        reason: String,
    },

    /// NOTAUTH with a TSIG error (BADKEY, BADSIG, BADTIME), or a response whose TSIG
    /// arrived broken the same way.
    #[error("DNS server {server} rejected TSIG key {key} for zone {zone} ({reason}): check that the key's name and secret match the server's key file, that this host's clock is within 5 minutes of the server's, and that the zone allows updates with this key")]
    KeyRefused {
        server: SocketAddr,
        zone: String,
        key: String,
        reason: String,
    },

    #[error(
        "DNS server {server} refused the {op} in zone {zone} {by}: {}",
        refused_fix(op)
    )]
    Refused {
        server: SocketAddr,
        zone: String,
        /// "update" or "lookup".
        op: &'static str,
        /// "signed with key K" or "without a key", so the fix names the right thing.
        by: String,
    },

    #[error("{name} is not in zone {zone}: give the full name of a record inside the zone (e.g. web.{zone}), or configure the zone it belongs to")]
    NotInZone { name: String, zone: String },

    /// NOTAUTH without a TSIG error: RFC 2136 uses it for "this server is not
    /// authoritative for the zone".
    #[error("DNS server {server} is not authoritative for zone {zone}: point Lifeboat at the zone's primary server")]
    NotAuthoritative { server: SocketAddr, zone: String },

    /// The server said yes but still answers with something else. RFC 2136 makes a
    /// server ignore an A record added to a name that holds a CNAME, silently.
    #[error("DNS server {server} accepted the update of {name} but answers {found:?} instead of {expected:?}: is {name} a CNAME, or is a secondary answering for the primary?")]
    NotApplied {
        server: SocketAddr,
        name: String,
        expected: Vec<IpAddr>,
        found: Vec<IpAddr>,
    },

    #[error("{what} {name:?} is not a valid DNS name: {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: String,
    },

    #[error("DNS server {server} sent a response that cannot be trusted ({reason}); if it persists, capture the traffic with `tcpdump port {port}` and report it", port = server.port())]
    BadResponse { server: SocketAddr, reason: String },

    #[error("DNS server {server} answered {rcode} for zone {zone}; its log says why")]
    Other {
        server: SocketAddr,
        zone: String,
        rcode: String,
    },
}

fn refused_fix(op: &str) -> &'static str {
    if op == "update" {
        "the zone does not allow updates from this key or address; on BIND add \
         `allow-update { key \"NAME\"; };` (or an update-policy grant) to the zone, on Knot \
         an ACL with action update"
    } else {
        "the server does not serve this zone to this key or address; check that it is the \
         zone's primary and that its allow-query (BIND) or ACL (Knot) lets this host in"
    }
}
