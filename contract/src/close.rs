//! End-of-day close (批结算): the terminal's day totals per item against the records the server holds
//! (`docs/api/README.md`, "`POST batch-close`"). Both sides compute the totals with [`totals`], so a
//! close can only mismatch when the records themselves differ.
//!
//! The business day is `[date 00:00, +24 h)` in the terminal's UTC offset, on each record's `wall_ms` —
//! the same window as `redeemd report --date … --utc-offset-minutes …`.

use std::collections::BTreeMap;

use crate::{JournalRecord, RecordKind};
use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemTotal {
    pub package_id: String,
    pub service_code: String,
    pub redeemed: u64,
    pub voided: u64,
    pub net_units: i64,
    pub net_amount_fen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchClose {
    pub business_date: String,
    pub utc_offset_minutes: i32,
    pub first_seq: u64,
    pub through_seq: u64,
    pub items: Vec<ItemTotal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub package_id: String,
    pub service_code: String,
    pub terminal: Option<ItemTotal>,
    pub server: Option<ItemTotal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCloseResult {
    pub result: String,
    pub business_date: String,
    pub differences: Vec<Difference>,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date, or `None` if it is not a valid date.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The proleptic Gregorian (year, month, day) of a day number (days since 1970-01-01; Howard Hinnant's
/// `civil_from_days`, the inverse of [`parse_date`]).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The `YYYY-MM-DD` of a day number.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The business day (days since 1970-01-01) that a wall-clock time falls in, at a UTC offset. Saturates
/// at the ends of i64 (a time read from a damaged row or a wild clock must not overflow).
pub fn business_day(wall_ms: i64, utc_offset_minutes: i32) -> i64 {
    wall_ms
        .saturating_add(i64::from(utc_offset_minutes) * 60_000)
        .div_euclid(DAY_MS)
}

/// The `[start, end)` wall-clock window of a business day, unix ms.
pub fn day_window(days: i64, utc_offset_minutes: i32) -> (i64, i64) {
    let start = days * DAY_MS - i64::from(utc_offset_minutes) * 60_000;
    (start, start + DAY_MS)
}

/// A record's amount as day totals add it: journal amounts fit i64 (the engine declines others), and
/// one that does not is held at `i64::MAX` like the sums it goes into.
pub fn amount_fen(r: &JournalRecord) -> i64 {
    i64::try_from(r.amount_fen).unwrap_or(i64::MAX)
}

/// Totals per (package, item) of the records inside `window`.
pub fn totals<'a>(
    records: impl IntoIterator<Item = &'a JournalRecord>,
    window: (i64, i64),
) -> BTreeMap<(String, String), ItemTotal> {
    let mut out: BTreeMap<(String, String), ItemTotal> = BTreeMap::new();
    for r in records
        .into_iter()
        .filter(|r| r.wall_ms >= window.0 && r.wall_ms < window.1)
    {
        let redeemed = match r.kind {
            RecordKind::Redeem => true,
            RecordKind::Void => false,
            RecordKind::BatchClose => continue,
        };
        let t = out
            .entry((r.package_id.clone(), r.service_code.clone()))
            .or_insert_with(|| ItemTotal {
                package_id: r.package_id.clone(),
                service_code: r.service_code.clone(),
                redeemed: 0,
                voided: 0,
                net_units: 0,
                net_amount_fen: 0,
            });
        // Saturating: a signed price can be absurd (the engine only keeps each line within i64),
        // and both sides of a close add with this one function, so they saturate alike.
        let (quantity, amount) = (u64::from(r.quantity), amount_fen(r));
        if redeemed {
            t.redeemed = t.redeemed.saturating_add(quantity);
            t.net_units = t.net_units.saturating_add(i64::from(r.quantity));
            t.net_amount_fen = t.net_amount_fen.saturating_add(amount);
        } else {
            t.voided = t.voided.saturating_add(quantity);
            t.net_units = t.net_units.saturating_sub(i64::from(r.quantity));
            t.net_amount_fen = t.net_amount_fen.saturating_sub(amount);
        }
    }
    out
}

/// Compares the terminal's totals with the server's.
pub fn reconcile(
    close: &BatchClose,
    server: &BTreeMap<(String, String), ItemTotal>,
) -> BatchCloseResult {
    let mut terminal: BTreeMap<(String, String), &ItemTotal> = BTreeMap::new();
    for t in &close.items {
        terminal.insert((t.package_id.clone(), t.service_code.clone()), t);
    }
    let mut keys: Vec<&(String, String)> = terminal.keys().chain(server.keys()).collect();
    keys.sort();
    keys.dedup();
    let differences: Vec<Difference> = keys
        .into_iter()
        .filter_map(|k| {
            let (t, s) = (terminal.get(k).copied(), server.get(k));
            (t != s).then(|| Difference {
                package_id: k.0.clone(),
                service_code: k.1.clone(),
                terminal: t.cloned(),
                server: s.cloned(),
            })
        })
        .collect();
    BatchCloseResult {
        result: if differences.is_empty() && terminal.len() == close.items.len() {
            "matched"
        } else {
            "mismatched"
        }
        .into(),
        business_date: close.business_date.clone(),
        differences,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn business_days_of_extreme_times_saturate() {
        assert_eq!(business_day(i64::MAX, 840), i64::MAX.div_euclid(DAY_MS));
        assert_eq!(business_day(i64::MIN, -840), i64::MIN.div_euclid(DAY_MS));
        assert_eq!(business_day(0, 480), 0);
        assert_eq!(business_day(-1, 0), -1);
    }

    #[test]
    fn absurd_amounts_saturate_instead_of_overflowing() {
        let mut big = crate::journal::tests::record(1, [0; 32]);
        big.amount_fen = i64::MAX as u64;
        let mut void = big.clone();
        void.kind = RecordKind::Void;
        let window = (big.wall_ms, big.wall_ms + 1);
        let redeemed_twice = totals([&big, &big], window);
        let t = redeemed_twice.values().next().unwrap();
        assert_eq!(
            (t.redeemed, t.net_units, t.net_amount_fen),
            (4, 4, i64::MAX)
        );
        let voided_thrice = totals([&void, &void, &void], window);
        let t = voided_thrice.values().next().unwrap();
        assert_eq!(
            (t.voided, t.net_units, t.net_amount_fen),
            (6, -6, -i64::MAX - 1)
        );
    }

    #[test]
    fn dates_parse_like_the_calendar() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "26-11-27x",
            "2026-11-3a",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(
            day_window(1, 480),
            (86_400_000 - 28_800_000, 2 * 86_400_000 - 28_800_000)
        );
    }

    #[test]
    fn formatting_a_day_inverts_parsing_and_business_days_follow_the_offset() {
        for days in [-719_468, -1, 0, 11_017, 19_782, 20_419, 2_932_896] {
            assert_eq!(parse_date(&format_date(days)), Some(days), "{days}");
        }
        assert_eq!(format_date(20_419), "2025-11-27");
        // 2026-11-27 16:30 UTC is already 2026-11-28 in Beijing (UTC+8), still the 27th in UTC.
        let t = (20_784 * 24 + 16) * 3_600_000 + 30 * 60_000;
        assert_eq!(format_date(business_day(t, 0)), "2026-11-27");
        assert_eq!(format_date(business_day(t, 480)), "2026-11-28");
        assert_eq!(format_date(business_day(t, -600)), "2026-11-27");
        let (start, end) = day_window(business_day(t, 480), 480);
        assert!(start <= t && t < end);
    }
}
