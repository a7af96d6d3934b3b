//! Shared fixtures: keys, cards, signed bundles, a store in a temp dir.

use std::path::Path;

use redeemd::config::Language;
use redeemd::conversation::render::Presentation;
use redeemd::engine::{Limits, Now};
use redeemd::store::{Decision, Outcome, Request, Source, Store, StoreConfig};
use redeemd_contract::model::{CardNumber, CardRef, Holder, MerchantScope, identity_verifier};
use redeemd_contract::snapshot::{BundleKind, BundleSigner};
use redeemd_contract::{Card, CardStatus, Item, Package, TerminalKeys, TerminalSecret};

pub const SECRET_HEX: &str = "4242424242424242424242424242424242424242424242424242424242424242";
pub const TERMINAL: &str = "T-0001";
pub const MERCHANT: &str = "M-0001";
/// 2026-09-21T14:13:20Z (22:13 in China), a fixed "now" for tests.
pub const T0: i64 = 1_790_000_000_000;
pub const HOUR: i64 = 3_600_000;
pub const PHONE_LAST4: &[u8] = b"1234";

pub fn secret() -> TerminalSecret {
    TerminalSecret::from_hex_text(SECRET_HEX).unwrap()
}

pub fn keys() -> TerminalKeys {
    secret().derive_all(TERMINAL)
}

pub fn limits() -> Limits {
    Limits {
        max_offline_uses_per_card: 1_000_000,
        max_offline_redemptions: 1_000_000,
        ..Limits::default()
    }
}

pub fn config() -> StoreConfig {
    StoreConfig {
        terminal_id: TERMINAL.into(),
        merchant_id: MERCHANT.into(),
        limits: limits(),
    }
}

pub fn now(wall_ms: i64) -> Now {
    Now {
        wall_ms,
        boot_ms: 1000,
    }
}

/// A small deterministic generator (xorshift64*) for kill timings and card picks.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A 19-digit card number for card `i`.
pub fn number(i: u64) -> String {
    format!("6228487{:012}", 314_159_271_828 + i)
}

pub fn card_ref(i: u64) -> CardRef {
    CardNumber::parse(&number(i))
        .unwrap()
        .card_ref(&keys().card_token)
}

/// The references of cards `0..n` with their index, in card-reference order (a bundle's order); one
/// key derivation for all of them.
#[allow(dead_code)] // used by the benches (`benches/store.rs`, `benches/sync.rs`)
pub fn sorted_card_refs(n: u64) -> Vec<(CardRef, u64)> {
    let card_token = keys().card_token;
    let mut refs: Vec<(CardRef, u64)> = (0..n)
        .map(|i| {
            (
                CardNumber::parse(&number(i)).unwrap().card_ref(&card_token),
                i,
            )
        })
        .collect();
    refs.sort_unstable();
    refs
}

/// Card `i`: wash ×`wash` (entry 0, daily cap 1000), wax ×2 (entry 1), oil ×3 with identity (entry 2).
pub fn card(i: u64, wash: u32) -> Card {
    let cref = card_ref(i);
    Card {
        masked_number: CardNumber::parse(&number(i)).unwrap().masked(),
        status: CardStatus::Active,
        holder: Some(Holder {
            masked_name: "张*".into(),
            identity_verifier: Some(identity_verifier(&keys().identity, &cref, PHONE_LAST4)),
        }),
        usage_through_seq: 0,
        packages: vec![
            Package {
                id: "P-wash".into(),
                title: "洗车套餐".into(),
                items: vec![
                    Item {
                        service_code: "WASH".into(),
                        title: "精洗".into(),
                        uses_total: wash,
                        uses_left: wash,
                        price_fen: 3000,
                    },
                    Item {
                        service_code: "WAX".into(),
                        title: "打蜡".into(),
                        uses_total: 2,
                        uses_left: 2,
                        price_fen: 8000,
                    },
                ],
                valid_from_ms: T0 - 1000 * HOUR,
                valid_until_ms: T0 + 1000 * HOUR,
                scope: MerchantScope::All,
                daily_cap: Some(1000),
                identity_required: false,
            },
            Package {
                id: "P-oil".into(),
                title: "保养".into(),
                items: vec![Item {
                    service_code: "OIL".into(),
                    title: "换机油".into(),
                    uses_total: 3,
                    uses_left: 3,
                    price_fen: 20000,
                }],
                valid_from_ms: T0 - 1000 * HOUR,
                valid_until_ms: T0 + 1000 * HOUR,
                scope: MerchantScope::Merchants(vec![MERCHANT.into()]),
                daily_cap: None,
                identity_required: true,
            },
        ],
    }
}

/// A signed bundle of `cards` (card index, entry or `None` for a removal).
pub fn bundle(
    kind: BundleKind,
    version: u64,
    prev: u64,
    cards: &[(u64, Option<Card>)],
    expires_at_ms: i64,
) -> Vec<u8> {
    let k = keys();
    let mut sorted: Vec<(CardRef, Option<&Card>)> = cards
        .iter()
        .map(|(i, c)| (card_ref(*i), c.as_ref()))
        .collect();
    sorted.sort_by_key(|(r, _)| *r);
    let mut s = BundleSigner::new(&k.cache, kind, MERCHANT, version);
    let mut out = s.header();
    for (r, c) in sorted {
        out.extend(s.entry(&r, c).unwrap());
    }
    out.extend(
        s.finish(TERMINAL, &["wash".into()], prev, T0 - HOUR, expires_at_ms)
            .1,
    );
    out
}

pub fn full(version: u64, n: u64) -> Vec<u8> {
    let cards: Vec<(u64, Option<Card>)> = (0..n).map(|i| (i, Some(card(i, 10)))).collect();
    bundle(BundleKind::Full, version, 0, &cards, T0 + 1000 * HOUR)
}

/// Opens the store in `dir`, creating the directory first as systemd's `StateDirectory=` would (the
/// store itself never creates it).
pub fn open(dir: &Path) -> Store {
    std::fs::create_dir_all(dir).unwrap();
    Store::open(dir, keys(), config()).unwrap()
}

/// A store with `n` cards installed (version 1).
pub fn store_with_cards(dir: &Path, n: u64) -> Store {
    let mut s = open(dir);
    s.install_bundle(&full(1, n)[..], now(T0)).unwrap();
    s
}

/// Answers rendered as the daemon renders them for a Chinese-speaking shop on a UTF-8 link.
pub const REPLIES: Presentation = Presentation {
    language: Language::Zh,
    encoding: firmware_protocol::TextEncoding::Utf8,
    utc_offset_minutes: 480,
};

/// A request's payload for the store (which compares it byte for byte with a repeated request's):
/// a stand-in for the wire bytes, deterministic in what the request says.
pub fn payload(what: &str) -> Vec<u8> {
    what.as_bytes().to_vec()
}

/// CARD_PRESENTED of card `card` under `txn` by `reader`, answered (and stored) at `at`.
pub fn swipe(s: &mut Store, reader: &str, txn: u64, card: u64, at: i64) -> Outcome {
    let number = number(card);
    // As on the wire, the payload holds the card number: the store must keep only a digest of it
    // (`store::card_numbers_never_reach_the_disk`).
    let body = payload(&format!("swipe {txn} {number}"));
    let request = Request {
        reader_id: reader,
        txn_id: u32::try_from(txn).unwrap(),
        payload: &body,
    };
    s.answer_card_presented(request, &number, "cashier-7", now(at), &REPLIES)
        .unwrap()
}

/// REDEEM of `items` (entry index, quantity) under `txn`, for the card its swipe presented.
pub fn redeem_swiped(
    s: &mut Store,
    reader: &str,
    txn: u64,
    items: &[(u16, u64)],
    identity: Option<&[u8]>,
    at: i64,
) -> Outcome {
    let body = payload(&format!("redeem {txn} {items:?} {identity:?}"));
    let request = Request {
        reader_id: reader,
        txn_id: u32::try_from(txn).unwrap(),
        payload: &body,
    };
    s.answer_redeem(request, items, identity, now(at), &REPLIES)
        .unwrap()
}

/// A whole transaction: CARD_PRESENTED of `card` under `txn`, then its REDEEM of `items`. The
/// swipe's answer when it was declined or refused (there is nothing to redeem), else the REDEEM's.
pub fn redeem(
    s: &mut Store,
    reader: &str,
    txn: u64,
    card: u64,
    items: &[(u16, u64)],
    at: i64,
) -> Outcome {
    let swiped = swipe(s, reader, txn, card, at);
    match (&swiped.source, &swiped.decision) {
        (Source::Replayed, _) | (_, Some(Decision::Menu(_))) => {
            redeem_swiped(s, reader, txn, items, None, at)
        }
        _ => swiped,
    }
}

/// VOID under `txn` of the redemption approved with `code`.
pub fn void(s: &mut Store, reader: &str, txn: u64, code: &str, at: i64) -> Outcome {
    let body = payload(&format!("void {txn} {code}"));
    let request = Request {
        reader_id: reader,
        txn_id: u32::try_from(txn).unwrap(),
        payload: &body,
    };
    s.answer_void(request, code, now(at), &REPLIES).unwrap()
}

pub fn approved(o: &Outcome) -> &redeemd::store::Approval {
    match &o.decision {
        Some(Decision::Redeemed(a)) => a,
        other => panic!("expected an approval, got {other:?}"),
    }
}

pub fn declined(o: &Outcome) -> redeemd::engine::DeclineReason {
    match &o.decision {
        Some(Decision::Declined(d)) => d.reason,
        other => panic!("expected a decline, got {other:?}"),
    }
}

/// The menu of `card` at `at` as (entry index, uses left); panics on a decline.
pub fn menu_left(s: &mut Store, card: u64, at: i64) -> Vec<(u16, u32)> {
    match s.menu(&number(card), now(at)).unwrap() {
        redeemd::store::MenuOutcome::Menu(m) => {
            m.entries.iter().map(|e| (e.index, e.uses_left)).collect()
        }
        redeemd::store::MenuOutcome::Declined(d) => panic!("menu declined: {d:?}"),
    }
}

pub fn journal_rows(s: &Store) -> i64 {
    s.connection()
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap()
}
