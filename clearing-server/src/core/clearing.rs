//! Clearing: what the platform owes each merchant and what each member used, computed from the verified
//! journals, and the exceptions that need a person.
//!
//! Pure code over decoded [`JournalRecord`]s (the database layer resolves each record's card reference at
//! its terminal to the platform's card id and passes the facts in). Rules:
//!
//! * **Periods** are `[from, until)` on each record's own `wall_ms` (the shop's clock, recorded as is). A void
//!   is booked in the period in which it was made, even when the redemption it reverses was in an earlier one
//!   (a statement already paid is never rewritten; the next one carries the reversal).
//! * **Merchant statement**: per (package, item) the units redeemed, voided and net, and the net settlement
//!   amount (the records' `amount_fen`, i.e. the price the platform signed into the cache at the time);
//!   commission = net × rate, rounded half away from zero to the fen; payable = net − commission.
//! * **Exceptions** (each with the records involved):
//!   - a record that broke the chain or failed its MAC (recorded when it was refused at upload);
//!   - a redemption made while the platform held the card as lost, frozen or cancelled (by the record's wall
//!     clock against the platform's status history): the shop had not synced the report yet, or ignored it;
//!   - over-redemption across shops: net uses of one item of one card's package, summed over every terminal,
//!     above the package's total (shops that were offline at the same time each decided from their own cache).
//! * **Held records** (`judge`): an amount that is not the signed price, an unknown card or item, a void
//!   that does not reverse exactly one earlier payable redemption line for line ([`void_problem`]). They
//!   are judged at upload and shown apart from the payable figures of a merchant statement.

use std::collections::BTreeMap;

use redeemd_contract::{JournalRecord, RecordKind};
use serde::Serialize;

use crate::core::close::totals;

/// Rounds `amount × bps / 10 000` half away from zero. `i128` throughout: a statement never saturates
/// (every record's amount is below 2⁶⁴ and a platform holds far fewer than 2⁶³ records).
pub fn commission_fen(amount_fen: i128, bps: u32) -> i128 {
    let product = amount_fen.saturating_mul(i128::from(bps));
    let (q, r) = (product / 10_000, product % 10_000);
    if r.abs() * 2 >= 10_000 {
        q + product.signum()
    } else {
        q
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLine {
    pub package_id: String,
    pub service_code: String,
    pub title: String,
    pub redeemed: u64,
    pub voided: u64,
    pub net_units: i64,
    pub net_amount_fen: i128,
}

/// Records held for a person, by the reason (the exception code that holds them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldLine {
    pub code: String,
    pub records: u64,
    /// What the records claimed: redemptions less voids, as the terminal wrote them.
    pub claimed_fen: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MerchantStatement {
    pub merchant_id: String,
    pub from_ms: i64,
    pub until_ms: i64,
    pub commission_bps: u32,
    /// Payable redemption and void records counted in the lines.
    pub records: u64,
    /// Payable lines: records the platform matched against the price it signed.
    pub lines: Vec<StatementLine>,
    pub net_amount_fen: i128,
    /// On the payable net only.
    pub commission_fen: i128,
    pub payable_fen: i128,
    /// Records held (not payable until a person resolves them), by reason; not in the figures above.
    pub held_records: u64,
    pub held: Vec<HeldLine>,
    pub held_claimed_fen: i128,
}

/// A stored record with the platform's verdict from upload: `None` payable, `Some(code)` held.
#[derive(Debug, Clone, Copy)]
pub struct Judged<'a> {
    pub record: &'a JournalRecord,
    pub held: Option<&'a str>,
}

fn signed_amount(r: &JournalRecord) -> i128 {
    match r.kind {
        RecordKind::Void => -i128::from(r.amount_fen),
        _ => i128::from(r.amount_fen),
    }
}

/// The statement of `merchant_id` for `[from_ms, until_ms)` from `records` (any terminals; records of
/// other merchants are ignored): payable lines per (package, item) with commission on their net, and the
/// held records beside them. Sums are `i128` (statements do not use the close's `i64` totals).
pub fn merchant_statement<'a>(
    merchant_id: &str,
    (from_ms, until_ms): (i64, i64),
    commission_bps: u32,
    records: impl IntoIterator<Item = Judged<'a>>,
) -> MerchantStatement {
    let mut lines: BTreeMap<(String, String), StatementLine> = BTreeMap::new();
    let mut held: BTreeMap<String, HeldLine> = BTreeMap::new();
    let mut counted = 0u64;
    for j in records {
        let r = j.record;
        if r.merchant_id != merchant_id
            || r.kind == RecordKind::BatchClose
            || r.wall_ms < from_ms
            || r.wall_ms >= until_ms
        {
            continue;
        }
        if let Some(code) = j.held {
            let h = held.entry(code.to_owned()).or_insert_with(|| HeldLine {
                code: code.to_owned(),
                records: 0,
                claimed_fen: 0,
            });
            h.records += 1;
            h.claimed_fen += signed_amount(r);
            continue;
        }
        counted += 1;
        let l = lines
            .entry((r.package_id.clone(), r.service_code.clone()))
            .or_insert_with(|| StatementLine {
                package_id: r.package_id.clone(),
                service_code: r.service_code.clone(),
                title: r.item_title.clone(),
                redeemed: 0,
                voided: 0,
                net_units: 0,
                net_amount_fen: 0,
            });
        if r.kind == RecordKind::Redeem {
            l.redeemed += u64::from(r.quantity);
            l.net_units += i64::from(r.quantity);
        } else {
            l.voided += u64::from(r.quantity);
            l.net_units -= i64::from(r.quantity);
        }
        l.net_amount_fen += signed_amount(r);
    }
    let lines: Vec<StatementLine> = lines.into_values().collect();
    let held: Vec<HeldLine> = held.into_values().collect();
    let net: i128 = lines.iter().map(|l| l.net_amount_fen).sum();
    let commission = commission_fen(net, commission_bps);
    MerchantStatement {
        merchant_id: merchant_id.to_owned(),
        from_ms,
        until_ms,
        commission_bps,
        records: counted,
        lines,
        net_amount_fen: net,
        commission_fen: commission,
        payable_fen: net - commission,
        held_records: held.iter().map(|h| h.records).sum(),
        held_claimed_fen: held.iter().map(|h| h.claimed_fen).sum(),
        held,
    }
}

/// The statements of `merchant_id` per business day inside `[from_ms, until_ms)`: one for each day
/// that has a record, its window that day clipped to the period (`day_start` gives a day's start).
pub fn daily_statements<'a>(
    merchant_id: &str,
    (from_ms, until_ms): (i64, i64),
    commission_bps: u32,
    records: &[Judged<'a>],
    day_start: impl Fn(i64) -> i64,
) -> Vec<MerchantStatement> {
    let mut days: Vec<i64> = records
        .iter()
        .filter(|j| {
            j.record.merchant_id == merchant_id
                && j.record.kind != RecordKind::BatchClose
                && j.record.wall_ms >= from_ms
                && j.record.wall_ms < until_ms
        })
        .map(|j| day_start(j.record.wall_ms))
        .collect();
    days.sort_unstable();
    days.dedup();
    days.into_iter()
        .map(|day| {
            let window = (
                day.max(from_ms),
                day.saturating_add(86_400_000).min(until_ms),
            );
            merchant_statement(merchant_id, window, commission_bps, records.iter().copied())
        })
        .collect()
}

/// Where a record lives: enough for a person to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordRef {
    pub terminal_id: String,
    pub seq: u64,
    pub merchant_id: String,
    pub kind: &'static str,
    pub package_id: String,
    pub service_code: String,
    pub quantity: u32,
    pub amount_fen: u64,
    pub wall_ms: i64,
    pub auth_code: String,
}

impl From<&JournalRecord> for RecordRef {
    fn from(r: &JournalRecord) -> Self {
        RecordRef {
            terminal_id: r.terminal_id.clone(),
            seq: r.seq,
            merchant_id: r.merchant_id.clone(),
            kind: r.kind.name(),
            package_id: r.package_id.clone(),
            service_code: r.service_code.clone(),
            quantity: r.quantity,
            amount_fen: r.amount_fen,
            wall_ms: r.wall_ms,
            auth_code: r.auth_code.clone(),
        }
    }
}

/// One card's use of one item of a package, over every shop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberItemUse {
    pub package_id: String,
    pub service_code: String,
    pub title: String,
    pub uses_total: Option<u32>,
    pub redeemed: u64,
    pub voided: u64,
    pub net_units: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatement {
    /// The platform's card id (left out of the member app's view, which names the card by handle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_id: Option<i64>,
    pub from_ms: i64,
    pub until_ms: i64,
    pub items: Vec<MemberItemUse>,
    pub records: Vec<RecordRef>,
}

/// Totals of a card's package item: `(package id, service code) → uses total`.
pub type ItemTotals = BTreeMap<(String, String), u32>;

/// The usage statement of one card for `[from_ms, until_ms)`: per item, and every record in time order.
/// `records` are that card's records (any terminal); `uses_total` the card's packages.
pub fn member_statement<'a>(
    card_id: i64,
    (from_ms, until_ms): (i64, i64),
    uses_total: &ItemTotals,
    records: impl IntoIterator<Item = &'a JournalRecord>,
) -> MemberStatement {
    let mut inside: Vec<&JournalRecord> = records
        .into_iter()
        .filter(|r| {
            r.kind != RecordKind::BatchClose && r.wall_ms >= from_ms && r.wall_ms < until_ms
        })
        .collect();
    inside.sort_by(|a, b| {
        (a.wall_ms, &a.terminal_id, a.seq).cmp(&(b.wall_ms, &b.terminal_id, b.seq))
    });
    let mut titles: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for r in &inside {
        titles
            .entry((r.package_id.as_str(), r.service_code.as_str()))
            .or_insert(r.item_title.as_str());
    }
    let items = totals(inside.iter().copied(), (from_ms, until_ms))
        .into_iter()
        .map(|(key, t)| MemberItemUse {
            title: titles
                .get(&(key.0.as_str(), key.1.as_str()))
                .map_or_else(String::new, |s| (*s).to_owned()),
            uses_total: uses_total.get(&key).copied(),
            package_id: t.package_id,
            service_code: t.service_code,
            redeemed: t.redeemed,
            voided: t.voided,
            net_units: t.net_units,
        })
        .collect();
    MemberStatement {
        card_id: Some(card_id),
        from_ms,
        until_ms,
        items,
        records: inside.into_iter().map(RecordRef::from).collect(),
    }
}

/// A period during which the platform held a card as lost, frozen or cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DenyPeriod {
    pub status: String,
    pub from_ms: i64,
    /// `None` while it lasts.
    pub until_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedeemedWhileDenied {
    pub card_id: i64,
    pub period: DenyPeriod,
    pub record: RecordRef,
}

/// Redemptions of `card_id` whose wall clock falls inside one of its deny periods.
pub fn redeemed_while_denied<'a>(
    card_id: i64,
    periods: &[DenyPeriod],
    records: impl IntoIterator<Item = &'a JournalRecord>,
) -> Vec<RedeemedWhileDenied> {
    records
        .into_iter()
        .filter(|r| r.kind == RecordKind::Redeem)
        .filter_map(|r| {
            periods
                .iter()
                .find(|p| r.wall_ms >= p.from_ms && p.until_ms.is_none_or(|u| r.wall_ms < u))
                .map(|p| RedeemedWhileDenied {
                    card_id,
                    period: p.clone(),
                    record: RecordRef::from(r),
                })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverRedeemed {
    pub card_id: i64,
    pub package_id: String,
    pub service_code: String,
    pub uses_total: u32,
    pub net_used: i64,
    /// Terminals that redeemed this item (more than one: shops offline at the same time).
    pub terminals: Vec<String>,
    pub records: Vec<RecordRef>,
}

/// Items of `card_id` whose net uses over every terminal exceed the package's total. Items the card's
/// packages do not hold (`uses_total` has no entry) are over-redeemed by definition (total 0).
pub fn over_redeemed<'a>(
    card_id: i64,
    uses_total: &ItemTotals,
    records: impl IntoIterator<Item = &'a JournalRecord>,
) -> Vec<OverRedeemed> {
    let mut per_item: BTreeMap<(String, String), Vec<&JournalRecord>> = BTreeMap::new();
    for r in records
        .into_iter()
        .filter(|r| matches!(r.kind, RecordKind::Redeem | RecordKind::Void))
    {
        per_item
            .entry((r.package_id.clone(), r.service_code.clone()))
            .or_default()
            .push(r);
    }
    per_item
        .into_iter()
        .filter_map(|(key, recs)| {
            let net: i64 = recs
                .iter()
                .map(|r| match r.kind {
                    RecordKind::Redeem => i64::from(r.quantity),
                    _ => -i64::from(r.quantity),
                })
                .sum();
            let total = uses_total.get(&key).copied().unwrap_or(0);
            (net > i64::from(total)).then(|| {
                let mut terminals: Vec<String> =
                    recs.iter().map(|r| r.terminal_id.clone()).collect();
                terminals.sort();
                terminals.dedup();
                OverRedeemed {
                    card_id,
                    package_id: key.0,
                    service_code: key.1,
                    uses_total: total,
                    net_used: net,
                    terminals,
                    records: recs.into_iter().map(RecordRef::from).collect(),
                }
            })
        })
        .collect()
}

/// Why `v` does not reverse exactly one earlier redemption line of its terminal, if it does not:
/// `original` is the line at its `original_seq` (if the platform holds it), `voided_by` the seq of an
/// earlier void of the same line.
pub fn void_problem(
    v: &JournalRecord,
    original: Option<&JournalRecord>,
    voided_by: Option<u64>,
) -> Option<String> {
    let o = v.original_seq;
    match original {
        _ if o >= v.seq => Some(format!("voids seq {o}, which is not before it")),
        None => Some(format!("voids seq {o}, which the platform does not hold")),
        Some(r) if r.kind != RecordKind::Redeem => {
            Some(format!("voids seq {o}, a {} record", r.kind.name()))
        }
        Some(r)
            if (
                &r.card_ref,
                &r.package_id,
                &r.service_code,
                r.quantity,
                r.amount_fen,
            ) != (
                &v.card_ref,
                &v.package_id,
                &v.service_code,
                v.quantity,
                v.amount_fen,
            ) =>
        {
            Some(format!(
                "voids seq {o} ({} {} ×{}, {} fen) with other content",
                r.package_id, r.service_code, r.quantity, r.amount_fen
            ))
        }
        Some(_) => voided_by.map(|first| format!("voids seq {o}, already voided by seq {first}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redeemd_contract::CardRef;

    fn record(terminal: &str, seq: u64, kind: RecordKind, qty: u32, wall_ms: i64) -> JournalRecord {
        JournalRecord {
            terminal_id: terminal.into(),
            seq,
            kind,
            auth_code: format!("A{seq:05}"),
            merchant_id: "M-1".into(),
            card_ref: CardRef([1; 32]),
            package_id: "P1".into(),
            service_code: "WASH".into(),
            item_title: "精洗".into(),
            quantity: qty,
            amount_fen: u64::from(qty) * 3500,
            original_seq: 0,
            group_seq: seq,
            line: 0,
            line_count: 1,
            reader_id: "counter-1".into(),
            reader_txn_id: seq,
            cashier_id: "c01".into(),
            wall_ms,
            boot_ms: 0,
            cache_version: 1,
            entry_version: 1,
            prev_mac: [0; 32],
        }
    }

    #[test]
    fn commission_rounds_half_away_from_zero() {
        assert_eq!(commission_fen(10_000, 500), 500);
        assert_eq!(commission_fen(3_500, 333), 117); // 116.55
        assert_eq!(commission_fen(10, 5_000), 5);
        assert_eq!(commission_fen(1, 5_000), 1); // 0.5 → 1
        assert_eq!(commission_fen(-1, 5_000), -1);
        assert_eq!(commission_fen(0, 10_000), 0);
        assert_eq!(
            commission_fen(i128::from(u64::MAX), 5_000),
            i128::from(u64::MAX / 2 + 1)
        );
    }

    #[test]
    fn merchant_statement_nets_voids_in_their_own_period_and_ignores_other_merchants() {
        let mut other = record("T-2", 1, RecordKind::Redeem, 5, 150);
        other.merchant_id = "M-2".into();
        let records = [
            record("T-1", 1, RecordKind::Redeem, 2, 50), // before the period
            record("T-1", 2, RecordKind::Redeem, 3, 120),
            record("T-1", 3, RecordKind::Void, 2, 130), // voids seq 1, booked now
            record("T-2", 1, RecordKind::Redeem, 1, 199),
            record("T-2", 2, RecordKind::Redeem, 1, 200), // at `until`: next period
            other,
        ];
        let judged = records.iter().map(|record| Judged { record, held: None });
        let s = merchant_statement("M-1", (100, 200), 500, judged);
        assert_eq!(s.records, 3);
        assert_eq!(s.lines.len(), 1);
        let l = &s.lines[0];
        assert_eq!((l.redeemed, l.voided, l.net_units), (4, 2, 2));
        assert_eq!(l.title, "精洗");
        assert_eq!(s.net_amount_fen, 7_000);
        assert_eq!(s.commission_fen, 350);
        assert_eq!(s.payable_fen, 6_650);
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn amounts_beyond_int64_are_summed_exactly_never_saturated() {
        let mut records = Vec::new();
        for (seq, code) in [(1, "WASH"), (2, "WASH"), (3, "OIL")] {
            let mut r = record("T-1", seq, RecordKind::Redeem, 1, 120);
            r.service_code = code.into();
            r.amount_fen = u64::MAX;
            records.push(r);
        }
        let judged = records.iter().map(|record| Judged { record, held: None });
        let s = merchant_statement("M-1", (100, 200), 500, judged);
        assert_eq!(s.lines.len(), 2);
        let max = i128::from(u64::MAX);
        let wash = s.lines.iter().find(|l| l.service_code == "WASH").unwrap();
        assert_eq!(wash.net_amount_fen, 2 * max);
        assert_eq!(s.net_amount_fen, 3 * max);
        assert_eq!(s.commission_fen, commission_fen(3 * max, 500));
        assert_eq!(s.payable_fen, 3 * max - s.commission_fen);
        // Held records are summed apart, not into the payable figures.
        let judged = records.iter().map(|record| Judged {
            record,
            held: Some("amount_mismatch"),
        });
        let s = merchant_statement("M-1", (100, 200), 500, judged);
        assert_eq!((s.records, s.net_amount_fen, s.payable_fen), (0, 0, 0));
        assert_eq!((s.held_records, s.held_claimed_fen), (3, 3 * max));
        assert_eq!(s.held[0].code, "amount_mismatch");
    }

    #[test]
    fn redemptions_inside_a_deny_period_are_named_and_voids_are_not() {
        let periods = [
            DenyPeriod {
                status: "lost".into(),
                from_ms: 100,
                until_ms: Some(200),
            },
            DenyPeriod {
                status: "frozen".into(),
                from_ms: 500,
                until_ms: None,
            },
        ];
        let records = [
            record("T-1", 1, RecordKind::Redeem, 1, 99),
            record("T-1", 2, RecordKind::Redeem, 1, 100),
            record("T-1", 3, RecordKind::Void, 1, 150),
            record("T-1", 4, RecordKind::Redeem, 1, 200),
            record("T-2", 1, RecordKind::Redeem, 1, 900),
        ];
        let found = redeemed_while_denied(7, &periods, &records);
        let seqs: Vec<(&str, u64, &str)> = found
            .iter()
            .map(|f| {
                (
                    f.record.terminal_id.as_str(),
                    f.record.seq,
                    f.period.status.as_str(),
                )
            })
            .collect();
        assert_eq!(seqs, [("T-1", 2, "lost"), ("T-2", 1, "frozen")]);
    }

    #[test]
    fn over_redemption_across_shops_lists_every_record_and_terminal() {
        let totals: ItemTotals = [(("P1".into(), "WASH".into()), 3)].into();
        let records = [
            record("T-1", 1, RecordKind::Redeem, 2, 10),
            record("T-2", 1, RecordKind::Redeem, 2, 11),
        ];
        let found = over_redeemed(7, &totals, &records);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].net_used, 4);
        assert_eq!(found[0].terminals, ["T-1", "T-2"]);
        assert_eq!(found[0].records.len(), 2);
        // A void brings it back within the total: no exception.
        let mut with_void = records.to_vec();
        with_void.push(record("T-2", 2, RecordKind::Void, 1, 12));
        assert!(over_redeemed(7, &totals, &with_void).is_empty());
        // Exactly the total is fine.
        let exact = [record("T-1", 1, RecordKind::Redeem, 3, 10)];
        assert!(over_redeemed(7, &totals, &exact).is_empty());
    }

    #[test]
    fn a_void_must_reverse_exactly_one_earlier_redemption_line_for_line() {
        let void = |seq, of: u64, qty| {
            let mut v = record("T-1", seq, RecordKind::Void, qty, 10);
            v.original_seq = of;
            v
        };
        let mut cheap = void(8, 2, 1);
        cheap.amount_fen = 0;
        let records = [
            record("T-1", 1, RecordKind::Redeem, 1, 10),
            record("T-1", 2, RecordKind::Redeem, 1, 10),
            record("T-1", 3, RecordKind::Redeem, 2, 10),
            void(4, 1, 1),  // fine
            void(5, 1, 1),  // twice
            void(6, 99, 1), // nothing there
            void(7, 4, 1),  // a void of a void
            cheap,          // restores a use, keeps the money
            void(9, 3, 1),  // part of a line
            void(10, 10, 1),
        ];
        // As the upload judges them, in seq order: a matching void marks its line voided.
        let by_seq: BTreeMap<u64, &JournalRecord> = records.iter().map(|r| (r.seq, r)).collect();
        let mut voided: BTreeMap<u64, u64> = BTreeMap::new();
        let mut found: Vec<(u64, String)> = Vec::new();
        for v in records.iter().filter(|r| r.kind == RecordKind::Void) {
            let o = v.original_seq;
            match void_problem(v, by_seq.get(&o).copied(), voided.get(&o).copied()) {
                Some(p) => found.push((v.seq, p)),
                None => {
                    voided.insert(o, v.seq);
                }
            }
        }
        let seqs: Vec<u64> = found.iter().map(|f| f.0).collect();
        assert_eq!(seqs, [5, 6, 7, 8, 9, 10], "{found:?}");
        assert!(found[0].1.contains("already voided by seq 4"), "{found:?}");
    }

    #[test]
    fn member_statement_orders_records_by_time_and_totals_per_item() {
        let totals: ItemTotals = [(("P1".into(), "WASH".into()), 10)].into();
        let records = [
            record("T-2", 5, RecordKind::Redeem, 1, 30),
            record("T-1", 9, RecordKind::Redeem, 2, 20),
            record("T-1", 10, RecordKind::Void, 2, 40),
        ];
        let s = member_statement(7, (0, 100), &totals, &records);
        let order: Vec<(&str, u64)> = s
            .records
            .iter()
            .map(|r| (r.terminal_id.as_str(), r.seq))
            .collect();
        assert_eq!(order, [("T-1", 9), ("T-2", 5), ("T-1", 10)]);
        assert_eq!(s.items.len(), 1);
        assert_eq!(s.items[0].net_units, 1);
        assert_eq!(s.items[0].uses_total, Some(10));
    }
}
