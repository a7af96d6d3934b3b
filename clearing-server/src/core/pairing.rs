//! Pairing codes: how a shop joins without a secret being carried to it (`docs/api/README.md`,
//! "Pairing"). Pure: randomness and time are parameters.
//!
//! An operator, or the merchant, creates a code for a terminal id; the technician types it on the shop
//! PC (`redeemd enroll --server URL --code XXXX-XXXX`), which fetches the terminal id, the merchant id
//! and a fresh secret once. A code is:
//!
//! * **short**: 8 characters of Crockford's base32, `XXXX-XXXX` (`redeemd_contract::pairing`): 40 bits;
//! * **short-lived**: [`DEFAULT_TTL_MINUTES`] minutes by default, at most [`MAX_TTL_MINUTES`];
//! * **one-time**: the first use enrolls the terminal and marks the code used; a second use is refused
//!   by name, as is an expired code;
//! * **throttled** ([`THROTTLE`], `super::throttle`): wrong codes are counted per source address and
//!   for the whole platform; past either limit every attempt is refused with `429` until the window
//!   ends. With at most a few hundred guesses per window against 2⁴⁰ codes that live minutes,
//!   guessing a live code is hopeless;
//! * **stored hashed** (`SHA-256`), like any credential, and never listed again after creation.

use sha2::{Digest, Sha256};

use super::problem::Problem;
use super::throttle::Limits;

pub use redeemd_contract::pairing::{CODE_RANDOM_BYTES, new_code};

pub const DEFAULT_TTL_MINUTES: u32 = 10;
pub const MAX_TTL_MINUTES: u32 = 60;
/// Wrong codes are throttled: 10 per source address and 100 on the platform in 10 minutes.
pub const THROTTLE: Limits = Limits {
    scope: "pairing",
    what: "pairing codes",
    window_ms: 10 * 60_000,
    per_source: 10,
    global: 100,
};

/// A typed code in its one canonical form, or the refusal naming the field.
pub fn normalize(typed: &str) -> Result<String, Problem> {
    redeemd_contract::pairing::normalize(typed).map_err(|e| Problem::invalid("code", e.to_string()))
}

/// What is stored for a code: its hash (of the canonical form).
pub fn code_hash(canonical: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"redeemd/pairing-code/v1");
    h.update(canonical.as_bytes());
    h.finalize().into()
}

/// The minutes a new code lives, checked.
pub fn ttl_ms(minutes: Option<u32>) -> Result<i64, Problem> {
    let m = minutes.unwrap_or(DEFAULT_TTL_MINUTES);
    if m == 0 || m > MAX_TTL_MINUTES {
        return Err(Problem::invalid(
            "ttl_minutes",
            format!("{m}: a pairing code lives 1 to {MAX_TTL_MINUTES} minutes"),
        ));
    }
    Ok(i64::from(m) * 60_000)
}

/// A stored code as its redemption finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCode {
    pub terminal_id: String,
    pub expires_ms: i64,
    pub used_ms: Option<i64>,
}

/// Whether a found code may be used at `now_ms`: a used code and an expired one are refused, each
/// with what to do.
pub fn redeemable(
    code: &StoredCode,
    now_ms: i64,
    at: impl Fn(i64) -> String,
) -> Result<(), Problem> {
    if let Some(used) = code.used_ms {
        return Err(Problem::new(
            410,
            "pairing_code_used",
            format!(
                "this pairing code was already used at {} to enroll terminal {}; a code works once: ask the platform or the merchant for a new one",
                at(used),
                code.terminal_id
            ),
        ));
    }
    if now_ms >= code.expires_ms {
        return Err(Problem::new(
            410,
            "pairing_code_expired",
            format!(
                "this pairing code expired at {}: ask the platform or the merchant for a new one",
                at(code.expires_ms)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_are_stored_hashed_and_refused_by_field() {
        assert_ne!(code_hash("ZW004D2P"), code_hash("ZW004D2Q"));
        assert_eq!(normalize("ZW00-4D2").unwrap_err().field(), Some("code"));
    }

    #[test]
    fn a_code_works_once_and_until_it_expires() {
        let at = |ms: i64| ms.to_string();
        let code = StoredCode {
            terminal_id: "T-9".into(),
            expires_ms: 1000,
            used_ms: None,
        };
        assert!(redeemable(&code, 999, at).is_ok());
        assert_eq!(
            redeemable(&code, 1000, at).unwrap_err().code,
            "pairing_code_expired"
        );
        let used = StoredCode {
            used_ms: Some(500),
            ..code
        };
        let p = redeemable(&used, 600, at).unwrap_err();
        assert_eq!((p.status, p.code), (410, "pairing_code_used"));
        assert!(
            p.detail
                .contains("already used at 500 to enroll terminal T-9"),
            "{}",
            p.detail
        );
        assert_eq!(ttl_ms(None).unwrap(), 600_000);
        assert!(ttl_ms(Some(0)).is_err() && ttl_ms(Some(61)).is_err());
    }
}
