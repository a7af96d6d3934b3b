//! The signed-data contract between a redeemd terminal and the platform.
//!
//! Everything here is pure code (no I/O, no clock, no SQLite) so that the daemon, its tests and benches,
//! and the platform's reference clearing server all share exactly one definition of:
//!
//! * the key hierarchy ([`keys`]): one HKDF-SHA256-derived key per purpose from the terminal secret;
//! * the entitlement data model ([`model`]): cards (by keyed reference, never by number), packages, items;
//! * the canonical byte encoding ([`codec`]) that every MAC covers — never "whatever a serializer printed";
//! * signed snapshots, deltas and manifests ([`snapshot`]): both the signing side and the verifying side;
//! * the journal record encoding, HMAC chain and authorization codes ([`journal`]);
//! * deny-list entries and their MAC ([`deny`]): the fast path for loss reports;
//! * request signing and its verification for the clearing API ([`request`], `docs/api/README.md`);
//! * end-of-day close totals and their reconciliation ([`close`]), computed alike by terminal and server;
//! * the terminal's health report ([`health`]), built by the daemon and kept by the platform;
//! * the pairing code's format ([`pairing`]), made by the platform and typed at the shop.
//!
//! The format is specified for humans in `docs/entitlement-format.md` and `docs/journal.md`.
#![forbid(unsafe_code)]

pub mod close;
pub mod codec;
pub mod deny;
pub mod health;
pub mod journal;
pub mod keys;
pub mod model;
pub mod pairing;
pub mod request;
pub mod snapshot;

pub use codec::DecodeError;
pub use deny::{DenyEntry, DenyStatus};
pub use journal::{JournalRecord, RecordKind};
pub use keys::{MacKey, Purpose, TerminalKeys, TerminalSecret};
pub use model::{Card, CardRef, CardStatus, Holder, Item, MerchantScope, Package};
pub use snapshot::{BundleKind, Entry, EntryOp, Manifest};
