//! `clearing-server serve` and `clearing-server admin …`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use clearing_server::admin::{Admin, KeyCommand};
use clearing_server::core::cache_policy::CachePolicy;
use clearing_server::core::fleet::FleetPolicy;
use clearing_server::vault::{KeySource, MasterKey, Vault};

#[derive(Parser)]
#[command(version, about = "Reference clearing server for redeemd terminals")]
struct Cli {
    /// The database: an SQLite file (`PATH` or `sqlite:PATH`, created if missing) or PostgreSQL
    /// (`postgres://user@host/dbname`; a Unix socket directory as the percent-encoded host).
    #[arg(long, env = "CLEARING_DB", default_value = "clearing.sqlite3")]
    db: String,
    /// The platform master key (hex, a file of mode 0600): card numbers, identity data and terminal
    /// secrets are stored sealed under it. `admin key generate --out FILE` makes one.
    #[arg(
        long,
        env = "CLEARING_MASTER_KEY_FILE",
        conflicts_with = "master_key_credential"
    )]
    master_key_file: Option<PathBuf>,
    /// The master key as a systemd credential of this name (`LoadCredential=` in the unit).
    #[arg(long, env = "CLEARING_MASTER_KEY_CREDENTIAL")]
    master_key_credential: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (plain HTTP: put it behind TLS, or use it on loopback).
    Serve {
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// How long a signed cache lets a shop redeem without reaching the platform, in hours (1 to
        /// 720 = 30 days); past it the shop declines every card until it syncs. A quiet platform
        /// renews caches every 24 h (every third of the validity when that is shorter).
        #[arg(
            long = "cache-validity-hours",
            value_name = "HOURS",
            default_value_t = CachePolicy::default(),
            value_parser = CachePolicy::parse_hours
        )]
        cache_validity: CachePolicy,
        /// A terminal that sent no health report for more than this many of its sync intervals is
        /// silent (an alert of the fleet view), 1 to 1000.
        #[arg(
            long,
            value_name = "N",
            default_value_t = FleetPolicy::default().silent_intervals,
            value_parser = FleetPolicy::parse_intervals
        )]
        silent_intervals: u32,
    },
    /// Platform administration.
    Admin {
        #[command(subcommand)]
        command: clearing_server::admin::Admin,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clearing-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn master_key(cli: &Cli) -> Result<MasterKey, String> {
    let source = match (&cli.master_key_file, &cli.master_key_credential) {
        (Some(f), _) => KeySource::File(f.clone()),
        (None, Some(c)) => KeySource::Credential(c.clone()),
        (None, None) => {
            return Err(
                "no platform master key: give --master-key-file FILE (mode 0600; \
                        `clearing-server admin key generate --out FILE` makes one) or \
                        --master-key-credential NAME"
                    .into(),
            );
        }
    };
    MasterKey::load(&source).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    let now = (clearing_server::system_clock())();
    let vault = match &cli.command {
        Command::Admin {
            command:
                Admin::Key {
                    command: KeyCommand::Generate { out },
                },
        } => {
            let text = clearing_server::vault::generate_hex().map_err(|e| e.to_string())?;
            clearing_server::admin::write_private(out, text.as_bytes())
                .map_err(|e| format!("{}: {e}", out.display()))?;
            let key = MasterKey::from_hex_text(&text)?;
            eprintln!(
                "master key {} written to {}",
                key.fingerprint_hex(),
                out.display()
            );
            return Ok(());
        }
        Command::Admin {
            command:
                Admin::Key {
                    command:
                        KeyCommand::Rotate {
                            new_master_key_file,
                        },
                },
        } => Vault::with_previous(
            MasterKey::load(&KeySource::File(new_master_key_file.clone()))
                .map_err(|e| e.to_string())?,
            master_key(&cli)?,
        ),
        _ => Vault::new(master_key(&cli)?),
    };
    let db = clearing_server::storage::Db::open(&cli.db).map_err(|e| format!("--db: {e}"))?;
    let sealed =
        clearing_server::storage::sealing::bind(&db, &vault, now).map_err(|e| e.to_string())?;
    if sealed.cards + sealed.terminals > 0 {
        eprintln!(
            "clearing-server: sealed {} cards and {} terminal secrets under master key {}",
            sealed.cards,
            sealed.terminals,
            vault.current().fingerprint_hex()
        );
    }
    match cli.command {
        Command::Serve {
            listen,
            cache_validity,
            silent_intervals,
        } => {
            let rt = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("listen on {listen}: {e}"))?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                // Before the listening line, which tools wait for (and may stop reading after).
                let refresh_min = cache_validity.refresh_after_ms() / 60_000;
                let refresh = if refresh_min % 60 == 0 {
                    format!("{} h", refresh_min / 60)
                } else {
                    format!("{refresh_min} min")
                };
                eprintln!(
                    "clearing-server: signed caches valid {cache_validity} h, renewed after {refresh} on a quiet platform"
                );
                let open_files = clearing_server::http::raise_open_files_limit();
                let limits = clearing_server::Limits::default().within_open_files(open_files);
                eprintln!(
                    "clearing-server: up to {} connections at once (open files limit {open_files}), idle ones closed after {} s; {} requests worked on at once, beyond a short wait answered 503 with Retry-After",
                    limits.max_connections,
                    limits.header_timeout.as_secs(),
                    limits.admission.max_in_flight
                );
                eprintln!("clearing-server: listening on http://{addr}");
                let state = clearing_server::AppState::new(db, vault, clearing_server::system_clock())
                    .with_cache_policy(cache_validity)
                    .with_limits(limits)
                    .with_fleet_policy(FleetPolicy {
                        silent_intervals,
                        ..FleetPolicy::default()
                    });
                clearing_server::serve(listener, state, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .map_err(|e| format!("serve: {e}"))
            })
        }
        Command::Admin { command } => clearing_server::admin::run(&db, &vault, command),
    }
}
