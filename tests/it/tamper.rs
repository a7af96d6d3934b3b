//! Tamper tests: a flipped byte in any column of the cache or journal, deleted, reordered or forged
//! journal rows, edited local state — each is caught by the lookup at the counter and/or by
//! `journal verify` / `cache verify`, which name the row.

use std::path::{Path, PathBuf};

use redeemd::engine::DeclineReason;
use redeemd::store::{DB_FILE, MenuOutcome, Queried, Store, StoreError, verify};
use rusqlite::Connection;
use rusqlite::types::Value;

use crate::support::*;

/// A closed database with: card 1 redeemed in two lines (seq 1, 2), card 0 (seq 3), a void of
/// card 0's redemption (seq 4), card 2 (seq 5), and a failed identity attempt on card 2.
fn pristine() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    drop(shop_journal(dir.path()));
    let path = dir.path().join(DB_FILE);
    (dir, path)
}

/// The pristine database's store, still open (see [`pristine`]), in `dir` with cards 0–2 installed;
/// and the authorization code of the first redemption (seq 1).
pub fn shop_journal(dir: &Path) -> (Store, String) {
    let mut s = store_with_cards(dir, 3);
    let first = approved(&redeem(&mut s, "r", 1, 1, &[(0, 2), (1, 1)], T0)).clone();
    let a = approved(&redeem(&mut s, "r", 2, 0, &[(0, 1)], T0)).clone();
    assert!(matches!(
        void(&mut s, "r", 3, &a.auth_code, T0).decision,
        Some(redeemd::store::Decision::Voided(_))
    ));
    approved(&redeem(&mut s, "r", 4, 2, &[(0, 1)], T0));
    swipe(&mut s, "r", 5, 2, T0);
    assert_eq!(
        declined(&redeem_swiped(&mut s, "r", 5, &[(2, 1)], Some(b"0000"), T0)),
        DeclineReason::IdentityWrong
    );
    (s, first.auth_code)
}

/// A copy of the pristine database in a new directory.
fn copy(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src, dir.path().join(DB_FILE)).unwrap();
    dir
}

/// Runs `edit` on the database as someone with a SQLite tool would: the append-only triggers dropped
/// first and put back after, so that the edit is all that differs.
pub fn as_attacker(db: &Path, edit: impl FnOnce(&Connection)) {
    let conn = Connection::open(db).unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT sql FROM sqlite_schema WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    conn.execute_batch("DROP TRIGGER IF EXISTS journal_append_only_update; DROP TRIGGER IF EXISTS journal_append_only_delete;").unwrap();
    edit(&conn);
    for sql in triggers {
        conn.execute_batch(&sql).unwrap();
    }
}

/// Flips one byte of `col` in the selected row, as someone with a SQLite tool would (triggers dropped).
fn flip(db: &Path, table: &str, col: &str, filter: &str) {
    as_attacker(db, |conn| flip_in(conn, table, col, filter).unwrap());
}

/// [`flip`] on an open connection: one bit of the value changed (an integer's bit 8, a text's or
/// blob's byte). `Err` when SQLite itself refuses the new value (a `CHECK`, a key).
pub fn flip_in(conn: &Connection, table: &str, col: &str, filter: &str) -> Result<(), String> {
    let v: Value = conn
        .query_row(
            &format!("SELECT {col} FROM {table} WHERE {filter}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    let flipped = match v {
        Value::Integer(i) => Value::Integer(i ^ 0x100),
        Value::Text(s) => {
            let mut b = s.into_bytes();
            b[0] ^= 0x01;
            String::from_utf8(b).map_or_else(|e| Value::Blob(e.into_bytes()), Value::Text)
        }
        Value::Blob(mut b) => {
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
            Value::Blob(b)
        }
        other => panic!("{table}.{col}: NULL in the chosen row ({other:?}): pick a fuller row"),
    };
    conn.execute(
        &format!("UPDATE {table} SET {col} = ?1 WHERE {filter}"),
        [flipped],
    )
    .map(|n| assert_eq!(n, 1, "{table}.{col}"))
    .map_err(|e| e.to_string())
}

fn exec(db: &Path, sql: &str) {
    as_attacker(db, |conn| conn.execute_batch(sql).unwrap());
}

pub fn columns(db: &Path, table: &str) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn menu_reason(dir: &Path, card: u64) -> Result<Option<DeclineReason>, StoreError> {
    let mut s = Store::open(dir, keys(), config())?;
    Ok(match s.menu(&number(card), now(T0)).unwrap() {
        MenuOutcome::Menu(_) => None,
        MenuOutcome::Declined(d) => Some(d.reason),
    })
}

/// The findings of `journal verify` or `cache verify` (the same function the commands run) on the
/// database file, as text.
fn findings(db: &Path, scope: verify::Scope) -> Vec<String> {
    verify::database(
        db.parent().unwrap(),
        &secret(),
        Some((TERMINAL, MERCHANT)),
        scope,
    )
    .unwrap()
    .findings
    .iter()
    .map(ToString::to_string)
    .collect()
}

fn journal_findings(db: &Path) -> Vec<String> {
    findings(db, verify::Scope::Journal)
}

fn cache_findings(db: &Path) -> Vec<String> {
    findings(db, verify::Scope::Cache)
}

#[test]
fn the_pristine_database_verifies() {
    let (_d, db) = pristine();
    assert_eq!(journal_findings(&db), Vec::<String>::new());
    assert_eq!(cache_findings(&db), Vec::<String>::new());
    let d = copy(&db);
    assert_eq!(menu_reason(d.path(), 1).unwrap(), None);
}

#[test]
fn a_flipped_byte_in_any_journal_column_is_named_by_verify() {
    let (_d, db) = pristine();
    let cols = columns(&db, "journal");
    assert_eq!(cols.len(), 24);
    for col in &cols {
        let d = copy(&db);
        let file = d.path().join(DB_FILE);
        flip(&file, "journal", col, "seq = 2");
        let findings = journal_findings(&file);
        assert!(
            findings
                .iter()
                .any(|f| f.starts_with("journal seq 2") || f.starts_with("journal seq 258")),
            "column {col}: {findings:?}"
        );
        // Decisions are made from the card's MACed history copy (its usage columns), which the edit did not
        // touch: card 1 still gets its true uses left. Only a flipped seq that moves the row past the
        // chain head makes the store refuse to open.
        match menu_reason(d.path(), 1) {
            Ok(r) => assert_eq!(r, None, "column {col}"),
            Err(e) => assert!(
                col == "seq" && matches!(e, StoreError::Integrity(_)),
                "column {col}: {e}"
            ),
        }
    }
}

#[test]
fn a_flipped_byte_in_any_cache_column_is_caught_at_the_counter_and_by_verify() {
    let (_d, db) = pristine();
    let cref = card_ref(1).0;
    let filter = format!("card_ref = x'{}'", hex::encode(cref));
    let cols = columns(&db, "cache_entry");
    assert_eq!(
        cols,
        vec![
            "card_ref",
            "version",
            "body",
            "mac",
            "usage_rows",
            "usage_last_seq",
            "usage_net_units",
            "usage_history",
            "usage_mac"
        ]
    );
    // The entry columns here; the card's usage columns in `edited_local_state_rows_are_caught`.
    for col in &cols[..4] {
        let d = copy(&db);
        let file = d.path().join(DB_FILE);
        flip(&file, "cache_entry", col, &filter);
        let findings = cache_findings(&file);
        assert!(
            findings
                .iter()
                .any(|f| f.starts_with("cache entry ") && f.contains("MAC mismatch")),
            "column {col}: {findings:?}"
        );
        let expected = if col == "card_ref" {
            DeclineReason::CardUnknown
        } else {
            DeclineReason::IntegrityFailure
        };
        assert_eq!(
            menu_reason(d.path(), 1).unwrap(),
            Some(expected),
            "column {col}"
        );
    }
}

#[test]
fn deleted_reordered_and_forged_journal_rows_are_named() {
    let (_d, db) = pristine();
    // A row deleted in the middle: a gap, named.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    exec(&file, "DELETE FROM journal WHERE seq = 2");
    let f = journal_findings(&file);
    assert!(
        f.iter()
            .any(|f| f.starts_with("journal seq 3: gap: seq 2..2 missing")),
        "{f:?}"
    );
    // Deleting the row does not give card 1 its uses back: its history copy still counts them.
    assert_eq!(menu_reason(d.path(), 1).unwrap(), None);
    let mut s = Store::open(d.path(), keys(), config()).unwrap();
    assert_eq!(
        approved(&redeem(&mut s, "r", 50, 1, &[(1, 1)], T0)).lines[0].uses_left_after,
        0
    );
    drop(s);
    // The last row deleted: the MACed chain head no longer matches; the store refuses to open.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    exec(&file, "DELETE FROM journal WHERE seq = 5");
    assert!(
        journal_findings(&file)
            .iter()
            .any(|f| f.starts_with("journal head"))
    );
    assert!(matches!(
        menu_reason(d.path(), 0),
        Err(StoreError::Integrity(_))
    ));
    // Two rows swapped (contents exchanged, seqs kept): both MACs fail.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    exec(
        &file,
        "UPDATE journal SET seq = -1 WHERE seq = 3; UPDATE journal SET seq = 3 WHERE seq = 2; UPDATE journal SET seq = 2 WHERE seq = -1;",
    );
    let f = journal_findings(&file);
    assert!(
        f.iter().any(|f| f.starts_with("journal seq 2"))
            && f.iter().any(|f| f.starts_with("journal seq 3")),
        "{f:?}"
    );
    // A forged row appended (copy of the last with a new seq): MAC and head mismatch.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    let cols = columns(&file, "journal");
    let rest: Vec<&str> = cols
        .iter()
        .map(String::as_str)
        .filter(|c| *c != "seq" && *c != "record_id")
        .collect();
    exec(
        &file,
        &format!(
            "INSERT INTO journal (seq, record_id, {0}) SELECT 6, 'T-0001-6', {0} FROM journal WHERE seq = 5",
            rest.join(", ")
        ),
    );
    let f = journal_findings(&file);
    assert!(
        f.iter().any(|f| f.starts_with("journal seq 6"))
            && f.iter().any(|f| f.starts_with("journal head")),
        "{f:?}"
    );
}

#[test]
fn edited_local_state_rows_are_caught() {
    let (_d, db) = pristine();
    for col in columns(&db, "terminal_state").iter().filter(|c| *c != "id") {
        let d = copy(&db);
        flip(&d.path().join(DB_FILE), "terminal_state", col, "id = 1");
        assert!(
            matches!(
                menu_reason(d.path(), 0),
                Err(StoreError::Integrity(_) | StoreError::WrongTerminal { .. })
            ),
            "terminal_state.{col}"
        );
    }
    let filter = format!("card_ref = x'{}'", hex::encode(card_ref(1).0));
    for col in [
        "usage_rows",
        "usage_last_seq",
        "usage_net_units",
        "usage_history",
        "usage_mac",
    ] {
        let d = copy(&db);
        let file = d.path().join(DB_FILE);
        flip(&file, "cache_entry", col, &filter);
        assert_eq!(
            menu_reason(d.path(), 1).unwrap(),
            Some(DeclineReason::IntegrityFailure),
            "cache_entry.{col}"
        );
        assert!(
            journal_findings(&file)
                .iter()
                .any(|f| f.starts_with("card usage ")),
            "cache_entry.{col}"
        );
    }
    // Deleting a card's usage anchor and its rows together is still caught by the chain.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    exec(
        &file,
        &format!(
            "UPDATE cache_entry SET usage_rows = NULL, usage_last_seq = NULL, usage_net_units = NULL, \
             usage_history = NULL, usage_mac = NULL WHERE {filter}; DELETE FROM journal WHERE seq IN (1, 2);"
        ),
    );
    assert!(journal_findings(&file).iter().any(|f| f.contains("gap")));
    // The identity attempt counter: editing it (to reset a lockout) is refused.
    let filter2 = format!("card_ref = x'{}'", hex::encode(card_ref(2).0));
    for col in ["failures", "locked_until_ms", "mac"] {
        let d = copy(&db);
        flip(&d.path().join(DB_FILE), "identity_attempt", col, &filter2);
        let mut s = Store::open(d.path(), keys(), config()).unwrap();
        swipe(&mut s, "r", 9, 2, T0);
        assert_eq!(
            declined(&redeem_swiped(
                &mut s,
                "r",
                9,
                &[(2, 1)],
                Some(PHONE_LAST4),
                T0
            )),
            DeclineReason::IntegrityFailure,
            "identity_attempt.{col}"
        );
    }
}

#[test]
fn an_edited_stored_answer_or_reader_pointer_is_never_sent_and_is_named_by_verify() {
    let (_d, db) = pristine();
    // Reader r, txn 2: card 0's swipe (a menu) and its REDEEM (approved).
    let query = |dir: &Path, txn: Option<u32>| {
        Store::open(dir, keys(), config())
            .unwrap()
            .answer_query("r", txn)
            .unwrap()
    };
    let pristine_answer = query(copy(&db).path(), Some(2));
    assert!(matches!(pristine_answer, Queried::Stored { .. }));
    for col in columns(&db, "outcome") {
        let d = copy(&db);
        let file = d.path().join(DB_FILE);
        // The REDEEM's row; the swipe's for the columns only a swipe answered with a menu fills.
        let kind = if ["card_ref", "entry_version"].contains(&col.as_str()) {
            32
        } else {
            33
        };
        flip(
            &file,
            "outcome",
            &col,
            &format!("reader_txn_id = 2 AND request_type = {kind}"),
        );
        let found = journal_findings(&file);
        assert!(
            found.iter().any(|f| f.starts_with("outcome reader ")),
            "outcome.{col}: {found:?}"
        );
        // QUERY of txn 2 never sends the edited bytes, nor the swipe's menu as if the REDEEM had not
        // been answered (the reader would send its REDEEM again).
        let answer = query(d.path(), Some(2));
        assert!(
            matches!(answer, Queried::Unverified(_)),
            "outcome.{col}: {answer:?}"
        );
    }
    for col in columns(&db, "reader_last") {
        let d = copy(&db);
        let file = d.path().join(DB_FILE);
        flip(&file, "reader_last", &col, "reader_id = 'r'");
        let found = journal_findings(&file);
        assert!(
            found.iter().any(|f| f.starts_with("reader_last ")),
            "reader_last.{col}: {found:?}"
        );
        let answer = query(d.path(), None);
        assert!(
            matches!(answer, Queried::Unverified(_) | Queried::Unknown),
            "reader_last.{col}: {answer:?}"
        );
    }
    // A deleted answer: the swipe it belongs to says it was answered.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    exec(
        &file,
        "DELETE FROM outcome WHERE reader_txn_id = 2 AND request_type = 33",
    );
    let found = journal_findings(&file);
    assert!(
        found
            .iter()
            .any(|f| f.contains("outcome reader r txn 2") && f.contains("missing")),
        "{found:?}"
    );
    assert!(matches!(query(d.path(), Some(2)), Queried::Unverified(_)));
}

#[test]
fn a_swapped_in_older_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 2);
    let old_manifest: (i64, Vec<u8>, i64, Vec<u8>) = s
        .connection()
        .query_row(
            "SELECT version, signed, installed_wall_ms, mac FROM cache_manifest",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let old_entry: Vec<u8> = s
        .connection()
        .query_row(
            "SELECT body FROM cache_entry WHERE card_ref = ?1",
            [&card_ref(0).0[..]],
            |r| r.get(0),
        )
        .unwrap();
    let mut lost = card(0, 10);
    lost.status = redeemd_contract::CardStatus::Lost;
    s.install_bundle(
        &bundle(
            redeemd_contract::snapshot::BundleKind::Full,
            2,
            1,
            &[(0, Some(lost)), (1, Some(card(1, 10)))],
            T0 + 1000 * HOUR,
        )[..],
        now(T0),
    )
    .unwrap();
    assert_eq!(
        declined(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0)),
        DeclineReason::CardLost
    );
    // Installing the old file again: refused.
    assert!(matches!(
        s.install_bundle(&full(1, 2)[..], now(T0)),
        Err(StoreError::Rollback {
            offered: 1,
            installed: 2
        })
    ));
    drop(s);
    // Copying the old signed manifest (and the old "active" entry) back into the database: caught.
    let file = dir.path().join(DB_FILE);
    let conn = Connection::open(&file).unwrap();
    conn.execute(
        "UPDATE cache_manifest SET version = ?1, signed = ?2",
        rusqlite::params![old_manifest.0, old_manifest.1],
    )
    .unwrap();
    conn.execute(
        "UPDATE cache_entry SET version = 1, body = ?1 WHERE card_ref = ?2",
        rusqlite::params![old_entry, &card_ref(0).0[..]],
    )
    .unwrap();
    drop(conn);
    let err = Store::open(dir.path(), keys(), config()).unwrap_err();
    assert!(
        err.to_string()
            .contains("cache manifest: MAC mismatch (row edited)"),
        "{err}"
    );
    // Its own MAC copied along too (the row as it was): the MACed terminal state's version catches it.
    let conn = Connection::open(&file).unwrap();
    conn.execute(
        "UPDATE cache_manifest SET installed_wall_ms = ?1, mac = ?2",
        rusqlite::params![old_manifest.2, old_manifest.3],
    )
    .unwrap();
    drop(conn);
    let err = Store::open(dir.path(), keys(), config()).unwrap_err();
    assert!(err.to_string().contains("manifest replaced"), "{err}");
}

#[test]
fn an_older_copy_of_a_card_usage_row_is_found_by_journal_verify() {
    let (_d, db) = pristine();
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    let saved: (i64, i64, i64, Vec<u8>, Vec<u8>) = Connection::open(&file)
        .unwrap()
        .query_row(
            "SELECT usage_rows, usage_last_seq, usage_net_units, usage_history, usage_mac \
             FROM cache_entry WHERE card_ref = ?1",
            [&card_ref(1).0[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    let mut s = Store::open(d.path(), keys(), config()).unwrap();
    approved(&redeem(&mut s, "r", 60, 1, &[(0, 5)], T0));
    drop(s);
    // Put the authentic older row back: the counter cannot tell (documented), verify does.
    Connection::open(&file)
        .unwrap()
        .execute(
            "UPDATE cache_entry SET usage_rows = ?1, usage_last_seq = ?2, usage_net_units = ?3, \
             usage_history = ?4, usage_mac = ?5 WHERE card_ref = ?6",
            rusqlite::params![
                saved.0,
                saved.1,
                saved.2,
                saved.3,
                saved.4,
                &card_ref(1).0[..]
            ],
        )
        .unwrap();
    let f = journal_findings(&file);
    let what = format!("card usage {}", card_ref(1).to_hex());
    assert!(
        f.iter()
            .any(|f| f.starts_with(&what) && f.contains("differs")),
        "{f:?}"
    );
}

/// The pristine database plus two verified deny entries: card 0 lost, card 1 frozen (both above the
/// installed entries' version 1, so both refuse).
fn pristine_with_deny() -> (tempfile::TempDir, PathBuf) {
    let (dir, db) = pristine();
    let mut s = Store::open(dir.path(), keys(), config()).unwrap();
    let k = keys();
    let entry = |version, card, status| redeemd_contract::DenyEntry {
        version,
        card_ref: card_ref(card),
        status,
        entry_version: 2,
        reported_at_ms: T0,
    };
    let entries = [
        entry(1, 0, redeemd_contract::DenyStatus::Lost),
        entry(2, 1, redeemd_contract::DenyStatus::Frozen),
    ];
    s.apply_deny_list(&redeemd::store::DenyList {
        merchant_id: MERCHANT.into(),
        version: 2,
        entries: entries
            .iter()
            .map(|e| (e.clone(), e.mac(&k.cache, MERCHANT).to_vec()))
            .collect(),
    })
    .unwrap();
    drop(s);
    (dir, db)
}

fn deny_findings(db: &Path) -> Vec<String> {
    findings(db, verify::Scope::Cache)
}

#[test]
fn an_edited_or_deleted_deny_row_is_caught_at_open_and_by_verify() {
    let (_d, db) = pristine_with_deny();
    assert_eq!(deny_findings(&db), Vec::<String>::new());
    let d = copy(&db);
    assert_eq!(
        menu_reason(d.path(), 0).unwrap(),
        Some(DeclineReason::CardLost)
    );
    assert_eq!(
        menu_reason(d.path(), 1).unwrap(),
        Some(DeclineReason::CardFrozen)
    );
    // Every column edited, e.g. to move the loss report to another card or turn "lost" into
    // something else, or to lower its entry version below the cache's: the MAC fails; the store
    // refuses to decide from a deny list it cannot trust, and verify names the row.
    let cols = columns(&db, "deny_entry");
    assert_eq!(cols.len(), 6);
    for col in &cols {
        let d = copy(&db);
        let file = d.path().join(DB_FILE);
        flip(&file, "deny_entry", col, "version = 1");
        let f = deny_findings(&file);
        assert!(
            f.iter()
                .any(|f| f.starts_with("deny entry") && f.contains("MAC mismatch")),
            "column {col}: {f:?}"
        );
        let e = menu_reason(d.path(), 0).unwrap_err();
        assert!(
            matches!(e, StoreError::Integrity(ref i) if i.what.starts_with("deny entry")),
            "column {col}: {e}"
        );
    }
    // A deleted row (the loss report "never arrived"): the count in the MACed state catches it.
    for version in [1, 2] {
        let d = copy(&db);
        let file = d.path().join(DB_FILE);
        exec(
            &file,
            &format!("DELETE FROM deny_entry WHERE version = {version}"),
        );
        assert!(
            deny_findings(&file)
                .iter()
                .any(|f| f.starts_with("deny list") && f.contains("removed or added")),
            "row {version}"
        );
        let e = menu_reason(d.path(), 0).unwrap_err();
        assert!(e.to_string().contains("rows were removed or added"), "{e}");
    }
    // All rows deleted and the state's fields zeroed: the terminal state's MAC catches that.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    exec(
        &file,
        "DELETE FROM deny_entry; UPDATE terminal_state SET deny_version = 0, deny_count = 0;",
    );
    assert!(matches!(
        menu_reason(d.path(), 0),
        Err(StoreError::Integrity(ref i)) if i.what == "terminal state"
    ));
    // `cache verify` reports deny findings too, by row.
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    flip(&file, "deny_entry", "status", "version = 2");
    let key = d.path().join("k");
    std::fs::write(&key, format!("{SECRET_HEX}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redeemd"))
        .args(["--state-dir"])
        .arg(d.path())
        .arg("--key-file")
        .arg(&key)
        .args(["cache", "verify"])
        .env_remove("REDEEMD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL deny entry 2: MAC mismatch"), "{text}");
}

/// A card reference edited into another type is named by `journal verify` (as the card's usage row and
/// as missing usage for the card's journal rows), not an error that stops the check.
#[test]
fn a_card_reference_of_another_type_is_a_finding_not_an_error() {
    let (_d, db) = pristine();
    let d = copy(&db);
    let file = d.path().join(DB_FILE);
    exec(
        &file,
        &format!(
            "UPDATE cache_entry SET card_ref = 'not a blob' WHERE card_ref = x'{}'",
            hex::encode(card_ref(1).0)
        ),
    );
    let f = journal_findings(&file);
    assert!(
        f.iter()
            .any(|f| f.starts_with("card usage") && f.contains("not 32 bytes")),
        "{f:?}"
    );
    let missing = format!("card usage {}: missing", card_ref(1).to_hex());
    assert!(f.iter().any(|f| f.starts_with(&missing)), "{f:?}");
}
