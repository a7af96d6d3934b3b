//! End to end, what the platform clears: two real shops over-redeeming one card while both were
//! offline, a journal row tampered with in a shop's database, a shop offline within its risk limits,
//! a daemon killed in the middle of an upload, and `redeemd doctor`'s server check — all against the
//! real `clearing-server` binary (see `sync_e2e.rs` for where it comes from).

use std::time::Duration;

use redeemd::engine::DeclineReason;
use redeemd_contract::{JournalRecord, RecordKind, TerminalSecret};
use serde_json::Value;

use redeemd::simulator::SwipeResult;

use crate::daemon::{approved, menu, reader, swipe, wire};
use crate::shop::{Daemon, Shop};
use crate::support::{self, MERCHANT};
use crate::sync_e2e::{Server, Setup, admin, server_journal, setup, wait_for, write_config};

const UNLIMITED: &str = "max_offline_uses_per_card = 1000000\nmax_offline_redemptions = 1000000";

/// `clearing-server --db <the platform's db> admin …`: stdout.
fn admin_out(s: &Setup, args: &[&str]) -> String {
    admin(&s.server_db, args)
}

/// A second shop of the same merchant: terminal `terminal` enrolled on the platform, its own state.
fn second_shop(s: &Setup, terminal: &str, server_url: &str) -> Shop {
    let dir = tempfile::Builder::new()
        .prefix("redeemd-shop-")
        .tempdir()
        .unwrap();
    let key = dir.path().join("terminal.key");
    let key_text = key.display().to_string();
    admin_out(
        s,
        &[
            "enroll",
            "--terminal",
            terminal,
            "--merchant",
            MERCHANT,
            "--key-file",
            &key_text,
        ],
    );
    let state = dir.path().join("state");
    // Empty, as systemd's StateDirectory= leaves it before the first start.
    std::fs::create_dir(&state).unwrap();
    let shop = Shop {
        state,
        config: dir.path().join("redeemd.toml"),
        dir,
    };
    write_config(&shop, terminal, server_url, UNLIMITED);
    shop
}

/// Every record the server stored, decoded from the bytes the terminals MACed.
pub(crate) fn stored_records(db: &std::path::Path) -> Vec<JournalRecord> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare("SELECT record FROM journal ORDER BY terminal_id, seq")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| JournalRecord::decode(&b.unwrap()).unwrap())
        .collect()
}

pub(crate) fn status_sync(shop: &Shop) -> Option<redeemd::daemon::status::SyncStatus> {
    redeemd::daemon::status::read(&shop.state)
        .ok()
        .and_then(|st| st.sync)
}

#[tokio::test(flavor = "current_thread")]
async fn two_shops_offline_over_redeem_a_card_one_exception_and_the_statement_is_the_sum_of_the_records()
 {
    let s = setup();
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let shop2 = second_shop(&s, "T-E2E-2", &server.url());
    let _d1 = Daemon::start(&s.shop);
    let _d2 = Daemon::start(&shop2);
    wait_for(
        "both shops hold the platform's cache",
        Duration::from_secs(30),
        || {
            [&s.shop, &shop2]
                .iter()
                .all(|sh| status_sync(sh).is_some_and(|y| y.cache_version > 0))
        },
    );
    let mut r1 = reader(&s.shop, 0, "R-SHOP-1").await;
    let mut r2 = reader(&shop2, 0, "R-SHOP-2").await;

    // The platform goes away; each shop sees 10 washes on card 1 and redeems 6 of them.
    let (db, addr) = server.kill9();
    for r in [&mut r1, &mut r2] {
        let m = menu(swipe(r, 1).await);
        assert_eq!(m.entries[0].uses_left, 10, "{m:?}");
        approved(r.redeem(&[(0, 4)], None).await.unwrap());
        menu(swipe(r, 1).await);
        approved(r.redeem(&[(0, 2)], None).await.unwrap());
    }
    // Back: both backlogs reach the platform.
    let server = Server::start(&db, &addr);
    wait_for("both backlogs uploaded", Duration::from_secs(60), || {
        stored_records(&server.db).len() == 4
    });

    let report: Value = serde_json::from_str(&admin_out(&s, &["exceptions", "--json"])).unwrap();
    let over = report["over_redeemed"].as_array().unwrap();
    assert_eq!(over.len(), 1, "one exceptions entry: {report:#}");
    assert_eq!(over[0]["net_used"], 12);
    assert_eq!(over[0]["uses_total"], 10);
    assert_eq!(
        over[0]["terminals"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );
    assert_eq!(over[0]["records"].as_array().unwrap().len(), 4);
    assert!(
        report["redeemed_while_denied"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(report["refused_or_unmapped"].as_array().unwrap().is_empty());

    // The merchant statement's totals are the sum of the records the server holds.
    let statement = statement_is_the_sum_of_the_records(&server.db);
    assert_eq!(statement["net_amount_fen"].as_i64(), Some(12 * 3500));
    assert_eq!(statement["records"], 4);
}

/// The merchant's statement (`admin statement merchant --json`), checked against every record the
/// server holds: the lines' net units and amounts are the records' sums (a void counts negative), the
/// statement's net is the lines', payable + commission is the net, and every record is counted.
/// Returned for the caller's own checks.
pub(crate) fn statement_is_the_sum_of_the_records(db: &std::path::Path) -> Value {
    let records = stored_records(db);
    let sum = |f: &dyn Fn(&JournalRecord) -> i64| -> i64 {
        records
            .iter()
            .map(|r| match r.kind {
                RecordKind::Redeem => f(r),
                RecordKind::Void => -f(r),
                RecordKind::BatchClose => 0,
            })
            .sum()
    };
    let statement: Value = serde_json::from_str(&admin(
        db,
        &["statement", "merchant", "--merchant", MERCHANT, "--json"],
    ))
    .unwrap();
    let lines = statement["lines"].as_array().unwrap();
    let line_units: i64 = lines.iter().map(|l| l["net_units"].as_i64().unwrap()).sum();
    let line_amount: i64 = lines
        .iter()
        .map(|l| l["net_amount_fen"].as_i64().unwrap())
        .sum();
    assert_eq!(line_units, sum(&|r| i64::from(r.quantity)));
    assert_eq!(line_amount, sum(&|r| r.amount_fen as i64));
    assert_eq!(statement["net_amount_fen"].as_i64(), Some(line_amount));
    assert_eq!(statement["records"].as_u64(), Some(records.len() as u64));
    assert_eq!(
        statement["payable_fen"].as_i64().unwrap() + statement["commission_fen"].as_i64().unwrap(),
        line_amount
    );
    statement
}

#[test]
fn a_journal_row_tampered_with_in_the_shop_is_named_by_the_platform_and_not_cleared() {
    let s = setup();
    // Three redemptions, none synced yet.
    s.open_store(); // creates the state
    s.seed(3);
    // Staff "correct" seq 2 with the sqlite3 tool (dropping the append-only trigger first).
    let db = s.shop.state.join(redeemd::store::DB_FILE);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "DROP TRIGGER IF EXISTS journal_append_only_update;
         UPDATE journal SET quantity = 9 WHERE seq = 2;",
    )
    .unwrap();
    drop(c);
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let (code, out) = s.sync_cli();
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("record_mac_invalid"), "{out}");
    // Seq 1 is stored and acknowledged; seq 2 was refused, and seq 3 waits behind it.
    let (rows, max, _) = server_journal(&server.db);
    assert_eq!((rows, max), (1, 1));
    assert_eq!(s.local(), (3, 1));
    let text = admin_out(&s, &["exceptions"]);
    assert!(
        text.contains(&format!(
            "record_mac_invalid terminal {} seq 2",
            support::TERMINAL
        )),
        "{text}"
    );
    let statement: Value = serde_json::from_str(&admin_out(
        &s,
        &["statement", "merchant", "--merchant", MERCHANT, "--json"],
    ))
    .unwrap();
    // Only the verified record is in the statement: held there, since these seeded records name
    // card references the platform never issued (`unknown_card`), never paid and never left out.
    assert_eq!(
        (
            statement["records"].as_u64(),
            statement["held_records"].as_u64(),
            statement["held"][0]["code"].as_str()
        ),
        (Some(0), Some(1), Some("unknown_card")),
        "only the verified record is in the statement: {statement}"
    );
    // The daemon, started on that database, checks the whole journal in the background and names
    // the row in its log and its status, while the counter is open.
    let daemon = Daemon::start(&s.shop);
    let check = || {
        redeemd::daemon::status::read(&s.shop.state)
            .ok()
            .and_then(|st| st.journal_check)
            .unwrap_or_default()
    };
    wait_for(
        "the start-up journal check",
        Duration::from_secs(20),
        || check().contains("findings") && daemon.has_log("journal check at start: NOT clean"),
    );
    assert!(check().contains("first: journal seq 2"), "{}", check());
    assert!(daemon.has_log("journal seq 2"), "{}", daemon.log_text());
}

#[tokio::test(flavor = "current_thread")]
async fn an_offline_shop_redeems_within_its_risk_limits_then_uploads_everything_in_order() {
    let s = setup();
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    write_config(
        &s.shop,
        support::TERMINAL,
        &server.url(),
        "max_offline_uses_per_card = 1000000\nmax_offline_redemptions = 6",
    );
    let _daemon = Daemon::start(&s.shop);
    wait_for("cache installed", Duration::from_secs(30), || {
        s.cache_version() > 0
    });
    let mut r = reader(&s.shop, 0, "R-OFFLINE").await;
    let (db, addr) = server.kill9();
    // Six redemptions across cards while the platform is away; the seventh card is refused at the
    // swipe with the terminal's offline limit, nothing recorded.
    for card in [1, 2, 3, 1, 2, 3] {
        menu(swipe(&mut r, card).await);
        approved(r.redeem(&[(0, 1)], None).await.unwrap());
    }
    match swipe(&mut r, 4).await {
        SwipeResult::Declined(d) => {
            assert_eq!(d.reason, wire(DeclineReason::TerminalOfflineLimitReached));
        }
        other => panic!("expected the offline limit, got {other:?}"),
    }
    assert_eq!(s.local(), (6, 0));
    // The platform returns: everything uploads, in order, exactly as the shop holds it.
    let server = Server::start(&db, &addr);
    wait_for("backlog acknowledged", Duration::from_secs(60), || {
        s.local() == (6, 6)
    });
    let (rows, max, mac) = server_journal(&server.db);
    assert_eq!((rows, max), (6, 6));
    assert_eq!(mac, s.local_head_mac());
    let seqs: Vec<u64> = stored_records(&server.db).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    // And the counter is open again.
    menu(swipe(&mut r, 4).await);
    approved(r.redeem(&[(0, 1)], None).await.unwrap());
}

#[test]
fn a_daemon_killed_mid_upload_and_restarted_ends_with_every_record_once() {
    const RECORDS: u64 = 12_000;
    let s = setup();
    s.seed(RECORDS);
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let mut daemon = Daemon::start(&s.shop);
    wait_for("first batch stored", Duration::from_secs(60), || {
        server_journal(&server.db).0 >= 1000
    });
    // kill -9 the daemon with batches in flight.
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    let held = server_journal(&server.db).0;
    eprintln!("daemon killed; server holds {held} of {RECORDS}");
    let _daemon = Daemon::start(&s.shop);
    wait_for(
        "every record acknowledged",
        Duration::from_secs(120),
        || s.local() == (RECORDS, RECORDS),
    );
    let (rows, max, mac) = server_journal(&server.db);
    assert_eq!(
        (rows, max),
        (RECORDS, RECORDS),
        "nothing lost, nothing twice"
    );
    assert_eq!(mac, s.local_head_mac());
}

/// `redeemd doctor`'s server line.
fn doctor_server_line(shop: &Shop) -> String {
    let out = shop
        .redeemd()
        .args(["doctor", "--user", "root"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().skip_while(|l| !l.contains(" server "));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no server line:\n{text}"));
    let fix = lines.next().filter(|l| l.contains("fix:")).unwrap_or("");
    format!("{first}\n{fix}")
}

#[test]
fn doctor_checks_the_server_and_the_signature() {
    let s = setup();
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let line = doctor_server_line(&s.shop);
    assert!(
        line.starts_with("OK") && line.contains("reachable, signature accepted"),
        "{line}"
    );

    // A key file that is not the one the platform enrolled.
    let key = s.shop.dir.path().join("terminal.key");
    let good = std::fs::read_to_string(&key).unwrap();
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    assert!(TerminalSecret::from_hex_text(&"ab".repeat(32)).is_ok());
    let line = doctor_server_line(&s.shop);
    assert!(
        line.starts_with("PROBLEM") && line.contains("refused this terminal (401 bad_signature"),
        "{line}"
    );
    assert!(
        line.contains("fix: check terminal_id and the key file"),
        "{line}"
    );
    std::fs::write(&key, good).unwrap();

    // The server is down.
    let (_db, addr) = server.kill9();
    let line = doctor_server_line(&s.shop);
    assert!(
        line.starts_with("PROBLEM") && line.contains("cannot reach the server"),
        "{line}"
    );
    assert!(line.contains(&addr), "{line}");
}
