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
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 11 $$;

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

-- Each file ends with its own grants, in its transaction, so a function is
-- never callable by anon for a moment: a function created anew is executable
-- by PUBLIC (and, on Supabase, by anon through default privileges).
REVOKE ALL ON FUNCTION public.backfill_schema_version(), public.backfill_ident(jsonb, text),
    public.backfill_table(jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.backfill_schema_version(), public.backfill_ident(jsonb, text),
    public.backfill_table(jsonb) TO service_role;
