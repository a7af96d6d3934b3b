//! The platform's catalogue: packages a member may choose in the member app (the seed's 定制卡套餐:
//! customized to what the member wants, and customized again when used up — 用完再定). Pure.
//!
//! An offer is a package template: title, items (code, title, uses, price), scope, daily cap, whether
//! the holder's identity is asked for, and a validity in days. Customizing an offer onto a card makes a
//! new package of the card, valid from the start of the day (China Standard Time) for that many days.
//! A member may customize an offer when no package made from it is still usable on the card — each is
//! used up (no uses left on any item) or expired: one live package per offer and card. The packages
//! made from offer `WASH10` are `WASH10`, then `WASH10.2`, `WASH10.3`, …: a new package each time, so
//! the records of an earlier one keep their package and price, and its usage stays its own.

use redeemd_contract::model::MerchantScope;

use super::cards::{ItemSpec, PackageSpec, StoredPackage, check_title, day_start};
use super::problem::Problem;

/// Longest offer id (its packages' ids add `.N`).
pub const MAX_OFFER_ID: usize = 48;
pub const MAX_VALID_DAYS: u32 = 3660;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub id: String,
    pub title: String,
    pub valid_days: u32,
    pub scope: MerchantScope,
    pub daily_cap: Option<u32>,
    pub identity_required: bool,
    pub items: Vec<ItemSpec>,
    /// A retired offer is no longer customized (packages made from it stay).
    pub active: bool,
}

const DAY_MS: i64 = 86_400_000;

impl Offer {
    /// The package this offer makes at `now_ms`, under `package_id`.
    fn package(&self, package_id: String, now_ms: i64) -> PackageSpec {
        let from = day_start(now_ms);
        PackageSpec {
            id: package_id,
            title: self.title.clone(),
            valid_from_ms: from,
            valid_until_ms: from + i64::from(self.valid_days) * DAY_MS,
            scope: self.scope.clone(),
            daily_cap: self.daily_cap,
            identity_required: self.identity_required,
            items: self.items.clone(),
        }
    }

    /// An offer's bounds: its id (1 to [`MAX_OFFER_ID`] characters of `A-Z a-z 0-9 _ -`: its
    /// packages' ids add `.N`), validity 1 to [`MAX_VALID_DAYS`] days, and what a package needs.
    pub fn check(&self) -> Result<(), Problem> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_OFFER_ID
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(Problem::invalid(
                "offer_id",
                format!(
                    "{:?}: 1 to {MAX_OFFER_ID} characters of A-Z a-z 0-9 _ -",
                    self.id
                ),
            ));
        }
        check_title("title", &self.title)?;
        if !(1..=MAX_VALID_DAYS).contains(&self.valid_days) {
            return Err(Problem::invalid(
                "valid_days",
                format!("{}: 1 to {MAX_VALID_DAYS}", self.valid_days),
            ));
        }
        self.package(self.id.clone(), 0).check()
    }
}

/// Whether a package made from `offer` is still usable at `now_ms`: valid and some item with uses left.
fn usable(p: &StoredPackage, now_ms: i64) -> bool {
    now_ms >= p.spec.valid_from_ms
        && now_ms < p.spec.valid_until_ms
        && p.spec
            .items
            .iter()
            .zip(&p.used)
            .any(|(i, used)| i.uses_total > *used)
}

/// The instance number of a package id made from offer `offer_id` (`WASH10` 1, `WASH10.3` 3).
fn instance(offer_id: &str, package_id: &str) -> Option<u32> {
    if package_id == offer_id {
        return Some(1);
    }
    package_id
        .strip_prefix(offer_id)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

/// The package customizing `offer` onto a card with `packages` makes at `now_ms`, or why not: the
/// offer is retired (`404`), or a package made from it is still usable (`409 package_still_usable`).
pub fn customize(
    offer: &Offer,
    packages: &[StoredPackage],
    now_ms: i64,
) -> Result<PackageSpec, Problem> {
    if !offer.active {
        return Err(Problem::not_found(format!(
            "offer {} is retired from the catalogue",
            offer.id
        )));
    }
    let mut last = 0;
    for p in packages {
        let Some(n) = instance(&offer.id, &p.spec.id) else {
            continue;
        };
        if usable(p, now_ms) {
            return Err(Problem::conflict(
                "package_still_usable",
                format!(
                    "package {} of offer {} still has uses left until {}: customize again when it is used up or expired",
                    p.spec.id,
                    offer.id,
                    super::cards::rfc3339(p.spec.valid_until_ms)
                ),
            ));
        }
        last = last.max(n);
    }
    let id = if last == 0 {
        offer.id.clone()
    } else {
        format!("{}.{}", offer.id, last + 1)
    };
    Ok(offer.package(id, now_ms))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: i64 = 1_798_732_800_000 + 5 * 3_600_000; // 2027-01-01 05:00 CST

    fn offer() -> Offer {
        Offer {
            id: "WASH10".into(),
            title: "洗车十次".into(),
            valid_days: 365,
            scope: MerchantScope::Categories(vec!["car-wash".into()]),
            daily_cap: Some(2),
            identity_required: false,
            items: vec![ItemSpec {
                service_code: "WASH".into(),
                title: "精洗".into(),
                uses_total: 10,
                price_fen: 3500,
            }],
            active: true,
        }
    }

    fn stored(spec: PackageSpec, used: u32) -> StoredPackage {
        StoredPackage {
            spec,
            used: vec![used],
        }
    }

    #[test]
    fn an_offer_is_customized_again_only_when_used_up_or_expired() {
        let o = offer();
        assert!(o.check().is_ok());
        let first = customize(&o, &[], NOW).unwrap();
        assert_eq!(first.id, "WASH10");
        assert_eq!(first.valid_from_ms, 1_798_732_800_000);
        assert_eq!(first.valid_until_ms, first.valid_from_ms + 365 * DAY_MS);
        // Uses left: refused, naming the package.
        let p = customize(&o, &[stored(first.clone(), 9)], NOW).unwrap_err();
        assert_eq!((p.status, p.code), (409, "package_still_usable"));
        assert!(
            p.detail.contains("package WASH10 of offer WASH10"),
            "{}",
            p.detail
        );
        // Used up: a second package.
        let second = customize(&o, &[stored(first.clone(), 10)], NOW).unwrap();
        assert_eq!(second.id, "WASH10.2");
        // Expired with uses left: a third.
        let later = first.valid_until_ms + 1;
        let third = customize(&o, &[stored(first, 10), stored(second, 3)], later).unwrap();
        assert_eq!(third.id, "WASH10.3");
        // Packages of other offers do not count; a retired offer is not customized.
        let other = PackageSpec {
            id: "WASH100".into(),
            ..customize(&o, &[], NOW).unwrap()
        };
        assert_eq!(
            customize(&o, &[stored(other, 0)], NOW).unwrap().id,
            "WASH10"
        );
        let retired = Offer { active: false, ..o };
        assert_eq!(customize(&retired, &[], NOW).unwrap_err().status, 404);
    }

    #[test]
    fn offers_are_checked_by_field() {
        let bad = |o: Offer| o.check().unwrap_err().field().unwrap().to_owned();
        assert_eq!(
            bad(Offer {
                id: "A.B".into(),
                ..offer()
            }),
            "offer_id"
        );
        assert_eq!(
            bad(Offer {
                valid_days: 0,
                ..offer()
            }),
            "valid_days"
        );
        assert_eq!(
            bad(Offer {
                items: vec![],
                ..offer()
            }),
            "items"
        );
        let mut o = offer();
        o.items[0].uses_total = 0;
        assert_eq!(bad(o), "items[0].uses_total");
    }
}
