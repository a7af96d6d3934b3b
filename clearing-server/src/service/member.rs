//! The member app acting for one card at a time (`docs/api/README.md`, "Member app"): the platform's own
//! app, server to server, with an API key of role `member_app`. It names a card by the handle an
//! operator's grant gave it (`mc_…`, `POST /v1/cards/{id}/grants`); a handle not granted to this app —
//! another app's, revoked, or made up — is not found, so the app cannot act on a card it was not given.

use super::Service;
use super::cards::{CardSel, CardView, card_view};
use crate::core::access::Want;
use crate::core::cards::StatusAction;
use crate::core::catalogue;
use crate::core::clearing::MemberStatement;
use crate::core::problem::Problem;
use crate::storage::access::{self, Grant};
use crate::storage::cards as card_store;
use crate::storage::{Tx, catalogue as catalogue_store, statements};

impl Service<'_> {
    /// The grant a handle names, if this caller may act on it (the one check: `Want::GrantedCard`).
    fn granted(&self, tx: &mut dyn Tx, handle: &str) -> Result<Grant, Problem> {
        let grant = access::grant_by_handle(tx, handle)?;
        self.allow(
            Want::GrantedCard {
                granted_to: grant.as_ref().map(|g| g.app_id.as_str()),
            },
            || format!("card {handle}"),
        )?;
        grant.ok_or_else(|| Problem::not_found(format!("card {handle} not found")))
    }

    /// The card's status, packages and uses left.
    pub fn member_card(&self, handle: &str) -> Result<CardView, Problem> {
        self.db.read(|tx| {
            let g = self.granted(tx, handle)?;
            card_view(tx, g.card_id, false)
        })
    }

    /// The card's usage history: where, when, what, and what is left per item.
    pub fn member_usage(
        &self,
        handle: &str,
        window: (i64, i64),
    ) -> Result<MemberStatement, Problem> {
        self.db.read(|tx| {
            let g = self.granted(tx, handle)?;
            let number = card_store::number_of(tx, self.vault, g.card_id)?;
            let mut s = statements::member_statement(tx, self.vault, &number, window)?;
            // The app names the card by its handle, not by the platform's id.
            s.card_id = None;
            Ok(s)
        })
    }

    /// 挂失: the card is refused at every shop from its next sync pass (deny list).
    pub fn member_report_lost(&self, handle: &str) -> Result<CardView, Problem> {
        self.db.write(|tx| {
            let g = self.granted(tx, handle)?;
            self.status_tx(tx, CardSel::Id(g.card_id), StatusAction::ReportLost)
        })
    }

    /// Customizes a catalogue offer onto the card (用完再定): when no package made from it is still
    /// usable. The card must be active.
    pub fn member_customize(&self, handle: &str, offer_id: &str) -> Result<CardView, Problem> {
        self.db.write(|tx| {
            let g = self.granted(tx, handle)?;
            let offer = catalogue_store::offer(tx, offer_id)?
                .ok_or_else(|| Problem::not_found(format!("offer {offer_id} not found")))?;
            let row = card_store::card_by_id(tx, g.card_id)?;
            if row.status != redeemd_contract::model::CardStatus::Active {
                return Err(Problem::conflict(
                    "card_not_active",
                    format!(
                        "the card is {}: packages are customized onto active cards only",
                        crate::core::cards::status_name(row.status)
                    ),
                ));
            }
            let packages = card_store::packages(tx, row.id)?;
            let spec = catalogue::customize(&offer, &packages, self.now_ms)?;
            let number = card_store::number_of(tx, self.vault, row.id)?;
            let version = card_store::customize(tx, self.vault, &number, &spec, self.now_ms)?;
            self.audit(
                tx,
                "card.customize",
                &super::cards::target(row.id),
                &format!(
                    "package {} from offer {offer_id} (version {version})",
                    spec.id
                ),
            )?;
            card_view(tx, row.id, false)
        })
    }
}
