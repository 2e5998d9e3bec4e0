-- Recovery that holds at scale, its table part: a lease on the batch row and
-- the tokens billed. Its functions are in ../idempotent/.

-- A delivery holds its batch until this time (its invocation's deadline); a
-- second delivery meanwhile calls nothing and comes back later.
ALTER TABLE public.backfill_batches ADD COLUMN IF NOT EXISTS leased_until timestamptz;

-- Tokens the API charged for the run, failed and duplicated attempts too; the
-- cost is what was billed, not what the embedded documents needed.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = 'public.backfill_runs'::regclass AND attname = 'tokens_billed' AND NOT attisdropped
    ) THEN
        ALTER TABLE public.backfill_runs ADD COLUMN tokens_billed bigint NOT NULL DEFAULT 0;
        UPDATE public.backfill_runs SET tokens_billed = tokens_used;
        ALTER TABLE public.backfill_runs DROP COLUMN actual_cost_usd;
        ALTER TABLE public.backfill_runs ADD COLUMN actual_cost_usd numeric
            GENERATED ALWAYS AS (tokens_billed * price_per_million_tokens / 1000000) STORED;
    END IF;
END $$;
