//! The `fleet-sim` command line: `setup` (cards on the platform) and `run` (a fleet's load, measured
//! and reconciled). See `fleet-sim/README.md`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use fleet_sim::http::KeepAlive;
use fleet_sim::platform::{Admin, CardIssue, SetupRecord};
use fleet_sim::probe::DbSize;
use fleet_sim::run::{DayEnd, Mode, RunOptions, Start};

#[derive(Parser)]
#[command(
    version,
    about = "Simulated redeemd terminals running real sync passes against a clearing server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Issue the fleet's cards on the platform (once per database) and write them as CSV.
    Setup(SetupArgs),
    /// Enroll a fleet of terminals, run its load against a server, print what was measured.
    Run(Box<RunArgs>),
}

/// How the platform's admin side is reached: `PROGRAM --db DB [ARG…] admin …`.
#[derive(Args, Clone)]
struct AdminArgs {
    /// The platform's database, as the clearing server's `--db` takes it (a SQLite path or a URL).
    #[arg(long)]
    db: String,
    /// The clearing-server program (default: the one beside fleet-sim, else from PATH).
    #[arg(long, value_name = "PATH")]
    clearing_server: Option<PathBuf>,
    /// An argument for every admin command, before `admin` (repeat; e.g. a master-key option).
    #[arg(long = "admin-arg", value_name = "ARG", allow_hyphen_values = true)]
    admin_args: Vec<String>,
    /// Admin commands run at once.
    #[arg(long, default_value_t = 4)]
    admin_parallel: usize,
}

impl AdminArgs {
    fn admin(&self) -> Admin {
        let program = self.clearing_server.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|me| me.with_file_name("clearing-server"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("clearing-server"))
        });
        Admin {
            program,
            db: self.db.clone(),
            global_args: self.admin_args.clone(),
            parallel: self.admin_parallel.max(1),
        }
    }
}

#[derive(Args)]
struct SetupArgs {
    /// The fleet's directory: setup.json, cards.csv, and each run's terminal keys.
    #[arg(long)]
    dir: PathBuf,
    /// Cards to issue.
    #[arg(long, default_value_t = 1_000_000)]
    cards: u64,
    /// The first digits of every card number.
    #[arg(long, default_value = "628899")]
    card_prefix: String,
    /// How cards reach the platform: the admin card commands, or a bulk import of cards.csv.
    #[arg(long, value_enum, default_value_t = CardIssue::Cli)]
    issue: CardIssue,
    /// With `--issue import`: imports of consecutive cards, one platform version each (a warm
    /// start's pools come from the last `--warm-versions` of them).
    #[arg(long, default_value_t = 1)]
    import_files: u64,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct RunArgs {
    /// The fleet's directory (made by `fleet-sim setup`).
    #[arg(long)]
    dir: PathBuf,
    /// The clearing server, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    server: String,
    #[command(flatten)]
    admin: AdminArgs,
    /// Terminals in the fleet (enrolled for this run).
    #[arg(long, default_value_t = 10_000)]
    terminals: usize,
    /// Terminals of one merchant.
    #[arg(long, default_value_t = 1)]
    terminals_per_merchant: usize,
    /// Seconds between a terminal's passes (the daemon's `sync.interval_secs`).
    #[arg(long, default_value_t = 60.0)]
    interval: f64,
    /// Each interval varies by up to this share either way.
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 300.0)]
    duration: f64,
    /// Seconds of warm-up before measuring (default: one interval; every terminal's first pass).
    #[arg(long)]
    warmup: Option<f64>,
    /// Open loop: passes a second, whatever the answers (instead of every terminal every interval).
    #[arg(long, conflicts_with = "step")]
    rate: Option<f64>,
    /// Step mode: START,BY passes a second — raise the rate each step until a step is not
    /// sustained (worst p99 above --p99-limit-ms, passes not done, or errors); prints the ceiling.
    #[arg(long, value_name = "START,BY")]
    step: Option<String>,
    /// Seconds per step.
    #[arg(long, default_value_t = 60.0)]
    step_secs: f64,
    /// Highest rate a step offers.
    #[arg(long, default_value_t = 100_000.0)]
    step_max: f64,
    /// The p99 a sustained step keeps, ms.
    #[arg(long, default_value_t = 500.0)]
    p99_limit_ms: f64,
    /// Redemption requests a day across the fleet.
    #[arg(long, default_value_t = 1_000_000.0)]
    redemptions_per_day: f64,
    /// Share of counter events that void an earlier redemption.
    #[arg(long, default_value_t = 0.01)]
    void_ratio: f64,
    /// Share of redemptions with two items.
    #[arg(long, default_value_t = 0.1)]
    two_line_ratio: f64,
    /// Cards reported lost a minute (through the admin command line).
    #[arg(long, default_value_t = 3.0)]
    loss_reports_per_min: f64,
    /// When business days end: at a random minute of the day (a fleet's rate), of the run (closes
    /// in a short run), or at midnight in China Standard Time for all.
    #[arg(long, value_enum, default_value_t = DayEnd::Day)]
    day_end: DayEnd,
    /// Seconds of redemptions a terminal already has at its first install (default: one interval).
    #[arg(long)]
    backlog: Option<f64>,
    /// Cold: full snapshots at first contact; warm: deltas from a recent version (steady state).
    #[arg(long, value_enum, default_value_t = Start::Cold)]
    start: Start,
    /// Warm start: the versions before the current one the terminals start from.
    #[arg(long, default_value_t = 1000)]
    warm_versions: u64,
    /// Cards a terminal keeps to redeem against (a sample of its bundles).
    #[arg(long, default_value_t = 32)]
    pool_cards: usize,
    /// Connections: kept between passes as the daemon's client keeps them, or one per pass.
    #[arg(long, value_enum, default_value_t = KeepAlive::Daemon)]
    connections: KeepAlive,
    /// Share of upload acknowledgements dropped as if lost (the next pass resumes from the head).
    #[arg(long, default_value_t = 0.0)]
    drop_ack_ratio: f64,
    /// Share of deltas verified entry by entry (MAC and body) as a terminal does; the others by
    /// their frames and signed manifest (full snapshots always entry by entry).
    #[arg(long, default_value_t = 0.1)]
    verify_ratio: f64,
    /// Seed of every random choice (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The run's name: terminal and merchant ids start with it (default: R + unix seconds).
    #[arg(long)]
    run_id: Option<String>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The server's pid for its CPU figure (default: the process listening on the server's port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Measure the database as this file (with -wal, -shm) or directory (default: from --db).
    #[arg(long, conflicts_with = "db_size_sql")]
    db_size_path: Option<PathBuf>,
    /// Measure the database with this SQL query through psql on --db (a PostgreSQL URL).
    #[arg(long)]
    db_size_sql: Option<String>,
    /// Skip the reconciliation at the end.
    #[arg(long)]
    no_reconcile: bool,
    /// Send no health report at the end of a pass (the daemon sends one after every pass; a platform
    /// older than the health endpoint answers it 404).
    #[arg(long)]
    no_health: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn seconds(flag: &str, s: f64, allow_zero: bool) -> Result<Duration, String> {
    if !s.is_finite() || s < 0.0 || (!allow_zero && s == 0.0) {
        return Err(format!(
            "--{flag} {s}: must be a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn ratio(flag: &str, r: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("--{flag} {r}: must be between 0 and 1"))
    }
}

fn run_options(a: RunArgs) -> Result<(RunOptions, usize), String> {
    let interval = seconds("interval", a.interval, false)?;
    let mode = match (a.rate, a.step.as_deref()) {
        (Some(r), _) if r.is_finite() && r > 0.0 => Mode::Rate(r),
        (Some(r), _) => {
            return Err(format!(
                "--rate {r}: must be a positive number of passes a second"
            ));
        }
        (None, Some(s)) => {
            let bad = || format!("--step {s:?}: expected START,BY (passes a second), e.g. 100,50");
            let (start, by) = s.split_once(',').ok_or_else(bad)?;
            let (start, by): (f64, f64) = (
                start.trim().parse().map_err(|_| bad())?,
                by.trim().parse().map_err(|_| bad())?,
            );
            if !(start > 0.0 && by > 0.0 && start.is_finite() && by.is_finite()) {
                return Err(bad());
            }
            Mode::Step {
                start,
                by,
                step: seconds("step-secs", a.step_secs, false)?,
                max: a.step_max,
            }
        }
        (None, None) => Mode::Fleet,
    };
    if a.terminals == 0 || a.terminals_per_merchant == 0 || a.pool_cards == 0 {
        return Err(
            "--terminals, --terminals-per-merchant and --pool-cards must be at least 1".into(),
        );
    }
    if a.warm_versions == 0 {
        return Err("--warm-versions must be at least 1".into());
    }
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !non_negative(a.redemptions_per_day) || !non_negative(a.loss_reports_per_min) {
        return Err("--redemptions-per-day and --loss-reports-per-min must be 0 or more".into());
    }
    let db_size = match (&a.db_size_path, &a.db_size_sql) {
        (Some(p), _) => Some(DbSize::Path(p.clone())),
        (None, Some(q)) => Some(DbSize::Sql {
            url: a.admin.db.clone(),
            query: q.clone(),
        }),
        (None, None) => None,
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let o = RunOptions {
        dir: a.dir,
        server: a.server,
        admin: a.admin.admin(),
        terminals: a.terminals,
        terminals_per_merchant: a.terminals_per_merchant,
        mode,
        interval,
        jitter: ratio("jitter", a.jitter)?,
        duration: seconds("duration", a.duration, false)?,
        warmup: seconds("warmup", a.warmup.unwrap_or(a.interval), true)?,
        p99_limit_ms: a.p99_limit_ms,
        redemptions_per_day: a.redemptions_per_day,
        void_ratio: ratio("void-ratio", a.void_ratio)?,
        two_line_ratio: ratio("two-line-ratio", a.two_line_ratio)?,
        loss_reports_per_min: a.loss_reports_per_min,
        day_end: a.day_end,
        backlog: seconds("backlog", a.backlog.unwrap_or(a.interval), true)?,
        start: a.start,
        warm_versions: a.warm_versions,
        pool_cards: a.pool_cards,
        keep_alive: a.connections,
        drop_ack_ratio: ratio("drop-ack-ratio", a.drop_ack_ratio)?,
        verify_ratio: ratio("verify-ratio", a.verify_ratio)?,
        seed: a.seed.unwrap_or(now_s),
        run_id: a.run_id.unwrap_or_else(|| format!("R{now_s}")),
        server_pid: a.server_pid,
        db_size,
        reconcile: !a.no_reconcile,
        health: !a.no_health,
        json: a.json,
    };
    Ok((o, a.threads.max(1)))
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

fn setup(a: SetupArgs) -> Result<ExitCode, String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    if a.card_prefix.is_empty()
        || a.card_prefix.len() > 12
        || !a.card_prefix.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("--card-prefix {:?}: 1 to 12 digits", a.card_prefix));
    }
    let admin = a.admin.admin();
    let csv = a.dir.join("cards.csv");
    let started = Instant::now();
    eprintln!(
        "fleet-sim: issuing {} cards ({:?}) on {} with {}",
        a.cards,
        a.issue,
        admin.db,
        admin.program.display()
    );
    runtime(2)?
        .block_on(admin.issue_cards(
            a.issue,
            &a.card_prefix,
            a.cards,
            a.import_files,
            &csv,
            |n| eprintln!("fleet-sim: {n} cards issued"),
        ))
        .map_err(|e| e.to_string())?;
    SetupRecord {
        cards: a.cards,
        card_prefix: a.card_prefix,
    }
    .save(&a.dir)
    .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fleet-sim setup: {} cards issued in {secs:.1} s ({:.1} ms a card); cards.csv and setup.json in {}",
        a.cards,
        secs * 1000.0 / a.cards.max(1) as f64,
        a.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(a) => setup(a),
        Command::Run(a) => run_options(*a).and_then(|(o, threads)| {
            let summary = runtime(threads)?.block_on(fleet_sim::run::run(o))?;
            Ok(ExitCode::from(summary.exit_code()))
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
