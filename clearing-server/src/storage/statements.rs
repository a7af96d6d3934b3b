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
use serde::Serialize;

use super::cards::{self, CardError};
use super::sql::{Param, Tx};
use crate::core::clearing::{
    self, DenyPeriod, ItemTotals, MemberStatement, MerchantStatement, OverRedeemed,
    RedeemedWhileDenied,
};
use crate::core::problem::Problem;
use crate::params;
use crate::vault::Vault;

/// A `[from, until)` window in unix ms.
pub type Window = (i64, i64);

/// Decodes the `(terminal_id, seq, record)` rows of `sql` run with `params`.
fn decoded(
    tx: &mut dyn Tx,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<JournalRecord>, CardError> {
    tx.query(sql, params)?.iter().map(decode).collect()
}

/// The record of a `(terminal_id, seq, record, …)` row.
fn decode(r: &super::Row) -> Result<JournalRecord, CardError> {
    let (t, seq, bytes) = (r.text(0)?, r.i64(1)?, r.blob(2)?);
    JournalRecord::decode(bytes).map_err(|e| {
        CardError::Stored(format!(
            "journal of {t} seq {seq}: stored record does not decode: {e}"
        ))
    })
}

/// The card's stored records (any terminal), in (terminal, seq) order.
fn card_records(tx: &mut dyn Tx, card_id: i64) -> Result<Vec<JournalRecord>, CardError> {
    decoded(
        tx,
        "SELECT terminal_id, seq, record FROM journal WHERE card_id = $1 ORDER BY terminal_id, seq",
        params![card_id],
    )
}

fn item_totals(tx: &mut dyn Tx, card_id: i64) -> Result<ItemTotals, CardError> {
    let mut out = BTreeMap::new();
    for r in tx.query(
        "SELECT package_id, service_code, uses_total FROM package_item WHERE card_id = $1",
        params![card_id],
    )? {
        out.insert(
            (r.text(0)?, r.text(1)?),
            u32::try_from(r.i64(2)?).unwrap_or(0),
        );
    }
    Ok(out)
}

/// The periods in which the platform held the card as lost, frozen or cancelled.
fn deny_periods(tx: &mut dyn Tx, card_id: i64) -> Result<Vec<DenyPeriod>, CardError> {
    let changes = tx.query(
        "SELECT status, at_ms FROM card_status_change WHERE card_id = $1 ORDER BY at_ms, id",
        params![card_id],
    )?;
    let mut periods: Vec<DenyPeriod> = Vec::new();
    for r in changes {
        let (status, at_ms) = (r.i64(0)?, r.i64(1)?);
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

/// A stored record with its verdict (`None` payable, else the code that holds it).
pub type Verdicted = (JournalRecord, Option<String>);

/// A merchant's stored records with their verdicts, and the merchant (`404` when there is none).
pub fn merchant_records(
    tx: &mut dyn Tx,
    merchant_id: &str,
) -> Result<(cards::Merchant, Vec<Verdicted>), CardError> {
    let merchant = cards::merchant(tx, merchant_id)?.ok_or_else(|| {
        CardError::Refused(Problem::not_found(format!(
            "merchant {merchant_id} does not exist"
        )))
    })?;
    let mut records = Vec::new();
    for r in tx.query(
        "SELECT j.terminal_id, j.seq, j.record, j.held FROM journal j JOIN terminal t ON t.id = j.terminal_id
         WHERE t.merchant_id = $1 ORDER BY j.terminal_id, j.seq",
        params![merchant_id],
    )? {
        records.push((decode(&r)?, r.opt_text(3)?));
    }
    Ok((merchant, records))
}

/// The judged view of [`merchant_records`].
pub fn judged(records: &[Verdicted]) -> Vec<clearing::Judged<'_>> {
    records
        .iter()
        .map(|(record, held)| clearing::Judged {
            record,
            held: held.as_deref(),
        })
        .collect()
}

pub fn merchant_statement(
    tx: &mut dyn Tx,
    merchant_id: &str,
    window: Window,
) -> Result<(MerchantStatement, String), CardError> {
    let (merchant, records) = merchant_records(tx, merchant_id)?;
    Ok((
        clearing::merchant_statement(
            merchant_id,
            window,
            merchant.commission_bps,
            judged(&records),
        ),
        merchant.name,
    ))
}

pub fn member_statement(
    tx: &mut dyn Tx,
    vault: &Vault,
    number: &CardNumber,
    window: Window,
) -> Result<MemberStatement, CardError> {
    let card = cards::card_by_number(tx, vault, number)?;
    let records = card_records(tx, card.id)?;
    Ok(clearing::member_statement(
        card.id,
        window,
        &item_totals(tx, card.id)?,
        &records,
    ))
}

/// A record refused at upload (it broke the chain, failed its MAC, named another merchant, …) or stored
/// and held (an amount that is not the signed price, an unknown card or item, an unmatched void).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Noted {
    pub terminal_id: String,
    pub seq: Option<u64>,
    pub code: String,
    pub detail: String,
    pub at_ms: i64,
    /// When a later upload stored a correct record at this seq (a refusal it made right).
    pub resolved_at_ms: Option<i64>,
}

/// Everything that needs a person before money moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exceptions {
    pub refused_or_unmapped: Vec<Noted>,
    pub redeemed_while_denied: Vec<RedeemedWhileDenied>,
    pub over_redeemed: Vec<OverRedeemed>,
    /// The masked number of every card named above, by platform card id.
    pub cards: BTreeMap<i64, String>,
}

impl Exceptions {
    /// What one merchant may see of them: refusals of its terminals, and the card exceptions that
    /// involve its records — with only its own records and terminals (another merchant's are left out;
    /// a card's totals stay, they are the member's, not the other merchant's).
    pub fn for_merchant(&self, merchant_id: &str, terminals: &[String]) -> Exceptions {
        let own = |t: &str| terminals.iter().any(|o| o == t);
        let mut e = Exceptions {
            refused_or_unmapped: self
                .refused_or_unmapped
                .iter()
                .filter(|n| own(&n.terminal_id))
                .cloned()
                .collect(),
            redeemed_while_denied: self
                .redeemed_while_denied
                .iter()
                .filter(|d| d.record.merchant_id == merchant_id && own(&d.record.terminal_id))
                .cloned()
                .collect(),
            over_redeemed: self
                .over_redeemed
                .iter()
                .filter_map(|o| {
                    let records: Vec<_> = o
                        .records
                        .iter()
                        .filter(|r| r.merchant_id == merchant_id && own(&r.terminal_id))
                        .cloned()
                        .collect();
                    (!records.is_empty()).then(|| {
                        let mut mine: Vec<String> =
                            records.iter().map(|r| r.terminal_id.clone()).collect();
                        mine.dedup();
                        OverRedeemed {
                            terminals: mine,
                            records,
                            ..o.clone()
                        }
                    })
                })
                .collect(),
            cards: BTreeMap::new(),
        };
        for id in e
            .redeemed_while_denied
            .iter()
            .map(|d| d.card_id)
            .chain(e.over_redeemed.iter().map(|o| o.card_id))
        {
            if let Some(m) = self.cards.get(&id) {
                e.cards.insert(id, m.clone());
            }
        }
        e
    }
}

pub fn exceptions(tx: &mut dyn Tx) -> Result<Exceptions, CardError> {
    let mut refused_or_unmapped = Vec::new();
    for r in tx.query(
        "SELECT terminal_id, seq, code, detail, at_ms, resolved_ms FROM exception
         ORDER BY terminal_id, seq, id",
        &[],
    )? {
        refused_or_unmapped.push(Noted {
            terminal_id: r.text(0)?,
            seq: r.opt_i64(1)?.map(|s| u64::try_from(s).unwrap_or(0)),
            code: r.text(2)?,
            detail: r.text(3)?,
            at_ms: r.i64(4)?,
            resolved_at_ms: r.opt_i64(5)?,
        });
    }
    let cards_used = tx.query(
        "SELECT DISTINCT card_id FROM journal WHERE card_id IS NOT NULL ORDER BY card_id",
        &[],
    )?;
    let (mut denied, mut over) = (Vec::new(), Vec::new());
    let mut cards = BTreeMap::new();
    for r in cards_used {
        let card_id = r.i64(0)?;
        let before = (denied.len(), over.len());
        let records = card_records(tx, card_id)?;
        denied.extend(clearing::redeemed_while_denied(
            card_id,
            &deny_periods(tx, card_id)?,
            &records,
        ));
        over.extend(clearing::over_redeemed(
            card_id,
            &item_totals(tx, card_id)?,
            &records,
        ));
        if (denied.len(), over.len()) != before {
            cards.insert(card_id, masked_card(tx, card_id)?);
        }
    }
    Ok(Exceptions {
        refused_or_unmapped,
        redeemed_while_denied: denied,
        over_redeemed: over,
        cards,
    })
}

/// The masked number of a platform card, for reports (never the full number).
pub fn masked_card(tx: &mut dyn Tx, card_id: i64) -> Result<String, CardError> {
    Ok(cards::card_by_id(tx, card_id)?.masked())
}
