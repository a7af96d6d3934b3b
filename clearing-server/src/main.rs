//! `clearing-server serve` and `clearing-server admin …`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clearing_server::bundle::CachePolicy;
use clearing_server::cards::{self, CardError, StatusAction};
use clearing_server::statements;
use redeemd_contract::model::{CardNumber, MerchantScope};

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
    /// Create or update a merchant (a changed category list sends its terminals a full snapshot).
    Merchant {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// The platform's commission in basis points (500 = 5 %).
        #[arg(long)]
        commission_bps: u32,
        /// A merchant category (repeat for several), for packages scoped by category.
        #[arg(long = "category")]
        categories: Vec<String>,
    },
    /// Member cards: issue, customize packages, report lost, unlock, freeze, reissue, show.
    Card {
        #[command(subcommand)]
        command: CardCommand,
    },
    /// Clearing statements from the uploaded records: what a merchant is owed, what a member used.
    Statement {
        #[command(subcommand)]
        command: StatementCommand,
    },
    /// Records that need a person before money moves: refused at upload (broken chain, bad MAC),
    /// redeemed while the card was lost/frozen/cancelled, over-redemption across shops, and voids
    /// that match no redemption line for line.
    Exceptions {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A statement period: `--from` inclusive, `--until` inclusive of that day (dates in China Standard
/// Time, or RFC 3339 instants); all records when omitted.
#[derive(clap::Args)]
struct Period {
    /// First day (YYYY-MM-DD) or instant (RFC 3339) of the period.
    #[arg(long)]
    from: Option<String>,
    /// Last day (YYYY-MM-DD, included) or end instant (RFC 3339, excluded) of the period.
    #[arg(long)]
    until: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl Period {
    /// `[from, until)` in unix ms; a period that ends before it starts is refused (it would be an
    /// empty statement that reads like a quiet period).
    fn window(&self) -> Result<(i64, i64), CardError> {
        let from = self
            .from
            .as_deref()
            .map_or(Ok(i64::MIN), |s| cards::parse_time("--from", s, false))?;
        let until = self
            .until
            .as_deref()
            .map_or(Ok(i64::MAX), |s| cards::parse_time("--until", s, true))?;
        if until <= from {
            return Err(CardError::Invalid(format!(
                "--from {} is not before --until {}",
                self.from.as_deref().unwrap_or(""),
                self.until.as_deref().unwrap_or("")
            )));
        }
        Ok((from, until))
    }
}

#[derive(Subcommand)]
enum StatementCommand {
    /// Per item: units redeemed, voided, net, settlement amount; commission at the merchant's rate; net payable.
    Merchant {
        #[arg(long)]
        merchant: String,
        #[command(flatten)]
        period: Period,
    },
    /// One card's usage at every shop, per item and record by record.
    Member {
        /// Card number (printed masked).
        #[arg(long)]
        number: String,
        #[command(flatten)]
        period: Period,
    },
}

#[derive(Subcommand)]
enum CardCommand {
    /// Issue a card: anonymous, or named with --holder (and --identity, e.g. phone last four).
    Create {
        /// Card number, 12-19 digits (spaces and dashes allowed). Stored; printed masked only.
        #[arg(long)]
        number: String,
        /// Holder's name (a named card); shown masked, e.g. 张*.
        #[arg(long)]
        holder: Option<String>,
        /// Identity data the member types at the counter (e.g. phone last four). Needs --holder.
        #[arg(long, requires = "holder")]
        identity: Option<String>,
    },
    /// Customize a package onto a card (or redefine the package of the same id; usage is kept).
    Customize {
        #[arg(long)]
        number: String,
        /// Package id, e.g. P1.
        #[arg(long)]
        package: String,
        /// Package title, e.g. 洗车套餐.
        #[arg(long)]
        title: String,
        /// Start of validity: YYYY-MM-DD (China Standard Time) or RFC 3339.
        #[arg(long)]
        valid_from: String,
        /// End of validity: YYYY-MM-DD (that day included) or RFC 3339 (exclusive).
        #[arg(long)]
        valid_until: String,
        /// Only at these merchants (repeat). Default: every merchant.
        #[arg(long = "scope-merchant", conflicts_with = "scope_categories")]
        scope_merchants: Vec<String>,
        /// Only at merchants of these categories (repeat).
        #[arg(long = "scope-category")]
        scope_categories: Vec<String>,
        /// Uses of all items of the package together per business day and terminal.
        #[arg(long)]
        daily_cap: Option<u32>,
        /// Ask for the holder's identity data before redeeming (named cards only).
        #[arg(long)]
        identity_required: bool,
        /// An item CODE:TITLE:USES:PRICE_FEN, e.g. WASH:精洗:10:3500 (repeat; at least one).
        #[arg(long = "item", required = true)]
        items: Vec<String>,
    },
    /// Report a card lost (挂失): refused everywhere, on the deny list of every merchant that sees it.
    Lost {
        #[arg(long)]
        number: String,
    },
    /// Allow a lost or frozen card again (解挂).
    Unlock {
        #[arg(long)]
        number: String,
    },
    /// Freeze a card (platform decision): refused everywhere until unlocked.
    Freeze {
        #[arg(long)]
        number: String,
    },
    /// Reissue (补卡): a new card gets what is left; the old one is cancelled.
    Reissue {
        /// The old card's number.
        #[arg(long)]
        from: String,
        /// The new card's number (must not exist yet).
        #[arg(long)]
        to: String,
    },
    /// Print a card: status, holder (masked), packages and uses left.
    Show {
        #[arg(long)]
        number: String,
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
        Command::Serve {
            listen,
            cache_validity,
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
                eprintln!("clearing-server: listening on http://{addr}");
                let state = clearing_server::AppState::new(conn, clearing_server::system_clock())
                    .with_cache_policy(cache_validity);
                clearing_server::serve(listener, state, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .map_err(|e| format!("serve: {e}"))
            })
        }
        Command::Admin {
            command:
                Admin::Merchant {
                    id,
                    name,
                    commission_bps,
                    categories,
                },
        } => in_transaction(conn, |tx| {
            cards::upsert_merchant(tx, &id, &name, commission_bps, &categories, now())?;
            eprintln!("merchant {id} saved");
            Ok(())
        }),
        Command::Admin {
            command: Admin::Card { command },
        } => card_command(conn, command),
        Command::Admin {
            command: Admin::Statement { command },
        } => statement_command(&conn, command).map_err(|e| e.to_string()),
        Command::Admin {
            command: Admin::Exceptions { json },
        } => {
            let e = statements::exceptions(&conn).map_err(|e| e.to_string())?;
            if json {
                print_json(&e)
            } else {
                print!(
                    "{}",
                    statements::render_exceptions(&conn, &e).map_err(|e| e.to_string())?
                );
                Ok(())
            }
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

fn now() -> i64 {
    (clearing_server::system_clock())()
}

/// Runs `f` in one immediate transaction, committed only if it succeeds.
fn in_transaction(
    mut conn: rusqlite::Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), CardError>,
) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    f(&tx).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

fn number(flag: &str, raw: &str) -> Result<CardNumber, CardError> {
    // The input is not echoed: it may be a real card number with a typo.
    CardNumber::parse(raw).map_err(|e| CardError::Invalid(format!("{flag}: {e}")))
}

fn card_command(conn: rusqlite::Connection, command: CardCommand) -> Result<(), String> {
    match command {
        CardCommand::Create {
            number: raw,
            holder,
            identity,
        } => in_transaction(conn, |tx| {
            let n = number("--number", &raw)?;
            let new = cards::NewCard {
                number: n.clone(),
                holder_name: holder,
                identity_data: identity,
            };
            let id = cards::create_card(tx, &new, now())?;
            eprintln!("card {} issued (#{id})", n.masked());
            Ok(())
        }),
        CardCommand::Customize {
            number: raw,
            package,
            title,
            valid_from,
            valid_until,
            scope_merchants,
            scope_categories,
            daily_cap,
            identity_required,
            items,
        } => in_transaction(conn, |tx| {
            let n = number("--number", &raw)?;
            let scope = if !scope_merchants.is_empty() {
                MerchantScope::Merchants(scope_merchants)
            } else if !scope_categories.is_empty() {
                MerchantScope::Categories(scope_categories)
            } else {
                MerchantScope::All
            };
            let spec = cards::PackageSpec {
                id: package,
                title,
                valid_from_ms: cards::parse_time("--valid-from", &valid_from, false)?,
                valid_until_ms: cards::parse_time("--valid-until", &valid_until, true)?,
                scope,
                daily_cap,
                identity_required,
                items: items
                    .iter()
                    .map(|i| cards::ItemSpec::parse(i))
                    .collect::<Result<_, _>>()?,
            };
            let v = cards::customize(tx, &n, &spec, now())?;
            eprintln!(
                "card {}: package {} saved (version {v})",
                n.masked(),
                spec.id
            );
            Ok(())
        }),
        CardCommand::Lost { number: raw } => status(conn, &raw, StatusAction::ReportLost),
        CardCommand::Unlock { number: raw } => status(conn, &raw, StatusAction::Unlock),
        CardCommand::Freeze { number: raw } => status(conn, &raw, StatusAction::Freeze),
        CardCommand::Reissue { from, to } => in_transaction(conn, |tx| {
            let (f, t) = (number("--from", &from)?, number("--to", &to)?);
            cards::reissue(tx, &f, &t, now())?;
            eprintln!(
                "card {} reissued as {}; the old card is cancelled",
                f.masked(),
                t.masked()
            );
            Ok(())
        }),
        CardCommand::Show { number: raw } => {
            let n = number("--number", &raw).map_err(|e| e.to_string())?;
            print!("{}", cards::show(&conn, &n).map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn statement_command(
    conn: &rusqlite::Connection,
    command: StatementCommand,
) -> Result<(), CardError> {
    match command {
        StatementCommand::Merchant { merchant, period } => {
            let (s, name) = statements::merchant_statement(conn, &merchant, period.window()?)?;
            if period.json {
                print_json(&s).map_err(CardError::Invalid)
            } else {
                print!("{}", statements::render_merchant(&s, &name));
                Ok(())
            }
        }
        StatementCommand::Member {
            number: raw,
            period,
        } => {
            let n = number("--number", &raw)?;
            let s = statements::member_statement(conn, &n, period.window()?)?;
            if period.json {
                print_json(&s).map_err(CardError::Invalid)
            } else {
                print!("{}", statements::render_member(&s, &n.masked()));
                Ok(())
            }
        }
    }
}

fn status(conn: rusqlite::Connection, raw: &str, action: StatusAction) -> Result<(), String> {
    in_transaction(conn, |tx| {
        let n = number("--number", raw)?;
        let v = cards::set_status(tx, &n, action, now())?;
        let row = cards::card_by_number(tx, &n)?;
        eprintln!(
            "card {} is {} (version {v})",
            n.masked(),
            cards::status_name(row.status)
        );
        Ok(())
    })
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
