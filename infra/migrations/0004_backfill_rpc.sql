-- Every write of the backfill goes through these functions, called over PostgREST
-- RPC. Optional arguments default to NULL and are left out of the call rather
-- than sent as JSON null, which some PostgREST-compatible servers pass as ''. User-supplied values (archive names above all) travel in the JSON body, and
-- the table and column names are configuration, passed as a `target` object:
-- {"schema","table","id","content","archive","embedding"}, quoted with %I.

CREATE OR REPLACE FUNCTION public.backfill_schema_version()
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 4 $$;

CREATE OR REPLACE FUNCTION public.backfill_ident(p_target jsonb, p_key text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v text := p_target ->> p_key;
BEGIN
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION 'backfill target lacks "%"', p_key USING ERRCODE = '22023';
    END IF;
    RETURN quote_ident(v);
END $$;

CREATE OR REPLACE FUNCTION public.backfill_table(p_target jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT quote_ident(coalesce(nullif(p_target ->> 'schema', ''), 'public')) || '.'
        || public.backfill_ident(p_target, 'table')
$$;

-- Keyset page of ids still missing a vector; `p_with_content` adds the texts for
-- a dry run's token count.
CREATE OR REPLACE FUNCTION public.backfill_page_documents(
    p_target jsonb, p_max_rows integer, p_with_content boolean,
    p_archive text DEFAULT NULL, p_after_id bigint DEFAULT NULL)
RETURNS TABLE (id bigint, chars integer, content text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT d.%1$s::bigint, coalesce(char_length(d.%2$s), 0)::integer,'
        ' CASE WHEN $4 THEN d.%2$s::text END'
        ' FROM %3$s d'
        ' WHERE d.%4$s IS NULL AND ($1::text IS NULL OR d.%5$s = $1)'
        ' AND ($2::bigint IS NULL OR d.%1$s > $2)'
        ' ORDER BY d.%1$s LIMIT $3',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'content'),
        public.backfill_table(p_target), public.backfill_ident(p_target, 'embedding'),
        public.backfill_ident(p_target, 'archive'))
    USING p_archive, p_after_id, p_max_rows, p_with_content;
END $$;

CREATE OR REPLACE FUNCTION public.backfill_fetch_documents(p_target jsonb, p_ids bigint[])
RETURNS TABLE (id bigint, content text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT d.%1$s::bigint, d.%2$s::text FROM %3$s d'
        ' WHERE d.%1$s = ANY($1) AND d.%4$s IS NULL ORDER BY d.%1$s',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'content'),
        public.backfill_table(p_target), public.backfill_ident(p_target, 'embedding'))
    USING p_ids;
END $$;

CREATE OR REPLACE FUNCTION public.backfill_run_json(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(r) || jsonb_build_object('now', now()) FROM public.backfill_runs r WHERE r.id = p_run_id
$$;

-- Idempotent: the caller picks the id, so a retried call finds its own row.
CREATE OR REPLACE FUNCTION public.backfill_create_run(
    p_run_id uuid, p_params jsonb, p_price_per_million_tokens numeric, p_archive text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.backfill_runs (id, params, archive, price_per_million_tokens)
    VALUES (p_run_id, p_params, p_archive, p_price_per_million_tokens)
    ON CONFLICT (id) DO NOTHING;
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

-- 0005 widens what this returns: drop it first, so this file can run again after 0005.
DROP FUNCTION IF EXISTS public.backfill_pending_batches(uuid);

CREATE OR REPLACE FUNCTION public.backfill_pending_batches(p_run_id uuid)
RETURNS TABLE (seq integer) LANGUAGE sql STABLE AS $$
    SELECT b.seq FROM public.backfill_batches b
    WHERE b.run_id = p_run_id AND b.state = 'pending' ORDER BY b.seq
$$;

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
    PERFORM public.backfill_settle_run(p_run_id);
    RETURN public.backfill_run_json(p_run_id);
END $$;

CREATE OR REPLACE FUNCTION public.backfill_fail_run(p_run_id uuid, p_error text)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.backfill_runs SET state = 'failed', last_error = p_error,
        finished_at = now(), updated_at = now()
    WHERE id = p_run_id AND state = 'dispatching';
    RETURN public.backfill_run_json(p_run_id);
END $$;

-- A worker's first call for a message. A batch that already ended is returned
-- untouched, so a redelivered message costs no API call and counts nothing.
CREATE OR REPLACE FUNCTION public.backfill_begin_batch(p_run_id uuid, p_seq integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_run public.backfill_runs;
    v_batch public.backfill_batches;
BEGIN
    SELECT * INTO v_run FROM public.backfill_runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('run_found', false);
    END IF;
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('run_found', true, 'batch_found', false, 'params', v_run.params);
    END IF;
    IF v_batch.state NOT IN ('done', 'done_with_failures') THEN
        UPDATE public.backfill_batches SET
            attempts = attempts + 1,
            state = CASE WHEN state = 'failed' THEN 'failed' ELSE 'running' END,
            started_at = coalesce(started_at, now()),
            updated_at = now()
        WHERE run_id = p_run_id AND seq = p_seq
        RETURNING * INTO v_batch;
    END IF;
    RETURN jsonb_build_object(
        'run_found', true, 'batch_found', true, 'params', v_run.params,
        'state', v_batch.state, 'attempts', v_batch.attempts, 'ids', to_jsonb(v_batch.ids));
END $$;

-- Writes the batch's vectors, ends the batch and advances the run's counters in
-- one transaction. The batch row is locked and its state checked first, so a
-- batch delivered twice is counted once; a failed batch that later succeeds
-- moves from the failed counters to the done ones.
CREATE OR REPLACE FUNCTION public.backfill_complete_batch(
    p_target jsonb, p_run_id uuid, p_seq integer, p_vectors jsonb, p_tokens bigint, p_failures jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_written integer;
    v_failed integer := jsonb_array_length(coalesce(p_failures, '[]'));
    v_skipped integer;
BEGIN
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'backfill batch %/% does not exist', p_run_id, p_seq USING ERRCODE = 'P0002';
    END IF;
    EXECUTE format(
        'UPDATE %1$s t SET %2$s = x.embedding FROM jsonb_to_recordset($1) AS x(id bigint, embedding vector)'
        ' WHERE t.%3$s = x.id AND t.%2$s IS NULL AND t.%3$s = ANY($2)',
        public.backfill_table(p_target), public.backfill_ident(p_target, 'embedding'),
        public.backfill_ident(p_target, 'id'))
    USING p_vectors, v_batch.ids;
    GET DIAGNOSTICS v_written = ROW_COUNT;
    IF v_batch.state IN ('done', 'done_with_failures') THEN
        RETURN jsonb_build_object('counted', false, 'written', v_written, 'state', v_batch.state);
    END IF;
    v_skipped := greatest(cardinality(v_batch.ids) - v_written - v_failed, 0);
    UPDATE public.backfill_batches SET
        state = CASE WHEN v_failed > 0 THEN 'done_with_failures' ELSE 'done' END,
        documents_embedded = v_written,
        documents_skipped = v_skipped,
        documents_failed = v_failed,
        tokens = p_tokens,
        failed_documents = coalesce(p_failures, '[]'),
        error = NULL,
        finished_at = now(),
        updated_at = now()
    WHERE run_id = p_run_id AND seq = p_seq;
    UPDATE public.backfill_runs SET
        batches_done = batches_done + 1,
        batches_failed = batches_failed - CASE WHEN v_batch.state = 'failed' THEN 1 ELSE 0 END,
        documents_embedded = documents_embedded + v_written,
        documents_skipped = documents_skipped + v_skipped,
        documents_failed = documents_failed + v_failed
            - CASE WHEN v_batch.state = 'failed' THEN v_batch.documents_failed ELSE 0 END,
        tokens_used = tokens_used + p_tokens,
        updated_at = now()
    WHERE id = p_run_id;
    PERFORM public.backfill_settle_run(p_run_id);
    RETURN jsonb_build_object('counted', true, 'written', v_written, 'skipped', v_skipped,
        'failed', v_failed, 'state', CASE WHEN v_failed > 0 THEN 'done_with_failures' ELSE 'done' END);
END $$;

-- Records a failed attempt. A permanent failure (or the last delivery before the
-- dead-letter queue) ends the batch as failed, counted once; a transient one only
-- notes the error, since SQS will deliver the message again.
CREATE OR REPLACE FUNCTION public.backfill_fail_batch(
    p_run_id uuid, p_seq integer, p_error text, p_permanent boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_counted boolean := false;
BEGIN
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND OR v_batch.state IN ('done', 'done_with_failures') THEN
        RETURN jsonb_build_object('counted', false);
    END IF;
    IF p_permanent AND v_batch.state <> 'failed' THEN
        v_counted := true;
        UPDATE public.backfill_runs SET
            batches_failed = batches_failed + 1,
            documents_failed = documents_failed + cardinality(v_batch.ids)
        WHERE id = p_run_id;
    END IF;
    UPDATE public.backfill_batches SET
        state = CASE WHEN p_permanent OR state = 'failed' THEN 'failed' ELSE 'retrying' END,
        documents_failed = CASE WHEN p_permanent OR state = 'failed' THEN cardinality(ids) ELSE 0 END,
        error = p_error,
        updated_at = now()
    WHERE run_id = p_run_id AND seq = p_seq;
    UPDATE public.backfill_runs SET last_error = format('batch %s (ids %s..%s): %s',
            p_seq, v_batch.first_id, v_batch.last_id, p_error),
        updated_at = now()
    WHERE id = p_run_id;
    PERFORM public.backfill_settle_run(p_run_id);
    RETURN jsonb_build_object('counted', v_counted);
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

-- The guide's coverage check, optionally for one archive.
CREATE OR REPLACE FUNCTION public.backfill_coverage(p_target jsonb, p_archive text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    EXECUTE format(
        'SELECT jsonb_build_object('
        ' ''total'', count(*),'
        ' ''with_embeddings'', count(*) FILTER (WHERE %1$s IS NOT NULL),'
        ' ''without_embeddings'', count(*) FILTER (WHERE %1$s IS NULL),'
        ' ''empty_content'', count(*) FILTER (WHERE %1$s IS NULL AND coalesce(btrim(%3$s, E'' \t\r\n''), '''') = ''''),'
        ' ''coverage_percent'', CASE WHEN count(*) = 0 THEN 100.0 ELSE'
        '   round(count(*) FILTER (WHERE %1$s IS NOT NULL) * 100.0 / count(*), 2) END)'
        ' FROM %2$s WHERE $1::text IS NULL OR %4$s = $1',
        public.backfill_ident(p_target, 'embedding'), public.backfill_table(p_target),
        public.backfill_ident(p_target, 'content'), public.backfill_ident(p_target, 'archive'))
    INTO v USING p_archive;
    RETURN v;
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
