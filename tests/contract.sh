#!/usr/bin/env bash
# Contract test: an OpenAPI fuzzer (schemathesis, every check) against a real
# daemon on SQLite and one on PostgreSQL (`smsrelay run` with the dry-run log
# provider and the development token). Fails on any finding.
#
#   tests/contract.sh                 both databases
#   tests/contract.sh sqlite          one of them
#
# Environment: DATABASE_URL (a PostgreSQL server URL; tests/run.sh provides one),
# CONTRACT_EXAMPLES (per operation, default 200), CONTRACT_SEED (for a repeat).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'tests/contract.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${CONTRACT_EXAMPLES:-200}
# A fixed seed by default, so the suite's verdict does not change from run to
# run; CONTRACT_SEED=random explores new cases (and prints the seed to replay).
SEED=${CONTRACT_SEED:-12950}
[[ $SEED == random ]] && SEED=$RANDOM
VENV=target/contract-venv
BACKENDS=("$@")
((${#BACKENDS[@]})) || BACKENDS=(sqlite postgres)

WORK=$(mktemp -d /tmp/smsrelay-contract.XXXXXX)
DAEMON_PID="" PG_DB="" status=0

cleanup() {
    local rc=$?
    set +e
    stop_daemon
    drop_pg_database
    rm -rf -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_daemon() {
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        wait "$DAEMON_PID" 2>/dev/null
    fi
    DAEMON_PID=""
}

drop_pg_database() {
    [[ -n $PG_DB ]] || return 0
    psql -X -w -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1
    PG_DB=""
}

# The fuzzer, in a virtual environment of its own (pip from PyPI, pinned).
if [[ ! -x $VENV/bin/st ]] || [[ $("$VENV/bin/st" --version 2>/dev/null) != *"$SCHEMATHESIS_VERSION"* ]]; then
    log "creating $VENV with schemathesis $SCHEMATHESIS_VERSION"
    rm -rf -- "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
        || die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"
fi

log "building smsrelay"
cargo build -q --bin smsrelay
BIN=target/debug/smsrelay

free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 12000))
        timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$p" 2>/dev/null || { echo "$p"; return 0; }
    done
    die "no free TCP port found"
}

# Starts `smsrelay run` on database URL $1 and waits until it is ready. The
# directory has clients and staff 1 to 1000, each with a number: a POST for
# them is a 201 (the fuzzer counts a 422 for a numberless one as a finding),
# for any other id a 404.
start_daemon() {
    local url=$1 placeholder=$2 port token_file
    port=$(free_port)
    token_file=$WORK/token
    rm -f -- "$token_file"
    local directory="SELECT '+254712345678' WHERE $placeholder BETWEEN 1 AND 1000"
    (cd "$WORK" && SMSRELAY_DATABASE__URL=$url SMSRELAY_API__LISTEN=127.0.0.1:$port \
        SMSRELAY_API__DEV_TOKEN_FILE=$token_file SMSRELAY_LOG__LEVEL=warn \
        SMSRELAY_DIRECTORY__CLIENT_QUERY=$directory SMSRELAY_DIRECTORY__STAFF_QUERY=$directory \
        exec "$OLDPWD/$BIN" run) >"$WORK/daemon.log" 2>&1 &
    DAEMON_PID=$!
    BASE=http://127.0.0.1:$port
    for _ in $(seq 150); do
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$WORK/daemon.log" >&2; die "the daemon exited"; }
        if [[ -s $token_file ]] && curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null; then
            TOKEN=$(<"$token_file")
            return 0
        fi
        sleep 0.2
    done
    cat "$WORK/daemon.log" >&2
    die "the daemon was not ready within 30s"
}

fuzz() {
    local backend=$1
    log "$backend: schemathesis --checks all, $EXAMPLES examples per operation, seed $SEED"
    # Cross-parameter rules the document states only in words.
    if SCHEMATHESIS_HOOKS=tests/contract_hooks.py "$VENV/bin/st" run "$BASE/openapi.json" \
        --checks all \
        --max-examples "$EXAMPLES" \
        --seed "$SEED" \
        --workers 2 \
        --header "Authorization: Bearer $TOKEN" \
        --report junit --report-dir "target/contract-report/$backend" \
        --no-color; then
        log "$backend: no findings"
    else
        log "$backend: FINDINGS (reproduce with CONTRACT_SEED=$SEED tests/contract.sh $backend)"
        status=1
    fi
}

for backend in "${BACKENDS[@]}"; do
    case $backend in
        sqlite)
            start_daemon "sqlite://$WORK/contract.db" '?1'
            ;;
        postgres)
            [[ -n ${DATABASE_URL:-} ]] || die "DATABASE_URL is not set (tests/run.sh provides it)"
            command -v psql >/dev/null || die "psql is needed to create the contract database"
            PG_DB=smsrelay_contract_$$
            psql -X -w -q "$DATABASE_URL" -c "CREATE DATABASE $PG_DB" >/dev/null
            start_daemon "${DATABASE_URL%/*}/$PG_DB" '$1'
            ;;
        *) die "unknown backend $backend (sqlite or postgres)" ;;
    esac
    fuzz "$backend"
    stop_daemon
    drop_pg_database
done

if ((status)); then
    log "the API and its OpenAPI document disagree (see above)"
else
    log "contract holds on ${BACKENDS[*]}"
fi
exit "$status"
