//! Sync benchmarks (terminal side), each against its physical floor measured in the same run
//! (see BENCHMARKS.md, "Sync (terminal side)"):
//!
//! (s1) a full snapshot install of N cards through the staged path (verify each entry, stage in chunks,
//!      one swap transaction): wall time, peak RSS of the installing process, the longest single hold of
//!      the store (what a redemption could wait behind), and the swap's hold; floor: a bare SQLite insert
//!      of the same rows into an empty `WITHOUT ROWID` table in one transaction, same settings and disk.
//! (s2) a delta of 1,000 cards (upserts and removals) into the N-card cache; floor: a bare
//!      `INSERT OR REPLACE` / `DELETE` of the same rows in one transaction into the floor's N-row table.
//!
//! `cargo bench --bench sync` (N = 1,000,000); `REDEEMD_BENCH_CARDS=100000 cargo bench --bench sync` for a
//! quick run. Files live under `target/bench-tmp` (disk-backed). Bundles are made with `BundleSigner`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use redeemd::engine::Now;
use redeemd::store::{Exclusive, Store, StoreAccess, StoreError, install_from_reader};
use redeemd_contract::model::CardRef;
use redeemd_contract::snapshot::{BundleKind, BundleSigner};
use rusqlite::{Connection, params};

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;
use support::{HOUR, MERCHANT, T0, TERMINAL, card, keys, now, sorted_card_refs};

const DELTA_CARDS: usize = 1000;
const DELTA_RUNS: u64 = 5;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// A [`StoreAccess`] that times each hold of the store.
struct Timed<'a> {
    inner: Exclusive<'a>,
    holds: Vec<Duration>,
}

impl StoreAccess for Timed<'_> {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Store, Now) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let t = Instant::now();
        let r = self.inner.with(f);
        self.holds.push(t.elapsed());
        r
    }
}

/// Installs `bundle` into the store in `dir`, timing every hold. Returns (wall, holds).
fn timed_install(dir: &Path, bundle: &Path) -> (Duration, Vec<Duration>) {
    let mut s = Store::open(dir, keys(), support::config()).unwrap();
    let file = std::fs::File::open(bundle).unwrap();
    let mut access = Timed {
        inner: Exclusive {
            store: &mut s,
            now: now(T0),
        },
        holds: Vec::new(),
    };
    let t = Instant::now();
    install_from_reader(
        &mut access,
        std::io::BufReader::with_capacity(1 << 16, file),
    )
    .unwrap();
    (t.elapsed(), access.holds)
}

/// Child mode for (s1): the install alone in a process, so that its peak RSS is the install's.
fn install_child(dir: &Path, bundle: &Path) {
    let (wall, holds) = timed_install(dir, bundle);
    let swap = holds.last().copied().unwrap_or_default();
    let mut staging: Vec<Duration> = holds[..holds.len().saturating_sub(1)].to_vec();
    staging.sort_unstable();
    let longest_chunk = staging.last().copied().unwrap_or_default();
    let p99 = staging
        .get((staging.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(longest_chunk);
    println!(
        "INSTALL {:.3} {:.1} {:.3} {:.3} {} {:.3}",
        wall.as_secs_f64(),
        peak_rss_mb(),
        longest_chunk.as_secs_f64() * 1e3,
        swap.as_secs_f64() * 1e3,
        holds.len(),
        p99.as_secs_f64() * 1e3
    );
}

/// One entry frame: (card ref, op, body, mac).
type RawEntry = ([u8; 32], u8, Vec<u8>, Vec<u8>);

/// The entry frames of a bundle file, without any verification.
fn entries(bundle: &Path) -> Vec<RawEntry> {
    let mut bytes = Vec::new();
    std::fs::File::open(bundle)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let mut pos = 8;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let f = &bytes[pos + 4..pos + 4 + len];
        pos += 4 + len;
        if f[0] != 2 {
            continue;
        }
        let op = f[1];
        let card: [u8; 32] = f[2..34].try_into().unwrap();
        let blen = u32::from_be_bytes(f[34..38].try_into().unwrap()) as usize;
        let body = f[38..38 + blen].to_vec();
        let mac = f[38 + blen..38 + blen + 32].to_vec();
        out.push((card, op, body, mac));
    }
    out
}

fn floor_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "cache_size", -65_536).unwrap();
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        redeemd::store::WAL_AUTOCHECKPOINT_PAGES,
    )
    .unwrap();
    conn
}

fn write_bundle(
    path: &Path,
    kind: BundleKind,
    version: u64,
    prev: u64,
    cards: &[(CardRef, u64, Option<u32>)],
) {
    let k = keys();
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut signer = BundleSigner::new(&k.cache, kind, MERCHANT, version);
    out.write_all(&signer.header()).unwrap();
    for (r, i, wash) in cards {
        let c = wash.map(|w| card(*i, w));
        out.write_all(&signer.entry(r, c.as_ref()).unwrap())
            .unwrap();
    }
    out.write_all(
        &signer
            .finish(
                TERMINAL,
                &["wash".into()],
                prev,
                T0 - HOUR,
                T0 + 10_000 * HOUR,
            )
            .1,
    )
    .unwrap();
    out.flush().unwrap();
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
    std::fs::create_dir_all("target/bench-tmp").unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("sync-")
        .tempdir_in("target/bench-tmp")
        .unwrap();
    let t = Instant::now();
    let refs = sorted_card_refs(n);
    let full = tmp.path().join("full.bundle");
    let all: Vec<(CardRef, u64, Option<u32>)> =
        refs.iter().map(|(r, i)| (*r, *i, Some(20))).collect();
    write_bundle(&full, BundleKind::Full, 1, 0, &all);
    // Deltas: every (n / 1000)-th card, changed; one in ten of them removed. Versions 2.. on the full.
    let step = (n as usize / DELTA_CARDS).max(1);
    let deltas: Vec<std::path::PathBuf> = (0..DELTA_RUNS)
        .map(|run| {
            let cards: Vec<(CardRef, u64, Option<u32>)> = refs
                .iter()
                .skip(run as usize)
                .step_by(step)
                .take(DELTA_CARDS)
                .enumerate()
                .map(|(j, (r, i))| (*r, *i, (j % 10 != 0).then_some(30 + run as u32)))
                .collect();
            let path = tmp.path().join(format!("delta-{run}.bundle"));
            write_bundle(&path, BundleKind::Delta, run + 2, run + 1, &cards);
            path
        })
        .collect();
    eprintln!(
        "bench: {n}-card snapshot ({} MB) and {DELTA_RUNS} deltas of {DELTA_CARDS} signed in {:.1} s",
        std::fs::metadata(&full).unwrap().len() / 1_000_000,
        t.elapsed().as_secs_f64()
    );

    // (s1) the staged install, in a child process.
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--install-child")
        .arg(&state)
        .arg(&full)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("INSTALL "))
        .unwrap_or_else(|| {
            panic!(
                "install child failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let (install_s, rss_mb, longest_ms, swap_ms, holds, p99_ms) =
        (f[0], f[1], f[2], f[3], f[4], f[5]);

    // (s1) floor: the same rows, bare, one transaction, a fresh file on the same disk.
    let rows = entries(&full);
    let floor_db = tmp.path().join("floor.sqlite3");
    let mut conn = floor_connection(&floor_db);
    conn.execute_batch(
        "CREATE TABLE cache_entry (card_ref BLOB PRIMARY KEY, version INTEGER NOT NULL, body BLOB NOT NULL, mac BLOB NOT NULL) WITHOUT ROWID",
    )
    .unwrap();
    let t = Instant::now();
    {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare("INSERT INTO cache_entry (card_ref, version, body, mac) VALUES (?1, ?2, ?3, ?4)")
                .unwrap();
            for (c, _, body, mac) in &rows {
                stmt.execute(params![&c[..], 1i64, body, mac]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let floor_full = t.elapsed().as_secs_f64();
    drop(rows);

    // (s2) deltas into the installed cache, against the bare floor on the floor's table.
    let mut delta_times = Vec::new();
    let mut delta_floors = Vec::new();
    let mut delta_swaps = Vec::new();
    for (run, path) in deltas.iter().enumerate() {
        let (wall, holds) = timed_install(&state, path);
        delta_times.push(wall.as_secs_f64());
        delta_swaps.push(holds.last().copied().unwrap_or_default().as_secs_f64());
        let rows = entries(path);
        let t = Instant::now();
        let tx = conn.transaction().unwrap();
        {
            let mut up = tx
                .prepare_cached("INSERT OR REPLACE INTO cache_entry (card_ref, version, body, mac) VALUES (?1, ?2, ?3, ?4)")
                .unwrap();
            let mut rm = tx
                .prepare_cached("DELETE FROM cache_entry WHERE card_ref = ?1")
                .unwrap();
            for (c, op, body, mac) in &rows {
                if *op == 1 {
                    up.execute(params![&c[..], run as i64 + 2, body, mac])
                        .unwrap();
                } else {
                    rm.execute([&c[..]]).unwrap();
                }
            }
        }
        tx.commit().unwrap();
        delta_floors.push(t.elapsed().as_secs_f64());
    }
    // (s1b) a second full snapshot over the installed one: the swap now frees a full table.
    let full2 = tmp.path().join("full2.bundle");
    write_bundle(&full2, BundleKind::Full, DELTA_RUNS + 10, 0, &all);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--install-child")
        .arg(&state)
        .arg(&full2)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f2: Vec<f64> = text
        .lines()
        .find(|l| l.starts_with("INSTALL "))
        .unwrap_or_else(|| {
            panic!(
                "second install failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (delta, delta_floor, delta_swap) = (
        median(&mut delta_times),
        median(&mut delta_floors),
        median(&mut delta_swaps),
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    println!();
    println!(
        "sync bench: N = {n} cards; {} CPUs ({cpu})",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("| measurement | redeemd | floor | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| (s1) full install of {n} cards | {install_s:.2} s | {floor_full:.2} s | {:.2}× | — |",
        install_s / floor_full
    );
    println!("| (s1) peak RSS of the installing process | {rss_mb:.0} MB | | | |");
    println!(
        "| (s1) store holds while staging ({holds:.0}): p99; longest | {p99_ms:.1} ms; {longest_ms:.1} ms | | | |"
    );
    println!("| (s1) swap transaction (the final hold) | {swap_ms:.1} ms | | | |");
    println!(
        "| (s1b) full install over a {n}-card cache | {:.2} s | {floor_full:.2} s | {:.2}× | — |",
        f2[0],
        f2[0] / floor_full
    );
    println!(
        "| (s1b) its staging holds p99; longest; its swap (drops the old table) | {:.1} ms; {:.1} ms; {:.1} ms | | | |",
        f2[5], f2[2], f2[3]
    );
    println!(
        "| (s2) {DELTA_CARDS}-card delta into the {n}-card cache, median of {DELTA_RUNS} | {:.1} ms | {:.1} ms | {:.2}× | ≤ 1 s |",
        delta * 1e3,
        delta_floor * 1e3,
        delta / delta_floor
    );
    println!(
        "| (s2) the delta's apply transaction (its longest hold) | {:.1} ms | | | |",
        delta_swap * 1e3
    );
}
