//! Receiving an entitlement bundle as a terminal does (`docs/entitlement-format.md`), pure: the
//! decoded body is cut into frames ([`FrameSplitter`]), the frames are checked, and nothing reaches the
//! terminal's card pool before the manifest verified and the bundle fits what is installed (a delta on
//! exactly the installed version, never an older or equal version) — [`BundleIntake::finish`].
//!
//! **Two checks.** A full snapshot, and the deltas the caller samples, go through the contract's
//! [`BundleVerifier`], everything a terminal checks: each entry's MAC and card body, strictly
//! ascending references, the manifest's MAC, count, digest, terminal, merchant, kind and version. The
//! other deltas get the light check (`LightCheck`): frames well formed, references ascending, the
//! manifest's MAC and fields and the count — not each entry's MAC and body nor the digest, which cost
//! about 2.4 µs an entry against 0.14 µs (a 700-card delta: 1.7 ms against 0.1 ms). The simulator has
//! to stay far below the server's own cost per pass to measure it; the sample keeps a server that
//! signs entries wrongly from going unnoticed. (The contract's verifier has no lighter mode; the light
//! check reads frames with the contract's own codec.)
//!
//! **What is kept** is the pool's sample ([`crate::pool`]): a full snapshot is reservoir-sampled into a
//! fresh pool while it streams; a delta stages the updates and removals of pooled cards and the
//! reservoir's picks among the new ones.
//!
//! (The daemon's own frame reader lives inside `redeemd::store::install::BundleInstall`, bound to its
//! SQLite staging; the few lines that cut frames are therefore here.)

use std::collections::{HashMap, HashSet};

use rand::Rng;
use redeemd_contract::codec::Reader;
use redeemd_contract::snapshot::{
    BundleError, BundleVerifier, MAGIC, MAX_FRAME, Preamble, Verified, check_magic,
};
use redeemd_contract::{BundleKind, Card, CardRef, Entry, EntryOp, MacKey, Manifest};

use crate::pool::{Pool, PoolCard, reservoir_slot};

/// Cuts a byte stream into bundle frames: the 8-byte magic, then `u32` big-endian length ‖ frame.
#[derive(Debug, Default)]
pub struct FrameSplitter {
    buf: Vec<u8>,
    magic_checked: bool,
    frames: u64,
}

impl FrameSplitter {
    /// Feeds bytes; calls `on_frame` for every complete frame, in order.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut on_frame: impl FnMut(&[u8]) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        if !self.magic_checked {
            if self.buf.len() < MAGIC.len() {
                return Ok(());
            }
            check_magic(&self.buf[..MAGIC.len()])?;
            self.magic_checked = true;
            pos = MAGIC.len();
        }
        while let Some(len) = self.buf.get(pos..pos + 4) {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len > MAX_FRAME {
                return Err(BundleError::Frame {
                    index: self.frames,
                    reason: format!("frame of {len} bytes exceeds {MAX_FRAME}"),
                });
            }
            let Some(frame) = self.buf.get(pos + 4..pos + 4 + len) else {
                break;
            };
            on_frame(frame)?;
            self.frames += 1;
            pos += 4 + len;
        }
        self.buf.drain(..pos);
        Ok(())
    }

    /// The body ended: bytes left over are a frame cut short.
    pub fn finish(&self) -> Result<(), BundleError> {
        if !self.magic_checked || !self.buf.is_empty() {
            return Err(BundleError::Frame {
                index: self.frames,
                reason: "body ends inside a frame (cut short)".into(),
            });
        }
        Ok(())
    }
}

/// What a verified bundle changes in the pool, kept until its manifest verified.
#[derive(Debug)]
enum Staging {
    /// A full snapshot: a fresh pool, reservoir-sampled while the entries stream.
    Full(Pool),
    /// A delta: new versions and removals of pooled cards, and the reservoir's picks among new cards.
    Delta {
        pooled: HashSet<CardRef>,
        pool_len: usize,
        capacity: usize,
        seen: u64,
        updates: Vec<Entry>,
        removals: Vec<CardRef>,
        picks: HashMap<usize, Entry>,
        new_slots: usize,
    },
}

/// How a bundle's frames are checked.
enum Check {
    /// Before the preamble: whether a delta's entries are verified one by one.
    Undecided {
        verify_deltas: bool,
        cache_key: MacKey,
        terminal_id: String,
    },
    /// Everything a terminal checks, by the contract's verifier.
    Entries(Box<BundleVerifier>),
    /// The frames' structure, order and count, and the signed manifest; not each entry's MAC and body.
    Manifest(LightCheck),
}

/// A bundle being received for one terminal.
pub struct BundleIntake {
    splitter: FrameSplitter,
    check: Check,
    preamble: Option<Preamble>,
    manifest: Option<Manifest>,
    staging: Option<Staging>,
    capacity: usize,
    entries: u64,
}

/// A bundle the terminal refused; its cache and pool are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bundle refused, cache unchanged: {0}")]
pub struct BundleRefused(pub String);

impl From<BundleError> for BundleRefused {
    fn from(e: BundleError) -> Self {
        BundleRefused(e.to_string())
    }
}

/// What an installed bundle was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub kind: BundleKind,
    pub version: u64,
    pub entries: u64,
    /// Every entry's MAC and body were verified (else the manifest and the frames only).
    pub entries_verified: bool,
}

impl BundleIntake {
    /// Starts receiving a bundle for terminal `terminal_id` whose pool is `pool`. A full snapshot is
    /// always verified entry by entry; a delta only when `verify_deltas` (the others are checked by
    /// their structure and signed manifest: see the module docs).
    pub fn new(
        cache_key: &MacKey,
        terminal_id: &str,
        pool: &Pool,
        verify_deltas: bool,
    ) -> BundleIntake {
        BundleIntake {
            splitter: FrameSplitter::default(),
            check: Check::Undecided {
                verify_deltas,
                cache_key: cache_key.clone(),
                terminal_id: terminal_id.to_owned(),
            },
            preamble: None,
            manifest: None,
            staging: Some(Staging::Delta {
                pooled: pool.iter().map(|c| c.card_ref).collect(),
                pool_len: pool.len(),
                capacity: pool.capacity(),
                seen: pool.seen(),
                updates: Vec::new(),
                removals: Vec::new(),
                picks: HashMap::new(),
                new_slots: 0,
            }),
            capacity: pool.capacity(),
            entries: 0,
        }
    }

    /// Feeds decoded body bytes.
    pub fn feed(&mut self, bytes: &[u8], rng: &mut impl Rng) -> Result<(), BundleRefused> {
        let BundleIntake {
            splitter,
            check,
            preamble,
            manifest,
            staging,
            capacity,
            entries,
        } = self;
        splitter.feed(bytes, |frame| {
            if let Check::Undecided {
                verify_deltas,
                cache_key,
                terminal_id,
            } = check
            {
                // The preamble's kind decides (a hint: the manifest must agree, or the bundle fails).
                let full = frame.get(1) == Some(&(BundleKind::Full as u8));
                *check = if full || *verify_deltas {
                    Check::Entries(Box::new(BundleVerifier::new(cache_key, terminal_id)))
                } else {
                    Check::Manifest(LightCheck::new(cache_key, terminal_id))
                };
            }
            let verified = match check {
                Check::Entries(v) => v.frame(frame)?,
                Check::Manifest(l) => l.frame(frame)?,
                Check::Undecided { .. } => unreachable_frame()?,
            };
            match verified {
                Verified::Preamble(p) => {
                    if p.kind == BundleKind::Full {
                        *staging = Some(Staging::Full(Pool::new(*capacity)));
                    }
                    *preamble = Some(p);
                }
                Verified::Entry(e) => {
                    *entries += 1;
                    let version = preamble.as_ref().map_or(0, |p| p.version);
                    stage(staging.as_mut(), e, version, rng);
                }
                Verified::Manifest(m) => *manifest = Some(m),
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The body ended: checks the bundle is complete and fits the installed version, then applies it
    /// to `pool`. On an error nothing changed.
    pub fn finish(
        self,
        installed_version: u64,
        pool: &mut Pool,
    ) -> Result<Installed, BundleRefused> {
        self.splitter.finish()?;
        let Some(m) = self.manifest else {
            return Err(BundleRefused("no manifest at the end of the body".into()));
        };
        if m.kind == BundleKind::Delta && m.prev_version != installed_version {
            return Err(BundleRefused(format!(
                "delta from version {} but version {installed_version} is installed",
                m.prev_version
            )));
        }
        if m.version <= installed_version {
            return Err(BundleRefused(format!(
                "version {} is not above the installed {installed_version} (rollback)",
                m.version
            )));
        }
        let Some(p) = self.preamble else {
            return Err(BundleRefused("no preamble".into()));
        };
        let decoded = |e: &Entry| {
            Card::decode(&e.body)
                .map_err(|err| BundleRefused(format!("card {}: body: {err}", e.card_ref.to_hex())))
        };
        match self.staging {
            Some(Staging::Full(mut fresh)) => {
                // The snapshot replaces the cache; uses made here since stay with their cards.
                for old in pool.iter() {
                    if let Some(c) = fresh.get_mut(&old.card_ref) {
                        let through = c.card.usage_through_seq;
                        c.local_uses = old
                            .local_uses
                            .iter()
                            .filter(|(seq, ..)| *seq > through)
                            .cloned()
                            .collect();
                    }
                }
                *pool = fresh;
            }
            Some(Staging::Delta {
                seen,
                updates,
                removals,
                picks,
                ..
            }) => {
                // Decode everything first: a body that does not decode leaves the pool untouched.
                let updates = updates
                    .iter()
                    .map(|e| Ok((e.card_ref, decoded(e)?)))
                    .collect::<Result<Vec<_>, BundleRefused>>()?;
                let mut picks = picks
                    .into_iter()
                    .map(|(slot, e)| Ok((slot, PoolCard::new(e.card_ref, p.version, decoded(&e)?))))
                    .collect::<Result<Vec<_>, BundleRefused>>()?;
                for (card_ref, card) in updates {
                    if let Some(c) = pool.get_mut(&card_ref) {
                        c.replace(p.version, card);
                    }
                }
                for r in &removals {
                    pool.remove(r);
                }
                // New slots in order, so that each lands at the end of the pool as it grows.
                picks.sort_by_key(|(slot, _)| *slot);
                for (slot, card) in picks {
                    pool.put(slot, card);
                }
                pool.set_seen(seen);
            }
            None => return Err(BundleRefused("no preamble".into())),
        }
        Ok(Installed {
            kind: m.kind,
            version: m.version,
            entries: self.entries,
            entries_verified: matches!(self.check, Check::Entries(_)),
        })
    }
}

fn unreachable_frame() -> Result<Verified, BundleError> {
    Err(BundleError::Frame {
        index: 0,
        reason: "no check chosen".into(),
    })
}

/// The light check of a bundle whose entries are not verified one by one: frames well formed (the
/// contract's codec), entries in strictly ascending card references, no removal in a full snapshot,
/// and the manifest's MAC, kind, merchant, version, terminal and count. What it leaves out — each
/// entry's MAC, its card body, the digest over the entries — is what costs per entry; the sampled
/// bundles ([`crate::pass::PassConfig::verify_ratio`]) get all of it.
struct LightCheck {
    cache_key: MacKey,
    terminal_id: String,
    preamble: Option<Preamble>,
    last: Option<CardRef>,
    count: u64,
    frames: u64,
}

impl LightCheck {
    fn new(cache_key: &MacKey, terminal_id: &str) -> LightCheck {
        LightCheck {
            cache_key: cache_key.clone(),
            terminal_id: terminal_id.to_owned(),
            preamble: None,
            last: None,
            count: 0,
            frames: 0,
        }
    }

    fn frame(&mut self, frame: &[u8]) -> Result<Verified, BundleError> {
        let index = self.frames;
        self.frames += 1;
        let bad = |reason: String| BundleError::Frame { index, reason };
        let mut r = Reader::new(frame);
        let tag = r.u8().map_err(|e| bad(e.to_string()))?;
        match (tag, &self.preamble) {
            (1, None) => {
                let kind = match r.u8().map_err(BundleError::Preamble)? {
                    1 => BundleKind::Full,
                    2 => BundleKind::Delta,
                    k => return Err(bad(format!("bundle kind {k}"))),
                };
                let p = Preamble {
                    kind,
                    merchant_id: r.string("merchant id").map_err(BundleError::Preamble)?,
                    version: r.u64().map_err(BundleError::Preamble)?,
                };
                r.finish().map_err(BundleError::Preamble)?;
                self.preamble = Some(p.clone());
                Ok(Verified::Preamble(p))
            }
            (2, Some(p)) => {
                let entry = (|| {
                    let at = r.position();
                    let op = match r.u8()? {
                        1 => EntryOp::Upsert,
                        2 => EntryOp::Remove,
                        tag => {
                            return Err(redeemd_contract::DecodeError::BadTag {
                                field: "entry op",
                                tag,
                                at,
                            });
                        }
                    };
                    let card_ref = CardRef(r.array()?);
                    let body = r.bytes()?.to_vec();
                    let mac = r.array()?;
                    r.finish()?;
                    Ok((op, card_ref, body, mac))
                })();
                let (op, card_ref, body, mac) = entry.map_err(|e| bad(format!("entry: {e}")))?;
                if op == EntryOp::Remove && (!body.is_empty() || p.kind == BundleKind::Full) {
                    return Err(bad(format!(
                        "entry {}: a removal with a body or in a full snapshot",
                        self.count
                    )));
                }
                if self.last.is_some_and(|l| l >= card_ref) {
                    return Err(bad(format!(
                        "entry {}: card references not strictly ascending",
                        self.count
                    )));
                }
                self.last = Some(card_ref);
                self.count += 1;
                Ok(Verified::Entry(Entry {
                    card_ref,
                    op,
                    body,
                    mac,
                    usage_through_seq: 0,
                }))
            }
            (3, Some(p)) => {
                let m = Manifest::verify_signed(&self.cache_key, &frame[1..])?;
                if m.kind != p.kind || m.merchant_id != p.merchant_id || m.version != p.version {
                    return Err(bad("the manifest does not match the preamble".into()));
                }
                if m.terminal_id != self.terminal_id {
                    return Err(bad(format!(
                        "the manifest is for terminal {:?}",
                        m.terminal_id
                    )));
                }
                if m.entry_count != self.count {
                    return Err(bad(format!(
                        "the manifest counts {} entries, the bundle holds {}",
                        m.entry_count, self.count
                    )));
                }
                Ok(Verified::Manifest(m))
            }
            _ => Err(bad(format!("frame tag {tag} out of place"))),
        }
    }
}

/// Stages one verified entry.
fn stage(staging: Option<&mut Staging>, e: Entry, version: u64, rng: &mut impl Rng) {
    match staging {
        Some(Staging::Full(fresh)) => {
            if e.op != EntryOp::Upsert {
                return;
            }
            if let Some(slot) = fresh.offer(rng) {
                // Verified already (its MAC covers the body): a body the verifier decoded decodes.
                if let Ok(card) = Card::decode(&e.body) {
                    fresh.put(slot, PoolCard::new(e.card_ref, version, card));
                }
            }
        }
        Some(Staging::Delta {
            pooled,
            pool_len,
            capacity,
            seen,
            updates,
            removals,
            picks,
            new_slots,
        }) => match (e.op, pooled.contains(&e.card_ref)) {
            (EntryOp::Upsert, true) => updates.push(e),
            (EntryOp::Remove, true) => removals.push(e.card_ref),
            (EntryOp::Remove, false) => {}
            (EntryOp::Upsert, false) => {
                *seen += 1;
                if let Some(slot) = reservoir_slot(*pool_len + *new_slots, *capacity, *seen, rng) {
                    if slot >= *pool_len && !picks.contains_key(&slot) {
                        *new_slots += 1;
                    }
                    picks.insert(slot, e);
                }
            }
        },
        None => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use redeemd_contract::snapshot::BundleSigner;
    use redeemd_contract::{MacKey, Purpose, TerminalSecret};

    use crate::pool::tests::card;

    fn key() -> MacKey {
        TerminalSecret::from_bytes(&[3; 32])
            .unwrap()
            .derive(Purpose::CacheVerify, "T-1")
    }

    /// A signed bundle: `cards` upserts (uses left = the card's first byte) and `removals`.
    pub(crate) fn bundle(
        kind: BundleKind,
        version: u64,
        prev: u64,
        cards: &[u8],
        removals: &[u8],
    ) -> Vec<u8> {
        let mut all: Vec<(u8, bool)> = cards.iter().map(|c| (*c, true)).collect();
        all.extend(removals.iter().map(|c| (*c, false)));
        all.sort();
        let mut s = BundleSigner::new(&key(), kind, "M-1", version);
        let mut out = s.header();
        for (c, upsert) in all {
            let body = card(u32::from(c), 0);
            out.extend(s.entry(&CardRef([c; 32]), upsert.then_some(&body)).unwrap());
        }
        out.extend(s.finish("T-1", &[], prev, 1, 2).1);
        out
    }

    fn install(
        bytes: &[u8],
        installed: u64,
        pool: &mut Pool,
        chunk: usize,
    ) -> Result<Installed, BundleRefused> {
        install_checked(bytes, installed, pool, chunk, true)
    }

    fn install_checked(
        bytes: &[u8],
        installed: u64,
        pool: &mut Pool,
        chunk: usize,
        verify: bool,
    ) -> Result<Installed, BundleRefused> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut intake = BundleIntake::new(&key(), "T-1", pool, verify);
        for c in bytes.chunks(chunk) {
            intake.feed(c, &mut rng)?;
        }
        intake.finish(installed, pool)
    }

    #[test]
    fn frames_cut_anywhere_verify_and_fill_the_pool() {
        let b = bundle(BundleKind::Full, 5, 0, &[1, 2, 3], &[]);
        for chunk in [1, 7, 64, b.len()] {
            let mut pool = Pool::new(8);
            let i = install(&b, 0, &mut pool, chunk).unwrap();
            assert_eq!((i.kind, i.version, i.entries), (BundleKind::Full, 5, 3));
            assert_eq!(pool.len(), 3);
            assert!(pool.iter().all(|c| c.entry_version == 5));
        }
    }

    #[test]
    fn a_delta_updates_removes_and_adds_only_after_its_manifest() {
        let mut pool = Pool::new(8);
        install(
            &bundle(BundleKind::Full, 5, 0, &[1, 2, 3], &[]),
            0,
            &mut pool,
            50,
        )
        .unwrap();
        pool.get_mut(&CardRef([2; 32])).unwrap().local_uses.push((
            1,
            "P1".into(),
            "WASH".into(),
            1,
        ));
        let delta = bundle(BundleKind::Delta, 9, 5, &[2, 4], &[3]);
        // Cut short: nothing changes.
        let cut = &delta[..delta.len() - 10];
        assert!(install(cut, 5, &mut pool, 50).is_err());
        assert_eq!(pool.len(), 3);
        assert!(pool.contains(&CardRef([3; 32])));
        let i = install(&delta, 5, &mut pool, 50).unwrap();
        assert_eq!((i.kind, i.version, i.entries), (BundleKind::Delta, 9, 3));
        assert!(!pool.contains(&CardRef([3; 32])));
        assert!(pool.contains(&CardRef([4; 32])));
        let two = pool.get_mut(&CardRef([2; 32])).unwrap();
        assert_eq!(two.entry_version, 9);
        // The new entry counts through seq 0: the local use stays subtracted.
        assert_eq!(two.uses_left("P1", "WASH"), 1);
    }

    #[test]
    fn wrong_base_rollback_and_tampering_are_refused() {
        let mut pool = Pool::new(8);
        install(&bundle(BundleKind::Full, 5, 0, &[1], &[]), 0, &mut pool, 50).unwrap();
        let e = install(
            &bundle(BundleKind::Delta, 9, 4, &[2], &[]),
            5,
            &mut pool,
            50,
        );
        assert!(e.unwrap_err().0.contains("delta from version 4"));
        let e = install(&bundle(BundleKind::Full, 5, 0, &[2], &[]), 5, &mut pool, 50);
        assert!(e.unwrap_err().0.contains("rollback"));
        let mut bad = bundle(BundleKind::Full, 6, 5, &[2], &[]);
        let at = bad.len() / 2;
        bad[at] ^= 1;
        assert!(install(&bad, 5, &mut pool, 50).is_err());
        assert!(install(b"NOTABNDL", 5, &mut pool, 50).is_err());
        assert_eq!(pool.len(), 1);
        assert!(pool.contains(&CardRef([1; 32])));
    }

    #[test]
    fn a_delta_not_sampled_is_checked_by_its_frames_and_manifest() {
        let mut pool = Pool::new(8);
        install(
            &bundle(BundleKind::Full, 5, 0, &[1, 2], &[]),
            0,
            &mut pool,
            50,
        )
        .unwrap();
        let delta = bundle(BundleKind::Delta, 9, 5, &[2, 4], &[1]);
        // A flipped bit in an entry's MAC: the entry-by-entry check refuses the bundle; the light
        // check does not look at entry MACs (that is what sampling saves).
        let frame_len = |b: &[u8], at: usize| {
            u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
        };
        let entry = 8 + 4 + frame_len(&delta, 8);
        let mut forged = delta.clone();
        forged[entry + 4 + frame_len(&delta, entry) - 1] ^= 1;
        assert!(install_checked(&forged, 5, &mut pool.clone(), 64, true).is_err());
        assert!(install_checked(&forged, 5, &mut pool.clone(), 64, false).is_ok());
        // Whatever is cut, reordered or re-signed is refused by both.
        let cut = &delta[..delta.len() - 1];
        assert!(install_checked(cut, 5, &mut pool.clone(), 64, false).is_err());
        let mut bad_manifest = delta.clone();
        let last = bad_manifest.len() - 1;
        bad_manifest[last] ^= 1;
        assert!(install_checked(&bad_manifest, 5, &mut pool.clone(), 64, false).is_err());
        let other = bundle(BundleKind::Delta, 9, 4, &[2, 4], &[1]);
        assert!(install_checked(&other, 5, &mut pool.clone(), 64, false).is_err());
        let i = install_checked(&delta, 5, &mut pool, 7, false).unwrap();
        assert_eq!((i.version, i.entries, i.entries_verified), (9, 3, false));
        assert!(pool.contains(&CardRef([4; 32])) && !pool.contains(&CardRef([1; 32])));
        // A full snapshot is always verified entry by entry.
        let full = bundle(BundleKind::Full, 10, 9, &[7], &[]);
        let i = install_checked(&full, 9, &mut pool, 64, false).unwrap();
        assert!(i.entries_verified);
    }

    #[test]
    fn a_delta_beyond_the_capacity_keeps_the_pool_bounded() {
        let mut pool = Pool::new(4);
        install(
            &bundle(BundleKind::Full, 5, 0, &[1, 2], &[]),
            0,
            &mut pool,
            50,
        )
        .unwrap();
        let many: Vec<u8> = (10..60).collect();
        install(
            &bundle(BundleKind::Delta, 6, 5, &many, &[]),
            5,
            &mut pool,
            50,
        )
        .unwrap();
        assert_eq!(pool.len(), 4);
    }
}
