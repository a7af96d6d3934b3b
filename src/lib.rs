//! redeemd: offline member-card redemption daemon.
//!
//! * [`engine`] — pure redemption decisions (menu, redeem, void) with time passed in.
//! * [`store`] — the SQLite store: signed cache, HMAC-chained journal, idempotent outcomes, migrations.
//! * [`config`] — the daemon's TOML configuration, validated before anything starts.
//! * [`daemon`] — `redeemd run`: a thread per serial reader, the store's owner, status, systemd.
//! * [`doctor`] — `redeemd doctor`: checks a live install, each with OK or the fix.
//! * [`keys`] — loading the terminal secret from a private file or a systemd credential.
//! * [`sync`] — sync with the platform's clearing server: pure planning (what to upload, how to apply an answer).
//!
//! The signed-data contract with the platform lives in the `redeemd-contract` crate.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod engine;
pub mod keys;
pub mod simulator;
pub mod store;
pub mod sync;
