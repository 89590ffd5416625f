-- The dashboard: its users (one, `admin`, for now), their login sessions, and the
-- network mapping a protection fails over with. Portable SQL, like 0002. Unlike 0002's,
-- the times compared in SQL here (sessions' expiry, cut times) are written in one shape,
-- UTC with a `Z` and fixed digits, so text order is time order.
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    -- argon2id, as a PHC string (salt and parameters included).
    password_hash TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE sessions (
    -- SHA-256 of the session cookie's value: a stolen database opens no session.
    id_sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    -- Sent back by the page on every state-changing request (X-CSRF-Token).
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

-- JSON object: source network -> recovery host network, used by planned and unplanned
-- failover when the request gives none.
ALTER TABLE protections ADD COLUMN network_map TEXT NOT NULL DEFAULT '{}';

-- Every point's cut time for two days, whatever retention later deletes: the dashboard's
-- RPO chart is drawn from these.
CREATE TABLE point_cuts (
    protection_id TEXT NOT NULL,
    point TEXT NOT NULL,
    cut_time TEXT NOT NULL,
    PRIMARY KEY (protection_id, point)
);
-- Points recorded before this migration draw the chart too.
INSERT INTO point_cuts (protection_id, point, cut_time)
    SELECT protection_id, point, cut_time FROM points;
