//! PROTOCOL.md §9, case by case, at the session level: each malformed fixture fed to a live host
//! session gets the documented outcome, and the multi-frame and handshake cases that no single
//! fixture shows.

use firmware_protocol::frame::{Flags, Header};
use firmware_protocol::{
    Config, ErrorCode, HelloAck, InboundProblem, Instant, LinkDownReason, Message, MessageType,
    PROTOCOL_VERSION, Query, ReaderSession, Reset, ResetReason, TextEncoding, WIRE_BUF_LEN,
};

use crate::fixtures::{fixture_dir, hex_bytes};
use crate::link::{RawReader, error_reply};
use crate::sim::{Ev, identity};

enum Outcome {
    /// Discarded and NAKed.
    Nak,
    /// Discarded, nothing sent.
    Silent,
    /// ACKed and answered with this ERROR code.
    Error(ErrorCode),
}

fn fixture(name: &str) -> Vec<u8> {
    hex_bytes(&std::fs::read_to_string(fixture_dir().join(format!("{name}.hex"))).unwrap())
}

/// Brings the host's "last accepted" to `seq - 1` with valid QUERY frames, so that a fixture's
/// data frame with sequence `seq` is the expected one.
fn advance_to(raw: &mut RawReader, seq: u8) {
    for s in 1..seq {
        let mut payload = [0u8; 4];
        let n = Message::Query(Query::Txn(u32::from(s)))
            .emit(&mut payload)
            .unwrap();
        raw.data(s, MessageType::Query.as_u8(), &payload[..n]);
        raw.replies();
    }
    raw.events.clear();
}

#[test]
fn every_malformed_fixture_has_its_documented_outcome_at_a_live_host() {
    let cases = [
        ("malformed-bad-crc", Outcome::Nak),
        ("malformed-bad-cobs", Outcome::Silent),
        ("malformed-bad-cobs-long", Outcome::Nak),
        ("malformed-too-long", Outcome::Nak),
        ("malformed-too-short", Outcome::Silent),
        ("malformed-unknown-version", Outcome::Silent),
        ("malformed-length-mismatch", Outcome::Silent),
        (
            "malformed-unknown-type",
            Outcome::Error(ErrorCode::UNKNOWN_MESSAGE_TYPE),
        ),
        (
            "malformed-field-out-of-range",
            Outcome::Error(ErrorCode::MALFORMED_MESSAGE),
        ),
        // malformed-invalid-utf8 is a DISPLAY (D→R): checked at a reader, below.
        (
            "malformed-trailing-bytes",
            Outcome::Error(ErrorCode::MALFORMED_MESSAGE),
        ),
        (
            "malformed-identity-check",
            Outcome::Error(ErrorCode::MALFORMED_MESSAGE),
        ),
        ("unknown-control", Outcome::Silent),
    ];
    for (name, outcome) in cases {
        let mut raw = RawReader::connected();
        let bytes = fixture(name);
        if let Outcome::Error(_) = outcome {
            // The fixture's own sequence number: byte 2 of the decoded header.
            let mut decoder: firmware_protocol::Decoder = firmware_protocol::Decoder::new();
            let seq = decoder.push(&bytes).result.unwrap().unwrap().header.seq;
            advance_to(&mut raw, seq);
        }
        raw.bytes(&bytes);
        let replies = raw.replies();
        match outcome {
            Outcome::Nak => {
                assert_eq!(replies.len(), 1, "{name}: {replies:?}");
                assert!(replies[0].0.flags.contains(Flags::NAK), "{name}");
                assert!(raw.events.is_empty(), "{name}: {:?}", raw.events);
            }
            Outcome::Silent => {
                assert!(replies.is_empty(), "{name}: {replies:?}");
                assert!(raw.events.is_empty(), "{name}: {:?}", raw.events);
            }
            Outcome::Error(code) => {
                assert!(
                    replies.iter().all(|(h, _)| h.flags.contains(Flags::ACK)),
                    "{name}"
                );
                assert_eq!(error_reply(&replies).0, code, "{name}");
                assert!(
                    matches!(raw.events[..], [Ev::Rejected(_, _, true)]),
                    "{name}: {:?}",
                    raw.events
                );
            }
        }
        assert!(raw.host.is_up(), "{name}: the link stays up");
        // And the next good frame goes through.
        raw.events.clear();
        let next = raw.host.stats().frames_received;
        raw.bytes(&fixture("ping"));
        assert_eq!(raw.host.stats().frames_received, next + 1, "{name}");
    }
}

#[test]
fn naks_are_rate_limited_to_one_per_ack_timeout() {
    let mut raw = RawReader::connected();
    let bad = fixture("malformed-bad-crc");
    for _ in 0..10 {
        raw.bytes(&bad);
    }
    assert_eq!(raw.replies().len(), 1);
    raw.now += 300; // > T_ACK at 115,200 (283 ms)
    raw.bytes(&bad);
    assert_eq!(raw.replies().len(), 1);
    assert_eq!(raw.host.stats().naks_sent, 2);
    assert_eq!(raw.host.stats().crc_errors, 11);
}

#[test]
fn a_message_over_the_reassembly_limit_is_acked_then_refused() {
    let mut raw = RawReader::connected();
    let chunk = [0x41u8; 1024];
    for seq in 1..=5u8 {
        let header = Header {
            flags: Flags::MORE,
            seq,
            ack: 0,
            msg_type: MessageType::Query.as_u8(),
        };
        raw.bytes(&RawReader::frame(header, &chunk));
        let replies = raw.replies();
        assert!(
            replies.iter().any(|(h, _)| h.ack == seq),
            "fragment {seq} acknowledged"
        );
    }
    raw.data(6, MessageType::Query.as_u8(), &[1, 2, 3, 4]);
    assert_eq!(
        raw.events,
        vec![Ev::Rejected(0x23, InboundProblem::TooLong, true)]
    );
    assert_eq!(error_reply(&raw.replies()).0, ErrorCode::MESSAGE_TOO_LONG);
    // The next message is received normally.
    raw.ack(1, Flags::empty());
    raw.events.clear();
    raw.data(7, MessageType::Query.as_u8(), &[0, 0, 0, 0]);
    assert!(
        matches!(raw.events[..], [Ev::Msg(MessageType::Query, _)]),
        "{:?}",
        raw.events
    );
}

#[test]
fn a_fragment_of_another_type_discards_the_partial_message() {
    let mut raw = RawReader::connected();
    let header = Header {
        flags: Flags::MORE,
        seq: 1,
        ack: 0,
        msg_type: MessageType::CardPresented.as_u8(),
    };
    raw.bytes(&RawReader::frame(header, &[1, 2, 3]));
    raw.data(2, MessageType::Query.as_u8(), &[0, 0, 0, 0]);
    assert_eq!(
        raw.events,
        vec![
            Ev::Rejected(0x20, InboundProblem::FragmentMismatch, true),
            Ev::Msg(MessageType::Query, vec![0, 0, 0, 0])
        ]
    );
    assert_eq!(error_reply(&raw.replies()).0, ErrorCode::FRAGMENT_MISMATCH);
}

#[test]
fn ping_is_answered_with_pong_and_unknown_link_control_types_are_ignored() {
    let mut raw = RawReader::connected();
    raw.bytes(&fixture("ping"));
    let replies = raw.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0.msg_type, MessageType::Pong.as_u8());
    let header = Header {
        flags: Flags::ACK,
        seq: 0,
        ack: 0,
        msg_type: 0x1F,
    };
    raw.bytes(&RawReader::frame(header, b"future"));
    assert!(raw.replies().is_empty());
    assert!(raw.events.is_empty());
    assert_eq!(raw.host.stats().unknown_control, 1);
}

#[test]
fn a_down_host_ignores_unknown_link_control_types_and_resets_known_ones() {
    // PROTOCOL.md §4.1 and §4.2: RESET answers a known non-handshake frame only.
    let mut host = firmware_protocol::HostSession::new(Config::new(115_200));
    let mut events: Vec<Ev> = Vec::new();
    let mut wire = [0u8; WIRE_BUF_LEN];
    feed!(host, Instant::ZERO, &fixture("unknown-control"), events);
    assert!(host.poll_transmit(Instant::ZERO, &mut wire).is_none());
    assert_eq!(host.stats().unknown_control, 1);
    // A known link-control type, and a data frame of a reserved type (0x7F): RESET for both.
    for known in [fixture("ping"), fixture("malformed-unknown-type")] {
        feed!(host, Instant::ZERO, &known, events);
        let n = host.poll_transmit(Instant::ZERO, &mut wire).unwrap();
        let mut decoder: firmware_protocol::Decoder = firmware_protocol::Decoder::new();
        let frame = decoder.push(&wire[..n]).result.unwrap().unwrap();
        assert_eq!(frame.header.msg_type, MessageType::Reset.as_u8());
    }
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn s4_10_a_frame_longer_than_the_negotiated_max_payload_is_accepted() {
    // PROTOCOL.md §4.10: the negotiated max payload binds senders; receivers take up to 1,024.
    let mut raw = RawReader {
        host: firmware_protocol::HostSession::new(Config::new(115_200)),
        now: 0,
        events: Vec::new(),
    };
    let hello = Message::Hello(firmware_protocol::Hello {
        version: PROTOCOL_VERSION,
        max_payload: 64,
        capabilities: firmware_protocol::Capabilities(0),
        encodings: firmware_protocol::Encodings::UTF8,
        boot_nonce: 64,
        serial: "RDR-64",
        firmware: "1",
    });
    raw.send(
        Header {
            msg_type: MessageType::Hello.as_u8(),
            ..Header::default()
        },
        &hello,
    );
    assert_eq!(raw.host.link_info().unwrap().max_payload, 64);
    raw.replies();
    let card = "6".repeat(64);
    let mut payload = [0u8; 128];
    let n = Message::CardPresented(firmware_protocol::CardPresented {
        txn_id: 1,
        entry_mode: firmware_protocol::EntryMode::Manual,
        card: &card,
        cashier_id: "CASHIER-10",
    })
    .emit(&mut payload)
    .unwrap();
    assert!(n > 64, "{n}");
    raw.events.clear();
    raw.data(1, MessageType::CardPresented.as_u8(), &payload[..n]);
    assert_eq!(
        raw.events,
        vec![Ev::Msg(MessageType::CardPresented, payload[..n].to_vec())]
    );
    assert!(raw.replies().iter().all(|(h, _)| h.ack == 1));
}

/// A link-control frame of a type this version does not know, on an UP link.
fn unknown_control_frame() -> Vec<u8> {
    let header = Header {
        flags: Flags::ACK,
        seq: 0,
        ack: 0,
        msg_type: 0x07,
    };
    RawReader::frame(header, &[])
}

#[test]
fn s4_9_an_unknown_link_control_frame_restarts_t_dead_and_has_no_other_effect() {
    // PROTOCOL.md §4.1, §4.9: a valid frame all the same, so a sign of life; nothing else.
    let mut raw = RawReader::connected();
    let dead = raw.host.config().dead_interval().as_millis() as u64;
    // Twice T_DEAD of unknown control frames, one a second, and nothing else from the reader.
    for _ in 0..(2 * dead / 1000) {
        raw.now += 1000;
        raw.host.handle_timeout(Instant::from_millis(raw.now));
        raw.bytes(&unknown_control_frame());
        let replies = raw.replies();
        assert!(
            replies
                .iter()
                .all(|(h, _)| h.msg_type == MessageType::Ping.as_u8()),
            "only the host's own heartbeats: {replies:?}"
        );
    }
    assert!(raw.host.is_up(), "{:?}", raw.events);
    assert!(raw.events.is_empty(), "{:?}", raw.events);
    assert_eq!(u64::from(raw.host.stats().unknown_control), 2 * dead / 1000);
    // Without them, the link goes down T_DEAD after the last one.
    raw.now += dead;
    raw.host.handle_timeout(Instant::from_millis(raw.now));
    while let Some(e) = raw.host.poll_event() {
        raw.events.push(e.into());
    }
    assert_eq!(raw.events, vec![Ev::Down(LinkDownReason::HeartbeatLost)]);
}

#[test]
fn s4_3_a_repeated_hello_is_the_same_link_until_the_reader_sends_a_frame_of_a_known_type() {
    // PROTOCOL.md §4.3: "no other frame received since" counts valid frames of a known type;
    // damaged frames and unknown link-control types do not.
    let mut raw = RawReader::connected();
    raw.bytes(&unknown_control_frame());
    raw.bytes(&fixture("malformed-bad-crc"));
    raw.replies();
    raw.hello();
    let replies = raw.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].0.msg_type, MessageType::HelloAck.as_u8());
    assert!(raw.events.is_empty(), "the same link: {:?}", raw.events);
    // A PING is a frame of a known type: the next HELLO is a new link.
    raw.bytes(&fixture("ping"));
    raw.replies();
    raw.hello();
    assert!(
        matches!(
            raw.events[..],
            [Ev::Down(LinkDownReason::PeerRelinked), Ev::Up(_)]
        ),
        "{:?}",
        raw.events
    );
}

/// The HELLO_REJECT the host answered first.
fn hello_reject(replies: &[(Header, Vec<u8>)]) -> firmware_protocol::HelloReject {
    match replies
        .first()
        .map(|(h, p)| Message::parse(h.msg_type, p, TextEncoding::Utf8))
    {
        Some(Ok(Message::HelloReject(reject))) => reject,
        _ => panic!("no HELLO_REJECT first: {replies:?}"),
    }
}

#[test]
fn a_hello_offering_no_known_encoding_is_refused_no_common_encoding_with_its_nonce() {
    // PROTOCOL.md §4.3, §5.3: not MALFORMED_HELLO, so that the reader learns why.
    let mut raw = RawReader::connected();
    let mut payload = [0u8; 64];
    let n = Message::Hello(firmware_protocol::Hello {
        version: PROTOCOL_VERSION,
        max_payload: 256,
        capabilities: firmware_protocol::Capabilities(0),
        encodings: firmware_protocol::Encodings::UTF8,
        boot_nonce: 0xABCD,
        serial: "RDR-NEW",
        firmware: "9",
    })
    .emit(&mut payload)
    .unwrap();
    payload[8] = 0x80; // encodings: only a bit this version does not know
    let header = Header {
        msg_type: MessageType::Hello.as_u8(),
        ..Header::default()
    };
    raw.bytes(&RawReader::frame(header, &payload[..n]));
    let reject = hello_reject(&raw.replies());
    assert_eq!(
        reject.reason,
        firmware_protocol::RejectReason::NO_COMMON_ENCODING
    );
    assert_eq!(reject.boot_nonce, 0xABCD);
}

#[test]
fn the_nak_limit_is_per_link_and_a_suppressed_nak_is_never_sent_later() {
    // PROTOCOL.md §4.5.
    let mut raw = RawReader::connected();
    let bad = fixture("malformed-bad-crc");
    raw.bytes(&bad);
    raw.bytes(&bad);
    assert_eq!(raw.replies().len(), 1, "one NAK for two damaged frames");
    raw.now += 10;
    assert!(
        raw.replies().is_empty(),
        "the suppressed NAK is not sent later"
    );
    // The reader relinks (same boot, after having sent data): a new link, a fresh limit.
    let mut payload = [0u8; 4];
    let n = Message::Query(Query::Last).emit(&mut payload).unwrap();
    raw.data(1, MessageType::Query.as_u8(), &payload[..n]);
    raw.replies();
    let hello = Message::Hello(firmware_protocol::Hello {
        version: PROTOCOL_VERSION,
        max_payload: 1024,
        capabilities: firmware_protocol::Capabilities::PRINTER,
        encodings: firmware_protocol::Encodings::UTF8,
        boot_nonce: 0x1122_3344_5566_7788,
        serial: "RDR-RAW",
        firmware: "0.1",
    });
    raw.send(
        Header {
            msg_type: MessageType::Hello.as_u8(),
            ..Header::default()
        },
        &hello,
    );
    assert_eq!(raw.replies()[0].0.msg_type, MessageType::HelloAck.as_u8());
    raw.bytes(&bad);
    let replies = raw.replies();
    assert!(
        replies.len() == 1 && replies[0].0.flags.contains(Flags::NAK),
        "{replies:?}"
    );
}

#[test]
fn malformed_hello_is_refused_with_nonce_zero() {
    let mut raw = RawReader::connected();
    let header = Header {
        msg_type: MessageType::Hello.as_u8(),
        ..Header::default()
    };
    raw.bytes(&RawReader::frame(header, &[1, 0, 0xFF, 0xFF]));
    let reject = hello_reject(&raw.replies());
    assert_eq!(reject.boot_nonce, 0);
    assert_eq!(
        reject.reason,
        firmware_protocol::RejectReason::MALFORMED_HELLO
    );
    // It also ends the established link: the reader evidently restarted.
    assert_eq!(raw.events[0], Ev::Down(LinkDownReason::PeerRebooted));
    assert!(!raw.host.is_up());
    // Malformed and of another major: parsing comes first (PROTOCOL.md §4.3).
    raw.bytes(&RawReader::frame(header, &[2, 0, 0xFF, 0xFF]));
    let reject = hello_reject(&raw.replies());
    assert_eq!(
        (reject.reason, reject.boot_nonce),
        (firmware_protocol::RejectReason::MALFORMED_HELLO, 0)
    );
}

/// A reader brought up by hand: HELLO out, HELLO_ACK in.
struct RawHost {
    reader: ReaderSession,
    events: Vec<Ev>,
}

impl RawHost {
    fn connected() -> Self {
        let mut reader = ReaderSession::new(Config::new(115_200), identity("RDR-1"), 99);
        let mut wire = [0u8; WIRE_BUF_LEN];
        while reader.poll_transmit(Instant::ZERO, &mut wire).is_some() {}
        let mut raw = RawHost {
            reader,
            events: Vec::new(),
        };
        raw.bytes(&hello_ack(99, 1024));
        assert!(raw.reader.is_up());
        raw.events.clear();
        raw
    }

    fn bytes(&mut self, bytes: &[u8]) {
        feed!(self.reader, Instant::ZERO, bytes, self.events);
    }

    fn replies(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut wire = [0u8; WIRE_BUF_LEN];
        let mut out = Vec::new();
        while let Some(n) = self.reader.poll_transmit(Instant::ZERO, &mut wire) {
            let mut decoder: firmware_protocol::Decoder = firmware_protocol::Decoder::new();
            let frame = decoder.push(&wire[..n]).result.unwrap().unwrap();
            out.push((frame.header, frame.payload.to_vec()));
        }
        out
    }
}

fn hello_ack(nonce: u64, max_payload: u16) -> Vec<u8> {
    let m = Message::HelloAck(HelloAck {
        version: PROTOCOL_VERSION,
        max_payload,
        encoding: TextEncoding::Utf8,
        host_flags: 0,
        boot_nonce: nonce,
    });
    let mut p = [0u8; 32];
    let len = m.emit(&mut p).unwrap();
    let h = Header {
        msg_type: MessageType::HelloAck.as_u8(),
        ..Header::default()
    };
    RawReader::frame(h, &p[..len])
}

#[test]
fn text_invalid_in_the_links_encoding_is_refused_by_the_reader() {
    let mut raw = RawHost::connected();
    // Sequence 1: a valid DISPLAY, so that the fixture's sequence 2 is the expected one.
    let mut payload = [0u8; 64];
    let n = Message::Display(firmware_protocol::Display {
        txn_id: 1042,
        text: firmware_protocol::Text::from_utf8("请稍候 / please wait"),
    })
    .emit(&mut payload)
    .unwrap();
    let h = Header {
        flags: Flags::ACK,
        seq: 1,
        ack: 0,
        msg_type: MessageType::Display.as_u8(),
    };
    raw.bytes(&RawReader::frame(h, &payload[..n]));
    raw.replies();
    raw.events.clear();
    raw.bytes(&fixture("malformed-invalid-utf8"));
    assert!(
        matches!(
            raw.events[..],
            [Ev::Rejected(0x43, InboundProblem::Malformed(_), true)]
        ),
        "{:?}",
        raw.events
    );
    assert_eq!(error_reply(&raw.replies()).0, ErrorCode::MALFORMED_MESSAGE);
    // A malformed ERROR is reported but never answered with an ERROR.
    raw.events.clear();
    let h = Header {
        flags: Flags::ACK,
        seq: 3,
        ack: 0,
        msg_type: MessageType::Error.as_u8(),
    };
    raw.bytes(&RawReader::frame(h, &[1, 0, 0x7F, 2, 0xC7, 0xEB]));
    assert!(
        matches!(
            raw.events[..],
            [Ev::Rejected(0x60, InboundProblem::Malformed(_), false)]
        ),
        "{:?}",
        raw.events
    );
    assert!(
        raw.replies()
            .iter()
            .all(|(h, _)| h.msg_type != MessageType::Error.as_u8())
    );
}

/// The reader side: stale or inconsistent HELLO_ACKs are ignored, RESET relinks.
#[test]
fn reader_ignores_foreign_hello_acks_and_relinks_on_reset() {
    let mut reader = ReaderSession::new(Config::new(115_200), identity("RDR-1"), 99);
    let mut wire = [0u8; WIRE_BUF_LEN];
    let mut events = Vec::new();
    let now = Instant::ZERO;
    let n = reader.poll_transmit(now, &mut wire).unwrap();
    let mut decoder: firmware_protocol::Decoder = firmware_protocol::Decoder::new();
    let hello = decoder.push(&wire[..n]);
    let hello = hello.result.unwrap().unwrap();
    assert_eq!(hello.header.msg_type, MessageType::Hello.as_u8());
    let ack = hello_ack;
    feed!(reader, now, &ack(98, 1024), events); // another boot's answer
    assert!(!reader.is_up());
    let mut small = Config::new(115_200);
    small.max_payload = 128;
    let mut small_reader = ReaderSession::new(small, identity("RDR-1"), 99);
    feed!(small_reader, now, &ack(99, 1024), events); // more than it offered
    assert!(!small_reader.is_up());
    assert!(events.is_empty());
    feed!(reader, now, &ack(99, 1024), events);
    assert!(reader.is_up());
    let reset = {
        let mut p = [0u8; 4];
        let len = Message::Reset(Reset {
            reason: ResetReason::NOT_CONNECTED,
        })
        .emit(&mut p)
        .unwrap();
        let h = Header {
            msg_type: MessageType::Reset.as_u8(),
            ..Header::default()
        };
        RawReader::frame(h, &p[..len])
    };
    feed!(reader, now, &reset, events);
    assert_eq!(events.last(), Some(&Ev::Down(LinkDownReason::PeerReset)));
    let n = reader.poll_transmit(now, &mut wire).unwrap();
    let mut decoder: firmware_protocol::Decoder = firmware_protocol::Decoder::new();
    let again = decoder.push(&wire[..n]).result.unwrap().unwrap();
    assert_eq!(
        again.header.msg_type,
        MessageType::Hello.as_u8(),
        "HELLO at once"
    );
}
