//! The terminal API's handlers (`docs/api/README.md`): each parses its request, runs one database
//! operation of [`crate::storage`] on a blocking thread and writes the answer.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use redeemd_contract::keys::Tag;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Authenticated;
use super::caller::require_json;
use super::encoding::{self, Encoding};
use super::problem::Problem;
use crate::core::close;
use crate::storage::{self, UploadRecord, bundle, cards};

/// Most records in one upload (more: `413 body_too_large`).
pub const MAX_RECORDS: usize = 5000;
/// Most item lines in one batch close (more: `413 body_too_large`, as for records).
pub const MAX_CLOSE_ITEMS: usize = 10_000;
/// The API's integers are int64: a seq or count above this is outside the schema.
const INT64_MAX: u64 = i64::MAX as u64;
/// Most entries in one deny-list answer (the terminal asks again from the last one it applied).
pub const MAX_DENY_ENTRIES: usize = 10_000;
/// Bundle bytes per chunk sent to the response body, and chunks buffered between producer and socket.
const STREAM_CHUNK: usize = 64 * 1024;
const STREAM_CHUNKS_IN_FLIGHT: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
pub struct HeadBody {
    pub terminal_id: String,
    pub acknowledged_seq: u64,
    pub acknowledged_mac: Option<String>,
}

pub(super) async fn journal_head(
    State(state): State<AppState>,
    Authenticated { terminal_id, .. }: Authenticated,
) -> Result<Response, Problem> {
    let id = terminal_id.clone();
    let (seq, mac) = state
        .with_db(move |db, _| db.read(|tx| storage::head(tx, &id)).map_err(Problem::from))
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
    if up.from_seq > INT64_MAX {
        return Err(bad(format!(
            "from_seq {} is above 2^63 - 1 (int64)",
            up.from_seq
        )));
    }
    // Whether the seqs continue from `from_seq` is the storage's to judge: its answer carries the
    // head (`sequence_gap` with `acknowledged_seq`).
    let mut out = Vec::with_capacity(up.records.len());
    for (i, item) in up.records.into_iter().enumerate() {
        if item.seq == 0 || item.seq > INT64_MAX {
            return Err(bad(format!(
                "records[{i}].seq {} is outside 1..=2^63 - 1 (int64)",
                item.seq
            )));
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

pub(super) async fn journal_upload(
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
        .with_db(move |db, vault| {
            let batch = storage::journal::Batch {
                terminal_id: &id,
                merchant_id: &terminal.merchant_id,
                keys: &terminal.keys,
                from_seq,
                records: &records,
                now_ms: now,
            };
            storage::store_batch(db, vault, &batch)
        })
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

pub(super) async fn batch_close(
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
    if close.items.len() > MAX_CLOSE_ITEMS {
        return Err(Problem::new(
            413,
            "body_too_large",
            format!("{} items, at most {MAX_CLOSE_ITEMS}", close.items.len()),
        )
        .terminal(&terminal_id));
    }
    let id = terminal_id.clone();
    let result = state
        .with_db(move |db, _| storage::batch_close(db, &id, &close))
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

fn accept_encoding(headers: &HeaderMap) -> Encoding {
    Encoding::negotiate(
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
type Decision = Result<bundle::Decision, Problem>;

/// Runs on a blocking thread: decides (keeping the version fresh), reports the decision, then streams the bundle. A
/// failure after the decision ends the body with an error, so the client sees a cut-short bundle (which
/// the terminal refuses: the manifest is the last frame).
fn produce_bundle(
    db: &storage::Db,
    vault: &crate::vault::Vault,
    cache: &bundle::CardCache,
    req: bundle::BundleRequest,
    encoding: Encoding,
    decided: tokio::sync::oneshot::Sender<Decision>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
) {
    let terminal = req.keys.terminal_id.clone();
    let fail = |e: String| Problem::internal(format!("entitlements for {terminal}: {e}"));
    let mut decided = Some(decided);
    let sink = ChunkSink {
        tx: tx.clone(),
        buf: Vec::with_capacity(STREAM_CHUNK + 4096),
    };
    let result = (|| -> Result<(), bundle::BundleError> {
        let mut out = encoding::Compressor::new(encoding, sink)?;
        let written = bundle::produce(
            db,
            vault,
            cache,
            &req,
            |d| decided.take().is_some_and(|s| s.send(Ok(d)).is_ok()),
            &mut out,
        )?;
        if written.is_some() {
            std::io::Write::flush(&mut out.finish()?)?;
        }
        Ok(())
    })();
    match (result, decided) {
        (Ok(()), _) => {}
        // Failed before deciding: the handler answers the problem.
        (Err(e), Some(decided)) => {
            let _ = decided.send(Err(fail(e.to_string())));
        }
        (Err(bundle::BundleError::Write(e)), None)
            if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        (Err(e), None) => {
            eprintln!("clearing-server: entitlements for {terminal}: stream aborted: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    }
}

pub(super) async fn entitlements(
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
    let req = bundle::BundleRequest {
        keys: terminal.keys,
        merchant_id: terminal.merchant_id,
        since,
        now_ms: (state.clock)(),
        cache: state.cache,
    };
    let (decided_tx, decided_rx) = tokio::sync::oneshot::channel();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(STREAM_CHUNKS_IN_FLIGHT);
    let (db, vault, cache) = (state.db(), state.vault(), state.cards.clone());
    tokio::task::spawn_blocking(move || {
        produce_bundle(&db, &vault, &cache, req, encoding, decided_tx, tx)
    });
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

pub(super) async fn deny_list(
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
        .with_db(move |db, vault| {
            db.read(|tx| {
                cards::deny_entries(tx, vault, &keys, &merchant_id, since, MAX_DENY_ENTRIES)
            })
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
    let bytes = tokio::task::spawn_blocking(move || encoding::compress(encoding, &json))
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
