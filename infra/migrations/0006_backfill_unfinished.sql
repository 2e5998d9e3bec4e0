-- Every batch of a run that has not ended, for `backfill retry-failed --unfinished`:
-- the way out for a run whose messages are gone (a last delivery that crashed,
-- dead letters that expired) while some of its batches never finished.
CREATE OR REPLACE FUNCTION public.backfill_unfinished_batches(p_run_id uuid)
RETURNS TABLE (seq integer, first_id bigint, last_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.seq, b.first_id, b.last_id FROM public.backfill_batches b
    WHERE b.run_id = p_run_id AND b.state NOT IN ('done', 'done_with_failures')
    ORDER BY b.seq
$$;

REVOKE ALL ON FUNCTION public.backfill_unfinished_batches(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.backfill_unfinished_batches(uuid) TO service_role;
