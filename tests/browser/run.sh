#!/usr/bin/env bash
# Browser tests of basic_frontend: a real api, one real worker and Postgres,
# driven by Debian's Chromium through playwright-core and `node --test`.
#
#   tests/browser/run.sh                 run every *.test.mjs here
#   tests/browser/run.sh walk.test.mjs   run some of them
#   tests/browser/run.sh --serve         start the same stack and wait (Ctrl-C stops it),
#                                        to look at the page by hand
#
# Postgres: DATABASE_URL when set (./dev test sets it), else a throw-away
# private cluster (the helpers of ./dev). Screenshots, logs and the test
# output go to artifacts/browser/ (git-ignored). Exits non-zero when any test
# fails or the stack does not start.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Defines start_private_pg, stop_private_pg, free_port, say, die and cds to the repository root.
# shellcheck source=../../dev
source "$HERE/../../dev"
ROOT="$(pwd)"

ARTIFACTS="$ROOT/artifacts/browser"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
SERVE_ONLY=0
if [[ "${1:-}" == "--serve" ]]; then SERVE_ONLY=1; shift; fi

# ------------------------------------------------------------ prerequisites --

ensure_node_modules() {
    if ! command -v node >/dev/null && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian's nodejs and npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
    fi
    command -v node >/dev/null || die "node not found: install Node.js 18 or newer (Debian: apt-get install nodejs npm)"
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    [[ "$major" -ge 18 ]] || die "Node.js $(node --version) is too old: the tests need 18 or newer"
    if [[ ! -f "$HERE/node_modules/playwright-core/package.json" ]]; then
        command -v npm >/dev/null || die "npm not found: install it beside Node.js (Debian: apt-get install npm)"
        say "installing the test's npm dependencies (playwright-core: no browser download)"
        (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    fi
}

ensure_chromium() {
    [[ -x "$CHROMIUM" ]] && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian's chromium"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
    fi
    [[ -x "$CHROMIUM" ]] || die "no Chromium at $CHROMIUM: apt-get install chromium, or set CHROMIUM_PATH"
}

# ------------------------------------------------------------------- stack --

PIDS=()
RUN_DIR=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    stop_private_pg
    [[ -n "$RUN_DIR" ]] && rm -rf "$RUN_DIR"
    exit "$status"
}

# Waits for URL to answer 2xx while PID lives; NAME and LOG are for the message.
wait_for_http() {
    local url="$1" pid="$2" name="$3" log="$4" tries=0
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$log" >&2; die "the $name exited during start-up (log: $log)"; }
        tries=$((tries + 1))
        [[ $tries -gt 240 ]] && { tail -n 30 "$log" >&2; die "the $name did not answer $url within 60 s"; }
        sleep 0.25
    done
}

start_stack() {
    RUN_DIR="$(mktemp -d /tmp/txdx-browser.XXXXXX)"
    chmod 755 "$RUN_DIR"
    if [[ -z "${DATABASE_URL:-}" ]]; then
        TXDX_PG_FSYNC=off start_private_pg "$RUN_DIR/pg"
    fi
    export DATABASE_URL
    JWT_SECRET_KEY="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
    export JWT_SECRET_KEY
    export API_ADDR="127.0.0.1:$(free_port)"
    export WORKER_METRICS_ADDR="127.0.0.1:$(free_port)"
    export TXDX_LOCAL_SECRET_KEY_FILE="$RUN_DIR/local-secret.key"
    export FRONTEND_DIR="$ROOT/basic_frontend"
    export QUEUE_HEARTBEAT_SECS=1 QUEUE_MISSED_HEARTBEATS=5 ACTION_TIMEOUT_SECS=3 RETRY_BACKOFF_BASE_MS=200
    export RUST_LOG="${RUST_LOG:-info,sqlx=warn}"

    "$BIN_DIR/api" serve >"$ARTIFACTS/api.log" 2>&1 &
    PIDS+=($!)
    wait_for_http "http://$API_ADDR/ready" "${PIDS[-1]}" api "$ARTIFACTS/api.log"
    # After the api: it has applied the migrations the worker checks for.
    "$BIN_DIR/worker" >"$ARTIFACTS/worker.log" 2>&1 &
    PIDS+=($!)
    wait_for_http "http://$WORKER_METRICS_ADDR/health" "${PIDS[-1]}" worker "$ARTIFACTS/worker.log"
    say "api on http://$API_ADDR/ (logs in $ARTIFACTS)"
}

# Prints one line from node's spec reporter totals, e.g.
# "browser tests: 9 passed, 0 failed, 1 skipped (of 10) in 41.2 s".
print_summary() {
    local log="$1"
    total() { sed -n "s/^ℹ $1 \([0-9.]*\)$/\1/p" "$log" | tail -n1; }
    local ms; ms="$(total duration_ms)"
    printf 'browser tests: %s passed, %s failed, %s skipped (of %s) in %s s\n' \
        "$(total pass)" "$(total fail)" "$(total skipped)" "$(total tests)" \
        "$(awk -v ms="${ms:-0}" 'BEGIN { printf "%.1f", ms / 1000 }')"
}

run_tests() {
    local log="$ARTIFACTS/node-test.log" status=0 files=("$@")
    [[ ${#files[@]} -gt 0 ]] || mapfile -t files < <(cd "$HERE" && ls ./*.test.mjs)
    (
        cd "$HERE"
        TXDX_BASE_URL="http://$API_ADDR" TXDX_ARTIFACTS="$ARTIFACTS" CHROMIUM_PATH="$CHROMIUM" \
            node --test --test-reporter=spec "${files[@]}"
    ) 2>&1 | tee "$log" || status=$?
    print_summary "$log"
    return "$status"
}

# -------------------------------------------------------------------- main --

ensure_node_modules
ensure_chromium
say "building api and worker"
cargo build --quiet --bin api --bin worker
mkdir -p "$ARTIFACTS"
rm -f "$ARTIFACTS"/*.png
trap cleanup EXIT INT TERM
start_stack
if [[ $SERVE_ONLY == 1 ]]; then
    say "serving; Ctrl-C stops"
    wait -n "${PIDS[@]}"
    exit 1
fi
run_tests "$@"
