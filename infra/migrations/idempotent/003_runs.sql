-- The runs: creation, dispatch, settling, status.

-- Earlier forms: create_run without p_force (0004), and fail_run, gone since
-- a stopped dispatch stays resumable instead of failing its run.
DROP FUNCTION IF EXISTS public.backfill_create_run(uuid, jsonb, numeric, text);
DROP FUNCTION IF EXISTS public.backfill_fail_run(uuid, text);

CREATE OR REPLACE FUNCTION public.backfill_run_json(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(r) || jsonb_build_object('now', now()) FROM public.backfill_runs r WHERE r.id = p_run_id
$$;

-- Idempotent: the caller picks the id, so a retried call finds its own row.
-- One active run per archive: a dispatch whose archive filter overlaps a run
-- still dispatching or running on the same table is refused unless forced. A
-- filter of NULL (all archives) overlaps every other.
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

-- Records a page of batches and the cursor after them in one transaction, so a
-- dispatcher that dies and comes back resumes exactly after the last saved page.
CREATE OR REPLACE FUNCTION public.backfill_add_batches(p_run_id uuid, p_batches jsonb, p_cursor_id bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_batches integer;
    v_documents bigint;
    v_tokens bigint;
    v_next integer;
BEGIN
    SELECT state INTO v_state FROM public.backfill_runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'backfill run % does not exist', p_run_id USING ERRCODE = 'P0002';
    END IF;
    IF v_state <> 'dispatching' THEN
        RAISE EXCEPTION 'backfill run % is %, not dispatching', p_run_id, v_state USING ERRCODE = '55000';
    END IF;
    WITH ins AS (
        INSERT INTO public.backfill_batches (run_id, seq, ids, first_id, last_id, estimated_tokens)
        SELECT p_run_id, b.seq, b.ids, b.ids[1], b.ids[cardinality(b.ids)], b.estimated_tokens
        FROM jsonb_to_recordset(p_batches) AS b(seq integer, ids bigint[], estimated_tokens bigint)
        ON CONFLICT (run_id, seq) DO NOTHING
        RETURNING seq, cardinality(ids) AS n, estimated_tokens
    )
    SELECT count(*), coalesce(sum(n), 0), coalesce(sum(estimated_tokens), 0), max(seq) + 1
    INTO v_batches, v_documents, v_tokens, v_next FROM ins;
    UPDATE public.backfill_runs SET
        total_batches = total_batches + v_batches,
        total_documents = total_documents + v_documents,
        estimated_tokens = estimated_tokens + v_tokens,
        next_seq = greatest(next_seq, coalesce(v_next, 0)),
        cursor_id = greatest(cursor_id, p_cursor_id),
        updated_at = now()
    WHERE id = p_run_id;
    RETURN public.backfill_run_json(p_run_id);
END $$;

CREATE OR REPLACE FUNCTION public.backfill_mark_queued(p_run_id uuid, p_seqs integer[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE public.backfill_batches SET state = 'queued', updated_at = now()
    WHERE run_id = p_run_id AND seq = ANY(p_seqs) AND state = 'pending';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END $$;

-- Settles the run's state from its counters; called after every batch change.
CREATE OR REPLACE FUNCTION public.backfill_settle_run(p_run_id uuid)
RETURNS void LANGUAGE sql AS $$
    UPDATE public.backfill_runs SET
        state = CASE WHEN batches_failed > 0 OR documents_failed > 0
                     THEN 'completed_with_errors' ELSE 'completed' END,
        finished_at = coalesce(finished_at, now()),
        updated_at = now()
    WHERE id = p_run_id
      AND state IN ('running', 'completed', 'completed_with_errors')
      AND batches_done + batches_failed >= total_batches;
$$;

CREATE OR REPLACE FUNCTION public.backfill_finish_dispatch(p_run_id uuid)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.backfill_runs SET state = 'running', dispatched_at = now(), updated_at = now()
    WHERE id = p_run_id AND state = 'dispatching';
    -- Batch mode: no more batches come, so the last job is complete.
    UPDATE public.backfill_jobs SET state = 'ready', updated_at = now()
    WHERE run_id = p_run_id AND state = 'open';
    PERFORM public.backfill_settle_run(p_run_id);
    RETURN public.backfill_run_json(p_run_id);
END $$;

-- Reopens a run that had settled, when one of its batches is worked again.
CREATE OR REPLACE FUNCTION public.backfill_reopen_run(p_run_id uuid)
RETURNS void LANGUAGE sql AS $$
    UPDATE public.backfill_runs SET state = 'running', finished_at = NULL, updated_at = now()
    WHERE id = p_run_id AND state IN ('completed', 'completed_with_errors');
$$;

-- A dispatch that stopped (crash, deadline, error) keeps its run in
-- `dispatching` with the error noted, so it can be continued from its cursor.
CREATE OR REPLACE FUNCTION public.backfill_note_run_error(p_run_id uuid, p_error text)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.backfill_runs SET last_error = p_error, updated_at = now() WHERE id = p_run_id;
    RETURN public.backfill_run_json(p_run_id);
END $$;

-- A dispatch that stopped for any reason stays resumable: `--continue` puts a
-- run that an older version ended `failed` mid-dispatch back to `dispatching`.
CREATE OR REPLACE FUNCTION public.backfill_resume_dispatch(p_run_id uuid)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.backfill_runs SET state = 'dispatching', finished_at = NULL, updated_at = now()
    WHERE id = p_run_id AND state = 'failed' AND dispatched_at IS NULL;
    RETURN public.backfill_run_json(p_run_id);
END $$;

-- The run (latest when no id is given) with its failed batches, for `backfill status`.
CREATE OR REPLACE FUNCTION public.backfill_run_status(p_run_id uuid DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    WITH r AS (
        SELECT * FROM public.backfill_runs
        WHERE p_run_id IS NULL OR id = p_run_id
        ORDER BY created_at DESC LIMIT 1
    )
    SELECT public.backfill_run_json(r.id) || jsonb_build_object(
        'failed_batches', coalesce((
            SELECT jsonb_agg(jsonb_build_object('seq', b.seq, 'first_id', b.first_id, 'last_id', b.last_id,
                'state', b.state, 'attempts', b.attempts, 'error', b.error) ORDER BY b.seq)
            FROM (SELECT * FROM public.backfill_batches b
                  WHERE b.run_id = r.id AND b.state IN ('failed', 'retrying')
                  ORDER BY b.seq LIMIT 100) b), '[]'::jsonb),
        'failed_documents', coalesce((
            SELECT jsonb_agg(f ORDER BY (f ->> 'id')::bigint)
            FROM public.backfill_batches b, jsonb_array_elements(b.failed_documents) f
            WHERE b.run_id = r.id AND b.state = 'done_with_failures'), '[]'::jsonb))
    FROM r
$$;

REVOKE ALL ON FUNCTION
    public.backfill_run_json(uuid),
    public.backfill_create_run(uuid, jsonb, numeric, text, boolean),
    public.backfill_add_batches(uuid, jsonb, bigint),
    public.backfill_mark_queued(uuid, integer[]),
    public.backfill_settle_run(uuid),
    public.backfill_finish_dispatch(uuid),
    public.backfill_reopen_run(uuid),
    public.backfill_note_run_error(uuid, text),
    public.backfill_resume_dispatch(uuid),
    public.backfill_run_status(uuid)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.backfill_run_json(uuid),
    public.backfill_create_run(uuid, jsonb, numeric, text, boolean),
    public.backfill_add_batches(uuid, jsonb, bigint),
    public.backfill_mark_queued(uuid, integer[]),
    public.backfill_settle_run(uuid),
    public.backfill_finish_dispatch(uuid),
    public.backfill_reopen_run(uuid),
    public.backfill_note_run_error(uuid, text),
    public.backfill_resume_dispatch(uuid),
    public.backfill_run_status(uuid)
    TO service_role;
