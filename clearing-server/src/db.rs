//! The server's SQLite database: enrolled terminals, their journals, the exceptions list.
//!
//! Synchronous code on one connection; the HTTP layer runs it on a blocking thread. Every accepted batch
//! is committed (WAL, `synchronous=FULL`) before its acknowledgement is built.

use std::path::Path;

use redeemd_contract::JournalRecord;
use redeemd_contract::journal::genesis_mac;
use redeemd_contract::keys::{TAG_LEN, Tag, TerminalKeys, TerminalSecret, tags_equal};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use thiserror::Error;

use crate::problem::Problem;

/// Schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// Longest canonical record accepted (`docs/api/README.md`, "Size limits").
pub const MAX_RECORD_BYTES: usize = 8192;

const SCHEMA: &str = "
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

#[derive(Debug, Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database schema version {found} is not {SCHEMA_VERSION}")]
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
    match version {
        0 => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        SCHEMA_VERSION => {}
        found => return Err(DbError::Version { found }),
    }
    tx.commit()?;
    Ok(conn)
}

/// Enrolls a terminal for a merchant with a fresh secret.
pub fn enroll(
    conn: &Connection,
    terminal_id: &str,
    merchant_id: &str,
    secret: &[u8],
    now_ms: i64,
) -> Result<(), DbError> {
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
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO journal (terminal_id, seq, record, mac, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
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
            insert
                .execute(params![
                    terminal_id,
                    r.seq as i64,
                    r.record,
                    r.mac.as_slice(),
                    now_ms
                ])
                .map_err(sql)?;
            new += 1;
            prev = r.mac;
        }
    }
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
    close: &crate::close::BatchClose,
) -> Result<crate::close::BatchCloseResult, Problem> {
    use crate::close;
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
