//! Enrolled terminals (their secrets, from which every key of theirs is derived) and the request nonces
//! that make a replay fail in any server process, across restarts.
//!
//! A nonce is remembered until `timestamp + 300 s` (the `forget_after_ms` the contract's
//! `ParsedAuth::verify_headers` passes): after that the request fails the clock check anyway. Rows are
//! pruned when that time has passed, so none lives longer than 2 × 300 s after it was accepted.
//!
//! Where a nonce is kept depends on what a replay could do ([`NonceKind`]; `docs/api/README.md`,
//! "Authentication"): a `POST`'s in the durable table `nonce`, a `GET`'s in the volatile store's
//! `volatile_nonce` (`Isolation::Volatile`: no flush), so that a sync pass that finds nothing new
//! writes nothing durable. A `GET` changes nothing, so a replay that a crash made possible (the
//! volatile store may lose its last writes) could only repeat an answer.

use redeemd_contract::keys::{TerminalKeys, TerminalSecret};
use redeemd_contract::request::NonceStore;
use thiserror::Error;

use super::sql::{StorageError, Tx};
use crate::params;
use crate::vault::Vault;

#[derive(Debug, Error)]
pub enum TerminalError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("terminal {0} is already enrolled")]
    AlreadyEnrolled(String),
    #[error("{0}")]
    Vault(#[from] crate::vault::VaultError),
    #[error("terminal {id}: stored secret unusable: {reason}")]
    BadSecret { id: String, reason: String },
}

/// Enrolls a terminal for a merchant with a fresh secret. An unknown merchant is created with defaults
/// (name = id, no commission, no categories); `admin merchant` sets them.
pub fn enroll(
    tx: &mut dyn Tx,
    vault: &Vault,
    terminal_id: &str,
    merchant_id: &str,
    secret: &[u8],
    now_ms: i64,
) -> Result<(), TerminalError> {
    super::cards::ensure_merchant(tx, merchant_id)?;
    let sealed = vault.seal(&secret_seal(terminal_id), secret)?;
    // `secret` stays empty: the secret is only ever stored sealed.
    let n = tx.execute(
        "INSERT INTO terminal (id, merchant_id, secret, secret_sealed, sealed_with, enrolled_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        params![
            terminal_id,
            merchant_id,
            &[][..],
            &sealed,
            &vault.current().fingerprint(),
            now_ms
        ],
    )?;
    if n == 0 {
        return Err(TerminalError::AlreadyEnrolled(terminal_id.to_owned()));
    }
    Ok(())
}

/// Gives an enrolled terminal a new secret (a pairing code redeemed for a terminal that never
/// uploaded a record: its PC was replaced before it was used). Returns whether it exists.
pub fn rekey(
    tx: &mut dyn Tx,
    vault: &Vault,
    terminal_id: &str,
    secret: &[u8],
) -> Result<bool, TerminalError> {
    let sealed = vault.seal(&secret_seal(terminal_id), secret)?;
    let n = tx.execute(
        "UPDATE terminal SET secret_sealed = $2, sealed_with = $3 WHERE id = $1",
        params![terminal_id, &sealed, &vault.current().fingerprint()],
    )?;
    Ok(n == 1)
}

/// Enables or disables a terminal (a disabled one is refused with `403 terminal_disabled`). Returns
/// whether the terminal exists.
pub fn set_enabled(
    tx: &mut dyn Tx,
    terminal_id: &str,
    enabled: bool,
) -> Result<bool, StorageError> {
    let n = tx.execute(
        "UPDATE terminal SET enabled = $2 WHERE id = $1",
        params![terminal_id, enabled],
    )?;
    Ok(n == 1)
}

/// An enrolled terminal and its derived keys.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub merchant_id: String,
    pub enabled: bool,
    pub keys: TerminalKeys,
}

/// What a terminal's sealed secret is (bound into the seal: one terminal's cannot pass as another's).
pub fn secret_seal(terminal_id: &str) -> String {
    format!("terminal-secret/{terminal_id}")
}

pub fn terminal(
    tx: &mut dyn Tx,
    vault: &Vault,
    terminal_id: &str,
) -> Result<Option<Terminal>, TerminalError> {
    let Some(row) = terminal_row(tx, terminal_id)? else {
        return Ok(None);
    };
    let keys = derive_keys(vault, terminal_id, &row.sealed)?;
    Ok(Some(row.with_keys(keys)))
}

/// A terminal's row: what is read on every request.
struct TerminalRow {
    merchant_id: String,
    enabled: bool,
    sealed: Vec<u8>,
}

impl TerminalRow {
    fn with_keys(self, keys: TerminalKeys) -> Terminal {
        Terminal {
            merchant_id: self.merchant_id,
            enabled: self.enabled,
            keys,
        }
    }
}

fn terminal_row(tx: &mut dyn Tx, terminal_id: &str) -> Result<Option<TerminalRow>, TerminalError> {
    let Some(row) = tx.query_opt(
        "SELECT merchant_id, secret_sealed, enabled FROM terminal WHERE id = $1",
        params![terminal_id],
    )?
    else {
        return Ok(None);
    };
    let sealed = row.opt_blob(1)?.ok_or_else(|| TerminalError::BadSecret {
        id: terminal_id.to_owned(),
        reason: "not sealed (start the server with the master key once to seal it)".into(),
    })?;
    Ok(Some(TerminalRow {
        merchant_id: row.text(0)?,
        enabled: row.bool(2)?,
        sealed: sealed.to_vec(),
    }))
}

/// Opens a terminal's sealed secret and derives its keys.
fn derive_keys(
    vault: &Vault,
    terminal_id: &str,
    sealed: &[u8],
) -> Result<TerminalKeys, TerminalError> {
    let secret = vault.open(&secret_seal(terminal_id), sealed)?;
    let secret = TerminalSecret::from_bytes(&secret).map_err(|e| TerminalError::BadSecret {
        id: terminal_id.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(secret.derive_all(terminal_id))
}

/// The keys derived for terminals, by terminal id and the sealed secret they were derived from: a
/// request reads the terminal's row (merchant, enabled, sealed secret) every time, and opens and derives
/// only when the sealed bytes are not the ones it derived from before (a re-enrolment or a key rotation
/// changes them). What correctness depends on is read from the database on every request; this only
/// saves opening the seal and six HKDF derivations per request.
#[derive(Default)]
pub struct KeyCache {
    map: std::sync::Mutex<std::collections::HashMap<String, (Vec<u8>, TerminalKeys)>>,
}

/// Terminals whose keys a [`KeyCache`] keeps (about 1 KiB each); beyond it, one is forgotten per new one.
const KEY_CACHE_TERMINALS: usize = 20_000;

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCache(<keys redacted>)")
    }
}

impl KeyCache {
    /// The terminal, as [`terminal`] reads it, in a read-only snapshot of its own.
    pub fn terminal(
        &self,
        db: &super::Db,
        vault: &Vault,
        terminal_id: &str,
    ) -> Result<Option<Terminal>, TerminalError> {
        let Some(row) = db.read(|tx| terminal_row(tx, terminal_id))? else {
            return Ok(None);
        };
        let cached = self.map.lock().ok().and_then(|m| {
            m.get(terminal_id)
                .filter(|(s, _)| *s == row.sealed)
                .map(|(_, k)| k.clone())
        });
        if let Some(keys) = cached {
            return Ok(Some(row.with_keys(keys)));
        }
        let keys = derive_keys(vault, terminal_id, &row.sealed)?;
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= KEY_CACHE_TERMINALS
                && let Some(any) = m.keys().next().cloned()
            {
                m.remove(&any);
            }
            m.insert(terminal_id.to_owned(), (row.sealed.clone(), keys.clone()));
        }
        Ok(Some(row.with_keys(keys)))
    }
}

/// Which store a request's nonce is remembered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceKind {
    /// A request that may change something (`POST`): the durable table `nonce`.
    Durable = 0,
    /// A request that only reads (`GET`): the volatile store's `volatile_nonce`.
    Volatile = 1,
}

impl NonceKind {
    /// `GET` and `HEAD` read; every other method is remembered durably.
    pub fn for_method(method: &str) -> NonceKind {
        if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
            NonceKind::Volatile
        } else {
            NonceKind::Durable
        }
    }

    fn insert_sql(self) -> &'static str {
        match self {
            NonceKind::Durable => {
                "INSERT INTO nonce (terminal_id, nonce, forget_after_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (terminal_id, nonce) DO NOTHING"
            }
            NonceKind::Volatile => {
                "INSERT INTO volatile_nonce (terminal_id, nonce, forget_after_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (terminal_id, nonce) DO NOTHING"
            }
        }
    }

    fn prune_sql(self) -> &'static str {
        match self {
            NonceKind::Durable => "DELETE FROM nonce WHERE forget_after_ms < $1",
            NonceKind::Volatile => "DELETE FROM volatile_nonce WHERE forget_after_ms < $1",
        }
    }

    /// Which isolation (and so which store) its transactions run in.
    pub fn isolation(self) -> super::Isolation {
        match self {
            NonceKind::Durable => super::Isolation::ReadCommitted,
            NonceKind::Volatile => super::Isolation::Volatile,
        }
    }
}

/// A [`NonceStore`] over the database: each nonce remembered in a transaction of its own (read
/// committed: the `(terminal, nonce)` key alone decides, in any process) in the store of its
/// [`NonceKind`], the expired ones of that store forgotten first when `prune_before_ms` is given. The
/// trait cannot return an error: a database failure counts as "seen" (the request is refused, fail
/// closed) and is kept in [`DbNonces::error`] so that the caller answers `500` rather than
/// `nonce_replayed`.
pub struct DbNonces<'d> {
    pub db: &'d super::Db,
    pub kind: NonceKind,
    /// Forget the nonces whose time is before this (server clock) first: set now and then, not on
    /// every request.
    pub prune_before_ms: Option<i64>,
    pub error: Option<StorageError>,
}

impl NonceStore for DbNonces<'_> {
    fn seen_before(&mut self, terminal_id: &str, nonce: &str, forget_after_ms: i64) -> bool {
        let (kind, prune) = (self.kind, self.prune_before_ms);
        let inserted = self.db.transaction(kind.isolation(), |tx| {
            if let Some(now_ms) = prune {
                prune_nonces(tx, kind, now_ms)?;
            }
            tx.execute(
                self.kind.insert_sql(),
                params![terminal_id, nonce, forget_after_ms],
            )
        });
        match inserted {
            Ok(n) => n == 0,
            Err(e) => {
                self.error = Some(e);
                true
            }
        }
    }
}

/// Forgets the nonces of `kind` whose time has passed. Returns how many.
pub fn prune_nonces(tx: &mut dyn Tx, kind: NonceKind, now_ms: i64) -> Result<u64, StorageError> {
    tx.execute(kind.prune_sql(), params![now_ms])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::vault::MasterKey;

    /// The cache saves deriving, never reading: a disabled terminal is seen at once, and keys follow
    /// the sealed secret they were derived from (re-sealed under a new master key: the same keys).
    #[test]
    fn the_key_cache_reads_the_row_every_time_and_derives_once_per_sealed_secret() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            super::super::Db::open(&dir.path().join("c.sqlite3").display().to_string()).unwrap();
        let vault = Vault::new(MasterKey::from_bytes(&[1; 32]).unwrap());
        db.write(|tx| enroll(tx, &vault, "T-1", "M-1", &[5; 32], 0))
            .unwrap();
        let cache = KeyCache::default();
        let want = TerminalSecret::from_bytes(&[5; 32])
            .unwrap()
            .derive_all("T-1");
        let mac = |t: &Terminal| t.keys.request.mac(&[b"x"]);
        let first = cache.terminal(&db, &vault, "T-1").unwrap().unwrap();
        assert_eq!(mac(&first), want.request.mac(&[b"x"]));
        assert!(first.enabled);
        db.write(|tx| set_enabled(tx, "T-1", false)).unwrap();
        assert!(!cache.terminal(&db, &vault, "T-1").unwrap().unwrap().enabled);
        // Re-sealed under another master key: other bytes, derived again, the same keys.
        let rotated = Vault::with_previous(
            MasterKey::from_bytes(&[2; 32]).unwrap(),
            MasterKey::from_bytes(&[1; 32]).unwrap(),
        );
        let sealed = rotated.seal(&secret_seal("T-1"), &[5; 32]).unwrap();
        db.write(|tx| {
            tx.execute(
                "UPDATE terminal SET secret_sealed = $1 WHERE id = 'T-1'",
                crate::params![&sealed],
            )
        })
        .unwrap();
        let only_new = Vault::new(MasterKey::from_bytes(&[2; 32]).unwrap());
        let again = cache.terminal(&db, &only_new, "T-1").unwrap().unwrap();
        assert_eq!(mac(&again), want.request.mac(&[b"x"]));
        assert!(cache.terminal(&db, &vault, "T-9").unwrap().is_none());
    }
}
