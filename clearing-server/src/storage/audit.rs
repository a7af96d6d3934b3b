//! The audit log: every change made through the platform's operations (`crate::service`) — who, what,
//! on what, when — written in the transaction of the change itself, so a change and its entry commit or
//! roll back together. Entries never hold a secret, a pairing code or a card number (masked numbers
//! and platform card ids only). The operator reads it (`admin audit`, `GET /v1/audit`).

use serde::Serialize;

use super::sql::{StorageError, Tx};
use crate::params;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    /// Role, subject and means: `operator alice (key k_3f9a…)`.
    pub actor: String,
    /// What was done: `card.report_lost`, `credential.create`, `terminal.disable`, …
    pub action: String,
    /// What it was done to: `card #12`, `terminal T-0001`, `credential k_3f9a…`.
    pub target: String,
    pub detail: String,
}

pub fn record(
    tx: &mut dyn Tx,
    at_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO audit (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        params![at_ms, actor, action, target, detail],
    )?;
    Ok(())
}

/// The latest `limit` entries with an id below `before` (all when `None`), newest first.
pub fn entries(
    tx: &mut dyn Tx,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<AuditEntry>, StorageError> {
    tx.query(
        "SELECT id, at_ms, actor, action, target, detail FROM audit WHERE id < $1
         ORDER BY id DESC LIMIT $2",
        params![before.unwrap_or(i64::MAX), limit],
    )?
    .iter()
    .map(|r| {
        Ok(AuditEntry {
            id: r.i64(0)?,
            at_ms: r.i64(1)?,
            actor: r.text(2)?,
            action: r.text(3)?,
            target: r.text(4)?,
            detail: r.text(5)?,
        })
    })
    .collect()
}
