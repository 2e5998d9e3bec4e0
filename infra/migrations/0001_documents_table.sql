-- The documents table as the local stack and tests need it. On a Supabase project
-- that already has `lovdata_documents` this changes nothing.
CREATE TABLE IF NOT EXISTS public.lovdata_documents (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text,
    archive text,
    content text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS lovdata_documents_archive_idx ON public.lovdata_documents (archive);

GRANT SELECT, UPDATE ON public.lovdata_documents TO service_role;
REVOKE ALL ON public.lovdata_documents FROM anon, authenticated;
