//! What the web console keeps in the database (`crate::http::console`): sessions (`console_session`:
//! the cookie's hash, never the cookie) and the resolutions of exceptions (`exception_resolution`).
//! Nothing of a session lives in a server process: any process behind a load balancer serves it.

use serde::Serialize;

use super::sql::{StorageError, Tx};
use crate::params;

/// A live session's user, as the session table and the user's row say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub user_name: String,
    pub role: String,
    pub subject: String,
    pub created_ms: i64,
    pub seen_ms: i64,
}

pub fn insert_session(
    tx: &mut dyn Tx,
    id_hash: &[u8],
    user_name: &str,
    now_ms: i64,
    expires_ms: i64,
) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "INSERT INTO console_session (id_hash, user_name, created_ms, seen_ms, expires_ms)
         VALUES ($1, $2, $3, $3, $4) ON CONFLICT (id_hash) DO NOTHING",
        params![id_hash, user_name, now_ms, expires_ms],
    )? == 1)
}

/// The session of this hash, if its user is not revoked (its times are checked by the caller).
pub fn session(tx: &mut dyn Tx, id_hash: &[u8]) -> Result<Option<SessionRow>, StorageError> {
    tx.query_opt(
        "SELECT u.name, u.role, u.subject, s.created_ms, s.seen_ms
         FROM console_session s JOIN console_user u ON u.name = s.user_name
         WHERE s.id_hash = $1 AND u.revoked_ms IS NULL",
        params![id_hash],
    )?
    .map(|r| {
        Ok(SessionRow {
            user_name: r.text(0)?,
            role: r.text(1)?,
            subject: r.text(2)?,
            created_ms: r.i64(3)?,
            seen_ms: r.i64(4)?,
        })
    })
    .transpose()
}

pub fn touch_session(tx: &mut dyn Tx, id_hash: &[u8], now_ms: i64) -> Result<(), StorageError> {
    tx.execute(
        "UPDATE console_session SET seen_ms = $2 WHERE id_hash = $1 AND seen_ms < $2",
        params![id_hash, now_ms],
    )?;
    Ok(())
}

/// Ends a session; `false` when there was none.
pub fn delete_session(tx: &mut dyn Tx, id_hash: &[u8]) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "DELETE FROM console_session WHERE id_hash = $1",
        params![id_hash],
    )? == 1)
}

/// Forgets sessions that ended: past their absolute end, or idle since `idle_before_ms`.
pub fn prune_sessions(
    tx: &mut dyn Tx,
    now_ms: i64,
    idle_before_ms: i64,
) -> Result<u64, StorageError> {
    tx.execute(
        "DELETE FROM console_session WHERE expires_ms <= $1 OR seen_ms < $2",
        params![now_ms, idle_before_ms],
    )
}

/// A person's decision on an exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    pub at_ms: i64,
    /// The audit log's actor: `operator alice (console login alice)`.
    pub by: String,
    pub note: String,
}

/// Records a resolution; `false` when the exception was resolved already.
pub fn insert_resolution(tx: &mut dyn Tx, key: &str, r: &Resolution) -> Result<bool, StorageError> {
    Ok(tx.execute(
        "INSERT INTO exception_resolution (exception_key, resolved_ms, resolved_by, note)
         VALUES ($1, $2, $3, $4) ON CONFLICT (exception_key) DO NOTHING",
        params![key, r.at_ms, &r.by, &r.note],
    )? == 1)
}

/// Every resolution, by exception key.
pub fn resolutions(
    tx: &mut dyn Tx,
) -> Result<std::collections::BTreeMap<String, Resolution>, StorageError> {
    tx.query(
        "SELECT exception_key, resolved_ms, resolved_by, note FROM exception_resolution",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok((
            r.text(0)?,
            Resolution {
                at_ms: r.i64(1)?,
                by: r.text(2)?,
                note: r.text(3)?,
            },
        ))
    })
    .collect()
}
