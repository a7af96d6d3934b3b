//! `GET entitlements?since=V`: a terminal's signed snapshot or delta, produced page by page.
//!
//! Blocking code, so that a million-card snapshot neither holds a request thread nor builds the body
//! in memory:
//!
//! 1. [`prepare`] (short write transactions): index the card references of cards issued since the
//!    terminal's last fill, in chunks; and bump the version counter if it has not moved for the
//!    [`CachePolicy`]'s refresh interval, so that a terminal polling a quiet platform still gets a
//!    fresh manifest (and `expires_at_ms`) before its cache expires — a `204` renews nothing.
//! 2. [`produce`] opens one read-only snapshot (a card's `uses_left` and the terminal's
//!    `usage_through_seq` are read together) and decides: current (`204`), full or delta; reports the
//!    decision; then streams the frames in ascending card reference, pages of [`PAGE`] cards read in
//!    `card_ref` order, into any [`Write`] — the HTTP layer passes a compressing writer over a bounded
//!    channel to the response body.
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

/// Cards indexed per write transaction by [`prepare`] (keeps uploads from waiting long for the lock).
const FILL_CHUNK: usize = 50_000;
/// Cards read per query while a bundle is written.
pub const PAGE: i64 = 2_000;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Card(#[from] CardError),
    #[error("card_ref index of {terminal}: stored reference of card #{card_id} is not 32 bytes")]
    BadRef { terminal: String, card_id: i64 },
    #[error("signing: {0}")]
    Sign(#[from] redeemd_contract::snapshot::SignError),
    #[error("writing the bundle: {0}")]
    Write(#[from] std::io::Error),
    #[error("cards of terminal {0}: still being issued after {PLAN_ATTEMPTS} indexing passes")]
    StillIssuing(String),
    /// The read found cards issued since the index was filled (internal: filled and read again).
    #[error("unindexed cards")]
    Unindexed,
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

fn unindexed(tx: &mut dyn Tx, terminal_id: &str) -> Result<bool, StorageError> {
    let r = tx.query_one(
        "SELECT coalesce((SELECT max(id) FROM card), 0), card_refs_through FROM terminal WHERE id = $1",
        params![terminal_id],
    )?;
    Ok(r.i64(0)? > r.i64(1)?)
}

/// Step 1: index new cards for this terminal and keep the version fresh.
pub fn prepare(db: &Db, req: &BundleRequest) -> Result<(), BundleError> {
    // Read first: most requests find nothing to write and should not queue for the write lock.
    let (unindexed, bumped_ms) = db.read(|tx| -> Result<_, StorageError> {
        Ok((
            unindexed(tx, &req.keys.terminal_id)?,
            cards::current_version(tx)?.1,
        ))
    })?;
    let stale = req.now_ms.saturating_sub(bumped_ms) >= req.cache.refresh_after_ms();
    if unindexed {
        fill(db, &req.keys)?;
    }
    if stale {
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

/// Indexes every card issued since the terminal's last fill, in chunks of [`FILL_CHUNK`] per write
/// transaction.
fn fill(db: &Db, keys: &TerminalKeys) -> Result<(), BundleError> {
    while !db.write(|tx| cards::fill_card_refs(tx, keys, FILL_CHUNK))? {}
    Ok(())
}

/// How many times [`produce`] indexes cards issued under its feet before it gives up (the next poll
/// retries): a bound, not an expectation — one retry is already a race with an admin command.
const PLAN_ATTEMPTS: u32 = 8;

/// What [`produce`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub upserts: u64,
    pub removals: u64,
}

/// What [`produce`] decided before writing: `None` for `204` (the terminal is current).
pub type Decision = Option<(BundleKind, u64)>;

/// Steps 2 and 3: decides, tells `decided` (which returns `false` when nobody wants the bundle any
/// more), then writes the whole bundle (magic, preamble, entries, manifest last) to `out`. Returns
/// `None` when there was nothing to write.
///
/// Every card at or below the bundle's version must be in the terminal's reference index (the bundle
/// is read through it, and no later delta carries a card whose version is not above this bundle's), so
/// a card issued since [`prepare`] is indexed first and the snapshot taken again.
pub fn produce(
    db: &Db,
    req: &BundleRequest,
    decided: impl FnOnce(Decision) -> bool,
    out: &mut impl Write,
) -> Result<Option<Written>, BundleError> {
    let mut decided = Some(decided);
    for _ in 0..PLAN_ATTEMPTS {
        let result = db.read(|tx| -> Result<Option<Written>, BundleError> {
            if unindexed(tx, &req.keys.terminal_id)? {
                return Err(BundleError::Unindexed);
            }
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
                req,
                kind,
                version,
                usage_through_seq,
                categories,
            };
            plan.write(tx, out).map(Some)
        });
        match result {
            Err(BundleError::Unindexed) => fill(db, &req.keys)?,
            other => return other,
        }
    }
    Err(BundleError::StillIssuing(req.keys.terminal_id.clone()))
}

struct Plan<'r> {
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
        let since = int("since", req.since)?;
        let mut after: Vec<u8> = Vec::new();
        loop {
            let rows = tx.query(
                "SELECT r.card_ref, c.id, c.body, c.identity_data FROM card_ref r JOIN card c ON c.id = r.card_id
                 WHERE r.terminal_id = $1 AND c.version > $2 AND r.card_ref > $3
                 ORDER BY r.card_ref LIMIT $4",
                params![
                    terminal,
                    if self.kind == BundleKind::Full { -1 } else { since },
                    &after,
                    PAGE
                ],
            )?;
            let Some(last) = rows.last() else { break };
            after = last.blob(0)?.to_vec();
            let page = rows.len();
            for row in rows {
                let card_id = row.i64(1)?;
                let card_ref = <[u8; 32]>::try_from(row.blob(0)?)
                    .map(CardRef)
                    .map_err(|_| BundleError::BadRef {
                        terminal: terminal.to_owned(),
                        card_id,
                    })?;
                let identity = row.opt_text(3)?;
                let card = cards::terminal_card(
                    row.blob(2)?,
                    card_id,
                    identity.as_deref(),
                    &card_ref,
                    &req.keys,
                    self.usage_through_seq,
                )?;
                if visible(&card, &req.merchant_id, &self.categories) {
                    out.write_all(&signer.entry(&card_ref, Some(&card))?)?;
                    written.upserts += 1;
                } else if self.kind == BundleKind::Delta {
                    let now: Vec<MerchantScope> =
                        card.packages.iter().map(|p| p.scope.clone()).collect();
                    let then = cards::scopes_at(tx, card_id, req.since, &now)?;
                    if cards::visible(&then, &req.merchant_id, &self.categories) {
                        out.write_all(&signer.entry(&card_ref, None)?)?;
                        written.removals += 1;
                    }
                }
            }
            if (page as i64) < PAGE {
                break;
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

    /// A card issued between `prepare` (which indexes the terminal's card references) and the snapshot
    /// has a version at or below the bundle's: left out of that bundle, no later delta would carry it.
    #[test]
    fn a_card_issued_after_prepare_is_in_the_bundle() {
        use redeemd_contract::keys::TerminalSecret;
        use redeemd_contract::model::CardNumber;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.sqlite3").display().to_string()).unwrap();
        db.write(|tx| super::super::enroll(tx, "T-1", "M-1", &[1; 32], 0))
            .unwrap();
        let issue = |n: &str| {
            db.write(|tx| -> Result<i64, CardError> {
                let new = cards::NewCard {
                    number: CardNumber::parse(n).unwrap(),
                    holder_name: None,
                    identity_data: None,
                };
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
                let v = cards::bump_version(tx, 0)?;
                cards::insert_card(tx, &new, &[p], v, 0)
            })
            .unwrap();
        };
        issue("6228480012345678");
        let req = BundleRequest {
            keys: TerminalSecret::from_bytes(&[1; 32])
                .unwrap()
                .derive_all("T-1"),
            merchant_id: "M-1".into(),
            since: 0,
            now_ms: 0,
            cache: CachePolicy::default(),
        };
        prepare(&db, &req).unwrap();
        issue("6228480055550001");
        let mut version = 0;
        let written = produce(
            &db,
            &req,
            |d| {
                version = d.unwrap().1;
                true
            },
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(version, 2);
        assert_eq!(
            written.upserts, 2,
            "both cards, at or below version {version}"
        );
    }
}
