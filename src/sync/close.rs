//! Planning end-of-day closes (批结算): which business days to close and with what totals. Pure: the
//! pass reads the records after the last close and the acknowledged seq from the store, asks here, and
//! sends what comes back (`docs/api/README.md`, "`POST batch-close`").
//!
//! Rules:
//! * a day is closed only once it has **ended** (in the terminal's UTC offset; today is never closed,
//!   more redemptions may come) and **every record of it is acknowledged** by the platform (a close
//!   through a seq the server does not hold is `409 journal_incomplete`);
//! * days without records are not closed (there is nothing to reconcile);
//! * a day's records are contiguous in the journal (the engine never lets the wall clock go back past
//!   the last trusted time), so a close covers `first_seq..=through_seq` and the next one starts after
//!   it; the totals are [`close::totals`] over the day's window, exactly as the platform computes them,
//!   so a record whose time falls outside its neighbours' day shows up as a mismatch, not silently;
//! * when the records were read up to a limit, the last day read may continue beyond it: it waits for
//!   the next read.

use redeemd_contract::JournalRecord;
use redeemd_contract::close::{self, BatchClose};

/// The closes due, oldest first, given the records after the last close (`records`, in seq order,
/// `complete`: whether they run to the journal's head), the seq the platform acknowledged through, the
/// UTC offset and today's business day.
pub fn closes_due(
    records: &[JournalRecord],
    complete: bool,
    acknowledged_seq: u64,
    utc_offset_minutes: i32,
    today: i64,
) -> Vec<BatchClose> {
    let mut closes = Vec::new();
    let mut rest = records;
    while let Some(first) = rest.first() {
        let day = close::business_day(first.wall_ms, utc_offset_minutes);
        let len = rest
            .iter()
            .position(|r| close::business_day(r.wall_ms, utc_offset_minutes) != day)
            .unwrap_or(rest.len());
        let (group, after) = rest.split_at(len);
        let whole_day = !after.is_empty() || complete;
        let Some(last) = group.last() else { break };
        if day >= today || !whole_day || last.seq > acknowledged_seq {
            break;
        }
        let window = close::day_window(day, utc_offset_minutes);
        closes.push(BatchClose {
            business_date: close::format_date(day),
            utc_offset_minutes,
            first_seq: first.seq,
            through_seq: last.seq,
            items: close::totals(group, window).into_values().collect(),
        });
        rest = after;
    }
    closes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use redeemd_contract::RecordKind;

    use super::*;

    const HOUR: i64 = 3_600_000;
    /// 2026-11-27 00:00 in Beijing (UTC+8).
    const D0: i64 = 20_784;
    const OFFSET: i32 = 480;

    fn at(day: i64, hour: i64) -> i64 {
        close::day_window(day, OFFSET).0 + hour * HOUR
    }

    fn rec(seq: u64, wall_ms: i64, kind: RecordKind, code: &str, quantity: u32) -> JournalRecord {
        JournalRecord {
            kind,
            service_code: code.into(),
            ..crate::sync::test_record(seq, wall_ms, quantity)
        }
    }

    fn journal() -> Vec<JournalRecord> {
        vec![
            rec(1, at(D0, 9), RecordKind::Redeem, "WASH", 2),
            rec(2, at(D0, 23), RecordKind::Redeem, "OIL", 1),
            rec(3, at(D0, 23) + 1, RecordKind::Void, "WASH", 1),
            // 00:30 on the next day in Beijing: 16:30 UTC on the first.
            rec(4, at(D0 + 1, 0) + HOUR / 2, RecordKind::Redeem, "WASH", 1),
            rec(5, at(D0 + 3, 10), RecordKind::Redeem, "WASH", 1),
        ]
    }

    #[test]
    fn each_ended_day_with_records_is_closed_once_with_the_platforms_totals() {
        let closes = closes_due(&journal(), true, 5, OFFSET, D0 + 4);
        let dates: Vec<_> = closes
            .iter()
            .map(|c| (c.business_date.as_str(), c.first_seq, c.through_seq))
            .collect();
        assert_eq!(
            dates,
            [
                ("2026-11-27", 1, 3),
                ("2026-11-28", 4, 4),
                ("2026-11-30", 5, 5)
            ]
        );
        let wash = closes[0]
            .items
            .iter()
            .find(|i| i.service_code == "WASH")
            .unwrap();
        assert_eq!(
            (
                wash.redeemed,
                wash.voided,
                wash.net_units,
                wash.net_amount_fen
            ),
            (2, 1, 1, 1000)
        );
        assert_eq!(closes[0].items.len(), 2);
        assert!(closes.iter().all(|c| c.utc_offset_minutes == OFFSET));
    }

    #[test]
    fn today_unacknowledged_records_and_a_day_cut_by_the_read_limit_wait() {
        // Today is the 30th: its record waits.
        assert_eq!(closes_due(&journal(), true, 5, OFFSET, D0 + 3).len(), 2);
        // Seq 4 not acknowledged yet: the 28th waits, and so does every later day.
        assert_eq!(closes_due(&journal(), true, 3, OFFSET, D0 + 4).len(), 1);
        // The read stopped at seq 2: the 27th may go on beyond it.
        let cut = &journal()[..2];
        assert!(closes_due(cut, false, 5, OFFSET, D0 + 4).is_empty());
        assert_eq!(closes_due(cut, true, 5, OFFSET, D0 + 4).len(), 1);
        assert!(closes_due(&[], true, 5, OFFSET, D0 + 4).is_empty());
    }

    #[test]
    fn the_business_day_follows_the_offset() {
        // In UTC, seq 4 (16:30 UTC on the 27th) belongs to the 27th with the others.
        let closes = closes_due(&journal()[..4], true, 5, 0, D0 + 4);
        assert_eq!(closes.len(), 1);
        assert_eq!(closes[0].business_date, "2026-11-27");
        assert_eq!(closes[0].through_seq, 4);
    }
}
