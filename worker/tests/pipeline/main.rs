//! End-to-end pipeline tests: the real `api` and `worker` binaries, a fresh
//! database per test, tickets created over HTTP, outcomes read back from the
//! API and the tables.

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
