//! Clearing reports from the database: the merchant statement, the member usage statement and the
//! exceptions list (`clearing-server admin statement …`, `admin exceptions`).
//!
//! The rules are pure code in [`crate::core::clearing`]; this module gathers their inputs — stored journal records
//! (decoded from the exact bytes the terminals MACed; only verified records are ever stored), the card each
//! record was mapped to at upload (`journal.card_id`), package totals, card status history
//! (`card_status_change`) and the records refused at upload (`exception`) — and renders them for a person.

use std::collections::BTreeMap;

use redeemd_contract::JournalRecord;
use redeemd_contract::model::{CardNumber, CardStatus};
use rusqlite::Connection;
use serde::Serialize;

use crate::core::clearing::{
    self, DenyPeriod, ItemTotals, MemberStatement, MerchantStatement, OverRedeemed,
    RedeemedWhileDenied, UnmatchedVoid,
};
use crate::storage::cards::{self, CardError};

/// A `[from, until)` window in unix ms.
pub type Window = (i64, i64);

/// Decodes the `(terminal_id, seq, record)` rows of `stmt` run with `params`.
fn decoded(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<JournalRecord>, CardError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (t, seq, bytes): (String, i64, Vec<u8>) = (r.get(0)?, r.get(1)?, r.get(2)?);
        out.push(JournalRecord::decode(&bytes).map_err(|e| {
            CardError::Invalid(format!(
                "journal of {t} seq {seq}: stored record does not decode: {e}"
            ))
        })?);
    }
    Ok(out)
}

/// Every stored record of the terminals enrolled for `merchant_id`, in (terminal, seq) order.
fn merchant_records(conn: &Connection, merchant_id: &str) -> Result<Vec<JournalRecord>, CardError> {
    decoded(
        &mut conn.prepare(
            "SELECT j.terminal_id, j.seq, j.record FROM journal j JOIN terminal t ON t.id = j.terminal_id
             WHERE t.merchant_id = ?1 ORDER BY j.terminal_id, j.seq",
        )?,
        [merchant_id],
    )
}

/// The card's stored records (any terminal), in (terminal, seq) order.
fn card_records(conn: &Connection, card_id: i64) -> Result<Vec<JournalRecord>, CardError> {
    let mut stmt = conn.prepare_cached(
        "SELECT terminal_id, seq, record FROM journal WHERE card_id = ?1 ORDER BY terminal_id, seq",
    )?;
    decoded(&mut stmt, [card_id])
}

fn item_totals(conn: &Connection, card_id: i64) -> Result<ItemTotals, CardError> {
    let mut stmt = conn.prepare_cached(
        "SELECT package_id, service_code, uses_total FROM package_item WHERE card_id = ?1",
    )?;
    let rows = stmt.query_map([card_id], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            r.get::<_, u32>(2)?,
        ))
    })?;
    Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
}

/// The periods in which the platform held the card as lost, frozen or cancelled.
fn deny_periods(conn: &Connection, card_id: i64) -> Result<Vec<DenyPeriod>, CardError> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, at_ms FROM card_status_change WHERE card_id = ?1 ORDER BY at_ms, id",
    )?;
    let changes = stmt
        .query_map([card_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut periods: Vec<DenyPeriod> = Vec::new();
    for (status, at_ms) in changes {
        if let Some(open) = periods.last_mut().filter(|p| p.until_ms.is_none()) {
            open.until_ms = Some(at_ms);
        }
        let status = match status {
            2 => CardStatus::Lost,
            3 => CardStatus::Frozen,
            4 => CardStatus::Cancelled,
            _ => continue,
        };
        periods.push(DenyPeriod {
            status: cards::status_name(status).to_owned(),
            from_ms: at_ms,
            until_ms: None,
        });
    }
    Ok(periods)
}

pub fn merchant_statement(
    conn: &Connection,
    merchant_id: &str,
    window: Window,
) -> Result<(MerchantStatement, String), CardError> {
    let merchant = cards::merchant(conn, merchant_id)?
        .ok_or_else(|| CardError::Invalid(format!("merchant {merchant_id} does not exist")))?;
    let records = merchant_records(conn, merchant_id)?;
    Ok((
        clearing::merchant_statement(merchant_id, window, merchant.commission_bps, &records),
        merchant.name,
    ))
}

pub fn member_statement(
    conn: &Connection,
    number: &CardNumber,
    window: Window,
) -> Result<MemberStatement, CardError> {
    let card = cards::card_by_number(conn, number)?;
    let records = card_records(conn, card.id)?;
    Ok(clearing::member_statement(
        card.id,
        window,
        &item_totals(conn, card.id)?,
        &records,
    ))
}

/// A record refused at upload (it broke the chain, failed its MAC, …) or stored but not mappable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Noted {
    pub terminal_id: String,
    pub seq: Option<u64>,
    pub code: String,
    pub detail: String,
    pub at_ms: i64,
}

/// Everything that needs a person before money moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exceptions {
    pub refused_or_unmapped: Vec<Noted>,
    pub redeemed_while_denied: Vec<RedeemedWhileDenied>,
    pub over_redeemed: Vec<OverRedeemed>,
    /// Voids that do not reverse exactly one earlier redemption of their terminal, line for line.
    pub unmatched_voids: Vec<UnmatchedVoid>,
}

pub fn exceptions(conn: &Connection) -> Result<Exceptions, CardError> {
    let mut stmt = conn.prepare(
        "SELECT terminal_id, seq, code, detail, at_ms FROM exception ORDER BY terminal_id, seq, id",
    )?;
    let refused_or_unmapped = stmt
        .query_map([], |r| {
            Ok(Noted {
                terminal_id: r.get(0)?,
                seq: r.get::<_, Option<i64>>(1)?.map(|s| s.max(0) as u64),
                code: r.get(2)?,
                detail: r.get(3)?,
                at_ms: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let cards_used: Vec<i64> = conn
        .prepare("SELECT DISTINCT card_id FROM journal WHERE card_id IS NOT NULL ORDER BY card_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (mut denied, mut over) = (Vec::new(), Vec::new());
    for card_id in cards_used {
        let records = card_records(conn, card_id)?;
        denied.extend(clearing::redeemed_while_denied(
            card_id,
            &deny_periods(conn, card_id)?,
            &records,
        ));
        over.extend(clearing::over_redeemed(
            card_id,
            &item_totals(conn, card_id)?,
            &records,
        ));
    }
    let terminals: Vec<String> = conn
        .prepare("SELECT DISTINCT terminal_id FROM journal ORDER BY terminal_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut journal = conn.prepare(
        "SELECT terminal_id, seq, record FROM journal WHERE terminal_id = ?1 ORDER BY seq",
    )?;
    let mut unmatched_voids = Vec::new();
    for t in terminals {
        let records = decoded(&mut journal, [&t])?;
        unmatched_voids.extend(clearing::unmatched_voids(&records));
    }
    Ok(Exceptions {
        refused_or_unmapped,
        redeemed_while_denied: denied,
        over_redeemed: over,
        unmatched_voids,
    })
}

/// The masked number of a platform card, for reports (never the full number).
pub fn masked_card(conn: &Connection, card_id: i64) -> Result<String, CardError> {
    Ok(cards::card_by_id(conn, card_id)?.masked())
}
