//! Member cards, for operators: issue (one, or many from an import file), find, show, customize a
//! package, report lost / freeze / unlock, reissue, usage, and the grants that give a card to the
//! member app. Cards are named by the
//! platform's card id (`#12`) or by their number; numbers are never shown in full.

use redeemd_contract::model::{CardNumber, MerchantScope};
use serde::Serialize;

use super::{Service, random};
use crate::core::access::Want;
use crate::core::card_search::{CardQuery, MAX_MATCHES};
use crate::core::cards::{PackageSpec, StatusAction, mask_name, status_name, template};
use crate::core::clearing::MemberStatement;
use crate::core::problem::Problem;
use crate::storage::access::{self, Grant};
use crate::storage::cards::{self as card_store, CardRow, NewCard};
use crate::storage::import::{self, Imported};
use crate::storage::{Isolation, Tx, card_search, statements};

/// A card as a search lists it: never its number, its holder masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardMatch {
    pub card_id: i64,
    pub masked_number: String,
    pub status: &'static str,
    pub holder: Option<String>,
}

/// What a card search found: at most [`MAX_MATCHES`] cards, by id; `more` when there are others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardMatches {
    pub cards: Vec<CardMatch>,
    pub more: bool,
}

/// How a caller names a card.
#[derive(Debug, Clone, Copy)]
pub enum CardSel<'a> {
    Id(i64),
    Number(&'a CardNumber),
}

/// A card as the API shows it: masked number, status, masked holder, packages with uses left.
#[derive(Debug, Clone, Serialize)]
pub struct CardView {
    /// The platform's card id (`None` in the member app's view, which names cards by handle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_id: Option<i64>,
    pub masked_number: String,
    pub status: &'static str,
    /// `张*`; `None` for an anonymous card.
    pub holder: Option<String>,
    pub identity_on_file: bool,
    pub version: u64,
    /// The card it was reissued to (operators' view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reissued_to: Option<ReissuedTo>,
    pub packages: Vec<PackageView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReissuedTo {
    pub card_id: i64,
    pub masked_number: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageView {
    pub package_id: String,
    pub title: String,
    pub valid_from_ms: i64,
    pub valid_until_ms: i64,
    /// `None`: every merchant.
    pub scope: Option<ScopeView>,
    pub daily_cap: Option<u32>,
    pub identity_required: bool,
    pub items: Vec<ItemView>,
}

/// Where a package may be used: at these merchants, or at merchants of these categories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ScopeView {
    #[serde(rename = "merchants")]
    Merchants(Vec<String>),
    #[serde(rename = "categories")]
    Categories(Vec<String>),
}

impl ScopeView {
    pub fn of(scope: &MerchantScope) -> Option<ScopeView> {
        match scope {
            MerchantScope::All => None,
            MerchantScope::Merchants(l) => Some(ScopeView::Merchants(l.clone())),
            MerchantScope::Categories(l) => Some(ScopeView::Categories(l.clone())),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    pub service_code: String,
    pub title: String,
    pub uses_total: u32,
    pub uses_left: u32,
    pub price_fen: u64,
}

/// A card's view from its rows (`operator`: with its id and reissue link).
pub(super) fn card_view(
    tx: &mut dyn Tx,
    card_id: i64,
    operator: bool,
) -> Result<CardView, Problem> {
    let row = &card_store::card_by_id(tx, card_id)?;
    // What every terminal is signed for this card (its body), with uses left over every shop.
    let signed = template(
        row.masked(),
        row.status,
        row.holder_name.as_deref(),
        &card_store::packages(tx, row.id)?,
    );
    let packages = signed
        .packages
        .into_iter()
        .map(|p| PackageView {
            scope: ScopeView::of(&p.scope),
            items: p
                .items
                .into_iter()
                .map(|i| ItemView {
                    service_code: i.service_code,
                    title: i.title,
                    uses_total: i.uses_total,
                    uses_left: i.uses_left,
                    price_fen: i.price_fen,
                })
                .collect(),
            package_id: p.id,
            title: p.title,
            valid_from_ms: p.valid_from_ms,
            valid_until_ms: p.valid_until_ms,
            daily_cap: p.daily_cap,
            identity_required: p.identity_required,
        })
        .collect();
    Ok(CardView {
        card_id: operator.then_some(row.id),
        masked_number: row.masked(),
        status: status_name(row.status),
        holder: signed.holder.map(|h| h.masked_name),
        identity_on_file: row.identity_sealed.is_some(),
        version: row.version,
        reissued_to: match row.reissued_to.filter(|_| operator) {
            Some(id) => Some(ReissuedTo {
                card_id: id,
                masked_number: card_store::card_by_id(tx, id)?.masked(),
            }),
            None => None,
        },
        packages,
    })
}

/// The card a selector names, with its number (the storage operations take numbers).
fn resolve(
    tx: &mut dyn Tx,
    vault: &crate::vault::Vault,
    sel: CardSel<'_>,
) -> Result<(CardRow, CardNumber), Problem> {
    match sel {
        CardSel::Number(n) => Ok((card_store::card_by_number(tx, vault, n)?, n.clone())),
        CardSel::Id(id) => Ok((
            card_store::card_by_id(tx, id)?,
            card_store::number_of(tx, vault, id)?,
        )),
    }
}

/// `#12`, for audit targets and messages: never the number.
pub(super) fn target(id: i64) -> String {
    format!("card #{id}")
}

impl Service<'_> {
    /// Issues a card: anonymous, or named with holder and identity data.
    pub fn create_card(&self, new: &NewCard) -> Result<CardView, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.write(|tx| {
            let id = card_store::create_card(tx, self.vault, new, self.now_ms)?;
            self.audit(
                tx,
                "card.create",
                &target(id),
                &format!(
                    "{} {}",
                    new.number.masked(),
                    if new.holder_name.is_some() {
                        "named"
                    } else {
                        "anonymous"
                    }
                ),
            )?;
            card_view(tx, id, true)
        })
    }

    /// Cards by masked number (the last four, perhaps the first six), by the start of the holder's
    /// name, or by the whole number (`crate::core::card_search`).
    pub fn find_cards(&self, q: &CardQuery) -> Result<CardMatches, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        let mut rows = self
            .db
            .read(|tx| card_search::find(tx, self.vault, q, MAX_MATCHES + 1))?;
        let more = rows.len() > MAX_MATCHES as usize;
        rows.truncate(MAX_MATCHES as usize);
        Ok(CardMatches {
            cards: rows
                .into_iter()
                .map(|r| CardMatch {
                    card_id: r.id,
                    masked_number: r.masked(),
                    status: status_name(r.status),
                    holder: r.holder_name.as_deref().map(mask_name),
                })
                .collect(),
            more,
        })
    }

    /// Issues every card of an import file (`core::import`'s CSV) with its packages, or none: a bad
    /// line (`400 malformed_request`, each named by its line) or a number already issued (`409
    /// already_exists`, naming its line) refuses the whole file. One audit entry for the file.
    pub fn import_cards(&self, file: &[u8]) -> Result<Imported, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        let cards = crate::core::import::parse(file)
            .map_err(|refused| Problem::new(400, "malformed_request", refused.to_string()))?;
        // Read committed: the card's unique lookup key and the version counter's row lock hold what
        // must hold (`storage::import`), and a serializable retry of 100,000 cards would redo them all.
        self.db.transaction(Isolation::ReadCommitted, |tx| {
            let done = import::import_cards(tx, self.vault, &cards, self.now_ms)?;
            self.audit(
                tx,
                "card.import",
                "cards",
                &format!(
                    "{} cards with {} packages ({} items) at version {}",
                    done.cards, done.packages, done.items, done.version
                ),
            )?;
            Ok(done)
        })
    }

    /// A card: status, masked holder, packages and uses left.
    pub fn card(&self, sel: CardSel<'_>) -> Result<CardView, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.read(|tx| {
            let (row, _) = resolve(tx, self.vault, sel)?;
            card_view(tx, row.id, true)
        })
    }

    /// Customizes a package onto a card, or redefines the package of the same id (usage kept).
    pub fn customize(&self, sel: CardSel<'_>, spec: &PackageSpec) -> Result<CardView, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.write(|tx| {
            let (row, number) = resolve(tx, self.vault, sel)?;
            let version = card_store::customize(tx, self.vault, &number, spec, self.now_ms)?;
            self.audit(
                tx,
                "card.customize",
                &target(row.id),
                &format!("package {} {:?} (version {version})", spec.id, spec.title),
            )?;
            card_view(tx, row.id, true)
        })
    }

    /// Report lost, freeze, unlock.
    pub fn set_card_status(
        &self,
        sel: CardSel<'_>,
        action: StatusAction,
    ) -> Result<CardView, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.write(|tx| self.status_tx(tx, sel, action))
    }

    pub(super) fn status_tx(
        &self,
        tx: &mut dyn Tx,
        sel: CardSel<'_>,
        action: StatusAction,
    ) -> Result<CardView, Problem> {
        let (row, number) = resolve(tx, self.vault, sel)?;
        let version = card_store::set_status(tx, self.vault, &number, action, self.now_ms)?;
        let after = card_store::card_by_id(tx, row.id)?;
        self.audit(
            tx,
            match action {
                StatusAction::ReportLost => "card.report_lost",
                StatusAction::Freeze => "card.freeze",
                StatusAction::Unlock => "card.unlock",
            },
            &target(row.id),
            &format!(
                "{} → {} (version {version})",
                status_name(row.status),
                status_name(after.status)
            ),
        )?;
        card_view(
            tx,
            after.id,
            self.who.role == crate::core::access::Role::Operator,
        )
    }

    /// 补卡: a new card with what is left; the old one is cancelled. The member app's grants move to
    /// the new card. Returns the new card.
    pub fn reissue(&self, sel: CardSel<'_>, to: &CardNumber) -> Result<CardView, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.write(|tx| {
            let (old, from) = resolve(tx, self.vault, sel)?;
            let new_id = card_store::reissue(tx, self.vault, &from, to, self.now_ms)?;
            let moved = access::move_grants(tx, old.id, new_id)?;
            self.audit(
                tx,
                "card.reissue",
                &target(old.id),
                &format!(
                    "to {} {}; old card cancelled; {moved} member-app grants moved",
                    target(new_id),
                    to.masked()
                ),
            )?;
            card_view(tx, new_id, true)
        })
    }

    /// A card's usage at every shop for a period, per item and record by record.
    pub fn card_usage(
        &self,
        sel: CardSel<'_>,
        window: (i64, i64),
    ) -> Result<MemberStatement, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.read(|tx| {
            let (_, number) = resolve(tx, self.vault, sel)?;
            Ok(statements::member_statement(
                tx, self.vault, &number, window,
            )?)
        })
    }

    /// Gives a card to a member app: the handle by which the app names it from now on (the same
    /// handle when it was given already).
    pub fn grant_card(&self, sel: CardSel<'_>, app_id: &str) -> Result<Grant, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        crate::core::cards::check_id("app_id", app_id)?;
        self.db.write(|tx| {
            let (row, _) = resolve(tx, self.vault, sel)?;
            if let Some(g) = access::grant_of(tx, row.id, app_id)? {
                return Ok(g);
            }
            let g = Grant {
                handle: format!("mc_{}", hex::encode(random::<16>()?)),
                card_id: row.id,
                app_id: app_id.to_owned(),
                created_ms: self.now_ms,
            };
            access::insert_grant(tx, &g)?;
            self.audit(
                tx,
                "card.grant",
                &target(row.id),
                &format!("to member app {app_id}"),
            )?;
            Ok(g)
        })
    }

    /// Takes a card back from a member app: its handle stops working.
    pub fn revoke_grant(&self, sel: CardSel<'_>, app_id: &str) -> Result<(), Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.write(|tx| {
            let (row, _) = resolve(tx, self.vault, sel)?;
            if !access::revoke_grant(tx, row.id, app_id, self.now_ms)? {
                return Err(Problem::not_found(format!(
                    "{} is not granted to member app {app_id}",
                    target(row.id)
                )));
            }
            self.audit(
                tx,
                "card.revoke_grant",
                &target(row.id),
                &format!("from member app {app_id}"),
            )?;
            Ok(())
        })
    }

    /// The member apps a card is granted to.
    pub fn grants(&self, sel: CardSel<'_>) -> Result<Vec<Grant>, Problem> {
        self.allow(Want::Operate, || "cards".into())?;
        self.db.read(|tx| {
            let (row, _) = resolve(tx, self.vault, sel)?;
            Ok(access::grants_of_card(tx, row.id)?)
        })
    }
}
