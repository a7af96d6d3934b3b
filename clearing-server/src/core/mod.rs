//! The platform's rules, as pure code: no I/O, no clock (time is a parameter).
//!
//! * [`clearing`] — merchant and member statements and the exceptions computed over decoded records;
//! * [`admission`] — overload: requests worked on at once, how long one may wait, `Retry-After`;
//! * [`cache_policy`] — how long a signed cache is valid and when a quiet platform renews it;
//! * [`import`] — a bulk card import file read and checked line by line;
//! * [`judge`] — the verdict on each stored record: payable or held, and why;
//! * [`problem`] — refusals with the API's stable codes, naming a refused field;
//! * [`cards`] — the card model: package and item specs, status transitions, the derived body;
//! * [`card_search`] — finding a card by its masked number or its holder, and what the index holds;
//! * [`access`] — roles, the caller of an operation, and the one check of a role against what an
//!   operation touches;
//! * [`credentials`] — API keys (stored as a hash) and console passwords (argon2id);
//! * [`session`] — console sessions (the cookie stored as a hash, idle and absolute ends) and CSRF tokens;
//! * [`pairing`] — pairing codes: format, lifetime, one use;
//! * [`throttle`] — failed guesses of a secret counted per source and platform-wide, and `429` past a limit;
//! * [`fleet`] — the alerts derived from each terminal's latest health report;
//! * [`catalogue`] — the member app's offers and when a member may customize one again;
//! * [`chart`] — the statement's chart of redemptions per day and item, as geometry;
//! * [`close`] — end-of-day totals and reconciliation (shared with the terminal: `redeemd_contract::close`).

pub mod access;
pub mod admission;
pub mod cache_policy;
pub mod card_search;
pub mod cards;
pub mod catalogue;
pub mod chart;
pub mod clearing;
pub mod credentials;
pub mod fleet;
pub mod import;
pub mod judge;
pub mod pairing;
pub mod problem;
pub mod session;
pub mod throttle;
pub use redeemd_contract::close;
