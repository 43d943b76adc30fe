-- hephaestus-trio SQLite schema: the canonical, current shape of a database.
--
-- A new database gets exactly this file; an older one gets migrations/*.sql
-- applied in order. tests/storage/test_sqlite.py checks that both give the
-- same sqlite_master. The schema version lives in PRAGMA user_version and is
-- the number of the newest migration; PRAGMA application_id marks the file as
-- ours. Neither is set here: the opener sets both in the same transaction.
--
-- Datetimes are ISO-8601 UTC text of fixed width (YYYY-MM-DDTHH:MM:SS.ffffffZ)
-- so that text order is time order.

-- One row per run. The JSON document is the source of truth for the run's
-- state (stored with an empty "timers": the run's timers are its timer rows
-- in hephaestus_wakeups); the other columns copy the fields that queries,
-- uniqueness and purge look at, and hold the run's lease:
--   owner, lease_epoch, lease_expires_at: the engine holding the run, the
--     fencing token every claim bumps, and when the lease lapses (owner NULL:
--     unowned; a terminal run is never owned);
--   wake_at: when the run next needs a driver (NULL: only a wakeup can wake
--     it). claim takes live runs with wake_at <= now that are unowned or
--     whose lease expired.
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

-- summary() counts runs by (workflow, status) from this index alone (no
-- document is read); query(workflow=...) walks it in the (created_at, run_id)
-- order it returns, from a keyset cursor, checking status in the index.
CREATE INDEX hephaestus_runs_workflow_created_idx
    ON hephaestus_runs (workflow, created_at, run_id, status);

-- Recorded, not yet applied wakeups (resumes, timers, cancel requests) of
-- live runs. AUTOINCREMENT: a seq is never reused, even after the newest row
-- is deleted, and one counter orders the wakeups of the whole database.
-- payload is JSON text (or NULL); trace_context is the JSON object of W3C
-- trace headers of whoever added the wakeup (or NULL).
CREATE TABLE hephaestus_wakeups (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('resume', 'timer', 'cancel')),
    step TEXT,
    event TEXT,
    payload TEXT,
    dedup_key TEXT,
    due_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    trace_context TEXT
);

-- wakeups(), and every "the wakeups of this run" statement.
CREATE INDEX hephaestus_wakeups_run_idx ON hephaestus_wakeups (run_id, seq);

-- summary(): pending timers by due time (how many are due, the next one).
CREATE INDEX hephaestus_wakeups_timer_due_idx
    ON hephaestus_wakeups (due_at)
    WHERE kind = 'timer';

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
    info TEXT NOT NULL,
    last_heartbeat TEXT
);
