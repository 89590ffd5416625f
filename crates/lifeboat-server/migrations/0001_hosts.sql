-- Portable SQL: the same migrations run on SQLite and PostgreSQL.
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    -- The agent's certificate, pinned at enrollment (SHA-256, hex).
    fingerprint TEXT NOT NULL,
    -- The agent's credential, presented on every call to it.
    credential TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    generation BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
