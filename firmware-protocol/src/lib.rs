//! The redeemd reader↔daemon serial protocol, version 1.2 — the normative description is
//! `PROTOCOL.md` next to this crate; this crate is its reference implementation.
//!
//! Three layers, each usable alone, none doing I/O or reading a clock:
//!
//! 1. [`frame`]: COBS-framed, CRC-32-checked frames. [`Decoder`] is fed bytes as they arrive and
//!    resynchronises at the next `0x00` after any damage; [`encode_frame`] is its inverse.
//! 2. [`message`]: typed messages borrowing from their payload ([`Message::parse`]) and written into
//!    caller buffers ([`Message::emit`]).
//! 3. [`session`]: sans-IO link state machines for both ends — [`HostSession`] (daemon) and
//!    [`ReaderSession`] (reader firmware): handshake, stop-and-wait ACK/NAK with retransmission,
//!    fragmentation, heartbeat, link-down reporting. Time comes in as [`Instant`].
//!
//! With the `std` feature, [`conformance`] holds the conformance flows (PROTOCOL.md §11.1) and a
//! sans-IO runner that plays them from the reader's side against a daemon.
//!
//! `no_std` without `alloc`; all memory is fixed at construction. `#![forbid(unsafe_code)]`.
//! Invariant for every entry point: no input makes it panic, allocate or stop making progress.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
#[cfg(any(test, feature = "std"))]
pub mod conformance;
pub mod frame;
pub mod message;
pub mod session;
pub mod time;

#[doc(hidden)]
pub mod fuzzing;

pub use frame::{
    Decoded, Decoder, EncodeError, Flags, Frame, FrameError, Header, MAX_ENCODED_FRAME_LEN,
    MAX_PAYLOAD, WIRE_BUF_LEN, encode_frame, parse_frame,
};
pub use message::{
    Approved, Capabilities, CardMenu, CardPresented, Date, DeclineReason, Declined, Display,
    EmitError, Encodings, EntryMode, Error, ErrorCode, Hello, HelloAck, HelloReject, Identity,
    IdentityCheck, List, ListItem, MAX_MESSAGE_LEN, MenuEntry, Message, MessageType,
    PROTOCOL_VERSION, ParseError, ParseErrorKind, Query, Redeem, RedeemItem, RejectReason, Reset,
    ResetReason, Role, Text, TextEncoding, UsesLeft, Version, Void, VoidReason,
};
#[cfg(feature = "std")]
pub use session::OwnedEvent;
pub use session::{
    Config, Event, HostSession, InboundProblem, LinkDownReason, LinkInfo, MessageId, PeerChange,
    ReaderIdentity, ReaderSession, SendError, ShortAscii, Stats,
};
pub use time::Instant;
