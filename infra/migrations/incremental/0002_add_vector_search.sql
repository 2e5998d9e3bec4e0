-- What the old guide's add_vector_search.sql does for the backfill: pgvector and a
-- nullable embedding column. Safe on a live table: `ADD COLUMN IF NOT EXISTS`
-- would still take an ACCESS EXCLUSIVE lock when the column exists, so the
-- table is altered only when it lacks the column, and then under the
-- lock_timeout scripts/migrate.sh sets (it gives up rather than queue the
-- table's traffic behind a long read). Adding a nullable column without a
-- default is a catalogue change: the lock is held for milliseconds.
CREATE EXTENSION IF NOT EXISTS vector;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = 'public.lovdata_documents'::regclass
          AND attname = 'embedding' AND NOT attisdropped
    ) THEN
        ALTER TABLE public.lovdata_documents ADD COLUMN embedding vector(1536);
    END IF;
END $$;

-- The partial indexes the backfill pages by are built in 0008, concurrently.
