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
source "$ROOT/dev"   # say, die, script_start_api, script_cleanup; cd "$ROOT"

GENERATOR_VERSION="0.29.1"
WORK="${TXDX_CLIENT_CHECK_DIR:-/tmp/txdx-openapi-client-check}"
VENV="$WORK/venv"
started=$SECONDS
trap script_cleanup EXIT

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
API_BIN="$(script_api_bin dev)"
TXDX_PG_FSYNC=off script_start_api "$API_BIN" client-check "$WORK/api.log"

# 4. The generated client against the running api.
say "running the generated client against the api"
if ! PYTHONPATH="$WORK/client" "$VENV/bin/python" "$ROOT/scripts/openapi-client-check.py" "$API_URL"; then
    tail -n 30 "$WORK/api.log" >&2
    die "the generated client failed against the api (api log above)"
fi
say "openapi client check passed in $((SECONDS - started)) s"
