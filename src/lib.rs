//! redeemd: offline member-card redemption daemon.
//!
//! * [`engine`] — pure redemption decisions (menu, redeem, void) with time passed in.
//! * [`conversation`] — the reader conversation of PROTOCOL.md §8, sans-IO: requests to store jobs,
//!   answers back, idempotency rules, QUERY, DISPLAY; rendering of answers.
//! * [`store`] — the SQLite store: signed cache, HMAC-chained journal, stored answers, migrations, and
//!   its one owner (`store::owner`).
//! * [`config`] — the daemon's TOML configuration, validated before anything starts.
//! * [`daemon`] — `redeemd run`: a thread per serial reader (the serial driver), status, systemd.
//! * [`doctor`] — `redeemd doctor`: checks a live install, each with OK or the fix.
//! * [`enroll`] — `redeemd enroll`: a shop joins the platform with a one-time pairing code.
//! * [`keys`] — loading the terminal secret from a private file or a systemd credential.
//! * [`sync`] — sync with the platform's clearing server: pure planning (what to upload, how to apply an answer).
//!
//! The signed-data contract with the platform lives in the `redeemd-contract` crate.
#![forbid(unsafe_code)]

// The unit tests share the integration tests' fixtures (`tests/it/support.rs`), which name this
// crate as the integration tests see it.
#[cfg(test)]
extern crate self as redeemd;

pub mod cli;
pub mod config;
pub mod conversation;
pub mod daemon;
pub mod doctor;
pub mod engine;
pub mod enroll;
pub mod keys;
pub mod simulator;
pub mod store;
pub mod sync;
