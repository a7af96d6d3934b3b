//! The platform master key and what it protects at rest (PCI DSS 3.5): card numbers, terminal secrets and
//! identity data are stored sealed with AES-256-GCM under a key derived from it, and a card is found by a
//! keyed lookup hash of its number (HMAC-SHA256 under another derived key), never by the number.
//!
//! The master key is 32 random bytes as hexadecimal text in a file only its owner may read (mode 0600 or
//! 0400, like a terminal's `terminal.key`), or a systemd credential (`LoadCredential=` /
//! `LoadCredentialEncrypted=`, read from `$CREDENTIALS_DIRECTORY`). It is stored apart from the database:
//! a copy of the database alone reveals no card number.
//!
//! ```text
//! master key
//!   └─ HKDF-SHA256(salt = "redeemd/platform/v1", ikm = master key)
//!        ├─ info "seal"         → AES-256-GCM key: sealed = fingerprint ‖ nonce (12) ‖ ciphertext ‖ tag (16),
//!        │                        associated data = what the value is ("card-number", "terminal-secret/T-1", …)
//!        ├─ info "card-lookup"  → HMAC key: number_key = hex(HMAC(lookup key, digits))
//!        └─ info "fingerprint"  → the first 8 bytes of HMAC(…, "fingerprint"): names the key in every sealed
//!                                 value and in the database, never reveals it
//! ```
//!
//! A [`Vault`] holds the current key and, during a rotation (`admin key rotate`), the previous one: it
//! opens values sealed under either, seals under the current one, and looks a number up under both.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit as HmacKeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

/// Bytes naming a key in sealed values and in the database.
pub const FINGERPRINT_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Largest key file read (a hex key is ~64 bytes; anything huge is not a key file).
const MAX_KEY_FILE: u64 = 4096;

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("master key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "master key {path} has mode {mode:04o}: it must not be readable or writable by group or others (chmod 600)"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("master key {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("master key {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "master key credential {name:?}: $CREDENTIALS_DIRECTORY is not set (is LoadCredential= in the unit?)"
    )]
    NoCredentialsDirectory { name: String },
    #[error("master key credential name {name:?} must be a plain file name")]
    BadCredentialName { name: String },
    #[error("{what}: sealed under master key {fingerprint}, which was not given")]
    UnknownKey { what: String, fingerprint: String },
    #[error("{what}: sealed value does not open (altered, or not sealed for this place)")]
    Corrupt { what: String },
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Credential(String),
}

/// One master key's derived keys.
pub struct MasterKey {
    seal: Aes256Gcm,
    lookup: Hmac<Sha256>,
    fingerprint: [u8; FINGERPRINT_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({}, <redacted>)", self.fingerprint_hex())
    }
}

impl MasterKey {
    /// From the key bytes (at least 32).
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, String> {
        if bytes.len() < 32 {
            return Err(format!("{} bytes; at least 32 are required", bytes.len()));
        }
        let hk = Hkdf::<Sha256>::new(Some(b"redeemd/platform/v1"), bytes);
        let derive = |info: &[u8]| {
            let mut okm = Zeroizing::new([0u8; 32]);
            // 32 bytes is far below HKDF-SHA256's limit: `expand` cannot fail.
            hk.expand(info, okm.as_mut())
                .map_err(|e| format!("deriving: {e}"))?;
            Ok::<_, String>(okm)
        };
        let seal = Aes256Gcm::new_from_slice(&derive(b"seal")?[..])
            .map_err(|e| format!("seal key: {e}"))?;
        let lookup = <Hmac<Sha256> as HmacKeyInit>::new_from_slice(&derive(b"card-lookup")?[..])
            .map_err(|e| format!("lookup key: {e}"))?;
        let mut fp = <Hmac<Sha256> as HmacKeyInit>::new_from_slice(&derive(b"fingerprint")?[..])
            .map_err(|e| format!("fingerprint key: {e}"))?;
        fp.update(b"fingerprint");
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&fp.finalize().into_bytes()[..FINGERPRINT_LEN]);
        Ok(MasterKey {
            seal,
            lookup,
            fingerprint,
        })
    }

    /// From hexadecimal text (surrounding whitespace ignored), as in a key file.
    pub fn from_hex_text(text: &str) -> Result<MasterKey, String> {
        let bytes = Zeroizing::new(
            hex::decode(text.trim()).map_err(|e| format!("not hexadecimal text: {e}"))?,
        );
        MasterKey::from_bytes(&bytes)
    }

    /// Loads a key file (checked as a terminal's key file is) or a systemd credential.
    pub fn load(source: &KeySource) -> Result<MasterKey, VaultError> {
        let path = match source {
            KeySource::File(p) => p.clone(),
            KeySource::Credential(name) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(VaultError::BadCredentialName { name: name.clone() });
                }
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| VaultError::NoCredentialsDirectory { name: name.clone() })?;
                Path::new(&dir).join(name)
            }
        };
        let io = |source| VaultError::Io {
            path: path.clone(),
            source,
        };
        // Checked before opening: opening a FIFO would block the start on a mistyped path.
        if !std::fs::metadata(&path).map_err(io)?.is_file() {
            return Err(VaultError::NotAFile { path });
        }
        let file = std::fs::File::open(&path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(VaultError::LoosePermissions { path, mode });
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE)
            .read_to_string(&mut text)
            .map_err(io)?;
        MasterKey::from_hex_text(&text).map_err(|reason| VaultError::Malformed {
            path: path.clone(),
            reason,
        })
    }

    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        self.fingerprint
    }

    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    fn lookup_key(&self, digits: &str) -> String {
        let mut m = self.lookup.clone();
        m.update(b"redeemd/platform/card-lookup/v1");
        m.update(digits.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

/// The platform's master key, and the previous one while a rotation re-seals.
#[derive(Debug)]
pub struct Vault {
    current: MasterKey,
    previous: Option<MasterKey>,
}

impl Vault {
    pub fn new(current: MasterKey) -> Vault {
        Vault {
            current,
            previous: None,
        }
    }

    /// A vault that also opens what `previous` sealed (a rotation in progress).
    pub fn with_previous(current: MasterKey, previous: MasterKey) -> Vault {
        Vault {
            current,
            previous: Some(previous),
        }
    }

    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Whether the vault holds the key of this fingerprint (current or previous).
    pub fn opens(&self, fingerprint: &[u8]) -> bool {
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .any(|k| k.fingerprint[..] == *fingerprint)
    }

    /// `fingerprint ‖ nonce ‖ AES-256-GCM(plaintext, associated data = what)` under the current key.
    pub fn seal(&self, what: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| VaultError::Random(e.to_string()))?;
        let ct = self
            .current
            .seal
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Corrupt { what: what.into() })?;
        let mut out = Vec::with_capacity(FINGERPRINT_LEN + NONCE_LEN + ct.len());
        out.extend_from_slice(&self.current.fingerprint);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a value sealed under the current or the previous key, checking it was sealed as `what`.
    pub fn open(&self, what: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if sealed.len() < FINGERPRINT_LEN + NONCE_LEN + TAG_LEN {
            return Err(VaultError::Corrupt { what: what.into() });
        }
        let (fp, rest) = sealed.split_at(FINGERPRINT_LEN);
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.fingerprint[..] == *fp)
            .ok_or_else(|| VaultError::UnknownKey {
                what: what.into(),
                fingerprint: hex::encode(fp),
            })?;
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        key.seal
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: what.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Corrupt { what: what.into() })
    }

    /// The number's lookup key under the current key, then under the previous one (a card sealed
    /// before a rotation finished is found too).
    pub fn lookup_keys(&self, digits: &str) -> Vec<String> {
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .map(|k| k.lookup_key(digits))
            .collect()
    }

    /// The lookup key a card is stored under (current key).
    pub fn lookup_key(&self, digits: &str) -> String {
        self.current.lookup_key(digits)
    }
}

/// A new master key as hex text (`admin key generate`).
pub fn generate_hex() -> Result<Zeroizing<String>, VaultError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut()).map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(Zeroizing::new(format!("{}\n", hex::encode(&key[..]))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn sealed_values_open_only_as_what_they_were_sealed_as_under_a_known_key() {
        let v = Vault::new(key(1));
        let sealed = v.seal("card-number", b"6228480012345678").unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"6228480012345678"));
        assert_eq!(
            &v.open("card-number", &sealed).unwrap()[..],
            b"6228480012345678"
        );
        // Another place, an edited byte, another key: refused by name.
        assert!(matches!(
            v.open("terminal-secret/T-1", &sealed),
            Err(VaultError::Corrupt { .. })
        ));
        let mut edited = sealed.clone();
        *edited.last_mut().unwrap() ^= 1;
        assert!(v.open("card-number", &edited).is_err());
        let other = Vault::new(key(2));
        let e = other.open("card-number", &sealed).unwrap_err().to_string();
        assert!(e.contains(&key(1).fingerprint_hex()), "{e}");
        // During a rotation both open; sealing uses the new key.
        let rotating = Vault::with_previous(key(2), key(1));
        assert!(rotating.open("card-number", &sealed).is_ok());
        assert_eq!(
            rotating.seal("x", b"y").unwrap()[..FINGERPRINT_LEN],
            key(2).fingerprint()
        );
        assert_eq!(rotating.lookup_keys("6228480012345678").len(), 2);
        assert_eq!(
            rotating.lookup_keys("6228480012345678")[1],
            v.lookup_key("6228480012345678")
        );
        assert!(!format!("{:?}", key(1)).contains("0101"));
    }

    #[test]
    fn key_files_are_checked_like_terminal_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load(&KeySource::File(p.clone())),
            Err(VaultError::LoosePermissions { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::load(&KeySource::File(p.clone())).is_ok());
        std::fs::write(&p, "abcd").unwrap();
        let e = MasterKey::load(&KeySource::File(p))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 32"), "{e}");
    }
}
