//! The `redeemd` command line: the daemon (`run`, `check-config`, `status`) and the tools over the
//! store (`cache info|verify|install`, `journal verify|export`, `report`).
//!
//! Exit codes (documented in the README, stable for scripts):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success; for `verify`: nothing wrong |
//! | 1 | `verify` or `export` found tampering or corruption (each finding printed with its row) |
//! | 2 | bad command line |
//! | 64 | bad configuration file (the message names the key) |
//! | 65 | bad data: corrupt database file, another terminal's database, a database missing or emptied where a journal was, bundle refused |
//! | 66 | no database in the state directory yet; the state directory missing or not a directory |
//! | 74 | I/O error reading or writing a file |
//! | 77 | key refused (loose permissions, missing credential, bad format, not this database's key); `enroll`: the pairing code refused |
//! | 70 | internal error (SQLite) |
//! | 73 | `enroll`: the key file exists, or a directory is not writable |
//! | 75 | `sync`: a step failed or uploading is halted (each printed with its reason); `run`: another daemon holds the state directory; try again later |

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use redeemd_contract::{JournalRecord, TerminalSecret, close};
use serde::Serialize;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, LogFormat};
use crate::daemon::DaemonError;
use crate::engine::Now;
use crate::keys::{KeyError, KeySource, load_secret_outside_service};
use crate::store::{StorageError, Store, StoreError, verify};

#[derive(Debug, Parser)]
#[command(
    name = "redeemd",
    version,
    about = "Offline member-card redemption daemon for shop POS readers"
)]
pub struct Cli {
    /// Configuration file. Every command reads the state directory and key from it unless
    /// --state-dir / --key-file / --key-credential are given.
    #[arg(long, env = "REDEEMD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory holding the database [default: from the configuration, else /var/lib/redeemd].
    #[arg(long, env = "REDEEMD_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Terminal secret file (hex, mode 0600) [default: the configuration's [key], else the systemd
    /// credential `terminal.key`].
    #[arg(
        long,
        env = "REDEEMD_KEY_FILE",
        global = true,
        conflicts_with = "key_credential"
    )]
    pub key_file: Option<PathBuf>,
    /// Name of the systemd credential holding the terminal secret.
    #[arg(long, global = true)]
    pub key_credential: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve the configured readers until SIGTERM (systemd: Type=notify). The
    /// state directory must exist; a first start in an empty one creates the database.
    Run,
    /// Create the state directory (not its parents) and an empty database in it, for a daemon run
    /// by hand (systemd creates the directory itself). Refuses a directory that is not empty.
    Init,
    /// Validate the configuration file and print what it configures; exit 64 if it is wrong.
    CheckConfig,
    /// Readers' link state and last transaction, sync state, cache and deny-list versions and ages,
    /// journal head, unsynced records.
    Status,
    /// Run one sync pass now against the configured server (deny list, journal upload, entitlements)
    /// and print what happened. Works while the daemon runs: the two take turns on the state
    /// directory's sync lock, and SQLite serialises their writes. Exits 75 if a step failed.
    Sync {
        /// How long to wait for a pass the daemon is running.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
    },
    /// Join the platform with a one-time pairing code (from the platform or the merchant): fetch this
    /// terminal's id, its merchant's id and a fresh secret, write the secret to the configuration's
    /// key file (mode 0600; /etc/redeemd/terminal.key for the package's credential) and the ids into
    /// the configuration, and say what to run next. Never overwrites a key file without --force.
    Enroll {
        /// The platform: https://…, or http:// to 127.0.0.1, ::1 or localhost only.
        #[arg(long)]
        server: String,
        /// The pairing code, XXXX-XXXX.
        #[arg(long)]
        code: String,
        /// Replace an existing key file (a PC re-enrolled; its old journal will not open with it).
        #[arg(long)]
        force: bool,
        /// Where the source of a systemd credential lives (LoadCredential=NAME:DIR/NAME).
        #[arg(long, default_value = "/etc/redeemd")]
        credential_dir: PathBuf,
    },
    /// Check this install: config, key, state directory, database, readers, clock, cache, backlog.
    /// Prints OK or the problem and its fix for each; exits 1 if any problem is found.
    Doctor {
        /// The account the service runs as (device permissions are judged for it).
        #[arg(long, default_value = "redeemd")]
        user: String,
        /// Where the source of a systemd credential lives (LoadCredential=NAME:DIR/NAME).
        #[arg(long, default_value = "/etc/redeemd")]
        credential_dir: PathBuf,
    },
    /// Play a bank POS reader: on a real serial port or a new pseudo-terminal, interactively or
    /// from a scenario file (see docs/simulator.md and fixtures/scenarios/).
    SimulateReader(SimulateReaderArgs),
    /// The signed entitlement cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// The tamper-evident journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Totals per item for one business day.
    Report {
        /// Day, YYYY-MM-DD, in local business time.
        #[arg(long)]
        date: String,
        /// Business-day offset from UTC in minutes, -840..=840 (China: 480) [default: the
        /// configuration's utc_offset_minutes, else 480].
        #[arg(
            long,
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(i32).range(-840..=840)
        )]
        utc_offset_minutes: Option<i32>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SimulateReaderArgs {
    /// Serial device to open (e.g. /dev/ttyUSB0 looped to the daemon's port).
    #[arg(long, conflicts_with = "pty")]
    pub port: Option<PathBuf>,
    /// Create a pseudo-terminal pair and print the path the daemon should open (the default).
    #[arg(long)]
    pub pty: bool,
    /// With --pty: keep this symlink pointing at the current pty (what the daemon's config names).
    #[arg(long, requires = "pty")]
    pub link: Option<PathBuf>,
    /// Baud rate (nominal on a pty; it sets the protocol's timers).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Reader serial number announced in HELLO.
    #[arg(long, default_value = "SIM-0001")]
    pub serial: String,
    /// Firmware version announced in HELLO.
    #[arg(long, default_value = "sim-1.0")]
    pub firmware: String,
    /// Text encodings the reader can show: utf8, gb18030 or both.
    #[arg(long, default_value = "both", value_parser = ["utf8", "utf-8", "gb18030", "both"])]
    pub encoding: String,
    /// First transaction id [default: the one after the daemon's latest transaction of this
    /// reader, asked with QUERY LAST: a real reader keeps its counter in flash, and a txn id is
    /// never used twice].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub txn_id: Option<u32>,
    /// Seconds to wait for the daemon to answer the handshake.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    /// Scenario file to play; without it, read steps from the keyboard.
    #[arg(long, conflicts_with = "conformance")]
    pub script: Option<PathBuf>,
    /// Play the conformance flows of PROTOCOL.md §11.1 against the daemon: one PASS or FAIL line
    /// per rule, exit 1 if any failed. Needs --card.
    #[arg(long, requires = "card")]
    pub conformance: bool,
    /// With --conformance: a member card the daemon knows, with an entry that asks no identity and
    /// has two uses left (every redemption the flows make is voided again).
    #[arg(long, requires = "conformance")]
    pub card: Option<String>,
    /// With --conformance: the daemon's state directory. The flows of the rules about a busy
    /// store (§4.4, §5.16) hold its database's write lock for 3 s, as `redeemd sync` may beside
    /// the daemon (run this on the shop PC, as a user who may write that database); without it
    /// they are skipped.
    #[arg(long, requires = "conformance", value_name = "STATE_DIR")]
    pub busy_store: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Installed version, merchant, validity, entry count.
    Info,
    /// Check the manifest and every entry's MAC; names each bad row.
    Verify,
    /// Verify and install a signed snapshot or delta bundle.
    Install { bundle: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Check the whole HMAC chain, sequence and usage anchors; names each bad row.
    Verify,
    /// Print the journal (verified row by row) as JSON lines or CSV.
    Export {
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

/// Errors of a CLI run, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0} problem(s) found")]
    Findings(usize),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Simulator(#[from] crate::simulator::SimError),
    #[error("sync: {0}")]
    Sync(String),
    #[error("enroll: {0}")]
    Enroll(#[from] crate::enroll::EnrollError),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 64,
            CliError::Daemon(DaemonError::Key(_)) => 77,
            CliError::Daemon(DaemonError::Store { source, .. }) => store_exit_code(source),
            CliError::Daemon(DaemonError::Io(_)) => 74,
            CliError::Daemon(DaemonError::SyncStopped(_)) => 70,
            CliError::Simulator(_) => 1,
            CliError::Sync(_) => 75,
            CliError::Enroll(e) => e.exit_code(),
            CliError::Findings(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Key(_) => 77,
            CliError::File { .. } | CliError::Output(_) => 74,
            CliError::Store(e) => store_exit_code(e),
        }
    }
}

fn store_exit_code(e: &StoreError) -> u8 {
    match e {
        StoreError::Missing { .. }
        | StoreError::StateDir { .. }
        | StoreError::StateDirMissing { .. }
        | StoreError::NotADirectory { .. }
        | StoreError::ParentMissing { .. } => 66,
        StoreError::Integrity(_) => 1,
        StoreError::Sql(_) => 70,
        StoreError::InUse { .. } => 75,
        StoreError::WrongKey { .. } => 77,
        _ => 65,
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redeemd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The configuration, when one is named or installed at the default path.
fn optional_config(cli: &Cli) -> Result<Option<Config>, ConfigError> {
    match &cli.config {
        Some(path) => Config::load(path).map(Some),
        None => {
            let path = std::path::Path::new(DEFAULT_CONFIG_PATH);
            if path.exists() {
                Config::load(path).map(Some)
            } else {
                Ok(None)
            }
        }
    }
}

/// The configuration the daemon-side commands need (`run`, `check-config`, `status`, `sync`,
/// `doctor`): named, or at the default path, with `--state-dir`, `--key-file` and `--key-credential`
/// applied over it, so that those flags mean the same for every command.
fn required_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut config = Config::load(&config_path(cli))?;
    if let Some(dir) = &cli.state_dir {
        config.state_dir.clone_from(dir);
    }
    if let Some(source) = key_override(cli) {
        config.key = source;
    }
    Ok(config)
}

/// The key source named on the command line, if any.
fn key_override(cli: &Cli) -> Option<KeySource> {
    match (&cli.key_file, &cli.key_credential) {
        (Some(f), _) => Some(KeySource::File(f.clone())),
        (None, Some(c)) => Some(KeySource::Credential(c.clone())),
        (None, None) => None,
    }
}

/// The configuration file named with `--config`, or the default one.
fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

fn state_dir(cli: &Cli, config: Option<&Config>) -> PathBuf {
    cli.state_dir
        .clone()
        .or_else(|| config.map(|c| c.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/redeemd"))
}

fn secret(cli: &Cli, config: Option<&Config>) -> Result<TerminalSecret, KeyError> {
    let source = key_override(cli).unwrap_or_else(|| match config {
        Some(config) => config.key.clone(),
        None => KeySource::Credential("terminal.key".into()),
    });
    load_secret_outside_service(&source)
}

/// Logs for `run`: human-readable or JSON lines on stderr (journald adds time and unit);
/// `RUST_LOG` overrides the configured level.
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn wall_now() -> Now {
    let wall_ms = crate::store::owner::wall_clock_ms();
    Now {
        wall_ms,
        boot_ms: 0,
    }
}

pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let w = |r: std::io::Result<()>| r.map_err(CliError::Output);
    match &cli.command {
        Command::Run => {
            let config = required_config(cli)?;
            init_logging(&config);
            return Ok(crate::daemon::run(config)?);
        }
        Command::Init => {
            let config = required_config(cli)?;
            return init(&config, out);
        }
        Command::CheckConfig => {
            let config = required_config(cli)?;
            return w(print_config(&config, out));
        }
        Command::SimulateReader(args) => return simulate_reader(args),
        Command::Doctor {
            user,
            credential_dir,
        } => {
            let config = required_config(cli)?;
            let options = crate::doctor::DoctorOptions {
                service_user: user.clone(),
                credential_source_dir: credential_dir.clone(),
            };
            let findings = crate::doctor::examine(&config, &options);
            let problems = crate::doctor::report(&findings, out).map_err(CliError::Output)?;
            return if problems {
                Err(CliError::Findings(
                    findings
                        .iter()
                        .filter(|f| f.verdict == crate::doctor::Verdict::Problem)
                        .count(),
                ))
            } else {
                Ok(())
            };
        }
        Command::Enroll {
            server,
            code,
            force,
            credential_dir,
        } => {
            let config = required_config(cli)?;
            let req = crate::enroll::EnrollRequest {
                server: server.clone(),
                code: code.clone(),
                force: *force,
                config_path: config_path(cli),
                key_path: crate::enroll::key_path(&config.key, credential_dir),
            };
            let done = crate::enroll::enroll(&req, &config)?;
            return w(print_enrolled(&req, &done, out));
        }
        Command::Status => {
            let config = required_config(cli)?;
            let secret = secret(cli, Some(&config))?;
            return status(&config, &secret, out);
        }
        Command::Sync { wait_secs } => {
            let config = required_config(cli)?;
            let secret = secret(cli, Some(&config))?;
            return sync_once((&config, &config_path(cli)), &secret, *wait_secs, out);
        }
        _ => {}
    }
    let config = optional_config(cli)?;
    let state_dir = state_dir(cli, config.as_ref());
    let secret = secret(cli, config.as_ref())?;
    let limits = config.as_ref().map(Config::limits).unwrap_or_default();
    let expected = config
        .as_ref()
        .map(|c| (c.terminal_id.as_str(), c.merchant_id.as_str()));
    match &cli.command {
        Command::Run
        | Command::Init
        | Command::CheckConfig
        | Command::Status
        | Command::Doctor { .. }
        | Command::Sync { .. }
        | Command::Enroll { .. }
        | Command::SimulateReader(_) => Ok(()),
        Command::Cache(CacheCommand::Verify) | Command::Journal(JournalCommand::Verify) => {
            // The opening checks and the full walk, listing every finding (opening would stop at
            // the first).
            let scope = if matches!(cli.command, Command::Cache(_)) {
                verify::Scope::Cache
            } else {
                verify::Scope::Journal
            };
            let v = verify::database(&state_dir, &secret, expected, scope)?;
            let findings = &v.findings;
            let what = match (&v.cache, v.journal_rows) {
                (Some((Some(m), entries)), _) => format!(
                    "cache version {} for merchant {}: {entries} entries checked",
                    m.version, m.merchant_id
                ),
                (Some((None, _)), _) if findings.is_empty() => "no cache installed".to_owned(),
                (Some((None, _)), _) => "cache manifest does not verify".to_owned(),
                (None, rows) => format!(
                    "journal of terminal {}: {} rows checked",
                    v.terminal_id,
                    rows.unwrap_or(0)
                ),
            };
            for f in findings {
                w(writeln!(out, "FAIL {f}"))?;
            }
            w(writeln!(
                out,
                "{what}: {}",
                if findings.is_empty() {
                    "OK"
                } else {
                    "TAMPERED OR CORRUPT"
                }
            ))?;
            if findings.is_empty() {
                Ok(())
            } else {
                Err(CliError::Findings(findings.len()))
            }
        }
        Command::Cache(CacheCommand::Info) => {
            let store = Store::open_existing(&state_dir, &secret, limits, expected)?;
            let j = store.journal_info();
            match store.cache_info()? {
                None => w(writeln!(out, "no cache installed"))?,
                Some(c) => {
                    let m = &c.manifest;
                    w(writeln!(out, "terminal       {}", m.terminal_id))?;
                    w(writeln!(
                        out,
                        "merchant       {} (categories: {})",
                        m.merchant_id,
                        m.merchant_categories.join(", ")
                    ))?;
                    w(writeln!(
                        out,
                        "version        {} ({:?}, previous {})",
                        m.version, m.kind, m.prev_version
                    ))?;
                    w(writeln!(out, "entries        {}", c.entries))?;
                    w(writeln!(out, "issued at      {}", iso(m.issued_at_ms)))?;
                    w(writeln!(out, "expires at     {}", iso(m.expires_at_ms)))?;
                    w(writeln!(out, "installed at   {}", iso(c.installed_wall_ms)))?;
                }
            }
            w(writeln!(
                out,
                "journal head   seq {} (platform acknowledged through {})",
                j.head_seq, j.synced_through_seq
            ))?;
            w(writeln!(
                out,
                "offline        {} redemptions since the last sync",
                j.offline_redemptions
            ))?;
            Ok(())
        }
        Command::Cache(CacheCommand::Install { bundle }) => {
            let mut store = Store::open_existing(&state_dir, &secret, limits, expected)?;
            let file = std::fs::File::open(bundle).map_err(|source| CliError::File {
                path: bundle.clone(),
                source,
            })?;
            // The daemon's sync installs through the same staging table: take turns.
            let lock_path = crate::sync::pass::lock_path(&state_dir);
            let _lock = crate::sync::pass::SyncLock::acquire(
                &state_dir,
                std::time::Duration::from_secs(300),
            )
            .map_err(|source| CliError::File {
                path: lock_path.clone(),
                source,
            })?
            .ok_or_else(|| {
                // Temporary, as for `redeemd sync`: exit 75, try again later.
                CliError::Sync(format!(
                    "{}: a sync pass has held the lock for 5 minutes; try again",
                    lock_path.display()
                ))
            })?;
            let report = store
                .install_bundle(std::io::BufReader::with_capacity(1 << 16, file), wall_now())?;
            w(writeln!(
                out,
                "installed version {} ({:?}): {} entries written, {} removed",
                report.manifest.version, report.manifest.kind, report.upserts, report.removals
            ))
        }
        Command::Journal(JournalCommand::Export { format, from_seq }) => {
            let store = Store::open_existing(&state_dir, &secret, limits, expected)?;
            export(&store, *format, *from_seq, out)
        }
        Command::Report {
            date,
            utc_offset_minutes,
        } => {
            let store = Store::open_existing(&state_dir, &secret, limits, expected)?;
            let offset = utc_offset_minutes
                .or(config.as_ref().map(|c| c.utc_offset_minutes))
                .unwrap_or(480);
            report(&store, date, offset, out)
        }
    }
}

fn simulate_reader(args: &SimulateReaderArgs) -> Result<(), CliError> {
    use crate::simulator::{LineSpec, Mode, ReaderSettings, SimulatorOptions, encodings_from_str};
    let encodings = encodings_from_str(&args.encoding)
        .ok_or_else(|| CliError::Usage(format!("--encoding {:?}", args.encoding)))?;
    let options = SimulatorOptions {
        line: args
            .port
            .clone()
            .map_or(LineSpec::CreatePty, LineSpec::Port),
        link: args.link.clone(),
        baud: args.baud,
        reader: ReaderSettings {
            serial: args.serial.clone(),
            firmware: args.firmware.clone(),
            encodings,
            next_txn_id: args.txn_id.unwrap_or(1),
            ..ReaderSettings::default()
        },
        txn_id_given: args.txn_id.is_some(),
        connect_timeout: std::time::Duration::from_secs(args.connect_timeout),
        mode: match (&args.script, &args.card) {
            (Some(script), _) => Mode::Script(script.clone()),
            (None, Some(card)) if args.conformance => Mode::Conformance {
                card: card.clone(),
                busy_store: args.busy_store.clone(),
            },
            _ => Mode::Interactive,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    Ok(runtime.block_on(crate::simulator::run_cli(options))?)
}

/// `redeemd sync`: one pass with the daemon's configuration, through the same code as the daemon's
/// task (a store handle, the sync lock), printing one line per step.
fn sync_once(
    (config, config_path): (&Config, &std::path::Path),
    secret: &TerminalSecret,
    wait_secs: u64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use crate::sync::pass::{SyncLock, Syncer};
    let w = |r: std::io::Result<()>| r.map_err(CliError::Output);
    let Some(url) = &config.sync.server_url else {
        return Err(CliError::Config(ConfigError::Invalid {
            path: config_path.to_owned(),
            key: "sync.server_url".into(),
            reason: "not set: sync is disabled".into(),
        }));
    };
    let keys = secret.derive_all(&config.terminal_id);
    let request_key = keys.request.clone();
    // Beside the daemon, never instead of it: a database is created only by the daemon's first
    // start (or `redeemd init`), and as the service's user, not as root running this tool.
    let store = Store::open_with(
        &config.state_dir,
        keys,
        crate::store::StoreConfig {
            terminal_id: config.terminal_id.clone(),
            merchant_id: config.merchant_id.clone(),
            limits: config.limits(),
        },
        crate::store::Create::Never,
    )?;
    let lock = SyncLock::acquire(&config.state_dir, std::time::Duration::from_secs(wait_secs))
        .map_err(|source| CliError::File {
            path: crate::sync::pass::lock_path(&config.state_dir),
            source,
        })?
        .ok_or_else(|| {
            CliError::Sync(format!(
                "another sync pass held {} for {wait_secs} s",
                crate::sync::pass::lock_path(&config.state_dir).display()
            ))
        })?;
    let client = crate::sync::client::Client::new(
        url,
        &config.terminal_id,
        request_key,
        crate::daemon::sync::client_options(&config.sync),
    )
    .map_err(|e| CliError::Sync(e.to_string()))?;
    let handle = crate::store::owner::StoreHandle::new(store, crate::store::owner::Clock::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    let report = runtime.block_on(async {
        let mut syncer = Syncer::new(client, config.utc_offset_minutes);
        syncer.pass(&handle).await
    });
    drop(lock);
    w(writeln!(out, "server        {url}"))?;
    for line in report.lines() {
        w(writeln!(out, "{line}"))?;
    }
    if let Some(d) = report.halted {
        w(writeln!(out, "HALTED        {d}"))?;
    }
    if report.ok() {
        Ok(())
    } else {
        let mut reasons: Vec<String> = report.failures().iter().map(|e| e.to_string()).collect();
        if let Some(d) = report.halted {
            reasons.push(format!("journal upload halted: {d}"));
        }
        reasons.dedup();
        Err(CliError::Sync(reasons.join("; ")))
    }
}

/// What `redeemd enroll` did and what to run next.
fn print_enrolled(
    req: &crate::enroll::EnrollRequest,
    done: &crate::enroll::Done,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "enrolled terminal {} for merchant {} at {}",
        done.terminal_id, done.merchant_id, done.server
    )?;
    writeln!(
        out,
        "  the terminal secret is in {} (mode 0600)",
        req.key_path.display()
    )?;
    writeln!(
        out,
        "  terminal_id and merchant_id are set in {}",
        req.config_path.display()
    )?;
    if let Some(db) = &done.old_database {
        writeln!(
            out,
            "  NOTE: {} is the database of the terminal this PC was before: it does not open with the new secret; move its directory aside before starting",
            db.display()
        )?;
    }
    let config = req.config_path.display();
    writeln!(out, "next:")?;
    match &done.other_server_url {
        Some(other) => writeln!(
            out,
            "  sudoedit {config}    # [[reader]] ports; [sync] server_url = \"{}\" (it is {})",
            done.server,
            other
                .as_deref()
                .map_or_else(|| "not set".to_owned(), |u| format!("\"{u}\""))
        )?,
        None => writeln!(out, "  sudoedit {config}    # [[reader]] ports")?,
    }
    writeln!(out, "  sudo redeemd doctor")?;
    writeln!(out, "  sudo systemctl start redeemd")
}

/// `redeemd init`: the state directory (never its parents) and a new, empty database in it.
fn init(config: &Config, out: &mut dyn Write) -> Result<(), CliError> {
    use crate::store::state_dir::DaemonLock;
    let secret = crate::keys::load_secret_outside_service(&config.key)?;
    crate::store::state_dir::create_dir(&config.state_dir)?;
    let _lock = DaemonLock::acquire(&config.state_dir)?;
    let store = Store::init(
        &config.state_dir,
        secret.derive_all(&config.terminal_id),
        crate::store::StoreConfig {
            terminal_id: config.terminal_id.clone(),
            merchant_id: config.merchant_id.clone(),
            limits: config.limits(),
        },
    )?;
    writeln!(
        out,
        "created {} for terminal {} (merchant {}): an empty journal; the daemon serves from it once a cache is installed",
        store.path().display(),
        config.terminal_id,
        config.merchant_id
    )
    .map_err(CliError::Output)
}

/// Below this much free space `status` warns: a redemption needs a few KB, a full install twice the
/// cache's size (README, "Disk use").
const LOW_SPACE_BYTES: u64 = 64 << 20;

/// `status`'s storage lines: free space now (measured here, so that it shows even when a full disk
/// kept the daemon from publishing), and the last write the disk refused, as the daemon published it.
fn storage_lines(
    config: &Config,
    published: Option<&crate::daemon::status::StorageStatus>,
    now: i64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let w = |r: std::io::Result<()>| r.map_err(CliError::Output);
    let dir = config.state_dir.display();
    match crate::store::state_dir::free_space(&config.state_dir) {
        Ok((0, total)) => w(writeln!(
            out,
            "storage        DISK FULL: 0 bytes free on {dir} ({} total): redemptions cannot be recorded and are declined; free disk space",
            bytes(total)
        ))?,
        Ok((free, total)) if free < LOW_SPACE_BYTES => w(writeln!(
            out,
            "storage        LOW: {} free of {} on {dir}; free disk space",
            bytes(free),
            bytes(total)
        ))?,
        Ok((free, total)) => w(writeln!(
            out,
            "storage        {} free of {} on {dir}",
            bytes(free),
            bytes(total)
        ))?,
        Err(e) => w(writeln!(out, "storage        {dir}: {e}"))?,
    }
    if let Some(StorageError {
        message,
        at_wall_ms,
    }) = published.and_then(|s| s.last_error.as_ref())
    {
        w(writeln!(
            out,
            "  LAST ERROR   {} ago: {message}",
            age(now.saturating_sub(*at_wall_ms).max(0))
        ))?;
    }
    Ok(())
}

/// A byte count as `812 KB`, `37 MB` or `12.4 GB`.
fn bytes(n: u64) -> String {
    const KB: u64 = 1 << 10;
    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;
    match n {
        n if n < MB => format!("{} KB", n / KB),
        n if n < GB => format!("{} MB", n / MB),
        n => format!("{}.{} GB", n / GB, n % GB * 10 / GB),
    }
}

fn print_config(c: &Config, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "configuration OK")?;
    writeln!(
        out,
        "terminal       {} (merchant {})",
        c.terminal_id, c.merchant_id
    )?;
    writeln!(out, "state dir      {}", c.state_dir.display())?;
    match &c.key {
        KeySource::File(p) => writeln!(out, "key            file {}", p.display())?,
        KeySource::Credential(n) => writeln!(out, "key            systemd credential {n:?}")?,
    }
    for r in &c.readers {
        writeln!(
            out,
            "reader         {}: {} at {} baud, {}{}{}",
            r.name,
            r.port.display(),
            r.baud,
            r.data_bits,
            match r.parity {
                crate::config::Parity::None => 'N',
                crate::config::Parity::Even => 'E',
                crate::config::Parity::Odd => 'O',
            },
            r.stop_bits
        )?;
    }
    if c.readers.is_empty() {
        writeln!(
            out,
            "reader         none configured: the daemon will serve no reader"
        )?;
    }
    match &c.sync.server_url {
        Some(url) => writeln!(
            out,
            "sync           {url} every {} s",
            c.sync.interval.as_secs()
        )?,
        None => writeln!(out, "sync           disabled (no server_url)")?,
    }
    Ok(())
}

fn status(config: &Config, secret: &TerminalSecret, out: &mut dyn Write) -> Result<(), CliError> {
    let w = |r: std::io::Result<()>| r.map_err(CliError::Output);
    let now = wall_now().wall_ms;
    match crate::daemon::status::read(&config.state_dir) {
        Ok(s) => {
            let alive = std::path::Path::new(&format!("/proc/{}", s.pid)).exists();
            w(writeln!(
                out,
                "daemon         pid {} ({}), status updated {} s ago",
                s.pid,
                if alive { "running" } else { "not running" },
                now.saturating_sub(s.updated_at_ms).max(0) / 1000
            ))?;
            for (name, r) in &s.readers {
                w(writeln!(out, "reader {name}: {} on {}", r.state, r.port))?;
                if let Some(d) = &r.detail {
                    w(writeln!(out, "  detail       {d}"))?;
                }
                if let (Some(serial), Some(fw)) = (&r.reader_serial, &r.firmware) {
                    w(writeln!(
                        out,
                        "  reader       serial {serial}, firmware {fw}"
                    ))?;
                }
                if let Some(t) = &r.last_transaction {
                    w(writeln!(
                        out,
                        "  last txn     {} {}: {} ({} s ago)",
                        t.kind,
                        t.txn_id,
                        t.outcome,
                        now.saturating_sub(t.at_ms).max(0) / 1000
                    ))?;
                }
            }
        }
        Err(e) => w(writeln!(out, "daemon         no status published ({e})"))?,
    }
    let published_status = crate::daemon::status::read(&config.state_dir).ok();
    let published_storage = published_status.as_ref().and_then(|s| s.storage.clone());
    let published = published_status.and_then(|s| s.sync);
    // Times from status.json (a file anyone may have damaged) may be absurd: saturate, never overflow.
    let ago = |ms: i64| age(now.saturating_sub(ms).max(0));
    match (&config.sync.server_url, &published) {
        (None, _) => w(writeln!(out, "sync           disabled (no server_url)"))?,
        (Some(url), None) => w(writeln!(out, "sync           {url}: no pass reported yet"))?,
        (Some(url), Some(s)) => {
            w(writeln!(out, "sync           {url}"))?;
            if let Some(at) = s.last_attempt_at_ms {
                w(writeln!(
                    out,
                    "  last attempt {} ago: {}",
                    ago(at),
                    s.last_result.as_deref().unwrap_or("?")
                ))?;
            }
            match s.last_success_at_ms {
                Some(at) => w(writeln!(out, "  last success {} ago", ago(at)))?,
                None => w(writeln!(
                    out,
                    "  last success never (since the daemon started)"
                ))?,
            }
            if let Some(at) = s.next_attempt_at_ms {
                w(writeln!(
                    out,
                    "  next attempt in {} ({} failures in a row)",
                    age(at.saturating_sub(now).max(0)),
                    s.consecutive_failures
                ))?;
            }
            if let Some(h) = &s.halted {
                w(writeln!(out, "  HALTED       {h}"))?;
            }
        }
    }
    storage_lines(config, published_storage.as_ref(), now, out)?;
    let store = Store::open_existing(
        &config.state_dir,
        secret,
        config.limits(),
        Some((&config.terminal_id, &config.merchant_id)),
    )?;
    let j = store.journal_info();
    match store.cache_info()? {
        Some(c) => w(writeln!(
            out,
            "cache          version {}, {} entries, installed {} ago, issued {} min ago, expires in {} min",
            c.manifest.version,
            c.entries,
            ago(c.installed_wall_ms),
            now.saturating_sub(c.manifest.issued_at_ms).max(0) / 60_000,
            c.manifest.expires_at_ms.saturating_sub(now) / 60_000
        ))?,
        None => w(writeln!(out, "cache          none installed"))?,
    }
    let deny = store.deny_info();
    let checked = published
        .as_ref()
        .and_then(|s| s.deny_checked_at_ms)
        .map_or_else(
            || "not checked since the daemon started".to_owned(),
            |at| format!("checked {} ago", ago(at)),
        );
    w(writeln!(
        out,
        "deny list      version {}, {} entries, {checked}",
        deny.version, deny.entries
    ))?;
    let oldest = store
        .oldest_unsynced_wall_ms()?
        .map_or_else(String::new, |at| format!(", oldest {} old", ago(at)));
    w(writeln!(
        out,
        "journal        head seq {}, platform acknowledged through {}, {} unsynced{oldest}",
        j.head_seq,
        j.synced_through_seq,
        j.head_seq.saturating_sub(j.synced_through_seq)
    ))?;
    match store.last_close()? {
        Some(c) => w(writeln!(
            out,
            "batch close    {} {} (through seq {}, {} ago)",
            c.business_date,
            c.result.as_str(),
            c.through_seq,
            ago(c.closed_wall_ms)
        )),
        None => w(writeln!(out, "batch close    none yet")),
    }
}

/// A duration in ms as `42 s`, `17 min` or `5 h`.
fn age(ms: i64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// One exported journal row (card reference, never a card number).
#[derive(Debug, Serialize)]
struct ExportRow<'a> {
    record_id: String,
    seq: u64,
    kind: &'static str,
    auth_code: &'a str,
    terminal_id: &'a str,
    merchant_id: &'a str,
    card_ref: String,
    package_id: &'a str,
    service_code: &'a str,
    item_title: &'a str,
    quantity: u32,
    amount_fen: u64,
    original_seq: u64,
    group_seq: u64,
    line: u16,
    line_count: u16,
    reader_id: &'a str,
    reader_txn_id: u64,
    cashier_id: &'a str,
    wall_ms: i64,
    boot_ms: u64,
    cache_version: u64,
    entry_version: u64,
    prev_mac: String,
    mac: String,
}

impl<'a> ExportRow<'a> {
    fn new(r: &'a JournalRecord, mac: &[u8]) -> Self {
        ExportRow {
            record_id: r.record_id(),
            seq: r.seq,
            kind: r.kind.name(),
            auth_code: &r.auth_code,
            terminal_id: &r.terminal_id,
            merchant_id: &r.merchant_id,
            card_ref: r.card_ref.to_hex(),
            package_id: &r.package_id,
            service_code: &r.service_code,
            item_title: &r.item_title,
            quantity: r.quantity,
            amount_fen: r.amount_fen,
            original_seq: r.original_seq,
            group_seq: r.group_seq,
            line: r.line,
            line_count: r.line_count,
            reader_id: &r.reader_id,
            reader_txn_id: r.reader_txn_id,
            cashier_id: &r.cashier_id,
            wall_ms: r.wall_ms,
            boot_ms: r.boot_ms,
            cache_version: r.cache_version,
            entry_version: r.entry_version,
            prev_mac: hex::encode(r.prev_mac),
            mac: hex::encode(mac),
        }
    }
}

fn export(
    store: &Store,
    format: Format,
    from_seq: u64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let other = |e: &dyn std::fmt::Display| CliError::Output(std::io::Error::other(e.to_string()));
    match format {
        Format::Csv => {
            let mut c = csv::Writer::from_writer(out);
            for_each_record(store, from_seq, &mut |row| {
                c.serialize(row).map_err(|e| other(&e))
            })?;
            c.flush().map_err(CliError::Output)
        }
        Format::Jsonl => for_each_record(store, from_seq, &mut |row| {
            let line = serde_json::to_string(row).map_err(|e| other(&e))?;
            writeln!(out, "{line}").map_err(CliError::Output)
        }),
    }
}

/// Calls `f` for every journal record from `from_seq`, each verified on its own, in batches.
fn for_each_record(
    store: &Store,
    from_seq: u64,
    f: &mut dyn FnMut(&ExportRow<'_>) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut next = from_seq.max(1);
    loop {
        let batch = store.journal_records(next, 10_000)?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        next = last.0.seq + 1;
        for (rec, mac) in &batch {
            f(&ExportRow::new(rec, mac))?;
        }
    }
}

fn iso(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = close::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60
    )
}

fn report(store: &Store, date: &str, offset_min: i32, out: &mut dyn Write) -> Result<(), CliError> {
    let day = close::parse_date(date)
        .ok_or_else(|| CliError::Usage(format!("--date {date:?}: expected a valid YYYY-MM-DD")))?;
    let (start, end) = close::day_window(day, offset_min);
    #[derive(Default)]
    struct Totals {
        title: String,
        redeemed: u64,
        voided: u64,
        amount: i64,
        records: u64,
    }
    let mut totals: std::collections::BTreeMap<String, Totals> = Default::default();
    let mut next = 1;
    loop {
        let batch = store.journal_records(next, 10_000)?;
        let Some(last) = batch.last() else { break };
        next = last.0.seq + 1;
        for (r, _) in batch
            .iter()
            .filter(|(r, _)| r.wall_ms >= start && r.wall_ms < end)
        {
            let t = totals.entry(r.service_code.clone()).or_default();
            t.title.clone_from(&r.item_title);
            t.records += 1;
            match r.kind {
                // Saturating, as the end-of-day close adds (redeemd_contract::close::totals).
                redeemd_contract::RecordKind::Redeem => {
                    t.redeemed = t.redeemed.saturating_add(u64::from(r.quantity));
                    t.amount = t.amount.saturating_add(close::amount_fen(r));
                }
                redeemd_contract::RecordKind::Void => {
                    t.voided = t.voided.saturating_add(u64::from(r.quantity));
                    t.amount = t.amount.saturating_sub(close::amount_fen(r));
                }
                redeemd_contract::RecordKind::BatchClose => {}
            }
        }
    }
    let w = |r: std::io::Result<()>| r.map_err(CliError::Output);
    w(writeln!(
        out,
        "report for {date} (UTC{:+03}:{:02}), merchant {}, terminal {}",
        offset_min / 60,
        offset_min.abs() % 60,
        store.config().merchant_id,
        store.config().terminal_id
    ))?;
    w(writeln!(
        out,
        "{:<12} {:<16} {:>9} {:>7} {:>7} {:>12}",
        "item", "title", "redeemed", "voided", "net", "amount_fen"
    ))?;
    let (mut tn, mut ta) = (0i64, 0i64);
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for (code, t) in &totals {
        let net = as_i64(t.redeemed).saturating_sub(as_i64(t.voided));
        tn = tn.saturating_add(net);
        ta = ta.saturating_add(t.amount);
        w(writeln!(
            out,
            "{code:<12} {:<16} {:>9} {:>7} {:>7} {:>12}",
            t.title, t.redeemed, t.voided, net, t.amount
        ))?;
    }
    w(writeln!(
        out,
        "{:<12} {:<16} {:>9} {:>7} {:>7} {:>12}",
        "TOTAL", "", "", "", tn, ta
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_764_253_845_000), "2025-11-27T14:30:45Z");
        assert_eq!(iso(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "redeemd",
            "--state-dir",
            "/x",
            "journal",
            "export",
            "--format",
            "csv",
        ]);
        assert!(c.is_ok());
        assert!(Cli::try_parse_from(["redeemd", "report"]).is_err());
    }
}
