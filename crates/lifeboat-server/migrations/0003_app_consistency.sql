-- When a sync last asked for an app-consistent point (whether the guest's agent answered
-- or not), so a guest without qemu-guest-agent is not asked on every sync.
ALTER TABLE protections ADD COLUMN app_attempt_at TEXT;
