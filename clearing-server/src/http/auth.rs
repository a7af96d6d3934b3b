//! Request authentication (`docs/api/README.md`, "Authentication"), from the headers before the body:
//!
//! 1. the five signature headers parsed ([`ParsedAuth::parse`]);
//! 2. the terminal looked up (enrolled, enabled, the path's);
//! 3. the signature over the canonical request — which covers the body hash the headers claim — then
//!    the clock, then the nonce, remembered in the store its method calls for
//!    ([`terminals::NonceKind`]: durable for a `POST`, volatile for a `GET`);
//! 4. only then the body read, under its size and time limits, and its SHA-256 compared with the
//!    signed one;
//! 5. a gzip body inflated under its own limit.
//!
//! A request refused in steps 1–3 costs no body read: a client without the terminal's key can make
//! the server read nothing but headers. [`Authenticated`] is the first thing every terminal handler
//! takes.

use std::sync::atomic::{AtomicI64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, Method, Uri, header};
use redeemd_contract::request::{self, DEFAULT_SKEW_MS, ParsedAuth, ReceivedHeaders};

use super::AppState;
use super::problem::Problem;
use crate::storage::{self, terminals};

/// Largest request body read, in bytes (as sent, compressed or not).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Largest request body after inflating a `Content-Encoding: gzip` body.
pub const MAX_INFLATED_BODY_BYTES: usize = 32 << 20;
/// Expired nonces are pruned at most this often (per store, per process).
const NONCE_PRUNE_EVERY_MS: i64 = 30_000;
/// Bodies up to this size are hashed where they were read; larger ones on the blocking pool, so that an
/// 8 MiB upload does not hold an async worker for milliseconds.
const HASH_IN_PLACE_BYTES: usize = 64 << 10;

fn too_large(detail: String) -> Problem {
    Problem::new(413, "body_too_large", detail)
}

/// Reads the body up to [`MAX_BODY_BYTES`]; a declared or actual larger body is `body_too_large` (a
/// declared one before a byte is read), one not received within `body_timeout` (a client trickling
/// bytes, or stalled) is `request_timeout`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    body_timeout: std::time::Duration,
) -> Result<Bytes, Problem> {
    let limit = || format!("request body above {MAX_BODY_BYTES} bytes");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large(limit()));
    }
    match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(read) => read.map_err(|_| too_large(limit())),
        Err(_) => Err(Problem::new(
            408,
            "request_timeout",
            format!(
                "request body not received within {} s",
                body_timeout.as_secs_f64()
            ),
        )),
    }
}

/// Steps 1–3: authenticates a request for `path_terminal` from its headers alone. Returns the parsed
/// headers (whose claimed body hash step 4 checks) and the terminal.
async fn authenticate_headers(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    path_terminal: &str,
) -> Result<(ParsedAuth, storage::Terminal), Problem> {
    let h = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let auth = ParsedAuth::parse(&ReceivedHeaders {
        terminal: h(request::HEADER_TERMINAL),
        timestamp: h(request::HEADER_TIMESTAMP),
        nonce: h(request::HEADER_NONCE),
        content_sha256: h(request::HEADER_CONTENT_SHA256),
        signature: h(request::HEADER_SIGNATURE),
    })
    .map_err(|e| Problem::new(401, e.code(), e.to_string()))?;
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| uri.path())
        .to_owned();
    let (method, path_terminal) = (method.as_str().to_owned(), path_terminal.to_owned());
    let kind = terminals::NonceKind::for_method(&method);
    let clock = state.clock.clone();
    let pruned = state.nonces_pruned_ms.clone();
    let keys = state.keys.clone();
    // One trip to a blocking thread: the terminal (a read), then the checks in the documented order,
    // the nonce remembered (in the database: across restarts and server processes) only when the
    // signature and the clock passed.
    state
        .with_db(move |db, vault| {
            let terminal = keys
                .terminal(db, vault, &auth.terminal_id)
                .map_err(|e| Problem::internal(e.to_string()))?
                .ok_or_else(|| {
                    Problem::new(
                        401,
                        "unknown_terminal",
                        format!("terminal {} is not enrolled", auth.terminal_id),
                    )
                })?;
            if !terminal.enabled {
                return Err(Problem::new(
                    403,
                    "terminal_disabled",
                    format!("terminal {} is disabled", auth.terminal_id),
                ));
            }
            if auth.terminal_id != path_terminal {
                return Err(Problem::new(
                    403,
                    "terminal_mismatch",
                    format!(
                        "signed by {} for terminal {path_terminal}",
                        auth.terminal_id
                    ),
                ));
            }
            let now = clock();
            let mut nonces = terminals::DbNonces {
                db,
                kind,
                prune_before_ms: prune_due(&pruned[kind as usize], now),
                error: None,
            };
            let verified = auth.verify_headers(
                &terminal.keys.request,
                &method,
                &path_and_query,
                now,
                DEFAULT_SKEW_MS,
                &mut nonces,
            );
            if let Some(e) = nonces.error {
                return Err(Problem::internal(format!("nonces: {e}")));
            }
            verified.map_err(|e| {
                let mut p = Problem::new(401, e.code(), e.to_string()).terminal(&auth.terminal_id);
                if e.code() == "clock_skew" {
                    p.server_time_ms = Some(now);
                }
                p
            })?;
            Ok((auth, terminal))
        })
        .await
}

/// `Some(now)` when this process last pruned the store more than [`NONCE_PRUNE_EVERY_MS`] ago (and
/// notes that it does now): a schedule, not state that correctness depends on.
fn prune_due(last: &AtomicI64, now: i64) -> Option<i64> {
    let before = last.load(Ordering::Relaxed);
    (now.saturating_sub(before) >= NONCE_PRUNE_EVERY_MS
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok())
    .then_some(now)
}

/// Step 4's hash, on the blocking pool for a large body.
async fn hash_body(body: &Bytes) -> Result<[u8; 32], Problem> {
    if body.len() <= HASH_IN_PLACE_BYTES {
        return Ok(request::body_sha256(body));
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || request::body_sha256(&body))
        .await
        .map_err(|e| Problem::internal(format!("hashing the body: {e}")))
}

/// Inflates a `Content-Encoding: gzip` body (after authentication: the signature covers the bytes as
/// sent), counting while inflating so that a small bomb costs at most [`MAX_INFLATED_BODY_BYTES`].
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Bytes, Problem> {
    let Some(coding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let coding = coding.to_str().unwrap_or("").trim();
    if coding.eq_ignore_ascii_case("identity") {
        return Ok(body);
    }
    if !coding.eq_ignore_ascii_case("gzip") {
        return Err(Problem::new(
            415,
            "unsupported_media_type",
            format!("Content-Encoding {coding:?}: only gzip is accepted on requests"),
        ));
    }
    if body.is_empty() {
        return Ok(body);
    }
    use std::io::Read;
    let limit = MAX_INFLATED_BODY_BYTES as u64;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(MAX_INFLATED_BODY_BYTES));
    flate2::read::MultiGzDecoder::new(&body[..])
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Problem::new(400, "malformed_request", format!("gzip body: {e}")))?;
    if out.len() as u64 > limit {
        return Err(too_large(format!(
            "request body inflates to more than {MAX_INFLATED_BODY_BYTES} bytes"
        )));
    }
    Ok(Bytes::from(out))
}

/// A request authenticated from its headers, then its body read (under the limits) and found to be
/// the one signed: the first thing every handler takes.
pub struct Authenticated {
    pub terminal_id: String,
    pub terminal: storage::Terminal,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl FromRequest<AppState> for Authenticated {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        let (mut parts, body) = req.into_parts();
        let Path(terminal_id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| Problem::new(404, "not_found", e.body_text()))?;
        let (auth, terminal) = authenticate_headers(
            state,
            &parts.method,
            &parts.uri,
            &parts.headers,
            &terminal_id,
        )
        .await?;
        let with_terminal = |p: Problem| p.terminal(&terminal_id);
        let body = read_body(&parts.headers, body, state.limits.body_timeout)
            .await
            .map_err(with_terminal)?;
        auth.check_body(hash_body(&body).await?)
            .map_err(|e| with_terminal(Problem::new(401, e.code(), e.to_string())))?;
        let body = if body.is_empty() || !parts.headers.contains_key(header::CONTENT_ENCODING) {
            decode_body(&parts.headers, body).map_err(with_terminal)?
        } else {
            let headers = parts.headers.clone();
            tokio::task::spawn_blocking(move || decode_body(&headers, body))
                .await
                .map_err(|e| Problem::internal(format!("inflating: {e}")))?
                .map_err(with_terminal)?
        };
        Ok(Self {
            terminal_id,
            terminal,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }
}
