//! Journal records and upload bodies for the server tests.
#![allow(dead_code)]

pub mod binary;
pub mod engines;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use clearing_server::AppState;
use clearing_server::core::cards::{ItemSpec, PackageSpec};
use clearing_server::storage::Db;
use redeemd_contract::journal::{auth_code, genesis_mac};
use redeemd_contract::keys::{Tag, TerminalKeys};
use redeemd_contract::model::MerchantScope;
use redeemd_contract::{CardRef, JournalRecord, RecordKind};

pub const T0: i64 = 1_795_000_000_000;
/// The entry version test records carry (see [`line`]).
pub const ENTRY_VERSION: u64 = 1_000_000;

/// A terminal-API request with its signed headers (`SignedHeaders::pairs`) added.
pub trait Signed {
    fn signed(self, headers: &redeemd_contract::request::SignedHeaders) -> Self;
}

impl Signed for reqwest::RequestBuilder {
    fn signed(mut self, headers: &redeemd_contract::request::SignedHeaders) -> Self {
        for (k, v) in headers.pairs() {
            self = self.header(k, v);
        }
        self
    }
}

/// An answer of the platform: its status, headers and JSON body (`Null` when empty or not JSON).
/// Every refusal is checked to be a problem document (`application/problem+json`) whose `status`
/// is the answer's, as `docs/api/` says of every error.
pub async fn json_answer(
    resp: reqwest::Response,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status >= 400 {
        let ctype = headers.get("content-type").map(|v| v.to_str().unwrap());
        assert_eq!(ctype, Some("application/problem+json"), "{v}");
        assert_eq!(v["status"], status, "{v}");
    }
    (status, headers, v)
}

/// `clearing_server::serve` over `db` on a loopback port, on the test's clock (the time a server
/// request sees is `clock`'s): its base URL.
pub async fn serve_on_loopback(db: Arc<Db>, clock: &Arc<AtomicI64>) -> String {
    let c = clock.clone();
    let state = AppState::shared(
        db,
        Arc::new(engines::vault()),
        Arc::new(move || c.load(Ordering::SeqCst)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(clearing_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    base
}

/// A car-wash package `id` valid a year around [`T0`]: WASH ×10 at ¥35.
pub fn wash_package(id: &str, scope: MerchantScope) -> PackageSpec {
    PackageSpec {
        id: id.into(),
        title: "洗车套餐".into(),
        valid_from_ms: T0 - 86_400_000,
        valid_until_ms: T0 + 365 * 86_400_000,
        scope,
        daily_cap: None,
        identity_required: false,
        items: vec![ItemSpec {
            service_code: "WASH".into(),
            title: "精洗".into(),
            uses_total: 10,
            price_fen: 3500,
        }],
    }
}

/// The terminal's own upload body (`redeemd::sync::wire`), so that these tests also check that the
/// daemon's client and this server agree on the wire format.
pub fn upload_body(from_seq: u64, recs: &[(JournalRecord, Tag)]) -> Vec<u8> {
    assert_eq!(recs.first().map(|(r, _)| r.seq), Some(from_seq), "test bug");
    redeemd::sync::wire::upload_body(recs)
}

pub fn record(keys: &TerminalKeys, seq: u64, prev_mac: Tag, quantity: u32) -> JournalRecord {
    line(
        keys,
        seq,
        prev_mac,
        &Line::redeem(CardRef([3; 32]), "P1", "WASH", quantity),
    )
}

/// What one journal line does to a card.
#[derive(Debug, Clone)]
pub struct Line {
    pub kind: RecordKind,
    pub card_ref: CardRef,
    pub package_id: String,
    pub service_code: String,
    pub quantity: u32,
    /// For a void: the seq it voids.
    pub original_seq: u64,
    /// The price per use the terminal was signed (3,500 fen unless [`Line::at`]).
    pub price_fen: u64,
}

impl Line {
    pub fn redeem(card_ref: CardRef, package: &str, code: &str, quantity: u32) -> Self {
        Self {
            kind: RecordKind::Redeem,
            card_ref,
            package_id: package.into(),
            service_code: code.into(),
            quantity,
            original_seq: 0,
            price_fen: 3500,
        }
    }

    /// The same line at another signed price per use.
    pub fn at(self, price_fen: u64) -> Self {
        Self { price_fen, ..self }
    }
    pub fn void(of: &Line, original_seq: u64) -> Self {
        Self {
            kind: RecordKind::Void,
            original_seq,
            ..of.clone()
        }
    }
}

/// A record of `l` at `seq`, chained to `prev_mac`, for merchant M-1.
pub fn line(keys: &TerminalKeys, seq: u64, prev_mac: Tag, l: &Line) -> JournalRecord {
    line_of(keys, "M-1", seq, prev_mac, l)
}

/// [`line`] for a terminal of `merchant_id`.
pub fn line_of(
    keys: &TerminalKeys,
    merchant_id: &str,
    seq: u64,
    prev_mac: Tag,
    l: &Line,
) -> JournalRecord {
    let quantity = l.quantity;
    JournalRecord {
        terminal_id: keys.terminal_id.clone(),
        seq,
        kind: l.kind,
        auth_code: auth_code(&keys.journal, &keys.terminal_id, seq),
        merchant_id: merchant_id.into(),
        card_ref: l.card_ref,
        package_id: l.package_id.clone(),
        service_code: l.service_code.clone(),
        item_title: "精洗".into(),
        quantity,
        amount_fen: l.price_fen * u64::from(quantity),
        original_seq: l.original_seq,
        group_seq: seq,
        line: 0,
        line_count: 1,
        reader_id: "counter-1".into(),
        reader_txn_id: seq,
        cashier_id: "c1".into(),
        wall_ms: T0 + seq as i64,
        boot_ms: seq,
        // Test records decide from the platform's current entries: an entry version above any the
        // tests reach prices them at the latest signed price.
        cache_version: ENTRY_VERSION,
        entry_version: ENTRY_VERSION,
        prev_mac,
    }
}

/// A valid chain of `n` records; `quantity(seq)` varies content for fork tests.
pub fn chain(
    keys: &TerminalKeys,
    n: u64,
    quantity: impl Fn(u64) -> u32,
) -> Vec<(JournalRecord, Tag)> {
    let mut prev = genesis_mac(&keys.journal, &keys.terminal_id);
    (1..=n)
        .map(|seq| {
            let r = record(keys, seq, prev, quantity(seq));
            prev = r.mac(&keys.journal);
            (r, prev)
        })
        .collect()
}

/// Records for `lines`, continuing a chain after `prev` = (seq, mac) (`None`: from seq 1), for M-1.
pub fn lines(
    keys: &TerminalKeys,
    prev: Option<(u64, Tag)>,
    lines: &[Line],
) -> Vec<(JournalRecord, Tag)> {
    lines_of(keys, "M-1", prev, lines)
}

/// [`lines`] for a terminal of `merchant_id`.
pub fn lines_of(
    keys: &TerminalKeys,
    merchant_id: &str,
    prev: Option<(u64, Tag)>,
    lines: &[Line],
) -> Vec<(JournalRecord, Tag)> {
    let (mut seq, mut mac) = prev.unwrap_or((0, genesis_mac(&keys.journal, &keys.terminal_id)));
    lines
        .iter()
        .map(|l| {
            seq += 1;
            let r = line_of(keys, merchant_id, seq, mac, l);
            mac = r.mac(&keys.journal);
            (r, mac)
        })
        .collect()
}
