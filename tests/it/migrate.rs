//! Schema migrations never lose journal rows; bad database files give named errors.

use redeemd::store::schema::{MIGRATIONS, Migration, latest_version, migrate_with};
use redeemd::store::{DB_FILE, Store, StoreError, verify};
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

fn user_version(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_version_1_database_with_unsynced_rows_migrates_keeping_every_row() {
    let dir = populated();
    let file = dir.path().join(DB_FILE);
    // Take it back to schema 1: drop what migration 2 created.
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch("DROP TABLE outcome; DROP TABLE identity_attempt; DROP INDEX journal_voids; PRAGMA user_version = 1;").unwrap();
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
            Err(e) => assert!(
                matches!(
                    e,
                    StoreError::Corrupt { .. }
                        | StoreError::Integrity(_)
                        | StoreError::Missing { .. }
                        | StoreError::Sql(_)
                ),
                "cut {cut}: {e}"
            ),
            Ok(s) if cut == 0 => drop(s), // an empty file is a new database
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
