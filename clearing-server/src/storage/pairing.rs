//! Pairing codes in the database, hashed (`crate::core::pairing` has the rules; failed guesses are
//! counted by `super::throttle`).

use serde::Serialize;

use super::sql::{StorageError, Tx};
use crate::core::pairing::StoredCode;
use crate::params;

#[derive(Debug, Clone, Copy)]
pub struct NewCode<'a> {
    pub hash: &'a [u8; 32],
    pub terminal_id: &'a str,
    pub merchant_id: &'a str,
    pub created_by: &'a str,
    pub now_ms: i64,
    pub expires_ms: i64,
}

/// Stores a new code; `false` when the same code is already stored (drawn twice: draw again).
pub fn insert(tx: &mut dyn Tx, c: &NewCode<'_>) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "INSERT INTO pairing_code (code_hash, terminal_id, merchant_id, created_ms, created_by, expires_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code_hash) DO NOTHING",
        params![
            c.hash,
            c.terminal_id,
            c.merchant_id,
            c.now_ms,
            c.created_by,
            c.expires_ms
        ],
    )? == 1)
}

/// A code by its hash: what it enrolls, and the merchant it is for.
pub fn find(
    tx: &mut dyn Tx,
    hash: &[u8; 32],
) -> Result<Option<(StoredCode, String)>, StorageError> {
    tx.query_opt(
        "SELECT terminal_id, expires_ms, used_ms, merchant_id FROM pairing_code WHERE code_hash = $1",
        params![hash],
    )?
    .map(|r| {
        Ok((
            StoredCode {
                terminal_id: r.text(0)?,
                expires_ms: r.i64(1)?,
                used_ms: r.opt_i64(2)?,
            },
            r.text(3)?,
        ))
    })
    .transpose()
}

pub fn mark_used(
    tx: &mut dyn Tx,
    hash: &[u8; 32],
    now_ms: i64,
    from: &str,
) -> Result<(), StorageError> {
    tx.execute(
        "UPDATE pairing_code SET used_ms = $2, used_from = $3 WHERE code_hash = $1",
        params![hash, now_ms, from],
    )?;
    Ok(())
}

/// Ends now the unused codes that were made through `via` (a key or a login, as
/// `Principal::actor` names it at the end of `created_by`: `… (via)`): revoking a credential takes
/// back the codes it handed out, which could otherwise still enroll a terminal for up to an hour.
/// Returns how many were ended.
pub fn end_codes_made_via(tx: &mut dyn Tx, via: &str, now_ms: i64) -> Result<u64, StorageError> {
    let suffix = format!("({via})");
    let live = tx.query(
        "SELECT code_hash, created_by FROM pairing_code WHERE used_ms IS NULL AND expires_ms > $1",
        params![now_ms],
    )?;
    let mut ended = 0;
    for row in &live {
        if row.text(1)?.ends_with(&suffix) {
            ended += tx.execute(
                "UPDATE pairing_code SET expires_ms = $2 WHERE code_hash = $1",
                params![row.blob(0)?, now_ms],
            )?;
        }
    }
    Ok(ended)
}

/// A code as listed: never the code itself (it is shown once, when made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeListing {
    pub terminal_id: String,
    pub merchant_id: String,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: i64,
    pub used_ms: Option<i64>,
}

/// A merchant's codes, newest first (at most 100).
pub fn list(tx: &mut dyn Tx, merchant_id: &str) -> Result<Vec<CodeListing>, StorageError> {
    tx.query(
        "SELECT terminal_id, merchant_id, created_ms, created_by, expires_ms, used_ms FROM pairing_code
         WHERE merchant_id = $1 ORDER BY created_ms DESC, terminal_id LIMIT 100",
        params![merchant_id],
    )?
    .iter()
    .map(|r| {
        Ok(CodeListing {
            terminal_id: r.text(0)?,
            merchant_id: r.text(1)?,
            created_ms: r.i64(2)?,
            created_by: r.text(3)?,
            expires_ms: r.i64(4)?,
            used_ms: r.opt_i64(5)?,
        })
    })
    .collect()
}
