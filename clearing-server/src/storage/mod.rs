//! The server's SQLite database: enrolled terminals, their journals, the exceptions list, and (schema
//! version 2) merchants, cards, packages, the card-reference index, deny lists and request nonces.
//!
//! Synchronous code on one connection; the HTTP layer runs it on a blocking thread. Every accepted batch
//! is committed (WAL, `synchronous=FULL`) before its acknowledgement is built. The card model and its
//! admin operations live in [`crate::cards`]; this module owns the schema and the journal.
//!
//! Schema versions (`PRAGMA user_version`), applied in order by [`open`], existing data kept:
//! 1. terminals, journal, batch closes, exceptions;
//! 2. merchants, cards, packages and items, the entitlement version counter, the
//!    `(terminal, card_ref) → card` index, scope history, deny lists, persistent nonces, and
//!    `journal.card_id` (the platform card a record was mapped to).

use std::path::Path;

use redeemd_contract::journal::genesis_mac;
use redeemd_contract::keys::{TAG_LEN, Tag, TerminalKeys, TerminalSecret, tags_equal};
use redeemd_contract::{JournalRecord, RecordKind};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use thiserror::Error;

use crate::http::problem::Problem;

pub mod bundle;
pub mod cards;
pub mod nonces;
pub mod statements;

/// Schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 3;
/// Longest canonical record accepted (`docs/api/README.md`, "Size limits").
pub const MAX_RECORD_BYTES: usize = 8192;

const SCHEMA_V1: &str = "
CREATE TABLE terminal (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    secret       BLOB NOT NULL,     -- the platform knows every terminal's secret (docs/keys-and-threat-model.md)
    enabled      INTEGER NOT NULL DEFAULT 1,
    enrolled_ms  INTEGER NOT NULL
);
CREATE TABLE journal (
    terminal_id  TEXT NOT NULL REFERENCES terminal(id),
    seq          INTEGER NOT NULL,
    record       BLOB NOT NULL,     -- canonical bytes exactly as MACed by the terminal
    mac          BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, seq)
) WITHOUT ROWID;
CREATE TABLE batch_close (
    terminal_id   TEXT NOT NULL REFERENCES terminal(id),
    business_date TEXT NOT NULL,
    request       TEXT NOT NULL,    -- the close as received (re-serialized), to tell a resend from a change
    answer        TEXT NOT NULL,    -- the answer given, given again to a resend
    PRIMARY KEY (terminal_id, business_date)
) WITHOUT ROWID;
CREATE TABLE exception (
    id           INTEGER PRIMARY KEY,
    terminal_id  TEXT NOT NULL,
    seq          INTEGER,
    code         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    at_ms        INTEGER NOT NULL
);
";

/// Version 2: the card model (`crate::cards`, `clearing-server/README.md` "Tables").
const SCHEMA_V2: &str = "
CREATE TABLE merchant (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    commission_bps     INTEGER NOT NULL CHECK (commission_bps BETWEEN 0 AND 10000),
    categories         TEXT NOT NULL DEFAULT '[]',  -- JSON array of category names, sorted, unique
    full_from_version  INTEGER NOT NULL DEFAULT 0,  -- a delta from below this is answered with a full snapshot
    deny_version       INTEGER NOT NULL DEFAULT 0   -- the merchant's deny-list head
);
INSERT OR IGNORE INTO merchant (id, name, commission_bps)
    SELECT DISTINCT merchant_id, merchant_id, 0 FROM terminal;
-- One monotone counter for every entitlement change (docs: clearing-server/README.md, Versions).
CREATE TABLE version_counter (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    bumped_ms  INTEGER NOT NULL
);
INSERT INTO version_counter (id, version, bumped_ms) VALUES (1, 0, 0);
CREATE TABLE card (
    id             INTEGER PRIMARY KEY,           -- the platform card id
    number         TEXT NOT NULL UNIQUE,          -- full digits: never logged or printed (masked 6/4)
    status         INTEGER NOT NULL CHECK (status BETWEEN 1 AND 4),  -- CardStatus: 1 active 2 lost 3 frozen 4 cancelled
    holder_name    TEXT,                          -- named cards; shown masked
    identity_data  TEXT,                          -- e.g. phone last four; verifiers are computed per terminal
    reissued_to    INTEGER REFERENCES card(id),
    created_ms     INTEGER NOT NULL,
    version        INTEGER NOT NULL,              -- entitlement version of the card's last change
    body           BLOB NOT NULL                  -- derived: canonical Card body with uses_left, usage_through_seq 0, no verifier
);
CREATE INDEX card_by_version ON card(version);
CREATE TABLE package (
    card_id            INTEGER NOT NULL REFERENCES card(id),
    id                 TEXT NOT NULL,
    position           INTEGER NOT NULL,          -- order in the card body (entry index on the reader)
    title              TEXT NOT NULL,
    valid_from_ms      INTEGER NOT NULL,          -- inclusive
    valid_until_ms     INTEGER NOT NULL,          -- exclusive
    scope_kind         INTEGER NOT NULL CHECK (scope_kind BETWEEN 0 AND 2),  -- 0 all, 1 merchants, 2 categories
    scope_list         TEXT NOT NULL,             -- JSON array of merchant ids or categories
    daily_cap          INTEGER,
    identity_required  INTEGER NOT NULL,
    customized_ms      INTEGER NOT NULL,
    PRIMARY KEY (card_id, id)
) WITHOUT ROWID;
CREATE TABLE package_item (
    card_id       INTEGER NOT NULL,
    package_id    TEXT NOT NULL,
    service_code  TEXT NOT NULL,
    position      INTEGER NOT NULL,
    title         TEXT NOT NULL,
    uses_total    INTEGER NOT NULL CHECK (uses_total >= 0),
    price_fen     INTEGER NOT NULL CHECK (price_fen >= 0),
    used          INTEGER NOT NULL DEFAULT 0,     -- redeemed minus voided, every terminal (maintained by uploads)
    PRIMARY KEY (card_id, package_id, service_code),
    FOREIGN KEY (card_id, package_id) REFERENCES package(card_id, id)
) WITHOUT ROWID;
-- The card references computed for each terminal: card_ref = HMAC(terminal's card-token key, number).
CREATE TABLE card_ref (
    terminal_id  TEXT NOT NULL REFERENCES terminal(id),
    card_ref     BLOB NOT NULL,
    card_id      INTEGER NOT NULL REFERENCES card(id),
    PRIMARY KEY (terminal_id, card_ref)
) WITHOUT ROWID;
CREATE INDEX card_ref_by_card ON card_ref(terminal_id, card_id);
ALTER TABLE terminal ADD COLUMN card_refs_through INTEGER NOT NULL DEFAULT 0;  -- card ids indexed so far
-- The union of a card's package scopes before a change of them, to know what a terminal had.
CREATE TABLE scope_change (
    card_id        INTEGER NOT NULL REFERENCES card(id),
    version        INTEGER NOT NULL,
    scopes_before  TEXT NOT NULL,
    PRIMARY KEY (card_id, version)
) WITHOUT ROWID;
CREATE TABLE deny_entry (
    merchant_id     TEXT NOT NULL REFERENCES merchant(id),
    version         INTEGER NOT NULL,             -- per merchant, from 1
    card_id         INTEGER NOT NULL REFERENCES card(id),
    status          INTEGER NOT NULL CHECK (status BETWEEN 2 AND 4),
    entry_version   INTEGER NOT NULL,
    reported_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, version)
) WITHOUT ROWID;
CREATE TABLE nonce (
    terminal_id      TEXT NOT NULL,
    nonce            TEXT NOT NULL,
    forget_after_ms  INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, nonce)
) WITHOUT ROWID;
CREATE INDEX nonce_by_time ON nonce(forget_after_ms);
ALTER TABLE journal ADD COLUMN card_id INTEGER;  -- the platform card of the record's card_ref (NULL: unknown)
CREATE INDEX journal_by_card ON journal(card_id) WHERE card_id IS NOT NULL;
";

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// Version 3: every card status change with its time, so that clearing can tell whether a redemption
/// was made while the platform held the card as lost, frozen or cancelled (`crate::storage::statements`). A
/// database migrated from version 2 gets the lost/frozen/cancelled changes its deny lists recorded
/// (unlocks made before the migration are not known).
const SCHEMA_V3: &str = "
CREATE TABLE card_status_change (
    id      INTEGER PRIMARY KEY,
    card_id INTEGER NOT NULL REFERENCES card(id),
    status  INTEGER NOT NULL CHECK (status BETWEEN 1 AND 4),
    at_ms   INTEGER NOT NULL
);
CREATE INDEX card_status_change_by_card ON card_status_change(card_id, at_ms);
INSERT INTO card_status_change (card_id, status, at_ms)
    SELECT DISTINCT card_id, status, reported_at_ms FROM deny_entry ORDER BY reported_at_ms;
";
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

#[derive(Debug, Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this server's {SCHEMA_VERSION}")]
    Version { found: i64 },
    #[error("terminal {0} is already enrolled")]
    AlreadyEnrolled(String),
    #[error("terminal {id}: stored secret unusable: {reason}")]
    BadSecret { id: String, reason: String },
}

pub fn open(path: &Path) -> Result<Connection, DbError> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let from = usize::try_from(version)
        .ok()
        .filter(|v| *v <= MIGRATIONS.len())
        .ok_or(DbError::Version { found: version })?;
    for step in &MIGRATIONS[from..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(conn)
}

/// Another connection to a database that [`open`] already migrated (snapshot producers read on their own
/// connection, so that a long snapshot does not hold the server's main one).
pub fn connect(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        return Err(DbError::Version { found: version });
    }
    Ok(conn)
}

/// Enrolls a terminal for a merchant with a fresh secret. An unknown merchant is created with defaults
/// (name = id, no commission, no categories); `admin merchant` sets them.
pub fn enroll(
    conn: &Connection,
    terminal_id: &str,
    merchant_id: &str,
    secret: &[u8],
    now_ms: i64,
) -> Result<(), DbError> {
    crate::storage::cards::ensure_merchant(conn, merchant_id)?;
    let n = conn.execute(
        "INSERT OR IGNORE INTO terminal (id, merchant_id, secret, enrolled_ms) VALUES (?1, ?2, ?3, ?4)",
        params![terminal_id, merchant_id, secret, now_ms],
    )?;
    if n == 0 {
        return Err(DbError::AlreadyEnrolled(terminal_id.to_owned()));
    }
    Ok(())
}

/// Enables or disables a terminal (a disabled one is refused with `403 terminal_disabled`). Returns
/// whether the terminal exists.
pub fn set_enabled(conn: &Connection, terminal_id: &str, enabled: bool) -> Result<bool, DbError> {
    let n = conn.execute(
        "UPDATE terminal SET enabled = ?2 WHERE id = ?1",
        params![terminal_id, enabled],
    )?;
    Ok(n == 1)
}

/// An enrolled terminal and its derived keys.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub merchant_id: String,
    pub enabled: bool,
    pub keys: TerminalKeys,
}

pub fn terminal(conn: &Connection, terminal_id: &str) -> Result<Option<Terminal>, DbError> {
    let row: Option<(String, Vec<u8>, bool)> = conn
        .query_row(
            "SELECT merchant_id, secret, enabled FROM terminal WHERE id = ?1",
            [terminal_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((merchant_id, secret, enabled)) = row else {
        return Ok(None);
    };
    let secret = TerminalSecret::from_bytes(&secret).map_err(|e| DbError::BadSecret {
        id: terminal_id.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Some(Terminal {
        merchant_id,
        enabled,
        keys: secret.derive_all(terminal_id),
    }))
}

/// The highest stored seq of a terminal and its MAC (0 and `None` when nothing is stored).
pub fn head(conn: &Connection, terminal_id: &str) -> Result<(u64, Option<Tag>), DbError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, mac FROM journal WHERE terminal_id = ?1 ORDER BY seq DESC LIMIT 1",
            [terminal_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((seq, mac)) => (u64::try_from(seq).unwrap_or(0), tag(&mac)),
        None => (0, None),
    })
}

fn tag(bytes: &[u8]) -> Option<Tag> {
    <[u8; TAG_LEN]>::try_from(bytes).ok()
}

/// One record of an upload, after the JSON envelope was parsed.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub seq: u64,
    pub record: Vec<u8>,
    pub mac: Tag,
}

/// The answer to an accepted upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub acknowledged_seq: u64,
    pub acknowledged_mac: Tag,
    pub stored: u64,
    pub duplicates: u64,
}

/// Verifies and stores a batch, all or nothing (`docs/api/README.md`, "`POST journal`"). The batch's
/// records are consecutive from `from_seq` (checked by the caller). A record the server refuses as
/// unverifiable is also written to the exceptions list (after the batch rolled back).
pub fn store_batch(
    conn: &mut Connection,
    terminal_id: &str,
    keys: &TerminalKeys,
    from_seq: u64,
    records: &[UploadRecord],
    now_ms: i64,
) -> Result<Ack, Problem> {
    let result = store_batch_tx(conn, terminal_id, keys, from_seq, records, now_ms);
    if let Err(p) = &result
        && p.status == 422
        && let Err(e) = conn.execute(
            "INSERT INTO exception (terminal_id, seq, code, detail, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                terminal_id,
                p.seq.map(|s| s as i64),
                p.code,
                p.detail,
                now_ms
            ],
        )
    {
        return Err(Problem::internal(format!("recording exception: {e}")));
    }
    result
}

fn sql(e: rusqlite::Error) -> Problem {
    Problem::internal(format!("database: {e}"))
}

fn store_batch_tx(
    conn: &mut Connection,
    terminal_id: &str,
    keys: &TerminalKeys,
    from_seq: u64,
    records: &[UploadRecord],
    now_ms: i64,
) -> Result<Ack, Problem> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let (head_seq, head_mac) =
        head(&tx, terminal_id).map_err(|e| Problem::internal(e.to_string()))?;
    if from_seq > head_seq + 1 {
        return Err(Problem::new(
            409,
            "sequence_gap",
            format!(
                "batch starts at seq {from_seq} but the server holds {head_seq}: send from {}",
                head_seq + 1
            ),
        )
        .acknowledged(head_seq));
    }
    // The MAC the next record must chain to.
    let mut prev: Tag = if from_seq == 1 {
        genesis_mac(&keys.journal, terminal_id)
    } else if from_seq == head_seq + 1 {
        head_mac.ok_or_else(|| Problem::internal("head without MAC".into()))?
    } else {
        stored(&tx, terminal_id, from_seq - 1)?
            .map(|(_, m)| m)
            .ok_or_else(|| Problem::internal(format!("seq {} missing", from_seq - 1)))?
    };
    let (mut new, mut duplicates) = (0u64, 0u64);
    let mut usage = Usage::default();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO journal (terminal_id, seq, record, mac, received_ms, card_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sql)?;
        for r in records {
            let at = |code, detail: String| {
                Problem::new(422, code, format!("journal seq {}: {detail}", r.seq))
                    .with_seq(r.seq)
                    .acknowledged(head_seq)
            };
            if r.seq <= head_seq {
                match stored(&tx, terminal_id, r.seq)? {
                    Some((bytes, mac)) if bytes == r.record && tags_equal(&mac, &r.mac) => {
                        duplicates += 1;
                        prev = mac;
                        continue;
                    }
                    _ => {
                        return Err(Problem::new(
                            409,
                            "sequence_conflict",
                            format!(
                                "journal seq {}: the server holds a different record at this seq",
                                r.seq
                            ),
                        )
                        .with_seq(r.seq)
                        .acknowledged(head_seq));
                    }
                }
            }
            if r.record.len() > MAX_RECORD_BYTES {
                return Err(at(
                    "record_malformed",
                    format!("{} bytes, at most {MAX_RECORD_BYTES}", r.record.len()),
                ));
            }
            let rec = JournalRecord::decode(&r.record)
                .map_err(|e| at("record_malformed", e.to_string()))?;
            if rec.terminal_id != terminal_id || rec.seq != r.seq {
                return Err(at(
                    "record_mismatch",
                    format!("record says terminal {} seq {}", rec.terminal_id, rec.seq),
                ));
            }
            if !rec.verify_mac(&keys.journal, &r.mac) {
                return Err(at(
                    "record_mac_invalid",
                    "MAC mismatch (record edited?)".into(),
                ));
            }
            if !tags_equal(&rec.prev_mac, &prev) {
                return Err(at(
                    "chain_broken",
                    format!("prev_mac does not equal the MAC of seq {}", r.seq - 1),
                ));
            }
            let card_id = usage.apply(&tx, keys, &rec, now_ms)?;
            insert
                .execute(params![
                    terminal_id,
                    r.seq as i64,
                    r.record,
                    r.mac.as_slice(),
                    now_ms,
                    card_id
                ])
                .map_err(sql)?;
            new += 1;
            prev = r.mac;
        }
    }
    usage.finish(&tx, now_ms)?;
    tx.commit().map_err(sql)?;
    let last = records
        .last()
        .ok_or_else(|| Problem::new(400, "malformed_request", "no records".into()))?;
    Ok(Ack {
        acknowledged_seq: last.seq,
        acknowledged_mac: last.mac,
        stored: new,
        duplicates,
    })
}

/// What a batch's new records do to the platform's cards: each record is mapped to its card through the
/// `(terminal, card_ref)` index, its quantity counted on the card's item (a void subtracts), and every
/// touched card gets one new entitlement version at the end of the batch, so that every shop learns
/// of the usage in its next delta. A record that cannot be mapped is stored all the same (a verified
/// record is never refused) and noted in the exceptions list.
#[derive(Default)]
struct Usage {
    /// Per touched card: (package, service code) → the item's new `uses_left`.
    touched: std::collections::BTreeMap<i64, std::collections::BTreeMap<(String, String), u32>>,
    /// The index was brought up to date during this batch: a miss now is a truly unknown card.
    index_filled: bool,
}

impl Usage {
    fn apply(
        &mut self,
        tx: &Connection,
        keys: &TerminalKeys,
        rec: &JournalRecord,
        now_ms: i64,
    ) -> Result<Option<i64>, Problem> {
        let card_err = |e: crate::storage::cards::CardError| Problem::internal(e.to_string());
        let delta = match rec.kind {
            RecordKind::Redeem => i64::from(rec.quantity),
            RecordKind::Void => -i64::from(rec.quantity),
            // A close is about the terminal's day, not a card.
            RecordKind::BatchClose => return Ok(None),
        };
        let mut card = crate::storage::cards::card_for_ref(tx, &keys.terminal_id, &rec.card_ref)
            .map_err(sql)?;
        if card.is_none() && !self.index_filled {
            crate::storage::cards::fill_card_refs(tx, keys, usize::MAX).map_err(card_err)?;
            self.index_filled = true;
            card = crate::storage::cards::card_for_ref(tx, &keys.terminal_id, &rec.card_ref)
                .map_err(sql)?;
        }
        let Some(card_id) = card else {
            note_exception(
                tx,
                &keys.terminal_id,
                rec.seq,
                "unknown_card",
                &format!(
                    "journal seq {}: card {} is not a card of the platform for this terminal",
                    rec.seq,
                    rec.card_ref.to_hex()
                ),
                now_ms,
            )?;
            return Ok(None);
        };
        let left = crate::storage::cards::add_usage(
            tx,
            card_id,
            &rec.package_id,
            &rec.service_code,
            delta,
        )
        .map_err(sql)?;
        let Some(left) = left else {
            note_exception(
                tx,
                &keys.terminal_id,
                rec.seq,
                "unknown_entitlement",
                &format!(
                    "journal seq {}: card #{card_id} has no item {}/{}",
                    rec.seq, rec.package_id, rec.service_code
                ),
                now_ms,
            )?;
            return Ok(Some(card_id));
        };
        self.touched
            .entry(card_id)
            .or_default()
            .insert((rec.package_id.clone(), rec.service_code.clone()), left);
        Ok(Some(card_id))
    }

    fn finish(self, tx: &Connection, now_ms: i64) -> Result<(), Problem> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let version = crate::storage::cards::bump_version(tx, now_ms).map_err(sql)?;
        for (card, items) in &self.touched {
            let left: Vec<(&str, &str, u32)> = items
                .iter()
                .map(|((p, c), l)| (p.as_str(), c.as_str(), *l))
                .collect();
            crate::storage::cards::patch_uses_left(tx, *card, &left, version)
                .map_err(|e| Problem::internal(e.to_string()))?;
        }
        Ok(())
    }
}

fn note_exception(
    conn: &Connection,
    terminal_id: &str,
    seq: u64,
    code: &str,
    detail: &str,
    now_ms: i64,
) -> Result<(), Problem> {
    conn.prepare_cached(
        "INSERT INTO exception (terminal_id, seq, code, detail, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![terminal_id, seq as i64, code, detail, now_ms]))
    .map_err(sql)?;
    Ok(())
}

fn stored(
    conn: &Connection,
    terminal_id: &str,
    seq: u64,
) -> Result<Option<(Vec<u8>, Tag)>, Problem> {
    let row: Option<(Vec<u8>, Vec<u8>)> = conn
        .prepare_cached("SELECT record, mac FROM journal WHERE terminal_id = ?1 AND seq = ?2")
        .and_then(|mut s| {
            s.query_row(params![terminal_id, seq as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(sql)?;
    Ok(row.and_then(|(b, m)| Some((b, tag(&m)?))))
}

/// Exceptions of a terminal, oldest first: `(seq, code, detail)`.
pub fn exceptions(
    conn: &Connection,
    terminal_id: &str,
) -> Result<Vec<(Option<u64>, String, String)>, DbError> {
    let mut stmt =
        conn.prepare("SELECT seq, code, detail FROM exception WHERE terminal_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map([terminal_id], |r| {
        Ok((
            r.get::<_, Option<i64>>(0)?.map(|s| s as u64),
            r.get(1)?,
            r.get(2)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Reconciles an end-of-day close (`docs/api/README.md`, "`POST batch-close`"), idempotent by
/// (terminal, business date).
pub fn batch_close(
    conn: &mut Connection,
    terminal_id: &str,
    close: &crate::core::close::BatchClose,
) -> Result<crate::core::close::BatchCloseResult, Problem> {
    use crate::core::close;
    let bad = |detail: String| Problem::new(400, "malformed_request", detail);
    let days = close::parse_date(&close.business_date).ok_or_else(|| {
        bad(format!(
            "business_date {:?} is not a valid YYYY-MM-DD",
            close.business_date
        ))
    })?;
    if !(-840..=840).contains(&close.utc_offset_minutes) {
        return Err(bad("utc_offset_minutes outside -840..=840".into()));
    }
    if close.first_seq > close.through_seq {
        return Err(Problem::new(
            422,
            "close_inconsistent",
            format!(
                "first_seq {} above through_seq {}",
                close.first_seq, close.through_seq
            ),
        ));
    }
    let request = serde_json::to_string(close).map_err(|e| Problem::internal(e.to_string()))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let (head_seq, _) = head(&tx, terminal_id).map_err(|e| Problem::internal(e.to_string()))?;
    if close.through_seq > head_seq {
        return Err(Problem::new(
            409,
            "journal_incomplete",
            format!(
                "close covers seq {} but the server holds {head_seq}: upload first",
                close.through_seq
            ),
        )
        .acknowledged(head_seq));
    }
    let before: Option<(String, String)> = tx
        .query_row(
            "SELECT request, answer FROM batch_close WHERE terminal_id = ?1 AND business_date = ?2",
            params![terminal_id, close.business_date],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql)?;
    if let Some((req, answer)) = before {
        if req != request {
            return Err(Problem::new(
                409,
                "batch_close_conflict",
                format!(
                    "{} was already closed with other totals",
                    close.business_date
                ),
            ));
        }
        return serde_json::from_str(&answer).map_err(|e| Problem::internal(e.to_string()));
    }
    let mut records = Vec::new();
    {
        let mut stmt = tx
            .prepare("SELECT record FROM journal WHERE terminal_id = ?1 ORDER BY seq")
            .map_err(sql)?;
        let mut rows = stmt.query([terminal_id]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let bytes: Vec<u8> = row.get(0).map_err(sql)?;
            records.push(JournalRecord::decode(&bytes).map_err(|e| {
                Problem::internal(format!(
                    "stored record of {terminal_id} does not decode: {e}"
                ))
            })?);
        }
    }
    let server = close::totals(&records, close::day_window(days, close.utc_offset_minutes));
    let result = close::reconcile(close, &server);
    let answer = serde_json::to_string(&result).map_err(|e| Problem::internal(e.to_string()))?;
    tx.execute(
        "INSERT INTO batch_close (terminal_id, business_date, request, answer) VALUES (?1, ?2, ?3, ?4)",
        params![terminal_id, close.business_date, request, answer],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_version_1_database_is_migrated_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite3");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute(
                "INSERT INTO terminal (id, merchant_id, secret, enrolled_ms) VALUES ('T-1', 'M-9', ?1, 1)",
                [&[7u8; 32][..]],
            )
            .unwrap();
            c.execute(
                "INSERT INTO journal (terminal_id, seq, record, mac, received_ms) VALUES ('T-1', 1, x'00', x'01', 2)",
                [],
            )
            .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        let c = open(&path).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        assert_eq!(head(&c, "T-1").unwrap().0, 1);
        let card: Option<i64> = c
            .query_row("SELECT card_id FROM journal", [], |r| r.get(0))
            .unwrap();
        assert_eq!(card, None);
        let m = crate::storage::cards::merchant(&c, "M-9").unwrap().unwrap();
        assert_eq!((m.name.as_str(), m.commission_bps), ("M-9", 0));
        assert!(terminal(&c, "T-1").unwrap().is_some());
        drop(c);
        // Opening again is a no-op; a newer schema is refused by name.
        drop(open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 9).unwrap();
        drop(c);
        assert!(matches!(open(&path), Err(DbError::Version { found: 9 })));
    }
}
