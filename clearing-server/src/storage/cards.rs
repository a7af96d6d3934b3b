//! The platform's card model: merchants, cards, customized packages, their entitlement versions, the
//! per-terminal card-reference index and the per-merchant deny lists.
//!
//! Normalized tables are the truth (`merchant`, `card`, `package`, `package_item`; see
//! `clearing-server/README.md`, "Tables"). Each card also keeps a derived `body`: its canonical
//! [`Card`] encoding with the current `uses_left`, `usage_through_seq = 0` and no identity verifier, so
//! that a million-card snapshot reads one row per card and only patches the two per-terminal fields
//! ([`terminal_card`]). Every function that changes a card recomputes the body in the same transaction
//! and gives the card a new entitlement version from one monotone counter ([`bump_version`]).
//!
//! Functions here take a `&Connection` (a transaction derefs to one) and never commit: the caller (the
//! admin CLI, the upload path, a bench seeding a million cards) owns the transaction.

use std::collections::BTreeSet;

use redeemd_contract::deny::DenyStatus;
use redeemd_contract::keys::{MacKey, TerminalKeys};
use redeemd_contract::model::{
    Card, CardNumber, CardNumberError, CardRef, CardStatus, Holder, Item, MerchantScope, Package,
    identity_verifier,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why an admin operation on merchants or cards was refused. Card numbers appear masked only.
#[derive(Debug, Error)]
pub enum CardError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
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
    #[error("{0}")]
    Invalid(String),
    #[error("stored {what} of card {card_id} is unusable: {reason}")]
    Corrupt {
        what: &'static str,
        card_id: i64,
        reason: String,
    },
}

impl From<crate::storage::DbError> for CardError {
    fn from(e: crate::storage::DbError) -> Self {
        CardError::Invalid(e.to_string())
    }
}

/// Status name as printed and as spelled in the deny list.
pub fn status_name(s: CardStatus) -> &'static str {
    match s {
        CardStatus::Active => "active",
        CardStatus::Lost => "lost",
        CardStatus::Frozen => "frozen",
        CardStatus::Cancelled => "cancelled",
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
pub fn ensure_merchant(conn: &Connection, id: &str) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT OR IGNORE INTO merchant (id, name, commission_bps) VALUES (?1, ?1, 0)",
        [id],
    )?;
    Ok(())
}

/// Creates or updates a merchant. A change of categories bumps the entitlement version and makes the
/// merchant's terminals fetch a full snapshot (their set of visible cards changed).
pub fn upsert_merchant(
    conn: &Connection,
    id: &str,
    name: &str,
    commission_bps: u32,
    categories: &[String],
    now_ms: i64,
) -> Result<(), CardError> {
    check_id("merchant id", id)?;
    if commission_bps > 10_000 {
        return Err(CardError::Invalid(format!(
            "--commission-bps {commission_bps}: at most 10000 (100 %)"
        )));
    }
    let cats: BTreeSet<String> = categories.iter().cloned().collect();
    for c in &cats {
        check_id("category", c)?;
    }
    let cats: Vec<String> = cats.into_iter().collect();
    let cats_json = json(&cats);
    let before = merchant(conn, id)?;
    let full_from = match &before {
        Some(m) if m.categories == cats => m.full_from_version,
        Some(_) => bump_version(conn, now_ms)?,
        None => 0,
    };
    conn.execute(
        "INSERT INTO merchant (id, name, commission_bps, categories, full_from_version) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET name = ?2, commission_bps = ?3, categories = ?4, full_from_version = ?5",
        params![id, name, commission_bps, cats_json, full_from as i64],
    )?;
    Ok(())
}

pub fn merchant(conn: &Connection, id: &str) -> Result<Option<Merchant>, CardError> {
    conn.prepare_cached(
        "SELECT id, name, commission_bps, categories, full_from_version, deny_version FROM merchant WHERE id = ?1",
    )?
    .query_row([id], merchant_row)
    .optional()?
    .map(finish_merchant)
    .transpose()
}

fn merchants(conn: &Connection) -> Result<Vec<Merchant>, CardError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, commission_bps, categories, full_from_version, deny_version FROM merchant ORDER BY id",
    )?;
    let rows = stmt.query_map([], merchant_row)?;
    rows.map(|r| finish_merchant(r?)).collect()
}

type MerchantRow = (String, String, i64, String, i64, i64);

fn merchant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MerchantRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn finish_merchant(
    (id, name, bps, cats, full_from, deny): MerchantRow,
) -> Result<Merchant, CardError> {
    let categories: Vec<String> = serde_json::from_str(&cats).map_err(|e| {
        CardError::Invalid(format!("merchant {id}: stored categories unusable: {e}"))
    })?;
    Ok(Merchant {
        id,
        name,
        commission_bps: u32::try_from(bps).unwrap_or(0),
        categories,
        full_from_version: u64::try_from(full_from).unwrap_or(0),
        deny_version: u64::try_from(deny).unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------------
// Versions

/// The current entitlement version and when it was last bumped (unix ms).
pub fn current_version(conn: &Connection) -> Result<(u64, i64), rusqlite::Error> {
    conn.prepare_cached("SELECT version, bumped_ms FROM version_counter WHERE id = 1")?
        .query_row([], |r| {
            Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?))
        })
}

/// Takes the next entitlement version. One counter for every change of every card: a terminal's
/// bundle version is the counter's value when it was made, so a card's version is never above the
/// version of a bundle that carries it, and a deny entry's `entry_version` is superseded by any later
/// bundle holding the card.
pub fn bump_version(conn: &Connection, now_ms: i64) -> Result<u64, rusqlite::Error> {
    conn.prepare_cached(
        "UPDATE version_counter SET version = version + 1, bumped_ms = ?1 WHERE id = 1 RETURNING version",
    )?
    .query_row([now_ms], |r| {
        Ok(u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0))
    })
}

// ---------------------------------------------------------------------------------------------
// Cards

/// A package as an admin customizes it onto a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    pub id: String,
    pub title: String,
    pub valid_from_ms: i64,
    pub valid_until_ms: i64,
    pub scope: MerchantScope,
    pub daily_cap: Option<u32>,
    pub identity_required: bool,
    pub items: Vec<ItemSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSpec {
    pub service_code: String,
    pub title: String,
    pub uses_total: u32,
    pub price_fen: u64,
}

impl PackageSpec {
    fn check(&self) -> Result<(), CardError> {
        check_id("package id", &self.id)?;
        if self.valid_until_ms <= self.valid_from_ms {
            return Err(CardError::Invalid(format!(
                "package {}: --valid-until must be after --valid-from",
                self.id
            )));
        }
        if self.items.is_empty() {
            return Err(CardError::Invalid(format!(
                "package {}: at least one --item is required",
                self.id
            )));
        }
        let mut codes = BTreeSet::new();
        for i in &self.items {
            check_id("service code", &i.service_code)?;
            if !codes.insert(&i.service_code) {
                return Err(CardError::Invalid(format!(
                    "package {}: service code {} appears twice",
                    self.id, i.service_code
                )));
            }
        }
        match &self.scope {
            MerchantScope::Merchants(l) | MerchantScope::Categories(l) if l.is_empty() => Err(
                CardError::Invalid(format!("package {}: an empty scope list", self.id)),
            ),
            _ => Ok(()),
        }
    }
}

/// Ids, codes and categories: printable, no spaces or colons, 1–64 bytes.
fn check_id(what: &str, s: &str) -> Result<(), CardError> {
    if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_whitespace() || c == ':') {
        return Err(CardError::Invalid(format!(
            "{what} {s:?}: 1 to 64 characters without spaces or ':'"
        )));
    }
    Ok(())
}

/// "张三" → "张*": the first character, the rest as `*`.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) if chars.clone().next().is_some() => {
            format!("{first}{}", "*".repeat(chars.count()))
        }
        _ => "*".into(),
    }
}

/// A card row as stored.
#[derive(Debug, Clone)]
pub struct CardRow {
    pub id: i64,
    pub number: CardNumber,
    pub status: CardStatus,
    pub holder_name: Option<String>,
    pub identity_data: Option<String>,
    pub reissued_to: Option<i64>,
    pub version: u64,
}

impl CardRow {
    pub fn masked(&self) -> String {
        self.number.masked()
    }
}

/// One package with its items and usage, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPackage {
    pub spec: PackageSpec,
    /// `used` per item, in item order: redeemed minus voided at every terminal.
    pub used: Vec<u32>,
}

fn card_row_by(
    conn: &Connection,
    col: &str,
    key: &dyn rusqlite::ToSql,
) -> Result<Option<CardRow>, CardError> {
    let sql = format!(
        "SELECT id, number, status, holder_name, identity_data, reissued_to, version FROM card WHERE {col} = ?1"
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .optional()?;
    let Some((id, number, status, holder_name, identity_data, reissued_to, version)) = row else {
        return Ok(None);
    };
    Ok(Some(CardRow {
        id,
        number: CardNumber::parse(&number).map_err(|e| CardError::Corrupt {
            what: "number",
            card_id: id,
            reason: e.to_string(),
        })?,
        status: status_from_db(status, id)?,
        holder_name,
        identity_data,
        reissued_to,
        version: u64::try_from(version).unwrap_or(0),
    }))
}

/// Finds a card by number (digits with optional spaces or dashes).
pub fn card_by_number(conn: &Connection, number: &CardNumber) -> Result<CardRow, CardError> {
    card_row_by(conn, "number", &digits(number))?
        .ok_or_else(|| CardError::NotFound(number.masked()))
}

pub fn card_by_id(conn: &Connection, id: i64) -> Result<CardRow, CardError> {
    card_row_by(conn, "id", &id)?.ok_or_else(|| CardError::NotFound(format!("#{id}")))
}

/// The normalized digits of a card number (what is stored).
fn digits(n: &CardNumber) -> &str {
    n.digits()
}

/// The packages of a card with their items and usage, in body order.
pub fn packages(conn: &Connection, card_id: i64) -> Result<Vec<StoredPackage>, CardError> {
    let mut out: Vec<StoredPackage> = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, title, valid_from_ms, valid_until_ms, scope_kind, scope_list, daily_cap, identity_required
             FROM package WHERE card_id = ?1 ORDER BY position",
        )?;
        let mut rows = stmt.query([card_id])?;
        while let Some(r) = rows.next()? {
            let kind: i64 = r.get(4)?;
            let list: String = r.get(5)?;
            out.push(StoredPackage {
                spec: PackageSpec {
                    id: r.get(0)?,
                    title: r.get(1)?,
                    valid_from_ms: r.get(2)?,
                    valid_until_ms: r.get(3)?,
                    scope: scope_from_db(kind, &list).ok_or_else(|| CardError::Corrupt {
                        what: "package scope",
                        card_id,
                        reason: format!("kind {kind} list {list}"),
                    })?,
                    daily_cap: r
                        .get::<_, Option<i64>>(6)?
                        .and_then(|c| u32::try_from(c).ok()),
                    identity_required: r.get(7)?,
                    items: Vec::new(),
                },
                used: Vec::new(),
            });
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT package_id, service_code, title, uses_total, price_fen, used FROM package_item
         WHERE card_id = ?1 ORDER BY package_id, position",
    )?;
    let mut rows = stmt.query([card_id])?;
    while let Some(r) = rows.next()? {
        let package_id: String = r.get(0)?;
        let Some(p) = out.iter_mut().find(|p| p.spec.id == package_id) else {
            return Err(CardError::Corrupt {
                what: "package item",
                card_id,
                reason: format!("item of unknown package {package_id}"),
            });
        };
        p.spec.items.push(ItemSpec {
            service_code: r.get(1)?,
            title: r.get(2)?,
            uses_total: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            price_fen: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        });
        // Over-redemption across shops can push `used` above the total; a negative count (more voids
        // than redemptions) counts as none.
        p.used
            .push(u32::try_from(r.get::<_, i64>(5)?.max(0)).unwrap_or(u32::MAX));
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct ScopeJson {
    kind: u8,
    list: Vec<String>,
}

fn scope_to_db(scope: &MerchantScope) -> (u8, String) {
    match scope {
        MerchantScope::All => (0, "[]".into()),
        MerchantScope::Merchants(l) => (1, json(l)),
        MerchantScope::Categories(l) => (2, json(l)),
    }
}

fn scope_from_db(kind: i64, list: &str) -> Option<MerchantScope> {
    let l: Vec<String> = serde_json::from_str(list).ok()?;
    match kind {
        0 if l.is_empty() => Some(MerchantScope::All),
        1 => Some(MerchantScope::Merchants(l)),
        2 => Some(MerchantScope::Categories(l)),
        _ => None,
    }
}

fn json<T: Serialize>(v: &T) -> String {
    // Serializing plain strings and integers cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn scopes_json(scopes: &[MerchantScope]) -> String {
    let v: Vec<ScopeJson> = scopes
        .iter()
        .map(|s| {
            let (kind, list) = match s {
                MerchantScope::All => (0, Vec::new()),
                MerchantScope::Merchants(l) => (1, l.clone()),
                MerchantScope::Categories(l) => (2, l.clone()),
            };
            ScopeJson { kind, list }
        })
        .collect();
    json(&v)
}

fn scopes_from_json(text: &str) -> Option<Vec<MerchantScope>> {
    let v: Vec<ScopeJson> = serde_json::from_str(text).ok()?;
    v.into_iter()
        .map(|s| scope_from_db(i64::from(s.kind), &json(&s.list)))
        .collect()
}

/// Whether a card with these package scopes is visible to a merchant: some package may be used there.
pub fn visible(scopes: &[MerchantScope], merchant_id: &str, categories: &[String]) -> bool {
    scopes.iter().any(|s| s.allows(merchant_id, categories))
}

/// The derived body of a card: what every terminal receives, before the per-terminal fields.
fn template(row: &CardRow, packages: &[StoredPackage]) -> Card {
    Card {
        masked_number: row.masked(),
        status: row.status,
        holder: row.holder_name.as_deref().map(|n| Holder {
            masked_name: mask_name(n),
            identity_verifier: None,
        }),
        usage_through_seq: 0,
        packages: packages
            .iter()
            .map(|p| Package {
                id: p.spec.id.clone(),
                title: p.spec.title.clone(),
                valid_from_ms: p.spec.valid_from_ms,
                valid_until_ms: p.spec.valid_until_ms,
                scope: p.spec.scope.clone(),
                daily_cap: p.spec.daily_cap,
                identity_required: p.spec.identity_required,
                items: p
                    .spec
                    .items
                    .iter()
                    .zip(&p.used)
                    .map(|(i, used)| Item {
                        service_code: i.service_code.clone(),
                        title: i.title.clone(),
                        uses_total: i.uses_total,
                        uses_left: i.uses_total.saturating_sub(*used),
                        price_fen: i.price_fen,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Recomputes a card's body from its rows and gives it `version`.
pub fn refresh(conn: &Connection, card_id: i64, version: u64) -> Result<(), CardError> {
    let row = card_by_id(conn, card_id)?;
    let pk = packages(conn, card_id)?;
    let body = template(&row, &pk).encode();
    conn.prepare_cached("UPDATE card SET body = ?2, version = ?3 WHERE id = ?1")?
        .execute(params![card_id, body, version as i64])?;
    Ok(())
}

/// A new card: number, and for a named card the holder's name and identity data.
#[derive(Debug, Clone)]
pub struct NewCard {
    pub number: CardNumber,
    pub holder_name: Option<String>,
    pub identity_data: Option<String>,
}

impl NewCard {
    fn check(&self) -> Result<(), CardError> {
        if self.identity_data.is_some() && self.holder_name.is_none() {
            return Err(CardError::Invalid(
                "--identity needs --holder: only a named card has identity data".into(),
            ));
        }
        if let Some(n) = &self.holder_name
            && (n.trim().is_empty() || n.chars().count() > 64)
        {
            return Err(CardError::Invalid("--holder: 1 to 64 characters".into()));
        }
        if let Some(i) = &self.identity_data
            && (i.is_empty() || i.len() > 64)
        {
            return Err(CardError::Invalid("--identity: 1 to 64 bytes".into()));
        }
        Ok(())
    }
}

/// Issues a card (active, no packages yet). Returns the platform card id.
pub fn create_card(conn: &Connection, new: &NewCard, now_ms: i64) -> Result<i64, CardError> {
    let version = bump_version(conn, now_ms)?;
    insert_card(conn, new, &[], version, now_ms)
}

/// Inserts a card with its packages at `version` (no usage yet). The bulk path: seeding a million cards
/// calls this in one transaction with one version.
pub fn insert_card(
    conn: &Connection,
    new: &NewCard,
    packages: &[PackageSpec],
    version: u64,
    now_ms: i64,
) -> Result<i64, CardError> {
    new.check()?;
    let number = digits(&new.number);
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM card WHERE number = ?1)")?
        .query_row([&number], |r| r.get(0))?;
    if exists {
        return Err(CardError::Exists(new.number.masked()));
    }
    let stored: Vec<StoredPackage> = packages
        .iter()
        .map(|p| StoredPackage {
            used: vec![0; p.items.len()],
            spec: p.clone(),
        })
        .collect();
    let row = CardRow {
        id: 0,
        number: new.number.clone(),
        status: CardStatus::Active,
        holder_name: new.holder_name.clone(),
        identity_data: new.identity_data.clone(),
        reissued_to: None,
        version,
    };
    let body = template(&row, &stored).encode();
    conn.prepare_cached(
        "INSERT INTO card (number, status, holder_name, identity_data, created_ms, version, body)
         VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        number,
        new.holder_name,
        new.identity_data,
        now_ms,
        version as i64,
        body
    ])?;
    let id = conn.last_insert_rowid();
    for (pos, p) in stored.iter().enumerate() {
        p.spec.check()?;
        if p.spec.identity_required && new.identity_data.is_none() {
            return Err(identity_required_error(&new.number, &p.spec.id));
        }
        write_package(conn, id, pos, &p.spec, now_ms)?;
    }
    Ok(id)
}

fn identity_required_error(number: &CardNumber, package: &str) -> CardError {
    CardError::Invalid(format!(
        "package {package}: --identity-required on card {} which has no identity data",
        number.masked()
    ))
}

fn write_package(
    conn: &Connection,
    card_id: i64,
    position: usize,
    p: &PackageSpec,
    now_ms: i64,
) -> Result<(), CardError> {
    let (kind, list) = scope_to_db(&p.scope);
    conn.prepare_cached(
        "INSERT INTO package (card_id, id, position, title, valid_from_ms, valid_until_ms, scope_kind, scope_list,
                              daily_cap, identity_required, customized_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (card_id, id) DO UPDATE SET title = ?4, valid_from_ms = ?5, valid_until_ms = ?6,
             scope_kind = ?7, scope_list = ?8, daily_cap = ?9, identity_required = ?10, customized_ms = ?11",
    )?
    .execute(params![
        card_id,
        p.id,
        position as i64,
        p.title,
        p.valid_from_ms,
        p.valid_until_ms,
        kind,
        list,
        p.daily_cap,
        p.identity_required,
        now_ms
    ])?;
    for (pos, i) in p.items.iter().enumerate() {
        conn.prepare_cached(
            "INSERT INTO package_item (card_id, package_id, service_code, position, title, uses_total, price_fen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (card_id, package_id, service_code) DO UPDATE SET position = ?4, title = ?5,
                 uses_total = ?6, price_fen = ?7",
        )?
        .execute(params![
            card_id,
            p.id,
            i.service_code,
            pos as i64,
            i.title,
            i.uses_total,
            i64::try_from(i.price_fen).unwrap_or(i64::MAX)
        ])?;
    }
    Ok(())
}

fn scopes(packages: &[StoredPackage]) -> Vec<MerchantScope> {
    packages.iter().map(|p| p.spec.scope.clone()).collect()
}

/// Customizes a package onto a card: adds it, or replaces the package of the same id (validity, scope,
/// cap, items; the items' usage is kept by service code, and an item that was used cannot be dropped
/// nor get a total below its uses).
/// Returns the card's new version.
pub fn customize(
    conn: &Connection,
    number: &CardNumber,
    spec: &PackageSpec,
    now_ms: i64,
) -> Result<u64, CardError> {
    spec.check()?;
    let row = card_by_number(conn, number)?;
    if row.status == CardStatus::Cancelled {
        return Err(CardError::BadTransition {
            masked: row.masked(),
            status: "cancelled",
            action: "customize",
        });
    }
    if spec.identity_required && row.identity_data.is_none() {
        return Err(identity_required_error(number, &spec.id));
    }
    let before = packages(conn, row.id)?;
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
                    return Err(CardError::Invalid(format!(
                        "package {}: item {} was used {used} times and cannot be dropped",
                        spec.id, item.service_code
                    )));
                }
                // Below what shops already redeemed, those redemptions would be reported as
                // over-redeemed and every shop would be signed 0 left without a word.
                if let Some(n) = new.filter(|n| n.uses_total < *used) {
                    return Err(CardError::Invalid(format!(
                        "package {}: item {} was used {used} times: its total cannot be {}",
                        spec.id, item.service_code, n.uses_total
                    )));
                }
                if !kept {
                    conn.execute(
                        "DELETE FROM package_item WHERE card_id = ?1 AND package_id = ?2 AND service_code = ?3",
                        params![row.id, spec.id, item.service_code],
                    )?;
                }
            }
            pos
        }
        None => before.len(),
    };
    let version = bump_version(conn, now_ms)?;
    write_package(conn, row.id, position, spec, now_ms)?;
    let after = packages(conn, row.id)?;
    note_scope_change(conn, row.id, version, &scopes(&before), &scopes(&after))?;
    refresh(conn, row.id, version)?;
    Ok(version)
}

fn note_scope_change(
    conn: &Connection,
    card_id: i64,
    version: u64,
    before: &[MerchantScope],
    after: &[MerchantScope],
) -> Result<(), CardError> {
    if before != after {
        conn.prepare_cached(
            "INSERT INTO scope_change (card_id, version, scopes_before) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![card_id, version as i64, scopes_json(before)])?;
    }
    Ok(())
}

/// The package scopes a card had at entitlement version `at` (for a delta's removals): the scopes
/// before the first change after `at`, or the current ones if none changed since.
pub fn scopes_at(
    conn: &Connection,
    card_id: i64,
    at: u64,
    current: &[MerchantScope],
) -> Result<Vec<MerchantScope>, CardError> {
    let text: Option<String> = conn
        .prepare_cached(
            "SELECT scopes_before FROM scope_change WHERE card_id = ?1 AND version > ?2 ORDER BY version LIMIT 1",
        )?
        .query_row(params![card_id, at as i64], |r| r.get(0))
        .optional()?;
    match text {
        None => Ok(current.to_vec()),
        Some(t) => scopes_from_json(&t).ok_or_else(|| CardError::Corrupt {
            what: "scope history",
            card_id,
            reason: t,
        }),
    }
}

/// Admin status changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    /// 挂失: refuse the card everywhere.
    ReportLost,
    /// Refuse the card (platform decision: dispute, fraud suspicion).
    Freeze,
    /// 解挂 / unfreeze: allow a lost or frozen card again.
    Unlock,
}

impl StatusAction {
    fn name(self) -> &'static str {
        match self {
            StatusAction::ReportLost => "report lost",
            StatusAction::Freeze => "freeze",
            StatusAction::Unlock => "unlock",
        }
    }
}

/// Applies a status change; lost and frozen also append to the deny list of every merchant that sees
/// the card. Returns the card's new version.
pub fn set_status(
    conn: &Connection,
    number: &CardNumber,
    action: StatusAction,
    now_ms: i64,
) -> Result<u64, CardError> {
    let row = card_by_number(conn, number)?;
    let to = match (action, row.status) {
        (StatusAction::ReportLost, CardStatus::Active | CardStatus::Frozen) => CardStatus::Lost,
        (StatusAction::Freeze, CardStatus::Active | CardStatus::Lost) => CardStatus::Frozen,
        (StatusAction::Unlock, CardStatus::Lost | CardStatus::Frozen) => CardStatus::Active,
        (_, from) => {
            return Err(CardError::BadTransition {
                masked: row.masked(),
                status: status_name(from),
                action: action.name(),
            });
        }
    };
    change_status(conn, &row, to, now_ms)
}

fn change_status(
    conn: &Connection,
    row: &CardRow,
    to: CardStatus,
    now_ms: i64,
) -> Result<u64, CardError> {
    let version = bump_version(conn, now_ms)?;
    conn.prepare_cached("UPDATE card SET status = ?2 WHERE id = ?1")?
        .execute(params![row.id, to as i64])?;
    conn.prepare_cached(
        "INSERT INTO card_status_change (card_id, status, at_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![row.id, to as i64, now_ms])?;
    refresh(conn, row.id, version)?;
    if let Some(deny) = DenyStatus::from_card_status(to) {
        append_deny(conn, row.id, deny, version, now_ms)?;
    }
    Ok(version)
}

/// Appends a deny entry for the card to the list of every merchant that can see it.
fn append_deny(
    conn: &Connection,
    card_id: i64,
    status: DenyStatus,
    entry_version: u64,
    now_ms: i64,
) -> Result<(), CardError> {
    let sc = scopes(&packages(conn, card_id)?);
    for m in merchants(conn)? {
        if !visible(&sc, &m.id, &m.categories) {
            continue;
        }
        let version: i64 = conn
            .prepare_cached(
                "UPDATE merchant SET deny_version = deny_version + 1 WHERE id = ?1 RETURNING deny_version",
            )?
            .query_row([&m.id], |r| r.get(0))?;
        conn.prepare_cached(
            "INSERT INTO deny_entry (merchant_id, version, card_id, status, entry_version, reported_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            m.id,
            version,
            card_id,
            status.code(),
            entry_version as i64,
            now_ms
        ])?;
    }
    Ok(())
}

/// 补卡: issues card `to` with the holder of `from` and what is left of each item of `from` (as
/// `uses_total`), and cancels `from` (deny lists included). Returns the new card's id.
pub fn reissue(
    conn: &Connection,
    from: &CardNumber,
    to: &CardNumber,
    now_ms: i64,
) -> Result<i64, CardError> {
    let old = card_by_number(conn, from)?;
    if old.status == CardStatus::Cancelled {
        return Err(CardError::BadTransition {
            masked: old.masked(),
            status: "cancelled",
            action: "reissue",
        });
    }
    let moved: Vec<PackageSpec> = packages(conn, old.id)?
        .into_iter()
        .map(|p| {
            let mut spec = p.spec;
            for (item, used) in spec.items.iter_mut().zip(&p.used) {
                item.uses_total = item.uses_total.saturating_sub(*used);
            }
            spec
        })
        .collect();
    let version = bump_version(conn, now_ms)?;
    let new = NewCard {
        number: to.clone(),
        holder_name: old.holder_name.clone(),
        identity_data: old.identity_data.clone(),
    };
    let new_id = insert_card(conn, &new, &moved, version, now_ms)?;
    note_scope_change(conn, new_id, version, &[], &scopes_of_specs(&moved))?;
    conn.prepare_cached("UPDATE card SET reissued_to = ?2 WHERE id = ?1")?
        .execute(params![old.id, new_id])?;
    // What moved is no longer the old card's: its totals become what it had used (never raised), so
    // a use made offline before the reissue and uploaded after it is reported as over_redeemed
    // instead of silently adding to what the new card received.
    conn.prepare_cached(
        "UPDATE package_item SET uses_total = min(uses_total, max(used, 0)) WHERE card_id = ?1",
    )?
    .execute([old.id])?;
    change_status(conn, &old, CardStatus::Cancelled, now_ms)?;
    Ok(new_id)
}

fn scopes_of_specs(specs: &[PackageSpec]) -> Vec<MerchantScope> {
    specs.iter().map(|p| p.scope.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Card references and per-terminal bodies

/// `HMAC(card-token key, "redeemd/card/v1" ‖ digits)` of a stored number.
pub fn card_ref_of(card_token_key: &MacKey, number: &str) -> Result<CardRef, CardNumberError> {
    Ok(CardNumber::parse(number)?.card_ref(card_token_key))
}

/// Indexes the card references of cards issued since the terminal's last fill, at most `limit`
/// cards. Returns `true` when every card is indexed. The index maps an uploaded record's card
/// reference back to the platform card and orders a snapshot by reference.
pub fn fill_card_refs(
    conn: &Connection,
    keys: &TerminalKeys,
    limit: usize,
) -> Result<bool, CardError> {
    let through: i64 = conn
        .prepare_cached("SELECT card_refs_through FROM terminal WHERE id = ?1")?
        .query_row([&keys.terminal_id], |r| r.get(0))?;
    let mut last = through;
    let mut n = 0usize;
    {
        let mut select =
            conn.prepare_cached("SELECT id, number FROM card WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO card_ref (terminal_id, card_ref, card_id) VALUES (?1, ?2, ?3)",
        )?;
        let mut rows = select.query(params![through, i64::try_from(limit).unwrap_or(i64::MAX)])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let number: String = r.get(1)?;
            let card_ref =
                card_ref_of(&keys.card_token, &number).map_err(|e| CardError::Corrupt {
                    what: "number",
                    card_id: id,
                    reason: e.to_string(),
                })?;
            insert.execute(params![keys.terminal_id, &card_ref.0[..], id])?;
            last = id;
            n += 1;
        }
    }
    if last != through {
        conn.prepare_cached("UPDATE terminal SET card_refs_through = ?2 WHERE id = ?1")?
            .execute(params![keys.terminal_id, last])?;
    }
    Ok(n < limit)
}

/// The platform card behind a terminal's card reference, if indexed.
pub fn card_for_ref(
    conn: &Connection,
    terminal_id: &str,
    card_ref: &CardRef,
) -> Result<Option<i64>, rusqlite::Error> {
    conn.prepare_cached("SELECT card_id FROM card_ref WHERE terminal_id = ?1 AND card_ref = ?2")?
        .query_row(params![terminal_id, &card_ref.0[..]], |r| r.get(0))
        .optional()
}

/// A stored body made into what one terminal receives: its identity verifier (from its identity key and
/// card reference) and `usage_through_seq` = the terminal's highest received seq.
pub fn terminal_card(
    body: &[u8],
    card_id: i64,
    identity_data: Option<&str>,
    card_ref: &CardRef,
    keys: &TerminalKeys,
    usage_through_seq: u64,
) -> Result<Card, CardError> {
    let mut card = Card::decode(body).map_err(|e| CardError::Corrupt {
        what: "body",
        card_id,
        reason: e.to_string(),
    })?;
    card.usage_through_seq = usage_through_seq;
    if let (Some(h), Some(data)) = (card.holder.as_mut(), identity_data) {
        h.identity_verifier = Some(identity_verifier(&keys.identity, card_ref, data.as_bytes()));
    }
    Ok(card)
}

// ---------------------------------------------------------------------------------------------
// Deny lists

/// A merchant's deny-list head and the entries above `since` (ascending, at most `limit`), with card
/// references for the terminal whose keys are given.
pub fn deny_entries(
    conn: &Connection,
    keys: &TerminalKeys,
    merchant_id: &str,
    since: u64,
    limit: usize,
) -> Result<(u64, Vec<redeemd_contract::DenyEntry>), CardError> {
    let head = merchant(conn, merchant_id)?.map_or(0, |m| m.deny_version);
    let mut stmt = conn.prepare_cached(
        "SELECT d.version, d.card_id, c.number, d.status, d.entry_version, d.reported_at_ms
         FROM deny_entry d JOIN card c ON c.id = d.card_id
         WHERE d.merchant_id = ?1 AND d.version > ?2 ORDER BY d.version LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![
        merchant_id,
        i64::try_from(since).unwrap_or(i64::MAX),
        i64::try_from(limit).unwrap_or(i64::MAX)
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let card_id: i64 = r.get(1)?;
        let number: String = r.get(2)?;
        let corrupt = |what, reason: String| CardError::Corrupt {
            what,
            card_id,
            reason,
        };
        let status = match status_from_db(r.get(3)?, card_id)? {
            CardStatus::Lost => DenyStatus::Lost,
            CardStatus::Frozen => DenyStatus::Frozen,
            CardStatus::Cancelled => DenyStatus::Cancelled,
            CardStatus::Active => return Err(corrupt("deny entry", "status active".into())),
        };
        out.push(redeemd_contract::DenyEntry {
            version: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            card_ref: card_ref_of(&keys.card_token, &number)
                .map_err(|e| corrupt("number", e.to_string()))?,
            status,
            entry_version: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
            reported_at_ms: r.get(5)?,
        });
    }
    Ok((head, out))
}

// ---------------------------------------------------------------------------------------------
// Usage from uploaded records

/// Adds `delta` uses (negative for a void) to an item of a card. Returns the item's new `uses_left`, or
/// `None` when the card has no such package item (the record is kept; the caller notes an exception).
pub fn add_usage(
    conn: &Connection,
    card_id: i64,
    package_id: &str,
    service_code: &str,
    delta: i64,
) -> Result<Option<u32>, rusqlite::Error> {
    conn.prepare_cached(
        "UPDATE package_item SET used = used + ?4 WHERE card_id = ?1 AND package_id = ?2 AND service_code = ?3
         RETURNING uses_total, used",
    )?
    .query_row(params![card_id, package_id, service_code, delta], |r| {
        let (total, used): (i64, i64) = (r.get(0)?, r.get(1)?);
        Ok(u32::try_from((total - used.max(0)).max(0)).unwrap_or(0))
    })
    .optional()
}

/// Writes new `uses_left` figures into a card's stored body and gives it `version`: the upload path's
/// cheap form of [`refresh`] (one read, one write), for items whose `used` changed by [`add_usage`].
pub fn patch_uses_left(
    conn: &Connection,
    card_id: i64,
    left: &[(&str, &str, u32)],
    version: u64,
) -> Result<(), CardError> {
    let body: Vec<u8> = conn
        .prepare_cached("SELECT body FROM card WHERE id = ?1")?
        .query_row([card_id], |r| r.get(0))?;
    let mut card = Card::decode(&body).map_err(|e| CardError::Corrupt {
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
            None => return refresh(conn, card_id, version),
        }
    }
    conn.prepare_cached("UPDATE card SET body = ?2, version = ?3 WHERE id = ?1")?
        .execute(params![card_id, card.encode(), version as i64])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Admin input

/// China Standard Time: a date without a time is a business day there.
const CST_OFFSET_MINUTES: i32 = 480;

/// A validity bound from the command line: RFC 3339 (`2027-01-01T00:00:00+08:00`) as given, or a date
/// `YYYY-MM-DD` in China Standard Time — its start, or with `end_of_day` the start of the next day (so
/// `--valid-until 2027-12-31` includes that day; the bound is exclusive).
pub fn parse_time(flag: &str, s: &str, end_of_day: bool) -> Result<i64, CardError> {
    if let Some(days) = crate::core::close::parse_date(s) {
        let (start, end) = crate::core::close::day_window(days, CST_OFFSET_MINUTES);
        return Ok(if end_of_day { end } else { start });
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            CardError::Invalid(format!(
                "{flag} {s:?}: neither YYYY-MM-DD nor RFC 3339 ({e})"
            ))
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| CardError::Invalid(format!("{flag} {s:?}: out of range")))
}

impl ItemSpec {
    /// `CODE:TITLE:USES:PRICE_FEN`, e.g. `WASH:精洗:10:3500` (the title may itself contain `:`).
    pub fn parse(s: &str) -> Result<Self, CardError> {
        let bad = |why: &str| {
            CardError::Invalid(format!(
                "--item {s:?}: {why} (expected CODE:TITLE:USES:PRICE_FEN, e.g. WASH:精洗:10:3500)"
            ))
        };
        let mut parts = s.rsplitn(3, ':');
        let price = parts.next().ok_or_else(|| bad("no price"))?;
        let uses = parts.next().ok_or_else(|| bad("no uses"))?;
        let rest = parts.next().ok_or_else(|| bad("no code and title"))?;
        let (code, title) = rest.split_once(':').ok_or_else(|| bad("no title"))?;
        if title.trim().is_empty() {
            return Err(bad("empty title"));
        }
        let uses_total: u32 = uses
            .parse()
            .map_err(|_| bad("uses is not a whole number"))?;
        if uses_total == 0 {
            return Err(bad("uses must be at least 1"));
        }
        let price_fen: u64 = price
            .parse()
            .map_err(|_| bad("price is not a whole number of fen"))?;
        check_id("service code", code)?;
        Ok(ItemSpec {
            service_code: code.to_owned(),
            title: title.to_owned(),
            uses_total,
            price_fen,
        })
    }
}

/// `ms` as RFC 3339 in China Standard Time (the platform's business time zone), or the number if out of range.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC))
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_masked() {
        assert_eq!(mask_name("张三"), "张*");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
        assert_eq!(mask_name("张"), "*");
        assert_eq!(mask_name(""), "*");
    }

    #[test]
    fn admin_input_is_parsed_or_named() {
        let i = ItemSpec::parse("WASH:精洗:10:3500").unwrap();
        assert_eq!(
            (
                i.service_code.as_str(),
                i.title.as_str(),
                i.uses_total,
                i.price_fen
            ),
            ("WASH", "精洗", 10, 3500)
        );
        assert_eq!(ItemSpec::parse("X:a:b:1:2").unwrap().title, "a:b");
        for bad in [
            "WASH:精洗:10",
            "WASH::10:1",
            "WASH:t:0:1",
            "WASH:t:x:1",
            "W A:t:1:1",
        ] {
            let e = ItemSpec::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("--item") || e.contains("service code"),
                "{bad}: {e}"
            );
        }
        // 2027-01-01 in China Standard Time is 2026-12-31T16:00Z.
        let from = parse_time("--valid-from", "2027-01-01", false).unwrap();
        assert_eq!(from, 1_798_732_800_000);
        assert_eq!(
            parse_time("--valid-until", "2027-01-01", true).unwrap(),
            from + 86_400_000
        );
        assert_eq!(
            parse_time("--valid-from", "2027-01-01T00:00:00+08:00", false).unwrap(),
            from
        );
        let e = parse_time("--valid-from", "tomorrow", false).unwrap_err();
        assert!(e.to_string().contains("--valid-from \"tomorrow\""), "{e}");
    }

    #[test]
    fn scope_history_round_trips() {
        let s = vec![
            MerchantScope::All,
            MerchantScope::Merchants(vec!["M-1".into()]),
            MerchantScope::Categories(vec!["car-wash".into()]),
        ];
        assert_eq!(scopes_from_json(&scopes_json(&s)).unwrap(), s);
        assert!(scopes_from_json("[{\"kind\":0,\"list\":[\"x\"]}]").is_none());
    }
}
