-- The documents: paging the ids missing a vector, fetching their texts,
-- writing vectors, coverage. On a real Supabase project the API cuts every
-- answer of a set-returning function at "Max rows" (1,000 by default) without
-- an error and runs every call under an 8 s statement timeout, so each
-- function returns one jsonb value, never cut, and does a bounded amount of
-- work per call: the callers page, each page with its own "more" flag or cursor.

-- Earlier forms (set-returning, or other arguments): dropped so that an
-- install at any earlier version ends with one function of each name.
DROP FUNCTION IF EXISTS public.backfill_page_documents(jsonb, integer, boolean, text, bigint);
DROP FUNCTION IF EXISTS public.backfill_fetch_documents(jsonb, bigint[]);
DROP FUNCTION IF EXISTS public.backfill_coverage(jsonb, text);

-- Keyset page of the ids still missing a vector: {"rows": [{"id", "bytes"}],
-- "more"}. `bytes` is the text's size for the token estimate: octet_length
-- reads it from the TOAST header, where char_length would decompress every
-- text. Paging uses the partial indexes of incremental/0008, one per filter
-- shape, so a page costs the same at the start and at the end of a table of
-- millions.
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

-- Writes vectors to those of `p_ids` that still lack one; how many it wrote.
-- The one write of vectors, shared by a chunk and by a batch's completion.
CREATE OR REPLACE FUNCTION public.backfill_set_vectors(p_target jsonb, p_vectors jsonb, p_ids bigint[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_written integer;
BEGIN
    EXECUTE format(
        'UPDATE %1$s t SET %2$s = x.embedding FROM jsonb_to_recordset($1) AS x(id bigint, embedding vector)'
        ' WHERE t.%3$s = x.id AND t.%2$s IS NULL AND t.%3$s = ANY($2)',
        public.backfill_table(p_target), public.backfill_ident(p_target, 'embedding'),
        public.backfill_ident(p_target, 'id'))
    USING p_vectors, p_ids;
    GET DIAGNOSTICS v_written = ROW_COUNT;
    RETURN v_written;
END $$;

-- Writes vectors to rows of the batch that still lack one; how many it wrote.
-- Safe to repeat: a row already written is left alone. A batch's vectors come
-- in chunks because with a vector index every row written pays for the
-- index's upkeep, so 1,000 in one statement can pass the API's 8 s timeout.
-- Each chunk records what it wrote on the batch row (documents_written), and
-- the batch's completion counts those rows once.
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
    v_written := public.backfill_set_vectors(p_target, p_vectors, v_batch.ids);
    IF v_batch.state NOT IN ('done', 'done_with_failures') THEN
        UPDATE public.backfill_batches SET documents_written = documents_written + v_written, updated_at = now()
        WHERE run_id = p_run_id AND seq = p_seq;
    END IF;
    RETURN jsonb_build_object('written', v_written);
END $$;

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

REVOKE ALL ON FUNCTION
    public.backfill_page_documents(jsonb, integer, text, bigint),
    public.backfill_fetch_documents(jsonb, bigint[], integer, bigint, bigint),
    public.backfill_set_vectors(jsonb, jsonb, bigint[]),
    public.backfill_write_vectors(jsonb, uuid, integer, jsonb),
    public.backfill_coverage(jsonb, integer, text, bigint)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.backfill_page_documents(jsonb, integer, text, bigint),
    public.backfill_fetch_documents(jsonb, bigint[], integer, bigint, bigint),
    public.backfill_set_vectors(jsonb, jsonb, bigint[]),
    public.backfill_write_vectors(jsonb, uuid, integer, jsonb),
    public.backfill_coverage(jsonb, integer, text, bigint)
    TO service_role;
