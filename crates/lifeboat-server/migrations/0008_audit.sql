-- The audit log: who did what, when, from where, and how it ended. Written by one layer
-- (crate::audit) for every login, logout and state-changing call; never holds a secret
-- (no password, token, passphrase, enrollment code or request body). Portable SQL.
CREATE TABLE audit_log (
    -- `at` (UTC, fixed width, microseconds) then random hex: text order is time order,
    -- so `id < $before` pages backwards on SQLite and PostgreSQL alike.
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    -- The user acting, or trying to log in ('' when the name given is no user).
    actor TEXT NOT NULL,
    -- How: `session`, `token NAME`, or `password` (a login).
    via TEXT NOT NULL,
    -- The client's address as the server saw the connection.
    address TEXT NOT NULL,
    method TEXT NOT NULL,
    -- The route as declared (`/api/v1/protections/{id}/failover`), not the raw path.
    route TEXT NOT NULL,
    -- Path ids and the request's non-secret naming fields: `id=… vm=…`.
    target TEXT NOT NULL,
    -- The HTTP status answered; 0 while the call runs (a server that died mid-call
    -- leaves 0).
    status BIGINT NOT NULL,
    detail TEXT NOT NULL
);
