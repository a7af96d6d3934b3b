//! Request nonces in SQLite, so that a replay is refused across a server restart.
//!
//! A nonce is remembered until `timestamp + 300 s` (the `forget_after_ms` the contract's
//! `ParsedAuth::verify` passes): after that the request fails the clock check anyway. Rows are pruned
//! when that time has passed, so none lives longer than 2 × 300 s after it was accepted.

use redeemd_contract::request::NonceStore;
use rusqlite::{Connection, params};

/// A [`NonceStore`] over the server's connection. The trait cannot return an error: a database failure
/// counts as "seen" (the request is refused, fail closed) and is kept in [`SqliteNonces::error`] so
/// that the caller answers `500` rather than `nonce_replayed`.
pub struct SqliteNonces<'c> {
    conn: &'c Connection,
    pub error: Option<rusqlite::Error>,
}

impl<'c> SqliteNonces<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        Self { conn, error: None }
    }
}

impl NonceStore for SqliteNonces<'_> {
    fn seen_before(&mut self, terminal_id: &str, nonce: &str, forget_after_ms: i64) -> bool {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO nonce (terminal_id, nonce, forget_after_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![terminal_id, nonce, forget_after_ms]));
        match inserted {
            Ok(n) => n == 0,
            Err(e) => {
                self.error = Some(e);
                true
            }
        }
    }
}

/// Forgets the nonces whose time has passed. Returns how many.
pub fn prune(conn: &Connection, now_ms: i64) -> Result<usize, rusqlite::Error> {
    conn.prepare_cached("DELETE FROM nonce WHERE forget_after_ms < ?1")?
        .execute([now_ms])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_nonce_is_seen_once_per_terminal_until_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::storage::open(&dir.path().join("n.sqlite3")).unwrap();
        let mut n = SqliteNonces::new(&c);
        assert!(!n.seen_before("T-1", "aa", 1_000));
        assert!(n.seen_before("T-1", "aa", 1_000));
        assert!(!n.seen_before("T-2", "aa", 1_000), "per terminal");
        assert!(!n.seen_before("T-1", "bb", 2_000));
        assert_eq!(prune(&c, 1_000).unwrap(), 0, "kept through forget_after_ms");
        assert_eq!(prune(&c, 1_001).unwrap(), 2);
        assert!(!SqliteNonces::new(&c).seen_before("T-1", "aa", 3_000));
        assert!(SqliteNonces::new(&c).seen_before("T-1", "bb", 3_000));
        // A broken database refuses (fail closed) and says why.
        c.execute_batch("DROP TABLE nonce").unwrap();
        let mut n = SqliteNonces::new(&c);
        assert!(n.seen_before("T-1", "cc", 1));
        assert!(n.error.is_some());
    }
}
