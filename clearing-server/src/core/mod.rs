//! The platform's rules, as pure code: no I/O, no clock (time is a parameter).
//!
//! * [`clearing`] — merchant and member statements and the exceptions computed over decoded records;
//! * [`cache_policy`] — how long a signed cache is valid and when a quiet platform renews it;
//! * [`close`] — end-of-day totals and reconciliation (shared with the terminal: `redeemd_contract::close`).

pub mod cache_policy;
pub mod cards;
pub mod clearing;
pub mod judge;
pub use redeemd_contract::close;
