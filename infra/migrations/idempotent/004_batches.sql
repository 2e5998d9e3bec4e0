-- The batches: a worker's begin, complete and fail, retry-failed's reopening,
-- and the paged lists of a run's batches.

-- Earlier forms: the set-returning lists the API cut at Max rows (replaced by
-- backfill_batch_refs), and begin/fail before leases and billed tokens.
DROP FUNCTION IF EXISTS public.backfill_pending_batches(uuid);
DROP FUNCTION IF EXISTS public.backfill_failed_batches(uuid);
DROP FUNCTION IF EXISTS public.backfill_unfinished_batches(uuid);
DROP FUNCTION IF EXISTS public.backfill_begin_batch(uuid, integer);
DROP FUNCTION IF EXISTS public.backfill_fail_batch(uuid, integer, text, boolean);

-- A page of a run's batches in the given states, after `p_after_seq`:
-- [{"seq", "first_id", "last_id"}], for dispatch and retry-failed.
CREATE OR REPLACE FUNCTION public.backfill_batch_refs(
    p_run_id uuid, p_states text[], p_max_rows integer, p_after_seq integer DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('seq', b.seq, 'first_id', b.first_id, 'last_id', b.last_id)
                              ORDER BY b.seq), '[]'::jsonb)
    FROM (SELECT seq, first_id, last_id FROM public.backfill_batches
          WHERE run_id = p_run_id AND state = ANY(p_states)
            AND (p_after_seq IS NULL OR seq > p_after_seq)
          ORDER BY seq LIMIT p_max_rows) b
$$;

-- Takes a batch that ended badly back out of the run's counters, to be worked
-- again: a `failed` one whole, a `done_with_failures` one for its failed and
-- skipped documents (its embedded ones stay counted, and the next completion
-- adds only what it writes). Called with the batch row locked.
CREATE OR REPLACE FUNCTION public.backfill_uncount_batch(p_batch public.backfill_batches)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_batch.state = 'failed' THEN
        UPDATE public.backfill_runs SET
            batches_failed = batches_failed - 1,
            documents_failed = documents_failed - p_batch.documents_failed,
            updated_at = now()
        WHERE id = p_batch.run_id;
    ELSIF p_batch.state = 'done_with_failures' THEN
        UPDATE public.backfill_runs SET
            batches_done = batches_done - 1,
            documents_failed = documents_failed - p_batch.documents_failed,
            documents_skipped = documents_skipped - p_batch.documents_skipped,
            updated_at = now()
        WHERE id = p_batch.run_id;
    ELSE
        RETURN;
    END IF;
    UPDATE public.backfill_batches SET
        documents_failed = 0, documents_skipped = 0, failed_documents = '[]',
        finished_at = NULL, updated_at = now()
    WHERE run_id = p_batch.run_id AND seq = p_batch.seq;
    PERFORM public.backfill_reopen_run(p_batch.run_id);
END $$;

-- `backfill retry-failed`: the failed batches, and the done_with_failures ones
-- whose failed documents still lack a vector, go back to `queued` (out of the
-- counters) before their messages are sent, so every delivery of them gets the
-- normal rules and the full retry budget. Returns how many were reopened.
CREATE OR REPLACE FUNCTION public.backfill_reopen_batches(p_run_id uuid, p_seqs integer[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_count integer := 0;
BEGIN
    FOR v_batch IN
        SELECT * FROM public.backfill_batches
        WHERE run_id = p_run_id AND seq = ANY(p_seqs) AND state IN ('failed', 'done_with_failures')
        ORDER BY seq FOR UPDATE
    LOOP
        PERFORM public.backfill_uncount_batch(v_batch);
        UPDATE public.backfill_batches SET state = 'queued', updated_at = now()
        WHERE run_id = p_run_id AND seq = v_batch.seq;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;

-- A worker's first call for a message. A batch that already ended is returned
-- untouched, so a redelivered message costs no API call and counts nothing.
-- A batch another delivery holds (its lease runs) is returned `leased`: this
-- delivery calls nothing and SQS brings it back later. A failed batch on a
-- fresh message (receive count 1: a redrive, or SQS's first delivery of a
-- message queued again) is reopened and worked under the normal rules; on the
-- message that failed it (receive count above 1) it stays failed.
CREATE OR REPLACE FUNCTION public.backfill_begin_batch(
    p_run_id uuid, p_seq integer, p_receive_count integer DEFAULT 1, p_lease_seconds integer DEFAULT 900)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_run public.backfill_runs;
    v_batch public.backfill_batches;
    v_leased boolean := false;
BEGIN
    SELECT * INTO v_run FROM public.backfill_runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('run_found', false);
    END IF;
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('run_found', true, 'batch_found', false, 'params', v_run.params);
    END IF;
    IF v_batch.state IN ('done', 'done_with_failures') THEN
        NULL;
    ELSIF v_batch.leased_until > now() THEN
        v_leased := true;
    ELSIF v_batch.state = 'failed' AND coalesce(p_receive_count, 1) > 1 THEN
        NULL;
    ELSE
        PERFORM public.backfill_uncount_batch(v_batch);
        UPDATE public.backfill_batches SET
            attempts = attempts + 1,
            state = 'running',
            leased_until = now() + make_interval(secs => greatest(coalesce(p_lease_seconds, 900), 1)),
            started_at = coalesce(started_at, now()),
            updated_at = now()
        WHERE run_id = p_run_id AND seq = p_seq
        RETURNING * INTO v_batch;
    END IF;
    RETURN jsonb_build_object(
        'run_found', true, 'batch_found', true, 'params', v_run.params,
        'state', v_batch.state, 'attempts', v_batch.attempts, 'ids', to_jsonb(v_batch.ids),
        'leased', v_leased, 'leased_until', v_batch.leased_until);
END $$;

-- Writes the batch's vectors, ends the batch and advances the run's counters in
-- one transaction. The batch row is locked and its state checked first, so a
-- batch delivered twice is counted once; its tokens are billed either way. A
-- batch reopened for its failed documents keeps the documents it embedded
-- before and adds what this completion writes.
-- Rows that earlier chunks (backfill_write_vectors) wrote count here too.
CREATE OR REPLACE FUNCTION public.backfill_complete_batch(
    p_target jsonb, p_run_id uuid, p_seq integer, p_vectors jsonb, p_tokens bigint, p_failures jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_set jsonb;
    v_written integer;
    v_copied integer;
    v_saved bigint;
    v_failed integer := jsonb_array_length(coalesce(p_failures, '[]'));
    v_skipped integer;
    v_was_failed boolean;
BEGIN
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'backfill batch %/% does not exist', p_run_id, p_seq USING ERRCODE = 'P0002';
    END IF;
    v_set := public.backfill_set_vectors(p_target, p_run_id, p_vectors, v_batch.ids);
    v_written := (v_set ->> 'written')::integer;
    UPDATE public.backfill_runs SET tokens_billed = tokens_billed + p_tokens WHERE id = p_run_id;
    IF v_batch.state IN ('done', 'done_with_failures') THEN
        UPDATE public.backfill_batches SET leased_until = NULL WHERE run_id = p_run_id AND seq = p_seq;
        RETURN jsonb_build_object('counted', false, 'written', v_written, 'state', v_batch.state);
    END IF;
    v_written := v_written + v_batch.documents_written;
    v_copied := (v_set ->> 'copied')::integer + v_batch.documents_copied;
    v_saved := (v_set ->> 'tokens_saved')::bigint + v_batch.tokens_saved;
    v_was_failed := v_batch.state = 'failed';
    v_skipped := greatest(cardinality(v_batch.ids) - v_batch.documents_embedded - v_written - v_failed, 0);
    UPDATE public.backfill_batches SET
        state = CASE WHEN v_failed > 0 THEN 'done_with_failures' ELSE 'done' END,
        documents_embedded = documents_embedded + v_written,
        documents_written = 0,
        documents_copied = 0,
        tokens_saved = 0,
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
        documents_copied = documents_copied + v_copied,
        tokens_saved = tokens_saved + v_saved,
        documents_skipped = documents_skipped + v_skipped,
        documents_failed = documents_failed + v_failed
            - CASE WHEN v_was_failed THEN v_batch.documents_failed ELSE 0 END,
        tokens_used = tokens_used + p_tokens,
        updated_at = now()
    WHERE id = p_run_id;
    PERFORM public.backfill_settle_run(p_run_id);
    RETURN jsonb_build_object('counted', true, 'written', v_written, 'copied', v_copied, 'skipped', v_skipped,
        'failed', v_failed, 'state', CASE WHEN v_failed > 0 THEN 'done_with_failures' ELSE 'done' END);
END $$;

-- Records a failed attempt and what it was billed. A permanent failure (or
-- the last delivery before the dead-letter queue) ends the batch as failed,
-- counted once, for the documents it has not embedded; a transient one leaves
-- it `retrying`, since SQS will deliver the message again. Either way the
-- lease ends, so that delivery can start at once.
-- Rows that earlier chunks wrote count as embedded, only the others as failed.
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
            documents_embedded = documents_embedded + v_batch.documents_written,
            documents_copied = documents_copied + v_batch.documents_copied,
            tokens_saved = tokens_saved + v_batch.tokens_saved
        WHERE id = p_run_id;
        UPDATE public.backfill_batches SET
            documents_embedded = documents_embedded + documents_written,
            documents_written = 0, documents_copied = 0, tokens_saved = 0
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
    RETURN jsonb_build_object('counted', v_counted,
        'documents_failed', CASE WHEN v_counted THEN v_failed ELSE 0 END,
        'documents_embedded', CASE WHEN v_counted THEN v_batch.documents_written ELSE 0 END);
END $$;

REVOKE ALL ON FUNCTION
    public.backfill_batch_refs(uuid, text[], integer, integer),
    public.backfill_uncount_batch(public.backfill_batches),
    public.backfill_reopen_batches(uuid, integer[]),
    public.backfill_begin_batch(uuid, integer, integer, integer),
    public.backfill_complete_batch(jsonb, uuid, integer, jsonb, bigint, jsonb),
    public.backfill_fail_batch(uuid, integer, text, boolean, bigint)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.backfill_batch_refs(uuid, text[], integer, integer),
    public.backfill_uncount_batch(public.backfill_batches),
    public.backfill_reopen_batches(uuid, integer[]),
    public.backfill_begin_batch(uuid, integer, integer, integer),
    public.backfill_complete_batch(jsonb, uuid, integer, jsonb, bigint, jsonb),
    public.backfill_fail_batch(uuid, integer, text, boolean, bigint)
    TO service_role;
