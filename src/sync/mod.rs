//! Sync with the platform's clearing server (`docs/api/README.md`).
//!
//! * [`plan`] — pure planning: resuming from the server's head, batching the unacknowledged journal,
//!   applying upload answers (refusing hostile acknowledgements), backoff with jitter and `Retry-After`.
//! * [`wire`] — the API's JSON bodies, terminal side: the upload body, reading heads, acks, deny lists
//!   and problems.
//! * [`client`] — the thin HTTP driver: reqwest + rustls, every request signed with
//!   `redeemd_contract::request`, timeouts, streaming decompression; one error enum naming what failed.
//! * [`decode`] — bounded streaming `Content-Encoding` decoding (zstd, gzip), pure.
//! * [`close`] — pure planning of end-of-day closes: which ended, fully acknowledged days to close, with
//!   the platform's own totals.
//! * [`pass`] — one sync pass (deny list, journal, entitlements, closes) through the daemon's store handle in
//!   short pieces, and the lock that keeps two processes from syncing one state directory at once.
//!
//! The periodic task that runs passes in the daemon is `crate::daemon::sync`; `redeemd sync` runs one.
//! Sync never blocks the counter: redemptions are decided from the local cache whatever sync does.

pub mod client;
pub mod close;
pub mod decode;
pub mod pass;
pub mod plan;
pub mod wire;
