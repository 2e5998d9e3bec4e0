-- One active run per archive: a dispatch whose archive filter overlaps a run
-- still dispatching or running on the same table is refused unless forced. A
-- filter of NULL (all archives) overlaps every other.
CREATE OR REPLACE FUNCTION public.backfill_schema_version()
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 5 $$;

DROP FUNCTION IF EXISTS public.backfill_create_run(uuid, jsonb, numeric, text);

CREATE OR REPLACE FUNCTION public.backfill_create_run(
    p_run_id uuid, p_params jsonb, p_price_per_million_tokens numeric,
    p_archive text DEFAULT NULL, p_force boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_active uuid;
BEGIN
    -- Serialises concurrent dispatches, so two cannot both see no active run.
    PERFORM pg_advisory_xact_lock(hashtext('backfill_create_run'));
    IF EXISTS (SELECT FROM public.backfill_runs WHERE id = p_run_id) THEN
        RETURN public.backfill_run_json(p_run_id);
    END IF;
    IF NOT p_force THEN
        SELECT id INTO v_active FROM public.backfill_runs
        WHERE state IN ('dispatching', 'running')
          AND (archive IS NULL OR p_archive IS NULL OR archive = p_archive)
          AND params -> 'target' IS NOT DISTINCT FROM p_params -> 'target'
        ORDER BY created_at DESC LIMIT 1;
        IF FOUND THEN
            RETURN jsonb_build_object('conflict', public.backfill_run_json(v_active));
        END IF;
    END IF;
    INSERT INTO public.backfill_runs (id, params, archive, price_per_million_tokens)
    VALUES (p_run_id, p_params, p_archive, p_price_per_million_tokens);
    RETURN public.backfill_run_json(p_run_id);
END $$;

DROP FUNCTION IF EXISTS public.backfill_pending_batches(uuid);

CREATE OR REPLACE FUNCTION public.backfill_pending_batches(p_run_id uuid)
RETURNS TABLE (seq integer, first_id bigint, last_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.seq, b.first_id, b.last_id FROM public.backfill_batches b
    WHERE b.run_id = p_run_id AND b.state = 'pending' ORDER BY b.seq
$$;

-- The failed batches of a run, all of them, for `backfill retry-failed`.
CREATE OR REPLACE FUNCTION public.backfill_failed_batches(p_run_id uuid)
RETURNS TABLE (seq integer, first_id bigint, last_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.seq, b.first_id, b.last_id FROM public.backfill_batches b
    WHERE b.run_id = p_run_id AND b.state = 'failed' ORDER BY b.seq
$$;

-- A dispatch that stopped (crash, deadline, error) keeps its run in
-- `dispatching` with the error noted, so it can be continued from its cursor.
CREATE OR REPLACE FUNCTION public.backfill_note_run_error(p_run_id uuid, p_error text)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.backfill_runs SET last_error = p_error, updated_at = now() WHERE id = p_run_id;
    RETURN public.backfill_run_json(p_run_id);
END $$;

DO $$
DECLARE
    f text;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure::text FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proname LIKE 'backfill\_%'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon, authenticated', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', f);
    END LOOP;
END $$;
