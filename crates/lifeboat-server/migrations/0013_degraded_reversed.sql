-- A reversed protection whose syncs fail or fall behind its policy is `degraded_reversed`
-- (DESIGN.md, "Operations": Protected (reversed) ⇄ Degraded, as at home). Portable SQL,
-- like 0011: the table is built anew with the longer CHECK list and its rows copied.

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
        'disabling', 'failing_over', 'failed_over', 'failing_back', 'failed_back',
        'reprotecting', 'protected_reversed', 'degraded_reversed')),
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
    failover_kind TEXT CHECK (failover_kind IS NULL OR failover_kind IN ('planned', 'unplanned')),
    fenced_at TEXT,
    network_settings TEXT NOT NULL DEFAULT '{}',
    UNIQUE (host_id, vm)
);
INSERT INTO protections_new (id, host_id, vm, point_name, vault_url, vault_passphrase,
    recovery_host_id, policy, state, reason, current_sync, sync_started_at, sync_done,
    sync_total, next_sync_at, failures, last_error, last_point, last_point_time,
    last_consistency, bytes_replicated, syncs_committed, last_sync_ms, created_at,
    generation, app_attempt_at, network_map, failover_kind, fenced_at, network_settings)
SELECT id, host_id, vm, point_name, vault_url, vault_passphrase, recovery_host_id, policy,
    state, reason, current_sync, sync_started_at, sync_done, sync_total, next_sync_at,
    failures, last_error, last_point, last_point_time, last_consistency, bytes_replicated,
    syncs_committed, last_sync_ms, created_at, generation, app_attempt_at, network_map,
    failover_kind, fenced_at, network_settings
FROM protections;
DROP TABLE protections;
ALTER TABLE protections_new RENAME TO protections;
