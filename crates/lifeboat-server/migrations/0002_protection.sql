-- Protection of VMs, their recovery points and operations. Portable SQL (SQLite and
-- PostgreSQL): TEXT and BIGINT only, times as RFC 3339 text compared in the server.

-- One row per protected VM. `generation` guards every update (UPDATE … WHERE generation
-- = expected), so two actors can never both win.
CREATE TABLE protections (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    -- The name of the VM's points in the vault.
    point_name TEXT NOT NULL,
    vault_url TEXT NOT NULL,
    vault_passphrase TEXT NOT NULL,
    recovery_host_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    -- enabling | initial_sync | protected | degraded
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    -- The sync asked of the agent and not yet seen to end (its id), and since when.
    current_sync TEXT,
    sync_started_at TEXT,
    sync_done BIGINT NOT NULL,
    sync_total BIGINT NOT NULL,
    next_sync_at TEXT NOT NULL,
    -- Failed attempts in a row (syncs, or calls to an agent that did not answer).
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
    UNIQUE (host_id, vm)
);

CREATE TABLE points (
    protection_id TEXT NOT NULL,
    point TEXT NOT NULL,
    cut_time TEXT NOT NULL,
    consistency TEXT NOT NULL,
    kind TEXT NOT NULL,
    bytes_read BIGINT NOT NULL,
    new_bytes BIGINT NOT NULL,
    PRIMARY KEY (protection_id, point)
);

CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    -- enable | disable
    kind TEXT NOT NULL,
    -- running | succeeded | failed | cancelled
    status TEXT NOT NULL,
    step TEXT NOT NULL,
    log TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    generation BIGINT NOT NULL
);

-- One active operation per VM.
CREATE UNIQUE INDEX one_running_operation_per_vm ON operations (host_id, vm) WHERE status = 'running';
