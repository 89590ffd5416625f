-- VMs brought up on a recovery host from a recovery point: test copies beside production,
-- and failed-over VMs. Portable SQL (SQLite and PostgreSQL), like 0002.
CREATE TABLE recoveries (
    id TEXT PRIMARY KEY,
    protection_id TEXT NOT NULL,
    -- test | planned | unplanned
    kind TEXT NOT NULL,
    -- Where it runs and under which name.
    host_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    -- The protected VM it is a copy of.
    origin_host_id TEXT NOT NULL,
    origin_vm TEXT NOT NULL,
    point TEXT NOT NULL,
    point_time TEXT NOT NULL,
    -- starting | running | failed | removing
    state TEXT NOT NULL,
    -- As the recovery host's agent last reported it.
    vm_state TEXT NOT NULL,
    hydrated_bytes BIGINT NOT NULL,
    hydration_total BIGINT NOT NULL,
    -- 1 once the VM needs nothing from the vault.
    hydrated BIGINT NOT NULL,
    -- JSON: [{"host_port": …, "guest_port": …}], where to reach the guest on its host.
    forwards TEXT NOT NULL,
    error TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    generation BIGINT NOT NULL,
    UNIQUE (host_id, vm)
);

-- At most one test copy of a protected VM at a time.
CREATE UNIQUE INDEX one_test_per_protection ON recoveries (protection_id) WHERE kind = 'test';
