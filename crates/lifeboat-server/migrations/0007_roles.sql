-- Roles (viewer < operator < admin) for dashboard users and API tokens, and each token's
-- owner: a token acts as at most its owner's current role. Portable SQL, like 0002.
-- Columns default to the least privilege, so a row written without a role can read
-- and nothing more; the rows that exist now were all made by or for the one admin.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'viewer';
UPDATE users SET role = 'admin';

ALTER TABLE api_tokens ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'viewer';
UPDATE api_tokens SET owner = 'admin', role = 'admin';
