//! The SQLite driver: one database file in WAL mode with `synchronous=FULL` (every commit is durable
//! before it returns), a small pool of connections (readers run beside the writer; writers take the
//! write lock up front with `BEGIN IMMEDIATE`, so SQLite's transactions are serializable by
//! construction), and the migrations of `schema.rs` in `PRAGMA user_version`.
//!
//! Beside it, the volatile store ([`Isolation::Volatile`]): a second file, `<database>-nonces`, with
//! its own pool and `synchronous=OFF` (a commit is in the operating system's cache when it returns; an
//! OS crash may lose the last ones, a process crash loses nothing), holding the nonces of `GET`
//! requests. Its own file, so that its writes neither wait for nor hold the main file's write lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::Isolation;
use super::schema::{SCHEMA_VERSION, SQLITE_STEPS, SQLITE_VOLATILE};
use super::sql::{Backend, Param, Row, StorageError, Tx, Value, to_sqlite};

/// How long a connection waits for another's write lock before the transaction counts as a conflict.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections kept: more than the requests a process works on at once (`AdmissionPolicy`, 16), each
/// of which holds at most one (a streamed bundle for its whole stream), so that none waits here.
const POOL_SIZE: u32 = 24;

/// Opens connections to one file with the server's settings.
#[derive(Debug)]
pub struct Manager {
    path: PathBuf,
    /// The volatile store's file: written without fsync.
    volatile: bool,
}

fn configure(conn: &Connection, volatile: bool) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", if volatile { "OFF" } else { "FULL" })?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, self.volatile)?;
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), rusqlite::Error> {
        conn.query_row("SELECT 1", [], |_| Ok(()))
    }

    /// A main-file connection whose `synchronous` is not `FULL` (an unflushed transaction could not
    /// restore it) is dropped rather than reused.
    fn has_broken(&self, conn: &mut Connection) -> bool {
        !self.volatile
            && !conn
                .pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))
                .is_ok_and(|s| s == 2)
    }
}

/// A migrated database file and its connections, and the volatile store's.
pub struct SqliteDb {
    pool: r2d2::Pool<Manager>,
    volatile: r2d2::Pool<Manager>,
    path: PathBuf,
}

/// The volatile store's file of the database at `path`: `<path>-nonces`.
pub fn volatile_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-nonces");
    PathBuf::from(name)
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteDb({})", self.path.display())
    }
}

impl SqliteDb {
    /// Opens (creating it if missing) and migrates the database at `path`, and the volatile store
    /// beside it.
    pub fn open(path: &Path) -> Result<SqliteDb, StorageError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        configure(&conn, false)?;
        migrate(&mut conn)?;
        drop(conn);
        let volatile_file = volatile_path(path);
        let conn = Connection::open(&volatile_file)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        configure(&conn, true)?;
        conn.execute_batch(SQLITE_VOLATILE)?;
        drop(conn);
        let pool = |path: &Path, volatile: bool| {
            r2d2::Pool::builder()
                .max_size(POOL_SIZE)
                .min_idle(Some(1))
                .build(Manager {
                    path: path.to_owned(),
                    volatile,
                })
                .map_err(|e| StorageError::Pool(format!("{}: {e}", path.display())))
        };
        Ok(SqliteDb {
            pool: pool(path, false)?,
            volatile: pool(&volatile_file, true)?,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` once in a transaction of `isolation`: committed if it returns `Ok`, rolled back
    /// otherwise. Returns the closure's result and whether a failure was a conflict (retryable).
    pub(super) fn run_once<T, E: From<StorageError>>(
        &self,
        isolation: Isolation,
        f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> (Result<T, E>, bool) {
        let pool = match isolation {
            Isolation::Volatile => &self.volatile,
            _ => &self.pool,
        };
        let conn = match pool.get() {
            Ok(c) => c,
            Err(e) => return (Err(StorageError::Pool(e.to_string()).into()), false),
        };
        let behavior = match isolation {
            Isolation::Snapshot => TransactionBehavior::Deferred,
            Isolation::Serializable
            | Isolation::ReadCommitted
            | Isolation::Volatile
            | Isolation::Unflushed => TransactionBehavior::Immediate,
        };
        // In WAL mode, `NORMAL` commits without an fsync; the connection goes back to the pool with
        // `FULL` whatever happens below.
        let unflushed = isolation == Isolation::Unflushed;
        if unflushed && let Err(e) = conn.pragma_update(None, "synchronous", "NORMAL") {
            return (Err(classify(e).into()), false);
        }
        let (result, conflict) = Self::in_transaction(&conn, behavior, f);
        if unflushed && let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
            // The pool drops it (`Manager::has_broken`): no durable commit may run without fsync.
            return (Err(classify(e).into()), false);
        }
        (result, conflict)
    }

    fn in_transaction<T, E: From<StorageError>>(
        conn: &Connection,
        behavior: TransactionBehavior,
        f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> (Result<T, E>, bool) {
        let tx = match rusqlite::Transaction::new_unchecked(conn, behavior) {
            Ok(tx) => tx,
            Err(e) => {
                let e = classify(e);
                let conflict = e.is_conflict();
                return (Err(e.into()), conflict);
            }
        };
        let mut t = SqliteTx {
            conn: &tx,
            conflicted: false,
        };
        match f(&mut t) {
            Ok(v) => {
                let conflicted = t.conflicted;
                match tx.commit() {
                    Ok(()) => (Ok(v), false),
                    Err(e) => {
                        let e = classify(e);
                        let conflict = conflicted || e.is_conflict();
                        (Err(e.into()), conflict)
                    }
                }
            }
            // Dropping `tx` rolls back.
            Err(e) => (Err(e), t.conflicted),
        }
    }
}

/// Busy or locked after the timeout is a conflict (the transaction is tried again); anything else is
/// an error.
fn classify(e: rusqlite::Error) -> StorageError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StorageError::Conflict(e.to_string())
        }
        _ => StorageError::Sqlite(e),
    }
}

struct SqliteTx<'c> {
    conn: &'c Connection,
    conflicted: bool,
}

impl SqliteTx<'_> {
    fn note(&mut self, e: rusqlite::Error) -> StorageError {
        let e = classify(e);
        self.conflicted |= e.is_conflict();
        e
    }
}

fn bind(params: &[Param<'_>]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|p| match *p {
            Param::Null => rusqlite::types::Value::Null,
            Param::Int(v) => rusqlite::types::Value::Integer(v),
            Param::Text(v) => rusqlite::types::Value::Text(v.to_owned()),
            Param::Blob(v) => rusqlite::types::Value::Blob(v.to_vec()),
        })
        .collect()
}

impl Tx for SqliteTx<'_> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StorageError> {
        let values = bind(params);
        let result = self
            .conn
            .prepare_cached(&to_sqlite(sql))
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(values.iter())));
        match result {
            Ok(n) => Ok(n as u64),
            Err(e) => Err(self.note(e)),
        }
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StorageError> {
        let values = bind(params);
        let result = (|| {
            let mut stmt = self.conn.prepare_cached(&to_sqlite(sql))?;
            let columns = stmt.column_count();
            let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut row = Vec::with_capacity(columns);
                for i in 0..columns {
                    row.push(match r.get_ref(i)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Real(v) => Value::Text(v.to_string()),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    });
                }
                out.push(Row(row));
            }
            Ok(out)
        })();
        result.map_err(|e| self.note(e))
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
}

/// Applies the SQLite steps above `PRAGMA user_version` in one immediate transaction.
fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let from = usize::try_from(version)
        .ok()
        .filter(|v| *v <= SQLITE_STEPS.len())
        .ok_or(StorageError::Version {
            found: version,
            supported: SCHEMA_VERSION,
        })?;
    for step in &SQLITE_STEPS[from..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
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
            c.execute_batch(super::super::schema::SQLITE_V1).unwrap();
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
        let db = super::super::Db::open(&path.display().to_string()).unwrap();
        db.read(|tx| -> Result<(), StorageError> {
            assert_eq!(super::super::head(tx, "T-1")?.0, 1);
            let card = tx.query_one("SELECT card_id FROM journal", &[])?;
            assert_eq!(card.opt_i64(0)?, None);
            let m = super::super::cards::merchant(tx, "M-9").unwrap().unwrap();
            assert_eq!((m.name.as_str(), m.commission_bps), ("M-9", 0));
            // Version 4 kept the secret in clear: sealed once a server binds the master key.
            let row = tx.query_one("SELECT secret, secret_sealed FROM terminal", &[])?;
            assert_eq!((row.blob(0)?, row.opt_blob(1)?), (&[7u8; 32][..], None));
            Ok(())
        })
        .unwrap();
        drop(db);
        let v: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // Opening again is a no-op; a newer schema is refused by name.
        drop(super::super::Db::open(&path.display().to_string()).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        assert!(matches!(
            super::super::Db::open(&path.display().to_string()),
            Err(StorageError::Version { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }
}
