//! Link behaviour, end to end through the simulated line: handshake, exactly-once delivery under
//! faults, reboot and restart recovery, and the defined outcome of each kind of bad input.

use std::collections::{HashMap, HashSet, VecDeque};

use firmware_protocol::frame::{Decoder, Flags, Header, encode_frame};
use firmware_protocol::session::MAX_QUEUED;
use firmware_protocol::{
    Approved, Capabilities, CardMenu, CardPresented, Config, Display, Encodings, EntryMode,
    ErrorCode, Hello, HostSession, Identity, InboundProblem, Instant, LinkDownReason, List,
    Message, MessageId, MessageType, PROTOCOL_VERSION, PeerChange, Query, Redeem, RedeemItem,
    RejectReason, SendError, Text, TextEncoding, UsesLeft, Version, WIRE_BUF_LEN,
};

use crate::sim::{Ev, Faults, Sim};

fn card_presented(txn_id: u32) -> Message<'static> {
    tagged_card_presented(txn_id, "C07")
}

/// `tag` (the cashier id field) identifies one `send` call, so that the tests can tell a second
/// delivery of the same send (a protocol bug) from an application-level re-send.
fn tagged_card_presented(txn_id: u32, tag: &str) -> Message<'_> {
    Message::CardPresented(CardPresented {
        txn_id,
        entry_mode: EntryMode::Magstripe,
        card: "6222020200112233445",
        cashier_id: tag,
    })
}

use crate::fixtures::ENTRIES;

fn card_menu(txn_id: u32) -> Message<'static> {
    tagged_card_menu(txn_id, "6222 **** **** 3445")
}

/// `tag` (the masked card field) identifies one `send` call.
fn tagged_card_menu(txn_id: u32, tag: &str) -> Message<'_> {
    Message::CardMenu(CardMenu {
        txn_id,
        holder_name: Text::from_utf8("张三"),
        masked_card: tag,
        entries: List::new(&ENTRIES),
    })
}

/// (txn id, send tag) of a received CARD_PRESENTED or CARD_MENU.
fn txn_and_tag(msg_type: MessageType, payload: &[u8]) -> (u32, u32) {
    let tag = |s: &str| s.trim_start_matches('S').parse().unwrap();
    match Message::parse(msg_type.as_u8(), payload, TextEncoding::Utf8).unwrap() {
        Message::CardPresented(m) => (m.txn_id, tag(m.cashier_id)),
        Message::CardMenu(m) => (m.txn_id, tag(m.masked_card)),
        other => panic!("unexpected {other:?}"),
    }
}

fn new_events(log: &[Ev], cursor: &mut usize) -> Vec<Ev> {
    let out = log[*cursor..].to_vec();
    *cursor = log.len();
    out
}

#[test]
fn handshake_brings_both_ends_up_with_the_readers_identity() {
    let mut sim = Sim::new(1, 115_200, Faults::NONE);
    assert!(sim.run_until(2_000, Sim::both_up));
    let Ev::Up(info) = &sim.host_log[0] else {
        panic!("first host event is not LinkUp: {:?}", sim.host_log)
    };
    assert_eq!(info.reader.serial.as_str(), "RDR-000123");
    assert_eq!(info.reader.firmware.as_str(), "2.4.1");
    assert_eq!(info.boot_nonce, sim.reader.boot_nonce());
    assert_eq!(info.peer_change, PeerChange::FirstContact);
    assert_eq!(info.encoding, TextEncoding::Utf8);
    assert_eq!(info.version, PROTOCOL_VERSION);
    assert_eq!(info.max_payload, 1024);
    assert!(matches!(sim.reader_log[0], Ev::Up(_)));
    // Idle link: heartbeats only, and it stays up.
    let before = sim.frames_sent;
    sim.run_until(60_000, |_| false);
    assert!(sim.both_up());
    let heartbeats = sim.frames_sent - before;
    assert!(
        (29..=61).contains(&heartbeats),
        "{heartbeats} frames in 58 s idle"
    );
}

struct Exchange {
    /// (txn id, send tag) in delivery order.
    host_received: Vec<(u32, u32)>,
    reader_received: Vec<(u32, u32)>,
    /// Send tags the sender saw confirmed by `Delivered`.
    reader_confirmed: Vec<u32>,
    host_confirmed: Vec<u32>,
    link_downs: usize,
    finished: bool,
}

/// The reader sends `count` CARD_PRESENTED (txn 1..=count), the host answers each with DISPLAY
/// then CARD_MENU. Both apps re-send what the session reports unconfirmed after the next link-up
/// (the idempotency key is the txn id) under a new send tag.
fn exchange(seed: u64, faults: Faults, count: u32, reader_config: Config) -> Exchange {
    let mut sim = Sim::with_configs(seed, Config::new(115_200), reader_config, faults);
    let mut to_send: VecDeque<u32> = (1..=count).collect();
    let mut reader_inflight: HashMap<MessageId, (u32, u32)> = HashMap::new();
    let mut host_todo: VecDeque<u32> = VecDeque::new();
    let mut host_inflight: HashMap<MessageId, (u32, u32)> = HashMap::new();
    let (mut rc, mut hc) = (0, 0);
    let mut tag = 0u32;
    let mut out = Exchange {
        host_received: Vec::new(),
        reader_received: Vec::new(),
        reader_confirmed: Vec::new(),
        host_confirmed: Vec::new(),
        link_downs: 0,
        finished: false,
    };
    let deadline = 600_000;
    while sim.now < deadline {
        sim.step(deadline);
        let mut requeue = Vec::new();
        for ev in new_events(&sim.reader_log, &mut rc) {
            match ev {
                Ev::Up(_) => {}
                Ev::Down(_) => out.link_downs += 1,
                Ev::Unconfirmed(id, _) => {
                    requeue.extend(reader_inflight.remove(&id).map(|(t, _)| t))
                }
                Ev::Delivered(id, _) => {
                    out.reader_confirmed
                        .extend(reader_inflight.remove(&id).map(|(_, g)| g));
                }
                Ev::Msg(MessageType::CardMenu, payload) => {
                    out.reader_received
                        .push(txn_and_tag(MessageType::CardMenu, &payload));
                }
                Ev::Msg(MessageType::Display, _) => {}
                other => panic!("reader: unexpected {other:?}"),
            }
        }
        for t in requeue.into_iter().rev() {
            to_send.push_front(t);
        }
        let mut requeue = Vec::new();
        for ev in new_events(&sim.host_log, &mut hc) {
            match ev {
                Ev::Up(_) => {}
                Ev::Down(_) => out.link_downs += 1,
                Ev::Unconfirmed(id, MessageType::CardMenu) => {
                    requeue.extend(host_inflight.remove(&id).map(|(t, _)| t));
                }
                Ev::Unconfirmed(_, MessageType::Display) => {}
                Ev::Delivered(id, _) => {
                    out.host_confirmed
                        .extend(host_inflight.remove(&id).map(|(_, g)| g));
                }
                Ev::Msg(MessageType::CardPresented, payload) => {
                    let (txn, g) = txn_and_tag(MessageType::CardPresented, &payload);
                    out.host_received.push((txn, g));
                    host_todo.push_back(txn);
                }
                other => panic!("host: unexpected {other:?}"),
            }
        }
        for t in requeue.into_iter().rev() {
            host_todo.push_front(t);
        }
        while sim.reader.is_up() && sim.reader.queued() < 3 {
            let Some(txn) = to_send.pop_front() else {
                break;
            };
            tag += 1;
            let label = format!("S{tag}");
            let id = sim
                .reader
                .send(&tagged_card_presented(txn, &label))
                .unwrap();
            reader_inflight.insert(id, (txn, tag));
        }
        while sim.host.is_up() && sim.host.queued() + 2 <= MAX_QUEUED {
            let Some(txn) = host_todo.pop_front() else {
                break;
            };
            sim.host
                .send(&Message::Display(Display {
                    txn_id: txn,
                    text: Text::from_utf8("请稍候 / please wait"),
                }))
                .unwrap();
            tag += 1;
            let label = format!("S{tag}");
            let id = sim.host.send(&tagged_card_menu(txn, &label)).unwrap();
            host_inflight.insert(id, (txn, tag));
        }
        let served: HashSet<u32> = out.reader_received.iter().map(|(t, _)| *t).collect();
        if to_send.is_empty()
            && reader_inflight.is_empty()
            && host_todo.is_empty()
            && host_inflight.is_empty()
            && served.len() == count as usize
        {
            out.finished = true;
            break;
        }
    }
    assert_eq!(sim.host.stats().events_lost, 0);
    assert_eq!(sim.reader.stats().events_lost, 0);
    out
}

/// The delivery guarantees, checked on what one side received:
/// - no `send` is delivered twice (tags unique), and sends arrive in send order (tags increase);
/// - every send confirmed by `Delivered` was received;
/// - every transaction was served, first occurrences in order (re-sends after a link-down are
///   new sends of the same idempotency key).
fn check_once_in_order(received: &[(u32, u32)], confirmed: &[u32], count: u32, what: &str) {
    let tags: Vec<u32> = received.iter().map(|(_, g)| *g).collect();
    assert!(
        tags.windows(2).all(|w| w[0] < w[1]),
        "{what}: a send delivered twice or out of order: {tags:?}"
    );
    let tags: HashSet<u32> = tags.into_iter().collect();
    for c in confirmed {
        assert!(
            tags.contains(c),
            "{what}: send {c} confirmed but never received"
        );
    }
    let mut seen = HashSet::new();
    let firsts: Vec<u32> = received
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| seen.insert(*t))
        .collect();
    assert_eq!(
        firsts,
        (1..=count).collect::<Vec<_>>(),
        "{what}: not every txn, in order"
    );
}

#[test]
fn clean_line_delivers_every_message_exactly_once_in_order() {
    let ex = exchange(7, Faults::NONE, 200, Config::new(115_200));
    assert!(ex.finished);
    assert_eq!(ex.link_downs, 0);
    let txns: Vec<u32> = ex.host_received.iter().map(|(t, _)| *t).collect();
    assert_eq!(txns, (1..=200).collect::<Vec<_>>());
    let txns: Vec<u32> = ex.reader_received.iter().map(|(t, _)| *t).collect();
    assert_eq!(txns, (1..=200).collect::<Vec<_>>());
}

#[test]
fn noisy_line_delivers_every_message_exactly_once_in_order() {
    let faults = Faults {
        loss: 4,
        duplicate: 4,
        corrupt: 4,
        garbage: 3,
        max_jitter_ms: 15,
    };
    let mut total_downs = 0;
    for seed in 0..24 {
        let ex = exchange(seed, faults, 60, Config::new(115_200));
        assert!(ex.finished, "seed {seed}: did not finish");
        check_once_in_order(&ex.host_received, &ex.reader_confirmed, 60, "host");
        check_once_in_order(&ex.reader_received, &ex.host_confirmed, 60, "reader");
        if ex.link_downs == 0 {
            // Without a link-down, the session layer alone gives exactly once.
            assert_eq!(ex.host_received.len(), 60, "seed {seed}");
            assert_eq!(ex.reader_received.len(), 60, "seed {seed}");
        }
        total_downs += ex.link_downs;
    }
    // At 4 % per fault kind, four failed transmissions in a row are rare.
    assert!(total_downs <= 12, "{total_downs} link downs over 24 runs");
}

#[test]
fn hostile_line_recovers_through_link_downs() {
    let faults = Faults {
        loss: 20,
        duplicate: 10,
        corrupt: 15,
        garbage: 10,
        max_jitter_ms: 40,
    };
    let mut total_downs = 0;
    for seed in 100..108 {
        let ex = exchange(seed, faults, 30, Config::new(115_200));
        assert!(ex.finished, "seed {seed}: did not finish");
        check_once_in_order(&ex.host_received, &ex.reader_confirmed, 30, "host");
        check_once_in_order(&ex.reader_received, &ex.host_confirmed, 30, "reader");
        total_downs += ex.link_downs;
    }
    assert!(
        total_downs > 0,
        "faults this heavy should force re-handshakes"
    );
}

#[test]
fn small_negotiated_payload_fragments_and_reassembles() {
    let mut reader = Config::new(9_600);
    reader.max_payload = 64;
    let faults = Faults {
        loss: 3,
        duplicate: 3,
        corrupt: 3,
        garbage: 2,
        max_jitter_ms: 5,
    };
    let ex = exchange(5, faults, 20, reader);
    assert!(ex.finished);
    check_once_in_order(&ex.reader_received, &ex.host_confirmed, 20, "reader");
    check_once_in_order(&ex.host_received, &ex.reader_confirmed, 20, "host");
}

fn stored_approved(txn_id: u32) -> Vec<u8> {
    let lines: Vec<String> = (0..45)
        .map(|i| format!("{i:02} 洗车 Car wash ×1 ....................... 剩余 left 8"))
        .collect();
    let lines: Vec<Text<'_>> = lines.iter().map(|l| Text::from_utf8(l)).collect();
    let uses = [UsesLeft {
        entry_index: 0,
        uses_left: 8,
    }];
    let msg = Message::Approved(Approved {
        txn_id,
        auth_code: "A7K2Q9",
        journal_ref: "J-000000001042",
        uses_left: List::new(&uses),
        receipt: List::new(&lines),
    });
    let mut buf = vec![0u8; 4096];
    let n = msg.emit(&mut buf).unwrap();
    buf.truncate(n);
    assert!(n > 2048, "the receipt must span several frames");
    buf
}

#[test]
fn reader_reboot_mid_transaction_gets_the_same_answer_by_query_and_no_second_deduction() {
    let mut sim = Sim::new(3, 115_200, Faults::NONE);
    assert!(sim.run_until(2_000, Sim::both_up));
    let items = [RedeemItem {
        entry_index: 0,
        quantity: 1,
    }];
    sim.reader
        .send(&Message::Redeem(Redeem {
            txn_id: 7,
            items: List::new(&items),
            identity: Identity::NONE,
        }))
        .unwrap();
    let mut deductions: HashMap<(String, u32), u32> = HashMap::new();
    let mut stored: HashMap<(String, u32), Vec<u8>> = HashMap::new();
    let mut hc = 0;
    let serial = "RDR-000123".to_string();
    // Host app: deduct once per (serial, txn), store the answer, send DISPLAY then APPROVED.
    // The line to the reader dies the moment the answers are queued.
    let answered = sim.run_until(5_000, |s| s.host.queued() > 0);
    assert!(!answered);
    for ev in new_events(&sim.host_log, &mut hc) {
        if let Ev::Msg(MessageType::Redeem, _) = ev {
            *deductions.entry((serial.clone(), 7)).or_default() += 1;
            let bytes = stored_approved(7);
            stored.insert((serial.clone(), 7), bytes.clone());
            sim.host
                .send(&Message::Display(Display {
                    txn_id: 7,
                    text: Text::from_utf8("请稍候 / please wait"),
                }))
                .unwrap();
            sim.host.send_raw(MessageType::Approved, &bytes).unwrap();
        }
    }
    assert_eq!(deductions.len(), 1);
    sim.h2r.cut = true;
    sim.run_until(sim.now + 300, |_| false);
    sim.h2r.cut = false;
    sim.reboot_reader();
    let mut rc = 0;
    assert!(sim.run_until(sim.now + 3_000, Sim::both_up));
    let host_events = new_events(&sim.host_log, &mut hc);
    assert_eq!(
        host_events[0],
        Ev::Down(LinkDownReason::PeerRebooted),
        "{host_events:?}"
    );
    assert!(
        host_events
            .iter()
            .any(|e| matches!(e, Ev::Unconfirmed(_, MessageType::Approved))),
        "the unconfirmed APPROVED is reported: {host_events:?}"
    );
    let Some(Ev::Up(info)) = host_events.iter().find(|e| matches!(e, Ev::Up(_))) else {
        panic!("no LinkUp: {host_events:?}")
    };
    assert_eq!(info.peer_change, PeerChange::Rebooted);
    // The rebooted reader asks again instead of redeeming again.
    let _ = new_events(&sim.reader_log, &mut rc);
    sim.reader.send(&Message::Query(Query::Txn(7))).unwrap();
    let mut reprint = None;
    sim.run_until(sim.now + 5_000, |s| {
        s.reader_log
            .iter()
            .any(|e| matches!(e, Ev::Msg(MessageType::Approved, _)))
            || s.host_log
                .iter()
                .skip(hc)
                .any(|e| matches!(e, Ev::Msg(MessageType::Query, _)))
    });
    for ev in new_events(&sim.host_log, &mut hc) {
        if let Ev::Msg(MessageType::Query, payload) = ev {
            let Message::Query(Query::Txn(txn)) =
                Message::parse(MessageType::Query.as_u8(), &payload, TextEncoding::Utf8).unwrap()
            else {
                panic!()
            };
            let answer = stored.get(&(serial.clone(), txn)).unwrap();
            sim.host.send_raw(MessageType::Approved, answer).unwrap();
        }
    }
    sim.run_until(sim.now + 5_000, |s| {
        s.reader_log
            .iter()
            .any(|e| matches!(e, Ev::Msg(MessageType::Approved, _)))
    });
    for ev in new_events(&sim.reader_log, &mut rc) {
        if let Ev::Msg(MessageType::Approved, payload) = ev {
            reprint = Some(payload);
        }
    }
    assert_eq!(
        reprint.as_deref(),
        Some(&stored_approved(7)[..]),
        "byte-identical answer"
    );
    assert_eq!(deductions[&(serial, 7)], 1, "exactly one deduction");
}

#[test]
fn host_restart_is_detected_by_reset_and_the_reader_relinks() {
    let mut sim = Sim::new(4, 115_200, Faults::NONE);
    assert!(sim.run_until(2_000, Sim::both_up));
    sim.restart_host();
    let restarted = sim.now;
    assert!(sim.run_until(restarted + 5_000, |s| {
        s.reader_log.contains(&Ev::Down(LinkDownReason::PeerReset)) && s.both_up()
    }));
    // The reader's next heartbeat (≤ 2 s) meets RESET; the relink takes a few frame times.
    assert!(
        sim.now - restarted <= 2_500,
        "relinked after {} ms",
        sim.now - restarted
    );
    let Some(Ev::Up(info)) = sim.host_log.iter().find(|e| matches!(e, Ev::Up(_))) else {
        panic!()
    };
    assert_eq!(info.peer_change, PeerChange::FirstContact);
}

#[test]
fn pulled_cable_is_detected_by_heartbeat_and_unconfirmed_messages_are_reported() {
    let mut sim = Sim::new(5, 115_200, Faults::NONE);
    assert!(sim.run_until(2_000, Sim::both_up));
    sim.h2r.cut = true;
    sim.r2h.cut = true;
    let id = sim.reader.send(&card_presented(1)).unwrap();
    let pulled = sim.now;
    assert!(sim.run_until(pulled + 10_000, |s| !s.host.is_up() && !s.reader.is_up()));
    assert!(
        sim.host_log
            .contains(&Ev::Down(LinkDownReason::HeartbeatLost))
    );
    // The reader's own frame exhausted its retransmissions before the heartbeat timer ran out.
    assert!(
        sim.reader_log
            .contains(&Ev::Down(LinkDownReason::RetransmissionsExhausted))
    );
    assert!(
        sim.reader_log
            .contains(&Ev::Unconfirmed(id, MessageType::CardPresented))
    );
    assert!(
        sim.now - pulled <= 6_000 + 100,
        "host noticed after {} ms",
        sim.now - pulled
    );
    assert_eq!(
        sim.reader.send(&card_presented(2)),
        Err(SendError::LinkDown)
    );
    sim.h2r.cut = false;
    sim.r2h.cut = false;
    let plugged = sim.now;
    assert!(sim.run_until(plugged + 3_000, Sim::both_up));
    let Some(Ev::Up(info)) = sim.host_log.iter().rev().find(|e| matches!(e, Ev::Up(_))) else {
        panic!()
    };
    assert_eq!(info.peer_change, PeerChange::SameBoot);
}

#[test]
fn different_major_version_is_refused_and_retried_later() {
    let mut reader = Config::new(115_200);
    reader.version = Version { major: 2, minor: 0 };
    let mut sim = Sim::with_configs(6, Config::new(115_200), reader, Faults::NONE);
    sim.run_until(1_000, |_| false);
    assert!(!sim.host.is_up() && !sim.reader.is_up());
    assert_eq!(
        sim.host_log,
        vec![Ev::HandshakeRejected(RejectReason::INCOMPATIBLE_VERSION)]
    );
    assert_eq!(
        sim.reader_log,
        vec![Ev::HandshakeRejected(RejectReason::INCOMPATIBLE_VERSION)]
    );
    let frames = sim.frames_sent;
    sim.run_until(29_000, |_| false);
    assert_eq!(
        sim.frames_sent, frames,
        "a refused reader stays quiet for T_REFUSED"
    );
    sim.run_until(32_000, |_| false);
    assert!(sim.frames_sent > frames, "and then tries again");
}

#[test]
fn higher_minor_and_gb18030_only_readers_negotiate_down() {
    let mut reader = Config::new(115_200);
    reader.version = Version { major: 1, minor: 5 };
    let mut sim = Sim::with_configs(8, Config::new(115_200), reader, Faults::NONE);
    sim.reader = firmware_protocol::ReaderSession::new(
        reader,
        firmware_protocol::ReaderIdentity {
            encodings: Encodings::GB18030,
            ..crate::sim::identity("RDR-GBK-1")
        },
        42,
    );
    assert!(sim.run_until(2_000, Sim::both_up));
    let info = sim.reader.link_info().unwrap();
    assert_eq!(info.version, PROTOCOL_VERSION);
    assert_eq!(info.encoding, TextEncoding::Gb18030);
    // A UTF-8-only text is refused on a GB18030 link before it is queued.
    let bad = Message::Display(Display {
        txn_id: 0,
        text: Text::from_utf8("请稍候"),
    });
    assert!(matches!(sim.host.send(&bad), Err(SendError::Invalid(_))));
    let gbk = [0xC7u8, 0xEB, 0xC9, 0xD4, 0xBA, 0xF2];
    let good = Message::Display(Display {
        txn_id: 0,
        text: Text::new(&gbk),
    });
    sim.host.send(&good).unwrap();
}

#[test]
fn send_refusals_are_explicit() {
    let mut sim = Sim::new(9, 115_200, Faults::NONE);
    assert_eq!(sim.host.send(&card_menu(1)), Err(SendError::LinkDown));
    assert!(sim.run_until(2_000, Sim::both_up));
    assert_eq!(
        sim.host.send(&card_presented(1)),
        Err(SendError::NotAllowed(MessageType::CardPresented))
    );
    assert_eq!(
        sim.host.send(&Message::Ping),
        Err(SendError::NotAllowed(MessageType::Ping))
    );
    assert!(matches!(
        sim.host.send_raw(MessageType::CardMenu, &[1, 2, 3]),
        Err(SendError::Invalid(_))
    ));
    for txn in 1..=MAX_QUEUED as u32 {
        sim.host.send(&card_menu(txn)).unwrap();
    }
    assert_eq!(sim.host.send(&card_menu(99)), Err(SendError::QueueFull));
    // Bytes, not only entries, are bounded: three 3 KB answers do not fit in 4 KiB.
    let mut sim = Sim::new(10, 115_200, Faults::NONE);
    assert!(sim.run_until(2_000, Sim::both_up));
    let big = stored_approved(5);
    sim.host.send_raw(MessageType::Approved, &big).unwrap();
    assert_eq!(
        sim.host.send_raw(MessageType::Approved, &big),
        Err(SendError::QueueFull)
    );
}

/// A hand-driven reader for the bad-input tests: builds exact frames and reads the host's.
pub(crate) struct RawReader {
    pub(crate) host: HostSession,
    pub(crate) now: u64,
    pub(crate) events: Vec<Ev>,
}

impl RawReader {
    pub(crate) fn connected() -> Self {
        let mut raw = RawReader {
            host: HostSession::new(Config::new(115_200)),
            now: 0,
            events: Vec::new(),
        };
        raw.hello();
        let replies = raw.replies();
        assert_eq!(replies[0].0.msg_type, MessageType::HelloAck.as_u8());
        assert!(raw.host.is_up());
        raw.events.clear();
        raw
    }

    /// Sends this reader's HELLO (always the same boot: serial `RDR-RAW`, one nonce).
    pub(crate) fn hello(&mut self) {
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            max_payload: 1024,
            capabilities: Capabilities::PRINTER,
            encodings: Encodings::UTF8,
            boot_nonce: 0x1122_3344_5566_7788,
            serial: "RDR-RAW",
            firmware: "0.1",
        });
        self.send(
            Header {
                msg_type: 0x01,
                ..Header::default()
            },
            &hello,
        );
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        feed!(
            self.host,
            Instant::from_millis(self.now),
            bytes,
            self.events
        );
    }

    pub(crate) fn frame(header: Header, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; WIRE_BUF_LEN];
        let n = encode_frame(&header, payload, &mut out).unwrap();
        out.truncate(n);
        out
    }

    pub(crate) fn send(&mut self, header: Header, message: &Message<'_>) {
        let mut payload = [0u8; 4096];
        let n = message.emit(&mut payload).unwrap();
        self.bytes(&Self::frame(header, &payload[..n]));
    }

    pub(crate) fn data(&mut self, seq: u8, msg_type: u8, payload: &[u8]) {
        let header = Header {
            flags: Flags::empty(),
            seq,
            ack: 0,
            msg_type,
        };
        self.bytes(&Self::frame(header, payload));
    }

    /// Everything the host transmits now, decoded.
    pub(crate) fn replies(&mut self) -> Vec<(Header, Vec<u8>)> {
        let now = Instant::from_millis(self.now);
        let mut buf = [0u8; WIRE_BUF_LEN];
        let mut out = Vec::new();
        let mut decoder: Decoder = Decoder::new();
        while let Some(n) = self.host.poll_transmit(now, &mut buf) {
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let d = decoder.push(rest);
                if let Some(r) = d.result {
                    let frame = r.unwrap();
                    out.push((frame.header, frame.payload.to_vec()));
                }
                rest = &rest[d.consumed..];
            }
        }
        out
    }

    pub(crate) fn ack(&mut self, ack: u8, flags: Flags) {
        let header = Header {
            flags: Flags::ACK.with(flags),
            seq: 0,
            ack,
            msg_type: 0,
        };
        self.bytes(&Self::frame(header, &[]));
    }
}

pub(crate) fn error_reply(replies: &[(Header, Vec<u8>)]) -> (ErrorCode, u8, String) {
    let (_, payload) = replies
        .iter()
        .find(|(h, _)| h.msg_type == MessageType::Error.as_u8())
        .unwrap_or_else(|| panic!("no ERROR in {replies:?}"));
    let Message::Error(e) = Message::parse(0x60, payload, TextEncoding::Utf8).unwrap() else {
        panic!()
    };
    (
        e.code,
        e.offending_type,
        e.text.to_str().unwrap().to_string(),
    )
}

#[test]
fn unknown_type_is_acked_and_answered_with_error_and_the_link_stays_up() {
    let mut raw = RawReader::connected();
    raw.data(1, 0x7F, b"future");
    assert_eq!(
        raw.events,
        vec![Ev::Rejected(0x7F, InboundProblem::UnknownType, true)]
    );
    let replies = raw.replies();
    assert!(replies[0].0.flags.contains(Flags::ACK) && replies[0].0.ack == 1);
    let (code, offending, text) = error_reply(&replies);
    assert_eq!((code, offending), (ErrorCode::UNKNOWN_MESSAGE_TYPE, 0x7F));
    assert_eq!(text, "unknown message type 0x7f");
    assert!(raw.host.is_up());
}

#[test]
fn wrong_direction_and_malformed_payloads_are_answered_with_error() {
    let mut raw = RawReader::connected();
    let mut payload = [0u8; 256];
    let n = card_menu(1).emit(&mut payload).unwrap();
    raw.data(1, MessageType::CardMenu.as_u8(), &payload[..n]);
    let (code, ..) = error_reply(&raw.replies());
    assert_eq!(code, ErrorCode::UNEXPECTED_MESSAGE);
    // CARD_PRESENTED with entry mode 9: out of range.
    let n = card_presented(2).emit(&mut payload).unwrap();
    payload[4] = 9;
    raw.now += 10;
    raw.ack(1, Flags::empty()); // confirm the first ERROR so the next can go
    raw.data(2, MessageType::CardPresented.as_u8(), &payload[..n]);
    let (code, offending, text) = error_reply(&raw.replies());
    assert_eq!((code, offending), (ErrorCode::MALFORMED_MESSAGE, 0x20));
    assert_eq!(text, "CARD_PRESENTED.entry_mode: value 9 out of range");
    assert_eq!(
        raw.events
            .iter()
            .filter(|e| matches!(e, Ev::Rejected(..)))
            .count(),
        2,
        "{:?}",
        raw.events
    );
    assert!(!raw.events.iter().any(|e| matches!(e, Ev::Msg(..))));
}

#[test]
fn duplicates_out_of_sequence_frames_and_stray_acks_have_their_defined_outcome() {
    let mut raw = RawReader::connected();
    let mut payload = [0u8; 256];
    let n = card_presented(1).emit(&mut payload).unwrap();
    raw.data(1, 0x20, &payload[..n]);
    raw.data(1, 0x20, &payload[..n]); // retransmission of an accepted frame
    let msgs = raw
        .events
        .iter()
        .filter(|e| matches!(e, Ev::Msg(..)))
        .count();
    assert_eq!(msgs, 1, "delivered once");
    assert_eq!(raw.host.stats().duplicates, 1);
    let replies = raw.replies();
    assert!(
        replies
            .iter()
            .all(|(h, _)| h.flags.contains(Flags::ACK) && h.ack == 1)
    );
    raw.data(9, 0x20, &payload[..n]); // neither expected (2) nor last (1)
    assert_eq!(raw.host.stats().out_of_sequence, 1);
    assert!(
        raw.replies().is_empty(),
        "out-of-sequence frames get no answer"
    );
    raw.ack(200, Flags::empty()); // ACK for a sequence never sent
    assert_eq!(raw.host.stats().stray_acks, 1);
    assert!(raw.host.is_up());
    assert_eq!(
        raw.events
            .iter()
            .filter(|e| matches!(e, Ev::Msg(..)))
            .count(),
        1
    );
}

#[test]
fn nak_flood_exhausts_retransmissions_then_the_link_relinks() {
    let mut raw = RawReader::connected();
    let id = raw.host.send(&card_menu(1)).unwrap();
    let first = raw.replies();
    assert_eq!(first.len(), 1);
    let seq = first[0].0.seq;
    for i in 0..3 {
        raw.ack(0, Flags::NAK);
        let again = raw.replies();
        assert_eq!(again.len(), 1, "NAK {i} → one retransmission");
        assert_eq!(again[0].0.seq, seq);
        assert_eq!(again[0].1, first[0].1, "same bytes");
    }
    raw.ack(0, Flags::NAK);
    assert_eq!(
        raw.events,
        vec![
            Ev::Down(LinkDownReason::RetransmissionsExhausted),
            Ev::Unconfirmed(id, MessageType::CardMenu)
        ]
    );
    assert_eq!(raw.host.stats().retransmissions, 3);
    // Down: anything but HELLO is answered with RESET.
    raw.ack(0, Flags::empty());
    let replies = raw.replies();
    assert_eq!(replies[0].0.msg_type, MessageType::Reset.as_u8());
    // NAKs with nothing outstanding are ignored once up again.
    let mut again = RawReader::connected();
    again.ack(0, Flags::NAK);
    assert!(again.replies().iter().all(|(h, _)| h.msg_type != 0x20));
    assert!(again.host.is_up());
}

#[test]
fn garbage_truncated_and_oversized_input_costs_at_most_one_frame() {
    let mut sim = Sim::new(11, 115_200, Faults::NONE);
    assert!(sim.run_until(2_000, Sim::both_up));
    let mut rng = crate::sim::Rng::new(77);
    for round in 0..50 {
        let len = rng.below(3000) as usize;
        let mut junk = rng.bytes(len);
        if round % 3 == 0 {
            junk.retain(|b| *b != 0); // no delimiter at all: glued to the next frame's start
        }
        sim.inject_to_host(&junk);
        let received = sim.host.stats().frames_received;
        let sent_at = sim.now;
        // The reader's next frame (leading 0x00 ends the junk) must get through.
        sim.reader.send(&card_presented(round + 1)).unwrap();
        sim.flush();
        sim.run_until(sent_at + 50, |s| s.host.stats().frames_received > received);
        assert!(
            sim.host.stats().frames_received > received,
            "round {round}: next frame lost after {len} junk bytes"
        );
        assert!(sim.both_up());
    }
    let delivered = sim
        .host_log
        .iter()
        .filter(|e| matches!(e, Ev::Msg(..)))
        .count();
    assert_eq!(delivered, 50);
    assert!(sim.host.stats().framing_errors + sim.host.stats().crc_errors > 0);
}

#[test]
fn display_then_approved_back_to_back_arrive_in_order() {
    let mut sim = Sim::new(12, 9_600, Faults::NONE);
    assert!(sim.run_until(5_000, Sim::both_up));
    let d = sim
        .host
        .send(&Message::Display(Display {
            txn_id: 3,
            text: Text::from_utf8("请稍候 / please wait"),
        }))
        .unwrap();
    let a = sim
        .host
        .send_raw(MessageType::Approved, &stored_approved(3))
        .unwrap();
    assert!(sim.run_until(60_000, |s| {
        s.host_log
            .contains(&Ev::Delivered(a, MessageType::Approved))
    }));
    let kinds: Vec<MessageType> = sim
        .reader_log
        .iter()
        .filter_map(|e| match e {
            Ev::Msg(t, _) => Some(*t),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec![MessageType::Display, MessageType::Approved]);
    let delivered: Vec<&Ev> = sim
        .host_log
        .iter()
        .filter(|e| matches!(e, Ev::Delivered(..)))
        .collect();
    assert_eq!(
        delivered,
        vec![
            &Ev::Delivered(d, MessageType::Display),
            &Ev::Delivered(a, MessageType::Approved)
        ]
    );
}

#[test]
fn ack_timeouts_follow_the_documented_formula() {
    // PROTOCOL.md §4.7 table.
    assert_eq!(Config::new(115_200).ack_timeout().as_millis(), 283);
    assert_eq!(Config::new(9_600).ack_timeout().as_millis(), 2_286);
    assert_eq!(Config::new(9_600).hello_interval().as_millis(), 2_286);
    assert_eq!(Config::new(115_200).hello_interval().as_millis(), 1_000);
    assert_eq!(Config::new(115_200).dead_interval().as_millis(), 6_000);
}
