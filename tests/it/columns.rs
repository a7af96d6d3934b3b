//! Every column of every table of a shop database edited, as an attacker with the file and a SQLite
//! tool would (the append-only triggers dropped for the edit and put back after): `redeemd journal
//! verify && redeemd cache verify` must fail, and `redeemd run` must refuse to start or, when it
//! starts, the decision, replay or upload that reads the column must decline. And the byte-flip case:
//! one bit changed anywhere in a used page of the file either changes no row or makes verify fail.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use redeemd::engine::DeclineReason;
use redeemd::store::answers::Queried;
use redeemd::store::close::CloseResult;
use redeemd::store::{DB_FILE, Decision, MenuOutcome, Outcome, Store, verify};
use redeemd_contract::close::BatchClose;
use rusqlite::Connection;
use rusqlite::types::Value;

use crate::support::*;

/// Every table whose rows the daemon reads (`outcome_v6`, the unMACed answers of schema 6, is kept
/// for an investigator and never read).
const CHECKED_TABLES: [&str; 10] = [
    "terminal_state",
    "key_check",
    "cache_manifest",
    "cache_entry",
    "journal",
    "identity_attempt",
    "deny_entry",
    "batch_close",
    "outcome",
    "reader_last",
];
/// Kept for an investigator, read by nothing: the answers stored under schema 6 (no MAC, never sent).
const NEVER_READ: [&str; 1] = ["outcome_v6"];

/// A closed shop database with a row in every table: the tamper tests' journal (cards 0–2 installed;
/// card 1 redeemed in two lines, seq 1 and 2; card 0, seq 3, voided, seq 4; card 2, seq 5; a failed
/// identity attempt on card 2), card 0 reported lost, the day closed through seq 5. Returns the directory, its
/// configuration (no reader, no sync) and the void's original authorization code.
struct Fixture {
    dir: tempfile::TempDir,
    auth_of_group_1: String,
}

impl Fixture {
    fn build() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut s, auth_of_group_1) = crate::tamper::shop_journal(&state);
        let k = keys();
        let lost = redeemd_contract::DenyEntry {
            version: 1,
            card_ref: card_ref(0),
            status: redeemd_contract::DenyStatus::Lost,
            entry_version: 2,
            reported_at_ms: T0,
        };
        s.apply_deny_list(&redeemd::store::DenyList {
            merchant_id: MERCHANT.into(),
            version: 1,
            entries: vec![(lost.clone(), lost.mac(&k.cache, MERCHANT).to_vec())],
        })
        .unwrap();
        let close = BatchClose {
            business_date: "2026-09-21".into(),
            utc_offset_minutes: 480,
            first_seq: 1,
            through_seq: 5,
            items: Vec::new(),
        };
        s.record_close(&close, CloseResult::Matched, "{\"result\":\"matched\"}", T0)
            .unwrap();
        drop(s);
        let key = dir.path().join("terminal.key");
        std::fs::write(&key, format!("{SECRET_HEX}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Fixture {
            dir,
            auth_of_group_1,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("state").join(DB_FILE)
    }

    /// A copy of the shop (database, key, configuration) in a new directory.
    fn copy(&self) -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::copy(self.db(), state.join(DB_FILE)).unwrap();
        let key = dir.path().join("terminal.key");
        std::fs::copy(self.dir.path().join("terminal.key"), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.path().join("redeemd.toml");
        std::fs::write(
            &config,
            format!(
                "terminal_id = \"{TERMINAL}\"\nmerchant_id = \"{MERCHANT}\"\nstate_dir = \"{}\"\n\
                 [key]\nfile = \"{}\"\n[risk]\nmax_offline_uses_per_card = 1000000\n\
                 max_offline_redemptions = 1000000\n",
                state.display(),
                key.display()
            ),
        )
        .unwrap();
        Shop {
            _dir: dir,
            state,
            config,
        }
    }
}

struct Shop {
    /// Removed with the shop.
    _dir: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
}

impl Shop {
    fn db(&self) -> PathBuf {
        self.state.join(DB_FILE)
    }

    fn redeemd(&self, args: &[&str]) -> (i32, String) {
        crate::shop::redeemd_with(&self.config, args)
    }

    /// Whether `journal verify && cache verify` fails, and what they said.
    fn verify_fails(&self) -> (bool, String) {
        let (j, jout) = self.redeemd(&["journal", "verify"]);
        let (c, cout) = self.redeemd(&["cache", "verify"]);
        (
            j != 0 || c != 0,
            format!("journal verify: {j}\n{jout}cache verify: {c}\n{cout}"),
        )
    }

    /// `redeemd run`: `Err(log)` when it exits (refuses) by itself, `Ok(log)` once it serves (then
    /// it is stopped).
    fn run(&self) -> Result<String, String> {
        let mut child = crate::shop::redeemd_command(&[
            "--config".as_ref(),
            self.config.as_os_str(),
            "run".as_ref(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let lines = log_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut log = String::new();
        loop {
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains("serving") {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Ok(log);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    assert!(
                        !status.success(),
                        "run ended with success without serving: {log}"
                    );
                    return Err(log);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("redeemd run neither served nor exited: {log}");
            }
        }
    }
}

fn log_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Card 2's identity-checked item redeemed under `txn` with `identity`: the swipe's answer when it
/// did not give a menu, else the REDEEM's.
fn redeem_with_identity(s: &mut Store, txn: u64, identity: &[u8]) -> Outcome {
    let swiped = swipe(s, "r", txn, 2, T0);
    match swiped.decision {
        Some(Decision::Menu(_)) => redeem_swiped(s, "r", txn, &[(2, 1)], Some(identity), T0),
        _ => swiped,
    }
}

/// The row whose `col` is edited: [`row_of`], except for the columns a REDEEM's answer leaves unset
/// (NULL), which are edited in the answer of the swipe before it.
fn row_for(table: &str, col: &str) -> String {
    match (table, col) {
        ("outcome", "card_ref" | "entry_version") => {
            "reader_id = 'r' AND reader_txn_id = 1 AND request_type = 32".into()
        }
        _ => row_of(table),
    }
}

/// The row of each table that is edited, and what reads it once the daemon runs.
fn row_of(table: &str) -> String {
    let card = |i| format!("card_ref = x'{}'", hex::encode(card_ref(i).0));
    match table {
        "terminal_state" | "key_check" | "cache_manifest" => "id = 1".into(),
        "cache_entry" => card(1),
        "journal" => "seq = 2".into(),
        "identity_attempt" => card(2),
        "deny_entry" => "version = 1".into(),
        "batch_close" => "through_seq = 5".into(),
        "outcome" => "reader_id = 'r' AND reader_txn_id = 1 AND request_type = 33".into(),
        "reader_last" => "reader_id = 'r'".into(),
        other => panic!("no row chosen for table {other}: cover it in this test"),
    }
}

/// With the daemon able to start: the decision, replay or upload that reads the edited row must
/// not go through. Returns what happened, for the message.
fn reader_of_the_row_declines(shop: &Shop, fixture: &Fixture, table: &str) -> Result<(), String> {
    let mut s = Store::open(&shop.state, keys(), config()).map_err(|e| format!("open: {e}"))?;
    match table {
        "cache_entry" => match s.menu(&number(1), now(T0)).unwrap() {
            MenuOutcome::Declined(d)
                if matches!(
                    d.reason,
                    DeclineReason::IntegrityFailure | DeclineReason::CardUnknown
                ) =>
            {
                Ok(())
            }
            other => Err(format!("menu of the edited card: {other:?}")),
        },
        "journal" => {
            // A void reads the group's rows; the upload reads every row.
            let voided = void(&mut s, "r", 90, &fixture.auth_of_group_1, T0);
            // The upload names the row (a finding, sent as stored for the platform to refuse), or
            // cannot make a record of it at all (an error naming it).
            let upload = s.journal_records_as_stored(1, 100);
            let uploaded_clean = matches!(&upload, Ok((rows, findings))
                if findings.is_empty() && rows.iter().any(|(r, _)| r.seq == 2));
            match voided.decision {
                Some(Decision::Declined(_)) if !uploaded_clean => Ok(()),
                other => Err(format!(
                    "void of the edited group: {other:?}; upload: {:?}",
                    upload.map(|(_, f)| f)
                )),
            }
        }
        "identity_attempt" => {
            let o = redeem_with_identity(&mut s, 91, PHONE_LAST4);
            match o.decision {
                Some(Decision::Declined(d)) if d.reason == DeclineReason::IntegrityFailure => {
                    Ok(())
                }
                other => Err(format!("redemption with identity: {other:?}")),
            }
        }
        // QUERY reads them: an edited row is never sent (`Unverified`), or no longer answers for
        // this reader and transaction at all (`Unknown`: TXN_UNKNOWN, nothing forged sent).
        "outcome" | "reader_last" => {
            let txn = (table == "outcome").then_some(1);
            match s.answer_query("r", txn) {
                Ok(Queried::Unverified(_) | Queried::Unknown) => Ok(()),
                other => Err(format!("QUERY of the edited row: {other:?}")),
            }
        }
        "batch_close" => match (s.closed_through_seq(), s.last_close()) {
            (Err(_), Err(_)) => Ok(()),
            other => Err(format!("closes planned from the edited row: {other:?}")),
        },
        _ => Err("the daemon started; nothing declines this table's rows".into()),
    }
}

/// Edits every column of every table in `tables`, one copy each, and checks verify and run.
fn every_column_of(tables: &[&str]) {
    let fixture = Fixture::build();
    let pristine = fixture.copy();
    let (fails, out) = pristine.verify_fails();
    assert!(!fails, "the pristine database must verify: {out}");
    assert!(pristine.run().is_ok(), "the pristine database must serve");
    let mut checked = 0;
    for table in tables {
        for col in crate::tamper::columns(&fixture.db(), table) {
            let shop = fixture.copy();
            let mut refused_by_sqlite = None;
            crate::tamper::as_attacker(&shop.db(), |conn| {
                refused_by_sqlite =
                    crate::tamper::flip_in(conn, table, &col, &row_for(table, &col)).err();
            });
            if let Some(e) = refused_by_sqlite {
                // SQLite's own constraint keeps the column from taking another value.
                assert!(
                    e.contains("constraint"),
                    "{table}.{col}: edit failed otherwise: {e}"
                );
                continue;
            }
            checked += 1;
            let (fails, out) = shop.verify_fails();
            assert!(fails, "{table}.{col} edited, verify says OK:\n{out}");
            match shop.run() {
                Err(log) => assert!(
                    log.contains("redeemd:"),
                    "{table}.{col}: run exited without naming why: {log}"
                ),
                Ok(_) => {
                    if let Err(e) = reader_of_the_row_declines(&shop, &fixture, table) {
                        panic!("{table}.{col} edited: run started and {e}");
                    }
                }
            }
        }
    }
    assert!(checked >= tables.len(), "too few columns edited: {checked}");
}

#[test]
fn every_table_of_a_shop_database_is_covered_by_these_tests() {
    let fixture = Fixture::build();
    let conn = Connection::open(fixture.db()).unwrap();
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables.sort();
    let mut covered: Vec<String> = CHECKED_TABLES
        .iter()
        .chain(&NEVER_READ)
        .map(|t| (*t).to_owned())
        .collect();
    covered.sort();
    assert_eq!(
        tables, covered,
        "a table is not covered by the column tests"
    );
    // Every table read holds a row to edit.
    for t in CHECKED_TABLES {
        let n: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {t} WHERE {}", row_of(t)),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{t}: no row to edit");
    }
}

#[test]
fn every_column_the_daemon_reads_is_checked_by_verify_and_at_use() {
    every_column_of(&CHECKED_TABLES);
}

/// Every row of every table (and the schema, and `user_version`), as text: what "a row changed"
/// compares. `Err`: the file cannot be read as a database any more.
fn dump(db: &Path, skip: &[&str]) -> Result<Vec<String>, String> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let run = || -> rusqlite::Result<Vec<String>> {
        let mut out = vec![format!(
            "user_version {}",
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?
        )];
        let mut tables = Vec::new();
        let mut stmt =
            conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (kind, name): (String, String) = (r.get(0)?, r.get(1)?);
            out.push(format!(
                "schema {kind} {name} {:?} {:?}",
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?
            ));
            if kind == "table" && !skip.contains(&name.as_str()) {
                tables.push(name);
            }
        }
        for t in tables {
            let mut stmt = conn.prepare(&format!("SELECT * FROM {t}"))?;
            let n = stmt.column_count();
            let mut rows = stmt.query([])?;
            let mut lines = Vec::new();
            while let Some(r) = rows.next()? {
                let values: Vec<String> = (0..n)
                    .map(|i| r.get::<_, Value>(i).map(|v| format!("{v:?}")))
                    .collect::<rusqlite::Result<_>>()?;
                lines.push(format!("{t}: {}", values.join(" | ")));
            }
            lines.sort();
            out.extend(lines);
        }
        Ok(out)
    };
    run().map_err(|e| e.to_string())
}

/// The fixture as one vacuumed file (no free pages: every page is a used page).
fn vacuumed_bytes() -> Vec<u8> {
    let fixture = Fixture::build();
    let conn = Connection::open(fixture.db()).unwrap();
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(free, 0);
    drop(conn);
    std::fs::read(fixture.db()).unwrap()
}

/// Whether `journal verify` or `cache verify` (the commands' own function) fails on the file.
fn verify_fails_on(state: &Path) -> bool {
    [verify::Scope::Journal, verify::Scope::Cache]
        .into_iter()
        .any(|scope| {
            verify::database(state, &secret(), Some((TERMINAL, MERCHANT)), scope)
                .map_or(true, |v| !v.findings.is_empty())
        })
}

fn byte_flip_property(skip: &'static [&'static str], cases: u32) {
    let bytes = vacuumed_bytes();
    let original = dump_of(&bytes, skip).unwrap();
    let pages = bytes.len() / 4096;
    // A fixed seed: the same cases every run (deterministic suite); raise `cases` to search wider.
    let config = ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x1300_5eed),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(page in 0..pages, offset in 0..4096usize, bit in 0..8u8)| {
        let mut flipped = bytes.clone();
        flipped[page * 4096 + offset] ^= 1 << bit;
        let changed = dump_of(&flipped, skip) != Ok(original.clone());
        if changed {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(DB_FILE), &flipped).unwrap();
            prop_assert!(
                verify_fails_on(dir.path()),
                "page {page}, byte {offset}, bit {bit}: a row changed and verify says OK"
            );
        }
    });
}

fn dump_of(bytes: &[u8], skip: &[&str]) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    std::fs::write(&db, bytes).unwrap();
    dump(&db, skip)
}

#[test]
fn one_byte_flipped_anywhere_changes_no_row_or_fails_verify() {
    byte_flip_property(&[], 2048);
}
