//! `clearing-server serve` and `clearing-server admin …`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Reference clearing server for redeemd terminals")]
struct Cli {
    /// The server's SQLite database (created if missing).
    #[arg(long, env = "CLEARING_DB", default_value = "clearing.sqlite3")]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (plain HTTP: put it behind TLS, or use it on loopback).
    Serve {
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
    },
    /// Platform administration.
    Admin {
        #[command(subcommand)]
        command: Admin,
    },
}

#[derive(Subcommand)]
enum Admin {
    /// Enroll a terminal for a merchant with a fresh 32-byte secret.
    Enroll {
        #[arg(long)]
        terminal: String,
        #[arg(long)]
        merchant: String,
        /// Write the secret (hex) to this new file, mode 0600, instead of printing it.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Refuse every request of a terminal (stolen PC, closed shop) until it is enabled again.
    Disable {
        #[arg(long)]
        terminal: String,
    },
    /// Accept a disabled terminal's requests again.
    Enable {
        #[arg(long)]
        terminal: String,
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

fn run(cli: Cli) -> Result<(), String> {
    let conn =
        clearing_server::db::open(&cli.db).map_err(|e| format!("{}: {e}", cli.db.display()))?;
    match cli.command {
        Command::Serve { listen } => {
            let rt = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("listen on {listen}: {e}"))?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                eprintln!("clearing-server: listening on http://{addr}");
                let app = clearing_server::router(clearing_server::AppState::new(
                    conn,
                    clearing_server::system_clock(),
                ));
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await
                    .map_err(|e| format!("serve: {e}"))
            })
        }
        Command::Admin {
            command: Admin::Disable { terminal },
        } => set_enabled(&conn, &terminal, false),
        Command::Admin {
            command: Admin::Enable { terminal },
        } => set_enabled(&conn, &terminal, true),
        Command::Admin {
            command:
                Admin::Enroll {
                    terminal,
                    merchant,
                    key_file,
                },
        } => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
            let now = (clearing_server::system_clock())();
            let text = format!("{}\n", hex::encode(secret));
            // The key file first: a secret the platform holds but nobody received is useless.
            if let Some(path) = &key_file {
                write_private(path, text.as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if let Err(e) = clearing_server::db::enroll(&conn, &terminal, &merchant, &secret, now) {
                if let Some(path) = &key_file {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e.to_string());
            }
            if key_file.is_none() {
                print!("{text}");
            }
            eprintln!("enrolled terminal {terminal} for merchant {merchant}");
            Ok(())
        }
    }
}

fn set_enabled(conn: &rusqlite::Connection, terminal: &str, enabled: bool) -> Result<(), String> {
    match clearing_server::db::set_enabled(conn, terminal, enabled) {
        Ok(true) => {
            let state = if enabled { "enabled" } else { "disabled" };
            eprintln!("terminal {terminal} {state}");
            Ok(())
        }
        Ok(false) => Err(format!("terminal {terminal} is not enrolled")),
        Err(e) => Err(e.to_string()),
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
