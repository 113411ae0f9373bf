-- apalis-postgres's idempotency index, (job_type, idempotency_key) over
-- every job, becomes an index over the jobs that have a key.
--
-- The action queue's jobs carry no idempotency key, yet each of them had an
-- entry in this index for every version of its row: the insert, the
-- fetch's update and the ack's update (neither update can be HOT: both
-- change `status`, which the fetch and live-lock indexes' predicates name),
-- three index insertions per job, and an index as large as the table's
-- history. A unique index never compares NULLs as equal, so the partial
-- index refuses exactly the duplicates the full one refused; no apalis
-- query names it (its insert has no ON CONFLICT).
CREATE UNIQUE INDEX idx_jobs_idempotency_key_keyed ON apalis.jobs (job_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX apalis.idx_jobs_idempotency_key;
ALTER INDEX apalis.idx_jobs_idempotency_key_keyed RENAME TO idx_jobs_idempotency_key;
