-- Version 6, fair share. Micro-batches wait in the store, and the store picks the next one to
-- run by share (see `ops.store.dispatch`): the broker carries only a bounded window of
-- anonymous "run the next micro-batch" messages, one row each in `dispatch_tokens` (a row whose
-- message was lost is dropped after BEMQ_REQUEUE_AFTER_SECONDS and its place refilled).
-- `tenants`: a tenant's weight (configuration; backed up). `dispatch_shares`: each tenant's
-- virtual time; `dispatch`: the lock every claim takes and its count (`turns`), and the virtual
-- time of the last forward begun (`clock`), which a tenant with new work starts from (live
-- state; not backed up). A job's `priority` orders a tenant's own jobs; `dispatched_at` is when one of its
-- micro-batches last went out (a tenant's jobs of one priority take turns). A micro-batch's
-- `not_before`: a micro-batch given back after an outage waits out its backoff.
CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY,
    weight DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dispatch_shares (
    tenant TEXT PRIMARY KEY,
    pass DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS dispatch (
    name TEXT PRIMARY KEY,
    value DOUBLE PRECISION NOT NULL
);
INSERT INTO dispatch (name, value) VALUES ('turns', 0), ('clock', 0) ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS dispatch_tokens (
    id TEXT PRIMARY KEY,
    due_at DOUBLE PRECISION NOT NULL
);
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN dispatched_at DOUBLE PRECISION;
ALTER TABLE micro_batches ADD COLUMN not_before DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS micro_batches_queued ON micro_batches (job_id, seq) WHERE state = 'queued'
