//! `GET entitlements?since=V`: a terminal's signed snapshot or delta, produced page by page.
//!
//! Blocking code, so that a million-card snapshot neither holds a request thread nor builds the body
//! in memory:
//!
//! 1. [`produce`] opens one read-only snapshot (a card's `uses_left` and the terminal's
//!    `usage_through_seq` are read together). If the version counter has not moved for the
//!    [`CachePolicy`]'s refresh interval it bumps it first (a write, then a new snapshot), so that a
//!    terminal polling a quiet platform still gets a fresh manifest (and `expires_at_ms`) before its
//!    cache expires — a `204` renews nothing.
//! 2. It decides — current (`204`), full or delta — and reports the decision; then computes this terminal's reference of every card in the bundle
//!    (`CardNumber::card_ref` under its card-token key: nothing is stored per terminal and card),
//!    sorts them, and streams the frames in ascending reference into any [`Write`] — the HTTP layer
//!    passes a compressing writer over a bounded channel to the response body.
//!
//! What a card's entry is made of splits in two ([`Prepared`]): what is the same for every terminal —
//! the number opened from its seal, the body decoded once into a template around the two per-terminal
//! fields (`contract::model::BodyTemplate`), the package scopes — and what each terminal's keys make of
//! it: the card reference, the identity verifier, `usage_through_seq`, the entry MAC. A fleet's deltas
//! all carry the same recently changed cards (every shop's redemptions), so the shared part is kept in
//! a [`CardCache`] by card id *and version* — immutable content, valid in any process and any snapshot
//! that reads that version — and each delta does only its terminal's part per card. A full snapshot
//! reads its bodies [`PAGE`] cards at a time and caches nothing (40 bytes per card in memory: the
//! references and ids, sorted).
//!
//! Which cards a terminal gets: every card with a package whose scope reaches the terminal's merchant
//! (all merchants, that merchant, or one of its categories), whatever the card's status. A delta holds
//! the cards whose entitlement version is above `V`: an upsert if the card is visible now, a removal if
//! it is not but was at `V` (scope history, [`cards::scopes_at`]). A delta from below the merchant's
//! `full_from_version` (its categories changed) is answered with a full snapshot.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use redeemd_contract::keys::TerminalKeys;
use redeemd_contract::model::{
    BodyTemplate, Card, CardNumber, CardRef, MerchantScope, identity_verifier,
};
use redeemd_contract::snapshot::{BundleKind, BundleSigner};
use thiserror::Error;
use zeroize::Zeroizing;

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

/// Moves the version counter if it has not moved for the refresh interval (checked again under the
/// write lock: another request or process may have moved it meanwhile).
fn bump_if_stale(db: &Db, req: &BundleRequest) -> Result<(), BundleError> {
    db.write(|tx| -> Result<(), StorageError> {
        let (_, bumped_ms) = cards::current_version(tx)?;
        if req.now_ms.saturating_sub(bumped_ms) >= req.cache.refresh_after_ms() {
            cards::bump_version(tx, req.now_ms)?;
        }
        Ok(())
    })?;
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
    cache: &CardCache,
    req: &BundleRequest,
    decided: impl FnOnce(Decision) -> bool,
    out: &mut impl Write,
) -> Result<Option<Written>, BundleError> {
    let mut decided = Some(decided);
    let mut stale = false;
    let mut bumped = false;
    loop {
        let written = db.read(|tx| -> Result<Option<Written>, BundleError> {
            let (version, bumped_ms) = cards::current_version(tx)?;
            // A quiet platform: renew before deciding (once), so that the terminal gets a fresh
            // manifest instead of a 204 that renews nothing. Rare: the counter moves with every
            // upload of a living fleet.
            if !bumped && req.now_ms.saturating_sub(bumped_ms) >= req.cache.refresh_after_ms() {
                stale = true;
                return Ok(None);
            }
            decide_and_write(tx, vault, cache, req, version, &mut decided, out)
        })?;
        if stale && !bumped {
            bump_if_stale(db, req)?;
            bumped = true;
            continue;
        }
        return Ok(written);
    }
}

/// [`produce`]'s work in its snapshot, once the counter is fresh.
fn decide_and_write(
    tx: &mut dyn Tx,
    vault: &Vault,
    cache: &CardCache,
    req: &BundleRequest,
    version: u64,
    decided: &mut Option<impl FnOnce(Decision) -> bool>,
    out: &mut impl Write,
) -> Result<Option<Written>, BundleError> {
    {
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
            cache,
            req,
            kind,
            version,
            usage_through_seq,
            categories,
        };
        plan.write(tx, out).map(Some)
    }
}

/// `SELECT id, version, number_sealed, body, identity_sealed … WHERE id IN ($1, …, $PAGE)`.
fn page_query() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let marks: Vec<String> = (1..=PAGE).map(|i| format!("${i}")).collect();
        format!(
            "SELECT id, version, number_sealed, body, identity_sealed FROM card WHERE id IN ({})",
            marks.join(", ")
        )
    })
}

/// The rows of `ids` (at most [`PAGE`]), one prepared statement for every page (the last one padded
/// with id 0, which no card has).
fn page(tx: &mut dyn Tx, ids: &[i64]) -> Result<Vec<super::Row>, StorageError> {
    let params: Vec<super::Param<'_>> = ids
        .iter()
        .map(|id| super::Param::Int(*id))
        .chain(std::iter::repeat(super::Param::Int(0)))
        .take(PAGE)
        .collect();
    tx.query(page_query(), &params)
}

/// What every terminal's entry of one card at one version is made from (see the module docs).
pub struct Prepared {
    template: BodyTemplate,
    /// Identity data on file (named cards), opened from its seal.
    identity: Option<Zeroizing<Vec<u8>>>,
    scopes: Vec<MerchantScope>,
}

impl Prepared {
    fn from_body(
        vault: &Vault,
        card_id: i64,
        body: &[u8],
        identity_sealed: Option<&[u8]>,
    ) -> Result<Prepared, BundleError> {
        let card = Card::decode(body).map_err(|e| CardError::Corrupt {
            what: "body",
            card_id,
            reason: e.to_string(),
        })?;
        let identity = identity_sealed
            .map(|s| vault.open(cards::SEALED_IDENTITY, s))
            .transpose()
            .map_err(CardError::from)?;
        Ok(Prepared {
            template: card.template(),
            identity,
            scopes: card.packages.iter().map(|p| p.scope.clone()).collect(),
        })
    }

    /// The body one terminal is signed: its identity verifier (from its identity key and card
    /// reference) and `usage_through_seq` = the terminal's highest received seq.
    fn body(&self, card_ref: &CardRef, keys: &TerminalKeys, usage_through_seq: u64) -> Vec<u8> {
        let verifier = self
            .identity
            .as_ref()
            .map(|data| identity_verifier(&keys.identity, card_ref, data));
        self.template.body(verifier.as_ref(), usage_through_seq)
    }
}

/// A card as a delta needs it: its number (for each terminal's reference) and what its entries are
/// made from.
pub struct CachedCard {
    number: CardNumber,
    prepared: Prepared,
}

/// Cards recently in deltas, by id, at the version they were read at (a card's content never changes
/// without a new version, so an entry is valid wherever that version is read). Bounded: cleared when
/// full, and a delta larger than half of it (a terminal back after long offline) is served without
/// filling it, so that it does not push out what every other terminal's delta carries.
pub struct CardCache {
    map: Mutex<HashMap<i64, (u64, Arc<CachedCard>)>>,
    capacity: usize,
}

impl std::fmt::Debug for CardCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or(0);
        write!(
            f,
            "CardCache({n} of {} cards, numbers redacted)",
            self.capacity
        )
    }
}

/// Cards a [`CardCache`] keeps by default (about 400 bytes each).
pub const CARD_CACHE_CARDS: usize = 100_000;

impl Default for CardCache {
    fn default() -> Self {
        Self::with_capacity(CARD_CACHE_CARDS)
    }
}

impl CardCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The delta's cards, `(id, version)` each, from the cache or read (and kept) page by page.
    fn cards(
        &self,
        tx: &mut dyn Tx,
        vault: &Vault,
        wanted: &[(i64, u64)],
    ) -> Result<Vec<(i64, Arc<CachedCard>)>, BundleError> {
        let keep = wanted.len() <= self.capacity / 2;
        let mut found: HashMap<i64, Arc<CachedCard>> = HashMap::with_capacity(wanted.len());
        let mut missing = Vec::new();
        if let Ok(map) = self.map.lock() {
            for (id, version) in wanted {
                match map.get(id) {
                    Some((v, c)) if v == version => {
                        found.insert(*id, c.clone());
                    }
                    _ => missing.push(*id),
                }
            }
        } else {
            missing.extend(wanted.iter().map(|(id, _)| *id));
        }
        for ids in missing.chunks(PAGE) {
            let mut read = Vec::with_capacity(ids.len());
            for r in page(tx, ids)? {
                let id = r.i64(0)?;
                let card = Arc::new(CachedCard {
                    number: cards::stored_number(vault, id, r.blob(2)?)?,
                    prepared: Prepared::from_body(vault, id, r.blob(3)?, r.opt_blob(4)?)?,
                });
                read.push((id, r.u64(1)?, card));
            }
            if keep && let Ok(mut map) = self.map.lock() {
                if map.len() + read.len() > self.capacity {
                    map.clear();
                }
                for (id, version, card) in &read {
                    map.insert(*id, (*version, card.clone()));
                }
            }
            found.extend(read.into_iter().map(|(id, _, card)| (id, card)));
        }
        wanted
            .iter()
            .map(|(id, _)| {
                found.remove(id).map(|c| (*id, c)).ok_or_else(|| {
                    // Read in the same snapshot as the id: never absent.
                    BundleError::Storage(StorageError::Other(format!(
                        "card #{id} vanished within one snapshot"
                    )))
                })
            })
            .collect()
    }
}

struct Plan<'r> {
    vault: &'r Vault,
    cache: &'r CardCache,
    req: &'r BundleRequest,
    kind: BundleKind,
    version: u64,
    usage_through_seq: u64,
    categories: Vec<String>,
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
        match self.kind {
            BundleKind::Full => self.write_full(tx, &mut signer, &mut written, out)?,
            BundleKind::Delta => self.write_delta(tx, &mut signer, &mut written, out)?,
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

    /// Every card: this terminal's references of all of them sorted first (the numbers read ten
    /// pages at a time), then the bodies read a page at a time in that order.
    fn write_full(
        &self,
        tx: &mut dyn Tx,
        signer: &mut BundleSigner,
        written: &mut Written,
        out: &mut impl Write,
    ) -> Result<(), BundleError> {
        let keys = &self.req.keys;
        let mut refs: Vec<(CardRef, i64)> = Vec::new();
        let mut after = 0i64;
        loop {
            let rows = tx.query(
                "SELECT id, number_sealed FROM card WHERE id > $1 ORDER BY id LIMIT $2",
                params![after, PAGE as i64 * 10],
            )?;
            let Some(last) = rows.last() else { break };
            after = last.i64(0)?;
            for r in &rows {
                let card_id = r.i64(0)?;
                let number = cards::stored_number(self.vault, card_id, r.blob(1)?)?;
                refs.push((number.card_ref(&keys.card_token), card_id));
            }
        }
        refs.sort_unstable();
        for chunk in refs.chunks(PAGE) {
            let ids: Vec<i64> = chunk.iter().map(|(_, id)| *id).collect();
            let mut prepared: HashMap<i64, Prepared> = HashMap::with_capacity(ids.len());
            for r in page(tx, &ids)? {
                let id = r.i64(0)?;
                prepared.insert(
                    id,
                    Prepared::from_body(self.vault, id, r.blob(3)?, r.opt_blob(4)?)?,
                );
            }
            for (card_ref, card_id) in chunk {
                // Read in the same snapshot as the id: never absent.
                let Some(p) = prepared.get(card_id) else {
                    continue;
                };
                if let Some(op) = self.op(tx, *card_id, p)? {
                    self.write_entry(signer, written, out, card_ref, op, p)?;
                }
            }
        }
        Ok(())
    }

    /// The cards changed since the terminal's version, from the [`CardCache`] where it holds them.
    fn write_delta(
        &self,
        tx: &mut dyn Tx,
        signer: &mut BundleSigner,
        written: &mut Written,
        out: &mut impl Write,
    ) -> Result<(), BundleError> {
        let changed: Vec<(i64, u64)> = tx
            .query(
                "SELECT id, version FROM card WHERE version > $1",
                params![int("since", self.req.since)?],
            )?
            .iter()
            .map(|r| Ok((r.i64(0)?, r.u64(1)?)))
            .collect::<Result<_, StorageError>>()?;
        let cards = self.cache.cards(tx, self.vault, &changed)?;
        // What each card is to this terminal first: a card it does not see (another merchant's)
        // costs no reference, MAC or body.
        let mut entries: Vec<(CardRef, Op, &Prepared)> = Vec::new();
        for (card_id, card) in &cards {
            if let Some(op) = self.op(tx, *card_id, &card.prepared)? {
                let card_ref = card.number.card_ref(&self.req.keys.card_token);
                entries.push((card_ref, op, &card.prepared));
            }
        }
        entries.sort_unstable_by_key(|e| e.0);
        for (card_ref, op, card) in &entries {
            self.write_entry(signer, written, out, card_ref, *op, card)?;
        }
        Ok(())
    }

    /// What a card is to this terminal: an upsert if its merchant sees the card now; in a delta, a
    /// removal if it does not but did at the terminal's version; nothing otherwise.
    fn op(
        &self,
        tx: &mut dyn Tx,
        card_id: i64,
        card: &Prepared,
    ) -> Result<Option<Op>, BundleError> {
        let req = self.req;
        if cards::visible(&card.scopes, &req.merchant_id, &self.categories) {
            return Ok(Some(Op::Upsert));
        }
        if self.kind == BundleKind::Delta {
            let then = cards::scopes_at(tx, card_id, req.since, &card.scopes)?;
            if cards::visible(&then, &req.merchant_id, &self.categories) {
                return Ok(Some(Op::Remove));
            }
        }
        Ok(None)
    }

    fn write_entry(
        &self,
        signer: &mut BundleSigner,
        written: &mut Written,
        out: &mut impl Write,
        card_ref: &CardRef,
        op: Op,
        card: &Prepared,
    ) -> Result<(), BundleError> {
        match op {
            Op::Upsert => {
                let body = card.body(card_ref, &self.req.keys, self.usage_through_seq);
                out.write_all(&signer.entry_encoded(card_ref, Some(&body))?)?;
                written.upserts += 1;
            }
            Op::Remove => {
                out.write_all(&signer.entry_encoded(card_ref, None)?)?;
                written.removals += 1;
            }
        }
        Ok(())
    }
}

/// What an entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Upsert,
    Remove,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use redeemd_contract::keys::TerminalSecret;
    use redeemd_contract::model::CardNumber;
    use redeemd_contract::snapshot::{BundleVerifier, Verified};

    /// Package P1 for every merchant, with one item WASH of `uses` uses at 1 fen.
    fn package(uses: u32) -> cards::PackageSpec {
        cards::PackageSpec {
            id: "P1".into(),
            title: "t".into(),
            valid_from_ms: 0,
            valid_until_ms: 1,
            scope: MerchantScope::All,
            daily_cap: None,
            identity_required: false,
            items: vec![cards::ItemSpec::parse(&format!("WASH:w:{uses}:1")).unwrap()],
        }
    }

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
            let p = package(1);
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
        let written = produce(
            &db,
            &vault,
            &CardCache::default(),
            &req,
            |_| true,
            &mut bytes,
        )
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

    /// The verified entries of a bundle, by card number.
    fn entries(
        bytes: &[u8],
        keys: &TerminalKeys,
    ) -> std::collections::BTreeMap<String, redeemd_contract::snapshot::Entry> {
        let mut v = BundleVerifier::new(&keys.cache, &keys.terminal_id);
        let (mut at, mut out) = (8, std::collections::BTreeMap::new());
        loop {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            match v.frame(&bytes[at + 4..at + 4 + len]).unwrap() {
                Verified::Entry(e) => {
                    let n = keys.card_token.reveal(&e.card_ref).unwrap();
                    out.insert(n.digits().to_owned(), e);
                }
                Verified::Manifest(_) => return out,
                Verified::Preamble(_) => {}
            }
            at += 4 + len;
        }
    }

    /// A card prepared for one terminal's delta serves every other terminal's with that terminal's
    /// reference and identity verifier, and a card changed since (a new version) is read again, never
    /// served as it was.
    #[test]
    fn cached_cards_serve_every_terminal_and_never_an_older_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.sqlite3").display().to_string()).unwrap();
        let vault = Vault::new(crate::vault::MasterKey::from_bytes(&[9; 32]).unwrap());
        for (t, secret) in [("T-1", 1u8), ("T-2", 2)] {
            db.write(|tx| super::super::enroll(tx, &vault, t, "M-1", &[secret; 32], 0))
                .unwrap();
        }
        let number = CardNumber::parse("6228480012345678").unwrap();
        let since = db
            .write(|tx| -> Result<u64, CardError> {
                let v = cards::bump_version(tx, 0)?;
                let p = package(10);
                let new = cards::NewCard {
                    number: number.clone(),
                    holder_name: Some("张三".into()),
                    identity_data: Some("1234".into()),
                };
                cards::insert_card(tx, &vault, &new, std::slice::from_ref(&p), v, 0)?;
                Ok(v - 1)
            })
            .unwrap();
        let cache = CardCache::default();
        let delta = |terminal: &str, secret: u8| {
            let keys = TerminalSecret::from_bytes(&[secret; 32])
                .unwrap()
                .derive_all(terminal);
            let req = BundleRequest {
                keys: keys.clone(),
                merchant_id: "M-1".into(),
                since,
                now_ms: 0,
                cache: CachePolicy::default(),
            };
            let mut bytes = Vec::new();
            produce(&db, &vault, &cache, &req, |_| true, &mut bytes)
                .unwrap()
                .unwrap();
            let e = entries(&bytes, &keys).remove(number.digits()).unwrap();
            let card = Card::decode(&e.body).unwrap();
            let verifier = card.holder.unwrap().identity_verifier.unwrap();
            assert!(redeemd_contract::model::identity_matches(
                &keys.identity,
                &e.card_ref,
                b"1234",
                &verifier
            ));
            card.packages[0].items[0].uses_left
        };
        assert_eq!(delta("T-1", 1), 10);
        assert_eq!(delta("T-2", 2), 10, "from the cache, with T-2's keys");
        db.write(|tx| -> Result<(), CardError> {
            let v = cards::bump_version(tx, 0)?;
            cards::patch_uses_left(tx, 1, &[("P1", "WASH", 4)], v)
        })
        .unwrap();
        assert_eq!(delta("T-1", 1), 4, "the new version, not the cached one");
        assert_eq!(delta("T-2", 2), 4);
    }
}
