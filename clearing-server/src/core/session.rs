//! Console sessions, as pure code (randomness and time are parameters):
//!
//! * **The session cookie** holds 256 random bits (64 lower-case hex). The platform stores only
//!   `SHA-256("redeemd/console-session/v1" ‖ token)`, so a copy of the database opens no session; a
//!   session lives at most [`ABSOLUTE_MS`] and ends after [`IDLE_MS`] without a request.
//! * **CSRF**: every form carries a token derived from the session's secret
//!   (`SHA-256("redeemd/console-csrf/v1" ‖ token)`, 128 bits shown): a page of another site cannot
//!   read the cookie (`HttpOnly`) nor the page, so it cannot compute or copy the token. The login form,
//!   which comes before any session, carries a random token that must equal the one in a short-lived
//!   cookie set with the form (double submit). Tokens are compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A session ends this long after its last request.
pub const IDLE_MS: i64 = 30 * 60_000;
/// … and this long after it began, whatever happens.
pub const ABSOLUTE_MS: i64 = 12 * 3_600_000;
/// A session's last request is written down at most this often (a page view is not a write each time).
pub const TOUCH_EVERY_MS: i64 = 60_000;
/// Random bytes of a session token, and of the login form's token.
pub const TOKEN_BYTES: usize = 32;

/// A new token (session or login form) from [`TOKEN_BYTES`] random bytes.
pub fn new_token(random: &[u8; TOKEN_BYTES]) -> String {
    hex::encode(random)
}

/// A token as presented in a cookie, if it has the form of one.
pub fn parse_token(s: &str) -> Option<&str> {
    (s.len() == 2 * TOKEN_BYTES && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(s)
}

fn tagged_hash(tag: &[u8], token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// What the database keeps of a session token.
pub fn token_hash(token: &str) -> [u8; 32] {
    tagged_hash(b"redeemd/console-session/v1", token)
}

/// The CSRF token of a session's forms.
pub fn csrf_token(session_token: &str) -> String {
    hex::encode(&tagged_hash(b"redeemd/console-csrf/v1", session_token)[..16])
}

/// Whether a form's token is the expected one (constant time; an empty one never is).
pub fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Whether a session begun at `created_ms`, last seen at `seen_ms`, is still open at `now_ms`.
pub fn is_open(created_ms: i64, seen_ms: i64, now_ms: i64) -> bool {
    now_ms < created_ms.saturating_add(ABSOLUTE_MS) && now_ms < seen_ms.saturating_add(IDLE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_idle_or_old() {
        let t0 = 1_000_000;
        assert!(is_open(t0, t0, t0 + IDLE_MS - 1));
        assert!(!is_open(t0, t0, t0 + IDLE_MS));
        // Kept busy, it still ends at its absolute limit.
        let late = t0 + ABSOLUTE_MS;
        assert!(is_open(t0, late - 1, late - 1));
        assert!(!is_open(t0, late - 1, late));
    }

    #[test]
    fn tokens_are_stored_hashed_and_csrf_tokens_follow_the_session() {
        let a = new_token(&[0xab; TOKEN_BYTES]);
        let b = new_token(&[2; TOKEN_BYTES]);
        assert_eq!(parse_token(&a), Some(a.as_str()));
        assert_eq!(parse_token(&a.to_uppercase()), None);
        assert_eq!(parse_token(&a[1..]), None);
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_ne!(&token_hash(&a)[..], a.as_bytes());
        assert_eq!(csrf_token(&a).len(), 32);
        assert_ne!(csrf_token(&a), csrf_token(&b));
        assert!(tokens_match(&csrf_token(&a), &csrf_token(&a)));
        assert!(!tokens_match(&csrf_token(&a), &csrf_token(&b)));
        assert!(!tokens_match(&csrf_token(&a), ""));
        assert!(!tokens_match("", ""));
    }
}
