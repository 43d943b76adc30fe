-- Named queries of SQLiteStorage. Each block starts with a "-- name --" line
-- followed by one description line; storage/_queries.py loads them once.
-- Parameters are named (:param) so the Python side never builds SQL text,
-- except the WHERE clause of select_runs, which only joins fixed fragments.

-- upsert_run --
-- Insert or replace one run. ON CONFLICT names run_id only, so a clash on the
-- live unique_key index still raises (never REPLACE, which would delete the holder).
INSERT INTO hephaestus_runs
    (run_id, id, workflow, workflow_version, status, unique_key, created_at, updated_at, instance)
VALUES
    (:run_id, :id, :workflow, :workflow_version, :status, :unique_key, :created_at, :updated_at,
     :instance)
ON CONFLICT (run_id) DO UPDATE SET
    id = excluded.id,
    workflow = excluded.workflow,
    workflow_version = excluded.workflow_version,
    status = excluded.status,
    unique_key = excluded.unique_key,
    created_at = excluded.created_at,
    updated_at = excluded.updated_at,
    instance = excluded.instance;

-- live_holder --
-- The live run holding a unique key (to report a UniqueViolation).
SELECT run_id, id FROM hephaestus_runs
WHERE unique_key = :unique_key AND status IN ('pending', 'running', 'waiting')
LIMIT 1;

-- get_run --
-- One run's JSON document.
SELECT instance FROM hephaestus_runs WHERE run_id = :run_id;

-- select_runs --
-- Runs' JSON documents; the caller appends WHERE and the ORDER BY below.
SELECT instance FROM hephaestus_runs

-- order_runs --
-- The one order query() returns.
ORDER BY created_at, run_id

-- delete_run --
-- Remove one run.
DELETE FROM hephaestus_runs WHERE run_id = :run_id;

-- delete_run_resumes --
-- Remove every pending resume of one run.
DELETE FROM hephaestus_resumes WHERE run_id = :run_id;

-- insert_resume --
-- Record an accepted resume; seq comes from AUTOINCREMENT (cursor.lastrowid).
INSERT INTO hephaestus_resumes (run_id, step, event, accepted_at)
VALUES (:run_id, :step, :event, :accepted_at);

-- delete_resume --
-- Drop one resume record (consumed by a put, or refused after recording).
DELETE FROM hephaestus_resumes WHERE seq = :seq;

-- pending_resumes --
-- Every pending resume, in seq order.
SELECT seq, run_id, step, event, accepted_at FROM hephaestus_resumes ORDER BY seq;

-- pending_resumes_of_run --
-- One run's pending resumes, in seq order.
SELECT seq, run_id, step, event, accepted_at FROM hephaestus_resumes
WHERE run_id = :run_id ORDER BY seq;

-- purge_resumes --
-- Resumes of the runs purge_runs is about to delete (same WHERE).
DELETE FROM hephaestus_resumes WHERE run_id IN (
    SELECT run_id FROM hephaestus_runs
    WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < :older_than
);

-- purge_runs --
-- Terminal runs last updated before a cutoff (uses the partial terminal index).
DELETE FROM hephaestus_runs
WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < :older_than;
