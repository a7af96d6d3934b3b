//! Merchants and what is theirs: terminals (with health and alerts), pairing codes, statements per
//! period and per day, exceptions. A merchant reaches only its own (another's is not found); changes
//! to merchants and terminals are the operator's.

use redeemd_contract::health::HealthReport;
use redeemd_contract::request::is_valid_id;
use serde::Serialize;

use super::{Service, random};
use crate::core::access::Want;
use crate::core::cards::{day_start, rfc3339};
use crate::core::clearing::{self, MerchantStatement};
use crate::core::fleet::{self, Alert, TerminalFacts};
use crate::core::pairing;
use crate::core::problem::Problem;
use crate::storage::cards::{self as card_store, Merchant};
use crate::storage::statements::{self, Exceptions};
use crate::storage::{Tx, fleet as fleet_store, pairing as pairing_store, terminals};

/// A merchant as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MerchantView {
    pub merchant_id: String,
    pub name: String,
    pub commission_bps: u32,
    pub categories: Vec<String>,
}

impl From<Merchant> for MerchantView {
    fn from(m: Merchant) -> Self {
        MerchantView {
            merchant_id: m.id,
            name: m.name,
            commission_bps: m.commission_bps,
            categories: m.categories,
        }
    }
}

/// What an operator sets on a merchant.
#[derive(Debug, Clone)]
pub struct MerchantInput {
    pub name: String,
    pub commission_bps: u32,
    pub categories: Vec<String>,
}

/// A terminal as the API shows it: enrolment, its latest health report and its alerts. Never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct TerminalView {
    pub terminal_id: String,
    pub merchant_id: String,
    pub enabled: bool,
    pub enrolled_at_ms: i64,
    /// When the platform last received its health report.
    pub last_report_at_ms: Option<i64>,
    pub health: Option<HealthReport>,
    pub alerts: Vec<Alert>,
}

/// A new pairing code: shown once, here.
#[derive(Debug, Clone, Serialize)]
pub struct NewPairingCode {
    pub code: String,
    pub terminal_id: String,
    pub merchant_id: String,
    pub expires_at_ms: i64,
}

/// Longest period of a daily statement.
pub const MAX_DAILY_DAYS: i64 = 366;

/// The terminals of one merchant (or every merchant) with their health and alerts.
pub(super) fn terminal_views(
    svc: &Service<'_>,
    tx: &mut dyn Tx,
    merchant: Option<&str>,
) -> Result<Vec<TerminalView>, Problem> {
    let held = fleet_store::held(tx, merchant)?;
    let mut out = Vec::new();
    for t in fleet_store::terminals(tx, merchant)? {
        let report = fleet_store::report_of(tx, &t.id)?;
        let (held_records, held_claimed_fen) = held.get(&t.id).copied().unwrap_or((0, 0));
        let facts = TerminalFacts {
            terminal_id: &t.id,
            merchant_id: &t.merchant_id,
            enabled: t.enabled,
            enrolled_ms: t.enrolled_ms,
            report: report.as_ref().map(|(at, r)| (*at, r)),
            held_records,
            held_claimed_fen,
        };
        let alerts = fleet::alerts(&facts, svc.fleet, svc.now_ms, rfc3339);
        out.push(TerminalView {
            alerts,
            last_report_at_ms: report.as_ref().map(|(at, _)| *at),
            health: report.map(|(_, r)| r),
            terminal_id: t.id,
            merchant_id: t.merchant_id,
            enabled: t.enabled,
            enrolled_at_ms: t.enrolled_ms,
        });
    }
    Ok(out)
}

/// A terminal id drawn at random (`T-` and 8 hex digits) that no terminal has: drawn again on a
/// collision, so that a drawn id never answers "taken" (which would also name another merchant's).
fn free_terminal_id(tx: &mut dyn Tx) -> Result<String, Problem> {
    for _ in 0..8 {
        let id = format!("T-{}", hex::encode_upper(random::<4>()?));
        if fleet_store::terminal_row(tx, &id)?.is_none() {
            return Ok(id);
        }
    }
    Err(Problem::internal(
        "eight random terminal ids in a row were taken".to_owned(),
    ))
}

fn existing_merchant(tx: &mut dyn Tx, id: &str) -> Result<Merchant, Problem> {
    card_store::merchant(tx, id)?
        .ok_or_else(|| Problem::not_found(format!("merchant {id} not found")))
}

impl Service<'_> {
    /// Whether a pairing code may be made for `terminal_id` of `merchant_id`: a new id, or a
    /// terminal of that merchant that never uploaded a record (a PC replaced before use).
    fn check_pairable(
        &self,
        tx: &mut dyn Tx,
        merchant_id: &str,
        terminal_id: &str,
    ) -> Result<(), Problem> {
        let Some(t) = fleet_store::terminal_row(tx, terminal_id)? else {
            return Ok(());
        };
        // Another merchant's terminal does not exist for a merchant (404, as every path of
        // another merchant's): a 409 would confirm the id to a guesser.
        self.allow(Want::Merchant(&t.merchant_id), || {
            format!("terminal {terminal_id}")
        })?;
        let (uploaded, _) = crate::storage::head(tx, terminal_id)?;
        if t.merchant_id != merchant_id || uploaded > 0 {
            return Err(Problem::conflict(
                "terminal_exists",
                format!(
                    "terminal id {terminal_id} is taken{}",
                    if t.merchant_id == merchant_id {
                        " and has uploaded records: a new terminal needs a new id"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(())
    }

    /// Creates or updates a merchant (operators). A changed category list sends its terminals a full
    /// snapshot.
    pub fn put_merchant(&self, id: &str, m: &MerchantInput) -> Result<MerchantView, Problem> {
        self.allow(Want::Operate, || format!("merchant {id}"))?;
        self.db.write(|tx| {
            let before = card_store::merchant(tx, id)?;
            card_store::upsert_merchant(
                tx,
                id,
                &m.name,
                m.commission_bps,
                &m.categories,
                self.now_ms,
            )?;
            let after = existing_merchant(tx, id)?;
            self.audit(
                tx,
                if before.is_some() {
                    "merchant.update"
                } else {
                    "merchant.create"
                },
                &format!("merchant {id}"),
                &format!(
                    "name {:?}, commission {} bps, categories [{}]",
                    after.name,
                    after.commission_bps,
                    after.categories.join(", ")
                ),
            )?;
            Ok(MerchantView::from(after))
        })
    }

    /// Every merchant (operators).
    pub fn merchants(&self) -> Result<Vec<MerchantView>, Problem> {
        self.allow(Want::Operate, || "merchants".into())?;
        self.db.read(|tx| {
            let ids: Vec<String> = tx
                .query("SELECT id FROM merchant ORDER BY id", &[])?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            ids.iter()
                .map(|id| existing_merchant(tx, id).map(MerchantView::from))
                .collect()
        })
    }

    /// One merchant: operators, or the merchant itself.
    pub fn merchant(&self, id: &str) -> Result<MerchantView, Problem> {
        self.allow(Want::Merchant(id), || format!("merchant {id}"))?;
        self.db
            .read(|tx| existing_merchant(tx, id).map(MerchantView::from))
    }

    /// A merchant's terminals with their health and alerts.
    pub fn terminals(&self, merchant_id: &str) -> Result<Vec<TerminalView>, Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        self.db.read(|tx| {
            existing_merchant(tx, merchant_id)?;
            terminal_views(self, tx, Some(merchant_id))
        })
    }

    /// One of a merchant's terminals (another merchant's is not found).
    pub fn terminal(&self, merchant_id: &str, terminal_id: &str) -> Result<TerminalView, Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        self.db.read(|tx| {
            terminal_views(self, tx, Some(merchant_id))?
                .into_iter()
                .find(|t| t.terminal_id == terminal_id)
                .ok_or_else(|| Problem::not_found(format!("terminal {terminal_id} not found")))
        })
    }

    /// Enrolls a terminal with a secret the caller made (the admin CLI's `enroll`, which hands the
    /// secret over as a file). An unknown merchant is created with defaults.
    pub fn enroll_terminal(
        &self,
        terminal_id: &str,
        merchant_id: &str,
        secret: &[u8; 32],
    ) -> Result<(), Problem> {
        self.allow(Want::Operate, || format!("terminal {terminal_id}"))?;
        check_ids(terminal_id, merchant_id)?;
        self.db.write(|tx| {
            terminals::enroll(
                tx,
                self.vault,
                terminal_id,
                merchant_id,
                secret,
                self.now_ms,
            )
            .map_err(enroll_problem)?;
            self.audit(
                tx,
                "terminal.enroll",
                &format!("terminal {terminal_id}"),
                &format!("for merchant {merchant_id}, secret handed over by the admin CLI"),
            )?;
            Ok(())
        })
    }

    /// Refuses (or accepts again) every request of a merchant's terminal: operators (a merchant's
    /// key: its own terminal is forbidden, another merchant's not found).
    pub fn set_terminal_enabled_of(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        enabled: bool,
    ) -> Result<TerminalView, Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        self.allow(Want::Operate, || format!("terminal {terminal_id}"))?;
        let belongs = self.db.read(|tx| {
            Ok::<_, Problem>(
                fleet_store::terminal_row(tx, terminal_id)?
                    .is_some_and(|t| t.merchant_id == merchant_id),
            )
        })?;
        if !belongs {
            return Err(Problem::not_found(format!(
                "terminal {terminal_id} not found"
            )));
        }
        self.set_terminal_enabled(terminal_id, enabled)?;
        self.terminal(merchant_id, terminal_id)
    }

    /// Refuses (or accepts again) every request of a terminal: operators.
    pub fn set_terminal_enabled(&self, terminal_id: &str, enabled: bool) -> Result<(), Problem> {
        self.allow(Want::Operate, || format!("terminal {terminal_id}"))?;
        self.db.write(|tx| {
            if !terminals::set_enabled(tx, terminal_id, enabled)? {
                return Err(Problem::not_found(format!(
                    "terminal {terminal_id} is not enrolled"
                )));
            }
            self.audit(
                tx,
                if enabled {
                    "terminal.enable"
                } else {
                    "terminal.disable"
                },
                &format!("terminal {terminal_id}"),
                "",
            )?;
            Ok(())
        })
    }

    /// A one-time pairing code for a terminal of `merchant_id` (operators, or the merchant itself): a
    /// new terminal id (drawn when none is given), or one enrolled for this merchant that never
    /// uploaded a record (a PC replaced before it was used).
    pub fn create_pairing_code(
        &self,
        merchant_id: &str,
        terminal_id: Option<&str>,
        ttl_minutes: Option<u32>,
    ) -> Result<NewPairingCode, Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        let ttl = pairing::ttl_ms(ttl_minutes)?;
        if let Some(t) = terminal_id
            && !is_valid_id(t)
        {
            return Err(Problem::invalid(
                "terminal_id",
                format!(
                    "{t:?}: 1 to 64 characters of A-Z a-z 0-9 . _ - (what a terminal can be configured with)"
                ),
            ));
        }
        self.db.write(|tx| {
            existing_merchant(tx, merchant_id)?;
            if !is_valid_id(merchant_id) {
                return Err(Problem::conflict(
                    "merchant_id_unusable",
                    format!("merchant id {merchant_id:?} cannot be configured on a terminal (A-Z a-z 0-9 . _ - only): enroll it with admin enroll"),
                ));
            }
            // A drawn id is free; a given one may be a terminal already.
            let terminal_id = match terminal_id {
                Some(t) => {
                    self.check_pairable(tx, merchant_id, t)?;
                    t.to_owned()
                }
                None => free_terminal_id(tx)?,
            };
            let expires_ms = self.now_ms.saturating_add(ttl);
            for _ in 0..8 {
                let code = pairing::new_code(&random()?);
                let canonical = pairing::normalize(&code)?;
                let stored = pairing_store::insert(
                    tx,
                    &pairing_store::NewCode {
                        hash: &pairing::code_hash(&canonical),
                        terminal_id: &terminal_id,
                        merchant_id,
                        created_by: &self.who.actor(),
                        now_ms: self.now_ms,
                        expires_ms,
                    },
                )?;
                if stored {
                    self.audit(
                        tx,
                        "pairing_code.create",
                        &format!("terminal {terminal_id}"),
                        &format!("for merchant {merchant_id}, expires {}", rfc3339(expires_ms)),
                    )?;
                    return Ok(NewPairingCode {
                        code,
                        terminal_id,
                        merchant_id: merchant_id.to_owned(),
                        expires_at_ms: expires_ms,
                    });
                }
            }
            Err(Problem::internal("no unused pairing code drawn in 8 tries".into()))
        })
    }

    /// A merchant's pairing codes, newest first: terminal, expiry, use — never the codes.
    pub fn pairing_codes(
        &self,
        merchant_id: &str,
    ) -> Result<Vec<pairing_store::CodeListing>, Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        self.db.read(|tx| {
            existing_merchant(tx, merchant_id)?;
            Ok(pairing_store::list(tx, merchant_id)?)
        })
    }

    /// A merchant's statement for a period: payable lines, commission, held records apart.
    pub fn merchant_statement(
        &self,
        merchant_id: &str,
        window: (i64, i64),
    ) -> Result<(MerchantStatement, String), Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        Ok(self
            .db
            .read(|tx| statements::merchant_statement(tx, merchant_id, window))?)
    }

    /// A merchant's statement per business day of a period of at most [`MAX_DAILY_DAYS`] days: the
    /// days that have records.
    pub fn merchant_daily(
        &self,
        merchant_id: &str,
        window: (i64, i64),
    ) -> Result<Vec<MerchantStatement>, Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        let (from, until) = window;
        if from == i64::MIN || until == i64::MAX {
            return Err(Problem::invalid(
                if from == i64::MIN { "from" } else { "until" },
                "a daily statement needs both ends of its period",
            ));
        }
        if until - from > MAX_DAILY_DAYS * 86_400_000 {
            return Err(Problem::invalid(
                "until",
                format!("a daily statement covers at most {MAX_DAILY_DAYS} days"),
            ));
        }
        self.db.read(|tx| {
            let (merchant, records) = statements::merchant_records(tx, merchant_id)?;
            Ok(clearing::daily_statements(
                merchant_id,
                window,
                merchant.commission_bps,
                &statements::judged(&records),
                day_start,
            ))
        })
    }

    /// Every exception (operators).
    pub fn exceptions(&self) -> Result<Exceptions, Problem> {
        self.allow(Want::Operate, || "exceptions".into())?;
        Ok(self.db.read(statements::exceptions)?)
    }

    /// The exceptions about a merchant's records, with its own records only.
    pub fn merchant_exceptions(&self, merchant_id: &str) -> Result<Exceptions, Problem> {
        self.allow(Want::Merchant(merchant_id), || {
            format!("merchant {merchant_id}")
        })?;
        self.db.read(|tx| {
            existing_merchant(tx, merchant_id)?;
            let own: Vec<String> = fleet_store::terminals(tx, Some(merchant_id))?
                .into_iter()
                .map(|t| t.id)
                .collect();
            Ok(statements::exceptions(tx)?.for_merchant(merchant_id, &own))
        })
    }
}

/// A terminal and merchant id a terminal can be configured with.
pub(super) fn check_ids(terminal_id: &str, merchant_id: &str) -> Result<(), Problem> {
    for (field, id) in [("terminal_id", terminal_id), ("merchant_id", merchant_id)] {
        if !is_valid_id(id) {
            return Err(Problem::invalid(
                field,
                format!("{id:?}: 1 to 64 characters of A-Z a-z 0-9 . _ -"),
            ));
        }
    }
    Ok(())
}

pub(super) fn enroll_problem(e: terminals::TerminalError) -> Problem {
    match e {
        terminals::TerminalError::AlreadyEnrolled(id) => Problem::conflict(
            "terminal_exists",
            format!("terminal {id} is already enrolled"),
        ),
        e => Problem::internal(e.to_string()),
    }
}
