-- Batch mode: a run's batches go to the provider's Batch API in jobs (one
-- input file and one Batch API batch each) instead of one SQS message each.
-- The dispatcher fills jobs in batch order; the poller submits the ready
-- ones while the account's queue has room and collects the finished ones
-- (functions in ../idempotent/005_jobs.sql).
CREATE TABLE IF NOT EXISTS public.backfill_jobs (
    run_id uuid NOT NULL REFERENCES public.backfill_runs (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    -- open: still taking batches from the dispatch; ready: to be submitted;
    -- submitted: at the provider; done: collected; failed: the provider
    -- refused or cancelled it, its batches failed with the reason.
    state text NOT NULL DEFAULT 'open'
        CHECK (state IN ('open', 'ready', 'submitted', 'done', 'failed')),
    documents integer NOT NULL DEFAULT 0,
    estimated_tokens bigint NOT NULL DEFAULT 0,
    input_file_id text,
    -- The Batch API's id and status as last seen, with its line counts.
    batch_id text,
    provider_status text,
    lines_total integer NOT NULL DEFAULT 0,
    lines_completed integer NOT NULL DEFAULT 0,
    lines_failed integer NOT NULL DEFAULT 0,
    -- Jobs at the provider when this one was created: if the provider
    -- refuses it for its queued-token limit, it waits until fewer are
    -- (blocked_behind), or, refused with none ahead, is halved.
    queued_before integer,
    blocked_behind integer,
    attempts integer NOT NULL DEFAULT 0,
    leased_until timestamptz,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- When the latest submission began: a crashed one's Batch API batch was
    -- created after it, which bounds the search for it.
    submitting_since timestamptz,
    submitted_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);

CREATE INDEX IF NOT EXISTS backfill_jobs_open_idx ON public.backfill_jobs (state, run_id, seq)
    WHERE state IN ('open', 'ready', 'submitted');

-- The job a batch is in, and what its line(s) of the job's input file hold:
-- each document's text hash and inputs, so the vectors that come back are
-- written with the hash of the text they were made from.
ALTER TABLE public.backfill_batches ADD COLUMN IF NOT EXISTS job integer;
ALTER TABLE public.backfill_batches ADD COLUMN IF NOT EXISTS plan jsonb;

ALTER TABLE public.backfill_jobs ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.backfill_jobs FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.backfill_jobs TO service_role;
