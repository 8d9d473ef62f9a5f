-- Version 5, the host path. A micro-batch's `tokens`: its texts' word-piece ids, packed at
-- submit time (see `schemas.tokens`), so a worker never tokenizes again (NULL on micro-batches
-- stored before this version: the worker tokenizes their texts as before). `claimed_at` and
-- `completed_at`: when it was last claimed and when it completed (per-micro-batch latency and
-- throughput are read from them).
ALTER TABLE micro_batches ADD COLUMN tokens BYTEA;
ALTER TABLE micro_batches ADD COLUMN claimed_at DOUBLE PRECISION;
ALTER TABLE micro_batches ADD COLUMN completed_at DOUBLE PRECISION
