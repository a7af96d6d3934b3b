//! Layer 2: typed messages (PROTOCOL.md §5 and §6).
//!
//! smoltcp-style: a [`Message`] borrows from the payload it was parsed from (strings are byte slices,
//! lists are [`List`] views re-read lazily from the validated bytes), and `emit` writes into a
//! caller-provided buffer. Nothing allocates. `parse` validates *every* field before returning, so
//! iterating a parsed list cannot fail; parsing never panics on any input.
//!
//! Text fields are bytes in the negotiated [`TextEncoding`]; the crate validates them (UTF-8 fully,
//! GB18030 structurally) but never transcodes.

use core::fmt;

pub use crate::codec::ParseErrorKind;
pub use crate::codec::{EmitError, ParseError};
use crate::codec::{Limit, Reader, Writer, err};

/// Protocol version implemented by this crate (PROTOCOL.md §1).
pub const PROTOCOL_VERSION: Version = Version { major: 1, minor: 2 };
/// Largest application message (all its frames together) a receiver must accept.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Message type byte of acknowledgement-only frames (no payload, not a message).
pub const ACK_ONLY_TYPE: u8 = 0x00;
/// Types below this value are unsequenced link-control frames; from it on, sequenced data frames.
pub const FIRST_APPLICATION_TYPE: u8 = 0x20;

/// A protocol version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible additions; the link runs at the lower minor of the two ends.
    pub minor: u8,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Which end of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The card reader (bank POS terminal).
    Reader,
    /// The daemon.
    Host,
}

/// Who may send a message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Reader to host only.
    ReaderToHost,
    /// Host to reader only.
    HostToReader,
    /// Either end.
    Both,
}

macro_rules! message_types {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, $dir:ident;)*) => {
        /// Every message type of protocol 1.0 (PROTOCOL.md §5.2).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum MessageType {
            $($(#[$doc])* $variant = $code,)*
        }

        impl MessageType {
            /// Every type, in code order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant,)*];

            /// The type with this code, `None` for reserved or unknown codes.
            pub const fn from_u8(code: u8) -> Option<MessageType> {
                match code {
                    $($code => Some(MessageType::$variant),)*
                    _ => None,
                }
            }

            /// The name used in PROTOCOL.md.
            pub const fn name(self) -> &'static str {
                match self {
                    $(MessageType::$variant => $name,)*
                }
            }

            /// Who may send it.
            pub const fn direction(self) -> Direction {
                match self {
                    $(MessageType::$variant => Direction::$dir,)*
                }
            }
        }
    };
}

message_types! {
    /// R→D: open the link.
    Hello = 0x01, "HELLO", ReaderToHost;
    /// D→R: link accepted, negotiated parameters.
    HelloAck = 0x02, "HELLO_ACK", HostToReader;
    /// D→R: link refused.
    HelloReject = 0x03, "HELLO_REJECT", HostToReader;
    /// Heartbeat request.
    Ping = 0x04, "PING", Both;
    /// Heartbeat answer.
    Pong = 0x05, "PONG", Both;
    /// D→R: "no link with you, send HELLO".
    Reset = 0x06, "RESET", HostToReader;
    /// R→D: a card was read; starts a transaction.
    CardPresented = 0x20, "CARD_PRESENTED", ReaderToHost;
    /// R→D: redeem entries of the menu.
    Redeem = 0x21, "REDEEM", ReaderToHost;
    /// R→D: void an earlier redemption.
    Void = 0x22, "VOID", ReaderToHost;
    /// R→D: ask again for a transaction's stored outcome.
    Query = 0x23, "QUERY", ReaderToHost;
    /// D→R: the card's usable entitlements.
    CardMenu = 0x40, "CARD_MENU", HostToReader;
    /// D→R: redemption or void approved.
    Approved = 0x41, "APPROVED", HostToReader;
    /// D→R: refused, with the reason.
    Declined = 0x42, "DECLINED", HostToReader;
    /// D→R: status text; resets the reader's transaction timer.
    Display = 0x43, "DISPLAY", HostToReader;
    /// Protocol-level error report.
    Error = 0x60, "ERROR", Both;
}

impl MessageType {
    /// The wire code.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Link-control types travel in unsequenced frames; the others in sequenced data frames.
    pub const fn is_link_control(self) -> bool {
        (self as u8) < FIRST_APPLICATION_TYPE
    }

    /// Whether `role` may send this type.
    pub const fn may_be_sent_by(self, role: Role) -> bool {
        matches!(
            (self.direction(), role),
            (Direction::Both, _)
                | (Direction::ReaderToHost, Role::Reader)
                | (Direction::HostToReader, Role::Host)
        )
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Text encoding of every text field of the link, chosen in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TextEncoding {
    /// UTF-8 (RFC 3629).
    Utf8 = 1,
    /// GB18030 (GB 18030-2005), for readers whose fonts only know GBK.
    Gb18030 = 2,
}

impl TextEncoding {
    /// The encoding's usual name: `UTF-8`, `GB18030`.
    pub const fn name(self) -> &'static str {
        match self {
            TextEncoding::Utf8 => "UTF-8",
            TextEncoding::Gb18030 => "GB18030",
        }
    }

    fn from_u8(field: &'static str, v: u8) -> Result<Self, ParseError> {
        match v {
            1 => Ok(TextEncoding::Utf8),
            2 => Ok(TextEncoding::Gb18030),
            other => Err(err(field, ParseErrorKind::OutOfRange(other.into()))),
        }
    }
}

/// Set of text encodings (HELLO bit mask). Unknown bits are kept as received and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Encodings(pub u8);

impl Encodings {
    /// UTF-8 only.
    pub const UTF8: Encodings = Encodings(1);
    /// GB18030 only.
    pub const GB18030: Encodings = Encodings(2);
    /// Both.
    pub const BOTH: Encodings = Encodings(3);

    /// Whether `encoding` is in the set.
    pub const fn contains(self, encoding: TextEncoding) -> bool {
        self.0 & (encoding as u8) != 0
    }
}

macro_rules! open_code {
    ($(#[$doc:meta])* $name:ident($repr:ty) { $($(#[$cdoc:meta])* $konst:ident = $value:literal,)* }) => {
        $(#[$doc])*
        ///
        /// An open set: unknown values are valid on the wire and carried as they are.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $repr);

        impl $name {
            $($(#[$cdoc])* pub const $konst: $name = $name($value);)*

            /// The documented name of the value, if it has one.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($konst)),)*
                    _ => None,
                }
            }
        }
    };
}

open_code! {
    /// HELLO_REJECT reason (PROTOCOL.md §5.5).
    RejectReason(u8) {
        /// Different protocol major version.
        INCOMPATIBLE_VERSION = 1,
        /// No text encoding in common.
        NO_COMMON_ENCODING = 2,
        /// HELLO payload failed to parse.
        MALFORMED_HELLO = 3,
    }
}

open_code! {
    /// RESET reason.
    ResetReason(u8) {
        /// The host has no link with this reader (it restarted, or declared the link down).
        NOT_CONNECTED = 1,
    }
}

open_code! {
    /// DECLINED reason code (PROTOCOL.md §7).
    DeclineReason(u16) {
        /// Card not known to the shop's entitlement cache.
        CARD_UNKNOWN = 1,
        /// Card reported lost.
        CARD_LOST = 2,
        /// Card frozen.
        CARD_FROZEN = 3,
        /// Card cancelled.
        CARD_CANCELLED = 4,
        /// Card replaced by a reissued one.
        CARD_REISSUED = 5,
        /// Not enough uses left for the quantity asked.
        NOT_ENOUGH_USES = 6,
        /// Entitlement expired.
        EXPIRED = 7,
        /// Entitlement not valid at this shop.
        NOT_VALID_HERE = 8,
        /// Daily cap reached.
        DAILY_CAP_REACHED = 9,
        /// Identity confirmation required but not given.
        IDENTITY_REQUIRED = 10,
        /// Identity confirmation wrong.
        IDENTITY_MISMATCH = 11,
        /// REDEEM names an entry index that the menu did not have.
        UNKNOWN_ENTRY = 12,
        /// VOID outside the void window.
        VOID_WINDOW_CLOSED = 13,
        /// VOID of an authorization code the host does not know.
        ORIGINAL_NOT_FOUND = 14,
        /// VOID of a redemption already voided.
        ALREADY_VOIDED = 15,
        /// QUERY of a transaction the host has no outcome for.
        TXN_UNKNOWN = 16,
        /// Transaction id reused with different content.
        TXN_ID_REUSED = 17,
        /// REDEEM/VOID without a preceding CARD_PRESENTED for this txn id.
        NO_CARD = 18,
        /// Entitlement data too old to decide offline.
        CACHE_STALE = 19,
        /// The host could not record the redemption durably.
        STORAGE_FAILURE = 20,
        /// Entitlement not valid yet.
        NOT_YET_VALID = 21,
        /// Too many wrong identity confirmations: locked for a while.
        IDENTITY_LOCKED = 22,
        /// The card used its offline allowance at this shop since the last sync.
        CARD_OFFLINE_LIMIT = 23,
        /// The terminal made its maximum offline redemptions since the last sync.
        TERMINAL_OFFLINE_LIMIT = 24,
        /// The host's clock went backwards or is before its entitlement data was issued.
        CLOCK_NOT_TRUSTED = 25,
        /// A quantity of 0 or above what an entry can ever have.
        BAD_QUANTITY = 26,
        /// The host has no entitlement data yet.
        NO_DATA = 27,
        /// The card number is not a valid member card number.
        BAD_CARD_NUMBER = 28,
        /// The card's entitlements changed since the menu: swipe again.
        MENU_CHANGED = 29,
        /// Stored data failed its integrity check: the host refuses to decide from it.
        INTEGRITY_FAILURE = 30,
        /// Anything else; see the text.
        OTHER = 0xFFFF,
    }
}

open_code! {
    /// ERROR code (PROTOCOL.md §7).
    ErrorCode(u16) {
        /// Message type unknown to the receiver.
        UNKNOWN_MESSAGE_TYPE = 1,
        /// Message type that this end never receives (wrong direction).
        UNEXPECTED_MESSAGE = 2,
        /// Payload failed to parse; the text names the field.
        MALFORMED_MESSAGE = 3,
        /// Message longer than the receiver's reassembly limit.
        MESSAGE_TOO_LONG = 4,
        /// Fragments of one message carried different types.
        FRAGMENT_MISMATCH = 5,
        /// Receiver busy, try again.
        BUSY = 6,
        /// Application-level failure; see the text.
        INTERNAL = 7,
    }
}

macro_rules! closed_code {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $value,)*
        }

        impl $name {
            /// Reads the value of `field` (its dotted name in PROTOCOL.md, for the error: one
            /// enumeration may serve several fields).
            fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, ParseError> {
                match r.u8(field)? {
                    $($value => Ok($name::$variant),)*
                    other => Err(err(field, ParseErrorKind::OutOfRange(other.into()))),
                }
            }
        }
    };
}

closed_code! {
    /// How the card was read.
    EntryMode {
        /// Magnetic stripe.
        Magstripe = 1,
        /// Contact chip.
        Chip = 2,
        /// Contactless.
        Contactless = 3,
        /// Keyed in by the cashier.
        Manual = 4,
        /// QR code shown by the member.
        Qr = 5,
    }
}

closed_code! {
    /// Identity confirmation an entitlement requires, or that REDEEM carries.
    IdentityCheck {
        /// None.
        None = 0,
        /// Last four digits of the member's phone number.
        PhoneLast4 = 1,
        /// Member PIN.
        Pin = 2,
    }
}

closed_code! {
    /// Why a redemption is voided.
    VoidReason {
        /// Cashier picked the wrong item or quantity.
        CashierError = 1,
        /// Member changed their mind.
        CustomerRequest = 2,
        /// Anything else.
        Other = 3,
    }
}

/// A text field: bytes in the link's negotiated encoding, validated by `parse`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Text<'a>(&'a [u8]);

impl<'a> Text<'a> {
    /// Wraps bytes already in the negotiated encoding (the daemon transcodes with encoding_rs).
    pub const fn new(bytes: &'a [u8]) -> Self {
        Text(bytes)
    }
    /// Wraps a UTF-8 string (for a UTF-8 link).
    pub const fn from_utf8(text: &'a str) -> Self {
        Text(text.as_bytes())
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
    /// The text as `&str` if it is UTF-8 (always, on a UTF-8 link).
    pub fn to_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.0).ok()
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_str() {
            Some(s) => write!(f, "{s:?}"),
            None => write!(f, "Text({:02x?})", self.0),
        }
    }
}

/// A calendar date, on the wire a u32 `YYYYMMDD` (0 = none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// 2000..=2099.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31 (not checked against the month's length).
    pub day: u8,
}

impl Date {
    fn to_wire(date: Option<Date>) -> u32 {
        date.map_or(0, |d| {
            u32::from(d.year) * 10_000 + u32::from(d.month) * 100 + u32::from(d.day)
        })
    }

    fn from_wire(field: &'static str, v: u32) -> Result<Option<Date>, ParseError> {
        if v == 0 {
            return Ok(None);
        }
        let (year, month, day) = (v / 10_000, v / 100 % 100, v % 100);
        if !(2000..=2099).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day)
        {
            return Err(err(field, ParseErrorKind::OutOfRange(v.into())));
        }
        // In range: year < 2100, month and day < 100.
        Ok(Some(Date {
            year: year as u16,
            month: month as u8,
            day: day as u8,
        }))
    }
}

fn nonzero_txn(field: &'static str, v: u32) -> Result<u32, ParseError> {
    if v == 0 {
        Err(err(field, ParseErrorKind::OutOfRange(0)))
    } else {
        Ok(v)
    }
}

fn write_nonzero_txn(field: &'static str, w: &mut Writer<'_>, v: u32) -> Result<(), EmitError> {
    nonzero_txn(field, v).map_err(EmitError::Invalid)?;
    w.u32(v)
}

/// An element type of a [`List`]. Implemented by the crate's list elements only.
pub trait ListItem<'a>: Copy + Sized {
    #[doc(hidden)]
    fn read(r: &mut Reader<'a>, encoding: TextEncoding) -> Result<Self, ParseError>;
    #[doc(hidden)]
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError>;
}

enum ListRepr<'a, T> {
    /// Validated wire bytes of `count` elements.
    Wire {
        bytes: &'a [u8],
        count: u8,
        encoding: TextEncoding,
    },
    /// Elements supplied by the caller for `emit`.
    Items(&'a [T]),
}

/// A counted list: a zero-copy view over parsed bytes, or a slice of elements to emit.
pub struct List<'a, T> {
    repr: ListRepr<'a, T>,
}

impl<T> Clone for ListRepr<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ListRepr<'_, T> {}

impl<T> Clone for List<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for List<'_, T> {}

impl<'a, T: ListItem<'a>> List<'a, T> {
    /// A list to emit.
    pub const fn new(items: &'a [T]) -> Self {
        List {
            repr: ListRepr::Items(items),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self.repr {
            ListRepr::Wire { count, .. } => usize::from(count),
            ListRepr::Items(items) => items.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements, in wire order.
    pub fn iter(&self) -> ListIter<'a, T> {
        match self.repr {
            ListRepr::Wire {
                bytes,
                count,
                encoding,
            } => ListIter::Wire {
                reader: Reader::new(bytes),
                left: count,
                encoding,
            },
            ListRepr::Items(items) => ListIter::Items(items.iter()),
        }
    }

    fn read(r: &mut Reader<'a>, limit: &Limit, encoding: TextEncoding) -> Result<Self, ParseError> {
        let count = r.count8(limit)?;
        let start = r.rest();
        for _ in 0..count {
            T::read(r, encoding)?;
        }
        let used = start.len() - r.rest().len();
        Ok(List {
            repr: ListRepr::Wire {
                bytes: start.get(..used).unwrap_or_default(),
                count,
                encoding,
            },
        })
    }

    fn write(&self, w: &mut Writer<'_>, limit: &Limit) -> Result<(), EmitError> {
        w.count8(limit, self.len())?;
        self.iter().try_for_each(|item| item.write(w))
    }
}

impl<'a, T: ListItem<'a> + PartialEq> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}
impl<'a, T: ListItem<'a> + Eq> Eq for List<'a, T> {}

impl<'a, T: ListItem<'a> + fmt::Debug> fmt::Debug for List<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over a [`List`].
pub enum ListIter<'a, T> {
    #[doc(hidden)]
    Wire {
        reader: Reader<'a>,
        left: u8,
        encoding: TextEncoding,
    },
    #[doc(hidden)]
    Items(core::slice::Iter<'a, T>),
}

impl<'a, T: ListItem<'a>> Iterator for ListIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            ListIter::Wire {
                reader,
                left,
                encoding,
            } => {
                *left = left.checked_sub(1)?;
                // The bytes were validated by `List::read`; an error cannot happen, and would
                // end the iteration rather than panic.
                T::read(reader, *encoding).ok()
            }
            ListIter::Items(items) => items.next().copied(),
        }
    }
}

macro_rules! limits {
    ($($name:ident = $field:literal, $min:literal..=$max:literal;)*) => {
        $(const $name: Limit = Limit::new($field, $min, $max);)*
    };
}

limits! {
    HELLO_SERIAL = "HELLO.serial", 1..=32;
    HELLO_FIRMWARE = "HELLO.firmware", 1..=32;
    CP_CARD = "CARD_PRESENTED.card", 1..=64;
    CP_CASHIER = "CARD_PRESENTED.cashier_id", 0..=32;
    MENU_HOLDER = "CARD_MENU.holder_name", 0..=64;
    MENU_MASKED = "CARD_MENU.masked_card", 0..=32;
    MENU_ENTRIES = "CARD_MENU.entries", 0..=32;
    ENTRY_TITLE = "CARD_MENU.entry.title", 1..=64;
    DECLINED_TEXT = "DECLINED.text", 0..=128;
    REDEEM_ITEMS = "REDEEM.items", 1..=16;
    REDEEM_IDENTITY = "REDEEM.identity_data", 0..=12;
    APPROVED_AUTH = "APPROVED.auth_code", 1..=16;
    APPROVED_JOURNAL = "APPROVED.journal_ref", 1..=32;
    APPROVED_USES = "APPROVED.uses_left", 0..=32;
    APPROVED_RECEIPT = "APPROVED.receipt", 0..=48;
    RECEIPT_LINE = "APPROVED.receipt.line", 0..=64;
    VOID_AUTH = "VOID.original_auth_code", 1..=16;
    DISPLAY_TEXT = "DISPLAY.text", 1..=64;
    ERROR_TEXT = "ERROR.text", 0..=128;
}

/// Most uses one REDEEM item may ask for.
pub const MAX_QUANTITY: u16 = 999;

/// HELLO (R→D): the reader's identity and what it supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Highest protocol version the reader implements.
    pub version: Version,
    /// Largest frame payload the reader accepts, 64..=1024.
    pub max_payload: u16,
    /// Reader hardware capabilities ([`Capabilities`]).
    pub capabilities: Capabilities,
    /// Text encodings the reader can display and print. A sender sets at least one known bit
    /// (`emit` refuses otherwise); a receiver parses any value (the host answers
    /// NO_COMMON_ENCODING).
    pub encodings: Encodings,
    /// Random per boot: a new value means the reader rebooted.
    pub boot_nonce: u64,
    /// Reader serial number, printable ASCII, 1..=32 bytes.
    pub serial: &'a str,
    /// Firmware version, printable ASCII, 1..=32 bytes.
    pub firmware: &'a str,
}

/// Reader hardware capability bits (HELLO). Unknown bits are kept and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// Has a receipt printer.
    pub const PRINTER: Capabilities = Capabilities(1 << 0);
    /// Has a PIN pad / keypad for identity confirmation.
    pub const KEYPAD: Capabilities = Capabilities(1 << 1);
    /// Reads magnetic stripes.
    pub const MAGSTRIPE: Capabilities = Capabilities(1 << 2);
    /// Reads contact chips.
    pub const CHIP: Capabilities = Capabilities(1 << 3);
    /// Reads contactless cards.
    pub const CONTACTLESS: Capabilities = Capabilities(1 << 4);
    /// Scans QR codes.
    pub const QR: Capabilities = Capabilities(1 << 5);

    /// Whether all bits of `other` are set.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }
}

fn max_payload(field: &'static str, v: u16) -> Result<u16, ParseError> {
    if (crate::frame::MIN_MAX_PAYLOAD..=crate::frame::MAX_PAYLOAD).contains(&usize::from(v)) {
        Ok(v)
    } else {
        Err(err(field, ParseErrorKind::OutOfRange(v.into())))
    }
}

impl<'a> Hello<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ParseError> {
        let version = Version {
            major: r.u8("HELLO.major")?,
            minor: r.u8("HELLO.minor")?,
        };
        let max_payload = max_payload("HELLO.max_payload", r.u16("HELLO.max_payload")?)?;
        let capabilities = Capabilities(r.u32("HELLO.capabilities")?);
        // A HELLO offering no encoding this version knows still parses: the host refuses it with
        // NO_COMMON_ENCODING (PROTOCOL.md §4.3), which names the problem and echoes the nonce.
        let encodings = Encodings(r.u8("HELLO.encodings")?);
        Ok(Hello {
            version,
            max_payload,
            capabilities,
            encodings,
            boot_nonce: r.u64("HELLO.boot_nonce")?,
            serial: r.ascii8(&HELLO_SERIAL)?,
            firmware: r.ascii8(&HELLO_FIRMWARE)?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.u8(self.version.major)?;
        w.u8(self.version.minor)?;
        max_payload("HELLO.max_payload", self.max_payload).map_err(EmitError::Invalid)?;
        w.u16(self.max_payload)?;
        w.u32(self.capabilities.0)?;
        if self.encodings.0 & Encodings::BOTH.0 == 0 {
            return Err(EmitError::Invalid(err(
                "HELLO.encodings",
                ParseErrorKind::OutOfRange(self.encodings.0.into()),
            )));
        }
        w.u8(self.encodings.0)?;
        w.u64(self.boot_nonce)?;
        w.ascii8(&HELLO_SERIAL, self.serial)?;
        w.ascii8(&HELLO_FIRMWARE, self.firmware)
    }
}

/// HELLO_ACK (D→R): the link is up with these parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloAck {
    /// Negotiated version: the host's major, the lower of the two minors.
    pub version: Version,
    /// Negotiated max payload: the lower of the two, 64..=1024.
    pub max_payload: u16,
    /// Text encoding of every text field on this link.
    pub encoding: TextEncoding,
    /// Host feature bits; none are defined in 1.0 (sent as 0, ignored on receipt).
    pub host_flags: u32,
    /// The reader's boot nonce, echoed so a stale HELLO_ACK from an earlier boot is recognisable.
    pub boot_nonce: u64,
}

impl HelloAck {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        Ok(HelloAck {
            version: Version {
                major: r.u8("HELLO_ACK.major")?,
                minor: r.u8("HELLO_ACK.minor")?,
            },
            max_payload: max_payload("HELLO_ACK.max_payload", r.u16("HELLO_ACK.max_payload")?)?,
            encoding: TextEncoding::from_u8("HELLO_ACK.encoding", r.u8("HELLO_ACK.encoding")?)?,
            host_flags: r.u32("HELLO_ACK.host_flags")?,
            boot_nonce: r.u64("HELLO_ACK.boot_nonce")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.u8(self.version.major)?;
        w.u8(self.version.minor)?;
        max_payload("HELLO_ACK.max_payload", self.max_payload).map_err(EmitError::Invalid)?;
        w.u16(self.max_payload)?;
        w.u8(self.encoding as u8)?;
        w.u32(self.host_flags)?;
        w.u64(self.boot_nonce)
    }
}

/// HELLO_REJECT (D→R): the host refuses the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloReject {
    /// Why.
    pub reason: RejectReason,
    /// The host's own protocol version.
    pub host_version: Version,
    /// The HELLO's boot nonce, or 0 if the HELLO could not be parsed.
    pub boot_nonce: u64,
}

impl HelloReject {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        Ok(HelloReject {
            reason: RejectReason(r.u8("HELLO_REJECT.reason")?),
            host_version: Version {
                major: r.u8("HELLO_REJECT.major")?,
                minor: r.u8("HELLO_REJECT.minor")?,
            },
            boot_nonce: r.u64("HELLO_REJECT.boot_nonce")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.u8(self.reason.0)?;
        w.u8(self.host_version.major)?;
        w.u8(self.host_version.minor)?;
        w.u64(self.boot_nonce)
    }
}

/// RESET (D→R): the host has no link with this reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    /// Why.
    pub reason: ResetReason,
}

/// CARD_PRESENTED (R→D): a card was read; the transaction starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardPresented<'a> {
    /// Reader's transaction id, nonzero, unique per reader across reboots.
    pub txn_id: u32,
    /// How the card was read.
    pub entry_mode: EntryMode,
    /// Card number (PAN digits) or token, printable ASCII, 1..=64 bytes. Sensitive.
    pub card: &'a str,
    /// Cashier id, printable ASCII, 0..=32 bytes.
    pub cashier_id: &'a str,
}

impl<'a> CardPresented<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ParseError> {
        Ok(CardPresented {
            txn_id: nonzero_txn("CARD_PRESENTED.txn_id", r.u32("CARD_PRESENTED.txn_id")?)?,
            entry_mode: EntryMode::read(r, "CARD_PRESENTED.entry_mode")?,
            card: r.ascii8(&CP_CARD)?,
            cashier_id: r.ascii8(&CP_CASHIER)?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        write_nonzero_txn("CARD_PRESENTED.txn_id", w, self.txn_id)?;
        w.u8(self.entry_mode as u8)?;
        w.ascii8(&CP_CARD, self.card)?;
        w.ascii8(&CP_CASHIER, self.cashier_id)
    }
}

/// One usable entitlement in a CARD_MENU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MenuEntry<'a> {
    /// Index the reader quotes back in REDEEM.
    pub index: u8,
    /// Item title, 1..=64 bytes of text.
    pub title: Text<'a>,
    /// Uses left.
    pub uses_left: u16,
    /// Last valid day, if any.
    pub expiry: Option<Date>,
    /// Identity confirmation needed to redeem it.
    pub identity: IdentityCheck,
}

impl<'a> ListItem<'a> for MenuEntry<'a> {
    fn read(r: &mut Reader<'a>, encoding: TextEncoding) -> Result<Self, ParseError> {
        Ok(MenuEntry {
            index: r.u8("CARD_MENU.entry.index")?,
            title: Text(r.text8(&ENTRY_TITLE, encoding)?),
            uses_left: r.u16("CARD_MENU.entry.uses_left")?,
            expiry: Date::from_wire("CARD_MENU.entry.expiry", r.u32("CARD_MENU.entry.expiry")?)?,
            identity: IdentityCheck::read(r, "CARD_MENU.entry.identity")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.u8(self.index)?;
        w.bytes8(&ENTRY_TITLE, self.title.0)?;
        w.u16(self.uses_left)?;
        let expiry = Date::to_wire(self.expiry);
        Date::from_wire("CARD_MENU.entry.expiry", expiry).map_err(EmitError::Invalid)?;
        w.u32(expiry)?;
        w.u8(self.identity as u8)
    }
}

/// CARD_MENU (D→R): what the card can redeem here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardMenu<'a> {
    /// The CARD_PRESENTED transaction id.
    pub txn_id: u32,
    /// Holder display name, 0..=64 bytes of text (empty for anonymous cards).
    pub holder_name: Text<'a>,
    /// Masked card number for display, printable ASCII, 0..=32 bytes.
    pub masked_card: &'a str,
    /// Usable entries, 0..=32.
    pub entries: List<'a, MenuEntry<'a>>,
}

impl<'a> CardMenu<'a> {
    fn read(r: &mut Reader<'a>, encoding: TextEncoding) -> Result<Self, ParseError> {
        Ok(CardMenu {
            txn_id: nonzero_txn("CARD_MENU.txn_id", r.u32("CARD_MENU.txn_id")?)?,
            holder_name: Text(r.text8(&MENU_HOLDER, encoding)?),
            masked_card: r.ascii8(&MENU_MASKED)?,
            entries: List::read(r, &MENU_ENTRIES, encoding)?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        write_nonzero_txn("CARD_MENU.txn_id", w, self.txn_id)?;
        w.bytes8(&MENU_HOLDER, self.holder_name.0)?;
        w.ascii8(&MENU_MASKED, self.masked_card)?;
        self.entries.write(w, &MENU_ENTRIES)
    }
}

/// DECLINED (D→R): refused, with a code and text to display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declined<'a> {
    /// Transaction id of the request, 0 if none.
    pub txn_id: u32,
    /// Reason code.
    pub reason: DeclineReason,
    /// Text to display (why, what is left), 0..=128 bytes.
    pub text: Text<'a>,
}

impl<'a> Declined<'a> {
    fn read(r: &mut Reader<'a>, encoding: TextEncoding) -> Result<Self, ParseError> {
        Ok(Declined {
            txn_id: r.u32("DECLINED.txn_id")?,
            reason: DeclineReason(r.u16("DECLINED.reason")?),
            text: Text(r.text8(&DECLINED_TEXT, encoding)?),
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.u32(self.txn_id)?;
        w.u16(self.reason.0)?;
        w.bytes8(&DECLINED_TEXT, self.text.0)
    }
}

/// One REDEEM line: an entry of the menu and how many uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedeemItem {
    /// `MenuEntry::index`.
    pub entry_index: u8,
    /// Uses to redeem, 1..=999.
    pub quantity: u16,
}

impl ListItem<'_> for RedeemItem {
    fn read(r: &mut Reader<'_>, _: TextEncoding) -> Result<Self, ParseError> {
        let entry_index = r.u8("REDEEM.item.entry_index")?;
        let quantity = quantity(r.u16("REDEEM.item.quantity")?)?;
        Ok(RedeemItem {
            entry_index,
            quantity,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.u8(self.entry_index)?;
        w.u16(quantity(self.quantity).map_err(EmitError::Invalid)?)
    }
}

fn quantity(v: u16) -> Result<u16, ParseError> {
    if (1..=MAX_QUANTITY).contains(&v) {
        Ok(v)
    } else {
        Err(err(
            "REDEEM.item.quantity",
            ParseErrorKind::OutOfRange(v.into()),
        ))
    }
}

/// Identity confirmation data carried by REDEEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Which check; `None` requires empty `data`.
    pub check: IdentityCheck,
    /// ASCII digits, 0..=12 bytes.
    pub data: &'a str,
}

impl Identity<'_> {
    /// No identity confirmation.
    pub const NONE: Identity<'static> = Identity {
        check: IdentityCheck::None,
        data: "",
    };

    fn validate(&self) -> Result<(), ParseError> {
        if let Some(&bad) = self.data.as_bytes().iter().find(|b| !b.is_ascii_digit()) {
            return Err(err("REDEEM.identity_data", ParseErrorKind::NotDigit(bad)));
        }
        if self.check == IdentityCheck::None && !self.data.is_empty() {
            return Err(err(
                "REDEEM.identity_data",
                ParseErrorKind::TooLong {
                    len: self.data.len(),
                    max: 0,
                },
            ));
        }
        Ok(())
    }
}

/// REDEEM (R→D): use entitlements, all or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redeem<'a> {
    /// The CARD_PRESENTED transaction id.
    pub txn_id: u32,
    /// What to redeem, 1..=16 lines.
    pub items: List<'a, RedeemItem>,
    /// Identity confirmation, if the menu asked for it.
    pub identity: Identity<'a>,
}

impl<'a> Redeem<'a> {
    fn read(r: &mut Reader<'a>, encoding: TextEncoding) -> Result<Self, ParseError> {
        let txn_id = nonzero_txn("REDEEM.txn_id", r.u32("REDEEM.txn_id")?)?;
        let items = List::read(r, &REDEEM_ITEMS, encoding)?;
        let check = IdentityCheck::read(r, "REDEEM.identity_check")?;
        let identity = Identity {
            check,
            data: r.ascii8(&REDEEM_IDENTITY)?,
        };
        identity.validate()?;
        Ok(Redeem {
            txn_id,
            items,
            identity,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        write_nonzero_txn("REDEEM.txn_id", w, self.txn_id)?;
        self.items.write(w, &REDEEM_ITEMS)?;
        self.identity.validate().map_err(EmitError::Invalid)?;
        w.u8(self.identity.check as u8)?;
        w.ascii8(&REDEEM_IDENTITY, self.identity.data)
    }
}

/// Uses left on one entry after an approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsesLeft {
    /// `MenuEntry::index`.
    pub entry_index: u8,
    /// Uses left.
    pub uses_left: u16,
}

impl ListItem<'_> for UsesLeft {
    fn read(r: &mut Reader<'_>, _: TextEncoding) -> Result<Self, ParseError> {
        Ok(UsesLeft {
            entry_index: r.u8("APPROVED.uses_left.entry_index")?,
            uses_left: r.u16("APPROVED.uses_left.uses_left")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.u8(self.entry_index)?;
        w.u16(self.uses_left)
    }
}

/// Receipt lines are [`Text`], 0..=64 bytes each.
impl<'a> ListItem<'a> for Text<'a> {
    fn read(r: &mut Reader<'a>, encoding: TextEncoding) -> Result<Self, ParseError> {
        Ok(Text(r.text8(&RECEIPT_LINE, encoding)?))
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        w.bytes8(&RECEIPT_LINE, self.0)
    }
}

/// APPROVED (D→R): the redemption or void is committed on the host's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approved<'a> {
    /// The request's transaction id.
    pub txn_id: u32,
    /// Authorization code (quoted by VOID), printable ASCII, 1..=16 bytes.
    pub auth_code: &'a str,
    /// Host journal reference, printable ASCII, 1..=32 bytes.
    pub journal_ref: &'a str,
    /// Uses left per entry after this operation, 0..=32.
    pub uses_left: List<'a, UsesLeft>,
    /// Receipt lines to print, 0..=48, each 0..=64 bytes of text.
    pub receipt: List<'a, Text<'a>>,
}

impl<'a> Approved<'a> {
    fn read(r: &mut Reader<'a>, encoding: TextEncoding) -> Result<Self, ParseError> {
        Ok(Approved {
            txn_id: nonzero_txn("APPROVED.txn_id", r.u32("APPROVED.txn_id")?)?,
            auth_code: r.ascii8(&APPROVED_AUTH)?,
            journal_ref: r.ascii8(&APPROVED_JOURNAL)?,
            uses_left: List::read(r, &APPROVED_USES, encoding)?,
            receipt: List::read(r, &APPROVED_RECEIPT, encoding)?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        write_nonzero_txn("APPROVED.txn_id", w, self.txn_id)?;
        w.ascii8(&APPROVED_AUTH, self.auth_code)?;
        w.ascii8(&APPROVED_JOURNAL, self.journal_ref)?;
        self.uses_left.write(w, &APPROVED_USES)?;
        self.receipt.write(w, &APPROVED_RECEIPT)
    }
}

/// VOID (R→D): undo an approved redemption, by its authorization code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Void<'a> {
    /// A new transaction id for the void itself.
    pub txn_id: u32,
    /// `Approved::auth_code` of the redemption to void.
    pub original_auth_code: &'a str,
    /// Why.
    pub reason: VoidReason,
}

impl<'a> Void<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ParseError> {
        Ok(Void {
            txn_id: nonzero_txn("VOID.txn_id", r.u32("VOID.txn_id")?)?,
            original_auth_code: r.ascii8(&VOID_AUTH)?,
            reason: VoidReason::read(r, "VOID.reason")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EmitError> {
        write_nonzero_txn("VOID.txn_id", w, self.txn_id)?;
        w.ascii8(&VOID_AUTH, self.original_auth_code)?;
        w.u8(self.reason as u8)
    }
}

/// QUERY (R→D): which transaction's outcome to send again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Query {
    /// The most recent transaction of this reader (wire value 0).
    Last,
    /// A transaction id (nonzero).
    Txn(u32),
}

impl Query {
    fn to_wire(self) -> u32 {
        match self {
            Query::Last => 0,
            Query::Txn(id) => id,
        }
    }
}

/// DISPLAY (D→R): status text; the reader restarts its transaction timer (PROTOCOL.md §8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Display<'a> {
    /// Transaction it concerns, 0 if none.
    pub txn_id: u32,
    /// Text, 1..=64 bytes.
    pub text: Text<'a>,
}

/// ERROR: a protocol-level error report (not a business refusal: that is DECLINED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error<'a> {
    /// What went wrong.
    pub code: ErrorCode,
    /// Type of the message that caused it, 0 if none.
    pub offending_type: u8,
    /// Detail for logs, 0..=128 bytes of text.
    pub text: Text<'a>,
}

/// Any message of protocol 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Message<'a> {
    Hello(Hello<'a>),
    HelloAck(HelloAck),
    HelloReject(HelloReject),
    Ping,
    Pong,
    Reset(Reset),
    CardPresented(CardPresented<'a>),
    Redeem(Redeem<'a>),
    Void(Void<'a>),
    Query(Query),
    CardMenu(CardMenu<'a>),
    Approved(Approved<'a>),
    Declined(Declined<'a>),
    Display(Display<'a>),
    Error(Error<'a>),
}

impl<'a> Message<'a> {
    /// The message's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::HelloAck(_) => MessageType::HelloAck,
            Message::HelloReject(_) => MessageType::HelloReject,
            Message::Ping => MessageType::Ping,
            Message::Pong => MessageType::Pong,
            Message::Reset(_) => MessageType::Reset,
            Message::CardPresented(_) => MessageType::CardPresented,
            Message::Redeem(_) => MessageType::Redeem,
            Message::Void(_) => MessageType::Void,
            Message::Query(_) => MessageType::Query,
            Message::CardMenu(_) => MessageType::CardMenu,
            Message::Approved(_) => MessageType::Approved,
            Message::Declined(_) => MessageType::Declined,
            Message::Display(_) => MessageType::Display,
            Message::Error(_) => MessageType::Error,
        }
    }

    /// Parses a complete payload of type `code`, validating every field; text fields are checked
    /// against `encoding` (link-control messages carry no text).
    pub fn parse(code: u8, payload: &'a [u8], encoding: TextEncoding) -> Result<Self, ParseError> {
        let msg_type =
            MessageType::from_u8(code).ok_or(err("type", ParseErrorKind::UnknownType))?;
        let mut r = Reader::new(payload);
        let message = match msg_type {
            MessageType::Hello => Message::Hello(Hello::read(&mut r)?),
            MessageType::HelloAck => Message::HelloAck(HelloAck::read(&mut r)?),
            MessageType::HelloReject => Message::HelloReject(HelloReject::read(&mut r)?),
            MessageType::Ping => Message::Ping,
            MessageType::Pong => Message::Pong,
            MessageType::Reset => Message::Reset(Reset {
                reason: ResetReason(r.u8("RESET.reason")?),
            }),
            MessageType::CardPresented => Message::CardPresented(CardPresented::read(&mut r)?),
            MessageType::Redeem => Message::Redeem(Redeem::read(&mut r, encoding)?),
            MessageType::Void => Message::Void(Void::read(&mut r)?),
            MessageType::Query => Message::Query(match r.u32("QUERY.txn_id")? {
                0 => Query::Last,
                id => Query::Txn(id),
            }),
            MessageType::CardMenu => Message::CardMenu(CardMenu::read(&mut r, encoding)?),
            MessageType::Approved => Message::Approved(Approved::read(&mut r, encoding)?),
            MessageType::Declined => Message::Declined(Declined::read(&mut r, encoding)?),
            MessageType::Display => Message::Display(Display {
                txn_id: r.u32("DISPLAY.txn_id")?,
                text: Text(r.text8(&DISPLAY_TEXT, encoding)?),
            }),
            MessageType::Error => Message::Error(Error {
                code: ErrorCode(r.u16("ERROR.code")?),
                offending_type: r.u8("ERROR.offending_type")?,
                text: Text(r.text8(&ERROR_TEXT, encoding)?),
            }),
        };
        r.finish(msg_type.name())?;
        Ok(message)
    }

    /// Writes the payload into `buf`; returns its length. Checks every length and range the parser
    /// checks, except text-encoding validity (the emitter does not know the link's encoding; the
    /// sessions re-parse what they queue).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Writer::new(buf);
        match self {
            Message::Hello(m) => m.write(&mut w)?,
            Message::HelloAck(m) => m.write(&mut w)?,
            Message::HelloReject(m) => m.write(&mut w)?,
            Message::Ping | Message::Pong => {}
            Message::Reset(m) => w.u8(m.reason.0)?,
            Message::CardPresented(m) => m.write(&mut w)?,
            Message::Redeem(m) => m.write(&mut w)?,
            Message::Void(m) => m.write(&mut w)?,
            Message::Query(q) => w.u32(q.to_wire())?,
            Message::CardMenu(m) => m.write(&mut w)?,
            Message::Approved(m) => m.write(&mut w)?,
            Message::Declined(m) => m.write(&mut w)?,
            Message::Display(m) => {
                w.u32(m.txn_id)?;
                w.bytes8(&DISPLAY_TEXT, m.text.0)?;
            }
            Message::Error(m) => {
                w.u16(m.code.0)?;
                w.u8(m.offending_type)?;
                w.bytes8(&ERROR_TEXT, m.text.0)?;
            }
        }
        Ok(w.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn type_codes_are_unique_and_ranges_hold() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_u8(t.as_u8()), Some(*t));
            assert_eq!(t.is_link_control(), t.as_u8() < 0x20);
        }
        assert_eq!(MessageType::from_u8(0x00), None);
        assert_eq!(MessageType::from_u8(0x7F), None);
    }

    #[test]
    fn field_errors_name_the_field() {
        let mut buf = [0u8; 64];
        let n = Message::Void(Void {
            txn_id: 9,
            original_auth_code: "A1",
            reason: VoidReason::Other,
        })
        .emit(&mut buf)
        .unwrap();
        buf[n - 1] = 9;
        let e = Message::parse(0x22, &buf[..n], TextEncoding::Utf8).unwrap_err();
        assert_eq!(e.field, "VOID.reason");
        assert_eq!(e.kind, ParseErrorKind::OutOfRange(9));
        assert_eq!(
            Message::parse(0x22, &buf[..n - 1], TextEncoding::Utf8)
                .unwrap_err()
                .kind,
            ParseErrorKind::Truncated
        );
    }

    #[test]
    fn errors_name_the_fields_as_the_tables_do() {
        let mut buf = [0u8; 64];
        let items = [RedeemItem {
            entry_index: 0,
            quantity: 1,
        }];
        let n = Message::Redeem(Redeem {
            txn_id: 1,
            items: List::new(&items),
            identity: Identity::NONE,
        })
        .emit(&mut buf)
        .unwrap();
        // identity_check is the byte before identity_data's (empty) length.
        buf[n - 2] = 3;
        let e = Message::parse(0x21, &buf[..n], TextEncoding::Utf8).unwrap_err();
        assert_eq!(e.to_string(), "REDEEM.identity_check: value 3 out of range");
        // A field of a list element, as the table writes it: `item.quantity`.
        buf[n - 2] = 0;
        buf[6] = 0; // the item's quantity, after txn id (4), count (1) and entry index (1)
        let e = Message::parse(0x21, &buf[..n], TextEncoding::Utf8).unwrap_err();
        assert_eq!(e.to_string(), "REDEEM.item.quantity: value 0 out of range");
    }

    #[test]
    fn a_hello_without_a_known_encoding_parses_but_is_not_emitted() {
        let mut hello = Hello {
            version: PROTOCOL_VERSION,
            max_payload: 256,
            capabilities: Capabilities(0),
            encodings: Encodings::UTF8,
            boot_nonce: 7,
            serial: "S",
            firmware: "F",
        };
        let mut buf = [0u8; 64];
        let n = Message::Hello(hello).emit(&mut buf).unwrap();
        buf[8] = 0x04; // encodings: an unknown bit only
        let Message::Hello(parsed) = Message::parse(0x01, &buf[..n], TextEncoding::Utf8).unwrap()
        else {
            panic!("not a HELLO")
        };
        assert_eq!(parsed.encodings, Encodings(0x04));
        hello.encodings = Encodings(0x04);
        assert!(Message::Hello(hello).emit(&mut buf).is_err());
    }

    #[test]
    fn utf8_is_enforced_on_utf8_links_only() {
        let gbk = [0xC7u8, 0xEB, 0xC9, 0xD4, 0xBA, 0xF2];
        let mut buf = [0u8; 64];
        let n = Message::Display(Display {
            txn_id: 0,
            text: Text::new(&gbk),
        })
        .emit(&mut buf)
        .unwrap();
        assert!(Message::parse(0x43, &buf[..n], TextEncoding::Gb18030).is_ok());
        assert_eq!(
            Message::parse(0x43, &buf[..n], TextEncoding::Utf8)
                .unwrap_err()
                .kind,
            ParseErrorKind::InvalidText(TextEncoding::Utf8)
        );
    }
}
