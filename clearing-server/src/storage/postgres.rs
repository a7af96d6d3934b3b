//! The PostgreSQL driver: a pool of connections (`r2d2` over the synchronous `postgres` client, which
//! runs `tokio-postgres` on its own; the HTTP layer calls it from blocking threads as it does SQLite),
//! each with its prepared statements cached, transactions at the isolation each operation asks for, and
//! the migrations of `schema.rs` in the one-row table `schema_version`.
//!
//! Nothing here holds state between requests beyond the pool: exactly-once uploads, one close a day,
//! monotonic versions and refused nonce replays come from the database's keys and transactions, so any
//! number of server processes can share one database. The volatile store ([`Isolation::Volatile`]) is
//! the same database's unlogged tables, committed asynchronously. No advisory locks: the migration lock is a row
//! lock (`SELECT … FOR UPDATE`), which PostgreSQL-compatible distributed engines also have.

use std::collections::HashMap;
use std::error::Error as StdError;

use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, IsolationLevel, NoTls, Statement};

use super::Isolation;
use super::schema::{POSTGRES_STEPS, SCHEMA_VERSION};
use super::sql::{Backend, Param, Row, StorageError, Tx, Value};

/// Connections kept by one server process: more than the requests it works on at once
/// (`AdmissionPolicy`, 16), each of which holds at most one. Four processes stay within PostgreSQL's
/// default limit of 100.
const POOL_SIZE: u32 = 24;

/// A connection and the statements prepared on it.
pub struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

pub struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConn, postgres::Error> {
        Ok(PgConn {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// A migrated PostgreSQL database and this process's connections to it.
pub struct PgDb {
    /// `None` only while being dropped.
    pool: Option<r2d2::Pool<Manager>>,
}

/// The synchronous client closes its connection by running its own runtime, which a thread already
/// driving a tokio runtime must not do: a pool dropped there (a server shutting down, a test ending)
/// is dropped on a thread of its own.
impl Drop for PgDb {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgDb")
    }
}

fn classify(e: postgres::Error, isolation: Isolation) -> StorageError {
    let conflict = match e.code() {
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => true,
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => true,
        // Two transactions inserting the same key (two processes storing one terminal's batch): the
        // loser is told "duplicate"; run again it sees the winner's row and decides from it.
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => isolation != Isolation::Snapshot,
        _ => false,
    };
    if conflict {
        StorageError::Conflict(e.to_string())
    } else {
        StorageError::Postgres(e)
    }
}

impl PgDb {
    /// Connects to `url` (`postgres://user@host/db`, or a Unix socket directory as the
    /// percent-encoded host) and migrates the database.
    pub fn open(url: &str) -> Result<PgDb, StorageError> {
        let config: postgres::Config = url.parse().map_err(|e| StorageError::Spec {
            spec: redact(url),
            reason: format!("not a PostgreSQL URL: {e}"),
        })?;
        let mut client = config.connect(NoTls)?;
        migrate(&mut client)?;
        drop(client);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .build(Manager { config })
            .map_err(|e| StorageError::Pool(e.to_string()))?;
        Ok(PgDb { pool: Some(pool) })
    }

    /// Runs `f` once in a transaction of `isolation` (see [`super::Db::write`]).
    pub(super) fn run_once<T, E: From<StorageError>>(
        &self,
        isolation: Isolation,
        f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> (Result<T, E>, bool) {
        let Some(pool) = &self.pool else {
            return (Err(StorageError::Pool("closed".into()).into()), false);
        };
        let mut conn = match pool.get() {
            Ok(c) => c,
            Err(e) => return (Err(StorageError::Pool(e.to_string()).into()), false),
        };
        let PgConn { client, statements } = &mut *conn;
        let level = match isolation {
            Isolation::Serializable => IsolationLevel::Serializable,
            Isolation::ReadCommitted | Isolation::Volatile => IsolationLevel::ReadCommitted,
            Isolation::Snapshot => IsolationLevel::RepeatableRead,
        };
        let tx = match client
            .build_transaction()
            .isolation_level(level)
            .read_only(isolation == Isolation::Snapshot)
            .start()
        {
            Ok(tx) => tx,
            Err(e) => {
                let e = classify(e, isolation);
                let conflict = e.is_conflict();
                return (Err(e.into()), conflict);
            }
        };
        let mut t = PgTx {
            tx,
            statements,
            isolation,
            conflicted: false,
        };
        // The volatile tables are unlogged, so their writes produce no WAL to flush; the commit is
        // made asynchronous too, so that the commit record itself never waits for the disk.
        if isolation == Isolation::Volatile
            && let Err(e) = t.tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
        {
            let e = t.note(e);
            let conflict = e.is_conflict();
            return (Err(e.into()), conflict);
        }
        match f(&mut t) {
            Ok(v) => {
                let conflicted = t.conflicted;
                match t.tx.commit() {
                    Ok(()) => (Ok(v), false),
                    Err(e) => {
                        let e = classify(e, isolation);
                        let conflict = conflicted || e.is_conflict();
                        (Err(e.into()), conflict)
                    }
                }
            }
            // Dropping the transaction rolls it back.
            Err(e) => (Err(e), t.conflicted),
        }
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

struct PgTx<'c> {
    tx: postgres::Transaction<'c>,
    statements: &'c mut HashMap<String, Statement>,
    isolation: Isolation,
    conflicted: bool,
}

/// A [`Param`] bound to whatever integer, text or bytes type PostgreSQL inferred for its placeholder.
#[derive(Debug)]
struct PgParam<'a>(Param<'a>);

impl ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self.0 {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => Err(format!("an integer bound to a {ty} parameter").into()),
            },
            Param::Text(s) => s.to_sql(ty, out),
            Param::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl PgTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StorageError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(|e| self.note(e))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn note(&mut self, e: postgres::Error) -> StorageError {
        let e = classify(e, self.isolation);
        self.conflicted |= e.is_conflict();
        e
    }
}

fn value(row: &postgres::Row, i: usize) -> Result<Value, StorageError> {
    let ty = row.columns()[i].type_();
    let v = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(i64::from(v))),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(i64::from(v))),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Int(i64::from(v))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        _ => {
            return Err(StorageError::Other(format!(
                "column {i} is of type {ty}, which the server does not read (CAST it in the query)"
            )));
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

impl Tx for PgTx<'_> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StorageError> {
        let stmt = self.statement(sql)?;
        let bound: Vec<PgParam<'_>> = params.iter().map(|p| PgParam(*p)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let result = self.tx.execute(&stmt, &refs);
        result.map_err(|e| self.note(e))
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StorageError> {
        let stmt = self.statement(sql)?;
        let bound: Vec<PgParam<'_>> = params.iter().map(|p| PgParam(*p)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = match self.tx.query(&stmt, &refs) {
            Ok(rows) => rows,
            Err(e) => return Err(self.note(e)),
        };
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| value(r, i))
                    .collect::<Result<_, _>>()
                    .map(Row)
            })
            .collect()
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }
}

/// Brings the schema to [`SCHEMA_VERSION`]. Concurrent servers starting on one database take turns on
/// the `schema_version` row's lock; the loser finds the work done.
fn migrate(client: &mut Client) -> Result<(), StorageError> {
    for attempt in 0.. {
        let created = client.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 id BIGINT PRIMARY KEY CHECK (id = 1),
                 version BIGINT NOT NULL
             );
             INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
        );
        match created {
            Ok(()) => break,
            // Two servers creating the table at once: one of them is told the type exists.
            Err(_) if attempt < 3 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut tx = client.transaction()?;
    let version: i64 = tx
        .query_one(
            "SELECT version FROM schema_version WHERE id = 1 FOR UPDATE",
            &[],
        )?
        .try_get(0)?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::Version {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (step, ddl) in POSTGRES_STEPS {
        if *step > version {
            tx.batch_execute(ddl)?;
        }
    }
    tx.execute(
        "UPDATE schema_version SET version = $1 WHERE id = 1",
        &[&SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_repeated_in_messages() {
        assert_eq!(
            redact("postgres://platform:s3cret@db.internal:5432/clearing"),
            "postgres://platform:***@db.internal:5432/clearing"
        );
        assert_eq!(redact("postgres:///clearing"), "postgres:///clearing");
    }
}
