-- What the old guide's add_vector_search.sql does for the backfill: pgvector and a
-- nullable embedding column. Safe when the extension or the column already exist.
CREATE EXTENSION IF NOT EXISTS vector;

ALTER TABLE public.lovdata_documents ADD COLUMN IF NOT EXISTS embedding vector(1536);

-- Keyset paging over the rows still missing a vector stays an index scan, and the
-- index shrinks as the backfill fills the column.
CREATE INDEX IF NOT EXISTS lovdata_documents_missing_embedding_idx
    ON public.lovdata_documents (id) WHERE embedding IS NULL;
