//! The real `redeemd run` process against simulated readers on pseudo-terminals.
//!
//! Each test lays out a shop in a temp dir (config, key file, a signed cache installed through
//! the store), starts the daemon binary, and drives one or two [`SimReader`]s — the same reader
//! code `redeemd simulate-reader` runs — over real ptys. Reader ports are symlinks, as udev makes
//! them, so an unplugged reader comes back on a new pty behind the same path.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firmware_protocol::message::{DeclineReason as Wire, EntryMode, IdentityCheck, VoidReason};
use redeemd::engine::DeclineReason;
use redeemd::simulator::reader::identity;
use redeemd::simulator::{
    Answer, Line, LineSpec, ReaderSettings, RedeemResult, SimReader, SwipeResult,
};
use redeemd_contract::{Card, CardStatus};

use crate::shop::{BAUD, Daemon, Shop, live_card, wall_now};
use crate::support::{self, HOUR};

const LINK_UP: Duration = Duration::from_secs(15);

/// Card numbers of the shop's fixtures.
pub const CARD_TWO_PACKAGES: u64 = 1;
pub const CARD_LOST: u64 = 2;
const CARD_EXHAUSTED_EXPIRED: u64 = 3;
const CARD_LAST_USE: u64 = 4;

pub fn shop_cards() -> Vec<(u64, Option<Card>)> {
    let two = live_card(CARD_TWO_PACKAGES, 10);
    let mut lost = live_card(CARD_LOST, 10);
    lost.status = CardStatus::Lost;
    // Wash used up, wax still there; the oil package ended an hour ago.
    let mut worn = live_card(CARD_EXHAUSTED_EXPIRED, 10);
    worn.packages[0].items[0].uses_left = 0;
    worn.packages[1].valid_until_ms = wall_now() - HOUR;
    let last = live_card(CARD_LAST_USE, 1);
    vec![
        (CARD_TWO_PACKAGES, Some(two)),
        (CARD_LOST, Some(lost)),
        (CARD_EXHAUSTED_EXPIRED, Some(worn)),
        (CARD_LAST_USE, Some(last)),
    ]
}

/// A shop with the fixtures' cards (see [`shop_cards`]).
pub fn shop(readers: usize, extra: &str) -> Shop {
    Shop::build(None, readers, extra, &shop_cards())
}

pub async fn reader(shop: &Shop, i: usize, serial: &str) -> SimReader {
    let line = Line::open(&LineSpec::CreatePty, BAUD, Some(&shop.port(i))).unwrap();
    let settings = ReaderSettings {
        serial: serial.into(),
        next_txn_id: 100,
        txn_timeout: Duration::from_secs(10),
        ..ReaderSettings::default()
    };
    let mut r = SimReader::new(line, settings).unwrap();
    r.wait_link_up(LINK_UP).await.unwrap();
    r
}

pub async fn swipe(r: &mut SimReader, card: u64) -> SwipeResult {
    r.swipe(&support::number(card), EntryMode::Magstripe, "cashier-7")
        .await
        .unwrap()
}

pub fn menu(s: SwipeResult) -> redeemd::simulator::Menu {
    match s {
        SwipeResult::Menu(m) => m,
        SwipeResult::Declined(d) => panic!("expected a menu, got {d:?}"),
    }
}

pub fn approved(r: RedeemResult) -> redeemd::simulator::Approval {
    match r {
        RedeemResult::Approved(a) => a,
        RedeemResult::Declined(d) => panic!("expected an approval, got {d:?}"),
    }
}

pub fn declined(r: RedeemResult) -> Wire {
    match r {
        RedeemResult::Declined(d) => d.reason,
        RedeemResult::Approved(a) => panic!("expected a decline, got {a:?}"),
    }
}

pub fn wire(reason: DeclineReason) -> Wire {
    Wire(reason.code())
}

fn uses_left(m: &redeemd::simulator::Menu, index: u8) -> Option<u16> {
    m.entries
        .iter()
        .find(|e| e.index == index)
        .map(|e| e.uses_left)
}

#[tokio::test(flavor = "current_thread")]
async fn menu_redeem_and_receipt_for_a_card_with_two_packages() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-A").await;

    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(m.entries.len(), 3, "{m:?}");
    assert_eq!(m.holder, "张*");
    assert!(m.masked_card.contains('*') && !m.masked_card.contains(&support::number(1)));
    assert_eq!(
        (uses_left(&m, 0), uses_left(&m, 1), uses_left(&m, 2)),
        (Some(10), Some(2), Some(3))
    );
    assert_eq!(m.entries[2].identity, IdentityCheck::PhoneLast4);

    let a = approved(r.redeem(&[(0, 2)], None).await.unwrap());
    assert_eq!(a.uses_left, vec![(0, 8)]);
    let receipt = a.receipt.join("\n");
    assert!(receipt.contains("精洗 x2"), "{receipt}");
    assert!(receipt.contains("剩余 8 次"), "{receipt}");
    assert!(receipt.contains(&a.auth_code), "{receipt}");

    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(uses_left(&m, 0), Some(8));
    // One line per transaction outcome, with reader, txn and latency; no card number.
    daemon.wait_log("approved auth", Duration::from_secs(5));
    let log = daemon.log_text();
    assert!(log.contains("latency_ms"), "{log}");
    assert!(
        !log.contains(&support::number(CARD_TWO_PACKAGES)),
        "card number in the log"
    );

    // `redeemd status`, a separate process, sees the link and the last transaction (published a
    // moment after the answer, off the cashier's path).
    let txn = r.card_txn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while redeemd::daemon::status::read(&shop.state)
        .ok()
        .and_then(|s| s.readers.get("counter-0")?.last_transaction.clone())
        .is_none_or(|t| t.txn_id != txn || t.kind != "swipe")
    {
        assert!(Instant::now() < deadline, "status never showed swipe {txn}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = shop.redeemd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("reader counter-0: link up"), "{text}");
    assert!(text.contains("serial R-A"), "{text}");
    assert!(text.contains("last txn     swipe"), "{text}");
    assert!(text.contains("cache          version 1"), "{text}");
    assert!(text.contains("journal        head seq 1"), "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn lost_exhausted_and_expired_cards_are_declined_with_the_reason() {
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-B").await;

    match swipe(&mut r, CARD_LOST).await {
        SwipeResult::Declined(d) => {
            assert_eq!(d.reason, wire(DeclineReason::CardLost));
            assert_eq!(d.text, "卡片已挂失");
        }
        other => panic!("lost card not declined: {other:?}"),
    }

    // Wash used up and the oil package expired: only wax is offered, and wash cannot be redeemed.
    let m = menu(swipe(&mut r, CARD_EXHAUSTED_EXPIRED).await);
    let indexes: Vec<u8> = m.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, vec![1], "{m:?}");
    let reason = declined(r.redeem(&[(0, 1)], None).await.unwrap());
    assert!(
        [
            wire(DeclineReason::InsufficientUses),
            wire(DeclineReason::UnknownEntry)
        ]
        .contains(&reason),
        "{reason:?}"
    );
    menu(swipe(&mut r, CARD_EXHAUSTED_EXPIRED).await);
    let reason = declined(r.redeem(&[(2, 1)], None).await.unwrap());
    assert_eq!(reason, declined_again(&mut r).await);
    assert!(
        [
            wire(DeclineReason::Expired),
            wire(DeclineReason::UnknownEntry)
        ]
        .contains(&reason),
        "{reason:?}"
    );
}

/// The stored answer of the last REDEEM, asked again: the same decline.
async fn declined_again(r: &mut SimReader) -> Wire {
    match r.redeem_again().await.unwrap().answer {
        Answer::Declined(d) => d.reason,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_named_card_asks_for_identity() {
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-C").await;

    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let reason = declined(r.redeem(&[(2, 1)], None).await.unwrap());
    assert_eq!(reason, wire(DeclineReason::IdentityRequired));

    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let wrong = identity(IdentityCheck::PhoneLast4, "9999");
    let reason = declined(r.redeem(&[(2, 1)], Some(wrong)).await.unwrap());
    assert_eq!(reason, wire(DeclineReason::IdentityWrong));

    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let right = identity(IdentityCheck::PhoneLast4, "1234");
    let a = approved(r.redeem(&[(2, 1)], Some(right)).await.unwrap());
    assert_eq!(a.uses_left, vec![(2, 2)]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_repeated_redeem_and_a_reboot_get_the_stored_answer_and_deduct_once() {
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-D").await;

    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let first = approved(r.redeem(&[(1, 1)], None).await.unwrap());
    // The reader was not sure its REDEEM arrived and sends it again, same txn id.
    let again = r.redeem_again().await.unwrap();
    assert_eq!(
        again.payload, first.payload,
        "retransmitted REDEEM: not byte-identical"
    );

    // The reader reboots (new boot nonce) and asks for its last transaction.
    r.reboot(LINK_UP).await.unwrap();
    let last = r.query_last().await.unwrap();
    assert_eq!(
        last.payload, first.payload,
        "QUERY LAST after reboot: not byte-identical"
    );
    let by_id = r.query(first.txn_id).await.unwrap();
    assert_eq!(by_id.payload, first.payload);

    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(uses_left(&m, 1), Some(1), "wax deducted more than once");
}

#[tokio::test(flavor = "current_thread")]
async fn query_last_with_nothing_to_report_names_no_transaction() {
    // PROTOCOL.md §5.15: DECLINED TXN_UNKNOWN carries the queried txn id; for LAST that is 0.
    // Any other id would tell the reader that one of its own transactions is unknown.
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-Q").await;
    let last = r.query_last().await.unwrap();
    let Answer::Declined(d) = &last.answer else {
        panic!("expected DECLINED, got {:?}", last.answer)
    };
    assert_eq!(d.reason, Wire::TXN_UNKNOWN);
    assert_eq!(d.txn_id, 0, "QUERY LAST answered about txn {}", d.txn_id);
}

#[tokio::test(flavor = "current_thread")]
async fn query_last_answers_the_last_transaction_even_after_other_queries() {
    // A QUERY is not a transaction: asking about another txn must not change what LAST means.
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-L").await;
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let older = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let latest = approved(r.redeem(&[(1, 1)], None).await.unwrap());

    let unknown = r.query(latest.txn_id + 50).await.unwrap();
    assert!(matches!(&unknown.answer, Answer::Declined(d) if d.reason == Wire::TXN_UNKNOWN));
    let last = r.query_last().await.unwrap();
    assert_eq!(
        last.payload, latest.payload,
        "QUERY LAST after a QUERY of an unknown txn"
    );

    let by_id = r.query(older.txn_id).await.unwrap();
    assert_eq!(by_id.payload, older.payload);
    let last = r.query_last().await.unwrap();
    assert_eq!(
        last.payload, latest.payload,
        "QUERY LAST after a QUERY of an older txn"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn void_within_the_window_restores_uses_and_after_it_is_refused() {
    let shop = shop(1, "[void]\nwindow_secs = 3\n");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-E").await;

    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let a = approved(r.redeem(&[(0, 3)], None).await.unwrap());
    let v = approved(
        r.void(&a.auth_code, VoidReason::CashierError)
            .await
            .unwrap(),
    );
    assert!(
        v.receipt.join("\n").contains(&a.auth_code),
        "{:?}",
        v.receipt
    );
    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(uses_left(&m, 0), Some(10), "void did not restore the uses");
    let again = declined(
        r.void(&a.auth_code, VoidReason::CashierError)
            .await
            .unwrap(),
    );
    assert_eq!(again, wire(DeclineReason::AlreadyVoided));

    let b = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let late = declined(
        r.void(&b.auth_code, VoidReason::CashierError)
            .await
            .unwrap(),
    );
    assert_eq!(late, wire(DeclineReason::VoidWindowPassed));
    let unknown = declined(r.void("00000099", VoidReason::Other).await.unwrap());
    assert_eq!(unknown, wire(DeclineReason::UnknownAuthCode));
}

#[tokio::test(flavor = "current_thread")]
async fn noise_mid_frame_and_an_unplugged_cable_are_survived() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-F").await;

    r.inject_torn_frame(&[0x13, 0x37, 0xFF, 0x42])
        .await
        .unwrap();
    r.inject_noise(&[0x55; 300]).await.unwrap();
    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(uses_left(&m, 0), Some(10));

    r.unplug().unwrap();
    daemon.wait_log("port closed; reopening", Duration::from_secs(10));
    r.replug().unwrap();
    r.wait_link_up(LINK_UP).await.unwrap();
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let a = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    assert_eq!(a.uses_left, vec![(0, 9)]);
}

#[tokio::test(flavor = "current_thread")]
async fn two_readers_racing_for_the_last_use_get_one_approval() {
    let shop = shop(2, "");
    let _daemon = Daemon::start(&shop);
    let mut a = reader(&shop, 0, "R-G1").await;
    let mut b = reader(&shop, 1, "R-G2").await;

    assert_eq!(
        uses_left(&menu(swipe(&mut a, CARD_LAST_USE).await), 0),
        Some(1)
    );
    assert_eq!(
        uses_left(&menu(swipe(&mut b, CARD_LAST_USE).await), 0),
        Some(1)
    );
    let (ra, rb) = tokio::join!(a.redeem(&[(0, 1)], None), b.redeem(&[(0, 1)], None));
    let results = [ra.unwrap(), rb.unwrap()];
    let approvals = results
        .iter()
        .filter(|r| matches!(r, RedeemResult::Approved(_)))
        .count();
    assert_eq!(approvals, 1, "{results:?}");
    let refusal = results.iter().find_map(|r| match r {
        RedeemResult::Declined(d) => Some(d.reason),
        RedeemResult::Approved(_) => None,
    });
    assert_eq!(refusal, Some(wire(DeclineReason::InsufficientUses)));
}

pub fn run_to_exit(shop: &Shop, args: &[&str]) -> (i32, String) {
    let out = shop.redeemd().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_exits_64_naming_the_key() {
    let shop = shop(1, "");
    let text = std::fs::read_to_string(&shop.config).unwrap();
    std::fs::write(&shop.config, text.replace("baud = 115200", "baud = 115201")).unwrap();
    let (code, err) = run_to_exit(&shop, &["run"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("reader[0].baud: 115201 is not one of"),
        "{err}"
    );
    let (code, err) = run_to_exit(&shop, &["check-config"]);
    assert_eq!(code, 64, "{err}");

    std::fs::write(&shop.config, "terminal_id = \"T\"\n").unwrap();
    let (code, err) = run_to_exit(&shop, &["run"]);
    assert_eq!(code, 64);
    assert!(err.contains("merchant_id"), "{err}");
}

#[test]
fn a_loose_key_file_is_refused_with_the_fix() {
    let shop = shop(1, "");
    let key = shop.dir.path().join("terminal.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run_to_exit(&shop, &["run"]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn a_missing_port_is_logged_once_and_retried() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    daemon.wait_log("cannot open port; retrying", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let log = daemon.log_text();
    let complaints = log.matches("cannot open port").count();
    assert_eq!(
        complaints, 1,
        "the same failure is logged once, not per retry:\n{log}"
    );
    assert!(log.contains(&shop.port(0).display().to_string()), "{log}");
    // It keeps running (and retrying) rather than exiting.
    let mut d = daemon;
    assert!(d.child.try_wait().unwrap().is_none());
    let status = redeemd::daemon::status::read(&shop.state).unwrap();
    assert_eq!(status.readers["counter-0"].state, "port error");
    // The journal checked at start (empty here) is reported clean.
    assert_eq!(status.journal_check.as_deref(), Some("clean (0 rows)"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_gb18030_reader_gets_chinese_texts_it_can_show() {
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let line = Line::open(&LineSpec::CreatePty, BAUD, Some(&shop.port(0))).unwrap();
    let settings = ReaderSettings {
        serial: "R-GBK".into(),
        encodings: firmware_protocol::message::Encodings::GB18030,
        ..ReaderSettings::default()
    };
    let mut r = SimReader::new(line, settings).unwrap();
    r.wait_link_up(LINK_UP).await.unwrap();
    assert_eq!(
        r.link_info().unwrap().encoding,
        firmware_protocol::message::TextEncoding::Gb18030
    );
    match swipe(&mut r, CARD_LOST).await {
        SwipeResult::Declined(d) => assert_eq!(d.text, "卡片已挂失"),
        other => panic!("{other:?}"),
    }
    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(m.entries[0].title, "精洗");
    let a = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    assert!(
        a.receipt.join("\n").contains("剩余 9 次"),
        "{:?}",
        a.receipt
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_garbage_flood_leaves_memory_flat_and_the_link_usable() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-FLOOD").await;
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let before = rss_kib(daemon.pid());

    // 4 MiB of line noise: pseudo-random bytes with frame delimiters sprinkled in.
    let mut rng = support::Rng(0x9E37_79B9_7F4A_7C15);
    let mut chunk = vec![0u8; 64 * 1024];
    for _ in 0..64 {
        for b in &mut chunk {
            *b = rng.next() as u8;
        }
        r.inject_noise(&chunk).await.unwrap();
    }
    // The reader relinks if the flood took the link down; then business as usual.
    r.wait_link_up(LINK_UP).await.unwrap();
    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(uses_left(&m, 0), Some(10));
    let after = rss_kib(daemon.pid());
    assert!(
        after < before + 2048,
        "RSS grew from {before} KiB to {after} KiB under a garbage flood"
    );
}

/// `redeemd simulate-reader` on a new pty behind the shop's reader port 0, as reader `serial`.
pub fn simulate_reader(shop: &Shop, serial: &str) -> Command {
    let mut c = shop.redeemd();
    c.arg("simulate-reader")
        .arg("--pty")
        .arg("--link")
        .arg(shop.port(0))
        .args(["--serial", serial, "--connect-timeout", "20"]);
    c
}

/// Every shipped scenario, played by `redeemd simulate-reader --script` (a second real process)
/// against the daemon: the CLI a technician runs, end to end.
#[test]
fn shipped_scenarios_pass_against_the_daemon() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "scenario"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let shop = shop(1, "");
        let daemon = Daemon::start(&shop);
        let out = simulate_reader(&shop, "SCENARIO")
            .arg("--script")
            .arg(&file)
            .output()
            .unwrap();
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: exit {:?}\n{transcript}\n{}\ndaemon:\n{}",
            file.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
        assert!(transcript.contains("link up"), "{transcript}");
        if std::env::var_os("SHOW_TRANSCRIPT").is_some() {
            eprintln!("{transcript}");
        }
    }
}

/// `redeemd simulate-reader --conformance` (PROTOCOL.md §11.1) against the real daemon, twice: the
/// second run continues its txn ids after the first's (QUERY LAST) and the card ends as it began.
/// The first run makes the daemon's store busy for the flows that need it (`--busy-store`); the
/// second skips them.
#[test]
fn the_conformance_flows_pass_against_the_daemon_twice_in_a_row() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let flows = firmware_protocol::conformance::flows();
    let busy = flows.iter().filter(|f| f.needs_busy_store()).count();
    assert_eq!(busy, 2);
    for run in 1..=2 {
        let mut command = simulate_reader(&shop, "CONFORMANCE");
        command
            .args(["--conformance", "--card"])
            .arg(support::number(CARD_TWO_PACKAGES));
        if run == 1 {
            command.arg("--busy-store").arg(&shop.state);
        }
        let out = command.output().unwrap();
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: exit {:?}\n{transcript}\n{}\ndaemon:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
        let count = |prefix: &str| transcript.lines().filter(|l| l.starts_with(prefix)).count();
        let skipped = if run == 1 { 0 } else { busy };
        assert_eq!(count("PASS §"), flows.len() - skipped, "{transcript}");
        assert_eq!(count("SKIP §"), skipped, "{transcript}");
        assert!(!transcript.contains("FAIL"), "{transcript}");
        if run == 2 {
            assert!(
                transcript.contains("the daemon's latest transaction of this reader is"),
                "{transcript}"
            );
        }
    }
    // Every redemption the flows made was voided: the card is as it was.
    let mut store =
        redeemd::store::Store::open(&shop.state, support::keys(), support::config()).unwrap();
    let shown = match store
        .menu(
            &support::number(CARD_TWO_PACKAGES),
            support::now(wall_now()),
        )
        .unwrap()
    {
        redeemd::store::MenuOutcome::Menu(m) => m.entries[0].uses_left,
        redeemd::store::MenuOutcome::Declined(d) => panic!("{d:?}"),
    };
    assert_eq!(shown, 10);
}

/// Reads sd_notify datagrams from a socket the test owns, as systemd would, for `for_`.
fn notifications(socket: &std::os::unix::net::UnixDatagram, for_: Duration) -> Vec<String> {
    notifications_until(socket, "", for_)
}

/// Like [`notifications`], but returns as soon as the datagram `until` arrived (never, for "").
fn notifications_until(
    socket: &std::os::unix::net::UnixDatagram,
    until: &str,
    for_: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + for_;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
                let done = !until.is_empty() && message == until;
                got.push(message);
                if done {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    got
}

#[test]
fn the_watchdog_is_pinged_while_healthy_and_withheld_when_the_store_hangs() {
    watchdog_pings_stop_when_wedged(&shop(0, ""), "REDEEMD_TEST_WEDGE_STORE_AFTER_MS");
}

#[test]
fn the_watchdog_is_withheld_when_a_reader_thread_hangs() {
    // The reader's port does not exist: its thread is idle between reopen attempts, as a
    // reader's thread mostly is, and must still answer the watchdog's probes until it wedges.
    watchdog_pings_stop_when_wedged(&shop(1, ""), "REDEEMD_TEST_WEDGE_READER_AFTER_MS");
}

/// Runs the daemon with a 200 ms watchdog and the test trigger `wedge` set to 1.5 s: pings
/// every 100 ms while healthy, none once wedged, and SIGTERM still served.
fn watchdog_pings_stop_when_wedged(shop: &Shop, wedge: &str) {
    let socket_path = shop.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut child = shop
        .redeemd()
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env(wedge, "1500")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let healthy = notifications(&socket, Duration::from_millis(1200));
    assert_eq!(
        healthy.first().map(String::as_str),
        Some("READY=1"),
        "{healthy:?}"
    );
    let pings = healthy
        .iter()
        .filter(|m| m.as_str() == "WATCHDOG=1")
        .count();
    assert!(
        pings >= 5,
        "a healthy daemon pings every 100 ms: {healthy:?}"
    );

    // The wedge comes at 1.5 s: after that, no more pings.
    std::thread::sleep(Duration::from_millis(800));
    let _ = notifications(&socket, Duration::from_millis(10));
    let wedged = notifications(&socket, Duration::from_millis(1500));
    assert!(
        !wedged.iter().any(|m| m == "WATCHDOG=1"),
        "pings went on after {wedge}: {wedged:?}"
    );
    // SIGTERM is still served while something hangs (the probe waits are bounded).
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    // Waits for the event rather than for a fixed window: on a loaded machine (the whole suite
    // runs in parallel) the answer to SIGTERM can take longer than the daemon's own bounds.
    let stopping = notifications_until(&socket, "STOPPING=1", Duration::from_secs(10));
    assert!(stopping.iter().any(|m| m == "STOPPING=1"), "{stopping:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let shop = shop(1, "[log]\nformat = \"json\"\n");
    let daemon = Daemon::start(&shop);
    daemon.wait_log("cannot open port", Duration::from_secs(10));
    for line in daemon.log.lock().unwrap().iter() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let log = daemon.log_text();
    assert!(log.contains(r#""reader":"counter-0""#), "{log}");
}

#[test]
fn a_sync_task_that_panics_ends_the_daemon_for_systemd_to_restart() {
    // Sync pointed at a port nobody listens on (the daemon keeps retrying), and the test trigger
    // makes the sync task panic after 500 ms: the daemon must not serve on without sync.
    let shop = shop(0, "[sync]\nserver_url = \"http://127.0.0.1:9\"\n");
    let started = std::time::Instant::now();
    let out = shop
        .redeemd()
        .arg("run")
        .env("REDEEMD_TEST_PANIC_SYNC_AFTER_MS", "500")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_deadline(out, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(
        stderr.contains("the sync task stopped")
            && stderr.contains("test trigger: the sync task panics"),
        "{stderr}"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
}

/// The child's output once it exits; killed (and the test failed) if it runs past `deadline`.
fn wait_with_deadline(mut child: std::process::Child, deadline: Duration) -> std::process::Output {
    let until = std::time::Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!(
                "still running after {deadline:?}: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
