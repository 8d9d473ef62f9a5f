-- Version 8, online admission by deadline. A worker serving online requests records with its
-- heartbeat the rate it has been answering them at (requests per second while busy, a moving
-- average); the gateway sums the live workers' rates to tell how long a new request would wait
-- behind the queue, and refuses one that would wait past its deadline. NULL: not measured yet.
ALTER TABLE workers ADD COLUMN online_rps DOUBLE PRECISION
