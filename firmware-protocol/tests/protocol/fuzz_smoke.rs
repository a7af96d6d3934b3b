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
        fuzzing::host_session(&input);
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
        fuzzing::host_session(&script);
    }
}

#[test]
fn reader_session_target_on_corpus_and_random_inputs() {
    for input in inputs(4, 1_500) {
        fuzzing::reader_session(&input);
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
        fuzzing::reader_session(&script);
    }
}
