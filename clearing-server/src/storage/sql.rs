//! The one SQL interface both drivers implement: a transaction ([`Tx`]) that executes and queries SQL
//! written once, with parameters ([`Param`]) and rows ([`Row`]) of four kinds — 64-bit integers, text,
//! bytes and NULL — which SQLite and PostgreSQL both store natively.
//!
//! SQL is written in PostgreSQL's placeholder style (`$1`, `$2`, …) and in the subset both engines
//! (and PostgreSQL-compatible distributed engines) share: `ON CONFLICT … DO NOTHING / DO UPDATE`,
//! `RETURNING`, `CASE` rather than two-argument `min`/`max`, integers as `BIGINT`, booleans stored as
//! 0/1 integers, no engine hints. The SQLite driver rewrites `$n` to `?n`; the schema (DDL), which does
//! differ, is per driver (`schema.rs`).

use thiserror::Error;

/// What went wrong in the database. Card numbers never appear here (SQL carries them encrypted).
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("connection pool: {0}")]
    Pool(String),
    /// A serialization failure or deadlock (PostgreSQL `40001`/`40P01`), or SQLite still busy after its
    /// timeout: the transaction is retried from the start ([`super::Db::write`]).
    #[error("transaction conflict: {0}")]
    Conflict(String),
    #[error("column {index}: {expected} expected, found {found}")]
    Column {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("no row: {0}")]
    NoRow(String),
    #[error("database schema version {found} is newer than this server's {supported}")]
    Version { found: i64, supported: i64 },
    #[error("--db {spec:?}: {reason}")]
    Spec { spec: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl StorageError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StorageError::Conflict(_))
    }
}

/// A database failure is the server's: `500 internal`, nothing committed.
impl From<StorageError> for crate::core::problem::Problem {
    fn from(e: StorageError) -> Self {
        crate::core::problem::Problem::internal(e.to_string())
    }
}

/// A parameter of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}
impl From<i32> for Param<'_> {
    fn from(v: i32) -> Self {
        Param::Int(i64::from(v))
    }
}
impl From<u32> for Param<'_> {
    fn from(v: u32) -> Self {
        Param::Int(i64::from(v))
    }
}
impl From<u8> for Param<'_> {
    fn from(v: u8) -> Self {
        Param::Int(i64::from(v))
    }
}
impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Param::Int(i64::from(v))
    }
}
impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}
impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}
impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Param::Blob(v)
    }
}
impl<'a> From<&'a Vec<u8>> for Param<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Param::Blob(v)
    }
}
impl<'a, const N: usize> From<&'a [u8; N]> for Param<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        Param::Blob(v)
    }
}
impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// `params![a, b, …]`: a slice of [`Param`]s.
#[macro_export]
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$($crate::storage::sql::Param::from($p)),*][..]
    };
}
pub use crate::params;

/// A value read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// One row, its values in select-list order. The getters name the column and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, index: usize, expected: &'static str) -> Result<&Value, StorageError> {
        self.0.get(index).ok_or(StorageError::Column {
            index,
            expected,
            found: "no such column",
        })
    }

    fn mismatch(index: usize, expected: &'static str, found: &Value) -> StorageError {
        StorageError::Column {
            index,
            expected,
            found: found.kind(),
        }
    }

    pub fn opt_i64(&self, index: usize) -> Result<Option<i64>, StorageError> {
        match self.at(index, "an integer")? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(Self::mismatch(index, "an integer", other)),
        }
    }

    pub fn i64(&self, index: usize) -> Result<i64, StorageError> {
        self.opt_i64(index)?.ok_or(StorageError::Column {
            index,
            expected: "an integer",
            found: "NULL",
        })
    }

    /// An integer column that holds a non-negative count, seq or version.
    pub fn u64(&self, index: usize) -> Result<u64, StorageError> {
        let v = self.i64(index)?;
        u64::try_from(v).map_err(|_| StorageError::Column {
            index,
            expected: "a non-negative integer",
            found: "a negative integer",
        })
    }

    pub fn bool(&self, index: usize) -> Result<bool, StorageError> {
        Ok(self.i64(index)? != 0)
    }

    pub fn opt_text(&self, index: usize) -> Result<Option<String>, StorageError> {
        match self.at(index, "text")? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(Self::mismatch(index, "text", other)),
        }
    }

    pub fn text(&self, index: usize) -> Result<String, StorageError> {
        self.opt_text(index)?.ok_or(StorageError::Column {
            index,
            expected: "text",
            found: "NULL",
        })
    }

    pub fn opt_blob(&self, index: usize) -> Result<Option<&[u8]>, StorageError> {
        match self.at(index, "bytes")? {
            Value::Null => Ok(None),
            Value::Blob(v) => Ok(Some(v)),
            other => Err(Self::mismatch(index, "bytes", other)),
        }
    }

    pub fn blob(&self, index: usize) -> Result<&[u8], StorageError> {
        self.opt_blob(index)?.ok_or(StorageError::Column {
            index,
            expected: "bytes",
            found: "NULL",
        })
    }
}

/// Which engine a transaction runs on (for the rare statement whose text must differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One open transaction. Every operation of the server is written once against this trait.
pub trait Tx {
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StorageError>;

    /// Runs a query and returns every row.
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StorageError>;

    fn backend(&self) -> Backend;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, StorageError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Exactly the first row; [`StorageError::NoRow`] naming the statement when there is none.
    fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, StorageError> {
        self.query_opt(sql, params)?.ok_or_else(|| {
            StorageError::NoRow(sql.split_whitespace().collect::<Vec<_>>().join(" "))
        })
    }
}

/// `$1` → `?1` (SQLite's numbered placeholders, which bind by number like PostgreSQL's). Outside
/// string literals only.
pub(crate) fn to_sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_string = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_string = !in_string;
                out.push(c);
            }
            '$' if !in_string && chars.peek().is_some_and(char::is_ascii_digit) => out.push('?'),
            _ => out.push(c),
        }
    }
    out
}

/// `i64` for a `u64` counter, seq or version bound for SQL; values above `i64::MAX` (never stored:
/// every stored one came through this) are refused by name.
pub fn int(what: &str, v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::Other(format!("{what} {v} is above 2^63 - 1")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_strings() {
        assert_eq!(
            to_sqlite("SELECT a FROM t WHERE b = $1 AND c = '$2' AND d = $10"),
            "SELECT a FROM t WHERE b = ?1 AND c = '$2' AND d = ?10"
        );
    }

    #[test]
    fn getters_name_the_column_and_what_was_found() {
        let r = Row(vec![Value::Int(-1), Value::Null, Value::Text("x".into())]);
        assert_eq!(r.i64(0).unwrap(), -1);
        assert!(r.u64(0).unwrap_err().to_string().contains("column 0"));
        assert_eq!(r.opt_blob(1).unwrap(), None);
        assert_eq!(
            r.blob(2).unwrap_err().to_string(),
            "column 2: bytes expected, found text"
        );
        assert!(
            r.text(3)
                .unwrap_err()
                .to_string()
                .contains("no such column")
        );
    }
}
