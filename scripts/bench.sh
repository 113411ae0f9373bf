#!/usr/bin/env bash
# Benchmarks the whole TxDx pipeline against PostgreSQL's own limits
# (BENCHMARKS.md explains every figure).
#
#   scripts/bench.sh            the full run (about 14 minutes on 2 CPUs)
#   scripts/bench.sh --smoke    a seconds-long run with tiny counts (CI)
#   scripts/bench.sh --drain-tickets 10000 --workers 1,2   any `bench --help` flag
#
# Builds the binaries (api, worker, bench: release settings for the full
# run, the debug build for --smoke; BENCH_PROFILE overrides), then runs them against
# DATABASE_URL (an administrator's URL: the benchmark creates its own
# databases txdx_bench, txdx_pgbench and txdx_noop there) or, without it, a
# throw-away private PostgreSQL on 127.0.0.1 with pg_stat_statements loaded.
# Results: artifacts/bench/{report.md,results.json,logs/}; charts:
# docs/bench/*.svg (artifacts/bench/ with --smoke).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../dev
source "$ROOT/dev"
cd "$ROOT"

BENCH_PG_DIR=""
cleanup() {
    stop_private_pg
    [[ -n "$BENCH_PG_DIR" ]] && rm -rf "$BENCH_PG_DIR"
    return 0
}
trap cleanup EXIT

# The full run measures release builds (profile `benchmark`: release
# settings, its own directory). The smoke run only proves the machinery
# works, so it reuses the debug build `./dev test` has already made.
profile="${BENCH_PROFILE:-}"
if [[ -z "$profile" ]]; then
    profile=benchmark
    for arg in "$@"; do [[ "$arg" == --smoke ]] && profile=dev; done
fi
case "$profile" in dev) bin_dir=debug ;; release) bin_dir=release ;; *) bin_dir="$profile" ;; esac
say "building api, worker and bench (profile $profile)"
cargo build --profile "$profile" --bin api --bin worker --bin bench

if [[ -z "${DATABASE_URL:-}" ]]; then
    BENCH_PG_DIR="$(mktemp -d /tmp/txdx-bench-pg.XXXXXX)"
    chmod 755 "$BENCH_PG_DIR"
    start_private_pg "$BENCH_PG_DIR/data"
    # pg_stat_statements needs preloading: set it and restart (same port).
    as_pg_user "$PG_BINDIR/psql" -d "$DATABASE_URL" -qc "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
    as_pg_user "$PG_BINDIR/pg_ctl" -D "$BENCH_PG_DIR/data" -m fast -w restart >/dev/null \
        || { tail -n 20 "$BENCH_PG_DIR/data/server.log" >&2; die "the private PostgreSQL did not restart"; }
fi

pgbench_args=()
bindir="${PG_BINDIR:-$(pg_bindir)}"
[[ -n "$bindir" && -x "$bindir/pgbench" ]] && pgbench_args=(--pgbench "$bindir/pgbench")
export TXDX_BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
"${CARGO_TARGET_DIR:-$ROOT/target}/$bin_dir/bench" "${pgbench_args[@]}" "$@"
