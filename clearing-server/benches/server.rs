//! Clearing-server figures (`cargo bench -p clearing-server --bench server`; `BENCH_CARDS=N` for a
//! smaller database). Real HTTP on loopback against a real SQLite file, in one process:
//!
//! * seeding N cards (one transaction, prepared statements);
//! * a full snapshot of N cards streamed to a client that reads and drops the bytes: the first request
//!   (the terminal's N card references computed and sorted, numbers opened under the master key) and a
//!   second one; identity and zstd;
//! * a 1,000-card delta from the N-card database;
//! * journal upload: 100,000 records in batches of 1,000 (each record maps to a card and updates its
//!   usage), against a bare SQLite insert of the same rows in batches of 1,000 (same table, WAL,
//!   `synchronous=FULL`) — the physical limit of this machine's disk and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Instant;

use clearing_server::storage::cards::{self, StatusAction};
use std::sync::Arc;

use clearing_server::AppState;
use clearing_server::storage::{self, Db, StorageError};
use redeemd_contract::keys::{Tag, TerminalKeys, TerminalSecret};
use redeemd_contract::snapshot::Manifest;
use support::{Client, bench_cards, now_ms, number, row, scratch_dir, seed};

const SECRET: [u8; 32] = [5; 32];
const UPLOAD_RECORDS: u64 = 100_000;
const UPLOAD_BATCH: u64 = 1_000;
const DELTA_CARDS: u64 = 1_000;

impl Client {
    async fn upload(&mut self, body: Vec<u8>) {
        let path = "/v1/terminals/T-1/journal";
        let h = self.headers("POST", path, &body);
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

/// The manifest at the end of an identity-encoded bundle (its last frame).
fn manifest(tail: &[u8], keys: &TerminalKeys) -> Manifest {
    // The manifest frame is `len ‖ 0x03 ‖ body ‖ mac`; find the length prefix that spans to the end.
    for start in (0..tail.len().saturating_sub(5)).rev() {
        let len = u32::from_be_bytes(tail[start..start + 4].try_into().unwrap()) as usize;
        if start + 4 + len == tail.len()
            && tail[start + 4] == 3
            && let Ok(m) = Manifest::verify_signed(&keys.cache, &tail[start + 5..])
        {
            return m;
        }
    }
    panic!("no manifest at the end of the bundle");
}

fn main() {
    let n = bench_cards();
    let dir = scratch_dir();
    let path = dir.path().join("clearing.sqlite3");
    let db = Arc::new(Db::open(&path.display().to_string()).unwrap());
    db.write(|tx| -> Result<(), cards::CardError> {
        storage::enroll(tx, &support::vault(), "T-1", "M-1", &SECRET, now_ms()).unwrap();
        cards::upsert_merchant(
            tx,
            "M-1",
            "城东洗车",
            500,
            &[support::CATEGORY.into()],
            now_ms(),
        )
    })
    .unwrap();
    let keys = TerminalSecret::from_bytes(&SECRET)
        .unwrap()
        .derive_all("T-1");

    println!("| measure | figure | notes |");
    println!("|---|---|---|");
    let seeded = seed(&db, n);
    row(
        &format!("seed {n} cards"),
        format!("{:.0} cards/s", n as f64 / seeded.as_secs_f64()),
        format!("{:.1} s, one transaction", seeded.as_secs_f64()),
    );
    let db_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = AppState::shared(
        db.clone(),
        Arc::new(support::vault()),
        clearing_server::system_clock(),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move {
        axum::serve(listener, clearing_server::router(state))
            .await
            .unwrap()
    });
    let mut client = Client {
        base,
        keys: keys.clone(),
        http: reqwest::Client::new(),
        nonce: 0,
    };

    // Full snapshots.
    let full = |label: &str, accept: Option<&str>, client: &mut Client| -> (u64, Vec<u8>) {
        let t = Instant::now();
        let (bytes, kind, tail) = rt.block_on(client.bundle(0, accept));
        let s = t.elapsed().as_secs_f64();
        assert_eq!(kind, "full");
        row(
            &format!("full snapshot, {n} cards, {label}"),
            format!("{:.0} cards/s", n as f64 / s),
            format!(
                "{s:.2} s, {:.1} MB on the wire ({:.1} MB/s)",
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / s
            ),
        );
        (bytes, tail)
    };
    let (plain_bytes, tail) = full("identity, first", None, &mut client);
    let m = manifest(&tail, &keys);
    assert_eq!(m.entry_count, n, "every card in the snapshot");
    full("identity", None, &mut client);
    let (zstd_bytes, _) = full("zstd", Some("zstd"), &mut client);
    full("gzip", Some("gzip"), &mut client);

    // A 1,000-card delta.
    let base_version = m.version;
    {
        let now = now_ms();
        let step = (n / DELTA_CARDS).max(1);
        let vault = support::vault();
        db.write(|tx| -> Result<(), cards::CardError> {
            for i in 0..DELTA_CARDS.min(n) {
                cards::set_status(tx, &vault, &number(i * step), StatusAction::Freeze, now)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let t = Instant::now();
    let (bytes, kind, tail) = rt.block_on(client.bundle(base_version, None));
    let s = t.elapsed().as_secs_f64();
    assert_eq!(kind, "delta");
    let dm = manifest(&tail, &keys);
    assert_eq!(dm.entry_count, DELTA_CARDS.min(n));
    row(
        &format!("delta of {} cards from {n}", dm.entry_count),
        format!("{:.1} ms", s * 1e3),
        format!(
            "{:.0} cards/s, {:.0} kB",
            dm.entry_count as f64 / s,
            bytes as f64 / 1e3
        ),
    );

    // Journal upload over HTTP vs a bare insert of the same rows.
    let lines: Vec<common::Line> = (0..UPLOAD_RECORDS)
        .map(|i| {
            let card = number(i % n).card_ref(&keys.card_token);
            common::Line::redeem(card, "P1", "WASH", 1)
        })
        .collect();
    let recs = common::lines(&keys, None, &lines);
    let bodies: Vec<Vec<u8>> = recs
        .chunks(UPLOAD_BATCH as usize)
        .map(|c| common::upload_body(c[0].0.seq, c))
        .collect();
    let t = Instant::now();
    for b in bodies {
        rt.block_on(client.upload(b));
    }
    let upload_s = t.elapsed().as_secs_f64();
    let stored = db
        .read(|tx| -> Result<i64, StorageError> {
            tx.query_one("SELECT count(*) FROM journal", &[])?.i64(0)
        })
        .unwrap();
    assert_eq!(stored as u64, UPLOAD_RECORDS);
    let bare_s = bare_insert(dir.path(), &recs);
    let upload_rate = UPLOAD_RECORDS as f64 / upload_s;
    let bare_rate = UPLOAD_RECORDS as f64 / bare_s;
    row(
        &format!("journal upload, {UPLOAD_RECORDS} records in batches of {UPLOAD_BATCH} over HTTP"),
        format!("{upload_rate:.0} records/s"),
        format!(
            "{upload_s:.2} s; target ≥ 20,000/s: {}",
            if upload_rate >= 20_000.0 {
                "met"
            } else {
                "NOT met"
            }
        ),
    );
    row(
        "bare SQLite insert of the same rows (same batches, WAL, synchronous=FULL)",
        format!("{bare_rate:.0} records/s"),
        format!(
            "{bare_s:.2} s; upload / bare = {:.2}x the time",
            bare_rate / upload_rate
        ),
    );
    println!();
    println!(
        "database {db_mb:.0} MB after seeding; identity snapshot {:.1} MB, zstd {:.1} MB ({:.2}x)",
        plain_bytes as f64 / 1e6,
        zstd_bytes as f64 / 1e6,
        plain_bytes as f64 / zstd_bytes as f64
    );
}

/// The same rows into the same table of a fresh database, batch by batch: the floor under the upload.
fn bare_insert(dir: &std::path::Path, recs: &[(redeemd_contract::JournalRecord, Tag)]) -> f64 {
    let path = dir.join("bare.sqlite3");
    Db::open(&path.display().to_string())
        .unwrap()
        .write(|tx| storage::enroll(tx, &support::vault(), "T-1", "M-1", &SECRET, 0))
        .unwrap();
    let mut c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    let rows: Vec<(u64, Vec<u8>, Tag)> =
        recs.iter().map(|(r, m)| (r.seq, r.encode(), *m)).collect();
    let t = Instant::now();
    for batch in rows.chunks(UPLOAD_BATCH as usize) {
        let tx = c.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO journal (terminal_id, seq, record, mac, received_ms) VALUES ('T-1', ?1, ?2, ?3, 0)")
                .unwrap();
            for (seq, rec, mac) in batch {
                stmt.execute(rusqlite::params![*seq as i64, rec, &mac[..]])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    t.elapsed().as_secs_f64()
}
