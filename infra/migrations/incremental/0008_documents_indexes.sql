-- migrate: no-transaction
-- The indexes the backfill pages by, built with CREATE INDEX CONCURRENTLY so
-- the application keeps writing to the table while they build. CONCURRENTLY
-- cannot run in a transaction block: scripts/migrate.sh runs a file whose
-- first line is "-- migrate: no-transaction" statement by statement. A build
-- that fails (lock_timeout, a cancelled session) leaves an INVALID index that
-- IF NOT EXISTS would then skip for ever, so invalid ones are dropped first.
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %s', i.indexrelid::regclass)
FROM pg_index i
WHERE i.indexrelid IN (to_regclass('public.lovdata_documents_missing_embedding_idx'),
                       to_regclass('public.lovdata_documents_missing_by_archive_idx'))
  AND NOT i.indisvalid
\gexec

-- Keyset paging over the rows still missing a vector, all archives: an index
-- scan that shrinks as the backfill fills the column.
CREATE INDEX CONCURRENTLY IF NOT EXISTS lovdata_documents_missing_embedding_idx
    ON public.lovdata_documents (id) WHERE embedding IS NULL;

-- The same for one archive: without it a page of a small archive among
-- millions of missing rows reads every row before it and can run into the
-- API's statement timeout.
CREATE INDEX CONCURRENTLY IF NOT EXISTS lovdata_documents_missing_by_archive_idx
    ON public.lovdata_documents (archive, id) WHERE embedding IS NULL;
