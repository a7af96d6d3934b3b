//! The real `clearing-server` binary: `admin enroll` writes a private key file, `serve` answers requests
//! signed with that key, a `kill -9` in the middle of an upload loses nothing and stores nothing twice,
//! the card admin commands, and the clearing reports (`admin statement`, `admin exceptions`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use common::engines::{Engine, database};
use redeemd_contract::keys::{TerminalKeys, TerminalSecret};
use redeemd_contract::request::SignedHeaders;
use serde_json::Value;

mod common;

use common::Signed;
use common::binary::*;

const HEAD: &str = "/v1/terminals/T-1/journal/head";
const JOURNAL: &str = "/v1/terminals/T-1/journal";

fn enroll_then_serve_a_signed_request(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let key = dir.path().join("T-1.key");
    let out = enroll(&db, "T-1", &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let secret = TerminalSecret::from_hex_text(&std::fs::read_to_string(&key).unwrap()).unwrap();

    // Enrolling the same terminal again fails and leaves no orphan key file.
    let again = dir.path().join("again.key");
    let out = enroll(&db, "T-1", &again);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));
    assert!(!again.exists());

    let server = serve(&db);
    let keys = secret.derive_all("T-1");
    let (status, v) = runtime()
        .block_on(send(&server.addr, &keys, "GET", HEAD, Vec::new()))
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["acknowledged_seq"], 0);

    // Disabled by the platform: refused until enabled again.
    let admin = |cmd: &str, terminal: &str| {
        platform()
            .args(["--db", &db, "admin", cmd, "--terminal", terminal])
            .output()
            .unwrap()
    };
    assert!(admin("disable", "T-1").status.success());
    let (status, v) = runtime()
        .block_on(send(&server.addr, &keys, "GET", HEAD, Vec::new()))
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("terminal_disabled")),
        "{v}"
    );
    assert!(admin("enable", "T-1").status.success());
    let (status, _) = runtime()
        .block_on(send(&server.addr, &keys, "GET", HEAD, Vec::new()))
        .unwrap();
    assert_eq!(status, 200);
    let out = admin("disable", "T-404");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("T-404 is not enrolled"));
}

fn the_cache_validity_is_a_checked_serve_setting(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let (_server, log) = serve_with(&db, &[]);
    assert_eq!(
        log[0],
        "clearing-server: signed caches valid 72 h, renewed after 24 h on a quiet platform"
    );
    let (_server, log) = serve_with(&db, &["--cache-validity-hours", "192"]);
    assert!(
        log[0].contains("valid 192 h, renewed after 24 h"),
        "{log:?}"
    );
    let (_server, log) = serve_with(&db, &["--cache-validity-hours", "1"]);
    assert!(
        log[0].contains("valid 1 h, renewed after 20 min"),
        "{log:?}"
    );
    for (hours, why) in [
        (
            "0",
            "0 h is out of range: a cache is valid for at least 1 h and at most 720 h (30 days)",
        ),
        ("721", "721 h is out of range"),
        (
            "3d",
            "\"3d\" is not a number of hours (a whole number from 1 to 720)",
        ),
    ] {
        let out = serve_command(&db, &["--cache-validity-hours", hours])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{hours}: {err}");
        assert!(err.contains("--cache-validity-hours"), "{err}");
        assert!(err.contains(why), "{err}");
    }
}

fn kill_9_during_an_upload_loses_nothing_and_stores_nothing_twice(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let keys = enrolled(&db, dir.path(), "T-1");
    const BATCH: u64 = 500;
    let delays_ms = [0u64, 20, 80, 200, 600];
    let recs = common::chain(&keys, BATCH * delays_ms.len() as u64, |_| 1);
    let rt = runtime();
    let mut acked = 0u64;
    let mut outcomes = Vec::new();
    for delay in delays_ms {
        // A batch is in flight when the server is killed: committed or not, never half.
        let mut server = serve(&db);
        let (from, to) = (acked + 1, acked + BATCH);
        let body = || common::upload_body(from, &recs[from as usize - 1..to as usize]);
        let (addr, k, b) = (server.addr.clone(), keys.clone(), body());
        let in_flight = rt.spawn(async move { send(&addr, &k, "POST", JOURNAL, b).await });
        std::thread::sleep(std::time::Duration::from_millis(delay));
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let _ = rt.block_on(in_flight);

        let server = serve(&db);
        let (st, head) = rt
            .block_on(send(&server.addr, &keys, "GET", HEAD, Vec::new()))
            .unwrap();
        assert_eq!(st, 200);
        let h = head["acknowledged_seq"].as_u64().unwrap();
        assert!(
            h == acked || h == to,
            "head {h} after a kill in batch {from}..={to}"
        );
        if h > 0 {
            assert_eq!(
                head["acknowledged_mac"],
                hex::encode(recs[h as usize - 1].1)
            );
        }
        outcomes.push(h == to);
        // The terminal did not get the answer: it resends from its own ack.
        let (st, v) = rt
            .block_on(send(&server.addr, &keys, "POST", JOURNAL, body()))
            .unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["acknowledged_seq"], to);
        assert_eq!(v["duplicates"].as_u64().unwrap(), h - acked);
        assert_eq!(v["stored"].as_u64().unwrap(), to - h);
        acked = to;
    }
    eprintln!("batch committed before the kill, per round: {outcomes:?}");
    let (n, min, max) = query(&db, "SELECT count(*), min(seq), max(seq) FROM journal")
        .map(|r| (r.i64(0).unwrap(), r.i64(1).unwrap(), r.u64(2).unwrap()))
        .next()
        .unwrap();
    assert_eq!((n, min, max), (acked as i64, 1, acked));
}

const CARD_A: &str = "6228 4800 1234 5678";
const CARD_A_DIGITS: &str = "6228480012345678";
const CARD_B: &str = "6228480099990001";

fn card_lifecycle_through_the_admin_commands(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    // Enrolling for an unknown merchant creates it with defaults.
    let keys = enrolled(&db, dir.path(), "T-1");
    ok(
        &db,
        &[
            "merchant",
            "--id",
            "M-1",
            "--name",
            "城东洗车",
            "--commission-bps",
            "500",
            "--category",
            "car-wash",
        ],
    );
    refused(
        &db,
        &[
            "merchant",
            "--id",
            "M-2",
            "--name",
            "x",
            "--commission-bps",
            "20000",
        ],
        "--commission-bps: 20000: at most 10000",
    );

    ok(
        &db,
        &[
            "card",
            "create",
            "--number",
            CARD_A,
            "--holder",
            "张三",
            "--identity",
            "1234",
        ],
    );
    let err = refused(
        &db,
        &["card", "create", "--number", CARD_A],
        "already exists",
    );
    assert!(
        err.contains("622848******5678") && !err.contains(CARD_A_DIGITS),
        "{err}"
    );
    refused(
        &db,
        &["card", "create", "--number", "12345"],
        "--number: card number has 5 digits",
    );
    refused(
        &db,
        &["card", "create", "--number", CARD_B, "--identity", "1"],
        "--holder",
    );
    refused(
        &db,
        &["card", "show", "--number", CARD_B],
        "622848******0001 does not exist",
    );

    let customize = |extra: &[&str]| {
        let mut args = vec![
            "card",
            "customize",
            "--number",
            CARD_A,
            "--package",
            "P1",
            "--title",
            "洗车套餐",
            "--valid-from",
            "2026-01-01",
            "--valid-until",
            "2027-12-31",
            "--scope-category",
            "car-wash",
            "--daily-cap",
            "2",
            "--identity-required",
        ];
        args.extend_from_slice(extra);
        admin(&db, &args)
    };
    let out = customize(&[
        "--item",
        "WASH:精洗:10:3500",
        "--item",
        "OIL:换机油:3:12000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = customize(&["--item", "WASH:精洗:ten:3500"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--item: \"WASH:精洗:ten:3500\""));

    let shown = ok(&db, &["card", "show", "--number", CARD_A]);
    for want in [
        "622848******5678",
        "status    active",
        "张* (identity data on file)",
        "package   P1 洗车套餐  valid 2026-01-01T00:00:00+08:00 .. 2028-01-01T00:00:00+08:00  categories car-wash  daily cap 2  identity required",
        "WASH 精洗  10 left of 10  (3500 fen per use)",
        "OIL 换机油  3 left of 3",
    ] {
        assert!(shown.contains(want), "{want:?} not in\n{shown}");
    }
    assert!(
        !shown.contains(CARD_A_DIGITS) && !shown.contains("张三"),
        "{shown}"
    );

    // Status changes, and the refused ones name the state.
    ok(&db, &["card", "lost", "--number", CARD_A]);
    assert!(ok(&db, &["card", "show", "--number", CARD_A]).contains("status    lost"));
    refused(
        &db,
        &["card", "lost", "--number", CARD_A],
        "is lost: report lost is not possible",
    );
    ok(&db, &["card", "unlock", "--number", CARD_A]);
    refused(
        &db,
        &["card", "unlock", "--number", CARD_A],
        "is active: unlock is not possible",
    );
    ok(&db, &["card", "freeze", "--number", CARD_A]);
    assert!(ok(&db, &["card", "show", "--number", CARD_A]).contains("status    frozen"));
    ok(&db, &["card", "unlock", "--number", CARD_A]);

    // Three washes redeemed at T-1 (uploaded to the real server), then a reissue moves what is left.
    let card_ref = redeemd_contract::model::CardNumber::parse(CARD_A)
        .unwrap()
        .card_ref(&keys.card_token);
    {
        let server = serve(&db);
        let recs = common::lines(
            &keys,
            None,
            &[common::Line::redeem(card_ref, "P1", "WASH", 3)],
        );
        let (st, v) = runtime()
            .block_on(send(
                &server.addr,
                &keys,
                "POST",
                JOURNAL,
                common::upload_body(1, &recs),
            ))
            .unwrap();
        assert_eq!(st, 200, "{v}");
    }
    assert!(ok(&db, &["card", "show", "--number", CARD_A]).contains("WASH 精洗  7 left of 10"));
    ok(&db, &["card", "reissue", "--from", CARD_A, "--to", CARD_B]);
    let old = ok(&db, &["card", "show", "--number", CARD_A]);
    assert!(
        old.contains("status    cancelled") && old.contains("reissued  to 622848******0001"),
        "{old}"
    );
    let new = ok(&db, &["card", "show", "--number", CARD_B]);
    for want in [
        "status    active",
        "张* (identity data on file)",
        "WASH 精洗  7 left of 7",
        "OIL 换机油  3 left of 3",
    ] {
        assert!(new.contains(want), "{want:?} not in\n{new}");
    }
    refused(
        &db,
        &[
            "card",
            "reissue",
            "--from",
            CARD_A,
            "--to",
            "6228480099990002",
        ],
        "is cancelled",
    );
    refused(&db, &["card", "lost", "--number", CARD_A], "is cancelled");

    // The deny list of the merchant that sees the card: lost, frozen, cancelled, in that order, each
    // with the card's version at the change.
    let deny: Vec<(i64, i64, i64)> = query(
        &db,
        "SELECT version, status, entry_version FROM deny_entry WHERE merchant_id = 'M-1' ORDER BY version",
    )
    .map(|r| (r.i64(0).unwrap(), r.i64(1).unwrap(), r.i64(2).unwrap()))
    .collect();
    assert_eq!(
        deny.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
        [(1, 2), (2, 3), (3, 4)]
    );
    assert!(deny.windows(2).all(|w| w[0].2 < w[1].2));
    // The number is stored sealed under the master key and found by its keyed lookup hash; it opens
    // with the key.
    let (key, sealed) = query(
        &db,
        "SELECT number_key, number_sealed FROM card WHERE id = 1",
    )
    .map(|r| (r.text(0).unwrap(), r.blob(1).unwrap().to_vec()))
    .next()
    .unwrap();
    let vault = common::engines::vault();
    assert_eq!(key, vault.lookup_key(CARD_A_DIGITS));
    assert!(
        !sealed
            .windows(CARD_A_DIGITS.len())
            .any(|w| w == CARD_A_DIGITS.as_bytes())
    );
    assert_eq!(
        &vault.open("card-number", &sealed).unwrap()[..],
        CARD_A_DIGITS.as_bytes()
    );
    let help = platform()
        .args(["admin", "card", "customize", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("CODE:TITLE:USES:PRICE_FEN"));
}

fn a_replayed_request_is_refused_after_a_server_restart(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let keys = enrolled(&db, dir.path(), "T-1");
    let body = common::upload_body(1, &common::chain(&keys, 2, |_| 1));
    // One captured request, sent again as is.
    let captured = SignedHeaders::sign(
        &keys.request,
        "T-1",
        "POST",
        JOURNAL,
        now_ms(),
        [42; 16],
        &body,
    );
    let replay = |addr: &str| {
        let (addr, body, h) = (addr.to_owned(), body.clone(), captured.clone());
        runtime().block_on(async move {
            let req = reqwest::Client::new()
                .post(format!("http://{addr}{JOURNAL}"))
                .header("content-type", "application/json")
                .body(body)
                .signed(&h);
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).unwrap(),
            )
        })
    };
    let mut server = serve(&db);
    let (st, v) = replay(&server.addr);
    assert_eq!(st, 200, "{v}");
    let (st, v) = replay(&server.addr);
    assert_eq!(
        (st, v["code"].as_str()),
        (401, Some("nonce_replayed")),
        "{v}"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = serve(&db);
    let (st, v) = replay(&server.addr);
    assert_eq!(
        (st, v["code"].as_str()),
        (401, Some("nonce_replayed")),
        "after a restart: {v}"
    );
}

fn clearing_reports_name_over_redemption_across_shops_redemptions_after_a_loss_and_refused_records(
    engine: Engine,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let t1 = enrolled(&db, dir.path(), "T-1");
    let t2 = enrolled(&db, dir.path(), "T-2");
    ok(
        &db,
        &[
            "merchant",
            "--id",
            "M-1",
            "--name",
            "城东洗车",
            "--commission-bps",
            "500",
        ],
    );
    ok(&db, &["card", "create", "--number", CARD_A]);
    ok(
        &db,
        &[
            "card",
            "customize",
            "--number",
            CARD_A,
            "--package",
            "P1",
            "--title",
            "洗车套餐",
            "--valid-from",
            "2026-01-01",
            "--valid-until",
            "2030-12-31",
            "--item",
            "WASH:精洗:3:3500",
        ],
    );
    let card = |keys: &TerminalKeys| {
        redeemd_contract::model::CardNumber::parse(CARD_A)
            .unwrap()
            .card_ref(&keys.card_token)
    };
    let wash = |keys: &TerminalKeys, q| common::Line::redeem(card(keys), "P1", "WASH", q);
    let server = serve(&db);

    // Both shops were offline: T-1 redeemed 2 of the 3 washes, T-2 2 and then 1 more, which it voided.
    let t1_recs = common::lines(&t1, None, &[wash(&t1, 2)]);
    assert_eq!(upload(&server, &t1, &t1_recs).0, 200);
    let t2_second = wash(&t2, 1);
    let t2_recs = common::lines(
        &t2,
        None,
        &[
            wash(&t2, 2),
            t2_second.clone(),
            common::Line::void(&t2_second, 2),
        ],
    );
    assert_eq!(upload(&server, &t2, &t2_recs).0, 200);

    // The card is reported lost; T-1, not yet synced, redeems once more after the report.
    ok(&db, &["card", "lost", "--number", CARD_A]);
    let mut late = common::line(&t1, 2, t1_recs[0].1, &wash(&t1, 1));
    late.wall_ms = now_ms() + 60_000;
    let late_mac = late.mac(&t1.journal);
    assert_eq!(upload(&server, &t1, &[(late, late_mac)]).0, 200);

    // T-2's next record was edited in the shop's database: refused, named, never cleared.
    let mut tampered = common::lines(&t2, Some((3, t2_recs[2].1)), &[wash(&t2, 1)]);
    tampered[0].0.quantity = 9;
    let (status, v) = upload(&server, &t2, &tampered);
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("record_mac_invalid")),
        "{v}"
    );

    let report: Value = serde_json::from_str(&ok(&db, &["exceptions", "--json"])).unwrap();
    let over = report["over_redeemed"].as_array().unwrap();
    assert_eq!(over.len(), 1, "{report:#}");
    assert_eq!(over[0]["net_used"], 5);
    assert_eq!(over[0]["uses_total"], 3);
    assert_eq!(over[0]["terminals"], serde_json::json!(["T-1", "T-2"]));
    assert_eq!(over[0]["records"].as_array().unwrap().len(), 5);
    let denied = report["redeemed_while_denied"].as_array().unwrap();
    assert_eq!(denied.len(), 1, "{report:#}");
    assert_eq!(
        (
            &denied[0]["record"]["terminal_id"],
            &denied[0]["record"]["seq"],
            &denied[0]["period"]["status"]
        ),
        (
            &serde_json::json!("T-1"),
            &serde_json::json!(2),
            &serde_json::json!("lost")
        )
    );
    let noted: Vec<(String, u64, String)> = report["refused_or_unmapped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["terminal_id"].as_str().unwrap().to_owned(),
                n["seq"].as_u64().unwrap(),
                n["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        noted,
        [("T-2".to_owned(), 4, "record_mac_invalid".to_owned())]
    );
    let text = ok(&db, &["exceptions"]);
    for want in [
        "exceptions: 3",
        "record_mac_invalid terminal T-2 seq 4",
        "redeemed_while_lost card 622848******5678: terminal T-1 seq 2",
        "over_redeemed card 622848******5678 P1 WASH: 5 used of 3 across T-1, T-2",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }

    // The merchant statement's totals are the sum of the stored records (the tampered one is not there).
    let stored: Vec<(i64, i64)> = [&t1_recs[..], &t2_recs[..]]
        .concat()
        .iter()
        .map(|(r, _)| r)
        .chain([&common::line(&t1, 2, t1_recs[0].1, &wash(&t1, 1))])
        .map(|r| {
            let sign = if r.kind == redeemd_contract::RecordKind::Void {
                -1
            } else {
                1
            };
            (sign * i64::from(r.quantity), sign * r.amount_fen as i64)
        })
        .collect();
    let (units, amount): (i64, i64) = stored
        .iter()
        .fold((0, 0), |(u, a), (du, da)| (u + du, a + da));
    let s: Value = serde_json::from_str(&ok(
        &db,
        &["statement", "merchant", "--merchant", "M-1", "--json"],
    ))
    .unwrap();
    assert_eq!(s["records"], 5);
    assert_eq!(s["lines"][0]["net_units"], units);
    assert_eq!(s["net_amount_fen"], amount);
    assert_eq!(s["commission_fen"], amount * 5 / 100);
    assert_eq!(s["payable_fen"], amount - amount * 5 / 100);
    let text = ok(&db, &["statement", "merchant", "--merchant", "M-1"]);
    assert!(
        text.contains(
            "net amount ¥175.00  commission 5.00 % ¥8.75  payable to the merchant ¥166.25"
        ),
        "{text}"
    );
    // A period that ends before the late redemption leaves it out.
    let before: Value = serde_json::from_str(&ok(
        &db,
        &[
            "statement",
            "merchant",
            "--merchant",
            "M-1",
            "--until",
            "2026-11-20",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(before["records"], 4);

    let member = ok(&db, &["statement", "member", "--number", CARD_A]);
    assert!(
        member.contains("P1 WASH 精洗: used 5 (redeemed 6, voided 1) of 3"),
        "{member}"
    );
    assert_eq!(member.matches(" auth ").count(), 5, "{member}");
    assert!(!member.contains(CARD_A_DIGITS));
    refused(
        &db,
        &["statement", "merchant", "--merchant", "M-404"],
        "merchant M-404 not found",
    );
    refused(
        &db,
        &[
            "statement",
            "merchant",
            "--merchant",
            "M-1",
            "--from",
            "yesterday",
        ],
        "--from: \"yesterday\"",
    );
    refused(
        &db,
        &[
            "statement",
            "merchant",
            "--merchant",
            "M-1",
            "--from",
            "2026-11-21",
            "--until",
            "2026-11-20",
        ],
        "--until: the period from 2026-11-21 to 2026-11-20 is empty",
    );
}

/// PCI DSS 3.5: after cards are issued, customized, reported lost and reissued, records uploaded and
/// bundles served, no card number is anywhere in the database's files (WAL included) or the server's
/// log — only sealed values and keyed lookup hashes.
fn no_card_number_is_stored_or_logged_in_clear(engine: Engine) {
    const NAMED: &str = "6228480012345678";
    const ANON: &str = "6228480055550001";
    const NEW: &str = "6228480099990002";
    const NEVER_ISSUED: &str = "6228480077770003";
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let keys = enrolled(&db, dir.path(), "T-1");
    ok(
        &db,
        &[
            "card",
            "create",
            "--number",
            NAMED,
            "--holder",
            "张三",
            "--identity",
            "1234",
        ],
    );
    ok(&db, &["card", "create", "--number", ANON]);
    for n in [NAMED, ANON] {
        ok(
            &db,
            &[
                "card",
                "customize",
                "--number",
                n,
                "--package",
                "P1",
                "--title",
                "洗车套餐",
                "--valid-from",
                "2026-01-01",
                "--valid-until",
                "2030-12-31",
                "--item",
                "WASH:精洗:10:3500",
            ],
        );
    }
    ok(&db, &["card", "lost", "--number", ANON]);
    ok(&db, &["card", "reissue", "--from", NAMED, "--to", NEW]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("server.log");
    let mut child = platform()
        .args([
            "--db",
            &db,
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "server not listening");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let card = |n: &str| {
        redeemd_contract::model::CardNumber::parse(n)
            .unwrap()
            .card_ref(&keys.card_token)
    };
    let recs = common::lines(
        &keys,
        None,
        &[
            common::Line::redeem(card(NEW), "P1", "WASH", 1),
            common::Line::redeem(card(NEVER_ISSUED), "P1", "WASH", 1),
        ],
    );
    let rt = runtime();
    let (st, v) = rt
        .block_on(send(
            &addr,
            &keys,
            "POST",
            JOURNAL,
            common::upload_body(1, &recs),
        ))
        .unwrap();
    assert_eq!(st, 200, "{v}");
    for path in [
        "/v1/terminals/T-1/entitlements?since=0",
        "/v1/terminals/T-1/deny-list?since=0",
    ] {
        let (st, _) = rt
            .block_on(send(&addr, &keys, "GET", path, Vec::new()))
            .unwrap();
        assert!(st == 200, "{path}: {st}");
    }
    let exceptions = ok(&db, &["exceptions"]);
    assert!(exceptions.contains("622848******0003"), "{exceptions}");
    child.kill().unwrap();
    child.wait().unwrap();

    let mut files = common::engines::database_files(engine, dir.path());
    files.push(log);
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        for n in [NAMED, ANON, NEW, NEVER_ISSUED] {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "card {n} in clear in {}",
                file.display()
            );
        }
    }
}

/// `admin card import FILE.csv` issues every card of the file with its packages, or none: a bad line is
/// named with its line number, a number already issued refuses the file too, and nothing of a refused
/// file is imported. What it issues is what `card create` + `card customize` would have (the card's
/// packages, its terminal's snapshot, its number sealed and never in clear).
fn cards_are_imported_all_or_nothing(engine: Engine) {
    const HEADER: &str = "number,holder,identity,package,title,valid_from,valid_until,scope,daily_cap,identity_required,items\n";
    const ISSUED: &str = "6228480012340000";
    const NAMED: &str = "6228480012340001";
    const ANON: &str = "6228480012340002";
    const BARE: &str = "6228480012340003";
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let keys = enrolled(&db, dir.path(), "T-1");
    ok(&db, &["card", "create", "--number", ISSUED]);
    let good = format!(
        "{HEADER}\
         {NAMED},张三,1234,P1,洗车套餐,2026-01-01,2030-12-31,,2,yes,WASH:精洗:10:3500;OIL:换机油:3:12000\n\
         {ANON},,,P1,洗车套餐,2026-01-01,2030-12-31,merchants:M-1,,,WASH:精洗:5:3500\n\
         {NAMED},,,P2,补胎,2026-01-01,2030-12-31,categories:tyres,,,TYRE:补胎:1:5000\n\
         {BARE},,,,,,,,,,\n"
    );
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let absent = |n: &str| refused(&db, &["card", "show", "--number", n], "does not exist");
    // An already-issued number, and a bad line: each refuses the whole file by line.
    let err = refused(
        &db,
        &[
            "card",
            "import",
            &file("issued.csv", &format!("{good}{ISSUED},,,,,,,,,,\n")),
        ],
        "line 6: card 622848******0000 was already issued; nothing was imported",
    );
    assert!(!err.contains(ISSUED), "{err}");
    let bad = good.replace("2030-12-31,merchants", "2030-13-31,merchants");
    refused(
        &db,
        &["card", "import", &file("bad.csv", &bad)],
        "line 3: package P1: valid_until: \"2030-13-31\"",
    );
    for n in [NAMED, ANON, BARE] {
        absent(n);
    }
    // The good file: every card, with its packages.
    let out = import(&db, std::path::Path::new(&file("good.csv", &good)));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("3 cards issued with 3 packages (4 items)"),
        "{said}"
    );
    let shown = ok(&db, &["card", "show", "--number", NAMED]);
    for want in [
        "张* (identity data on file)",
        "package   P1 洗车套餐  valid 2026-01-01T00:00:00+08:00 .. 2031-01-01T00:00:00+08:00  all merchants  daily cap 2  identity required",
        "OIL 换机油  3 left of 3  (12000 fen per use)",
        "package   P2 补胎",
    ] {
        assert!(shown.contains(want), "{want:?} in {shown}");
    }
    assert!(ok(&db, &["card", "show", "--number", BARE]).contains("status    active"));
    // The import is one operation of the platform's: audited once, as the operator running the CLI.
    let audit = ok(&db, &["audit"]);
    assert_eq!(audit.matches("card.import").count(), 1, "{audit}");
    assert!(
        audit.contains("3 cards with 3 packages (4 items)"),
        "{audit}"
    );
    // Importing it again: every number is issued now.
    refused(
        &db,
        &["card", "import", &file("again.csv", &good)],
        "line 2: card 622848******0001 was already issued (and 2 more cards of the file)",
    );
    // The terminal's snapshot holds them (P2 is for the category tyres, which M-1 is not).
    let server = serve(&db);
    let rt = runtime();
    let bundle = rt.block_on(async {
        let path = "/v1/terminals/T-1/entitlements?since=0";
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).unwrap();
        let h = SignedHeaders::sign(&keys.request, "T-1", "GET", path, now_ms(), nonce, b"");
        let req = reqwest::Client::new()
            .get(format!("http://{}{path}", server.addr))
            .signed(&h);
        req.send().await.unwrap().bytes().await.unwrap().to_vec()
    });
    let mut verifier = redeemd_contract::snapshot::BundleVerifier::new(&keys.cache, "T-1");
    let (mut at, mut refs) = (8, Vec::new());
    loop {
        let len = u32::from_be_bytes(bundle[at..at + 4].try_into().unwrap()) as usize;
        match verifier.frame(&bundle[at + 4..at + 4 + len]).unwrap() {
            redeemd_contract::snapshot::Verified::Entry(e) => refs.push(
                keys.card_token
                    .reveal(&e.card_ref)
                    .unwrap()
                    .digits()
                    .to_owned(),
            ),
            redeemd_contract::snapshot::Verified::Manifest(_) => break,
            redeemd_contract::snapshot::Verified::Preamble(_) => {}
        }
        at += 4 + len;
    }
    refs.sort();
    assert_eq!(
        refs,
        [NAMED, ANON],
        "cards without a package reaching M-1 are not in it"
    );
    drop(server);
    // Sealed like any issued card.
    for file in common::engines::database_files(engine, dir.path()) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        for n in [NAMED, ANON, BARE] {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "card {n} in clear in {}",
                file.display()
            );
        }
    }
}

/// `admin key rotate` re-seals every card number, identity and terminal secret under a new master key:
/// the old key is refused from then on, the new one opens everything, the terminal's requests verify.
fn the_master_key_rotates(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let keys = enrolled(&db, dir.path(), "T-1");
    ok(
        &db,
        &[
            "card",
            "create",
            "--number",
            CARD_A,
            "--holder",
            "张三",
            "--identity",
            "1234",
        ],
    );
    let new_key = dir.path().join("new.key");
    let out = platform()
        .args(["admin", "key", "generate", "--out"])
        .arg(&new_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&new_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let with_new = |args: &[&str]| {
        platform()
            .env("CLEARING_MASTER_KEY_FILE", &new_key)
            .args(["--db", &db, "admin"])
            .args(args)
            .output()
            .unwrap()
    };
    // Before the rotation the new key is not the database's.
    let out = with_new(&["card", "show", "--number", CARD_A]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not this database's"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(
        &db,
        &[
            "key",
            "rotate",
            "--new-master-key-file",
            new_key.to_str().unwrap(),
        ],
    );
    let out = with_new(&["card", "show", "--number", CARD_A]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("identity data on file"));
    refused(
        &db,
        &["card", "show", "--number", CARD_A],
        "is not this database's",
    );
    let sealed_with: Vec<Vec<u8>> = query(
        &db,
        "SELECT sealed_with FROM card UNION ALL SELECT sealed_with FROM terminal",
    )
    .map(|r| r.blob(0).unwrap().to_vec())
    .collect();
    let new_vault = clearing_server::vault::MasterKey::load(
        &clearing_server::vault::KeySource::File(new_key.clone()),
    )
    .unwrap();
    assert_eq!(sealed_with.len(), 2);
    assert!(sealed_with.iter().all(|f| f[..] == new_vault.fingerprint()));
    // The terminal's secret opens under the new key: its signed requests verify.
    let server = {
        let mut c = serve_command(&db, &[]);
        c.env("CLEARING_MASTER_KEY_FILE", &new_key);
        serve_child(c)
    };
    let (st, v) = runtime()
        .block_on(send(&server.addr, &keys, "GET", HEAD, Vec::new()))
        .unwrap();
    assert_eq!(st, 200, "{v}");
}

on_both_engines!(sync cards_are_imported_all_or_nothing, the_master_key_rotates, no_card_number_is_stored_or_logged_in_clear, enroll_then_serve_a_signed_request, the_cache_validity_is_a_checked_serve_setting, kill_9_during_an_upload_loses_nothing_and_stores_nothing_twice, card_lifecycle_through_the_admin_commands, a_replayed_request_is_refused_after_a_server_restart, clearing_reports_name_over_redemption_across_shops_redemptions_after_a_loss_and_refused_records);
