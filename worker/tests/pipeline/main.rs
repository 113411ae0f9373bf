//! End-to-end pipeline tests: the real `api` and `worker` binaries, a fresh
//! database per test, tickets created over HTTP, outcomes read back from the
//! API and the tables. Live integrations point at the provider fakes of the
//! `providers` tests; fault tests kill, stop and restart processes (and, on a
//! private cluster of its own, PostgreSQL).
//!
//! Knobs: `TXDX_E2E_LOGS=1` lets the processes write to the test's output
//! (tests that capture logs to files are unaffected); `TXDX_E2E_BIN_DIR` runs
//! the `api` and `worker` binaries from another directory (a release build,
//! or copies kept safe from a target directory shared with other checkouts).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on setup errors"
)]

mod canary;
mod cluster;
mod crash;
mod faults;
// The provider fakes of the `providers` tests, shared: the pipeline's live
// integrations point at them.
#[path = "../providers/fakes.rs"]
#[expect(dead_code, reason = "the pipeline uses part of the fakes")]
mod fakes;
mod harness;
mod limits;
mod live;
mod maintenance;
mod simulated;
