//! Credentials of the platform API and the console, as pure code (randomness is a parameter):
//!
//! * **API keys** for programs (an operator's tool, a merchant's back office, the member app):
//!   `rdk_<id: 16 hex>_<secret: 64 hex>` — a public id that names the key in listings and the audit
//!   log, and 256 random bits. The platform stores only `SHA-256("redeemd/api-key/v1" ‖ secret)`: the
//!   secret has full entropy, so a fast hash is enough (no dictionary to try), and a copy of the
//!   database opens no API. A presented key is found by its id and its hash compared in constant time.
//! * **Passwords** for people logging in to the console: argon2id (the `argon2` crate's default
//!   parameters, a 16-byte random salt) in its PHC string; verification is the crate's, in constant
//!   time.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::problem::Problem;

const PREFIX: &str = "rdk_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// Random bytes [`issue_key`] takes: the id's, then the secret's.
pub const KEY_RANDOM_BYTES: usize = ID_BYTES + SECRET_BYTES;

/// A new API key: its id, the token handed out once, and the hash that is stored.
pub struct IssuedKey {
    pub id: String,
    pub token: Zeroizing<String>,
    pub hash: [u8; 32],
}

fn secret_hash(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"redeemd/api-key/v1");
    h.update(secret);
    h.finalize().into()
}

/// An API key from `random` ([`KEY_RANDOM_BYTES`] fresh random bytes).
pub fn issue_key(random: &[u8; KEY_RANDOM_BYTES]) -> IssuedKey {
    let (id, secret) = random.split_at(ID_BYTES);
    let id = format!("k_{}", hex::encode(id));
    let token = Zeroizing::new(format!("{PREFIX}{}_{}", &id[2..], hex::encode(secret)));
    IssuedKey {
        hash: secret_hash(secret),
        id,
        token,
    }
}

/// A key as presented in `Authorization: Bearer …`, parsed but not yet checked.
pub struct PresentedKey {
    pub id: String,
    secret: Zeroizing<[u8; SECRET_BYTES]>,
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PresentedKey({}, <redacted>)", self.id)
    }
}

/// Parses a token; `None` when it is not in the key format (nothing about it is said back).
pub fn parse_key(token: &str) -> Option<PresentedKey> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let lower_hex = |s: &str, n: usize| {
        s.len() == 2 * n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(id, ID_BYTES) || !lower_hex(secret, SECRET_BYTES) {
        return None;
    }
    let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
    hex::decode_to_slice(secret, bytes.as_mut()).ok()?;
    Some(PresentedKey {
        id: format!("k_{id}"),
        secret: bytes,
    })
}

impl PresentedKey {
    /// Whether this key's secret is the one whose hash is stored, compared in constant time.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        let hash = secret_hash(self.secret.as_ref());
        stored_hash.len() == hash.len() && bool::from(hash.ct_eq(stored_hash))
    }
}

/// Shortest and longest password accepted for a console login.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 12..=256;

/// A console password's rules (length only: NIST SP 800-63B).
pub fn check_password(field: &str, password: &str) -> Result<(), Problem> {
    let n = password.chars().count();
    if !PASSWORD_CHARS.contains(&n) {
        return Err(Problem::invalid(
            field,
            format!(
                "{n} characters: a password has {} to {}",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        ));
    }
    Ok(())
}

/// The argon2id PHC string of `password` with `salt` (16 fresh random bytes).
pub fn hash_password(password: &str, salt: &[u8; 16]) -> Result<String, Problem> {
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), salt)
        .map(|h| h.to_string())
        .map_err(|e| Problem::internal(format!("hashing a password: {e}")))
}

/// Whether `password` is the one `phc` was made from (a PHC string that does not parse: no).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_is_found_by_its_id_and_checked_by_its_hash() {
        let mut random = [7u8; KEY_RANDOM_BYTES];
        random[0] = 0xab;
        let k = issue_key(&random);
        assert_eq!(k.id, "k_ab07070707070707");
        assert!(k.token.starts_with("rdk_ab07070707070707_0707"));
        let p = parse_key(&k.token).unwrap();
        assert_eq!(p.id, k.id);
        assert!(p.matches(&k.hash));
        // Another secret under the same id, a truncated hash, garbage: refused.
        let mut other = random;
        other[KEY_RANDOM_BYTES - 1] ^= 1;
        assert!(
            !parse_key(&issue_key(&other).token)
                .unwrap()
                .matches(&k.hash)
        );
        assert!(!p.matches(&k.hash[..31]));
        for bad in [
            "",
            "rdk_",
            "rdk_ab07070707070707",
            &k.token.to_uppercase(),
            &k.token[..k.token.len() - 1],
            &format!("{}0", *k.token),
            "Bearer x",
        ] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
        assert!(!format!("{p:?}").contains(&"07".repeat(16)));
    }

    #[test]
    fn passwords_are_argon2id_and_checked() {
        let phc = hash_password("correct horse battery", &[1; 16]).unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("correct horse batterz", &phc));
        assert!(!verify_password(
            "correct horse battery",
            "not a phc string"
        ));
        assert_eq!(
            check_password("password", "short").unwrap_err().field(),
            Some("password")
        );
        assert!(check_password("password", "long enough now").is_ok());
    }
}
