//! The platform's card model in the database: merchants, cards, customized packages, their entitlement
//! versions and the per-merchant deny lists. Nothing is stored per terminal and card: a terminal's card
//! reference is computed from the number when needed ([`card_for_ref`] reverses one).
//!
//! Normalized tables are the truth (`merchant`, `card`, `package`, `package_item`; see
//! `clearing-server/README.md`, "Tables"). Each card also keeps a derived `body`: its canonical
//! [`Card`] encoding with the current `uses_left`, `usage_through_seq = 0` and no identity verifier
//! (`core::cards::template`), so that a million-card snapshot reads one row per card and only plugs in
//! the two per-terminal fields (`super::bundle`). Every function that changes a card recomputes the
//! body in the same transaction and gives the card a new entitlement version from one monotone counter
//! ([`bump_version`]).
//!
//! Functions here take a transaction and never commit: the caller (an admin command, the upload path, a
//! bench seeding a million cards) owns it.

use std::collections::BTreeSet;

use redeemd_contract::deny::DenyStatus;
use redeemd_contract::keys::TerminalKeys;
use redeemd_contract::model::{
    Card, CardNumber, CardNumberError, CardRef, CardStatus, MerchantScope,
};
use thiserror::Error;

use super::sql::{Row, StorageError, Tx, int};
use crate::core::card_search;
pub use crate::core::cards::{
    ItemSpec, NewCard, PackageSpec, StatusAction, StoredPackage, mask_name, parse_time, rfc3339,
    signed_status, status_name, visible,
};
use crate::core::cards::{
    check_id, check_title, json, scope_from_db, scope_to_db, scopes, scopes_from_json, scopes_json,
    template, transition,
};
use crate::core::problem::Problem;
use crate::params;
use crate::vault::Vault;

/// Why an operation on merchants or cards was refused. Card numbers appear masked only.
#[derive(Debug, Error)]
pub enum CardError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("card number: {0}")]
    BadNumber(#[from] CardNumberError),
    #[error("card {0} does not exist")]
    NotFound(String),
    #[error("card {0} already exists")]
    Exists(String),
    #[error("card {masked} is {status}: {action} is not possible")]
    BadTransition {
        masked: String,
        status: &'static str,
        action: &'static str,
    },
    /// An input the rules refuse, naming the field.
    #[error("{}", .0.message())]
    Refused(Problem),
    #[error("{0}")]
    Vault(#[from] crate::vault::VaultError),
    /// Stored data other than a card's that does not read back.
    #[error("{0}")]
    Stored(String),
    #[error("stored {what} of card {card_id} is unusable: {reason}")]
    Corrupt {
        what: &'static str,
        card_id: i64,
        reason: String,
    },
}

impl From<Problem> for CardError {
    fn from(p: Problem) -> Self {
        CardError::Refused(p)
    }
}

/// A refusal as the API answers it: not found, already there, not possible in the card's state, or
/// the refused field; the database's and the vault's failures are the server's (`500`).
impl From<CardError> for Problem {
    fn from(e: CardError) -> Self {
        match e {
            CardError::Refused(p) => p,
            CardError::BadNumber(e) => Problem::invalid("number", e.to_string()),
            CardError::NotFound(what) => Problem::not_found(format!("card {what} does not exist")),
            CardError::Exists(what) => {
                Problem::conflict("already_exists", format!("card {what} already exists"))
            }
            e @ CardError::BadTransition { .. } => {
                Problem::conflict("bad_transition", e.to_string())
            }
            e @ (CardError::Storage(_)
            | CardError::Vault(_)
            | CardError::Stored(_)
            | CardError::Corrupt { .. }) => Problem::internal(e.to_string()),
        }
    }
}

fn status_from_db(code: i64, card_id: i64) -> Result<CardStatus, CardError> {
    Ok(match code {
        1 => CardStatus::Active,
        2 => CardStatus::Lost,
        3 => CardStatus::Frozen,
        4 => CardStatus::Cancelled,
        other => {
            return Err(CardError::Corrupt {
                what: "status",
                card_id,
                reason: format!("code {other}"),
            });
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Merchants

/// A merchant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    pub commission_bps: u32,
    /// Sorted, unique.
    pub categories: Vec<String>,
    /// A delta from a version below this is answered with a full snapshot (the categories changed,
    /// so which cards the merchant sees changed without the cards changing).
    pub full_from_version: u64,
    /// The merchant's deny-list head.
    pub deny_version: u64,
}

/// Creates the merchant with defaults (name = id, no commission, no categories) if it does not exist.
pub fn ensure_merchant(tx: &mut dyn Tx, id: &str) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO merchant (id, name, commission_bps) VALUES ($1, $1, 0) ON CONFLICT (id) DO NOTHING",
        params![id],
    )?;
    Ok(())
}

/// Creates or updates a merchant. A change of categories bumps the entitlement version and makes the
/// merchant's terminals fetch a full snapshot (their set of visible cards changed).
pub fn upsert_merchant(
    tx: &mut dyn Tx,
    id: &str,
    name: &str,
    commission_bps: u32,
    categories: &[String],
    now_ms: i64,
) -> Result<(), CardError> {
    if !redeemd_contract::request::is_valid_id(id) {
        return Err(Problem::invalid(
            "merchant_id",
            format!("{id:?}: 1 to 64 characters of A-Z a-z 0-9 . _ - (what a terminal can be configured with)"),
        )
        .into());
    }
    check_title("name", name)?;
    if commission_bps > 10_000 {
        return Err(Problem::invalid(
            "commission_bps",
            format!("{commission_bps}: at most 10000 (100 %)"),
        )
        .into());
    }
    if categories.len() > 64 {
        return Err(Problem::invalid("categories", "at most 64").into());
    }
    for (n, c) in categories.iter().enumerate() {
        check_id(&format!("categories[{n}]"), c)?;
    }
    let cats: BTreeSet<String> = categories.iter().cloned().collect();
    let cats: Vec<String> = cats.into_iter().collect();
    let cats_json = json(&cats);
    let before = merchant(tx, id)?;
    let full_from = match &before {
        Some(m) if m.categories == cats => m.full_from_version,
        Some(_) => bump_version(tx, now_ms)?,
        None => 0,
    };
    tx.execute(
        "INSERT INTO merchant (id, name, commission_bps, categories, full_from_version) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET name = $2, commission_bps = $3, categories = $4, full_from_version = $5",
        params![id, name, commission_bps, &cats_json, int("version", full_from)?],
    )?;
    Ok(())
}

const MERCHANT_COLUMNS: &str =
    "SELECT id, name, commission_bps, categories, full_from_version, deny_version FROM merchant";

pub fn merchant(tx: &mut dyn Tx, id: &str) -> Result<Option<Merchant>, CardError> {
    tx.query_opt(
        "SELECT id, name, commission_bps, categories, full_from_version, deny_version FROM merchant WHERE id = $1",
        params![id],
    )?
    .map(|r| merchant_row(&r))
    .transpose()
}

fn merchants(tx: &mut dyn Tx) -> Result<Vec<Merchant>, CardError> {
    tx.query(&format!("{MERCHANT_COLUMNS} ORDER BY id"), &[])?
        .iter()
        .map(merchant_row)
        .collect()
}

fn merchant_row(r: &Row) -> Result<Merchant, CardError> {
    let id = r.text(0)?;
    let categories: Vec<String> = serde_json::from_str(&r.text(3)?).map_err(|e| {
        CardError::Stored(format!("merchant {id}: stored categories unusable: {e}"))
    })?;
    Ok(Merchant {
        name: r.text(1)?,
        commission_bps: u32::try_from(r.i64(2)?).unwrap_or(0),
        categories,
        full_from_version: r.u64(4)?,
        deny_version: r.u64(5)?,
        id,
    })
}

// ---------------------------------------------------------------------------------------------
// Versions

/// The current entitlement version and when it was last bumped (unix ms).
pub fn current_version(tx: &mut dyn Tx) -> Result<(u64, i64), StorageError> {
    let r = tx.query_one(
        "SELECT version, bumped_ms FROM version_counter WHERE id = 1",
        &[],
    )?;
    Ok((r.u64(0)?, r.i64(1)?))
}

/// Takes the next entitlement version. One counter for every change of every card: a terminal's
/// bundle version is the counter's value when it was made, so a card's version is never above the
/// version of a bundle that carries it, and a deny entry's `entry_version` is superseded by any later
/// bundle holding the card. The counter's row lock orders the transactions that bump it: versions are
/// committed in the order they are taken, in every server process.
pub fn bump_version(tx: &mut dyn Tx, now_ms: i64) -> Result<u64, StorageError> {
    tx.query_one(
        "UPDATE version_counter SET version = version + 1, bumped_ms = $1 WHERE id = 1 RETURNING version",
        params![now_ms],
    )?
    .u64(0)
}

// ---------------------------------------------------------------------------------------------
// Cards

/// A card row as stored. Its number is not here: it is sealed in the database and opened only where a
/// terminal's reference is computed from it.
#[derive(Debug, Clone)]
pub struct CardRow {
    pub id: i64,
    /// First six / last four, from the card's body.
    pub masked: String,
    pub status: CardStatus,
    pub holder_name: Option<String>,
    /// Identity data on file (sealed; opened where a terminal's verifier is computed).
    pub identity_sealed: Option<Vec<u8>>,
    pub reissued_to: Option<i64>,
    pub version: u64,
}

impl CardRow {
    pub fn masked(&self) -> String {
        self.masked.clone()
    }
}

pub(super) const CARD_COLUMNS: &str =
    "SELECT id, body, status, holder_name, identity_sealed, reissued_to, version FROM card";

pub(super) fn card_row(r: &Row) -> Result<CardRow, CardError> {
    let id = r.i64(0)?;
    let body = Card::decode(r.blob(1)?).map_err(|e| CardError::Corrupt {
        what: "body",
        card_id: id,
        reason: e.to_string(),
    })?;
    Ok(CardRow {
        id,
        masked: body.masked_number,
        status: status_from_db(r.i64(2)?, id)?,
        holder_name: r.opt_text(3)?,
        identity_sealed: r.opt_blob(4)?.map(<[u8]>::to_vec),
        reissued_to: r.opt_i64(5)?,
        version: r.u64(6)?,
    })
}

/// What a sealed value is, bound into its seal (a value moved to another column does not open).
pub const SEALED_NUMBER: &str = "card-number";
pub const SEALED_IDENTITY: &str = "card-identity";

/// The id of the card with this number, found by its lookup key (under the current master key, or the
/// previous one while a rotation re-seals).
pub(super) fn card_id_by_number(
    tx: &mut dyn Tx,
    vault: &Vault,
    number: &CardNumber,
) -> Result<Option<i64>, StorageError> {
    let keys = vault.lookup_keys(number.digits());
    let second = keys.get(1).unwrap_or(&keys[0]);
    tx.query_opt(
        "SELECT id FROM card WHERE number_key = $1 OR number_key = $2",
        params![&keys[0], second],
    )?
    .map(|r| r.i64(0))
    .transpose()
}

/// Finds a card by number.
pub fn card_by_number(
    tx: &mut dyn Tx,
    vault: &Vault,
    number: &CardNumber,
) -> Result<CardRow, CardError> {
    let id = card_id_by_number(tx, vault, number)?
        .ok_or_else(|| CardError::NotFound(number.masked()))?;
    card_by_id(tx, id)
}

pub fn card_by_id(tx: &mut dyn Tx, id: i64) -> Result<CardRow, CardError> {
    let row = tx
        .query_opt(&format!("{CARD_COLUMNS} WHERE id = $1"), params![id])?
        .ok_or_else(|| CardError::NotFound(format!("#{id}")))?;
    card_row(&row)
}

/// The packages of a card with their items and usage, in body order.
pub fn packages(tx: &mut dyn Tx, card_id: i64) -> Result<Vec<StoredPackage>, CardError> {
    let mut out: Vec<StoredPackage> = Vec::new();
    for r in tx.query(
        "SELECT id, title, valid_from_ms, valid_until_ms, scope_kind, scope_list, daily_cap, identity_required
         FROM package WHERE card_id = $1 ORDER BY position",
        params![card_id],
    )? {
        let kind = r.i64(4)?;
        let list = r.text(5)?;
        out.push(StoredPackage {
            spec: PackageSpec {
                id: r.text(0)?,
                title: r.text(1)?,
                valid_from_ms: r.i64(2)?,
                valid_until_ms: r.i64(3)?,
                scope: scope_from_db(kind, &list).ok_or_else(|| CardError::Corrupt {
                    what: "package scope",
                    card_id,
                    reason: format!("kind {kind} list {list}"),
                })?,
                daily_cap: r.opt_i64(6)?.and_then(|c| u32::try_from(c).ok()),
                identity_required: r.bool(7)?,
                items: Vec::new(),
            },
            used: Vec::new(),
        });
    }
    for r in tx.query(
        "SELECT package_id, service_code, title, uses_total, price_fen, used FROM package_item
         WHERE card_id = $1 ORDER BY package_id, position",
        params![card_id],
    )? {
        let package_id = r.text(0)?;
        let Some(p) = out.iter_mut().find(|p| p.spec.id == package_id) else {
            return Err(CardError::Corrupt {
                what: "package item",
                card_id,
                reason: format!("item of unknown package {package_id}"),
            });
        };
        p.spec.items.push(ItemSpec {
            service_code: r.text(1)?,
            title: r.text(2)?,
            uses_total: u32::try_from(r.i64(3)?).unwrap_or(0),
            price_fen: r.u64(4)?,
        });
        // Over-redemption across shops can push `used` above the total; a negative count (more voids
        // than redemptions) counts as none.
        p.used
            .push(u32::try_from(r.i64(5)?.max(0)).unwrap_or(u32::MAX));
    }
    Ok(out)
}

fn body_of(row: &CardRow, packages: &[StoredPackage]) -> Vec<u8> {
    template(
        row.masked.clone(),
        signed_status(row.status, row.reissued_to.is_some()),
        row.holder_name.as_deref(),
        packages,
    )
    .encode()
}

/// Recomputes a card's body from its rows and gives it `version`.
pub fn refresh(tx: &mut dyn Tx, card_id: i64, version: u64) -> Result<(), CardError> {
    let row = card_by_id(tx, card_id)?;
    let pk = packages(tx, card_id)?;
    let body = body_of(&row, &pk);
    tx.execute(
        "UPDATE card SET body = $2, version = $3 WHERE id = $1",
        params![card_id, &body, int("version", version)?],
    )?;
    Ok(())
}

/// Issues a card (active, no packages yet). Returns the platform card id.
pub fn create_card(
    tx: &mut dyn Tx,
    vault: &Vault,
    new: &NewCard,
    now_ms: i64,
) -> Result<i64, CardError> {
    let version = bump_version(tx, now_ms)?;
    insert_card(tx, vault, new, &[], version, now_ms)
}

/// Inserts a card with its packages at `version` (no usage yet). The bulk path: seeding a million cards
/// calls this in one transaction with one version.
pub fn insert_card(
    tx: &mut dyn Tx,
    vault: &Vault,
    new: &NewCard,
    packages: &[PackageSpec],
    version: u64,
    now_ms: i64,
) -> Result<i64, CardError> {
    new.check()?;
    let number = new.number.digits();
    if card_id_by_number(tx, vault, &new.number)?.is_some() {
        return Err(CardError::Exists(new.number.masked()));
    }
    let sealed = vault.seal(SEALED_NUMBER, number.as_bytes())?;
    let identity = new
        .identity_data
        .as_ref()
        .map(|i| vault.seal(SEALED_IDENTITY, i.as_bytes()))
        .transpose()?;
    let stored: Vec<StoredPackage> = packages
        .iter()
        .map(|p| StoredPackage {
            used: vec![0; p.items.len()],
            spec: p.clone(),
        })
        .collect();
    let row = CardRow {
        id: 0,
        masked: new.number.masked(),
        status: CardStatus::Active,
        holder_name: new.holder_name.clone(),
        identity_sealed: None,
        reissued_to: None,
        version,
    };
    let body = body_of(&row, &stored);
    // The search index: first six, last four, the folded name (`core::card_search`).
    let (head, tail) = card_search::head_and_tail(&new.number.masked()).unzip();
    let holder_key = new.holder_name.as_deref().map(card_search::holder_key);
    let id = tx
        .query_one(
            "INSERT INTO card (number_key, number_sealed, sealed_with, status, holder_name, identity_sealed,
                               created_ms, version, body, number_head, number_tail, holder_key)
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            params![
                &vault.lookup_key(number),
                &sealed,
                &vault.current().fingerprint(),
                new.holder_name.as_ref(),
                identity.as_ref(),
                now_ms,
                int("version", version)?,
                &body,
                head.as_ref(),
                tail.as_ref(),
                holder_key.as_ref()
            ],
        )?
        .i64(0)?;
    for (pos, p) in stored.iter().enumerate() {
        p.spec.check()?;
        if p.spec.identity_required && new.identity_data.is_none() {
            return Err(identity_required_error(&new.number, &p.spec.id));
        }
        write_package(tx, id, pos, &p.spec, version, now_ms)?;
    }
    Ok(id)
}

fn identity_required_error(number: &CardNumber, package: &str) -> CardError {
    Problem::invalid(
        "identity_required",
        format!(
            "package {package}: card {} has no identity data to ask for",
            number.masked()
        ),
    )
    .into()
}

fn write_package(
    tx: &mut dyn Tx,
    card_id: i64,
    position: usize,
    p: &PackageSpec,
    version: u64,
    now_ms: i64,
) -> Result<(), CardError> {
    let (kind, list) = scope_to_db(&p.scope);
    tx.execute(
        "INSERT INTO package (card_id, id, position, title, valid_from_ms, valid_until_ms, scope_kind, scope_list,
                              daily_cap, identity_required, customized_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (card_id, id) DO UPDATE SET title = $4, valid_from_ms = $5, valid_until_ms = $6,
             scope_kind = $7, scope_list = $8, daily_cap = $9, identity_required = $10, customized_ms = $11",
        params![
            card_id,
            &p.id,
            position as i64,
            &p.title,
            p.valid_from_ms,
            p.valid_until_ms,
            kind,
            &list,
            p.daily_cap,
            p.identity_required,
            now_ms
        ],
    )?;
    for (pos, i) in p.items.iter().enumerate() {
        tx.execute(
            "INSERT INTO package_item (card_id, package_id, service_code, position, title, uses_total, price_fen)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (card_id, package_id, service_code) DO UPDATE SET position = $4, title = $5,
                 uses_total = $6, price_fen = $7",
            params![
                card_id,
                &p.id,
                &i.service_code,
                pos as i64,
                &i.title,
                i.uses_total,
                i64::try_from(i.price_fen).unwrap_or(i64::MAX)
            ],
        )?;
        note_price(
            tx,
            card_id,
            &p.id,
            &i.service_code,
            version,
            Some(i64::try_from(i.price_fen).unwrap_or(i64::MAX)),
        )?;
    }
    Ok(())
}

/// Records the price an item is signed at from `version` on (`None`: dropped), when it changed.
fn note_price(
    tx: &mut dyn Tx,
    card_id: i64,
    package_id: &str,
    service_code: &str,
    version: u64,
    price_fen: Option<i64>,
) -> Result<(), StorageError> {
    let latest = tx.query_opt(
        "SELECT price_fen FROM item_price WHERE card_id = $1 AND package_id = $2 AND service_code = $3
         ORDER BY from_version DESC LIMIT 1",
        params![card_id, package_id, service_code],
    )?;
    if latest.map(|r| r.opt_i64(0)).transpose()? != Some(price_fen) {
        tx.execute(
            "INSERT INTO item_price (card_id, package_id, service_code, from_version, price_fen)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (card_id, package_id, service_code, from_version) DO UPDATE SET price_fen = $5",
            params![card_id, package_id, service_code, int("version", version)?, price_fen],
        )?;
    }
    Ok(())
}

/// The price the platform signed for a card's item at entitlement version `version` (what a terminal
/// whose cache entry has that version was told), `None` when it signed none.
pub fn signed_price(
    tx: &mut dyn Tx,
    card_id: i64,
    package_id: &str,
    service_code: &str,
    version: u64,
) -> Result<Option<u64>, StorageError> {
    let row = tx.query_opt(
        "SELECT price_fen FROM item_price WHERE card_id = $1 AND package_id = $2 AND service_code = $3
             AND from_version <= $4
         ORDER BY from_version DESC LIMIT 1",
        params![
            card_id,
            package_id,
            service_code,
            i64::try_from(version).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(row
        .map(|r| r.opt_i64(0))
        .transpose()?
        .flatten()
        .and_then(|p| u64::try_from(p).ok()))
}

/// Customizes a package onto a card: adds it, or replaces the package of the same id (validity, scope,
/// cap, items; the items' usage is kept by service code, and an item that was used cannot be dropped
/// nor get a total below its uses).
/// Returns the card's new version.
pub fn customize(
    tx: &mut dyn Tx,
    vault: &Vault,
    number: &CardNumber,
    spec: &PackageSpec,
    now_ms: i64,
) -> Result<u64, CardError> {
    spec.check()?;
    let row = card_by_number(tx, vault, number)?;
    if row.status == CardStatus::Cancelled {
        return Err(CardError::BadTransition {
            masked: row.masked(),
            status: "cancelled",
            action: "customize",
        });
    }
    if spec.identity_required && row.identity_sealed.is_none() {
        return Err(identity_required_error(number, &spec.id));
    }
    let before = packages(tx, row.id)?;
    let mut dropped = Vec::new();
    let position = match before.iter().position(|p| p.spec.id == spec.id) {
        Some(pos) => {
            let old = &before[pos];
            for (item, used) in old.spec.items.iter().zip(&old.used) {
                let new = spec
                    .items
                    .iter()
                    .find(|i| i.service_code == item.service_code);
                let kept = new.is_some();
                if !kept && *used > 0 {
                    return Err(Problem::conflict(
                        "item_in_use",
                        format!(
                            "package {}: item {} was used {used} times and cannot be dropped",
                            spec.id, item.service_code
                        ),
                    )
                    .into());
                }
                // Below what shops already redeemed, those redemptions would be reported as
                // over-redeemed and every shop would be signed 0 left without a word.
                if let Some(n) = new.filter(|n| n.uses_total < *used) {
                    return Err(Problem::conflict(
                        "item_in_use",
                        format!(
                            "package {}: item {} was used {used} times: its total cannot be {}",
                            spec.id, item.service_code, n.uses_total
                        ),
                    )
                    .into());
                }
                if !kept {
                    tx.execute(
                        "DELETE FROM package_item WHERE card_id = $1 AND package_id = $2 AND service_code = $3",
                        params![row.id, &spec.id, &item.service_code],
                    )?;
                    dropped.push(item.service_code.clone());
                }
            }
            pos
        }
        None => before.len(),
    };
    let version = bump_version(tx, now_ms)?;
    write_package(tx, row.id, position, spec, version, now_ms)?;
    for code in &dropped {
        note_price(tx, row.id, &spec.id, code, version, None)?;
    }
    let after = packages(tx, row.id)?;
    note_scope_change(tx, row.id, version, &scopes(&before), &scopes(&after))?;
    refresh(tx, row.id, version)?;
    Ok(version)
}

fn note_scope_change(
    tx: &mut dyn Tx,
    card_id: i64,
    version: u64,
    before: &[MerchantScope],
    after: &[MerchantScope],
) -> Result<(), CardError> {
    if before != after {
        tx.execute(
            "INSERT INTO scope_change (card_id, version, scopes_before) VALUES ($1, $2, $3)",
            params![card_id, int("version", version)?, &scopes_json(before)],
        )?;
    }
    Ok(())
}

/// The package scopes a card had at entitlement version `at` (for a delta's removals): the scopes
/// before the first change after `at`, or the current ones if none changed since.
pub fn scopes_at(
    tx: &mut dyn Tx,
    card_id: i64,
    at: u64,
    current: &[MerchantScope],
) -> Result<Vec<MerchantScope>, CardError> {
    let text = tx.query_opt(
        "SELECT scopes_before FROM scope_change WHERE card_id = $1 AND version > $2 ORDER BY version LIMIT 1",
        params![card_id, int("version", at)?],
    )?;
    match text {
        None => Ok(current.to_vec()),
        Some(r) => {
            let t = r.text(0)?;
            scopes_from_json(&t).ok_or(CardError::Corrupt {
                what: "scope history",
                card_id,
                reason: t,
            })
        }
    }
}

/// Applies a status change; lost and frozen also append to the deny list of every merchant that sees
/// the card. Returns the card's new version.
pub fn set_status(
    tx: &mut dyn Tx,
    vault: &Vault,
    number: &CardNumber,
    action: StatusAction,
    now_ms: i64,
) -> Result<u64, CardError> {
    let row = card_by_number(tx, vault, number)?;
    let to = transition(action, row.status).ok_or_else(|| CardError::BadTransition {
        masked: row.masked(),
        status: status_name(row.status),
        action: action.name(),
    })?;
    change_status(tx, &row, to, now_ms)
}

fn change_status(
    tx: &mut dyn Tx,
    row: &CardRow,
    to: CardStatus,
    now_ms: i64,
) -> Result<u64, CardError> {
    let version = bump_version(tx, now_ms)?;
    tx.execute(
        "UPDATE card SET status = $2 WHERE id = $1",
        params![row.id, to as i64],
    )?;
    tx.execute(
        "INSERT INTO card_status_change (card_id, status, at_ms) VALUES ($1, $2, $3)",
        params![row.id, to as i64, now_ms],
    )?;
    refresh(tx, row.id, version)?;
    if let Some(deny) = DenyStatus::from_card_status(to) {
        append_deny(tx, row.id, deny, version, now_ms)?;
    }
    Ok(version)
}

/// Appends a deny entry for the card to the list of every merchant that can see it.
fn append_deny(
    tx: &mut dyn Tx,
    card_id: i64,
    status: DenyStatus,
    entry_version: u64,
    now_ms: i64,
) -> Result<(), CardError> {
    let sc = scopes(&packages(tx, card_id)?);
    for m in merchants(tx)? {
        if !visible(&sc, &m.id, &m.categories) {
            continue;
        }
        let version = tx
            .query_one(
                "UPDATE merchant SET deny_version = deny_version + 1 WHERE id = $1 RETURNING deny_version",
                params![&m.id],
            )?
            .i64(0)?;
        tx.execute(
            "INSERT INTO deny_entry (merchant_id, version, card_id, status, entry_version, reported_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            params![
                &m.id,
                version,
                card_id,
                status.code(),
                int("version", entry_version)?,
                now_ms
            ],
        )?;
    }
    Ok(())
}

/// 补卡: issues card `to` with the holder of `from` and what is left of each item of `from` (as
/// `uses_total`), and cancels `from` (deny lists included). Returns the new card's id.
pub fn reissue(
    tx: &mut dyn Tx,
    vault: &Vault,
    from: &CardNumber,
    to: &CardNumber,
    now_ms: i64,
) -> Result<i64, CardError> {
    let old = card_by_number(tx, vault, from)?;
    if old.status == CardStatus::Cancelled {
        return Err(CardError::BadTransition {
            masked: old.masked(),
            status: "cancelled",
            action: "reissue",
        });
    }
    let moved: Vec<PackageSpec> = packages(tx, old.id)?
        .into_iter()
        .map(|p| {
            let mut spec = p.spec;
            for (item, used) in spec.items.iter_mut().zip(&p.used) {
                item.uses_total = item.uses_total.saturating_sub(*used);
            }
            spec
        })
        .collect();
    let version = bump_version(tx, now_ms)?;
    let identity = old
        .identity_sealed
        .as_ref()
        .map(|s| vault.open(SEALED_IDENTITY, s))
        .transpose()?
        .map(|i| String::from_utf8_lossy(&i).into_owned());
    let new = NewCard {
        number: to.clone(),
        holder_name: old.holder_name.clone(),
        identity_data: identity,
    };
    let new_id = insert_card(tx, vault, &new, &moved, version, now_ms)?;
    let moved_scopes: Vec<MerchantScope> = moved.iter().map(|p| p.scope.clone()).collect();
    note_scope_change(tx, new_id, version, &[], &moved_scopes)?;
    tx.execute(
        "UPDATE card SET reissued_to = $2 WHERE id = $1",
        params![old.id, new_id],
    )?;
    // What moved is no longer the old card's: its totals become what it had used (never raised), so
    // a use made offline before the reissue and uploaded after it is reported as over_redeemed
    // instead of silently adding to what the new card received.
    tx.execute(
        "UPDATE package_item SET uses_total = CASE
             WHEN used <= 0 THEN 0 WHEN used < uses_total THEN used ELSE uses_total END
         WHERE card_id = $1",
        params![old.id],
    )?;
    change_status(tx, &old, CardStatus::Cancelled, now_ms)?;
    Ok(new_id)
}

// ---------------------------------------------------------------------------------------------
// Card references and per-terminal bodies

/// A card's number, opened from its sealed column (a row that does not hold one is named).
pub fn stored_number(vault: &Vault, card_id: i64, sealed: &[u8]) -> Result<CardNumber, CardError> {
    let digits = vault.open(SEALED_NUMBER, sealed)?;
    CardNumber::parse(&String::from_utf8_lossy(&digits)).map_err(|e| CardError::Corrupt {
        what: "number",
        card_id,
        reason: e.to_string(),
    })
}

/// A card's number, by its platform id (opened from its sealed column).
pub fn number_of(tx: &mut dyn Tx, vault: &Vault, card_id: i64) -> Result<CardNumber, CardError> {
    let row = tx
        .query_opt(
            "SELECT number_sealed FROM card WHERE id = $1",
            params![card_id],
        )?
        .ok_or_else(|| CardError::NotFound(format!("#{card_id}")))?;
    stored_number(vault, card_id, row.blob(0)?)
}

/// The platform card behind a card reference a terminal wrote: the reference decrypted under the
/// terminal's card-token key to the card number, the card found by its number. `Ok(Err(why))` when
/// there is none: a reference not made with this terminal's key (`CardRefError`), or a number the
/// platform never issued.
pub fn card_for_ref(
    tx: &mut dyn Tx,
    vault: &Vault,
    keys: &TerminalKeys,
    card_ref: &CardRef,
) -> Result<Result<i64, String>, StorageError> {
    let number = match keys.card_token.reveal(card_ref) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(match card_id_by_number(tx, vault, &number)? {
        Some(id) => Ok(id),
        None => Err(format!(
            "card {} (reference {}) is not a card of the platform",
            number.masked(),
            card_ref.to_hex()
        )),
    })
}

// ---------------------------------------------------------------------------------------------
// Deny lists

/// A merchant's deny-list head and the entries above `since` (ascending, at most `limit`), with card
/// references for the terminal whose keys are given.
pub fn deny_entries(
    tx: &mut dyn Tx,
    vault: &Vault,
    keys: &TerminalKeys,
    merchant_id: &str,
    since: u64,
    limit: usize,
) -> Result<(u64, Vec<redeemd_contract::DenyEntry>), CardError> {
    let head = merchant(tx, merchant_id)?.map_or(0, |m| m.deny_version);
    let rows = tx.query(
        "SELECT d.version, d.card_id, c.number_sealed, d.status, d.entry_version, d.reported_at_ms,
                c.reissued_to
         FROM deny_entry d JOIN card c ON c.id = d.card_id
         WHERE d.merchant_id = $1 AND d.version > $2 ORDER BY d.version LIMIT $3",
        params![
            merchant_id,
            i64::try_from(since).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let card_id = r.i64(1)?;
        let corrupt = |what, reason: String| CardError::Corrupt {
            what,
            card_id,
            reason,
        };
        let code = r.i64(3)?;
        let Some(stored) = u8::try_from(code).ok().and_then(DenyStatus::from_code) else {
            return Err(corrupt("deny entry", format!("status {code}")));
        };
        // The table keeps a reissued card's entry as cancelled; the shops get it as reissued.
        let reissued = r.opt_i64(6)?.is_some();
        let status = DenyStatus::from_card_status(signed_status(stored.card_status(), reissued))
            .unwrap_or(stored);
        out.push(redeemd_contract::DenyEntry {
            version: r.u64(0)?,
            card_ref: stored_number(vault, card_id, r.blob(2)?)?.card_ref(&keys.card_token),
            status,
            entry_version: r.u64(4)?,
            reported_at_ms: r.i64(5)?,
        });
    }
    Ok((head, out))
}

// ---------------------------------------------------------------------------------------------
// Usage from uploaded records

/// Adds `delta` uses (negative for a void) to an item of a card. Returns the item's new `uses_left`, or
/// `None` when the card has no such package item (the record is kept; the caller notes an exception).
pub fn add_usage(
    tx: &mut dyn Tx,
    card_id: i64,
    package_id: &str,
    service_code: &str,
    delta: i64,
) -> Result<Option<u32>, StorageError> {
    tx.query_opt(
        "UPDATE package_item SET used = used + $4 WHERE card_id = $1 AND package_id = $2 AND service_code = $3
         RETURNING uses_total, used",
        params![card_id, package_id, service_code, delta],
    )?
    .map(|r| {
        let (total, used) = (r.i64(0)?, r.i64(1)?);
        Ok(u32::try_from((total - used.max(0)).max(0)).unwrap_or(0))
    })
    .transpose()
}

/// Writes new `uses_left` figures into a card's stored body and gives it `version`: the upload path's
/// cheap form of [`refresh`] (one read, one write), for items whose `used` changed by [`add_usage`].
pub fn patch_uses_left(
    tx: &mut dyn Tx,
    card_id: i64,
    left: &[(&str, &str, u32)],
    version: u64,
) -> Result<(), CardError> {
    // Locked before it is read (PostgreSQL; SQLite's writer holds the whole file already): an upload
    // runs read committed, and two patching one card's body must not each write what they read.
    let sql = match tx.backend() {
        super::Backend::Postgres => "SELECT body FROM card WHERE id = $1 FOR UPDATE",
        super::Backend::Sqlite => "SELECT body FROM card WHERE id = $1",
    };
    let row = tx.query_one(sql, params![card_id])?;
    let mut card = Card::decode(row.blob(0)?).map_err(|e| CardError::Corrupt {
        what: "body",
        card_id,
        reason: e.to_string(),
    })?;
    for (package, code, uses_left) in left {
        let item = card
            .packages
            .iter_mut()
            .filter(|p| p.id == *package)
            .flat_map(|p| p.items.iter_mut())
            .find(|i| i.service_code == *code);
        match item {
            Some(i) => i.uses_left = *uses_left,
            // The body is derived from the same rows; a mismatch means it is stale: rebuild it.
            None => return refresh(tx, card_id, version),
        }
    }
    tx.execute(
        "UPDATE card SET body = $2, version = $3 WHERE id = $1",
        params![card_id, &card.encode(), int("version", version)?],
    )?;
    Ok(())
}
