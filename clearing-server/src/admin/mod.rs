//! `clearing-server admin …`: the operator's commands, a thin client of [`crate::storage`]'s operations
//! (each command one transaction) with the text of [`render`]. Errors name the input; card numbers are
//! printed masked (first 6 / last 4).

pub mod render;

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use redeemd_contract::model::{CardNumber, MerchantScope};

use crate::storage::cards::{self, CardError, StatusAction};
use crate::storage::{self, Db, statements};
use crate::vault::Vault;

#[derive(Subcommand)]
pub enum Admin {
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
    /// The platform master key: make one, or rotate the database to a new one.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
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

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Write a new master key (32 random bytes, hex) to a new file, mode 0600. Keep it apart from the
    /// database (another disk, a systemd credential): the database alone must not open card numbers.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-seal every card number, identity and terminal secret under a new master key, given with
    /// --new-master-key-file; the current one comes from --master-key-file / --master-key-credential.
    /// Stop the servers first and restart them with the new key; an interrupted rotation is finished
    /// by running it again with the same two keys.
    Rotate {
        #[arg(long)]
        new_master_key_file: PathBuf,
    },
}

/// A statement period: `--from` inclusive, `--until` inclusive of that day (dates in China Standard
/// Time, or RFC 3339 instants); all records when omitted.
#[derive(clap::Args)]
pub struct Period {
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
pub enum StatementCommand {
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
pub enum CardCommand {
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

/// Runs one admin command against `db`: input parsed first, then one transaction (retried on a
/// conflict with another server or admin), then what it did printed once it committed.
pub fn run(db: &Db, vault: &Vault, command: Admin) -> Result<(), String> {
    match command {
        Admin::Merchant {
            id,
            name,
            commission_bps,
            categories,
        } => {
            let now = now();
            db.write(|tx| cards::upsert_merchant(tx, &id, &name, commission_bps, &categories, now))
                .map_err(|e| e.to_string())?;
            eprintln!("merchant {id} saved");
            Ok(())
        }
        Admin::Card { command } => card_command(db, vault, command).map_err(|e| e.to_string()),
        Admin::Statement { command } => {
            statement_command(db, vault, command).map_err(|e| e.to_string())
        }
        // Handled before the database is opened (`main`): they need no database, or another vault.
        Admin::Key { .. } => Ok(()),
        Admin::Exceptions { json } => {
            let (e, text) = db
                .read(|tx| -> Result<_, CardError> {
                    let e = statements::exceptions(tx)?;
                    let text = render::exceptions(tx, &e)?;
                    Ok((e, text))
                })
                .map_err(|e| e.to_string())?;
            if json {
                print_json(&e)
            } else {
                print!("{text}");
                Ok(())
            }
        }
        Admin::Disable { terminal } => set_enabled(db, &terminal, false),
        Admin::Enable { terminal } => set_enabled(db, &terminal, true),
        Admin::Enroll {
            terminal,
            merchant,
            key_file,
        } => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
            let now = now();
            let text = format!("{}\n", hex::encode(secret));
            // The key file first: a secret the platform holds but nobody received is useless.
            if let Some(path) = &key_file {
                write_private(path, text.as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if let Err(e) =
                db.write(|tx| storage::enroll(tx, vault, &terminal, &merchant, &secret, now))
            {
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
    (crate::http::system_clock())()
}

fn number(flag: &str, raw: &str) -> Result<CardNumber, CardError> {
    // The input is not echoed: it may be a real card number with a typo.
    CardNumber::parse(raw).map_err(|e| CardError::Invalid(format!("{flag}: {e}")))
}

fn card_command(db: &Db, vault: &Vault, command: CardCommand) -> Result<(), CardError> {
    match command {
        CardCommand::Create {
            number: raw,
            holder,
            identity,
        } => {
            let new = cards::NewCard {
                number: number("--number", &raw)?,
                holder_name: holder,
                identity_data: identity,
            };
            let now = now();
            let id = db.write(|tx| cards::create_card(tx, vault, &new, now))?;
            eprintln!("card {} issued (#{id})", new.number.masked());
            Ok(())
        }
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
        } => {
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
            let now = now();
            let v = db.write(|tx| cards::customize(tx, vault, &n, &spec, now))?;
            eprintln!(
                "card {}: package {} saved (version {v})",
                n.masked(),
                spec.id
            );
            Ok(())
        }
        CardCommand::Lost { number: raw } => status(db, vault, &raw, StatusAction::ReportLost),
        CardCommand::Unlock { number: raw } => status(db, vault, &raw, StatusAction::Unlock),
        CardCommand::Freeze { number: raw } => status(db, vault, &raw, StatusAction::Freeze),
        CardCommand::Reissue { from, to } => {
            let (f, t) = (number("--from", &from)?, number("--to", &to)?);
            let now = now();
            db.write(|tx| cards::reissue(tx, vault, &f, &t, now))?;
            eprintln!(
                "card {} reissued as {}; the old card is cancelled",
                f.masked(),
                t.masked()
            );
            Ok(())
        }
        CardCommand::Show { number: raw } => {
            let n = number("--number", &raw)?;
            print!("{}", db.read(|tx| render::card(tx, vault, &n))?);
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn statement_command(db: &Db, vault: &Vault, command: StatementCommand) -> Result<(), CardError> {
    match command {
        StatementCommand::Merchant { merchant, period } => {
            let window = period.window()?;
            let (s, name) = db.read(|tx| statements::merchant_statement(tx, &merchant, window))?;
            if period.json {
                print_json(&s).map_err(CardError::Invalid)
            } else {
                print!("{}", render::merchant(&s, &name));
                Ok(())
            }
        }
        StatementCommand::Member {
            number: raw,
            period,
        } => {
            let n = number("--number", &raw)?;
            let window = period.window()?;
            let s = db.read(|tx| statements::member_statement(tx, vault, &n, window))?;
            if period.json {
                print_json(&s).map_err(CardError::Invalid)
            } else {
                print!("{}", render::member(&s, &n.masked()));
                Ok(())
            }
        }
    }
}

fn status(db: &Db, vault: &Vault, raw: &str, action: StatusAction) -> Result<(), CardError> {
    let n = number("--number", raw)?;
    let now = now();
    let (v, row) = db.write(|tx| {
        let v = cards::set_status(tx, vault, &n, action, now)?;
        Ok::<_, CardError>((v, cards::card_by_number(tx, vault, &n)?))
    })?;
    eprintln!(
        "card {} is {} (version {v})",
        n.masked(),
        cards::status_name(row.status)
    );
    Ok(())
}

fn set_enabled(db: &Db, terminal: &str, enabled: bool) -> Result<(), String> {
    match db.write(|tx| storage::set_enabled(tx, terminal, enabled)) {
        Ok(true) => {
            let state = if enabled { "enabled" } else { "disabled" };
            eprintln!("terminal {terminal} {state}");
            Ok(())
        }
        Ok(false) => Err(format!("terminal {terminal} is not enrolled")),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `bytes` to a new file of mode 0600 (a key: never over an existing file).
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
