//! Streaming `Content-Encoding` decoding of answers (`zstd`, `gzip`, identity), bounded.
//!
//! Pure: bytes in, bytes out, no I/O. The client feeds each network chunk and hands the decoded bytes
//! straight to the bundle verifier, so memory stays constant. A decompression bomb stops at the caller's
//! budget: output is produced in bounded steps (zstd: at most [`STEP`] bytes per call of the raw
//! decoder; gzip: input fed in slices of [`GZIP_SLICE`], at most ~1,000× that out) and counted after
//! each, never inflated whole into memory first.
//!
//! (Why not reqwest's own `zstd`/`gzip` features: they are Cargo features of a crate the workspace
//! shares, and turning them on would silently change other members' HTTP clients, which would then
//! decode bodies they mean to inspect raw.)

use std::io::Write;

use zstd::stream::raw::{Decoder as ZstdRaw, InBuffer, Operation, OutBuffer};

/// Decoded bytes produced per zstd step.
pub const STEP: usize = 128 << 10;
/// Compressed bytes fed to gzip per step (deflate expands at most ~1,032×: ≤ 4 MiB out).
pub const GZIP_SLICE: usize = 4 << 10;

/// Why an answer's body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported Content-Encoding {0:?}")]
    Unsupported(String),
    #[error("{encoding} stream is corrupt: {detail}")]
    Corrupt {
        encoding: &'static str,
        detail: String,
    },
    #[error("{encoding} stream ends before its end (truncated)")]
    Truncated { encoding: &'static str },
    #[error("decoded body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
}

enum Codec {
    Identity,
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Zstd {
        raw: Box<ZstdRaw<'static>>,
        /// The last call ended exactly at the end of a frame.
        at_frame_end: bool,
    },
}

/// One answer's decoder.
pub struct ContentDecoder {
    codec: Codec,
    limit: u64,
    produced: u64,
}

impl ContentDecoder {
    /// The decoder for a `Content-Encoding` header value (absent or `identity`: pass-through), with a
    /// budget of `limit` decoded bytes.
    pub fn new(content_encoding: Option<&str>, limit: u64) -> Result<Self, DecodeError> {
        let codec = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
            None => Codec::Identity,
            Some(e) if e.is_empty() || e == "identity" => Codec::Identity,
            Some(e) if e == "gzip" || e == "x-gzip" => {
                Codec::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
            }
            Some(e) if e == "zstd" => Codec::Zstd {
                raw: Box::new(ZstdRaw::new().map_err(|e| DecodeError::Corrupt {
                    encoding: "zstd",
                    detail: e.to_string(),
                })?),
                at_frame_end: true,
            },
            Some(other) => return Err(DecodeError::Unsupported(other)),
        };
        Ok(Self {
            codec,
            limit,
            produced: 0,
        })
    }

    /// Decoded bytes so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    fn count(&mut self, n: usize) -> Result<(), DecodeError> {
        self.produced += n as u64;
        if self.produced > self.limit {
            return Err(DecodeError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// Decodes `input`, appending the output to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match &mut self.codec {
            Codec::Identity => {
                self.count(input.len())?;
                out.extend_from_slice(input);
                Ok(())
            }
            Codec::Gzip(_) => {
                for slice in input.chunks(GZIP_SLICE) {
                    let Codec::Gzip(g) = &mut self.codec else {
                        break;
                    };
                    g.write_all(slice).map_err(|e| DecodeError::Corrupt {
                        encoding: "gzip",
                        detail: e.to_string(),
                    })?;
                    let decoded = std::mem::take(g.get_mut());
                    self.count(decoded.len())?;
                    out.extend_from_slice(&decoded);
                }
                Ok(())
            }
            Codec::Zstd { .. } => self.zstd(input, out),
        }
    }

    fn zstd(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let mut inb = InBuffer::around(input);
        let mut step = vec![0u8; STEP];
        loop {
            let Codec::Zstd { raw, at_frame_end } = &mut self.codec else {
                return Ok(());
            };
            let mut outb = OutBuffer::around(&mut step[..]);
            let consumed_before = inb.pos();
            let hint = raw
                .run(&mut inb, &mut outb)
                .map_err(|e| DecodeError::Corrupt {
                    encoding: "zstd",
                    detail: e.to_string(),
                })?;
            let written = outb.pos();
            // A call that moved nothing (the input used up by a previous step that filled its
            // output exactly) says where a *next* frame would start, not whether this one ended.
            if written > 0 || inb.pos() > consumed_before {
                *at_frame_end = hint == 0;
            }
            self.count(written)?;
            out.extend_from_slice(&step[..written]);
            // Done when the input is used up and the decoder had room to spare (nothing left inside).
            if inb.pos() == input.len() && written < STEP {
                return Ok(());
            }
        }
    }

    /// The body ended: a compressed stream must have ended exactly at its end.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match &mut self.codec {
            Codec::Identity => Ok(()),
            Codec::Gzip(g) => {
                g.try_finish()
                    .map_err(|_| DecodeError::Truncated { encoding: "gzip" })?;
                let decoded = std::mem::take(g.get_mut());
                self.count(decoded.len())?;
                out.extend_from_slice(&decoded);
                Ok(())
            }
            Codec::Zstd { at_frame_end, .. } => {
                if *at_frame_end {
                    Ok(())
                } else {
                    Err(DecodeError::Truncated { encoding: "zstd" })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    fn decode_in_chunks(
        enc: Option<&str>,
        body: &[u8],
        chunk: usize,
        limit: u64,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut d = ContentDecoder::new(enc, limit)?;
        let mut out = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_encoding_round_trips_in_any_chunking() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let g = gzip(&data);
        for chunk in [1, 7, 4096, 1 << 20] {
            assert_eq!(
                decode_in_chunks(Some("zstd"), &z, chunk, u64::MAX).unwrap(),
                data
            );
            assert_eq!(
                decode_in_chunks(Some("gzip"), &g, chunk, u64::MAX).unwrap(),
                data
            );
            assert_eq!(
                decode_in_chunks(None, &data, chunk, u64::MAX).unwrap(),
                data
            );
        }
        assert!(matches!(
            ContentDecoder::new(Some("br"), 1),
            Err(DecodeError::Unsupported(_))
        ));
    }

    /// A body whose decoded size is a whole number of steps ends a step exactly at the end of the
    /// frame: the decoder is then called once more with no input, and that call must not make a
    /// complete stream look truncated.
    #[test]
    fn a_body_of_a_whole_number_of_steps_is_complete() {
        for steps in [1, 2, 5] {
            let data: Vec<u8> = (0..steps * STEP).map(|i| (i % 251) as u8).collect();
            let z = zstd::encode_all(&data[..], 3).unwrap();
            for chunk in [z.len(), 7, 4096] {
                let decoded = decode_in_chunks(Some("zstd"), &z, chunk, u64::MAX);
                assert!(
                    decoded.as_ref() == Ok(&data),
                    "{steps} steps in chunks of {chunk}: {:?}",
                    decoded.map(|d| d.len())
                );
            }
        }
    }

    /// RFC 1952 allows a gzip stream of several members (what some proxies and `cat a.gz b.gz`
    /// produce); HTTP's `gzip` coding is that format, so every member is decoded.
    #[test]
    fn a_gzip_body_of_several_members_is_decoded_whole() {
        let (first, second) = (vec![1u8; 70_000], vec![2u8; 5_000]);
        let mut both = gzip(&first);
        both.extend_from_slice(&gzip(&second));
        let whole: Vec<u8> = first.iter().chain(&second).copied().collect();
        for chunk in [both.len(), 7, 4096] {
            assert_eq!(
                decode_in_chunks(Some("gzip"), &both, chunk, u64::MAX),
                Ok(whole.clone()),
                "chunks of {chunk}"
            );
        }
        let cut = both.len() - 3;
        assert!(decode_in_chunks(Some("gzip"), &both[..cut], 100, u64::MAX).is_err());
    }

    #[test]
    fn truncated_and_corrupt_streams_are_named() {
        let data = vec![7u8; 100_000];
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let g = gzip(&data);
        assert_eq!(
            decode_in_chunks(Some("zstd"), &z[..z.len() - 3], 100, u64::MAX),
            Err(DecodeError::Truncated { encoding: "zstd" })
        );
        assert!(decode_in_chunks(Some("gzip"), &g[..g.len() - 3], 100, u64::MAX).is_err());
        assert!(matches!(
            decode_in_chunks(Some("zstd"), b"definitely not zstd", 100, u64::MAX),
            Err(DecodeError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_budget_without_inflating_whole() {
        // 256 MiB of zeros: a few KB compressed.
        let bomb_size = 256u64 << 20;
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let mut d = ContentDecoder::new(Some("zstd"), 16 << 20).unwrap();
        let mut out = Vec::new();
        let r = bomb.chunks(64 << 10).try_for_each(|c| d.feed(c, &mut out));
        assert_eq!(r, Err(DecodeError::TooLarge { limit: 16 << 20 }));
        // Stopped within one step of the budget, far below the bomb's size.
        assert!(out.len() as u64 <= (16 << 20) + STEP as u64 && (out.len() as u64) < bomb_size);
    }
}
