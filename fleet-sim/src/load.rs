//! Which terminal passes when, on one tokio runtime: terminals are plain state ([`SimTerminal`]),
//! each pass a task that takes its terminal and gives it back when done, so no terminal ever runs two
//! passes at once and no terminal needs a thread or a timer of its own.
//!
//! * [`Schedule::Interval`] — the fleet as deployed: every terminal passes every interval like the
//!   daemon (the next pass an interval after the last one ended, ± jitter; after a failed pass the
//!   daemon's backoff, never sooner than `Retry-After`). The first passes are spread evenly over the
//!   first interval.
//! * [`Schedule::Rate`] — open loop: passes arrive at a fixed rate (Poisson arrivals), each given to
//!   the terminal idle the longest, whatever the answers were; an arrival that finds every terminal
//!   busy is counted, not queued. This is how a ceiling is found: the offered rate does not bend to
//!   the server's answers.
//!
//! A run is a sequence of phases ([`Fleet::run_phase`]); each pass is folded into the metrics of the
//! phase it started in. Server and simulator CPU are read at each phase's ends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use redeemd::store::owner::wall_clock_ms;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, PassLog};
use crate::pass::{After, PassConfig, SimTerminal, next_delay_ms, pass};
use crate::probe;
use crate::terminal::poisson_gap;

/// How passes are offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Interval { interval: Duration, jitter: f64 },
    Rate { per_sec: f64 },
}

impl Schedule {
    /// Passes per second offered by `terminals` terminals.
    pub fn offered(&self, terminals: usize) -> f64 {
        match self {
            Schedule::Interval { interval, .. } => {
                terminals as f64 / interval.as_secs_f64().max(1e-3)
            }
            Schedule::Rate { per_sec } => *per_sec,
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub name: String,
    pub schedule: Schedule,
    pub offered_per_sec: f64,
    pub wall: Duration,
    pub metrics: Metrics,
    /// CPU seconds the server used during the phase (when its pid is known).
    pub server_cpu_s: Option<f64>,
    pub sim_cpu_s: Option<f64>,
}

impl PhaseResult {
    pub fn achieved_per_sec(&self) -> f64 {
        self.metrics.passes as f64 / self.wall.as_secs_f64().max(1e-3)
    }

    /// Server CPU per pass, ms.
    pub fn server_cpu_per_pass_ms(&self) -> Option<f64> {
        let passes = self.metrics.passes.max(1) as f64;
        self.server_cpu_s.map(|s| s * 1000.0 / passes)
    }

    pub fn sim_cpu_per_pass_ms(&self) -> Option<f64> {
        let passes = self.metrics.passes.max(1) as f64;
        self.sim_cpu_s.map(|s| s * 1000.0 / passes)
    }
}

/// A pass that came back.
struct Done {
    idx: usize,
    phase: usize,
    terminal: Box<SimTerminal>,
    log: PassLog,
    after: After,
}

/// The fleet and its scheduler.
pub struct Fleet {
    slots: Vec<Option<Box<SimTerminal>>>,
    cfg: Arc<PassConfig>,
    tasks: JoinSet<Done>,
    /// Interval schedule: when each idle terminal passes next.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Rate schedule: idle terminals, the one idle longest first.
    idle: VecDeque<usize>,
    rng: SmallRng,
    server_pid: Option<u32>,
    /// The schedule passes are rescheduled by when they come back.
    current: Option<Schedule>,
}

/// A pass task ended without giving its terminal back (a panic): the run cannot account for it.
#[derive(Debug, thiserror::Error)]
#[error("a pass task failed: {0}")]
pub struct LostPass(String);

impl Fleet {
    pub fn new(
        terminals: Vec<SimTerminal>,
        cfg: PassConfig,
        seed: u64,
        server_pid: Option<u32>,
    ) -> Fleet {
        Fleet {
            slots: terminals.into_iter().map(|t| Some(Box::new(t))).collect(),
            cfg: Arc::new(cfg),
            tasks: JoinSet::new(),
            due: BinaryHeap::new(),
            idle: VecDeque::new(),
            rng: SmallRng::seed_from_u64(seed),
            server_pid,
            current: None,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn config(&self) -> &PassConfig {
        &self.cfg
    }

    /// The terminals (all of them are home when no pass is in flight).
    pub fn terminals(&self) -> impl Iterator<Item = &SimTerminal> {
        self.slots.iter().flatten().map(|b| b.as_ref())
    }

    pub fn terminals_mut(&mut self) -> impl Iterator<Item = &mut SimTerminal> {
        self.slots.iter_mut().flatten().map(|b| b.as_mut())
    }

    /// CPU seconds used so far by the server (when its pid is known) and by this process.
    fn cpu(&self) -> (Option<f64>, Option<f64>) {
        (
            self.server_pid.and_then(|p| probe::cpu_seconds(p).ok()),
            probe::own_cpu_seconds().ok(),
        )
    }

    /// A phase is over: its wall time and the CPU used since `cpu` was read at its start.
    fn close_phase(
        &self,
        r: &mut PhaseResult,
        start: Instant,
        (server0, sim0): (Option<f64>, Option<f64>),
    ) {
        let (server1, sim1) = self.cpu();
        r.wall = start.elapsed();
        r.server_cpu_s = server0.zip(server1).map(|(a, b)| b - a);
        r.sim_cpu_s = sim0.zip(sim1).map(|(a, b)| b - a);
    }

    fn spawn(&mut self, idx: usize, phase: usize) {
        let Some(mut terminal) = self.slots.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let cfg = self.cfg.clone();
        self.tasks.spawn(async move {
            let (log, after) = pass(&mut terminal, &cfg).await;
            Done {
                idx,
                phase,
                terminal,
                log,
                after,
            }
        });
    }

    /// Takes a pass back: its terminal home, its log into its phase, its next pass scheduled.
    fn on_done(
        &mut self,
        joined: Result<Done, tokio::task::JoinError>,
        results: &mut [PhaseResult],
    ) -> Result<(), LostPass> {
        let done = joined.map_err(|e| LostPass(e.to_string()))?;
        let Done {
            idx,
            phase,
            mut terminal,
            log,
            after,
        } = done;
        if let Some(r) = results.get_mut(phase) {
            r.metrics.record_pass(&log);
        }
        match self.current {
            Some(Schedule::Interval { interval, jitter }) => {
                let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
                let mut delay = next_delay_ms(&mut terminal, after, interval_ms) as f64;
                if after == After::Interval && jitter > 0.0 {
                    delay *= 1.0 + self.rng.random_range(-jitter..=jitter);
                }
                let at = Instant::now() + Duration::from_millis(delay.max(0.0) as u64);
                self.due.push(Reverse((at, idx)));
            }
            Some(Schedule::Rate { .. }) => self.idle.push_back(idx),
            None => {}
        }
        if let Some(slot) = self.slots.get_mut(idx) {
            *slot = Some(terminal);
        }
        Ok(())
    }

    /// Runs one phase of `duration` with `schedule`; its result is appended to `results`. Passes
    /// still running at its end go on (they are folded into this phase when they return). Returns
    /// early when `stop` resolves.
    pub async fn run_phase(
        &mut self,
        name: &str,
        schedule: Schedule,
        duration: Duration,
        results: &mut Vec<PhaseResult>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), LostPass> {
        let k = results.len();
        let cpu = self.cpu();
        let start = Instant::now();
        let end = start + duration;
        results.push(PhaseResult {
            name: name.to_owned(),
            schedule,
            offered_per_sec: schedule.offered(self.slots.len()),
            wall: Duration::ZERO,
            metrics: Metrics::default(),
            server_cpu_s: None,
            sim_cpu_s: None,
        });
        let home: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .collect();
        match schedule {
            Schedule::Interval { interval, .. } => {
                if self.current != Some(schedule) {
                    // The terminals at home pass first, spread evenly over one interval.
                    self.due.clear();
                    let n = home.len().max(1) as f64;
                    for (i, idx) in home.iter().enumerate() {
                        let at = (i as f64 + self.rng.random::<f64>()) / n;
                        self.due.push(Reverse((start + interval.mul_f64(at), *idx)));
                    }
                    self.idle.clear();
                }
            }
            Schedule::Rate { .. } => {
                self.due.clear();
                let queued: std::collections::HashSet<usize> = self.idle.iter().copied().collect();
                self.idle
                    .extend(home.into_iter().filter(|i| !queued.contains(i)));
            }
        }
        self.current = Some(schedule);
        let mut next_arrival = start;
        loop {
            let next = match schedule {
                Schedule::Interval { .. } => self.due.peek().map(|r| r.0.0),
                Schedule::Rate { .. } => Some(next_arrival),
            };
            let wake = next.map_or(end, |t| t.min(end));
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.on_done(joined, results)?;
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    match schedule {
                        Schedule::Interval { .. } => {
                            while let Some(Reverse((at, idx))) = self.due.peek().copied()
                                && at <= now
                            {
                                self.due.pop();
                                self.spawn(idx, k);
                            }
                        }
                        Schedule::Rate { per_sec } => {
                            while next_arrival <= now {
                                match self.idle.pop_front() {
                                    Some(idx) => self.spawn(idx, k),
                                    None => results[k].metrics.arrivals_without_terminal += 1,
                                }
                                let gap = poisson_gap(&mut self.rng, per_sec);
                                next_arrival += Duration::from_secs_f64(gap.min(3600.0));
                            }
                        }
                    }
                }
            }
        }
        self.close_phase(&mut results[k], start, cpu);
        Ok(())
    }

    /// Waits for every pass in flight and folds it into its phase; schedules nothing new.
    pub async fn wait_in_flight(&mut self, results: &mut [PhaseResult]) -> Result<(), LostPass> {
        self.current = None;
        while let Some(joined) = self.tasks.join_next().await {
            self.on_done(joined, results)?;
        }
        self.due.clear();
        self.idle.clear();
        Ok(())
    }

    /// The end of a run: counters closed, then passes for every terminal with records not yet
    /// acknowledged or a day to close, `parallel` at once, up to `rounds` times. The passes are a
    /// phase of their own ("drain").
    pub async fn drain(
        &mut self,
        results: &mut Vec<PhaseResult>,
        parallel: usize,
        rounds: usize,
    ) -> Result<(), LostPass> {
        self.wait_in_flight(results).await?;
        for t in self.terminals_mut() {
            t.terminal.close_counter();
        }
        let k = results.len();
        let cpu = self.cpu();
        let start = Instant::now();
        results.push(PhaseResult {
            name: "drain".into(),
            schedule: Schedule::Rate { per_sec: 0.0 },
            offered_per_sec: 0.0,
            wall: Duration::ZERO,
            metrics: Metrics::default(),
            server_cpu_s: None,
            sim_cpu_s: None,
        });
        for _ in 0..rounds {
            let now = wall_clock_ms();
            let todo: Vec<usize> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let t = s.as_ref()?;
                    let owes = t.pending_records() > 0 || !t.terminal.closes_due(now).is_empty();
                    (owes && t.terminal.halted.is_none()).then_some(i)
                })
                .collect();
            if todo.is_empty() {
                break;
            }
            let mut todo = todo.into_iter();
            loop {
                while self.tasks.len() < parallel.max(1) {
                    let Some(idx) = todo.next() else { break };
                    self.spawn(idx, k);
                }
                let Some(joined) = self.tasks.join_next().await else {
                    break;
                };
                self.on_done(joined, results)?;
            }
        }
        self.close_phase(&mut results[k], start, cpu);
        Ok(())
    }

    /// Runs `f` on every terminal, `parallel` at once (e.g. reading the server's head of each).
    pub async fn for_each<T, F, Fut>(&mut self, parallel: usize, f: F) -> Vec<T>
    where
        T: Send + 'static,
        F: Fn(Box<SimTerminal>, Arc<PassConfig>) -> Fut,
        Fut: std::future::Future<Output = (Box<SimTerminal>, T)> + Send + 'static,
    {
        let mut set: JoinSet<(usize, Box<SimTerminal>, T)> = JoinSet::new();
        let mut out = Vec::with_capacity(self.slots.len());
        let mut next = 0;
        loop {
            while set.len() < parallel.max(1) && next < self.slots.len() {
                if let Some(t) = self.slots[next].take() {
                    let fut = f(t, self.cfg.clone());
                    let idx = next;
                    set.spawn(async move {
                        let (t, v) = fut.await;
                        (idx, t, v)
                    });
                }
                next += 1;
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            if let Ok((idx, t, v)) = joined {
                self.slots[idx] = Some(t);
                out.push(v);
            }
        }
        out
    }
}
