//! Integration tests of the redeemd store: one test binary (see ARCHITECTURE.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::type_complexity
)]

mod busy_store;
mod clearing_e2e;
mod cli;
mod columns;
mod console_e2e;
mod crash;
mod daemon;
mod deny;
mod doctor;
mod enroll_e2e;
mod exactly_once;
mod fleet_e2e;
mod migrate;
mod offline_week;
mod ownership;
mod packaging;
mod platform;
mod shop;
mod snapshot;
mod state_dir;
mod store;
mod support;
mod sync;
mod sync_e2e;
mod tamper;
