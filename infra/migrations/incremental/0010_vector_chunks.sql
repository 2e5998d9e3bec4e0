-- A batch's vectors are written in chunks (backfill_write_vectors in
-- ../idempotent/), each its own transaction that records what it wrote on the
-- batch row; the completion counts those rows once.

-- Rows given a vector by chunks of this batch, not yet in the run's counters.
ALTER TABLE public.backfill_batches ADD COLUMN IF NOT EXISTS documents_written integer NOT NULL DEFAULT 0;
