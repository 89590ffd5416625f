//! The operation engine (DESIGN.md, "Operations"; omicron's sagas are the model).
//!
//! An operation is a list of steps ([`Saga::steps`]). Each step is idempotent (it may run
//! twice: once before a crash that lost its record, once after), may have an undo, and
//! one may be marked the point of no return. The engine runs the steps in a task of the
//! server, never inside an HTTP request, and stores after every step what the steps
//! produced (the saga's `Memory`) and where it is. So:
//! - a client that goes away cancels nothing;
//! - after a crash of the server, [`resume_all`] takes every running operation up at its
//!   saved step: one not yet past its point of no return is undone (the step it was in
//!   included, since it may have acted), one past it goes on forward, one that was
//!   undoing goes on undoing;
//! - a step that fails with [`StepError::Transient`] is retried with backoff; after
//!   [`MAX_TRIES`] tries, or at once for [`StepError::Permanent`], the operation undoes the
//!   steps done, newest first, and ends `failed` — unless it passed its point of no
//!   return: then it retries forward until it succeeds;
//! - a cancel ([`crate::db::Database::request_cancel`]) is taken before the next step and
//!   undoes like a failure, ending `cancelled`; once the engine entered the step marked as
//!   the point of no return, cancel is refused (the same row decides both).
//!
//! Each operation kind is one module here, with its step list. Tests drive every step of
//! every list: each run twice (`LIFEBOAT_SAGA_REPEAT=1`), and a failure injected after
//! any one (`LIFEBOAT_SAGA_FAIL=KIND:STEP`), or the server killed at it
//! (`LIFEBOAT_FAILPOINT=KIND:STEP`).

use std::future::Future;
use std::time::Duration;

use lifeboat_types::{OperationId, OperationKind, OperationStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{Database, DbError, NewOperation, Operation, Progress};

pub mod cleanup;
pub mod commit;
mod common;
pub mod enable;
pub mod failback;
pub mod failover;
pub mod reprotect;
pub mod unprotect;

/// One step of an operation.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Its name in logs, failpoints and tests (`shutdown-source`).
    pub name: &'static str,
    /// It has an undo ([`Saga::undo`] does something for it).
    pub undo: bool,
    /// Entering it is the point of no return: from then on no cancel, and failures of
    /// the steps after it retry forward.
    pub no_return: bool,
}

impl StepInfo {
    pub const fn step(name: &'static str) -> StepInfo {
        StepInfo {
            name,
            undo: false,
            no_return: false,
        }
    }
    pub const fn with_undo(name: &'static str) -> StepInfo {
        StepInfo {
            name,
            undo: true,
            no_return: false,
        }
    }
    pub const fn no_return(mut self) -> StepInfo {
        self.no_return = true;
        self
    }
}

/// The steps after which an injected failure ends the operation undone: every step up
/// to its point of no return, that one included (its own undo runs; the steps after it
/// retry forward). What the failure campaigns on real agents are generated from.
pub fn undone_if_failed_after(steps: &[StepInfo]) -> Vec<&'static str> {
    let end = steps
        .iter()
        .position(|s| s.no_return)
        .map_or(steps.len(), |i| i + 1);
    steps[..end].iter().map(|s| s.name).collect()
}

/// How a step failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    /// It may work if tried again (a host did not answer).
    #[error("{0}")]
    Transient(String),
    /// Trying again will not help (the final point differs from the disks).
    #[error("{0}")]
    Permanent(String),
}

impl From<DbError> for StepError {
    fn from(e: DbError) -> Self {
        StepError::Transient(e.to_string())
    }
}

/// What a step sees: the database, and its operation to log to.
pub struct Ctx {
    pub db: Database,
    pub op: OperationId,
}

impl Ctx {
    /// A line in the operation's log (and its current step, in words).
    pub async fn log(&self, line: impl AsRef<str>) {
        if let Err(e) = self.db.log_operation(&self.op, line.as_ref()).await {
            tracing::warn!(operation = %self.op, error = %e, "logging an operation step");
        }
    }
}

/// An operation kind: its steps, what each does and undoes, and its answer.
pub trait Saga: Send + Sync + 'static {
    /// What was asked; stored with the operation.
    type Params: Serialize + DeserializeOwned + Send + Sync;
    /// What the steps produced so far; stored after every step.
    type Memory: Serialize + DeserializeOwned + Default + Send + Sync;

    fn steps(params: &Self::Params) -> &'static [StepInfo];

    /// Runs step `step` (an index into [`Saga::steps`]).
    fn run(
        ctx: &Ctx,
        params: &Self::Params,
        step: &'static str,
        mem: &mut Self::Memory,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Undoes step `step`, which ran (or may have run: it was the one that failed, or
    /// the server stopped in it). Only steps marked [`StepInfo::with_undo`] are asked;
    /// an operation without any keeps this default.
    fn undo(
        _ctx: &Ctx,
        _params: &Self::Params,
        _step: &'static str,
        _mem: &mut Self::Memory,
    ) -> impl Future<Output = Result<(), StepError>> + Send {
        async { Ok(()) }
    }

    /// The operation's answer once every step succeeded.
    fn answer(
        ctx: &Ctx,
        params: &Self::Params,
        mem: &Self::Memory,
    ) -> impl Future<Output = Result<serde_json::Value, StepError>> + Send;

    /// The last line of the log when it succeeded.
    fn done_line(params: &Self::Params, mem: &Self::Memory) -> String;
}

/// Tries of a failing step before an operation not yet past its point of no return
/// gives up and undoes.
pub const MAX_TRIES: i64 = 5;

/// Tries of an undo refused for good (not a host that does not answer, which is waited
/// for) before the engine leaves it, saying so, and undoes the rest.
const MAX_UNDO_TRIES: i64 = 5;

fn backoff(tries: i64) -> Duration {
    // Unit tests retry at once; the real engine waits as long as a host needs.
    let base = if cfg!(test) {
        Duration::from_millis(20)
    } else {
        Duration::from_secs(1)
    };
    (base * (1u32 << tries.clamp(0, 6) as u32)).min(Duration::from_secs(60))
}

/// Records a new operation of saga `S` and starts it in a task of the server.
pub async fn start<S: Saga>(
    db: &Database,
    kind: OperationKind,
    host_id: &str,
    vm: &str,
    protection_id: Option<&str>,
    params: &S::Params,
    first_line: String,
) -> Result<Operation, DbError> {
    let json = serde_json::to_string(params).map_err(|e| DbError::Refused(e.to_string()))?;
    let id = db
        .create_operation(&NewOperation {
            host_id,
            vm,
            protection_id,
            kind,
            params: json,
            steps_total: S::steps(params).len() as i64,
            step: first_line,
        })
        .await?;
    let op = db
        .operation(&id)
        .await?
        .ok_or_else(|| DbError::Conflict(format!("operation {id} vanished")))?;
    spawn(db.clone(), op.clone(), false);
    Ok(op)
}

fn spawn(db: Database, op: Operation, restarted: bool) {
    tokio::spawn(async move {
        let id = op.id.clone();
        let mut op = op;
        loop {
            let faults = Faults {
                restarted,
                ..Faults::from_env()
            };
            match drive(db.clone(), op, &faults).await {
                Ok(()) => return,
                // Its stored record does not read (written by another version?): it
                // cannot go on, and says so.
                Err(DbError::Refused(why)) => {
                    tracing::error!(operation = %id, %why, "operation cannot go on");
                    let _ = db
                        .finish_operation(&id, OperationStatus::Failed, None, &why, &why)
                        .await;
                    return;
                }
                // The database failed under it: it goes on from its stored record.
                Err(e) => {
                    tracing::error!(operation = %id, error = %e, "operation interrupted by a database error; resuming in 5 s");
                    op = loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        match db.operation(&id).await {
                            Ok(Some(now)) if !now.status.is_done() => break now,
                            Ok(_) => return,
                            Err(_) => continue,
                        }
                    };
                }
            }
        }
    });
}

/// At server start: every engine operation a previous process left running goes on
/// where it was. Returns how many.
pub async fn resume_all(db: &Database) -> Result<usize, DbError> {
    let mut n = 0;
    for op in db.running_operations().await? {
        if op.steps_total > 0 {
            tracing::warn!(operation = %op.id, kind = %op.kind, vm = %op.vm, step = op.steps_done, "resuming an operation after a restart");
            spawn(db.clone(), op, true);
            n += 1;
        }
    }
    Ok(n)
}

async fn drive(db: Database, op: Operation, faults: &Faults) -> Result<(), DbError> {
    match op.kind {
        OperationKind::FailoverTest
        | OperationKind::FailoverPlanned
        | OperationKind::FailoverUnplanned => run::<failover::Failover>(db, op, faults).await,
        OperationKind::Failback => run::<failback::Failback>(db, op, faults).await,
        OperationKind::FailoverCleanup => run::<cleanup::Cleanup>(db, op, faults).await,
        OperationKind::FailoverCommit => run::<commit::Commit>(db, op, faults).await,
        OperationKind::Reprotect => run::<reprotect::Reprotect>(db, op, faults).await,
        OperationKind::Enable => run::<enable::Enable>(db, op, faults).await,
        OperationKind::Disable => run::<unprotect::Unprotect>(db, op, faults).await,
    }
}

/// Faults a test asks for, to drive every step of every operation: a failure after a
/// step ran (`LIFEBOAT_SAGA_FAIL=KIND:STEP`, on its first try), every action run twice
/// (`LIFEBOAT_SAGA_REPEAT=1`: the second run must change nothing). A kill of the server
/// at a step is `LIFEBOAT_FAILPOINT=KIND:STEP` (`lifeboat_agent::failpoint`).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub fail_after: Option<String>,
    pub repeat: bool,
    /// Unit tests: stop (as a crash would) before this step, leaving the operation running.
    pub crash_before: Option<&'static str>,
    /// The operation was left running by a server that stopped: not yet past its point
    /// of no return, it is undone (the step it was in included); past it, it goes on.
    pub restarted: bool,
}

impl Faults {
    pub fn from_env() -> Faults {
        Faults {
            fail_after: std::env::var("LIFEBOAT_SAGA_FAIL").ok(),
            repeat: std::env::var("LIFEBOAT_SAGA_REPEAT").is_ok_and(|v| v == "1"),
            crash_before: None,
            restarted: false,
        }
    }
}

/// Runs operation `op` of saga `S` from where its record says, to its end.
async fn run<S: Saga>(db: Database, op: Operation, faults: &Faults) -> Result<(), DbError> {
    let bad = |what: &str, e: serde_json::Error| {
        DbError::Refused(format!(
            "operation {}: its stored {what} do not read: {e}",
            op.id
        ))
    };
    let params: S::Params = serde_json::from_str(&op.params).map_err(|e| bad("params", e))?;
    // A new operation's memory is `{}`: nothing done yet.
    let mut mem: S::Memory = match op.memory.trim() {
        "" | "{}" => S::Memory::default(),
        m => serde_json::from_str(m).map_err(|e| bad("memory", e))?,
    };
    let steps = S::steps(&params);
    let ctx = Ctx {
        db: db.clone(),
        op: op.id.clone(),
    };
    let mut next = op.steps_done.clamp(0, steps.len() as i64) as usize;
    let mut undoing = op.undoing;
    let mut tries = op.attempts;
    let mut error = op.error.clone();
    let save =
        |mem: &S::Memory, next: usize, undoing: bool, tries: i64, error: &str, line: String| {
            let db = db.clone();
            let id = op.id.clone();
            let memory = serde_json::to_string(mem).unwrap_or_else(|_| "{}".into());
            let error = error.to_string();
            async move {
                db.save_progress(
                    &id,
                    &Progress {
                        memory: &memory,
                        next_step: next as i64,
                        undoing,
                        attempts: tries,
                        error: &error,
                    },
                    &line,
                )
                .await
            }
        };
    if faults.restarted && !undoing && !op.past_no_return {
        // Interrupted before its point of no return: what it did is undone, the step it
        // was in included (it may have acted before the server stopped), and the
        // operator decides whether to run it again.
        undoing = true;
        error = if op.cancel_requested {
            "cancelled".into()
        } else {
            "interrupted by a server restart before its point of no return; run it again".into()
        };
        next = (next + 1).min(steps.len());
        save(
            &mem,
            next,
            true,
            0,
            &error,
            format!("{error}: undoing what it did"),
        )
        .await?;
    } else if faults.restarted {
        ctx.log(if undoing {
            "the server restarted: undoing goes on"
        } else {
            "the server restarted: the operation is past its point of no return and goes on"
        })
        .await;
    }
    // Forward.
    while !undoing && next < steps.len() {
        let step = steps[next];
        let now = db.operation(&op.id).await?;
        let Some(now) = now else { return Ok(()) };
        if now.status.is_done() {
            return Ok(());
        }
        if now.cancel_requested && !now.past_no_return {
            undoing = true;
            error = "cancelled".into();
            save(&mem, next, true, 0, &error, "cancelled: undoing".into()).await?;
            break;
        }
        if step.no_return && !now.past_no_return && !db.claim_no_return(&op.id).await? {
            // A cancel came first.
            undoing = true;
            error = "cancelled".into();
            save(&mem, next, true, 0, &error, "cancelled: undoing".into()).await?;
            break;
        }
        if faults.crash_before == Some(step.name) {
            return Ok(());
        }
        lifeboat_agent::failpoint::reached(&format!("{}:{}", op.kind, step.name)).await;
        let mut outcome = S::run(&ctx, &params, step.name, &mut mem).await;
        if outcome.is_ok() && faults.repeat {
            outcome = S::run(&ctx, &params, step.name, &mut mem).await;
        }
        let here = format!("{}:{}", op.kind, step.name);
        if outcome.is_ok() && tries == 0 && faults.fail_after.as_deref() == Some(here.as_str()) {
            outcome = Err(StepError::Permanent(format!(
                "failure injected after step {} (LIFEBOAT_SAGA_FAIL)",
                step.name
            )));
        }
        // Another actor may have ended the operation while its step ran (the scheduler
        // ends an enable at the first point): that end stands, and nothing is undone
        // or retried under it. Without this a failure after `initial-sync` removed the
        // protection of an enable already "succeeded" (qemu_saga_campaign, full).
        if outcome.is_err()
            && db
                .operation(&op.id)
                .await?
                .is_none_or(|o| o.status.is_done())
        {
            tracing::warn!(operation = %op.id, step = step.name, "a step failed after its operation was ended elsewhere; its end stands");
            return Ok(());
        }
        let past = now.past_no_return || step.no_return;
        match outcome {
            Ok(()) => {
                next += 1;
                tries = 0;
                save(&mem, next, false, 0, "", format!("step {} done", step.name)).await?;
            }
            // Past the point of no return (the step that is the point included: the VM
            // may run already), what remains must happen: retry, forever, with backoff.
            Err(e) if past && !step.no_return => {
                tries += 1;
                save(&mem, next, false, tries, "", format!("step {} failed (try {tries}): {e}; retrying — the operation is past its point of no return", step.name)).await?;
                tokio::time::sleep(backoff(tries)).await;
            }
            Err(StepError::Transient(e)) if tries + 1 < MAX_TRIES => {
                tries += 1;
                save(
                    &mem,
                    next,
                    false,
                    tries,
                    "",
                    format!(
                        "step {} failed (try {tries} of {MAX_TRIES}): {e}; retrying",
                        step.name
                    ),
                )
                .await?;
                tokio::time::sleep(backoff(tries)).await;
            }
            Err(e) => {
                // The failed step may have done part of its work: it is undone too.
                error = format!("step {} failed: {e}", step.name);
                undoing = true;
                next += 1;
                save(&mem, next, true, 0, &error, format!("{error}; undoing")).await?;
            }
        }
    }
    if !undoing {
        let answer = match S::answer(&ctx, &params, &mem).await {
            Ok(a) => a,
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let line = S::done_line(&params, &mem);
        db.finish_operation(&op.id, OperationStatus::Succeeded, Some(&answer), "", &line)
            .await?;
        tracing::info!(operation = %op.id, kind = %op.kind, vm = %op.vm, "operation succeeded");
        return Ok(());
    }
    // Undo, newest step first.
    let mut left_undone = Vec::new();
    while next > 0 {
        let step = steps[next - 1];
        if step.undo {
            lifeboat_agent::failpoint::reached(&format!("{}:undo-{}", op.kind, step.name)).await;
            let mut tries = 0;
            loop {
                match S::undo(&ctx, &params, step.name, &mut mem).await {
                    Ok(()) => break,
                    // A host that does not answer may hold the VM's only copy: the undo
                    // waits for it, however long (the log says so).
                    Err(StepError::Transient(e)) => {
                        tries += 1;
                        ctx.log(format!(
                            "undoing {} failed (try {tries}): {e}; retrying until it answers",
                            step.name
                        ))
                        .await;
                        tokio::time::sleep(backoff(tries).min(Duration::from_secs(30))).await;
                    }
                    Err(e) if tries + 1 < MAX_UNDO_TRIES => {
                        tries += 1;
                        ctx.log(format!(
                            "undoing {} failed (try {tries}): {e}; retrying",
                            step.name
                        ))
                        .await;
                        tokio::time::sleep(backoff(tries)).await;
                    }
                    Err(e) => {
                        left_undone.push(format!("{}: {e}", step.name));
                        break;
                    }
                }
            }
        }
        next -= 1;
        save(
            &mem,
            next,
            true,
            0,
            &error,
            format!("step {} undone", step.name),
        )
        .await?;
    }
    let cancelled = error == "cancelled";
    let error = error.as_str();
    let mut why = if cancelled {
        "cancelled; everything it did was undone".to_string()
    } else {
        format!("{error}; everything it did was undone")
    };
    if !left_undone.is_empty() {
        why = format!(
            "{}; these could not be undone and need a hand: {}",
            if cancelled { "cancelled" } else { &error },
            left_undone.join("; ")
        );
    }
    let status = if cancelled && left_undone.is_empty() {
        OperationStatus::Cancelled
    } else {
        OperationStatus::Failed
    };
    db.finish_operation(&op.id, status, None, &why, &why)
        .await?;
    tracing::warn!(operation = %op.id, kind = %op.kind, vm = %op.vm, %why, "operation ended");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The engine's rules, driven over every step of a step list with the real database
    //! (SQLite in a temporary folder): the step actions are a toy that records what ran
    //! and what was undone. The real operations' steps are driven the same way against
    //! real agents and guests in `crates/lifeboat/tests/qemu_operations.rs`.
    use super::*;
    use crate::db::CancelAsked;

    #[test]
    fn failures_are_undone_up_to_the_point_of_no_return_included() {
        let steps = [
            StepInfo::step("a"),
            StepInfo::with_undo("b"),
            StepInfo::step("c").no_return(),
            StepInfo::step("d"),
        ];
        assert_eq!(super::undone_if_failed_after(&steps), ["a", "b", "c"]);
        assert_eq!(super::undone_if_failed_after(&steps[..2]), ["a", "b"]);
    }

    /// a, b (undo), c, d (undo, the point of no return), e.
    const STEPS: &[StepInfo] = &[
        StepInfo::with_undo("a"),
        StepInfo::with_undo("b"),
        StepInfo::step("c"),
        StepInfo::with_undo("d").no_return(),
        StepInfo::step("e"),
    ];
    const NO_RETURN: usize = 3;

    #[derive(Serialize, serde::Deserialize)]
    struct ToyParams {
        /// Ask for a cancel from inside this step (an operator acting meanwhile).
        cancel_during: Option<String>,
        /// End the operation (succeeded) from inside this step, as the scheduler ends an
        /// enable at its first point.
        #[serde(default)]
        finish_during: Option<String>,
    }

    /// What ran: `a` for a step's effect (once, however often it ran: the steps are
    /// idempotent), `~a` for its undo; `runs` counts calls.
    #[derive(Default, Serialize, serde::Deserialize)]
    struct Toy {
        effects: Vec<String>,
        runs: usize,
    }

    struct ToySaga;

    impl Saga for ToySaga {
        type Params = ToyParams;
        type Memory = Toy;

        fn steps(_: &ToyParams) -> &'static [StepInfo] {
            STEPS
        }

        async fn run(
            ctx: &Ctx,
            params: &ToyParams,
            step: &'static str,
            mem: &mut Toy,
        ) -> Result<(), StepError> {
            mem.runs += 1;
            if params.cancel_during.as_deref() == Some(step) {
                ctx.db.request_cancel(&ctx.op).await?;
            }
            if params.finish_during.as_deref() == Some(step) {
                ctx.db
                    .finish_operation(
                        &ctx.op,
                        OperationStatus::Succeeded,
                        None,
                        "",
                        "ended elsewhere",
                    )
                    .await?;
            }
            if !mem.effects.iter().any(|e| e == step) {
                mem.effects.push(step.to_string());
            }
            Ok(())
        }

        async fn undo(
            _: &Ctx,
            _: &ToyParams,
            step: &'static str,
            mem: &mut Toy,
        ) -> Result<(), StepError> {
            // Idempotent, and a no-op for a step whose effect is not there.
            if mem.effects.iter().any(|e| e == step) && !mem.effects.contains(&format!("~{step}")) {
                mem.effects.push(format!("~{step}"));
            }
            Ok(())
        }

        async fn answer(_: &Ctx, _: &ToyParams, mem: &Toy) -> Result<serde_json::Value, StepError> {
            Ok(serde_json::json!({ "effects": mem.effects }))
        }

        fn done_line(_: &ToyParams, _: &Toy) -> String {
            "toy done".into()
        }
    }

    async fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        (dir, db)
    }

    async fn new_op(db: &Database, vm: &str, params: &ToyParams) -> Operation {
        let id = db
            .create_operation(&NewOperation {
                host_id: "h1",
                vm,
                protection_id: None,
                kind: OperationKind::Reprotect,
                params: serde_json::to_string(params).unwrap(),
                steps_total: STEPS.len() as i64,
                step: "toy".into(),
            })
            .await
            .unwrap();
        db.operation(&id).await.unwrap().unwrap()
    }

    async fn reread(db: &Database, op: &Operation) -> (Operation, Toy) {
        let op = db.operation(&op.id).await.unwrap().unwrap();
        let toy = match op.memory.as_str() {
            "{}" => Toy::default(),
            m => serde_json::from_str(m).unwrap(),
        };
        (op, toy)
    }

    /// What the declared end of a failure after step `i` is: before the point of no
    /// return (and at it), every effect undone newest first; after it, done.
    fn expected_after_failure(i: usize) -> (OperationStatus, Vec<String>) {
        let done: Vec<String> = STEPS.iter().map(|s| s.name.to_string()).collect();
        if i > NO_RETURN {
            return (OperationStatus::Succeeded, done);
        }
        let mut effects: Vec<String> = done[..=i].to_vec();
        for s in STEPS[..=i].iter().rev().filter(|s| s.undo) {
            effects.push(format!("~{}", s.name));
        }
        (OperationStatus::Failed, effects)
    }

    #[tokio::test]
    async fn every_step_list_case_ends_in_its_declared_state() {
        let (_dir, db) = db().await;
        let mut cases = 0;
        let plain = ToyParams {
            cancel_during: None,
            finish_during: None,
        };
        // Every step run twice gives the same result as once.
        let op = new_op(&db, "twice", &plain).await;
        let faults = Faults {
            repeat: true,
            ..Faults::default()
        };
        run::<ToySaga>(db.clone(), op.clone(), &faults)
            .await
            .unwrap();
        let (op, toy) = reread(&db, &op).await;
        assert_eq!(op.status, OperationStatus::Succeeded);
        assert_eq!(toy.effects, ["a", "b", "c", "d", "e"]);
        assert_eq!(toy.runs, 2 * STEPS.len());
        assert_eq!(op.result.unwrap()["effects"].as_array().unwrap().len(), 5);
        cases += 1;
        for (i, step) in STEPS.iter().enumerate() {
            // A failure after the step ran.
            let op = new_op(&db, &format!("fail-{i}"), &plain).await;
            let faults = Faults {
                fail_after: Some(format!("{}:{}", OperationKind::Reprotect, step.name)),
                ..Faults::default()
            };
            run::<ToySaga>(db.clone(), op.clone(), &faults)
                .await
                .unwrap();
            let (op, toy) = reread(&db, &op).await;
            let (status, effects) = expected_after_failure(i);
            assert_eq!(
                (op.status, &toy.effects),
                (status, &effects),
                "failure after {}",
                step.name
            );
            if status == OperationStatus::Failed {
                assert!(op.error.contains(step.name), "{}", op.error);
                assert!(op.log.contains("undone"), "{}", op.log);
            }
            cases += 1;
            // A crash before the step (after the claim of the point of no return, when
            // the step is that point): the restarted engine undoes what was done before
            // the point of no return, and goes on to the end after it, every effect once.
            let op = new_op(&db, &format!("crash-{i}"), &plain).await;
            let crash = Faults {
                crash_before: Some(step.name),
                ..Faults::default()
            };
            run::<ToySaga>(db.clone(), op.clone(), &crash)
                .await
                .unwrap();
            let (stopped, toy) = reread(&db, &op).await;
            assert_eq!(stopped.status, OperationStatus::Running);
            assert_eq!(stopped.steps_done, i as i64);
            assert_eq!(toy.effects.len(), i);
            let restarted = Faults {
                restarted: true,
                ..Faults::default()
            };
            run::<ToySaga>(db.clone(), stopped, &restarted)
                .await
                .unwrap();
            let (op, toy) = reread(&db, &op).await;
            if i < NO_RETURN {
                assert_eq!(
                    op.status,
                    OperationStatus::Failed,
                    "restarted at {}",
                    step.name
                );
                assert!(op.error.contains("server restart"), "{}", op.error);
                let mut expected: Vec<String> =
                    STEPS[..i].iter().map(|s| s.name.to_string()).collect();
                expected.extend(
                    STEPS[..i]
                        .iter()
                        .rev()
                        .filter(|s| s.undo)
                        .map(|s| format!("~{}", s.name)),
                );
                assert_eq!(toy.effects, expected, "restarted at {}", step.name);
            } else {
                assert_eq!(
                    op.status,
                    OperationStatus::Succeeded,
                    "restarted at {}",
                    step.name
                );
                assert_eq!(toy.effects, ["a", "b", "c", "d", "e"]);
            }
            cases += 1;
            // A cancel while the step runs: undone before the point of no return,
            // refused from it on (and then it finishes).
            let op = new_op(
                &db,
                &format!("cancel-{i}"),
                &ToyParams {
                    finish_during: None,
                    cancel_during: Some(step.name.into()),
                },
            )
            .await;
            run::<ToySaga>(db.clone(), op.clone(), &Faults::default())
                .await
                .unwrap();
            let (op, toy) = reread(&db, &op).await;
            if i < NO_RETURN {
                assert_eq!(
                    op.status,
                    OperationStatus::Cancelled,
                    "cancel during {}",
                    step.name
                );
                let undone: Vec<String> = STEPS[..=i]
                    .iter()
                    .rev()
                    .filter(|s| s.undo)
                    .map(|s| format!("~{}", s.name))
                    .collect();
                assert_eq!(
                    toy.effects[i + 1..],
                    undone[..],
                    "cancel during {}",
                    step.name
                );
            } else {
                assert_eq!(
                    op.status,
                    OperationStatus::Succeeded,
                    "cancel during {}",
                    step.name
                );
                assert!(!op.cancel_requested);
            }
            cases += 1;
        }
        println!("{cases} saga cases ran over {} steps", STEPS.len());
        assert_eq!(cases, 1 + 3 * STEPS.len());
    }

    /// An operation another actor ended while a step ran keeps that end: a failure of
    /// the step undoes nothing under it.
    #[tokio::test]
    async fn a_step_failing_after_its_operation_ended_elsewhere_undoes_nothing() {
        let (_dir, db) = db().await;
        let params = ToyParams {
            cancel_during: None,
            finish_during: Some("c".into()),
        };
        let op = new_op(&db, "ended", &params).await;
        let faults = Faults {
            fail_after: Some(format!("{}:c", OperationKind::Reprotect)),
            ..Faults::default()
        };
        run::<ToySaga>(db.clone(), op.clone(), &faults)
            .await
            .unwrap();
        let (op, toy) = reread(&db, &op).await;
        assert_eq!(op.status, OperationStatus::Succeeded);
        assert!(
            !toy.effects.iter().any(|e| e.starts_with('~')),
            "nothing undone: {:?}",
            toy.effects
        );
    }

    #[tokio::test]
    async fn cancel_is_refused_past_the_point_of_no_return_and_after_the_end() {
        let (_dir, db) = db().await;
        let op = new_op(
            &db,
            "web",
            &ToyParams {
                finish_during: None,
                cancel_during: None,
            },
        )
        .await;
        assert!(db.claim_no_return(&op.id).await.unwrap());
        assert!(matches!(
            db.request_cancel(&op.id).await.unwrap(),
            CancelAsked::PastNoReturn { .. }
        ));
        run::<ToySaga>(db.clone(), op.clone(), &Faults::default())
            .await
            .unwrap();
        assert_eq!(
            db.request_cancel(&op.id).await.unwrap(),
            CancelAsked::Ended(OperationStatus::Succeeded)
        );
        assert_eq!(
            db.request_cancel("nope").await.unwrap(),
            CancelAsked::NotFound
        );
        // A cancel asked first wins over the claim: the engine undoes instead.
        let op = new_op(
            &db,
            "db",
            &ToyParams {
                finish_during: None,
                cancel_during: None,
            },
        )
        .await;
        assert_eq!(db.request_cancel(&op.id).await.unwrap(), CancelAsked::Asked);
        assert!(!db.claim_no_return(&op.id).await.unwrap());
        run::<ToySaga>(db.clone(), op.clone(), &Faults::default())
            .await
            .unwrap();
        let (op, toy) = reread(&db, &op).await;
        assert_eq!(op.status, OperationStatus::Cancelled);
        assert!(toy.effects.is_empty());
    }
}
