-- Version 3, the baseline: the schema every store had before numbered migrations (stores made
-- then record version 3). Later versions are the files after this one; never edit an applied
-- step, add one. SQL for PostgreSQL and SQLite alike (SQLite maps BIGINT and DOUBLE PRECISION to
-- its INTEGER and REAL affinities).
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    input_file_id TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    completion_window TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    in_progress_at BIGINT,
    expires_at BIGINT,
    finalizing_at BIGINT,
    completed_at BIGINT,
    failed_at BIGINT,
    expired_at BIGINT,
    cancelling_at BIGINT,
    cancelled_at BIGINT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    micro_batches INTEGER NOT NULL DEFAULT 0,
    errors TEXT,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);

CREATE TABLE IF NOT EXISTS micro_batches (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    items TEXT NOT NULL,
    rows INTEGER NOT NULL,
    real_tokens INTEGER NOT NULL,
    padded_tokens INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    enqueued_at DOUBLE PRECISION,
    lease_until DOUBLE PRECISION,
    worker TEXT,
    n_ok INTEGER NOT NULL DEFAULT 0,
    n_err INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS micro_batches_state ON micro_batches (state, lease_until);

CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    blob_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    queues TEXT NOT NULL,
    device TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS adapters (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    experts INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    created_at BIGINT NOT NULL
);

-- Canary weight changes: one row per canary, one row per decision with the numbers behind it,
-- and one row per routed item's outcome (the gates' samples), per step.
CREATE TABLE IF NOT EXISTS canaries (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    stable TEXT NOT NULL,
    canary TEXT NOT NULL,
    steps TEXT NOT NULL,
    step INTEGER NOT NULL,
    weight DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    min_samples INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    step_started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS canaries_state ON canaries (state, stable);

CREATE TABLE IF NOT EXISTS canary_decisions (
    canary_id TEXT NOT NULL REFERENCES canaries (id) ON DELETE CASCADE,
    at DOUBLE PRECISION NOT NULL,
    step INTEGER NOT NULL,
    weight DOUBLE PRECISION NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    numbers TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS canary_decisions_at ON canary_decisions (canary_id, at);

CREATE TABLE IF NOT EXISTS canary_samples (
    canary_id TEXT NOT NULL REFERENCES canaries (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    arm TEXT NOT NULL,
    error INTEGER NOT NULL,
    violation TEXT,
    latency DOUBLE PRECISION,
    stable_latency DOUBLE PRECISION,
    agreement DOUBLE PRECISION,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS canary_samples_step ON canary_samples (canary_id, step);

-- Drift: bounded feature samples written with each micro-batch's completion (reference = 1 for
-- the pinned baseline's copies), the baseline marker per model, and the reports.
CREATE TABLE IF NOT EXISTS features (
    at DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    adapter TEXT NOT NULL,
    reference INTEGER NOT NULL,
    sample_key DOUBLE PRECISION NOT NULL,  -- u^(1/weight): the top keys are a weighted sample
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS features_window ON features (model, reference, kind, at);

CREATE TABLE IF NOT EXISTS drift_baselines (
    model TEXT PRIMARY KEY,
    pinned_at DOUBLE PRECISION,
    pending_since DOUBLE PRECISION,
    reason TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS drift_reports (
    id TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    alerts INTEGER NOT NULL,
    severe INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_reports_at ON drift_reports (model, at DESC)
;

-- HTTP gateway: API keys (only a hash is kept), token buckets for the embedded deployment
-- (Redis holds them otherwise), and online requests for the embedded deployment.
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);

CREATE TABLE IF NOT EXISTS rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS online_requests (
    id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    taken INTEGER NOT NULL DEFAULT 0,
    result TEXT
);
CREATE INDEX IF NOT EXISTS online_requests_queue ON online_requests (taken, enqueued_at)
