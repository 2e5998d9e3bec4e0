-- Where each vector came from: the model, dimensions and long-text policy it
-- was made with and a hash of the exact text it was made from, so a run can
-- find the vectors that no longer match their texts or the wanted model
-- without fetching a text, and copy a vector to another row of the same text.
-- Written in the transaction that writes the vector (backfill_set_vectors in
-- ../idempotent/); the documents table gains nothing but its vector column.
CREATE TABLE IF NOT EXISTS public.backfill_provenance (
    -- The vector's column, as schema.table.column: one row per document and column.
    target text NOT NULL,
    doc_id bigint NOT NULL,
    model text NOT NULL,
    dimensions integer NOT NULL,
    long_text text NOT NULL CHECK (long_text IN ('truncate', 'average')),
    -- sha256 of the whole text as stored (UTF-8), not of the part embedded.
    text_sha256 bytea NOT NULL,
    -- Inputs embedded (more than one for an averaged long text) and their
    -- tokens; NULL for a vector adopted from elsewhere.
    chunks integer,
    tokens integer,
    -- 'api': embedded by a run; 'copy': copied from a row of the same text;
    -- 'adopted': made elsewhere, recorded by `backfill adopt`.
    source text NOT NULL CHECK (source IN ('api', 'copy', 'adopted')),
    run_id uuid,
    embedded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, doc_id)
);

-- Finding a vector made from the same text with the same model, the latest
-- first: the copy (backfill_copy_vectors) stops at the first that holds.
CREATE INDEX IF NOT EXISTS backfill_provenance_by_text
    ON public.backfill_provenance (target, text_sha256, model, dimensions, long_text, embedded_at DESC);

ALTER TABLE public.backfill_provenance ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.backfill_provenance FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.backfill_provenance TO service_role;
