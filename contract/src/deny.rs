//! Deny-list entries: the fast path by which a loss report reaches the shops within one poll.
//!
//! The platform numbers every card status change that should refuse a card (lost, frozen, cancelled,
//! reissued) per merchant; `GET deny-list?since=N` returns the entries above `N`, each MACed with the terminal's
//! **cache key** (the same key that signs entitlement entries: only the platform can make one). The rules
//! (`docs/api/README.md`, "`GET deny-list`"):
//!
//! ```text
//! deny_mac = HMAC(cache key, "redeemd/deny/v2" ‖ str merchant_id ‖ u64 version ‖ [32] card_ref
//!                 ‖ u8 status (2 lost, 3 frozen, 4 cancelled, 5 reissued) ‖ u64 entry_version
//!                 ‖ i64 reported_at_ms)
//! ```
//!
//! A deny entry can only ever *refuse* a card: that is why the status type here has no `Active`. It is
//! superseded once the terminal's cache holds the card at an entry version ≥ `entry_version`.

use thiserror::Error;

use crate::codec::Writer;
use crate::keys::{MacKey, Tag};
use crate::model::{CardRef, CardStatus};

const DOMAIN: &[u8] = b"redeemd/deny/v2";

/// A status that refuses a card. (There is deliberately no way to express "active".)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyStatus {
    Lost,
    Frozen,
    Cancelled,
    /// Cancelled by a reissue: the shop tells the cashier to use the new card.
    Reissued,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("deny status must be lost, frozen, cancelled or reissued, not {0:?}")]
pub struct NotADenyStatus(pub String);

impl DenyStatus {
    /// The card status byte of `docs/entitlement-format.md`.
    pub fn code(self) -> u8 {
        self.card_status() as u8
    }

    /// The status of [`Self::code`] (`None` for any other byte, 1 "active" included).
    pub fn from_code(code: u8) -> Option<Self> {
        [
            DenyStatus::Lost,
            DenyStatus::Frozen,
            DenyStatus::Cancelled,
            DenyStatus::Reissued,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }

    pub fn card_status(self) -> CardStatus {
        match self {
            DenyStatus::Lost => CardStatus::Lost,
            DenyStatus::Frozen => CardStatus::Frozen,
            DenyStatus::Cancelled => CardStatus::Cancelled,
            DenyStatus::Reissued => CardStatus::Reissued,
        }
    }

    /// The JSON spelling (`"lost"`, `"frozen"`, `"cancelled"`, `"reissued"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyStatus::Lost => "lost",
            DenyStatus::Frozen => "frozen",
            DenyStatus::Cancelled => "cancelled",
            DenyStatus::Reissued => "reissued",
        }
    }

    pub fn parse(s: &str) -> Result<Self, NotADenyStatus> {
        match s {
            "lost" => Ok(DenyStatus::Lost),
            "frozen" => Ok(DenyStatus::Frozen),
            "cancelled" => Ok(DenyStatus::Cancelled),
            "reissued" => Ok(DenyStatus::Reissued),
            other => Err(NotADenyStatus(other.to_owned())),
        }
    }

    /// `None` for an active card: it has no deny entry.
    pub fn from_card_status(status: CardStatus) -> Option<Self> {
        match status {
            CardStatus::Active => None,
            CardStatus::Lost => Some(DenyStatus::Lost),
            CardStatus::Frozen => Some(DenyStatus::Frozen),
            CardStatus::Cancelled => Some(DenyStatus::Cancelled),
            CardStatus::Reissued => Some(DenyStatus::Reissued),
        }
    }
}

/// One entry of a merchant's deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    /// Position in the merchant's deny list (strictly increasing, starts at 1).
    pub version: u64,
    pub card_ref: CardRef,
    pub status: DenyStatus,
    /// The card's entitlement-entry version that carries this status; a cache entry at this version or
    /// later supersedes the deny entry.
    pub entry_version: u64,
    /// When the platform recorded the report (unix ms; for display and the exceptions report).
    pub reported_at_ms: i64,
}

impl DenyEntry {
    fn signed_bytes(&self, merchant_id: &str) -> Writer {
        let mut w = Writer::with_capacity(96 + merchant_id.len());
        w.str(merchant_id)
            .u64(self.version)
            .fixed(&self.card_ref.0)
            .u8(self.status.code())
            .u64(self.entry_version)
            .i64(self.reported_at_ms);
        w
    }

    /// The platform's MAC over this entry for `merchant_id`.
    pub fn mac(&self, cache_key: &MacKey, merchant_id: &str) -> Tag {
        cache_key.mac(&[DOMAIN, self.signed_bytes(merchant_id).as_bytes()])
    }

    /// Constant-time check of `mac` (any length: a wrong length simply fails).
    pub fn verify(&self, cache_key: &MacKey, merchant_id: &str, mac: &[u8]) -> bool {
        cache_key.verify(&[DOMAIN, self.signed_bytes(merchant_id).as_bytes()], mac)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::{Purpose, TerminalSecret};

    fn key(terminal: &str) -> MacKey {
        TerminalSecret::from_bytes(&[9; 32])
            .unwrap()
            .derive(Purpose::CacheVerify, terminal)
    }

    fn entry() -> DenyEntry {
        DenyEntry {
            version: 17,
            card_ref: CardRef([3; 32]),
            status: DenyStatus::Lost,
            entry_version: 43,
            reported_at_ms: 1_795_000_000_000,
        }
    }

    #[test]
    fn mac_verifies_and_binds_every_field_and_the_merchant() {
        let k = key("T-1");
        let e = entry();
        let mac = e.mac(&k, "M-1");
        assert!(e.verify(&k, "M-1", &mac));
        assert!(!e.verify(&k, "M-2", &mac), "merchant bound");
        assert!(!e.verify(&key("T-2"), "M-1", &mac), "terminal's key bound");
        assert!(!e.verify(&k, "M-1", &mac[..31]), "short MAC");
        let changed = [
            DenyEntry {
                version: 18,
                ..entry()
            },
            DenyEntry {
                card_ref: CardRef([4; 32]),
                ..entry()
            },
            DenyEntry {
                status: DenyStatus::Frozen,
                ..entry()
            },
            DenyEntry {
                entry_version: 44,
                ..entry()
            },
            DenyEntry {
                reported_at_ms: 1,
                ..entry()
            },
        ];
        for c in changed {
            assert!(!c.verify(&k, "M-1", &mac), "{c:?} must not verify");
        }
    }

    #[test]
    fn a_journal_or_entry_mac_key_cannot_sign_deny_entries() {
        let journal_key = TerminalSecret::from_bytes(&[9; 32])
            .unwrap()
            .derive(Purpose::JournalMac, "T-1");
        let e = entry();
        assert!(!e.verify(&key("T-1"), "M-1", &e.mac(&journal_key, "M-1")));
    }

    #[test]
    fn status_spellings_round_trip_and_active_is_not_one() {
        for s in [
            DenyStatus::Lost,
            DenyStatus::Frozen,
            DenyStatus::Cancelled,
            DenyStatus::Reissued,
        ] {
            assert_eq!(DenyStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(DenyStatus::from_card_status(s.card_status()), Some(s));
            assert_eq!(DenyStatus::from_code(s.code()), Some(s));
        }
        assert!(DenyStatus::parse("active").is_err());
        assert_eq!(DenyStatus::from_card_status(CardStatus::Active), None);
        assert_eq!(DenyStatus::from_code(1), None);
        assert_eq!(DenyStatus::from_code(6), None);
        assert_eq!(DenyStatus::Lost.code(), 2);
        assert_eq!(DenyStatus::Cancelled.code(), 4);
        assert_eq!(DenyStatus::Reissued.code(), 5);
    }
}
