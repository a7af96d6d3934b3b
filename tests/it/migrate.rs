//! Schema migrations never lose journal rows; bad database files give named errors.

use redeemd::store::schema::{MIGRATIONS, Migration, latest_version, migrate_with};
use redeemd::store::{DB_FILE, Queried, Store, StoreError, verify};
use rusqlite::Connection;

use crate::support::*;

fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 3);
    for i in 0..6 {
        approved(&redeem(&mut s, "r", i, i % 3, &[(0, 1)], T0));
    }
    dir
}

/// Takes a database at schema 6 (`down_to_6`) back to schema 4, as redeemd before version 5 left
/// it: no close records, usage anchors in their own table, cache rows of entry columns only (cards
/// with usage but no entry lose their cache row).
const DOWN_TO_4: &str = "
    DROP TABLE batch_close;
    CREATE TABLE card_usage (card_ref BLOB PRIMARY KEY, rows INTEGER NOT NULL, last_seq INTEGER NOT NULL,
        net_units INTEGER NOT NULL, history BLOB NOT NULL, mac BLOB NOT NULL) WITHOUT ROWID;
    INSERT INTO card_usage SELECT card_ref, usage_rows, usage_last_seq, usage_net_units, usage_history, usage_mac
        FROM cache_entry WHERE usage_rows IS NOT NULL;
    CREATE TABLE cache_entry_v4 (card_ref BLOB PRIMARY KEY, version INTEGER NOT NULL, body BLOB NOT NULL,
        mac BLOB NOT NULL) WITHOUT ROWID;
    INSERT INTO cache_entry_v4 SELECT card_ref, version, body, mac FROM cache_entry WHERE version IS NOT NULL;
    DROP TABLE cache_entry;
    ALTER TABLE cache_entry_v4 RENAME TO cache_entry;
    PRAGMA user_version = 4;";

/// Takes a database back to schema 6, as redeemd before schema 7 left it: no key check value, the
/// terminal state MACed in its first form, no MACs on the manifest and close rows, the answers of
/// version 6 (those stored since are dropped: version 6 had none of them).
fn down_to_6(conn: &Connection) {
    let row: redeemd::store::rows::TerminalRow = conn
        .query_row(
            "SELECT terminal_id, merchant_id, head_seq, head_mac, last_trusted_wall_ms, synced_through_seq, \
             cache_version, deny_version, deny_count FROM terminal_state",
            [],
            |r| {
                Ok(redeemd::store::rows::TerminalRow {
                    terminal_id: r.get(0)?,
                    merchant_id: r.get(1)?,
                    head_seq: r.get::<_, i64>(2)? as u64,
                    head_mac: r.get::<_, Vec<u8>>(3)?.try_into().unwrap(),
                    last_trusted_wall_ms: r.get(4)?,
                    synced_through_seq: r.get::<_, i64>(5)? as u64,
                    cache_version: r.get::<_, i64>(6)? as u64,
                    deny_version: r.get::<_, i64>(7)? as u64,
                    deny_count: r.get::<_, i64>(8)? as u64,
                    identity_count: 0,
                    sealed: false,
                })
            },
        )
        .unwrap();
    conn.execute_batch(
        "DROP TABLE key_check; ALTER TABLE terminal_state DROP COLUMN identity_count; \
         ALTER TABLE terminal_state DROP COLUMN mac_format; ALTER TABLE cache_manifest DROP COLUMN mac; \
         ALTER TABLE batch_close DROP COLUMN mac; \
         DROP TABLE outcome; DROP TABLE reader_last; ALTER TABLE outcome_v6 RENAME TO outcome; \
         CREATE TABLE reader_last (reader_id TEXT PRIMARY KEY, reader_txn_id INTEGER NOT NULL) WITHOUT ROWID; \
         PRAGMA user_version = 6;",
    )
    .unwrap();
    conn.execute(
        "UPDATE terminal_state SET mac = ?1",
        [&row.mac(&keys().journal)[..]],
    )
    .unwrap();
}

fn user_version(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_version_1_database_with_unsynced_rows_migrates_keeping_every_row() {
    let dir = populated();
    let file = dir.path().join(DB_FILE);
    // Take it back to schema 1: undo migration 5, drop what migrations 2, 3 and 4 created.
    let conn = Connection::open(&file).unwrap();
    down_to_6(&conn);
    conn.execute_batch(DOWN_TO_4).unwrap();
    conn.execute_batch("DROP TABLE outcome; DROP TABLE reader_last; DROP TABLE identity_attempt; DROP INDEX journal_voids; DROP TABLE deny_entry; ALTER TABLE terminal_state DROP COLUMN deny_version; ALTER TABLE terminal_state DROP COLUMN deny_count; PRAGMA user_version = 1;").unwrap();
    drop(conn);
    let mut s = open(dir.path());
    assert_eq!(user_version(s.connection()), latest_version());
    assert_eq!(journal_rows(&s), 6);
    assert!(verify::journal(s.connection(), &keys()).unwrap().is_clean());
    approved(&redeem(&mut s, "r", 100, 0, &[(0, 1)], T0));
}

#[test]
fn a_migration_that_would_drop_journal_rows_is_rolled_back() {
    let dir = populated();
    let file = dir.path().join(DB_FILE);
    let destructive = [
        // Deleting unforwarded rows outright.
        "DROP TRIGGER journal_append_only_delete; DELETE FROM journal WHERE seq > 3;",
        // The classic table rebuild that forgets some rows.
        "CREATE TABLE journal_new AS SELECT * FROM journal WHERE seq <= 4; DROP TABLE journal; ALTER TABLE journal_new RENAME TO journal;",
        // Rewriting a MAC.
        "DROP TRIGGER journal_append_only_update; UPDATE journal SET mac = zeroblob(32) WHERE seq = 1;",
    ];
    for sql in destructive {
        let mut conn = Connection::open(&file).unwrap();
        let mut steps = MIGRATIONS.to_vec();
        steps.push(Migration {
            version: latest_version() + 1,
            sql,
        });
        match migrate_with(&mut conn, &steps) {
            Err(StoreError::Migration { version, detail }) => {
                assert_eq!(version, latest_version() + 1);
                assert!(detail.contains("would change the journal"), "{detail}");
            }
            other => panic!("{sql}: {other:?}"),
        }
        assert_eq!(user_version(&conn), latest_version());
        drop(conn);
        let s = open(dir.path());
        assert_eq!(journal_rows(&s), 6, "{sql}");
        assert!(verify::journal(s.connection(), &keys()).unwrap().is_clean());
    }
    // A harmless migration goes through.
    let mut conn = Connection::open(&file).unwrap();
    let mut steps = MIGRATIONS.to_vec();
    steps.push(Migration {
        version: latest_version() + 1,
        sql: "CREATE INDEX journal_by_day ON journal (wall_ms);",
    });
    migrate_with(&mut conn, &steps).unwrap();
    assert_eq!(user_version(&conn), latest_version() + 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = populated();
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    assert!(matches!(
        Store::open(dir.path(), keys(), config()),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn garbage_and_truncated_database_files_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(DB_FILE),
        b"this is not a database, it is a shopping list: tyres, oil, wax".repeat(100),
    )
    .unwrap();
    match Store::open(dir.path(), keys(), config()) {
        Err(StoreError::Corrupt { path, .. }) => assert!(path.ends_with(DB_FILE)),
        other => panic!("{other:?}"),
    }
    // A real database cut at various lengths: an error or a failing structural check, never a panic.
    let good = populated();
    let bytes = std::fs::read(good.path().join(DB_FILE)).unwrap();
    for cut in [0usize, 100, 4096, bytes.len() / 2, bytes.len() - 4096] {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(DB_FILE), &bytes[..cut]).unwrap();
        match Store::open(d.path(), keys(), config()) {
            // An empty file is never taken for a new database: a journal may have been there.
            Err(StoreError::DatabaseLost { .. }) if cut == 0 => {}
            Err(e) => assert!(
                cut > 0
                    && matches!(
                        e,
                        StoreError::Corrupt { .. }
                            | StoreError::Integrity(_)
                            | StoreError::Missing { .. }
                            | StoreError::Sql(_)
                    ),
                "cut {cut}: {e}"
            ),
            Ok(s) => {
                let structural = verify::database_file(s.connection());
                let journal = verify::journal(s.connection(), &keys())
                    .map(|r| r.findings.len())
                    .unwrap_or(1);
                assert!(
                    !structural.is_empty() || journal > 0,
                    "cut {cut}: opened and verified clean"
                );
            }
        }
    }
}

#[test]
fn version_3_moves_outcomes_into_one_b_tree_keeping_each_readers_latest() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    migrate_with(&mut conn, &MIGRATIONS[..2]).unwrap();
    // Insertion order is what "latest" means, not the transaction id: r1's latest is txn 3.
    for (reader, txn) in [("r1", 5), ("r2", 1), ("r1", 3)] {
        conn.execute(
            "INSERT INTO outcome (reader_id, reader_txn_id, request_digest, reply, first_seq, wall_ms) VALUES (?1, ?2, x'00', ?3, NULL, 0)",
            rusqlite::params![reader, txn, format!("{reader}/{txn}").into_bytes()],
        )
        .unwrap();
    }
    migrate_with(&mut conn, &MIGRATIONS[..3]).unwrap();
    assert_eq!(user_version(&conn), 3);
    let rows: Vec<(String, i64, Vec<u8>)> = conn
        .prepare(
            "SELECT reader_id, reader_txn_id, reply FROM outcome ORDER BY reader_id, reader_txn_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1], ("r1".into(), 5, b"r1/5".to_vec()));
    let latest: Vec<(String, i64)> = conn
        .prepare("SELECT reader_id, reader_txn_id FROM reader_last ORDER BY reader_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(latest, [("r1".to_owned(), 3), ("r2".to_owned(), 1)]);
    let indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outcome'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0, "one B-tree per outcome: no index left");
}

#[test]
fn version_7_sets_the_unmaced_answers_of_version_6_aside_and_never_sends_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(DB_FILE);
    {
        let mut conn = Connection::open(&file).unwrap();
        migrate_with(&mut conn, &MIGRATIONS[..6]).unwrap();
        conn.execute(
            "INSERT INTO outcome (reader_id, reader_txn_id, request_digest, reply, first_seq, wall_ms) VALUES ('r', 5, x'00', x'4105000000', 1, 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO reader_last (reader_id, reader_txn_id) VALUES ('r', 5)",
            [],
        )
        .unwrap();
    }
    let mut s = open(dir.path());
    assert_eq!(user_version(s.connection()), latest_version());
    let kept: (String, i64, Vec<u8>) = s
        .connection()
        .query_row(
            "SELECT reader_id, reader_txn_id, reply FROM outcome_v6",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(kept, ("r".into(), 5, vec![0x41, 5, 0, 0, 0]));
    // No MAC could be given to it: it is not an answer any more, for QUERY or for LAST.
    assert_eq!(s.answer_query("r", Some(5)).unwrap(), Queried::Unknown);
    assert_eq!(s.answer_query("r", None).unwrap(), Queried::Unknown);
    assert!(verify::journal(s.connection(), &keys()).unwrap().is_clean());
}

#[test]
fn version_4_adds_the_deny_overlay_keeping_unsynced_rows_and_the_macs_of_version_3() {
    let dir = populated();
    let file = dir.path().join(DB_FILE);
    {
        let mut s = open(dir.path());
        s.mark_synced(2).unwrap();
    }
    // Take it back to schema 3, as an older redeemd left it: 6 rows, 4 of them unsynced.
    let conn = Connection::open(&file).unwrap();
    down_to_6(&conn);
    conn.execute_batch(DOWN_TO_4).unwrap();
    conn.execute_batch("DROP TABLE deny_entry; ALTER TABLE terminal_state DROP COLUMN deny_version; ALTER TABLE terminal_state DROP COLUMN deny_count; PRAGMA user_version = 3;").unwrap();
    drop(conn);
    let mut s = open(dir.path());
    assert_eq!(user_version(s.connection()), latest_version());
    // The terminal state written by version 3 verifies unchanged (its MAC had no deny fields).
    let j = s.journal_info();
    assert_eq!((j.head_seq, j.synced_through_seq), (6, 2));
    assert_eq!(journal_rows(&s), 6);
    assert_eq!(s.deny_info(), redeemd::store::DenyInfo::default());
    assert!(verify::journal(s.connection(), &keys()).unwrap().is_clean());
    approved(&redeem(&mut s, "r", 100, 0, &[(0, 1)], T0));
}

#[test]
fn version_5_moves_each_cards_usage_into_its_cache_row_keeping_cards_the_cache_dropped() {
    let dir = populated();
    let file = dir.path().join(DB_FILE);
    let before = {
        let mut s = open(dir.path());
        [0, 1].map(|card| menu_left(&mut s, card, T0))
    };
    // Schema 4, where card 2's entry was since removed from the cache while its usage stays.
    let conn = Connection::open(&file).unwrap();
    down_to_6(&conn);
    conn.execute_batch(DOWN_TO_4).unwrap();
    conn.execute(
        "DELETE FROM cache_entry WHERE card_ref = ?1",
        [&card_ref(2).0[..]],
    )
    .unwrap();
    drop(conn);
    let mut s = open(dir.path());
    assert_eq!(user_version(s.connection()), latest_version());
    let tables: Vec<String> = s
        .connection()
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'card_usage'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.is_empty(), "card_usage left behind");
    // Every row, usage MACs included, moved unchanged: the journal still verifies against them.
    assert_eq!(journal_rows(&s), 6);
    assert!(verify::journal(s.connection(), &keys()).unwrap().is_clean());
    assert!(verify::cache(s.connection(), &keys()).unwrap().1.is_clean());
    assert_eq!(menu_left(&mut s, 0, T0), before[0]);
    assert_eq!(menu_left(&mut s, 1, T0), before[1]);
    // Card 2 is unknown to the cache now, but its usage row is kept (entry columns NULL).
    let usage_only: (Option<i64>, i64) = s
        .connection()
        .query_row(
            "SELECT version, usage_rows FROM cache_entry WHERE card_ref = ?1",
            [&card_ref(2).0[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(usage_only, (None, 2));
    approved(&redeem(&mut s, "r", 100, 0, &[(0, 1)], T0));
}

#[test]
fn version_7_seals_a_version_6_database_at_its_first_keyed_open() {
    let dir = populated();
    let file = dir.path().join(DB_FILE);
    {
        let mut s = open(dir.path());
        swipe(&mut s, "r", 50, 2, T0);
        assert_eq!(
            declined(&redeem_swiped(
                &mut s,
                "r",
                50,
                &[(2, 1)],
                Some(b"0000"),
                T0
            )),
            redeemd::engine::DeclineReason::IdentityWrong
        );
        let close = redeemd_contract::close::BatchClose {
            business_date: "2026-09-21".into(),
            utc_offset_minutes: 480,
            first_seq: 1,
            through_seq: 6,
            items: Vec::new(),
        };
        s.record_close(
            &close,
            redeemd::store::close::CloseResult::Matched,
            "{}",
            T0,
        )
        .unwrap();
    }
    let conn = Connection::open(&file).unwrap();
    down_to_6(&conn);
    drop(conn);
    // As redeemd before schema 7 left it; migrated without the key, not sealed yet: verify checks
    // it as before and says OK, since the daemon will open it.
    let verified = |scope| {
        verify::database(dir.path(), &secret(), Some((TERMINAL, MERCHANT)), scope)
            .unwrap()
            .findings
    };
    assert_eq!(verified(verify::Scope::Journal), Vec::new());
    assert_eq!(verified(verify::Scope::Cache), Vec::new());
    let sealed = |conn: &Connection| -> (i64, i64, i64, bool, bool) {
        conn.query_row(
            "SELECT (SELECT mac_format FROM terminal_state), (SELECT identity_count FROM terminal_state), \
             (SELECT count(*) FROM key_check), (SELECT mac IS NOT NULL FROM cache_manifest), \
             (SELECT min(mac IS NOT NULL) FROM batch_close)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap()
    };
    let conn = Connection::open(&file).unwrap();
    assert_eq!(sealed(&conn), (1, 0, 0, false, false));
    drop(conn);
    // The first open with the key seals it.
    let mut s = open(dir.path());
    assert_eq!(sealed(s.connection()), (2, 1, 1, true, true));
    approved(&redeem(&mut s, "r", 100, 0, &[(0, 1)], T0));
    assert_eq!(s.closed_through_seq().unwrap(), 6);
    drop(s);
    assert_eq!(verified(verify::Scope::Journal), Vec::new());
    assert_eq!(verified(verify::Scope::Cache), Vec::new());
    // From now on the rows it MACed are checked: the install time edited is refused, and the format
    // cannot be set back.
    for edit in [
        "UPDATE cache_manifest SET installed_wall_ms = installed_wall_ms + 1",
        "UPDATE terminal_state SET mac_format = 1",
    ] {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(&file, d.path().join(DB_FILE)).unwrap();
        Connection::open(d.path().join(DB_FILE))
            .unwrap()
            .execute_batch(edit)
            .unwrap();
        let e = Store::open(d.path(), keys(), config()).unwrap_err();
        assert!(e.to_string().contains("MAC mismatch"), "{edit}: {e}");
    }
}
