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
            for encoding in [TextEncoding::Utf8, TextEncoding::Gb18030] {
                if let Ok(message) = Message::parse(frame.header.msg_type, frame.payload, encoding)
                {
                    let mut buf = [0u8; 2048];
                    let len = message.emit(&mut buf);
                    assert_eq!(
                        len.ok().and_then(|n| buf.get(..n)),
                        Some(frame.payload),
                        "parse→emit is not the identity"
                    );
                }
            }
        }
        rest = rest.get(out.consumed..).unwrap_or_default();
    }
}

/// Host-session target: the input is a script of (time step, byte chunk) pairs fed to a host
/// session, which must never panic, must keep `handle_bytes` progressing once events are polled,
/// and must keep transmitting bounded frames.
pub fn host_session(data: &[u8]) {
    let mut session = HostSession::new(Config::new(115_200));
    let mut now = 0u64;
    let mut wire = [0u8; WIRE_BUF_LEN];
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        now += u64::from(control & 0x0F) * 50;
        let chunk_len = usize::from(control >> 4) * 8 + 1;
        let (chunk, tail) = tail.split_at(chunk_len.min(tail.len()));
        rest = tail;
        let now_i = Instant::from_millis(now);
        let mut input = chunk;
        while !input.is_empty() {
            let n = session.handle_bytes(now_i, input);
            input = input.get(n..).unwrap_or_default();
            let mut polled = 0;
            while let Some(event) = session.poll_event() {
                // Echo messages back when possible, to drive the transmit path.
                if let crate::Event::Message { msg_type, payload } = event {
                    let _ = (msg_type, payload.len());
                }
                polled += 1;
            }
            assert!(
                n > 0 || polled > 0,
                "handle_bytes stalled with nothing to poll"
            );
        }
        session.handle_timeout(now_i);
        while session.poll_event().is_some() {}
        let mut frames = 0;
        while let Some(n) = session.poll_transmit(now_i, &mut wire) {
            assert!(n <= WIRE_BUF_LEN);
            frames += 1;
            assert!(frames < 64, "poll_transmit never returns None");
        }
    }
}
