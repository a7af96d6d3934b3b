//! The database's binding to the platform master key (`crate::vault`), run by every command before
//! anything else ([`bind`]):
//!
//! 1. the key must be the one the database is bound to (the latest row of `master_key`; a fresh
//!    database is bound to the first key it sees). A vault holding the bound key as its *previous* key
//!    is a rotation (`admin key rotate`): the new key becomes the bound one;
//! 2. every row not sealed under the current key is (re)sealed, in batches of [`BATCH`] rows, each its
//!    own transaction: card numbers (and their lookup keys), identity data, terminal secrets. Rows a
//!    version-4 database held in clear are sealed the first time; after a rotation every row moves to
//!    the new key. An interrupted run leaves each row sealed under one of the two keys: run it again with
//!    both (the vault opens either). Nothing to do is one query per table;
//! 3. the cards of a database older than schema version 9 get their search columns
//!    (`super::card_search::fill_index`), in batches, each its own transaction.

use super::Db;
use super::cards::{SEALED_IDENTITY, SEALED_NUMBER};
use super::sql::{StorageError, Tx};
use super::terminals::secret_seal;
use crate::params;
use crate::vault::{Vault, VaultError};

/// Rows (re)sealed per transaction.
pub const BATCH: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Vault(#[from] VaultError),
    /// A card whose search columns could not be filled.
    #[error("{0}")]
    Card(#[from] super::cards::CardError),
    #[error(
        "the master key given (fingerprint {given}) is not this database's (fingerprint {bound}): give the key the database was sealed with, or rotate with `admin key rotate`"
    )]
    WrongKey { given: String, bound: String },
}

/// What [`bind`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sealed {
    pub cards: u64,
    pub terminals: u64,
}

/// Checks the vault's key against the database and (re)seals every row not under it.
pub fn bind(db: &Db, vault: &Vault, now_ms: i64) -> Result<Sealed, SealError> {
    let current = vault.current().fingerprint();
    db.write(|tx| -> Result<(), SealError> {
        let bound = tx.query_opt(
            "SELECT fingerprint FROM master_key ORDER BY since_ms DESC, fingerprint LIMIT 1",
            &[],
        )?;
        let bound = bound.map(|r| r.blob(0).map(<[u8]>::to_vec)).transpose()?;
        match bound {
            Some(b) if b == current => Ok(()),
            Some(b) if vault.opens(&b) => {
                // A rotation: the new key is bound from now on.
                tx.execute(
                    "INSERT INTO master_key (fingerprint, since_ms) VALUES ($1, $2)",
                    params![&current, now_ms],
                )?;
                Ok(())
            }
            Some(b) => Err(SealError::WrongKey {
                given: hex::encode(current),
                bound: hex::encode(b),
            }),
            None => {
                tx.execute(
                    "INSERT INTO master_key (fingerprint, since_ms) VALUES ($1, $2)",
                    params![&current, now_ms],
                )?;
                Ok(())
            }
        }
    })?;
    let mut done = Sealed::default();
    loop {
        let n = db.write(|tx| seal_cards(tx, vault))?;
        done.cards += n;
        if n < BATCH as u64 {
            break;
        }
    }
    loop {
        let n = db.write(|tx| seal_terminals(tx, vault))?;
        done.terminals += n;
        if n < BATCH as u64 {
            break;
        }
    }
    while db.write(super::card_search::fill_index)? == super::card_search::FILL_BATCH as u64 {}
    Ok(done)
}

fn seal_cards(tx: &mut dyn Tx, vault: &Vault) -> Result<u64, SealError> {
    let current = vault.current().fingerprint();
    let rows = tx.query(
        "SELECT id, number_key, number_sealed, identity_data, identity_sealed, sealed_with FROM card
         WHERE sealed_with IS NULL OR sealed_with <> $1 ORDER BY id LIMIT $2",
        params![&current, BATCH],
    )?;
    for r in &rows {
        let id = r.i64(0)?;
        let what = |w: &str| format!("card #{id}: {w}");
        // Version 4 kept the digits and identity data in clear; later rows are sealed.
        let (digits, identity) = if r.opt_blob(5)?.is_none() {
            (
                r.text(1)?.into_bytes(),
                r.opt_text(3)?.map(String::into_bytes),
            )
        } else {
            let number = r.opt_blob(2)?.ok_or_else(|| VaultError::Corrupt {
                what: what("number"),
            })?;
            (
                vault.open(SEALED_NUMBER, number)?.to_vec(),
                r.opt_blob(4)?
                    .map(|s| vault.open(SEALED_IDENTITY, s).map(|v| v.to_vec()))
                    .transpose()?,
            )
        };
        let digits_text = String::from_utf8_lossy(&digits).into_owned();
        let identity = identity
            .map(|i| vault.seal(SEALED_IDENTITY, &i))
            .transpose()?;
        tx.execute(
            "UPDATE card SET number_key = $2, number_sealed = $3, identity_sealed = $4, identity_data = NULL,
                 sealed_with = $5
             WHERE id = $1",
            params![
                id,
                &vault.lookup_key(&digits_text),
                &vault.seal(SEALED_NUMBER, &digits)?,
                identity.as_ref(),
                &current
            ],
        )?;
    }
    Ok(rows.len() as u64)
}

fn seal_terminals(tx: &mut dyn Tx, vault: &Vault) -> Result<u64, SealError> {
    let current = vault.current().fingerprint();
    let rows = tx.query(
        "SELECT id, secret, secret_sealed, sealed_with FROM terminal
         WHERE sealed_with IS NULL OR sealed_with <> $1 ORDER BY id LIMIT $2",
        params![&current, BATCH],
    )?;
    for r in &rows {
        let id = r.text(0)?;
        let what = secret_seal(&id);
        let secret = match r.opt_blob(3)? {
            None => r.blob(1)?.to_vec(),
            Some(_) => {
                let sealed = r
                    .opt_blob(2)?
                    .ok_or_else(|| VaultError::Corrupt { what: what.clone() })?;
                vault.open(&what, sealed)?.to_vec()
            }
        };
        tx.execute(
            "UPDATE terminal SET secret = $2, secret_sealed = $3, sealed_with = $4 WHERE id = $1",
            params![&id, &[][..], &vault.seal(&what, &secret)?, &current],
        )?;
    }
    Ok(rows.len() as u64)
}
