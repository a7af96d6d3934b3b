//! Journal records and upload bodies for the server tests.
#![allow(dead_code)]

use redeemd_contract::journal::{auth_code, genesis_mac};
use redeemd_contract::keys::{Tag, TerminalKeys};
use redeemd_contract::{CardRef, JournalRecord, RecordKind};

pub const T0: i64 = 1_795_000_000_000;

/// The terminal's own upload body (`redeemd::sync::wire`), so that these tests also check that the
/// daemon's client and this server agree on the wire format.
pub fn upload_body(from_seq: u64, recs: &[(JournalRecord, Tag)]) -> Vec<u8> {
    assert_eq!(recs.first().map(|(r, _)| r.seq), Some(from_seq), "test bug");
    redeemd::sync::wire::upload_body(recs)
}

pub fn record(keys: &TerminalKeys, seq: u64, prev_mac: Tag, quantity: u32) -> JournalRecord {
    JournalRecord {
        terminal_id: keys.terminal_id.clone(),
        seq,
        kind: RecordKind::Redeem,
        auth_code: auth_code(&keys.journal, &keys.terminal_id, seq),
        merchant_id: "M-1".into(),
        card_ref: CardRef([3; 32]),
        package_id: "P1".into(),
        service_code: "WASH".into(),
        item_title: "精洗".into(),
        quantity,
        amount_fen: 3500 * u64::from(quantity),
        original_seq: 0,
        group_seq: seq,
        line: 0,
        line_count: 1,
        reader_id: "counter-1".into(),
        reader_txn_id: seq,
        cashier_id: "c1".into(),
        wall_ms: T0 + seq as i64,
        boot_ms: seq,
        cache_version: 1,
        entry_version: 1,
        prev_mac,
    }
}

/// A valid chain of `n` records; `quantity(seq)` varies content for fork tests.
pub fn chain(
    keys: &TerminalKeys,
    n: u64,
    quantity: impl Fn(u64) -> u32,
) -> Vec<(JournalRecord, Tag)> {
    let mut prev = genesis_mac(&keys.journal, &keys.terminal_id);
    (1..=n)
        .map(|seq| {
            let r = record(keys, seq, prev, quantity(seq));
            prev = r.mac(&keys.journal);
            (r, prev)
        })
        .collect()
}
