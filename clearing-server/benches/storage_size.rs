//! What the platform's database costs per card, per terminal and per stored record, on both engines
//! (`cargo bench -p clearing-server --bench storage_size`; `BENCH_CARDS` cards, default 100,000;
//! `BENCH_TERMINALS`, default 1,000; `BENCH_RECORDS` uploaded, default 20,000), and what that makes
//! of issue 14's platform: 10,000 terminals × 1,000,000 cards (target ≤ 20 GB), and the journal's
//! growth at 1,000,000 redemptions a day.
//!
//! Each step in process through the server's own operations (`storage::import`, `storage::enroll`,
//! `storage::store_batch`), the size read after each: SQLite's file after a checkpoint (WAL folded
//! in), PostgreSQL's `pg_database_size` after a `VACUUM` (the tests' cluster, started by this bench).
//! Cards: one package of two items each, every tenth named with identity data, as the fleet's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use clearing_server::storage::{self, Db, StorageError};
use common::engines::{Engine, database};
use redeemd_contract::keys::TerminalSecret;
use support::{row, scratch_dir};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The database's size on disk, bytes.
fn size(db: &Db, engine: Engine, path: &str) -> u64 {
    match engine {
        Engine::Sqlite => {
            db.read(|tx| -> Result<(), StorageError> {
                tx.query("PRAGMA wal_checkpoint(TRUNCATE)", &[])?;
                Ok(())
            })
            .unwrap();
            std::fs::metadata(path).unwrap().len()
        }
        Engine::Postgres => {
            // VACUUM cannot run in a transaction: a connection of its own.
            let mut c = postgres::Client::connect(path, postgres::NoTls).unwrap();
            c.batch_execute("VACUUM").unwrap();
            let r = c
                .query_one("SELECT pg_database_size(current_database())", &[])
                .unwrap();
            u64::try_from(r.get::<_, i64>(0)).unwrap()
        }
    }
}

fn main() {
    let (n, terminals, records) = (
        env("BENCH_CARDS", 100_000),
        env("BENCH_TERMINALS", 1_000),
        env("BENCH_RECORDS", 20_000),
    );
    let dir = scratch_dir();
    let csv = dir.path().join("cards.csv");
    support::write_import_csv(&csv, n);
    let cards = clearing_server::core::import::parse(&std::fs::read(&csv).unwrap()).unwrap();
    println!("| measure | figure | notes |");
    println!("|---|---|---|");
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let spec = database(engine, dir.path());
        let db = Db::open(&spec).unwrap();
        let vault = support::vault();
        let now = support::now_ms();
        db.write(|tx| storage::enroll(tx, &vault, "T-0", "M-1", &[1; 32], now))
            .unwrap();
        let empty = size(&db, engine, &spec);
        db.transaction(storage::Isolation::ReadCommitted, |tx| {
            storage::import::import_cards(tx, &vault, &cards, now)
        })
        .unwrap();
        let with_cards = size(&db, engine, &spec);
        let per_card = (with_cards - empty) as f64 / n as f64;
        db.write(|tx| -> Result<(), storage::terminals::TerminalError> {
            for t in 1..=terminals {
                storage::enroll(tx, &vault, &format!("T-{t}"), "M-1", &[2; 32], now)?;
            }
            Ok(())
        })
        .unwrap();
        let with_terminals = size(&db, engine, &spec);
        let per_terminal = (with_terminals - with_cards) as f64 / terminals as f64;
        // Records of real cards, in upload batches of 1,000, as a terminal sends them.
        let keys = TerminalSecret::from_bytes(&[1; 32])
            .unwrap()
            .derive_all("T-0");
        let lines: Vec<common::Line> = (0..records)
            .map(|i| {
                let number = support::number(i * 7 % n);
                common::Line::redeem(number.card_ref(&keys.card_token), "P1", "WASH", 1)
            })
            .collect();
        let recs = common::lines(&keys, None, &lines);
        for batch in recs.chunks(1000) {
            let upload: Vec<storage::UploadRecord> = batch
                .iter()
                .map(|(r, mac)| storage::UploadRecord {
                    seq: r.seq,
                    record: r.encode(),
                    mac: *mac,
                })
                .collect();
            let b = storage::journal::Batch {
                terminal_id: "T-0",
                merchant_id: "M-1",
                keys: &keys,
                from_seq: upload[0].seq,
                records: &upload,
                now_ms: now,
            };
            storage::store_batch(&db, &vault, &b).unwrap();
        }
        let with_records = size(&db, engine, &spec);
        let per_record = (with_records - with_terminals) as f64 / records as f64;
        let fleet = 1e6 * per_card + 1e4 * per_terminal;
        row(
            &format!("{engine:?}: a card with a package of two items"),
            format!("{per_card:.0} B"),
            format!(
                "{n} imported: {:.1} MB → {:.1} MB",
                empty as f64 / 1e6,
                with_cards as f64 / 1e6
            ),
        );
        row(
            &format!("{engine:?}: a terminal"),
            format!("{per_terminal:.0} B"),
            format!("{terminals} enrolled"),
        );
        row(
            &format!("{engine:?}: a stored record"),
            format!("{per_record:.0} B"),
            format!("{records} uploaded in batches of 1,000, each mapped to its card"),
        );
        row(
            &format!("{engine:?}: 10,000 terminals × 1,000,000 cards"),
            format!("**{:.2} GB**", fleet / 1e9),
            format!(
                "extrapolated from the rows above (nothing is stored per terminal and card); target ≤ 20 GB; the journal adds {:.2} GB a day at 1,000,000 redemptions",
                per_record * 1e6 / 1e9
            ),
        );
    }
}
