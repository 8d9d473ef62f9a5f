-- Version 7, drift windows over finished work. A job's micro-batches run in length order, so
-- the features of a job still running are a length-sorted sample of it. A feature row now
-- names its job and counts in a drift window only from `ready_at`: the time its job completed
-- (rows of a cancelled, expired or failed job are deleted). Rows stored before this step were
-- read by the time they were written, as before.
ALTER TABLE features ADD COLUMN job_id TEXT;
ALTER TABLE features ADD COLUMN ready_at DOUBLE PRECISION;
UPDATE features SET ready_at = at;
CREATE INDEX IF NOT EXISTS features_ready ON features (model, reference, kind, ready_at);
CREATE INDEX IF NOT EXISTS features_job ON features (job_id);
