//! redeemd: offline member-card redemption daemon.
//!
//! * [`engine`] — pure redemption decisions (menu, redeem, void) with time passed in.
//! * [`store`] — the SQLite store: signed cache, HMAC-chained journal, idempotent outcomes, migrations.
//! * [`keys`] — loading the terminal secret from a private file or a systemd credential.
//!
//! The signed-data contract with the platform lives in the `redeemd-contract` crate.
#![forbid(unsafe_code)]

pub mod cli;
pub mod engine;
pub mod keys;
pub mod store;
