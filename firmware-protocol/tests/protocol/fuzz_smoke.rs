//! The fuzz targets' bodies (`firmware_protocol::fuzzing`), run without nightly: on the fixture
//! files, on mutations of them, and on pseudo-random inputs from fixed seeds. Bounded and
//! deterministic.

use firmware_protocol::fuzzing;

use crate::sim::Rng;

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/protocol");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let bytes: Vec<u8> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(str::split_whitespace)
            .map(|t| u8::from_str_radix(t, 16).unwrap())
            .collect();
        out.push(bytes);
    }
    out.sort();
    out
}

fn inputs(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let corpus = corpus();
    let mut rng = Rng::new(seed);
    let mut out = corpus.clone();
    // A whole conversation, concatenated.
    out.push(corpus.concat());
    for _ in 0..count {
        let mut input = if rng.chance(60) {
            corpus[rng.below(corpus.len() as u64) as usize].clone()
        } else {
            let n = rng.below(2048) as usize;
            rng.bytes(n)
        };
        for _ in 0..rng.below(8) {
            if input.is_empty() {
                break;
            }
            let i = rng.below(input.len() as u64) as usize;
            match rng.below(4) {
                0 => input[i] ^= 1 << rng.below(8),
                1 => input[i] = 0,
                2 => input.truncate(i),
                _ => {
                    let extra = corpus[rng.below(corpus.len() as u64) as usize].clone();
                    input.splice(i..i, extra);
                }
            }
        }
        out.push(input);
    }
    out
}

#[test]
fn decoder_target_on_corpus_and_random_inputs() {
    for input in inputs(1, 3_000) {
        fuzzing::decoder(&input);
    }
}

#[test]
fn host_session_target_on_corpus_and_random_inputs() {
    for input in inputs(2, 1_500) {
        let _ = fuzzing::host_session(&input);
    }
    // A script that performs the handshake first, so the data paths are reached.
    let corpus = corpus();
    let hello = corpus
        .iter()
        .find(|c| c.starts_with(&[0x02, 0x01, 0x01, 0x01, 0x03, 0x01]))
        .unwrap();
    let mut rng = Rng::new(3);
    for _ in 0..500 {
        let mut script = vec![0xF0u8];
        script.extend(hello);
        for _ in 0..rng.below(6) {
            let piece = &corpus[rng.below(corpus.len() as u64) as usize];
            script.push(rng.next_u64() as u8);
            script.extend(piece);
        }
        let _ = fuzzing::host_session(&script);
    }
}

#[test]
fn reader_session_target_on_corpus_and_random_inputs() {
    for input in inputs(4, 1_500) {
        let _ = fuzzing::reader_session(&input);
    }
    // Live-link scripts: odd first byte (handshake done), then fixture frames.
    let corpus = corpus();
    let mut rng = Rng::new(5);
    for _ in 0..500 {
        let mut script = vec![0xF1u8];
        for _ in 0..rng.below(6) {
            let piece = &corpus[rng.below(corpus.len() as u64) as usize];
            script.push(rng.next_u64() as u8);
            script.extend(piece);
        }
        let _ = fuzzing::reader_session(&script);
    }
}

/// Scripts of valid-CRC frames (control bit 7) with plausible sequence numbers and the payloads of
/// the fixtures, sometimes damaged: reaches the sessions' data paths (delivery, duplicates,
/// reassembly, refusals, ACK/NAK handling) on both ends.
#[test]
fn session_targets_on_structured_frame_scripts() {
    let mut frames: Vec<(u8, Vec<u8>)> = Vec::new();
    for input in corpus() {
        let mut decoder: firmware_protocol::Decoder = firmware_protocol::Decoder::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let d = decoder.push(rest);
            if let Some(Ok(f)) = d.result {
                frames.push((f.header.msg_type, f.payload.to_vec()));
            }
            rest = &rest[d.consumed..];
        }
    }
    let mut rng = Rng::new(6);
    let (mut host_delivered, mut reader_delivered) = (0, 0);
    for round in 0..600 {
        // Odd first control byte: start on a live link; its one-byte chunk is a harmless 0x00.
        let mut script = vec![0x01u8, 0x00];
        let mut seq = 1u8;
        for _ in 0..1 + rng.below(12) {
            let (msg_type, payload) = &frames[rng.below(frames.len() as u64) as usize];
            let mut payload = payload.clone();
            if rng.chance(20) && !payload.is_empty() {
                let i = rng.below(payload.len() as u64) as usize;
                payload[i] ^= 1 << rng.below(8);
            }
            payload.truncate(108); // the largest chunk a control byte can announce, minus 5
            let flags = [0x01u8, 0x01, 0x01, 0x03, 0x05, 0x00][rng.below(6) as usize];
            let len = payload.len() as u8;
            let mut chunk = vec![flags, seq, rng.below(4) as u8, *msg_type, len];
            chunk.extend(payload);
            let class = (chunk.len() - 1).div_ceil(16) as u8;
            chunk.resize(usize::from(class) * 16 + 1, 0);
            script.push(0x80 | (class << 4) | rng.below(16) as u8);
            script.extend(chunk);
            if !rng.chance(15) {
                seq = seq.wrapping_add(1);
            }
        }
        if round % 2 == 0 {
            host_delivered += fuzzing::host_session(&script);
        } else {
            reader_delivered += fuzzing::reader_session(&script);
        }
    }
    // The scripts must get past the CRC, the handshake and the sequence check to be worth running.
    assert!(host_delivered > 50, "host delivered only {host_delivered}");
    assert!(
        reader_delivered > 50,
        "reader delivered only {reader_delivered}"
    );
}
