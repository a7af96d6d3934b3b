//! `fleet-sim run`: enrolls the run's terminals, runs the load's phases, drains, reconciles, and
//! prints (and optionally writes as JSON) what was measured.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use redeemd::store::owner::wall_clock_ms;
use redeemd_contract::TerminalSecret;
use serde::Serialize;

use crate::http::{Http, KeepAlive, Target};
use crate::load::{Fleet, PhaseResult, Schedule};
use crate::metrics::{CloseVerdict, Tally};
use crate::pass::{PassConfig, SimTerminal, server_head};
use crate::platform::{Admin, SetupRecord, card_number};
use crate::probe::{self, DbSize};
use crate::reconcile::{self, Expected, Reconciliation};
use crate::terminal::{CounterModel, Terminal, offset_with_midnight_at, poisson_gap};

/// How business days end for the simulated terminals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DayEnd {
    /// Each terminal's day ends at a random minute of the next 24 hours (its UTC offset chosen so):
    /// closes come at a fleet's real rate, one a terminal a day, spread over the day.
    Day,
    /// Each terminal's day ends at a random minute of the run: a run of minutes closes a day at
    /// most terminals (far more closes a second than a fleet makes).
    Run,
    /// Every terminal in China Standard Time (UTC+8): every day ends at midnight there, all at once.
    Cst,
}

/// How terminals start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Start {
    /// No cache: a full snapshot at each terminal's first pass (first contact).
    Cold,
    /// One terminal takes a full snapshot; the others start as if they held a cache a few versions
    /// older than its (`--warm-versions`), so their first answer is a delta: a fleet in steady state.
    Warm,
}

/// The load's shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Every terminal every interval, measured for a duration after a warm-up.
    Fleet,
    /// Open-loop arrivals at a fixed rate.
    Rate(f64),
    /// Open-loop steps from `start`, `by` more each step, until the worst p99 passes the limit.
    Step {
        start: f64,
        by: f64,
        step: Duration,
        max: f64,
    },
}

/// Everything `fleet-sim run` was told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dir: PathBuf,
    pub server: String,
    pub admin: Admin,
    pub terminals: usize,
    pub terminals_per_merchant: usize,
    pub mode: Mode,
    pub interval: Duration,
    pub jitter: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub p99_limit_ms: f64,
    pub redemptions_per_day: f64,
    pub void_ratio: f64,
    pub two_line_ratio: f64,
    pub loss_reports_per_min: f64,
    pub day_end: DayEnd,
    pub backlog: Duration,
    pub start: Start,
    pub warm_versions: u64,
    pub pool_cards: usize,
    pub keep_alive: KeepAlive,
    pub drop_ack_ratio: f64,
    pub verify_ratio: f64,
    pub seed: u64,
    pub run_id: String,
    pub server_pid: Option<u32>,
    pub db_size: Option<DbSize>,
    pub reconcile: bool,
    /// Send the daemon's health report at the end of every pass.
    pub health: bool,
    pub json: Option<PathBuf>,
}

/// Passes run at once while draining and reading heads at the end.
const END_PARALLEL: usize = 64;

/// A row of the JSON summary's endpoint tables.
#[derive(Debug, Serialize)]
struct EndpointJson {
    endpoint: &'static str,
    count: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct ErrorJson {
    endpoint: &'static str,
    kind: String,
    count: u64,
    first: String,
}

#[derive(Debug, Serialize)]
struct PhaseJson {
    name: String,
    offered_passes_per_s: f64,
    achieved_passes_per_s: f64,
    wall_s: f64,
    passes: u64,
    passes_failed: u64,
    worst_p99_ms: f64,
    endpoints: Vec<EndpointJson>,
    errors: Vec<ErrorJson>,
    unavailable: u64,
    unavailable_with_retry_after: u64,
    arrivals_without_terminal: u64,
    server_cpu_ms_per_pass: Option<f64>,
    simulator_cpu_ms_per_pass: Option<f64>,
    #[serde(flatten)]
    tally: Tally,
    redemptions: u64,
    voids: u64,
    closes: std::collections::BTreeMap<&'static str, u64>,
    loss_reports_applied: u64,
    loss_report_max_delay_ms: Option<f64>,
}

/// What `--json` writes.
#[derive(Debug, Serialize)]
pub struct Summary {
    run_id: String,
    server: String,
    terminals: usize,
    merchants: usize,
    cards: u64,
    phases: Vec<PhaseJson>,
    ceiling_passes_per_s: Option<f64>,
    db_bytes_before: Option<u64>,
    db_bytes_after: Option<u64>,
    simulator_peak_rss_bytes: Option<u64>,
    loss_reports: u64,
    loss_report_failures: Vec<String>,
    reconciliation: Option<Reconciliation>,
}

impl Summary {
    /// Exit status of the run: 0 reconciled (or not asked), 3 a difference found.
    pub fn exit_code(&self) -> u8 {
        match &self.reconciliation {
            Some(r) if !r.exact() => 3,
            _ => 0,
        }
    }
}

fn phase_json(p: &PhaseResult) -> PhaseJson {
    let m = &p.metrics;
    PhaseJson {
        name: p.name.clone(),
        offered_passes_per_s: p.offered_per_sec,
        achieved_passes_per_s: p.achieved_per_sec(),
        wall_s: p.wall.as_secs_f64(),
        passes: m.passes,
        passes_failed: m.passes_failed,
        worst_p99_ms: m.worst_p99_ms(),
        endpoints: m
            .endpoints()
            .into_iter()
            .map(|(e, l)| EndpointJson {
                endpoint: e.label(),
                count: l.count,
                errors: l.errors,
                p50_ms: l.p50_ms,
                p99_ms: l.p99_ms,
                max_ms: l.max_ms,
            })
            .collect(),
        errors: m
            .errors()
            .into_iter()
            .map(|(e, kind, count, first)| ErrorJson {
                endpoint: e.label(),
                kind,
                count,
                first,
            })
            .collect(),
        unavailable: m.unavailable,
        unavailable_with_retry_after: m.unavailable_with_retry_after,
        arrivals_without_terminal: m.arrivals_without_terminal,
        server_cpu_ms_per_pass: p.server_cpu_per_pass_ms(),
        simulator_cpu_ms_per_pass: p.sim_cpu_per_pass_ms(),
        tally: m.tally,
        redemptions: m.counter.redemptions,
        voids: m.counter.voids,
        closes: m
            .closes
            .iter()
            .map(|(v, n)| (verdict_name(*v), *n))
            .collect(),
        loss_reports_applied: m.deny_delivery().map_or(0, |d| d.0),
        loss_report_max_delay_ms: m.deny_delivery().map(|d| d.2),
    }
}

/// A step of the step mode is sustained: p99 within the limit, (almost) every offered pass done
/// and clean.
/// Why a step was not sustained (empty: it was). A step whose arrivals found every terminal busy
/// says so: that is the fleet's size, not the server.
fn unsustained(p: &PhaseResult, p99_limit_ms: f64) -> Vec<String> {
    let m = &p.metrics;
    let mut why = Vec::new();
    if m.worst_p99_ms() > p99_limit_ms {
        why.push(format!(
            "p99 {:.0} ms > {p99_limit_ms} ms",
            m.worst_p99_ms()
        ));
    }
    if p.achieved_per_sec() < 0.95 * p.offered_per_sec {
        why.push(format!(
            "{:.0} % of the passes done",
            100.0 * p.achieved_per_sec() / p.offered_per_sec.max(1e-9)
        ));
    }
    if m.errors_total() > 0 {
        why.push(format!("{} errors", m.errors_total()));
    }
    if m.arrivals_without_terminal > 0 {
        why.push(format!(
            "{} arrivals found every terminal busy (more --terminals)",
            m.arrivals_without_terminal
        ));
    }
    why
}

/// The human-readable report of a phase.
fn phase_text(p: &PhaseResult, server_pid: Option<u32>) -> String {
    let m = &p.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== {} ({:.0} s): offered {:.1} passes/s, achieved {:.1} passes/s ({} passes, {} not clean)",
        p.name,
        p.wall.as_secs_f64(),
        p.offered_per_sec,
        p.achieved_per_sec(),
        m.passes,
        m.passes_failed
    );
    out.push_str(&m.table());
    if m.arrivals_without_terminal > 0 {
        let _ = writeln!(
            out,
            "  arrivals that found every terminal busy: {} (more terminals needed for this rate)",
            m.arrivals_without_terminal
        );
    }
    match (p.server_cpu_s, server_pid) {
        (Some(s), Some(pid)) => {
            let _ = writeln!(
                out,
                "  server CPU (pid {pid}): {s:.2} s = {:.2} ms a pass",
                p.server_cpu_per_pass_ms().unwrap_or(0.0)
            );
        }
        _ => {
            let _ = writeln!(out, "  server CPU: unknown (no server pid)");
        }
    }
    if let Some(s) = p.sim_cpu_s {
        let _ = writeln!(
            out,
            "  simulator CPU: {s:.2} s = {:.2} ms a pass",
            p.sim_cpu_per_pass_ms().unwrap_or(0.0)
        );
    }
    let c = &m.counter;
    let _ = writeln!(
        out,
        "  counter: {} redemptions ({} lines), {} voids, {} without a usable card; {} records acknowledged",
        c.redemptions, c.lines, c.voids, c.no_card, m.tally.records_uploaded
    );
    let t = &m.tally;
    if t.bundles_verified + t.bundles_light > 0 {
        let _ = writeln!(
            out,
            "  bundles installed: {} ({} entries): {} verified entry by entry, {} by frames and signed manifest",
            t.bundles_verified + t.bundles_light,
            t.bundle_entries,
            t.bundles_verified,
            t.bundles_light
        );
    }
    if t.acks_dropped > 0 || t.acks_resumed > 0 {
        let _ = writeln!(
            out,
            "  acknowledgements dropped on purpose: {}; records found acknowledged at the head: {}",
            t.acks_dropped, t.acks_resumed
        );
    }
    if let Some((n, p50, max)) = m.deny_delivery() {
        let _ = writeln!(
            out,
            "  loss reports applied by terminals: {n} (report → terminal p50 {:.1} s, max {:.1} s)",
            p50 / 1000.0,
            max / 1000.0
        );
    }
    if !m.closes.is_empty() {
        let closes: Vec<String> = m
            .closes
            .iter()
            .map(|(v, n)| format!("{n} {}", verdict_name(*v)))
            .collect();
        let _ = writeln!(out, "  batch closes: {}", closes.join(", "));
    }
    out
}

fn verdict_name(v: CloseVerdict) -> &'static str {
    match v {
        CloseVerdict::Matched => "matched",
        CloseVerdict::Mismatched => "mismatched",
        CloseVerdict::Conflict => "conflict",
        CloseVerdict::Refused => "refused",
    }
}

/// A flag value as typed on the command line (`cold`, `per-pass`).
fn flag_name(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_owned())
}

fn merchant_of(run_id: &str, index: usize, per_merchant: usize) -> String {
    format!("{run_id}-M{:05}", index / per_merchant.max(1))
}

fn terminal_of(run_id: &str, index: usize) -> String {
    format!("{run_id}-T{index:05}")
}

/// Enrolls the run's terminals and builds them.
async fn enroll(o: &RunOptions) -> Result<Vec<SimTerminal>, String> {
    let keys_dir = o.dir.join("runs").join(&o.run_id);
    std::fs::create_dir_all(&keys_dir).map_err(|e| format!("{}: {e}", keys_dir.display()))?;
    let ids: Vec<(String, String, PathBuf)> = (0..o.terminals)
        .map(|i| {
            let t = terminal_of(&o.run_id, i);
            let key = keys_dir.join(format!("{t}.key"));
            (t, merchant_of(&o.run_id, i, o.terminals_per_merchant), key)
        })
        .collect();
    eprintln!(
        "fleet-sim: enrolling {} terminals for run {} (keys in {})",
        o.terminals,
        o.run_id,
        keys_dir.display()
    );
    let enrolling = std::time::Instant::now();
    let jobs = ids
        .iter()
        .map(|(t, m, k)| vec![Admin::enroll_args(t, m, k)])
        .collect();
    o.admin
        .run_all(jobs, |n| eprintln!("fleet-sim: {n} terminals enrolled"))
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "fleet-sim: {} terminals enrolled in {:.1} s",
        o.terminals,
        enrolling.elapsed().as_secs_f64()
    );
    let run_start = wall_clock_ms();
    let backlog_ms = i64::try_from(o.backlog.as_millis()).unwrap_or(i64::MAX);
    let run_ms = i64::try_from((o.warmup + o.duration).as_millis()).unwrap_or(i64::MAX);
    let mut rng = SmallRng::seed_from_u64(o.seed);
    let mut out = Vec::with_capacity(ids.len());
    for (i, (terminal_id, merchant_id, key_file)) in ids.into_iter().enumerate() {
        let text = std::fs::read_to_string(&key_file)
            .map_err(|e| format!("{}: {e}", key_file.display()))?;
        let secret = TerminalSecret::from_hex_text(&text)
            .map_err(|e| format!("{}: {e}", key_file.display()))?;
        let mut day_end_within = |span_ms: i64| {
            offset_with_midnight_at(run_start - backlog_ms + rng.random_range(0..=span_ms.max(0)))
        };
        let offset = match o.day_end {
            DayEnd::Cst => 480,
            DayEnd::Run => day_end_within(backlog_ms + run_ms),
            DayEnd::Day => day_end_within(86_400_000 - 60_000),
        };
        let mut t = Terminal::new(
            secret.derive_all(&terminal_id),
            &merchant_id,
            offset,
            0,
            o.pool_cards,
            run_start,
        );
        t.open_counter_after_install(backlog_ms);
        out.push(SimTerminal::new(
            t,
            o.seed
                .wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        ));
    }
    Ok(out)
}

/// Issues "a few loss reports a minute" until told to stop: (reports made, failures).
async fn report_losses(
    admin: Admin,
    setup: SetupRecord,
    per_min: f64,
    seed: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, Vec<String>) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x10_55);
    let (mut made, mut failures) = (0, Vec::new());
    if per_min <= 0.0 || setup.cards == 0 {
        return (made, failures);
    }
    loop {
        let gap = Duration::from_secs_f64(poisson_gap(&mut rng, per_min / 60.0).min(3600.0));
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(gap) => {}
        }
        let number = card_number(&setup.card_prefix, rng.random_range(0..setup.cards));
        match admin.report_lost(&number).await {
            Ok(()) => made += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    (made, failures)
}

/// Runs the whole thing; prints as it goes; returns the summary.
pub async fn run(o: RunOptions) -> Result<Summary, String> {
    let setup =
        SetupRecord::load(&o.dir).map_err(|e| format!("{e} (run `fleet-sim setup` first)"))?;
    let target = Target::parse(&o.server)?;
    let server_pid = match o.server_pid {
        Some(p) => Some(p),
        None => probe::pid_listening_on(target.addr.port()).ok().flatten(),
    };
    let db_size = o
        .db_size
        .clone()
        .unwrap_or_else(|| DbSize::of_db(&o.admin.db));
    let db_before = db_size.measure().await;
    let mut terminals = enroll(&o).await?;
    let merchants = o.terminals.div_ceil(o.terminals_per_merchant.max(1));
    let counter = CounterModel {
        events_per_ms: o.redemptions_per_day / (o.terminals.max(1) as f64) / 86_400_000.0,
        void_ratio: o.void_ratio,
        two_line_ratio: o.two_line_ratio,
    };
    let cfg = PassConfig {
        http: Http::new(target),
        counter,
        drop_ack_ratio: o.drop_ack_ratio,
        verify_ratio: o.verify_ratio,
        keep_alive: o.keep_alive,
        health_interval_secs: o.health.then(|| o.interval.as_secs().max(1)),
    };
    println!(
        "fleet-sim run {}: {} terminals ({merchants} merchants), {} cards, {}",
        o.run_id, o.terminals, setup.cards, o.server
    );
    println!(
        "load: {:.0} redemptions a day (voids {:.0} %, two lines {:.0} %), {} loss reports a minute, {} start, days end {}, connections {}, server pid {}",
        o.redemptions_per_day,
        o.void_ratio * 100.0,
        o.two_line_ratio * 100.0,
        o.loss_reports_per_min,
        flag_name(&o.start),
        flag_name(&o.day_end),
        flag_name(&o.keep_alive),
        server_pid.map_or_else(|| "unknown".into(), |p| p.to_string())
    );
    let mut results: Vec<PhaseResult> = Vec::new();
    // A warm start: the first terminal's full snapshot tells the platform's current version.
    if o.start == Start::Warm
        && let Some(first) = terminals.first_mut()
    {
        let started = std::time::Instant::now();
        let server0 = server_pid.and_then(|p| probe::cpu_seconds(p).ok());
        let sim0 = probe::own_cpu_seconds().ok();
        let (log, _) = crate::pass::pass(first, &cfg).await;
        let server1 = server_pid.and_then(|p| probe::cpu_seconds(p).ok());
        let sim1 = probe::own_cpu_seconds().ok();
        let mut phase = PhaseResult {
            name: "first contact".into(),
            schedule: Schedule::Rate { per_sec: 0.0 },
            offered_per_sec: 0.0,
            wall: started.elapsed(),
            metrics: Default::default(),
            server_cpu_s: server0.zip(server1).map(|(a, b)| b - a),
            sim_cpu_s: sim0.zip(sim1).map(|(a, b)| b - a),
        };
        phase.metrics.record_pass(&log);
        let version = first.terminal.cache_version();
        if version == 0 {
            print!("{}", phase_text(&phase, server_pid));
            return Err(
                "warm start: the first terminal got no snapshot (see its errors above)".into(),
            );
        }
        let from = version.saturating_sub(o.warm_versions).max(1);
        println!(
            "warm start: first snapshot version {version} ({} pooled cards); the others start from version {from}",
            first.terminal.pool().len()
        );
        results.push(phase);
        for t in terminals.iter_mut().skip(1) {
            t.terminal.start_from_version(from);
        }
    }
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("fleet-sim: interrupted: draining and reconciling what was done");
                let _ = stop_tx.send(true);
            }
        });
    }
    let losses = tokio::spawn(report_losses(
        o.admin.clone(),
        setup.clone(),
        o.loss_reports_per_min,
        o.seed,
        stop.clone(),
    ));
    let mut fleet = Fleet::new(terminals, cfg, o.seed, server_pid);
    let interval = Schedule::Interval {
        interval: o.interval,
        jitter: o.jitter,
    };
    let lost = |e: crate::load::LostPass| e.to_string();
    let mut ceiling = None;
    match &o.mode {
        Mode::Fleet | Mode::Rate(_) => {
            let schedule = match o.mode {
                Mode::Rate(per_sec) => Schedule::Rate { per_sec },
                _ => interval,
            };
            for (name, duration) in [("warm-up", o.warmup), ("measured", o.duration)] {
                if duration.is_zero() || *stop.borrow() {
                    continue;
                }
                fleet
                    .run_phase(name, schedule, duration, &mut results, &mut stop)
                    .await
                    .map_err(lost)?;
                if name == "measured" {
                    fleet.wait_in_flight(&mut results).await.map_err(lost)?;
                }
                progress(&results);
            }
        }
        Mode::Step {
            start,
            by,
            step,
            max,
        } => {
            if !o.warmup.is_zero() {
                fleet
                    .run_phase("warm-up", interval, o.warmup, &mut results, &mut stop)
                    .await
                    .map_err(lost)?;
                fleet.wait_in_flight(&mut results).await.map_err(lost)?;
                progress(&results);
            }
            println!(
                "== steps of {:.0} s (sustained: worst p99 ≤ {} ms, ≥ 95 % of the offered passes done, no error)",
                step.as_secs_f64(),
                o.p99_limit_ms
            );
            println!(
                "  {:>9} {:>9} {:>8} {:>7} {:>11} {:>12} {:>11}  verdict",
                "offered/s",
                "done/s",
                "passes",
                "errors",
                "503 (no RA)",
                "worst p99 ms",
                "server ms/p"
            );
            let mut rate = *start;
            while rate <= *max && !*stop.borrow() {
                fleet
                    .run_phase(
                        &format!("step {rate:.0}/s"),
                        Schedule::Rate { per_sec: rate },
                        *step,
                        &mut results,
                        &mut stop,
                    )
                    .await
                    .map_err(lost)?;
                fleet.wait_in_flight(&mut results).await.map_err(lost)?;
                let p = results.last().ok_or("no phase")?;
                let why = unsustained(p, o.p99_limit_ms);
                let m = &p.metrics;
                println!(
                    "  {:>9.1} {:>9.1} {:>8} {:>7} {:>11} {:>12.1} {:>11}  {}",
                    p.offered_per_sec,
                    p.achieved_per_sec(),
                    m.passes,
                    m.errors_total(),
                    format!(
                        "{} ({})",
                        m.unavailable,
                        m.unavailable - m.unavailable_with_retry_after
                    ),
                    m.worst_p99_ms(),
                    p.server_cpu_per_pass_ms()
                        .map_or_else(|| "?".into(), |c| format!("{c:.2}")),
                    if why.is_empty() {
                        "sustained".to_owned()
                    } else {
                        format!("NOT sustained: {}", why.join(", "))
                    }
                );
                if !why.is_empty() {
                    break;
                }
                ceiling = Some(rate);
                rate += by;
            }
            match ceiling {
                Some(c) => println!("ceiling: {c:.0} passes/s (the highest step sustained)"),
                None => println!("ceiling: none (the first step was not sustained)"),
            }
        }
    }
    let _ = stop_tx.send(true);
    let (loss_reports, loss_failures) = losses.await.unwrap_or_default();
    fleet
        .drain(&mut results, END_PARALLEL, 3)
        .await
        .map_err(lost)?;
    progress(&results);
    // Every phase complete now (passes are folded into the phase they started in): print them.
    let last_step = results
        .iter()
        .rev()
        .find(|r| r.name.starts_with("step "))
        .map(|r| r.name.clone());
    for p in &results {
        let shown = match p.name.as_str() {
            "drain" => p.metrics.passes > 0,
            // Steps are in the step table; the last one (the one not sustained) also in full.
            n if n.starts_with("step ") => Some(n) == last_step.as_deref(),
            _ => true,
        };
        if shown {
            print!("{}", phase_text(p, server_pid));
        }
    }
    println!(
        "loss reports: {loss_reports} made through the admin command line{}",
        loss_failures
            .first()
            .map(|f| format!(", {} failed (first: {f})", loss_failures.len()))
            .unwrap_or_default()
    );
    if let Ok(rss) = probe::own_peak_rss_bytes() {
        println!(
            "simulator: peak memory {:.0} MB for {} terminals",
            rss as f64 / 1e6,
            o.terminals
        );
    }
    let db_after = db_size.measure().await;
    match (&db_before, &db_after) {
        (Ok(a), Ok(b)) => println!(
            "database: {:.1} MB before, {:.1} MB after ({:+.1} MB)",
            *a as f64 / 1e6,
            *b as f64 / 1e6,
            (*b as f64 - *a as f64) / 1e6
        ),
        (_, Err(e)) | (Err(e), _) => println!("database: size unknown: {e}"),
    }
    let reconciliation = if o.reconcile {
        let reconciling = std::time::Instant::now();
        let r = reconcile_run(&mut fleet, &o).await;
        eprintln!(
            "fleet-sim: reconciled in {:.1} s",
            reconciling.elapsed().as_secs_f64()
        );
        if r.exact() {
            println!(
                "reconciliation: EXACT — {} terminals: the server holds every record once, chained as sent ({} records); {} merchant statements equal what the terminals sent (net {} fen)",
                r.terminals, r.records, r.merchants, r.net_amount_fen
            );
        } else {
            println!(
                "reconciliation: FAILED — terminals {}/{} held as sent, statements {}/{} equal; {} problems:",
                r.terminals_ok,
                r.terminals,
                r.merchants_ok,
                r.merchants,
                r.problems.len()
            );
            for p in r.problems.iter().take(50) {
                println!("  {p}");
            }
        }
        Some(r)
    } else {
        None
    };
    let summary = Summary {
        run_id: o.run_id.clone(),
        server: o.server.clone(),
        terminals: o.terminals,
        merchants,
        cards: setup.cards,
        phases: results.iter().map(phase_json).collect(),
        ceiling_passes_per_s: ceiling,
        db_bytes_before: db_before.ok(),
        db_bytes_after: db_after.ok(),
        simulator_peak_rss_bytes: probe::own_peak_rss_bytes().ok(),
        loss_reports,
        loss_report_failures: loss_failures,
        reconciliation,
    };
    if let Some(path) = &o.json {
        let text = serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(summary)
}

/// A line on stderr when a phase is over (the figures are printed at the end, complete).
fn progress(results: &[PhaseResult]) {
    if let Some(p) = results.last() {
        eprintln!(
            "fleet-sim: {} over: {} passes in {:.0} s, {} errors",
            p.name,
            p.metrics.passes,
            p.wall.as_secs_f64(),
            p.metrics.errors_total()
        );
    }
}

/// Reads every terminal's head and every merchant's statement and compares them with what was sent.
async fn reconcile_run(fleet: &mut Fleet, o: &RunOptions) -> Reconciliation {
    let mut r = Reconciliation {
        terminals: fleet.len(),
        ..Reconciliation::default()
    };
    let heads = fleet
        .for_each(END_PARALLEL, |mut t, cfg| async move {
            let head = server_head(&mut t, &cfg).await;
            let problems = match &head {
                Ok(h) => reconcile::check_journal(&t.terminal, h),
                Err(e) => vec![format!(
                    "terminal {}: journal head: {e}",
                    t.terminal.terminal_id
                )],
            };
            (t, problems)
        })
        .await;
    if heads.len() != r.terminals {
        r.problems.push(format!(
            "{} terminals lost while reading heads",
            r.terminals - heads.len()
        ));
    }
    for problems in heads {
        if problems.is_empty() {
            r.terminals_ok += 1;
        }
        r.problems.extend(problems);
    }
    let mut by_merchant: std::collections::BTreeMap<String, Vec<&redeemd_contract::JournalRecord>> =
        std::collections::BTreeMap::new();
    for t in fleet.terminals() {
        r.records += t.terminal.head_seq();
        by_merchant
            .entry(t.terminal.merchant_id.clone())
            .or_default()
            .extend(t.terminal.records());
    }
    r.merchants = by_merchant.len();
    let expected: Vec<(String, Expected)> = by_merchant
        .into_iter()
        .map(|(m, recs)| (m, Expected::of(recs)))
        .collect();
    r.net_amount_fen = expected.iter().map(|(_, e)| e.net_amount_fen).sum();
    let mut set = tokio::task::JoinSet::new();
    let mut pending = expected.into_iter();
    loop {
        while set.len() < o.admin.parallel.max(1) {
            let Some((m, e)) = pending.next() else { break };
            let admin = o.admin.clone();
            set.spawn(async move {
                match admin.merchant_statement(&m).await {
                    Ok(s) => reconcile::compare(&e, &s),
                    Err(err) => vec![format!("merchant {m}: statement: {err}")],
                }
            });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok(problems) if problems.is_empty() => r.merchants_ok += 1,
            Ok(problems) => r.problems.extend(problems),
            Err(e) => r.problems.push(format!("a statement task failed: {e}")),
        }
    }
    r
}
