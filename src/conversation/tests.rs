//! The rules of PROTOCOL.md §8 against the conversation core, one test per MUST, each named after
//! its section: a [`Conversation`] on a virtual clock (link time in milliseconds, wall time for
//! the store), its jobs carried out by [`execute`] against a real store in a temporary directory —
//! as the daemon's driver does, without the serial port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use firmware_protocol::message::{
    CardPresented, DeclineReason as Wire, EntryMode, Error as ErrorMessage, Identity, List,
    RedeemItem, Void, VoidReason,
};

use super::execute::execute;
use super::*;
use crate::engine::Now;
use crate::store::Store;

#[path = "../../tests/it/support.rs"]
#[allow(dead_code)]
mod support;
use support::{T0, number};

const READER: &str = "R-1";

/// An answer as it went out: its type and its payload bytes.
type Sent = (MessageType, Vec<u8>);

/// A counter: the store, the conversation of one reader, the clocks, and what went out.
struct Counter {
    dir: tempfile::TempDir,
    store: Store,
    conversation: Conversation,
    /// Link clock, milliseconds.
    ms: u64,
    sent: Vec<Sent>,
    notes: Vec<Note>,
    /// Jobs are held back, as when the store's lock is taken, until [`Counter::release`].
    hold: bool,
    held: Vec<(Ticket, Job)>,
}

impl Counter {
    fn new() -> Counter {
        let dir = tempfile::tempdir().unwrap();
        let store = support::store_with_cards(dir.path(), 8);
        Counter::on(dir, store)
    }

    /// A counter whose cache holds `cards` (card number index, body).
    fn with_cards(cards: &[(u64, Option<redeemd_contract::Card>)]) -> Counter {
        let dir = tempfile::tempdir().unwrap();
        let mut store = support::open(dir.path());
        let bundle = support::bundle(
            redeemd_contract::snapshot::BundleKind::Full,
            1,
            0,
            cards,
            support::T0 + 1000 * support::HOUR,
        );
        store
            .install_bundle(&bundle[..], support::now(support::T0))
            .unwrap();
        Counter::on(dir, store)
    }

    fn on(dir: tempfile::TempDir, store: Store) -> Counter {
        let mut c = Counter {
            dir,
            store,
            conversation: Conversation::new(Language::Zh, 480),
            ms: 0,
            sent: Vec::new(),
            notes: Vec::new(),
            hold: false,
            held: Vec::new(),
        };
        c.link_up();
        c
    }

    fn at(&self) -> Instant {
        Instant::from_millis(self.ms)
    }

    /// The store's clock: the fixtures' day, moving with the link clock.
    fn now(&self) -> Now {
        Now {
            wall_ms: T0 + i64::try_from(self.ms).unwrap(),
            boot_ms: 1000 + self.ms,
        }
    }

    fn link_up(&mut self) {
        self.conversation
            .handle_link_up(self.at(), READER, TextEncoding::Utf8);
    }

    fn link_down(&mut self) {
        self.conversation.handle_link_down(self.at());
    }

    /// The daemon restarts: the store is opened again, the conversation starts afresh.
    fn restart(&mut self) {
        self.store = support::open(self.dir.path());
        self.conversation = Conversation::new(Language::Zh, 480);
        self.link_up();
    }

    fn advance(&mut self, ms: u64) {
        self.ms += ms;
        self.conversation.handle_timeout(self.at());
        self.pump();
    }

    /// Delivers `message` as the session would; returns what went out because of it.
    fn deliver(&mut self, message: &Message<'_>) -> Vec<Sent> {
        let mut buf = vec![0u8; 4096];
        let n = message.emit(&mut buf).unwrap();
        self.deliver_raw(message.message_type(), &buf[..n])
    }

    fn deliver_raw(&mut self, msg_type: MessageType, payload: &[u8]) -> Vec<Sent> {
        let before = self.sent.len();
        self.conversation
            .handle_message(self.at(), msg_type, payload);
        self.pump();
        self.sent[before..].to_vec()
    }

    /// The one answer `message` gets.
    fn ask(&mut self, message: &Message<'_>) -> Sent {
        let sent = self.deliver(message);
        assert_eq!(sent.len(), 1, "{sent:?}");
        sent.into_iter().next().unwrap()
    }

    /// Carries out the effects, as the driver does.
    fn pump(&mut self) {
        while let Some(effect) = self.conversation.poll_effect() {
            match effect {
                Effect::Decide { ticket, job } if self.hold => self.held.push((ticket, job)),
                Effect::Decide { ticket, job } => {
                    let now = self.now();
                    let decided = execute(&mut self.store, &job, now);
                    self.conversation.handle_decided(self.at(), ticket, decided);
                }
                Effect::Send {
                    msg_type, payload, ..
                } => self.sent.push((msg_type, payload)),
                Effect::Log(note) => self.notes.push(note),
            }
        }
    }

    /// Lets the held jobs through (the store's lock is free again).
    fn release(&mut self) -> Vec<Sent> {
        let before = self.sent.len();
        self.hold = false;
        for (ticket, job) in std::mem::take(&mut self.held) {
            let now = self.now();
            let decided = execute(&mut self.store, &job, now);
            self.conversation.handle_decided(self.at(), ticket, decided);
            self.pump();
        }
        self.pump();
        self.sent[before..].to_vec()
    }

    fn journal_rows(&self) -> i64 {
        support::journal_rows(&self.store)
    }

    /// Wash uses left on card `card` now, by a fresh menu (stores nothing).
    fn wash_left(&mut self, card: u64) -> u32 {
        let now = self.now();
        match self.store.menu(&number(card), now).unwrap() {
            crate::store::MenuOutcome::Menu(m) => m.entries[0].uses_left,
            crate::store::MenuOutcome::Declined(d) => panic!("{d:?}"),
        }
    }
}

fn swipe(txn_id: u32, card: &str) -> Message<'_> {
    Message::CardPresented(CardPresented {
        txn_id,
        entry_mode: EntryMode::Magstripe,
        card,
        cashier_id: "C-1",
    })
}

fn redeem(txn_id: u32, items: &[RedeemItem]) -> Message<'_> {
    Message::Redeem(firmware_protocol::message::Redeem {
        txn_id,
        items: List::new(items),
        identity: Identity::NONE,
    })
}

const fn item(entry_index: u8, quantity: u16) -> RedeemItem {
    RedeemItem {
        entry_index,
        quantity,
    }
}

const WASH: [RedeemItem; 1] = [item(0, 1)];
const WAX: [RedeemItem; 1] = [item(1, 1)];

fn void(txn_id: u32, original_auth_code: &str) -> Message<'_> {
    Message::Void(Void {
        txn_id,
        original_auth_code,
        reason: VoidReason::CashierError,
    })
}

fn query(txn_id: u32) -> Message<'static> {
    Message::Query(if txn_id == 0 {
        Query::Last
    } else {
        Query::Txn(txn_id)
    })
}

fn parsed(sent: &Sent) -> Message<'_> {
    Message::parse(sent.0.as_u8(), &sent.1, TextEncoding::Utf8).unwrap()
}

/// (txn id, reason) of a DECLINED.
fn declined(sent: &Sent) -> (u32, Wire) {
    match parsed(sent) {
        Message::Declined(d) => (d.txn_id, d.reason),
        other => panic!("expected DECLINED, got {other:?}"),
    }
}

fn auth_code(sent: &Sent) -> String {
    match parsed(sent) {
        Message::Approved(a) => a.auth_code.to_owned(),
        other => panic!("expected APPROVED, got {other:?}"),
    }
}

fn assert_menu(sent: &Sent, txn: u32) {
    match parsed(sent) {
        Message::CardMenu(m) => assert_eq!(m.txn_id, txn),
        other => panic!("expected CARD_MENU, got {other:?}"),
    }
}

#[test]
fn s8_2_a_repeated_request_gets_its_stored_answer_byte_identical_and_nothing_else() {
    let mut c = Counter::new();
    let card = number(1);
    let menu = c.ask(&swipe(1, &card));
    assert_menu(&menu, 1);
    let approved = c.ask(&redeem(1, &WASH));
    assert_eq!(c.ask(&redeem(1, &WASH)), approved, "REDEEM again");
    // The swipe again, after its REDEEM: the stored menu (wash 10), not a fresh one (wash 9).
    assert_eq!(c.ask(&swipe(1, &card)), menu, "CARD_PRESENTED again");
    let voided = c.ask(&void(2, &auth_code(&approved)));
    assert_eq!(c.ask(&void(2, &auth_code(&approved))), voided, "VOID again");
    assert_eq!(c.journal_rows(), 2, "one redemption, one void");
    assert_eq!(c.wash_left(1), 10);
}

#[test]
fn s8_2_the_same_key_with_another_payload_is_txn_id_reused() {
    let mut c = Counter::new();
    let card = number(1);
    c.ask(&swipe(1, &card));
    let wash = c.ask(&redeem(1, &WASH));
    // Another REDEEM under the answered txn 1: not the car-wash receipt again.
    assert_eq!(declined(&c.ask(&redeem(1, &WAX))), (1, Wire::TXN_ID_REUSED));
    // A VOID quoting another original under an answered void's txn id.
    let voided = c.ask(&void(2, &auth_code(&wash)));
    assert_eq!(
        declined(&c.ask(&void(2, "ZZ1234"))),
        (2, Wire::TXN_ID_REUSED)
    );
    // After a declined REDEEM (wash ×11 of 10), another quantity is not decided afresh.
    c.ask(&swipe(3, &card));
    assert_eq!(
        declined(&c.ask(&redeem(3, &[item(0, 11)]))),
        (3, Wire::NOT_ENOUGH_USES)
    );
    assert_eq!(
        declined(&c.ask(&redeem(3, &[item(0, 12)]))),
        (3, Wire::TXN_ID_REUSED)
    );
    // Another card under an answered swipe's txn id.
    assert_eq!(
        declined(&c.ask(&swipe(3, &number(2)))),
        (3, Wire::TXN_ID_REUSED)
    );
    // Nothing was deducted by the refusals, and QUERY still returns the first answers.
    assert_eq!(c.journal_rows(), 2);
    assert_eq!(c.ask(&query(1)), wash);
    assert_eq!(c.ask(&query(2)), voided);
}

#[test]
fn s8_2_a_txn_id_belongs_to_one_transaction() {
    let mut c = Counter::new();
    let card = number(1);
    c.ask(&swipe(1, &card));
    let approved = c.ask(&redeem(1, &WASH));
    let code = auth_code(&approved);
    assert_eq!(declined(&c.ask(&void(1, &code))), (1, Wire::TXN_ID_REUSED));
    c.ask(&void(2, &code));
    assert_eq!(declined(&c.ask(&swipe(2, &card))), (2, Wire::TXN_ID_REUSED));
    assert_eq!(
        declined(&c.ask(&redeem(2, &WASH))),
        (2, Wire::TXN_ID_REUSED)
    );
    assert_eq!(c.journal_rows(), 2);
}

#[test]
fn s8_2_answers_to_card_presented_are_stored() {
    let mut c = Counter::new();
    let menu = c.ask(&swipe(1, &number(1)));
    let bad_card = c.ask(&swipe(2, "12345"));
    assert_eq!(declined(&bad_card), (2, Wire::BAD_CARD_NUMBER));
    assert_eq!(c.ask(&query(1)), menu, "a swipe-only transaction");
    assert_eq!(c.ask(&query(2)), bad_card, "a declined swipe");
    c.restart();
    assert_eq!(c.ask(&query(1)), menu, "after a restart");
    assert_eq!(c.ask(&query(2)), bad_card);
}

#[test]
fn s8_2_a_redeem_is_decided_from_its_stored_swipe_after_a_restart() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    c.restart();
    let approved = c.ask(&redeem(1, &WASH));
    auth_code(&approved);
    assert_eq!(c.wash_left(1), 9);
    let (rec, _) = c
        .store
        .journal_records(1, 1)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    assert_eq!((rec.reader_txn_id, rec.cashier_id.as_str()), (1, "C-1"));
}

#[test]
fn s8_2_a_redeem_without_a_menu_is_no_card_and_is_not_stored() {
    let mut c = Counter::new();
    assert_eq!(declined(&c.ask(&redeem(9, &WASH))), (9, Wire::NO_CARD));
    assert_eq!(declined(&c.ask(&query(9))), (9, Wire::TXN_UNKNOWN));
    // After a declined swipe: NO_CARD, and QUERY still returns the swipe's decline.
    let bad_card = c.ask(&swipe(10, "12345"));
    assert_eq!(declined(&c.ask(&redeem(10, &WASH))), (10, Wire::NO_CARD));
    assert_eq!(c.ask(&query(10)), bad_card);
    assert_eq!(c.journal_rows(), 0);
}

#[test]
fn s8_2_an_answer_that_describes_the_terminal_is_not_stored() {
    let mut c = Counter::new();
    let card = support::card_ref(3);
    c.store
        .connection()
        .execute(
            "UPDATE cache_entry SET mac = zeroblob(32) WHERE card_ref = ?1",
            [&card.0[..]],
        )
        .unwrap();
    assert_eq!(
        declined(&c.ask(&swipe(1, &number(3)))),
        (1, Wire::INTEGRITY_FAILURE)
    );
    assert!(
        c.notes
            .iter()
            .any(|n| matches!(n, Note::StoreProblem { problem, .. }
            if problem.contains("cache entry") && problem.contains("MAC mismatch"))),
        "{:?}",
        c.notes
    );
    assert_eq!(declined(&c.ask(&query(1))), (1, Wire::TXN_UNKNOWN));
}

#[test]
fn s8_2_a_stored_answer_that_fails_its_check_is_never_sent() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    let approved = c.ask(&redeem(1, &WASH));
    // An edited stored answer (as someone with the database file, not the key, could do).
    c.store
        .connection()
        .execute(
            // The auth code's second digit (type byte, txn id, length, first digit before it).
            "UPDATE outcome SET reply = CAST(substr(reply, 1, 7) || 'X' || substr(reply, 9) AS BLOB) \
             WHERE request_type = 33",
            [],
        )
        .unwrap();
    for (what, answer) in [
        ("REDEEM again", c.ask(&redeem(1, &WASH))),
        ("QUERY", c.ask(&query(1))),
        ("QUERY LAST", c.ask(&query(0))),
    ] {
        assert_ne!(answer, approved, "{what}");
        assert_eq!(declined(&answer).1, Wire::INTEGRITY_FAILURE, "{what}");
    }
    assert!(
        c.notes
            .iter()
            .any(|n| matches!(n, Note::StoreProblem { problem, .. }
            if problem.contains("outcome reader R-1 txn 1: MAC mismatch (REDEEM answer edited)"))),
        "{:?}",
        c.notes
    );
    assert_eq!(c.journal_rows(), 1, "nothing decided again");
}

#[test]
fn s8_2_a_deleted_redeem_answer_is_caught_and_the_redeem_is_not_decided_again() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    c.ask(&redeem(1, &WASH));
    c.store
        .connection()
        .execute("DELETE FROM outcome WHERE request_type = 33", [])
        .unwrap();
    assert_eq!(
        declined(&c.ask(&redeem(1, &WASH))),
        (1, Wire::INTEGRITY_FAILURE)
    );
    assert_eq!(c.journal_rows(), 1, "no second deduction");
    assert_eq!(c.wash_left(1), 9);
}

#[test]
fn s8_5_query_returns_the_latest_answer_of_the_transaction() {
    let mut c = Counter::new();
    let menu = c.ask(&swipe(1, &number(1)));
    assert_eq!(c.ask(&query(1)), menu);
    let approved = c.ask(&redeem(1, &WASH));
    assert_eq!(c.ask(&query(1)), approved);
    let voided = c.ask(&void(2, &auth_code(&approved)));
    assert_eq!(c.ask(&query(2)), voided);
}

#[test]
fn s8_5_query_of_a_txn_without_a_stored_answer_is_txn_unknown_with_its_id() {
    let mut c = Counter::new();
    assert_eq!(declined(&c.ask(&query(77))), (77, Wire::TXN_UNKNOWN));
    assert_eq!(declined(&c.ask(&query(0))), (0, Wire::TXN_UNKNOWN));
}

#[test]
fn s8_5_query_last_is_the_latest_stored_transaction() {
    let mut c = Counter::new();
    let card = number(1);
    c.ask(&swipe(1, &card));
    let approved = c.ask(&redeem(1, &WASH));
    assert_eq!(c.ask(&query(0)), approved);
    let menu = c.ask(&swipe(2, &card));
    assert_eq!(c.ask(&query(0)), menu, "a swipe is a transaction");
    // Neither a refusal, nor a replay, nor a QUERY moves LAST.
    c.ask(&redeem(1, &WAX));
    c.ask(&redeem(1, &WASH));
    c.ask(&query(1));
    c.ask(&redeem(3, &WASH));
    assert_eq!(c.ask(&query(0)), menu);
    c.restart();
    assert_eq!(c.ask(&query(0)), menu, "after a restart");
}

#[test]
fn s8_5_an_answer_decided_after_its_link_went_down_is_not_sent() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    c.hold = true;
    assert!(c.deliver(&redeem(1, &WASH)).is_empty());
    c.link_down();
    c.link_up();
    assert!(c.release().is_empty(), "nothing sent on the new link");
    assert!(
        c.notes
            .iter()
            .any(|n| matches!(n, Note::NotSent { txn_id: 1, .. }))
    );
    // It was decided and stored: the reader's QUERY gets it.
    auth_code(&c.ask(&query(1)));
    assert_eq!(c.journal_rows(), 1);
}

#[test]
fn s8_6_a_decision_taking_longer_than_t_display_gets_one_display() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    c.hold = true;
    c.deliver(&redeem(1, &WASH));
    c.advance(999);
    assert_eq!(c.sent.len(), 1, "no DISPLAY before T_DISPLAY");
    c.advance(1);
    let display = c.sent.last().unwrap().clone();
    match parsed(&display) {
        Message::Display(d) => {
            assert_eq!(d.txn_id, 1);
            assert_eq!(d.text.to_str(), Some("请稍候 / please wait"));
        }
        other => panic!("{other:?}"),
    }
    c.advance(30_000);
    assert_eq!(c.sent.len(), 2, "one DISPLAY per request");
    let answer = c.release();
    auth_code(&answer[0]);
}

#[test]
fn s5_16_a_request_waiting_behind_another_gets_its_display_t_display_after_its_delivery() {
    let mut c = Counter::new();
    c.hold = true;
    c.deliver(&swipe(1, &number(1)));
    c.advance(500);
    c.deliver(&swipe(2, &number(2)));
    c.advance(500);
    let displayed = |c: &Counter| -> Vec<u32> {
        c.sent
            .iter()
            .filter_map(|s| match parsed(s) {
                Message::Display(d) => Some(d.txn_id),
                _ => None,
            })
            .collect()
    };
    assert_eq!(displayed(&c), vec![1], "the first at 1 s");
    c.advance(499);
    assert_eq!(displayed(&c), vec![1]);
    c.advance(1);
    assert_eq!(
        displayed(&c),
        vec![1, 2],
        "the second 1 s after its own delivery"
    );
    c.advance(10_000);
    let answers = c.release();
    assert_menu(&answers[0], 1);
    assert_menu(&answers[1], 2);
    assert_eq!(displayed(&c), vec![1, 2], "one DISPLAY per request");
    // A QUERY LAST waiting behind a decision gets its DISPLAY with txn id 0.
    c.hold = true;
    c.deliver(&swipe(3, &number(3)));
    c.deliver(&query(0));
    c.advance(1000);
    assert_eq!(displayed(&c), vec![1, 2, 3, 0]);
    c.release();
}

#[test]
fn s4_12_an_error_from_the_reader_is_logged_and_never_answered() {
    let mut c = Counter::new();
    let error = Message::Error(ErrorMessage {
        code: ErrorCode::UNEXPECTED_MESSAGE,
        offending_type: 0x40,
        text: Text::from_utf8("menu not expected"),
    });
    assert!(c.deliver(&error).is_empty());
    assert!(c.notes.iter().any(
        |n| matches!(n, Note::PeerError { offending_type: 0x40, text, .. }
        if text == "menu not expected")
    ));
    // And the conversation goes on.
    assert_menu(&c.ask(&swipe(1, &number(1))), 1);
}

#[test]
fn s4_12_requests_beyond_the_backlog_are_answered_busy_and_the_rest_in_order() {
    let mut c = Counter::new();
    c.hold = true;
    c.deliver(&query(1));
    let numbers: Vec<String> = (1..=5).map(number).collect();
    let mut refused = Vec::new();
    for (i, card) in numbers.iter().enumerate() {
        refused.extend(c.deliver(&swipe(10 + i as u32, card)));
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    let Message::Error(e) = parsed(&refused[0]) else {
        panic!("{refused:?}")
    };
    assert_eq!(
        (e.code, e.offending_type),
        (ErrorCode::BUSY, MessageType::CardPresented.as_u8())
    );
    c.hold = false;
    let answers = c.release();
    assert_eq!(answers.len(), 5, "the QUERY and four swipes");
    declined(&answers[0]);
    for (i, a) in answers[1..].iter().enumerate() {
        assert_menu(a, 10 + i as u32);
    }
}

#[test]
fn s5_9_a_card_with_no_usable_entry_is_declined_at_the_swipe_never_an_empty_menu() {
    use support::{HOUR, T0};
    let expired = |mut c: redeemd_contract::Card| {
        for p in &mut c.packages {
            p.valid_until_ms = T0 - HOUR;
        }
        c
    };
    let all_expired = expired(support::card(1, 10));
    let mut used_up = support::card(2, 0);
    used_up.packages[0].items[1].uses_left = 0;
    used_up.packages[1].valid_until_ms = T0 - HOUR;
    let mut no_entries = support::card(3, 10);
    no_entries.packages.clear();
    let mut not_yet = expired(support::card(4, 10));
    not_yet.packages[0].valid_from_ms = T0 + HOUR;
    not_yet.packages[0].valid_until_ms = T0 + 2 * HOUR;
    let mut c = Counter::with_cards(&[
        (1, Some(all_expired)),
        (2, Some(used_up)),
        (3, Some(no_entries)),
        (4, Some(not_yet)),
    ]);
    for (txn, card, reason) in [
        (1, 1, Wire::EXPIRED),
        (2, 2, Wire::NOT_ENOUGH_USES),
        (3, 3, Wire::NOT_ENOUGH_USES),
        (4, 4, Wire::NOT_YET_VALID),
    ] {
        let answer = c.ask(&swipe(txn, &number(card)));
        assert_eq!(declined(&answer), (txn, reason), "card {card}");
    }
}

#[test]
fn s5_14_a_void_of_a_void_is_original_not_found() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    let approved = c.ask(&redeem(1, &WASH));
    let voided = c.ask(&void(2, &auth_code(&approved)));
    assert_eq!(
        declined(&c.ask(&void(3, &auth_code(&voided)))),
        (3, Wire::ORIGINAL_NOT_FOUND)
    );
    assert_eq!(
        c.journal_rows(),
        2,
        "the redemption and its void, nothing more"
    );
}

#[test]
fn s8_2_a_txn_id_answered_no_card_is_unused() {
    let mut c = Counter::new();
    assert_eq!(declined(&c.ask(&redeem(1, &WASH))), (1, Wire::NO_CARD));
    let menu = c.ask(&swipe(1, &number(1)));
    assert_menu(&menu, 1);
    assert_eq!(c.ask(&query(1)), menu);
    auth_code(&c.ask(&redeem(1, &WASH)));
}

#[test]
fn s5_12_a_voids_approved_carries_no_uses_left() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    let approved = c.ask(&redeem(1, &WASH));
    let Message::Approved(a) = parsed(&approved) else {
        panic!()
    };
    assert_eq!(a.uses_left.len(), 1, "a redemption's APPROVED has them");
    let voided = c.ask(&void(2, &auth_code(&approved)));
    let Message::Approved(v) = parsed(&voided) else {
        panic!("{voided:?}")
    };
    assert!(v.uses_left.is_empty());
    assert!(
        v.receipt
            .iter()
            .any(|l| l.to_str().is_some_and(|l| l.contains("剩余 10 次")))
    );
}

#[test]
fn s7_1_bad_quantity_is_more_than_999_uses_of_one_entry() {
    let mut c = Counter::new();
    c.ask(&swipe(1, &number(1)));
    assert_eq!(
        declined(&c.ask(&redeem(1, &[item(0, 600), item(0, 600)]))),
        (1, Wire::BAD_QUANTITY)
    );
    assert_eq!(c.journal_rows(), 0);
}

#[test]
fn s7_1_bad_card_number_is_not_12_to_19_digits() {
    let mut c = Counter::new();
    for (txn, card) in [
        (1, "12345"),
        (2, "62284873141592718290"),
        (3, "6228487314159271ABC"),
    ] {
        assert_eq!(
            declined(&c.ask(&swipe(txn, card))),
            (txn, Wire::BAD_CARD_NUMBER),
            "{card}"
        );
    }
    // Spaces and dashes, as printed on a card, are not part of the number.
    let spaced = "6228 4873 1415 9271 829";
    assert_eq!(spaced.replace(' ', ""), number(1));
    assert_menu(&c.ask(&swipe(4, spaced)), 4);
}
