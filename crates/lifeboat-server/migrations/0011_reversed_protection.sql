-- Reversed protection (DESIGN.md, "Operations"): a committed failover's VM replicated from
-- the recovery site (`reprotecting`, `protected_reversed`), and a recovery host's copy
-- fenced after an unplanned failback (`fencing`, `fenced`). Portable SQL, like 0010: the
-- tables are built anew with the longer CHECK lists and their rows copied.

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
        'reprotecting', 'protected_reversed')),
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
    failover_kind, fenced_at
FROM protections;
DROP TABLE protections;
ALTER TABLE protections_new RENAME TO protections;

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
    state TEXT NOT NULL CHECK (state IN ('starting', 'running', 'committed', 'removing', 'failed',
        'fencing', 'fenced')),
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
