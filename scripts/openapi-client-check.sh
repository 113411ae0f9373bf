#!/usr/bin/env bash
# Checks that openapi/openapi.yaml describes the API a client can actually
# use: generates a Python client from it with openapi-python-client, starts
# the api, and runs scripts/openapi-client-check.py against it (register a
# company, log in, create a manual ticket, read it back, and get problem
# documents for a bad login and a bad ticket).
#
#   scripts/openapi-client-check.sh
#
# Without DATABASE_URL a throw-away private Postgres is started (as by
# `./dev test`) and removed afterwards; with it, that database is migrated and
# used (a company with a random name is registered in it).
# Needs: cargo, python3 with venv, PyPI for `pip install`. Work files (the
# venv, kept between runs, the generated client, the api log) live in
# ${TXDX_CLIENT_CHECK_DIR:-/tmp/txdx-openapi-client-check}.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../dev
source "$ROOT/dev"   # say, die, free_port, start_private_pg, stop_private_pg; cd "$ROOT"

GENERATOR_VERSION="0.29.1"
WORK="${TXDX_CLIENT_CHECK_DIR:-/tmp/txdx-openapi-client-check}"
VENV="$WORK/venv"
started=$SECONDS
API_PID=""
TEST_PG_DIR=""

cleanup() {
    if [[ -n "$API_PID" ]]; then
        kill -TERM "$API_PID" 2>/dev/null || true
        wait "$API_PID" 2>/dev/null || true
    fi
    stop_private_pg
    [[ -n "$TEST_PG_DIR" ]] && rm -rf "$TEST_PG_DIR"
    return 0
}
trap cleanup EXIT

command -v cargo >/dev/null || die "cargo not found on PATH"
command -v python3 >/dev/null || die "python3 not found on PATH"
python3 -c 'import venv, ensurepip' 2>/dev/null \
    || die "python3 lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)"
mkdir -p "$WORK"

# 1. The generator, in a venv of its own (kept: reruns skip the download).
if ! "$VENV/bin/openapi-python-client" --version 2>/dev/null | grep -q "$GENERATOR_VERSION"; then
    say "creating $VENV with openapi-python-client $GENERATOR_VERSION"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "cannot create a Python venv in $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-python-client==$GENERATOR_VERSION" \
        || die "pip install openapi-python-client==$GENERATOR_VERSION failed (is PyPI reachable?)"
fi

# 2. The client, from the committed document. Any generator warning (a schema
# it cannot use, an endpoint it skips) fails the check.
say "generating the client from openapi/openapi.yaml"
printf 'project_name_override: txdx-client\npackage_name_override: txdx_client\n' > "$WORK/generator.yaml"
rm -rf "$WORK/client"
if ! PATH="$VENV/bin:$PATH" openapi-python-client generate --path "$ROOT/openapi/openapi.yaml" \
        --config "$WORK/generator.yaml" --output-path "$WORK/client" >"$WORK/generate.log" 2>&1; then
    cat "$WORK/generate.log" >&2
    die "openapi-python-client could not generate a client from openapi/openapi.yaml"
fi
if grep -qi "warning" "$WORK/generate.log"; then
    cat "$WORK/generate.log" >&2
    die "openapi-python-client warned about openapi/openapi.yaml (see above)"
fi

# 3. The api: built, configured with throw-away secrets, on a free port.
say "building the api"
cargo build --quiet --bin api || die "cargo build --bin api failed"
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
API_BIN="$target_dir/debug/api"
[[ -x "$API_BIN" ]] || die "the api binary is not at $API_BIN"

if [[ -z "${DATABASE_URL:-}" ]]; then
    TEST_PG_DIR="$(mktemp -d /tmp/txdx-client-check-pg.XXXXXX)"
    chmod 755 "$TEST_PG_DIR"
    TXDX_PG_FSYNC=off start_private_pg "$TEST_PG_DIR/data"
fi
port="$(free_port)"
API_URL="http://127.0.0.1:$port"
say "starting the api on $API_URL (log: $WORK/api.log)"
DATABASE_URL="$DATABASE_URL" \
JWT_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
TXDX_LOCAL_SECRET_KEY="$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')" \
API_ADDR="127.0.0.1:$port" FRONTEND_DIR="$ROOT/basic_frontend" RUST_LOG="${RUST_LOG:-warn}" \
    "$API_BIN" serve >"$WORK/api.log" 2>&1 &
API_PID=$!
ready_check="import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen('$API_URL/ready', timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)"
tries=0
until python3 -c "$ready_check"; do
    if ! kill -0 "$API_PID" 2>/dev/null; then
        tail -n 30 "$WORK/api.log" >&2
        API_PID=""
        die "the api exited before it was ready (log above)"
    fi
    tries=$((tries + 1))
    if [[ $tries -gt 120 ]]; then
        tail -n 30 "$WORK/api.log" >&2
        die "the api was not ready at $API_URL/ready after 60 s (log above)"
    fi
    sleep 0.5
done

# 4. The generated client against the running api.
say "running the generated client against the api"
if ! PYTHONPATH="$WORK/client" "$VENV/bin/python" "$ROOT/scripts/openapi-client-check.py" "$API_URL"; then
    tail -n 30 "$WORK/api.log" >&2
    die "the generated client failed against the api (api log above)"
fi
say "openapi client check passed in $((SECONDS - started)) s"
