#!/usr/bin/env bash
# The long fault-injection variants (not in the default test run): a large
# backlog drained by 4 workers while a random worker is killed with -9 every
# 3 s; and PostgreSQL crashed (-m immediate) and held down 45 s under load.
# Prints the `figure:` lines recorded in RELIABILITY.md.
#
#   scripts/reliability-long.sh                      10,000 tickets, 50 companies
#   TXDX_LONG_TICKETS=2000 scripts/reliability-long.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export TXDX_LONG_TICKETS="${TXDX_LONG_TICKETS:-10000}" TXDX_LONG_COMPANIES="${TXDX_LONG_COMPANIES:-50}"
TXDX_SKIP_BROWSER=1 ./dev test -p txdx-worker --test pipeline long_ -- --ignored --nocapture
