-- The documents: paging the ids that need a vector, fetching their texts,
-- writing vectors with their provenance, coverage, adopting vectors made
-- elsewhere. On a real Supabase project the API cuts every answer of a
-- set-returning function at "Max rows" (1,000 by default) without an error
-- and runs every call under an 8 s statement timeout, so each function
-- returns one jsonb value, never cut, and does a bounded amount of work per
-- call: the callers page, each page with its own "more" flag or cursor.

-- Earlier forms (set-returning, or other arguments): dropped so that an
-- install at any earlier version ends with one function of each name.
DROP FUNCTION IF EXISTS public.backfill_page_documents(jsonb, integer, boolean, text, bigint);
DROP FUNCTION IF EXISTS public.backfill_fetch_documents(jsonb, bigint[]);
DROP FUNCTION IF EXISTS public.backfill_coverage(jsonb, text);
DROP FUNCTION IF EXISTS public.backfill_page_documents(jsonb, integer, text, bigint);
DROP FUNCTION IF EXISTS public.backfill_fetch_documents(jsonb, bigint[], integer, bigint, bigint);
DROP FUNCTION IF EXISTS public.backfill_set_vectors(jsonb, jsonb, bigint[]);
DROP FUNCTION IF EXISTS public.backfill_coverage(jsonb, integer, text, bigint);
-- Answered a count before copies were told apart (schema version 12).
DO $$ BEGIN
    IF (SELECT prorettype = 'integer'::regtype FROM pg_proc
        WHERE oid = to_regprocedure('public.backfill_set_vectors(jsonb, uuid, jsonb, bigint[])')) THEN
        DROP FUNCTION public.backfill_set_vectors(jsonb, uuid, jsonb, bigint[]);
    END IF;
END $$;

-- Keyset page of the ids that need a vector of `p_spec` (backfill_needs):
-- {"rows": [{"id", "bytes"}], "last_id", "more"}; the next page starts after
-- `last_id`. `bytes` is the text's size for the token estimate: octet_length
-- reads it from the TOAST header, where char_length would decompress every
-- text. `missing` pages through the partial indexes of incremental/0008, so
-- a page costs the same at the start and at the end of a table of millions.
-- `stale` and `all` read the filter's rows in id order, a bounded number a
-- call (stale rows may be few and far apart), so a page can be empty with
-- `more` and a `last_id` further on.
CREATE OR REPLACE FUNCTION public.backfill_page_documents(
    p_target jsonb, p_max_rows integer, p_archive text DEFAULT NULL, p_after_id bigint DEFAULT NULL,
    p_spec jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
    v_missing boolean := public.backfill_spec(p_spec) ->> 'select' = 'missing';
BEGIN
    IF p_max_rows IS NULL OR p_max_rows < 1 THEN
        RAISE EXCEPTION 'p_max_rows must be at least 1' USING ERRCODE = '22023';
    END IF;
    EXECUTE format(
        'WITH s AS (SELECT d.%1$s::bigint AS id, coalesce(octet_length(d.%2$s), 0)::bigint AS bytes,'
        '                  %5$s AS needs'
        '           FROM %3$s d%6$s WHERE %7$s%4$s AND ($2::bigint IS NULL OR d.%1$s > $2)'
        '           ORDER BY d.%1$s LIMIT $4),'
        '     n AS (SELECT id, bytes, row_number() OVER (ORDER BY id) AS rn FROM s WHERE needs)'
        ' SELECT jsonb_build_object('
        '  ''rows'', coalesce((SELECT jsonb_agg(jsonb_build_object(''id'', id, ''bytes'', bytes) ORDER BY id)'
        '                     FROM n WHERE rn <= $3), ''[]''),'
        '  ''last_id'', CASE WHEN (SELECT count(*) FROM n) > $3 THEN (SELECT id FROM n WHERE rn = $3)'
        '                    ELSE (SELECT max(id) FROM s) END,'
        '  ''more'', (SELECT count(*) FROM n) > $3 OR (SELECT count(*) FROM s) = $4)',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'content'),
        public.backfill_table(p_target),
        CASE WHEN p_archive IS NULL THEN ''
             ELSE format(' AND d.%s = $1', public.backfill_ident(p_target, 'archive')) END,
        CASE WHEN v_missing THEN 'true' ELSE public.backfill_needs(p_target, p_spec) END,
        CASE WHEN v_missing THEN '' ELSE public.backfill_provenance_join(p_target) END,
        CASE WHEN v_missing THEN public.backfill_needs(p_target, p_spec) ELSE 'true' END)
    INTO v USING p_archive, p_after_id, p_max_rows,
        CASE WHEN v_missing THEN p_max_rows + 1 ELSE greatest(p_max_rows + 1, 5000) END;
    RETURN v;
END $$;

-- Those of `p_ids` after `p_after_id` that still need a vector of `p_spec`
-- (run `p_run_id`'s, for `all`), in id order, each with the sha256 of its
-- whole text and the text cut to `p_max_chars` characters (whole when NULL),
-- until the texts reach `p_max_bytes` (always at least one):
-- {"documents": [{"id", "content", "sha256"}], "more"}. The cut bounds what
-- a huge text costs the API and the worker; the byte budget bounds one
-- answer, so a batch of large texts comes in several calls and the worker's
-- memory stays flat. Rows are read one by one in id order and the loop stops
-- at the budget, so texts past it are not read.
CREATE OR REPLACE FUNCTION public.backfill_fetch_documents(
    p_target jsonb, p_ids bigint[], p_max_bytes bigint, p_max_chars integer DEFAULT NULL,
    p_after_id bigint DEFAULT NULL, p_spec jsonb DEFAULT NULL, p_run_id uuid DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    v_ids bigint[] := '{}';
    v_texts text[] := '{}';
    v_hashes text[] := '{}';
    v_bytes bigint := 0;
    v_more boolean := false;
BEGIN
    FOR r IN EXECUTE format(
        'SELECT u.id, x.content, x.sha256 FROM'
        ' (SELECT DISTINCT i AS id FROM unnest($1::bigint[]) i'
        '  WHERE $2::bigint IS NULL OR i > $2 ORDER BY 1) u'
        ' CROSS JOIN LATERAL (SELECT CASE WHEN $3::integer IS NULL THEN d.%2$s::text'
        '                                 ELSE left(d.%2$s::text, $3) END AS content,'
        '                            encode(sha256(convert_to(coalesce(d.%2$s::text, %5$L), %6$L)), %7$L) AS sha256'
        '  FROM %3$s d%8$s WHERE d.%1$s = u.id AND %4$s) x'
        ' ORDER BY u.id',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'content'),
        public.backfill_table(p_target), public.backfill_needs(p_target, p_spec, p_run_id),
        '', 'UTF8', 'hex', public.backfill_provenance_join(p_target))
        USING p_ids, p_after_id, p_max_chars
    LOOP
        IF cardinality(v_ids) > 0 AND v_bytes >= p_max_bytes THEN
            v_more := true;
            EXIT;
        END IF;
        v_ids := array_append(v_ids, r.id);
        v_texts := array_append(v_texts, r.content);
        v_hashes := array_append(v_hashes, r.sha256);
        v_bytes := v_bytes + coalesce(octet_length(r.content), 0);
    END LOOP;
    RETURN jsonb_build_object(
        'documents', coalesce((
            SELECT jsonb_agg(jsonb_build_object('id', u.id, 'content', u.content, 'sha256', u.sha256)
                             ORDER BY u.ord)
            FROM unnest(v_ids, v_texts, v_hashes) WITH ORDINALITY AS u(id, content, sha256, ord)), '[]'::jsonb),
        'more', v_more);
END $$;

-- Writes vectors to those of `p_ids` that still need one by run `p_run_id`'s
-- spec and whose text is still the text each vector was made from (its
-- sha256), recording each vector's provenance in the same statement:
-- {"written", "copied", "tokens_saved"}, the copies (a second row of a text
-- within the batch) among those written and the tokens they did not cost.
-- A row whose text changed after it was fetched keeps its old vector (or
-- none) and stays stale. The one write of vectors, shared by a chunk and by
-- a batch's completion. Each vector:
-- {"id", "embedding", "sha256", "chunks", "tokens", "source": "api"|"copy"}.
CREATE OR REPLACE FUNCTION public.backfill_set_vectors(
    p_target jsonb, p_run_id uuid, p_vectors jsonb, p_ids bigint[])
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_spec jsonb := public.backfill_run_spec(p_run_id);
    v jsonb;
BEGIN
    IF v_spec IS NULL THEN
        RAISE EXCEPTION 'backfill run % does not exist', p_run_id USING ERRCODE = 'P0002';
    END IF;
    EXECUTE format(
        'WITH x AS (SELECT DISTINCT ON (id) * FROM jsonb_to_recordset($1)'
        '           AS x(id bigint, embedding vector, sha256 text, chunks integer, tokens integer, source text)),'
        ' w AS (UPDATE %1$s d SET %2$s = x.embedding'
        '       FROM x LEFT JOIN public.backfill_provenance p ON p.target = $3 AND p.doc_id = x.id'
        '       WHERE d.%3$s = x.id AND d.%3$s = ANY($2) AND x.sha256 IS NOT NULL'
        '         AND sha256(convert_to(coalesce(d.%4$s::text, %6$L), %7$L)) = decode(x.sha256, %8$L)'
        '         AND %5$s'
        '       RETURNING d.%3$s AS id),'
        ' i AS (INSERT INTO public.backfill_provenance AS p'
        '   (target, doc_id, model, dimensions, long_text, text_sha256, chunks, tokens, source, run_id, embedded_at)'
        ' SELECT $3, x.id, $4 ->> %9$L, ($4 ->> %10$L)::integer, $4 ->> %11$L, decode(x.sha256, %8$L),'
        '        x.chunks, x.tokens, coalesce(x.source, %12$L), $5, now()'
        ' FROM x JOIN w ON w.id = x.id'
        ' ON CONFLICT (target, doc_id) DO UPDATE SET model = excluded.model, dimensions = excluded.dimensions,'
        '   long_text = excluded.long_text, text_sha256 = excluded.text_sha256, chunks = excluded.chunks,'
        '   tokens = excluded.tokens, source = excluded.source, run_id = excluded.run_id,'
        '   embedded_at = excluded.embedded_at'
        ' RETURNING p.source, p.tokens)'
        ' SELECT jsonb_build_object(''written'', count(*), ''copied'', count(*) FILTER (WHERE source = %13$L),'
        '   ''tokens_saved'', coalesce(sum(tokens) FILTER (WHERE source = %13$L), 0)) FROM i',
        public.backfill_table(p_target), public.backfill_ident(p_target, 'embedding'),
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'content'),
        public.backfill_needs(p_target, v_spec, p_run_id), '', 'UTF8', 'hex',
        'model', 'dimensions', 'long_text', 'api', 'copy')
    INTO v USING p_vectors, p_ids, public.backfill_vector_key(p_target), v_spec, p_run_id;
    RETURN v;
END $$;

-- Copies to the batch's rows that still need a vector the vector of another
-- row with the same text, made with the run's model, dimensions and policy
-- (for `all`, by this run), whose text is still the one it was made from,
-- the latest such first (an index scan that stops at the first that holds,
-- however many rows share the text): those rows cost no API call. Recorded on the batch like written chunks
-- (documents_written, documents_copied, tokens_saved), counted once at its
-- end: {"copied", "tokens_saved"}.
CREATE OR REPLACE FUNCTION public.backfill_copy_vectors(p_target jsonb, p_run_id uuid, p_seq integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_batch public.backfill_batches;
    v_spec jsonb := public.backfill_run_spec(p_run_id);
    v jsonb;
BEGIN
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'backfill batch %/% does not exist', p_run_id, p_seq USING ERRCODE = 'P0002';
    END IF;
    IF v_batch.state IN ('done', 'done_with_failures') THEN
        RETURN jsonb_build_object('copied', 0, 'tokens_saved', 0);
    END IF;
    EXECUTE format(
        'WITH need AS (SELECT d.%1$s AS id, sha256(convert_to(coalesce(d.%3$s::text, %7$L), %8$L)) AS h'
        '              FROM %2$s d%6$s WHERE d.%1$s = ANY($2) AND %5$s'
        '                AND btrim(coalesce(d.%3$s::text, %7$L), E%9$L) <> %7$L),'
        ' donor AS (SELECT need.id, need.h, dn.doc_id AS donor_id, dn.chunks, dn.tokens'
        '           FROM need CROSS JOIN LATERAL ('
        '             SELECT dp.doc_id, dp.chunks, dp.tokens FROM public.backfill_provenance dp'
        '             JOIN %2$s dd ON dd.%1$s = dp.doc_id'
        '             WHERE dp.target = $1 AND dp.text_sha256 = need.h'
        '               AND dp.model = $3 ->> %10$L AND dp.dimensions = ($3 ->> %11$L)::integer'
        '               AND dp.long_text = $3 ->> %12$L AND dp.doc_id <> need.id'
        '               AND ($3 ->> %13$L <> %14$L OR dp.run_id = $4)'
        '               AND dd.%4$s IS NOT NULL'
        '               AND sha256(convert_to(coalesce(dd.%3$s::text, %7$L), %8$L)) = dp.text_sha256'
        '             ORDER BY dp.embedded_at DESC LIMIT 1) dn),'
        ' w AS (UPDATE %2$s d SET %4$s = dd.%4$s FROM donor JOIN %2$s dd ON dd.%1$s = donor.donor_id'
        '       WHERE d.%1$s = donor.id AND sha256(convert_to(coalesce(d.%3$s::text, %7$L), %8$L)) = donor.h'
        '       RETURNING d.%1$s AS id),'
        ' i AS (INSERT INTO public.backfill_provenance AS p'
        '   (target, doc_id, model, dimensions, long_text, text_sha256, chunks, tokens, source, run_id, embedded_at)'
        ' SELECT $1, donor.id, $3 ->> %10$L, ($3 ->> %11$L)::integer, $3 ->> %12$L, donor.h,'
        '        donor.chunks, donor.tokens, %15$L, $4, now()'
        ' FROM donor JOIN w ON w.id = donor.id'
        ' ON CONFLICT (target, doc_id) DO UPDATE SET model = excluded.model, dimensions = excluded.dimensions,'
        '   long_text = excluded.long_text, text_sha256 = excluded.text_sha256, chunks = excluded.chunks,'
        '   tokens = excluded.tokens, source = excluded.source, run_id = excluded.run_id,'
        '   embedded_at = excluded.embedded_at'
        ' RETURNING p.tokens)'
        ' SELECT jsonb_build_object(%16$L, count(*), %17$L, coalesce(sum(tokens), 0)) FROM i',
        public.backfill_ident(p_target, 'id'), public.backfill_table(p_target),
        public.backfill_ident(p_target, 'content'), public.backfill_ident(p_target, 'embedding'),
        public.backfill_needs(p_target, v_spec, p_run_id), public.backfill_provenance_join(p_target),
        '', 'UTF8', E' \t\r\n', 'model', 'dimensions', 'long_text', 'select', 'all', 'copy',
        'copied', 'tokens_saved')
    INTO v USING public.backfill_vector_key(p_target), v_batch.ids, v_spec, p_run_id;
    UPDATE public.backfill_batches SET
        documents_written = documents_written + (v ->> 'copied')::integer,
        documents_copied = documents_copied + (v ->> 'copied')::integer,
        tokens_saved = tokens_saved + (v ->> 'tokens_saved')::bigint,
        updated_at = now()
    WHERE run_id = p_run_id AND seq = p_seq;
    RETURN v;
END $$;


-- Writes vectors to rows of the batch that still need one; how many it wrote.
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
    v jsonb;
BEGIN
    SELECT * INTO v_batch FROM public.backfill_batches WHERE run_id = p_run_id AND seq = p_seq FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'backfill batch %/% does not exist', p_run_id, p_seq USING ERRCODE = 'P0002';
    END IF;
    v := public.backfill_set_vectors(p_target, p_run_id, p_vectors, v_batch.ids);
    IF v_batch.state NOT IN ('done', 'done_with_failures') THEN
        UPDATE public.backfill_batches SET
            documents_written = documents_written + (v ->> 'written')::integer,
            documents_copied = documents_copied + (v ->> 'copied')::integer,
            tokens_saved = tokens_saved + (v ->> 'tokens_saved')::bigint,
            updated_at = now()
        WHERE run_id = p_run_id AND seq = p_seq;
    END IF;
    RETURN v;
END $$;

-- The coverage check over the next `p_max_rows` rows of the table after
-- `p_after_id` (by primary key), counting those of `p_archive` when given,
-- each row in one state against `p_spec`: without a vector, of which empty
-- (a blank text, which cannot get one); unknown (a vector without
-- provenance); stale_model (made with another model, dimensions or policy);
-- stale_text (made from another text); current. The caller adds the steps
-- up: one statement never scans more than a step, however large the table,
-- so none runs into the statement timeout. Whether a text is blank is read
-- from its first 1,024 characters where that settles it, and a text is
-- hashed only for a vector whose provenance matches the rest.
CREATE OR REPLACE FUNCTION public.backfill_coverage(
    p_target jsonb, p_max_rows integer, p_archive text DEFAULT NULL, p_after_id bigint DEFAULT NULL,
    p_spec jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
    v_spec jsonb := public.backfill_spec(coalesce(p_spec, '{}') || '{"select": "missing"}');
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
        '  ''unknown'', count(*) FILTER (WHERE s.counted AND s.embedded AND NOT s.known),'
        '  ''stale_model'', count(*) FILTER (WHERE s.counted AND s.embedded AND s.known AND NOT s.same_spec),'
        '  ''stale_text'', count(*) FILTER (WHERE s.counted AND s.embedded AND s.same_spec AND NOT s.same_text),'
        '  ''current'', count(*) FILTER (WHERE s.counted AND s.embedded AND s.same_spec AND s.same_text),'
        '  ''last_id'', max(s.id),'
        '  ''more'', count(*) = $3)'
        ' FROM (SELECT d.%1$s::bigint AS id, %5$s AS counted, d.%2$s IS NOT NULL AS embedded,'
        '              CASE WHEN d.%2$s IS NOT NULL THEN NULL'
        '                   WHEN btrim(substr(d.%3$s::text, 1, 1024), E'' \t\r\n'') <> '''' THEN false'
        '                   ELSE coalesce(btrim(d.%3$s::text, E'' \t\r\n''), '''') = '''' END AS blank,'
        '              p.doc_id IS NOT NULL AS known,'
        '              coalesce(p.model = $4 AND p.dimensions = $5 AND p.long_text = $6, false) AS same_spec,'
        '              CASE WHEN d.%2$s IS NOT NULL AND p.model = $4 AND p.dimensions = $5 AND p.long_text = $6'
        '                   THEN p.text_sha256 = sha256(convert_to(coalesce(d.%3$s::text, ''''), ''UTF8'')) END'
        '                AS same_text'
        '       FROM %4$s d%6$s WHERE $2::bigint IS NULL OR d.%1$s > $2'
        '       ORDER BY d.%1$s LIMIT $3) s',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'embedding'),
        public.backfill_ident(p_target, 'content'), public.backfill_table(p_target),
        CASE WHEN p_archive IS NULL THEN 'true'
             ELSE format('d.%s = $1', public.backfill_ident(p_target, 'archive')) END,
        public.backfill_provenance_join(p_target))
    INTO v USING p_archive, p_after_id, p_max_rows,
        v_spec ->> 'model', (v_spec ->> 'dimensions')::integer, v_spec ->> 'long_text';
    RETURN v;
END $$;

-- `backfill adopt`: over the next `p_max_rows` rows after `p_after_id`, of
-- `p_archive` when given, records the provenance of every vector that has
-- none (made by another tool, or by hand) as made from the row's current text
-- with `p_spec`'s model, dimensions and policy, without calling any API; a
-- vector of other dimensions than `p_spec`'s is counted, not adopted.
-- {"adopted", "wrong_dimensions", "last_id", "more"}.
CREATE OR REPLACE FUNCTION public.backfill_adopt(
    p_target jsonb, p_spec jsonb, p_max_rows integer, p_archive text DEFAULT NULL,
    p_after_id bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
    v_spec jsonb := public.backfill_spec(coalesce(p_spec, '{}') || '{"select": "stale"}');
BEGIN
    IF p_max_rows IS NULL OR p_max_rows < 1 THEN
        RAISE EXCEPTION 'p_max_rows must be at least 1' USING ERRCODE = '22023';
    END IF;
    EXECUTE format(
        'WITH s AS (SELECT d.%1$s::bigint AS id, d.%2$s AS embedding, d.%3$s::text AS content, %5$s AS counted'
        '           FROM %4$s d WHERE $2::bigint IS NULL OR d.%1$s > $2 ORDER BY d.%1$s LIMIT $3),'
        '     c AS (SELECT s.* FROM s LEFT JOIN public.backfill_provenance p ON p.target = $4 AND p.doc_id = s.id'
        '           WHERE s.counted AND s.embedding IS NOT NULL AND p.doc_id IS NULL),'
        '     i AS (INSERT INTO public.backfill_provenance'
        '             (target, doc_id, model, dimensions, long_text, text_sha256, source)'
        '           SELECT $4, c.id, $5 ->> ''model'', ($5 ->> ''dimensions'')::integer, $5 ->> ''long_text'','
        '                  sha256(convert_to(coalesce(c.content, ''''), ''UTF8'')), ''adopted'''
        '           FROM c WHERE vector_dims(c.embedding) = ($5 ->> ''dimensions'')::integer'
        '           ON CONFLICT (target, doc_id) DO NOTHING RETURNING 1)'
        ' SELECT jsonb_build_object(''adopted'', (SELECT count(*) FROM i),'
        '   ''wrong_dimensions'', (SELECT count(*) FROM c'
        '                          WHERE vector_dims(c.embedding) <> ($5 ->> ''dimensions'')::integer),'
        '   ''last_id'', (SELECT max(id) FROM s), ''more'', (SELECT count(*) FROM s) = $3)',
        public.backfill_ident(p_target, 'id'), public.backfill_ident(p_target, 'embedding'),
        public.backfill_ident(p_target, 'content'), public.backfill_table(p_target),
        CASE WHEN p_archive IS NULL THEN 'true'
             ELSE format('d.%s = $1', public.backfill_ident(p_target, 'archive')) END)
    INTO v USING p_archive, p_after_id, p_max_rows, public.backfill_vector_key(p_target), v_spec;
    RETURN v;
END $$;

REVOKE ALL ON FUNCTION
    public.backfill_page_documents(jsonb, integer, text, bigint, jsonb),
    public.backfill_fetch_documents(jsonb, bigint[], bigint, integer, bigint, jsonb, uuid),
    public.backfill_set_vectors(jsonb, uuid, jsonb, bigint[]),
    public.backfill_write_vectors(jsonb, uuid, integer, jsonb),
    public.backfill_copy_vectors(jsonb, uuid, integer),
    public.backfill_coverage(jsonb, integer, text, bigint, jsonb),
    public.backfill_adopt(jsonb, jsonb, integer, text, bigint)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.backfill_page_documents(jsonb, integer, text, bigint, jsonb),
    public.backfill_fetch_documents(jsonb, bigint[], bigint, integer, bigint, jsonb, uuid),
    public.backfill_set_vectors(jsonb, uuid, jsonb, bigint[]),
    public.backfill_write_vectors(jsonb, uuid, integer, jsonb),
    public.backfill_copy_vectors(jsonb, uuid, integer),
    public.backfill_coverage(jsonb, integer, text, bigint, jsonb),
    public.backfill_adopt(jsonb, jsonb, integer, text, bigint)
    TO service_role;
