-- Version 5, the host path. A micro-batch's `tokens`: its texts' word-piece ids, packed at
-- submit time (see `schemas.tokens`), so a worker never tokenizes again (NULL on micro-batches
-- stored before this version: the worker tokenizes their texts as before). `claimed_at` and
-- `completed_at`: when it was last claimed and when it completed (per-micro-batch latency and
-- throughput are read from them). `claims`: every claim of its lease (the guard that lets only
-- one of two racing claims win). `deliveries` now counts forwards begun on it, and
-- `finished_forwards` those that ran to their end: a worker claims ahead of its forward, so a
-- micro-batch counts against `BEMQ_MAX_DELIVERIES` only for forwards its worker died in, not
-- for being held while another micro-batch's forward crashed the process.
ALTER TABLE micro_batches ADD COLUMN tokens BYTEA;
ALTER TABLE micro_batches ADD COLUMN claimed_at DOUBLE PRECISION;
ALTER TABLE micro_batches ADD COLUMN completed_at DOUBLE PRECISION;
ALTER TABLE micro_batches ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
ALTER TABLE micro_batches ADD COLUMN finished_forwards INTEGER NOT NULL DEFAULT 0
