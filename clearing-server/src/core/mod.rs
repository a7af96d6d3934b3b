//! The platform's rules, as pure code: no I/O, no clock (time is a parameter).
//!
//! * [`clearing`] — merchant and member statements and the exceptions computed over decoded records;
//! * [`cache_policy`] — how long a signed cache is valid and when a quiet platform renews it;
//! * [`judge`] — the verdict on each stored record: payable or held, and why;
//! * [`problem`] — refusals with the API's stable codes;
//! * [`close`] — end-of-day totals and reconciliation (shared with the terminal: `redeemd_contract::close`).

pub mod cache_policy;
pub mod cards;
pub mod clearing;
pub mod judge;
pub mod problem;
pub use redeemd_contract::close;
