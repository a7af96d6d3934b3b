//! Store benchmarks against the physical floor measured in the same run (see BENCHMARKS.md).
//!
//! (a) menu decision for a card in an N-card cache with N journal rows, p50/p99, against a bare
//!     primary-key SELECT of the entry plus one HMAC on the same database;
//! (b) redemption commit latency against a bare single-row insert with `synchronous=FULL` on the same disk;
//! (c) full snapshot install of N cards: time and peak RSS (measured in a child process).
//!
//! `cargo bench --bench store` (N = 1,000,000); `REDEEMD_BENCH_CARDS=100000 cargo bench --bench store`
//! for a quick run. The database lives under `target/bench-tmp` (disk-backed, not tmpfs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use redeemd::engine::{Limits, Now};
use redeemd::store::{Decision, MenuOutcome, RedeemRequest, Store, StoreConfig};
use redeemd_contract::model::{CardNumber, CardRef, Holder, MerchantScope, identity_verifier};
use redeemd_contract::snapshot::{BundleKind, BundleSigner};
use redeemd_contract::{Card, CardStatus, Item, Package, TerminalKeys, TerminalSecret};
use rusqlite::{Connection, params};

const TERMINAL: &str = "T-BENCH";
const MERCHANT: &str = "M-BENCH";
const T0: i64 = 1_790_000_000_000;
const HOUR: i64 = 3_600_000;

fn keys() -> TerminalKeys {
    TerminalSecret::from_bytes(&[0x5a; 32])
        .unwrap()
        .derive_all(TERMINAL)
}

fn number(i: u64) -> String {
    format!("6228487{:012}", 100_000_000_000 + i)
}

fn card(k: &TerminalKeys, cref: &CardRef, i: u64) -> Card {
    Card {
        masked_number: CardNumber::parse(&number(i)).unwrap().masked(),
        status: CardStatus::Active,
        holder: Some(Holder {
            masked_name: "王*".into(),
            identity_verifier: Some(identity_verifier(&k.identity, cref, b"1234")),
        }),
        usage_through_seq: 0,
        packages: vec![
            Package {
                id: format!("P-{}", i % 1000),
                title: "洗车套餐".into(),
                items: vec![
                    Item {
                        service_code: "WASH".into(),
                        title: "精洗".into(),
                        uses_total: 20,
                        uses_left: 20,
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
                valid_until_ms: T0 + 10_000 * HOUR,
                scope: MerchantScope::All,
                daily_cap: Some(5),
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
                valid_until_ms: T0 + 10_000 * HOUR,
                scope: MerchantScope::Categories(vec!["repair".into(), "wash".into()]),
                daily_cap: None,
                identity_required: true,
            },
        ],
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        terminal_id: TERMINAL.into(),
        merchant_id: MERCHANT.into(),
        limits: Limits {
            max_offline_uses_per_card: u32::MAX,
            max_offline_redemptions: u32::MAX,
            ..Limits::default()
        },
    }
}

fn now(wall_ms: i64) -> Now {
    Now {
        wall_ms,
        boot_ms: 0,
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Child mode for (c): install the bundle into the store and report time and peak RSS.
fn install_child(dir: &Path, bundle: &Path) {
    let mut s = Store::open(dir, keys(), config()).unwrap();
    let t = Instant::now();
    let file = std::fs::File::open(bundle).unwrap();
    let r = s
        .install_bundle(std::io::BufReader::with_capacity(1 << 16, file), now(T0))
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("INSTALL {} {secs:.3} {:.1}", r.upserts, peak_rss_mb());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--install-child") {
        install_child(Path::new(&args[i + 1]), Path::new(&args[i + 2]));
        return;
    }
    let n: u64 = std::env::var("REDEEMD_BENCH_CARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let samples: usize = std::env::var("REDEEMD_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let commits: usize = std::env::var("REDEEMD_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    std::fs::create_dir_all("target/bench-tmp").unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("store-")
        .tempdir_in("target/bench-tmp")
        .unwrap();
    let state = tmp.path().join("state");
    let k = keys();
    eprintln!(
        "bench: {n} cards, {n} journal rows, in {}",
        tmp.path().display()
    );

    // The snapshot file, streamed in card-reference order.
    let t = Instant::now();
    let mut refs: Vec<(CardRef, u64)> = (0..n)
        .map(|i| {
            (
                CardNumber::parse(&number(i))
                    .unwrap()
                    .card_ref(&k.card_token),
                i,
            )
        })
        .collect();
    refs.sort_unstable();
    let bundle_path = tmp.path().join("snapshot.bundle");
    {
        let mut out =
            BufWriter::with_capacity(1 << 20, std::fs::File::create(&bundle_path).unwrap());
        let mut signer = BundleSigner::new(&k.cache, BundleKind::Full, MERCHANT, 1);
        out.write_all(&signer.header()).unwrap();
        for (r, i) in &refs {
            out.write_all(&signer.entry(r, Some(&card(&k, r, *i))).unwrap())
                .unwrap();
        }
        out.write_all(
            &signer
                .finish(TERMINAL, &["wash".into()], 0, T0 - HOUR, T0 + 10_000 * HOUR)
                .1,
        )
        .unwrap();
        out.flush().unwrap();
    }
    let bundle_mb = std::fs::metadata(&bundle_path).unwrap().len() as f64 / 1e6;
    eprintln!(
        "bench: snapshot of {bundle_mb:.0} MB signed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(refs);

    // The journal: n single-line redemptions spread at random over the cards.
    let t = Instant::now();
    {
        let mut s = Store::open(&state, k.clone(), config()).unwrap();
        let mut rng = Rng(42);
        let mut it = (0..n).map(|_| {
            let i = rng.next() % n;
            (
                CardNumber::parse(&number(i))
                    .unwrap()
                    .card_ref(&k.card_token),
                "P-oil".to_owned(),
                "OIL".to_owned(),
                0u32,
            )
        });
        s.seed_redemptions(&mut it, now(T0 - HOUR)).unwrap();
    }
    eprintln!(
        "bench: journal of {n} rows seeded in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // (c) Install in a child process, so that its peak RSS is the install's alone.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--install-child")
        .arg(&state)
        .arg(&bundle_path)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("INSTALL"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "install child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
    let f: Vec<&str> = line.split_whitespace().collect();
    let (install_s, install_rss): (f64, f64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    let db_mb = std::fs::metadata(state.join(redeemd::store::DB_FILE))
        .unwrap()
        .len() as f64
        / 1e6;

    let mut s = Store::open(&state, k.clone(), config()).unwrap();
    let bare = Connection::open(state.join(redeemd::store::DB_FILE)).unwrap();
    // The same page cache as the store gets, so that the floor is measured under the same conditions.
    bare.pragma_update(None, "cache_size", -65_536).unwrap();

    // (a) Menu decision vs bare PK select + one HMAC, interleaved on the same random cards.
    let mut rng = Rng(7);
    let picks: Vec<u64> = (0..samples).map(|_| rng.next() % n).collect();
    let numbers: Vec<String> = picks.iter().map(|&i| number(i)).collect();
    let mut menu_t = Vec::with_capacity(samples);
    let mut bare_t = Vec::with_capacity(samples);
    let mut with_history = (Vec::new(), 0usize);
    let mut stmt = bare
        .prepare_cached("SELECT body, mac FROM cache_entry WHERE card_ref = ?1")
        .unwrap();
    for round in 0..2 {
        for (idx, num) in numbers.iter().enumerate() {
            let t = Instant::now();
            let m = s.menu(num, now(T0)).unwrap();
            let dm = t.elapsed();
            assert!(matches!(m, MenuOutcome::Menu(_)), "{m:?}");
            let cref = CardNumber::parse(num).unwrap().card_ref(&k.card_token);
            let t = Instant::now();
            let (body, mac): (Vec<u8>, Vec<u8>) = stmt
                .query_row([&cref.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            let tag = k.cache.mac(&[&body]);
            let db = t.elapsed();
            std::hint::black_box((tag, mac));
            if round == 1 {
                // The first round warms the page cache for both.
                menu_t.push(dm);
                bare_t.push(db);
                let rows: i64 = bare
                    .query_row(
                        "SELECT count(*) FROM journal WHERE card_ref = ?1",
                        [&cref.0[..]],
                        |r| r.get(0),
                    )
                    .unwrap();
                if rows > 0 {
                    with_history.0.push(dm);
                    with_history.1 += rows as usize;
                }
                let _ = idx;
            }
        }
    }
    drop(stmt);
    menu_t.sort_unstable();
    bare_t.sort_unstable();
    with_history.0.sort_unstable();

    // (b) Commit latency vs a bare single-row insert with synchronous=FULL on the same disk.
    let floor = Connection::open(tmp.path().join("floor.sqlite3")).unwrap();
    floor
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    floor.pragma_update(None, "synchronous", "FULL").unwrap();
    floor
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        .unwrap();
    let payload = vec![0x5au8; 320];
    let mut commit_t = Vec::with_capacity(commits);
    let mut floor_t = Vec::with_capacity(commits);
    let mut rng = Rng(99);
    let render = |d: &Decision| format!("{d:?}").into_bytes();
    for txn in 0..commits {
        let num = number(rng.next() % n);
        let items = [(0u16, 1u64)];
        let req = RedeemRequest {
            reader_id: "bench",
            reader_txn_id: txn as u64,
            card_number: &num,
            items: &items,
            identity: None,
            cashier_id: "c",
            menu_entry_version: None,
        };
        let t = Instant::now();
        let o = s.redeem(&req, now(T0 + txn as i64), render).unwrap();
        let dc = t.elapsed();
        let t = Instant::now();
        floor
            .prepare_cached("INSERT INTO t (payload) VALUES (?1)")
            .unwrap()
            .execute(params![&payload])
            .unwrap();
        let df = t.elapsed();
        if matches!(o.decision, Some(Decision::Redeemed(_))) {
            commit_t.push(dc);
            floor_t.push(df);
        }
    }
    let approved = commit_t.len();
    let mean =
        |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() * 1e6 / v.len().max(1) as f64;
    let (commit_mean, floor_mean) = (mean(&commit_t), mean(&floor_t));
    commit_t.sort_unstable();
    floor_t.sort_unstable();

    println!();
    println!(
        "## store benchmark: {n} cards, {n} journal rows (database {db_mb:.0} MB, snapshot file {bundle_mb:.0} MB)"
    );
    println!();
    println!(
        "| measurement | p50 µs | p99 µs | floor p50 µs | floor p99 µs | ratio p50 | ratio p99 | target |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    println!(
        "| (a) menu decision, {samples} random cards | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.2}× | ≤ 2× |",
        us(pct(&menu_t, 0.5)),
        us(pct(&menu_t, 0.99)),
        us(pct(&bare_t, 0.5)),
        us(pct(&bare_t, 0.99)),
        us(pct(&menu_t, 0.5)) / us(pct(&bare_t, 0.5)),
        us(pct(&menu_t, 0.99)) / us(pct(&bare_t, 0.99)),
    );
    if !with_history.0.is_empty() {
        println!(
            "| (a′) of which cards with journal rows ({}, {:.1} rows avg) | {:.1} | {:.1} | | | | | |",
            with_history.0.len(),
            with_history.1 as f64 / with_history.0.len() as f64,
            us(pct(&with_history.0, 0.5)),
            us(pct(&with_history.0, 0.99)),
        );
    }
    println!(
        "| (b) redemption commit, {approved} approvals | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.2}× | ≤ 1.3× |",
        us(pct(&commit_t, 0.5)),
        us(pct(&commit_t, 0.99)),
        us(pct(&floor_t, 0.5)),
        us(pct(&floor_t, 0.99)),
        us(pct(&commit_t, 0.5)) / us(pct(&floor_t, 0.5)),
        us(pct(&commit_t, 0.99)) / us(pct(&floor_t, 0.99)),
    );
    println!(
        "| (b) mean | {commit_mean:.1} | | {floor_mean:.1} | | {:.2}× | | |",
        commit_mean / floor_mean
    );
    println!("| (c) full snapshot install of {n} cards | {install_s:.1} s | | | | | | ≤ 60 s |");
    println!("| (c) peak RSS of the install process | {install_rss:.0} MB | | | | | | ≤ 200 MB |");
}
