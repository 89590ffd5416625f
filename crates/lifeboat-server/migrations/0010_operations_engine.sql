-- Operations as sagas (DESIGN.md, "Operations"), and states as checked columns. Portable
-- SQL (SQLite and PostgreSQL), like 0002. SQLite cannot add a CHECK to a column it has, so
-- each table is built anew and its rows copied. The CHECK lists are the names in
-- lifeboat-types (a unit test compares them).

CREATE TABLE protections_new (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    point_name TEXT NOT NULL,
    vault_url TEXT NOT NULL,
    vault_passphrase TEXT NOT NULL,
    recovery_host_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('enabling', 'initial_sync', 'protected', 'degraded',
        'disabling', 'failing_over', 'failed_over', 'failing_back', 'failed_back')),
    reason TEXT NOT NULL,
    current_sync TEXT,
    sync_started_at TEXT,
    sync_done BIGINT NOT NULL,
    sync_total BIGINT NOT NULL,
    next_sync_at TEXT NOT NULL,
    failures BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    last_point TEXT,
    last_point_time TEXT,
    last_consistency TEXT,
    bytes_replicated BIGINT NOT NULL,
    syncs_committed BIGINT NOT NULL,
    last_sync_ms BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    generation BIGINT NOT NULL,
    app_attempt_at TEXT,
    network_map TEXT NOT NULL DEFAULT '{}',
    -- The kind of the failover that moved the VM away (while failing over or failed
    -- over): what an interrupted move does next depends on it.
    failover_kind TEXT CHECK (failover_kind IS NULL OR failover_kind IN ('planned', 'unplanned')),
    -- When the source was last known fenced (its agent said so); empty until then.
    fenced_at TEXT,
    UNIQUE (host_id, vm)
);
INSERT INTO protections_new (id, host_id, vm, point_name, vault_url, vault_passphrase,
    recovery_host_id, policy, state, reason, current_sync, sync_started_at, sync_done,
    sync_total, next_sync_at, failures, last_error, last_point, last_point_time,
    last_consistency, bytes_replicated, syncs_committed, last_sync_ms, created_at,
    generation, app_attempt_at, network_map, failover_kind, fenced_at)
SELECT id, host_id, vm, point_name, vault_url, vault_passphrase, recovery_host_id, policy,
    state, reason, current_sync, sync_started_at, sync_done, sync_total, next_sync_at,
    failures, last_error, last_point, last_point_time, last_consistency, bytes_replicated,
    syncs_committed, last_sync_ms, created_at, generation, app_attempt_at, network_map,
    CASE WHEN state IN ('failing_over', 'failed_over') AND reason LIKE 'planned%' THEN 'planned'
         WHEN state IN ('failing_over', 'failed_over') THEN 'unplanned' END,
    CASE WHEN reason LIKE '%source fenced%' THEN created_at END
FROM protections;
DROP TABLE protections;
ALTER TABLE protections_new RENAME TO protections;

CREATE TABLE operations_new (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('enable', 'disable', 'failover-test', 'failover-planned',
        'failover-unplanned', 'failover-cleanup', 'failover-commit', 'failback', 'reprotect')),
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    -- The step it is at, in words, and its log: lines appended, never rewritten.
    step TEXT NOT NULL,
    log TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    generation BIGINT NOT NULL,
    -- The protection it acts on (none for an enable that failed before it had one).
    protection_id TEXT,
    -- What was asked (JSON), and what the steps done so far produced (JSON): all a
    -- restarted server needs to go on.
    params TEXT NOT NULL DEFAULT '{}',
    memory TEXT NOT NULL DEFAULT '{}',
    -- The index of the next step to run (forward), or of the last step not yet undone
    -- plus one (undoing).
    next_step BIGINT NOT NULL DEFAULT 0,
    -- How many steps it has: 0 for operations that do not run on the engine.
    steps_total BIGINT NOT NULL DEFAULT 0,
    undoing BIGINT NOT NULL DEFAULT 0 CHECK (undoing IN (0, 1)),
    -- 1 once a step marked as the point of no return succeeded: no undo, no cancel.
    past_no_return BIGINT NOT NULL DEFAULT 0 CHECK (past_no_return IN (0, 1)),
    cancel_requested BIGINT NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    -- Failed tries of the current step (retried with backoff).
    attempts BIGINT NOT NULL DEFAULT 0,
    -- The operation's answer once it succeeded (JSON), or why it failed.
    result TEXT,
    error TEXT NOT NULL DEFAULT ''
);
INSERT INTO operations_new (id, host_id, vm, kind, status, step, log, created_at, updated_at,
    generation)
SELECT id, host_id, vm, kind, status, step, log, created_at, updated_at, generation
FROM operations;
DROP TABLE operations;
ALTER TABLE operations_new RENAME TO operations;
CREATE UNIQUE INDEX one_running_operation_per_vm ON operations (host_id, vm) WHERE status = 'running';

CREATE TABLE recoveries_new (
    id TEXT PRIMARY KEY,
    protection_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('test', 'planned', 'unplanned')),
    host_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    origin_host_id TEXT NOT NULL,
    origin_vm TEXT NOT NULL,
    point TEXT NOT NULL,
    point_time TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('starting', 'running', 'committed', 'removing', 'failed')),
    vm_state TEXT NOT NULL,
    hydrated_bytes BIGINT NOT NULL,
    hydration_total BIGINT NOT NULL,
    hydrated BIGINT NOT NULL,
    forwards TEXT NOT NULL,
    error TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    generation BIGINT NOT NULL,
    UNIQUE (host_id, vm)
);
INSERT INTO recoveries_new SELECT id, protection_id, kind, host_id, vm, origin_host_id,
    origin_vm, point, point_time, state, vm_state, hydrated_bytes, hydration_total, hydrated,
    forwards, error, created_at, updated_at, generation FROM recoveries;
DROP TABLE recoveries;
ALTER TABLE recoveries_new RENAME TO recoveries;
CREATE UNIQUE INDEX one_test_per_protection ON recoveries (protection_id) WHERE kind = 'test';
