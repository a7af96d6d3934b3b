//! The platform is the final judge of money: each verified record an upload stores gets a verdict —
//! payable, or held for a person with the reason (an exception code) — from what the platform itself
//! signed and holds, never from what the terminal claims. Pure: the storage layer gathers the facts.
//!
//! A record is held when:
//! * `unknown_card` — its card reference does not open under the terminal's key to a card the platform
//!   issued;
//! * `unknown_entitlement` — the platform signed no price for that card, package and item at the
//!   record's entry version (the version of the cache entry the terminal decided from);
//! * `amount_mismatch` — its amount is not quantity × that signed price;
//! * `void_unmatched` — a void that does not reverse exactly one earlier payable redemption of its
//!   terminal line for line (`clearing::void_problem`), or that reverses a held one (the held
//!   redemption and its void stay together, out of the payable figures).
//!
//! Redemptions made while a card was lost, or over-redemption across offline shops, are not held here:
//! the shop decided in good faith from a cache the platform signed; they are listed for a person by the
//! exceptions report (`clearing`).

use redeemd_contract::{JournalRecord, RecordKind};

use super::clearing::void_problem;

/// What the platform holds about a record, gathered at upload.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The platform card of the record's reference, or why there is none.
    pub card: Result<i64, String>,
    /// The price the platform signed for the record's card, package and item at its entry version;
    /// `None` when it signed none.
    pub signed_price_fen: Option<u64>,
    /// A void's original line as stored, with its verdict (`None` payable, `Some(code)` held).
    pub original: Option<(&'a JournalRecord, Option<&'a str>)>,
    /// The seq of an earlier payable void of the same line.
    pub voided_by: Option<u64>,
}

/// The verdict on one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Payable,
    Held { code: &'static str, detail: String },
}

fn held(code: &'static str, r: &JournalRecord, why: String) -> Verdict {
    Verdict::Held {
        code,
        detail: format!("journal seq {}: {why}", r.seq),
    }
}

pub fn judge(r: &JournalRecord, facts: &Facts<'_>) -> Verdict {
    if r.kind == RecordKind::BatchClose {
        return Verdict::Payable;
    }
    if let Err(why) = &facts.card {
        return held("unknown_card", r, why.clone());
    }
    if r.kind == RecordKind::Void {
        let original = facts.original.map(|(o, _)| o);
        if let Some(why) = void_problem(r, original, facts.voided_by) {
            return held("void_unmatched", r, why);
        }
        if let Some((_, Some(code))) = facts.original {
            return held(
                "void_unmatched",
                r,
                format!("voids seq {}, which is held ({code})", r.original_seq),
            );
        }
        return Verdict::Payable;
    }
    let Some(price) = facts.signed_price_fen else {
        return held(
            "unknown_entitlement",
            r,
            format!(
                "no price signed for {}/{} of this card at entry version {}",
                r.package_id, r.service_code, r.entry_version
            ),
        );
    };
    let expected = u128::from(r.quantity) * u128::from(price);
    if expected != u128::from(r.amount_fen) {
        return held(
            "amount_mismatch",
            r,
            format!(
                "{} × {price} fen signed at entry version {} is {expected} fen; the record claims {} fen",
                r.quantity, r.entry_version, r.amount_fen
            ),
        );
    }
    Verdict::Payable
}

#[cfg(test)]
mod tests {
    use super::*;
    use redeemd_contract::CardRef;

    fn redeem(quantity: u32, amount_fen: u64) -> JournalRecord {
        JournalRecord {
            terminal_id: "T-1".into(),
            seq: 2,
            kind: RecordKind::Redeem,
            auth_code: "A".into(),
            merchant_id: "M-1".into(),
            card_ref: CardRef([1; 32]),
            package_id: "P1".into(),
            service_code: "WASH".into(),
            item_title: "精洗".into(),
            quantity,
            amount_fen,
            original_seq: 0,
            group_seq: 2,
            line: 0,
            line_count: 1,
            reader_id: "r".into(),
            reader_txn_id: 2,
            cashier_id: "c".into(),
            wall_ms: 0,
            boot_ms: 0,
            cache_version: 7,
            entry_version: 7,
            prev_mac: [0; 32],
        }
    }

    fn facts(price: Option<u64>) -> Facts<'static> {
        Facts {
            card: Ok(1),
            signed_price_fen: price,
            original: None,
            voided_by: None,
        }
    }

    #[test]
    fn an_amount_is_recomputed_from_the_signed_price() {
        assert_eq!(
            judge(&redeem(2, 7000), &facts(Some(3500))),
            Verdict::Payable
        );
        // The issue's case: 1 unit at a signed 3,500 fen claiming 1,000,000.
        let Verdict::Held { code, detail } = judge(&redeem(1, 1_000_000), &facts(Some(3500)))
        else {
            panic!("paid");
        };
        assert_eq!(code, "amount_mismatch");
        assert!(
            detail.contains("1 × 3500 fen signed at entry version 7"),
            "{detail}"
        );
        // 2^64 - 1 fen, valid in the record format: held, not summed.
        assert!(matches!(
            judge(&redeem(1, u64::MAX), &facts(Some(3500))),
            Verdict::Held {
                code: "amount_mismatch",
                ..
            }
        ));
        assert!(matches!(
            judge(&redeem(1, 3500), &facts(None)),
            Verdict::Held {
                code: "unknown_entitlement",
                ..
            }
        ));
        let unknown = Facts {
            card: Err("not a card of the platform".into()),
            ..facts(Some(3500))
        };
        assert!(matches!(
            judge(&redeem(1, 3500), &unknown),
            Verdict::Held {
                code: "unknown_card",
                ..
            }
        ));
    }

    #[test]
    fn a_void_follows_its_original() {
        let original = redeem(1, 1_000_000);
        let mut void = original.clone();
        void.kind = RecordKind::Void;
        void.seq = 3;
        void.original_seq = 2;
        let with = |held| Facts {
            original: Some((&original, held)),
            ..facts(Some(3500))
        };
        assert_eq!(judge(&void, &with(None)), Verdict::Payable);
        assert!(matches!(
            judge(&void, &with(Some("amount_mismatch"))),
            Verdict::Held {
                code: "void_unmatched",
                ..
            }
        ));
        let twice = Facts {
            voided_by: Some(3),
            ..with(None)
        };
        assert!(matches!(
            judge(&void, &twice),
            Verdict::Held {
                code: "void_unmatched",
                ..
            }
        ));
    }
}
