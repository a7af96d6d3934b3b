//! Decoder throughput and per-frame encode+decode cost, beside the wire time of the same bytes at
//! 115,200 and 9,600 baud (8N1: 10 bits per byte). Run: `cargo bench -p firmware-protocol`.
//!
//! The machine is shared and noisy: each figure is the median of 7 runs, and what matters is the
//! ratio to the wire, which must stay ≥ 1,000×.
// A benchmark harness: a failed encode of a fixed, valid frame is a bug worth a panic.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant as WallClock};

use firmware_protocol::frame::{Decoder, Flags, Header, encode_frame};
use firmware_protocol::{
    CardPresented, Config, EntryMode, Event, HostSession, Instant, MAX_PAYLOAD, Message,
    ReaderIdentity, ReaderSession, ShortAscii, WIRE_BUF_LEN,
};

const RUNS: usize = 7;

/// Median time per iteration of `f`, each run lasting about `budget`.
fn measure(budget: Duration, mut f: impl FnMut()) -> Duration {
    // Calibrate the iteration count.
    let mut iters = 1u64;
    loop {
        let start = WallClock::now();
        for _ in 0..iters {
            f();
        }
        if start.elapsed() >= budget / 10 {
            break;
        }
        iters *= 2;
    }
    let iters = iters * 10;
    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = WallClock::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / u32::try_from(iters).unwrap_or(u32::MAX)
        })
        .collect();
    samples.sort();
    samples[RUNS / 2]
}

fn frame(payload_len: usize) -> (Header, Vec<u8>) {
    let header = Header {
        flags: Flags::ACK,
        seq: 17,
        ack: 16,
        msg_type: 0x41,
    };
    // Text-like payload with some zeros, as real messages have (lengths, small integers).
    let payload = (0..payload_len)
        .map(|i| {
            if i % 29 == 0 {
                0
            } else {
                (i * 7 % 251) as u8 + 1
            }
        })
        .collect();
    (header, payload)
}

fn encode(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; WIRE_BUF_LEN];
    buf[0] = 0;
    let n = encode_frame(header, payload, &mut buf[1..]).expect("frame fits");
    buf[..n + 1].to_vec()
}

/// Wire time of `bytes` at `baud`, 8N1, exact.
fn wire_time(bytes: usize, baud: u32) -> Duration {
    Duration::from_secs_f64(bytes as f64 * 10.0 / f64::from(baud))
}

fn ratio(wire: Duration, cpu: Duration) -> f64 {
    wire.as_secs_f64() / cpu.as_secs_f64().max(1e-12)
}

fn main() {
    let budget = Duration::from_millis(300);
    println!("firmware-protocol benchmarks (median of {RUNS} runs)\n");

    // Decoder throughput over a realistic stream: small and max frames alternating, fed in
    // 64-byte reads as a UART driver delivers them.
    let mut stream = Vec::new();
    for i in 0..64 {
        let (h, p) = frame(if i % 2 == 0 { 32 } else { MAX_PAYLOAD });
        stream.extend(encode(&h, &p));
    }
    let mut decoder: Decoder = Decoder::new();
    let per_stream = measure(budget, || {
        let mut frames = 0;
        for chunk in stream.chunks(64) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let d = decoder.push(black_box(rest));
                if let Some(Ok(f)) = d.result {
                    frames += f.payload.len();
                }
                rest = &rest[d.consumed..];
            }
        }
        black_box(frames);
    });
    let bytes = stream.len() as f64;
    let mb_s = bytes / per_stream.as_secs_f64() / 1e6;
    // Seconds per byte, kept in f64: a Duration would round it to whole nanoseconds.
    let per_byte = per_stream.as_secs_f64() / bytes;
    println!("| measure | CPU | wire @ 115,200 | ratio | wire @ 9,600 | ratio |");
    println!("|---|---|---|---|---|---|");
    let w115 = wire_time(1, 115_200);
    let w96 = wire_time(1, 9_600);
    println!(
        "| decoder throughput, {} B stream in 64 B reads | {mb_s:.0} MB/s ({:.2} ns/byte) | {:.2} µs/byte | {:.0}× | {:.2} µs/byte | {:.0}× |",
        stream.len(),
        per_byte * 1e9,
        w115.as_secs_f64() * 1e6,
        w115.as_secs_f64() / per_byte,
        w96.as_secs_f64() * 1e6,
        w96.as_secs_f64() / per_byte,
    );

    for payload_len in [32, MAX_PAYLOAD] {
        let (h, p) = frame(payload_len);
        let wire_len = encode(&h, &p).len();
        let mut out = [0u8; WIRE_BUF_LEN];
        let mut decoder: Decoder = Decoder::new();
        let cpu = measure(budget, || {
            let n = encode_frame(black_box(&h), black_box(&p), &mut out).expect("fits");
            let d = decoder.push(&out[..n]);
            black_box(d.result.map(|r| r.map(|f| f.payload.len())));
        });
        let w115 = wire_time(wire_len, 115_200);
        let w96 = wire_time(wire_len, 9_600);
        println!(
            "| encode+decode, {payload_len} B payload ({wire_len} B on the wire) | {:.0} ns/frame | {:.2} ms | {:.0}× | {:.2} ms | {:.0}× |",
            cpu.as_secs_f64() * 1e9,
            w115.as_secs_f64() * 1e3,
            ratio(w115, cpu),
            w96.as_secs_f64() * 1e3,
            ratio(w96, cpu),
        );
    }

    // Whole stack: a CARD_PRESENTED from reader to host through both sessions, and the ACK back
    // (two frames on the wire per message).
    let identity = ReaderIdentity {
        serial: ShortAscii::new("RDR-BENCH").expect("valid"),
        firmware: ShortAscii::new("1.0").expect("valid"),
        capabilities: firmware_protocol::Capabilities(0),
        encodings: firmware_protocol::Encodings::UTF8,
    };
    let mut reader = ReaderSession::new(Config::new(115_200), identity, 7);
    let mut host = HostSession::new(Config::new(115_200));
    let mut wire = [0u8; WIRE_BUF_LEN];
    let now = Instant::ZERO;
    let mut pump = |reader: &mut ReaderSession, host: &mut HostSession| -> usize {
        let mut bytes = 0;
        while let Some(n) = reader.poll_transmit(now, &mut wire) {
            bytes += n;
            let mut rest = &wire[..n];
            while !rest.is_empty() {
                let used = host.handle_bytes(now, rest);
                rest = &rest[used..];
                while let Some(e) = host.poll_event() {
                    black_box(matches!(e, Event::Message { .. }));
                }
            }
        }
        while let Some(n) = host.poll_transmit(now, &mut wire) {
            bytes += n;
            let mut rest = &wire[..n];
            while !rest.is_empty() {
                let used = reader.handle_bytes(now, rest);
                rest = &rest[used..];
                while reader.poll_event().is_some() {}
            }
        }
        bytes
    };
    while !(reader.is_up() && host.is_up()) {
        pump(&mut reader, &mut host);
    }
    let message = Message::CardPresented(CardPresented {
        txn_id: 1042,
        entry_mode: EntryMode::Magstripe,
        card: "6222020200112233445",
        cashier_id: "C07",
    });
    let mut wire_bytes = 0;
    let cpu = measure(budget, || {
        reader
            .send(black_box(&message))
            .expect("link up, queue drained");
        wire_bytes = pump(&mut reader, &mut host);
    });
    let w115 = wire_time(wire_bytes, 115_200);
    let w96 = wire_time(wire_bytes, 9_600);
    println!(
        "| sessions: CARD_PRESENTED reader→host + its ACK ({wire_bytes} B on the wire) | {:.0} ns/message | {:.2} ms | {:.0}× | {:.2} ms | {:.0}× |",
        cpu.as_secs_f64() * 1e9,
        w115.as_secs_f64() * 1e3,
        ratio(w115, cpu),
        w96.as_secs_f64() * 1e3,
        ratio(w96, cpu),
    );
}
