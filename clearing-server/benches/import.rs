//! Bulk card import through the real binary (`cargo bench -p clearing-server --bench import`;
//! `BENCH_CARDS=N` for another count, default 100,000; `BENCH_DIR` for the scratch directory): a CSV of
//! N cards — each with one package of two items, every tenth named with identity data — generated,
//! then `clearing-server admin card import FILE.csv` timed on SQLite (a file in the scratch directory)
//! and on PostgreSQL (a cluster this bench starts, as the tests do). Issue 14's target: 100,000 cards
//! with packages in at most 30 s on this machine, on both engines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Instant;

use common::engines::{Engine, database};
use support::{row, scratch_dir};

fn cards() -> u64 {
    std::env::var("BENCH_CARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn main() {
    let n = cards();
    let dir = scratch_dir();
    let csv = dir.path().join("cards.csv");
    support::write_import_csv(&csv, n);
    let csv_mb = std::fs::metadata(&csv).unwrap().len() as f64 / 1e6;
    println!("| measure | figure | notes |");
    println!("|---|---|---|");
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let db = database(engine, dir.path());
        // A terminal and merchant exist, as on a live platform.
        let key = dir.path().join(format!("{engine:?}.key"));
        assert!(common::binary::enroll(&db, "T-1", &key).status.success());
        let started = Instant::now();
        let out = common::binary::import(&db, &csv);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        row(
            &format!("import {n} cards with packages, {engine:?}"),
            format!("{:.0} cards/s", n as f64 / took.as_secs_f64()),
            format!(
                "{:.1} s for the whole command ({csv_mb:.1} MB CSV, 2 items a card, every tenth named): target ≤ 30 s for 100,000",
                took.as_secs_f64()
            ),
        );
    }
}
