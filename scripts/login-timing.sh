#!/usr/bin/env bash
# Measures whether a login's answer time tells an unknown username from a
# wrong password: the release api, a private Postgres, 200 samples of each
# kind interleaved (after a warm-up), medians compared.
#
#   scripts/login-timing.sh
#
# Exits non-zero when the medians differ by more than
# ${TXDX_TIMING_MAX_DIFF_MS:-5} ms, or when any sample was throttled (a 429
# would time the throttle, not the login). Without DATABASE_URL a throw-away
# private Postgres is started and removed afterwards.
#
# The throttle (10 failures per username, 50 per client address, in 15
# minutes) is avoided, not cleared, so the database is never touched behind
# the api's back:
# - unknown side: a fresh username for every sample;
# - wrong-password side: 40 real users (more for more samples), each tried
#   at most 6 times;
# - both: the requests take turns over 250 loopback source addresses
#   (127.0.0.2 to 127.0.0.251: two failures per address for 200 samples),
#   so the per-address limit is never reached either.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../dev
source "$ROOT/dev"   # say, die, script_start_api, script_cleanup; cd "$ROOT"

SAMPLES="${TXDX_TIMING_SAMPLES:-200}"
MAX_DIFF_MS="${TXDX_TIMING_MAX_DIFF_MS:-5}"
WORK="${TXDX_TIMING_DIR:-/tmp/txdx-login-timing}"
trap script_cleanup EXIT

command -v cargo >/dev/null || die "cargo not found on PATH"
command -v python3 >/dev/null || die "python3 not found on PATH"
mkdir -p "$WORK"

API_BIN="$(script_api_bin release)"
script_start_api "$API_BIN" login-timing "$WORK/api.log"

python3 - "$API_PORT" "$SAMPLES" "$MAX_DIFF_MS" <<'PY'
import http.client, json, secrets, statistics, sys, time

port, samples, max_diff_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
PASSWORD = "correct horse battery staple"
WARMUP = 20
# At most 6 wrong passwords per user (the limit is 10).
USERS = max(40, -(-(samples + WARMUP) // 6))
source = iter(range(10**9))


def call(method, path, body, token=None, address="127.0.0.1"):
    """One request on a fresh connection from `address`; (status, body, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(address, 0))
    conn.connect()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = json.dumps(body)
    started = time.perf_counter()
    conn.request(method, path, payload, headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    return response.status, data, elapsed


def next_address():
    # 127.0.0.2 .. 127.0.0.251, in turn.
    return f"127.0.0.{2 + next(source) % 250}"


tag = secrets.token_hex(3)
status, data, _ = call("POST", "/api/auth/register", {
    "company_name": f"Timing {tag}", "username": f"timing-admin-{tag}",
    "email": f"timing-{tag}@example.com", "password": PASSWORD})
assert status == 201, (status, data)
admin = json.loads(data)["tokens"]["access_token"]
users = []
for i in range(USERS):
    username = f"timing-{tag}-user-{i:02}"
    status, data, _ = call("POST", "/api/users", {
        "username": username, "email": f"{username}@example.com", "password": PASSWORD, "role": "USER"}, admin)
    assert status == 201, (status, data)
    users.append(username)


def unknown(i):
    return call("POST", "/api/auth/login", {"username": f"ghost-{tag}-{i:04}", "password": "wrong password 0001"},
                address=next_address())


def wrong(i):
    return call("POST", "/api/auth/login", {"username": users[i % USERS], "password": "wrong password 0001"},
                address=next_address())


for i in range(WARMUP):
    unknown(10_000 + i)
    wrong(i)

times = {"unknown user": [], "wrong password": []}
bodies = {"unknown user": set(), "wrong password": set()}
for i in range(samples):
    # Alternate which side goes first, so drift hits both alike.
    order = [("unknown user", unknown), ("wrong password", wrong)]
    if i % 2:
        order.reverse()
    for name, attempt in order:
        status, data, elapsed = attempt(i + WARMUP)
        if status != 401:
            print(f"login-timing: a {name} sample answered {status}: {data[:200]!r}", file=sys.stderr)
            sys.exit(2)
        times[name].append(elapsed * 1000)
        bodies[name].add(data)

medians = {name: statistics.median(values) for name, values in times.items()}
for name, values in times.items():
    q = statistics.quantiles(values, n=4)
    print(f"{name:15} n={len(values)} median={medians[name]:.2f} ms  p25={q[0]:.2f}  p75={q[2]:.2f}")
diff = medians["wrong password"] - medians["unknown user"]
print(f"difference of medians (wrong password - unknown user): {diff:+.2f} ms (limit ±{max_diff_ms:g} ms)")
if bodies["unknown user"] != bodies["wrong password"] or len(bodies["unknown user"]) != 1:
    print("login-timing: the two sides answered different bodies", file=sys.stderr)
    sys.exit(1)
sys.exit(0 if abs(diff) <= max_diff_ms else 1)
PY
