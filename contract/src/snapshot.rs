//! Signed snapshots and deltas ("bundles"): the signing side and the streaming verifying side.
//!
//! A bundle is a file of frames, each `u32 length ‖ frame` (big-endian), after the 8-byte magic
//! [`MAGIC`]:
//!
//! ```text
//! preamble  : 0x01 ‖ kind u8 ‖ merchant str ‖ version u64          (unsigned hint, re-checked against the manifest)
//! entry × N : 0x02 ‖ op u8 ‖ card ref [32] ‖ body bytes ‖ mac [32] (strictly ascending card refs)
//! manifest  : 0x03 ‖ manifest body bytes ‖ mac [32]                 (last frame)
//! ```
//!
//! `entry mac    = HMAC(cache key, "redeemd/entry/v2" ‖ merchant str ‖ version u64 ‖ card ref ‖ op u8 ‖ body bytes)`
//! `manifest mac = HMAC(cache key, "redeemd/manifest/v1" ‖ manifest body)`
//! `digest       = SHA-256 over every entry frame (without its length prefix), in order`
//!
//! The manifest comes last so that both sides can stream a million entries in constant memory; the
//! verifier checks each entry's MAC as it arrives and the count and digest at the end. Everything is
//! specified in `docs/entitlement-format.md`.

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::{MacKey, TAG_LEN, Tag};
use crate::model::{Card, CardRef};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"RDMBNDL2";
/// Largest frame a verifier accepts (a card with hundreds of packages stays far below).
pub const MAX_FRAME: usize = 1 << 20;

const FRAME_PREAMBLE: u8 = 1;
const FRAME_ENTRY: u8 = 2;
const FRAME_MANIFEST: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// Replaces the whole cache.
    Full = 1,
    /// Changes and removals since `prev_version`.
    Delta = 2,
}

impl BundleKind {
    fn from_tag(tag: u8, at: usize) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::Full),
            2 => Ok(Self::Delta),
            _ => Err(DecodeError::BadTag {
                field: "bundle kind",
                tag,
                at,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOp {
    Upsert = 1,
    Remove = 2,
}

/// The signed manifest of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub kind: BundleKind,
    pub terminal_id: String,
    pub merchant_id: String,
    /// The merchant's categories, for packages scoped by category.
    pub merchant_categories: Vec<String>,
    pub version: u64,
    /// Full: the version this snapshot supersedes (informational). Delta: the version it applies to.
    pub prev_version: u64,
    pub entry_count: u64,
    pub digest: [u8; 32],
    pub issued_at_ms: i64,
    /// After this instant the cache must not be used (fail closed).
    pub expires_at_ms: i64,
}

impl Manifest {
    pub fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.u8(self.kind as u8)
            .str(&self.terminal_id)
            .str(&self.merchant_id)
            .count(self.merchant_categories.len());
        for c in &self.merchant_categories {
            w.str(c);
        }
        w.u64(self.version)
            .u64(self.prev_version)
            .u64(self.entry_count)
            .fixed(&self.digest)
            .i64(self.issued_at_ms)
            .i64(self.expires_at_ms);
        w.into_bytes()
    }

    pub fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let at = r.position();
        let kind = BundleKind::from_tag(r.u8()?, at)?;
        let terminal_id = r.string("terminal id")?;
        let merchant_id = r.string("merchant id")?;
        let n = r.count(4)?;
        let mut merchant_categories = Vec::with_capacity(n);
        for _ in 0..n {
            merchant_categories.push(r.string("merchant category")?);
        }
        let m = Manifest {
            kind,
            terminal_id,
            merchant_id,
            merchant_categories,
            version: r.u64()?,
            prev_version: r.u64()?,
            entry_count: r.u64()?,
            digest: r.array()?,
            issued_at_ms: r.i64()?,
            expires_at_ms: r.i64()?,
        };
        r.finish()?;
        Ok(m)
    }

    pub fn mac(&self, cache_key: &MacKey) -> Tag {
        cache_key.mac(&[b"redeemd/manifest/v1", &self.encode_body()])
    }

    /// The signed form stored by the terminal: body ‖ mac.
    pub fn signed_bytes(&self, cache_key: &MacKey) -> Vec<u8> {
        let mut out = self.encode_body();
        out.extend_from_slice(&self.mac(cache_key));
        out
    }

    /// Verifies and decodes a signed manifest (body ‖ mac).
    pub fn verify_signed(cache_key: &MacKey, signed: &[u8]) -> Result<Self, BundleError> {
        if signed.len() < TAG_LEN {
            return Err(BundleError::Manifest(ManifestProblem::Decode(
                DecodeError::Truncated {
                    at: signed.len(),
                    needed: TAG_LEN - signed.len(),
                },
            )));
        }
        let (body, mac) = signed.split_at(signed.len() - TAG_LEN);
        if !cache_key.verify(&[b"redeemd/manifest/v1", body], mac) {
            return Err(BundleError::Manifest(ManifestProblem::BadMac));
        }
        Manifest::decode_body(body).map_err(|e| BundleError::Manifest(ManifestProblem::Decode(e)))
    }
}

/// The MAC input after the domain tag: merchant, version, card, op and body length (the body follows).
fn entry_header(
    merchant_id: &str,
    version: u64,
    card: &CardRef,
    op: EntryOp,
    body: &[u8],
) -> Writer {
    let mut head = Writer::with_capacity(64);
    head.str(merchant_id)
        .u64(version)
        .fixed(&card.0)
        .u8(op as u8)
        .u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    head
}

/// MAC of one cache entry, as stored by the terminal and re-checked on every lookup.
pub fn entry_mac(
    cache_key: &MacKey,
    merchant_id: &str,
    version: u64,
    card: &CardRef,
    op: EntryOp,
    body: &[u8],
) -> Tag {
    let head = entry_header(merchant_id, version, card, op, body);
    cache_key.mac(&[b"redeemd/entry/v2", head.as_bytes(), body])
}

/// Constant-time check of a stored entry's MAC.
pub fn verify_entry_mac(
    cache_key: &MacKey,
    merchant_id: &str,
    version: u64,
    card: &CardRef,
    op: EntryOp,
    body: &[u8],
    mac: &[u8],
) -> bool {
    let head = entry_header(merchant_id, version, card, op, body);
    cache_key.verify(&[b"redeemd/entry/v2", head.as_bytes(), body], mac)
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestProblem {
    #[error("MAC mismatch")]
    BadMac,
    #[error("undecodable: {0}")]
    Decode(DecodeError),
    #[error("{field} is {found:?} but the preamble said {expected:?}")]
    PreambleMismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("is for terminal {found:?}, this is {expected:?}")]
    WrongTerminal { expected: String, found: String },
    #[error("entry count is {declared} but the bundle holds {actual}")]
    CountMismatch { declared: u64, actual: u64 },
    #[error("digest over the entries does not match")]
    DigestMismatch,
    #[error("expires ({expires_at_ms}) before it was issued ({issued_at_ms})")]
    BadValidity {
        issued_at_ms: i64,
        expires_at_ms: i64,
    },
}

/// Why a bundle was refused. Entry errors name the entry by position (0-based) and card reference.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    #[error("not a bundle (bad magic)")]
    BadMagic,
    /// A bundle of format 1, whose card references were HMACs of the number: this release's are
    /// AES-SIV encryptions (format 2), and the two never mix in one cache.
    #[error(
        "bundle format 1 (HMAC card references): this terminal reads format 2 only; the platform needs the same release"
    )]
    FormatOne,
    #[error("frame {index}: {reason}")]
    Frame { index: u64, reason: String },
    #[error("preamble: {0}")]
    Preamble(DecodeError),
    #[error("entry {index} (card {card}): {reason}")]
    Entry {
        index: u64,
        card: String,
        reason: String,
    },
    #[error("manifest: {0}")]
    Manifest(ManifestProblem),
}

/// The unsigned first frame: what the verifier needs to check entry MACs while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preamble {
    pub kind: BundleKind,
    pub merchant_id: String,
    pub version: u64,
}

/// One verified entry, ready to store: the stored row is (card ref, version, op, body, mac).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub card_ref: CardRef,
    pub op: EntryOp,
    /// Canonical card body as signed (empty for a removal).
    pub body: Vec<u8>,
    pub mac: Tag,
    /// The card's [`Card::usage_through_seq`] (0 for a removal): how far the platform had counted
    /// this terminal's journal when it signed the entry.
    pub usage_through_seq: u64,
}

/// Signing side: produces the frames of one bundle, in order. Used by tests, benches and the clearing
/// server. Feed entries in strictly ascending card-reference order.
pub struct BundleSigner {
    key: MacKey,
    preamble: Preamble,
    hasher: Sha256,
    count: u64,
    last: Option<CardRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignError {
    #[error(
        "entries must be in strictly ascending card-reference order ({0:?} came after a larger or equal one)"
    )]
    OutOfOrder(CardRef),
}

impl BundleSigner {
    pub fn new(cache_key: &MacKey, kind: BundleKind, merchant_id: &str, version: u64) -> Self {
        Self {
            key: cache_key.clone(),
            preamble: Preamble {
                kind,
                merchant_id: merchant_id.to_owned(),
                version,
            },
            hasher: Sha256::new(),
            count: 0,
            last: None,
        }
    }

    /// The magic and the framed preamble: the first bytes of the file.
    pub fn header(&self) -> Vec<u8> {
        let mut frame = Writer::new();
        frame
            .u8(FRAME_PREAMBLE)
            .u8(self.preamble.kind as u8)
            .str(&self.preamble.merchant_id)
            .u64(self.preamble.version);
        let mut out = MAGIC.to_vec();
        push_frame(&mut out, frame.as_bytes());
        out
    }

    /// A framed entry: `Some(card)` to add or replace, `None` to remove.
    pub fn entry(&mut self, card_ref: &CardRef, card: Option<&Card>) -> Result<Vec<u8>, SignError> {
        self.entry_encoded(card_ref, card.map(Card::encode).as_deref())
    }

    /// [`BundleSigner::entry`] of a card already encoded (`Some(body)`, e.g. from a
    /// [`crate::model::BodyTemplate`]), or a removal (`None`).
    pub fn entry_encoded(
        &mut self,
        card_ref: &CardRef,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, SignError> {
        if self.last.is_some_and(|l| l >= *card_ref) {
            return Err(SignError::OutOfOrder(*card_ref));
        }
        self.last = Some(*card_ref);
        let (op, body) = match body {
            Some(b) => (EntryOp::Upsert, b),
            None => (EntryOp::Remove, &[][..]),
        };
        let mac = entry_mac(
            &self.key,
            &self.preamble.merchant_id,
            self.preamble.version,
            card_ref,
            op,
            body,
        );
        let mut frame = Writer::with_capacity(body.len() + 80);
        frame
            .u8(FRAME_ENTRY)
            .u8(op as u8)
            .fixed(&card_ref.0)
            .bytes(body)
            .fixed(&mac);
        self.hasher.update(frame.as_bytes());
        self.count += 1;
        let mut out = Vec::with_capacity(frame.as_bytes().len() + 4);
        push_frame(&mut out, frame.as_bytes());
        Ok(out)
    }

    /// The framed, signed manifest: the last bytes of the file. Returns the manifest too.
    pub fn finish(
        self,
        terminal_id: &str,
        merchant_categories: &[String],
        prev_version: u64,
        issued_at_ms: i64,
        expires_at_ms: i64,
    ) -> (Manifest, Vec<u8>) {
        let manifest = Manifest {
            kind: self.preamble.kind,
            terminal_id: terminal_id.to_owned(),
            merchant_id: self.preamble.merchant_id,
            merchant_categories: merchant_categories.to_vec(),
            version: self.preamble.version,
            prev_version,
            entry_count: self.count,
            digest: self.hasher.finalize().into(),
            issued_at_ms,
            expires_at_ms,
        };
        let mut frame = vec![FRAME_MANIFEST];
        frame.extend_from_slice(&manifest.signed_bytes(&self.key));
        let mut out = Vec::new();
        push_frame(&mut out, &frame);
        (manifest, out)
    }
}

fn push_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(frame);
}

/// What the verifier returns for each frame it is fed.
#[derive(Debug)]
pub enum Verified {
    Preamble(Preamble),
    Entry(Entry),
    /// The bundle is complete and every check passed.
    Manifest(Manifest),
}

/// Verifying side, sans-IO: the caller reads the magic with [`check_magic`], then each frame (`u32` length,
/// at most [`MAX_FRAME`], then that many bytes) and passes it to [`BundleVerifier::frame`]. An entry is
/// returned only after its MAC verified; the bundle is complete only when the manifest frame verified.
pub struct BundleVerifier {
    key: MacKey,
    terminal_id: String,
    preamble: Option<Preamble>,
    hasher: Sha256,
    count: u64,
    last: Option<CardRef>,
    frames: u64,
    done: bool,
}

pub fn check_magic(bytes: &[u8]) -> Result<(), BundleError> {
    if bytes == MAGIC {
        Ok(())
    } else if bytes == b"RDMBNDL1" {
        Err(BundleError::FormatOne)
    } else {
        Err(BundleError::BadMagic)
    }
}

impl BundleVerifier {
    pub fn new(cache_key: &MacKey, terminal_id: &str) -> Self {
        Self {
            key: cache_key.clone(),
            terminal_id: terminal_id.to_owned(),
            preamble: None,
            hasher: Sha256::new(),
            count: 0,
            last: None,
            frames: 0,
            done: false,
        }
    }

    pub fn frame(&mut self, frame: &[u8]) -> Result<Verified, BundleError> {
        let index = self.frames;
        self.frames += 1;
        let bad = |reason: &str| BundleError::Frame {
            index,
            reason: reason.to_owned(),
        };
        if self.done {
            return Err(bad("frame after the manifest"));
        }
        if frame.len() > MAX_FRAME {
            return Err(bad("frame too large"));
        }
        let Some((&tag, rest)) = frame.split_first() else {
            return Err(bad("empty frame"));
        };
        match (tag, &self.preamble) {
            (FRAME_PREAMBLE, None) => {
                let mut r = Reader::new(rest);
                let at = r.position();
                let kind = BundleKind::from_tag(r.u8().map_err(BundleError::Preamble)?, at)
                    .map_err(BundleError::Preamble)?;
                let merchant_id = r.string("merchant id").map_err(BundleError::Preamble)?;
                let version = r.u64().map_err(BundleError::Preamble)?;
                r.finish().map_err(BundleError::Preamble)?;
                let p = Preamble {
                    kind,
                    merchant_id,
                    version,
                };
                self.preamble = Some(p.clone());
                Ok(Verified::Preamble(p))
            }
            (FRAME_ENTRY, Some(p)) => {
                let entry_index = self.count;
                let entry_err = |card: &str, reason: String| BundleError::Entry {
                    index: entry_index,
                    card: card.to_owned(),
                    reason,
                };
                let mut r = Reader::new(rest);
                let decoded = (|| -> Result<_, DecodeError> {
                    let at = r.position();
                    let op = match r.u8()? {
                        1 => EntryOp::Upsert,
                        2 => EntryOp::Remove,
                        tag => {
                            return Err(DecodeError::BadTag {
                                field: "entry op",
                                tag,
                                at,
                            });
                        }
                    };
                    let card_ref = CardRef(r.array()?);
                    let body = r.bytes()?.to_vec();
                    let mac: Tag = r.array()?;
                    r.clone().finish()?;
                    Ok((op, card_ref, body, mac))
                })();
                let (op, card_ref, body, mac) =
                    decoded.map_err(|e| entry_err("?", e.to_string()))?;
                let card_hex = card_ref.to_hex();
                if !verify_entry_mac(
                    &self.key,
                    &p.merchant_id,
                    p.version,
                    &card_ref,
                    op,
                    &body,
                    &mac,
                ) {
                    return Err(entry_err(&card_hex, "MAC mismatch".into()));
                }
                if self.last.is_some_and(|l| l >= card_ref) {
                    return Err(entry_err(
                        &card_hex,
                        "not in strictly ascending card-reference order (duplicate?)".into(),
                    ));
                }
                let mut usage_through_seq = 0;
                match op {
                    EntryOp::Upsert => {
                        usage_through_seq = Card::decode(&body)
                            .map_err(|e| entry_err(&card_hex, format!("card body: {e}")))?
                            .usage_through_seq;
                    }
                    EntryOp::Remove if !body.is_empty() => {
                        return Err(entry_err(&card_hex, "removal with a body".into()));
                    }
                    EntryOp::Remove if p.kind == BundleKind::Full => {
                        return Err(entry_err(&card_hex, "removal in a full snapshot".into()));
                    }
                    EntryOp::Remove => {}
                }
                self.last = Some(card_ref);
                self.hasher.update(frame);
                self.count += 1;
                Ok(Verified::Entry(Entry {
                    card_ref,
                    op,
                    body,
                    mac,
                    usage_through_seq,
                }))
            }
            (FRAME_MANIFEST, Some(p)) => {
                let m = Manifest::verify_signed(&self.key, rest)?;
                let mismatch = |field, expected: String, found: String| {
                    BundleError::Manifest(ManifestProblem::PreambleMismatch {
                        field,
                        expected,
                        found,
                    })
                };
                if m.kind != p.kind {
                    return Err(mismatch(
                        "kind",
                        format!("{:?}", p.kind),
                        format!("{:?}", m.kind),
                    ));
                }
                if m.merchant_id != p.merchant_id {
                    return Err(mismatch(
                        "merchant",
                        p.merchant_id.clone(),
                        m.merchant_id.clone(),
                    ));
                }
                if m.version != p.version {
                    return Err(mismatch(
                        "version",
                        p.version.to_string(),
                        m.version.to_string(),
                    ));
                }
                if m.terminal_id != self.terminal_id {
                    return Err(BundleError::Manifest(ManifestProblem::WrongTerminal {
                        expected: self.terminal_id.clone(),
                        found: m.terminal_id.clone(),
                    }));
                }
                if m.entry_count != self.count {
                    return Err(BundleError::Manifest(ManifestProblem::CountMismatch {
                        declared: m.entry_count,
                        actual: self.count,
                    }));
                }
                let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                if digest != m.digest {
                    return Err(BundleError::Manifest(ManifestProblem::DigestMismatch));
                }
                if m.expires_at_ms < m.issued_at_ms {
                    return Err(BundleError::Manifest(ManifestProblem::BadValidity {
                        issued_at_ms: m.issued_at_ms,
                        expires_at_ms: m.expires_at_ms,
                    }));
                }
                self.done = true;
                Ok(Verified::Manifest(m))
            }
            (FRAME_PREAMBLE, Some(_)) => Err(bad("second preamble")),
            (FRAME_ENTRY | FRAME_MANIFEST, None) => Err(bad("missing preamble")),
            _ => Err(bad("unknown frame tag")),
        }
    }

    /// True once the manifest verified.
    pub fn is_complete(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::TerminalSecret;
    use crate::model::tests::sample_card;

    fn key() -> MacKey {
        TerminalSecret::from_bytes(&[3; 32])
            .unwrap()
            .derive(crate::keys::Purpose::CacheVerify, "T-1")
    }

    /// Builds a bundle and returns its frames (without magic/length prefixes).
    fn bundle(kind: BundleKind, n: u8) -> Vec<Vec<u8>> {
        let mut s = BundleSigner::new(&key(), kind, "M-1", 5);
        let mut framed = vec![s.header()[8..].to_vec()];
        for i in 0..n {
            let card = if i % 3 == 2 && kind == BundleKind::Delta {
                None
            } else {
                Some(sample_card())
            };
            framed.push(s.entry(&CardRef([i; 32]), card.as_ref()).unwrap());
        }
        framed.push(s.finish("T-1", &["wash".into()], 4, 100, 200).1);
        framed.into_iter().map(|f| f[4..].to_vec()).collect()
    }

    fn verify(frames: &[Vec<u8>]) -> Result<Manifest, BundleError> {
        let mut v = BundleVerifier::new(&key(), "T-1");
        let mut last = None;
        for f in frames {
            if let Verified::Manifest(m) = v.frame(f)? {
                last = Some(m);
            }
        }
        last.ok_or(BundleError::Frame {
            index: 0,
            reason: "incomplete".into(),
        })
    }

    #[test]
    fn a_signed_bundle_verifies() {
        let m = verify(&bundle(BundleKind::Delta, 5)).unwrap();
        assert_eq!((m.version, m.prev_version, m.entry_count), (5, 4, 5));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let frames = bundle(BundleKind::Full, 3);
        for f in 0..frames.len() {
            for pos in 0..frames[f].len() {
                let mut bad = frames.clone();
                bad[f][pos] ^= 0x01;
                assert!(verify(&bad).is_err(), "frame {f} byte {pos} flip accepted");
            }
        }
    }

    #[test]
    fn dropped_duplicated_or_reordered_entries_are_refused() {
        let frames = bundle(BundleKind::Full, 4);
        let mut dropped = frames.clone();
        dropped.remove(2);
        assert!(matches!(
            verify(&dropped),
            Err(BundleError::Manifest(ManifestProblem::CountMismatch { .. }))
        ));
        let mut dup = frames.clone();
        dup[2] = dup[1].clone();
        assert!(matches!(
            verify(&dup),
            Err(BundleError::Entry { index: 1, .. })
        ));
        let mut swapped = frames.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            verify(&swapped),
            Err(BundleError::Entry { index: 1, .. })
        ));
    }

    #[test]
    fn wrong_terminal_or_key_is_refused() {
        let frames = bundle(BundleKind::Full, 1);
        let mut v = BundleVerifier::new(&key(), "T-2");
        v.frame(&frames[0]).unwrap();
        v.frame(&frames[1]).unwrap();
        assert!(matches!(
            v.frame(&frames[2]),
            Err(BundleError::Manifest(ManifestProblem::WrongTerminal { .. }))
        ));
        let other = TerminalSecret::from_bytes(&[4; 32])
            .unwrap()
            .derive(crate::keys::Purpose::CacheVerify, "T-1");
        let mut v = BundleVerifier::new(&other, "T-1");
        v.frame(&frames[0]).unwrap();
        assert!(matches!(
            v.frame(&frames[1]),
            Err(BundleError::Entry { index: 0, .. })
        ));
    }

    #[test]
    fn signer_refuses_unsorted_input() {
        let mut s = BundleSigner::new(&key(), BundleKind::Full, "M", 1);
        s.entry(&CardRef([2; 32]), None).unwrap();
        assert!(s.entry(&CardRef([1; 32]), None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), 0..6)) {
            let mut v = BundleVerifier::new(&key(), "T-1");
            for f in &frames {
                let _ = v.frame(f);
            }
        }
    }

    #[test]
    fn a_format_1_bundle_is_refused_by_name() {
        assert!(check_magic(MAGIC).is_ok());
        assert_eq!(check_magic(b"RDMBNDL1"), Err(BundleError::FormatOne));
        assert_eq!(check_magic(b"RDMBNDLX"), Err(BundleError::BadMagic));
    }
}
