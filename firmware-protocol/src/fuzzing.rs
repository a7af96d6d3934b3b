//! Bodies of the cargo-fuzz targets (`fuzz/fuzz_targets/`), shared with the normal test suite,
//! which runs them on the seed corpus and on pseudo-random inputs without nightly.

use crate::frame::{Decoder, WIRE_BUF_LEN};
use crate::message::{Message, TextEncoding};
use crate::session::{Config, HostSession};
use crate::time::Instant;

/// Decoder target: any bytes, any split. Checks that the decoder consumes everything, stays
/// bounded, and that every frame it yields re-encodes to bytes that decode to the same frame, and
/// that message parsing of its payload never panics and round-trips when it succeeds.
pub fn decoder(data: &[u8]) {
    // The same bytes as (type, payload) straight into the message layer: random bytes rarely carry
    // a valid CRC, so this reaches every message parser from the first input.
    if let Some((&msg_type, payload)) = data.split_first() {
        message_round_trip(msg_type, payload);
    }
    let mut decoder: Decoder = Decoder::new();
    let mut rest = data;
    while !rest.is_empty() {
        let out = decoder.push(rest);
        assert!(
            out.consumed > 0 && out.consumed <= rest.len(),
            "decoder made no progress"
        );
        if let Some(Ok(frame)) = out.result {
            let mut wire = [0u8; WIRE_BUF_LEN];
            let n = crate::frame::encode_frame(&frame.header, frame.payload, &mut wire)
                .unwrap_or_default();
            let mut again: Decoder = Decoder::new();
            let round = again.push(wire.get(..n).unwrap_or_default());
            assert_eq!(round.result, Some(Ok(frame)), "frame did not round-trip");
            message_round_trip(frame.header.msg_type, frame.payload);
        }
        rest = rest.get(out.consumed..).unwrap_or_default();
    }
}

/// Whatever parses must re-emit to the same bytes (parsing is canonical), in both encodings.
fn message_round_trip(msg_type: u8, payload: &[u8]) {
    for encoding in [TextEncoding::Utf8, TextEncoding::Gb18030] {
        if let Ok(message) = Message::parse(msg_type, payload, encoding) {
            let mut buf = [0u8; 8192];
            let len = message.emit(&mut buf);
            assert_eq!(
                len.ok().and_then(|n| buf.get(..n)),
                Some(payload),
                "parse→emit is not the identity"
            );
        }
    }
}

/// Feeds a script to a session: (control byte, chunk) pairs. Control bits 0–3 advance the clock by
/// 50 ms steps; bits 4–6 size the chunk (16 × n + 1 bytes); bit 7 turns the chunk into a frame with
/// a valid CRC (`flags, seq, ack, type, len, payload…`), so that the fuzzer reaches the link and message
/// logic instead of stopping at the CRC. Every received message is answered with `$reply`, to drive
/// the transmit path. Checks: no panic, `handle_bytes` always progresses once events are polled,
/// the transmit queue stays bounded, `poll_transmit` terminates and writes bounded frames.
macro_rules! run_script {
    ($session:expr, $data:expr, $reply:expr) => {{
        let mut now = 0u64;
        let mut wire = [0u8; WIRE_BUF_LEN];
        let mut delivered = 0usize;
        let mut rest: &[u8] = $data;
        while let Some((&control, tail)) = rest.split_first() {
            now += u64::from(control & 0x0F) * 50;
            let chunk_len = usize::from((control >> 4) & 0x07) * 16 + 1;
            let (chunk, tail) = tail.split_at(chunk_len.min(tail.len()));
            rest = tail;
            let now_i = Instant::from_millis(now);
            let mut framed = [0u8; WIRE_BUF_LEN];
            let mut input = if control & 0x80 != 0 {
                as_frame(chunk, &mut framed)
            } else {
                chunk
            };
            let mut to_answer = 0;
            while !input.is_empty() {
                let n = $session.handle_bytes(now_i, input);
                input = input.get(n..).unwrap_or_default();
                let mut polled = 0;
                while let Some(event) = $session.poll_event() {
                    if let crate::Event::Message { .. } = event {
                        to_answer += 1;
                    }
                    polled += 1;
                }
                assert!(
                    n > 0 || polled > 0,
                    "handle_bytes stalled with nothing to poll"
                );
            }
            delivered += to_answer;
            for _ in 0..to_answer {
                let _ = $session.send(&$reply);
            }
            assert!($session.queued() <= crate::session::MAX_QUEUED);
            $session.handle_timeout(now_i);
            while $session.poll_event().is_some() {}
            let mut frames = 0;
            while let Some(n) = $session.poll_transmit(now_i, &mut wire) {
                assert!(n <= WIRE_BUF_LEN);
                frames += 1;
                assert!(frames < 64, "poll_transmit never returns None");
            }
        }
        delivered
    }};
}

/// Host-session target: a script (see `run_script!`) into a host session. If the first byte is
/// odd, the session first receives a valid HELLO, so that the fuzzer starts on a live link. Every
/// message is answered with DECLINED. Returns the number of messages delivered.
pub fn host_session(data: &[u8]) -> usize {
    let mut session = HostSession::new(Config::new(115_200));
    if data.first().is_some_and(|b| b & 1 == 1) {
        let hello = Message::Hello(crate::Hello {
            version: crate::PROTOCOL_VERSION,
            max_payload: 1024,
            capabilities: crate::Capabilities(0),
            encodings: crate::Encodings::BOTH,
            boot_nonce: 1,
            serial: "FUZZ",
            firmware: "1",
        });
        let (frame, len) = canned_frame(&hello);
        let mut rest = frame.get(..len).unwrap_or_default();
        while !rest.is_empty() {
            let n = session.handle_bytes(Instant::ZERO, rest);
            rest = rest.get(n..).unwrap_or_default();
            while session.poll_event().is_some() {}
        }
    }
    let reply = Message::Declined(crate::Declined {
        txn_id: 1,
        reason: crate::DeclineReason::OTHER,
        text: crate::Text::from_utf8("fuzz"),
    });
    run_script!(session, data, reply)
}

/// Reader-session target: the same, for the reader firmware's end. If the first byte is odd, the
/// reader first sends its HELLO and receives the matching HELLO_ACK. Every message is answered
/// with QUERY LAST. Returns the number of messages delivered.
pub fn reader_session(data: &[u8]) -> usize {
    const NONCE: u64 = 0x5EED;
    let (Some(serial), Some(firmware)) = (
        crate::ShortAscii::new("FUZZ-R"),
        crate::ShortAscii::new("1"),
    ) else {
        return 0;
    };
    let identity = crate::ReaderIdentity {
        serial,
        firmware,
        capabilities: crate::Capabilities(0),
        encodings: crate::Encodings::BOTH,
    };
    let mut session = crate::ReaderSession::new(Config::new(115_200), identity, NONCE);
    if data.first().is_some_and(|b| b & 1 == 1) {
        let mut wire = [0u8; WIRE_BUF_LEN];
        while session.poll_transmit(Instant::ZERO, &mut wire).is_some() {}
        let ack = Message::HelloAck(crate::HelloAck {
            version: crate::PROTOCOL_VERSION,
            max_payload: 1024,
            encoding: TextEncoding::Utf8,
            host_flags: 0,
            boot_nonce: NONCE,
        });
        let (frame, len) = canned_frame(&ack);
        let mut rest = frame.get(..len).unwrap_or_default();
        while !rest.is_empty() {
            let n = session.handle_bytes(Instant::ZERO, rest);
            rest = rest.get(n..).unwrap_or_default();
            while session.poll_event().is_some() {}
        }
    }
    run_script!(session, data, Message::Query(crate::Query::Last))
}

/// A handshake message as a frame on the wire: (bytes, length), leading delimiter included.
fn canned_frame(message: &Message<'_>) -> ([u8; 96], usize) {
    let mut payload = [0u8; 64];
    let len = message.emit(&mut payload).unwrap_or_default();
    let header = crate::Header {
        msg_type: message.message_type().as_u8(),
        ..crate::Header::default()
    };
    let mut out = [0u8; 96];
    let n = out
        .get_mut(1..)
        .and_then(|dst| {
            crate::frame::encode_frame(&header, payload.get(..len).unwrap_or_default(), dst).ok()
        })
        .unwrap_or_default();
    (out, n + 1)
}

/// `[flags, seq, ack, type, len, payload…]` as a valid frame on the wire (payload cut to `len`
/// bytes if the chunk is longer), leading delimiter included.
fn as_frame<'a>(chunk: &[u8], out: &'a mut [u8; WIRE_BUF_LEN]) -> &'a [u8] {
    let field = |i: usize| chunk.get(i).copied().unwrap_or_default();
    let header = crate::Header {
        flags: crate::Flags(field(0)),
        seq: field(1),
        ack: field(2),
        msg_type: field(3),
    };
    let body = chunk.get(5..).unwrap_or_default();
    let payload = body.get(..usize::from(field(4))).unwrap_or(body);
    let n = out
        .get_mut(1..)
        .and_then(|dst| crate::frame::encode_frame(&header, payload, dst).ok())
        .unwrap_or_default();
    out.get(..n + 1).unwrap_or_default()
}
