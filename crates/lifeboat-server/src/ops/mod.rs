//! The operation engine (DESIGN.md, "Operations"; omicron's sagas are the model).
//!
//! An operation is a list of steps ([`Saga::steps`]). Each step is idempotent (it may run
//! twice: once before a crash that lost its record, once after), may have an undo, and
//! one may be marked the point of no return. The engine runs the steps in a task of the
//! server, never inside an HTTP request, and stores after every step what the steps
//! produced (the saga's `Memory`) and where it is. So:
//! - a client that goes away cancels nothing;
//! - after a crash of the server, [`resume_all`] goes on at the saved step: forward, or
//!   undoing if it was undoing;
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

pub mod failover;

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
    pub host_id: String,
    pub vm: String,
    pub protection_id: Option<String>,
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

    /// Undoes step `step`, which ran (or may have run: it was the one that failed).
    fn undo(
        ctx: &Ctx,
        params: &Self::Params,
        step: &'static str,
        mem: &mut Self::Memory,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

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

/// Tries of an undo before the engine leaves it (saying so) and undoes the rest.
const MAX_UNDO_TRIES: i64 = 5;

fn backoff(tries: i64) -> Duration {
    let base = if cfg!(test) || std::env::var_os("LIFEBOAT_SAGA_FAST_RETRY").is_some() {
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
    spawn(db.clone(), op.clone());
    Ok(op)
}

fn spawn(db: Database, op: Operation) {
    tokio::spawn(async move {
        let id = op.id.clone();
        let mut op = op;
        loop {
            match drive(db.clone(), op).await {
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
            spawn(db.clone(), op);
            n += 1;
        }
    }
    Ok(n)
}

async fn drive(db: Database, op: Operation) -> Result<(), DbError> {
    match op.kind {
        OperationKind::FailoverTest
        | OperationKind::FailoverPlanned
        | OperationKind::FailoverUnplanned => run::<failover::Failover>(db, op).await,
        other => {
            let why = format!("operations of kind {other} do not run on the engine");
            db.finish_operation(&op.id, OperationStatus::Failed, None, &why, &why)
                .await
        }
    }
}

/// A test's instruction to fail after step `name` of `kind` ran: `KIND:STEP` in
/// `LIFEBOAT_SAGA_FAIL`.
fn injected_failure(kind: OperationKind, name: &str) -> bool {
    std::env::var("LIFEBOAT_SAGA_FAIL").is_ok_and(|v| v == format!("{kind}:{name}"))
}

/// A test's instruction to run every action twice (`LIFEBOAT_SAGA_REPEAT=1`): the
/// second run must change nothing.
fn repeat_actions() -> bool {
    std::env::var("LIFEBOAT_SAGA_REPEAT").is_ok_and(|v| v == "1")
}

/// Runs operation `op` of saga `S` from where its record says, to its end.
async fn run<S: Saga>(db: Database, op: Operation) -> Result<(), DbError> {
    let bad = |what: &str, e: serde_json::Error| {
        DbError::Refused(format!(
            "operation {}: its stored {what} do not read: {e}",
            op.id
        ))
    };
    let params: S::Params = serde_json::from_str(&op.params).map_err(|e| bad("params", e))?;
    let mut mem: S::Memory = serde_json::from_str(&op.memory).map_err(|e| bad("memory", e))?;
    let steps = S::steps(&params);
    let ctx = Ctx {
        db: db.clone(),
        op: op.id.clone(),
        host_id: op.host_id.clone(),
        vm: op.vm.clone(),
        protection_id: op.protection_id.clone(),
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
        lifeboat_agent::failpoint::reached(&format!("{}:{}", op.kind, step.name)).await;
        let mut outcome = S::run(&ctx, &params, step.name, &mut mem).await;
        if outcome.is_ok() && repeat_actions() {
            outcome = S::run(&ctx, &params, step.name, &mut mem).await;
        }
        if outcome.is_ok() && injected_failure(op.kind, step.name) {
            outcome = Err(StepError::Permanent(format!(
                "failure injected after step {} (LIFEBOAT_SAGA_FAIL)",
                step.name
            )));
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
