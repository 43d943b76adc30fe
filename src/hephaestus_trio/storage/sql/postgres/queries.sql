-- Named queries of PostgresStorage. Each block starts with a "-- name --" line
-- followed by one description line; storage/_queries.py loads them once.
-- Parameters are psycopg's named placeholders, so the Python side never
-- builds SQL text (except the WHERE clause of select_runs, which only joins
-- fixed fragments). Collections travel as arrays, read with unnest/ANY.
--
-- Time: %(now)s is NULL when the storage keeps time by the database clock
-- (clock="database", the default) and the caller's now with clock="caller",
-- so every comparison and every lease expiry is spelled
-- COALESCE(%(now)s::timestamptz, now()) once and the same text serves both.
-- "Live" is always spelled status IN ('pending', 'running', 'waiting'), the
-- WHERE of the partial indexes, so that the planner can use them.

-- insert_run --
-- Insert a new run and its document; no row back: the run_id or the live unique_key is taken.
WITH run AS (
    INSERT INTO hephaestus_runs
        (run_id, id, workflow, workflow_version, status, unique_key, created_at, updated_at,
         owner, lease_epoch, lease_expires_at, wake_at)
    VALUES
        (%(run_id)s, %(id)s, %(workflow)s, %(workflow_version)s, %(status)s, %(unique_key)s,
         %(created_at)s, %(updated_at)s, %(owner)s::text,
         CASE WHEN %(owner)s::text IS NULL THEN 0 ELSE 1 END,
         CASE WHEN %(owner)s::text IS NULL THEN NULL
             ELSE COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(ttl)s::float8)
         END,
         COALESCE(%(now)s::timestamptz, now()))
    ON CONFLICT DO NOTHING
    RETURNING run_id, lease_expires_at
), document AS (
    INSERT INTO hephaestus_documents (run_id, instance)
    SELECT run_id, %(instance)s FROM run
)
SELECT lease_expires_at FROM run;

-- run_exists --
-- Whether a run_id is taken (why an insert_run inserted nothing).
SELECT 1 FROM hephaestus_runs WHERE run_id = %(run_id)s;

-- live_holder --
-- The live run holding a unique key (to report a UniqueViolation).
SELECT run_id, id FROM hephaestus_runs
WHERE unique_key = %(unique_key)s AND status IN ('pending', 'running', 'waiting')
LIMIT 1;

-- insert_timers --
-- Timer wakeups of one run, in the given order; the run's wakeup_seq follows.
WITH added AS (
    INSERT INTO hephaestus_wakeups (run_id, kind, step, event, due_at, created_at)
    SELECT %(run_id)s, 'timer', t.step, t.event, t.due_at, %(created_at)s
    FROM unnest(%(steps)s::text[], %(events)s::text[], %(due_ats)s::timestamptz[])
        WITH ORDINALITY AS t(step, event, due_at, n)
    ORDER BY t.n
    RETURNING seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at,
        trace_context
), bumped AS (
    UPDATE hephaestus_runs SET wakeup_seq = GREATEST(wakeup_seq, (SELECT max(seq) FROM added))
    WHERE run_id = %(run_id)s
)
SELECT * FROM added ORDER BY seq;

-- write_run --
-- The fenced write of a live state, in ONE statement: only under the stored lease and
-- identity; with it, the consumed wakeups go and the timers of steps no longer parked
-- (never one being consumed). No row back: the lease is lost. The seqs consumed come
-- back (fewer than asked: WakeupGone, and the caller's transaction rolls back).
WITH run AS (
    UPDATE hephaestus_runs SET status = %(status)s, updated_at = %(updated_at)s
    WHERE run_id = %(run_id)s AND owner = %(owner)s AND lease_epoch = %(epoch)s
        AND status IN ('pending', 'running', 'waiting')
        AND unique_key IS NOT DISTINCT FROM %(unique_key)s::text
        AND id = %(id)s AND workflow = %(workflow)s AND workflow_version = %(workflow_version)s
    RETURNING run_id
), document AS (
    UPDATE hephaestus_documents AS d SET instance = %(instance)s
    FROM run WHERE d.run_id = run.run_id
    RETURNING d.run_id
), consumed AS (
    DELETE FROM hephaestus_wakeups
    WHERE run_id = %(run_id)s AND seq = ANY(%(seqs)s::bigint[]) AND EXISTS (SELECT 1 FROM run)
    RETURNING seq
), stale AS (
    DELETE FROM hephaestus_wakeups
    WHERE run_id = %(run_id)s AND kind = 'timer' AND NOT (step = ANY(%(waiting)s::text[]))
        AND NOT (seq = ANY(%(seqs)s::bigint[])) AND EXISTS (SELECT 1 FROM run)
)
SELECT run_id, ARRAY(SELECT seq FROM consumed) FROM document;

-- end_run --
-- The fenced write of a terminal state, in ONE statement: it ends the lease for good and
-- deletes every wakeup of the run; the seqs asked to be consumed that existed come back.
WITH run AS (
    UPDATE hephaestus_runs SET
        status = %(status)s,
        updated_at = %(updated_at)s,
        owner = NULL,
        lease_expires_at = NULL,
        wake_at = NULL
    WHERE run_id = %(run_id)s AND owner = %(owner)s AND lease_epoch = %(epoch)s
        AND status IN ('pending', 'running', 'waiting')
        AND unique_key IS NOT DISTINCT FROM %(unique_key)s::text
        AND id = %(id)s AND workflow = %(workflow)s AND workflow_version = %(workflow_version)s
    RETURNING run_id
), document AS (
    UPDATE hephaestus_documents AS d SET instance = %(instance)s
    FROM run WHERE d.run_id = run.run_id
    RETURNING d.run_id
), ended AS (
    DELETE FROM hephaestus_wakeups
    WHERE run_id = %(run_id)s AND EXISTS (SELECT 1 FROM run)
    RETURNING seq
)
SELECT run_id, ARRAY(SELECT seq FROM ended WHERE seq = ANY(%(seqs)s::bigint[])) FROM document;

-- held_key --
-- After a fenced write changed nothing: the stored identity if the lease is held.
SELECT unique_key, id, workflow, workflow_version FROM hephaestus_runs
WHERE run_id = %(run_id)s AND owner = %(owner)s AND lease_epoch = %(epoch)s
    AND status IN ('pending', 'running', 'waiting');

-- get_run --
-- One run's JSON document and its pending timers (step, event, due_at), in seq order.
SELECT d.instance,
    COALESCE((SELECT array_agg(w.step ORDER BY w.seq) FROM hephaestus_wakeups AS w
              WHERE w.run_id = d.run_id AND w.kind = 'timer'), '{}'),
    COALESCE((SELECT array_agg(w.event ORDER BY w.seq) FROM hephaestus_wakeups AS w
              WHERE w.run_id = d.run_id AND w.kind = 'timer'), '{}'),
    COALESCE((SELECT array_agg(w.due_at ORDER BY w.seq) FROM hephaestus_wakeups AS w
              WHERE w.run_id = d.run_id AND w.kind = 'timer'), '{}')
FROM hephaestus_documents AS d WHERE d.run_id = %(run_id)s;

-- select_runs --
-- Runs' ids and documents; the caller appends WHERE and the ORDER BY below.
SELECT r.run_id, d.instance FROM hephaestus_runs AS r
JOIN hephaestus_documents AS d ON d.run_id = r.run_id

-- order_runs --
-- The one order query() returns.
ORDER BY r.created_at, r.run_id

-- limit_runs --
-- query(limit=...): appended after order_runs.
LIMIT %(limit)s

-- summary --
-- summary()'s aggregates in ONE statement (one snapshot): counts by (workflow, status)
-- as three arrays, the oldest waiting run, the due timers and the next one.
SELECT
    (SELECT COALESCE(array_agg(c.workflow ORDER BY c.workflow, c.status), '{}')
     FROM (SELECT workflow, status FROM hephaestus_runs GROUP BY workflow, status) AS c),
    (SELECT COALESCE(array_agg(c.status ORDER BY c.workflow, c.status), '{}')
     FROM (SELECT workflow, status FROM hephaestus_runs GROUP BY workflow, status) AS c),
    (SELECT COALESCE(array_agg(c.n ORDER BY c.workflow, c.status), '{}')
     FROM (SELECT workflow, status, count(*) AS n FROM hephaestus_runs
           GROUP BY workflow, status) AS c),
    (SELECT ARRAY[run_id, id, workflow] FROM hephaestus_runs WHERE status = 'waiting'
     ORDER BY created_at, run_id LIMIT 1),
    (SELECT ARRAY[created_at, updated_at] FROM hephaestus_runs WHERE status = 'waiting'
     ORDER BY created_at, run_id LIMIT 1),
    (SELECT count(*) FROM hephaestus_wakeups
     WHERE kind = 'timer' AND due_at <= COALESCE(%(now)s::timestamptz, now())),
    (SELECT min(due_at) FROM hephaestus_wakeups
     WHERE kind = 'timer' AND due_at <= COALESCE(%(now)s::timestamptz, now())),
    (SELECT min(due_at) FROM hephaestus_wakeups
     WHERE kind = 'timer' AND due_at > COALESCE(%(now)s::timestamptz, now()));

-- timers_of_runs --
-- The pending timer wakeups of many runs, in seq order.
SELECT run_id, step, event, due_at FROM hephaestus_wakeups
WHERE kind = 'timer' AND run_id = ANY(%(run_ids)s::text[])
ORDER BY seq;

-- delete_run --
-- Remove one run; its document, wakeups and dedup keys go with it (ON DELETE CASCADE).
DELETE FROM hephaestus_runs WHERE run_id = %(run_id)s;

-- purge_runs --
-- Terminal runs last updated before a cutoff, with everything of theirs (cascade).
DELETE FROM hephaestus_runs
WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < %(older_than)s;

-- purge_lock --
-- Only one engine purges at a time: a transaction-level advisory lock, or false.
SELECT pg_try_advisory_xact_lock(%(key)s::bigint);

-- claim --
-- Take up to :limit runs that need a driver and are free, in ONE statement: the
-- SKIP LOCKED pick and the lease (epoch + 1) together. Takeover of an expired
-- lease is the same case. Rows come back with the order key of the pick.
WITH picked AS (
    SELECT run_id,
        (CASE WHEN owner IS NULL THEN wake_at ELSE GREATEST(wake_at, lease_expires_at) END)
            AS claim_at
    FROM hephaestus_runs
    WHERE status IN ('pending', 'running', 'waiting') AND wake_at IS NOT NULL
        AND (CASE WHEN owner IS NULL THEN wake_at ELSE GREATEST(wake_at, lease_expires_at) END)
            <= COALESCE(%(now)s::timestamptz, now())
        AND (%(any_workflow)s OR (workflow, workflow_version) IN (
            SELECT * FROM unnest(%(wf_names)s::text[], %(wf_versions)s::integer[])))
        AND (%(any_run)s OR run_id = ANY(%(run_ids)s::text[]))
    ORDER BY 2, created_at, run_id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE hephaestus_runs AS r SET
    owner = %(owner)s,
    lease_epoch = r.lease_epoch + 1,
    lease_expires_at = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(ttl)s::float8)
FROM picked
WHERE r.run_id = picked.run_id
RETURNING r.run_id, r.lease_epoch, r.lease_expires_at, picked.claim_at, r.created_at;

-- renew --
-- Extend, in ONE statement, every lease still held exactly as given, and beat the heart.
WITH beat AS (
    UPDATE hephaestus_engines SET last_heartbeat = COALESCE(%(now)s::timestamptz, now())
    WHERE engine_id = %(owner)s
)
UPDATE hephaestus_runs AS r SET
    lease_expires_at = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(ttl)s::float8)
FROM unnest(%(run_ids)s::text[], %(epochs)s::bigint[]) AS held(run_id, epoch)
WHERE r.run_id = held.run_id AND r.lease_epoch = held.epoch AND r.owner = %(owner)s
    AND r.status IN ('pending', 'running', 'waiting')
RETURNING r.run_id, r.lease_epoch, r.lease_expires_at;

-- release --
-- The fenced release. A wakeup above what the owner saw keeps the run claimable now.
UPDATE hephaestus_runs SET
    owner = NULL,
    lease_expires_at = NULL,
    wake_at = CASE WHEN wakeup_seq > %(seen)s THEN COALESCE(%(now)s::timestamptz, now())
        ELSE %(wake_at)s::timestamptz END
WHERE run_id = %(run_id)s AND owner = %(owner)s AND lease_epoch = %(epoch)s
    AND status IN ('pending', 'running', 'waiting')
RETURNING wakeup_seq > %(seen)s;

-- release_all --
-- Clean shutdown: every live run of an owner becomes claimable at once.
UPDATE hephaestus_runs SET
    owner = NULL, lease_expires_at = NULL, wake_at = COALESCE(%(now)s::timestamptz, now())
WHERE owner = %(owner)s AND status IN ('pending', 'running', 'waiting');

-- next_wake --
-- Earliest time a live run not held by :owner may become claimable (no row: none).
SELECT (CASE WHEN owner IS NULL THEN wake_at ELSE GREATEST(wake_at, lease_expires_at) END)
FROM hephaestus_runs
WHERE status IN ('pending', 'running', 'waiting') AND wake_at IS NOT NULL
    AND (owner IS NULL OR owner <> %(owner)s)
    AND (%(any_workflow)s OR (workflow, workflow_version) IN (
        SELECT * FROM unnest(%(wf_names)s::text[], %(wf_versions)s::integer[])))
ORDER BY 1
LIMIT 1;

-- register_engine --
-- Record a running engine (metadata; its heartbeat starts now).
INSERT INTO hephaestus_engines (engine_id, host, pid, started_at, last_heartbeat, info)
VALUES (%(engine_id)s, %(host)s, %(pid)s, %(started_at)s, COALESCE(%(now)s::timestamptz, now()),
    %(info)s)
ON CONFLICT (engine_id) DO UPDATE SET
    host = excluded.host,
    pid = excluded.pid,
    started_at = excluded.started_at,
    last_heartbeat = excluded.last_heartbeat,
    info = excluded.info;

-- same_host_and_pid --
-- Engines registered with the new engine's host and pid that are not engines of this
-- very process (:alive_here): their process is gone, its pid reused by the new one.
DELETE FROM hephaestus_engines
WHERE host = %(host)s AND pid = %(pid)s AND engine_id <> %(engine_id)s
    AND NOT (engine_id = ANY(%(alive_here)s::text[]))
RETURNING engine_id;

-- expire_owners --
-- Dead engines' leases lapse now, so their live runs are claimable at once.
UPDATE hephaestus_runs SET lease_expires_at = COALESCE(%(now)s::timestamptz, now())
WHERE owner = ANY(%(owners)s::text[]) AND status IN ('pending', 'running', 'waiting');

-- unregister_engine --
-- Forget an engine.
DELETE FROM hephaestus_engines WHERE engine_id = %(engine_id)s;

-- engines --
-- Every registered engine with how many live runs it holds, by engine_id.
SELECT e.engine_id, e.host, e.pid, e.started_at, e.last_heartbeat,
    (SELECT count(*) FROM hephaestus_runs AS r
     WHERE r.owner = e.engine_id AND r.status IN ('pending', 'running', 'waiting'))
FROM hephaestus_engines AS e
ORDER BY e.engine_id;

-- lock_run --
-- add_wakeup: lock the run's row and read what decides whether the wakeup is recorded.
SELECT r.status,
    EXISTS (SELECT 1 FROM hephaestus_resume_dedup AS k
            WHERE k.run_id = r.run_id AND k.dedup_key = %(dedup_key)s::text),
    EXISTS (SELECT 1 FROM hephaestus_wakeups AS w
            WHERE w.run_id = r.run_id AND w.kind = 'resume' AND w.step = %(step)s::text),
    (SELECT count(*) FROM hephaestus_wakeups AS w
     WHERE w.run_id = r.run_id AND w.kind = 'resume'),
    EXISTS (SELECT 1 FROM hephaestus_wakeups AS w
            WHERE w.run_id = r.run_id AND w.kind = 'cancel')
FROM hephaestus_runs AS r
WHERE r.run_id = %(run_id)s
FOR NO KEY UPDATE OF r;

-- insert_wakeup --
-- Record one wakeup (the run's row is locked), its dedup key, and wake the run by its due time.
WITH added AS (
    INSERT INTO hephaestus_wakeups
        (run_id, kind, step, event, payload, dedup_key, due_at, created_at, trace_context)
    VALUES (%(run_id)s, %(kind)s, %(step)s, %(event)s, %(payload)s, %(dedup_key)s, %(due_at)s,
        %(created_at)s, %(trace_context)s)
    RETURNING seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at,
        trace_context
), remembered AS (
    INSERT INTO hephaestus_resume_dedup (run_id, dedup_key)
    SELECT %(run_id)s, %(dedup_key)s::text
    WHERE %(dedup_key)s::text IS NOT NULL AND %(kind)s = 'resume'
), woken AS (
    UPDATE hephaestus_runs SET
        wake_at = LEAST(wake_at, CASE WHEN %(kind)s = 'timer' OR %(now)s::timestamptz IS NOT NULL
            THEN %(due_at)s::timestamptz ELSE now() END),
        wakeup_seq = (SELECT seq FROM added)
    WHERE run_id = %(run_id)s
)
SELECT * FROM added;

-- dedup_seen --
-- Whether a resume dedup key was ever recorded for the run.
SELECT 1 FROM hephaestus_resume_dedup WHERE run_id = %(run_id)s AND dedup_key = %(dedup_key)s;

-- wakeups_of_run --
-- One run's unapplied wakeups, in seq order.
SELECT seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at, trace_context
FROM hephaestus_wakeups WHERE run_id = %(run_id)s ORDER BY seq;

-- cancel_timer --
-- Delete one pending timer wakeup (no row: already applied or dropped).
DELETE FROM hephaestus_wakeups
WHERE seq = %(seq)s AND run_id = %(run_id)s AND kind = 'timer'
RETURNING seq;

-- owned_wakeups --
-- (run_id, highest seq) of runs :owner holds with wakeups above :after or written by a
-- transaction still in flight at the previous call (:previous, a pg_snapshot), as two
-- arrays, and this statement's snapshot: always exactly one row.
SELECT pg_current_snapshot()::text,
    COALESCE(array_agg(found.run_id ORDER BY found.run_id), '{}'),
    COALESCE(array_agg(found.top ORDER BY found.run_id), '{}')
FROM (
    SELECT w.run_id, max(w.seq) AS top
    FROM hephaestus_wakeups AS w
    JOIN hephaestus_runs AS r ON r.run_id = w.run_id
    WHERE r.owner = %(owner)s
        AND (w.seq > %(after)s OR (%(previous)s::pg_snapshot IS NOT NULL
            AND NOT pg_visible_in_snapshot(w.xid, %(previous)s::pg_snapshot)))
    GROUP BY w.run_id
) AS found;

-- notify --
-- The coalesced change hint; the payload is the sender's id only (it ignores its own).
SELECT pg_notify('hephaestus_changes', %(sender)s);
