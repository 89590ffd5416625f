//! Reading and replacing a name's address records (A and AAAA together: a VM that moves
//! networks may change family, and a stale record of the other family would keep
//! sending clients to the old site).

use std::net::IpAddr;
use std::time::Instant;

use hickory_proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::transport::exchange;
use crate::{DnsError, DnsServer};

/// What [`set_addresses`] changed: enough to report it and to undo it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The name as sent, fully qualified (`web.lab.example.com.`).
    pub name: String,
    /// The addresses the server held before; empty when the name had none.
    pub before: Vec<IpAddr>,
    /// Their TTL (the longer one if A and AAAA differed): resolvers may go on handing out
    /// the old addresses this many seconds after the update.
    pub before_ttl: Option<u32>,
    pub after: Vec<IpAddr>,
    pub ttl: u32,
}

/// The addresses `name` has on `server` (A and AAAA), and their TTL (the longer, when the
/// two sets differ). A name without addresses, or that does not exist, gives `([], None)`.
/// `name` is taken as fully qualified, with or without the trailing dot.
pub async fn lookup(
    server: &DnsServer,
    name: &str,
) -> Result<(Vec<IpAddr>, Option<u32>), DnsError> {
    let (_, name) = names_in_zone(server, name)?;
    lookup_name(server, &name).await
}

/// Replaces all of `name`'s A and AAAA records with `addrs` (both families may be mixed;
/// empty removes them) with `ttl`, in one TSIG-signed RFC 2136 update, and checks that the
/// server now answers `addrs`. Sending the same call twice is harmless.
///
/// `before` is what the server held when this call started. A caller that retries after
/// an error cannot tell whether the first try's update went through (the look afterwards
/// may be what failed), so the retry's `before` may already be the new addresses: a
/// failover step should [`lookup`] and journal the old addresses first, and undo to those.
pub async fn set_addresses(
    server: &DnsServer,
    name: &str,
    addrs: &[IpAddr],
    ttl: u32,
) -> Result<Update, DnsError> {
    let (zone, fqdn) = names_in_zone(server, name)?;
    let (before, before_ttl) = lookup_name(server, &fqdn).await?;

    let started = Instant::now();
    let response = exchange(server, || update_message(&zone, &fqdn, addrs, ttl)).await?;
    check_rcode(server, "update", &response)?;
    let round_trip = started.elapsed();

    let (found, _) = lookup_name(server, &fqdn).await?;
    if sorted(&found) != sorted(addrs) {
        return Err(DnsError::NotApplied {
            server: server.address,
            name: fqdn.to_string(),
            expected: addrs.to_vec(),
            found,
        });
    }
    tracing::info!(
        server = %server.address, name = %fqdn, ?before, ?before_ttl, after = ?addrs, ttl,
        round_trip_ms = round_trip.as_millis() as u64, "DNS records updated"
    );
    Ok(Update {
        name: fqdn.to_string(),
        before,
        before_ttl,
        after: addrs.to_vec(),
        ttl,
    })
}

/// Puts back what `update` replaced (failback): its `before` addresses with their old TTL.
/// When the name had no addresses before, they are removed.
pub async fn restore(server: &DnsServer, update: &Update) -> Result<Update, DnsError> {
    let ttl = update.before_ttl.unwrap_or(update.ttl);
    set_addresses(server, &update.name, &update.before, ttl).await
}

/// RFC 2136 2.5.2 then 2.5.1: delete the A and AAAA RRsets (class ANY, TTL 0, no data),
/// then add each address (class IN). A server applies a message's updates in order and
/// all or nothing, so clients never see the name without addresses.
fn update_message(zone: &Name, name: &Name, addrs: &[IpAddr], ttl: u32) -> Message {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut zone_query = Query::query(zone.clone(), RecordType::SOA);
    zone_query.set_query_class(DNSClass::IN);
    message.add_zone(zone_query);
    for rtype in [RecordType::A, RecordType::AAAA] {
        let mut delete = Record::update0(name.clone(), 0, rtype);
        delete.dns_class = DNSClass::ANY;
        message.add_update(delete);
    }
    for addr in addrs {
        let data = match addr {
            IpAddr::V4(v4) => RData::A(A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
        };
        message.add_update(Record::from_rdata(name.clone(), ttl, data));
    }
    message
}

async fn lookup_name(
    server: &DnsServer,
    name: &Name,
) -> Result<(Vec<IpAddr>, Option<u32>), DnsError> {
    let (v4, v6) = tokio::join!(
        query(server, name, RecordType::A),
        query(server, name, RecordType::AAAA)
    );
    let (mut addrs, v4_ttl) = v4?;
    let (v6_addrs, v6_ttl) = v6?;
    addrs.extend(v6_addrs);
    Ok((addrs, v4_ttl.max(v6_ttl)))
}

async fn query(
    server: &DnsServer,
    name: &Name,
    rtype: RecordType,
) -> Result<(Vec<IpAddr>, Option<u32>), DnsError> {
    let response = exchange(server, || {
        let mut message = Message::query();
        // The server is asked as the zone's authority; it must not go elsewhere.
        message.metadata.recursion_desired = false;
        message.add_query(Query::query(name.clone(), rtype));
        message
    })
    .await?;
    if response.metadata.response_code == ResponseCode::NXDomain {
        not_from_cache(server, &response)?;
        return Ok((Vec::new(), None));
    }
    check_rcode(server, "lookup", &response)?;
    not_from_cache(server, &response)?;
    let mut addrs = Vec::new();
    let mut ttl: Option<u32> = None;
    // Only the records of this name: a CNAME answer also carries its target's.
    for record in response.answers.iter().filter(|r| r.name == *name) {
        let addr = match &record.data {
            RData::A(a) if rtype == RecordType::A => IpAddr::V4(a.0),
            RData::AAAA(aaaa) if rtype == RecordType::AAAA => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        addrs.push(addr);
        // Records of one RRset share a TTL (RFC 2181 5.2); min() if a server disagrees.
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
    }
    Ok((addrs, ttl))
}

/// An answer without the AA bit came from a cache (the address is a resolver's, not the
/// zone's primary): its TTL has been counting down and its records may be stale.
fn not_from_cache(server: &DnsServer, response: &Message) -> Result<(), DnsError> {
    if response.metadata.authoritative {
        Ok(())
    } else {
        Err(DnsError::NotAuthoritative {
            server: server.address,
            zone: server.zone.clone(),
        })
    }
}

fn check_rcode(server: &DnsServer, op: &'static str, response: &Message) -> Result<(), DnsError> {
    let zone = server.zone.clone();
    match response.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        ResponseCode::Refused => Err(DnsError::Refused {
            server: server.address,
            zone,
            op,
            by: match &server.key {
                Some(key) => format!("signed with key {}", key.name()),
                None => "without a key".into(),
            },
        }),
        // TSIG failures were turned into KeyRefused by the transport; a plain NOTAUTH
        // is RFC 2136's "not authoritative for this zone".
        ResponseCode::NotAuth => Err(DnsError::NotAuthoritative {
            server: server.address,
            zone,
        }),
        ResponseCode::NotZone => Err(DnsError::NotInZone {
            name: response
                .queries
                .first()
                .map_or_else(String::new, |q| q.name().to_string()),
            zone,
        }),
        other => Err(DnsError::Other {
            server: server.address,
            zone,
            rcode: other.to_string(),
        }),
    }
}

/// The zone and the name, both fully qualified, after checking that the name lies in the
/// zone: a server would refuse it anyway, but with an error that does not say why.
fn names_in_zone(server: &DnsServer, name: &str) -> Result<(Name, Name), DnsError> {
    let zone = absolute("zone", &server.zone)?;
    let fqdn = absolute("record name", name)?;
    if !zone.zone_of(&fqdn) {
        return Err(DnsError::NotInZone {
            name: fqdn.to_string(),
            zone: zone.to_string(),
        });
    }
    Ok((zone, fqdn))
}

fn absolute(what: &'static str, text: &str) -> Result<Name, DnsError> {
    let text = text.trim();
    let bad = |reason: String| DnsError::BadName {
        what,
        name: text.to_string(),
        reason,
    };
    if text.is_empty() || text == "." {
        return Err(bad("it is empty".into()));
    }
    let dotted = if text.ends_with('.') {
        text.to_string()
    } else {
        format!("{text}.")
    };
    Name::from_ascii(&dotted).map_err(|e| bad(e.to_string()))
}

fn sorted(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let mut v = addrs.to_vec();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(zone: &str) -> DnsServer {
        DnsServer {
            address: "127.0.0.1:53".parse().unwrap(),
            zone: zone.into(),
            key: None,
        }
    }

    #[test]
    fn names_are_fully_qualified_and_checked_against_the_zone() {
        let s = server("lab.test");
        let (zone, name) = names_in_zone(&s, "web.lab.test").unwrap();
        assert_eq!(zone.to_string(), "lab.test.");
        assert_eq!(name.to_string(), "web.lab.test.");
        assert!(names_in_zone(&s, "WEB.Lab.Test.").is_ok());
        assert!(
            names_in_zone(&s, "lab.test").is_ok(),
            "the apex is in the zone"
        );
        for outside in ["web", "web.other.test", "notlab.test", "test"] {
            let err = names_in_zone(&s, outside).unwrap_err();
            assert!(
                matches!(err, DnsError::NotInZone { .. }),
                "{outside}: {err}"
            );
        }
        let err = names_in_zone(&s, "").unwrap_err();
        assert!(matches!(err, DnsError::BadName { .. }), "{err}");
    }

    #[test]
    fn update_deletes_both_families_before_adding() {
        let zone = Name::from_ascii("lab.test.").unwrap();
        let name = Name::from_ascii("web.lab.test.").unwrap();
        let addrs: Vec<IpAddr> = vec!["10.20.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let m = update_message(&zone, &name, &addrs, 30);
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        let updates = m.updates();
        assert_eq!(updates.len(), 4);
        assert_eq!(updates[0].dns_class, DNSClass::ANY);
        assert_eq!(updates[1].dns_class, DNSClass::ANY);
        assert_eq!(updates[2].data, RData::A(A("10.20.0.5".parse().unwrap())));
        assert_eq!(updates[3].ttl, 30);
        assert!(m.answers.is_empty(), "no prerequisites");
    }
}
