//! The fleet's alerts, as pure rules over each terminal's latest health report (`POST …/health`,
//! `redeemd_contract::health`) and what the platform holds about it; time is a parameter.
//!
//! An enabled terminal raises:
//!
//! * `silent` — no report for more than [`FleetPolicy::silent_intervals`] of its own sync intervals
//!   (a terminal that never reported: since its enrolment, at the default 60 s interval);
//! * `reader_down` — a reader not linked when the report was made (a reader still opening in the
//!   daemon's first [`READER_GRACE_MS`] is not down yet: the first pass runs at start);
//! * `cache_expiring` — the installed cache expires within [`FleetPolicy::cache_warning_ms`] (24 h), or
//!   has expired, or none is installed: the counter declines every card past the expiry;
//! * `uploads_halted` — the journal diverged from the platform's: nothing more is uploaded until a
//!   person acts;
//! * `close_mismatched` — the last end-of-day close was not matched (mismatched, conflict, refused);
//! * `amount_held` — the platform holds records of the terminal (not payable until a person resolves
//!   them), from the platform's own verdicts, not from the report.
//!
//! A disabled terminal raises none: it is out of service on purpose.

use redeemd_contract::health::{CloseVerdict, HealthReport, LinkState};
use serde::Serialize;

/// A reader the daemon is still opening within this long after its start is not reported down.
pub const READER_GRACE_MS: i64 = 10_000;
/// The interval assumed for a terminal that never reported (the daemon's default).
pub const DEFAULT_INTERVAL_SECS: u64 = 60;

/// The thresholds of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPolicy {
    /// Sync intervals without a report after which a terminal is silent.
    pub silent_intervals: u32,
    /// How far ahead a cache's expiry is warned of.
    pub cache_warning_ms: i64,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        FleetPolicy {
            silent_intervals: 3,
            cache_warning_ms: 24 * 3_600_000,
        }
    }
}

impl FleetPolicy {
    /// `--silent-intervals N`, 1 to 1000.
    pub fn parse_intervals(s: &str) -> Result<u32, String> {
        match s.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(format!(
                "{s:?}: a whole number of sync intervals from 1 to 1000"
            )),
        }
    }
}

/// What the platform holds about one terminal.
#[derive(Debug, Clone)]
pub struct TerminalFacts<'a> {
    pub terminal_id: &'a str,
    pub merchant_id: &'a str,
    pub enabled: bool,
    pub enrolled_ms: i64,
    /// The latest report and when the platform received it.
    pub report: Option<(i64, &'a HealthReport)>,
    /// Records of the terminal the platform holds, and what they claim.
    pub held_records: u64,
    pub held_claimed_fen: i128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Silent,
    ReaderDown,
    CacheExpiring,
    UploadsHalted,
    CloseMismatched,
    AmountHeld,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Silent => "silent",
            AlertKind::ReaderDown => "reader_down",
            AlertKind::CacheExpiring => "cache_expiring",
            AlertKind::UploadsHalted => "uploads_halted",
            AlertKind::CloseMismatched => "close_mismatched",
            AlertKind::AmountHeld => "amount_held",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub terminal_id: String,
    pub merchant_id: String,
    /// For a person: what and since when (times in China Standard Time).
    pub detail: String,
}

/// The alerts of one terminal at `now_ms`, in [`AlertKind`] order. `at` prints a time.
pub fn alerts(
    t: &TerminalFacts<'_>,
    policy: FleetPolicy,
    now_ms: i64,
    at: impl Fn(i64) -> String,
) -> Vec<Alert> {
    if !t.enabled {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut alert = |kind, detail: String| {
        out.push(Alert {
            kind,
            terminal_id: t.terminal_id.to_owned(),
            merchant_id: t.merchant_id.to_owned(),
            detail,
        });
    };
    let interval_s = t
        .report
        .map_or(DEFAULT_INTERVAL_SECS, |(_, r)| r.sync_interval_secs.max(1));
    let silent_after_ms = i64::from(policy.silent_intervals).saturating_mul(
        i64::try_from(interval_s)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    );
    let last_heard = t.report.map_or(t.enrolled_ms, |(received, _)| received);
    if now_ms.saturating_sub(last_heard) > silent_after_ms {
        alert(
            AlertKind::Silent,
            match t.report {
                Some((received, _)) => format!(
                    "no report since {} (more than {} sync intervals of {interval_s} s)",
                    at(received),
                    policy.silent_intervals
                ),
                None => format!(
                    "never reported since its enrolment at {}",
                    at(t.enrolled_ms)
                ),
            },
        );
    }
    if let Some((_, r)) = t.report {
        let starting = r.reported_at_ms.saturating_sub(r.started_at_ms) < READER_GRACE_MS;
        for reader in &r.readers {
            let down = match reader.state {
                LinkState::LinkUp => false,
                LinkState::Opening | LinkState::WaitingForReader => !starting,
                LinkState::PortError => true,
            };
            if down {
                let state = match reader.state {
                    LinkState::Opening => "opening",
                    LinkState::PortError => "port error",
                    LinkState::WaitingForReader => "waiting for reader",
                    LinkState::LinkUp => "link up",
                };
                alert(
                    AlertKind::ReaderDown,
                    format!(
                        "reader {} ({}): {state}{}",
                        reader.name,
                        reader.reader_serial.as_deref().unwrap_or("serial unknown"),
                        reader
                            .detail
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                );
            }
        }
        match &r.cache {
            None => alert(
                AlertKind::CacheExpiring,
                "no cache installed: every card is declined".into(),
            ),
            Some(c) if c.expires_at_ms <= now_ms => alert(
                AlertKind::CacheExpiring,
                format!(
                    "cache version {} expired at {}: every card is declined",
                    c.version,
                    at(c.expires_at_ms)
                ),
            ),
            Some(c) if c.expires_at_ms - now_ms <= policy.cache_warning_ms => alert(
                AlertKind::CacheExpiring,
                format!(
                    "cache version {} expires at {}",
                    c.version,
                    at(c.expires_at_ms)
                ),
            ),
            Some(_) => {}
        }
        if let Some(h) = &r.halted {
            alert(AlertKind::UploadsHalted, format!("uploads halted: {h}"));
        }
        if let Some(c) = &r.last_close
            && c.result != CloseVerdict::Matched
        {
            let verdict = match c.result {
                CloseVerdict::Mismatched => "mismatched",
                CloseVerdict::Conflict => "in conflict with another close",
                _ => "refused",
            };
            alert(
                AlertKind::CloseMismatched,
                format!("batch close of {} {verdict}", c.business_date),
            );
        }
    }
    if t.held_records > 0 {
        let fen = t.held_claimed_fen;
        alert(
            AlertKind::AmountHeld,
            format!(
                "{} records held, claiming ¥{}{}.{:02} (admin exceptions)",
                t.held_records,
                if fen < 0 { "-" } else { "" },
                fen.unsigned_abs() / 100,
                fen.unsigned_abs() % 100
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use redeemd_contract::health::{CacheHealth, CloseHealth, JournalHealth, ReaderHealth};

    const NOW: i64 = 1_800_000_000_000;
    const H: i64 = 3_600_000;

    fn report(state: LinkState) -> HealthReport {
        HealthReport {
            daemon_version: "0.1.0".into(),
            started_at_ms: NOW - H,
            reported_at_ms: NOW - 1000,
            sync_interval_secs: 60,
            readers: vec![ReaderHealth {
                name: "counter-1".into(),
                state,
                detail: None,
                reader_serial: Some("SIM-0001".into()),
                firmware: Some("sim-1.0".into()),
                last_transaction_at_ms: None,
            }],
            cache: Some(CacheHealth {
                version: 7,
                installed_at_ms: NOW - H,
                expires_at_ms: NOW + 48 * H,
            }),
            journal: JournalHealth {
                head_seq: 0,
                unsynced: 0,
                oldest_unsynced_at_ms: None,
            },
            halted: None,
            last_close: None,
        }
    }

    fn kinds(r: Option<(i64, &HealthReport)>, enabled: bool, held: u64) -> Vec<AlertKind> {
        let t = TerminalFacts {
            terminal_id: "T-1",
            merchant_id: "M-1",
            enabled,
            enrolled_ms: NOW - 10 * H,
            report: r,
            held_records: held,
            held_claimed_fen: 3500,
        };
        alerts(&t, FleetPolicy::default(), NOW, |ms| ms.to_string())
            .into_iter()
            .map(|a| a.kind)
            .collect()
    }

    #[test]
    fn a_healthy_terminal_raises_nothing() {
        let r = report(LinkState::LinkUp);
        assert_eq!(kinds(Some((NOW - 1000, &r)), true, 0), []);
    }

    #[test]
    fn each_rule_raises_its_alert() {
        use AlertKind::*;
        let up = report(LinkState::LinkUp);
        // Silent: more than 3 intervals of 60 s, measured from the platform's receipt.
        assert_eq!(kinds(Some((NOW - 180_000, &up)), true, 0), []);
        assert_eq!(kinds(Some((NOW - 180_001, &up)), true, 0), [Silent]);
        assert_eq!(kinds(None, true, 0), [Silent]);
        // A reader down; one still opening right after the daemon started is not yet.
        let down = report(LinkState::PortError);
        assert_eq!(kinds(Some((NOW, &down)), true, 0), [ReaderDown]);
        let mut starting = report(LinkState::Opening);
        starting.started_at_ms = starting.reported_at_ms - 5_000;
        assert_eq!(kinds(Some((NOW, &starting)), true, 0), []);
        starting.started_at_ms -= READER_GRACE_MS;
        assert_eq!(kinds(Some((NOW, &starting)), true, 0), [ReaderDown]);
        // The cache: within 24 h, expired, or none.
        let mut cache = report(LinkState::LinkUp);
        if let Some(c) = cache.cache.as_mut() {
            c.expires_at_ms = NOW + 23 * H;
        }
        assert_eq!(kinds(Some((NOW, &cache)), true, 0), [CacheExpiring]);
        cache.cache = None;
        assert_eq!(kinds(Some((NOW, &cache)), true, 0), [CacheExpiring]);
        // Halted, a close not matched, money held.
        let mut bad = report(LinkState::LinkUp);
        bad.halted = Some("journal diverged at seq 4".into());
        bad.last_close = Some(CloseHealth {
            business_date: "2026-11-27".into(),
            result: CloseVerdict::Mismatched,
        });
        assert_eq!(
            kinds(Some((NOW, &bad)), true, 2),
            [UploadsHalted, CloseMismatched, AmountHeld]
        );
        // A disabled terminal is out of service on purpose.
        assert_eq!(kinds(Some((NOW - 10 * H, &bad)), false, 2), []);
    }

    #[test]
    fn details_say_what_and_where() {
        let mut r = report(LinkState::PortError);
        r.readers[0].detail = Some("No such file or directory".into());
        let t = TerminalFacts {
            terminal_id: "T-1",
            merchant_id: "M-1",
            enabled: true,
            enrolled_ms: 0,
            report: Some((NOW, &r)),
            held_records: 1,
            held_claimed_fen: -3500,
        };
        let a = alerts(&t, FleetPolicy::default(), NOW, |ms| ms.to_string());
        assert_eq!(
            a[0].detail,
            "reader counter-1 (SIM-0001): port error: No such file or directory"
        );
        assert_eq!(
            a[1].detail,
            "1 records held, claiming ¥-35.00 (admin exceptions)"
        );
    }
}
