//! Every operation of a VM's life, driven through its own step list on real agents and
//! a real guest (DESIGN.md, "Operations"): the campaign is generated from the engine's
//! step lists (`lifeboat_server::ops`), not written per step.
//!
//! The VM goes round its whole life: protected at home → test failover → cleanup →
//! planned failover → commit → reversed protection → planned failback → reprotect →
//! unplanned failover → commit → reversed protection → unplanned failback (the recovery
//! host's copy fenced) → reprotect → cleanup of the fenced copy → unprotect → protect.
//! At each operation the campaign runs, with the server restarted for each:
//! - a failure injected after a step (`LIFEBOAT_SAGA_FAIL`): up to the point of no return
//!   the operation ends `failed` and undone — the VM runs where it ran, in the state it
//!   was, with every acknowledged write; after it, the operation retries forward and
//!   succeeds;
//! - a kill -9 of the server at a step (`LIFEBOAT_FAILPOINT`), then a new server: before
//!   the point of no return the operation is undone ("interrupted by a server restart");
//!   from it on the new server finishes it;
//! - every step run twice (`LIFEBOAT_SAGA_REPEAT`): the same result as once.
//!
//! A case that ends undone leaves the VM as it was, so the next case of the same
//! operation starts from there; a case that completes the operation moves the VM on to
//! the next. The suite runs one lap: every operation with every step twice, one undone
//! case each (a failure and a kill in turn, at a step that turns with the operation),
//! and a failure after its last step where that is declared undone.
//! `LIFEBOAT_SAGA_CAMPAIGN=full cargo nextest run -p lifeboat --test qemu_saga_campaign`
//! runs every case: every undone case in the first lap, then laps until each case that
//! completes an operation has run. Each case's outcome is printed, and the count at the
//! end. At every moment at most one copy of the VM runs.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{cluster, Cluster};
use common::moves::{all_acked_present, where_it_runs, writing_guest, OneCopy};
use lifeboat_server::ops::{self, StepInfo};
use lifeboat_testkit::free_tcp_port;
use serde_json::Value;

/// Where the VM stands between operations: its protection's state ("none" when not
/// protected), the host its guest runs on, and its recoveries (kind, state).
#[derive(Clone, Copy, Debug)]
struct World {
    state: &'static str,
    runs_on: &'static str,
    recoveries: Recoveries,
}

/// A VM's recoveries: (kind, state) each, sorted.
type Recoveries = &'static [(&'static str, &'static str)];

const HOME: World = World {
    state: "protected",
    runs_on: "alpha",
    recoveries: &[],
};

/// One operation of the VM's life.
struct Op {
    /// Its kind, as faults name it (`failover-test:record`).
    kind: &'static str,
    /// The client command that starts it and follows it to its end.
    args: &'static [&'static str],
    steps: &'static [StepInfo],
    before: World,
    after: World,
    /// Steps whose effect is the operation's own outcome and has no undo: a failure
    /// injected after one leaves the operation `failed` with its outcome in place.
    outcome_steps: &'static [&'static str],
    /// Steps by whose end another actor has ended the operation (the scheduler ends an
    /// enable at the first point): a failure injected after one finds it succeeded, and
    /// undoes nothing.
    ended_elsewhere: &'static [&'static str],
}

fn life() -> Vec<Op> {
    let test_copy = World {
        recoveries: &[("test", "running")],
        ..HOME
    };
    let away = |kind: &'static str| -> [World; 3] {
        let (run, com): (Recoveries, Recoveries) = if kind == "planned" {
            (&[("planned", "running")], &[("planned", "committed")])
        } else {
            (&[("unplanned", "running")], &[("unplanned", "committed")])
        };
        [
            World {
                state: "failed_over",
                runs_on: "beta",
                recoveries: run,
            },
            World {
                state: "failed_over",
                runs_on: "beta",
                recoveries: com,
            },
            World {
                state: "protected_reversed",
                runs_on: "beta",
                recoveries: com,
            },
        ]
    };
    let [p_over, p_committed, p_reversed] = away("planned");
    let [u_over, u_committed, u_reversed] = away("unplanned");
    let back = World {
        state: "failed_back",
        runs_on: "alpha",
        recoveries: &[],
    };
    let fenced: Recoveries = &[("unplanned", "fenced")];
    let back_fenced = World {
        recoveries: fenced,
        ..back
    };
    let home_fenced = World {
        recoveries: fenced,
        ..HOME
    };
    let unprotected = World {
        state: "none",
        ..HOME
    };
    let op = |kind, args, steps, before, after| Op {
        kind,
        args,
        steps,
        before,
        after,
        outcome_steps: &[],
        ended_elsewhere: &[],
    };
    vec![
        op(
            "failover-test",
            &["failover", "web", "--test"],
            ops::failover::TEST_STEPS,
            HOME,
            test_copy,
        ),
        Op {
            outcome_steps: &["remove-copy"],
            ..op(
                "failover-cleanup",
                &["failover", "cleanup", "web"],
                ops::cleanup::STEPS,
                test_copy,
                HOME,
            )
        },
        op(
            "failover-planned",
            &["failover", "web", "--planned", "--shutdown-timeout", "5s"],
            ops::failover::PLANNED_STEPS,
            HOME,
            p_over,
        ),
        Op {
            outcome_steps: &["record-commit"],
            ..op(
                "failover-commit",
                &["failover", "commit", "web"],
                ops::commit::STEPS,
                p_over,
                p_committed,
            )
        },
        op(
            "reprotect",
            &["reprotect", "web"],
            ops::reprotect::REVERSED,
            p_committed,
            p_reversed,
        ),
        op(
            "failback",
            &["failback", "web", "--shutdown-timeout", "5s"],
            ops::failback::STEPS,
            p_reversed,
            back,
        ),
        Op {
            outcome_steps: &["resume-replication"],
            ..op(
                "reprotect",
                &["reprotect", "web"],
                ops::reprotect::FROM_HOME,
                back,
                HOME,
            )
        },
        op(
            "failover-unplanned",
            &["failover", "web", "--unplanned"],
            ops::failover::UNPLANNED_STEPS,
            HOME,
            u_over,
        ),
        Op {
            outcome_steps: &["record-commit"],
            ..op(
                "failover-commit",
                &["failover", "commit", "web"],
                ops::commit::STEPS,
                u_over,
                u_committed,
            )
        },
        op(
            "reprotect",
            &["reprotect", "web"],
            ops::reprotect::REVERSED,
            u_committed,
            u_reversed,
        ),
        op(
            "failback",
            &["failback", "web", "--unplanned"],
            ops::failback::UNPLANNED_STEPS,
            u_reversed,
            back_fenced,
        ),
        Op {
            outcome_steps: &["resume-replication"],
            ..op(
                "reprotect",
                &["reprotect", "web"],
                ops::reprotect::FROM_HOME,
                back_fenced,
                home_fenced,
            )
        },
        Op {
            outcome_steps: &["remove-copy"],
            ..op(
                "failover-cleanup",
                &["failover", "cleanup", "web", "--fenced"],
                ops::cleanup::STEPS,
                home_fenced,
                HOME,
            )
        },
        op(
            "disable",
            &["unprotect", "web"],
            ops::unprotect::STEPS,
            HOME,
            unprotected,
        ),
        Op {
            ended_elsewhere: &["initial-sync"],
            ..op("enable", &[], ops::enable::STEPS, unprotected, HOME)
        },
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// A failure injected after the step ran.
    FailAfter(&'static str),
    /// The server killed (-9) at the step, and started again.
    KillAt(&'static str),
    /// Every step run twice.
    Twice,
}

/// How a case ends, as the engine declares it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// `failed`, what it did undone: the VM as before.
    Undone,
    /// `failed`, but the step that failed had done the operation's work: the VM as after.
    FailedWithOutcome,
    /// `succeeded`: the VM as after.
    Done,
}

impl Op {
    fn no_return(&self) -> usize {
        self.steps
            .iter()
            .position(|s| s.no_return)
            .unwrap_or(self.steps.len())
    }

    /// The declared end of `fault` in this operation.
    fn end(&self, fault: Fault) -> End {
        let index = |name| self.steps.iter().position(|s| s.name == name).unwrap();
        match fault {
            Fault::Twice => End::Done,
            Fault::FailAfter(step) if self.ended_elsewhere.contains(&step) => End::Done,
            Fault::FailAfter(step) if ops::undone_if_failed_after(self.steps).contains(&step) => {
                if self.steps[..=index(step)]
                    .iter()
                    .any(|s| self.outcome_steps.contains(&s.name))
                {
                    End::FailedWithOutcome
                } else {
                    End::Undone
                }
            }
            Fault::FailAfter(_) => End::Done,
            // The failpoint is reached after the engine claims the point of no return.
            Fault::KillAt(step) if index(step) < self.no_return() => End::Undone,
            Fault::KillAt(_) => End::Done,
        }
    }

    /// Every case of the full campaign, those that leave the VM as it was first.
    fn all_cases(&self) -> (Vec<Fault>, Vec<Fault>) {
        let faults = self
            .steps
            .iter()
            .map(|s| Fault::FailAfter(s.name))
            .chain(self.steps.iter().map(|s| Fault::KillAt(s.name)))
            .chain([Fault::Twice]);
        faults.partition(|f| self.end(*f) == End::Undone)
    }
}

struct Campaign {
    cl: Cluster,
    http: u16,
    cases: usize,
}

impl Campaign {
    fn restart_server_with(&mut self, env: &[(&str, &str)]) {
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        self.cl.restart_server(None);
        for (k, _) in env {
            std::env::remove_var(k);
        }
    }

    /// Runs `op`'s client command; `wait` follows it to its end. (success, stderr)
    fn start(&self, op: &Op, wait: bool) -> (bool, String) {
        let (ok, out, err) = if op.kind == "enable" {
            let extra: &[&str] = if wait {
                &["--wait", "--timeout", "10m"]
            } else {
                &["--no-wait"]
            };
            self.cl.protect("web", extra)
        } else if wait {
            self.cl.cli(op.args)
        } else {
            let mut args = op.args.to_vec();
            args.push("--no-wait");
            self.cl.cli(&args)
        };
        (ok, format!("{out}\n{err}"))
    }

    /// The running operation of `kind` (one at most runs per VM).
    fn running(&self, kind: &str) -> Value {
        self.cl
            .json(&["operations", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == kind && o["status"] == "running")
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn run(&mut self, op: &Op, fault: Fault) {
        let what = format!("{} {fault:?}", op.kind);
        let expected = op.end(fault);
        let started = Instant::now();
        match fault {
            Fault::FailAfter(step) => {
                self.restart_server_with(&[("LIFEBOAT_SAGA_FAIL", &format!("{}:{step}", op.kind))]);
                let (ok, out) = self.start(op, true);
                if expected == End::Done {
                    assert!(ok, "{what}: {out}");
                } else {
                    assert!(!ok, "{what}: the operation succeeded: {out}");
                    assert!(
                        out.contains(&format!("step {step} failed")) && out.contains("undone"),
                        "{what}: {out}"
                    );
                }
            }
            Fault::KillAt(step) => {
                let marker = self.cl.tmp.path().join("failpoint-reached");
                let _ = std::fs::remove_file(&marker);
                self.restart_server_with(&[
                    ("LIFEBOAT_FAILPOINT", &format!("{}:{step}", op.kind)),
                    ("LIFEBOAT_FAILPOINT_FILE", marker.to_str().unwrap()),
                ]);
                let (ok, out) = self.start(op, false);
                assert!(ok, "{what}: {out}");
                let deadline = Instant::now() + Duration::from_secs(300);
                while !marker.exists() {
                    assert!(
                        Instant::now() < deadline,
                        "{what}: the step was not reached: {:#}",
                        self.running(op.kind)
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                let id = self.running(op.kind)["id"].as_str().unwrap().to_string();
                // `restart_server` kills with SIGKILL.
                self.restart_server_with(&[]);
                let deadline = Instant::now() + Duration::from_secs(600);
                let op_now = loop {
                    let o = self.cl.json(&["operations", "show", &id]);
                    if o["status"] != "running" {
                        break o;
                    }
                    assert!(Instant::now() < deadline, "{what}: did not end: {o:#}");
                    std::thread::sleep(Duration::from_millis(250));
                };
                if expected == End::Done {
                    assert_eq!(op_now["status"], "succeeded", "{what}: {op_now:#}");
                } else {
                    assert_eq!(op_now["status"], "failed", "{what}: {op_now:#}");
                    assert!(
                        op_now["error"].as_str().unwrap().contains("server restart"),
                        "{what}: {op_now:#}"
                    );
                }
            }
            Fault::Twice => {
                self.restart_server_with(&[("LIFEBOAT_SAGA_REPEAT", "1")]);
                let (ok, out) = self.start(op, true);
                assert!(ok, "{what}: {out}");
            }
        }
        let world = if expected == End::Undone {
            op.before
        } else {
            op.after
        };
        self.assert_world(&what, world).await;
        self.cases += 1;
        eprintln!(
            "case {}: {what}: {expected:?} as declared, in {:.1} s",
            self.cases,
            started.elapsed().as_secs_f64()
        );
    }

    /// The VM stands as `w` says, no operation runs, and its running copy holds every
    /// write the guest acknowledged.
    async fn assert_world(&self, what: &str, w: World) {
        let status = self.cl.json(&["status"]);
        assert_eq!(
            status["running_operations"].as_array().unwrap().len(),
            0,
            "{what}: {status:#}"
        );
        let state = status["protections"][0]["state"].as_str().unwrap_or("none");
        assert_eq!(state, w.state, "{what}: {status:#}");
        assert_eq!(where_it_runs(&self.cl), w.runs_on, "{what}");
        let mut recoveries: Vec<(String, String)> = self
            .cl
            .json(&["failover", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        recoveries.sort();
        let expected: Vec<(String, String)> = w
            .recoveries
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_string()))
            .collect();
        assert_eq!(recoveries, expected, "{what}");
        all_acked_present(&self.cl, self.http).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_ends_as_its_step_list_declares_under_failures_kills_and_repeats() {
    let cl = cluster(None);
    let http = free_tcp_port();
    let _vm = writing_guest(&cl, http).await;
    let one_copy = OneCopy::watch([cl.home("alpha"), cl.home("beta")], "web");
    let mut c = Campaign { cl, http, cases: 0 };
    let life = life();
    let full = std::env::var("LIFEBOAT_SAGA_CAMPAIGN").is_ok_and(|v| v == "full");
    // The cases that complete each operation, run one per lap.
    let mut completing: Vec<Vec<Fault>> = Vec::new();
    for (k, op) in life.iter().enumerate() {
        let (undone, mut done) = op.all_cases();
        let undone: Vec<Fault> = if full {
            undone
        } else {
            // One: a failure or a kill in turn, at a step that turns with the operation.
            let fail = k % 2 == 0;
            let of_kind: Vec<Fault> = undone
                .iter()
                .copied()
                .filter(|f| matches!(f, Fault::FailAfter(_)) == fail)
                .collect();
            let pick = if of_kind.is_empty() {
                undone.clone()
            } else {
                of_kind
            };
            let mut chosen: Vec<Fault> = pick
                .get(k % pick.len().max(1))
                .into_iter()
                .copied()
                .collect();
            // And a failure after the last step, when the engine declares it undone: a
            // last step that records the outcome with no undo would leave it in place
            // under an operation "undone" (the reversed reprotect's `record` did).
            let last = Fault::FailAfter(op.steps[op.steps.len() - 1].name);
            if undone.contains(&last) && !chosen.contains(&last) {
                chosen.push(last);
            }
            chosen
        };
        for fault in undone {
            c.run(op, fault).await;
        }
        // Twice first: the lap the suite runs.
        done.sort_by_key(|f| *f != Fault::Twice);
        let first = done.remove(0);
        c.run(op, first).await;
        completing.push(if full { done } else { Vec::new() });
    }
    let mut lap = 1;
    while completing.iter().any(|d| !d.is_empty()) {
        lap += 1;
        eprintln!("lap {lap}");
        for (op, left) in life.iter().zip(completing.iter_mut()) {
            let fault = if left.is_empty() {
                Fault::Twice
            } else {
                left.remove(0)
            };
            c.run(op, fault).await;
        }
    }
    assert!(one_copy.stop() > 10);
    eprintln!(
        "{} cases ran over {} operations in {lap} lap(s), on real agents",
        c.cases,
        life.len()
    );
}
