//! The card model's rules, as pure code: what an operator may customize onto a card (packages, items,
//! scopes) and how a card's body — what every terminal is signed — follows from its packages and usage;
//! names masked for display; the admin input formats (`--item`, dates). A refused input is a
//! [`Problem`] naming the field (`valid_until`, `items[1].uses_total`), which the API sends as it is and
//! the admin CLI prints with the field's flag.

use std::collections::BTreeSet;

use redeemd_contract::model::{Card, CardNumber, CardStatus, Holder, Item, MerchantScope, Package};
use serde::{Deserialize, Serialize};

use super::problem::Problem;

/// Longest title of a package or an item, in characters (a reader shows it on one line).
pub const MAX_TITLE_CHARS: usize = 64;
/// Most uses of one item in a package.
pub const MAX_USES: u32 = 100_000;
/// Highest price of one use, in fen (¥10,000,000,000).
pub const MAX_PRICE_FEN: u64 = 1_000_000_000_000;
/// Most items in one package.
pub const MAX_ITEMS: usize = 64;

/// Status name as printed and as spelled in the deny list.
pub fn status_name(s: CardStatus) -> &'static str {
    match s {
        CardStatus::Active => "active",
        CardStatus::Lost => "lost",
        CardStatus::Frozen => "frozen",
        CardStatus::Cancelled => "cancelled",
        CardStatus::Reissued => "reissued",
    }
}

/// The status a card is signed with for the shops (its entry and its deny-list entry): a card
/// cancelled by a reissue — it names its successor — is `Reissued`, so that the counter can tell
/// the cashier the member has a new card (PROTOCOL.md §7.1 `CARD_REISSUED`). The card table keeps
/// it cancelled.
pub fn signed_status(status: CardStatus, reissued: bool) -> CardStatus {
    match status {
        CardStatus::Cancelled if reissued => CardStatus::Reissued,
        other => other,
    }
}

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

/// An item of a package: also its JSON form in the API and in the catalogue's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemSpec {
    pub service_code: String,
    pub title: String,
    pub uses_total: u32,
    pub price_fen: u64,
}

impl PackageSpec {
    pub fn check(&self) -> Result<(), Problem> {
        check_id("package_id", &self.id)?;
        check_title("title", &self.title)?;
        if self.valid_until_ms <= self.valid_from_ms {
            return Err(Problem::invalid(
                "valid_until",
                format!("package {}: must be after valid_from", self.id),
            ));
        }
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(Problem::invalid(
                "items",
                format!("package {}: 1 to {MAX_ITEMS} items", self.id),
            ));
        }
        if self.daily_cap == Some(0) {
            return Err(Problem::invalid(
                "daily_cap",
                "0: at least 1 (leave it out for no cap)",
            ));
        }
        let mut codes = BTreeSet::new();
        for (n, i) in self.items.iter().enumerate() {
            i.check(&format!("items[{n}]"))?;
            if !codes.insert(&i.service_code) {
                return Err(Problem::invalid(
                    format!("items[{n}].service_code"),
                    format!(
                        "package {}: service code {} appears twice",
                        self.id, i.service_code
                    ),
                ));
            }
        }
        match &self.scope {
            MerchantScope::Merchants(l) | MerchantScope::Categories(l) if l.is_empty() => Err(
                Problem::invalid("scope", format!("package {}: an empty scope list", self.id)),
            ),
            MerchantScope::Merchants(l) => l
                .iter()
                .enumerate()
                .try_for_each(|(n, m)| check_id(&format!("scope.merchants[{n}]"), m)),
            MerchantScope::Categories(l) => l
                .iter()
                .enumerate()
                .try_for_each(|(n, c)| check_id(&format!("scope.categories[{n}]"), c)),
            MerchantScope::All => Ok(()),
        }
    }
}

impl ItemSpec {
    /// An item's bounds; `field` names it (`items[2]`).
    pub fn check(&self, field: &str) -> Result<(), Problem> {
        check_id(&format!("{field}.service_code"), &self.service_code)?;
        check_title(&format!("{field}.title"), &self.title)?;
        if !(1..=MAX_USES).contains(&self.uses_total) {
            return Err(Problem::invalid(
                format!("{field}.uses_total"),
                format!("{}: 1 to {MAX_USES}", self.uses_total),
            ));
        }
        if self.price_fen > MAX_PRICE_FEN {
            return Err(Problem::invalid(
                format!("{field}.price_fen"),
                format!("{}: at most {MAX_PRICE_FEN}", self.price_fen),
            ));
        }
        Ok(())
    }
}

/// Ids, codes and categories: printable, no spaces or colons, 1–64 bytes.
pub fn check_id(field: &str, s: &str) -> Result<(), Problem> {
    if s.is_empty()
        || s.len() > 64
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return Err(Problem::invalid(
            field,
            format!("{s:?}: 1 to 64 bytes without spaces, control characters or ':'"),
        ));
    }
    Ok(())
}

/// A title or a name: 1 to [`MAX_TITLE_CHARS`] characters, not only spaces, no control characters.
pub fn check_title(field: &str, s: &str) -> Result<(), Problem> {
    if s.trim().is_empty() || s.chars().count() > MAX_TITLE_CHARS || s.chars().any(char::is_control)
    {
        return Err(Problem::invalid(
            field,
            format!("1 to {MAX_TITLE_CHARS} characters, not only spaces, no control characters"),
        ));
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

/// One package with its items and usage, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPackage {
    pub spec: PackageSpec,
    /// `used` per item, in item order: redeemed minus voided at every terminal.
    pub used: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct ScopeJson {
    kind: u8,
    list: Vec<String>,
}

pub fn scope_to_db(scope: &MerchantScope) -> (u8, String) {
    match scope {
        MerchantScope::All => (0, "[]".into()),
        MerchantScope::Merchants(l) => (1, json(l)),
        MerchantScope::Categories(l) => (2, json(l)),
    }
}

pub fn scope_from_db(kind: i64, list: &str) -> Option<MerchantScope> {
    let l: Vec<String> = serde_json::from_str(list).ok()?;
    match kind {
        0 if l.is_empty() => Some(MerchantScope::All),
        1 => Some(MerchantScope::Merchants(l)),
        2 => Some(MerchantScope::Categories(l)),
        _ => None,
    }
}

pub fn json<T: Serialize>(v: &T) -> String {
    // Serializing plain strings and integers cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

pub fn scopes_json(scopes: &[MerchantScope]) -> String {
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

pub fn scopes_from_json(text: &str) -> Option<Vec<MerchantScope>> {
    let v: Vec<ScopeJson> = serde_json::from_str(text).ok()?;
    v.into_iter()
        .map(|s| scope_from_db(i64::from(s.kind), &json(&s.list)))
        .collect()
}

/// Whether a card with these package scopes is visible to a merchant: some package may be used there.
pub fn visible(scopes: &[MerchantScope], merchant_id: &str, categories: &[String]) -> bool {
    scopes.iter().any(|s| s.allows(merchant_id, categories))
}

/// The package scopes of a card.
pub fn scopes(packages: &[StoredPackage]) -> Vec<MerchantScope> {
    packages.iter().map(|p| p.spec.scope.clone()).collect()
}

/// The derived body of a card: what every terminal receives, before the per-terminal fields.
pub fn template(
    masked_number: String,
    status: CardStatus,
    holder_name: Option<&str>,
    packages: &[StoredPackage],
) -> Card {
    Card {
        masked_number,
        status,
        holder: holder_name.map(|n| Holder {
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

/// A new card: number, and for a named card the holder's name and identity data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCard {
    pub number: CardNumber,
    pub holder_name: Option<String>,
    pub identity_data: Option<String>,
}

impl NewCard {
    pub fn check(&self) -> Result<(), Problem> {
        if self.identity_data.is_some() && self.holder_name.is_none() {
            return Err(Problem::invalid(
                "identity",
                "needs holder: only a named card has identity data",
            ));
        }
        if let Some(n) = &self.holder_name {
            check_title("holder", n)?;
        }
        if let Some(i) = &self.identity_data
            && (i.is_empty() || i.len() > 64 || i.chars().any(char::is_control))
        {
            return Err(Problem::invalid(
                "identity",
                "1 to 64 bytes, no control characters",
            ));
        }
        Ok(())
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
    pub fn name(self) -> &'static str {
        match self {
            StatusAction::ReportLost => "report lost",
            StatusAction::Freeze => "freeze",
            StatusAction::Unlock => "unlock",
        }
    }
}

/// The status an action takes a card in `from` to, or `None` when the action is not possible from it.
pub fn transition(action: StatusAction, from: CardStatus) -> Option<CardStatus> {
    match (action, from) {
        (StatusAction::ReportLost, CardStatus::Active | CardStatus::Frozen) => {
            Some(CardStatus::Lost)
        }
        (StatusAction::Freeze, CardStatus::Active | CardStatus::Lost) => Some(CardStatus::Frozen),
        (StatusAction::Unlock, CardStatus::Lost | CardStatus::Frozen) => Some(CardStatus::Active),
        _ => None,
    }
}

/// China Standard Time: a date without a time is a business day there.
const CST_OFFSET_MINUTES: i32 = 480;

/// A validity bound from the command line: RFC 3339 (`2027-01-01T00:00:00+08:00`) as given, or a date
/// `YYYY-MM-DD` in China Standard Time — its start, or with `end_of_day` the start of the next day (so
/// `--valid-until 2027-12-31` includes that day; the bound is exclusive).
pub fn parse_time(field: &str, s: &str, end_of_day: bool) -> Result<i64, Problem> {
    if let Some(days) = crate::core::close::parse_date(s) {
        let (start, end) = crate::core::close::day_window(days, CST_OFFSET_MINUTES);
        return Ok(if end_of_day { end } else { start });
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Problem::invalid(
                field,
                format!("{s:?}: neither YYYY-MM-DD nor RFC 3339 ({e})"),
            )
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| Problem::invalid(field, format!("{s:?}: out of range")))
}

/// The start of the business day (China Standard Time) that holds `ms`.
pub fn day_start(ms: i64) -> i64 {
    let offset_ms = i64::from(CST_OFFSET_MINUTES) * 60_000;
    (ms + offset_ms).div_euclid(86_400_000) * 86_400_000 - offset_ms
}

impl ItemSpec {
    /// `CODE:TITLE:USES:PRICE_FEN`, e.g. `WASH:精洗:10:3500` (the title may itself contain `:`).
    pub fn parse(s: &str) -> Result<Self, Problem> {
        let bad = |why: &str| {
            Problem::invalid(
                "items",
                format!(
                    "{s:?}: {why} (expected CODE:TITLE:USES:PRICE_FEN, e.g. WASH:精洗:10:3500)"
                ),
            )
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
        let price_fen: u64 = price
            .parse()
            .map_err(|_| bad("price is not a whole number of fen"))?;
        let item = ItemSpec {
            service_code: code.to_owned(),
            title: title.to_owned(),
            uses_total,
            price_fen,
        };
        item.check("items")
            .map_err(|p| bad(&p.message().replacen("items.", "", 1)))?;
        Ok(item)
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
            let e = ItemSpec::parse(bad).unwrap_err();
            assert_eq!(e.field(), Some("items"), "{bad}");
            assert!(
                e.for_cli().starts_with(&format!("--item: {bad:?}: ")),
                "{bad}: {}",
                e.for_cli()
            );
        }
        assert!(
            ItemSpec::parse("W A:t:1:1")
                .unwrap_err()
                .detail
                .contains("service_code"),
        );
        // 2027-01-01 in China Standard Time is 2026-12-31T16:00Z.
        let from = parse_time("valid_from", "2027-01-01", false).unwrap();
        assert_eq!(from, 1_798_732_800_000);
        assert_eq!(
            parse_time("valid_until", "2027-01-01", true).unwrap(),
            from + 86_400_000
        );
        assert_eq!(
            parse_time("valid_from", "2027-01-01T00:00:00+08:00", false).unwrap(),
            from
        );
        let e = parse_time("valid_from", "tomorrow", false).unwrap_err();
        assert_eq!(e.field(), Some("valid_from"));
        assert!(e.detail.starts_with("\"tomorrow\": neither"), "{e:?}");
        assert_eq!(day_start(from + 3_600_000), from);
        assert_eq!(day_start(from - 1), from - 86_400_000);
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
