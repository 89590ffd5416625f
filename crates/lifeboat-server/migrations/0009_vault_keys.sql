-- Each vault key sealed to the one agent that uses it (docs/security.md, "Vault keys"):
-- the server keeps these instead of vault passphrases, and none of them opens anything
-- without that agent's private sealing key. Protections enabled before this migration
-- still hold their passphrase until the server has had both their agents seal the key
-- (vault_keys.rs); then the passphrase column is emptied.
CREATE TABLE vault_keys (
    protection_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    -- Base64 of the vault's key file sealed to the host's agent.
    sealed TEXT NOT NULL,
    sealed_at TEXT NOT NULL,
    PRIMARY KEY (protection_id, host_id)
);
