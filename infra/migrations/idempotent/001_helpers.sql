-- Shared helpers. Every file of this directory holds the live definition of
-- its functions and is applied by scripts/migrate.sh on every run, after
-- ../incremental/, in name order, each in one transaction: change a function
-- here, never in a numbered file.
--
-- The functions are called over PostgREST RPC. Optional arguments default to
-- NULL and are left out of the call rather than sent as JSON null, which some
-- PostgREST-compatible servers pass as ''. User-supplied values (archive names
-- above all) travel in the JSON body, and the table and column names are
-- configuration, passed as a `target` object:
-- {"schema","table","id","content","archive","embedding"}, quoted with %I.

-- Raise it with any change here that a caller can see (10 was the last
-- version of the numbered files that defined functions).
CREATE OR REPLACE FUNCTION public.backfill_schema_version()
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 14 $$;

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

-- The vector's column as the provenance table names it: schema.table.column.
CREATE OR REPLACE FUNCTION public.backfill_vector_key(p_target jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(nullif(p_target ->> 'schema', ''), 'public') || '.' || (p_target ->> 'table')
        || '.' || (p_target ->> 'embedding')
$$;

-- What a run wants its vectors to be, and which rows it takes:
-- {"select": "missing"|"stale"|"all", "model", "dimensions", "long_text"}.
-- Checked once here so every function reads it the same way.
CREATE OR REPLACE FUNCTION public.backfill_spec(p_spec jsonb)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_select text := coalesce(p_spec ->> 'select', 'missing');
    v_long text := coalesce(p_spec ->> 'long_text', 'truncate');
BEGIN
    IF v_select NOT IN ('missing', 'stale', 'all') THEN
        RAISE EXCEPTION 'select must be missing, stale or all, not %', v_select USING ERRCODE = '22023';
    END IF;
    IF v_long NOT IN ('truncate', 'average') THEN
        RAISE EXCEPTION 'long_text must be truncate or average, not %', v_long USING ERRCODE = '22023';
    END IF;
    IF v_select <> 'missing' AND (p_spec ->> 'model' IS NULL OR p_spec ->> 'dimensions' IS NULL) THEN
        RAISE EXCEPTION 'select % needs the model and dimensions of the vectors wanted', v_select
            USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object('select', v_select, 'long_text', v_long,
        'model', p_spec ->> 'model', 'dimensions', (p_spec ->> 'dimensions')::integer);
END $$;

-- The SQL condition under which a row (alias d, its provenance alias p)
-- still needs a vector of `p_spec`: `missing`, it has none; `stale`, none,
-- or one made from another text or with another model, dimensions or policy
-- (a vector of unknown origin is left alone: `backfill adopt` records it);
-- `all`, every row, but one that run `p_run_id` already wrote. The hash is
-- read last, only for a row whose provenance matches the rest.
CREATE OR REPLACE FUNCTION public.backfill_needs(p_target jsonb, p_spec jsonb, p_run_id uuid DEFAULT NULL)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_spec jsonb := public.backfill_spec(p_spec);
    v_emb text := 'd.' || public.backfill_ident(p_target, 'embedding');
BEGIN
    CASE v_spec ->> 'select'
    WHEN 'missing' THEN
        RETURN format('%s IS NULL', v_emb);
    WHEN 'stale' THEN
        RETURN format(
            'CASE WHEN %1$s IS NULL THEN true WHEN p.doc_id IS NULL THEN false'
            ' WHEN p.model <> %2$L OR p.dimensions <> %3$s OR p.long_text <> %4$L THEN true'
            ' ELSE p.text_sha256 <> sha256(convert_to(coalesce(d.%5$s::text, %6$L), %7$L)) END',
            v_emb, v_spec ->> 'model', (v_spec ->> 'dimensions')::integer, v_spec ->> 'long_text',
            public.backfill_ident(p_target, 'content'), '', 'UTF8');
    ELSE
        IF p_run_id IS NULL THEN
            RETURN 'true';
        END IF;
        RETURN format('(%s IS NULL OR p.run_id IS DISTINCT FROM %L::uuid)', v_emb, p_run_id);
    END CASE;
END $$;

-- The join that gives a row of the documents (alias d) its provenance (alias p).
CREATE OR REPLACE FUNCTION public.backfill_provenance_join(p_target jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format(' LEFT JOIN public.backfill_provenance p ON p.target = %L AND p.doc_id = d.%s',
        public.backfill_vector_key(p_target), public.backfill_ident(p_target, 'id'))
$$;

-- A run's spec, from the parameters its dispatch recorded.
CREATE OR REPLACE FUNCTION public.backfill_run_spec(p_run_id uuid)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT public.backfill_spec(jsonb_build_object(
        'select', params -> 'options' ->> 'select',
        'long_text', params -> 'options' ->> 'long_text',
        'model', params ->> 'model',
        'dimensions', params ->> 'dimensions'))
    FROM public.backfill_runs WHERE id = p_run_id
$$;

-- Each file ends with its own grants, in its transaction, so a function is
-- never callable by anon for a moment: a function created anew is executable
-- by PUBLIC (and, on Supabase, by anon through default privileges).
REVOKE ALL ON FUNCTION public.backfill_schema_version(), public.backfill_ident(jsonb, text),
    public.backfill_table(jsonb), public.backfill_vector_key(jsonb), public.backfill_spec(jsonb),
    public.backfill_needs(jsonb, jsonb, uuid), public.backfill_provenance_join(jsonb),
    public.backfill_run_spec(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.backfill_schema_version(), public.backfill_ident(jsonb, text),
    public.backfill_table(jsonb), public.backfill_vector_key(jsonb), public.backfill_spec(jsonb),
    public.backfill_needs(jsonb, jsonb, uuid), public.backfill_provenance_join(jsonb),
    public.backfill_run_spec(uuid) TO service_role;
