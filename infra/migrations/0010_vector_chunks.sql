-- A batch's vectors are written in chunks: with a vector index on the column
-- every row written pays for the index's upkeep (milliseconds a row for HNSW
-- at scale), so 1,000 vectors in one statement can pass the API's 8 s
-- statement timeout. Each chunk is its own transaction and records what it
-- wrote on the batch row; the completion counts those rows once.

CREATE OR REPLACE FUNCTION public.backfill_schema_version()
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 10 $$;

-- Rows given a vector by chunks of this batch, not yet in the run's counters.
ALTER TABLE public.backfill_batches ADD COLUMN IF NOT EXISTS documents_written integer NOT NULL DEFAULT 0;

-- Writes vectors to rows of the batch that still lack one; how many it wrote.
-- Safe to repeat: a row already written is left alone.
CREATE OR REPLACE FUNCTION public.backfill_write_vectors(
    p_target jsonb, p_run_id uuid, p_seq integer, p_vectors jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_written integer;
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
    IF v_batch.state NOT IN ('done', 'done_with_failures') THEN
        UPDATE public.backfill_batches SET documents_written = documents_written + v_written, updated_at = now()
        WHERE run_id = p_run_id AND seq = p_seq;
    END IF;
    RETURN jsonb_build_object('written', v_written);
END $$;

-- As in 0009, counting the rows earlier chunks wrote as well.
CREATE OR REPLACE FUNCTION public.backfill_complete_batch(
    p_target jsonb, p_run_id uuid, p_seq integer, p_vectors jsonb, p_tokens bigint, p_failures jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_written integer;
    v_failed integer := jsonb_array_length(coalesce(p_failures, '[]'));
    v_skipped integer;
    v_was_failed boolean;
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
    UPDATE public.backfill_runs SET tokens_billed = tokens_billed + p_tokens WHERE id = p_run_id;
    IF v_batch.state IN ('done', 'done_with_failures') THEN
        UPDATE public.backfill_batches SET leased_until = NULL WHERE run_id = p_run_id AND seq = p_seq;
        RETURN jsonb_build_object('counted', false, 'written', v_written, 'state', v_batch.state);
    END IF;
    v_written := v_written + v_batch.documents_written;
    v_was_failed := v_batch.state = 'failed';
    v_skipped := greatest(cardinality(v_batch.ids) - v_batch.documents_embedded - v_written - v_failed, 0);
    UPDATE public.backfill_batches SET
        state = CASE WHEN v_failed > 0 THEN 'done_with_failures' ELSE 'done' END,
        documents_embedded = documents_embedded + v_written,
        documents_written = 0,
        documents_skipped = v_skipped,
        documents_failed = v_failed,
        tokens = tokens + p_tokens,
        failed_documents = coalesce(p_failures, '[]'),
        error = NULL,
        leased_until = NULL,
        finished_at = now(),
        updated_at = now()
    WHERE run_id = p_run_id AND seq = p_seq;
    UPDATE public.backfill_runs SET
        batches_done = batches_done + 1,
        batches_failed = batches_failed - CASE WHEN v_was_failed THEN 1 ELSE 0 END,
        documents_embedded = documents_embedded + v_written,
        documents_skipped = documents_skipped + v_skipped,
        documents_failed = documents_failed + v_failed
            - CASE WHEN v_was_failed THEN v_batch.documents_failed ELSE 0 END,
        tokens_used = tokens_used + p_tokens,
        updated_at = now()
    WHERE id = p_run_id;
    PERFORM public.backfill_settle_run(p_run_id);
    RETURN jsonb_build_object('counted', true, 'written', v_written, 'skipped', v_skipped,
        'failed', v_failed, 'state', CASE WHEN v_failed > 0 THEN 'done_with_failures' ELSE 'done' END);
END $$;

-- As in 0009; a permanent failure counts the rows earlier chunks wrote as
-- embedded, and only the others as failed.
CREATE OR REPLACE FUNCTION public.backfill_fail_batch(
    p_run_id uuid, p_seq integer, p_error text, p_permanent boolean, p_tokens_billed bigint DEFAULT 0)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_counted boolean := false;
    v_failed integer;
BEGIN
    UPDATE public.backfill_runs SET tokens_billed = tokens_billed + coalesce(p_tokens_billed, 0)
    WHERE id = p_run_id;
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND OR v_batch.state IN ('done', 'done_with_failures') THEN
        RETURN jsonb_build_object('counted', false);
    END IF;
    v_failed := greatest(cardinality(v_batch.ids) - v_batch.documents_embedded - v_batch.documents_written, 0);
    IF p_permanent AND v_batch.state <> 'failed' THEN
        v_counted := true;
        UPDATE public.backfill_runs SET
            batches_failed = batches_failed + 1,
            documents_failed = documents_failed + v_failed,
            documents_embedded = documents_embedded + v_batch.documents_written
        WHERE id = p_run_id;
        UPDATE public.backfill_batches SET
            documents_embedded = documents_embedded + documents_written,
            documents_written = 0
        WHERE run_id = p_run_id AND seq = p_seq;
    END IF;
    UPDATE public.backfill_batches SET
        state = CASE WHEN p_permanent OR state = 'failed' THEN 'failed' ELSE 'retrying' END,
        documents_failed = CASE WHEN p_permanent OR state = 'failed' THEN v_failed ELSE 0 END,
        error = p_error,
        leased_until = NULL,
        updated_at = now()
    WHERE run_id = p_run_id AND seq = p_seq;
    UPDATE public.backfill_runs SET last_error = format('batch %s (ids %s..%s): %s',
            p_seq, v_batch.first_id, v_batch.last_id, p_error),
        updated_at = now()
    WHERE id = p_run_id;
    PERFORM public.backfill_settle_run(p_run_id);
    RETURN jsonb_build_object('counted', v_counted);
END $$;

REVOKE ALL ON FUNCTION public.backfill_write_vectors(jsonb, uuid, integer, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.backfill_write_vectors(jsonb, uuid, integer, jsonb) TO service_role;
