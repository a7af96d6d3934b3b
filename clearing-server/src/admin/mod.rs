//! `clearing-server admin …`: the operator's commands, a thin client of the platform's operations
//! ([`crate::service`], the same functions the platform API calls) acting as an operator named by the
//! account that runs it, with the text of [`render`] (`--json`: the API's JSON). Errors name the input
//! by its flag; card numbers are printed masked (first 6 / last 4). Every change is in the audit log.

pub mod render;

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use redeemd_contract::model::{CardNumber, MerchantScope};

use crate::core::cards::{self, ItemSpec, NewCard, PackageSpec, StatusAction};
use crate::core::catalogue::Offer;
use crate::core::fleet::FleetPolicy;
use crate::core::problem::Problem;
use crate::service::cards::CardSel;
use crate::service::merchants::MerchantInput;
use crate::service::{self, Service, people};
use crate::storage::Db;
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
        /// Only those about this merchant's records (as the merchant sees them).
        #[arg(long)]
        merchant: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The fleet: every terminal's latest health report (readers, cache, backlog, version) and its
    /// alerts — silent, reader down, cache expiring, uploads halted, close mismatched, amount held.
    Fleet {
        /// Only this merchant's terminals.
        #[arg(long)]
        merchant: Option<String>,
        /// Sync intervals without a report after which a terminal is silent.
        #[arg(long, default_value_t = FleetPolicy::default().silent_intervals,
              value_parser = FleetPolicy::parse_intervals)]
        silent_intervals: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One-time pairing codes with which a shop PC enrolls itself (`redeemd enroll`).
    Pairing {
        #[command(subcommand)]
        command: PairingCommand,
    },
    /// API keys of the platform API (operator, merchant, member app): issue, list, revoke.
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
    /// Console logins (operators and merchants; passwords stored with argon2id).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The catalogue of packages the member app offers.
    Catalogue {
        #[command(subcommand)]
        command: CatalogueCommand,
    },
    /// The audit log: every change, who made it and when, newest first.
    Audit {
        /// Entries to print.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PairingCommand {
    /// Make a code (printed once, `XXXX-XXXX`) for a terminal of a merchant.
    Create {
        #[arg(long)]
        merchant: String,
        /// The terminal id the shop gets [default: a new one, T-XXXXXXXX].
        #[arg(long)]
        terminal: Option<String>,
        /// How long the code works, 1 to 60 minutes.
        #[arg(long)]
        ttl_minutes: Option<u32>,
    },
    /// A merchant's codes: terminal, expiry, use (never the codes).
    List {
        #[arg(long)]
        merchant: String,
    },
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Issue an API key (printed once on stdout; only its hash is kept).
    Create {
        /// operator, merchant or member_app.
        #[arg(long)]
        role: String,
        /// Whom it acts as: an operator's name, the merchant id, the member app's id.
        #[arg(long)]
        subject: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (k_…): refused from its next request on.
    Revoke {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a console login; the password is read from stdin (one line).
    Add {
        #[arg(long)]
        name: String,
        /// operator or merchant.
        #[arg(long)]
        role: String,
        /// The operator's name or the merchant id.
        #[arg(long)]
        subject: String,
    },
    List,
    Revoke {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
pub enum CatalogueCommand {
    /// Create or replace an offer.
    Set {
        #[arg(long)]
        offer: String,
        #[arg(long)]
        title: String,
        /// Days a package made from it is valid, from the day it is customized.
        #[arg(long)]
        valid_days: u32,
        #[command(flatten)]
        holds: PackageArgs,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop offering it (packages made from it stay).
    Retire {
        #[arg(long)]
        offer: String,
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
    /// `[from, until)` in unix ms (`service::window`).
    fn window(&self) -> Result<(i64, i64), Problem> {
        service::window(self.from.as_deref(), self.until.as_deref())
    }
}

#[derive(Subcommand)]
pub enum StatementCommand {
    /// Per item: units redeemed, voided, net, settlement amount; commission at the merchant's rate; net payable.
    Merchant {
        #[arg(long)]
        merchant: String,
        /// One statement per business day that has records (needs --from and --until).
        #[arg(long)]
        daily: bool,
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

/// What a package (or a catalogue offer) holds and where it may be used.
#[derive(clap::Args)]
pub struct PackageArgs {
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
}

impl PackageArgs {
    fn scope(&self) -> MerchantScope {
        if !self.scope_merchants.is_empty() {
            MerchantScope::Merchants(self.scope_merchants.clone())
        } else if !self.scope_categories.is_empty() {
            MerchantScope::Categories(self.scope_categories.clone())
        } else {
            MerchantScope::All
        }
    }

    fn items(&self) -> Result<Vec<ItemSpec>, Problem> {
        self.items.iter().map(|i| ItemSpec::parse(i)).collect()
    }
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
        #[command(flatten)]
        holds: PackageArgs,
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
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give the card to a member app: prints the handle (mc_…) by which the app names it.
    Grant {
        #[arg(long)]
        number: String,
        /// The member app's id (the subject of its API key).
        #[arg(long)]
        app: String,
    },
    /// Take the card back from a member app.
    RevokeGrant {
        #[arg(long)]
        number: String,
        #[arg(long)]
        app: String,
    },
    /// Issue many cards with their packages from a CSV file, all or nothing: one line per card and
    /// package, columns number, holder, identity, package, title, valid_from, valid_until, scope,
    /// daily_cap, identity_required, items (see clearing-server/README.md). A bad line is named with
    /// its line number, and nothing of the file is imported; so is a number already issued.
    Import {
        /// The CSV file (UTF-8, with a header line).
        file: PathBuf,
    },
}

/// Runs one admin command against `db` as the operator running the CLI: input parsed first, then one
/// operation of [`crate::service`] (one transaction, retried on a conflict with another server or
/// admin), then what it did printed once it committed.
pub fn run(db: &Db, vault: &Vault, command: Admin) -> Result<(), String> {
    let who = service::cli_principal();
    let svc = Service::new(db, vault, &who, now());
    command_of(&svc, command).map_err(|p| p.for_cli())
}

fn command_of(svc: &Service<'_>, command: Admin) -> Result<(), Problem> {
    match command {
        Admin::Merchant {
            id,
            name,
            commission_bps,
            categories,
        } => {
            svc.put_merchant(
                &id,
                &MerchantInput {
                    name,
                    commission_bps,
                    categories,
                },
            )?;
            eprintln!("merchant {id} saved");
            Ok(())
        }
        Admin::Card { command } => card_command(svc, command),
        Admin::Statement { command } => statement_command(svc, command),
        // Handled before the database is opened (`main`): they need no database, or another vault.
        Admin::Key { .. } => Ok(()),
        Admin::Exceptions { merchant, json } => {
            let e = match &merchant {
                Some(m) => svc.merchant_exceptions(m)?,
                None => svc.exceptions()?,
            };
            if json {
                print_json(&e)
            } else {
                print!("{}", render::exceptions(&e));
                Ok(())
            }
        }
        Admin::Fleet {
            merchant,
            silent_intervals,
            json,
        } => {
            let svc = Service {
                fleet: FleetPolicy {
                    silent_intervals,
                    ..FleetPolicy::default()
                },
                ..*svc
            };
            let terminals = match &merchant {
                Some(m) => svc.terminals(m)?,
                None => svc.fleet()?,
            };
            if json {
                print_json(&terminals)
            } else {
                print!("{}", render::fleet(&terminals));
                Ok(())
            }
        }
        Admin::Disable { terminal } => {
            svc.set_terminal_enabled(&terminal, false)?;
            eprintln!("terminal {terminal} disabled");
            Ok(())
        }
        Admin::Enable { terminal } => {
            svc.set_terminal_enabled(&terminal, true)?;
            eprintln!("terminal {terminal} enabled");
            Ok(())
        }
        Admin::Enroll {
            terminal,
            merchant,
            key_file,
        } => {
            let mut secret = zeroize::Zeroizing::new([0u8; 32]);
            getrandom::fill(secret.as_mut())
                .map_err(|e| Problem::internal(format!("no randomness: {e}")))?;
            let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(&secret[..])));
            // The key file first: a secret the platform holds but nobody received is useless.
            if let Some(path) = &key_file {
                write_private(path, text.as_bytes()).map_err(|e| {
                    Problem::invalid("key_file", format!("{}: {e}", path.display()))
                })?;
            }
            if let Err(e) = svc.enroll_terminal(&terminal, &merchant, &secret) {
                if let Some(path) = &key_file {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
            if key_file.is_none() {
                print!("{}", *text);
            }
            eprintln!("enrolled terminal {terminal} for merchant {merchant}");
            Ok(())
        }
        Admin::Pairing { command } => match command {
            PairingCommand::Create {
                merchant,
                terminal,
                ttl_minutes,
            } => {
                let c = svc.create_pairing_code(&merchant, terminal.as_deref(), ttl_minutes)?;
                println!("{}", c.code);
                eprintln!(
                    "pairing code for terminal {} of merchant {}, valid until {}: on the shop PC run\n  sudo redeemd enroll --server https://YOUR-PLATFORM --code {}",
                    c.terminal_id,
                    c.merchant_id,
                    cards::rfc3339(c.expires_at_ms),
                    c.code
                );
                Ok(())
            }
            PairingCommand::List { merchant } => {
                for c in svc.pairing_codes(&merchant)? {
                    println!(
                        "{}  made {} by {}  expires {}  {}",
                        c.terminal_id,
                        cards::rfc3339(c.created_ms),
                        c.created_by,
                        cards::rfc3339(c.expires_ms),
                        c.used_ms.map_or_else(
                            || "unused".to_owned(),
                            |u| format!("used {}", cards::rfc3339(u))
                        )
                    );
                }
                Ok(())
            }
        },
        Admin::Credential { command } => match command {
            CredentialCommand::Create {
                role,
                subject,
                label,
            } => {
                let role = people::parse_role("role", &role)?;
                let issued = svc.create_credential(role, &subject, &label)?;
                println!("{}", issued.token);
                eprintln!(
                    "API key {} for {role} {subject}: shown once, keep it in the client's secret store",
                    issued.credential.id
                );
                Ok(())
            }
            CredentialCommand::List { json } => {
                let list = svc.credentials()?;
                if json {
                    return print_json(&list);
                }
                for c in list {
                    let who = format!("{}  {} {}  {:?}", c.id, c.role, c.subject, c.label);
                    println!("{who}  {}", made(c.created_ms, &c.created_by, c.revoked_ms));
                }
                Ok(())
            }
            CredentialCommand::Revoke { id } => {
                svc.revoke_credential(&id)?;
                eprintln!("credential {id} revoked");
                Ok(())
            }
        },
        Admin::User { command } => match command {
            UserCommand::Add {
                name,
                role,
                subject,
            } => {
                let role = people::parse_role("role", &role)?;
                let mut line = zeroize::Zeroizing::new(String::new());
                std::io::stdin()
                    .take(1024)
                    .read_to_string(&mut line)
                    .map_err(|e| Problem::invalid("password", format!("reading stdin: {e}")))?;
                let password = line.lines().next().unwrap_or("");
                svc.create_user(&name, role, &subject, password)?;
                eprintln!("user {name} ({role} {subject}) added");
                Ok(())
            }
            UserCommand::List => {
                for u in svc.users()? {
                    let who = format!("{}  {} {}", u.name, u.role, u.subject);
                    println!("{who}  {}", made(u.created_ms, &u.created_by, u.revoked_ms));
                }
                Ok(())
            }
            UserCommand::Revoke { name } => {
                svc.revoke_user(&name)?;
                eprintln!("user {name} revoked");
                Ok(())
            }
        },
        Admin::Catalogue { command } => catalogue_command(svc, command),
        Admin::Audit { limit, json } => {
            let entries = svc.audit_log(None, limit)?;
            if json {
                print_json(&entries)
            } else {
                print!("{}", render::audit(&entries));
                Ok(())
            }
        }
    }
}

/// `made … by …`, and `REVOKED …` once revoked: a credential's or a login's history on one line.
fn made(created_ms: i64, created_by: &str, revoked_ms: Option<i64>) -> String {
    format!(
        "made {} by {created_by}{}",
        cards::rfc3339(created_ms),
        revoked_ms
            .map(|r| format!("  REVOKED {}", cards::rfc3339(r)))
            .unwrap_or_default()
    )
}

fn now() -> i64 {
    (crate::http::system_clock())()
}

fn number(field: &str, raw: &str) -> Result<CardNumber, Problem> {
    // The input is not echoed: it may be a real card number with a typo.
    CardNumber::parse(raw).map_err(|e| Problem::invalid(field, e.to_string()))
}

fn card_command(svc: &Service<'_>, command: CardCommand) -> Result<(), Problem> {
    match command {
        CardCommand::Create {
            number: raw,
            holder,
            identity,
        } => {
            let new = NewCard {
                number: number("number", &raw)?,
                holder_name: holder,
                identity_data: identity,
            };
            let card = svc.create_card(&new)?;
            eprintln!(
                "card {} issued (#{})",
                card.masked_number,
                card.card_id.unwrap_or_default()
            );
            Ok(())
        }
        CardCommand::Customize {
            number: raw,
            package,
            title,
            valid_from,
            valid_until,
            holds: p,
        } => {
            let n = number("number", &raw)?;
            let spec = PackageSpec {
                id: package,
                title,
                valid_from_ms: cards::parse_time("valid_from", &valid_from, false)?,
                valid_until_ms: cards::parse_time("valid_until", &valid_until, true)?,
                scope: p.scope(),
                daily_cap: p.daily_cap,
                identity_required: p.identity_required,
                items: p.items()?,
            };
            let card = svc.customize(CardSel::Number(&n), &spec)?;
            eprintln!(
                "card {}: package {} saved (version {})",
                card.masked_number, spec.id, card.version
            );
            Ok(())
        }
        CardCommand::Lost { number: raw } => status(svc, &raw, StatusAction::ReportLost),
        CardCommand::Unlock { number: raw } => status(svc, &raw, StatusAction::Unlock),
        CardCommand::Freeze { number: raw } => status(svc, &raw, StatusAction::Freeze),
        CardCommand::Reissue { from, to } => {
            let (f, t) = (number("from", &from)?, number("to", &to)?);
            svc.reissue(CardSel::Number(&f), &t)?;
            eprintln!(
                "card {} reissued as {}; the old card is cancelled",
                f.masked(),
                t.masked()
            );
            Ok(())
        }
        CardCommand::Show { number: raw, json } => {
            let card = svc.card(CardSel::Number(&number("number", &raw)?))?;
            if json {
                print_json(&card)
            } else {
                print!("{}", render::card(&card));
                Ok(())
            }
        }
        CardCommand::Grant { number: raw, app } => {
            let g = svc.grant_card(CardSel::Number(&number("number", &raw)?), &app)?;
            println!("{}", g.handle);
            eprintln!("card #{} granted to member app {app}", g.card_id);
            Ok(())
        }
        CardCommand::RevokeGrant { number: raw, app } => {
            let n = number("number", &raw)?;
            svc.revoke_grant(CardSel::Number(&n), &app)?;
            eprintln!("card {} taken back from member app {app}", n.masked());
            Ok(())
        }
        CardCommand::Import { file } => {
            let started = std::time::Instant::now();
            // Every refusal names the file; the problem's own text names the line.
            let in_file = |p: Problem| {
                Problem::new(
                    p.status,
                    p.code,
                    format!("{}: {}", file.display(), p.message()),
                )
            };
            let text = std::fs::read(&file)
                .map_err(|e| in_file(Problem::new(400, "malformed_request", e.to_string())))?;
            let done = svc.import_cards(&text).map_err(in_file)?;
            eprintln!(
                "{}: {} cards issued with {} packages ({} items) at entitlement version {} in {:.1} s",
                file.display(),
                done.cards,
                done.packages,
                done.items,
                done.version,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn catalogue_command(svc: &Service<'_>, command: CatalogueCommand) -> Result<(), Problem> {
    match command {
        CatalogueCommand::Set {
            offer,
            title,
            valid_days,
            holds: p,
        } => {
            let o = Offer {
                id: offer,
                title,
                valid_days,
                scope: p.scope(),
                daily_cap: p.daily_cap,
                identity_required: p.identity_required,
                items: p.items()?,
                active: true,
            };
            svc.put_offer(&o)?;
            eprintln!("offer {} saved", o.id);
            Ok(())
        }
        CatalogueCommand::List { json } => {
            let offers: Vec<_> = svc
                .catalogue(true)?
                .iter()
                .map(crate::service::catalogue::OfferView::from)
                .collect();
            if json {
                return print_json(&offers);
            }
            for o in offers {
                let items: Vec<String> = o
                    .items
                    .iter()
                    .map(|i| {
                        format!(
                            "{} {} ×{} at {} fen",
                            i.service_code, i.title, i.uses_total, i.price_fen
                        )
                    })
                    .collect();
                println!(
                    "{}  {}  {} days{}  {}",
                    o.offer_id,
                    o.title,
                    o.valid_days,
                    if o.active { "" } else { "  RETIRED" },
                    items.join(", ")
                );
            }
            Ok(())
        }
        CatalogueCommand::Retire { offer } => {
            svc.retire_offer(&offer)?;
            eprintln!("offer {offer} retired");
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Problem> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Problem::internal(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn statement_command(svc: &Service<'_>, command: StatementCommand) -> Result<(), Problem> {
    match command {
        StatementCommand::Merchant {
            merchant,
            daily,
            period,
        } => {
            let window = period.window()?;
            let name = svc.merchant(&merchant)?.name;
            if daily {
                let days = svc.merchant_daily(&merchant, window)?;
                if period.json {
                    return print_json(&days);
                }
                for s in &days {
                    print!("{}", render::merchant(s, &name));
                }
                return Ok(());
            }
            let (s, name) = svc.merchant_statement(&merchant, window)?;
            if period.json {
                print_json(&s)
            } else {
                print!("{}", render::merchant(&s, &name));
                Ok(())
            }
        }
        StatementCommand::Member {
            number: raw,
            period,
        } => {
            let n = number("number", &raw)?;
            let window = period.window()?;
            let s = svc.card_usage(CardSel::Number(&n), window)?;
            if period.json {
                print_json(&s)
            } else {
                print!("{}", render::member(&s, &n.masked()));
                Ok(())
            }
        }
    }
}

fn status(svc: &Service<'_>, raw: &str, action: StatusAction) -> Result<(), Problem> {
    let n = number("number", raw)?;
    let card = svc.set_card_status(CardSel::Number(&n), action)?;
    eprintln!(
        "card {} is {} (version {})",
        card.masked_number, card.status, card.version
    );
    Ok(())
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
