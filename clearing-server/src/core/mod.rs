//! The platform's rules, as pure code: no I/O, no clock (time is a parameter).
//!
//! * [`clearing`] — merchant and member statements and the exceptions computed over decoded records;
//! * [`admission`] — overload: requests worked on at once, how long one may wait, `Retry-After`;
//! * [`cache_policy`] — how long a signed cache is valid and when a quiet platform renews it;
//! * [`import`] — a bulk card import file read and checked line by line;
//! * [`judge`] — the verdict on each stored record: payable or held, and why;
//! * [`problem`] — refusals with the API's stable codes;
//! * [`close`] — end-of-day totals and reconciliation (shared with the terminal: `redeemd_contract::close`).

pub mod admission;
pub mod cache_policy;
pub mod cards;
pub mod clearing;
pub mod import;
pub mod judge;
pub mod problem;
pub use redeemd_contract::close;
