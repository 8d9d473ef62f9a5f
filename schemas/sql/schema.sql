-- bemq store schema, for PostgreSQL and SQLite alike (SQLite maps BIGINT and DOUBLE PRECISION
-- to its INTEGER and REAL affinities). Applied at start-up, idempotently.
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
