//! What a run measured: per-request latency by endpoint (HDR histograms), errors by kind, `503`s and
//! whether they carried `Retry-After`, passes, redemptions, loss-report delivery, closes; and the
//! table that prints them.
//!
//! A pass reports what it did as a [`PassLog`]; the scheduler folds each into the [`Metrics`] of the
//! phase the pass started in. Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::terminal::CounterReport;

/// What a request (or a step of it) was, as the table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Endpoint {
    DenyList,
    JournalHead,
    JournalUpload,
    /// `GET entitlements` answered with a full snapshot (a terminal's first contact).
    EntitlementsFull,
    EntitlementsDelta,
    /// `GET entitlements` answered `204`: nothing new.
    EntitlementsUnchanged,
    BatchClose,
    /// `POST health`: the daemon's health report at the end of its pass.
    Health,
    /// Opening a TCP connection (before the request that needed it).
    Connect,
    /// A whole pass, from its first request to its last.
    Pass,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::DenyList => "GET deny-list",
            Endpoint::JournalHead => "GET journal/head",
            Endpoint::JournalUpload => "POST journal",
            Endpoint::EntitlementsFull => "GET entitlements (full)",
            Endpoint::EntitlementsDelta => "GET entitlements (delta)",
            Endpoint::EntitlementsUnchanged => "GET entitlements (204)",
            Endpoint::BatchClose => "POST batch-close",
            Endpoint::Health => "POST health",
            Endpoint::Connect => "connect",
            Endpoint::Pass => "whole pass",
        }
    }

    /// Whether the request counts for the p99 ceiling (a first contact's full snapshot is measured
    /// on its own, and a pass is the sum of its requests).
    pub fn in_ceiling(self) -> bool {
        !matches!(self, Endpoint::EntitlementsFull | Endpoint::Pass)
    }
}

/// Why a request failed, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stable: `HTTP 503 unavailable`, `connect failed`, `bundle refused`, …
    pub kind: String,
    /// The first occurrence's detail, for the report.
    pub detail: String,
    /// The answer was a `503`; with `Retry-After` or not.
    pub unavailable: Option<bool>,
}

/// One request.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub endpoint: Endpoint,
    pub micros: u64,
    pub failure: Option<Failure>,
}

/// A close's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum CloseVerdict {
    Matched,
    Mismatched,
    Conflict,
    Refused,
}

/// What one pass did.
#[derive(Debug, Clone)]
pub struct PassLog {
    pub started: Instant,
    pub micros: u64,
    /// Every step done (no failure, not halted).
    pub ok: bool,
    pub requests: Vec<RequestLog>,
    pub counter: CounterReport,
    /// Report → terminal delays of the deny entries applied (ms).
    pub deny_delays_ms: Vec<i64>,
    pub closes: Vec<CloseVerdict>,
    pub tally: Tally,
}

/// What passes did to the journal and the cache, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Records acknowledged by an upload's answer.
    pub records_uploaded: u64,
    /// Upload answers the simulator dropped on purpose (`--drop-ack-ratio`).
    pub acks_dropped: u64,
    /// Records the terminal found acknowledged at the server's head without having seen the answer.
    pub acks_resumed: u64,
    /// Bundles installed, by how they were checked, and their entries.
    pub bundles_verified: u64,
    pub bundles_light: u64,
    pub bundle_entries: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.records_uploaded += o.records_uploaded;
        self.acks_dropped += o.acks_dropped;
        self.acks_resumed += o.acks_resumed;
        self.bundles_verified += o.bundles_verified;
        self.bundles_light += o.bundles_light;
        self.bundle_entries += o.bundle_entries;
    }
}

impl PassLog {
    /// An empty log of a pass started at `started` after the counter did `counter`.
    pub fn starting(started: Instant, counter: CounterReport) -> PassLog {
        PassLog {
            started,
            micros: 0,
            ok: false,
            requests: Vec::new(),
            counter,
            deny_delays_ms: Vec::new(),
            closes: Vec::new(),
            tally: Tally::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    latency: Histogram<u64>,
    errors: u64,
}

/// A histogram of 1 µs to 1 h at 3 significant digits (a value outside is clamped, never lost).
#[allow(clippy::expect_used)] // constant bounds, valid (every test makes one)
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// Latency figures of one row, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything measured in one phase of a run.
#[derive(Debug, Clone)]
pub struct Metrics {
    rows: BTreeMap<Endpoint, Row>,
    /// (endpoint, kind) → (count, first detail).
    errors: BTreeMap<(Endpoint, String), (u64, String)>,
    pub unavailable: u64,
    pub unavailable_with_retry_after: u64,
    pub passes: u64,
    pub passes_failed: u64,
    pub counter: CounterReport,
    deny_delay_ms: Histogram<u64>,
    pub closes: BTreeMap<CloseVerdict, u64>,
    pub tally: Tally,
    /// Open-loop arrivals that found every terminal busy (the fleet is too small for the rate).
    pub arrivals_without_terminal: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rows: BTreeMap::new(),
            errors: BTreeMap::new(),
            unavailable: 0,
            unavailable_with_retry_after: 0,
            passes: 0,
            passes_failed: 0,
            counter: CounterReport::default(),
            deny_delay_ms: histogram(),
            closes: BTreeMap::new(),
            tally: Tally::default(),
            arrivals_without_terminal: 0,
        }
    }
}

impl Metrics {
    fn row(&mut self, e: Endpoint) -> &mut Row {
        self.rows.entry(e).or_insert_with(|| Row {
            latency: histogram(),
            errors: 0,
        })
    }

    pub fn record_request(&mut self, r: &RequestLog) {
        let row = self.row(r.endpoint);
        row.latency.saturating_record(r.micros.max(1));
        if let Some(f) = &r.failure {
            row.errors += 1;
            let e = self
                .errors
                .entry((r.endpoint, f.kind.clone()))
                .or_insert_with(|| (0, f.detail.clone()));
            e.0 += 1;
            if let Some(with_retry_after) = f.unavailable {
                self.unavailable += 1;
                if with_retry_after {
                    self.unavailable_with_retry_after += 1;
                }
            }
        }
    }

    pub fn record_pass(&mut self, p: &PassLog) {
        for r in &p.requests {
            self.record_request(r);
        }
        self.record_request(&RequestLog {
            endpoint: Endpoint::Pass,
            micros: p.micros,
            failure: None,
        });
        self.passes += 1;
        if !p.ok {
            self.passes_failed += 1;
        }
        let c = &mut self.counter;
        c.redemptions += p.counter.redemptions;
        c.lines += p.counter.lines;
        c.voids += p.counter.voids;
        c.no_card += p.counter.no_card;
        for d in &p.deny_delays_ms {
            self.deny_delay_ms
                .saturating_record(u64::try_from(*d).unwrap_or(0).max(1));
        }
        for v in &p.closes {
            *self.closes.entry(*v).or_default() += 1;
        }
        self.tally.add(&p.tally);
    }

    /// The figures of one endpoint, if it was seen.
    pub fn latency(&self, e: Endpoint) -> Option<Latency> {
        let row = self.rows.get(&e)?;
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            count: row.latency.len(),
            errors: row.errors,
            p50_ms: ms(row.latency.value_at_quantile(0.5)),
            p99_ms: ms(row.latency.value_at_quantile(0.99)),
            max_ms: ms(row.latency.max()),
        })
    }

    /// Every endpoint seen, in table order.
    pub fn endpoints(&self) -> Vec<(Endpoint, Latency)> {
        self.rows
            .keys()
            .filter_map(|e| Some((*e, self.latency(*e)?)))
            .collect()
    }

    /// The worst p99 over the requests that count for the ceiling ([`Endpoint::in_ceiling`]).
    pub fn worst_p99_ms(&self) -> f64 {
        self.endpoints()
            .iter()
            .filter(|(e, _)| e.in_ceiling() && *e != Endpoint::Connect)
            .map(|(_, l)| l.p99_ms)
            .fold(0.0, f64::max)
    }

    /// Requests that failed, all endpoints.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// `(endpoint, kind, count, first detail)`, most frequent first.
    pub fn errors(&self) -> Vec<(Endpoint, String, u64, String)> {
        let mut v: Vec<_> = self
            .errors
            .iter()
            .map(|((e, k), (n, d))| (*e, k.clone(), *n, d.clone()))
            .collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        v
    }

    /// Loss reports applied by terminals: (count, p50 ms, max ms) from the platform's report time.
    pub fn deny_delivery(&self) -> Option<(u64, f64, f64)> {
        let h = &self.deny_delay_ms;
        (!h.is_empty()).then(|| (h.len(), h.value_at_quantile(0.5) as f64, h.max() as f64))
    }

    /// The endpoint table and the error lines.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "  {:<26} {:>9} {:>7} {:>9} {:>9} {:>9}",
            "request", "count", "errors", "p50 ms", "p99 ms", "max ms"
        );
        for (e, l) in self.endpoints() {
            let _ = writeln!(
                out,
                "  {:<26} {:>9} {:>7} {:>9.1} {:>9.1} {:>9.1}",
                e.label(),
                l.count,
                l.errors,
                l.p50_ms,
                l.p99_ms,
                l.max_ms
            );
        }
        let errors = self.errors();
        if errors.is_empty() {
            let _ = writeln!(out, "  errors: none");
        } else {
            let _ = writeln!(out, "  errors by kind:");
            for (e, kind, n, detail) in errors {
                let _ = writeln!(out, "    {n:>7} × {} {kind}  (first: {detail})", e.label());
            }
        }
        let _ = writeln!(
            out,
            "  503 answers: {} ({} with Retry-After, {} without)",
            self.unavailable,
            self.unavailable_with_retry_after,
            self.unavailable - self.unavailable_with_retry_after
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(endpoint: Endpoint, micros: u64, failure: Option<Failure>) -> RequestLog {
        RequestLog {
            endpoint,
            micros,
            failure,
        }
    }

    #[test]
    fn percentiles_errors_and_unavailable_answers_are_counted() {
        let mut m = Metrics::default();
        for i in 1..=100u64 {
            m.record_request(&req(Endpoint::DenyList, i * 1000, None));
        }
        let shed = Failure {
            kind: "HTTP 503 unavailable".into(),
            detail: "overloaded".into(),
            unavailable: Some(true),
        };
        m.record_request(&req(Endpoint::JournalHead, 500, Some(shed.clone())));
        m.record_request(&req(
            Endpoint::JournalHead,
            700,
            Some(Failure {
                unavailable: Some(false),
                ..shed
            }),
        ));
        m.record_request(&req(Endpoint::EntitlementsFull, 9_000_000, None));
        let l = m.latency(Endpoint::DenyList).unwrap();
        assert_eq!((l.count, l.errors), (100, 0));
        assert!((49.0..=51.0).contains(&l.p50_ms), "{l:?}");
        assert!((98.0..=100.1).contains(&l.p99_ms), "{l:?}");
        assert_eq!(m.errors_total(), 2);
        assert_eq!((m.unavailable, m.unavailable_with_retry_after), (2, 1));
        // A first contact's snapshot does not decide the ceiling.
        assert!(m.worst_p99_ms() < 101.0);
        let table = m.table();
        assert!(table.contains("GET deny-list"), "{table}");
        assert!(
            table.contains("2 × GET journal/head HTTP 503 unavailable"),
            "{table}"
        );
        assert!(
            table.contains("503 answers: 2 (1 with Retry-After, 1 without)"),
            "{table}"
        );
    }
}
