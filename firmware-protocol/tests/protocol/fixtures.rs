//! The hex vectors of `fixtures/protocol/` against the code and against PROTOCOL.md.
//!
//! Each vector is defined once, below, as a typed value. The test checks, for every one, that
//! encoding it gives the fixture file byte for byte, that decoding the file gives it back (or the
//! documented error), and that parse→emit→encode is the identity. A second test checks that every
//! ```` ```hex fixtures/protocol/NAME.hex ```` block of PROTOCOL.md holds exactly the file's bytes,
//! and every ```` ```hex decoded fixtures/protocol/NAME.hex ```` block the frame before COBS.
//! So the spec, the files and the code cannot drift apart.
//!
//! Regenerate after an intentional change: `FIXTURES_REGENERATE=1 cargo test -p firmware-protocol
//! --test protocol fixtures`, then paste the printed blocks (also written to
//! `$TMPDIR/protocol-fixture-blocks.md`) into PROTOCOL.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use firmware_protocol::frame::{Decoder, Flags, FrameError, Header, encode_frame};
use firmware_protocol::{
    Approved, Capabilities, CardMenu, CardPresented, Date, DeclineReason, Declined, Display,
    Encodings, EntryMode, Error, ErrorCode, Hello, HelloAck, HelloReject, Identity, IdentityCheck,
    List, MenuEntry, Message, MessageType, PROTOCOL_VERSION, Query, Redeem, RedeemItem,
    RejectReason, Reset, ResetReason, Text, TextEncoding, UsesLeft, Version, Void, VoidReason,
    WIRE_BUF_LEN,
};

const NONCE: u64 = 0x8F3A_5C21_07E4_B96D;
/// The menu of the fixtures, also used by the link tests.
pub const ENTRIES: [MenuEntry<'static>; 2] = [
    MenuEntry {
        index: 0,
        title: Text::from_utf8("洗车 Car wash"),
        uses_left: 9,
        expiry: Some(Date {
            year: 2027,
            month: 6,
            day: 30,
        }),
        identity: IdentityCheck::None,
    },
    MenuEntry {
        index: 1,
        title: Text::from_utf8("换机油 Oil change"),
        uses_left: 2,
        expiry: None,
        identity: IdentityCheck::PhoneLast4,
    },
];
const ITEMS: [RedeemItem; 2] = [
    RedeemItem {
        entry_index: 0,
        quantity: 1,
    },
    RedeemItem {
        entry_index: 1,
        quantity: 1,
    },
];
const USES: [UsesLeft; 2] = [
    UsesLeft {
        entry_index: 0,
        uses_left: 8,
    },
    UsesLeft {
        entry_index: 1,
        uses_left: 1,
    },
];
const RECEIPT: [Text<'static>; 3] = [
    Text::from_utf8("车友汇 Shop 0042"),
    Text::from_utf8("洗车 Car wash x1  left 8"),
    Text::from_utf8("换机油 Oil change x1  left 1"),
];
const VOID_RECEIPT: [Text<'static>; 2] = [
    Text::from_utf8("撤销 Void A7K2Q9"),
    Text::from_utf8("洗车 Car wash x1  restored, left 9"),
];
const ENTRY_TWICE: [RedeemItem; 2] = [
    RedeemItem {
        entry_index: 0,
        quantity: 600,
    },
    RedeemItem {
        entry_index: 0,
        quantity: 600,
    },
];
/// "请稍候" in GB18030.
const PLEASE_WAIT_GBK: [u8; 6] = [0xC7, 0xEB, 0xC9, 0xD4, 0xBA, 0xF2];

/// What decoding a fixture must give.
#[derive(Clone, Debug)]
enum Expect {
    /// A frame carrying this message (None: an acknowledgement-only frame).
    Message(Option<Message<'static>>),
    /// A frame whose payload fails to parse with this error text (`ParseError`'s Display).
    ParseError(&'static str),
    /// A framing error.
    FrameError(FrameError),
}

struct Vector {
    name: &'static str,
    what: &'static str,
    outcome: &'static str,
    encoding: TextEncoding,
    /// The frames of the vector (several for a fragmented message).
    frames: Vec<(Header, Vec<u8>)>,
    /// Raw wire bytes instead of encoded frames (malformed vectors).
    raw: Option<Vec<u8>>,
    expect: Expect,
}

fn header(flags: Flags, seq: u8, ack: u8, msg_type: u8) -> Header {
    Header {
        flags,
        seq,
        ack,
        msg_type,
    }
}

fn payload(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let n = message.emit(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn wire(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; WIRE_BUF_LEN];
    let n = encode_frame(header, payload, &mut out).unwrap();
    out.truncate(n);
    out
}

fn message_vector(
    name: &'static str,
    what: &'static str,
    outcome: &'static str,
    h: Header,
    message: Message<'static>,
) -> Vector {
    Vector {
        name,
        what,
        outcome,
        encoding: TextEncoding::Utf8,
        frames: vec![(h, payload(&message))],
        raw: None,
        expect: Expect::Message(Some(message)),
    }
}

fn vectors() -> Vec<Vector> {
    let ack = Flags::ACK;
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        max_payload: 1024,
        capabilities: Capabilities(0x1F),
        encodings: Encodings::BOTH,
        boot_nonce: NONCE,
        serial: "RDR-000123",
        firmware: "2.4.1",
    });
    let card_presented = Message::CardPresented(CardPresented {
        txn_id: 1042,
        entry_mode: EntryMode::Magstripe,
        card: "6222020200112233445",
        cashier_id: "C07",
    });
    let approved = Message::Approved(Approved {
        txn_id: 1042,
        auth_code: "A7K2Q9",
        journal_ref: "J-000000001042",
        uses_left: List::new(&USES),
        receipt: List::new(&RECEIPT),
    });
    let mut v = vec![
        message_vector(
            "hello",
            "HELLO, reader RDR-000123 firmware 2.4.1, protocol 1.2, max payload 1024, capabilities 0x1F, UTF-8 and GB18030",
            "host answers HELLO_ACK",
            header(Flags::empty(), 0, 0, 0x01),
            hello,
        ),
        message_vector(
            "hello-ack",
            "HELLO_ACK, protocol 1.2, max payload 1024, UTF-8, nonce echoed",
            "reader: link up",
            header(Flags::empty(), 0, 0, 0x02),
            Message::HelloAck(HelloAck {
                version: PROTOCOL_VERSION,
                max_payload: 1024,
                encoding: TextEncoding::Utf8,
                host_flags: 0,
                boot_nonce: NONCE,
            }),
        ),
        message_vector(
            "hello-reject",
            "HELLO_REJECT, incompatible version (host speaks 1.2)",
            "reader: link refused, next HELLO after T_REFUSED",
            header(Flags::empty(), 0, 0, 0x03),
            Message::HelloReject(HelloReject {
                reason: RejectReason::INCOMPATIBLE_VERSION,
                host_version: PROTOCOL_VERSION,
                boot_nonce: NONCE,
            }),
        ),
        message_vector(
            "ping",
            "PING (heartbeat), acknowledging data frame 3",
            "peer answers PONG",
            header(ack, 0, 3, 0x04),
            Message::Ping,
        ),
        message_vector(
            "pong",
            "PONG, acknowledging data frame 5",
            "none (resets the peer's T_DEAD)",
            header(ack, 0, 5, 0x05),
            Message::Pong,
        ),
        message_vector(
            "reset",
            "RESET, host has no link with this reader",
            "reader: link down (PeerReset), sends HELLO",
            header(Flags::empty(), 0, 0, 0x06),
            Message::Reset(Reset {
                reason: ResetReason::NOT_CONNECTED,
            }),
        ),
        Vector {
            name: "ack",
            what: "acknowledgement-only frame, acknowledging data frame 1",
            outcome: "the sender's frame 1 is confirmed",
            encoding: TextEncoding::Utf8,
            frames: vec![(header(ack, 0, 1, 0x00), Vec::new())],
            raw: None,
            expect: Expect::Message(None),
        },
        Vector {
            name: "nak",
            what: "NAK, last accepted data frame 1",
            outcome: "the peer retransmits its outstanding data frame (if any) now",
            encoding: TextEncoding::Utf8,
            frames: vec![(header(ack.with(Flags::NAK), 0, 1, 0x00), Vec::new())],
            raw: None,
            expect: Expect::Message(None),
        },
        message_vector(
            "card-presented",
            "CARD_PRESENTED, txn 1042, magstripe, card 6222020200112233445, cashier C07",
            "host answers CARD_MENU or DECLINED",
            header(ack, 1, 0, 0x20),
            card_presented,
        ),
        message_vector(
            "card-menu",
            "CARD_MENU for txn 1042: 张三, two entries (car wash ×9 until 2027-06-30; oil change ×2, phone check)",
            "reader shows the menu",
            header(ack, 1, 1, 0x40),
            Message::CardMenu(CardMenu {
                txn_id: 1042,
                holder_name: Text::from_utf8("张三"),
                masked_card: "6222 **** **** 3445",
                entries: List::new(&ENTRIES),
            }),
        ),
        message_vector(
            "redeem",
            "REDEEM txn 1042: entry 0 ×1, entry 1 ×1, phone last four 6688",
            "host answers APPROVED or DECLINED",
            header(ack, 2, 1, 0x21),
            Message::Redeem(Redeem {
                txn_id: 1042,
                items: List::new(&ITEMS),
                identity: Identity {
                    check: IdentityCheck::PhoneLast4,
                    data: "6688",
                },
            }),
        ),
        message_vector(
            "approved",
            "APPROVED txn 1042, auth A7K2Q9, journal J-000000001042, uses left, 3 receipt lines",
            "reader prints the receipt",
            header(ack, 3, 2, 0x41),
            approved,
        ),
        message_vector(
            "declined",
            "DECLINED txn 1042, NOT_ENOUGH_USES",
            "reader shows the text",
            header(ack, 3, 2, 0x42),
            Message::Declined(Declined {
                txn_id: 1042,
                reason: DeclineReason::NOT_ENOUGH_USES,
                text: Text::from_utf8("次数不足 Not enough uses: 1 left"),
            }),
        ),
        message_vector(
            "void",
            "VOID txn 1043 of auth A7K2Q9, cashier error",
            "host answers APPROVED or DECLINED",
            header(ack, 3, 3, 0x22),
            Message::Void(Void {
                txn_id: 1043,
                original_auth_code: "A7K2Q9",
                reason: VoidReason::CashierError,
            }),
        ),
        message_vector(
            "query",
            "QUERY txn 1042",
            "host re-sends its stored answer byte for byte",
            header(ack, 4, 3, 0x23),
            Message::Query(Query::Txn(1042)),
        ),
        message_vector(
            "query-last",
            "QUERY LAST (txn id 0)",
            "host re-sends the answer to this reader's latest transaction",
            header(ack, 4, 3, 0x23),
            Message::Query(Query::Last),
        ),
        message_vector(
            "display",
            "DISPLAY txn 1042: 请稍候 / please wait",
            "reader shows the text and restarts its transaction timer",
            header(ack, 2, 2, 0x43),
            Message::Display(Display {
                txn_id: 1042,
                text: Text::from_utf8("请稍候 / please wait"),
            }),
        ),
        message_vector(
            "error",
            "ERROR UNKNOWN_MESSAGE_TYPE for type 0x7F",
            "logged; the link stays up",
            header(ack, 2, 1, 0x60),
            Message::Error(Error {
                code: ErrorCode::UNKNOWN_MESSAGE_TYPE,
                offending_type: 0x7F,
                text: Text::from_utf8("unknown message type 0x7f"),
            }),
        ),
        Vector {
            name: "display-gb18030",
            what: "DISPLAY on a GB18030 link: 请稍候 in GB18030",
            outcome: "reader shows the text",
            encoding: TextEncoding::Gb18030,
            frames: vec![(
                header(ack, 2, 2, 0x43),
                payload(&Message::Display(Display {
                    txn_id: 1042,
                    text: Text::new(&PLEASE_WAIT_GBK),
                })),
            )],
            raw: None,
            expect: Expect::Message(Some(Message::Display(Display {
                txn_id: 1042,
                text: Text::new(&PLEASE_WAIT_GBK),
            }))),
        },
    ];
    // A message spanning frames: APPROVED cut into 64-byte payloads (max payload 64 negotiated).
    let approved_bytes = payload(&approved);
    let chunks: Vec<&[u8]> = approved_bytes.chunks(64).collect();
    let frames = chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let more = if i + 1 < chunks.len() {
                Flags::MORE
            } else {
                Flags::empty()
            };
            (header(ack.with(more), 3 + i as u8, 2, 0x41), chunk.to_vec())
        })
        .collect();
    v.push(Vector {
        name: "approved-fragmented",
        what: "the APPROVED of approved.hex on a link with max payload 64: frames with MORE, then the last",
        outcome: "reassembled into the same payload as approved.hex",
        encoding: TextEncoding::Utf8,
        frames,
        raw: None,
        expect: Expect::Message(Some(approved)),
    });

    // Answers that 1.1 defines precisely (PROTOCOL.md §8.2, §8.5, §5.12, §7.1).
    v.push(message_vector(
        "declined-txn-id-reused",
        "DECLINED txn 1042, TXN_ID_REUSED: a request under an answered key with another payload",
        "reader shows the text; nothing was deducted, QUERY still returns the first answer",
        header(ack, 4, 4, 0x42),
        Message::Declined(Declined {
            txn_id: 1042,
            reason: DeclineReason::TXN_ID_REUSED,
            text: Text::from_utf8("交易号重复 txn id reused"),
        }),
    ));
    v.push(message_vector(
        "declined-txn-unknown-last",
        "DECLINED txn 0, TXN_UNKNOWN: the answer to QUERY LAST when nothing is stored for this reader",
        "reader starts a new transaction",
        header(ack, 1, 1, 0x42),
        Message::Declined(Declined {
            txn_id: 0,
            reason: DeclineReason::TXN_UNKNOWN,
            text: Text::from_utf8("无此交易记录 no such transaction"),
        }),
    ));
    v.push(message_vector(
        "approved-void",
        "APPROVED txn 1043 for a VOID: auth of the void, no uses_left entries, 2 receipt lines",
        "reader prints the receipt",
        header(ack, 4, 3, 0x41),
        Message::Approved(Approved {
            txn_id: 1043,
            auth_code: "00000437",
            journal_ref: "43",
            uses_left: List::new(&[]),
            receipt: List::new(&VOID_RECEIPT),
        }),
    ));
    v.push(message_vector(
        "redeem-entry-twice",
        "REDEEM txn 1042: entry 0 ×600 and entry 0 ×600 again (1,200 uses of one entry)",
        "host answers DECLINED BAD_QUANTITY (an entry's quantities are summed; more than 999)",
        header(ack, 2, 1, 0x21),
        Message::Redeem(Redeem {
            txn_id: 1042,
            items: List::new(&ENTRY_TWICE),
            identity: Identity::NONE,
        }),
    ));

    // Malformed vectors.
    let good = wire(&header(ack, 1, 0, 0x20), &payload(&card_presented));
    let mut bad_crc = good.clone();
    let i = bad_crc.len() - 6;
    bad_crc[i] ^= 0x01;
    assert_ne!(bad_crc[i], 0);
    v.push(raw_vector(
        "malformed-bad-crc",
        "card-presented.hex with one bit flipped (cashier id C07 → C06), CRC unchanged",
        "discarded; counted; NAK if the link is up",
        bad_crc,
        Expect::FrameError(FrameError::BadCrc {
            computed: 0,
            received: 0,
        }),
    ));
    v.push(raw_vector(
        "malformed-bad-cobs",
        "a COBS code byte (0x05) promising 4 more bytes, delimiter after 2: 3 bytes in all",
        "discarded silently: fewer than 11 bytes before the 0x00 are line noise (no NAK)",
        vec![0x05, 0x11, 0x22, 0x00],
        Expect::FrameError(FrameError::Cobs { len: 3 }),
    ));
    let mut long_bad_cobs = vec![0x10u8];
    long_bad_cobs.extend(1..=11u8);
    long_bad_cobs.push(0x00);
    v.push(raw_vector(
        "malformed-bad-cobs-long",
        "a COBS code byte (0x10) promising 15 more bytes, delimiter after 11: 12 bytes in all",
        "discarded; NAK if the link is up (11 bytes or more: a damaged frame)",
        long_bad_cobs,
        Expect::FrameError(FrameError::Cobs { len: 12 }),
    ));
    v.push(raw_vector(
        "malformed-too-short",
        "a 4-byte frame (shorter than header + CRC)",
        "discarded silently (line noise, no NAK)",
        vec![0x05, 0x01, 0x02, 0x03, 0x04, 0x00],
        Expect::FrameError(FrameError::TooShort { len: 4 }),
    ));
    let mut too_long = vec![0xFFu8; 1100];
    too_long.push(0x00);
    v.push(raw_vector(
        "malformed-too-long",
        "1,100 bytes of 0xFF then the delimiter: more than the largest frame",
        "discarded up to the 0x00; NAK if the link is up",
        too_long,
        Expect::FrameError(FrameError::TooLong { max: 1035 }),
    ));
    let mut frame = vec![2u8, 0x01, 0x00, 0x01, 0x04, 0x00, 0x00];
    push_crc(&mut frame);
    v.push(raw_vector(
        "malformed-unknown-version",
        "a PING frame (seq 0, acknowledging 1) with frame version 2 and a good CRC",
        "discarded; counted; no NAK",
        cobs_wire(&frame),
        Expect::FrameError(FrameError::UnsupportedVersion(2)),
    ));
    let mut frame = vec![1u8, 0x01, 0x00, 0x00, 0x04, 0x05, 0x00];
    push_crc(&mut frame);
    v.push(raw_vector(
        "malformed-length-mismatch",
        "a PING whose length field says 5 with no payload (good CRC)",
        "discarded; counted; no NAK",
        cobs_wire(&frame),
        Expect::FrameError(FrameError::LengthMismatch {
            declared: 5,
            actual: 0,
        }),
    ));
    v.push(frame_vector(
        "malformed-unknown-type",
        "data frame seq 1 of type 0x7F with payload \"future\"",
        "ACKed (it arrived intact), answered with ERROR UNKNOWN_MESSAGE_TYPE; link stays up",
        header(ack, 1, 0, 0x7F),
        b"future".to_vec(),
        "type: unknown message type",
    ));
    let mut bad_mode = payload(&card_presented);
    bad_mode[4] = 9;
    v.push(frame_vector(
        "malformed-field-out-of-range",
        "CARD_PRESENTED with entry_mode 9",
        "ACKed, answered with ERROR MALFORMED_MESSAGE naming the field",
        header(ack, 1, 0, 0x20),
        bad_mode,
        "CARD_PRESENTED.entry_mode: value 9 out of range",
    ));
    let gbk_on_utf8 = payload(&Message::Display(Display {
        txn_id: 1042,
        text: Text::new(&PLEASE_WAIT_GBK),
    }));
    v.push(frame_vector(
        "malformed-invalid-utf8",
        "DISPLAY carrying GB18030 bytes on a UTF-8 link",
        "ACKed, answered with ERROR MALFORMED_MESSAGE",
        header(ack, 2, 2, 0x43),
        gbk_on_utf8,
        "DISPLAY.text: not valid UTF-8 text",
    ));
    v.push(frame_vector(
        "malformed-trailing-bytes",
        "QUERY with one byte too many",
        "ACKed, answered with ERROR MALFORMED_MESSAGE",
        header(ack, 4, 3, 0x23),
        vec![0x12, 0x04, 0x00, 0x00, 0xEE],
        "QUERY: 1 unexpected bytes after the last field",
    ));
    let mut bad_identity = payload(&Message::Redeem(Redeem {
        txn_id: 1042,
        items: List::new(&ITEMS[..1]),
        identity: Identity::NONE,
    }));
    let at = bad_identity.len() - 2;
    bad_identity[at] = 3;
    v.push(frame_vector(
        "malformed-identity-check",
        "REDEEM txn 1042 with identity_check 3",
        "ACKed, answered with ERROR MALFORMED_MESSAGE naming the field as §5.11 does",
        header(ack, 2, 1, 0x21),
        bad_identity,
        "REDEEM.identity_check: value 3 out of range",
    ));
    v.push(frame_vector(
        "unknown-control",
        "a link-control frame of type 0x07 (reserved), seq 0, good CRC",
        "ignored in every state: counted, no answer; a DOWN host does not answer RESET",
        header(Flags::empty(), 0, 0, 0x07),
        Vec::new(),
        "type: unknown message type",
    ));
    v
}

fn push_crc(frame: &mut Vec<u8>) {
    let crc = firmware_protocol::frame::FRAME_CRC.checksum(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

fn cobs_wire(decoded: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; decoded.len() + decoded.len() / 254 + 2];
    let n = cobs_encode(decoded, &mut out);
    out.truncate(n);
    out.push(0);
    out
}

/// COBS as PROTOCOL.md §3.4 gives it (Cheshire & Baker, with a full 254-byte block at the very end
/// not followed by an empty one), written out here so that the malformed vectors do not depend on
/// the crate's encoder, and so that the props test can check the crate against the spec.
pub(crate) fn cobs_encode(src: &[u8], dst: &mut [u8]) -> usize {
    let (mut code_at, mut out, mut code) = (0, 1, 1u8);
    for &b in src {
        if code == 0xFF {
            dst[code_at] = 0xFF;
            code_at = out;
            out += 1;
            code = 1;
        }
        if b == 0 {
            dst[code_at] = code;
            code_at = out;
            out += 1;
            code = 1;
        } else {
            dst[out] = b;
            out += 1;
            code += 1;
        }
    }
    dst[code_at] = code;
    out
}

fn raw_vector(
    name: &'static str,
    what: &'static str,
    outcome: &'static str,
    raw: Vec<u8>,
    expect: Expect,
) -> Vector {
    Vector {
        name,
        what,
        outcome,
        encoding: TextEncoding::Utf8,
        frames: Vec::new(),
        raw: Some(raw),
        expect,
    }
}

fn frame_vector(
    name: &'static str,
    what: &'static str,
    outcome: &'static str,
    h: Header,
    payload: Vec<u8>,
    error: &'static str,
) -> Vector {
    Vector {
        name,
        what,
        outcome,
        encoding: TextEncoding::Utf8,
        frames: vec![(h, payload)],
        raw: None,
        expect: Expect::ParseError(error),
    }
}

impl Vector {
    fn wire(&self) -> Vec<u8> {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => self.frames.iter().flat_map(|(h, p)| wire(h, p)).collect(),
        }
    }
}

pub(crate) fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/protocol")
}

/// Hex tokens of a text, ignoring `#` comments and whitespace.
pub(crate) fn hex_bytes(text: &str) -> Vec<u8> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .map(|tok| u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("bad hex token {tok:?}")))
        .collect()
}

fn hex_lines(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.chunks(16) {
        let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(s, "{}", line.join(" ")).unwrap();
    }
    s
}

fn type_name(code: u8) -> String {
    match MessageType::from_u8(code) {
        Some(t) => t.name().to_string(),
        None if code == 0 => "ACK-only".to_string(),
        None => "unknown".to_string(),
    }
}

fn flag_names(flags: Flags) -> String {
    let mut names = Vec::new();
    for (f, n) in [
        (Flags::ACK, "ACK"),
        (Flags::NAK, "NAK"),
        (Flags::MORE, "MORE"),
    ] {
        if flags.contains(f) {
            names.push(n);
        }
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// The frame before COBS, one header field per line, payload in rows of 16, CRC.
fn decoded_block(h: &Header, payload: &[u8]) -> String {
    let mut s = String::new();
    let len = (payload.len() as u16).to_le_bytes();
    writeln!(s, "01                        # version 1").unwrap();
    writeln!(
        s,
        "{:02x}                        # flags: {}",
        h.flags.0,
        flag_names(h.flags)
    )
    .unwrap();
    writeln!(s, "{:02x}                        # seq {}", h.seq, h.seq).unwrap();
    writeln!(s, "{:02x}                        # ack {}", h.ack, h.ack).unwrap();
    writeln!(
        s,
        "{:02x}                        # type {}",
        h.msg_type,
        type_name(h.msg_type)
    )
    .unwrap();
    writeln!(
        s,
        "{:02x} {:02x}                     # payload length {}",
        len[0],
        len[1],
        payload.len()
    )
    .unwrap();
    if !payload.is_empty() {
        s.push_str(&hex_lines(payload));
    }
    let mut frame = vec![1u8, h.flags.0, h.seq, h.ack, h.msg_type, len[0], len[1]];
    frame.extend_from_slice(payload);
    let crc = firmware_protocol::frame::FRAME_CRC.checksum(&frame);
    let c = crc.to_le_bytes();
    writeln!(
        s,
        "{:02x} {:02x} {:02x} {:02x}               # CRC-32 0x{crc:08x}, little-endian",
        c[0], c[1], c[2], c[3]
    )
    .unwrap();
    s
}

fn fixture_text(v: &Vector) -> String {
    let mut s = String::new();
    writeln!(s, "# {}.hex — {}", v.name, v.what).unwrap();
    let expect = match &v.expect {
        Expect::Message(_) => "decodes".to_string(),
        Expect::ParseError(e) => format!("frame decodes, payload refused: {e}"),
        Expect::FrameError(e) => format!("frame error: {}", frame_error_name(e)),
    };
    writeln!(s, "# expect: {expect}").unwrap();
    writeln!(s, "# outcome: {}", v.outcome).unwrap();
    if v.encoding != TextEncoding::Utf8 {
        writeln!(s, "# encoding: {:?}", v.encoding).unwrap();
    }
    for (h, p) in &v.frames {
        writeln!(
            s,
            "# frame: flags {} seq {} ack {} type 0x{:02x} ({}) payload {} bytes",
            flag_names(h.flags),
            h.seq,
            h.ack,
            h.msg_type,
            type_name(h.msg_type),
            p.len()
        )
        .unwrap();
    }
    writeln!(s, "# wire bytes (COBS frame(s), each ending in 00):").unwrap();
    s.push_str(&hex_lines(&v.wire()));
    s
}

fn frame_error_name(e: &FrameError) -> &'static str {
    match e {
        FrameError::Cobs { .. } => "Cobs",
        FrameError::TooLong { .. } => "TooLong",
        FrameError::TooShort { .. } => "TooShort",
        FrameError::BadCrc { .. } => "BadCrc",
        FrameError::UnsupportedVersion(_) => "UnsupportedVersion",
        FrameError::LengthMismatch { .. } => "LengthMismatch",
    }
}

/// Decodes every frame of `bytes`.
fn decode_all(bytes: &[u8]) -> Vec<Result<(Header, Vec<u8>), FrameError>> {
    let mut decoder: Decoder = Decoder::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let d = decoder.push(rest);
        if let Some(r) = d.result {
            out.push(r.map(|f| (f.header, f.payload.to_vec())));
        }
        rest = &rest[d.consumed..];
    }
    assert!(decoder.is_idle(), "fixture ends inside a frame");
    out
}

#[test]
fn every_fixture_matches_the_code() {
    let regenerate = std::env::var_os("FIXTURES_REGENERATE").is_some();
    let dir = fixture_dir();
    let vectors = vectors();
    let mut names = std::collections::HashSet::new();
    for v in &vectors {
        assert!(names.insert(v.name), "duplicate vector {}", v.name);
        let path = dir.join(format!("{}.hex", v.name));
        let text = fixture_text(v);
        if regenerate {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let file = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (FIXTURES_REGENERATE=1 writes it)", path.display())
        });
        let bytes = hex_bytes(&file);
        assert_eq!(
            bytes,
            v.wire(),
            "{}: file differs from the encoder's output",
            v.name
        );
        assert_eq!(
            file, text,
            "{}: comments differ from the vector's description",
            v.name
        );

        let frames = decode_all(&bytes);
        match &v.expect {
            Expect::FrameError(expected) => {
                assert_eq!(frames.len(), 1, "{}", v.name);
                let got = frames[0].as_ref().unwrap_err();
                assert_eq!(
                    frame_error_name(got),
                    frame_error_name(expected),
                    "{}",
                    v.name
                );
                if !matches!(expected, FrameError::BadCrc { .. }) {
                    assert_eq!(got, expected, "{}", v.name);
                }
            }
            Expect::ParseError(expected) => {
                let (h, p) = frames[0].as_ref().unwrap();
                let err = Message::parse(h.msg_type, p, v.encoding).unwrap_err();
                assert_eq!(err.to_string(), *expected, "{}", v.name);
            }
            Expect::Message(expected) => {
                let frames: Vec<(Header, Vec<u8>)> =
                    frames.into_iter().map(|f| f.unwrap()).collect();
                assert_eq!(frames, v.frames, "{}: decoded frames", v.name);
                let reassembled: Vec<u8> = frames.iter().flat_map(|(_, p)| p.clone()).collect();
                let (last, _) = frames.last().unwrap();
                match expected {
                    None => assert!(reassembled.is_empty() && last.msg_type == 0),
                    Some(m) => {
                        let parsed =
                            Message::parse(last.msg_type, &reassembled, v.encoding).unwrap();
                        assert_eq!(&parsed, m, "{}", v.name);
                        assert_eq!(payload(&parsed), reassembled, "{}: re-emit", v.name);
                        let again: Vec<u8> = frames.iter().flat_map(|(h, p)| wire(h, p)).collect();
                        assert_eq!(again, bytes, "{}: re-encode", v.name);
                    }
                }
            }
        }
    }
    // No stray files.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".hex") {
            assert!(names.contains(stem), "fixture {name} has no vector");
        }
    }
    if regenerate {
        let mut md = String::new();
        for v in &vectors {
            if v.frames.len() == 1 && v.raw.is_none() {
                let (h, p) = &v.frames[0];
                writeln!(
                    md,
                    "```hex decoded fixtures/protocol/{}.hex\n{}```\n",
                    v.name,
                    decoded_block(h, p)
                )
                .unwrap();
            }
            writeln!(
                md,
                "```hex fixtures/protocol/{}.hex\n{}```\n",
                v.name,
                hex_lines(&v.wire())
            )
            .unwrap();
        }
        let out = std::env::temp_dir().join("protocol-fixture-blocks.md");
        std::fs::write(&out, &md).unwrap();
        println!("{md}");
    }
}

/// Fixtures too long to print in the spec; PROTOCOL.md describes them in words.
const NOT_PRINTED: &[&str] = &["malformed-too-long"];

#[test]
fn protocol_md_hex_dumps_are_the_fixture_files() {
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md");
    let spec = std::fs::read_to_string(&spec_path).unwrap();
    let mut printed = std::collections::HashSet::new();
    let mut lines = spec.lines();
    let mut blocks = 0;
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```hex ") else {
            continue;
        };
        let (decoded, file) = match info.strip_prefix("decoded ") {
            Some(f) => (true, f.trim()),
            None => (false, info.trim()),
        };
        let body: String = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let name = file
            .strip_prefix("fixtures/protocol/")
            .unwrap_or_else(|| panic!("block names {file}"));
        let fixture = std::fs::read_to_string(fixture_dir().join(name))
            .unwrap_or_else(|e| panic!("PROTOCOL.md cites {file}: {e}"));
        let wire = hex_bytes(&fixture);
        if decoded {
            let frames = decode_all(&wire);
            let (h, p) = frames[0].as_ref().unwrap();
            let mut frame = vec![1u8, h.flags.0, h.seq, h.ack, h.msg_type];
            frame.extend_from_slice(&(p.len() as u16).to_le_bytes());
            frame.extend_from_slice(p);
            let crc = firmware_protocol::frame::FRAME_CRC.checksum(&frame);
            frame.extend_from_slice(&crc.to_le_bytes());
            assert_eq!(
                hex_bytes(&body),
                frame,
                "PROTOCOL.md decoded dump of {file} differs"
            );
        } else {
            assert_eq!(
                hex_bytes(&body),
                wire,
                "PROTOCOL.md dump of {file} differs from the file"
            );
            printed.insert(name.trim_end_matches(".hex").to_string());
        }
        blocks += 1;
    }
    assert!(blocks > 0);
    for v in vectors() {
        if !NOT_PRINTED.contains(&v.name) {
            assert!(
                printed.contains(v.name),
                "PROTOCOL.md prints no dump of {}.hex",
                v.name
            );
        }
    }
}

#[test]
fn a_fragmented_vector_reassembles_to_the_single_frame_payload() {
    let vs = vectors();
    let single = vs.iter().find(|v| v.name == "approved").unwrap();
    let split = vs.iter().find(|v| v.name == "approved-fragmented").unwrap();
    let joined: Vec<u8> = split.frames.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(joined, single.frames[0].1);
    assert!(split.frames.len() > 1);
    assert!(
        split.frames[..split.frames.len() - 1]
            .iter()
            .all(|(h, _)| h.flags.contains(Flags::MORE))
    );
    let _ = Version { major: 1, minor: 1 };
}
