//! Mapping between SQLite rows and contract types, and the MACs of the terminal's own state rows.
//!
//! Every read of a MACed row goes through here, so a tampered value of the wrong type or size becomes a
//! named [`Integrity`] error, never a panic.

use redeemd_contract::codec::{Reader, Writer};
use redeemd_contract::keys::{MacKey, Tag};
use redeemd_contract::model::CardRef;
use redeemd_contract::{JournalRecord, RecordKind};
use rusqlite::Row;

use crate::engine::IdentityState;

/// A stored row that failed a check: `what` names the row, `reason` says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct Integrity {
    pub what: String,
    pub reason: String,
}

impl Integrity {
    pub fn new(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// The journal column list, as a macro so that the SQL below is built at compile time.
macro_rules! journal_columns {
    () => {
        "seq, record_id, kind, auth_code, merchant_id, card_ref, package_id, service_code, item_title, \
         quantity, amount_fen, original_seq, group_seq, line, line_count, reader_id, reader_txn_id, cashier_id, \
         wall_ms, boot_ms, cache_version, entry_version, prev_mac, mac"
    };
}

/// Columns of `journal` in the order [`record_from_row`] reads them (plus the type of `seq`).
pub const JOURNAL_COLUMNS: &str = concat!(journal_columns!(), ", typeof(seq)");
pub const JOURNAL_GROUP: &str = concat!(
    "SELECT ",
    journal_columns!(),
    ", typeof(seq) FROM journal WHERE seq BETWEEN ?1 AND ?1 + ?2 AND group_seq = ?1 ORDER BY seq"
);
pub const JOURNAL_FROM: &str = concat!(
    "SELECT ",
    journal_columns!(),
    ", typeof(seq) FROM journal WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
);
pub const JOURNAL_INSERT: &str = concat!(
    "INSERT INTO journal (",
    journal_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
);

fn col<T: rusqlite::types::FromSql>(
    row: &Row<'_>,
    idx: usize,
    what: &dyn Fn() -> String,
    name: &str,
) -> Result<T, Integrity> {
    row.get(idx)
        .map_err(|e| Integrity::new(what(), format!("column {name}: {e}")))
}

fn int<T: TryFrom<i64>>(
    row: &Row<'_>,
    idx: usize,
    what: &dyn Fn() -> String,
    name: &str,
) -> Result<T, Integrity> {
    let v: i64 = col(row, idx, what, name)?;
    T::try_from(v).map_err(|_| Integrity::new(what(), format!("column {name}: {v} out of range")))
}

fn array32(
    row: &Row<'_>,
    idx: usize,
    what: &dyn Fn() -> String,
    name: &str,
) -> Result<[u8; 32], Integrity> {
    let v: Vec<u8> = col(row, idx, what, name)?;
    v.try_into().map_err(|v: Vec<u8>| {
        Integrity::new(
            what(),
            format!("column {name}: {} bytes, expected 32", v.len()),
        )
    })
}

/// Reads one journal row (selected with [`JOURNAL_COLUMNS`]) into a record, its stored MAC and record id.
pub fn record_from_row(
    row: &Row<'_>,
    terminal_id: &str,
) -> Result<(JournalRecord, Tag, String), Integrity> {
    let raw_seq: rusqlite::types::Value = row
        .get(0)
        .map_err(|e| Integrity::new("journal row", e.to_string()))?;
    let what_seq = match raw_seq {
        rusqlite::types::Value::Integer(s) => s.to_string(),
        other => format!("{other:?}"),
    };
    let what = move || format!("journal seq {what_seq}");
    let w: &dyn Fn() -> String = &what;
    let kind_tag: u8 = int(row, 2, w, "kind")?;
    let kind = RecordKind::from_tag(kind_tag)
        .ok_or_else(|| Integrity::new(what(), format!("column kind: unknown kind {kind_tag}")))?;
    let rec = JournalRecord {
        terminal_id: terminal_id.to_owned(),
        seq: int(row, 0, w, "seq")?,
        kind,
        auth_code: col(row, 3, w, "auth_code")?,
        merchant_id: col(row, 4, w, "merchant_id")?,
        card_ref: CardRef(array32(row, 5, w, "card_ref")?),
        package_id: col(row, 6, w, "package_id")?,
        service_code: col(row, 7, w, "service_code")?,
        item_title: col(row, 8, w, "item_title")?,
        quantity: int(row, 9, w, "quantity")?,
        amount_fen: int(row, 10, w, "amount_fen")?,
        original_seq: int(row, 11, w, "original_seq")?,
        group_seq: int(row, 12, w, "group_seq")?,
        line: int(row, 13, w, "line")?,
        line_count: int(row, 14, w, "line_count")?,
        reader_id: col(row, 15, w, "reader_id")?,
        reader_txn_id: int(row, 16, w, "reader_txn_id")?,
        cashier_id: col(row, 17, w, "cashier_id")?,
        wall_ms: col(row, 18, w, "wall_ms")?,
        boot_ms: int(row, 19, w, "boot_ms")?,
        cache_version: int(row, 20, w, "cache_version")?,
        entry_version: int(row, 21, w, "entry_version")?,
        prev_mac: array32(row, 22, w, "prev_mac")?,
    };
    let mac = array32(row, 23, w, "mac")?;
    let record_id: String = col(row, 1, w, "record_id")?;
    let seq_type: String = col(row, 24, w, "seq type")?;
    if seq_type != "integer" {
        return Err(Integrity::new(what(), "column seq: not an integer"));
    }
    Ok((rec, mac, record_id))
}

/// Checks one journal row on its own: MAC and record id. (Chain links are checked by the caller.)
pub fn check_record(
    rec: &JournalRecord,
    mac: &Tag,
    record_id: &str,
    journal_key: &MacKey,
) -> Result<(), Integrity> {
    let what = || format!("journal seq {}", rec.seq);
    if !rec.verify_mac(journal_key, mac) {
        return Err(Integrity::new(what(), "MAC mismatch (row edited)"));
    }
    if record_id != rec.record_id() {
        return Err(Integrity::new(
            what(),
            format!(
                "record id {record_id:?} does not match {:?}",
                rec.record_id()
            ),
        ));
    }
    Ok(())
}

/// The terminal's chain head and trusted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalRow {
    pub terminal_id: String,
    pub merchant_id: String,
    pub head_seq: u64,
    pub head_mac: Tag,
    pub last_trusted_wall_ms: i64,
    pub synced_through_seq: u64,
    pub cache_version: u64,
    /// Highest deny-list version applied (0: none).
    pub deny_version: u64,
    /// Number of deny-list rows stored: a deleted row is caught by the count.
    pub deny_count: u64,
    /// Number of identity-attempt rows stored (sealed rows only): a deleted lockout is caught.
    pub identity_count: u64,
    /// The row's MAC covers every field above and the terminal's other rows carry MACs
    /// (`mac_format` 2, schema 7); `false`: a row MACed as before schema 7, not yet sealed.
    pub sealed: bool,
}

impl TerminalRow {
    /// MAC over the row. A sealed row (`mac_format` 2) is MACed under its own domain tag over every
    /// field, so that setting the format back to 1 breaks the MAC.
    ///
    /// An unsealed row keeps the form it was written in: the deny fields are appended only when either
    /// is non-zero, so that a row written before schema version 4 (which had none) verifies unchanged
    /// after the migration. The fields are fixed-width, so the two forms cannot collide.
    pub fn mac(&self, journal_key: &MacKey) -> Tag {
        let (domain, tail): (&[u8], Vec<u8>) = if self.sealed {
            (
                b"redeemd/terminal-state/v2",
                [
                    self.deny_version.to_be_bytes(),
                    self.deny_count.to_be_bytes(),
                    self.identity_count.to_be_bytes(),
                ]
                .concat(),
            )
        } else if self.deny_version == 0 && self.deny_count == 0 {
            (b"redeemd/terminal-state/v1", Vec::new())
        } else {
            (
                b"redeemd/terminal-state/v1",
                [
                    self.deny_version.to_be_bytes(),
                    self.deny_count.to_be_bytes(),
                ]
                .concat(),
            )
        };
        journal_key.mac(&[
            domain,
            &(self.terminal_id.len() as u64).to_be_bytes(),
            self.terminal_id.as_bytes(),
            &(self.merchant_id.len() as u64).to_be_bytes(),
            self.merchant_id.as_bytes(),
            &self.head_seq.to_be_bytes(),
            &self.head_mac,
            &self.last_trusted_wall_ms.to_be_bytes(),
            &self.synced_through_seq.to_be_bytes(),
            &self.cache_version.to_be_bytes(),
            &tail,
        ])
    }

    /// The `mac_format` column's value for this row.
    pub fn mac_format(&self) -> i64 {
        if self.sealed { 2 } else { 1 }
    }
}

/// MAC over the installed manifest's row (schema 7): its version, the signed bytes (by SHA-256) and
/// when it was installed, so that no column of the row can be edited unnoticed.
pub fn manifest_row_mac(
    journal_key: &MacKey,
    version: i64,
    signed: &[u8],
    installed_wall_ms: i64,
) -> Tag {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(signed).into();
    journal_key.mac(&[
        b"redeemd/cache-manifest/v1",
        &version.to_be_bytes(),
        &digest,
        &installed_wall_ms.to_be_bytes(),
    ])
}

/// One end-of-day close record as stored (`batch_close`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRow {
    pub business_date: String,
    pub utc_offset_minutes: i64,
    pub first_seq: i64,
    pub through_seq: i64,
    pub result: String,
    pub answer: String,
    pub closed_wall_ms: i64,
}

impl CloseRow {
    /// MAC over every column of the row (schema 7).
    pub fn mac(&self, journal_key: &MacKey) -> Tag {
        journal_key.mac(&[
            b"redeemd/batch-close/v1",
            &(self.business_date.len() as u64).to_be_bytes(),
            self.business_date.as_bytes(),
            &self.utc_offset_minutes.to_be_bytes(),
            &self.first_seq.to_be_bytes(),
            &self.through_seq.to_be_bytes(),
            &(self.result.len() as u64).to_be_bytes(),
            self.result.as_bytes(),
            &(self.answer.len() as u64).to_be_bytes(),
            self.answer.as_bytes(),
            &self.closed_wall_ms.to_be_bytes(),
        ])
    }
}

/// Per-card anchor of local usage, updated in the same transaction as the card's journal rows: a
/// lookup compares it with the card's journal rows, so deleting or editing them is caught at the counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub rows: u64,
    pub last_seq: u64,
    pub net_units: i64,
}

impl UsageRow {
    /// MAC over the anchor and a hash of the card's history blob (see [`encode_history`]).
    pub fn mac(&self, journal_key: &MacKey, card: &CardRef, history: &[u8]) -> Tag {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(history).into();
        journal_key.mac(&[
            b"redeemd/card-usage/v2",
            &card.0,
            &self.rows.to_be_bytes(),
            &self.last_seq.to_be_bytes(),
            &self.net_units.to_be_bytes(),
            &digest,
        ])
    }

    /// The anchor that a card's journal history implies.
    pub fn fold(history: &[JournalRecord]) -> Self {
        let mut u = UsageRow::default();
        for r in history {
            u.add(r);
        }
        u
    }

    /// Extends the anchor with one more of the card's records.
    pub fn add(&mut self, r: &JournalRecord) {
        self.rows += 1;
        self.last_seq = self.last_seq.max(r.seq);
        self.net_units += match r.kind {
            RecordKind::Redeem => i64::from(r.quantity),
            RecordKind::Void => -i64::from(r.quantity),
            RecordKind::BatchClose => 0,
        };
    }
}

/// Appends one record to a card's history blob, in the compact form decisions need:
/// `u64 seq ‖ u8 kind ‖ str package_id ‖ str service_code ‖ u32 quantity ‖ i64 wall_ms ‖ u64 original_seq ‖ u64 group_seq`.
///
/// The blob lives in the card's usage row, written in the same transaction as the journal rows and
/// authenticated by the row's MAC (which covers its SHA-256), so that a lookup reads one small row instead
/// of probing the journal. `journal verify` checks it against the journal.
pub fn encode_history(out: &mut Vec<u8>, rec: &JournalRecord) {
    let mut w = Writer::with_capacity(64);
    w.u64(rec.seq)
        .u8(rec.kind as u8)
        .str(&rec.package_id)
        .str(&rec.service_code)
        .u32(rec.quantity)
        .i64(rec.wall_ms)
        .u64(rec.original_seq)
        .u64(rec.group_seq);
    out.extend_from_slice(w.as_bytes());
}

/// Parses a card's history blob (already authenticated by the usage row's MAC) into records carrying
/// the compact fields; the others are left empty. Strict: ascending seqs, known kinds, no trailing bytes.
pub fn decode_history(
    blob: &[u8],
    card: &CardRef,
    terminal_id: &str,
) -> Result<Vec<JournalRecord>, Integrity> {
    let what = || format!("card usage {}", card.to_hex());
    let mut out: Vec<JournalRecord> = Vec::new();
    let mut r = Reader::new(blob);
    while r.remaining() > 0 {
        let n = out.len();
        let bad = |reason: String| Integrity::new(what(), format!("history record {n}: {reason}"));
        let seq = r.u64().map_err(|e| bad(e.to_string()))?;
        let tag = r.u8().map_err(|e| bad(e.to_string()))?;
        let kind = RecordKind::from_tag(tag).ok_or_else(|| bad(format!("unknown kind {tag}")))?;
        let package_id = r.string("package id").map_err(|e| bad(e.to_string()))?;
        let service_code = r.string("service code").map_err(|e| bad(e.to_string()))?;
        let quantity = r.u32().map_err(|e| bad(e.to_string()))?;
        let wall_ms = r.i64().map_err(|e| bad(e.to_string()))?;
        let original_seq = r.u64().map_err(|e| bad(e.to_string()))?;
        let group_seq = r.u64().map_err(|e| bad(e.to_string()))?;
        if out.last().is_some_and(|p| p.seq >= seq) {
            return Err(bad("out of order".into()));
        }
        out.push(JournalRecord {
            terminal_id: terminal_id.to_owned(),
            seq,
            kind,
            auth_code: String::new(),
            merchant_id: String::new(),
            card_ref: *card,
            package_id,
            service_code,
            item_title: String::new(),
            quantity,
            amount_fen: 0,
            original_seq,
            group_seq,
            line: 0,
            line_count: 0,
            reader_id: String::new(),
            reader_txn_id: 0,
            cashier_id: String::new(),
            wall_ms,
            boot_ms: 0,
            cache_version: 0,
            entry_version: 0,
            prev_mac: [0; 32],
        });
    }
    Ok(out)
}

pub fn identity_mac(journal_key: &MacKey, card: &CardRef, s: &IdentityState) -> Tag {
    journal_key.mac(&[
        b"redeemd/identity-attempts/v1",
        &card.0,
        &s.failures.to_be_bytes(),
        &s.locked_until_ms.to_be_bytes(),
    ])
}
