//! Layer 3: sans-IO link sessions (PROTOCOL.md §4).
//!
//! [`HostSession`] (the daemon's end) and [`ReaderSession`] (the reader firmware's end) are the same
//! state machine seen from either side; they differ only in the handshake. Nothing here reads a
//! clock or touches a port: the caller feeds received bytes with [`HostSession::handle_bytes`],
//! reports the passage of time with `handle_timeout`, and drains three outputs —
//! `poll_transmit` (bytes to write), `poll_event` (what happened) and `poll_timeout` (when to call
//! `handle_timeout` next). The driving loop is, for either end:
//!
//! ```text
//! loop {
//!     wait for: serial bytes, or the instant from poll_timeout()
//!     now = clock()
//!     let mut rest = &received[..];
//!     while !rest.is_empty() {                // handle_bytes may stop early, see its docs
//!         let n = session.handle_bytes(now, rest);
//!         rest = &rest[n..];
//!         while let Some(event) = session.poll_event() { ... }
//!     }
//!     session.handle_timeout(now);
//!     while let Some(event) = session.poll_event() { ... }
//!     while let Some(n) = session.poll_transmit(now, &mut wire) { port.write_all(&wire[..n]) }
//! }
//! ```
//!
//! Invariants: memory is fixed at construction (`N`-byte reassembly buffer and `N`-byte transmit
//! queue, default 4 KiB each); no input makes a session panic or stop making progress; a message is
//! never delivered twice on one link, and a queued message is either confirmed
//! ([`Event::Delivered`]) or reported ([`Event::Unconfirmed`]) — never dropped silently.

use core::fmt::Write as _;
use core::time::Duration;

use crate::frame::{
    Decoder, Flags, Frame, FrameError, Header, MAX_PAYLOAD, MIN_MAX_PAYLOAD, WIRE_BUF_LEN,
    encode_frame, encoded_frame_len_max,
};
use crate::message::{
    ACK_ONLY_TYPE, Capabilities, EmitError, Encodings, Error as ErrorMessage, ErrorCode, Hello,
    HelloAck, HelloReject, MAX_MESSAGE_LEN, Message, MessageType, PROTOCOL_VERSION, ParseError,
    RejectReason, Reset, ResetReason, Role, Text, TextEncoding, Version,
};
use crate::time::Instant;

/// Default size of the reassembly buffer and of the transmit queue.
pub const DEFAULT_BUFFER: usize = MAX_MESSAGE_LEN;
/// Most messages the transmit queue holds at once.
pub const MAX_QUEUED: usize = 8;
/// Bits per byte on an 8N1 line: start, eight data, stop.
pub const BITS_PER_BYTE: u64 = 10;
/// Bytes of a frame with an empty payload on the wire, leading `0x00` included (an ACK, a PING).
pub const MIN_WIRE_FRAME: usize = 1 + encoded_frame_len_max(0);

/// Time to send `bytes` at `baud` on an 8N1 line, rounded up to the microsecond.
pub fn wire_time(bytes: usize, baud: u32) -> Duration {
    let bits = (bytes as u64).saturating_mul(BITS_PER_BYTE);
    let baud = u64::from(baud.max(1));
    Duration::from_micros((bits.saturating_mul(1_000_000)).div_ceil(baud))
}

/// Link timing and limits (PROTOCOL.md §4.7). Build with [`Config::new`] and adjust fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Line speed, bits per second (for USB-CDC, the configured nominal rate).
    pub baud: u32,
    /// Largest frame payload this end accepts and announces, 64..=1024.
    pub max_payload: u16,
    /// Send a PING after this long without transmitting (T_HB, 2 s).
    pub heartbeat_interval: Duration,
    /// Declare the link down after this many heartbeat intervals without a valid frame (3).
    pub heartbeats_missed: u32,
    /// Retransmissions of one frame before the link is declared down (3).
    pub max_retransmissions: u8,
    /// Peer processing allowance in the ACK timeout (T_PROC, 100 ms).
    pub processing_margin: Duration,
    /// After HELLO_REJECT, wait this long before the next HELLO (T_REFUSED, 30 s).
    pub refused_retry: Duration,
    /// Text encodings the host supports (it picks UTF-8 first when the reader offers it). A reader
    /// announces the encodings of its [`ReaderIdentity`] instead.
    pub encodings: Encodings,
    /// Protocol version this end announces ([`PROTOCOL_VERSION`]; other values are for tests of
    /// version negotiation with future peers).
    pub version: Version,
}

impl Config {
    /// The defaults of PROTOCOL.md §4.7 at `baud`.
    pub const fn new(baud: u32) -> Self {
        Config {
            baud,
            max_payload: MAX_PAYLOAD as u16,
            heartbeat_interval: Duration::from_millis(2000),
            heartbeats_missed: 3,
            max_retransmissions: 3,
            processing_margin: Duration::from_millis(100),
            refused_retry: Duration::from_secs(30),
            encodings: Encodings::BOTH,
            version: PROTOCOL_VERSION,
        }
    }

    /// T_ACK for frames of at most `max_payload` bytes: our frame's wire time, plus one frame the
    /// peer may be sending when ours arrives (it must finish before its ACK can go out), plus the
    /// ACK's own wire time, plus the processing margin; rounded up to the millisecond.
    pub fn ack_timeout_for(&self, max_payload: u16) -> Duration {
        let frame = 1 + encoded_frame_len_max(usize::from(max_payload));
        let wire = wire_time(frame, self.baud) * 2 + wire_time(MIN_WIRE_FRAME, self.baud);
        let total = wire + self.processing_margin;
        Duration::from_millis(u64::try_from(total.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
    }

    /// T_ACK before negotiation (for this end's own `max_payload`).
    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout_for(self.max_payload)
    }

    /// T_HELLO: the reader's HELLO repeat interval, `max(1 s, T_ACK)`, with T_ACK for this end's own
    /// max payload: nothing is negotiated yet while HELLO is being repeated (PROTOCOL.md §4.7).
    pub fn hello_interval(&self) -> Duration {
        self.ack_timeout().max(Duration::from_secs(1))
    }

    /// T_DEAD: silence after which the link is down, `heartbeats_missed × T_HB`.
    pub fn dead_interval(&self) -> Duration {
        self.heartbeat_interval * self.heartbeats_missed.max(1)
    }

    fn clamped_max_payload(&self) -> u16 {
        self.max_payload
            .clamp(MIN_MAX_PAYLOAD as u16, MAX_PAYLOAD as u16)
    }
}

/// A printable-ASCII string of at most 32 bytes held inline (serial numbers, firmware versions).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShortAscii {
    bytes: [u8; 32],
    len: u8,
}

impl ShortAscii {
    /// Copies `s`; `None` unless it is 1..=32 bytes of printable ASCII.
    pub fn new(s: &str) -> Option<Self> {
        let src = s.as_bytes();
        if src.is_empty() || src.len() > 32 || !src.iter().all(|b| (0x20..=0x7E).contains(b)) {
            return None;
        }
        let mut bytes = [0u8; 32];
        bytes.get_mut(..src.len())?.copy_from_slice(src);
        Some(ShortAscii {
            bytes,
            len: src.len() as u8,
        })
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        core::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl core::fmt::Debug for ShortAscii {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Who a reader is: what it announces in HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderIdentity {
    /// Serial number.
    pub serial: ShortAscii,
    /// Firmware version.
    pub firmware: ShortAscii,
    /// Hardware capabilities.
    pub capabilities: Capabilities,
    /// Text encodings it can display and print.
    pub encodings: Encodings,
}

/// How this link's reader relates to the one the host saw before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerChange {
    /// The first link of this host session (or this is the reader's own view).
    FirstContact,
    /// Same reader, same boot nonce: the reader relinked without rebooting.
    SameBoot,
    /// Same serial number, new boot nonce: the reader rebooted. Its transaction in progress, if
    /// any, was interrupted; it will QUERY.
    Rebooted,
    /// A reader with another serial number.
    DifferentReader,
}

/// Everything known about an established link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Negotiated protocol version.
    pub version: Version,
    /// Negotiated max payload per frame.
    pub max_payload: u16,
    /// Negotiated text encoding.
    pub encoding: TextEncoding,
    /// The reader (for the reader session: itself).
    pub reader: ReaderIdentity,
    /// The version the reader announced.
    pub reader_version: Version,
    /// The reader's boot nonce.
    pub boot_nonce: u64,
    /// Relation to the previous link (host side; [`PeerChange::FirstContact`] on the reader).
    pub peer_change: PeerChange,
}

/// Why a link went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkDownReason {
    /// No valid frame for T_DEAD (cable pulled, peer powered off or hung).
    HeartbeatLost,
    /// A data frame went unacknowledged after all retransmissions.
    RetransmissionsExhausted,
    /// Reader: the host answered RESET (it restarted or dropped the link).
    PeerReset,
    /// Host: the reader sent HELLO again without rebooting.
    PeerRelinked,
    /// Host: a HELLO with a new boot nonce or serial number (reader rebooted or was swapped).
    PeerRebooted,
}

/// Identifies a queued message in [`Event::Delivered`] and [`Event::Unconfirmed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u32);

/// What was wrong with a received application message (answered with ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundProblem {
    /// Type not known to this implementation.
    UnknownType,
    /// Type this end never receives.
    WrongDirection,
    /// Payload failed to parse.
    Malformed(ParseError),
    /// Longer than the reassembly buffer.
    TooLong,
    /// A continuation fragment changed the type; the partial message was discarded.
    FragmentMismatch,
}

impl InboundProblem {
    fn code(&self) -> ErrorCode {
        match self {
            InboundProblem::UnknownType => ErrorCode::UNKNOWN_MESSAGE_TYPE,
            InboundProblem::WrongDirection => ErrorCode::UNEXPECTED_MESSAGE,
            InboundProblem::Malformed(_) => ErrorCode::MALFORMED_MESSAGE,
            InboundProblem::TooLong => ErrorCode::MESSAGE_TOO_LONG,
            InboundProblem::FragmentMismatch => ErrorCode::FRAGMENT_MISMATCH,
        }
    }
}

/// Something the caller must know about, from [`HostSession::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The handshake completed; application messages may flow.
    LinkUp(&'a LinkInfo),
    /// The link is down; the host waits for HELLO, the reader starts sending HELLO. Followed by one
    /// [`Event::Unconfirmed`] per message that was queued and not confirmed.
    LinkDown(LinkDownReason),
    /// A queued message whose delivery was never confirmed (it may or may not have arrived): the
    /// reader will QUERY after the next handshake; the host answers from its stored copy.
    Unconfirmed {
        /// From `send`.
        id: MessageId,
        /// Its type.
        msg_type: MessageType,
    },
    /// The peer acknowledged the last frame of a queued message.
    Delivered {
        /// From `send`.
        id: MessageId,
        /// Its type.
        msg_type: MessageType,
    },
    /// An application message, delivered once, in order, already validated by
    /// [`Message::parse`] with the link's encoding (parse it again to get the typed value).
    Message {
        /// Its type.
        msg_type: MessageType,
        /// The reassembled payload.
        payload: &'a [u8],
    },
    /// A received message was refused and answered with ERROR (`answered` is false if the
    /// transmit queue had no room for the ERROR).
    MessageRejected {
        /// Type byte received.
        msg_type: u8,
        /// What was wrong.
        problem: InboundProblem,
        /// Whether an ERROR reply was queued.
        answered: bool,
    },
    /// Host: a HELLO was refused with this reason. Reader: the host refused our HELLO.
    HandshakeRejected(RejectReason),
}

/// Why `send` refused a message. Nothing was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No link: the message would have nowhere to go.
    #[error("link is down")]
    LinkDown,
    /// The transmit queue is full (messages or bytes); retry after `Delivered` events.
    #[error("transmit queue full")]
    QueueFull,
    /// Link-control types are the session's own; or this end may not send the type.
    #[error("{0} may not be sent by this end")]
    NotAllowed(MessageType),
    /// Longer than the reassembly limit of the peer.
    #[error("payload of {0} bytes exceeds the message maximum")]
    TooLong(usize),
    /// The payload does not parse with the link's encoding.
    #[error("invalid payload: {0}")]
    Invalid(ParseError),
    /// The typed message could not be emitted.
    #[error("cannot emit: {0}")]
    Emit(EmitError),
}

/// Counters for diagnostics. They saturate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Valid frames received.
    pub frames_received: u32,
    /// Frames handed to the caller.
    pub frames_sent: u32,
    /// Frames with a bad CRC.
    pub crc_errors: u32,
    /// Other framing errors (COBS, too short, too long, version, length).
    pub framing_errors: u32,
    /// Data frames received again with the last accepted sequence number (re-ACKed).
    pub duplicates: u32,
    /// Data frames with a sequence number neither expected nor last accepted (dropped).
    pub out_of_sequence: u32,
    /// ACKs for a sequence number not outstanding (ignored).
    pub stray_acks: u32,
    /// NAKs received.
    pub naks_received: u32,
    /// NAKs sent.
    pub naks_sent: u32,
    /// Data frames sent again (timeout or NAK).
    pub retransmissions: u32,
    /// Valid frames ignored in the current state (e.g. data while the link is down).
    pub ignored_frames: u32,
    /// Link-control frames of an unknown type (ignored).
    pub unknown_control: u32,
    /// Events lost because the caller did not poll (cannot happen if `handle_bytes`'s return
    /// value is honoured).
    pub events_lost: u32,
}

fn bump(counter: &mut u32) {
    *counter = counter.saturating_add(1);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queued {
    LinkUp,
    LinkDown(LinkDownReason),
    Unconfirmed(MessageId, MessageType),
    Delivered(MessageId, MessageType),
    Message(MessageType, usize),
    Rejected(u8, InboundProblem, bool),
    HandshakeRejected(RejectReason),
}

const EVENT_CAPACITY: usize = 48;
/// Worst case events of one received frame: link down, its unconfirmed messages, link up,
/// delivered, rejected, message.
const EVENTS_PER_FRAME: usize = MAX_QUEUED + 6;
/// Worst case events of one `handle_timeout`: link down and its unconfirmed messages.
const EVENTS_PER_TIMEOUT: usize = MAX_QUEUED + 1;

struct EventRing {
    slots: [Option<Queued>; EVENT_CAPACITY],
    head: usize,
    len: usize,
}

impl EventRing {
    const fn new() -> Self {
        EventRing {
            slots: [None; EVENT_CAPACITY],
            head: 0,
            len: 0,
        }
    }
    fn free(&self) -> usize {
        EVENT_CAPACITY - self.len
    }
    fn push(&mut self, event: Queued, stats: &mut Stats) {
        if self.len == EVENT_CAPACITY {
            bump(&mut stats.events_lost);
            return;
        }
        if let Some(slot) = self.slots.get_mut((self.head + self.len) % EVENT_CAPACITY) {
            *slot = Some(event);
            self.len += 1;
        }
    }
    fn pop(&mut self) -> Option<Queued> {
        if self.len == 0 {
            return None;
        }
        let event = self.slots.get_mut(self.head)?.take();
        self.head = (self.head + 1) % EVENT_CAPACITY;
        self.len -= 1;
        event
    }
}

#[derive(Clone, Copy, Debug)]
struct QueueEntry {
    id: MessageId,
    msg_type: MessageType,
    start: usize,
    len: usize,
}

/// Outgoing application messages, stored back to back in a fixed buffer.
struct TxQueue<const N: usize> {
    bytes: [u8; N],
    entries: [Option<QueueEntry>; MAX_QUEUED],
    count: usize,
    used: usize,
}

impl<const N: usize> TxQueue<N> {
    const fn new() -> Self {
        TxQueue {
            bytes: [0; N],
            entries: [None; MAX_QUEUED],
            count: 0,
            used: 0,
        }
    }

    fn front(&self) -> Option<QueueEntry> {
        self.entries.first().copied().flatten()
    }

    fn payload(&self, entry: &QueueEntry) -> &[u8] {
        self.bytes
            .get(entry.start..entry.start + entry.len)
            .unwrap_or_default()
    }

    /// Free space for the next payload, if an entry slot is free.
    fn spare(&mut self) -> Option<&mut [u8]> {
        if self.count == MAX_QUEUED {
            return None;
        }
        self.bytes.get_mut(self.used..)
    }

    /// Commits `len` bytes written into `spare()`.
    fn commit(&mut self, id: MessageId, msg_type: MessageType, len: usize) {
        if let Some(slot) = self.entries.get_mut(self.count) {
            *slot = Some(QueueEntry {
                id,
                msg_type,
                start: self.used,
                len,
            });
            self.count += 1;
            self.used += len;
        }
    }

    fn pop_front(&mut self) -> Option<QueueEntry> {
        let first = self.front()?;
        self.bytes.copy_within(first.len..self.used, 0);
        self.used -= first.len;
        self.entries.rotate_left(1);
        if let Some(last) = self.entries.last_mut() {
            *last = None;
        }
        self.count -= 1;
        for entry in self.entries.iter_mut().flatten() {
            entry.start -= first.len;
        }
        Some(first)
    }
}

/// The data frame in flight (stop-and-wait: at most one per direction).
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    seq: u8,
    /// Offset of this fragment in the front message.
    offset: usize,
    len: usize,
    more: bool,
    sent_at: Instant,
    transmissions: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Host: waiting for HELLO.
    Down,
    /// Reader: sending HELLO every T_HELLO.
    Connecting { next_hello: Instant },
    /// Reader: refused by the host; next HELLO at `retry_at`.
    Refused { retry_at: Instant },
    /// Link up.
    Up,
}

#[derive(Clone, Copy, Debug)]
enum HandshakeReply {
    Ack(HelloAck),
    Reject(HelloReject),
}

struct ErrorText {
    buf: [u8; 128],
    len: usize,
}

impl core::fmt::Write for ErrorText {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            let Some(slot) = self.buf.get_mut(self.len) else {
                return Ok(()); // truncate, the text is diagnostic
            };
            *slot = if (0x20..=0x7E).contains(&b) { b } else { b'?' };
            self.len += 1;
        }
        Ok(())
    }
}

/// The shared state machine. `N`: reassembly buffer and transmit queue size.
struct Endpoint<const N: usize> {
    decoder: Decoder,
    core: Core<N>,
}

struct Core<const N: usize> {
    role: Role,
    config: Config,
    state: LinkState,
    info: Option<LinkInfo>,
    /// Reader: own identity and boot nonce. Host: last reader seen (kept across link downs).
    reader: Option<(ReaderIdentity, u64)>,
    /// Host: whether the reader sent anything but HELLO since the link came up.
    link_confirmed: bool,
    handshake_reply: Option<HandshakeReply>,
    reset_pending: bool,
    hello_due: bool,
    // receive side
    last_accepted: u8,
    reasm: [u8; N],
    reasm_len: usize,
    reasm_type: Option<u8>,
    reasm_overflow: bool,
    message_pending: bool,
    link_up_pending: bool,
    ack_pending: bool,
    nak_pending: bool,
    last_nak: Option<Instant>,
    pong_pending: bool,
    last_rx: Instant,
    // transmit side
    queue: TxQueue<N>,
    next_seq: u8,
    next_id: u32,
    outstanding: Option<Outstanding>,
    /// Offset in the front message of its next fragment (earlier ones were acknowledged).
    tx_offset: usize,
    retransmit_due: bool,
    last_tx: Instant,
    events: EventRing,
    stats: Stats,
}

impl<const N: usize> Endpoint<N> {
    fn new(role: Role, config: Config, reader: Option<(ReaderIdentity, u64)>) -> Self {
        let state = match role {
            Role::Host => LinkState::Down,
            Role::Reader => LinkState::Connecting {
                next_hello: Instant::ZERO,
            },
        };
        Endpoint {
            decoder: Decoder::new(),
            core: Core {
                role,
                config,
                state,
                info: None,
                reader,
                link_confirmed: false,
                handshake_reply: None,
                reset_pending: false,
                hello_due: role == Role::Reader,
                last_accepted: 0,
                reasm: [0; N],
                reasm_len: 0,
                reasm_type: None,
                reasm_overflow: false,
                message_pending: false,
                link_up_pending: false,
                ack_pending: false,
                nak_pending: false,
                last_nak: None,
                pong_pending: false,
                last_rx: Instant::ZERO,
                queue: TxQueue::new(),
                next_seq: 1,
                next_id: 1,
                outstanding: None,
                tx_offset: 0,
                retransmit_due: false,
                last_tx: Instant::ZERO,
                events: EventRing::new(),
                stats: Stats::default(),
            },
        }
    }

    fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> usize {
        let mut consumed = 0;
        while let Some(rest) = data.get(consumed..) {
            if rest.is_empty()
                || self.core.message_pending
                || self.core.link_up_pending
                || self.core.events.free() < EVENTS_PER_FRAME + EVENTS_PER_TIMEOUT
            {
                break;
            }
            let decoded = self.decoder.push(rest);
            consumed += decoded.consumed;
            match decoded.result {
                None => {}
                Some(Ok(frame)) => self.core.on_frame(now, &frame),
                Some(Err(error)) => self.core.on_frame_error(now, error),
            }
        }
        consumed
    }

    fn poll_event(&mut self) -> Option<Event<'_>> {
        let core = &mut self.core;
        Some(match core.events.pop()? {
            Queued::LinkUp => {
                core.link_up_pending = false;
                Event::LinkUp(core.info.as_ref()?)
            }
            Queued::LinkDown(reason) => Event::LinkDown(reason),
            Queued::Unconfirmed(id, msg_type) => Event::Unconfirmed { id, msg_type },
            Queued::Delivered(id, msg_type) => Event::Delivered { id, msg_type },
            Queued::Message(msg_type, len) => {
                core.message_pending = false;
                Event::Message {
                    msg_type,
                    payload: core.reasm.get(..len).unwrap_or_default(),
                }
            }
            Queued::Rejected(msg_type, problem, answered) => Event::MessageRejected {
                msg_type,
                problem,
                answered,
            },
            Queued::HandshakeRejected(reason) => Event::HandshakeRejected(reason),
        })
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8; WIRE_BUF_LEN]) -> Option<usize> {
        let (header, payload_source) = self.core.next_frame(now)?;
        buf[0] = 0x00;
        let (_, out) = buf.split_at_mut(1);
        // Largest control payload: HELLO, 83 bytes.
        let mut scratch = [0u8; 96];
        let payload: &[u8] = match payload_source {
            PayloadSource::Empty => &[],
            PayloadSource::Queue { offset, len } => {
                let front = self.core.queue.front()?;
                self.core.queue.payload(&front).get(offset..offset + len)?
            }
            PayloadSource::Control(message) => {
                let n = message.emit(&mut scratch).ok()?;
                scratch.get(..n)?
            }
            PayloadSource::Hello => {
                let (identity, boot_nonce) = self.core.reader.as_ref()?;
                let hello = Message::Hello(Hello {
                    version: self.core.config.version,
                    max_payload: self.core.config.clamped_max_payload(),
                    capabilities: identity.capabilities,
                    encodings: identity.encodings,
                    boot_nonce: *boot_nonce,
                    serial: identity.serial.as_str(),
                    firmware: identity.firmware.as_str(),
                });
                let n = hello.emit(&mut scratch).ok()?;
                scratch.get(..n)?
            }
        };
        let n = encode_frame(&header, payload, out).ok()?;
        self.core.last_tx = now;
        bump(&mut self.core.stats.frames_sent);
        Some(n + 1)
    }
}

enum PayloadSource {
    Empty,
    Queue {
        offset: usize,
        len: usize,
    },
    Control(Message<'static>),
    /// The reader's HELLO, built from its identity at transmit time.
    Hello,
}

impl<const N: usize> Core<N> {
    fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    fn encoding(&self) -> TextEncoding {
        self.info.map_or(TextEncoding::Utf8, |i| i.encoding)
    }

    fn ack_timeout(&self) -> Duration {
        let max = self
            .info
            .map_or(self.config.clamped_max_payload(), |i| i.max_payload);
        self.config.ack_timeout_for(max)
    }

    fn push_event(&mut self, event: Queued) {
        self.events.push(event, &mut self.stats);
    }

    // ---- receiving ----

    fn on_frame_error(&mut self, now: Instant, error: FrameError) {
        match error {
            FrameError::BadCrc { .. } => bump(&mut self.stats.crc_errors),
            _ => bump(&mut self.stats.framing_errors),
        }
        // NAK only what looks like a damaged frame, at most once per ACK timeout (PROTOCOL.md §4.5);
        // a NAK suppressed by that limit is dropped, not sent later: T_ACK recovers the frame.
        let recent = self
            .last_nak
            .is_some_and(|at| now < at + self.ack_timeout());
        if self.is_up() && error.looks_like_damaged_frame() && !recent {
            self.nak_pending = true;
            self.last_nak = Some(now);
        }
    }

    fn on_frame(&mut self, now: Instant, frame: &Frame<'_>) {
        bump(&mut self.stats.frames_received);
        // Every valid frame on an UP link is a sign of life, whatever its type (PROTOCOL.md §4.9).
        if self.is_up() {
            self.last_rx = now;
        }
        let header = frame.header;
        let handshake = matches!(
            MessageType::from_u8(header.msg_type),
            Some(
                MessageType::Hello
                    | MessageType::HelloAck
                    | MessageType::HelloReject
                    | MessageType::Reset
            )
        );
        if handshake {
            self.on_handshake_frame(now, header.msg_type, frame.payload);
            return;
        }
        // Unknown link-control types are ignored in every state (PROTOCOL.md §4.1): a frame type
        // of a future minor version must not make a DOWN host answer RESET and relink a reader.
        // On an UP link it restarted T_DEAD above, and that is all: its ACK field is not read, and
        // it does not count as the reader's first frame of the link (§4.3, a lost HELLO_ACK).
        let known_control = header.msg_type == ACK_ONLY_TYPE
            || header.msg_type >= crate::message::FIRST_APPLICATION_TYPE
            || MessageType::from_u8(header.msg_type).is_some();
        if !known_control {
            bump(&mut self.stats.unknown_control);
            return;
        }
        if !self.is_up() {
            bump(&mut self.stats.ignored_frames);
            if self.role == Role::Host {
                self.reset_pending = true;
            }
            return;
        }
        self.link_confirmed = true;
        if header.flags.contains(Flags::ACK) {
            self.on_ack(header.ack);
        }
        if header.flags.contains(Flags::NAK) {
            bump(&mut self.stats.naks_received);
            self.on_nak(now);
        }
        if !self.is_up() {
            return; // the NAK exhausted retransmissions
        }
        match header.msg_type {
            ACK_ONLY_TYPE => {}
            t if t == MessageType::Ping.as_u8() => self.pong_pending = true,
            t if t == MessageType::Pong.as_u8() => {}
            _ => self.on_data_frame(header, frame.payload),
        }
    }

    fn on_ack(&mut self, ack: u8) {
        let Some(out) = self.outstanding else {
            bump(&mut self.stats.stray_acks);
            return;
        };
        if out.seq != ack {
            bump(&mut self.stats.stray_acks);
            return;
        }
        self.outstanding = None;
        self.retransmit_due = false;
        if out.more {
            self.tx_offset = out.offset + out.len;
            return; // next fragment of the same message
        }
        self.tx_offset = 0;
        if let Some(entry) = self.queue.pop_front() {
            self.push_event(Queued::Delivered(entry.id, entry.msg_type));
        }
    }

    fn on_nak(&mut self, now: Instant) {
        if self.outstanding.is_some() {
            self.retransmit_or_give_up(now);
        }
    }

    fn retransmit_or_give_up(&mut self, now: Instant) {
        let Some(out) = self.outstanding else { return };
        if out.transmissions > self.config.max_retransmissions {
            self.link_down(now, LinkDownReason::RetransmissionsExhausted);
        } else {
            self.retransmit_due = true;
        }
    }

    fn on_data_frame(&mut self, header: Header, payload: &[u8]) {
        let expected = self.last_accepted.wrapping_add(1);
        if header.seq == self.last_accepted {
            bump(&mut self.stats.duplicates);
            self.ack_pending = true;
            return;
        }
        if header.seq != expected {
            bump(&mut self.stats.out_of_sequence);
            return;
        }
        self.last_accepted = header.seq;
        self.ack_pending = true;

        if let Some(previous) = self.reasm_type
            && previous != header.msg_type
        {
            self.reasm_type = None;
            self.reject(previous, InboundProblem::FragmentMismatch);
        }
        if self.reasm_type.is_none() {
            self.reasm_type = Some(header.msg_type);
            self.reasm_len = 0;
            self.reasm_overflow = false;
        }
        let end = self.reasm_len + payload.len();
        match self.reasm.get_mut(self.reasm_len..end) {
            Some(dest) if !self.reasm_overflow => {
                dest.copy_from_slice(payload);
                self.reasm_len = end;
            }
            _ => self.reasm_overflow = true,
        }
        if header.flags.contains(Flags::MORE) {
            return;
        }
        self.reasm_type = None;
        let code = header.msg_type;
        if self.reasm_overflow {
            self.reject(code, InboundProblem::TooLong);
            return;
        }
        let Some(msg_type) = MessageType::from_u8(code) else {
            self.reject(code, InboundProblem::UnknownType);
            return;
        };
        let peer = match self.role {
            Role::Host => Role::Reader,
            Role::Reader => Role::Host,
        };
        if !msg_type.may_be_sent_by(peer) {
            self.reject(code, InboundProblem::WrongDirection);
            return;
        }
        let payload = self.reasm.get(..self.reasm_len).unwrap_or_default();
        if let Err(error) = Message::parse(code, payload, self.encoding()) {
            self.reject(code, InboundProblem::Malformed(error));
            return;
        }
        self.message_pending = true;
        self.push_event(Queued::Message(msg_type, self.reasm_len));
    }

    /// Answers a refused message with ERROR (PROTOCOL.md §4.12) and reports it.
    fn reject(&mut self, code: u8, problem: InboundProblem) {
        let mut text = ErrorText {
            buf: [0; 128],
            len: 0,
        };
        let _ = match problem {
            InboundProblem::UnknownType => write!(text, "unknown message type {code:#04x}"),
            InboundProblem::WrongDirection => write!(text, "type {code:#04x} not accepted here"),
            InboundProblem::Malformed(e) => write!(text, "{e}"),
            InboundProblem::TooLong => write!(text, "message longer than {N} bytes"),
            InboundProblem::FragmentMismatch => write!(text, "fragment type changed"),
        };
        let reply = Message::Error(ErrorMessage {
            code: problem.code(),
            offending_type: code,
            text: Text::new(text.buf.get(..text.len).unwrap_or_default()),
        });
        // An ERROR is never answered with an ERROR: two confused peers must not loop.
        let answered = code != MessageType::Error.as_u8() && self.enqueue(&reply).is_ok();
        self.push_event(Queued::Rejected(code, problem, answered));
    }

    fn on_handshake_frame(&mut self, now: Instant, code: u8, payload: &[u8]) {
        let parsed = Message::parse(code, payload, TextEncoding::Utf8);
        match (self.role, parsed) {
            (Role::Host, Ok(Message::Hello(hello))) => self.on_hello(now, &hello),
            (Role::Host, Err(_)) if code == MessageType::Hello.as_u8() => {
                self.refuse(now, RejectReason::MALFORMED_HELLO, 0);
            }
            (Role::Reader, Ok(Message::HelloAck(ack))) => self.on_hello_ack(now, &ack),
            (Role::Reader, Ok(Message::HelloReject(reject))) => self.on_hello_reject(now, &reject),
            (Role::Reader, Ok(Message::Reset(_))) if self.is_up() => {
                self.link_down(now, LinkDownReason::PeerReset);
            }
            _ => bump(&mut self.stats.ignored_frames),
        }
    }

    /// Answers HELLO_REJECT. A refused HELLO on an established link means the reader restarted
    /// (with firmware this host cannot talk to): the old link is over.
    fn refuse(&mut self, now: Instant, reason: RejectReason, boot_nonce: u64) {
        self.link_down(now, LinkDownReason::PeerRebooted);
        self.handshake_reply = Some(HandshakeReply::Reject(HelloReject {
            reason,
            host_version: self.config.version,
            boot_nonce,
        }));
        self.push_event(Queued::HandshakeRejected(reason));
    }

    fn on_hello(&mut self, now: Instant, hello: &Hello<'_>) {
        let (Some(serial), Some(firmware)) = (
            ShortAscii::new(hello.serial),
            ShortAscii::new(hello.firmware),
        ) else {
            // Unreachable: HELLO parsing enforces the same limits.
            self.refuse(now, RejectReason::MALFORMED_HELLO, hello.boot_nonce);
            return;
        };
        if hello.version.major != self.config.version.major {
            self.refuse(now, RejectReason::INCOMPATIBLE_VERSION, hello.boot_nonce);
            return;
        }
        let common = Encodings(hello.encodings.0 & self.config.encodings.0);
        let encoding = if common.contains(TextEncoding::Utf8) {
            TextEncoding::Utf8
        } else if common.contains(TextEncoding::Gb18030) {
            TextEncoding::Gb18030
        } else {
            self.refuse(now, RejectReason::NO_COMMON_ENCODING, hello.boot_nonce);
            return;
        };
        let identity = ReaderIdentity {
            serial,
            firmware,
            capabilities: hello.capabilities,
            encodings: hello.encodings,
        };
        let same_boot = self
            .reader
            .is_some_and(|(known, nonce)| known.serial == serial && nonce == hello.boot_nonce);
        if self.is_up() {
            if same_boot && !self.link_confirmed {
                // Our HELLO_ACK was lost: answer again, the link is unchanged.
                if let Some(info) = self.info {
                    self.send_hello_ack(&info);
                }
                return;
            }
            let reason = if same_boot {
                LinkDownReason::PeerRelinked
            } else {
                LinkDownReason::PeerRebooted
            };
            self.link_down(now, reason);
        }
        let peer_change = match self.reader {
            None => PeerChange::FirstContact,
            Some((known, _)) if known.serial != serial => PeerChange::DifferentReader,
            Some(_) if same_boot => PeerChange::SameBoot,
            Some(_) => PeerChange::Rebooted,
        };
        let info = LinkInfo {
            version: Version {
                major: self.config.version.major,
                minor: hello.version.minor.min(self.config.version.minor),
            },
            max_payload: hello.max_payload.min(self.config.clamped_max_payload()),
            encoding,
            reader: identity,
            reader_version: hello.version,
            boot_nonce: hello.boot_nonce,
            peer_change,
        };
        self.reader = Some((identity, hello.boot_nonce));
        self.link_up(now, info);
        self.send_hello_ack(&info);
    }

    fn send_hello_ack(&mut self, info: &LinkInfo) {
        self.handshake_reply = Some(HandshakeReply::Ack(HelloAck {
            version: info.version,
            max_payload: info.max_payload,
            encoding: info.encoding,
            host_flags: 0,
            boot_nonce: info.boot_nonce,
        }));
    }

    fn on_hello_ack(&mut self, now: Instant, ack: &HelloAck) {
        let Some((identity, nonce)) = self.reader else {
            return;
        };
        let consistent = ack.boot_nonce == nonce
            && ack.version.major == self.config.version.major
            && ack.version.minor <= self.config.version.minor
            && ack.max_payload <= self.config.clamped_max_payload()
            && identity.encodings.contains(ack.encoding);
        if self.is_up() || !consistent {
            // A duplicate answer to a repeated HELLO, or a stale/inconsistent one: keep going.
            bump(&mut self.stats.ignored_frames);
            return;
        }
        let info = LinkInfo {
            version: ack.version,
            max_payload: ack.max_payload,
            encoding: ack.encoding,
            reader: identity,
            reader_version: self.config.version,
            boot_nonce: nonce,
            peer_change: PeerChange::FirstContact,
        };
        self.link_up(now, info);
    }

    fn on_hello_reject(&mut self, now: Instant, reject: &HelloReject) {
        let ours = self
            .reader
            .is_some_and(|(_, nonce)| reject.boot_nonce == nonce || reject.boot_nonce == 0);
        if self.is_up() || !ours {
            bump(&mut self.stats.ignored_frames);
            return;
        }
        self.state = LinkState::Refused {
            retry_at: now + self.config.refused_retry,
        };
        self.hello_due = false;
        self.push_event(Queued::HandshakeRejected(reject.reason));
    }

    fn link_up(&mut self, now: Instant, info: LinkInfo) {
        self.state = LinkState::Up;
        self.info = Some(info);
        self.link_confirmed = false;
        self.last_accepted = 0;
        self.next_seq = 1;
        self.reasm_type = None;
        self.reasm_len = if self.message_pending {
            self.reasm_len
        } else {
            0
        };
        self.ack_pending = false;
        self.nak_pending = false;
        // The NAK limit (one per T_ACK) is per link: a new link may NAK at once.
        self.last_nak = None;
        self.pong_pending = false;
        self.outstanding = None;
        self.retransmit_due = false;
        self.last_rx = now;
        self.last_tx = now;
        self.link_up_pending = true;
        self.push_event(Queued::LinkUp);
    }

    fn link_down(&mut self, now: Instant, reason: LinkDownReason) {
        if !self.is_up() {
            return;
        }
        // `info` stays: it describes the last link (a LinkUp event may still be unpolled).
        self.outstanding = None;
        self.tx_offset = 0;
        self.retransmit_due = false;
        self.reasm_type = None;
        self.ack_pending = false;
        self.nak_pending = false;
        self.pong_pending = false;
        self.push_event(Queued::LinkDown(reason));
        while let Some(entry) = self.queue.pop_front() {
            self.push_event(Queued::Unconfirmed(entry.id, entry.msg_type));
        }
        self.state = match self.role {
            Role::Host => LinkState::Down,
            Role::Reader => {
                self.hello_due = true;
                LinkState::Connecting {
                    next_hello: now + self.config.hello_interval(),
                }
            }
        };
    }

    // ---- timers ----

    fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            LinkState::Down => None,
            LinkState::Connecting { next_hello } => Some(next_hello),
            LinkState::Refused { retry_at } => Some(retry_at),
            LinkState::Up => {
                let dead = self.last_rx + self.config.dead_interval();
                let heartbeat = self.last_tx + self.config.heartbeat_interval;
                let retransmit = self
                    .outstanding
                    .filter(|_| !self.retransmit_due)
                    .map(|o| o.sent_at + self.ack_timeout());
                Some(retransmit.map_or(dead.min(heartbeat), |r| r.min(dead).min(heartbeat)))
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            LinkState::Down => {}
            LinkState::Connecting { next_hello } => {
                if now >= next_hello {
                    self.hello_due = true;
                }
            }
            LinkState::Refused { retry_at } => {
                if now >= retry_at {
                    self.state = LinkState::Connecting { next_hello: now };
                    self.hello_due = true;
                }
            }
            LinkState::Up => {
                if now >= self.last_rx + self.config.dead_interval() {
                    self.link_down(now, LinkDownReason::HeartbeatLost);
                    return;
                }
                if let Some(out) = self.outstanding
                    && !self.retransmit_due
                    && now >= out.sent_at + self.ack_timeout()
                {
                    self.retransmit_or_give_up(now);
                }
            }
        }
    }

    // ---- transmitting ----

    fn control_header(&self, msg_type: MessageType) -> Header {
        Header {
            flags: Flags::empty(),
            seq: 0,
            ack: 0,
            msg_type: msg_type.as_u8(),
        }
    }

    fn acking_header(&self, msg_type: u8, extra: Flags) -> Header {
        Header {
            flags: Flags::ACK.with(extra),
            seq: 0,
            ack: self.last_accepted,
            msg_type,
        }
    }

    /// Chooses the next frame to send, in the priority order of PROTOCOL.md §4.8.
    fn next_frame(&mut self, now: Instant) -> Option<(Header, PayloadSource)> {
        if let Some(reply) = self.handshake_reply.take() {
            return Some(match reply {
                HandshakeReply::Ack(ack) => (
                    self.control_header(MessageType::HelloAck),
                    PayloadSource::Control(Message::HelloAck(ack)),
                ),
                HandshakeReply::Reject(reject) => (
                    self.control_header(MessageType::HelloReject),
                    PayloadSource::Control(Message::HelloReject(reject)),
                ),
            });
        }
        if self.reset_pending && !self.is_up() {
            self.reset_pending = false;
            return Some((
                self.control_header(MessageType::Reset),
                PayloadSource::Control(Message::Reset(Reset {
                    reason: ResetReason::NOT_CONNECTED,
                })),
            ));
        }
        self.reset_pending = false;
        if let LinkState::Connecting { .. } = self.state
            && self.hello_due
        {
            self.hello_due = false;
            self.state = LinkState::Connecting {
                next_hello: now + self.config.hello_interval(),
            };
            return self.hello_frame();
        }
        if !self.is_up() {
            return None;
        }
        if self.nak_pending {
            self.nak_pending = false;
            self.ack_pending = false;
            bump(&mut self.stats.naks_sent);
            return Some((
                self.acking_header(ACK_ONLY_TYPE, Flags::NAK),
                PayloadSource::Empty,
            ));
        }
        if self.pong_pending {
            self.pong_pending = false;
            self.ack_pending = false;
            return Some((
                self.acking_header(MessageType::Pong.as_u8(), Flags::empty()),
                PayloadSource::Empty,
            ));
        }
        if let Some(frame) = self.data_frame(now) {
            self.ack_pending = false;
            return Some(frame);
        }
        if self.ack_pending {
            self.ack_pending = false;
            return Some((
                self.acking_header(ACK_ONLY_TYPE, Flags::empty()),
                PayloadSource::Empty,
            ));
        }
        if now >= self.last_tx + self.config.heartbeat_interval {
            return Some((
                self.acking_header(MessageType::Ping.as_u8(), Flags::empty()),
                PayloadSource::Empty,
            ));
        }
        None
    }

    fn hello_frame(&self) -> Option<(Header, PayloadSource)> {
        self.reader?;
        Some((
            self.control_header(MessageType::Hello),
            PayloadSource::Hello,
        ))
    }

    fn data_frame(&mut self, now: Instant) -> Option<(Header, PayloadSource)> {
        let max = usize::from(self.info?.max_payload);
        let out = match self.outstanding {
            Some(mut out) if self.retransmit_due => {
                self.retransmit_due = false;
                bump(&mut self.stats.retransmissions);
                out.transmissions = out.transmissions.saturating_add(1);
                out.sent_at = now;
                out
            }
            Some(_) => return None,
            None => {
                let front = self.queue.front()?;
                // Offset of the next fragment: fragments before it were acknowledged.
                let offset = self.tx_offset;
                let len = (front.len - offset).min(max);
                let out = Outstanding {
                    seq: self.next_seq,
                    offset,
                    len,
                    more: offset + len < front.len,
                    sent_at: now,
                    transmissions: 1,
                };
                self.next_seq = self.next_seq.wrapping_add(1);
                out
            }
        };
        self.outstanding = Some(out);
        let msg_type = self.queue.front()?.msg_type.as_u8();
        let mut header = self.acking_header(
            msg_type,
            if out.more {
                Flags::MORE
            } else {
                Flags::empty()
            },
        );
        header.seq = out.seq;
        Some((
            header,
            PayloadSource::Queue {
                offset: out.offset,
                len: out.len,
            },
        ))
    }

    // ---- sending ----

    /// Emits `message` into the queue, validates it, commits it.
    fn enqueue(&mut self, message: &Message<'_>) -> Result<MessageId, SendError> {
        let msg_type = message.message_type();
        let encoding = self.encoding();
        let spare = self.queue.spare().ok_or(SendError::QueueFull)?;
        let len = match message.emit(spare) {
            Ok(len) => len,
            Err(EmitError::BufferTooSmall) => return Err(SendError::QueueFull),
            Err(e) => return Err(SendError::Emit(e)),
        };
        let written = spare.get(..len).unwrap_or_default();
        Message::parse(msg_type.as_u8(), written, encoding).map_err(SendError::Invalid)?;
        Ok(self.commit(msg_type, len))
    }

    fn commit(&mut self, msg_type: MessageType, len: usize) -> MessageId {
        let id = MessageId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.queue.commit(id, msg_type, len);
        id
    }

    fn check_sendable(&self, msg_type: MessageType) -> Result<(), SendError> {
        if msg_type.is_link_control() || !msg_type.may_be_sent_by(self.role) {
            return Err(SendError::NotAllowed(msg_type));
        }
        if !self.is_up() {
            return Err(SendError::LinkDown);
        }
        Ok(())
    }

    fn send(&mut self, message: &Message<'_>) -> Result<MessageId, SendError> {
        self.check_sendable(message.message_type())?;
        self.enqueue(message)
    }

    fn send_raw(&mut self, msg_type: MessageType, payload: &[u8]) -> Result<MessageId, SendError> {
        self.check_sendable(msg_type)?;
        Message::parse(msg_type.as_u8(), payload, self.encoding()).map_err(SendError::Invalid)?;
        self.queue_payload(msg_type, payload)
    }

    fn send_unchecked(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
    ) -> Result<MessageId, SendError> {
        if msg_type.is_link_control() {
            return Err(SendError::NotAllowed(msg_type));
        }
        if !self.is_up() {
            return Err(SendError::LinkDown);
        }
        self.queue_payload(msg_type, payload)
    }

    fn queue_payload(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
    ) -> Result<MessageId, SendError> {
        if payload.len() > N.min(MAX_MESSAGE_LEN) {
            return Err(SendError::TooLong(payload.len()));
        }
        let spare = self.queue.spare().ok_or(SendError::QueueFull)?;
        spare
            .get_mut(..payload.len())
            .ok_or(SendError::QueueFull)?
            .copy_from_slice(payload);
        Ok(self.commit(msg_type, payload.len()))
    }
}

macro_rules! session_common {
    () => {
        /// Feeds bytes read from the line. Returns how many were consumed: fewer than `data.len()`
        /// when a frame produced a message or a link-up that the caller must first take with
        /// [`Self::poll_event`] (its payload lives in the session's buffer). Call again with the
        /// rest after polling. Never panics, whatever the bytes.
        #[must_use = "unconsumed bytes must be fed again after polling events"]
        pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> usize {
            self.inner.handle_bytes(now, data)
        }

        /// Processes expired timers (ACK timeout, heartbeat, link-down, HELLO repeat). Call when
        /// [`Self::poll_timeout`]'s instant has passed; calling it early is harmless.
        pub fn handle_timeout(&mut self, now: Instant) {
            self.inner.core.handle_timeout(now);
        }

        /// The next frame to write to the line, as bytes in `buf` (`Some(len)`), or `None` when
        /// there is nothing to send now. Call until `None` after every `handle_*` call.
        pub fn poll_transmit(
            &mut self,
            now: Instant,
            buf: &mut [u8; WIRE_BUF_LEN],
        ) -> Option<usize> {
            self.inner.poll_transmit(now, buf)
        }

        /// When [`Self::handle_timeout`] must be called next, if any timer is running.
        pub fn poll_timeout(&self) -> Option<Instant> {
            self.inner.core.poll_timeout()
        }

        /// The next event, in the order things happened.
        pub fn poll_event(&mut self) -> Option<Event<'_>> {
            self.inner.poll_event()
        }

        /// Queues a typed application message. It is emitted into the transmit queue and checked
        /// by parsing it back with the link's encoding. Returns its id for
        /// [`Event::Delivered`] / [`Event::Unconfirmed`].
        pub fn send(&mut self, message: &Message<'_>) -> Result<MessageId, SendError> {
            self.inner.core.send(message)
        }

        /// Queues an already-encoded payload (e.g. a stored answer re-sent byte-identically for
        /// QUERY). The payload is validated like a received one.
        pub fn send_raw(
            &mut self,
            msg_type: MessageType,
            payload: &[u8],
        ) -> Result<MessageId, SendError> {
            self.inner.core.send_raw(msg_type, payload)
        }

        /// Queues `payload` as a message of `msg_type` without checking that this end may send
        /// that type or that the payload is valid: for conformance tests of the peer's answers to
        /// bad messages (PROTOCOL.md §4.12, §11.1). The link must be up; link-control types are
        /// refused. Never for production traffic.
        pub fn send_unchecked(
            &mut self,
            msg_type: MessageType,
            payload: &[u8],
        ) -> Result<MessageId, SendError> {
            self.inner.core.send_unchecked(msg_type, payload)
        }

        /// Whether the link is up.
        pub fn is_up(&self) -> bool {
            self.inner.core.is_up()
        }

        /// The current link's parameters, if it is up.
        pub fn link_info(&self) -> Option<&LinkInfo> {
            self.inner.core.info.as_ref().filter(|_| self.is_up())
        }

        /// Messages queued and not yet confirmed.
        pub fn queued(&self) -> usize {
            self.inner.core.queue.count
        }

        /// Diagnostic counters.
        pub fn stats(&self) -> &Stats {
            &self.inner.core.stats
        }

        /// The configuration.
        pub fn config(&self) -> &Config {
            &self.inner.core.config
        }
    };
}

/// The daemon's end of the link: waits for HELLO, answers, then exchanges messages.
///
/// `N` is the size of the reassembly buffer and of the transmit queue (default 4 KiB each).
pub struct HostSession<const N: usize = DEFAULT_BUFFER> {
    inner: Endpoint<N>,
}

impl HostSession {
    /// A host session with the default buffers.
    pub fn new(config: Config) -> Self {
        Self::with_buffers(config)
    }
}

impl<const N: usize> HostSession<N> {
    /// A host session with `N`-byte buffers.
    pub fn with_buffers(config: Config) -> Self {
        HostSession {
            inner: Endpoint::new(Role::Host, config, None),
        }
    }

    /// The last reader seen and its boot nonce (kept across link downs).
    pub fn last_reader(&self) -> Option<(&ReaderIdentity, u64)> {
        self.inner
            .core
            .reader
            .as_ref()
            .map(|(identity, nonce)| (identity, *nonce))
    }

    session_common!();
}

impl<const N: usize> core::fmt::Debug for HostSession<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostSession")
            .field("state", &self.inner.core.state)
            .field("info", &self.inner.core.info)
            .field("queued", &self.inner.core.queue.count)
            .finish_non_exhaustive()
    }
}

/// The reader's end of the link: sends HELLO until accepted, then exchanges messages.
///
/// A reboot is a new session with a new boot nonce (same identity). `N` as for [`HostSession`].
pub struct ReaderSession<const N: usize = DEFAULT_BUFFER> {
    inner: Endpoint<N>,
}

impl ReaderSession {
    /// A reader session with the default buffers. `boot_nonce` must be random per boot (a
    /// hardware RNG or a counter persisted in flash mixed with a unique id).
    pub fn new(config: Config, identity: ReaderIdentity, boot_nonce: u64) -> Self {
        Self::with_buffers(config, identity, boot_nonce)
    }
}

impl<const N: usize> ReaderSession<N> {
    /// A reader session with `N`-byte buffers.
    pub fn with_buffers(config: Config, identity: ReaderIdentity, boot_nonce: u64) -> Self {
        ReaderSession {
            inner: Endpoint::new(Role::Reader, config, Some((identity, boot_nonce))),
        }
    }

    /// The boot nonce this session announces.
    pub fn boot_nonce(&self) -> u64 {
        self.inner.core.reader.map_or(0, |(_, nonce)| nonce)
    }

    session_common!();
}

impl<const N: usize> core::fmt::Debug for ReaderSession<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReaderSession")
            .field("state", &self.inner.core.state)
            .field("info", &self.inner.core.info)
            .field("queued", &self.inner.core.queue.count)
            .finish_non_exhaustive()
    }
}

/// An [`Event`] that owns its data, for hosted callers that keep events beyond the next call
/// into the session (e.g. send them to another task). `std` feature.
#[cfg(any(test, feature = "std"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedEvent {
    /// See [`Event::LinkUp`].
    LinkUp(LinkInfo),
    /// See [`Event::LinkDown`].
    LinkDown(LinkDownReason),
    /// See [`Event::Unconfirmed`].
    Unconfirmed {
        /// From `send`.
        id: MessageId,
        /// Its type.
        msg_type: MessageType,
    },
    /// See [`Event::Delivered`].
    Delivered {
        /// From `send`.
        id: MessageId,
        /// Its type.
        msg_type: MessageType,
    },
    /// See [`Event::Message`].
    Message {
        /// Its type.
        msg_type: MessageType,
        /// The reassembled payload.
        payload: std::vec::Vec<u8>,
    },
    /// See [`Event::MessageRejected`].
    MessageRejected {
        /// Type byte received.
        msg_type: u8,
        /// What was wrong.
        problem: InboundProblem,
        /// Whether an ERROR reply was queued.
        answered: bool,
    },
    /// See [`Event::HandshakeRejected`].
    HandshakeRejected(RejectReason),
}

#[cfg(any(test, feature = "std"))]
impl From<Event<'_>> for OwnedEvent {
    fn from(event: Event<'_>) -> Self {
        match event {
            Event::LinkUp(info) => OwnedEvent::LinkUp(*info),
            Event::LinkDown(reason) => OwnedEvent::LinkDown(reason),
            Event::Unconfirmed { id, msg_type } => OwnedEvent::Unconfirmed { id, msg_type },
            Event::Delivered { id, msg_type } => OwnedEvent::Delivered { id, msg_type },
            Event::Message { msg_type, payload } => OwnedEvent::Message {
                msg_type,
                payload: payload.to_vec(),
            },
            Event::MessageRejected {
                msg_type,
                problem,
                answered,
            } => OwnedEvent::MessageRejected {
                msg_type,
                problem,
                answered,
            },
            Event::HandshakeRejected(reason) => OwnedEvent::HandshakeRejected(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn owned_events_keep_the_payload() {
        let event = Event::Message {
            msg_type: MessageType::Query,
            payload: &[0, 0, 0, 0],
        };
        assert_eq!(
            OwnedEvent::from(event),
            OwnedEvent::Message {
                msg_type: MessageType::Query,
                payload: std::vec![0, 0, 0, 0]
            }
        );
    }

    #[test]
    fn wire_time_is_ten_bits_per_byte() {
        assert_eq!(wire_time(1042, 115_200), Duration::from_micros(90_452));
        assert_eq!(wire_time(14, 9_600), Duration::from_micros(14_584));
    }
}
