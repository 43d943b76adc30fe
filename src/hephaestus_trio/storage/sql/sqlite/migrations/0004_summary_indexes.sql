-- Migration 0004: indexes for summary() and paged queries (user_version 3 -> 4).
--
-- summary() counts runs by workflow and status and counts the timers due at
-- a given time, in SQL and from indexes only (no document is read): an
-- operator may run it against a large database while engines run.

-- summary() counts runs by (workflow, status) from this index alone (no
-- document is read); query(workflow=...) walks it in the (created_at, run_id)
-- order it returns, from a keyset cursor, checking status in the index.
CREATE INDEX hephaestus_runs_workflow_created_idx
    ON hephaestus_runs (workflow, created_at, run_id, status);

-- summary(): pending timers by due time (how many are due, the next one).
CREATE INDEX hephaestus_wakeups_timer_due_idx
    ON hephaestus_wakeups (due_at)
    WHERE kind = 'timer';
