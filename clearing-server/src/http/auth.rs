//! Request authentication (`docs/api/README.md`, "Authentication"): the body is read under its limits,
//! the signature verified for the path's terminal with the nonce remembered in the database, and only
//! then is a gzip body inflated. [`Authenticated`] is the first thing every terminal handler takes.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, Method, Uri, header};
use redeemd_contract::request::{self, DEFAULT_SKEW_MS, ParsedAuth, ReceivedHeaders};

use super::AppState;
use super::problem::Problem;
use crate::storage::{self, Isolation, terminals};

/// Largest request body read, in bytes (as sent, compressed or not).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Largest request body after inflating a `Content-Encoding: gzip` body.
pub const MAX_INFLATED_BODY_BYTES: usize = 32 << 20;
/// Expired nonces are pruned at most this often.
const NONCE_PRUNE_EVERY_MS: i64 = 30_000;

/// Reads the body up to [`MAX_BODY_BYTES`]; a declared or actual larger body is `body_too_large`, one
/// not received within `body_timeout` (a client trickling bytes, or stalled) is `request_timeout`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    body_timeout: std::time::Duration,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            413,
            "body_too_large",
            format!("request body above {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(read) => read.map_err(|_| too_large()),
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

/// Authenticates a request for `path_terminal` (`docs/api/README.md`, "Authentication").
async fn authenticate(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    path_terminal: &str,
) -> Result<storage::Terminal, Problem> {
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
    // Hashed before the database thread takes its lock: a body of up to 8 MiB takes milliseconds,
    // and anyone naming an enrolled terminal could otherwise stall every terminal's requests with it.
    let body_hash = tokio::task::spawn_blocking(move || request::body_sha256(&body))
        .await
        .map_err(|e| Problem::internal(format!("hashing the body: {e}")))?;
    let clock = state.clock.clone();
    let pruned = state.nonces_pruned_ms.clone();
    // One trip to the database thread: the terminal's keys, then the checks in the documented order;
    // the nonce is remembered (in the database: across restarts and server processes) only when
    // everything else passed. Read committed: the nonce's key alone decides, as in any process.
    state
        .with_db(move |db, vault| {
            db.transaction(Isolation::ReadCommitted, |tx| {
                let terminal = storage::terminal(tx, vault, &auth.terminal_id)
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
                let last = pruned.load(std::sync::atomic::Ordering::Relaxed);
                if now.saturating_sub(last) >= NONCE_PRUNE_EVERY_MS {
                    terminals::prune_nonces(tx, now)
                        .map_err(|e| Problem::internal(format!("nonces: {e}")))?;
                    pruned.store(now, std::sync::atomic::Ordering::Relaxed);
                }
                let mut nonces = terminals::TxNonces::new(tx);
                let verified = auth.verify(
                    &terminal.keys.request,
                    &method,
                    &path_and_query,
                    body_hash,
                    now,
                    DEFAULT_SKEW_MS,
                    &mut nonces,
                );
                if let Some(e) = nonces.error {
                    // A conflict is retried by the transaction; anything else is the server's fault.
                    return Err(if e.is_conflict() {
                        Problem::from(e)
                    } else {
                        Problem::internal(format!("nonces: {e}"))
                    });
                }
                verified.map_err(|e| {
                    let mut p =
                        Problem::new(401, e.code(), e.to_string()).terminal(&auth.terminal_id);
                    if e.code() == "clock_skew" {
                        p.server_time_ms = Some(now);
                    }
                    p
                })?;
                Ok(terminal)
            })
        })
        .await
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
        return Err(Problem::new(
            413,
            "body_too_large",
            format!("request body inflates to more than {MAX_INFLATED_BODY_BYTES} bytes"),
        ));
    }
    Ok(Bytes::from(out))
}

/// A request whose body was read (under the limit) and whose signature verified for the path's
/// terminal: the first thing every handler takes.
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
        let body = read_body(&parts.headers, body, state.limits.body_timeout).await?;
        let terminal = authenticate(
            state,
            &parts.method,
            &parts.uri,
            &parts.headers,
            body.clone(),
            &terminal_id,
        )
        .await?;
        let headers = parts.headers.clone();
        let body = tokio::task::spawn_blocking(move || decode_body(&headers, body))
            .await
            .map_err(|e| Problem::internal(format!("inflating: {e}")))?
            .map_err(|p| p.terminal(&terminal_id))?;
        Ok(Self {
            terminal_id,
            terminal,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }
}
