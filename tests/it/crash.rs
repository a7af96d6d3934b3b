//! Crash test with a real process: a child redeems in a loop on a real SQLite file and reports each
//! approval on its stdout only after `redeem` returned; the parent SIGKILLs it at random moments
//! (deterministic seed), restarts it, and checks after every kill that every reported approval is in
//! the journal, no (reader, transaction id) appears twice, the chain verifies, and local usage equals
//! the fold of the journal. The child is this test binary re-executed in child mode (`crash_child`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redeemd::store::{Decision, MenuOutcome, Store, verify};
use redeemd_contract::snapshot::BundleKind;

use crate::support::*;

const CARDS: u64 = 20;
const WASH: u32 = 1_000_000;
const CHILD_ENV: &str = "REDEEMD_CRASH_CHILD";

/// One redemption attempt as the child announces it: enough to resend it identically.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt {
    reader: String,
    txn: u64,
    card: u64,
    qty: u64,
    wall: i64,
}

impl Attempt {
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.reader, self.txn, self.card, self.qty, self.wall
        )
    }
    fn parse(s: &str) -> Option<Self> {
        let f: Vec<&str> = s.split(' ').collect();
        match f[..] {
            [reader, txn, card, qty, wall] => Some(Attempt {
                reader: reader.into(),
                txn: txn.parse().ok()?,
                card: card.parse().ok()?,
                qty: qty.parse().ok()?,
                wall: wall.parse().ok()?,
            }),
            _ => None,
        }
    }
    fn run(&self, s: &mut Store) -> Option<(String, u64)> {
        let o = redeem(
            s,
            &self.reader,
            self.txn,
            self.card,
            &[(0, self.qty)],
            self.wall,
        );
        match o.decision {
            Some(Decision::Redeemed(a)) => Some((a.auth_code, a.first_seq)),
            // A replay: take the approval's code from the journal.
            None => s
                .connection()
                .query_row("SELECT auth_code, seq FROM journal WHERE reader_id = ?1 AND reader_txn_id = ?2 AND line = 0", rusqlite::params![self.reader, self.txn as i64], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                })
                .ok(),
            Some(_) => None,
        }
    }
}

/// Child mode: does nothing unless started by the crash test.
#[test]
#[ignore = "child process of crash::sigkill_at_random_moments_loses_no_approval"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let generation: u64 = std::env::var("REDEEMD_CRASH_GEN").unwrap().parse().unwrap();
    let mut s = Store::open(Path::new(&dir), keys(), config()).unwrap();
    let mut out = std::io::stdout().lock();
    // First resend the request that was in flight when the previous child died, unchanged.
    if let Some(a) = std::env::var("REDEEMD_CRASH_REPLAY")
        .ok()
        .as_deref()
        .and_then(Attempt::parse)
        && let Some((code, seq)) = a.run(&mut s)
    {
        writeln!(out, "OK {} {code} {seq}", a.line()).unwrap();
    }
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut rng = Rng(0x1234_5678 ^ (generation + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for txn in 1u64.. {
        let a = Attempt {
            reader: format!("crash-{generation}"),
            txn,
            card: rng.next() % CARDS,
            qty: 1 + rng.next() % 3,
            wall: T0 + generation as i64 * 60_000 + txn as i64,
        };
        writeln!(out, "TRY {}", a.line()).unwrap();
        out.flush().unwrap();
        if let Some((code, seq)) = a.run(&mut s) {
            writeln!(out, "OK {} {code} {seq}", a.line()).unwrap();
            out.flush().unwrap();
        }
    }
}

/// Checks the database against everything the children reported so far.
fn check(dir: &Path, reported: &[(Attempt, String, u64)], new_from: usize) {
    let mut s = Store::open(dir, keys(), config()).unwrap();
    let conn = s.connection();
    let report = verify::journal(conn, &keys()).unwrap();
    assert!(
        report.is_clean(),
        "chain or usage anchors broken: {:?}",
        report.findings
    );
    for (a, code, seq) in &reported[new_from..] {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM journal WHERE seq = ?1 AND reader_id = ?2 AND reader_txn_id = ?3 AND auth_code = ?4 AND quantity = ?5",
                rusqlite::params![*seq as i64, a.reader, a.txn as i64, code, a.qty as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            n, 1,
            "reported approval {a:?} (seq {seq}) missing from the journal"
        );
    }
    let dup: Option<(String, i64)> = conn
        .query_row("SELECT reader_id, reader_txn_id FROM journal WHERE kind = 1 AND line = 0 GROUP BY 1, 2 HAVING count(*) > 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .ok();
    assert_eq!(dup, None, "a transaction id was redeemed twice");
    // Local usage equals the fold of the journal, as the engine sees it.
    for card in 0..CARDS {
        let used: i64 = s
            .connection()
            .query_row(
                "SELECT coalesce(sum(quantity), 0) FROM journal WHERE card_ref = ?1",
                [&card_ref(card).0[..]],
                |r| r.get(0),
            )
            .unwrap();
        let last_wall: i64 = s
            .connection()
            .query_row(
                "SELECT coalesce(max(wall_ms), ?1) FROM journal",
                [T0],
                |r| r.get(0),
            )
            .unwrap();
        match s.menu(&number(card), now(last_wall)).unwrap() {
            MenuOutcome::Menu(m) => assert_eq!(
                i64::from(m.entries[0].uses_left),
                i64::from(WASH) - used,
                "card {card}"
            ),
            MenuOutcome::Declined(d) => panic!("card {card}: {d:?}"),
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_approval() {
    let kills: u64 = std::env::var("REDEEMD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        let cards: Vec<(u64, Option<redeemd_contract::Card>)> =
            (0..CARDS).map(|i| (i, Some(card(i, WASH)))).collect();
        s.install_bundle(
            &bundle(BundleKind::Full, 1, 0, &cards, T0 + 1000 * HOUR)[..],
            now(T0),
        )
        .unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0xC0FF_EE00_D15E_A5E5);
    let mut reported: Vec<(Attempt, String, u64)> = Vec::new();
    let mut in_flight: Option<Attempt> = None;
    let (mut before_ready, mut replays) = (0u64, 0u64);
    let started = Instant::now();
    for generation in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(CHILD_ENV, dir.path())
            .env("REDEEMD_CRASH_GEN", generation.to_string())
            .env(
                "REDEEMD_CRASH_REPLAY",
                in_flight.as_ref().map(Attempt::line).unwrap_or_default(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                // Only complete lines count: a line cut by the kill was never fully reported.
                while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                    if buf.ends_with(b"\n") {
                        lines
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned());
                    }
                    buf.clear();
                }
            })
        };
        // One kill in ten lands during start-up and recovery; the others after 0–15 ms of redeeming.
        let early = rng.next().is_multiple_of(10);
        let delay = Duration::from_micros(rng.next() % 15_000);
        if early {
            std::thread::sleep(Duration::from_micros(rng.next() % 3_000));
            before_ready += 1;
        } else {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !lines.lock().unwrap().iter().any(|l| l == "READY") {
                assert!(
                    Instant::now() < deadline,
                    "child {generation} never became ready"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(delay);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let new_from = reported.len();
        let lines = lines.lock().unwrap();
        let mut last_try = None;
        for l in lines.iter() {
            if let Some(rest) = l.strip_prefix("TRY ") {
                last_try = Attempt::parse(rest);
            } else if let Some(rest) = l.strip_prefix("OK ") {
                let f: Vec<&str> = rest.rsplitn(3, ' ').collect();
                let (seq, code, attempt) = (
                    f[0].parse().unwrap(),
                    f[1].to_owned(),
                    Attempt::parse(f[2]).unwrap(),
                );
                if in_flight.as_ref() == Some(&attempt) {
                    replays += 1;
                }
                if last_try.as_ref() == Some(&attempt) {
                    last_try = None;
                }
                // A replayed in-flight request that had committed before the kill is reported twice
                // across generations with the same seq: keep one.
                if !reported.iter().any(|(a, _, s)| a == &attempt && *s == seq) {
                    reported.push((attempt, code, seq));
                }
            }
        }
        // An in-flight request carries over until a child gets to resend it.
        if last_try.is_some() || lines.iter().any(|l| l == "READY") {
            in_flight = last_try;
        }
        drop(lines);
        check(dir.path(), &reported, new_from);
    }
    check(dir.path(), &reported, 0);
    let s = open(dir.path());
    eprintln!(
        "crash test: {kills} kills ({before_ready} during start-up), {} approvals reported, {} journal rows, {replays} in-flight replays, {:.1} s",
        reported.len(),
        journal_rows(&s),
        started.elapsed().as_secs_f64()
    );
    assert!(
        reported.len() as u64 > kills,
        "too few approvals to mean anything"
    );
}
