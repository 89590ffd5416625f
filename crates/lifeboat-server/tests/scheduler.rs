//! The replication scheduler's cost with nothing to do: a fleet of protected VMs whose
//! next sync is an hour away must cost about one round (a read of every protection) a
//! second, however many of their steps end meanwhile. A scheduler that made a round at
//! every step's end, or spun while steps ran, took a whole core at 1,000 VMs
//! (`lifeboat-bench scale`).

use std::time::Duration;

use chrono::Utc;
use lifeboat_server::db::{Database, Host, Protection, ProtectionState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fleet_costs_one_round_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("lifeboat.db").display());
    let db = Database::connect(&url).await.unwrap();
    for h in 0..2 {
        let host = Host {
            id: format!("host-{h}").into(),
            // Nothing listens: a step of a VM that is not due asks no agent.
            address: format!("127.0.0.1:{}", 1 + h),
            hostname: format!("host{h}"),
            fingerprint: "0".repeat(64),
            enrolled_at: Utc::now().to_rfc3339(),
        };
        db.add_host(&host, "credential").await.unwrap();
    }
    let now = Utc::now();
    let vms = 300;
    for i in 0..vms {
        let p = Protection {
            id: format!("p{i}").into(),
            host_id: format!("host-{}", i % 2).into(),
            vm: format!("vm{i}"),
            point_name: format!("host.vm{i}"),
            vault_url: "file:///nonexistent".into(),
            recovery_host_id: format!("host-{}", (i + 1) % 2).into(),
            policy: "hourly".into(),
            state: ProtectionState::Protected,
            last_point: Some("p".into()),
            last_point_time: Some(now.to_rfc3339()),
            next_sync_at: (now + chrono::Duration::hours(1)).to_rfc3339(),
            created_at: now.to_rfc3339(),
            ..Default::default()
        };
        db.add_protection(&p).await.unwrap();
    }
    let scheduler = tokio::spawn(lifeboat_server::replication::run(db.clone()));
    // Every VM steps once at the start (none was stepped yet), then waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rounds = lifeboat_server::replication::rounds();
    scheduler.abort();
    eprintln!("{vms} idle VMs: {rounds} scheduler rounds in 4 s");
    assert!(
        rounds >= 2,
        "the scheduler made {rounds} rounds: is it running?"
    );
    assert!(
        rounds <= 8,
        "the scheduler made {rounds} rounds in 4 s for {vms} VMs with nothing to do (about one a second is right)"
    );
    // Nothing was written: a step that changes nothing writes nothing.
    for p in db.protections().await.unwrap() {
        assert_eq!(p.generation, 1, "{} was written", p.id);
        assert_eq!(p.state, ProtectionState::Protected);
    }
}
