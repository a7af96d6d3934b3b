//! Layer 1: frames on the wire (PROTOCOL.md §3).
//!
//! A frame is `header (7 bytes) | payload (0..=1024 bytes) | CRC-32/ISO-HDLC (4 bytes, LE)`, COBS-encoded
//! and terminated by one `0x00`. Because `0x00` never occurs inside an encoded frame, a receiver that
//! lost its place (line noise, a reader that rebooted mid-frame) resynchronises by discarding bytes
//! up to the next `0x00`: that is the whole resync rule, and [`Decoder`] implements it with a fixed
//! buffer and no other state.
//!
//! Invariants: [`Decoder::push`] never panics, never allocates and never holds more than `N` bytes,
//! whatever it is fed; after any error it is already waiting for the next frame.

use crc::{CRC_32_ISO_HDLC, Crc};

/// Frame format version carried in every header (PROTOCOL.md §3.2). Not the protocol version,
/// which is negotiated by HELLO.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the fixed header: version, flags, seq, ack, type, payload length (u16 LE).
pub const HEADER_LEN: usize = 7;
/// Bytes of the CRC-32 trailer.
pub const CRC_LEN: usize = 4;
/// Largest payload one frame may carry. Longer messages span frames (flag [`Flags::MORE`]).
pub const MAX_PAYLOAD: usize = 1024;
/// Smallest `max_payload` a peer may announce in HELLO.
pub const MIN_MAX_PAYLOAD: usize = 64;
/// Smallest decoded frame: header and CRC around an empty payload.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + CRC_LEN;
/// Largest decoded (pre-COBS) frame.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
/// Largest encoded frame on the wire for a payload of `payload_len` bytes, including the
/// terminating `0x00` (not the optional leading one).
pub const fn encoded_frame_len_max(payload_len: usize) -> usize {
    cobs::max_encoding_length(HEADER_LEN + payload_len + CRC_LEN) + 1
}
/// Largest encoded frame on the wire, including the terminating `0x00`.
pub const MAX_ENCODED_FRAME_LEN: usize = encoded_frame_len_max(MAX_PAYLOAD);
/// Size of the buffer a session's `poll_transmit` writes into: a leading `0x00` plus the largest
/// encoded frame.
pub const WIRE_BUF_LEN: usize = 1 + MAX_ENCODED_FRAME_LEN;

/// The CRC of PROTOCOL.md §3.3: CRC-32/ISO-HDLC (poly 0x04C11DB7 reflected, init and xorout
/// 0xFFFFFFFF), check value 0xCBF43926 over ASCII "123456789".
pub const FRAME_CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// The flags byte of a frame header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// The `ack` field is valid: the sender accepted the peer's data frame with sequence `ack`.
    pub const ACK: Flags = Flags(0x01);
    /// The sender received a damaged frame and asks for a retransmission.
    pub const NAK: Flags = Flags(0x02);
    /// The payload of this data frame continues in the next data frame.
    pub const MORE: Flags = Flags(0x04);
    /// Bits a 1.0 sender sets to zero and a 1.0 receiver ignores.
    pub const RESERVED_MASK: u8 = 0xF8;

    /// The empty flag set.
    pub const fn empty() -> Self {
        Flags(0)
    }
    /// Whether all bits of `other` are set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the bits of `other` set.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// The fixed header of a frame, minus the version and length bytes (which the codec owns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// Flag bits, reserved bits included as received.
    pub flags: Flags,
    /// Sequence number of a data frame; 0 in link-control frames.
    pub seq: u8,
    /// Sequence number acknowledged when [`Flags::ACK`] is set; 0 otherwise.
    pub ack: u8,
    /// Message type byte (0x00: acknowledgement-only frame; see [`crate::MessageType`]).
    pub msg_type: u8,
}

/// A decoded, CRC-checked frame borrowing its payload from the decoder's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header fields.
    pub header: Header,
    /// The payload, `0..=MAX_PAYLOAD` bytes.
    pub payload: &'a [u8],
}

/// Why bytes ending at a `0x00` were not a frame (PROTOCOL.md §3.5 gives each one's outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes before the delimiter are not valid COBS (a run length points past the delimiter).
    #[error("invalid COBS encoding in {len} bytes before the 0x00")]
    Cobs {
        /// Bytes received before the delimiter (as on the line, COBS code bytes included).
        len: usize,
    },
    /// More than the decoder's capacity arrived before a delimiter; all of it was discarded.
    #[error("frame longer than {max} decoded bytes, discarded up to the next 0x00")]
    TooLong {
        /// The decoder capacity.
        max: usize,
    },
    /// Shorter than header + CRC.
    #[error("frame of {len} bytes is shorter than the {MIN_FRAME_LEN}-byte minimum")]
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// CRC mismatch: the frame was damaged on the line.
    #[error("CRC mismatch: computed {computed:#010x}, frame carries {received:#010x}")]
    BadCrc {
        /// CRC over the received header and payload.
        computed: u32,
        /// CRC field of the frame.
        received: u32,
    },
    /// CRC is good but the frame version is not [`FRAME_VERSION`].
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// The length field disagrees with the number of bytes between header and CRC.
    #[error("length field says {declared} payload bytes, frame holds {actual}")]
    LengthMismatch {
        /// Length field.
        declared: usize,
        /// Bytes actually present.
        actual: usize,
    },
}

impl FrameError {
    /// Whether the damaged bytes were long enough to have been a frame, so that a NAK is worth
    /// sending (PROTOCOL.md §3.6, §4.5): fewer than [`MIN_FRAME_LEN`] bytes before the `0x00` are
    /// line noise, not a lost frame, whatever is wrong with them.
    pub fn looks_like_damaged_frame(&self) -> bool {
        match self {
            FrameError::BadCrc { .. } | FrameError::TooLong { .. } => true,
            FrameError::Cobs { len } => *len >= MIN_FRAME_LEN,
            FrameError::TooShort { .. }
            | FrameError::UnsupportedVersion(_)
            | FrameError::LengthMismatch { .. } => false,
        }
    }
}

/// Why a frame could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload exceeds [`MAX_PAYLOAD`].
    #[error("payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte frame maximum")]
    PayloadTooLong {
        /// Payload length.
        len: usize,
    },
    /// The output buffer cannot hold the encoded frame; size it with [`encoded_frame_len_max`].
    #[error("output buffer too small for the encoded frame")]
    BufferTooSmall,
}

/// Encodes one frame: COBS(header | payload | CRC) followed by `0x00`. Returns the bytes written.
pub fn encode_frame(header: &Header, payload: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EncodeError::PayloadTooLong { len: payload.len() });
    }
    // MAX_PAYLOAD fits in u16, checked just above.
    let len = (payload.len() as u16).to_le_bytes();
    let head = [
        FRAME_VERSION,
        header.flags.0,
        header.seq,
        header.ack,
        header.msg_type,
        len[0],
        len[1],
    ];
    let mut digest = FRAME_CRC.digest();
    digest.update(&head);
    digest.update(payload);
    let crc = digest.finalize().to_le_bytes();

    let mut encoder = cobs::CobsEncoder::new(out);
    let pushed = encoder
        .push(&head)
        .and_then(|()| encoder.push(payload))
        .and_then(|()| encoder.push(&crc));
    pushed.map_err(|_| EncodeError::BufferTooSmall)?;
    let encoded = encoder.finalize();
    let terminator = out.get_mut(encoded).ok_or(EncodeError::BufferTooSmall)?;
    *terminator = 0x00;
    Ok(encoded + 1)
}

/// Checks a decoded (COBS-removed) frame: length, CRC, version, length field, in that order, so that
/// line noise is reported as a CRC error rather than as a bad version.
pub fn parse_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < MIN_FRAME_LEN {
        return Err(FrameError::TooShort { len: bytes.len() });
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_LEN);
    let received = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = FRAME_CRC.checksum(body);
    if computed != received {
        return Err(FrameError::BadCrc { computed, received });
    }
    let (head, payload) = body.split_at(HEADER_LEN);
    if head[0] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(head[0]));
    }
    let declared = usize::from(u16::from_le_bytes([head[5], head[6]]));
    if declared != payload.len() || declared > MAX_PAYLOAD {
        return Err(FrameError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    Ok(Frame {
        header: Header {
            flags: Flags(head[1]),
            seq: head[2],
            ack: head[3],
            msg_type: head[4],
        },
        payload,
    })
}

/// What one [`Decoder::push`] call did.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Input bytes consumed. Less than the input when a frame or error ended early: call `push`
    /// again with the rest.
    pub consumed: usize,
    /// A frame or a framing error, if a delimiter was reached.
    pub result: Option<Result<Frame<'a>, FrameError>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Decoding into the buffer.
    Collecting,
    /// Over capacity: dropping bytes until the next delimiter.
    Discarding,
}

/// Streaming frame decoder with a fixed `N`-byte buffer (default: the largest legal frame).
///
/// Feed it bytes as they arrive; it stops after each frame or error so the caller can act on it
/// (the returned frame borrows the buffer until the next `push`).
pub struct Decoder<const N: usize = MAX_FRAME_LEN> {
    buf: [u8; N],
    len: usize,
    /// Bytes received since the last delimiter, as on the line (saturating).
    received: usize,
    cobs: cobs::DecoderState,
    mode: Mode,
}

impl<const N: usize> core::fmt::Debug for Decoder<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Decoder")
            .field("capacity", &N)
            .field("buffered", &self.len)
            .field("mode", &self.mode)
            .finish()
    }
}

impl<const N: usize> Default for Decoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Decoder<N> {
    /// An empty decoder, waiting for the first byte of a frame.
    pub const fn new() -> Self {
        Decoder {
            buf: [0; N],
            len: 0,
            received: 0,
            cobs: cobs::DecoderState::Idle,
            mode: Mode::Collecting,
        }
    }

    /// Bytes of the frame in progress held in the buffer.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Whether the decoder is between frames (nothing buffered, not discarding).
    pub fn is_idle(&self) -> bool {
        self.len == 0
            && self.mode == Mode::Collecting
            && matches!(self.cobs, cobs::DecoderState::Idle)
    }

    /// Forgets any partial frame.
    pub fn reset(&mut self) {
        self.len = 0;
        self.received = 0;
        self.cobs = cobs::DecoderState::Idle;
        self.mode = Mode::Collecting;
    }

    /// Feeds bytes; stops at the first delimiter that completes a frame or an error.
    ///
    /// Consecutive delimiters (empty frames) are skipped silently: a sender may put a `0x00` before a
    /// frame to terminate any noise that preceded it.
    pub fn push(&mut self, data: &[u8]) -> Decoded<'_> {
        for (index, &byte) in data.iter().enumerate() {
            let consumed = index + 1;
            if self.mode == Mode::Discarding {
                if byte == 0x00 {
                    self.reset();
                    return Decoded {
                        consumed,
                        result: Some(Err(FrameError::TooLong { max: N })),
                    };
                }
                continue;
            }
            if byte != 0x00 {
                self.received = self.received.saturating_add(1);
            }
            match self.cobs.feed(byte) {
                Ok(cobs::DecodeResult::NoData | cobs::DecodeResult::DataStart) => {}
                Ok(cobs::DecodeResult::DataContinue(decoded)) => match self.buf.get_mut(self.len) {
                    Some(slot) => {
                        *slot = decoded;
                        self.len += 1;
                    }
                    None => {
                        self.mode = Mode::Discarding;
                        self.len = 0;
                    }
                },
                Ok(cobs::DecodeResult::DataComplete) => {
                    self.received = 0;
                    let len = core::mem::take(&mut self.len);
                    let frame = parse_frame(self.buf.get(..len).unwrap_or_default());
                    return Decoded {
                        consumed,
                        result: Some(frame),
                    };
                }
                Err(_) => {
                    // The COBS state machine only fails on a delimiter, and resets itself to idle.
                    let len = self.received;
                    self.reset();
                    return Decoded {
                        consumed,
                        result: Some(Err(FrameError::Cobs { len })),
                    };
                }
            }
        }
        Decoded {
            consumed: data.len(),
            result: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn crc_check_value_is_the_catalogued_one() {
        assert_eq!(FRAME_CRC.checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn sizes_are_the_documented_ones() {
        assert_eq!(MAX_FRAME_LEN, 1035);
        assert_eq!(MAX_ENCODED_FRAME_LEN, 1041);
        assert_eq!(WIRE_BUF_LEN, 1042);
        assert_eq!(encoded_frame_len_max(0), 13);
    }

    fn encode(header: Header, payload: &[u8]) -> std::vec::Vec<u8> {
        let mut out = [0u8; MAX_ENCODED_FRAME_LEN];
        let n = encode_frame(&header, payload, &mut out).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn frame_round_trips_even_when_split_byte_by_byte() {
        let header = Header {
            flags: Flags::ACK.with(Flags::MORE),
            seq: 7,
            ack: 6,
            msg_type: 0x41,
        };
        let payload: std::vec::Vec<u8> = (0..600u32).map(|i| (i % 7) as u8).collect();
        let wire = encode(header, &payload);
        assert!(!wire[..wire.len() - 1].contains(&0));
        let mut decoder: Decoder = Decoder::new();
        for (i, b) in wire.iter().enumerate() {
            let out = decoder.push(core::slice::from_ref(b));
            assert_eq!(out.consumed, 1);
            if i + 1 < wire.len() {
                assert!(out.result.is_none());
            } else {
                let frame = out.result.unwrap().unwrap();
                assert_eq!(frame.header, header);
                assert_eq!(frame.payload, &payload[..]);
            }
        }
        assert!(decoder.is_idle());
    }

    #[test]
    fn garbage_before_a_frame_costs_only_the_garbage() {
        let header = Header {
            msg_type: 0x04,
            ..Header::default()
        };
        let wire = encode(header, &[]);
        let mut input = std::vec![0x13, 0x37, 0xFF, 0x00];
        input.extend_from_slice(&wire);
        let mut decoder: Decoder = Decoder::new();
        let first = decoder.push(&input);
        assert_eq!(first.consumed, 4);
        assert!(matches!(first.result, Some(Err(_))));
        let second = decoder.push(&input[4..]);
        assert_eq!(second.result.unwrap().unwrap().header, header);
    }

    #[test]
    fn oversized_input_is_discarded_up_to_the_delimiter() {
        let mut decoder: Decoder<16> = Decoder::new();
        let mut input = std::vec![0x01u8; 100];
        input.push(0);
        let out = decoder.push(&input);
        assert_eq!(out.consumed, 101);
        assert_eq!(out.result, Some(Err(FrameError::TooLong { max: 16 })));
        assert!(decoder.is_idle());
    }

    #[test]
    fn bad_crc_is_reported() {
        let header = Header {
            flags: Flags::ACK,
            seq: 1,
            ack: 1,
            msg_type: 0x20,
        };
        let mut wire = encode(header, b"hello");
        // wire: code, 6 header bytes, code (for the length's zero high byte), "hello", ...
        assert_eq!(wire[9], b'e');
        wire[9] ^= 0x20;
        let mut decoder: Decoder = Decoder::new();
        assert!(matches!(
            decoder.push(&wire).result,
            Some(Err(FrameError::BadCrc { .. }))
        ));
    }

    #[test]
    fn encoder_refuses_small_buffers_and_long_payloads() {
        let mut small = [0u8; 8];
        assert_eq!(
            encode_frame(&Header::default(), b"abcdef", &mut small),
            Err(EncodeError::BufferTooSmall)
        );
        let long = [1u8; MAX_PAYLOAD + 1];
        let mut out = [0u8; 2 * MAX_ENCODED_FRAME_LEN];
        assert_eq!(
            encode_frame(&Header::default(), &long, &mut out),
            Err(EncodeError::PayloadTooLong { len: 1025 })
        );
    }
}
