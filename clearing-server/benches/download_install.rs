//! Full snapshot download + install, end to end with two real processes
//! (`cargo bench -p clearing-server --bench download_install`; `BENCH_CARDS=N`, default 1,000,000;
//! `BENCH_DIR` for the scratch directory, default /tmp).
//!
//! Needs the release binaries next to this bench's target directory (or in `BENCH_BIN_DIR`):
//! `cargo build --release -p clearing-server -p redeemd --bins`.
//!
//! Seeds N cards into a server database (in-process, like the `server` bench), enrolls `T-1` with
//! `clearing-server admin enroll`, starts `clearing-server serve`, and runs `redeemd sync` into an
//! empty terminal store, twice (first contact, then a second empty store: the server computes the
//! terminal's card references for every bundle, so both cost the same to it): time from spawn to exit, peak RSS (`VmHWM`) of both processes. The floors, in
//! the same run and directory: the same bundle fetched by a plain client that drops the bytes (the
//! wire + server side), and a bare SQLite insert of N rows of the installed size into a fresh
//! `cache_entry` table in one transaction (WAL, `synchronous=FULL`, the terminal's page cache).
//! The terminal awaits each install feed before reading on, so the floor is their sum.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clearing_server::storage::{Db, cards};
use redeemd_contract::keys::TerminalSecret;
use support::{Client, bench_cards, now_ms, row, scratch_dir, seed};

/// The release binaries: `BENCH_BIN_DIR`, else `target/release` (this executable is in `…/deps`).
fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("BENCH_BIN_DIR").map_or_else(
        || {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_owned()
        },
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release -p clearing-server -p redeemd --bins` first \
         (same CARGO_TARGET_DIR), or set BENCH_BIN_DIR",
        path.display()
    );
    path
}

/// Peak resident set (`VmHWM`) of a live process, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Kills the server however the bench ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `clearing-server serve` on an ephemeral loopback port; returns it and its base URL.
fn serve(server_bin: &Path, db_path: &Path) -> (Server, String) {
    let key = db_path.with_file_name("master.key");
    let mut child = Command::new(server_bin)
        .env("CLEARING_MASTER_KEY_FILE", &key)
        .arg("--db")
        .arg(db_path)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let server = Server(child);
    let mut line = String::new();
    let base = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "clearing-server exited before listening"
        );
        if let Some((_, url)) = line.trim().split_once("listening on ") {
            break url.to_owned();
        }
    };
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (server, base)
}

/// The terminal's configuration (one dummy reader: configuration requires one, `sync` never opens it).
fn write_config(dir: &Path, state: &str, key_file: &Path, base: &str) -> PathBuf {
    let config = dir.join(format!("{state}.toml"));
    let toml = format!(
        "terminal_id = \"T-1\"\nmerchant_id = \"M-1\"\nstate_dir = \"{}\"\n\
         [key]\nfile = \"{}\"\n\
         [[reader]]\nname = \"counter-0\"\nport = \"{}\"\n\
         [sync]\nserver_url = \"{base}\"\n",
        dir.join(state).display(),
        key_file.display(),
        dir.join("no-reader").display(),
    );
    std::fs::write(&config, toml).unwrap();
    config
}

/// Runs `redeemd sync`, sampling its peak RSS every 20 ms. Returns (time, peak kB, stdout).
fn sync(redeemd_bin: &Path, config: &Path) -> (Duration, u64, String) {
    let t = Instant::now();
    let mut child = Command::new(redeemd_bin)
        .arg("--config")
        .arg(config)
        .arg("sync")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = peak_rss_kb(pid) {
            peak = kb;
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t.elapsed();
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.unwrap().read_to_string(&mut out).unwrap();
    child.stderr.unwrap().read_to_string(&mut err).unwrap();
    assert!(
        status.success(),
        "redeemd sync failed ({status}):\n{out}\n{err}"
    );
    (elapsed, peak, out)
}

/// 32 pseudo-random bytes (card references and MACs are HMAC outputs).
fn pseudo_random(seed: u64) -> [u8; 32] {
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

/// N rows of `body_len` bytes into a fresh `cache_entry` table, one transaction, as the terminal opens it,
/// in ascending card-reference order (a bundle is sorted by card reference, so this is the floor).
fn bare_insert(dir: &Path, n: u64, body_len: usize) -> Duration {
    let path = dir.join("bare-cache.sqlite3");
    let mut c = rusqlite::Connection::open(&path).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.pragma_update(None, "cache_size", -65_536).unwrap();
    c.execute_batch(
        "CREATE TABLE cache_entry (card_ref BLOB PRIMARY KEY, version INTEGER NOT NULL, \
         body BLOB NOT NULL, mac BLOB NOT NULL) WITHOUT ROWID",
    )
    .unwrap();
    let body = vec![0x5a_u8; body_len];
    let mut refs: Vec<[u8; 32]> = (0..n).map(|i| pseudo_random(2 * i)).collect();
    refs.sort_unstable();
    let t = Instant::now();
    let tx = c.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO cache_entry (card_ref, version, body, mac) VALUES (?1, 1, ?2, ?3)",
            )
            .unwrap();
        for (i, card_ref) in (0u64..).zip(&refs) {
            stmt.execute(rusqlite::params![
                &card_ref[..],
                &body,
                &pseudo_random(2 * i + 1)[..]
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    t.elapsed()
}

fn main() {
    let n = bench_cards();
    let (server_bin, redeemd_bin) = (bin("clearing-server"), bin("redeemd"));
    let dir = scratch_dir();
    let db_path = dir.path().join("clearing.sqlite3");

    // The server's database: a car-wash merchant that sees all N seeded cards, and terminal T-1.
    let seeded = {
        let db = Db::open(&db_path.display().to_string()).unwrap();
        db.write(|tx| {
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
        seed(&db, n)
    };
    let key_file = dir.path().join("terminal.key");
    let enroll = Command::new(&server_bin)
        .env(
            "CLEARING_MASTER_KEY_FILE",
            support::master_key_file(dir.path()),
        )
        .arg("--db")
        .arg(&db_path)
        .args(["admin", "enroll", "--terminal", "T-1", "--merchant", "M-1"])
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        enroll.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&enroll.stderr)
    );

    let (mut server, base) = serve(&server_bin, &db_path);
    // First contact, then the same into a second empty store (the terminal's steady cost, e.g. a
    // reinstalled PC).
    let mut runs = Vec::new();
    for state in ["terminal-state", "terminal-state-2"] {
        let config = write_config(dir.path(), state, &key_file, &base);
        let (time, peak_kb, out) = sync(&redeemd_bin, &config);
        let installed = out
            .lines()
            .find(|l| l.starts_with("entitlements"))
            .unwrap_or_default()
            .to_owned();
        assert!(
            installed.contains("installed version")
                && installed.contains(&format!(" {n} entries written")),
            "expected {n} entries installed:\n{out}"
        );
        runs.push((time, peak_kb, installed));
    }
    let server_peak_kb = peak_rss_kb(server.0.id()).unwrap();
    let installed = runs[0].2.clone();

    // What the terminal installed: entry count and mean body size, for the bare insert.
    let state_db = dir.path().join("terminal-state").join("redeemd.sqlite3");
    let (entries, body_len, terminal_mb) = {
        let c = rusqlite::Connection::open_with_flags(
            &state_db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let (count, avg): (i64, f64) = c
            .query_row(
                "SELECT count(*), avg(length(body)) FROM cache_entry",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let mb = std::fs::metadata(&state_db).unwrap().len() as f64 / 1e6;
        (count as u64, avg.round() as usize, mb)
    };
    assert_eq!(entries, n, "every card in the terminal's cache");

    // Floor 1: the same bundle (same Accept-Encoding as the terminal), read and dropped: the server +
    // wire cost.
    let keys = TerminalSecret::from_hex_text(&std::fs::read_to_string(&key_file).unwrap())
        .unwrap()
        .derive_all("T-1");
    let mut client = Client {
        base,
        keys,
        http: reqwest::Client::new(),
        nonce: 0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let (wire_bytes, kind, _) = rt.block_on(client.bundle(0, Some("zstd, gzip")));
    let download = t.elapsed();
    assert_eq!(kind, "full");
    drop(client);
    drop(rt);
    let _ = server.0.kill();

    // Floor 2: bare insert of N rows of the installed size.
    let insert = bare_insert(dir.path(), n, body_len);

    let floor = download.as_secs_f64() + insert.as_secs_f64();
    println!("| measure | figure | notes |");
    println!("|---|---|---|");
    for (i, (time, peak_kb, _)) in runs.iter().enumerate() {
        let s = time.as_secs_f64();
        row(
            &format!(
                "`redeemd sync`, {n} cards into an empty store, {}",
                ["first request for T-1", "second store"][i]
            ),
            format!("{s:.2} s"),
            format!(
                "{:.0} cards/s, spawn to exit; {:.2}x the floor",
                n as f64 / s,
                s / floor
            ),
        );
        row(
            &format!("peak RSS, `redeemd sync` ({})", ["first", "second"][i]),
            format!("{:.0} MB", *peak_kb as f64 / 1024.0),
            "VmHWM sampled every 20 ms".into(),
        );
    }
    row(
        "peak RSS, `clearing-server serve`",
        format!("{:.0} MB", server_peak_kb as f64 / 1024.0),
        format!(
            "VmHWM after both syncs; database {:.0} MB",
            std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
        ),
    );
    row(
        "floor: plain GET of the same bundle, bytes dropped",
        format!("{:.2} s", download.as_secs_f64()),
        format!(
            "{:.1} MB on the wire (zstd), after the syncs",
            wire_bytes as f64 / 1e6
        ),
    );
    row(
        &format!("floor: bare SQLite insert, {n} rows of 32 + {body_len} + 32 B"),
        format!("{:.2} s", insert.as_secs_f64()),
        "ascending card refs (as in a bundle), one transaction, fresh file, WAL, synchronous=FULL"
            .into(),
    );
    row(
        "floor: GET + bare insert",
        format!("{floor:.2} s"),
        "the sum: the terminal awaits each install feed before reading on (socket buffers and the server overlap a little)".into(),
    );
    println!();
    println!(
        "seeded in {:.1} s; terminal database {terminal_mb:.0} MB; {installed}",
        seeded.as_secs_f64()
    );
}
