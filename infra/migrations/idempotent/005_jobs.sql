-- Batch mode's jobs: the dispatcher fills them, the poller submits, watches
-- and collects them (src/jobs/). A job is one input file and one Batch API
-- batch; its batches keep their rows, counted by the same completion as in
-- direct mode.

DROP FUNCTION IF EXISTS public.backfill_jobs_due(text, integer);

-- Puts batches in the run's open job, in seq order, starting a new one when
-- the next batch would take the job over `p_max_documents` (the Batch API's
-- inputs a batch). Takes the dispatcher's new batches (`pending`) and batches
-- coming back for another job: those of `p_from_job` (the job being
-- collected), of a job that ended, or of none. Once the run has dispatched,
-- the open job is ready. Returns how many batches were placed.
CREATE OR REPLACE FUNCTION public.backfill_queue_in_jobs(
    p_run_id uuid, p_seqs integer[], p_max_documents integer, p_from_job integer DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_batch record;
    v_job public.backfill_jobs;
    v_count integer := 0;
BEGIN
    IF p_max_documents IS NULL OR p_max_documents < 1 THEN
        RAISE EXCEPTION 'p_max_documents must be at least 1' USING ERRCODE = '22023';
    END IF;
    -- One filler a run at a time, so two cannot both start a job.
    PERFORM 1 FROM public.backfill_runs WHERE id = p_run_id FOR UPDATE;
    FOR v_batch IN
        SELECT b.seq, cardinality(b.ids) AS documents, b.estimated_tokens FROM public.backfill_batches b
        LEFT JOIN public.backfill_jobs j ON j.run_id = b.run_id AND j.seq = b.job
        WHERE b.run_id = p_run_id AND b.seq = ANY(p_seqs)
          AND b.state IN ('pending', 'queued', 'retrying')
          AND (b.job IS NULL OR b.job = p_from_job OR j.state IN ('done', 'failed'))
        ORDER BY b.seq FOR UPDATE OF b
    LOOP
        SELECT * INTO v_job FROM public.backfill_jobs
        WHERE run_id = p_run_id AND state = 'open' ORDER BY seq DESC LIMIT 1;
        IF NOT FOUND OR (v_job.documents > 0 AND v_job.documents + v_batch.documents > p_max_documents) THEN
            IF FOUND THEN
                UPDATE public.backfill_jobs SET state = 'ready', updated_at = now()
                WHERE run_id = p_run_id AND seq = v_job.seq;
            END IF;
            INSERT INTO public.backfill_jobs (run_id, seq)
            SELECT p_run_id, coalesce(max(seq), -1) + 1 FROM public.backfill_jobs WHERE run_id = p_run_id
            RETURNING * INTO v_job;
        END IF;
        UPDATE public.backfill_jobs SET
            documents = documents + v_batch.documents,
            estimated_tokens = estimated_tokens + v_batch.estimated_tokens,
            updated_at = now()
        WHERE run_id = p_run_id AND seq = v_job.seq;
        UPDATE public.backfill_batches SET job = v_job.seq, state = 'queued', plan = NULL, updated_at = now()
        WHERE run_id = p_run_id AND seq = v_batch.seq;
        v_count := v_count + 1;
    END LOOP;
    UPDATE public.backfill_jobs j SET state = 'ready', updated_at = now()
    FROM public.backfill_runs r
    WHERE j.run_id = p_run_id AND j.state = 'open' AND r.id = p_run_id AND r.state <> 'dispatching';
    PERFORM public.backfill_reopen_run(p_run_id) WHERE v_count > 0;
    RETURN v_count;
END $$;

-- What the poller has to do, at most `p_max` jobs of runs over `p_target`
-- (of run `p_run_id` alone, when given): the submitted ones first
-- (collecting frees the queue), then the ready ones in run and job order;
-- leased ones are being handled. With the jobs of `p_model` over the table
-- at the provider, and their estimated tokens: {"jobs": [{"run_id", "seq",
-- "state", "estimated_tokens", "blocked_behind"}], "queued_jobs",
-- "queued_tokens"}. The provider's queue is the account's, but jobs this
-- poller does not watch (another table's, another database's) would hold
-- its count up for good: they are not counted.
CREATE OR REPLACE FUNCTION public.backfill_jobs_due(
    p_model text, p_target jsonb, p_max integer, p_run_id uuid DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'jobs', coalesce((
            SELECT jsonb_agg(jsonb_build_object('run_id', d.run_id, 'seq', d.seq, 'state', d.state,
                                                'estimated_tokens', d.estimated_tokens,
                                                'blocked_behind', d.blocked_behind)
                             ORDER BY d.state = 'ready', d.created, d.seq)
            FROM (SELECT j.run_id, j.seq, j.state, j.estimated_tokens, j.blocked_behind, r.created_at AS created
                  FROM public.backfill_jobs j JOIN public.backfill_runs r ON r.id = j.run_id
                  WHERE j.state IN ('ready', 'submitted')
                    AND (j.leased_until IS NULL OR j.leased_until <= now())
                    AND r.params -> 'target' = p_target
                    AND (p_run_id IS NULL OR j.run_id = p_run_id)
                  ORDER BY j.state = 'ready', r.created_at, j.seq
                  LIMIT greatest(p_max, 0)) d), '[]'::jsonb),
        'queued_jobs', q.jobs,
        'queued_tokens', q.tokens)
    FROM (SELECT count(*) AS jobs, coalesce(sum(j.estimated_tokens), 0) AS tokens
          FROM public.backfill_jobs j JOIN public.backfill_runs r ON r.id = j.run_id
          WHERE j.state = 'submitted' AND r.params ->> 'model' = p_model
            AND r.params -> 'target' = p_target) q
$$;

-- The poller's first call for a job: takes it for `p_lease_seconds` unless
-- another holds it, and returns it with its run's parameters:
-- {"job": {...}, "params", "leased"}; {"job": null} when there is none.
-- Taking a ready job starts a submission attempt; the first attempt's start
-- is kept, since a Batch API batch an earlier attempt created (and did not
-- record) was created after it.
CREATE OR REPLACE FUNCTION public.backfill_begin_job(p_run_id uuid, p_seq integer, p_lease_seconds integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job public.backfill_jobs;
    v_leased boolean := false;
BEGIN
    SELECT * INTO v_job FROM public.backfill_jobs WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('job', NULL);
    END IF;
    IF v_job.leased_until > now() THEN
        v_leased := true;
    ELSIF v_job.state IN ('ready', 'submitted') THEN
        UPDATE public.backfill_jobs SET
            leased_until = now() + make_interval(secs => greatest(coalesce(p_lease_seconds, 900), 1)),
            attempts = attempts + CASE WHEN state = 'ready' THEN 1 ELSE 0 END,
            submitting_since = CASE WHEN state = 'ready' THEN coalesce(submitting_since, now())
                                    ELSE submitting_since END,
            updated_at = now()
        WHERE run_id = p_run_id AND seq = p_seq
        RETURNING * INTO v_job;
    END IF;
    RETURN jsonb_build_object('job', to_jsonb(v_job) || jsonb_build_object('now', now()),
        'params', (SELECT params FROM public.backfill_runs WHERE id = p_run_id), 'leased', v_leased);
END $$;

-- A page of the job's batches that have not ended, after `p_after_seq`:
-- [{"seq", "first_id", "last_id", "ids", "plan"}].
CREATE OR REPLACE FUNCTION public.backfill_job_batches(
    p_run_id uuid, p_job integer, p_max_rows integer, p_after_seq integer DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('seq', b.seq, 'first_id', b.first_id, 'last_id', b.last_id,
                                                 'ids', to_jsonb(b.ids), 'plan', b.plan) ORDER BY b.seq), '[]'::jsonb)
    FROM (SELECT * FROM public.backfill_batches
          WHERE run_id = p_run_id AND job = p_job
            AND state NOT IN ('done', 'done_with_failures', 'failed')
            AND (p_after_seq IS NULL OR seq > p_after_seq)
          ORDER BY seq LIMIT p_max_rows) b
$$;

-- Records what each batch's lines of the input file hold: [{"seq", "plan"}].
-- Written before the file is uploaded, so whatever the provider returns for
-- it finds its plan.
CREATE OR REPLACE FUNCTION public.backfill_save_plans(p_run_id uuid, p_job integer, p_plans jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE public.backfill_batches b SET plan = x.plan, updated_at = now()
    FROM jsonb_to_recordset(p_plans) AS x(seq integer, plan jsonb)
    WHERE b.run_id = p_run_id AND b.job = p_job AND b.seq = x.seq;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END $$;

-- Moves the job's batches from `p_from_seq` on to a new ready job, when the
-- input file would pass the provider's limits (long texts make more bytes
-- and inputs than the dispatch could see). Returns the new job's seq.
CREATE OR REPLACE FUNCTION public.backfill_split_job(p_run_id uuid, p_seq integer, p_from_seq integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_new integer;
BEGIN
    PERFORM 1 FROM public.backfill_runs WHERE id = p_run_id FOR UPDATE;
    SELECT coalesce(max(seq), -1) + 1 INTO v_new FROM public.backfill_jobs WHERE run_id = p_run_id;
    INSERT INTO public.backfill_jobs (run_id, seq, state) VALUES (p_run_id, v_new, 'ready');
    UPDATE public.backfill_batches SET job = v_new, plan = NULL, updated_at = now()
    WHERE run_id = p_run_id AND job = p_seq AND seq >= p_from_seq;
    UPDATE public.backfill_jobs j SET
        documents = (SELECT coalesce(sum(cardinality(ids)), 0) FROM public.backfill_batches b
                     WHERE b.run_id = p_run_id AND b.job = j.seq),
        estimated_tokens = (SELECT coalesce(sum(estimated_tokens), 0) FROM public.backfill_batches b
                            WHERE b.run_id = p_run_id AND b.job = j.seq),
        updated_at = now()
    WHERE j.run_id = p_run_id AND j.seq IN (p_seq, v_new);
    RETURN v_new;
END $$;

-- Records what the poller learned or did: each key of `p_changes` present
-- sets its column (state, input_file_id, batch_id, provider_status,
-- lines_total, lines_completed, lines_failed, queued_before, blocked_behind,
-- error; a JSON
-- null clears it). Given a state, the poller is done with the job and the
-- lease ends; `submitted` and `done` clear an earlier step's error. Entering `submitted` stamps submitted_at; entering `done` or
-- `failed` stamps finished_at; going back to `ready` (the provider's queue
-- was full) clears the Batch API batch but keeps the uploaded file, to be
-- submitted again. Returns the job.
CREATE OR REPLACE FUNCTION public.backfill_update_job(p_run_id uuid, p_seq integer, p_changes jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job public.backfill_jobs;
    v_state text := p_changes ->> 'state';
    c jsonb := p_changes;
BEGIN
    UPDATE public.backfill_jobs SET
        state = coalesce(v_state, state),
        input_file_id = CASE WHEN c ? 'input_file_id' THEN c ->> 'input_file_id' ELSE input_file_id END,
        batch_id = CASE WHEN c ? 'batch_id' THEN c ->> 'batch_id'
                        WHEN v_state = 'ready' THEN NULL ELSE batch_id END,
        provider_status = CASE WHEN c ? 'provider_status' THEN c ->> 'provider_status' ELSE provider_status END,
        lines_total = CASE WHEN c ? 'lines_total' THEN (c ->> 'lines_total')::integer ELSE lines_total END,
        lines_completed = CASE WHEN c ? 'lines_completed' THEN (c ->> 'lines_completed')::integer ELSE lines_completed END,
        lines_failed = CASE WHEN c ? 'lines_failed' THEN (c ->> 'lines_failed')::integer ELSE lines_failed END,
        queued_before = CASE WHEN c ? 'queued_before' THEN (c ->> 'queued_before')::integer ELSE queued_before END,
        blocked_behind = CASE WHEN c ? 'blocked_behind' THEN (c ->> 'blocked_behind')::integer ELSE blocked_behind END,
        error = CASE WHEN c ? 'error' THEN c ->> 'error'
                     WHEN v_state IN ('submitted', 'done') THEN NULL ELSE error END,
        submitting_since = CASE WHEN v_state = 'ready' THEN NULL ELSE submitting_since END,
        submitted_at = CASE WHEN v_state = 'submitted' AND state <> 'submitted' THEN now()
                            WHEN v_state = 'ready' THEN NULL ELSE submitted_at END,
        finished_at = CASE WHEN v_state IN ('done', 'failed') THEN coalesce(finished_at, now()) ELSE finished_at END,
        leased_until = CASE WHEN v_state IS NULL THEN leased_until END,
        updated_at = now()
    WHERE run_id = p_run_id AND seq = p_seq
    RETURNING * INTO v_job;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'backfill job %/% does not exist', p_run_id, p_seq USING ERRCODE = 'P0002';
    END IF;
    RETURN to_jsonb(v_job) || jsonb_build_object('now', now());
END $$;

-- The provider refused or cancelled the job: each of its open batches fails
-- for good with the reason, counted once (`retry-failed` puts them in a new
-- job), and the job ends `failed`. Returns how many batches failed.
CREATE OR REPLACE FUNCTION public.backfill_fail_job(p_run_id uuid, p_seq integer, p_error text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_seq integer;
    v_count integer := 0;
BEGIN
    FOR v_seq IN
        SELECT seq FROM public.backfill_batches
        WHERE run_id = p_run_id AND job = p_seq AND state NOT IN ('done', 'done_with_failures', 'failed')
        ORDER BY seq
    LOOP
        PERFORM public.backfill_fail_batch(p_run_id, v_seq, p_error, true, 0);
        v_count := v_count + 1;
    END LOOP;
    PERFORM public.backfill_update_job(p_run_id, p_seq, jsonb_build_object('state', 'failed', 'error', p_error));
    RETURN v_count;
END $$;

-- A run's jobs for `backfill status`, the latest 1,000.
CREATE OR REPLACE FUNCTION public.backfill_run_jobs(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(to_jsonb(j) || jsonb_build_object('now', now()) ORDER BY j.seq), '[]'::jsonb)
    FROM (SELECT * FROM public.backfill_jobs WHERE run_id = p_run_id ORDER BY seq DESC LIMIT 1000) j
$$;

REVOKE ALL ON FUNCTION
    public.backfill_queue_in_jobs(uuid, integer[], integer, integer),
    public.backfill_jobs_due(text, jsonb, integer, uuid),
    public.backfill_begin_job(uuid, integer, integer),
    public.backfill_job_batches(uuid, integer, integer, integer),
    public.backfill_save_plans(uuid, integer, jsonb),
    public.backfill_split_job(uuid, integer, integer),
    public.backfill_update_job(uuid, integer, jsonb),
    public.backfill_fail_job(uuid, integer, text),
    public.backfill_run_jobs(uuid)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.backfill_queue_in_jobs(uuid, integer[], integer, integer),
    public.backfill_jobs_due(text, jsonb, integer, uuid),
    public.backfill_begin_job(uuid, integer, integer),
    public.backfill_job_batches(uuid, integer, integer, integer),
    public.backfill_save_plans(uuid, integer, jsonb),
    public.backfill_split_job(uuid, integer, integer),
    public.backfill_update_job(uuid, integer, jsonb),
    public.backfill_fail_job(uuid, integer, text),
    public.backfill_run_jobs(uuid)
    TO service_role;
