//! lifeboat-dns against a real BIND 9 (`named`), one server per test, with the TSIG key
//! `tsig-keygen` made for it: the failover's record move and the failback's restore, and
//! each way an operator's DNS setup can be wrong.

use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

use lifeboat_dns::{lookup, restore, set_addresses, DnsError, DnsServer, TsigAlgorithm, TsigKey};
use lifeboat_testkit::bind::{Bind9, Bind9Zone};

const WEB: &str = "web.lab.test";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `lab.test` (updatable, `web` at 10.1.0.5 TTL 30) and `static.test` (no updates).
async fn start_bind() -> (Bind9, DnsServer) {
    let bind = Bind9::start(&[
        Bind9Zone::lab_test(),
        Bind9Zone::new("static.test")
            .record("web 30 IN A 10.9.0.1")
            .read_only(),
    ])
    .await
    .unwrap();
    let key = TsigKey::parse_bind(bind.key_file_text()).unwrap();
    assert_eq!(key.name(), Bind9::KEY_NAME);
    let server = DnsServer {
        address: bind.address(),
        zone: "lab.test".into(),
        key: Some(key),
    };
    (bind, server)
}

/// What the server answers for web.lab.test, asked with the right key.
async fn web_now(server: &DnsServer) -> (Vec<IpAddr>, Option<u32>) {
    lookup(server, WEB).await.unwrap()
}

#[tokio::test]
async fn failover_moves_the_a_record_and_failback_restores_it() {
    let (bind, server) = start_bind().await;
    assert_eq!(web_now(&server).await, (vec![ip("10.1.0.5")], Some(30)));

    let started = Instant::now();
    let update = set_addresses(&server, WEB, &[ip("10.20.0.5")], 30)
        .await
        .unwrap();
    let failover_took = started.elapsed();
    assert_eq!(update.name, "web.lab.test.");
    assert_eq!(update.before, vec![ip("10.1.0.5")]);
    assert_eq!(update.before_ttl, Some(30));
    assert_eq!(update.after, vec![ip("10.20.0.5")]);
    assert_eq!(web_now(&server).await, (vec![ip("10.20.0.5")], Some(30)));
    // A client that is not ours sees it too.
    assert_eq!(bind.dig(WEB, "A").unwrap(), vec!["10.20.0.5"]);

    let started = Instant::now();
    let back = restore(&server, &update).await.unwrap();
    let failback_took = started.elapsed();
    assert_eq!(back.before, vec![ip("10.20.0.5")]);
    assert_eq!(web_now(&server).await, (vec![ip("10.1.0.5")], Some(30)));
    assert_eq!(bind.dig(WEB, "A").unwrap(), vec!["10.1.0.5"]);

    // Round-trip numbers for the commit message: set_addresses is look, update, look.
    let mut times = Vec::new();
    for i in 0..20u8 {
        let started = Instant::now();
        set_addresses(&server, WEB, &[IpAddr::from([10, 30, 0, i])], 30)
            .await
            .unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    eprintln!(
        "set_addresses against named on 127.0.0.1: failover {failover_took:?}, failback \
         {failback_took:?}, 20 more: median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::test]
async fn an_ipv6_address_replaces_the_a_set_and_both_families_mix() {
    let (bind, server) = start_bind().await;

    let update = set_addresses(&server, WEB, &[ip("fd00:20::5")], 60)
        .await
        .unwrap();
    assert_eq!(update.before, vec![ip("10.1.0.5")]);
    assert_eq!(web_now(&server).await, (vec![ip("fd00:20::5")], Some(60)));
    assert!(bind.dig(WEB, "A").unwrap().is_empty(), "the A set is gone");
    assert_eq!(bind.dig(WEB, "AAAA").unwrap(), vec!["fd00:20::5"]);

    let both = [ip("10.20.0.5"), ip("10.20.0.6"), ip("fd00:20::5")];
    let mixed = set_addresses(&server, WEB, &both, 45).await.unwrap();
    assert_eq!(mixed.before, vec![ip("fd00:20::5")]);
    assert_eq!(mixed.before_ttl, Some(60));
    let (mut now, ttl) = web_now(&server).await;
    now.sort();
    assert_eq!((now, ttl), (both.to_vec(), Some(45)));

    restore(&server, &update).await.unwrap();
    assert_eq!(web_now(&server).await, (vec![ip("10.1.0.5")], Some(30)));
    assert!(bind.dig(WEB, "AAAA").unwrap().is_empty());
}

#[tokio::test]
async fn a_name_without_addresses_gets_them_and_undo_removes_them() {
    let (bind, server) = start_bind().await;
    let update = set_addresses(&server, "db.lab.test.", &[ip("10.20.0.7")], 30)
        .await
        .unwrap();
    assert_eq!((update.before.clone(), update.before_ttl), (vec![], None));
    assert_eq!(bind.dig("db.lab.test", "A").unwrap(), vec!["10.20.0.7"]);
    restore(&server, &update).await.unwrap();
    assert_eq!(
        lookup(&server, "db.lab.test").await.unwrap(),
        (vec![], None)
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_nothing_changes() {
    let (bind, server) = start_bind().await;
    let wrong = DnsServer {
        key: Some(TsigKey::new(Bind9::KEY_NAME, TsigAlgorithm::HmacSha256, vec![7; 32]).unwrap()),
        ..server.clone()
    };
    let err = set_addresses(&wrong, WEB, &[ip("10.20.0.5")], 30)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::KeyRefused { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("BADSIG") && text.contains(Bind9::KEY_NAME),
        "{text}"
    );
    assert!(text.contains("secret") && text.contains("clock"), "{text}");
    eprintln!("wrong secret: {text}");

    assert_eq!(web_now(&server).await, (vec![ip("10.1.0.5")], Some(30)));
    assert_eq!(bind.dig(WEB, "A").unwrap(), vec!["10.1.0.5"]);
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_refused_and_nothing_changes() {
    let (bind, server) = start_bind().await;
    let stranger = DnsServer {
        key: Some(TsigKey::new("someone-else", TsigAlgorithm::HmacSha256, vec![7; 32]).unwrap()),
        ..server.clone()
    };
    let err = set_addresses(&stranger, WEB, &[ip("10.20.0.5")], 30)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::KeyRefused { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("BADKEY") && text.contains("someone-else"),
        "{text}"
    );
    eprintln!("unknown key: {text}");
    assert_eq!(bind.dig(WEB, "A").unwrap(), vec!["10.1.0.5"]);
}

#[tokio::test]
async fn an_unsigned_update_is_refused() {
    let (bind, server) = start_bind().await;
    let unsigned = DnsServer {
        key: None,
        ..server.clone()
    };
    // Lookups need no key; the update does.
    assert_eq!(
        lookup(&unsigned, WEB).await.unwrap(),
        (vec![ip("10.1.0.5")], Some(30))
    );
    let err = set_addresses(&unsigned, WEB, &[ip("10.20.0.5")], 30)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("without a key"), "{err}");
    assert_eq!(bind.dig(WEB, "A").unwrap(), vec!["10.1.0.5"]);
}

#[tokio::test]
async fn a_zone_that_takes_no_updates_is_refused() {
    let (bind, server) = start_bind().await;
    let fixed = DnsServer {
        zone: "static.test".into(),
        ..server
    };
    let err = set_addresses(&fixed, "web.static.test", &[ip("10.20.0.5")], 30)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DnsError::Refused { op: "update", .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("allow-update") && text.contains(Bind9::KEY_NAME),
        "{text}"
    );
    eprintln!("read-only zone: {text}");
    assert_eq!(bind.dig("web.static.test", "A").unwrap(), vec!["10.9.0.1"]);
}

#[tokio::test]
async fn a_name_outside_the_zone_is_refused_before_anything_is_sent() {
    // Nothing listens here: an answer other than NotInZone would mean something was sent.
    let nobody = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = nobody.local_addr().unwrap();
    drop(nobody);
    let server = DnsServer {
        address,
        zone: "lab.test".into(),
        key: None,
    };
    for name in ["web.other.test", "web", "lab.test.example"] {
        let err = set_addresses(&server, name, &[ip("10.20.0.5")], 30)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::NotInZone { .. }), "{name}: {err}");
        let err = lookup(&server, name).await.unwrap_err();
        assert!(matches!(err, DnsError::NotInZone { .. }), "{name}: {err}");
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_unreachable_quickly() {
    let nobody = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = nobody.local_addr().unwrap();
    drop(nobody);
    let server = DnsServer {
        address,
        zone: "lab.test".into(),
        key: None,
    };
    let started = Instant::now();
    let err = set_addresses(&server, WEB, &[ip("10.20.0.5")], 30)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, DnsError::Unreachable { tries: 3, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("port {}", address.port())), "{text}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    eprintln!("server down ({took:?}): {text}");
}

#[tokio::test]
async fn a_server_that_never_answers_gives_up_within_the_bound() {
    // Accepts connections (the kernel completes the handshake) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = DnsServer {
        address: silent.local_addr().unwrap(),
        zone: "lab.test".into(),
        key: None,
    };
    let started = Instant::now();
    let err = lookup(&server, WEB).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("no answer within 5 s"), "{err}");
    assert!(
        took <= lifeboat_dns::MAX_UNREACHABLE_WAIT + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    eprintln!("silent server ({took:?}): {err}");
    drop(silent);
}

#[tokio::test]
async fn the_harness_reports_a_zone_named_rejects() {
    let err = match Bind9::start(&[Bind9Zone::new("bad.test").record("web IN A not-an-ip")]).await {
        Ok(_) => panic!("named started with a broken zone"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("not loaded due to errors"),
        "{err:#}"
    );
}
