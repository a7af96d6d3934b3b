//! Enrolled terminals (their secrets, from which every key of theirs is derived) and the request nonces
//! that make a replay fail in any server process, across restarts.
//!
//! A nonce is remembered until `timestamp + 300 s` (the `forget_after_ms` the contract's
//! `ParsedAuth::verify` passes): after that the request fails the clock check anyway. Rows are pruned
//! when that time has passed, so none lives longer than 2 × 300 s after it was accepted.

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
    let secret = vault.open(&secret_seal(terminal_id), sealed)?;
    let secret = TerminalSecret::from_bytes(&secret).map_err(|e| TerminalError::BadSecret {
        id: terminal_id.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Some(Terminal {
        merchant_id: row.text(0)?,
        enabled: row.bool(2)?,
        keys: secret.derive_all(terminal_id),
    }))
}

/// A [`NonceStore`] over a transaction. The trait cannot return an error: a database failure counts as
/// "seen" (the request is refused, fail closed) and is kept in [`TxNonces::error`] so that the caller
/// answers `500` rather than `nonce_replayed`.
pub struct TxNonces<'t> {
    tx: &'t mut dyn Tx,
    pub error: Option<StorageError>,
}

impl<'t> TxNonces<'t> {
    pub fn new(tx: &'t mut dyn Tx) -> Self {
        Self { tx, error: None }
    }
}

impl NonceStore for TxNonces<'_> {
    fn seen_before(&mut self, terminal_id: &str, nonce: &str, forget_after_ms: i64) -> bool {
        let inserted = self.tx.execute(
            "INSERT INTO nonce (terminal_id, nonce, forget_after_ms) VALUES ($1, $2, $3)
             ON CONFLICT (terminal_id, nonce) DO NOTHING",
            params![terminal_id, nonce, forget_after_ms],
        );
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
pub fn prune_nonces(tx: &mut dyn Tx, now_ms: i64) -> Result<u64, StorageError> {
    tx.execute(
        "DELETE FROM nonce WHERE forget_after_ms < $1",
        params![now_ms],
    )
}
