//! Sync with the platform's clearing server (`docs/api/README.md`).
//!
//! * [`plan`] — pure planning: resuming from the server's head, batching the unacknowledged journal,
//!   applying upload answers (refusing hostile acknowledgements), backoff with jitter and `Retry-After`.
//! * [`wire`] — the API's JSON bodies, terminal side: the upload body, reading heads, acks and problems.
//!
//! The HTTP client that drives it (reqwest + rustls, signing each request with
//! `redeemd_contract::request`) is a thin layer still to be written; it must never block the counter.

pub mod plan;
pub mod wire;
