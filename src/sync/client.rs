//! The HTTP driver of sync: reqwest with rustls (no OpenSSL), every request signed with
//! `redeemd_contract::request`, timeouts on every phase, bundles decompressed while streaming.
//!
//! Thin on purpose: what to send and how to judge an answer is decided by [`super::plan`] and read by
//! [`super::wire`]; this module only moves bytes and names what failed (`journal head: server answered
//! 500 internal: …`, `entitlements: cannot reach the server: operation timed out`).
//!
//! * **Signing.** Each request (retries included) gets a fresh 16-byte nonce from `getrandom`, a
//!   timestamp of the wall clock plus the signing offset, and the HMAC of `docs/api/README.md`. A
//!   `401 clock_skew` answer carries the server's clock: the offset becomes `server_time_ms − own clock`
//!   and the request is signed again and resent once. The offset is for signing only; journal records
//!   keep the shop's own clock.
//! * **Timeouts.** Connecting ([`ClientOptions::connect_timeout`]); every read of a body may stall at
//!   most [`ClientOptions::request_timeout`]; a JSON request must finish within `request_timeout`; a
//!   bundle download within [`ClientOptions::bundle_timeout`] (a deadline for the whole body).
//! * **Compression.** `Accept-Encoding: zstd, gzip`; every answer is decoded chunk by chunk as it
//!   arrives ([`super::decode`]), bounded by [`ClientOptions::max_bundle_bytes`] for bundles and
//!   [`MAX_JSON_BYTES`] for JSON (a decompression bomb ends there, not in memory: decoded bundle bytes go
//!   straight into the verifier). Request bodies of [`GZIP_BODY_FROM_BYTES`] or more (uploads) are
//!   sent gzip-compressed, signed as sent.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redeemd_contract::keys::MacKey;
use redeemd_contract::request::{NONCE_BYTES, SignedHeaders};
use thiserror::Error;

use super::decode::ContentDecoder;
use super::plan::{AnswerError, Divergence, Problem, ServerHead};
use super::wire::{self, ProblemExtras, WireError};
use crate::store::owner::wall_clock_ms;
use crate::store::{DenyList, StoreError};

/// Largest JSON answer read (heads, acks, deny lists, problems).
pub const MAX_JSON_BYTES: usize = 16 << 20;
/// Request bodies at least this large are sent gzip-compressed (`Content-Encoding: gzip`, which the API
/// accepts on every `POST`): an upload of 1,000 records is ~370 KB of JSON that the fast gzip level
/// shrinks to ~105 KB (measured on records like the wire tests'), which matters on a shop's uplink.
/// Smaller bodies (a day's close) go as they are.
pub const GZIP_BODY_FROM_BYTES: usize = 1024;

/// Timeouts and limits of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Whole JSON request, and the longest stall while reading any body.
    pub request_timeout: Duration,
    /// Whole bundle download (the body-read deadline).
    pub bundle_timeout: Duration,
    /// Decoded bytes of one bundle at most.
    pub max_bundle_bytes: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            bundle_timeout: Duration::from_secs(900),
            max_bundle_bytes: 4 << 30,
        }
    }
}

/// Why a sync step failed. Each names the step (`what`) and the reason.
#[derive(Debug, Error)]
pub enum SyncError {
    #[error("{what}: cannot reach the server: {detail}")]
    Transport { what: &'static str, detail: String },
    #[error("{what}: server answered {status} {code}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Server {
        what: &'static str,
        status: u16,
        code: String,
        detail: Option<String>,
        retry_after_ms: Option<u64>,
        /// A person must look (wrong key, revoked terminal, a refused record), not just time.
        needs_operator: bool,
    },
    #[error("{what}: unusable answer: {source}")]
    Answer {
        what: &'static str,
        #[source]
        source: WireError,
    },
    #[error("{what}: answer body of more than {limit} bytes refused")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("journal: {0}")]
    Ack(#[from] AnswerError),
    #[error("journal upload halted: {0}")]
    Diverged(Divergence),
    #[error("{0}; the records from that seq on wait for an operator (`redeemd journal verify`)")]
    RecordRefused(String),
    #[error("deny list: {0}")]
    Deny(StoreError),
    #[error("entitlements: {0}")]
    Install(StoreError),
    #[error("store: {0}")]
    Store(StoreError),
    #[error("no randomness for a request nonce: {0}")]
    Random(String),
    #[error("client: {0}")]
    Setup(String),
}

impl SyncError {
    /// The server could not be reached or is overloaded: the next steps of this pass would fail too.
    pub fn server_unreachable(&self) -> bool {
        match self {
            SyncError::Transport { .. } => true,
            SyncError::Server { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            SyncError::Server { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

/// A signed-request client for one terminal.
pub struct Client {
    http: reqwest::Client,
    base: String,
    terminal_id: String,
    request_key: MacKey,
    options: ClientOptions,
    /// Added to the wall clock when signing (see the module docs).
    skew_offset_ms: AtomicI64,
}

/// What the server answered to `POST journal`.
#[derive(Debug)]
pub enum UploadAnswer {
    Acknowledged(ServerHead),
    Refused(Problem, ProblemExtras),
}

/// An answer's body, decoded as it arrives.
pub struct BodyStream {
    what: &'static str,
    response: reqwest::Response,
    decoder: ContentDecoder,
    limit: u64,
    done: bool,
}

/// A streaming bundle answer.
pub type BundleStream = BodyStream;

impl BodyStream {
    fn new(
        what: &'static str,
        response: reqwest::Response,
        limit: u64,
    ) -> Result<BodyStream, SyncError> {
        let encoding = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
        let decoder = ContentDecoder::new(encoding.as_deref(), limit)
            .map_err(|e| decode_error(what, e, limit))?;
        Ok(BodyStream {
            what,
            response,
            decoder,
            limit,
            done: false,
        })
    }

    /// The next decoded bytes (possibly empty), `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, SyncError> {
        if self.done {
            return Ok(None);
        }
        let (what, limit) = (self.what, self.limit);
        let mut out = Vec::new();
        match self
            .response
            .chunk()
            .await
            .map_err(|e| transport(what, &e))?
        {
            Some(c) => self
                .decoder
                .feed(&c, &mut out)
                .map_err(|e| decode_error(what, e, limit))?,
            None => {
                self.done = true;
                self.decoder
                    .finish(&mut out)
                    .map_err(|e| decode_error(what, e, limit))?;
                if out.is_empty() {
                    return Ok(None);
                }
            }
        }
        Ok(Some(out))
    }
}

fn decode_error(what: &'static str, e: super::decode::DecodeError, limit: u64) -> SyncError {
    match e {
        super::decode::DecodeError::TooLarge { .. } => SyncError::TooLarge { what, limit },
        e => SyncError::Transport {
            what,
            detail: format!("body undecodable: {e}"),
        },
    }
}

fn transport(what: &'static str, e: &reqwest::Error) -> SyncError {
    // reqwest's own text is terse ("error sending request"): add the causes, which say why.
    let mut detail = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else if e.is_body() || e.is_decode() {
        "body cut short or undecodable".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = s.source();
    }
    SyncError::Transport { what, detail }
}

impl Client {
    /// A client for `server_url` (already validated: https, or http to loopback).
    pub fn new(
        server_url: &str,
        terminal_id: &str,
        request_key: MacKey,
        options: ClientOptions,
    ) -> Result<Client, SyncError> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.request_timeout)
            .user_agent(concat!("redeemd/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SyncError::Setup(e.to_string()))?;
        Ok(Client {
            http,
            base: server_url.trim_end_matches('/').to_owned(),
            terminal_id: terminal_id.to_owned(),
            request_key,
            options,
            skew_offset_ms: AtomicI64::new(0),
        })
    }

    pub fn options(&self) -> ClientOptions {
        self.options
    }

    /// The current signing offset (ms added to the wall clock).
    pub fn skew_offset_ms(&self) -> i64 {
        self.skew_offset_ms.load(Ordering::Relaxed)
    }

    /// `/v1/terminals/<id>/<rest>` under the server URL's own path.
    fn url(&self, rest: &str) -> Result<(reqwest::Url, String), SyncError> {
        let text = format!("{}/v1/terminals/{}/{rest}", self.base, self.terminal_id);
        let url =
            reqwest::Url::parse(&text).map_err(|e| SyncError::Setup(format!("{text}: {e}")))?;
        let mut path_and_query = url.path().to_owned();
        if let Some(q) = url.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        Ok((url, path_and_query))
    }

    fn signed(
        &self,
        method: reqwest::Method,
        url: &reqwest::Url,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder, SyncError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| SyncError::Random(e.to_string()))?;
        let timestamp = wall_clock_ms().saturating_add(self.skew_offset_ms());
        let headers = SignedHeaders::sign(
            &self.request_key,
            &self.terminal_id,
            method.as_str(),
            path_and_query,
            timestamp,
            nonce,
            body,
        );
        let mut req = self
            .http
            .request(method, url.clone())
            .header(reqwest::header::ACCEPT_ENCODING, "zstd, gzip");
        for (name, value) in headers.pairs() {
            req = req.header(name, value);
        }
        Ok(req)
    }

    /// Sends a signed request; on `401 clock_skew` adopts the server's clock and resends once.
    async fn send(
        &self,
        what: &'static str,
        method: reqwest::Method,
        rest: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<reqwest::Response, SyncError> {
        let (url, path_and_query) = self.url(rest)?;
        // Compressed before signing: the signature's body hash covers the bytes as sent, so the server
        // authenticates before it inflates anything (`docs/api/README.md`, "Compression").
        let gzipped = body.len() >= GZIP_BODY_FROM_BYTES;
        let body = if gzipped { gzip(&body)? } else { body };
        for attempt in 0..2 {
            let mut req = self
                .signed(method.clone(), &url, &path_and_query, &body)?
                .timeout(timeout);
            if !body.is_empty() {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            if gzipped {
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
            let resp = req.send().await.map_err(|e| transport(what, &e))?;
            if resp.status() != reqwest::StatusCode::UNAUTHORIZED || attempt > 0 {
                return Ok(resp);
            }
            let retry_after = retry_after_of(&resp);
            let text = read_limited(what, resp, MAX_JSON_BYTES).await?;
            let problem = wire::parse_problem(401, retry_after, &text);
            let extras = wire::problem_extras(&text);
            match (problem.code.as_str(), extras.server_time_ms) {
                // A time before 1970 would sign negative timestamps, which no server accepts (nor
                // answers with its clock): sync would stay refused after the server came right.
                ("clock_skew", Some(server_ms)) if server_ms >= 0 => {
                    let offset = server_ms.saturating_sub(wall_clock_ms());
                    tracing::warn!(
                        offset_ms = offset,
                        "server reports clock skew: signing with its clock from now on"
                    );
                    self.skew_offset_ms.store(offset, Ordering::Relaxed);
                }
                _ => return Err(server_error(what, &problem, extras)),
            }
        }
        Err(SyncError::Setup("unreachable retry loop".into()))
    }

    /// `GET journal/head`.
    pub async fn journal_head(&self) -> Result<ServerHead, SyncError> {
        const WHAT: &str = "journal head";
        let resp = self
            .send(
                WHAT,
                reqwest::Method::GET,
                "journal/head",
                Vec::new(),
                self.options.request_timeout,
            )
            .await?;
        let body = self.expect_ok(WHAT, resp).await?;
        wire::parse_head(&self.terminal_id, &body)
            .map_err(|source| SyncError::Answer { what: WHAT, source })
    }

    /// `POST journal` with a body from [`wire::upload_body`].
    pub async fn upload(&self, body: Vec<u8>) -> Result<UploadAnswer, SyncError> {
        const WHAT: &str = "journal upload";
        let resp = self
            .send(
                WHAT,
                reqwest::Method::POST,
                "journal",
                body,
                self.options.request_timeout,
            )
            .await?;
        let status = resp.status().as_u16();
        let retry_after = retry_after_of(&resp);
        let text = read_limited(WHAT, resp, MAX_JSON_BYTES).await?;
        if status == 200 {
            return wire::parse_ack(&text)
                .map(UploadAnswer::Acknowledged)
                .map_err(|source| SyncError::Answer { what: WHAT, source });
        }
        Ok(UploadAnswer::Refused(
            wire::parse_problem(status, retry_after, &text),
            wire::problem_extras(&text),
        ))
    }

    /// `POST batch-close` for one business day: the platform's verdict, or the problem it answered.
    pub async fn batch_close(
        &self,
        close: &redeemd_contract::close::BatchClose,
    ) -> Result<redeemd_contract::close::BatchCloseResult, SyncError> {
        const WHAT: &str = "batch close";
        let body = serde_json::to_vec(close).map_err(|e| SyncError::Setup(e.to_string()))?;
        let resp = self
            .send(
                WHAT,
                reqwest::Method::POST,
                "batch-close",
                body,
                self.options.request_timeout,
            )
            .await?;
        let body = self.expect_ok(WHAT, resp).await?;
        wire::parse_close_answer(close, &body)
            .map_err(|source| SyncError::Answer { what: WHAT, source })
    }

    /// `POST health`: the terminal's health report (`204` when kept).
    pub async fn health(
        &self,
        report: &redeemd_contract::health::HealthReport,
    ) -> Result<(), SyncError> {
        const WHAT: &str = "health report";
        let body = serde_json::to_vec(report).map_err(|e| SyncError::Setup(e.to_string()))?;
        let resp = self
            .send(
                WHAT,
                reqwest::Method::POST,
                "health",
                body,
                self.options.request_timeout,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.problem(WHAT, resp).await)
        }
    }

    /// `GET deny-list?since=N`.
    pub async fn deny_list(&self, since: u64) -> Result<DenyList, SyncError> {
        const WHAT: &str = "deny list";
        let resp = self
            .send(
                WHAT,
                reqwest::Method::GET,
                &format!("deny-list?since={since}"),
                Vec::new(),
                self.options.request_timeout,
            )
            .await?;
        let body = self.expect_ok(WHAT, resp).await?;
        wire::parse_deny_list(&body).map_err(|source| SyncError::Answer { what: WHAT, source })
    }

    /// `GET entitlements?since=V`: `None` when `V` is current (204), else the bundle's body.
    pub async fn entitlements(&self, since: u64) -> Result<Option<BundleStream>, SyncError> {
        const WHAT: &str = "entitlements";
        let resp = self
            .send(
                WHAT,
                reqwest::Method::GET,
                &format!("entitlements?since={since}"),
                Vec::new(),
                self.options.bundle_timeout,
            )
            .await?;
        match resp.status().as_u16() {
            204 => Ok(None),
            200 => Ok(Some(BodyStream::new(
                WHAT,
                resp,
                self.options.max_bundle_bytes,
            )?)),
            _ => Err(self.problem(WHAT, resp).await),
        }
    }

    async fn expect_ok(
        &self,
        what: &'static str,
        resp: reqwest::Response,
    ) -> Result<Vec<u8>, SyncError> {
        if resp.status() == reqwest::StatusCode::OK {
            read_limited(what, resp, MAX_JSON_BYTES).await
        } else {
            Err(self.problem(what, resp).await)
        }
    }

    async fn problem(&self, what: &'static str, resp: reqwest::Response) -> SyncError {
        let status = resp.status().as_u16();
        let retry_after = retry_after_of(&resp);
        match read_limited(what, resp, 64 << 10).await {
            Ok(text) => server_error(
                what,
                &wire::parse_problem(status, retry_after, &text),
                wire::problem_extras(&text),
            ),
            // A problem whose body cannot be read is still that status.
            Err(_) => server_error(
                what,
                &wire::parse_problem(status, retry_after, b""),
                ProblemExtras::default(),
            ),
        }
    }
}

/// A request body, gzip-compressed (fast level: the uplink is the bottleneck, not the CPU, but a big
/// upload should not take a core for long either).
fn gzip(body: &[u8]) -> Result<Vec<u8>, SyncError> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::fast(),
    );
    z.write_all(body)
        .and_then(|()| z.finish())
        .map_err(|e| SyncError::Setup(format!("cannot compress a request body: {e}")))
}

/// The error for a problem answer (the planner's reading of the code decides `needs_operator`).
pub fn server_error(what: &'static str, p: &Problem, extras: ProblemExtras) -> SyncError {
    let transient = matches!(
        p.code.as_str(),
        "clock_skew" | "nonce_replayed" | "body_hash_mismatch" | "rate_limited" | "unavailable"
    ) || p.status >= 500
        || p.status == 429;
    SyncError::Server {
        what,
        status: p.status,
        code: p.code.clone(),
        detail: extras.detail,
        retry_after_ms: p.retry_after_ms,
        needs_operator: !transient,
    }
}

fn retry_after_of(resp: &reqwest::Response) -> Option<u64> {
    wire::retry_after_ms(
        resp.headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Reads a whole body, decoded, of at most `limit` decoded bytes.
async fn read_limited(
    what: &'static str,
    resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, SyncError> {
    let mut body = BodyStream::new(what, resp, limit as u64)?;
    let mut out = Vec::new();
    while let Some(chunk) = body.chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
