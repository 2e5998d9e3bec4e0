-- The documents table as the local stack and tests need it. On a Supabase project
-- that already has `lovdata_documents` this changes nothing: the grants below
-- are given only to a table this file creates, never to an existing one.
DO $$
BEGIN
    IF to_regclass('public.lovdata_documents') IS NULL THEN
        CREATE TABLE public.lovdata_documents (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            title text,
            archive text,
            content text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        REVOKE ALL ON public.lovdata_documents FROM PUBLIC, anon, authenticated;
        GRANT SELECT, UPDATE ON public.lovdata_documents TO service_role;
    END IF;
END $$;

-- The indexes the backfill pages by are built in 0008, concurrently, so that
-- this file never holds a lock on a table the application is using.
