//! `GET entitlements?since=V`: a terminal's signed snapshot or delta, produced page by page.
//!
//! Blocking code, so that a million-card snapshot neither holds a request thread nor builds the body
//! in memory:
//!
//! 1. [`keep_fresh`] bumps the version counter if it has not moved for the [`CachePolicy`]'s refresh
//!    interval, so that a terminal polling a quiet platform still gets a fresh manifest (and
//!    `expires_at_ms`) before its cache expires — a `204` renews nothing.
//! 2. [`produce`] opens one read-only snapshot (a card's `uses_left` and the terminal's
//!    `usage_through_seq` are read together), decides — current (`204`), full or delta — and reports
//!    the decision; then computes this terminal's reference of every card in the bundle
//!    (`CardNumber::card_ref` under its card-token key: nothing is stored per terminal and card),
//!    sorts them, and streams the frames in ascending reference, bodies read [`PAGE`] cards at a
//!    time, into any [`Write`] — the HTTP layer passes a compressing writer over a bounded channel to
//!    the response body. Memory: 40 bytes per card of the bundle (reference and id), nothing per body.
//!
//! Which cards a terminal gets: every card with a package whose scope reaches the terminal's merchant
//! (all merchants, that merchant, or one of its categories), whatever the card's status. A delta holds
//! the cards whose entitlement version is above `V`: an upsert if the card is visible now, a removal if
//! it is not but was at `V` (scope history, [`cards::scopes_at`]). A delta from below the merchant's
//! `full_from_version` (its categories changed) is answered with a full snapshot.

use std::io::Write;

use redeemd_contract::keys::TerminalKeys;
use redeemd_contract::model::{Card, CardRef, MerchantScope};
use redeemd_contract::snapshot::{BundleKind, BundleSigner};
use thiserror::Error;

use super::Db;
use super::cards::{self, CardError};
use super::sql::{StorageError, Tx, int};
use crate::core::cache_policy::CachePolicy;
use crate::params;
use crate::vault::Vault;

/// Cards read per query while a bundle is written.
pub const PAGE: usize = 1_000;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Card(#[from] CardError),
    #[error("signing: {0}")]
    Sign(#[from] redeemd_contract::snapshot::SignError),
    #[error("writing the bundle: {0}")]
    Write(#[from] std::io::Error),
}

/// What one request asks for.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub keys: TerminalKeys,
    pub merchant_id: String,
    /// The terminal's installed version (0: none).
    pub since: u64,
    pub now_ms: i64,
    /// `expires_at_ms = now + validity`; the counter is bumped when it has not moved for the
    /// policy's refresh interval (see the module docs).
    pub cache: CachePolicy,
}

/// Step 1: moves the version counter when it has not moved for the refresh interval.
pub fn keep_fresh(db: &Db, req: &BundleRequest) -> Result<(), BundleError> {
    // Read first: most requests find nothing to write and should not queue for the write lock.
    let (_, bumped_ms) = db.read(cards::current_version)?;
    if req.now_ms.saturating_sub(bumped_ms) >= req.cache.refresh_after_ms() {
        db.write(|tx| -> Result<(), StorageError> {
            let (_, bumped_ms) = cards::current_version(tx)?;
            if req.now_ms.saturating_sub(bumped_ms) >= req.cache.refresh_after_ms() {
                cards::bump_version(tx, req.now_ms)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// What [`produce`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub upserts: u64,
    pub removals: u64,
}

/// What [`produce`] decided before writing: `None` for `204` (the terminal is current).
pub type Decision = Option<(BundleKind, u64)>;

/// Step 2: decides, tells `decided` (which returns `false` when nobody wants the bundle any more),
/// then writes the whole bundle (magic, preamble, entries, manifest last) to `out`. Returns `None` when
/// there was nothing to write.
pub fn produce(
    db: &Db,
    vault: &Vault,
    req: &BundleRequest,
    decided: impl FnOnce(Decision) -> bool,
    out: &mut impl Write,
) -> Result<Option<Written>, BundleError> {
    let mut decided = Some(decided);
    db.read(|tx| -> Result<Option<Written>, BundleError> {
        let (version, _) = cards::current_version(tx)?;
        if req.since == version {
            if let Some(f) = decided.take() {
                f(None);
            }
            return Ok(None);
        }
        let (usage_through_seq, _) = super::head(tx, &req.keys.terminal_id)?;
        let merchant = cards::merchant(tx, &req.merchant_id)?;
        let (categories, full_from) = merchant
            .map(|m| (m.categories, m.full_from_version))
            .unwrap_or_default();
        let kind = if req.since == 0 || req.since > version || req.since < full_from {
            BundleKind::Full
        } else {
            BundleKind::Delta
        };
        if !decided.take().is_some_and(|f| f(Some((kind, version)))) {
            return Ok(None);
        }
        let plan = Plan {
            vault,
            req,
            kind,
            version,
            usage_through_seq,
            categories,
        };
        plan.write(tx, out).map(Some)
    })
}

/// `SELECT … WHERE id IN ($1, …, $PAGE)`.
fn page_query() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let marks: Vec<String> = (1..=PAGE).map(|i| format!("${i}")).collect();
        format!(
            "SELECT id, body, identity_sealed FROM card WHERE id IN ({})",
            marks.join(", ")
        )
    })
}

/// The bundle's cards in this terminal's reference order: every card for a full snapshot (read in
/// pages by id), the cards changed since `since` for a delta.
fn references(
    tx: &mut dyn Tx,
    vault: &Vault,
    keys: &TerminalKeys,
    kind: BundleKind,
    since: u64,
) -> Result<Vec<(CardRef, i64)>, BundleError> {
    let mut refs = Vec::new();
    let mut add = |rows: &[super::Row]| -> Result<(), BundleError> {
        for r in rows {
            let card_id = r.i64(0)?;
            let number = cards::stored_number(vault, card_id, r.blob(1)?)?;
            refs.push((number.card_ref(&keys.card_token), card_id));
        }
        Ok(())
    };
    match kind {
        BundleKind::Full => {
            let mut after = 0i64;
            loop {
                let rows = tx.query(
                    "SELECT id, number_sealed FROM card WHERE id > $1 ORDER BY id LIMIT $2",
                    params![after, PAGE as i64 * 10],
                )?;
                let Some(last) = rows.last() else { break };
                after = last.i64(0)?;
                add(&rows)?;
            }
        }
        BundleKind::Delta => {
            let rows = tx.query(
                "SELECT id, number_sealed FROM card WHERE version > $1",
                params![int("since", since)?],
            )?;
            add(&rows)?;
        }
    }
    refs.sort_unstable();
    Ok(refs)
}

struct Plan<'r> {
    vault: &'r Vault,
    req: &'r BundleRequest,
    kind: BundleKind,
    version: u64,
    usage_through_seq: u64,
    categories: Vec<String>,
}

fn visible(card: &Card, merchant_id: &str, categories: &[String]) -> bool {
    card.packages
        .iter()
        .any(|p| p.scope.allows(merchant_id, categories))
}

impl Plan<'_> {
    fn write(self, tx: &mut dyn Tx, out: &mut impl Write) -> Result<Written, BundleError> {
        let req = self.req;
        let terminal = req.keys.terminal_id.as_str();
        let mut signer =
            BundleSigner::new(&req.keys.cache, self.kind, &req.merchant_id, self.version);
        out.write_all(&signer.header())?;
        let mut written = Written {
            upserts: 0,
            removals: 0,
        };
        let refs = references(tx, self.vault, &req.keys, self.kind, req.since)?;
        for page in refs.chunks(PAGE) {
            // One query per page, always PAGE placeholders (the last page padded with id 0, which no
            // card has), so that it is one prepared statement; both engines look each id up by key.
            let ids: Vec<super::Param<'_>> = page
                .iter()
                .map(|(_, id)| super::Param::Int(*id))
                .chain(std::iter::repeat(super::Param::Int(0)))
                .take(PAGE)
                .collect();
            type Body = (Vec<u8>, Option<Vec<u8>>);
            let mut bodies: std::collections::HashMap<i64, Body> = tx
                .query(page_query(), &ids)?
                .into_iter()
                .map(|r| {
                    Ok((
                        r.i64(0)?,
                        (r.blob(1)?.to_vec(), r.opt_blob(2)?.map(<[u8]>::to_vec)),
                    ))
                })
                .collect::<Result<_, StorageError>>()?;
            for (card_ref, card_id) in page {
                let Some((body, identity)) = bodies.remove(card_id) else {
                    // Read in the same snapshot as the id: never absent.
                    continue;
                };
                let identity = identity
                    .map(|s| self.vault.open(cards::SEALED_IDENTITY, &s))
                    .transpose()
                    .map_err(CardError::from)?;
                let card = cards::terminal_card(
                    &body,
                    *card_id,
                    identity.as_ref().map(|i| &i[..]),
                    card_ref,
                    &req.keys,
                    self.usage_through_seq,
                )?;
                if visible(&card, &req.merchant_id, &self.categories) {
                    out.write_all(&signer.entry(card_ref, Some(&card))?)?;
                    written.upserts += 1;
                } else if self.kind == BundleKind::Delta {
                    let now: Vec<MerchantScope> =
                        card.packages.iter().map(|p| p.scope.clone()).collect();
                    let then = cards::scopes_at(tx, *card_id, req.since, &now)?;
                    if cards::visible(&then, &req.merchant_id, &self.categories) {
                        out.write_all(&signer.entry(card_ref, None)?)?;
                        written.removals += 1;
                    }
                }
            }
        }
        let (_, manifest) = signer.finish(
            terminal,
            &self.categories,
            req.since,
            req.now_ms,
            req.now_ms.saturating_add(req.cache.validity_ms()),
        );
        out.write_all(&manifest)?;
        out.flush()?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use redeemd_contract::keys::TerminalSecret;
    use redeemd_contract::model::CardNumber;
    use redeemd_contract::snapshot::{BundleVerifier, Verified};

    /// More cards than one page, issued in an order unrelated to their references: the bundle holds
    /// every one, in strictly ascending reference (the verifier refuses anything else).
    #[test]
    fn a_bundle_of_many_pages_is_in_reference_order_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.sqlite3").display().to_string()).unwrap();
        let vault = Vault::new(crate::vault::MasterKey::from_bytes(&[9; 32]).unwrap());
        db.write(|tx| super::super::enroll(tx, &vault, "T-1", "M-1", &[1; 32], 0))
            .unwrap();
        let n = PAGE as u64 * 2 + 7;
        db.write(|tx| -> Result<(), CardError> {
            let v = cards::bump_version(tx, 0)?;
            let p = cards::PackageSpec {
                id: "P1".into(),
                title: "t".into(),
                valid_from_ms: 0,
                valid_until_ms: 1,
                scope: MerchantScope::All,
                daily_cap: None,
                identity_required: false,
                items: vec![cards::ItemSpec::parse("WASH:w:1:1").unwrap()],
            };
            for i in 0..n {
                let new = cards::NewCard {
                    number: CardNumber::parse(&format!("62284800{:08}", i * 7919 % 100_000_000))
                        .unwrap(),
                    holder_name: None,
                    identity_data: None,
                };
                cards::insert_card(tx, &vault, &new, std::slice::from_ref(&p), v, 0)?;
            }
            Ok(())
        })
        .unwrap();
        let keys = TerminalSecret::from_bytes(&[1; 32])
            .unwrap()
            .derive_all("T-1");
        let req = BundleRequest {
            keys: keys.clone(),
            merchant_id: "M-1".into(),
            since: 0,
            now_ms: 0,
            cache: CachePolicy::default(),
        };
        let mut bytes = Vec::new();
        let written = produce(&db, &vault, &req, |_| true, &mut bytes)
            .unwrap()
            .unwrap();
        assert_eq!(written.upserts, n);
        let mut v = BundleVerifier::new(&keys.cache, "T-1");
        let (mut at, mut entries) = (8, 0);
        loop {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            match v.frame(&bytes[at + 4..at + 4 + len]).unwrap() {
                Verified::Entry(e) => {
                    assert!(keys.card_token.reveal(&e.card_ref).is_ok());
                    entries += 1;
                }
                Verified::Manifest(m) => {
                    assert_eq!(m.entry_count, n);
                    break;
                }
                Verified::Preamble(_) => {}
            }
            at += 4 + len;
        }
        assert_eq!(entries, n);
    }
}
