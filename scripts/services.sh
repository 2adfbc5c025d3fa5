#!/usr/bin/env bash
# dpgov on shared services, on this machine's loopback: a PostgreSQL ledger, an MLflow tracking
# server backed by PostgreSQL with an artifact folder, a Prefect server with a process work pool
# and one worker. Everything it writes lives under one folder; it ends only what it started.
#
#   scripts/services.sh start  [DIR] [--auth] [--no-worker]   start, then print the env vars
#   scripts/services.sh env    [DIR] [--as dpgov|analyst|admin]  print them again (eval-able)
#   scripts/services.sh status [DIR]                           what runs, where
#   scripts/services.sh grant  [DIR] --model NAME              (--auth) dpgov may MANAGE the
#                                                              registered model, analyst READ it,
#                                                              users made with `user` EDIT it
#   scripts/services.sh user   [DIR] --name NAME               (--auth) create an MLflow user
#                                                              for a person (an approver): the
#                                                              identity dpgov records for them;
#                                                              then `env DIR --as NAME`
#   scripts/services.sh stop   [DIR] [--purge]                 stop; --purge also drops the
#                                                              databases and deletes DIR
#
# DIR defaults to .dpgov/services. `eval "$(scripts/services.sh env DIR)"` points dpgov at them.
# --auth runs MLflow with its basic-auth app: an admin (password generated, kept in
# DIR/secrets.env), a `dpgov` service user (the identity dpgov runs as) and an `analyst` user
# (read only). See docs/scaling.md.
#
# Settings (environment):
#   DPGOV_SERVICES_PG_URL  PostgreSQL server to create the databases on, as a libpq URL to its
#                          maintenance database (default postgresql://postgres@127.0.0.1:5432/postgres)
#   DPGOV_SERVICES_POOL    work pool name (default dpgov)
#   DPGOV_VENV             virtual environment with dpgov installed (default ./.venv)
#   PREFECT_UI_ENABLED     false: start the Prefect server without its UI (faster)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${DPGOV_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
PG_URL=${DPGOV_SERVICES_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
POOL=${DPGOV_SERVICES_POOL:-dpgov}
STARTUP_TIMEOUT=${DPGOV_SERVICES_TIMEOUT:-180}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "services.sh: $*" >&2; exit 2; }

cmd=${1:-}; [ -n "$cmd" ] || usage; shift
DIR=""; AUTH=0; WORKER=1; PURGE=0; AS=dpgov; MODEL=""; NAME=""
while [ $# -gt 0 ]; do
  case "$1" in
    --auth) AUTH=1 ;;
    --no-worker) WORKER=0 ;;
    --purge) PURGE=1 ;;
    --as) [ $# -ge 2 ] || die "--as needs a user"; AS=$2; shift ;;
    --as=*) AS=${1#--as=} ;;
    --model) [ $# -ge 2 ] || die "--model needs a name"; MODEL=$2; shift ;;
    --model=*) MODEL=${1#--model=} ;;
    --name) [ $# -ge 2 ] || die "--name needs a user name"; NAME=$2; shift ;;
    --name=*) NAME=${1#--name=} ;;
    -h|--help) usage ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$DIR" ] || die "one folder only (found $DIR and $1)"; DIR=$1 ;;
  esac
  shift
done
DIR=${DIR:-.dpgov/services}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
STATE=$DIR/state.env      # ports, database names, pids (written by start)
SECRETS=$DIR/secrets.env  # passwords (mode 600)

# --------------------------------------------------------------------------- helpers
free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Run SQL on the PostgreSQL maintenance database (psql when installed, else psycopg).
pg_sql() {
  if command -v psql >/dev/null 2>&1; then
    psql "$PG_URL" -v ON_ERROR_STOP=1 -qAtc "$1"
  else
    "$PY" - "$PG_URL" "$1" <<'EOF'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    cur = c.execute(sys.argv[2])
    if cur.description:
        for row in cur:
            print("|".join(map(str, row)))
EOF
  fi
}

# The libpq URL with another database name (keeps user, password, host, port, options).
pg_url_for() {
  "$PY" - "$PG_URL" "$1" <<'EOF'
import sys
from urllib.parse import urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
print(urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
EOF
}

wait_http() {  # URL NAME LOG PID
  local url=$1 name=$2 log=$3 pid=$4 t=0
  until curl -sf -o /dev/null --max-time 2 "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "services.sh: $name exited during start-up; last lines of $log:" >&2
      tail -n 20 "$log" >&2; return 1
    fi
    t=$((t + 1)); [ $t -lt $((STARTUP_TIMEOUT * 2)) ] || {
      echo "services.sh: $name did not answer at $url within ${STARTUP_TIMEOUT}s; see $log" >&2
      return 1; }
    sleep 0.5
  done
}

# Start a command in its own session (process group = its pid) with output to a log.
spawn() {  # NAME LOG CMD...
  local name=$1 log=$2; shift 2
  setsid "$@" >"$log" 2>&1 < /dev/null &
  echo "${name}_PID=$!" >> "$STATE"
  echo $!
}

stop_groups() {  # NAME=PID ...: TERM each group, wait up to 5 s, then KILL what is left
  local item pid alive
  for item in "$@"; do
    pid=${item#*=}; [ -n "$pid" ] || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 20); do
    alive=0
    for item in "$@"; do pid=${item#*=}; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.25
  done
  for item in "$@"; do
    pid=${item#*=}; [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      echo "killed ${item%%=*} (pid $pid; still running 5 s after SIGTERM)"
    else
      echo "stopped ${item%%=*} (pid $pid)"
    fi
  done
}

print_env() {  # identity
  # shellcheck disable=SC1090
  . "$STATE"; [ -f "$SECRETS" ] && . "$SECRETS"
  echo "export DPGOV_LEDGER_URL='$LEDGER_URL'"
  echo "export MLFLOW_TRACKING_URI='http://127.0.0.1:$MLFLOW_PORT'"
  echo "export PREFECT_API_URL='http://127.0.0.1:$PREFECT_PORT/api'"
  echo "export DPGOV_WORK_POOL='$POOL_NAME'"
  if [ "${AUTH_ENABLED:-0}" = 1 ]; then
    case "$1" in
      dpgov) echo "export MLFLOW_TRACKING_USERNAME=dpgov MLFLOW_TRACKING_PASSWORD='$DPGOV_PASSWORD'" ;;
      analyst) echo "export MLFLOW_TRACKING_USERNAME=analyst MLFLOW_TRACKING_PASSWORD='$ANALYST_PASSWORD'" ;;
      admin) echo "export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD='$ADMIN_PASSWORD'" ;;
      *) [ -f "$DIR/users/$1.env" ] || die "--as: dpgov, analyst, admin or a user made with \`user --name\`, found $1"
         # shellcheck disable=SC1090
         . "$DIR/users/$1.env"
         echo "export MLFLOW_TRACKING_USERNAME='$1' MLFLOW_TRACKING_PASSWORD='$USER_PASSWORD'" ;;
    esac
  fi
}

secret() { "$PY" -c 'import secrets; print(secrets.token_urlsafe(24))'; }

# --------------------------------------------------------------------------- start
start() {
  if [ -f "$STATE" ]; then
    # shellcheck disable=SC1090
    . "$STATE"
    if kill -0 "${MLFLOW_PID:-0}" 2>/dev/null; then
      die "services already run from $DIR (scripts/services.sh stop $DIR first)"
    fi
  fi
  [ -x "$VENV/bin/mlflow" ] && [ -x "$VENV/bin/prefect" ] || die "no mlflow/prefect in $VENV (run scripts/setup.sh)"
  pg_sql "SELECT 1" >/dev/null || die "PostgreSQL does not answer at $PG_URL (set DPGOV_SERVICES_PG_URL)"
  if [ "$AUTH" = 1 ]; then
    "$PY" -c "import flask_wtf" 2>/dev/null || die "--auth needs MLflow's auth extra: $VENV/bin/pip install 'mlflow[auth]'"
  fi

  umask 077  # passwords and database URLs live in DIR
  # A start that fails half-way stops what it started and drops what it created (logs stay).
  trap 'echo "services.sh: start failed: cleaning up (logs kept in $DIR/logs)" >&2; \
        PURGE=0 DROP=1 stop >&2' EXIT
  local tag; tag=$("$PY" -c 'import secrets; print(secrets.token_hex(4))')
  local ledger_db="dpgov_ledger_$tag" mlflow_db="dpgov_mlflow_$tag" auth_db="dpgov_mlflow_auth_$tag"
  mkdir -p "$DIR/logs" "$DIR/mlartifacts" "$DIR/prefect" "$DIR/worker-home"
  : > "$STATE"
  {
    echo "TAG=$tag"; echo "PG_URL='$PG_URL'"; echo "POOL_NAME='$POOL'"; echo "AUTH_ENABLED=$AUTH"
    echo "DATABASES='$ledger_db $mlflow_db$([ "$AUTH" = 1 ] && echo " $auth_db")'"
  } >> "$STATE"
  pg_sql "CREATE DATABASE $ledger_db" && pg_sql "CREATE DATABASE $mlflow_db"
  [ "$AUTH" = 1 ] && pg_sql "CREATE DATABASE $auth_db"
  local ledger_url mlflow_store
  ledger_url=$(pg_url_for "$ledger_db")
  mlflow_store=$(pg_url_for "$mlflow_db" | sed 's#^postgres\(ql\)\{0,1\}://#postgresql+psycopg://#')
  echo "LEDGER_URL='$ledger_url'" >> "$STATE"

  # MLflow tracking server: runs and registry in PostgreSQL, artifacts proxied to a folder.
  local mport pport; mport=$(free_port); pport=$(free_port)
  while [ "$pport" = "$mport" ]; do pport=$(free_port); done
  echo "MLFLOW_PORT=$mport" >> "$STATE"; echo "PREFECT_PORT=$pport" >> "$STATE"
  local -a app=()
  if [ "$AUTH" = 1 ]; then
    local admin_pw dpgov_pw analyst_pw
    admin_pw=$(secret); dpgov_pw=$(secret); analyst_pw=$(secret)
    ( umask 077
      { echo "ADMIN_PASSWORD='$admin_pw'"; echo "DPGOV_PASSWORD='$dpgov_pw'"
        echo "ANALYST_PASSWORD='$analyst_pw'"; echo "FLASK_SECRET='$(secret)'"; } > "$SECRETS"
      # Users without an explicit grant may only read; the creator of an experiment or a
      # registered model gets MANAGE on it.
      cat > "$DIR/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = $(pg_url_for "$auth_db" | sed 's#^postgres\(ql\)\{0,1\}://#postgresql+psycopg://#')
admin_username = admin
admin_password = $admin_pw
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Each request otherwise re-hashes the password (PBKDF2, ~0.3 s here): a governed run makes ~100.
auth_cache_ttl_seconds = 300
EOF
    )
    app=(--app-name basic-auth)
  fi
  local mpid
  # shellcheck disable=SC1090
  [ "$AUTH" = 1 ] && . "$SECRETS"
  # No MLflow job runner (GenAI jobs; dpgov has none): it would start eight more processes.
  mpid=$(MLFLOW_AUTH_CONFIG_PATH="$DIR/basic_auth.ini" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_FLASK_SERVER_SECRET_KEY="${FLASK_SECRET:-}" \
    spawn MLFLOW "$DIR/logs/mlflow.log" "$VENV/bin/mlflow" server \
      --backend-store-uri "$mlflow_store" \
      --artifacts-destination "$DIR/mlartifacts" --serve-artifacts \
      --host 127.0.0.1 --port "$mport" --workers 1 "${app[@]}")

  # Prefect server: its own SQLite database under DIR/prefect.
  local ppid
  ppid=$(PREFECT_HOME="$DIR/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
    PREFECT_API_URL="" \
    spawn PREFECT "$DIR/logs/prefect-server.log" "$VENV/bin/prefect" server start \
      --host 127.0.0.1 --port "$pport" --analytics-off)

  wait_http "http://127.0.0.1:$mport/health" "MLflow server" "$DIR/logs/mlflow.log" "$mpid"
  wait_http "http://127.0.0.1:$pport/api/health" "Prefect server" \
    "$DIR/logs/prefect-server.log" "$ppid"

  if [ "$AUTH" = 1 ]; then
    local user pw
    for user in dpgov analyst; do
      [ $user = dpgov ] && pw=$DPGOV_PASSWORD || pw=$ANALYST_PASSWORD
      curl -sf -o /dev/null --max-time 60 -u "admin:$ADMIN_PASSWORD" \
        -H 'Content-Type: application/json' \
        -d "{\"username\": \"$user\", \"password\": \"$pw\"}" \
        "http://127.0.0.1:$mport/api/2.0/mlflow/users/create" \
        || die "could not create MLflow user $user (see $DIR/logs/mlflow.log)"
    done
  fi

  # A process work pool and one worker: it runs deployments (dpgov schedule --pool) with the
  # ledger and tracking server above, as the dpgov identity.
  export PREFECT_API_URL="http://127.0.0.1:$pport/api" PREFECT_HOME="$DIR/prefect-client"
  export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
  "$VENV/bin/prefect" work-pool create "$POOL" --type process >/dev/null 2>"$DIR/logs/pool.log" \
    || grep -qi "already exists" "$DIR/logs/pool.log" \
    || { cat "$DIR/logs/pool.log" >&2; die "could not create work pool $POOL"; }
  if [ "$WORKER" = 1 ]; then
    local wpid
    wpid=$(eval "$(print_env dpgov)"; cd "$DIR/worker-home" && \
      DPGOV_HOME="$DIR/worker-home" PREFECT_HOME="$DIR/prefect-worker" \
      spawn WORKER "$DIR/logs/worker.log" "$VENV/bin/prefect" worker start \
        --pool "$POOL" --type process --name "dpgov-worker-$tag")
    local t=0
    until grep -q "started" "$DIR/logs/worker.log" 2>/dev/null; do
      kill -0 "$wpid" 2>/dev/null || { tail -n 20 "$DIR/logs/worker.log" >&2; die "worker exited"; }
      t=$((t + 1)); [ $t -lt $((STARTUP_TIMEOUT * 2)) ] || die "worker did not start; see $DIR/logs/worker.log"
      sleep 0.5
    done
  fi
  trap - EXIT
  {
    echo "# dpgov services in $DIR (stop: scripts/services.sh stop $DIR)"
    print_env dpgov
  }
}

# --------------------------------------------------------------------------- stop
stop() {
  [ -f "$STATE" ] || { echo "nothing started from $DIR"; [ "$PURGE" = 1 ] && rm -rf "$DIR"; return 0; }
  # shellcheck disable=SC1090
  . "$STATE"
  stop_groups "worker=${WORKER_PID:-}" "prefect=${PREFECT_PID:-}" "mlflow=${MLFLOW_PID:-}"
  if [ "$PURGE" = 1 ] || [ "${DROP:-0}" = 1 ]; then
    for db in ${DATABASES:-}; do
      pg_sql "DROP DATABASE IF EXISTS $db WITH (FORCE)" && echo "dropped database $db"
    done
  fi
  if [ "$PURGE" = 1 ]; then
    rm -rf "$DIR"
  else
    rm -f "$STATE.stopped"; mv "$STATE" "$STATE.stopped"
    [ "${DROP:-0}" = 1 ] || echo "data kept: databases ${DATABASES:-} and $DIR (drop them: stop --purge)"
  fi
}

status() {
  [ -f "$STATE" ] || { echo "nothing started from $DIR"; return 1; }
  # shellcheck disable=SC1090
  . "$STATE"
  local rc=0
  for s in MLFLOW PREFECT WORKER; do
    local var="${s}_PID"; local pid=${!var:-}
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then echo "$s running (pid $pid)"; else echo "$s NOT running"; rc=1; fi
  done
  echo "MLflow  http://127.0.0.1:$MLFLOW_PORT  (artifacts $DIR/mlartifacts)"
  echo "Prefect http://127.0.0.1:$PREFECT_PORT/api  (work pool $POOL_NAME)"
  echo "ledger  $LEDGER_URL"
  return $rc
}

# --------------------------------------------------------------------------- grant
grant() {
  [ -f "$STATE" ] || die "nothing started from $DIR"
  [ -n "$MODEL" ] || die "grant needs --model NAME (the registered model)"
  # shellcheck disable=SC1090
  . "$STATE"; . "$SECRETS" 2>/dev/null || true
  [ "${AUTH_ENABLED:-0}" = 1 ] || die "the MLflow server runs without --auth: nothing to grant"
  local api="http://127.0.0.1:$MLFLOW_PORT/api/3.0/mlflow/users/permissions" item user perm body
  local -a items=(dpgov=MANAGE analyst=READ)
  local f  # people made with `user --name` may tag versions (their approvals' mirror tags)
  for f in "$DIR"/users/*.env; do [ -f "$f" ] && items+=("$(basename "$f" .env)=EDIT"); done
  for item in "${items[@]}"; do
    user=${item%%=*}; perm=${item#*=}
    body="{\"username\": \"$user\", \"resource_type\": \"registered_model\", \"resource_id\": \"$MODEL\""
    curl -s -o /dev/null --max-time 30 -u "admin:$ADMIN_PASSWORD" \
      -H 'Content-Type: application/json' -d "$body}" "$api/revoke" || true
    curl -sf -o /dev/null --max-time 30 -u "admin:$ADMIN_PASSWORD" \
      -H 'Content-Type: application/json' -d "$body, \"permission\": \"$perm\"}" "$api/grant" \
      || die "could not grant $perm on $MODEL to $user"
    echo "$user: $perm on registered model $MODEL"
  done
}

# --------------------------------------------------------------------------- user
user() {
  [ -f "$STATE" ] || die "nothing started from $DIR"
  # shellcheck disable=SC1090
  . "$STATE"; . "$SECRETS" 2>/dev/null || true
  [ "${AUTH_ENABLED:-0}" = 1 ] || die "the MLflow server runs without --auth: no users to create"
  # an identity name (dpgov.names.identity), as dpgov will record it
  [[ "$NAME" =~ ^[a-z0-9][a-z0-9._@-]{0,63}$ ]] || die "--name: 1 to 64 of a-z 0-9 . _ @ -, found '$NAME'"
  case "$NAME" in admin|dpgov|analyst) die "--name $NAME: already a service user" ;; esac
  local pw; pw=$(secret)
  curl -sf -o /dev/null --max-time 60 -u "admin:$ADMIN_PASSWORD" \
    -H 'Content-Type: application/json' \
    -d "{\"username\": \"$NAME\", \"password\": \"$pw\"}" \
    "http://127.0.0.1:$MLFLOW_PORT/api/2.0/mlflow/users/create" \
    || die "could not create MLflow user $NAME (exists already? see $DIR/logs/mlflow.log)"
  ( umask 077; mkdir -p "$DIR/users"; echo "USER_PASSWORD='$pw'" > "$DIR/users/$NAME.env" )
  echo "# MLflow user $NAME created; as $NAME: eval \"\$(scripts/services.sh env $DIR --as $NAME)\""
}

case "$cmd" in
  start) start ;;
  user) user ;;
  stop) stop ;;
  env) [ -f "$STATE" ] || die "nothing started from $DIR"; print_env "$AS" ;;
  status) status ;;
  grant) grant ;;
  *) usage ;;
esac
