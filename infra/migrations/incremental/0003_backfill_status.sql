-- Status of backfill runs: one row per run, one row per batch (one SQS message).
-- Only service_role may touch them; RLS with no policies keeps anon and
-- authenticated out even if someone later grants them table privileges.
CREATE TABLE IF NOT EXISTS public.backfill_runs (
    id uuid PRIMARY KEY,
    params jsonb NOT NULL,
    archive text,
    state text NOT NULL DEFAULT 'dispatching'
        CHECK (state IN ('dispatching', 'running', 'completed', 'completed_with_errors', 'failed')),
    cursor_id bigint,
    next_seq integer NOT NULL DEFAULT 0,
    total_documents bigint NOT NULL DEFAULT 0,
    total_batches integer NOT NULL DEFAULT 0,
    batches_done integer NOT NULL DEFAULT 0,
    batches_failed integer NOT NULL DEFAULT 0,
    documents_embedded bigint NOT NULL DEFAULT 0,
    documents_skipped bigint NOT NULL DEFAULT 0,
    documents_failed bigint NOT NULL DEFAULT 0,
    tokens_used bigint NOT NULL DEFAULT 0,
    estimated_tokens bigint NOT NULL DEFAULT 0,
    price_per_million_tokens numeric NOT NULL,
    estimated_cost_usd numeric GENERATED ALWAYS AS (estimated_tokens * price_per_million_tokens / 1000000) STORED,
    actual_cost_usd numeric GENERATED ALWAYS AS (tokens_used * price_per_million_tokens / 1000000) STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz,
    finished_at timestamptz,
    last_error text
);

CREATE INDEX IF NOT EXISTS backfill_runs_created_at_idx ON public.backfill_runs (created_at DESC);

CREATE TABLE IF NOT EXISTS public.backfill_batches (
    run_id uuid NOT NULL REFERENCES public.backfill_runs (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    ids bigint[] NOT NULL,
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    estimated_tokens bigint NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'queued', 'running', 'retrying', 'done', 'done_with_failures', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    documents_embedded integer NOT NULL DEFAULT 0,
    documents_skipped integer NOT NULL DEFAULT 0,
    documents_failed integer NOT NULL DEFAULT 0,
    tokens bigint NOT NULL DEFAULT 0,
    failed_documents jsonb NOT NULL DEFAULT '[]',
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (run_id, seq)
);

CREATE INDEX IF NOT EXISTS backfill_batches_open_idx ON public.backfill_batches (run_id, state)
    WHERE state NOT IN ('done', 'done_with_failures');

ALTER TABLE public.backfill_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.backfill_batches ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON public.backfill_runs, public.backfill_batches FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.backfill_runs, public.backfill_batches TO service_role;
