//! Who may use the platform's API and console, in the database: API keys (`credential`: the secret's
//! hash only), console logins (`console_user`: argon2id), and the cards granted to the member app
//! (`card_grant`). The rules are `crate::core::credentials` and `crate::core::access`; the operations
//! that use these are `crate::service`'s.

use serde::Serialize;

use super::sql::{Row, StorageError, Tx};
use crate::core::access::Role;
use crate::params;

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credential {
    pub id: String,
    pub role: String,
    pub subject: String,
    pub label: String,
    pub created_ms: i64,
    pub created_by: String,
    pub revoked_ms: Option<i64>,
}

const CREDENTIAL_COLUMNS: &str =
    "SELECT id, role, subject, label, created_ms, created_by, revoked_ms FROM credential";

fn credential_row(r: &Row) -> Result<Credential, StorageError> {
    Ok(Credential {
        id: r.text(0)?,
        role: r.text(1)?,
        subject: r.text(2)?,
        label: r.text(3)?,
        created_ms: r.i64(4)?,
        created_by: r.text(5)?,
        revoked_ms: r.opt_i64(6)?,
    })
}

/// A new API key's row (the key's id was drawn at random: a clash is reported as a conflict).
#[derive(Debug, Clone, Copy)]
pub struct NewCredential<'a> {
    pub id: &'a str,
    pub role: Role,
    pub subject: &'a str,
    pub label: &'a str,
    pub secret_hash: &'a [u8],
    pub created_by: &'a str,
    pub now_ms: i64,
}

pub fn insert_credential(tx: &mut dyn Tx, c: &NewCredential<'_>) -> Result<bool, StorageError> {
    let n = tx.execute(
        "INSERT INTO credential (id, role, subject, label, secret_hash, created_ms, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        params![
            c.id,
            c.role.as_str(),
            c.subject,
            c.label,
            c.secret_hash,
            c.now_ms,
            c.created_by
        ],
    )?;
    Ok(n == 1)
}

/// A live key's role, subject and stored hash, by id.
pub fn live_credential(
    tx: &mut dyn Tx,
    id: &str,
) -> Result<Option<(String, String, Vec<u8>)>, StorageError> {
    tx.query_opt(
        "SELECT role, subject, secret_hash FROM credential WHERE id = $1 AND revoked_ms IS NULL",
        params![id],
    )?
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.blob(2)?.to_vec())))
    .transpose()
}

pub fn credentials(tx: &mut dyn Tx) -> Result<Vec<Credential>, StorageError> {
    tx.query(
        &format!("{CREDENTIAL_COLUMNS} ORDER BY created_ms, id"),
        &[],
    )?
    .iter()
    .map(credential_row)
    .collect()
}

pub fn credential(tx: &mut dyn Tx, id: &str) -> Result<Option<Credential>, StorageError> {
    tx.query_opt(&format!("{CREDENTIAL_COLUMNS} WHERE id = $1"), params![id])?
        .map(|r| credential_row(&r))
        .transpose()
}

/// Revokes a key; `false` when there is no live key of that id.
pub fn revoke_credential(tx: &mut dyn Tx, id: &str, now_ms: i64) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "UPDATE credential SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
        params![id, now_ms],
    )? == 1)
}

/// A console login as listed: never its password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleUser {
    pub name: String,
    pub role: String,
    pub subject: String,
    pub created_ms: i64,
    pub created_by: String,
    pub revoked_ms: Option<i64>,
}

/// Adds a console login; `false` when the name is taken.
pub fn insert_user(
    tx: &mut dyn Tx,
    user: &ConsoleUser,
    password_hash: &str,
) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "INSERT INTO console_user (name, role, subject, password_hash, created_ms, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        params![
            &user.name,
            &user.role,
            &user.subject,
            password_hash,
            user.created_ms,
            &user.created_by
        ],
    )? == 1)
}

pub fn users(tx: &mut dyn Tx) -> Result<Vec<ConsoleUser>, StorageError> {
    tx.query(
        "SELECT name, role, subject, created_ms, created_by, revoked_ms FROM console_user ORDER BY name",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(ConsoleUser {
            name: r.text(0)?,
            role: r.text(1)?,
            subject: r.text(2)?,
            created_ms: r.i64(3)?,
            created_by: r.text(4)?,
            revoked_ms: r.opt_i64(5)?,
        })
    })
    .collect()
}

/// A live login's role, subject and password hash.
pub fn live_user(
    tx: &mut dyn Tx,
    name: &str,
) -> Result<Option<(String, String, String)>, StorageError> {
    tx.query_opt(
        "SELECT role, subject, password_hash FROM console_user WHERE name = $1 AND revoked_ms IS NULL",
        params![name],
    )?
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
    .transpose()
}

pub fn revoke_user(tx: &mut dyn Tx, name: &str, now_ms: i64) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "UPDATE console_user SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL",
        params![name, now_ms],
    )? == 1)
}

/// A card granted to a member app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub handle: String,
    pub card_id: i64,
    pub app_id: String,
    pub created_ms: i64,
}

/// The live grant of a card to an app, if any.
pub fn grant_of(
    tx: &mut dyn Tx,
    card_id: i64,
    app_id: &str,
) -> Result<Option<Grant>, StorageError> {
    tx.query_opt(
        "SELECT handle, card_id, app_id, created_ms FROM card_grant
         WHERE card_id = $1 AND app_id = $2 AND revoked_ms IS NULL",
        params![card_id, app_id],
    )?
    .map(|r| grant_row(&r))
    .transpose()
}

fn grant_row(r: &Row) -> Result<Grant, StorageError> {
    Ok(Grant {
        handle: r.text(0)?,
        card_id: r.i64(1)?,
        app_id: r.text(2)?,
        created_ms: r.i64(3)?,
    })
}

/// The live grant a handle names.
pub fn grant_by_handle(tx: &mut dyn Tx, handle: &str) -> Result<Option<Grant>, StorageError> {
    tx.query_opt(
        "SELECT handle, card_id, app_id, created_ms FROM card_grant WHERE handle = $1 AND revoked_ms IS NULL",
        params![handle],
    )?
    .map(|r| grant_row(&r))
    .transpose()
}

/// The live grants of a card.
pub fn grants_of_card(tx: &mut dyn Tx, card_id: i64) -> Result<Vec<Grant>, StorageError> {
    tx.query(
        "SELECT handle, card_id, app_id, created_ms FROM card_grant
         WHERE card_id = $1 AND revoked_ms IS NULL ORDER BY app_id",
        params![card_id],
    )?
    .iter()
    .map(grant_row)
    .collect()
}

pub fn insert_grant(tx: &mut dyn Tx, g: &Grant) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO card_grant (handle, card_id, app_id, created_ms) VALUES ($1, $2, $3, $4)",
        params![&g.handle, g.card_id, &g.app_id, g.created_ms],
    )?;
    Ok(())
}

pub fn revoke_grant(
    tx: &mut dyn Tx,
    card_id: i64,
    app_id: &str,
    now_ms: i64,
) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "UPDATE card_grant SET revoked_ms = $3 WHERE card_id = $1 AND app_id = $2 AND revoked_ms IS NULL",
        params![card_id, app_id, now_ms],
    )? == 1)
}

/// A reissue moves the old card's live grants to the new card: the member app keeps its handle.
pub fn move_grants(tx: &mut dyn Tx, from_card: i64, to_card: i64) -> Result<u64, StorageError> {
    tx.execute(
        "UPDATE card_grant SET card_id = $2 WHERE card_id = $1 AND revoked_ms IS NULL",
        params![from_card, to_card],
    )
}
