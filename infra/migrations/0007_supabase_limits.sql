-- Functions that hold on a real Supabase project. Its API cuts every answer of
-- a table, a view or a set-returning function at the project's "Max rows"
-- (1,000 by default, often lower) without an error, and runs every API
-- statement under the authenticator role's 8 s statement timeout. So every
-- function here returns one jsonb value, which is never cut, and does a
-- bounded amount of work per call: the callers page, each page with its own
-- "more" flag or cursor.

CREATE OR REPLACE FUNCTION public.backfill_schema_version()
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 7 $$;

-- The set-returning versions these replace.
DROP FUNCTION IF EXISTS public.backfill_page_documents(jsonb, integer, boolean, text, bigint);
DROP FUNCTION IF EXISTS public.backfill_fetch_documents(jsonb, bigint[]);
DROP FUNCTION IF EXISTS public.backfill_pending_batches(uuid);
DROP FUNCTION IF EXISTS public.backfill_failed_batches(uuid);
DROP FUNCTION IF EXISTS public.backfill_unfinished_batches(uuid);
DROP FUNCTION IF EXISTS public.backfill_coverage(jsonb, text);

-- Keyset page of the ids still missing a vector: {"rows": [{"id", "bytes"}],
-- "more"}. `bytes` is the text's size for the token estimate: octet_length
-- reads it from the TOAST header, where char_length would decompress every
-- text. Paging uses the partial indexes of 0008, one per filter shape, so a
-- page costs the same at the start and at the end of a table of millions.
CREATE OR REPLACE FUNCTION public.backfill_page_documents(
    p_target jsonb, p_max_rows integer, p_archive text DEFAULT NULL, p_after_id bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_max_rows IS NULL OR p_max_rows < 1 THEN
        RAISE EXCEPTION 'p_max_rows must be at least 1' USING ERRCODE = '22023';
    END IF;
    EXECUTE format(
        'SELECT jsonb_build_object('
        '  ''rows'', coalesce(jsonb_agg(jsonb_build_object(''id'', s.id, ''bytes'', s.bytes) ORDER BY s.id)'
        '                     FILTER (WHERE s.n <= $3), ''[]''),'
        '  ''more'', count(*) > $3)'
        ' FROM (SELECT d.%1$s::bigint AS id, coalesce(octet_length(d.%2$s), 0)::bigint AS bytes,'
        '              row_number() OVER (ORDER BY d.%1$s) AS n'
        '       FROM %3$s d WHERE d.%4$s IS NULL%5$s AND ($2::bigint IS NULL OR d.%1$s > $2)'
        '       ORDER BY d.%1$s LIMIT $3 + 1) s',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'content'),
        public.backfill_table(p_target), public.backfill_ident(p_target, 'embedding'),
        CASE WHEN p_archive IS NULL THEN ''
             ELSE format(' AND d.%s = $1', public.backfill_ident(p_target, 'archive')) END)
    INTO v USING p_archive, p_after_id, p_max_rows;
    RETURN v;
END $$;

-- Those of `p_ids` after `p_after_id` that still lack a vector, in id order,
-- each text cut to `p_max_chars` characters, until the texts reach
-- `p_max_bytes` (always at least one): {"documents": [{"id", "content"}],
-- "more"}. The cut bounds what a huge text costs the API and the worker; the
-- byte budget bounds one answer, so a batch of large texts comes in several
-- calls and the worker's memory stays flat. Rows are read one by one in id
-- order and the loop stops at the budget, so texts past it are not read.
CREATE OR REPLACE FUNCTION public.backfill_fetch_documents(
    p_target jsonb, p_ids bigint[], p_max_chars integer, p_max_bytes bigint,
    p_after_id bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    v_ids bigint[] := '{}';
    v_texts text[] := '{}';
    v_bytes bigint := 0;
    v_more boolean := false;
BEGIN
    FOR r IN EXECUTE format(
        'SELECT u.id, x.content FROM'
        ' (SELECT DISTINCT i AS id FROM unnest($1::bigint[]) i'
        '  WHERE $2::bigint IS NULL OR i > $2 ORDER BY 1) u'
        ' CROSS JOIN LATERAL (SELECT left(d.%2$s::text, $3) AS content FROM %3$s d'
        '  WHERE d.%1$s = u.id AND d.%4$s IS NULL) x'
        ' ORDER BY u.id',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'content'),
        public.backfill_table(p_target), public.backfill_ident(p_target, 'embedding'))
        USING p_ids, p_after_id, p_max_chars
    LOOP
        IF cardinality(v_ids) > 0 AND v_bytes >= p_max_bytes THEN
            v_more := true;
            EXIT;
        END IF;
        v_ids := array_append(v_ids, r.id);
        v_texts := array_append(v_texts, r.content);
        v_bytes := v_bytes + coalesce(octet_length(r.content), 0);
    END LOOP;
    RETURN jsonb_build_object(
        'documents', coalesce((
            SELECT jsonb_agg(jsonb_build_object('id', u.id, 'content', u.content) ORDER BY u.ord)
            FROM unnest(v_ids, v_texts) WITH ORDINALITY AS u(id, content, ord)), '[]'::jsonb),
        'more', v_more);
END $$;

-- A page of a run's batches in the given states, after `p_after_seq`:
-- [{"seq", "first_id", "last_id"}]. Replaces the pending, failed and
-- unfinished lists, whose row sets the API cut at Max rows.
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

-- The guide's coverage check over the next `p_max_rows` rows of the table
-- after `p_after_id` (by primary key), counting those of `p_archive` when
-- given. The caller adds the steps up: one statement never scans more than a
-- step, however large the table, so none runs into the statement timeout.
-- Whether a text is blank is read from its first 1,024 characters where that
-- settles it, so a step does not decompress every long text it passes.
CREATE OR REPLACE FUNCTION public.backfill_coverage(
    p_target jsonb, p_max_rows integer, p_archive text DEFAULT NULL, p_after_id bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_max_rows IS NULL OR p_max_rows < 1 THEN
        RAISE EXCEPTION 'p_max_rows must be at least 1' USING ERRCODE = '22023';
    END IF;
    EXECUTE format(
        'SELECT jsonb_build_object('
        '  ''total'', count(*) FILTER (WHERE s.counted),'
        '  ''with_embeddings'', count(*) FILTER (WHERE s.counted AND s.embedded),'
        '  ''without_embeddings'', count(*) FILTER (WHERE s.counted AND NOT s.embedded),'
        '  ''empty_content'', count(*) FILTER (WHERE s.counted AND NOT s.embedded AND s.blank),'
        '  ''last_id'', max(s.id),'
        '  ''more'', count(*) = $3)'
        ' FROM (SELECT d.%1$s::bigint AS id, %5$s AS counted, d.%2$s IS NOT NULL AS embedded,'
        '              CASE WHEN d.%2$s IS NOT NULL THEN NULL'
        '                   WHEN btrim(substr(d.%3$s::text, 1, 1024), E'' \t\r\n'') <> '''' THEN false'
        '                   ELSE coalesce(btrim(d.%3$s::text, E'' \t\r\n''), '''') = '''' END AS blank'
        '       FROM %4$s d WHERE $2::bigint IS NULL OR d.%1$s > $2'
        '       ORDER BY d.%1$s LIMIT $3) s',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'embedding'),
        public.backfill_ident(p_target, 'content'), public.backfill_table(p_target),
        CASE WHEN p_archive IS NULL THEN 'true'
             ELSE format('d.%s = $1', public.backfill_ident(p_target, 'archive')) END)
    INTO v USING p_archive, p_after_id, p_max_rows;
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
