-- Migration 0001: the initial schema (user_version 0 -> 1).
--
-- Datetimes are ISO-8601 UTC text of fixed width (YYYY-MM-DDTHH:MM:SS.ffffffZ).

-- One row per run. The JSON document is the source of truth; the other
-- columns copy the fields that queries, uniqueness and purge look at.
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
    instance TEXT NOT NULL
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

-- Accepted, not yet applied resumes. AUTOINCREMENT: a seq is never reused,
-- even after the newest record is deleted.
CREATE TABLE hephaestus_resumes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    event TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);

CREATE INDEX hephaestus_resumes_run_idx ON hephaestus_resumes (run_id, seq);
