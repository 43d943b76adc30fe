-- Named queries of SQLiteStorage. Each block starts with a "-- name --" line
-- followed by one description line; storage/_queries.py loads them once.
-- Parameters are named (:param) so the Python side never builds SQL text,
-- except the WHERE clause of select_runs, which only joins fixed fragments.
-- Collections travel as one JSON array parameter, read with json_each.
-- "Live" is always spelled status IN ('pending', 'running', 'waiting'), the
-- WHERE of the partial indexes, so that the planner can use them.

-- run_exists --
-- Whether a run_id is taken (create refuses a duplicate).
SELECT 1 FROM hephaestus_runs WHERE run_id = :run_id;

-- insert_run --
-- Insert a new run. A clash on the live unique_key index raises IntegrityError.
INSERT INTO hephaestus_runs
    (run_id, id, workflow, workflow_version, status, unique_key, created_at, updated_at, instance,
     owner, lease_epoch, lease_expires_at, wake_at)
VALUES
    (:run_id, :id, :workflow, :workflow_version, :status, :unique_key, :created_at, :updated_at,
     :instance, :owner, :lease_epoch, :lease_expires_at, :now);

-- write_run --
-- The fenced write of a live state: only under the stored lease (and with the
-- identity create gave it). Only the columns a transition changes are set, so
-- the identity indexes and the claim index are left alone; wake_at keeps the
-- claim's value (a run whose owner dies is claimable once the lease lapses).
UPDATE hephaestus_runs SET
    status = :status,
    updated_at = :updated_at,
    instance = :instance
WHERE run_id = :run_id AND owner = :owner AND lease_epoch = :epoch
    AND status IN ('pending', 'running', 'waiting') AND unique_key IS :unique_key
    AND id = :id AND workflow = :workflow AND workflow_version = :workflow_version;

-- end_run --
-- The fenced write of a terminal state: it also ends the lease, and the run
-- never needs a driver again.
UPDATE hephaestus_runs SET
    status = :status,
    updated_at = :updated_at,
    instance = :instance,
    owner = NULL,
    lease_expires_at = NULL,
    wake_at = NULL
WHERE run_id = :run_id AND owner = :owner AND lease_epoch = :epoch
    AND status IN ('pending', 'running', 'waiting') AND unique_key IS :unique_key
    AND id = :id AND workflow = :workflow AND workflow_version = :workflow_version;

-- held_key --
-- After a fenced write changed nothing: the stored identity if the lease is held.
SELECT unique_key, id, workflow, workflow_version FROM hephaestus_runs
WHERE run_id = :run_id AND owner = :owner AND lease_epoch = :epoch
    AND status IN ('pending', 'running', 'waiting');

-- live_holder --
-- The live run holding a unique key (to report a UniqueViolation).
SELECT run_id, id FROM hephaestus_runs
WHERE unique_key = :unique_key AND status IN ('pending', 'running', 'waiting')
LIMIT 1;

-- get_run --
-- One run's JSON document.
SELECT instance FROM hephaestus_runs WHERE run_id = :run_id;

-- select_runs --
-- Runs' ids and JSON documents; the caller appends WHERE and the ORDER BY below.
SELECT run_id, instance FROM hephaestus_runs

-- order_runs --
-- The one order query() returns.
ORDER BY created_at, run_id

-- limit_runs --
-- query(limit=...): appended after order_runs.
LIMIT :limit

-- timers_of_run --
-- One run's pending timer wakeups, in seq order (what Instance.timers reads as).
SELECT step, event, due_at FROM hephaestus_wakeups
WHERE run_id = :run_id AND kind = 'timer'
ORDER BY seq;

-- timers_of_runs --
-- The pending timer wakeups of a JSON array of run_ids, in seq order.
SELECT run_id, step, event, due_at FROM hephaestus_wakeups
WHERE kind = 'timer' AND run_id IN (SELECT value FROM json_each(:run_ids))
ORDER BY seq;

-- delete_run --
-- Remove one run.
DELETE FROM hephaestus_runs WHERE run_id = :run_id;

-- delete_run_wakeups --
-- Remove every pending wakeup of one run.
DELETE FROM hephaestus_wakeups WHERE run_id = :run_id;

-- delete_run_dedup --
-- Forget the resume dedup keys of one run.
DELETE FROM hephaestus_resume_dedup WHERE run_id = :run_id;

-- purge_wakeups --
-- Wakeups of the runs purge_runs is about to delete (same WHERE).
DELETE FROM hephaestus_wakeups WHERE run_id IN (
    SELECT run_id FROM hephaestus_runs
    WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < :older_than
);

-- purge_dedup --
-- Dedup keys of the runs purge_runs is about to delete (same WHERE).
DELETE FROM hephaestus_resume_dedup WHERE run_id IN (
    SELECT run_id FROM hephaestus_runs
    WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < :older_than
);

-- purge_runs --
-- Terminal runs last updated before a cutoff (uses the partial terminal index).
DELETE FROM hephaestus_runs
WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < :older_than;

-- claimable --
-- Up to :limit runs that need a driver and are free, earliest claimable first.
-- It walks hephaestus_runs_claimable_idx (INDEXED BY: the planner would pick
-- the status index, which is no good here); the CASE is the index's
-- expression, spelled the same. :workflows is a JSON array of
-- [name, version] pairs, or NULL for any.
SELECT run_id, lease_epoch FROM hephaestus_runs INDEXED BY hephaestus_runs_claimable_idx
WHERE status IN ('pending', 'running', 'waiting') AND wake_at IS NOT NULL
    AND (CASE WHEN owner IS NULL THEN wake_at ELSE max(wake_at, lease_expires_at) END) <= :now
    AND (:workflows IS NULL OR (workflow, workflow_version) IN (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
        FROM json_each(:workflows)))
ORDER BY (CASE WHEN owner IS NULL THEN wake_at ELSE max(wake_at, lease_expires_at) END), created_at, run_id
LIMIT :limit;

-- claimable_among --
-- claimable, among the runs of :run_ids (a JSON array) only, looked up by primary key
-- (CROSS JOIN: SQLite keeps json_each as the outer loop).
SELECT run_id, lease_epoch FROM json_each(:run_ids) AS wanted
CROSS JOIN hephaestus_runs ON hephaestus_runs.run_id = wanted.value
WHERE status IN ('pending', 'running', 'waiting') AND wake_at IS NOT NULL
    AND (CASE WHEN owner IS NULL THEN wake_at ELSE max(wake_at, lease_expires_at) END) <= :now
    AND (:workflows IS NULL OR (workflow, workflow_version) IN (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
        FROM json_each(:workflows)))
ORDER BY (CASE WHEN owner IS NULL THEN wake_at ELSE max(wake_at, lease_expires_at) END), created_at, run_id
LIMIT :limit;

-- take_leases --
-- Lease the runs claimable found (:run_ids, a JSON array), bumping each epoch.
UPDATE hephaestus_runs SET
    owner = :owner,
    lease_epoch = lease_epoch + 1,
    lease_expires_at = :expires_at
WHERE run_id IN (SELECT value FROM json_each(:run_ids));

-- renew --
-- Extend the leases still held exactly as given (:leases: JSON [[run_id, epoch], ...]).
UPDATE hephaestus_runs SET lease_expires_at = :expires_at
WHERE owner = :owner AND status IN ('pending', 'running', 'waiting')
    AND (run_id, lease_epoch) IN (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
        FROM json_each(:leases))
RETURNING run_id, lease_epoch, lease_expires_at;

-- wakeup_above --
-- Whether a run got a wakeup the owner has not read (seq above :seen).
SELECT EXISTS (SELECT 1 FROM hephaestus_wakeups WHERE run_id = :run_id AND seq > :seen);

-- release --
-- The fenced release: end the lease and record when the run next needs a driver.
UPDATE hephaestus_runs SET owner = NULL, lease_expires_at = NULL, wake_at = :wake_at
WHERE run_id = :run_id AND owner = :owner AND lease_epoch = :epoch
    AND status IN ('pending', 'running', 'waiting');

-- release_all --
-- Clean shutdown: every live run of an owner becomes claimable at once.
UPDATE hephaestus_runs SET owner = NULL, lease_expires_at = NULL, wake_at = :now
WHERE owner = :owner AND status IN ('pending', 'running', 'waiting');

-- next_wake --
-- Earliest time a live run not held by :owner may become claimable (no row: none).
SELECT (CASE WHEN owner IS NULL THEN wake_at ELSE max(wake_at, lease_expires_at) END) FROM hephaestus_runs INDEXED BY hephaestus_runs_claimable_idx
WHERE status IN ('pending', 'running', 'waiting') AND wake_at IS NOT NULL
    AND (owner IS NULL OR owner != :owner)
    AND (:workflows IS NULL OR (workflow, workflow_version) IN (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
        FROM json_each(:workflows)))
ORDER BY (CASE WHEN owner IS NULL THEN wake_at ELSE max(wake_at, lease_expires_at) END)
LIMIT 1;

-- expire_owner --
-- A dead engine's leases lapse now, so its live runs are claimable at once.
UPDATE hephaestus_runs SET lease_expires_at = :now
WHERE owner = :owner AND status IN ('pending', 'running', 'waiting');

-- run_status --
-- The status of one run (add_wakeup refuses a missing or terminal run).
SELECT status FROM hephaestus_runs WHERE run_id = :run_id;

-- dedup_seen --
-- Whether a resume dedup key was already recorded for the run.
SELECT 1 FROM hephaestus_resume_dedup WHERE run_id = :run_id AND dedup_key = :dedup_key;

-- record_dedup --
-- Remember a resume dedup key until the run is deleted.
INSERT INTO hephaestus_resume_dedup (run_id, dedup_key) VALUES (:run_id, :dedup_key);

-- pending_resume --
-- Whether the step already has an unapplied resume.
SELECT 1 FROM hephaestus_wakeups WHERE run_id = :run_id AND kind = 'resume' AND step = :step;

-- pending_cancel --
-- Whether the run already has an unapplied cancel request.
SELECT 1 FROM hephaestus_wakeups WHERE run_id = :run_id AND kind = 'cancel';

-- count_resumes --
-- How many unapplied resumes the run has.
SELECT COUNT(*) FROM hephaestus_wakeups WHERE run_id = :run_id AND kind = 'resume';

-- insert_wakeup --
-- Record one wakeup; seq comes from AUTOINCREMENT (cursor.lastrowid).
INSERT INTO hephaestus_wakeups
    (run_id, kind, step, event, payload, dedup_key, due_at, created_at, trace_context)
VALUES (:run_id, :kind, :step, :event, :payload, :dedup_key, :due_at, :created_at, :trace_context);

-- wake_by --
-- The run needs a driver no later than :due_at.
UPDATE hephaestus_runs
SET wake_at = CASE WHEN wake_at IS NULL OR wake_at > :due_at THEN :due_at ELSE wake_at END
WHERE run_id = :run_id;

-- consume_wakeup --
-- Delete one applied wakeup of the run (rowcount 0: it is gone).
DELETE FROM hephaestus_wakeups WHERE seq = :seq AND run_id = :run_id;

-- drop_stale_timers --
-- Delete the timer wakeups of steps no longer parked (:waiting: JSON array of step keys).
DELETE FROM hephaestus_wakeups
WHERE run_id = :run_id AND kind = 'timer'
    AND step NOT IN (SELECT value FROM json_each(:waiting));

-- cancel_timer --
-- Delete one pending timer wakeup (rowcount 0: already applied or dropped).
DELETE FROM hephaestus_wakeups WHERE seq = :seq AND run_id = :run_id AND kind = 'timer';

-- wakeups_of_run --
-- One run's unapplied wakeups, in seq order.
SELECT seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at, trace_context
FROM hephaestus_wakeups WHERE run_id = :run_id ORDER BY seq;

-- owned_wakeups --
-- (run_id, highest seq) of the runs :owner holds that have wakeups above :after.
SELECT w.run_id, MAX(w.seq) FROM hephaestus_wakeups AS w
JOIN hephaestus_runs AS r ON r.run_id = w.run_id
WHERE r.owner = :owner AND w.seq > :after
GROUP BY w.run_id
ORDER BY w.run_id;

-- register_engine --
-- Record a running engine (its proof of life is its lock file, not this row).
INSERT INTO hephaestus_engines (engine_id, host, pid, started_at, info, last_heartbeat)
VALUES (:engine_id, :host, :pid, :started_at, :info, :started_at)
ON CONFLICT (engine_id) DO UPDATE SET
    host = excluded.host,
    pid = excluded.pid,
    started_at = excluded.started_at,
    info = excluded.info,
    last_heartbeat = excluded.last_heartbeat;

-- heartbeat --
-- A renewal: the engine is alive now (for the engines listing only).
UPDATE hephaestus_engines SET last_heartbeat = :now WHERE engine_id = :owner;

-- engines --
-- Every registered engine with how many live runs it holds, by engine_id.
SELECT e.engine_id, e.host, e.pid, e.started_at, e.last_heartbeat,
    (SELECT COUNT(*) FROM hephaestus_runs AS r
     WHERE r.owner = e.engine_id AND r.status IN ('pending', 'running', 'waiting'))
FROM hephaestus_engines AS e
ORDER BY e.engine_id;

-- unregister_engine --
-- Forget an engine.
DELETE FROM hephaestus_engines WHERE engine_id = :engine_id;

-- engine_ids --
-- Every registered engine.
SELECT engine_id FROM hephaestus_engines ORDER BY engine_id;

-- data_version --
-- Moves whenever another connection, of this process or another, committed.
PRAGMA data_version;

-- summary_counts --
-- Runs by (workflow, status), from hephaestus_runs_workflow_created_idx alone.
SELECT workflow, status, COUNT(*) FROM hephaestus_runs
GROUP BY workflow, status
ORDER BY workflow, status;

-- oldest_waiting --
-- The earliest created waiting run (hephaestus_runs_status_idx, one row read).
SELECT run_id, id, workflow, created_at, updated_at FROM hephaestus_runs
WHERE status = 'waiting'
ORDER BY created_at, run_id
LIMIT 1;

-- due_timers --
-- How many pending timers are due at :now, and the earliest of them
-- (hephaestus_wakeups_timer_due_idx).
SELECT COUNT(*), MIN(due_at) FROM hephaestus_wakeups
WHERE kind = 'timer' AND due_at <= :now;

-- next_timer --
-- The earliest pending timer due after :now (hephaestus_wakeups_timer_due_idx).
SELECT MIN(due_at) FROM hephaestus_wakeups
WHERE kind = 'timer' AND due_at > :now;
