-- Migration 0002: leases and wakeups (user_version 1 -> 2).
--
-- Ownership moves into the database: each run gets a lease (owner,
-- lease_epoch, lease_expires_at) and a wake_at; resumes, timers and cancel
-- requests become rows of hephaestus_wakeups. Existing data is carried over:
--   - live runs become unowned and claimable at once (wake_at = updated_at),
--     which is what recovery used to do when an engine started;
--   - pending resumes of live runs become resume wakeups with their old seq
--     (the first per step; a second one for a parked step could never apply),
--     and the new AUTOINCREMENT counter continues above the old one;
--   - timers inside live runs' documents become timer wakeups, and every
--     document is stored with an empty "timers" from now on.
-- hephaestus_runs is rebuilt rather than altered so that its definition in
-- sqlite_master is exactly schema.sql's.

ALTER TABLE hephaestus_runs RENAME TO hephaestus_runs_v1_old;

CREATE TABLE hephaestus_runs (
    run_id TEXT NOT NULL PRIMARY KEY,
    id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    workflow_version INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    unique_key TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    instance TEXT NOT NULL,
    owner TEXT,
    lease_epoch INTEGER NOT NULL DEFAULT 0,
    lease_expires_at TEXT,
    wake_at TEXT
);

INSERT INTO hephaestus_runs
    (run_id, id, workflow, workflow_version, status, unique_key, created_at, updated_at, instance,
     owner, lease_epoch, lease_expires_at, wake_at)
SELECT
    run_id, id, workflow, workflow_version, status, unique_key, created_at, updated_at, instance,
    NULL, 0, NULL,
    CASE WHEN status IN ('pending', 'running', 'waiting') THEN updated_at END
FROM hephaestus_runs_v1_old;

-- Dropping the old table drops its indexes, whose names the new ones reuse.
DROP TABLE hephaestus_runs_v1_old;

-- Uniqueness among live runs only: a completed, failed or cancelled run drops
-- out of the index and frees its key. Enforced by SQLite itself, so it is
-- atomic across connections and processes.
CREATE UNIQUE INDEX hephaestus_runs_live_unique_key_v1
    ON hephaestus_runs (unique_key)
    WHERE status IN ('pending', 'running', 'waiting') AND unique_key IS NOT NULL;

-- query(): every filter ends in the (created_at, run_id) order it returns.
CREATE INDEX hephaestus_runs_created_idx ON hephaestus_runs (created_at, run_id);
CREATE INDEX hephaestus_runs_status_idx ON hephaestus_runs (status, created_at, run_id);
CREATE INDEX hephaestus_runs_workflow_idx
    ON hephaestus_runs (workflow, workflow_version, created_at, run_id);
CREATE INDEX hephaestus_runs_id_idx ON hephaestus_runs (id, created_at, run_id);

-- purge(): terminal runs by age.
CREATE INDEX hephaestus_runs_terminal_updated_idx
    ON hephaestus_runs (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- claim() and next_wake(): live runs that will need a driver, by the time they
-- become claimable: wake_at when unowned, else not before the lease lapses.
-- Owned runs sort at their lease's end, so a claim never scans the runs
-- other engines are driving.
CREATE INDEX hephaestus_runs_claimable_idx
    ON hephaestus_runs (
        (CASE WHEN owner IS NULL THEN wake_at ELSE max(wake_at, lease_expires_at) END),
        created_at,
        run_id
    )
    WHERE status IN ('pending', 'running', 'waiting') AND wake_at IS NOT NULL;

-- release_all(), owned_wakeups() and reap_engines(): the runs an engine holds.
CREATE INDEX hephaestus_runs_owner_idx ON hephaestus_runs (owner) WHERE owner IS NOT NULL;

-- Recorded, not yet applied wakeups (resumes, timers, cancel requests) of
-- live runs. AUTOINCREMENT: a seq is never reused, even after the newest row
-- is deleted, and one counter orders the wakeups of the whole database.
-- payload is JSON text (or NULL).
CREATE TABLE hephaestus_wakeups (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('resume', 'timer', 'cancel')),
    step TEXT,
    event TEXT,
    payload TEXT,
    dedup_key TEXT,
    due_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- wakeups(), and every "the wakeups of this run" statement.
CREATE INDEX hephaestus_wakeups_run_idx ON hephaestus_wakeups (run_id, seq);

-- At most one unapplied resume per parked step, and one cancel request per run.
CREATE UNIQUE INDEX hephaestus_wakeups_resume_step_idx
    ON hephaestus_wakeups (run_id, step)
    WHERE kind = 'resume';
CREATE UNIQUE INDEX hephaestus_wakeups_cancel_idx
    ON hephaestus_wakeups (run_id)
    WHERE kind = 'cancel';

-- The dedup keys of every resume recorded for a run, kept after the resume
-- was applied (so a retried resume stays a no-op) until the run is deleted.
CREATE TABLE hephaestus_resume_dedup (
    run_id TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    PRIMARY KEY (run_id, dedup_key)
) WITHOUT ROWID;

-- Engines registered on this database (metadata; proof of life is the lock
-- file <database>.engines/<engine_id>.lock, see docs/storage.md).
CREATE TABLE hephaestus_engines (
    engine_id TEXT NOT NULL PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    started_at TEXT NOT NULL,
    info TEXT NOT NULL
);

-- The seq counter continues above every seq the old table ever handed out.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'hephaestus_wakeups', seq FROM sqlite_sequence WHERE name = 'hephaestus_resumes';

INSERT OR IGNORE INTO hephaestus_wakeups
    (seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at)
SELECT r.seq, r.run_id, 'resume', r.step, r.event, NULL, NULL, r.accepted_at, r.accepted_at
FROM hephaestus_resumes AS r
JOIN hephaestus_runs AS run ON run.run_id = r.run_id
WHERE run.status IN ('pending', 'running', 'waiting')
ORDER BY r.seq;

-- A document's fire_at is Python's isoformat() of a UTC datetime
-- (2030-01-01T00:00:00[.ffffff]+00:00); due_at is the fixed-width form.
INSERT INTO hephaestus_wakeups (run_id, kind, step, event, due_at, created_at)
SELECT
    run.run_id, 'timer',
    json_extract(timer.value, '$.step'),
    json_extract(timer.value, '$.event'),
    substr(json_extract(timer.value, '$.fire_at'), 1, 19) || '.'
        || CASE WHEN substr(json_extract(timer.value, '$.fire_at'), 20, 1) = '.'
            THEN substr(json_extract(timer.value, '$.fire_at'), 21, 6)
            ELSE '000000' END
        || 'Z',
    run.updated_at
FROM hephaestus_runs AS run, json_each(run.instance, '$.timers') AS timer
WHERE run.status IN ('pending', 'running', 'waiting')
ORDER BY run.created_at, run.run_id, timer.key;

UPDATE hephaestus_runs SET instance = json_set(instance, '$.timers', json('[]'))
WHERE json_array_length(instance, '$.timers') > 0;

DROP TABLE hephaestus_resumes;
