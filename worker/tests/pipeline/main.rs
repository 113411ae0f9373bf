//! End-to-end pipeline tests: the real `api` and `worker` binaries, a fresh
//! database per test, tickets created over HTTP, outcomes read back from the
//! API and the tables.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on setup errors"
)]

mod crash;
mod harness;
mod simulated;
