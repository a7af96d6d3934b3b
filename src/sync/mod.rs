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
//! * [`health`] — the terminal's health report, pure: readers from the daemon's status board, backlog,
//!   cache and last close from the store.
//! * [`pass`] — one sync pass (deny list, journal, entitlements, closes, and for the daemon the
//!   health report) through the store's handle
//!   (`crate::store::owner`) in short pieces, and the lock that keeps two processes from syncing one
//!   state directory at once.
//!
//! The periodic task that runs passes in the daemon is `crate::daemon::sync`; `redeemd sync` runs one.
//! Sync never blocks the counter: redemptions are decided from the local cache whatever sync does.

pub mod client;
pub mod close;
pub mod decode;
pub mod health;
pub mod pass;
pub mod plan;
pub mod wire;

/// A redemption record of terminal `T-1` for the sync modules' unit tests: one line of `quantity`
/// units of `WASH` at 10.00 each, at `wall_ms`; callers change what their test is about.
#[cfg(test)]
pub(crate) fn test_record(
    seq: u64,
    wall_ms: i64,
    quantity: u32,
) -> redeemd_contract::JournalRecord {
    redeemd_contract::JournalRecord {
        terminal_id: "T-1".into(),
        seq,
        kind: redeemd_contract::RecordKind::Redeem,
        auth_code: format!("{seq:06}00"),
        merchant_id: "M-1".into(),
        card_ref: redeemd_contract::CardRef([2; 32]),
        package_id: "P1".into(),
        service_code: "WASH".into(),
        item_title: "洗车".into(),
        quantity,
        amount_fen: 1000 * u64::from(quantity),
        original_seq: 0,
        group_seq: seq,
        line: 0,
        line_count: 1,
        reader_id: "r".into(),
        reader_txn_id: seq,
        cashier_id: "c".into(),
        wall_ms,
        boot_ms: 1,
        cache_version: 1,
        entry_version: 1,
        prev_mac: [0; 32],
    }
}
