-- PostgreSQL migration 0001: the initial schema (version 0 -> 1).
--
-- Applied by PostgresStorage.open() inside one transaction that holds the
-- advisory lock of the schema (two engines opening a fresh database at once
-- migrate it once). The version lives in hephaestus_schema_version, which the
-- opener creates; migrations never touch it.
--
-- Text columns that are compared or ordered (ids, keys, owners) use the "C"
-- collation: byte order, whatever the database's locale, so query() and
-- claim() order runs exactly as SQLite does and the indexes stay cheap.
-- Times are timestamptz (instants); the storage reads them back in UTC.

-- The hot row of a run: every column a claim, a renewal, a release or a
-- fenced write compares or sets, and nothing else. The large state document
-- lives in hephaestus_documents, so the frequent lease updates (renewals
-- every few seconds, claims, releases) rewrite a narrow tuple and never copy
-- or re-TOAST the document.
--   owner, lease_epoch, lease_expires_at: the engine holding the run, the
--     fencing token every claim bumps, and when the lease lapses (owner NULL:
--     unowned; a terminal run is never owned);
--   wake_at: when the run next needs a driver (NULL: only a wakeup can wake it);
--   wakeup_seq: the highest seq of any wakeup ever added to the run (the
--     "seen" mark a release compares with: a wakeup above what the owner saw
--     keeps the run claimable). add_wakeup sets it under the run's row lock,
--     so a release racing an add_wakeup re-reads it (EvalPlanQual) and never
--     hibernates a run whose wakeup it did not see.
CREATE TABLE hephaestus_runs (
    run_id text COLLATE "C" NOT NULL PRIMARY KEY,
    id text COLLATE "C" NOT NULL,
    workflow text COLLATE "C" NOT NULL,
    workflow_version integer NOT NULL,
    status text NOT NULL
        CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    unique_key text COLLATE "C",
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    owner text COLLATE "C",
    lease_epoch bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    wake_at timestamptz,
    wakeup_seq bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

-- The run's state: the JSON document (the source of truth, stored with an
-- empty "timers": the run's timers are its timer rows in hephaestus_wakeups).
-- text, not jsonb: the document is only ever read whole, text keeps it
-- byte for byte (jsonb reorders object keys), costs no parse on write, and is
-- compressed by TOAST all the same once it is large.
CREATE TABLE hephaestus_documents (
    run_id text COLLATE "C" NOT NULL PRIMARY KEY
        REFERENCES hephaestus_runs (run_id) ON DELETE CASCADE,
    instance text NOT NULL
);

-- Uniqueness among live runs only: a completed, failed or cancelled run drops
-- out of the index and frees its key. create() inserts with ON CONFLICT DO
-- NOTHING and reports the live holder when nothing was inserted.
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
        (CASE WHEN owner IS NULL THEN wake_at ELSE GREATEST(wake_at, lease_expires_at) END),
        created_at,
        run_id
    )
    WHERE status IN ('pending', 'running', 'waiting') AND wake_at IS NOT NULL;

-- release_all(), owned_wakeups(), renew() and reaping: the runs an engine holds.
CREATE INDEX hephaestus_runs_owner_idx ON hephaestus_runs (owner) WHERE owner IS NOT NULL;

-- Recorded, not yet applied wakeups (resumes, timers, cancel requests) of
-- live runs. seq comes from one identity sequence: it increases across the
-- whole database and is never reused. Every insert first locks the run's row,
-- so the wakeups of one run commit in seq order. xid is the inserting
-- transaction: owned_wakeups() uses it to report a wakeup whose transaction
-- was still in flight at the previous call (a lower seq committing after a
-- higher one of another run). payload and trace_context are JSON text.
CREATE TABLE hephaestus_wakeups (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text COLLATE "C" NOT NULL REFERENCES hephaestus_runs (run_id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('resume', 'timer', 'cancel')),
    step text COLLATE "C",
    event text,
    payload text,
    dedup_key text,
    due_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    trace_context text,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);

-- wakeups(), and every "the wakeups of this run" statement.
CREATE INDEX hephaestus_wakeups_run_idx ON hephaestus_wakeups (run_id, seq);

-- summary(): pending timers by due time (how many are due, the next one).
CREATE INDEX hephaestus_wakeups_timer_due_idx ON hephaestus_wakeups (due_at)
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
    run_id text COLLATE "C" NOT NULL REFERENCES hephaestus_runs (run_id) ON DELETE CASCADE,
    dedup_key text COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, dedup_key)
);

-- Engines registered on this database: metadata for the engines listing, and
-- (host, pid) to prove an engine dead when a new one registers with the same
-- pair (the pid was reused on that host by the new process). Takeover never
-- depends on this table: it is decided by each run's own lease expiry.
CREATE TABLE hephaestus_engines (
    engine_id text COLLATE "C" NOT NULL PRIMARY KEY,
    host text COLLATE "C",
    pid integer,
    started_at timestamptz NOT NULL,
    last_heartbeat timestamptz,
    info text NOT NULL
);

CREATE INDEX hephaestus_engines_host_pid_idx ON hephaestus_engines (host, pid);
