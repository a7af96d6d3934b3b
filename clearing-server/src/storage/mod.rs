//! The database behind one interface: SQLite (a file; the embedded default for the demo, tests and a
//! small platform) or PostgreSQL (a platform's engine, shared by any number of server processes), chosen
//! by `--db` ([`Db::open`]).
//!
//! * [`sql`] — the interface both drivers implement: a transaction that runs SQL written once, in the
//!   subset both engines share; [`sqlite`] and [`postgres`] are the drivers, [`schema`] their DDL.
//! * The operations, each written once over [`sql::Tx`]: [`terminals`] (enrolment, keys, request nonces),
//!   [`journal`] (upload, head, batch close), [`cards`] (merchants, cards, packages, versions, deny
//!   lists), [`card_search`] (cards by masked number or holder), [`import`] (cards issued in bulk, all
//!   or nothing), [`bundle`] (snapshots and deltas), [`statements`] (the reports' inputs), and for the
//!   platform's people and fleet: [`access`] (API keys, console logins, cards granted to the member
//!   app), [`audit`] (the log of every change), [`fleet`] (terminals as listed, health reports, held
//!   records per terminal), [`pairing`] (pairing codes), [`throttle`] (failed guesses counted across
//!   processes), [`catalogue`] (the member app's offers), [`console`] (console sessions, resolutions
//!   of exceptions).
//!
//! Every operation runs in a transaction of the isolation it needs ([`Db::write`], [`Db::read`],
//! [`Db::transaction`]): serializable (retried on a conflict) where it reads before it writes, read
//! committed where one unique key decides (a nonce), a read-only snapshot for reads, the volatile
//! store ([`Isolation::Volatile`]) for what needs no durability (a `GET`'s nonce, a health report's),
//! and a commit that does not wait for the disk ([`Isolation::Unflushed`]) for what the next request
//! replaces (a terminal's latest health report). Server processes keep no
//! state that correctness depends on: everything that must hold across processes is in the database.

pub mod access;
pub mod audit;
pub mod bundle;
pub mod card_search;
pub mod cards;
pub mod catalogue;
pub mod console;
pub mod fleet;
pub mod import;
pub mod journal;
pub mod pairing;
pub mod postgres;
pub mod schema;
pub mod sealing;
pub mod sql;
pub mod sqlite;
pub mod statements;
pub mod terminals;
pub mod throttle;

use std::path::PathBuf;

pub use journal::{Ack, UploadRecord, batch_close, exceptions, head, store_batch};
pub use schema::SCHEMA_VERSION;
pub use sql::{Backend, Param, Row, StorageError, Tx};
pub use terminals::{Terminal, enroll, set_enabled, terminal};

/// Longest canonical record accepted (`docs/api/README.md`, "Size limits").
pub const MAX_RECORD_BYTES: usize = 8192;

/// How a transaction sees others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Reads and writes as if alone (PostgreSQL `SERIALIZABLE`; SQLite's single writer). Retried on a
    /// conflict.
    Serializable,
    /// Each statement sees what is committed (PostgreSQL `READ COMMITTED`): for writes that one
    /// unique key decides, such as remembering a nonce.
    ReadCommitted,
    /// A read-only consistent snapshot (PostgreSQL `REPEATABLE READ READ ONLY`; an SQLite read
    /// transaction): a bundle's cards and the terminal's head are read at one moment.
    Snapshot,
    /// Read committed in the **volatile store**, for what may be lost in a crash and must not cost a
    /// flush (the nonces of `GET` requests): PostgreSQL's unlogged tables with an asynchronous commit,
    /// SQLite's separate file written with `synchronous=OFF`. Only the volatile tables
    /// (`volatile_nonce`) may be used in it.
    Volatile,
    /// Serializable in the durable store, but its commit does not wait for the disk: PostgreSQL's
    /// `synchronous_commit = off`, SQLite's `synchronous=NORMAL` for that commit (WAL mode). It is
    /// never half applied, and any later flushed commit makes it durable too (the WAL is written in
    /// order); a crash of the database's machine may lose the last ones. For what the next request
    /// replaces anyway: a terminal's latest health report.
    Unflushed,
}

/// Times a conflicting transaction is run before the conflict is returned.
const ATTEMPTS: u32 = 8;

/// The database, whichever engine.
#[derive(Debug)]
pub enum Db {
    Sqlite(sqlite::SqliteDb),
    Postgres(postgres::PgDb),
}

impl Db {
    /// Opens and migrates the database `spec` names: `postgres://…` / `postgresql://…`, or an SQLite
    /// file as `sqlite:PATH` or a plain `PATH` (created if missing).
    pub fn open(spec: &str) -> Result<Db, StorageError> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Ok(Db::Postgres(postgres::PgDb::open(spec)?));
        }
        let path = PathBuf::from(spec.strip_prefix("sqlite:").unwrap_or(spec));
        if path.as_os_str().is_empty() {
            return Err(StorageError::Spec {
                spec: spec.to_owned(),
                reason: "no file name".into(),
            });
        }
        Ok(Db::Sqlite(sqlite::SqliteDb::open(&path)?))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    fn run_once<T, E: From<StorageError>>(
        &self,
        isolation: Isolation,
        f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> (Result<T, E>, bool) {
        match self {
            Db::Sqlite(db) => db.run_once(isolation, f),
            Db::Postgres(db) => db.run_once(isolation, f),
        }
    }

    /// Runs `f` in a transaction of `isolation`, committed when `f` returns `Ok`. A conflict with
    /// another transaction (serialization failure, deadlock, SQLite busy) rolls back and runs `f`
    /// again from the start, up to [`ATTEMPTS`] times, so `f` must do nothing but database work.
    pub fn transaction<T, E: From<StorageError>>(
        &self,
        isolation: Isolation,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (result, conflict) = self.run_once(isolation, &mut f);
            if result.is_ok() || !conflict || attempt >= ATTEMPTS {
                return result;
            }
            // Both sides of a conflict retrying at once would conflict again: back off a little,
            // more each time, with jitter from the clock.
            let jitter = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos()) % 1000);
            std::thread::sleep(std::time::Duration::from_micros(
                (1 << attempt.min(10)) * 100 + jitter,
            ));
        }
    }

    /// A serializable read-write transaction, retried on conflicts.
    pub fn write<T, E: From<StorageError>>(
        &self,
        f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        self.transaction(Isolation::Serializable, f)
    }

    /// A read-only snapshot, run once: a reader with side effects (a bundle streamed to a client) must
    /// not be run twice. Snapshots do not conflict.
    pub fn read<T, E: From<StorageError>>(
        &self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run_once(Isolation::Snapshot, &mut f).0
    }
}
