-- Schema 3: wakeups carry the trace context of whoever added them, and
-- engines record their last heartbeat (for the engines command).

ALTER TABLE hephaestus_wakeups ADD COLUMN trace_context TEXT;

ALTER TABLE hephaestus_engines ADD COLUMN last_heartbeat TEXT;
