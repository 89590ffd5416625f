-- Why a point is what it is, when that is worth saying: a resync and its cause, an
-- app-consistent point that fell back to crash-consistent, a retention failure.
ALTER TABLE points ADD COLUMN note TEXT;
