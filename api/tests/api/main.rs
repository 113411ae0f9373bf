//! API integration tests: the real router on a random port over a fresh,
//! migrated database per test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on setup errors"
)]

mod audit_logs;
mod auth;
mod bad_input;
mod board;
mod companies;
mod connections;
mod cors;
mod health;
mod integrations;
mod jobs;
mod limits;
mod login_abuse;
mod openapi_drift;
mod overload;
mod parsers;
mod tenant_isolation;
mod test_app;
mod ticket_batches;
mod tickets;
