//! Key hierarchy: one terminal secret, one HKDF-SHA256-derived key per purpose.
//!
//! ```text
//! terminal secret (≥ 32 bytes, provisioned by the platform, known to the platform)
//!   └─ HKDF-SHA256(salt = "redeemd/v1/terminal", ikm = secret)
//!        ├─ info "redeemd/v1/cache-verify/<terminal id>"  → verifies snapshot entries and manifests
//!        ├─ info "redeemd/v1/journal-mac/<terminal id>"   → journal HMAC chain, authorization codes, local state rows
//!        ├─ info "redeemd/v1/request-sign/<terminal id>"  → signs requests to the clearing server
//!        ├─ info "redeemd/v1/card-ref-siv/<terminal id>"  → card reference = AES-256-SIV(card number),
//!        │                                                  64 bytes (see `model::CardNumber::card_ref`)
//!        └─ info "redeemd/v1/identity/<terminal id>"      → identity verifier = HMAC(card ref, identity data)
//! ```
//!
//! Binding the terminal id into every `info` means a snapshot, journal or card reference of one terminal
//! is worthless at another, even if two terminals were (wrongly) given the same secret.
//! Key bytes are never printed: `Debug` shows only the purpose.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Minimum length of a terminal secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Length of every MAC tag and derived key, in bytes.
pub const TAG_LEN: usize = 32;
/// A MAC tag (HMAC-SHA256 output).
pub type Tag = [u8; TAG_LEN];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error("terminal secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    TooShort { len: usize },
    #[error("terminal secret is not hexadecimal text: {reason}")]
    NotHex { reason: &'static str },
}

/// The terminal secret. Zeroized on drop; never printed.
pub struct TerminalSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TerminalSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TerminalSecret(<{} bytes redacted>)", self.0.len())
    }
}

impl TerminalSecret {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: bytes.len() });
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// Parses the key-file format: the secret as hexadecimal text, surrounding whitespace ignored.
    pub fn from_hex_text(text: &str) -> Result<Self, SecretError> {
        let t = text.trim();
        if !t.len().is_multiple_of(2) {
            return Err(SecretError::NotHex {
                reason: "odd number of hex digits",
            });
        }
        let mut out = Zeroizing::new(Vec::with_capacity(t.len() / 2));
        for pair in t.as_bytes().chunks(2) {
            let hi = hex_val(pair[0]).ok_or(SecretError::NotHex {
                reason: "character outside 0-9a-fA-F",
            })?;
            let lo = hex_val(pair[1]).ok_or(SecretError::NotHex {
                reason: "character outside 0-9a-fA-F",
            })?;
            out.push(hi << 4 | lo);
        }
        Self::from_bytes(&out)
    }

    pub fn derive(&self, purpose: Purpose, terminal_id: &str) -> MacKey {
        let hk = Hkdf::<Sha256>::new(Some(b"redeemd/v1/terminal"), &self.0);
        let info = format!("redeemd/v1/{}/{terminal_id}", purpose.label());
        let mut okm = Zeroizing::new([0u8; TAG_LEN]);
        // 32 bytes is far below HKDF-SHA256's 255 × 32 limit, so `expand` cannot fail; fall back to an
        // all-zero key rather than panic, which no MAC made by the platform would ever verify against.
        if hk.expand(info.as_bytes(), okm.as_mut()).is_err() {
            okm.fill(0);
        }
        MacKey::from_raw(purpose, &okm)
    }

    /// The card-token key of `terminal_id`: 64 bytes of HKDF output (info
    /// `"redeemd/v1/card-ref-siv/<terminal id>"`), an AES-256-SIV key.
    pub fn derive_card_token(&self, terminal_id: &str) -> CardTokenKey {
        let hk = Hkdf::<Sha256>::new(Some(b"redeemd/v1/terminal"), &self.0);
        let info = format!("redeemd/v1/card-ref-siv/{terminal_id}");
        let mut okm = Zeroizing::new([0u8; CARD_TOKEN_KEY_LEN]);
        // 64 bytes is far below HKDF-SHA256's limit, so `expand` cannot fail; a zero key (whose
        // references match no card the platform issued) rather than a panic if it ever did.
        if hk.expand(info.as_bytes(), okm.as_mut()).is_err() {
            okm.fill(0);
        }
        CardTokenKey { key: okm }
    }

    /// Derives every purpose key of `terminal_id`.
    pub fn derive_all(&self, terminal_id: &str) -> TerminalKeys {
        TerminalKeys {
            terminal_id: terminal_id.to_owned(),
            cache: self.derive(Purpose::CacheVerify, terminal_id),
            journal: self.derive(Purpose::JournalMac, terminal_id),
            request: self.derive(Purpose::RequestSigning, terminal_id),
            card_token: self.derive_card_token(terminal_id),
            identity: self.derive(Purpose::IdentityVerifier, terminal_id),
        }
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// What a derived key is for. Each purpose gets its own key so that a MAC made for one purpose can never
/// be replayed as another (a journal MAC is not a cache MAC, a card reference is not an identity verifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    CacheVerify,
    JournalMac,
    RequestSigning,
    IdentityVerifier,
}

impl Purpose {
    pub fn label(self) -> &'static str {
        match self {
            Purpose::CacheVerify => "cache-verify",
            Purpose::JournalMac => "journal-mac",
            Purpose::RequestSigning => "request-sign",
            Purpose::IdentityVerifier => "identity",
        }
    }
}

/// An HMAC-SHA256 key for one purpose. The keyed state is computed once and cloned per MAC.
#[derive(Clone)]
pub struct MacKey {
    purpose: Purpose,
    keyed: HmacSha256,
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacKey({}, <redacted>)", self.purpose.label())
    }
}

impl MacKey {
    fn from_raw(purpose: Purpose, key: &[u8; TAG_LEN]) -> Self {
        // HMAC pads keys shorter than the 64-byte block with zeros; doing so here uses the infallible
        // fixed-size constructor and gives the same MAC as `new_from_slice(key)`.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..TAG_LEN].copy_from_slice(key);
        let keyed = HmacSha256::new(&(*block).into());
        Self { purpose, keyed }
    }

    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// HMAC over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> Tag {
        let mut m = self.keyed.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Constant-time check of `tag` against the HMAC over `parts`.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = self.keyed.clone();
        for p in parts {
            m.update(p);
        }
        m.verify_slice(tag).is_ok()
    }
}

/// Constant-time equality of two tags (for MACs the caller computed itself).
pub fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Length of the card-token key: AES-256-SIV takes two 256-bit keys (MAC, then cipher).
pub const CARD_TOKEN_KEY_LEN: usize = 64;

/// The key that turns a card number into this terminal's card reference and, on the platform, back
/// (`model::CardNumber::card_ref`, [`CardTokenKey::reveal`]). Zeroized on drop; never printed.
#[derive(Clone)]
pub struct CardTokenKey {
    key: Zeroizing<[u8; CARD_TOKEN_KEY_LEN]>,
}

impl std::fmt::Debug for CardTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardTokenKey(<redacted>)")
    }
}

impl CardTokenKey {
    /// A key check value: HMAC-SHA256 of `text` keyed with the whole 64-byte key (one HMAC block),
    /// so that a store can tell this key from another without keeping anything secret (a MAC of a
    /// public text reveals nothing of the key).
    pub fn check_value(&self, text: &[u8]) -> Tag {
        let mut block = Zeroizing::new([0u8; 64]);
        block.copy_from_slice(&self.key[..]);
        let mut m = HmacSha256::new(&(*block).into());
        m.update(text);
        m.finalize().into_bytes().into()
    }

    pub(crate) fn cipher(&self) -> aes_siv::siv::Aes256Siv {
        use aes_siv::KeyInit;
        aes_siv::siv::Aes256Siv::new(aes_siv::aead::generic_array::GenericArray::from_slice(
            &self.key[..],
        ))
    }
}

/// All purpose keys of one terminal.
#[derive(Debug, Clone)]
pub struct TerminalKeys {
    pub terminal_id: String,
    pub cache: MacKey,
    pub journal: MacKey,
    pub request: MacKey,
    pub card_token: CardTokenKey,
    pub identity: MacKey,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secret() -> TerminalSecret {
        TerminalSecret::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn purposes_and_terminals_get_distinct_keys() {
        let s = secret();
        let a = s.derive_all("T-1");
        let b = s.derive_all("T-2");
        let msg: &[&[u8]] = &[b"x"];
        let tags = [
            a.cache.mac(msg),
            a.journal.mac(msg),
            a.request.mac(msg),
            a.identity.mac(msg),
        ];
        for i in 0..tags.len() {
            for j in i + 1..tags.len() {
                assert_ne!(tags[i], tags[j]);
            }
        }
        assert_ne!(a.cache.mac(msg), b.cache.mac(msg));
        assert_eq!(
            a.cache.mac(msg),
            s.derive(Purpose::CacheVerify, "T-1").mac(msg)
        );
    }

    #[test]
    fn matches_plain_hkdf_and_hmac() {
        // The padded-key constructor must equal textbook HMAC with the 32-byte derived key.
        let hk = Hkdf::<Sha256>::new(Some(b"redeemd/v1/terminal"), &[7u8; 32]);
        let mut okm = [0u8; 32];
        hk.expand(b"redeemd/v1/journal-mac/T-1", &mut okm).unwrap();
        let mut m = HmacSha256::new_from_slice(&okm).unwrap();
        m.update(b"hello");
        let want: [u8; 32] = m.finalize().into_bytes().into();
        let key = secret().derive(Purpose::JournalMac, "T-1");
        assert_eq!(key.mac(&[b"hel", b"lo"]), want);
        assert!(key.verify(&[b"hello"], &want));
        assert!(!key.verify(&[b"hellp"], &want));
    }

    #[test]
    fn secrets_are_validated_and_never_printed() {
        assert_eq!(
            TerminalSecret::from_bytes(&[1; 31]).unwrap_err(),
            SecretError::TooShort { len: 31 }
        );
        assert!(TerminalSecret::from_hex_text("zz").is_err());
        let s = TerminalSecret::from_hex_text(&format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(!format!("{s:?}").contains("ab"));
        let k = s.derive(Purpose::IdentityVerifier, "T");
        assert_eq!(format!("{k:?}"), "MacKey(identity, <redacted>)");
        assert_eq!(
            format!("{:?}", s.derive_card_token("T")),
            "CardTokenKey(<redacted>)"
        );
    }
}
