//! Request signing: how a terminal authenticates each HTTP request to the clearing server.
//!
//! ```text
//! canonical = "redeemd/request/v1" ‖ str method ‖ str path_and_query ‖ str terminal_id
//!             ‖ i64 timestamp_ms ‖ str nonce ‖ [32] SHA-256(body as sent)
//! signature = HMAC-SHA256(request key, canonical)
//! ```
//!
//! The canonical encoding (length-prefixed strings, big-endian integers) means no two different requests
//! sign the same bytes. The key is the terminal's request-signing key ([`TerminalKeys::request`]), used for
//! nothing else. The verifier is pure and works in two steps, so that a server authenticates a request
//! from its headers before it reads the body: [`ParsedAuth::verify_headers`] (the caller passes the
//! server's clock, the skew window and a [`NonceStore`]) checks the signature over the canonical request
//! with the body hash the headers claim, and only then the clock and the nonce — a party without the key
//! can neither fill the nonce memory nor learn anything from the order of errors; then
//! [`ParsedAuth::check_body`] checks the body as read against the claimed hash. See `docs/api/README.md`
//! ("Authentication").
//!
//! [`TerminalKeys::request`]: crate::keys::TerminalKeys

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::Writer;
use crate::keys::{MacKey, TAG_LEN, Tag};

pub const HEADER_TERMINAL: &str = "X-Redeemd-Terminal";
pub const HEADER_TIMESTAMP: &str = "X-Redeemd-Timestamp";
pub const HEADER_NONCE: &str = "X-Redeemd-Nonce";
pub const HEADER_CONTENT_SHA256: &str = "X-Redeemd-Content-SHA256";
pub const HEADER_SIGNATURE: &str = "X-Redeemd-Signature";

/// Domain tag that starts every canonical request.
pub const DOMAIN: &[u8] = b"redeemd/request/v1";
/// Default accepted difference between the signing time and the server's clock (±5 minutes).
pub const DEFAULT_SKEW_MS: u64 = 300_000;
/// Random bytes in a nonce (sent as twice as many lowercase hex digits).
pub const NONCE_BYTES: usize = 16;
/// Longest accepted terminal id.
pub const MAX_TERMINAL_ID_LEN: usize = 64;

/// SHA-256 of a request body, as sent on the wire (after any `Content-Encoding`).
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// What a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestParts<'a> {
    /// Upper-case HTTP method, e.g. `"POST"`.
    pub method: &'a str,
    /// Path and query exactly as on the request line, e.g. `"/v1/terminals/T-1/entitlements?since=4"`.
    pub path_and_query: &'a str,
    pub terminal_id: &'a str,
    pub timestamp_ms: i64,
    /// The nonce as sent: [`NONCE_BYTES`] × 2 lowercase hex digits.
    pub nonce: &'a str,
    pub body_sha256: [u8; 32],
}

impl RequestParts<'_> {
    /// The bytes the signature covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128 + self.path_and_query.len());
        w.fixed(DOMAIN)
            .str(self.method)
            .str(self.path_and_query)
            .str(self.terminal_id)
            .i64(self.timestamp_ms)
            .str(self.nonce)
            .fixed(&self.body_sha256);
        w.into_bytes()
    }

    pub fn sign(&self, request_key: &MacKey) -> Tag {
        request_key.mac(&[&self.canonical()])
    }
}

/// The five authentication headers of one request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub terminal_id: String,
    pub timestamp_ms: i64,
    pub nonce: String,
    pub content_sha256: String,
    pub signature: String,
}

impl SignedHeaders {
    /// Signs a request. `nonce` must be fresh random bytes for every request (retries included).
    pub fn sign(
        request_key: &MacKey,
        terminal_id: &str,
        method: &str,
        path_and_query: &str,
        timestamp_ms: i64,
        nonce: [u8; NONCE_BYTES],
        body: &[u8],
    ) -> Self {
        let nonce = hex::encode(nonce);
        let parts = RequestParts {
            method,
            path_and_query,
            terminal_id,
            timestamp_ms,
            nonce: &nonce,
            body_sha256: body_sha256(body),
        };
        Self {
            terminal_id: terminal_id.to_owned(),
            timestamp_ms,
            content_sha256: hex::encode(parts.body_sha256),
            signature: hex::encode(parts.sign(request_key)),
            nonce,
        }
    }

    /// `(header name, value)` pairs, in a fixed order.
    pub fn pairs(&self) -> [(&'static str, String); 5] {
        [
            (HEADER_TERMINAL, self.terminal_id.clone()),
            (HEADER_TIMESTAMP, self.timestamp_ms.to_string()),
            (HEADER_NONCE, self.nonce.clone()),
            (HEADER_CONTENT_SHA256, self.content_sha256.clone()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// Why a request was not authenticated. [`RequestAuthError::code`] is the API's problem code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestAuthError {
    #[error("header {header} is missing")]
    Missing { header: &'static str },
    #[error("header {header} is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error("body SHA-256 does not match header {HEADER_CONTENT_SHA256}")]
    BodyHashMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error(
        "timestamp {timestamp_ms} is {distance_ms} ms from the server clock {now_ms}; at most {skew_ms} ms accepted"
    )]
    ClockSkew {
        timestamp_ms: i64,
        now_ms: i64,
        distance_ms: u64,
        skew_ms: u64,
    },
    #[error("nonce {nonce} was already used by terminal {terminal_id}")]
    NonceReplayed { terminal_id: String, nonce: String },
}

impl RequestAuthError {
    /// The stable problem code of `docs/api/README.md`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "auth_missing",
            Self::Malformed { .. } => "auth_malformed",
            Self::BodyHashMismatch => "body_hash_mismatch",
            Self::BadSignature => "bad_signature",
            Self::ClockSkew { .. } => "clock_skew",
            Self::NonceReplayed { .. } => "nonce_replayed",
        }
    }
}

/// Raw header values as received (`None` when absent). Bytes, because HTTP header values are bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceivedHeaders<'a> {
    pub terminal: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub nonce: Option<&'a [u8]>,
    pub content_sha256: Option<&'a [u8]>,
    pub signature: Option<&'a [u8]>,
}

/// Well-formed authentication headers. Parse first, look the terminal's key up by
/// [`ParsedAuth::terminal_id`], then [`ParsedAuth::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuth {
    pub terminal_id: String,
    pub timestamp_ms: i64,
    pub nonce: String,
    pub content_sha256: [u8; 32],
    pub signature: Tag,
}

/// Remembers nonces per terminal until they can no longer pass the clock check.
pub trait NonceStore {
    /// Returns `true` if `nonce` was already seen from `terminal_id` (a replay); otherwise remembers it
    /// until `forget_after_ms` (server clock) and returns `false`.
    fn seen_before(&mut self, terminal_id: &str, nonce: &str, forget_after_ms: i64) -> bool;
}

/// An in-memory [`NonceStore`]. Call [`MemoryNonces::prune`] now and then with the server's clock.
#[derive(Debug, Default)]
pub struct MemoryNonces {
    until: HashMap<(String, String), i64>,
}

impl MemoryNonces {
    pub fn new() -> Self {
        Self::default()
    }
    /// Forgets nonces whose time has passed.
    pub fn prune(&mut self, now_ms: i64) {
        self.until.retain(|_, until| *until >= now_ms);
    }
    pub fn len(&self) -> usize {
        self.until.len()
    }
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

impl NonceStore for MemoryNonces {
    fn seen_before(&mut self, terminal_id: &str, nonce: &str, forget_after_ms: i64) -> bool {
        let key = (terminal_id.to_owned(), nonce.to_owned());
        if self.until.contains_key(&key) {
            return true;
        }
        self.until.insert(key, forget_after_ms);
        false
    }
}

fn text<'a>(header: &'static str, value: Option<&'a [u8]>) -> Result<&'a str, RequestAuthError> {
    let v = value.ok_or(RequestAuthError::Missing { header })?;
    std::str::from_utf8(v).map_err(|_| RequestAuthError::Malformed {
        header,
        reason: "not ASCII text",
    })
}

fn lower_hex<const N: usize>(header: &'static str, s: &str) -> Result<[u8; N], RequestAuthError> {
    let malformed = RequestAuthError::Malformed {
        header,
        reason: "not the expected number of lowercase hex digits",
    };
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(malformed);
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| malformed)?;
    Ok(out)
}

/// Whether `id` is a terminal or merchant id a terminal can be configured with and sign as: 1 to
/// [`MAX_TERMINAL_ID_LEN`] characters of `A-Z a-z 0-9 . _ -` (the daemon's configuration and the
/// platform's pairing codes use the same rule).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TERMINAL_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ParsedAuth {
    pub fn parse(h: &ReceivedHeaders<'_>) -> Result<Self, RequestAuthError> {
        let terminal_id = text(HEADER_TERMINAL, h.terminal)?;
        if !is_valid_id(terminal_id) {
            return Err(RequestAuthError::Malformed {
                header: HEADER_TERMINAL,
                reason: "not 1-64 characters of A-Z a-z 0-9 . _ -",
            });
        }
        let ts = text(HEADER_TIMESTAMP, h.timestamp)?;
        // One spelling per value: no sign, no leading zeros (the signature covers the value, not the text).
        let canonical_digits = !ts.is_empty()
            && ts.len() <= 19
            && ts.bytes().all(|b| b.is_ascii_digit())
            && (ts == "0" || !ts.starts_with('0'));
        let timestamp_ms = canonical_digits
            .then(|| ts.parse::<i64>().ok())
            .flatten()
            .ok_or(RequestAuthError::Malformed {
                header: HEADER_TIMESTAMP,
                reason: "not unix milliseconds in decimal digits",
            })?;
        let nonce = text(HEADER_NONCE, h.nonce)?;
        lower_hex::<NONCE_BYTES>(HEADER_NONCE, nonce)?;
        let content_sha256 = lower_hex::<32>(
            HEADER_CONTENT_SHA256,
            text(HEADER_CONTENT_SHA256, h.content_sha256)?,
        )?;
        let signature =
            lower_hex::<TAG_LEN>(HEADER_SIGNATURE, text(HEADER_SIGNATURE, h.signature)?)?;
        Ok(Self {
            terminal_id: terminal_id.to_owned(),
            timestamp_ms,
            nonce: nonce.to_owned(),
            content_sha256,
            signature,
        })
    }

    /// Checks what the headers alone can tell, in this order: the signature over the canonical request
    /// (which covers the body hash *claimed* in [`HEADER_CONTENT_SHA256`]), then the clock
    /// (`|now − timestamp| ≤ skew`), then the nonce, which is remembered only when the first two passed.
    /// A server runs this before it reads a byte of the body, so that a party without the key can make
    /// it neither read a body nor fill its nonce memory; then it reads the body and calls
    /// [`ParsedAuth::check_body`].
    pub fn verify_headers(
        &self,
        request_key: &MacKey,
        method: &str,
        path_and_query: &str,
        now_ms: i64,
        skew_ms: u64,
        nonces: &mut dyn NonceStore,
    ) -> Result<(), RequestAuthError> {
        let parts = RequestParts {
            method,
            path_and_query,
            terminal_id: &self.terminal_id,
            timestamp_ms: self.timestamp_ms,
            nonce: &self.nonce,
            body_sha256: self.content_sha256,
        };
        if !request_key.verify(&[&parts.canonical()], &self.signature) {
            return Err(RequestAuthError::BadSignature);
        }
        let distance_ms = now_ms.abs_diff(self.timestamp_ms);
        if distance_ms > skew_ms {
            return Err(RequestAuthError::ClockSkew {
                timestamp_ms: self.timestamp_ms,
                now_ms,
                distance_ms,
                skew_ms,
            });
        }
        // After `timestamp + skew` the request fails the clock check, so the nonce can be forgotten then.
        let forget_after_ms = self
            .timestamp_ms
            .saturating_add(i64::try_from(skew_ms).unwrap_or(i64::MAX));
        if nonces.seen_before(&self.terminal_id, &self.nonce, forget_after_ms) {
            return Err(RequestAuthError::NonceReplayed {
                terminal_id: self.terminal_id.clone(),
                nonce: self.nonce.clone(),
            });
        }
        Ok(())
    }

    /// Both steps for a server that holds the whole request already (a test platform):
    /// [`ParsedAuth::verify_headers`], then [`ParsedAuth::check_body`] with [`body_sha256`] of the body
    /// as received. A server reading bodies from the network runs the two steps apart, the body read
    /// only between them.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        request_key: &MacKey,
        method: &str,
        path_and_query: &str,
        body_hash: [u8; 32],
        now_ms: i64,
        skew_ms: u64,
        nonces: &mut dyn NonceStore,
    ) -> Result<(), RequestAuthError> {
        self.verify_headers(request_key, method, path_and_query, now_ms, skew_ms, nonces)?;
        self.check_body(body_hash)
    }

    /// The second step, once the body was read: its SHA-256 ([`body_sha256`] of the bytes as received)
    /// must be the one the verified signature covers. The nonce stays spent when this fails: the
    /// sender's retry is a new request with a new nonce anyway.
    pub fn check_body(&self, body_hash: [u8; 32]) -> Result<(), RequestAuthError> {
        if crate::keys::tags_equal(&body_hash, &self.content_sha256) {
            Ok(())
        } else {
            Err(RequestAuthError::BodyHashMismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::{Purpose, TerminalSecret};
    use hmac::{Hmac, KeyInit, Mac};
    use proptest::prelude::*;

    const T0: i64 = 1_795_000_000_000;
    const PATH: &str = "/v1/terminals/T-1/journal";

    fn key(terminal: &str) -> MacKey {
        TerminalSecret::from_bytes(&[9; 32])
            .unwrap()
            .derive(Purpose::RequestSigning, terminal)
    }

    /// One request as it travels: method, path, headers and body, all as bytes.
    #[derive(Debug, Clone)]
    struct Wire {
        method: Vec<u8>,
        path: Vec<u8>,
        headers: [Vec<u8>; 5],
        body: Vec<u8>,
    }

    fn wire(body: &[u8], nonce: u8) -> Wire {
        let h = SignedHeaders::sign(
            &key("T-1"),
            "T-1",
            "POST",
            PATH,
            T0,
            [nonce; NONCE_BYTES],
            body,
        );
        Wire {
            method: b"POST".to_vec(),
            path: PATH.as_bytes().to_vec(),
            headers: h.pairs().map(|(_, v)| v.into_bytes()),
            body: body.to_vec(),
        }
    }

    /// What a server does: parse, look the key up by the terminal header, verify.
    fn check(w: &Wire, now_ms: i64, nonces: &mut MemoryNonces) -> Result<(), RequestAuthError> {
        let [terminal, timestamp, nonce, content_sha256, signature] = &w.headers;
        let auth = ParsedAuth::parse(&ReceivedHeaders {
            terminal: Some(terminal),
            timestamp: Some(timestamp),
            nonce: Some(nonce),
            content_sha256: Some(content_sha256),
            signature: Some(signature),
        })?;
        auth.verify_headers(
            &key(&auth.terminal_id),
            &String::from_utf8_lossy(&w.method),
            &String::from_utf8_lossy(&w.path),
            now_ms,
            DEFAULT_SKEW_MS,
            nonces,
        )?;
        auth.check_body(body_sha256(&w.body))
    }

    #[test]
    fn signed_request_verifies_once() {
        let w = wire(b"{\"from_seq\":1,\"records\":[]}", 1);
        let mut nonces = MemoryNonces::new();
        assert_eq!(check(&w, T0, &mut nonces), Ok(()));
        let again = check(&w, T0 + 1000, &mut nonces).unwrap_err();
        assert_eq!(again.code(), "nonce_replayed");
        // A fresh nonce for the same body is a new request (retries are allowed).
        assert_eq!(check(&wire(&w.body, 2), T0, &mut nonces), Ok(()));
    }

    #[test]
    fn skew_window_edges_are_inclusive() {
        let skew = DEFAULT_SKEW_MS as i64;
        for (i, (now, ok)) in [
            (T0 + skew, true),
            (T0 - skew, true),
            (T0 + skew + 1, false),
            (T0 - skew - 1, false),
        ]
        .into_iter()
        .enumerate()
        {
            let r = check(&wire(b"", i as u8), now, &mut MemoryNonces::new());
            assert_eq!(r.is_ok(), ok, "now = T0 {:+}: {r:?}", now - T0);
            if !ok {
                assert!(
                    matches!(r, Err(RequestAuthError::ClockSkew { distance_ms, .. }) if distance_ms == DEFAULT_SKEW_MS + 1)
                );
            }
        }
        // Extreme clocks do not overflow.
        let r = check(&wire(b"", 9), i64::MIN, &mut MemoryNonces::new());
        assert_eq!(r.unwrap_err().code(), "clock_skew");
    }

    #[test]
    fn a_request_refused_from_its_headers_does_not_burn_its_nonce() {
        let w = wire(b"x", 3);
        let mut nonces = MemoryNonces::new();
        let mut forged = w.clone();
        forged.headers[4] = b"0".repeat(64);
        assert_eq!(
            check(&forged, T0, &mut nonces),
            Err(RequestAuthError::BadSignature)
        );
        assert_eq!(
            check(&w, T0 + 10 * DEFAULT_SKEW_MS as i64, &mut nonces)
                .unwrap_err()
                .code(),
            "clock_skew"
        );
        assert!(nonces.is_empty());
        assert_eq!(check(&w, T0, &mut nonces), Ok(()));
        nonces.prune(T0 + DEFAULT_SKEW_MS as i64);
        assert_eq!(nonces.len(), 1);
        nonces.prune(T0 + DEFAULT_SKEW_MS as i64 + 1);
        assert!(nonces.is_empty());
    }

    /// The headers are verified before the body exists; a body that is not the one signed is refused
    /// after them, and its nonce stays spent (the sender retries with a new one).
    #[test]
    fn the_body_is_checked_after_the_headers_against_the_signed_hash() {
        let w = wire(b"x", 5);
        let mut tampered = w.clone();
        tampered.body = b"y".to_vec();
        let mut nonces = MemoryNonces::new();
        assert_eq!(
            check(&tampered, T0, &mut nonces),
            Err(RequestAuthError::BodyHashMismatch)
        );
        assert_eq!(nonces.len(), 1);
        assert_eq!(
            check(&w, T0, &mut nonces).unwrap_err().code(),
            "nonce_replayed"
        );
        // A hash header that is not the body's but is what was signed passes the headers' step.
        let [t, ts, n, c, s] = &w.headers;
        let auth = ParsedAuth::parse(&ReceivedHeaders {
            terminal: Some(t),
            timestamp: Some(ts),
            nonce: Some(n),
            content_sha256: Some(c),
            signature: Some(s),
        })
        .unwrap();
        assert_eq!(
            auth.verify_headers(
                &key("T-1"),
                "POST",
                PATH,
                T0,
                DEFAULT_SKEW_MS,
                &mut MemoryNonces::new()
            ),
            Ok(())
        );
        assert_eq!(auth.check_body(body_sha256(b"x")), Ok(()));
        assert_eq!(
            auth.check_body(body_sha256(b"")),
            Err(RequestAuthError::BodyHashMismatch)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let w = wire(b"", 4);
        let [t, ts, n, c, s] = &w.headers;
        let base = ReceivedHeaders {
            terminal: Some(t),
            timestamp: Some(ts),
            nonce: Some(n),
            content_sha256: Some(c),
            signature: Some(s),
        };
        assert!(ParsedAuth::parse(&base).is_ok());
        assert_eq!(
            ParsedAuth::parse(&ReceivedHeaders {
                nonce: None,
                ..base
            }),
            Err(RequestAuthError::Missing {
                header: HEADER_NONCE
            })
        );
        let upper = s.to_ascii_uppercase();
        assert!(matches!(
            ParsedAuth::parse(&ReceivedHeaders {
                signature: Some(&upper),
                ..base
            }),
            Err(RequestAuthError::Malformed {
                header: HEADER_SIGNATURE,
                ..
            })
        ));
        for bad_ts in [
            &b"-5"[..],
            b"+5",
            b"",
            b"99999999999999999999",
            b"1e3",
            b"0123",
        ] {
            assert!(matches!(
                ParsedAuth::parse(&ReceivedHeaders {
                    timestamp: Some(bad_ts),
                    ..base
                }),
                Err(RequestAuthError::Malformed {
                    header: HEADER_TIMESTAMP,
                    ..
                })
            ));
        }
        for bad_id in [&b""[..], b"T 1", b"T/1", &[b'a'; 65]] {
            assert!(matches!(
                ParsedAuth::parse(&ReceivedHeaders {
                    terminal: Some(bad_id),
                    ..base
                }),
                Err(RequestAuthError::Malformed {
                    header: HEADER_TERMINAL,
                    ..
                })
            ));
        }
    }

    /// Pins the canonical form for other implementations: textbook HMAC-SHA256 over hand-built bytes.
    #[test]
    fn canonical_form_is_the_documented_one() {
        let body = b"{}";
        let h = SignedHeaders::sign(&key("T-1"), "T-1", "GET", "/a?b=1", 258, [0xab; 16], body);
        let mut want = b"redeemd/request/v1".to_vec();
        for s in ["GET", "/a?b=1", "T-1"] {
            want.extend_from_slice(&(s.len() as u32).to_be_bytes());
            want.extend_from_slice(s.as_bytes());
        }
        want.extend_from_slice(&258i64.to_be_bytes());
        want.extend_from_slice(&32u32.to_be_bytes());
        want.extend_from_slice("ab".repeat(16).as_bytes());
        want.extend_from_slice(&Sha256::digest(body));
        let okm = {
            let hk = hkdf::Hkdf::<Sha256>::new(Some(b"redeemd/v1/terminal"), &[9u8; 32]);
            let mut okm = [0u8; 32];
            hk.expand(b"redeemd/v1/request-sign/T-1", &mut okm).unwrap();
            okm
        };
        let mut m = Hmac::<Sha256>::new_from_slice(&okm).unwrap();
        m.update(&want);
        assert_eq!(h.signature, hex::encode(m.finalize().into_bytes()));
        assert_eq!(h.content_sha256, hex::encode(Sha256::digest(body)));
        assert_eq!(h.nonce, "ab".repeat(16));
    }

    proptest! {
        /// Any single-byte change of the method, path, any header or the body makes verification fail.
        #[test]
        fn any_single_byte_change_fails(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            part in 0usize..8,
            pick in any::<usize>(),
            delta in 1u8..=255,
        ) {
            let w = wire(&body, 7);
            prop_assert_eq!(check(&w, T0, &mut MemoryNonces::new()), Ok(()));
            let mut m = w.clone();
            let target = match part {
                0 => &mut m.method,
                1 => &mut m.path,
                2..=6 => &mut m.headers[part - 2],
                _ => &mut m.body,
            };
            if target.is_empty() {
                target.push(delta); // an inserted byte is a change too
            } else {
                let i = pick % target.len();
                target[i] ^= delta;
            }
            prop_assert!(check(&m, T0, &mut MemoryNonces::new()).is_err());
        }

        #[test]
        fn parsing_arbitrary_headers_never_panics(
            values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)), 5),
        ) {
            let h = ReceivedHeaders {
                terminal: values[0].as_deref(),
                timestamp: values[1].as_deref(),
                nonce: values[2].as_deref(),
                content_sha256: values[3].as_deref(),
                signature: values[4].as_deref(),
            };
            let _ = ParsedAuth::parse(&h);
        }
    }
}
