//! The server's database on SQLite and on a real PostgreSQL server (started by
//! ./scripts/test): the same migrations and queries, the same answers.

use lifeboat_server::auth::Role;
use lifeboat_server::db::{Database, DbError, Host, PointRow, Protection, ProtectionState};
use lifeboat_testkit::{fresh_postgres_database, postgres_url};
use lifeboat_types::{OperationKind, OperationStatus};

async fn hosts_and_tokens_round_trip(url: &str) {
    let db = Database::connect(url).await.unwrap();
    let h = Host {
        id: "h1".into(),
        address: "10.0.0.1:7443".into(),
        hostname: "alpha".into(),
        fingerprint: "ab".repeat(32),
        enrolled_at: "2026-11-26T00:00:00Z".into(),
    };
    db.add_host(&h, "cred").await.unwrap();
    let again = db
        .add_host(
            &Host {
                id: "h2".into(),
                ..h.clone()
            },
            "c2",
        )
        .await;
    assert!(matches!(again, Err(DbError::Conflict(_))), "{again:?}");
    drop(db);
    // Reconnecting finds the migrations applied (none runs twice) and the data there.
    let db = Database::connect(url).await.unwrap();
    let access = db.hosts_with_access().await.unwrap();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].credential.expose(), "cred");
    let found = db.host_by_address("10.0.0.1:7443").await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.hostname.as_str()),
        ("h1", "alpha")
    );
    assert!(db.host_by_address("10.0.0.2:7443").await.unwrap().is_none());
    assert_eq!(db.token_count().await.unwrap(), 0);
    db.add_user("admin", Role::Admin, "hash").await.unwrap();
    db.add_token("admin", "x", "admin", Role::Operator)
        .await
        .unwrap();
    assert_eq!(db.token_count().await.unwrap(), 1);
    let caller = db.token_caller("x").await.unwrap().unwrap();
    assert_eq!(
        (caller.owner.as_str(), caller.role),
        ("admin", Role::Operator)
    );
    assert!(db.token_caller("y").await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_hosts_and_tokens_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    hosts_and_tokens_round_trip(&url).await;
}

#[tokio::test]
async fn postgres_hosts_and_tokens_round_trip() {
    hosts_and_tokens_round_trip(&fresh_postgres_database()).await;
}

#[tokio::test]
async fn a_wrong_password_names_the_server_but_not_the_password() {
    let base = postgres_url();
    let (_, host) = base.rsplit_once('@').unwrap();
    let url = format!("postgres://lifeboat_test:not-the-password@{host}");
    let err = Database::connect(&url).await.err().unwrap().to_string();
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(err.contains("lifeboat_test:***@"), "{err}");
}

fn protection(id: &str, vm: &str) -> Protection {
    Protection {
        id: id.into(),
        host_id: "h1".into(),
        vm: vm.into(),
        point_name: format!("alpha.{vm}"),
        vault_url: "file:///v".into(),
        vault_passphrase: "secret".into(),
        recovery_host_id: "h1".into(),
        policy: "default".into(),
        next_sync_at: "2026-11-26T00:00:00Z".into(),
        created_at: "2026-11-26T00:00:00Z".into(),
        ..Default::default()
    }
}

/// Generation-guarded writes, one running operation per VM, operations left running by a
/// dead server, and the points list kept equal to the vault's.
async fn protections_round_trip(url: &str) {
    let db = Database::connect(url).await.unwrap();
    db.add_protection(&protection("p1", "web")).await.unwrap();
    let again = db.add_protection(&protection("p2", "web")).await;
    assert!(matches!(again, Err(DbError::Conflict(_))), "{again:?}");

    // Two actors read generation 1; the first write wins, the second loses and must reread.
    let mut a = db.protection("p1").await.unwrap().unwrap();
    let mut b = a.clone();
    a.state = ProtectionState::InitialSync;
    a.current_sync = Some("s1".into());
    assert!(db.save_protection(&mut a).await.unwrap());
    assert_eq!(a.generation, 2);
    b.state = ProtectionState::Degraded;
    assert!(!db.save_protection(&mut b).await.unwrap());
    let now = db.protection("p1").await.unwrap().unwrap();
    assert_eq!(now.state, ProtectionState::InitialSync);
    assert_eq!(now.current_sync.as_deref(), Some("s1"));
    assert!(
        !db.delete_protection("p1", 1).await.unwrap(),
        "a stale delete must lose"
    );

    // One running operation per VM.
    let op = db
        .start_operation("h1", "web", OperationKind::Enable, "checking")
        .await
        .unwrap();
    let second = db
        .start_operation("h1", "web", OperationKind::Disable, "stopping")
        .await;
    assert!(
        matches!(&second, Err(DbError::Conflict(m)) if m.contains("enable")),
        "{second:?}"
    );
    db.start_operation("h1", "db", OperationKind::Disable, "stopping")
        .await
        .unwrap();
    // A restart (operations an earlier version ran in the request): the enable whose
    // protection exists succeeded, replication goes on; the disable failed.
    assert_eq!(db.recover_operations().await.unwrap(), 2);
    let done = db.operation(&op).await.unwrap().unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded);
    assert!(db.running_operation("h1", "db").await.unwrap().is_none());
    assert!(
        done.log.contains("checking") && done.log.contains("replication is enabled"),
        "{}",
        done.log
    );
    db.start_operation("h1", "web", OperationKind::Disable, "stopping")
        .await
        .unwrap();

    // Points: recorded once, then made equal to the vault's list.
    let row = |id: &str| PointRow {
        point: id.into(),
        cut_time: "2026-11-26T00:00:00Z".into(),
        consistency: "crash".into(),
        kind: "full".into(),
        bytes_read: 1,
        new_bytes: 1,
        note: None,
    };
    db.add_point("p1", &row("1795693682402-9ccafd11"))
        .await
        .unwrap();
    db.add_point("p1", &row("1795693682402-9ccafd11"))
        .await
        .unwrap();
    db.sync_points("p1", &["1795693700077-74047e88".to_string()])
        .await
        .unwrap();
    let points = db.points("p1").await.unwrap();
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].point, "1795693700077-74047e88");
    assert_eq!(points[0].kind, "unknown");
    assert!(points[0]
        .note
        .as_deref()
        .is_some_and(|n| n.contains("did not report")));
    assert!(db.point_name_taken("alpha.web").await.unwrap());
    assert!(!db.point_name_taken("alpha.db").await.unwrap());
    assert!(db.delete_protection("p1", 2).await.unwrap());
    assert!(db.points("p1").await.unwrap().is_empty());
    // A watcher finishing after the protection is gone leaves no orphan point.
    db.add_point("p1", &row("1795693700999-00000000"))
        .await
        .unwrap();
    assert!(db.points("p1").await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_protections_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    protections_round_trip(&url).await;
}

#[tokio::test]
async fn postgres_protections_round_trip() {
    protections_round_trip(&fresh_postgres_database()).await;
}

/// Which VMs are protected, read without the rest of each row, then the rows of some of
/// them whole (a page of Hosts & VMs): ids that are gone are skipped, and more ids than
/// one query binds are read in batches.
async fn protections_by_keys_and_ids(url: &str) {
    let db = Database::connect(url).await.unwrap();
    for (id, vm) in [("p1", "web"), ("p2", "db"), ("p3", "mail")] {
        db.add_protection(&protection(id, vm)).await.unwrap();
    }
    let mut keys: Vec<(String, String, String)> = db
        .protection_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, host, vm)| (id.to_string(), host.to_string(), vm))
        .collect();
    keys.sort();
    let key = |id: &str, vm: &str| (id.to_string(), "h1".to_string(), vm.to_string());
    assert_eq!(keys, [key("p1", "web"), key("p2", "db"), key("p3", "mail")]);
    let mut ids: Vec<String> = (0..1200).map(|i| format!("gone{i}")).collect();
    ids[0] = "p1".into();
    ids[700] = "p3".into();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut found: Vec<(String, String)> = db
        .protections_with_ids(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.id.to_string(), p.vm))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("p1".to_string(), "web".to_string()),
            ("p3".into(), "mail".into())
        ]
    );
    assert!(db.protections_with_ids(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_protections_by_keys_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    protections_by_keys_and_ids(&url).await;
}

#[tokio::test]
async fn postgres_protections_by_keys_and_ids() {
    protections_by_keys_and_ids(&fresh_postgres_database()).await;
}

/// Sealed vault keys: kept per (protection, host), replaced, never kept for a protection
/// that is gone, removed with their protection, and orphans cleaned; the passphrase of an
/// older row forgotten.
async fn vault_keys_round_trip(url: &str) {
    let db = Database::connect(url).await.unwrap();
    db.add_protection(&protection("p1", "web")).await.unwrap();
    db.put_vault_key("p1", "h1", "sealed-1").await.unwrap();
    db.put_vault_key("p1", "h1", "sealed-2").await.unwrap();
    db.put_vault_key("p1", "h2", "sealed-3").await.unwrap();
    assert_eq!(
        db.vault_key("p1", "h1").await.unwrap().as_deref(),
        Some("sealed-2")
    );
    assert_eq!(
        db.vault_key("p1", "h2").await.unwrap().as_deref(),
        Some("sealed-3")
    );
    assert_eq!(db.vault_key("p1", "h3").await.unwrap(), None);
    // A conversion racing `unprotect`: no key for a protection that does not exist.
    assert!(!db
        .put_vault_key_of_existing("gone", "h1", "x")
        .await
        .unwrap());
    assert_eq!(db.vault_key("gone", "h1").await.unwrap(), None);
    assert!(db
        .put_vault_key_of_existing("p1", "h1", "sealed-4")
        .await
        .unwrap());
    assert_eq!(
        db.vault_key("p1", "h1").await.unwrap().as_deref(),
        Some("sealed-4")
    );
    // Keys sealed for a protection that was never recorded (a crash in between) go.
    db.put_vault_key("never", "h1", "x").await.unwrap();
    assert_eq!(db.delete_orphan_vault_keys().await.unwrap(), 1);
    assert_eq!(
        db.vault_key("p1", "h2").await.unwrap().as_deref(),
        Some("sealed-3")
    );
    // The passphrase of a row of an earlier version is forgotten.
    assert_eq!(
        db.protection("p1")
            .await
            .unwrap()
            .unwrap()
            .vault_passphrase
            .expose(),
        "secret"
    );
    db.forget_vault_passphrase("p1").await.unwrap();
    let p = db.protection("p1").await.unwrap().unwrap();
    assert!(p.vault_passphrase.is_empty());
    // Removing the protection removes its keys.
    assert!(db.delete_protection("p1", p.generation).await.unwrap());
    assert_eq!(db.vault_key("p1", "h2").await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_vault_keys_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    vault_keys_round_trip(&url).await;
}

#[tokio::test]
async fn postgres_vault_keys_round_trip() {
    vault_keys_round_trip(&fresh_postgres_database()).await;
}

/// Two actors on one VM at once — two API calls starting a failover, or an API call and
/// the replication scheduler — exactly one wins; the loser re-plans from the row as it
/// is, and the state machine refuses what no longer applies.
async fn concurrent_actors_never_both_win(url: &str) {
    use lifeboat_server::db::{Event, Facts, TransitionError};
    let db = Database::connect(url).await.unwrap();
    let mut p = protection("p1", "web");
    p.state = ProtectionState::Protected;
    p.state_read = ProtectionState::Protected;
    db.add_protection(&p).await.unwrap();

    // Two API calls read the row at the same generation and race to start a failover.
    let read = db.protection("p1").await.unwrap().unwrap();
    let race = |db: Database| {
        let (g, from) = (read.generation, read.state);
        tokio::spawn(async move {
            db.transition("p1", g, from, Event::FailOver, &Facts::reason("failover"))
                .await
                .unwrap()
        })
    };
    let tasks: Vec<_> = (0..8).map(|_| race(db.clone())).collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(
        winners, 1,
        "exactly one of eight concurrent failovers starts"
    );
    // A loser re-plans from the row as it is now: failing over already.
    let now = db.protection("p1").await.unwrap().unwrap();
    assert_eq!(now.state, ProtectionState::FailingOver);
    let again = db
        .transition(
            "p1",
            now.generation,
            now.state,
            Event::Disable,
            &Facts::default(),
        )
        .await;
    assert!(
        matches!(again, Err(TransitionError::Refused(_))),
        "{again:?}"
    );

    // The scheduler read the row before the failover and saves its sync bookkeeping
    // after it: it loses, and its stale Protected never overwrites FailingOver.
    let mut stale = read.clone();
    stale.state = ProtectionState::Degraded;
    stale.failures = 3;
    assert!(!db.save_protection(&mut stale).await.unwrap());
    // Read again, the scheduler cannot turn a moving VM into a replicated one.
    let mut fresh = db.protection("p1").await.unwrap().unwrap();
    fresh.state = ProtectionState::Protected;
    let refused = db.save_protection(&mut fresh).await;
    assert!(matches!(refused, Err(DbError::Refused(_))), "{refused:?}");
    assert_eq!(
        db.protection("p1").await.unwrap().unwrap().state,
        ProtectionState::FailingOver
    );

    // The API and the scheduler at once, many times: the row ends in one of the two
    // outcomes, never a mix, and its generation counts exactly the writes that won.
    for round in 0..20 {
        let row = db.protection("p1").await.unwrap().unwrap();
        let (api, sched) = (db.clone(), db.clone());
        let event = if row.state == ProtectionState::FailingOver {
            Event::FailoverUndone
        } else {
            Event::FailOver
        };
        let (a, b) = (row.clone(), row.clone());
        let api = tokio::spawn(async move {
            api.transition("p1", a.generation, a.state, event, &Facts::reason("api"))
                .await
                .unwrap()
                .is_some()
        });
        let sched = tokio::spawn(async move {
            let mut b = b;
            b.last_error = format!("round {round}");
            sched.save_protection(&mut b).await.unwrap()
        });
        let (api, sched) = (api.await.unwrap(), sched.await.unwrap());
        assert!(api ^ sched, "round {round}: api {api}, scheduler {sched}");
        let after = db.protection("p1").await.unwrap().unwrap();
        assert_eq!(after.generation, row.generation + 1, "round {round}");
        if api {
            assert_eq!(after.state, row.state.on(event).unwrap());
            assert_ne!(after.last_error, format!("round {round}"));
        } else {
            assert_eq!(after.state, row.state);
            assert_eq!(after.last_error, format!("round {round}"));
        }
    }
}

#[tokio::test]
async fn sqlite_concurrent_actors_never_both_win() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_actors_never_both_win(&format!("sqlite://{}", dir.path().join("c.db").display()))
        .await;
}

#[tokio::test]
async fn postgres_concurrent_actors_never_both_win() {
    concurrent_actors_never_both_win(&fresh_postgres_database()).await;
}

/// A recovery's state moves only by compare-and-set, and the watcher's observations (what
/// the agent says of the VM) never undo a move made meanwhile: the race that the old
/// re-read-and-overwrite loop lost.
async fn recovery_moves_and_observations_never_overwrite_each_other(url: &str) {
    use lifeboat_server::db::Recovery;
    use lifeboat_types::{RecoveryKind, RecoveryState};
    let db = Database::connect(url).await.unwrap();
    let rec = Recovery {
        id: "r1".into(),
        protection_id: "p1".into(),
        kind: RecoveryKind::Planned,
        host_id: "h2".into(),
        vm: "web".into(),
        origin_host_id: "h1".into(),
        origin_vm: "web".into(),
        point: "pt".into(),
        point_time: "2026-11-26T00:00:00Z".into(),
        state: RecoveryState::Starting,
        vm_state: "stopped".into(),
        forwards: Vec::new(),
        ..Default::default()
    };
    db.add_recovery(&rec).await.unwrap();
    // The watcher read the row while it was starting...
    let mut seen = db.recovery("r1").await.unwrap().unwrap();
    // ...an operation moves it, twice, and a stale move loses.
    assert!(db
        .move_recovery("r1", &[RecoveryState::Starting], RecoveryState::Running)
        .await
        .unwrap());
    assert!(!db
        .move_recovery("r1", &[RecoveryState::Starting], RecoveryState::Failed)
        .await
        .unwrap());
    assert!(db
        .move_recovery("r1", &[RecoveryState::Running], RecoveryState::Committed)
        .await
        .unwrap());
    // ...and the watcher's observation from its stale copy changes only what it saw.
    seen.vm_state = "running".into();
    seen.hydrated_bytes = 42;
    db.record_observation(&seen).await.unwrap();
    let now = db.recovery("r1").await.unwrap().unwrap();
    assert_eq!(now.state, RecoveryState::Committed);
    assert_eq!((now.vm_state.as_str(), now.hydrated_bytes), ("running", 42));
    // A recovery that is gone is not moved.
    assert!(!db
        .move_recovery("gone", &[RecoveryState::Running], RecoveryState::Removing)
        .await
        .unwrap());
}

#[tokio::test]
async fn sqlite_recovery_moves_and_observations_never_overwrite_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    recovery_moves_and_observations_never_overwrite_each_other(&url).await;
}

#[tokio::test]
async fn postgres_recovery_moves_and_observations_never_overwrite_each_other() {
    recovery_moves_and_observations_never_overwrite_each_other(&fresh_postgres_database()).await;
}

/// The fence is recorded once, by compare-and-set on the row as read, and replication's
/// bookkeeping never writes it (nor the failover kind); a reversed protection's syncs
/// count against the recovery host that runs them.
async fn fence_and_reversed_sync_host(url: &str) {
    use lifeboat_server::db::Recovery;
    use lifeboat_types::{RecoveryKind, RecoveryState};
    let db = Database::connect(url).await.unwrap();
    let mut p = protection("p1", "web");
    p.state = ProtectionState::FailedOver;
    p.state_read = ProtectionState::FailedOver;
    db.add_protection(&p).await.unwrap();
    let mut read = db.protection("p1").await.unwrap().unwrap();
    let stale = read.clone();
    // Another actor writes first: a fence recorded from the stale read loses.
    assert!(db.save_protection(&mut read).await.unwrap());
    let at = "2026-12-05T00:00:00Z";
    assert!(!db
        .record_source_fenced("p1", stale.generation, stale.state, at)
        .await
        .unwrap());
    // Nor is it recorded over a state the caller did not read.
    assert!(!db
        .record_source_fenced("p1", read.generation, ProtectionState::Protected, at)
        .await
        .unwrap());
    assert!(db
        .record_source_fenced("p1", read.generation, read.state, at)
        .await
        .unwrap());
    // Once: a second record finds it fenced already.
    let fenced = db.protection("p1").await.unwrap().unwrap();
    assert_eq!(fenced.fenced_at.as_deref(), Some(at));
    assert!(!db
        .record_source_fenced("p1", fenced.generation, fenced.state, at)
        .await
        .unwrap());
    // Replication's save from a row read before the fence cannot clear it (it loses),
    // and one read after it writes its bookkeeping only.
    let mut before = read.clone();
    before.last_error = "stale".into();
    assert!(!db.save_protection(&mut before).await.unwrap());
    let mut after = fenced.clone();
    after.fenced_at = None;
    after.failover_kind = None;
    after.last_error = "fresh".into();
    assert!(db.save_protection(&mut after).await.unwrap());
    let now = db.protection("p1").await.unwrap().unwrap();
    assert_eq!(now.fenced_at.as_deref(), Some(at));
    assert_eq!(now.last_error, "fresh");

    // Home is h1; while reversed, its syncs run on the committed recovery's host h2.
    let host_of = |all: Vec<(String, i64, String)>| {
        all.into_iter()
            .find(|(id, _, _)| id == "p1")
            .map(|(_, _, h)| h)
            .unwrap()
    };
    assert_eq!(host_of(db.protection_versions().await.unwrap()), "h1");
    db.add_recovery(&Recovery {
        id: "r1".into(),
        protection_id: "p1".into(),
        kind: RecoveryKind::Unplanned,
        host_id: "h2".into(),
        vm: "web".into(),
        origin_host_id: "h1".into(),
        origin_vm: "web".into(),
        point: "pt".into(),
        point_time: at.into(),
        state: RecoveryState::Committed,
        vm_state: "running".into(),
        forwards: Vec::new(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Failed over but not reprotected: nothing syncs; home's host is named.
    assert_eq!(host_of(db.protection_versions().await.unwrap()), "h1");
    for (event, state) in [
        (
            lifeboat_server::db::Event::Reprotect,
            ProtectionState::Reprotecting,
        ),
        (
            lifeboat_server::db::Event::Reprotected,
            ProtectionState::ProtectedReversed,
        ),
    ] {
        let row = db.protection("p1").await.unwrap().unwrap();
        db.transition(
            "p1",
            row.generation,
            row.state,
            event,
            &lifeboat_server::db::Facts::default(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(db.protection("p1").await.unwrap().unwrap().state, state);
        assert_eq!(host_of(db.protection_versions().await.unwrap()), "h2");
    }
    // Degraded at the recovery site: stored, and still synced there.
    let mut row = db.protection("p1").await.unwrap().unwrap();
    row.state = ProtectionState::DegradedReversed;
    assert!(db.save_protection(&mut row).await.unwrap());
    let row = db.protection("p1").await.unwrap().unwrap();
    assert_eq!(row.state, ProtectionState::DegradedReversed);
    assert_eq!(host_of(db.protection_versions().await.unwrap()), "h2");
}

#[tokio::test]
async fn sqlite_fence_and_reversed_sync_host() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("f.db").display());
    fence_and_reversed_sync_host(&url).await;
}

#[tokio::test]
async fn postgres_fence_and_reversed_sync_host() {
    fence_and_reversed_sync_host(&fresh_postgres_database()).await;
}
