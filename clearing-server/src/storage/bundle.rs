//! `GET entitlements?since=V`: a terminal's signed snapshot or delta, produced row by row.
//!
//! Blocking code on its own SQLite connection, so that a million-card snapshot neither holds the
//! server's main connection nor builds the body in memory:
//!
//! 1. [`prepare`] (short write transactions): index the card references of cards issued since the
//!    terminal's last fill, in chunks; and bump the version counter if it has not moved for the
//!    [`CachePolicy`]'s refresh interval, so that a terminal polling a quiet platform still gets a
//!    fresh manifest (and `expires_at_ms`) before its cache expires — a `204` renews nothing.
//! 2. [`plan`] opens one read transaction (a consistent view: a card's `uses_left` and the terminal's
//!    `usage_through_seq` are read together) and decides: current (`204`), full or delta.
//! 3. [`Planned::write`] streams the frames in ascending card reference, straight from an SQL cursor
//!    (the `card_ref` primary key for a full snapshot; SQLite's own sorter for a delta), into any
//!    [`Write`] — the HTTP layer passes a compressing writer over a bounded channel to the response body.
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
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use thiserror::Error;

use crate::core::cache_policy::CachePolicy;
use crate::storage::cards::{self, CardError};

/// Cards indexed per write transaction by [`prepare`] (keeps uploads from waiting long for the lock).
const FILL_CHUNK: usize = 50_000;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Card(#[from] CardError),
    #[error("card_ref index of {terminal}: stored reference of card #{card_id} is not 32 bytes")]
    BadRef { terminal: String, card_id: i64 },
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

/// Step 1: index new cards for this terminal and keep the version fresh.
pub fn prepare(conn: &mut Connection, req: &BundleRequest) -> Result<(), BundleError> {
    // Read first: most requests find nothing to write and should not queue for the write lock.
    let unindexed: bool = conn.query_row(
        "SELECT coalesce((SELECT max(id) FROM card), 0) > card_refs_through FROM terminal WHERE id = ?1",
        [&req.keys.terminal_id],
        |r| r.get(0),
    )?;
    let (_, bumped_ms) = cards::current_version(conn)?;
    let stale = req.now_ms.saturating_sub(bumped_ms) >= req.cache.refresh_after_ms();
    if !unindexed && !stale {
        return Ok(());
    }
    if unindexed {
        fill(conn, &req.keys)?;
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (_, bumped_ms) = cards::current_version(&tx)?;
    if req.now_ms.saturating_sub(bumped_ms) >= req.cache.refresh_after_ms() {
        cards::bump_version(&tx, req.now_ms)?;
    }
    tx.commit()?;
    Ok(())
}

/// Indexes every card issued since the terminal's last fill, in chunks of [`FILL_CHUNK`] per write
/// transaction.
fn fill(conn: &Connection, keys: &TerminalKeys) -> Result<(), BundleError> {
    loop {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let done = cards::fill_card_refs(&tx, keys, FILL_CHUNK)?;
        tx.commit()?;
        if done {
            return Ok(());
        }
    }
}

/// How many times [`plan`] indexes cards issued under its feet before it gives up (the next poll
/// retries): a bound, not an expectation — one retry is already a race with an admin command.
const PLAN_ATTEMPTS: u32 = 8;

/// A decided bundle, holding the read transaction it will be written from.
pub struct Planned<'c> {
    tx: Transaction<'c>,
    req: BundleRequest,
    pub kind: BundleKind,
    pub version: u64,
    usage_through_seq: u64,
    categories: Vec<String>,
}

/// What [`Planned::write`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub upserts: u64,
    pub removals: u64,
}

/// Step 2: `None` when `since` is the current version (answer `204`).
///
/// Every card at or below the bundle's version must be in the terminal's reference index (the bundle
/// is read through it, and no later delta carries a card whose version is not above this bundle's), so
/// a card issued since [`prepare`] is indexed first and the read transaction opened again.
pub fn plan(conn: &mut Connection, req: BundleRequest) -> Result<Option<Planned<'_>>, BundleError> {
    // Shared from here on: the transaction handed out and the retries' fills borrow it alike.
    let conn: &Connection = conn;
    let mut attempts = 0;
    let tx = loop {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred)?;
        let unindexed: bool = tx.query_row(
            "SELECT coalesce((SELECT max(id) FROM card), 0) > card_refs_through FROM terminal WHERE id = ?1",
            [&req.keys.terminal_id],
            |r| r.get(0),
        )?;
        if !unindexed {
            break tx;
        }
        drop(tx);
        attempts += 1;
        if attempts == PLAN_ATTEMPTS {
            return Err(CardError::Invalid(format!(
                "cards of terminal {}: still being issued after {PLAN_ATTEMPTS} indexing passes",
                req.keys.terminal_id
            ))
            .into());
        }
        fill(conn, &req.keys)?;
    };
    let (version, _) = cards::current_version(&tx)?;
    if req.since == version {
        return Ok(None);
    }
    let (usage_through_seq, _) = crate::storage::head(&tx, &req.keys.terminal_id)
        .map_err(|e| CardError::Invalid(e.to_string()))?;
    let merchant = cards::merchant(&tx, &req.merchant_id)?;
    let (categories, full_from) = merchant
        .map(|m| (m.categories, m.full_from_version))
        .unwrap_or_default();
    let kind = if req.since == 0 || req.since > version || req.since < full_from {
        BundleKind::Full
    } else {
        BundleKind::Delta
    };
    Ok(Some(Planned {
        tx,
        req,
        kind,
        version,
        usage_through_seq,
        categories,
    }))
}

fn visible(card: &Card, merchant_id: &str, categories: &[String]) -> bool {
    card.packages
        .iter()
        .any(|p| p.scope.allows(merchant_id, categories))
}

impl Planned<'_> {
    /// Step 3: writes the whole bundle (magic, preamble, entries, manifest last) to `out`.
    pub fn write(self, out: &mut impl Write) -> Result<Written, BundleError> {
        let req = &self.req;
        let terminal = req.keys.terminal_id.as_str();
        let mut signer =
            BundleSigner::new(&req.keys.cache, self.kind, &req.merchant_id, self.version);
        out.write_all(&signer.header())?;
        let mut written = Written {
            upserts: 0,
            removals: 0,
        };
        let sql = match self.kind {
            BundleKind::Full => {
                "SELECT r.card_ref, c.id, c.body, c.identity_data FROM card_ref r JOIN card c ON c.id = r.card_id
                 WHERE r.terminal_id = ?1 AND ?2 >= 0 ORDER BY r.card_ref"
            }
            BundleKind::Delta => {
                // The changed cards first, by the version index (a delta is small next to the
                // database; left to itself the planner would walk the whole index in card_ref order
                // to save the sort), then SQLite's sorter puts them in card_ref order.
                "SELECT r.card_ref, c.id, c.body, c.identity_data FROM card c INDEXED BY card_by_version
                 CROSS JOIN card_ref r ON r.terminal_id = ?1 AND r.card_id = c.id
                 WHERE c.version > ?2 ORDER BY r.card_ref"
            }
        };
        {
            let mut stmt = self.tx.prepare(sql)?;
            let mut rows = stmt.query(params![terminal, req.since as i64])?;
            while let Some(row) = rows.next()? {
                let card_id: i64 = row.get(1)?;
                let card_ref = row
                    .get_ref(0)?
                    .as_blob()
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(CardRef)
                    .ok_or_else(|| BundleError::BadRef {
                        terminal: terminal.to_owned(),
                        card_id,
                    })?;
                let identity: Option<String> = row.get(3)?;
                let card = cards::terminal_card(
                    row.get_ref(2)?.as_blob().unwrap_or_default(),
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
                    let then = cards::scopes_at(&self.tx, card_id, req.since, &now)?;
                    if cards::visible(&then, &req.merchant_id, &self.categories) {
                        out.write_all(&signer.entry(&card_ref, None)?)?;
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

    /// A card issued between `prepare` (which indexes the terminal's card references) and `plan` has
    /// a version at or below the bundle's: left out of that bundle, no later delta would carry it.
    #[test]
    fn a_card_issued_after_prepare_is_in_the_bundle() {
        use redeemd_contract::keys::TerminalSecret;
        use redeemd_contract::model::CardNumber;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::storage::open(&dir.path().join("c.sqlite3")).unwrap();
        crate::storage::enroll(&conn, "T-1", "M-1", &[1; 32], 0).unwrap();
        let issue = |conn: &Connection, n: &str| {
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
            let v = cards::bump_version(conn, 0).unwrap();
            cards::insert_card(conn, &new, &[p], v, 0).unwrap();
        };
        issue(&conn, "6228480012345678");
        let req = BundleRequest {
            keys: TerminalSecret::from_bytes(&[1; 32])
                .unwrap()
                .derive_all("T-1"),
            merchant_id: "M-1".into(),
            since: 0,
            now_ms: 0,
            cache: CachePolicy::default(),
        };
        prepare(&mut conn, &req).unwrap();
        issue(&conn, "6228480055550001");
        let planned = plan(&mut conn, req).unwrap().unwrap();
        let version = planned.version;
        let written = planned.write(&mut Vec::new()).unwrap();
        assert_eq!(version, 2);
        assert_eq!(
            written.upserts, 2,
            "both cards, at or below version {version}"
        );
    }
}
