-- A text is embedded once: a row whose text is identical to one already
-- embedded with the same model, dimensions and policy gets that vector
-- copied (backfill_copy_vectors in ../idempotent/), and so does a second row
-- of the same text within a batch. Copies count as embedded; these say how
-- many of them were copies and what the API was not paid for.
ALTER TABLE public.backfill_runs ADD COLUMN IF NOT EXISTS documents_copied bigint NOT NULL DEFAULT 0;
ALTER TABLE public.backfill_runs ADD COLUMN IF NOT EXISTS tokens_saved bigint NOT NULL DEFAULT 0;
-- Copies written by this batch's deliveries and not yet in the run's
-- counters, like documents_written.
ALTER TABLE public.backfill_batches ADD COLUMN IF NOT EXISTS documents_copied integer NOT NULL DEFAULT 0;
ALTER TABLE public.backfill_batches ADD COLUMN IF NOT EXISTS tokens_saved bigint NOT NULL DEFAULT 0;
