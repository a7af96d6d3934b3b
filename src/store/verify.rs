//! Full verification of a shop database, for `redeemd journal verify` / `cache verify`, `doctor`, the
//! daemon's journal check at start, and the platform's reconciliation. Every finding names the row
//! (`journal seq 1042`, `cache entry <ref>`, `outcome reader R-1 txn 7`) and the reason; verification never stops at the first
//! finding of a kind that can be skipped.
//!
//! [`database`] is what the tools run: SQLite's own structural check, then **the checks opening the
//! store makes** (`store::check`: whose database, schema, terminal state, chain head, manifest, deny
//! list, identity counters), then the scope's full walk (every journal row and close record, or every
//! cache entry; the journal scope includes the stored answers to the readers). "Verify says OK" therefore means "the daemon will open it".

use std::path::Path;

use redeemd_contract::TerminalSecret;
use redeemd_contract::journal::genesis_mac;
use redeemd_contract::keys::{TerminalKeys, tags_equal};
use redeemd_contract::model::{Card, CardRef};
use redeemd_contract::snapshot::{EntryOp, Manifest, verify_entry_mac};
use rusqlite::{Connection, OptionalExtension};

use super::rows::{
    Integrity, JOURNAL_COLUMNS, UsageRow, check_record, encode_history, record_from_row,
};
use super::schema::HAS_USAGE;
use super::{DB_FILE, StoreError, check, state_dir};

/// What a verification covers beyond the opening checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every journal row, the chain, each card's usage, every close record (`journal verify`).
    Journal,
    /// Every cache entry (`cache verify`).
    Cache,
    /// Both (`doctor`).
    All,
}

/// The outcome of [`database`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The terminal and merchant the database was created for.
    pub terminal_id: String,
    pub merchant_id: String,
    /// Journal rows checked (journal scope).
    pub journal_rows: Option<u64>,
    /// The installed manifest when it verifies, and the cache entries checked (cache scope).
    pub cache: Option<(Option<Manifest>, u64)>,
    pub findings: Vec<Integrity>,
}

/// Verifies the database in `state_dir` with the terminal secret: every check opening the store makes,
/// and the scope's walk. `expected`: the configured terminal and merchant, when a configuration is
/// known. A database that is not this terminal's, or a key that is not its own, is an error naming
/// that (not a finding: nothing was edited); a missing or emptied database likewise.
pub fn database(
    state_dir: &Path,
    secret: &TerminalSecret,
    expected: Option<(&str, &str)>,
    scope: Scope,
) -> Result<Verification, StoreError> {
    let path = state_dir.join(DB_FILE);
    if state_dir::presence(state_dir)? == state_dir::Presence::Empty {
        return Err(StoreError::Missing { path });
    }
    let conn = super::open_database(&path)?;
    let mut findings = database_file(&conn);
    // One read snapshot for everything below: the daemon may be committing meanwhile.
    conn.execute_batch("BEGIN DEFERRED")?;
    let result = in_snapshot(&conn, secret, expected, scope, &mut findings);
    // A read transaction: ending it cannot lose anything.
    let _ = conn.execute_batch("COMMIT");
    let (terminal_id, merchant_id, journal_rows, cache) = result?;
    Ok(Verification {
        terminal_id,
        merchant_id,
        journal_rows,
        cache,
        findings,
    })
}

type Checked = (String, String, Option<u64>, Option<(Option<Manifest>, u64)>);

fn in_snapshot(
    conn: &Connection,
    secret: &TerminalSecret,
    expected: Option<(&str, &str)>,
    scope: Scope,
    findings: &mut Vec<Integrity>,
) -> Result<Checked, StoreError> {
    let stored = check::stored_ids(conn).ok().flatten();
    let (terminal_id, merchant_id) =
        match check::identify(conn, &|id: &str| Some(secret.derive_all(id)), expected) {
            Ok(Some(owner)) => (owner.terminal_id, owner.merchant_id),
            Ok(None) => {
                findings.push(Integrity::new("terminal state", "row missing (deleted)"));
                let (t, m) = expected.unwrap_or_default();
                (t.to_owned(), m.to_owned())
            }
            // An edited row is a finding like any other; go on with the ids the database names.
            Err(StoreError::Integrity(i)) => {
                findings.push(i);
                match (&stored, expected) {
                    (_, Some((t, m))) => (t.to_owned(), m.to_owned()),
                    (Some(ids), None) => (ids.terminal_id.clone(), ids.merchant_id.clone()),
                    (None, None) => (String::new(), String::new()),
                }
            }
            Err(e) => return Err(e),
        };
    let keys = secret.derive_all(&terminal_id);
    let mut opening = check::Findings::default();
    check::load_state(conn, &keys, &mut opening)?;
    findings.extend(opening.all());
    let journal_rows = match scope {
        Scope::Journal | Scope::All => {
            let report = journal_walk(conn, &keys, false)?;
            findings.extend(report.findings);
            let sealed = stored.as_ref().is_some_and(|s| s.sealed);
            super::close::verify_rows(conn, &keys, sealed, findings)?;
            Some(report.checked)
        }
        Scope::Cache => None,
    };
    let cache = match scope {
        Scope::Cache | Scope::All => {
            let (manifest, report) = cache_walk(conn, &keys, false)?;
            findings.extend(report.findings);
            Some((manifest, report.checked))
        }
        Scope::Journal => None,
    };
    Ok((terminal_id, merchant_id, journal_rows, cache))
}

/// Result of a verification: how many rows were checked and what failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: u64,
    pub findings: Vec<Integrity>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// A one-row read whose columns were edited into other types reads as no row (the opening checks
/// name the row); other errors stay errors.
fn type_edited<T>(e: rusqlite::Error) -> rusqlite::Result<Option<T>> {
    match e {
        rusqlite::Error::InvalidColumnType(..) => Ok(None),
        e => Err(e),
    }
}

/// SQLite's own structural check of the file: truncation and page corruption, and (unlike
/// `quick_check`) every index against its table — a byte changed in an index would otherwise go
/// unnoticed while lookups through the index (a void's "already voided?") read it.
pub fn database_file(conn: &Connection) -> Vec<Integrity> {
    match conn.prepare("PRAGMA integrity_check").and_then(|mut s| {
        s.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()
    }) {
        Ok(lines) if lines == ["ok"] => Vec::new(),
        Ok(lines) => lines
            .into_iter()
            .take(20)
            .map(|l| Integrity::new("database file", l))
            .collect(),
        Err(e) => vec![Integrity::new("database file", e.to_string())],
    }
}

/// What the journal says about one card: the anchor its rows fold to and their history copy, encoded
/// as the usage row holds it (about 40 bytes a record, not the decoded records: a million-row journal
/// is verified in tens of MB, also at every daemon start).
#[derive(Default)]
struct CardFold {
    usage: UsageRow,
    history: Vec<u8>,
}

/// Walks the whole journal: gap-free seqs from 1, each row's MAC and record id, each chain link, the
/// MACed chain head, and every card's usage anchor against the fold of its rows; then every stored
/// answer and every reader's latest-transaction row (their MACs: `super::answers::verify`).
///
/// All of it reads one snapshot (a read transaction, or the caller's): it runs beside a daemon that
/// keeps committing, and a redemption landing between the journal scan and the head or usage reads
/// would otherwise look like rows removed at the end.
pub fn journal(conn: &Connection, keys: &TerminalKeys) -> Result<VerifyReport, rusqlite::Error> {
    journal_walk(conn, keys, true)
}

/// [`journal`], with or without the chain-head comparison (which [`database`] makes once, among the
/// opening checks).
fn journal_walk(
    conn: &Connection,
    keys: &TerminalKeys,
    with_head: bool,
) -> Result<VerifyReport, rusqlite::Error> {
    let own_snapshot = conn.is_autocommit();
    if own_snapshot {
        conn.execute_batch("BEGIN DEFERRED")?;
    }
    let result = journal_in_snapshot(conn, keys, with_head);
    if own_snapshot {
        // A read transaction: ending it cannot lose anything.
        let _ = conn.execute_batch("COMMIT");
    }
    result
}

fn journal_in_snapshot(
    conn: &Connection,
    keys: &TerminalKeys,
    with_head: bool,
) -> Result<VerifyReport, rusqlite::Error> {
    let terminal_id = keys.terminal_id.as_str();
    let mut report = VerifyReport::default();
    let mut expected_seq = 1u64;
    let mut prev_mac = Some(genesis_mac(&keys.journal, terminal_id));
    let mut stmt = conn.prepare(&format!(
        "SELECT {JOURNAL_COLUMNS} FROM journal ORDER BY seq"
    ))?;
    let mut rows = stmt.query([])?;
    let mut per_card: std::collections::BTreeMap<CardRef, CardFold> = Default::default();
    let mut last: Option<(u64, [u8; 32])> = None;
    while let Some(row) = rows.next()? {
        report.checked += 1;
        let (rec, mac, record_id) = match record_from_row(row, terminal_id) {
            Ok(v) => v,
            Err(e) => {
                report.findings.push(e);
                prev_mac = None;
                expected_seq += 1;
                continue;
            }
        };
        let what = format!("journal seq {}", rec.seq);
        if rec.seq != expected_seq {
            let reason = if rec.seq > expected_seq {
                format!(
                    "gap: seq {expected_seq}..{} missing (rows deleted)",
                    rec.seq - 1
                )
            } else {
                format!("out of order: expected seq {expected_seq}")
            };
            report.findings.push(Integrity::new(&what, reason));
        }
        if let Err(e) = check_record(&rec, &mac, &record_id, &keys.journal) {
            report.findings.push(e);
        } else if prev_mac.is_some_and(|p| !tags_equal(&p, &rec.prev_mac)) {
            report.findings.push(Integrity::new(&what, "chain link broken: prev_mac is not the MAC of the previous row (row deleted, inserted or reordered)"));
        }
        prev_mac = Some(mac);
        expected_seq = rec.seq + 1;
        last = Some((rec.seq, mac));
        let fold = per_card.entry(rec.card_ref).or_default();
        fold.usage.add(&rec);
        encode_history(&mut fold.history, &rec);
    }
    // Read as stored: a column edited into another type is a finding, not a failed check.
    let head: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT head_seq, head_mac FROM terminal_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .or_else(type_edited)?;
    let (last_seq, last_mac) = last.unwrap_or((0, genesis_mac(&keys.journal, terminal_id)));
    match head {
        _ if !with_head => {}
        Some((seq, mac)) if seq == last_seq as i64 && tags_equal(&mac, &last_mac) => {}
        Some((seq, _)) => report.findings.push(Integrity::new(
            "journal head",
            format!("the chain head says seq {seq}, the journal ends at seq {last_seq}: rows removed at the end, or the head edited"),
        )),
        None => report.findings.push(Integrity::new("journal head", "terminal state row missing")),
    }
    // Usage anchors against the fold of the journal.
    // (Rows whose usage columns are all NULL are cards never used here; partly NULL is an edit,
    // reported below as a column of the wrong type.)
    let mut anchors = conn.prepare(&format!(
        "SELECT card_ref, {} FROM cache_entry WHERE {HAS_USAGE}",
        super::schema::usage_columns!()
    ))?;
    let mut arows = anchors.query([])?;
    let mut seen = std::collections::BTreeSet::new();
    while let Some(r) = arows.next()? {
        // An edited card reference of another type is a finding, not a failed check.
        let card = match r.get_ref(0)? {
            rusqlite::types::ValueRef::Blob(b) => <[u8; 32]>::try_from(b).ok().map(CardRef),
            _ => None,
        };
        let Some(card) = card else {
            report.findings.push(Integrity::new(
                "card usage",
                "card reference is not 32 bytes (row edited)",
            ));
            continue;
        };
        seen.insert(card);
        let what = format!("card usage {}", card.to_hex());
        let (Ok(rows), Ok(last_seq), Ok(net_units), Ok(blob), Ok(mac)) = (
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
            r.get::<_, Vec<u8>>(4),
            r.get::<_, Vec<u8>>(5),
        ) else {
            report.findings.push(Integrity::new(
                &what,
                "a column has the wrong type (row edited)",
            ));
            continue;
        };
        let stored = UsageRow {
            rows: rows as u64,
            last_seq: last_seq as u64,
            net_units,
        };
        if !tags_equal(&stored.mac(&keys.journal, &card, &blob), &mac) {
            report
                .findings
                .push(Integrity::new(&what, "MAC mismatch (row edited)"));
        }
        let none = CardFold::default();
        let implied = per_card.get(&card).unwrap_or(&none);
        if implied.usage != stored {
            report.findings.push(Integrity::new(
                &what,
                format!(
                    "anchor {stored:?} differs from the journal's {:?}",
                    implied.usage
                ),
            ));
        }
        // The history copy must be exactly the card's journal records (in compact form).
        if implied.history != blob {
            report.findings.push(Integrity::new(
                &what,
                "history copy differs from the card's journal rows",
            ));
        }
    }
    for card in per_card.keys().filter(|c| !seen.contains(c)) {
        report.findings.push(Integrity::new(
            format!("card usage {}", card.to_hex()),
            "missing for a card with journal rows",
        ));
    }
    // The answers stored for the readers, and each reader's latest transaction (`answers`).
    report
        .findings
        .extend(super::answers::verify(conn, &keys.journal)?);
    Ok(report)
}

/// Verifies the installed manifest and every cache entry's MAC, version and body.
pub fn cache(
    conn: &Connection,
    keys: &TerminalKeys,
) -> Result<(Option<Manifest>, VerifyReport), rusqlite::Error> {
    cache_walk(conn, keys, true)
}

/// [`cache`], with or without findings about the manifest row (which [`database`] has from the
/// opening checks).
fn cache_walk(
    conn: &Connection,
    keys: &TerminalKeys,
    manifest_findings: bool,
) -> Result<(Option<Manifest>, VerifyReport), rusqlite::Error> {
    let mut report = VerifyReport::default();
    // A manifest row edited into other types is named by the opening checks; no entry can be
    // checked without it.
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT version, signed FROM cache_manifest WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .or_else(type_edited)?;
    let Some((version, signed)) = row else {
        return Ok((None, report));
    };
    let manifest = match Manifest::verify_signed(&keys.cache, &signed) {
        Ok(m) if m.version as i64 == version => m,
        Ok(m) => {
            if manifest_findings {
                report.findings.push(Integrity::new(
                    "cache manifest",
                    format!(
                        "version column {version} differs from the signed {}",
                        m.version
                    ),
                ));
            }
            return Ok((Some(m), report));
        }
        Err(e) => {
            if manifest_findings {
                report
                    .findings
                    .push(Integrity::new("cache manifest", e.to_string()));
            }
            return Ok((None, report));
        }
    };
    // Rows with all entry columns NULL hold only the usage of a card the cache dropped.
    let mut stmt = conn.prepare(
        "SELECT card_ref, version, body, mac FROM cache_entry \
         WHERE NOT (version IS NULL AND body IS NULL AND mac IS NULL) ORDER BY card_ref",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        report.checked += 1;
        let card: Vec<u8> = match r.get(0) {
            Ok(c) => c,
            Err(e) => {
                report
                    .findings
                    .push(Integrity::new("cache entry ?", e.to_string()));
                continue;
            }
        };
        let what = format!("cache entry {}", hex::encode(&card));
        let Ok(card) = <[u8; 32]>::try_from(card.as_slice()).map(CardRef) else {
            report
                .findings
                .push(Integrity::new(&what, "column card_ref: not 32 bytes"));
            continue;
        };
        let (version, body, mac) = match (
            r.get::<_, i64>(1),
            r.get::<_, Vec<u8>>(2),
            r.get::<_, Vec<u8>>(3),
        ) {
            (Ok(v), Ok(b), Ok(m)) => (v, b, m),
            (v, b, m) => {
                let bad = [
                    ("version", v.is_err()),
                    ("body", b.is_err()),
                    ("mac", m.is_err()),
                ];
                let cols: Vec<&str> = bad.iter().filter(|(_, e)| *e).map(|(c, _)| *c).collect();
                report.findings.push(Integrity::new(
                    &what,
                    format!("column {}: wrong type (row edited)", cols.join(", ")),
                ));
                continue;
            }
        };
        if version < 0
            || !verify_entry_mac(
                &keys.cache,
                &manifest.merchant_id,
                version as u64,
                &card,
                EntryOp::Upsert,
                &body,
                &mac,
            )
        {
            report
                .findings
                .push(Integrity::new(&what, "MAC mismatch (row edited)"));
        } else if version as u64 > manifest.version {
            report.findings.push(Integrity::new(
                &what,
                format!(
                    "version {version} is newer than the installed cache {}",
                    manifest.version
                ),
            ));
        } else if let Err(e) = Card::decode(&body) {
            report
                .findings
                .push(Integrity::new(&what, format!("body: {e}")));
        }
    }
    Ok((Some(manifest), report))
}
