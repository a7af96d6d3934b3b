//! Where a delta's time goes (`cargo bench -p clearing-server --bench delta`; `BENCH_CARDS=N` cards
//! seeded, default 100,000; `DELTA_CARDS=K` changed, default 1,000): a fleet's every delta carries the
//! cards other shops redeemed since the terminal's last pass, so its cost per card, times the fleet's
//! redemptions, times the terminals that see each card, is a fixed share of the server's CPU.
//!
//! In process, on an SQLite file (the per-card work does not depend on the engine): K cards changed
//! after the terminal's version, then `bundle::produce` timed whole (identity and zstd), and each of its
//! steps timed alone over the same K cards — the query of changed cards, opening the sealed number,
//! the card reference (AES-SIV), the page query of bodies, decoding and re-encoding the body with the
//! terminal's fields, the entry MAC, compression.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use clearing_server::core::cache_policy::CachePolicy;
use clearing_server::storage::cards::{self, CardError};
use clearing_server::storage::{self, Db, StorageError, bundle};
use redeemd_contract::keys::TerminalSecret;
use redeemd_contract::model::{Card, CardRef};
use redeemd_contract::snapshot::{EntryOp, entry_mac};
use support::{now_ms, row, scratch_dir, seed};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn per_card(d: Duration, k: u64) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6 / k as f64)
}

fn main() {
    let n = env("BENCH_CARDS", 100_000);
    let k = env("DELTA_CARDS", 1_000);
    let dir = scratch_dir();
    let db = Db::open(&dir.path().join("clearing.sqlite3").display().to_string()).unwrap();
    let vault = support::vault();
    db.write(|tx| -> Result<(), CardError> {
        storage::enroll(tx, &vault, "T-1", "M-1", &[5; 32], now_ms()).unwrap();
        cards::upsert_merchant(tx, "M-1", "m", 500, &[support::CATEGORY.into()], now_ms())
    })
    .unwrap();
    seed(&db, n);
    let keys = TerminalSecret::from_bytes(&[5; 32])
        .unwrap()
        .derive_all("T-1");
    let (since, _) = db.read(cards::current_version).unwrap();
    // K cards changed (as an upload batch changes them: uses left, one new version).
    db.write(|tx| -> Result<(), CardError> {
        let v = cards::bump_version(tx, now_ms())?;
        for id in (1..=n as i64)
            .step_by((n / k).max(1) as usize)
            .take(k as usize)
        {
            cards::patch_uses_left(tx, id, &[("P1", "WASH", 9)], v)?;
        }
        Ok(())
    })
    .unwrap();
    let req = bundle::BundleRequest {
        keys: keys.clone(),
        merchant_id: "M-1".into(),
        since,
        now_ms: now_ms(),
        cache: CachePolicy::default(),
    };
    println!("| step | per card | notes |");
    println!("|---|---|---|");
    // A fresh cache is what the first terminal's delta finds; every later one finds it filled.
    let mut cache = bundle::CardCache::default();
    let whole = |cache: &bundle::CardCache, encoding: clearing_server::http::encoding::Encoding| {
        let mut best = Duration::MAX;
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let mut out =
                clearing_server::http::encoding::Compressor::new(encoding, Vec::new()).unwrap();
            let w = bundle::produce(&db, &vault, cache, &req, |_| true, &mut out)
                .unwrap()
                .unwrap();
            let out = out.finish().unwrap();
            best = best.min(t.elapsed());
            bytes = out.len();
            assert_eq!(w.upserts, k);
        }
        (best, bytes)
    };
    use clearing_server::http::encoding::Encoding;
    for (name, e, cached) in [
        (
            "the first terminal's (nothing cached), identity",
            Encoding::Identity,
            false,
        ),
        ("every later terminal's, identity", Encoding::Identity, true),
        ("every later terminal's, zstd", Encoding::Zstd, true),
    ] {
        if !cached {
            cache = bundle::CardCache::default();
        }
        let nothing = bundle::CardCache::with_capacity(0);
        let (d, bytes) = whole(if cached { &cache } else { &nothing }, e);
        row(
            &format!("whole delta, {name}"),
            per_card(d, k),
            format!(
                "{:.2} ms for {k} of {n} cards, {bytes} bytes (best of 5)",
                d.as_secs_f64() * 1e3
            ),
        );
        if !cached {
            // Fill the cache for the next rows.
            whole(&cache, e);
        }
    }
    // The steps alone.
    let t = Instant::now();
    let ids: Vec<i64> = db
        .read(|tx| -> Result<_, StorageError> {
            tx.query(
                "SELECT id, version FROM card WHERE version > $1",
                clearing_server::params![since as i64],
            )?
            .iter()
            .map(|r| r.i64(0))
            .collect()
        })
        .unwrap();
    row(
        "query of the changed cards' ids and versions",
        per_card(t.elapsed(), k),
        String::new(),
    );
    let changed: Vec<(i64, Vec<u8>)> = db
        .read(|tx| -> Result<_, StorageError> {
            ids.iter()
                .map(|id| {
                    let r = tx.query_one(
                        "SELECT number_sealed FROM card WHERE id = $1",
                        clearing_server::params![*id],
                    )?;
                    Ok((*id, r.blob(0)?.to_vec()))
                })
                .collect()
        })
        .unwrap();
    let t = Instant::now();
    let numbers: Vec<_> = changed
        .iter()
        .map(|(id, sealed)| cards::stored_number(&vault, *id, sealed).unwrap())
        .collect();
    row(
        "open the sealed number (AES-256-GCM)",
        per_card(t.elapsed(), k),
        String::new(),
    );
    let t = Instant::now();
    let refs: Vec<CardRef> = numbers
        .iter()
        .map(|n| n.card_ref(&keys.card_token))
        .collect();
    row(
        "card reference (AES-256-SIV)",
        per_card(t.elapsed(), k),
        String::new(),
    );
    let t = Instant::now();
    let bodies: Vec<Vec<u8>> = db
        .read(|tx| -> Result<_, StorageError> {
            let mut out = Vec::new();
            for id in &ids {
                out.push(
                    tx.query_one(
                        "SELECT body FROM card WHERE id = $1",
                        clearing_server::params![*id],
                    )?
                    .blob(0)?
                    .to_vec(),
                );
            }
            Ok(out)
        })
        .unwrap();
    row(
        "read the bodies (a query each)",
        per_card(t.elapsed(), k),
        String::new(),
    );
    let t = Instant::now();
    let templates: Vec<_> = bodies
        .iter()
        .map(|b| Card::decode(b).unwrap().template())
        .collect();
    row(
        "decode the body into its template (once per card and version)",
        per_card(t.elapsed(), k),
        String::new(),
    );
    let t = Instant::now();
    let encoded: Vec<Vec<u8>> = templates.iter().map(|t| t.body(None, 7)).collect();
    row(
        "the terminal's body from the template",
        per_card(t.elapsed(), k),
        String::new(),
    );
    let t = Instant::now();
    for (b, r) in encoded.iter().zip(&refs) {
        std::hint::black_box(entry_mac(&keys.cache, "M-1", 9, r, EntryOp::Upsert, b));
    }
    row(
        "entry MAC (HMAC-SHA256)",
        per_card(t.elapsed(), k),
        String::new(),
    );
    let all: Vec<u8> = encoded.concat();
    let t = Instant::now();
    let z = zstd::bulk::compress(&all, 1).unwrap();
    row(
        "zstd level 1 of the bodies",
        per_card(t.elapsed(), k),
        format!("{} → {} bytes", all.len(), z.len()),
    );
}
