//! Reference clearing server for redeemd terminals (`docs/api/openapi.yaml`, `docs/api/README.md`).
//!
//! * [`db`] — SQLite schema and migrations; enrolled terminals, journals stored by (terminal, seq), the
//!   exceptions list, and the mapping of uploaded records to cards.
//! * [`cards`] — merchants, cards, packages, entitlement versions, card references, deny lists (the admin
//!   commands' operations).
//! * [`bundle`] — signed snapshots and deltas, streamed; response compression.
//! * [`clearing`] — merchant and member statements, exceptions (pure, over decoded records);
//!   [`statements`] gathers their inputs from the database for `admin statement` / `admin exceptions`.
//! * [`close`] — end-of-day totals; [`problem`] — `application/problem+json` answers with stable codes.
//! * this module — the HTTP layer (axum): request authentication with `redeemd_contract::request`, body
//!   limits, and the handlers. Database work runs on blocking threads, one connection behind a mutex;
//!   a snapshot is produced on its own connection and thread and streamed through a bounded channel.
//!
//! Endpoints: `GET entitlements`, `GET deny-list`, `GET journal/head`, `POST journal`, `POST batch-close`.
//! Clearing statements and exceptions are computed by [`clearing`] (not served over HTTP).
#![forbid(unsafe_code)]

pub mod bundle;
pub mod cards;
pub mod clearing;
pub use redeemd_contract::close;
pub mod db;
pub mod nonces;
pub mod problem;
pub mod statements;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use redeemd_contract::keys::Tag;
use redeemd_contract::request::{self, DEFAULT_SKEW_MS, ParsedAuth, ReceivedHeaders};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::db::UploadRecord;
use crate::problem::Problem;

/// Largest request body read, in bytes (as sent, compressed or not).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Largest request body after inflating a `Content-Encoding: gzip` body.
pub const MAX_INFLATED_BODY_BYTES: usize = 32 << 20;
/// Expired nonces are pruned at most this often.
const NONCE_PRUNE_EVERY_MS: i64 = 30_000;
/// Most records in one upload.
pub const MAX_RECORDS: usize = 5000;
/// Most entries in one deny-list answer (the terminal asks again from the last one it applied).
pub const MAX_DENY_ENTRIES: usize = 10_000;
/// Bundle bytes per chunk sent to the response body, and chunks buffered between producer and socket.
const STREAM_CHUNK: usize = 64 * 1024;
const STREAM_CHUNKS_IN_FLIGHT: usize = 8;

/// What one client may hold of the server (`docs/api/README.md`, "Size limits"): connections at once,
/// and how long a request's head and body may take to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time for a request's head to arrive, counted from the connection's start or the end of the
    /// previous response: a slow head, or an idle keep-alive connection, is closed after it.
    pub header_timeout: std::time::Duration,
    /// Time for a request's whole body to arrive (`408 request_timeout` after it).
    pub body_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: std::time::Duration::from_secs(30),
            body_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// Serves [`router`]`(state)` on `listener` until `shutdown` completes, then lets the open
/// connections finish. Unlike `axum::serve`, it enforces [`AppState::limits`]: at most
/// `max_connections` at once (the rest wait in the listen backlog, so a flood of idle sockets cannot
/// take every file descriptor), and a request head not received within `header_timeout` closes the
/// connection (slow loris; also an idle keep-alive connection). The body timeout is enforced where
/// the body is read, before authentication.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    let app = router(state);
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(tokio::sync::Semaphore::new(max as usize));
    let (closing, _) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match stream {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: try again
                // shortly rather than spin or stop serving.
                eprintln!("clearing-server: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // Errors are the client's (reset, timed out, malformed head): nothing to do but close.
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    drop(closing);
    // Every connection gives its slot back when it ends.
    let _all = slots.acquire_many(max).await;
    Ok(())
}

/// The server clock, unix milliseconds (injectable for tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

#[derive(Clone)]
pub struct AppState {
    conn: Arc<Mutex<Connection>>,
    /// The database file, for the snapshot producers' own connections.
    db_path: Option<std::path::PathBuf>,
    /// When expired nonces were last pruned (server clock).
    nonces_pruned_ms: Arc<std::sync::atomic::AtomicI64>,
    clock: Clock,
    /// How long the bundles it signs are valid, and when a quiet platform renews them
    /// (`serve --cache-validity-hours`; [`bundle::CachePolicy::default`] otherwise).
    pub cache: bundle::CachePolicy,
    /// Connection and request limits ([`serve`]; [`Limits::default`] otherwise).
    pub limits: Limits,
}

impl AppState {
    pub fn new(conn: Connection, clock: Clock) -> Self {
        let db_path = conn
            .path()
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from);
        Self {
            conn: Arc::new(Mutex::new(conn)),
            db_path,
            nonces_pruned_ms: Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
            clock,
            cache: bundle::CachePolicy::default(),
            limits: Limits::default(),
        }
    }

    /// The same state signing bundles under `cache`.
    pub fn with_cache_policy(self, cache: bundle::CachePolicy) -> Self {
        Self { cache, ..self }
    }

    /// The same state served under `limits`.
    pub fn with_limits(self, limits: Limits) -> Self {
        Self { limits, ..self }
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Problem> + Send + 'static,
    ) -> Result<T, Problem> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A request that panicked while holding the lock answered 500 already; its transaction
            // rolled back as it unwound, so the connection is sound. Refusing it from then on would
            // turn one bad request into an outage for every terminal until a restart.
            let mut c = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(|e| Problem::internal(format!("database task: {e}")))?
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/terminals/{terminal_id}/entitlements",
            get(entitlements),
        )
        .route("/v1/terminals/{terminal_id}/deny-list", get(deny_list))
        .route(
            "/v1/terminals/{terminal_id}/journal/head",
            get(journal_head),
        )
        .route("/v1/terminals/{terminal_id}/journal", post(journal_upload))
        .route("/v1/terminals/{terminal_id}/batch-close", post(batch_close))
        .fallback(|| async { Problem::new(404, "not_found", "no such resource".into()) })
        .method_not_allowed_fallback(|| async {
            Problem::new(405, "method_not_allowed", "method not allowed here".into())
        })
        .with_state(state)
}

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
) -> Result<db::Terminal, Problem> {
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
    // the nonce is remembered (in SQLite, surviving restarts) only when everything else passed.
    state
        .with_db(move |c| {
            let terminal = db::terminal(c, &auth.terminal_id)
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
                nonces::prune(c, now).map_err(|e| Problem::internal(format!("nonces: {e}")))?;
                pruned.store(now, std::sync::atomic::Ordering::Relaxed);
            }
            let mut nonces = nonces::SqliteNonces::new(c);
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
                return Err(Problem::internal(format!("nonces: {e}")));
            }
            verified.map_err(|e| {
                let mut p = Problem::new(401, e.code(), e.to_string()).terminal(&auth.terminal_id);
                if e.code() == "clock_skew" {
                    p.server_time_ms = Some(now);
                }
                p
            })?;
            Ok(terminal)
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
    pub terminal: db::Terminal,
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

#[derive(Debug, Serialize, Deserialize)]
pub struct HeadBody {
    pub terminal_id: String,
    pub acknowledged_seq: u64,
    pub acknowledged_mac: Option<String>,
}

async fn journal_head(
    State(state): State<AppState>,
    Authenticated { terminal_id, .. }: Authenticated,
) -> Result<Response, Problem> {
    let id = terminal_id.clone();
    let (seq, mac) = state
        .with_db(move |c| db::head(c, &id).map_err(|e| Problem::internal(e.to_string())))
        .await?;
    Ok(axum::Json(HeadBody {
        terminal_id,
        acknowledged_seq: seq,
        acknowledged_mac: mac.map(hex::encode),
    })
    .into_response())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadBody {
    pub from_seq: u64,
    pub records: Vec<UploadItem>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadItem {
    pub seq: u64,
    /// Standard base64 of the canonical record bytes.
    pub record: String,
    /// Lowercase hex MAC.
    pub mac: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AckBody {
    pub acknowledged_seq: u64,
    pub acknowledged_mac: String,
    pub stored: u64,
    pub duplicates: u64,
}

fn parse_upload(body: &[u8]) -> Result<(u64, Vec<UploadRecord>), Problem> {
    let bad = |detail: String| Problem::new(400, "malformed_request", detail);
    let up: UploadBody = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if up.records.len() > MAX_RECORDS {
        return Err(Problem::new(
            413,
            "body_too_large",
            format!("{} records, at most {MAX_RECORDS}", up.records.len()),
        ));
    }
    if up.from_seq == 0 || up.records.is_empty() {
        return Err(bad("from_seq must be ≥ 1 and records not empty".into()));
    }
    let mut out = Vec::with_capacity(up.records.len());
    for (i, item) in up.records.into_iter().enumerate() {
        let want = up.from_seq.saturating_add(i as u64);
        if item.seq != want {
            return Err(Problem::new(
                409,
                "sequence_gap",
                format!("record {i} has seq {}, expected {want}", item.seq),
            ));
        }
        let record = base64::engine::general_purpose::STANDARD
            .decode(&item.record)
            .map_err(|e| bad(format!("record seq {}: not base64: {e}", item.seq)))?;
        let mut mac: Tag = [0; 32];
        if item.mac.len() != 64
            || !item
                .mac
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            || hex::decode_to_slice(&item.mac, &mut mac).is_err()
        {
            return Err(bad(format!(
                "record seq {}: mac is not 64 lowercase hex digits",
                item.seq
            )));
        }
        out.push(UploadRecord {
            seq: item.seq,
            record,
            mac,
        });
    }
    Ok((up.from_seq, out))
}

async fn journal_upload(
    State(state): State<AppState>,
    Authenticated {
        terminal_id,
        terminal,
        headers,
        body,
        ..
    }: Authenticated,
) -> Result<Response, Problem> {
    require_json(&headers)?;
    let (from_seq, records) = parse_upload(&body).map_err(|p| p.terminal(&terminal_id))?;
    let now = (state.clock)();
    let id = terminal_id.clone();
    let ack = state
        .with_db(move |c| db::store_batch(c, &id, &terminal.keys, from_seq, &records, now))
        .await
        .map_err(|p| p.terminal(&terminal_id))?;
    Ok(axum::Json(AckBody {
        acknowledged_seq: ack.acknowledged_seq,
        acknowledged_mac: hex::encode(ack.acknowledged_mac),
        stored: ack.stored,
        duplicates: ack.duplicates,
    })
    .into_response())
}

fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if is_json {
        Ok(())
    } else {
        Err(Problem::new(
            415,
            "unsupported_media_type",
            "request bodies are application/json".into(),
        ))
    }
}

async fn batch_close(
    State(state): State<AppState>,
    Authenticated {
        terminal_id,
        headers,
        body,
        ..
    }: Authenticated,
) -> Result<Response, Problem> {
    require_json(&headers)?;
    let close: close::BatchClose = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(400, "malformed_request", e.to_string()).terminal(&terminal_id)
    })?;
    if close.items.len() > 10_000 {
        return Err(Problem::new(
            413,
            "body_too_large",
            "more than 10,000 items".into(),
        ));
    }
    let id = terminal_id.clone();
    let result = state
        .with_db(move |c| db::batch_close(c, &id, &close))
        .await
        .map_err(|p| p.terminal(&terminal_id))?;
    Ok(axum::Json(result).into_response())
}

/// A required unsigned decimal query parameter (at most `i64::MAX`, the API's int64).
fn query_u64(uri: &Uri, name: &str) -> Result<u64, Problem> {
    let bad = |why: &str| Problem::new(400, "bad_query", format!("query parameter {name}: {why}"));
    let value = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .ok_or_else(|| bad("missing"))?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a non-negative decimal integer"));
    }
    value
        .parse::<i64>()
        .ok()
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| bad("above 9223372036854775807"))
}

fn accept_encoding(headers: &HeaderMap) -> bundle::Encoding {
    bundle::Encoding::negotiate(
        headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    )
}

type Chunk = Result<Bytes, std::io::Error>;

/// The producer's end of the response body: collects bytes into [`STREAM_CHUNK`]-sized chunks and
/// hands each to the bounded channel (blocking while the socket is slower than the database).
struct ChunkSink {
    tx: tokio::sync::mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_CHUNK + 4096));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// What the producer decided before streaming: `None` for `204`.
type Decision = Result<Option<(redeemd_contract::BundleKind, u64)>, Problem>;

/// Runs on a blocking thread: prepares, plans, reports the decision, then streams the bundle. A failure
/// after the decision ends the body with an error, so the client sees a cut-short bundle (which the
/// terminal refuses: the manifest is the last frame).
fn produce_bundle(
    path: std::path::PathBuf,
    req: bundle::BundleRequest,
    encoding: bundle::Encoding,
    decided: tokio::sync::oneshot::Sender<Decision>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
) {
    let terminal = req.keys.terminal_id.clone();
    let fail = |e: String| Problem::internal(format!("entitlements for {terminal}: {e}"));
    let mut conn = match db::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            let _ = decided.send(Err(fail(e.to_string())));
            return;
        }
    };
    if let Err(e) = bundle::prepare(&mut conn, &req) {
        let _ = decided.send(Err(fail(e.to_string())));
        return;
    }
    let planned = match bundle::plan(&mut conn, req) {
        Ok(Some(p)) => p,
        Ok(None) => {
            let _ = decided.send(Ok(None));
            return;
        }
        Err(e) => {
            let _ = decided.send(Err(fail(e.to_string())));
            return;
        }
    };
    if decided
        .send(Ok(Some((planned.kind, planned.version))))
        .is_err()
    {
        return;
    }
    let sink = ChunkSink {
        tx: tx.clone(),
        buf: Vec::with_capacity(STREAM_CHUNK + 4096),
    };
    let result = (|| -> Result<(), bundle::BundleError> {
        let mut out = bundle::Compressor::new(encoding, sink)?;
        planned.write(&mut out)?;
        std::io::Write::flush(&mut out.finish()?)?;
        Ok(())
    })();
    match result {
        Ok(()) => {}
        Err(bundle::BundleError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("clearing-server: entitlements for {terminal}: stream aborted: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    }
}

async fn entitlements(
    State(state): State<AppState>,
    Authenticated {
        terminal_id,
        terminal,
        uri,
        headers,
        ..
    }: Authenticated,
) -> Result<Response, Problem> {
    let since = query_u64(&uri, "since").map_err(|p| p.terminal(&terminal_id))?;
    let encoding = accept_encoding(&headers);
    let path = state
        .db_path
        .clone()
        .ok_or_else(|| Problem::internal("entitlements need a database file".into()))?;
    let req = bundle::BundleRequest {
        keys: terminal.keys,
        merchant_id: terminal.merchant_id,
        since,
        now_ms: (state.clock)(),
        cache: state.cache,
    };
    let (decided_tx, decided_rx) = tokio::sync::oneshot::channel();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(STREAM_CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || produce_bundle(path, req, encoding, decided_tx, tx));
    let decision = decided_rx
        .await
        .map_err(|_| Problem::internal("entitlements producer ended without an answer".into()))?
        .map_err(|p| p.terminal(&terminal_id))?;
    let mut builder = Response::builder().header(header::VARY, "accept-encoding");
    let Some((kind, version)) = decision else {
        return builder
            .status(axum::http::StatusCode::NO_CONTENT)
            .body(Body::empty())
            .map_err(|e| Problem::internal(e.to_string()));
    };
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    builder = builder
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            "X-Redeemd-Bundle-Kind",
            match kind {
                redeemd_contract::BundleKind::Full => "full",
                redeemd_contract::BundleKind::Delta => "delta",
            },
        )
        .header("X-Redeemd-Bundle-Version", version.to_string());
    if let Some(coding) = encoding.header() {
        builder = builder.header(header::CONTENT_ENCODING, coding);
    }
    builder
        .body(Body::from_stream(stream))
        .map_err(|e| Problem::internal(e.to_string()))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DenyListBody {
    pub merchant_id: String,
    pub version: u64,
    pub entries: Vec<DenyEntryBody>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DenyEntryBody {
    pub version: u64,
    pub card_ref: String,
    pub status: String,
    pub entry_version: u64,
    pub reported_at_ms: i64,
    pub mac: String,
}

async fn deny_list(
    State(state): State<AppState>,
    Authenticated {
        terminal_id,
        terminal,
        uri,
        headers,
        ..
    }: Authenticated,
) -> Result<Response, Problem> {
    let since = query_u64(&uri, "since").map_err(|p| p.terminal(&terminal_id))?;
    let encoding = accept_encoding(&headers);
    let merchant_id = terminal.merchant_id.clone();
    let keys = terminal.keys.clone();
    let (version, entries) = state
        .with_db(move |c| {
            cards::deny_entries(c, &keys, &merchant_id, since, MAX_DENY_ENTRIES)
                .map_err(|e| Problem::internal(e.to_string()))
        })
        .await
        .map_err(|p| p.terminal(&terminal_id))?;
    let body = DenyListBody {
        merchant_id: terminal.merchant_id.clone(),
        version,
        entries: entries
            .iter()
            .map(|e| DenyEntryBody {
                version: e.version,
                card_ref: e.card_ref.to_hex(),
                status: e.status.as_str().to_owned(),
                entry_version: e.entry_version,
                reported_at_ms: e.reported_at_ms,
                mac: hex::encode(e.mac(&terminal.keys.cache, &terminal.merchant_id)),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&body).map_err(|e| Problem::internal(e.to_string()))?;
    let bytes = tokio::task::spawn_blocking(move || bundle::compress(encoding, &json))
        .await
        .map_err(|e| Problem::internal(e.to_string()))?
        .map_err(|e| Problem::internal(e.to_string()))?;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::VARY, "accept-encoding");
    if let Some(coding) = encoding.header() {
        builder = builder.header(header::CONTENT_ENCODING, coding);
    }
    builder
        .body(Body::from(bytes))
        .map_err(|e| Problem::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_request_that_panics_on_the_database_thread_does_not_take_the_server_down() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(&dir.path().join("c.sqlite3")).unwrap();
        let state = AppState::new(conn, Arc::new(|| 0));
        let r: Result<(), Problem> = state
            .with_db(|c| {
                let tx = c
                    .transaction()
                    .map_err(|e| Problem::internal(e.to_string()))?;
                tx.execute(
                    "INSERT INTO merchant (id, name, commission_bps) VALUES ('M-9', 'x', 0)",
                    [],
                )
                .unwrap();
                panic!("a bug in a handler");
            })
            .await;
        assert_eq!(r.unwrap_err().status, 500);
        // The next request is served, and the panicked one's write was rolled back.
        let merchants: i64 = state
            .with_db(|c| {
                c.query_row("SELECT count(*) FROM merchant WHERE id = 'M-9'", [], |r| {
                    r.get(0)
                })
                .map_err(|e| Problem::internal(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(merchants, 0);
    }
}
