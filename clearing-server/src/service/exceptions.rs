//! Exceptions as work for a person: every exception of the clearing report (`crate::storage::statements`)
//! as one item with a stable key, open until resolved. An operator resolves an item with a note saying
//! what was decided (a call to the shop, a refund arranged, a record written off); the resolution is kept
//! with who made it and when, and audited. Resolving records the decision: it does not change what is
//! paid — a held record stays out of the payable figures. A refusal that a later upload made right (the
//! terminal's correct record for that seq arrived) is resolved by that upload. A merchant sees the items
//! about its own records, and resolves none.
//!
//! Keys: `{code}:{terminal}:{seq}` for a record refused or held at upload (every refusal of one seq is
//! one item), `{code}:{terminal}:{seq}` for a redemption made while the card was denied, and
//! `over_redeemed:card-{id}:{package}:{item}:{net used}` for an over-redemption — a later use of the same
//! item makes a new item, since the decision was about the uses known then.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Service;
use crate::core::access::Want;
use crate::core::clearing::RecordRef;
use crate::core::problem::Problem;
use crate::storage::console::{self, Resolution};
use crate::storage::statements::Exceptions;

/// How an item was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub at_ms: i64,
    /// Who resolved it, and the note; `None`: a later upload stored a correct record at its seq.
    pub by: Option<String>,
    pub note: Option<String>,
}

/// One exception, for a person to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionItem {
    pub key: String,
    /// The exception's code: a refusal (`chain_broken`, `record_mac_invalid`, …), a held record
    /// (`amount_mismatch`, `unknown_card`, …), `redeemed_while_lost|frozen|cancelled`, `over_redeemed`.
    pub code: String,
    pub terminal_id: Option<String>,
    pub seq: Option<u64>,
    /// The card, masked.
    pub card: Option<String>,
    /// When the platform first noted it (refusals and held records).
    pub at_ms: Option<i64>,
    pub detail: String,
    /// How many times it was noted (a refused seq is refused again at every pass until made right).
    pub occurrences: u64,
    pub records: Vec<RecordRef>,
    pub resolved: Option<Resolved>,
}

/// Every exception, open first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionBoard {
    pub open: Vec<ExceptionItem>,
    pub resolved: Vec<ExceptionItem>,
}

/// The board of `e` with the resolutions recorded so far. Pure.
pub fn board(e: &Exceptions, resolutions: &BTreeMap<String, Resolution>) -> ExceptionBoard {
    let mut items: BTreeMap<String, ExceptionItem> = BTreeMap::new();
    for n in &e.refused_or_unmapped {
        let key = format!(
            "{}:{}:{}",
            n.code,
            n.terminal_id,
            n.seq
                .map_or_else(|| format!("at-{}", n.at_ms), |s| s.to_string())
        );
        let item = items.entry(key.clone()).or_insert_with(|| ExceptionItem {
            key,
            code: n.code.clone(),
            terminal_id: Some(n.terminal_id.clone()),
            seq: n.seq,
            card: None,
            at_ms: Some(n.at_ms),
            detail: n.detail.clone(),
            occurrences: 0,
            records: Vec::new(),
            resolved: None,
        });
        item.occurrences += 1;
        item.detail.clone_from(&n.detail);
        if let Some(at) = n.resolved_at_ms {
            item.resolved = Some(Resolved {
                at_ms: at,
                by: None,
                note: None,
            });
        }
    }
    for d in &e.redeemed_while_denied {
        let code = format!("redeemed_while_{}", d.period.status);
        let key = format!("{code}:{}:{}", d.record.terminal_id, d.record.seq);
        items.insert(
            key.clone(),
            ExceptionItem {
                key,
                code,
                terminal_id: Some(d.record.terminal_id.clone()),
                seq: Some(d.record.seq),
                card: e.cards.get(&d.card_id).cloned(),
                at_ms: None,
                detail: format!(
                    "a redemption at {} while the platform held the card as {}",
                    crate::core::cards::rfc3339(d.record.wall_ms),
                    d.period.status
                ),
                occurrences: 1,
                records: vec![d.record.clone()],
                resolved: None,
            },
        );
    }
    for o in &e.over_redeemed {
        let key = format!(
            "over_redeemed:card-{}:{}:{}:{}",
            o.card_id, o.package_id, o.service_code, o.net_used
        );
        items.insert(
            key.clone(),
            ExceptionItem {
                key,
                code: "over_redeemed".into(),
                terminal_id: None,
                seq: None,
                card: e.cards.get(&o.card_id).cloned(),
                at_ms: None,
                detail: format!(
                    "package {} item {}: {} used of {} (terminals {})",
                    o.package_id,
                    o.service_code,
                    o.net_used,
                    o.uses_total,
                    o.terminals.join(", ")
                ),
                occurrences: 1,
                records: o.records.clone(),
                resolved: None,
            },
        );
    }
    let (mut open, mut resolved) = (Vec::new(), Vec::new());
    for (key, mut item) in items {
        if let Some(r) = resolutions.get(&key) {
            item.resolved = Some(Resolved {
                at_ms: r.at_ms,
                by: Some(r.by.clone()),
                note: Some(r.note.clone()),
            });
        }
        if item.resolved.is_some() {
            resolved.push(item);
        } else {
            open.push(item);
        }
    }
    ExceptionBoard { open, resolved }
}

/// Longest note of a resolution, in characters.
pub const MAX_NOTE_CHARS: usize = 500;

impl Service<'_> {
    /// Every exception as work to resolve (operators).
    pub fn exception_board(&self) -> Result<ExceptionBoard, Problem> {
        let all = self.exceptions()?;
        let resolutions = self.db.read(console::resolutions)?;
        Ok(board(&all, &resolutions))
    }

    /// The exceptions about a merchant's own records.
    pub fn merchant_exception_board(&self, merchant_id: &str) -> Result<ExceptionBoard, Problem> {
        let own = self.merchant_exceptions(merchant_id)?;
        let resolutions = self.db.read(console::resolutions)?;
        Ok(board(&own, &resolutions))
    }

    /// Resolves an open exception with a note saying what was decided (operators).
    pub fn resolve_exception(&self, key: &str, note: &str) -> Result<ExceptionItem, Problem> {
        self.allow(Want::Operate, || "exceptions".into())?;
        let note = note.trim();
        if note.is_empty()
            || note.chars().count() > MAX_NOTE_CHARS
            || note
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\r')
        {
            return Err(Problem::invalid(
                "note",
                format!(
                    "1 to {MAX_NOTE_CHARS} characters, not only spaces, no control characters but line breaks"
                ),
            ));
        }
        let board = self.exception_board()?;
        let Some(mut item) = board.open.into_iter().find(|i| i.key == key) else {
            return Err(if board.resolved.iter().any(|i| i.key == key) {
                Problem::conflict("already_resolved", format!("exception {key} is resolved"))
            } else {
                Problem::not_found(format!("exception {key} not found"))
            });
        };
        let resolution = Resolution {
            at_ms: self.now_ms,
            by: self.who.actor(),
            note: note.to_owned(),
        };
        self.db.write(|tx| {
            if !console::insert_resolution(tx, key, &resolution)? {
                return Err(Problem::conflict(
                    "already_resolved",
                    format!("exception {key} is resolved"),
                ));
            }
            self.audit(tx, "exception.resolve", &format!("exception {key}"), note)
                .map_err(Problem::from)
        })?;
        item.resolved = Some(Resolved {
            at_ms: resolution.at_ms,
            by: Some(resolution.by),
            note: Some(resolution.note),
        });
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::clearing::{DenyPeriod, OverRedeemed, RedeemedWhileDenied};
    use crate::storage::statements::Noted;

    fn record(terminal: &str, seq: u64) -> RecordRef {
        RecordRef {
            terminal_id: terminal.into(),
            seq,
            merchant_id: "M-1".into(),
            kind: "redeem",
            package_id: "P1".into(),
            service_code: "WASH".into(),
            quantity: 1,
            amount_fen: 3500,
            wall_ms: 0,
            auth_code: "A".into(),
        }
    }

    fn noted(code: &str, seq: u64, at_ms: i64, resolved: Option<i64>) -> Noted {
        Noted {
            terminal_id: "T-1".into(),
            seq: Some(seq),
            code: code.into(),
            detail: format!("{code} at {at_ms}"),
            at_ms,
            resolved_at_ms: resolved,
        }
    }

    #[test]
    fn each_exception_is_one_item_open_until_a_person_or_an_upload_resolves_it() {
        let e = Exceptions {
            refused_or_unmapped: vec![
                noted("chain_broken", 7, 10, None),
                noted("chain_broken", 7, 20, None),
                noted("record_mac_invalid", 9, 30, Some(40)),
                noted("amount_mismatch", 11, 50, None),
            ],
            redeemed_while_denied: vec![RedeemedWhileDenied {
                card_id: 3,
                period: DenyPeriod {
                    status: "lost".into(),
                    from_ms: 0,
                    until_ms: None,
                },
                record: record("T-1", 12),
            }],
            over_redeemed: vec![OverRedeemed {
                card_id: 3,
                package_id: "P1".into(),
                service_code: "WASH".into(),
                uses_total: 10,
                net_used: 11,
                terminals: vec!["T-1".into(), "T-2".into()],
                records: vec![record("T-1", 12), record("T-2", 4)],
            }],
            cards: [(3, "622848******0003".to_owned())].into(),
        };
        let decided = Resolution {
            at_ms: 99,
            by: "operator alice (console login alice)".into(),
            note: "the shop refunded the member".into(),
        };
        let b = board(
            &e,
            &[("amount_mismatch:T-1:11".to_owned(), decided.clone())].into(),
        );
        let keys =
            |items: &[ExceptionItem]| items.iter().map(|i| i.key.clone()).collect::<Vec<_>>();
        assert_eq!(
            keys(&b.open),
            [
                "chain_broken:T-1:7",
                "over_redeemed:card-3:P1:WASH:11",
                "redeemed_while_lost:T-1:12"
            ]
        );
        assert_eq!(
            keys(&b.resolved),
            ["amount_mismatch:T-1:11", "record_mac_invalid:T-1:9"]
        );
        let chain = &b.open[0];
        assert_eq!((chain.occurrences, chain.at_ms), (2, Some(10)));
        assert_eq!(chain.detail, "chain_broken at 20");
        assert_eq!(b.open[1].card.as_deref(), Some("622848******0003"));
        assert_eq!(
            b.resolved[0].resolved.as_ref().unwrap().note.as_deref(),
            Some(decided.note.as_str())
        );
        // Resolved by the upload that stored the seq: nobody's note.
        assert_eq!(
            b.resolved[1].resolved,
            Some(Resolved {
                at_ms: 40,
                by: None,
                note: None
            })
        );
    }
}
