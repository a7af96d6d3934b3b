//! The catalogue of offers the member app shows (`crate::core::catalogue`): operators set and retire
//! offers; operators and the member app read them.

use serde::Serialize;

use super::Service;
use super::cards::ScopeView;
use crate::core::access::Want;
use crate::core::catalogue::Offer;
use crate::core::problem::Problem;
use crate::storage::catalogue as store;

/// An offer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OfferView {
    pub offer_id: String,
    pub title: String,
    pub valid_days: u32,
    pub scope: Option<ScopeView>,
    pub daily_cap: Option<u32>,
    pub identity_required: bool,
    pub items: Vec<crate::core::cards::ItemSpec>,
    pub active: bool,
}

impl From<&Offer> for OfferView {
    fn from(o: &Offer) -> Self {
        OfferView {
            offer_id: o.id.clone(),
            title: o.title.clone(),
            valid_days: o.valid_days,
            scope: ScopeView::of(&o.scope),
            daily_cap: o.daily_cap,
            identity_required: o.identity_required,
            items: o.items.clone(),
            active: o.active,
        }
    }
}

impl Service<'_> {
    /// The offers: every one for operators (`all`), the active ones otherwise.
    pub fn catalogue(&self, all: bool) -> Result<Vec<Offer>, Problem> {
        self.allow(Want::Catalogue, || "catalogue".into())?;
        let all = all && self.who.role == crate::core::access::Role::Operator;
        Ok(self.db.read(|tx| store::offers(tx, !all))?)
    }

    /// Creates or replaces an offer (packages already made from it are not changed).
    pub fn put_offer(&self, offer: &Offer) -> Result<Offer, Problem> {
        self.allow(Want::Operate, || "catalogue".into())?;
        offer.check()?;
        self.db.write(|tx| {
            let before = store::offer(tx, &offer.id)?;
            store::put(tx, offer, self.now_ms)?;
            self.audit(
                tx,
                if before.is_some() {
                    "offer.update"
                } else {
                    "offer.create"
                },
                &format!("offer {}", offer.id),
                &format!(
                    "{:?}, {} days, {} items{}",
                    offer.title,
                    offer.valid_days,
                    offer.items.len(),
                    if offer.active { "" } else { ", retired" }
                ),
            )?;
            Ok(offer.clone())
        })
    }

    /// Retires an offer: no longer customized onto cards.
    pub fn retire_offer(&self, id: &str) -> Result<Offer, Problem> {
        self.allow(Want::Operate, || "catalogue".into())?;
        self.db.write(|tx| {
            let mut offer = store::offer(tx, id)?
                .ok_or_else(|| Problem::not_found(format!("offer {id} not found")))?;
            offer.active = false;
            store::put(tx, &offer, self.now_ms)?;
            self.audit(tx, "offer.retire", &format!("offer {id}"), "")?;
            Ok(offer)
        })
    }
}
