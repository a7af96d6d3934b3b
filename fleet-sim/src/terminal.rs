//! One simulated terminal, pure: its journal (records chained with their MACs exactly like the
//! daemon's store chains them), what the platform acknowledged, its card pool and deny list, the
//! redemptions it makes, and the end-of-day closes it owes. No I/O and no clock: every call takes the
//! time, randomness comes from the caller's generator; the HTTP pass ([`crate::pass`]) drives it.
//!
//! The decisions that are the daemon's are the daemon's code: resuming from the server's head,
//! batching, judging acknowledgements and problems ([`redeemd::sync::plan`]), which days to close and
//! with what totals ([`redeemd::sync::close`]), checking a deny-list answer
//! ([`redeemd::store::deny::verify_answer`]), record encoding, MACs and authorization codes
//! ([`redeemd_contract::journal`]). What is the simulator's own is what a counter would do: which card
//! a customer brings, which items, when a cashier voids.
//!
//! **Redemptions** arrive as a Poisson process at the terminal's rate; the pass asks for those due
//! ([`Terminal::redeem_until`]) before it uploads, so each record carries the time it was made. A
//! redemption takes a random pooled card that the terminal may redeem (active, not on its deny list,
//! a package valid at that time, in scope, without a daily cap or identity check, uses left), one or
//! two of its items, one or two units each, at the signed price; a void reverses the terminal's latest
//! single-line redemption of the same business day, line for line.

use std::collections::{HashMap, VecDeque};

use rand::{Rng, RngExt};
use redeemd::store::DenyList;
use redeemd::store::deny::{DenyError, verify_answer};
use redeemd::sync::close::closes_due;
use redeemd::sync::plan::{
    self, AnswerError, Batch, Divergence, LocalJournal, Next, Problem, Resume, ServerHead, Uploader,
};
use redeemd_contract::close::{BatchClose, business_day};
use redeemd_contract::health::{
    CacheHealth, HealthReport, JournalHealth, LinkState, ReaderHealth, bounded,
};
use redeemd_contract::journal::{auth_code, genesis_mac};
use redeemd_contract::keys::Tag;
use redeemd_contract::{CardRef, CardStatus, JournalRecord, RecordKind, TerminalKeys};

use crate::bundle::{BundleIntake, BundleRefused, Installed};
use crate::pool::Pool;

/// A void is allowed within this long after its redemption (the daemon's default `[void] window_secs`),
/// and only on the same business day.
const VOID_WINDOW_MS: i64 = 86_400_000;
/// Recent single-line redemptions a cashier might void.
const VOIDABLE_KEPT: usize = 16;
/// Random pooled cards tried before a redemption is given up for want of a usable card.
const CARD_ATTEMPTS: usize = 8;
/// The reader and cashier every record names (the platform keeps them; nothing decides on them).
const READER_ID: &str = "sim-reader";
const CASHIER_ID: &str = "sim";

/// How a terminal's counter behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterModel {
    /// Redemption events per millisecond (the fleet's daily redemptions spread over its terminals).
    pub events_per_ms: f64,
    /// The share of events that void an earlier redemption instead.
    pub void_ratio: f64,
    /// The share of redemptions with two items (two lines of one request).
    pub two_line_ratio: f64,
}

/// What the terminal's counter did since the last call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterReport {
    /// Redemption requests approved, and their lines.
    pub redemptions: u64,
    pub lines: u64,
    pub voids: u64,
    /// Events with no usable card in the pool (a terminal before its first bundle has none).
    pub no_card: u64,
}

/// A deny-list answer applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyApplied {
    pub applied: usize,
    /// The highest deny-list version now applied.
    pub version: u64,
    /// When the platform recorded each applied report (`reported_at_ms`).
    pub reported_at_ms: Vec<i64>,
}

/// The gap to the next event of a Poisson process of `rate` events per unit of time (exponential;
/// `1 − U` is in (0, 1], so the logarithm is finite).
pub fn poisson_gap(rng: &mut impl Rng, rate: f64) -> f64 {
    let u: f64 = rng.random();
    -(1.0 - u).ln() / rate.max(1e-12)
}

/// The UTC offset (whole minutes, within the −840…840 a terminal accepts) whose local midnight falls
/// in the minute of `at_ms`: a terminal at that offset ends its business day then.
pub fn offset_with_midnight_at(at_ms: i64) -> i32 {
    let minute = at_ms.div_euclid(60_000);
    let m = (-minute).rem_euclid(1440);
    i32::try_from(if m > 840 { m - 1440 } else { m }).unwrap_or(0)
}

/// Whether the terminal's counter makes redemptions.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Counter {
    Closed,
    /// Opens at the first install (see [`Terminal::open_counter_after_install`]).
    AfterInstall {
        backlog_ms: i64,
    },
    /// The next redemption event, unix ms.
    Open {
        next_event_ms: f64,
    },
}

/// A simulated terminal.
pub struct Terminal {
    pub terminal_id: String,
    pub merchant_id: String,
    keys: TerminalKeys,
    /// The business day's offset from UTC (end-of-day closes).
    pub utc_offset_minutes: i32,
    /// Record `seq` is at index `seq - 1`.
    records: Vec<JournalRecord>,
    macs: Vec<Tag>,
    genesis: Tag,
    acked_seq: u64,
    uploader: Uploader,
    /// Set when uploading stopped for an operator (never lifted in a run).
    pub halted: Option<Divergence>,
    /// The last closed day's `through_seq`: the next close starts after it.
    closed_through: u64,
    cache_version: u64,
    /// When the installed cache was installed (wall clock, unix ms; 0 before the first install).
    installed_at_ms: i64,
    pool: Pool,
    /// Deny entries by card: the highest `entry_version` an entry of the card refuses below.
    deny: HashMap<CardRef, u64>,
    deny_version: u64,
    counter: Counter,
    /// The wall clock `boot_ms` counts from.
    boot_wall_ms: i64,
    reader_txn: u64,
    voidable: VecDeque<u64>,
}

impl Terminal {
    /// A terminal with an empty journal. `cache_version` is the version it starts from: 0 (no cache:
    /// a full snapshot at its first pass), or a version it is taken to hold already (a warm start:
    /// its first answer is a delta).
    pub fn new(
        keys: TerminalKeys,
        merchant_id: &str,
        utc_offset_minutes: i32,
        cache_version: u64,
        pool_capacity: usize,
        boot_wall_ms: i64,
    ) -> Terminal {
        let genesis = genesis_mac(&keys.journal, &keys.terminal_id);
        Terminal {
            terminal_id: keys.terminal_id.clone(),
            merchant_id: merchant_id.to_owned(),
            keys,
            utc_offset_minutes,
            records: Vec::new(),
            macs: Vec::new(),
            genesis,
            acked_seq: 0,
            uploader: Uploader::default(),
            halted: None,
            closed_through: 0,
            cache_version,
            installed_at_ms: 0,
            pool: Pool::new(pool_capacity),
            deny: HashMap::new(),
            deny_version: 0,
            counter: Counter::Closed,
            boot_wall_ms,
            reader_txn: 0,
            voidable: VecDeque::new(),
        }
    }

    /// The daemon's health report at `now_ms` (`redeemd::sync::health`), as this terminal would send
    /// it: one reader linked, the installed cache (expiring after the server's default validity of
    /// 72 h: the simulator does not read the bundle's expiry), the journal's backlog, a halt.
    pub fn health(&self, now_ms: i64, interval_secs: u64) -> HealthReport {
        let unsynced = self.head_seq() - self.acked_seq;
        HealthReport {
            daemon_version: concat!("fleet-sim ", env!("CARGO_PKG_VERSION")).to_owned(),
            started_at_ms: self.boot_wall_ms,
            reported_at_ms: now_ms,
            sync_interval_secs: interval_secs.clamp(1, 86_400),
            readers: vec![ReaderHealth {
                name: "counter-1".into(),
                state: LinkState::LinkUp,
                detail: None,
                reader_serial: Some(format!("SIM-{}", self.terminal_id)),
                firmware: Some("fleet-sim".into()),
                last_transaction_at_ms: self.records.last().map(|r| r.wall_ms),
            }],
            cache: (self.installed_at_ms > 0).then(|| CacheHealth {
                version: self.cache_version,
                installed_at_ms: self.installed_at_ms,
                expires_at_ms: self.installed_at_ms + 72 * 3_600_000,
            }),
            journal: JournalHealth {
                head_seq: self.head_seq(),
                unsynced,
                oldest_unsynced_at_ms: usize::try_from(self.acked_seq)
                    .ok()
                    .and_then(|i| self.records.get(i))
                    .map(|r| r.wall_ms),
            },
            halted: self.halted.as_ref().map(|d| bounded(&d.to_string())),
            last_close: None,
        }
    }

    pub fn keys(&self) -> &TerminalKeys {
        &self.keys
    }

    /// The journal, in seq order.
    pub fn records(&self) -> &[JournalRecord] {
        &self.records
    }

    pub fn head_seq(&self) -> u64 {
        self.records.len() as u64
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// The MAC of record `seq`.
    pub fn mac_at(&self, seq: u64) -> Option<Tag> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.macs.get(i).copied()
    }

    /// The first record the platform refused as unverifiable (nothing from it on is sent).
    pub fn refused_at(&self) -> Option<u64> {
        self.uploader.refused_at
    }

    pub fn local(&self) -> LocalJournal {
        LocalJournal {
            head_seq: self.head_seq(),
            acked_seq: self.acked_seq,
        }
    }

    /// Takes the terminal to hold a cache of version `version` already (a warm start): its next
    /// entitlements answer is a delta from there. Only before its first bundle.
    pub fn start_from_version(&mut self, version: u64) {
        if self.pool.is_empty() {
            self.cache_version = version;
        }
    }

    pub fn cache_version(&self) -> u64 {
        self.cache_version
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn deny_version(&self) -> u64 {
        self.deny_version
    }

    /// Opens the counter: redemption events start at `at_ms`.
    pub fn open_counter(&mut self, at_ms: i64) {
        self.counter = Counter::Open {
            next_event_ms: at_ms as f64,
        };
    }

    /// Opens the counter when the first bundle is installed, `backlog_ms` before that moment: a
    /// terminal of a fleet that was already running has the records made since its last pass.
    pub fn open_counter_after_install(&mut self, backlog_ms: i64) {
        self.counter = Counter::AfterInstall { backlog_ms };
    }

    /// Closes the counter: no more redemptions (the end of a run drains what is left).
    pub fn close_counter(&mut self) {
        self.counter = Counter::Closed;
    }

    /// Makes the redemptions and voids due by `now_ms`, each at its own time, in order.
    pub fn redeem_until(
        &mut self,
        now_ms: i64,
        model: &CounterModel,
        rng: &mut impl Rng,
    ) -> CounterReport {
        let mut report = CounterReport::default();
        if model.events_per_ms <= 0.0 {
            return report;
        }
        while let Counter::Open { next_event_ms: t } = self.counter
            && t <= now_ms as f64
        {
            let at_ms = t as i64;
            if rng.random_bool(model.void_ratio) && self.void_latest(at_ms) {
                report.voids += 1;
            } else {
                match self.redeem(at_ms, model, rng) {
                    0 => report.no_card += 1,
                    lines => {
                        report.redemptions += 1;
                        report.lines += lines;
                    }
                }
            }
            self.counter = Counter::Open {
                next_event_ms: t + poisson_gap(rng, model.events_per_ms),
            };
        }
        report
    }

    /// One redemption request at `at_ms`; returns its number of lines (0: no usable card).
    fn redeem(&mut self, at_ms: i64, model: &CounterModel, rng: &mut impl Rng) -> u64 {
        if self.pool.is_empty() {
            return 0;
        }
        for _ in 0..CARD_ATTEMPTS {
            let slot = rng.random_range(0..self.pool.len());
            let Some(pc) = self.pool.get(slot) else {
                continue;
            };
            if pc.card.status != CardStatus::Active
                || self
                    .deny
                    .get(&pc.card_ref)
                    .is_some_and(|v| *v > pc.entry_version)
            {
                continue;
            }
            let usable: Vec<(usize, usize, u32)> = pc
                .card
                .packages
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.valid_from_ms <= at_ms
                        && at_ms < p.valid_until_ms
                        && p.daily_cap.is_none()
                        && !p.identity_required
                        && p.scope.allows(&self.merchant_id, &[])
                })
                .flat_map(|(pi, p)| {
                    p.items.iter().enumerate().filter_map(move |(ii, item)| {
                        let left = pc.uses_left(&p.id, &item.service_code);
                        (left > 0).then_some((pi, ii, left))
                    })
                })
                .collect();
            if usable.is_empty() {
                continue;
            }
            let first = rng.random_range(0..usable.len());
            let mut chosen = vec![usable[first]];
            if usable.len() > 1 && rng.random_bool(model.two_line_ratio) {
                let second = (first + rng.random_range(1..usable.len())) % usable.len();
                chosen.push(usable[second]);
            }
            let lines: Vec<(String, String, String, u32, u64)> = chosen
                .iter()
                .filter_map(|&(pi, ii, left)| {
                    let p = &pc.card.packages[pi];
                    let item = &p.items[ii];
                    let quantity = if left >= 2 && rng.random_bool(0.1) {
                        2
                    } else {
                        1
                    };
                    let amount = item.price_fen.checked_mul(u64::from(quantity))?;
                    Some((
                        p.id.clone(),
                        item.service_code.clone(),
                        item.title.clone(),
                        quantity,
                        amount,
                    ))
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            let (card_ref, entry_version) = (pc.card_ref, pc.entry_version);
            let group_seq = self.head_seq() + 1;
            let line_count = u16::try_from(lines.len()).unwrap_or(u16::MAX);
            self.reader_txn += 1;
            for (line, (package_id, service_code, item_title, quantity, amount_fen)) in
                lines.into_iter().enumerate()
            {
                let seq = self.append(JournalRecord {
                    terminal_id: self.terminal_id.clone(),
                    seq: 0,
                    kind: RecordKind::Redeem,
                    auth_code: auth_code(&self.keys.journal, &self.terminal_id, group_seq),
                    merchant_id: self.merchant_id.clone(),
                    card_ref,
                    package_id: package_id.clone(),
                    service_code: service_code.clone(),
                    item_title,
                    quantity,
                    amount_fen,
                    original_seq: 0,
                    group_seq,
                    line: u16::try_from(line).unwrap_or(u16::MAX),
                    line_count,
                    reader_id: READER_ID.into(),
                    reader_txn_id: self.reader_txn,
                    cashier_id: CASHIER_ID.into(),
                    wall_ms: at_ms,
                    boot_ms: u64::try_from(at_ms - self.boot_wall_ms).unwrap_or(0),
                    cache_version: self.cache_version,
                    entry_version,
                    prev_mac: [0; 32],
                });
                if let Some(pc) = self.pool.get_mut(&card_ref) {
                    pc.local_uses
                        .push((seq, package_id, service_code, i64::from(quantity)));
                }
            }
            if line_count == 1 {
                self.voidable.push_back(group_seq);
                if self.voidable.len() > VOIDABLE_KEPT {
                    self.voidable.pop_front();
                }
            }
            return u64::from(line_count);
        }
        0
    }

    /// Voids the latest single-line redemption of the business day of `at_ms`, if there is one.
    fn void_latest(&mut self, at_ms: i64) -> bool {
        let day = business_day(at_ms, self.utc_offset_minutes);
        let Some(original) = self
            .voidable
            .pop_back()
            .and_then(|seq| self.records.get(usize::try_from(seq - 1).ok()?).cloned())
        else {
            return false;
        };
        if business_day(original.wall_ms, self.utc_offset_minutes) != day
            || at_ms - original.wall_ms > VOID_WINDOW_MS
        {
            self.voidable.clear();
            return false;
        }
        let group_seq = self.head_seq() + 1;
        self.reader_txn += 1;
        let seq = self.append(JournalRecord {
            seq: 0,
            kind: RecordKind::Void,
            auth_code: auth_code(&self.keys.journal, &self.terminal_id, group_seq),
            original_seq: original.seq,
            group_seq,
            line: 0,
            line_count: 1,
            reader_txn_id: self.reader_txn,
            wall_ms: at_ms,
            boot_ms: u64::try_from(at_ms - self.boot_wall_ms).unwrap_or(0),
            cache_version: self.cache_version,
            prev_mac: [0; 32],
            ..original.clone()
        });
        if let Some(pc) = self.pool.get_mut(&original.card_ref) {
            pc.local_uses.push((
                seq,
                original.package_id,
                original.service_code,
                -i64::from(original.quantity),
            ));
        }
        true
    }

    /// Appends a record at the next seq, chained to the previous one; returns its seq.
    fn append(&mut self, mut record: JournalRecord) -> u64 {
        record.seq = self.head_seq() + 1;
        record.prev_mac = self.macs.last().copied().unwrap_or(self.genesis);
        let mac = record.mac(&self.keys.journal);
        self.records.push(record);
        self.macs.push(mac);
        self.head_seq()
    }

    /// Compares the server's head with the journal ([`plan::resume`]): records acknowledgements the
    /// terminal missed, or halts uploading on a divergence. Returns the seq marked acknowledged.
    pub fn resume(&mut self, head: &ServerHead) -> Result<Option<u64>, Divergence> {
        let h = head.acknowledged_seq;
        let mine = if h > 0 && h <= self.head_seq() {
            self.mac_at(h)
        } else {
            None
        };
        match plan::resume(self.local(), head, mine.as_ref()) {
            Resume::Halt(d) => {
                self.halted = Some(d);
                Err(d)
            }
            Resume::Continue { mark_synced } => {
                if let Some(seq) = mark_synced {
                    self.acked_seq = seq;
                }
                Ok(mark_synced)
            }
        }
    }

    /// The next batch to upload with its records and MACs, or `None` when all is acknowledged.
    pub fn next_batch(&self) -> Option<(Batch, Vec<(JournalRecord, Tag)>)> {
        let batch = self.uploader.next_batch(self.local())?;
        let from = usize::try_from(batch.from_seq - 1).ok()?;
        let through = usize::try_from(batch.through_seq).ok()?;
        let records = self.records.get(from..through)?;
        let macs = self.macs.get(from..through)?;
        Some((
            batch,
            records.iter().cloned().zip(macs.iter().copied()).collect(),
        ))
    }

    /// Applies a `200` answer to `batch` ([`Uploader::apply_ack`]); an acknowledgement is recorded.
    pub fn apply_ack(&mut self, batch: Batch, ack: &ServerHead) -> Result<Next, AnswerError> {
        let next = self
            .uploader
            .apply_ack(batch, self.acked_seq, ack, |seq| self.mac_at(seq))?;
        if let Next::Acknowledged { mark_synced } = next {
            self.acked_seq = mark_synced;
        }
        Ok(next)
    }

    /// Applies a problem answer to `batch` ([`Uploader::apply_problem`]); a halt is recorded.
    pub fn apply_problem(&mut self, batch: Batch, problem: &Problem) -> Result<Next, AnswerError> {
        let next = self.uploader.apply_problem(batch, problem)?;
        if let Next::Halt(d) = next {
            self.halted = Some(d);
        }
        Ok(next)
    }

    /// The closes due at `now_ms`: the business days that ended with every record acknowledged,
    /// after the last close ([`closes_due`]).
    pub fn closes_due(&self, now_ms: i64) -> Vec<BatchClose> {
        let from = usize::try_from(self.closed_through).unwrap_or(usize::MAX);
        closes_due(
            self.records.get(from..).unwrap_or_default(),
            true,
            self.acked_seq,
            self.utc_offset_minutes,
            business_day(now_ms, self.utc_offset_minutes),
        )
    }

    /// A close was answered (whatever the verdict): the next one starts after it.
    pub fn record_close(&mut self, close: &BatchClose) {
        self.closed_through = self.closed_through.max(close.through_seq);
    }

    /// Verifies a deny-list answer as the daemon's store does and applies it: all or nothing.
    pub fn apply_deny(&mut self, list: &DenyList) -> Result<DenyApplied, DenyError> {
        let entries = verify_answer(&self.keys.cache, &self.merchant_id, self.deny_version, list)?;
        let mut reported_at_ms = Vec::with_capacity(entries.len());
        for (e, _) in &entries {
            let v = self.deny.entry(e.card_ref).or_default();
            *v = (*v).max(e.entry_version);
            self.deny_version = self.deny_version.max(e.version);
            reported_at_ms.push(e.reported_at_ms);
        }
        Ok(DenyApplied {
            applied: entries.len(),
            version: self.deny_version,
            reported_at_ms,
        })
    }

    /// Starts receiving an entitlement bundle; a delta's entries are verified one by one when
    /// `verify_deltas` (a full snapshot's always).
    pub fn bundle_intake(&self, verify_deltas: bool) -> BundleIntake {
        BundleIntake::new(
            &self.keys.cache,
            &self.terminal_id,
            &self.pool,
            verify_deltas,
        )
    }

    /// Installs a received bundle at `now_ms` (checked against the installed version); on an error
    /// nothing changed.
    pub fn install(
        &mut self,
        intake: BundleIntake,
        now_ms: i64,
    ) -> Result<Installed, BundleRefused> {
        let installed = intake.finish(self.cache_version, &mut self.pool)?;
        self.cache_version = installed.version;
        self.installed_at_ms = now_ms;
        if let Counter::AfterInstall { backlog_ms } = self.counter {
            self.open_counter(now_ms.saturating_sub(backlog_ms));
        }
        Ok(installed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use redeemd_contract::close::{day_window, format_date};
    use redeemd_contract::{BundleKind, TerminalSecret};

    use crate::bundle::tests::bundle;

    const T0: i64 = 1_795_000_000_000;
    const HOUR: f64 = 3_600_000.0;

    /// Terminal T-1 with a full snapshot of version 5 holding `cards` (card `c` has `c` uses left).
    fn terminal_with(cards: &[u8]) -> Terminal {
        let keys = TerminalSecret::from_bytes(&[3; 32])
            .unwrap()
            .derive_all("T-1");
        let mut t = Terminal::new(keys, "M-1", 480, 0, 8, T0);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut intake = t.bundle_intake(true);
        intake
            .feed(&bundle(BundleKind::Full, 5, 0, cards, &[]), &mut rng)
            .unwrap();
        t.install(intake, T0).unwrap();
        t
    }

    fn terminal() -> Terminal {
        terminal_with(&[100, 150, 200])
    }

    #[test]
    fn the_health_report_is_within_the_platforms_bounds_and_tells_the_backlog() {
        let mut t = terminal();
        let r = t.health(T0 + 1_000, 60);
        r.check().unwrap();
        let cache = r.cache.unwrap();
        assert_eq!((cache.version, cache.installed_at_ms), (5, T0));
        assert_eq!((r.journal.head_seq, r.journal.unsynced), (0, 0));
        t.open_counter(T0);
        let mut rng = SmallRng::seed_from_u64(1);
        let model = CounterModel {
            events_per_ms: 1.0 / 60_000.0,
            void_ratio: 0.0,
            two_line_ratio: 0.0,
        };
        t.redeem_until(T0 + 10 * 60_000, &model, &mut rng);
        let r = t.health(T0 + 10 * 60_000, 60);
        r.check().unwrap();
        assert!(r.journal.unsynced > 0);
        assert_eq!(r.journal.unsynced, r.journal.head_seq);
        assert_eq!(
            r.journal.oldest_unsynced_at_ms,
            Some(t.records()[0].wall_ms)
        );
        assert_eq!(
            r.readers[0].last_transaction_at_ms,
            t.records().last().map(|l| l.wall_ms)
        );
    }

    fn busy() -> CounterModel {
        CounterModel {
            events_per_ms: 1.0 / 60_000.0,
            void_ratio: 0.1,
            two_line_ratio: 0.2,
        }
    }

    fn ack_of(t: &Terminal, seq: u64) -> ServerHead {
        ServerHead {
            acknowledged_seq: seq,
            acknowledged_mac: t.mac_at(seq),
        }
    }

    #[test]
    fn a_chosen_offset_ends_the_business_day_in_the_chosen_minute() {
        for at in [
            T0,
            T0 + 7 * 3_600_000 + 12_345,
            T0 + 13 * 3_600_000,
            T0 - 5 * 3_600_000,
        ] {
            let offset = offset_with_midnight_at(at);
            assert!((-840..=840).contains(&offset), "{offset}");
            let minute_start = at - at.rem_euclid(60_000);
            assert_eq!(
                business_day(minute_start, offset),
                business_day(minute_start - 1, offset) + 1,
                "{at}: day changes at the minute's start"
            );
        }
    }

    #[test]
    fn the_counter_opens_with_its_backlog_at_the_first_install() {
        let keys = TerminalSecret::from_bytes(&[3; 32])
            .unwrap()
            .derive_all("T-1");
        let mut t = Terminal::new(keys, "M-1", 480, 0, 8, T0);
        t.open_counter_after_install(3_600_000);
        let mut rng = SmallRng::seed_from_u64(4);
        // Before any bundle nothing is made (and nothing is lost: the counter is not open yet).
        assert_eq!(
            t.redeem_until(T0, &busy(), &mut rng),
            CounterReport::default()
        );
        let mut intake = t.bundle_intake(true);
        intake
            .feed(&bundle(BundleKind::Full, 5, 0, &[100], &[]), &mut rng)
            .unwrap();
        t.install(intake, T0).unwrap();
        let r = t.redeem_until(T0, &busy(), &mut rng);
        assert!(
            r.redemptions + r.voids > 30,
            "an hour of backlog at one a minute: {r:?}"
        );
        assert!(t.records().first().unwrap().wall_ms >= T0 - 3_600_000);
    }

    #[test]
    fn records_form_one_unbroken_chain_with_groups_and_voids_that_match() {
        let mut t = terminal();
        let mut rng = SmallRng::seed_from_u64(9);
        t.open_counter(T0);
        let r = t.redeem_until(T0 + (3.0 * HOUR) as i64, &busy(), &mut rng);
        assert!(r.redemptions > 50, "{r:?}");
        assert!(r.voids > 0 && r.lines > r.redemptions, "{r:?}");
        let key = &t.keys().journal;
        let mut prev = genesis_mac(key, "T-1");
        for (i, rec) in t.records().iter().enumerate() {
            assert_eq!(rec.seq, i as u64 + 1);
            assert_eq!(rec.prev_mac, prev, "seq {}", rec.seq);
            prev = rec.mac(key);
            assert_eq!(t.mac_at(rec.seq), Some(prev));
            let back = JournalRecord::decode(&rec.encode()).unwrap();
            assert_eq!(&back, rec);
            let group = &t.records()[(rec.group_seq - 1) as usize];
            assert_eq!(rec.auth_code, group.auth_code);
            assert_eq!(
                redeemd_contract::journal::parse_auth_code(key, "T-1", &rec.auth_code),
                Some(rec.group_seq)
            );
            if rec.kind == RecordKind::Void {
                let o = &t.records()[(rec.original_seq - 1) as usize];
                assert_eq!(o.kind, RecordKind::Redeem);
                assert_eq!(
                    (
                        &o.card_ref,
                        &o.package_id,
                        &o.service_code,
                        o.quantity,
                        o.amount_fen
                    ),
                    (
                        &rec.card_ref,
                        &rec.package_id,
                        &rec.service_code,
                        rec.quantity,
                        rec.amount_fen
                    )
                );
            } else {
                let price = if rec.service_code == "WASH" {
                    3500
                } else {
                    12_000
                };
                assert_eq!(rec.amount_fen, price * u64::from(rec.quantity));
                assert_eq!(rec.cache_version, 5);
            }
        }
        // Times ascend with seqs, and nothing is due after `now`.
        assert!(t.records().windows(2).all(|w| w[0].wall_ms <= w[1].wall_ms));
        assert!(t.records().last().unwrap().wall_ms <= T0 + (3.0 * HOUR) as i64);
    }

    #[test]
    fn uses_left_stop_redemptions_and_a_deny_entry_refuses_the_card() {
        let mut t = terminal_with(&[10, 20, 30]);
        let mut rng = SmallRng::seed_from_u64(1);
        t.open_counter(T0);
        // Cards 10, 20, 30 have 10 + 20 + 30 uses of each of two items: no more units than that.
        let model = CounterModel {
            void_ratio: 0.0,
            ..busy()
        };
        let r = t.redeem_until(T0 + (100.0 * HOUR) as i64, &model, &mut rng);
        let units: u32 = t.records().iter().map(|r| r.quantity).sum();
        assert_eq!(units, 120);
        assert!(r.no_card > 0);
        for pc in t.pool().iter() {
            assert_eq!(pc.uses_left("P1", "WASH") + pc.uses_left("P1", "OIL"), 0);
        }

        let mut t = terminal_with(&[10, 20, 30]);
        let cache = t.keys().cache.clone();
        let entries: Vec<_> = [10u8, 20, 30]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let e = redeemd_contract::DenyEntry {
                    version: i as u64 + 1,
                    card_ref: CardRef([*c; 32]),
                    status: redeemd_contract::DenyStatus::Lost,
                    entry_version: 6,
                    reported_at_ms: T0,
                };
                let mac = e.mac(&cache, "M-1").to_vec();
                (e, mac)
            })
            .collect();
        let mut list = DenyList {
            merchant_id: "M-1".into(),
            version: 3,
            entries,
        };
        let mut forged = list.clone();
        forged.entries[1].1[0] ^= 1;
        assert!(t.apply_deny(&forged).is_err());
        assert_eq!(t.deny_version(), 0);
        let applied = t.apply_deny(&list).unwrap();
        assert_eq!((applied.applied, applied.version), (3, 3));
        t.open_counter(T0);
        let r = t.redeem_until(T0 + (2.0 * HOUR) as i64, &model, &mut rng);
        assert_eq!((r.redemptions, t.head_seq()), (0, 0), "{r:?}");
        // Entries at or below the applied version are refused as a replay.
        list.entries.truncate(1);
        assert!(t.apply_deny(&list).is_err());
    }

    #[test]
    fn a_lost_ack_is_resumed_from_the_servers_head_without_sending_anything_twice() {
        let mut t = terminal();
        let mut rng = SmallRng::seed_from_u64(2);
        t.open_counter(T0);
        t.redeem_until(T0 + (2.0 * HOUR) as i64, &busy(), &mut rng);
        let head = t.head_seq();
        assert!(head > 10);
        let (batch, records) = t.next_batch().unwrap();
        assert_eq!((batch.from_seq, batch.through_seq), (1, head));
        assert_eq!(records.len() as u64, head);
        // The server stored the batch but its answer was lost: nothing is acknowledged yet.
        assert_eq!(t.acked_seq(), 0);
        // Meanwhile more records were made.
        t.redeem_until(T0 + (3.0 * HOUR) as i64, &busy(), &mut rng);
        // The next pass reads the head: the server holds through `head` with our MAC there.
        assert_eq!(t.resume(&ack_of(&t, head)), Ok(Some(head)));
        let (next, _) = t.next_batch().unwrap();
        assert_eq!(
            next.from_seq,
            head + 1,
            "records the server holds are not sent again"
        );
        assert_eq!(
            t.apply_ack(next, &ack_of(&t, next.through_seq)),
            Ok(Next::Acknowledged {
                mark_synced: next.through_seq
            })
        );
        assert!(t.next_batch().is_none());

        // A head naming another record at a seq the terminal holds: a fork, uploading halts.
        let mut forked = ack_of(&t, 3);
        forked.acknowledged_mac = Some([0xee; 32]);
        let mut u = terminal();
        u.open_counter(T0);
        u.redeem_until(T0 + (2.0 * HOUR) as i64, &busy(), &mut rng);
        assert_eq!(u.resume(&forked), Err(Divergence::Forked { seq: 3 }));
        assert!(u.halted.is_some());
        // An acknowledgement with a MAC that is not the one sent is refused and records nothing.
        let mut v = terminal();
        v.open_counter(T0);
        v.redeem_until(T0 + (2.0 * HOUR) as i64, &busy(), &mut rng);
        let (b, _) = v.next_batch().unwrap();
        let bad = ServerHead {
            acknowledged_seq: b.through_seq,
            acknowledged_mac: Some([1; 32]),
        };
        assert!(v.apply_ack(b, &bad).is_err());
        assert_eq!(v.acked_seq(), 0);
    }

    #[test]
    fn an_ended_business_day_is_closed_once_with_its_totals_after_its_records_are_acknowledged() {
        let mut t = terminal();
        let mut rng = SmallRng::seed_from_u64(3);
        // Business day D in UTC+8: redemptions from 20:00 to 02:00 the next day.
        let d = business_day(T0, 480);
        let evening = day_window(d, 480).0 + (20.0 * HOUR) as i64;
        let every_ten_minutes = CounterModel {
            events_per_ms: 1.0 / 600_000.0,
            ..busy()
        };
        t.open_counter(evening);
        t.redeem_until(evening + (6.0 * HOUR) as i64, &every_ten_minutes, &mut rng);
        let now = evening + (6.0 * HOUR) as i64;
        // Nothing acknowledged yet: nothing to close.
        assert!(t.closes_due(now).is_empty());
        let (batch, _) = t.next_batch().unwrap();
        t.apply_ack(batch, &ack_of(&t, batch.through_seq)).unwrap();
        let closes = t.closes_due(now);
        assert_eq!(closes.len(), 1, "day D ended, day D+1 is today");
        let c = &closes[0];
        assert_eq!(c.business_date, format_date(d));
        let in_day: Vec<&JournalRecord> = t
            .records()
            .iter()
            .filter(|r| business_day(r.wall_ms, 480) == d)
            .collect();
        assert_eq!(c.first_seq, 1);
        assert_eq!(c.through_seq, in_day.last().unwrap().seq);
        let net: i64 = c.items.iter().map(|i| i.net_amount_fen).sum();
        let want: i64 = in_day
            .iter()
            .map(|r| match r.kind {
                RecordKind::Void => -(r.amount_fen as i64),
                _ => r.amount_fen as i64,
            })
            .sum();
        assert_eq!(net, want);
        t.record_close(c);
        assert!(t.closes_due(now).is_empty(), "a day is closed once");
        // The next day, once it has ended, is closed from the record after.
        let later = t.closes_due(now + (24.0 * HOUR) as i64);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].first_seq, c.through_seq + 1);
    }
}
