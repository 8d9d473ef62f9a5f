-- Version 4, data lifecycle. A file's `expires_at` (OpenAI's; NULL = kept until deleted): past
-- it the file answers 404 and `retention.run` removes its bytes, then its row. A job's
-- `output_expires_after`: seconds its output and error files live once written. A job's
-- `shards_cleared`: its per-micro-batch output shards were removed after its files were written
-- (0 on jobs from before this version, so their shards are removed too).
ALTER TABLE files ADD COLUMN expires_at BIGINT;
CREATE INDEX IF NOT EXISTS files_expires ON files (expires_at);
CREATE INDEX IF NOT EXISTS files_tenant_created ON files (tenant, created_at DESC, id DESC);
ALTER TABLE jobs ADD COLUMN output_expires_after BIGINT;
ALTER TABLE jobs ADD COLUMN shards_cleared INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS canary_samples_at ON canary_samples (at);
CREATE INDEX IF NOT EXISTS features_at ON features (at);
CREATE INDEX IF NOT EXISTS drift_reports_time ON drift_reports (at);
CREATE INDEX IF NOT EXISTS online_requests_enqueued ON online_requests (enqueued_at);
CREATE INDEX IF NOT EXISTS workers_last_seen ON workers (last_seen)
