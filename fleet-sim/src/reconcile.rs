//! The end of a run, checked from outside the server: every record each simulated terminal made is
//! held by the platform exactly once, and the platform's merchant statements equal what the
//! terminals sent — nothing lost, nothing doubled.
//!
//! * **Journals.** After the drain every terminal's records are acknowledged, and the server's head
//!   (`GET journal/head`, read once more at the end) names the terminal's last seq with the terminal's
//!   own MAC for it. The MAC covers the previous record's MAC, so the server holds exactly this chain.
//! * **Statements.** Each run enrolls its own merchants, so a merchant's statement covers exactly the
//!   run's records of its terminals. Per (package, item): units redeemed, voided and net, and the net
//!   amount, computed from the terminals' records with the contract's own day-total function
//!   ([`redeemd_contract::close::totals`] over all time); and the record count and net total. The
//!   platform judges every record against the price it signed: a simulated terminal's are genuine, so
//!   every one must be payable and none held.

use std::collections::BTreeMap;

use redeemd::sync::plan::ServerHead;
use redeemd_contract::close::{ItemTotal, totals};
use redeemd_contract::{JournalRecord, RecordKind};
use serde::Serialize;

use crate::platform::Statement;
use crate::terminal::Terminal;

/// What a merchant's terminals sent, as a statement should show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Redemption and void records.
    pub records: u64,
    pub lines: BTreeMap<(String, String), ItemTotal>,
    pub net_amount_fen: i128,
}

impl Expected {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a JournalRecord>) -> Expected {
        let records: Vec<&JournalRecord> = records
            .into_iter()
            .filter(|r| r.kind != RecordKind::BatchClose)
            .collect();
        let lines = totals(records.iter().copied(), (i64::MIN, i64::MAX));
        Expected {
            records: records.len() as u64,
            net_amount_fen: lines.values().map(|l| i128::from(l.net_amount_fen)).sum(),
            lines,
        }
    }
}

/// How a statement differs from what was sent (empty: equal).
pub fn compare(expected: &Expected, s: &Statement) -> Vec<String> {
    let mut out = Vec::new();
    let m = &s.merchant_id;
    // A simulated terminal writes only genuine records: every one must be payable.
    if s.held_records > 0 {
        let held: Vec<String> = s
            .held
            .iter()
            .map(|h| format!("{} × {} ({} fen)", h.records, h.code, h.claimed_fen))
            .collect();
        out.push(format!(
            "merchant {m}: {} records held, not payable: {}",
            s.held_records,
            held.join(", ")
        ));
    }
    if s.records != expected.records {
        out.push(format!(
            "merchant {m}: statement counts {} records, the terminals sent {}",
            s.records, expected.records
        ));
    }
    if s.net_amount_fen != expected.net_amount_fen {
        out.push(format!(
            "merchant {m}: net amount {} fen, the terminals sent {}",
            s.net_amount_fen, expected.net_amount_fen
        ));
    }
    let mut seen = 0;
    for l in &s.lines {
        let key = (l.package_id.clone(), l.service_code.clone());
        match expected.lines.get(&key) {
            Some(e) => {
                seen += 1;
                let sent = (
                    e.redeemed,
                    e.voided,
                    e.net_units,
                    i128::from(e.net_amount_fen),
                );
                let stated = (l.redeemed, l.voided, l.net_units, l.net_amount_fen);
                if sent != stated {
                    out.push(format!(
                        "merchant {m}: {}/{}: statement (redeemed, voided, net units, net fen) {stated:?}, sent {sent:?}",
                        l.package_id, l.service_code
                    ));
                }
            }
            None => out.push(format!(
                "merchant {m}: statement line {}/{} that no terminal sent",
                l.package_id, l.service_code
            )),
        }
    }
    if seen != expected.lines.len() {
        out.push(format!(
            "merchant {m}: {} item lines sent, {seen} in the statement",
            expected.lines.len()
        ));
    }
    out
}

/// How a terminal's journal stands against the server's head (empty: the server holds it all).
pub fn check_journal(t: &Terminal, server: &ServerHead) -> Vec<String> {
    let mut out = Vec::new();
    let id = &t.terminal_id;
    if let Some(d) = t.halted {
        out.push(format!("terminal {id}: upload halted: {d}"));
    }
    if t.acked_seq() != t.head_seq() {
        out.push(format!(
            "terminal {id}: records {}..={} never acknowledged",
            t.acked_seq() + 1,
            t.head_seq()
        ));
    }
    if server.acknowledged_seq != t.head_seq() {
        out.push(format!(
            "terminal {id}: server head {} but the terminal wrote {} records",
            server.acknowledged_seq,
            t.head_seq()
        ));
    } else if server.acknowledged_mac != t.mac_at(t.head_seq()) {
        out.push(format!(
            "terminal {id}: the server's record at seq {} is not the terminal's (MAC differs)",
            t.head_seq()
        ));
    }
    out
}

/// The reconciliation's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciliation {
    pub terminals: usize,
    pub terminals_ok: usize,
    pub records: u64,
    pub merchants: usize,
    pub merchants_ok: usize,
    pub net_amount_fen: i128,
    /// Every difference found, each naming its terminal or merchant.
    pub problems: Vec<String>,
}

impl Reconciliation {
    pub fn exact(&self) -> bool {
        self.problems.is_empty()
            && self.terminals_ok == self.terminals
            && self.merchants_ok == self.merchants
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::platform::StatementLine;

    fn rec(kind: RecordKind, service: &str, quantity: u32, amount: u64) -> JournalRecord {
        JournalRecord {
            kind,
            service_code: service.into(),
            quantity,
            amount_fen: amount,
            ..base_record()
        }
    }

    fn base_record() -> JournalRecord {
        JournalRecord {
            terminal_id: "T-1".into(),
            seq: 1,
            kind: RecordKind::Redeem,
            auth_code: "00000100".into(),
            merchant_id: "M-1".into(),
            card_ref: redeemd_contract::CardRef([1; 32]),
            package_id: "P".into(),
            service_code: "WASH".into(),
            item_title: "x".into(),
            quantity: 1,
            amount_fen: 1,
            original_seq: 0,
            group_seq: 1,
            line: 0,
            line_count: 1,
            reader_id: "r".into(),
            reader_txn_id: 1,
            cashier_id: "c".into(),
            wall_ms: 1,
            boot_ms: 1,
            cache_version: 1,
            entry_version: 1,
            prev_mac: [0; 32],
        }
    }

    fn statement(records: u64, lines: Vec<StatementLine>) -> Statement {
        Statement {
            merchant_id: "M-1".into(),
            records,
            net_amount_fen: lines.iter().map(|l| l.net_amount_fen).sum(),
            lines,
            held_records: 0,
            held: Vec::new(),
        }
    }

    fn line(service: &str, redeemed: u64, voided: u64, net_fen: i128) -> StatementLine {
        StatementLine {
            package_id: "P".into(),
            service_code: service.into(),
            redeemed,
            voided,
            net_units: redeemed as i64 - voided as i64,
            net_amount_fen: net_fen,
        }
    }

    #[test]
    fn an_equal_statement_passes_and_every_difference_is_named() {
        let sent = [
            rec(RecordKind::Redeem, "WASH", 2, 7000),
            rec(RecordKind::Void, "WASH", 1, 3500),
            rec(RecordKind::Redeem, "OIL", 1, 12_000),
        ];
        let e = Expected::of(&sent);
        assert_eq!((e.records, e.net_amount_fen), (3, 15_500));
        let good = statement(3, vec![line("OIL", 1, 0, 12_000), line("WASH", 2, 1, 3500)]);
        assert!(compare(&e, &good).is_empty());
        // A record counted twice, a lost line, an amount changed: each is reported.
        let doubled = statement(4, vec![line("OIL", 2, 0, 24_000), line("WASH", 2, 1, 3500)]);
        let d = compare(&e, &doubled);
        assert!(d.iter().any(|p| p.contains("4 records")), "{d:?}");
        assert!(d.iter().any(|p| p.contains("OIL")), "{d:?}");
        let lost = statement(2, vec![line("WASH", 2, 1, 3500)]);
        assert!(
            compare(&e, &lost)
                .iter()
                .any(|p| p.contains("2 item lines sent, 1"))
        );
        let extra = statement(
            3,
            vec![
                line("OIL", 1, 0, 12_000),
                line("WASH", 2, 1, 3500),
                line("TIRE", 1, 0, 1),
            ],
        );
        assert!(
            compare(&e, &extra)
                .iter()
                .any(|p| p.contains("no terminal sent"))
        );
    }
}
