//! The statement's chart, as pure geometry: units redeemed per business day, each day's bar stacked
//! by item, on a scale with round ticks. The console draws it as SVG on the server (no script, no
//! chart library in the browser); this module decides every number it draws, so a test can check the
//! drawing against the records.
//!
//! The chart counts the units of **payable** redemption records per day and item (the statement's
//! `redeemed`); voids and held records are in the statement's tables beside it.

use std::collections::BTreeMap;

use super::clearing::MerchantStatement;

/// Most days one chart shows (a daily statement covers at most a year: `MAX_DAILY_DAYS`).
pub const MAX_DAYS: usize = 366;

/// One stacked quantity: an item of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// `P1/WASH`: package and service code.
    pub key: String,
    /// The item's title as the records name it.
    pub title: String,
    /// Units over the whole chart.
    pub total: u64,
    /// A colour from [`PALETTE`], by the series' position.
    pub colour: &'static str,
}

/// Colours of the series, in order (distinct for people with the common colour-vision deficiencies:
/// Okabe–Ito).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

/// Units redeemed per day (`YYYY-MM-DD`, the business day) and per series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub series: Vec<Series>,
    /// Every day of the period, in order, with its units per series (same order as `series`).
    pub days: Vec<(String, Vec<u64>)>,
}

/// The counts of a period's daily statements: every business day from `first_day_ms` (a day's start)
/// for `days` days (at most [`MAX_DAYS`]), a day without records at zero. `day_label` names a day
/// from its start.
pub fn redemptions_per_day(
    daily: &[MerchantStatement],
    first_day_ms: i64,
    days: usize,
    day_label: impl Fn(i64) -> String,
) -> Counts {
    let days = days.min(MAX_DAYS);
    let mut titles: BTreeMap<String, String> = BTreeMap::new();
    let mut per_day: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for s in daily {
        let day = day_label(s.from_ms);
        for l in &s.lines {
            let key = format!("{}/{}", l.package_id, l.service_code);
            titles.entry(key.clone()).or_insert_with(|| l.title.clone());
            *per_day
                .entry(day.clone())
                .or_default()
                .entry(key)
                .or_default() += l.redeemed;
        }
    }
    let keys: Vec<String> = titles.keys().cloned().collect();
    let days: Vec<(String, Vec<u64>)> = (0..days)
        .map(|i| {
            let label = day_label(first_day_ms.saturating_add(i as i64 * 86_400_000));
            let units = keys
                .iter()
                .map(|k| {
                    per_day
                        .get(&label)
                        .and_then(|d| d.get(k))
                        .copied()
                        .unwrap_or(0)
                })
                .collect();
            (label, units)
        })
        .collect();
    let series = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Series {
            key: k.clone(),
            title: titles.get(k).cloned().unwrap_or_default(),
            total: days.iter().map(|(_, u)| u[i]).sum(),
            colour: PALETTE[i % PALETTE.len()],
        })
        .collect();
    Counts { series, days }
}

/// The drawing's size and margins, in SVG user units.
pub const WIDTH: f64 = 760.0;
pub const HEIGHT: f64 = 300.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 34.0;

/// A stacked piece of a bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Index into [`Counts::series`].
    pub series: usize,
    pub units: u64,
    pub y: f64,
    pub height: f64,
}

/// One day's bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub day: String,
    pub total: u64,
    pub x: f64,
    pub width: f64,
    /// Bottom first; series with no units that day have none.
    pub segments: Vec<Segment>,
    /// Where the total is written above the bar (`None`: nothing redeemed that day, or no room).
    pub total_y: Option<f64>,
    /// Whether the day's label is written under it (every n-th day when they would overlap).
    pub labelled: bool,
}

/// A gridline of the scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub units: u64,
    pub y: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub bars: Vec<Bar>,
    pub ticks: Vec<Tick>,
    /// The baseline's y and the plot's left and right edges.
    pub baseline: f64,
    pub left: f64,
    pub right: f64,
}

/// A round step (1, 2 or 5 × 10ⁿ) that covers `max` in at most four steps.
fn step_for(max: u64) -> u64 {
    let mut magnitude: u64 = 1;
    loop {
        for m in [1, 2, 5] {
            let step = m * magnitude;
            if step.saturating_mul(4) >= max {
                return step;
            }
        }
        magnitude = magnitude.saturating_mul(10);
    }
}

/// Lays out `counts`: bars of equal width with a gap, heights in proportion to units on a scale
/// from 0 to a round top.
pub fn layout(counts: &Counts) -> Layout {
    let max = counts
        .days
        .iter()
        .map(|(_, u)| u.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let step = step_for(max.max(1));
    let top = max.max(1).div_ceil(step) * step;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let baseline = HEIGHT - BOTTOM;
    let y_of = |units: u64| baseline - plot_h * units as f64 / top as f64;
    let slot = (WIDTH - LEFT - RIGHT) / counts.days.len().max(1) as f64;
    let width = (slot * 0.7).max(1.0);
    // Labels are ~40 units wide: one every `every` days so that they do not overlap.
    let every = (40.0 / slot).ceil().max(1.0) as usize;
    let bars = counts
        .days
        .iter()
        .enumerate()
        .map(|(i, (day, units))| {
            let mut below = 0u64;
            let segments = units
                .iter()
                .enumerate()
                .filter(|(_, u)| **u > 0)
                .map(|(series, u)| {
                    let s = Segment {
                        series,
                        units: *u,
                        y: y_of(below + u),
                        height: y_of(below) - y_of(below + u),
                    };
                    below += u;
                    s
                })
                .collect();
            Bar {
                day: day.clone(),
                total: below,
                x: LEFT + slot * i as f64 + (slot - width) / 2.0,
                width,
                segments,
                total_y: (below > 0 && slot >= 14.0).then(|| y_of(below) - 4.0),
                labelled: i % every == 0,
            }
        })
        .collect();
    let ticks = (0..=top / step)
        .map(|n| Tick {
            units: n * step,
            y: y_of(n * step),
        })
        .collect();
    Layout {
        bars,
        ticks,
        baseline,
        left: LEFT,
        right: WIDTH - RIGHT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clearing::StatementLine;

    fn day(from_ms: i64, lines: &[(&str, &str, u64)]) -> MerchantStatement {
        MerchantStatement {
            merchant_id: "M-1".into(),
            from_ms,
            until_ms: from_ms + 86_400_000,
            commission_bps: 0,
            records: 0,
            lines: lines
                .iter()
                .map(|(code, title, n)| StatementLine {
                    package_id: "P1".into(),
                    service_code: (*code).into(),
                    title: (*title).into(),
                    redeemed: *n,
                    voided: 0,
                    net_units: *n as i64,
                    net_amount_fen: 0,
                })
                .collect(),
            net_amount_fen: 0,
            commission_fen: 0,
            payable_fen: 0,
            held_records: 0,
            held: Vec::new(),
            held_claimed_fen: 0,
        }
    }

    const D: i64 = 86_400_000;

    fn label(ms: i64) -> String {
        format!("day{}", ms / D)
    }

    #[test]
    fn every_day_of_the_period_is_a_bar_and_every_item_a_series() {
        let daily = [
            day(D, &[("WASH", "精洗", 3), ("WAX", "打蜡", 1)]),
            day(3 * D, &[("WASH", "精洗", 2)]),
        ];
        let c = redemptions_per_day(&daily, 0, 4, label);
        assert_eq!(
            c.series
                .iter()
                .map(|s| (s.key.as_str(), s.title.as_str(), s.total))
                .collect::<Vec<_>>(),
            [("P1/WASH", "精洗", 5), ("P1/WAX", "打蜡", 1)]
        );
        assert_eq!(
            c.days,
            [
                ("day0".to_owned(), vec![0, 0]),
                ("day1".to_owned(), vec![3, 1]),
                ("day2".to_owned(), vec![0, 0]),
                ("day3".to_owned(), vec![2, 0]),
            ]
        );
    }

    #[test]
    fn heights_are_in_proportion_to_units_and_stack_from_the_baseline() {
        let daily = [
            day(D, &[("WASH", "精洗", 3), ("WAX", "打蜡", 1)]),
            day(3 * D, &[("WASH", "精洗", 2)]),
        ];
        let l = layout(&redemptions_per_day(&daily, 0, 4, label));
        assert_eq!(l.bars.len(), 4);
        assert!(l.bars[0].segments.is_empty() && l.bars[0].total_y.is_none());
        let per_unit = l.bars[1].segments[0].height / 3.0;
        for b in &l.bars {
            let mut bottom = l.baseline;
            for s in &b.segments {
                assert!((s.height - per_unit * s.units as f64).abs() < 1e-9);
                assert!(
                    (s.y + s.height - bottom).abs() < 1e-9,
                    "stacked on the one below"
                );
                bottom = s.y;
            }
            assert_eq!(b.total, b.segments.iter().map(|s| s.units).sum::<u64>());
        }
        // The scale: round steps from 0 up to at least the highest bar.
        assert_eq!(
            l.ticks.iter().map(|t| t.units).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert!((l.ticks[4].y - (l.baseline - per_unit * 4.0)).abs() < 1e-9);
        assert!(l.bars.windows(2).all(|w| w[0].x + w[0].width < w[1].x));
    }

    #[test]
    fn the_scale_uses_round_steps_and_labels_do_not_overlap() {
        assert_eq!(step_for(1), 1);
        assert_eq!(step_for(4), 1);
        assert_eq!(step_for(7), 2);
        assert_eq!(step_for(17), 5);
        assert_eq!(step_for(1234), 500);
        let c = redemptions_per_day(&[], 0, 366, label);
        let l = layout(&c);
        assert_eq!(l.ticks.iter().map(|t| t.units).collect::<Vec<_>>(), [0, 1]);
        let labelled: Vec<&Bar> = l.bars.iter().filter(|b| b.labelled).collect();
        assert!(labelled.windows(2).all(|w| w[1].x - w[0].x >= 40.0));
        assert!(labelled.len() > 10);
    }
}
