//! Journal records: canonical encoding, the HMAC chain, and authorization codes.
//!
//! `mac(n) = HMAC(journal key, "redeemd/journal/v1" ‖ encode(record n))`, where the record includes
//! `prev_mac = mac(n-1)` (for `seq = 1`, [`genesis_mac`]). A deleted, inserted, edited or reordered row
//! breaks either its own MAC or the next row's link; the platform and `redeemd journal verify` recompute
//! the chain. See `docs/journal.md`.

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::{MacKey, Tag};
use crate::model::CardRef;

/// What a journal record is. Stored as its numeric tag; new kinds get new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Uses of one item were redeemed.
    Redeem = 1,
    /// A redemption line was voided (quotes `original_seq`); restores the uses.
    Void = 2,
    /// End-of-day close: `quantity` = records covered, `amount_fen` = net amount, `original_seq` = first seq covered.
    BatchClose = 3,
}

impl RecordKind {
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Redeem),
            2 => Some(Self::Void),
            3 => Some(Self::BatchClose),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Redeem => "redeem",
            Self::Void => "void",
            Self::BatchClose => "batch_close",
        }
    }
}

/// One journal row: everything the platform clears from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub terminal_id: String,
    /// Gap-free, starting at 1, per terminal.
    pub seq: u64,
    pub kind: RecordKind,
    /// Authorization code shown to the cashier; shared by every line of one redemption or void.
    pub auth_code: String,
    pub merchant_id: String,
    pub card_ref: CardRef,
    pub package_id: String,
    pub service_code: String,
    /// Item title at the time of the record (for receipts and reports).
    pub item_title: String,
    pub quantity: u32,
    /// Merchant settlement amount of this line (quantity × price), in fen.
    pub amount_fen: u64,
    /// Void: seq of the line it voids. Batch close: first seq covered. Otherwise 0.
    pub original_seq: u64,
    /// Seq of the first line of this redemption or void (lines of one request are consecutive).
    pub group_seq: u64,
    /// Line number within the group (0-based) and the number of lines.
    pub line: u16,
    pub line_count: u16,
    pub reader_id: String,
    pub reader_txn_id: u64,
    pub cashier_id: String,
    /// Wall clock, unix milliseconds.
    pub wall_ms: i64,
    /// Monotonic time since boot, milliseconds (CLOCK_BOOTTIME).
    pub boot_ms: u64,
    /// Installed cache version when the record was made.
    pub cache_version: u64,
    /// Version of the card's cache entry used for the decision (the platform can refuse to clear
    /// redemptions made against a superseded entry).
    pub entry_version: u64,
    pub prev_mac: Tag,
}

impl JournalRecord {
    /// `<terminal id>-<seq>`: unique across the platform.
    pub fn record_id(&self) -> String {
        format!("{}-{}", self.terminal_id, self.seq)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.str(&self.terminal_id)
            .u64(self.seq)
            .u8(self.kind as u8)
            .str(&self.auth_code)
            .str(&self.merchant_id)
            .fixed(&self.card_ref.0)
            .str(&self.package_id)
            .str(&self.service_code)
            .str(&self.item_title)
            .u32(self.quantity)
            .u64(self.amount_fen)
            .u64(self.original_seq)
            .u64(self.group_seq)
            .u16(self.line)
            .u16(self.line_count)
            .str(&self.reader_id)
            .u64(self.reader_txn_id)
            .str(&self.cashier_id)
            .i64(self.wall_ms)
            .u64(self.boot_ms)
            .u64(self.cache_version)
            .u64(self.entry_version)
            .fixed(&self.prev_mac);
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let terminal_id = r.string("terminal id")?;
        let seq = r.u64()?;
        let at = r.position();
        let tag = r.u8()?;
        let kind = RecordKind::from_tag(tag).ok_or(DecodeError::BadTag {
            field: "record kind",
            tag,
            at,
        })?;
        let rec = JournalRecord {
            terminal_id,
            seq,
            kind,
            auth_code: r.string("auth code")?,
            merchant_id: r.string("merchant id")?,
            card_ref: CardRef(r.array()?),
            package_id: r.string("package id")?,
            service_code: r.string("service code")?,
            item_title: r.string("item title")?,
            quantity: r.u32()?,
            amount_fen: r.u64()?,
            original_seq: r.u64()?,
            group_seq: r.u64()?,
            line: r.u16()?,
            line_count: r.u16()?,
            reader_id: r.string("reader id")?,
            reader_txn_id: r.u64()?,
            cashier_id: r.string("cashier id")?,
            wall_ms: r.i64()?,
            boot_ms: r.u64()?,
            cache_version: r.u64()?,
            entry_version: r.u64()?,
            prev_mac: r.array()?,
        };
        r.finish()?;
        Ok(rec)
    }

    pub fn mac(&self, journal_key: &MacKey) -> Tag {
        journal_key.mac(&[b"redeemd/journal/v1", &self.encode()])
    }

    pub fn verify_mac(&self, journal_key: &MacKey, mac: &[u8]) -> bool {
        journal_key.verify(&[b"redeemd/journal/v1", &self.encode()], mac)
    }
}

/// The `prev_mac` of record 1.
pub fn genesis_mac(journal_key: &MacKey, terminal_id: &str) -> Tag {
    journal_key.mac(&[b"redeemd/journal/genesis/v1", terminal_id.as_bytes()])
}

/// Authorization code of the redemption (or void) whose first line has `group_seq`: the seq in decimal,
/// at least six digits, then two keyed check digits. Digits only, so it can be typed on a POS keypad;
/// the check digits catch typing errors and make codes of other sequence numbers unguessable.
pub fn auth_code(journal_key: &MacKey, terminal_id: &str, group_seq: u64) -> String {
    format!(
        "{group_seq:06}{:02}",
        check_digits(journal_key, terminal_id, group_seq)
    )
}

/// The group seq an authorization code stands for, or `None` if it is malformed or its check digits are wrong.
pub fn parse_auth_code(journal_key: &MacKey, terminal_id: &str, code: &str) -> Option<u64> {
    let code = code.trim();
    if code.len() < 8 || code.len() > 22 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (seq_part, check_part) = code.split_at(code.len() - 2);
    let seq: u64 = seq_part.parse().ok()?;
    let check: u8 = check_part.parse().ok()?;
    (auth_code(journal_key, terminal_id, seq) == code
        && check == check_digits(journal_key, terminal_id, seq))
    .then_some(seq)
}

fn check_digits(journal_key: &MacKey, terminal_id: &str, seq: u64) -> u8 {
    let t = journal_key.mac(&[
        b"redeemd/auth/v1",
        terminal_id.as_bytes(),
        &seq.to_be_bytes(),
    ]);
    (u16::from_be_bytes([t[0], t[1]]) % 100) as u8
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::{Purpose, TerminalSecret};

    fn key() -> MacKey {
        TerminalSecret::from_bytes(&[5; 32])
            .unwrap()
            .derive(Purpose::JournalMac, "T-1")
    }

    pub(crate) fn record(seq: u64, prev_mac: Tag) -> JournalRecord {
        JournalRecord {
            terminal_id: "T-1".into(),
            seq,
            kind: RecordKind::Redeem,
            auth_code: auth_code(&key(), "T-1", seq),
            merchant_id: "M-1".into(),
            card_ref: CardRef([1; 32]),
            package_id: "P1".into(),
            service_code: "WASH".into(),
            item_title: "精洗".into(),
            quantity: 2,
            amount_fen: 7000,
            original_seq: 0,
            group_seq: seq,
            line: 0,
            line_count: 1,
            reader_id: "counter-1".into(),
            reader_txn_id: 42,
            cashier_id: "c7".into(),
            wall_ms: 1_700_000_000_000,
            boot_ms: 5000,
            cache_version: 3,
            entry_version: 2,
            prev_mac,
        }
    }

    #[test]
    fn records_roundtrip_and_chain() {
        let k = key();
        let r1 = record(1, genesis_mac(&k, "T-1"));
        let m1 = r1.mac(&k);
        let r2 = record(2, m1);
        assert_eq!(JournalRecord::decode(&r2.encode()).unwrap(), r2);
        assert!(r2.verify_mac(&k, &r2.mac(&k)));
        let mut edited = r2.clone();
        edited.quantity = 1;
        assert!(!edited.verify_mac(&k, &r2.mac(&k)));
        assert_eq!(r2.record_id(), "T-1-2");
    }

    #[test]
    fn auth_codes_roundtrip_and_reject_typos() {
        let k = key();
        for seq in [1u64, 42, 999_999, 1_000_000, u64::MAX / 10] {
            let code = auth_code(&k, "T-1", seq);
            assert!(code.len() >= 8 && code.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(parse_auth_code(&k, "T-1", &code), Some(seq));
            assert_eq!(
                parse_auth_code(&k, "T-2", &code).is_some(),
                auth_code(&k, "T-2", seq) == code
            );
        }
        let code = auth_code(&k, "T-1", 42);
        let mut wrong = 0;
        for d in 0..10u8 {
            let typo = format!("{}{}", &code[..7], d);
            if typo != code && parse_auth_code(&k, "T-1", &typo).is_none() {
                wrong += 1;
            }
        }
        assert_eq!(wrong, 9);
        assert_eq!(parse_auth_code(&k, "T-1", "12ab5678"), None);
        assert_eq!(parse_auth_code(&k, "T-1", "1234"), None);
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = JournalRecord::decode(&bytes);
        }
    }
}
