//! The daemon end to end (issue 4): the real release `redeemd run` process against simulated
//! readers on pseudo-terminals, measured against the physical floor in the same run.
//!
//! 1. swipe→menu and redeem→approved latency at the reader side (p50/p99), interleaved sample by
//!    sample with the floor, so that noise on this shared machine hits both alike:
//!    * pty floor: the same request bytes written to a fresh pty pair whose other end is a
//!      thread running its own tokio runtime (as the daemon does) that reads them and writes back
//!      the bytes the daemon sends for that request (its ACK-only frame plus the reply frame);
//!      timed at the reader end from the first byte written to the last byte read;
//!    * commit floor: one bare single-row (320-byte) insert in its own WAL transaction with
//!      `synchronous=FULL`, in a database file in the daemon's state directory.
//!
//!    Floor of a swipe = the pty floor alone (a menu deducts nothing; since PROTOCOL.md 1.1 its
//!    answer is stored, with a commit that does not wait for an fsync); floor of a redemption =
//!    pty floor + commit floor, added sample by sample. The swipe is also reported against the
//!    issue's own floor (pty + commit, the one issues 4 and 12 name for both exchanges). Each exchange is
//!    timed twice: around the simulator's call (the reader's encoding, parsing and ACK included)
//!    and on the wire (`SimReader::last_round_trip`: request write → answer read, as the floor).
//! 2. The wire time of those frames at 115,200 and 9,600 baud (8N1), from their real sizes.
//! 3. Idle: both readers linked, heartbeats only, for 60 s: the daemon's RSS (`VmRSS`, `VmHWM`)
//!    and CPU (`utime + stime` of all its threads over the wall time).
//!
//! `cargo bench --bench daemon`; `REDEEMD_BENCH_ROUNDS` (500 swipe+redeem pairs),
//! `REDEEMD_BENCH_IDLE_SECS` (60) and `REDEEMD_BENCH_DAEMON_CARDS` (1,000 cards in the cache)
//! shorten or grow it. Files live under Cargo's `CARGO_TARGET_TMPDIR` (disk-backed, not tmpfs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use firmware_protocol::message::ACK_ONLY_TYPE;
use firmware_protocol::session::wire_time;
use firmware_protocol::{
    CardPresented, EntryMode, Flags, Header, Identity, List, MAX_MESSAGE_LEN, Message, MessageType,
    Redeem, RedeemItem, WIRE_BUF_LEN, encode_frame,
};
use redeemd::simulator::{Line, LineSpec, ReaderSettings, RedeemResult, SimReader, SwipeResult};
use redeemd_contract::Card;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../tests/it/shop.rs"]
#[allow(dead_code)]
mod shop;
/// The integration tests' fixtures: keys, cards, signed bundles.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;
use shop::{BAUD, Daemon, Shop, live_card};

const SLOW_BAUD: u32 = 9_600;
const CASHIER: &str = "cashier-7";
/// Uses of the wash item on every card: plenty for the rounds, and fits the menu's u16.
const WASH_USES: u32 = 60_000;
const WARM_UP: usize = 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `shop::live_card` without the daily cap: the bench redeems one card many times a day.
fn bench_card(i: u64) -> Card {
    let mut card = live_card(i, WASH_USES);
    for p in &mut card.packages {
        p.daily_cap = None;
    }
    card
}

async fn reader(port: &Path, serial: &str) -> SimReader {
    let line = Line::open(&LineSpec::CreatePty, BAUD, Some(port)).unwrap();
    let settings = ReaderSettings {
        serial: serial.into(),
        txn_timeout: Duration::from_secs(10),
        ..ReaderSettings::default()
    };
    let mut r = SimReader::new(line, settings).unwrap();
    r.wait_link_up(Duration::from_secs(15)).await.unwrap();
    r
}

/// Keeps a reader's link alive (heartbeats) in a task until `stop`; hands the reader back.
fn keep_alive(mut r: SimReader, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<SimReader> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            r.idle(Duration::from_millis(200)).await.unwrap();
        }
        r
    })
}

/// One frame as a session puts it on the wire: the leading `0x00`, then COBS(header, payload,
/// CRC) and its terminator. Sequence numbers as on a live link (non-zero); the size does not
/// depend on them.
fn wire_frame(msg_type: u8, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        flags: Flags::ACK,
        seq: 7,
        ack: 7,
        msg_type,
    };
    let mut out = vec![0u8; WIRE_BUF_LEN];
    let len = encode_frame(&header, payload, &mut out[1..]).unwrap();
    out.truncate(1 + len);
    out
}

fn emit(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let len = message.emit(&mut buf).unwrap();
    buf.truncate(len);
    buf
}

/// The bytes of one request and of what the daemon sends back for it.
#[derive(Clone)]
struct Exchange {
    request: Vec<u8>,
    /// ACK-only frame (the daemon acknowledges at once, before the store answers) + reply frame.
    reply: Vec<u8>,
    ack_frame_len: usize,
    reply_frame_len: usize,
}

impl Exchange {
    fn new(request_type: MessageType, request: &[u8], reply: &redeemd::simulator::Reply) -> Self {
        let request = wire_frame(request_type.as_u8(), request);
        let mut bytes = wire_frame(ACK_ONLY_TYPE, &[]);
        let frame = wire_frame(reply.msg_type.as_u8(), &reply.payload);
        let reply_frame_len = frame.len();
        bytes.extend(frame);
        Exchange {
            request,
            ack_frame_len: bytes.len() - reply_frame_len,
            reply: bytes,
            reply_frame_len,
        }
    }
}

/// The other end of the floor's pty: a thread with its own current-thread runtime (as the
/// daemon has) holding the slave, opened as the daemon opens its port. For each exchange in
/// turn it reads the request's length, then writes the reply bytes in one write.
fn spawn_echo(slave: PathBuf, plan: Vec<Exchange>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let builder = tokio_serial::new(slave.to_string_lossy(), BAUD);
            let mut port = tokio_serial::SerialStream::open(&builder).unwrap();
            let mut buf = vec![0u8; 4096];
            for x in plan.iter().cycle() {
                let mut got = 0;
                while got < x.request.len() {
                    match port.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                if port.write_all(&x.reply).await.is_err() {
                    return;
                }
            }
        });
    });
}

/// Reader end of the floor: write the request, read until the reply's bytes are all in.
async fn echo_round_trip(line: &mut Line, x: &Exchange) -> Duration {
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    line.write(&x.request).await.unwrap();
    let mut got = 0;
    while got < x.reply.len() {
        got += line.read(&mut buf).await.unwrap();
    }
    t.elapsed()
}

/// The commit floor: a bare single-row insert, WAL, `synchronous=FULL`.
struct BareCommit {
    conn: rusqlite::Connection,
    body: Vec<u8>,
}

impl BareCommit {
    fn open(path: &Path) -> BareCommit {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, body BLOB)")
            .unwrap();
        BareCommit {
            conn,
            body: vec![0x5A; 320],
        }
    }

    fn commit(&self) -> Duration {
        let t = Instant::now();
        self.conn
            .execute("INSERT INTO floor (body) VALUES (?1)", [&self.body])
            .unwrap();
        t.elapsed()
    }
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `utime + stime` of the whole process (all threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU time of every thread in nanoseconds (`/proc/PID/task/*/schedstat`), finer than ticks,
/// and the context switches (wake-ups) of every thread.
fn cpu_ns_and_switches(pid: u32) -> (u64, u64) {
    let mut ns = 0;
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        if let Ok(s) = std::fs::read_to_string(task.join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(task.join("status")) {
            switches += s
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (ns, switches)
}

fn status_kb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn menu_of(s: SwipeResult) -> redeemd::simulator::Menu {
    match s {
        SwipeResult::Menu(m) => m,
        SwipeResult::Declined(d) => panic!("expected a menu, got {d:?}"),
    }
}

fn approved(r: RedeemResult) {
    if let RedeemResult::Declined(d) = r {
        panic!("expected an approval, got {d:?}");
    }
}

fn main() {
    let rounds: usize = env_or("REDEEMD_BENCH_ROUNDS", 500);
    let idle_secs: u64 = env_or("REDEEMD_BENCH_IDLE_SECS", 60);
    let cards: u64 = env_or("REDEEMD_BENCH_DAEMON_CARDS", 1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(rounds, idle_secs, cards));
}

async fn bench(rounds: usize, idle_secs: u64, cards: u64) {
    let entries: Vec<(u64, Option<Card>)> = (0..cards).map(|i| (i, Some(bench_card(i)))).collect();
    // On the target dir's disk (ext4), not a tmpfs /tmp: the commit floor must hit the same disk.
    let shop = Shop::build(
        Some(Path::new(env!("CARGO_TARGET_TMPDIR"))),
        2,
        "",
        &entries,
    );
    eprintln!(
        "bench: {} ({cards} cards), daemon {}",
        shop.dir.path().display(),
        env!("CARGO_BIN_EXE_redeemd")
    );
    let daemon = Daemon::start(&shop);
    let pid = daemon.pid();
    let rss_at_start = status_kb(pid, "VmRSS");
    let mut r0 = reader(&shop.port(0), "R-BENCH-0").await;
    let r1 = reader(&shop.port(1), "R-BENCH-1").await;
    let stop_r1 = Arc::new(AtomicBool::new(false));
    let r1 = keep_alive(r1, stop_r1.clone());

    // Warm-up (not recorded); its last exchange gives the bytes the floor sends.
    let mut swipe_x = None;
    let mut redeem_x = None;
    for i in 0..WARM_UP {
        let number = support::number(i as u64 % cards);
        menu_of(
            r0.swipe(&number, EntryMode::Magstripe, CASHIER)
                .await
                .unwrap(),
        );
        let txn_id = r0.card_txn().unwrap();
        let request = emit(&Message::CardPresented(CardPresented {
            txn_id,
            entry_mode: EntryMode::Magstripe,
            card: &number,
            cashier_id: CASHIER,
        }));
        swipe_x = Some(Exchange::new(
            MessageType::CardPresented,
            &request,
            r0.last_reply().unwrap(),
        ));
        approved(r0.redeem(&[(0, 1)], None).await.unwrap());
        let lines = [RedeemItem {
            entry_index: 0,
            quantity: 1,
        }];
        let request = emit(&Message::Redeem(Redeem {
            txn_id,
            items: List::new(&lines),
            identity: Identity::NONE,
        }));
        redeem_x = Some(Exchange::new(
            MessageType::Redeem,
            &request,
            r0.last_reply().unwrap(),
        ));
    }
    let (swipe_x, redeem_x) = (swipe_x.unwrap(), redeem_x.unwrap());

    // The floor's pty pair and echo thread, and the bare commit in the state directory.
    let mut floor_line = Line::open(&LineSpec::CreatePty, BAUD, None).unwrap();
    spawn_echo(
        floor_line.slave_path().to_path_buf(),
        vec![swipe_x.clone(), redeem_x.clone()],
    );
    // The echo thread opens the slave; until then the master's reads report nobody there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bare = BareCommit::open(&shop.state.join("bench-floor.sqlite"));
    for _ in 0..WARM_UP {
        echo_round_trip(&mut floor_line, &swipe_x).await;
        echo_round_trip(&mut floor_line, &redeem_x).await;
        bare.commit();
    }

    // Measured rounds, interleaved: swipe, redeem, pty floors, bare commit.
    let mut swipes = Vec::with_capacity(rounds);
    let mut redeems = Vec::with_capacity(rounds);
    let mut pty_swipe = Vec::with_capacity(rounds);
    let mut pty_redeem = Vec::with_capacity(rounds);
    let mut commits = Vec::with_capacity(rounds);
    let mut redeem_floor = Vec::with_capacity(rounds);
    let mut swipe_issue_floor = Vec::with_capacity(rounds);
    let mut swipes_on_wire = Vec::with_capacity(rounds);
    let mut redeems_on_wire = Vec::with_capacity(rounds);
    let mut reply_sizes = (usize::MAX, 0usize, usize::MAX, 0usize);
    let started = Instant::now();
    for i in 0..rounds {
        let number = support::number((WARM_UP + i) as u64 % cards);
        let t = Instant::now();
        let s = r0
            .swipe(&number, EntryMode::Magstripe, CASHIER)
            .await
            .unwrap();
        swipes.push(t.elapsed());
        swipes_on_wire.push(r0.last_round_trip().unwrap());
        menu_of(s);
        let len = r0.last_reply().unwrap().payload.len();
        reply_sizes.0 = reply_sizes.0.min(len);
        reply_sizes.1 = reply_sizes.1.max(len);

        let t = Instant::now();
        let a = r0.redeem(&[(0, 1)], None).await.unwrap();
        redeems.push(t.elapsed());
        redeems_on_wire.push(r0.last_round_trip().unwrap());
        approved(a);
        let len = r0.last_reply().unwrap().payload.len();
        reply_sizes.2 = reply_sizes.2.min(len);
        reply_sizes.3 = reply_sizes.3.max(len);

        let swipe_pty = echo_round_trip(&mut floor_line, &swipe_x).await;
        pty_swipe.push(swipe_pty);
        let redeem_pty = echo_round_trip(&mut floor_line, &redeem_x).await;
        pty_redeem.push(redeem_pty);
        let commit = bare.commit();
        commits.push(commit);
        redeem_floor.push(redeem_pty + commit);
        swipe_issue_floor.push(swipe_pty + commit);
    }
    let measured_for = started.elapsed();

    // Idle: both readers linked, heartbeats only.
    let stop_r0 = Arc::new(AtomicBool::new(false));
    let r0 = keep_alive(r0, stop_r0.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_idle = status_kb(pid, "VmRSS");
    let (ticks0, (ns0, sw0), t0) = (cpu_ticks(pid), cpu_ns_and_switches(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (ticks1, (ns1, sw1), wall) = (cpu_ticks(pid), cpu_ns_and_switches(pid), t0.elapsed());
    let rss = status_kb(pid, "VmRSS");
    let hwm = status_kb(pid, "VmHWM");
    let anon = status_kb(pid, "RssAnon");
    let file = status_kb(pid, "RssFile");
    let threads = status_kb(pid, "Threads");
    stop_r0.store(true, Ordering::Relaxed);
    stop_r1.store(true, Ordering::Relaxed);
    let (_r0, _r1) = (r0.await.unwrap(), r1.await.unwrap());
    let cpu_pct = (ticks1 - ticks0) as f64 / clock_ticks_per_sec() / wall.as_secs_f64() * 100.0;
    let cpu_pct_ns = ns1.saturating_sub(ns0) as f64 / 1e9 / wall.as_secs_f64() * 100.0;
    let wakeups = sw1.saturating_sub(sw0) as f64 / wall.as_secs_f64();
    // The daemon's own view (request delivered → answer written).
    let logged = |kind: &str| -> Vec<f64> {
        let needle = format!("kind=\"{kind}\"");
        let log = daemon.log.lock().unwrap();
        let mut v: Vec<f64> = log
            .iter()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| {
                l.split("latency_ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (daemon_swipe, daemon_redeem) = (logged("swipe"), logged("redeem"));
    drop(daemon);

    // Report.
    let swipes = sorted(swipes);
    let redeems = sorted(redeems);
    let pty_swipe = sorted(pty_swipe);
    let pty_redeem = sorted(pty_redeem);
    let commits = sorted(commits);
    let redeem_floor = sorted(redeem_floor);
    let swipe_issue_floor = sorted(swipe_issue_floor);
    let swipes_on_wire = sorted(swipes_on_wire);
    let redeems_on_wire = sorted(redeems_on_wire);
    println!(
        "\n{rounds} swipe+redeem rounds on one reader (second reader linked, idle), {cards} cards, \
         {:.1} s",
        measured_for.as_secs_f64()
    );
    println!(
        "\n| measurement | p50 µs | p99 µs | floor p50 µs | floor p99 µs | ratio p50 | ratio p99 | target | met |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    let row = |name: &str, v: &[Duration], floor: &[Duration]| {
        let ratio = us(pct(v, 0.5)) / us(pct(floor, 0.5));
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio:.2}× | {:.2}× | ≤ 1.5× p50 | {} |",
            us(pct(v, 0.5)),
            us(pct(v, 0.99)),
            us(pct(floor, 0.5)),
            us(pct(floor, 0.99)),
            us(pct(v, 0.99)) / us(pct(floor, 0.99)),
            if ratio <= 1.5 { "yes" } else { "**no**" }
        );
    };
    row("swipe→menu (floor: pty round trip)", &swipes, &pty_swipe);
    row(
        "swipe→menu on the wire (floor: pty round trip)",
        &swipes_on_wire,
        &pty_swipe,
    );
    row(
        "swipe→menu (the issue's floor: pty round trip + bare commit)",
        &swipes,
        &swipe_issue_floor,
    );
    row(
        "redeem→approved (floor: pty round trip + bare commit)",
        &redeems,
        &redeem_floor,
    );
    row(
        "redeem→approved on the wire (floor: pty round trip + bare commit)",
        &redeems_on_wire,
        &redeem_floor,
    );
    for (name, v) in [("swipe", &daemon_swipe), ("redeem", &daemon_redeem)] {
        if !v.is_empty() {
            println!(
                "| of which in the daemon (its log: delivered → answer written), {name} | {:.0} | {:.0} | | | | | | |",
                1000.0 * v[(v.len() - 1) / 2],
                1000.0 * v[((v.len() - 1) as f64 * 0.99).round() as usize]
            );
        }
    }
    for (name, v) in [
        ("floor: pty round trip, swipe bytes", &pty_swipe),
        ("floor: pty round trip, redeem bytes", &pty_redeem),
        ("floor: bare commit (WAL, synchronous=FULL)", &commits),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | | | | | | |",
            us(pct(v, 0.5)),
            us(pct(v, 0.99))
        );
    }

    println!(
        "\nFrames on the wire (8N1; leading 0x00 included; reply payloads seen: menu {}–{} B, \
         approval {}–{} B):",
        reply_sizes.0, reply_sizes.1, reply_sizes.2, reply_sizes.3
    );
    println!(
        "\n| exchange | request B | ACK B | reply B | total B | wire @ 115,200 | wire @ 9,600 | measured p50 (pty) | p50 over floor, % of wire @ 115,200 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, x, v, floor) in [
        ("swipe→menu", &swipe_x, &swipes, &pty_swipe),
        ("redeem→approved", &redeem_x, &redeems, &redeem_floor),
    ] {
        let total = x.request.len() + x.reply.len();
        let wire = wire_time(total, BAUD);
        let over = pct(v, 0.5).saturating_sub(pct(floor, 0.5));
        println!(
            "| {name} | {} | {} | {} | {total} | {:.2} ms | {:.1} ms | {:.2} ms | {:.1} % |",
            x.request.len(),
            x.ack_frame_len,
            x.reply_frame_len,
            ms(wire),
            ms(wire_time(total, SLOW_BAUD)),
            ms(pct(v, 0.5)),
            100.0 * over.as_secs_f64() / wire.as_secs_f64(),
        );
    }

    println!(
        "\nIdle daemon, two readers linked, heartbeats only, {:.1} s:",
        wall.as_secs_f64()
    );
    println!("\n| measure | value | target | met |");
    println!("| --- | ---: | --- | --- |");
    println!(
        "| RSS (VmRSS) at the end | {:.1} MB | ≤ 20 MB | {} |",
        rss / 1024.0,
        if rss / 1024.0 <= 20.0 {
            "yes"
        } else {
            "**no**"
        }
    );
    println!(
        "| of which anonymous / file-backed | {:.1} / {:.1} MB | | |",
        anon / 1024.0,
        file / 1024.0
    );
    println!(
        "| RSS at start / before idle | {:.1} / {:.1} MB | | |",
        rss_at_start / 1024.0,
        rss_before_idle / 1024.0
    );
    println!(
        "| peak RSS (VmHWM), whole run | {:.1} MB | | |",
        hwm / 1024.0
    );
    println!(
        "| CPU, utime+stime ticks | {cpu_pct:.3} % of one core | ≤ 0.5 % | {} |",
        if cpu_pct <= 0.5 { "yes" } else { "**no**" }
    );
    println!(
        "| CPU, schedstat ns (threads alive at both samples; a thread that exits takes its time with it) | {cpu_pct_ns:.3} % of one core | | |"
    );
    println!("| context switches (all threads) | {wakeups:.1} /s | | |");
    println!("| threads | {threads:.0} | | |");
}
