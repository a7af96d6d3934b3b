//! Full verification of the journal chain (with the stored answers to the readers) and the cache, for
//! `redeemd journal verify` / `cache verify` and the platform's reconciliation. Every finding names the
//! row (`journal seq 1042`, `cache entry <ref>`, `outcome reader R-1 txn 7`) and the reason;
//! verification never stops at the first finding of a kind that can be skipped.

use redeemd_contract::journal::genesis_mac;
use redeemd_contract::keys::{TerminalKeys, tags_equal};
use redeemd_contract::model::{Card, CardRef};
use redeemd_contract::snapshot::{EntryOp, Manifest, verify_entry_mac};
use rusqlite::{Connection, OptionalExtension};

use super::rows::{
    Integrity, JOURNAL_COLUMNS, UsageRow, check_record, encode_history, record_from_row,
};
use super::schema::HAS_USAGE;

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

/// SQLite's own structural check of the file (catches truncation and page corruption).
pub fn database_file(conn: &Connection) -> Vec<Integrity> {
    match conn.prepare("PRAGMA quick_check").and_then(|mut s| {
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
    let own_snapshot = conn.is_autocommit();
    if own_snapshot {
        conn.execute_batch("BEGIN DEFERRED")?;
    }
    let result = journal_in_snapshot(conn, keys);
    if own_snapshot {
        // A read transaction: ending it cannot lose anything.
        let _ = conn.execute_batch("COMMIT");
    }
    result
}

fn journal_in_snapshot(
    conn: &Connection,
    keys: &TerminalKeys,
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
    let head: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT head_seq, head_mac FROM terminal_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (last_seq, last_mac) = last.unwrap_or((0, genesis_mac(&keys.journal, terminal_id)));
    match head {
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
    let mut report = VerifyReport::default();
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT version, signed FROM cache_manifest WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((version, signed)) = row else {
        return Ok((None, report));
    };
    let manifest = match Manifest::verify_signed(&keys.cache, &signed) {
        Ok(m) if m.version as i64 == version => m,
        Ok(m) => {
            report.findings.push(Integrity::new(
                "cache manifest",
                format!(
                    "version column {version} differs from the signed {}",
                    m.version
                ),
            ));
            return Ok((Some(m), report));
        }
        Err(e) => {
            report
                .findings
                .push(Integrity::new("cache manifest", e.to_string()));
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

/// Verifies every deny-list row's MAC and the row count and highest version against the terminal
/// state (whose own MAC `journal` checks with the chain head): an edited row and a deleted row are both
/// named.
pub fn deny(conn: &Connection, keys: &TerminalKeys) -> Result<VerifyReport, rusqlite::Error> {
    let mut report = VerifyReport::default();
    let state: Option<(String, i64, i64)> = conn
        .query_row(
            "SELECT merchant_id, deny_version, deny_count FROM terminal_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((merchant_id, version, count)) = state else {
        return Ok(report);
    };
    let (mut rows, mut max_version) = (0u64, 0u64);
    super::deny::each_row(conn, &keys.cache, &merchant_id, |r| {
        report.checked += 1;
        match r {
            Ok(e) => {
                rows += 1;
                max_version = max_version.max(e.version);
            }
            Err(i) => report.findings.push(i),
        }
    })?;
    if report.findings.is_empty() {
        let state = super::rows::TerminalRow {
            terminal_id: keys.terminal_id.clone(),
            merchant_id,
            head_seq: 0,
            head_mac: [0; 32],
            last_trusted_wall_ms: 0,
            synced_through_seq: 0,
            cache_version: 0,
            deny_version: u64::try_from(version).unwrap_or(u64::MAX),
            deny_count: u64::try_from(count).unwrap_or(u64::MAX),
        };
        if let Err(i) = super::deny::count_matches(rows, max_version, &state) {
            report.findings.push(i);
        }
    }
    Ok(report)
}
