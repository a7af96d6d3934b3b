//! Issue 12, "What was seen", end to end: the real `redeemd run` over a pty, a [`SimReader`] (and
//! `redeemd simulate-reader`) on the other end, across SIGTERM and SIGKILL restarts of the daemon.
//! Each case is also a unit test of the conversation core (`src/conversation/tests.rs`) and a
//! conformance flow (`firmware_protocol::conformance`).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use firmware_protocol::message::{DeclineReason as Wire, ErrorCode, Message, MessageType};
use redeemd::simulator::{Answer, Reply, SimReader, SwipeResult};

use crate::daemon::{
    CARD_LOST, CARD_TWO_PACKAGES, approved, declined, menu, reader, shop, simulate_reader, swipe,
};
use crate::shop::Daemon;
use crate::support;

const LINK: Duration = Duration::from_secs(15);

fn decline_of(reply: &Reply) -> (u32, Wire) {
    match &reply.answer {
        Answer::Declined(d) => (d.txn_id, d.reason),
        other => panic!("expected DECLINED, got {other:?}"),
    }
}

fn menu_bytes(r: &SimReader) -> Vec<u8> {
    let reply = r.last_reply().unwrap();
    assert!(matches!(reply.answer, Answer::Menu(_)), "{reply:?}");
    reply.payload.clone()
}

#[tokio::test(flavor = "current_thread")]
async fn seen_1_another_request_under_an_answered_txn_id_is_txn_id_reused() {
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-SEEN-1").await;

    // REDEEM txn t WASH approved, then REDEEM txn t OIL: not the car-wash receipt again.
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let t = r.card_txn().unwrap();
    let wash = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    let oil = r.redeem(&[(1, 1)], None).await.unwrap();
    assert_eq!(declined(oil), Wire::TXN_ID_REUSED);
    // A VOID of another original under an answered void's txn id.
    let void = approved(
        r.void(&wash.auth_code, firmware_protocol::VoidReason::CashierError)
            .await
            .unwrap(),
    );
    r.set_next_txn_id(void.txn_id).unwrap();
    let other = r
        .void("ZZ1234", firmware_protocol::VoidReason::CashierError)
        .await
        .unwrap();
    assert_eq!(declined(other), Wire::TXN_ID_REUSED);
    // A REDEEM of another quantity after a declined one (wax ×3 of 2, then ×4).
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let t3 = r.card_txn().unwrap();
    assert_eq!(
        declined(r.redeem(&[(1, 3)], None).await.unwrap()),
        Wire::NOT_ENOUGH_USES
    );
    assert_eq!(
        declined(r.redeem(&[(1, 4)], None).await.unwrap()),
        Wire::TXN_ID_REUSED
    );
    // A swipe of another (lost) card under an answered swipe's txn id: not a fresh CARD_LOST.
    r.set_next_txn_id(t3).unwrap();
    match swipe(&mut r, CARD_LOST).await {
        SwipeResult::Declined(d) => assert_eq!(d.reason, Wire::TXN_ID_REUSED),
        other => panic!("{other:?}"),
    }
    // Nothing was deducted by the refusals; QUERY still returns the first answers.
    assert_eq!(r.query(t).await.unwrap().payload, wash.payload);
    assert_eq!(r.query(void.txn_id).await.unwrap().payload, void.payload);
    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let left: Vec<(u8, u16)> = m.entries.iter().map(|e| (e.index, e.uses_left)).collect();
    assert_eq!(left, vec![(0, 10), (1, 2), (2, 3)]);
}

#[tokio::test(flavor = "current_thread")]
async fn seen_2_answers_to_card_presented_are_kept_across_sigterm_and_sigkill() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-SEEN-2").await;

    // A swipe-only transaction and a declined swipe: QUERY gets their answers.
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let (t1, m1) = (r.card_txn().unwrap(), menu_bytes(&r));
    let bad = r
        .swipe(
            "12345",
            firmware_protocol::message::EntryMode::Manual,
            "cashier-7",
        )
        .await
        .unwrap();
    assert!(matches!(bad, SwipeResult::Declined(ref d) if d.reason == Wire::BAD_CARD_NUMBER));
    let (t2, d2) = (
        r.card_txn().unwrap(),
        r.last_reply().unwrap().payload.clone(),
    );
    assert_eq!(r.query(t1).await.unwrap().payload, m1);
    assert_eq!(r.query(t2).await.unwrap().payload, d2);
    // The swipe sent again after its REDEEM: the stored menu (wash 10), not a fresh one (wash 9).
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let (t3, m3) = (r.card_txn().unwrap(), menu_bytes(&r));
    let a3 = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    r.set_next_txn_id(t3).unwrap();
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(menu_bytes(&r), m3);

    // The latest transaction is a swipe; the daemon is stopped as systemd stops it.
    r.set_next_txn_id(t3 + 1).unwrap();
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let (t4, m4) = (r.card_txn().unwrap(), menu_bytes(&r));
    daemon.stop("TERM");
    let daemon = Daemon::start(&shop);
    assert_eq!(
        r.query(t4).await.unwrap().payload,
        m4,
        "QUERY after SIGTERM"
    );
    assert_eq!(
        r.query_last().await.unwrap().payload,
        m4,
        "QUERY LAST after SIGTERM: the swipe, not the older APPROVED"
    );
    assert_eq!(r.query(t3).await.unwrap().payload, a3.payload);

    // And across a crash: the swipe's answer is in the WAL, whatever the daemon had done.
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let (t5, m5) = (r.card_txn().unwrap(), menu_bytes(&r));
    daemon.stop("KILL");
    let _daemon = Daemon::start(&shop);
    assert_eq!(
        r.query(t5).await.unwrap().payload,
        m5,
        "QUERY after SIGKILL"
    );
    assert_eq!(r.query_last().await.unwrap().payload, m5);
    // Its REDEEM is decided from the stored swipe: the daemon kept no card in memory.
    let a5 = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    assert_eq!(a5.uses_left, vec![(0, 8)]);
}

#[tokio::test(flavor = "current_thread")]
async fn seen_3_an_error_from_the_reader_is_logged_and_never_answered() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-SEEN-3").await;
    let mut error = vec![0u8; 64];
    let n = Message::Error(firmware_protocol::message::Error {
        code: ErrorCode::UNEXPECTED_MESSAGE,
        offending_type: 0x40,
        text: firmware_protocol::message::Text::from_utf8("menu not awaited"),
    })
    .emit(&mut error)
    .unwrap();
    let answer = r
        .exchange(MessageType::Error, &error[..n], Duration::from_millis(800))
        .await
        .unwrap();
    assert_eq!(answer, None, "an ERROR was answered");
    daemon.wait_log("reported an ERROR (not answered)", Duration::from_secs(5));
    assert!(daemon.log_text().contains("offending_type=0x40"));
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
}

#[tokio::test(flavor = "current_thread")]
async fn seen_4_error_texts_name_the_field_as_the_spec_does() {
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-SEEN-4").await;
    // REDEEM txn 1: one item, identity_check 3 (out of range), no identity data.
    let redeem = [1, 0, 0, 0, 1, 0, 1, 0, 3, 0];
    let (msg_type, payload) = r
        .exchange(MessageType::Redeem, &redeem, LINK)
        .await
        .unwrap()
        .unwrap();
    let Message::Error(e) = Message::parse(
        msg_type.as_u8(),
        &payload,
        firmware_protocol::TextEncoding::Utf8,
    )
    .unwrap() else {
        panic!("{msg_type:?}")
    };
    assert_eq!(e.code, ErrorCode::MALFORMED_MESSAGE);
    assert_eq!(
        e.text.to_str(),
        Some("REDEEM.identity_check: value 3 out of range")
    );
}

/// The README's hand-played session (a card number, `0x1`, `quit` typed into `redeemd
/// simulate-reader`) run twice in a row against one daemon: two redemptions, two receipts.
#[test]
fn seen_1_the_readmes_hand_played_session_twice_deducts_twice_with_two_receipts() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut auth_codes = Vec::new();
    for run in 1..=2 {
        let mut child = simulate_reader(&shop, "SIM-0001")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The shop's card with car wash ×10, typed as a person would.
        writeln!(stdin, "{}", support::number(CARD_TWO_PACKAGES)).unwrap();
        writeln!(stdin, "0x1").unwrap();
        writeln!(stdin, "quit").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {transcript}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
        let approved = transcript
            .lines()
            .find(|l| l.trim_start().starts_with("APPROVED txn"))
            .unwrap_or_else(|| panic!("run {run}: no APPROVED\n{transcript}"));
        let auth = approved
            .split("auth ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned();
        assert!(
            transcript.contains(&format!("剩余 {} 次", 10 - run)),
            "run {run}: {transcript}"
        );
        auth_codes.push(auth);
    }
    assert_ne!(auth_codes[0], auth_codes[1], "the same receipt twice");
    let store =
        redeemd::store::Store::open(&shop.state, support::keys(), support::config()).unwrap();
    assert_eq!(store.journal_info().head_seq, 2, "two redemptions");
}

/// Issue 13, item 1, for the stored answers: an answer edited in the database file (as someone with
/// the file and a SQLite tool, not the key, would) never reaches a reader, and `journal verify`
/// names the row.
#[tokio::test(flavor = "current_thread")]
async fn an_edited_stored_answer_never_reaches_a_reader_and_journal_verify_names_it() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-EDIT").await;
    menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    let txn = r.card_txn().unwrap();
    let a = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    daemon.stop("TERM");
    {
        let db = rusqlite::Connection::open(shop.state.join(redeemd::store::DB_FILE)).unwrap();
        db.execute_batch(
            "DROP TRIGGER journal_append_only_update; DROP TRIGGER journal_append_only_delete;",
        )
        .unwrap();
        // Another authorization code on the receipt: its second digit.
        let edited = db
            .execute(
                "UPDATE outcome SET reply = CAST(substr(reply, 1, 7) || 'X' || substr(reply, 9) AS BLOB) \
                 WHERE request_type = 33",
                [],
            )
            .unwrap();
        assert_eq!(edited, 1);
    }
    let daemon = Daemon::start(&shop);
    for (what, reply) in [
        ("QUERY", r.query(txn).await.unwrap()),
        ("QUERY LAST", r.query_last().await.unwrap()),
        ("REDEEM again", r.redeem_again().await.unwrap()),
    ] {
        assert_ne!(reply.payload, a.payload, "{what}");
        assert_eq!(
            decline_of(&reply),
            (reply.answer.txn_id(), Wire::INTEGRITY_FAILURE),
            "{what}"
        );
    }
    daemon.wait_log(
        &format!("outcome reader R-EDIT txn {txn}: MAC mismatch (REDEEM answer edited)"),
        Duration::from_secs(5),
    );
    let out = shop.redeemd().args(["journal", "verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL outcome reader R-EDIT txn {txn}: MAC mismatch (REDEEM answer edited)"
        )),
        "{text}"
    );
    // Nothing was decided again.
    let m = menu(swipe(&mut r, CARD_TWO_PACKAGES).await);
    assert_eq!(m.entries[0].uses_left, 9);
}

/// PROTOCOL.md §5.16, §8.6: a decision that cannot start within T_DISPLAY (the store held: here by
/// the daemon's test trigger that takes its lock for good) gets DISPLAY "please wait", once.
#[tokio::test(flavor = "current_thread")]
async fn a_decision_waiting_for_the_store_gets_one_display_please_wait() {
    let shop = shop(1, "");
    let daemon = Daemon::start_with(
        &shop,
        &[("REDEEMD_TEST_WEDGE_STORE_AFTER_MS", "1500".into())],
    );
    let line = redeemd::simulator::Line::open(
        &redeemd::simulator::LineSpec::CreatePty,
        crate::shop::BAUD,
        Some(&shop.port(0)),
    )
    .unwrap();
    let settings = redeemd::simulator::ReaderSettings {
        serial: "R-WAIT".into(),
        txn_timeout: Duration::from_secs(3),
        ..redeemd::simulator::ReaderSettings::default()
    };
    let mut r = SimReader::new(line, settings).unwrap();
    r.wait_link_up(LINK).await.unwrap();
    daemon.wait_log("test trigger: wedging the store", Duration::from_secs(10));
    let started = std::time::Instant::now();
    let e = r
        .swipe(
            &support::number(CARD_TWO_PACKAGES),
            firmware_protocol::message::EntryMode::Magstripe,
            "cashier-7",
        )
        .await
        .unwrap_err()
        .to_string();
    // DISPLAY after about a second restarted the reader's 3 s timer once: ~4 s, not 3 s.
    assert!(e.contains("the screen showed: 请稍候 / please wait"), "{e}");
    assert!(
        started.elapsed() >= Duration::from_millis(3900),
        "{:?}",
        started.elapsed()
    );
    let log = daemon.log_text();
    assert_eq!(
        log.matches("DISPLAY sent to the reader").count(),
        1,
        "{log}"
    );
}
