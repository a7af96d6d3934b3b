//! The fleet in the database: the enrolled terminals as listed (never their secrets), each terminal's
//! latest health report (`terminal_health`, replaced by every report), and the records the platform
//! holds per terminal. The alert rules are `crate::core::fleet`.

use std::collections::BTreeMap;

use redeemd_contract::health::HealthReport;
use redeemd_contract::{JournalRecord, RecordKind};

use super::sql::{Row, StorageError, Tx};
use crate::params;

/// An enrolled terminal as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalRow {
    pub id: String,
    pub merchant_id: String,
    pub enabled: bool,
    pub enrolled_ms: i64,
}

const TERMINAL_COLUMNS: &str = "SELECT id, merchant_id, enabled, enrolled_ms FROM terminal";

fn row(r: &Row) -> Result<TerminalRow, StorageError> {
    Ok(TerminalRow {
        id: r.text(0)?,
        merchant_id: r.text(1)?,
        enabled: r.bool(2)?,
        enrolled_ms: r.i64(3)?,
    })
}

/// The terminals of a merchant, or of every merchant, by id.
pub fn terminals(
    tx: &mut dyn Tx,
    merchant: Option<&str>,
) -> Result<Vec<TerminalRow>, StorageError> {
    let rows = match merchant {
        Some(m) => tx.query(
            &format!("{TERMINAL_COLUMNS} WHERE merchant_id = $1 ORDER BY id"),
            params![m],
        )?,
        None => tx.query(&format!("{TERMINAL_COLUMNS} ORDER BY id"), &[])?,
    };
    rows.iter().map(row).collect()
}

pub fn terminal_row(tx: &mut dyn Tx, id: &str) -> Result<Option<TerminalRow>, StorageError> {
    tx.query_opt(&format!("{TERMINAL_COLUMNS} WHERE id = $1"), params![id])?
        .map(|r| row(&r))
        .transpose()
}

/// Keeps `report` as the terminal's latest (a report not newer than the one kept, by the terminal's
/// clock, does not replace it: two passes' reports may arrive out of order through two servers, and a
/// replayed one changes nothing — not even when it was received).
pub fn store_report(
    tx: &mut dyn Tx,
    terminal_id: &str,
    report: &HealthReport,
    received_ms: i64,
) -> Result<(), StorageError> {
    let json = serde_json::to_string(report).map_err(|e| StorageError::Other(e.to_string()))?;
    if let Some((_, kept)) = report_of(tx, terminal_id)?
        && kept.reported_at_ms >= report.reported_at_ms
        && kept.started_at_ms == report.started_at_ms
    {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO terminal_health (terminal_id, received_ms, report) VALUES ($1, $2, $3)
         ON CONFLICT (terminal_id) DO UPDATE SET received_ms = $2, report = $3",
        params![terminal_id, received_ms, &json],
    )?;
    Ok(())
}

/// A terminal's latest report and when it was received.
pub fn report_of(
    tx: &mut dyn Tx,
    terminal_id: &str,
) -> Result<Option<(i64, HealthReport)>, StorageError> {
    tx.query_opt(
        "SELECT received_ms, report FROM terminal_health WHERE terminal_id = $1",
        params![terminal_id],
    )?
    .map(|r| {
        let text = r.text(1)?;
        let report = serde_json::from_str(&text).map_err(|e| {
            StorageError::Other(format!("stored health report of {terminal_id}: {e}"))
        })?;
        Ok((r.i64(0)?, report))
    })
    .transpose()
}

/// Records held per terminal (of one merchant's terminals, or all): how many and what they claim
/// (redemptions less voids, as the terminal wrote them).
pub fn held(
    tx: &mut dyn Tx,
    merchant: Option<&str>,
) -> Result<BTreeMap<String, (u64, i128)>, StorageError> {
    let rows = match merchant {
        Some(m) => tx.query(
            "SELECT j.terminal_id, j.seq, j.record FROM journal j JOIN terminal t ON t.id = j.terminal_id
             WHERE j.held IS NOT NULL AND t.merchant_id = $1",
            params![m],
        )?,
        None => tx.query(
            "SELECT terminal_id, seq, record FROM journal WHERE held IS NOT NULL",
            &[],
        )?,
    };
    let mut out: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for r in rows {
        let (terminal, seq) = (r.text(0)?, r.i64(1)?);
        let record = JournalRecord::decode(r.blob(2)?).map_err(|e| {
            StorageError::Other(format!(
                "journal of {terminal} seq {seq}: stored record does not decode: {e}"
            ))
        })?;
        let amount = i128::from(record.amount_fen);
        let e = out.entry(terminal).or_default();
        e.0 += 1;
        e.1 += if record.kind == RecordKind::Void {
            -amount
        } else {
            amount
        };
    }
    Ok(out)
}
