//! The journal endpoints over real HTTP on loopback, against a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use clearing_server::AppState;
use clearing_server::storage::{self, Db, StorageError};
use common::engines::{Engine, blocking, database, vault};
use common::{Signed, T0, chain, json_answer, upload_body};
use redeemd_contract::JournalRecord;
use redeemd_contract::keys::{Tag, TerminalKeys, TerminalSecret};
use redeemd_contract::request::SignedHeaders;
use serde_json::{Value, json};

mod common;
const SECRET: [u8; 32] = [7; 32];

struct Server {
    base: String,
    db: std::sync::Arc<Db>,
    clock: Arc<AtomicI64>,
    nonce: AtomicU8,
    keys: TerminalKeys,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(engine: Engine) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = blocking(|| {
        let db = Db::open(&database(engine, dir.path())).unwrap();
        db.write(|tx| {
            storage::enroll(tx, &vault(), "T-1", "M-1", &SECRET, T0)?;
            storage::enroll(tx, &vault(), "T-2", "M-1", &[8; 32], T0)
        })
        .unwrap();
        db
    });
    let clock = Arc::new(AtomicI64::new(T0));
    let c = clock.clone();
    let state = AppState::new(db, vault(), Arc::new(move || c.load(Ordering::SeqCst)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state_db = state.db();
    tokio::spawn(async move {
        axum::serve(listener, clearing_server::router(state))
            .await
            .unwrap()
    });
    Server {
        base,
        db: state_db,
        clock,
        nonce: AtomicU8::new(0),
        keys: TerminalSecret::from_bytes(&SECRET)
            .unwrap()
            .derive_all("T-1"),
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    async fn send_as(
        &self,
        keys: &TerminalKeys,
        method: &str,
        path: &str,
        body: Vec<u8>,
        tweak: impl FnOnce(&mut SignedHeaders),
    ) -> (u16, Value) {
        let n = self.nonce.fetch_add(1, Ordering::SeqCst);
        let mut h = SignedHeaders::sign(
            &keys.request,
            &keys.terminal_id,
            method,
            path,
            self.clock.load(Ordering::SeqCst),
            [n; 16],
            &body,
        );
        tweak(&mut h);
        let req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        let (status, _, v) = json_answer(req.signed(&h).send().await.unwrap()).await;
        (status, v)
    }

    async fn send(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.send_as(&self.keys, method, path, body, |_| {}).await
    }

    async fn upload(&self, from_seq: u64, recs: &[(JournalRecord, Tag)]) -> (u16, Value) {
        self.send(
            "POST",
            "/v1/terminals/T-1/journal",
            upload_body(from_seq, recs),
        )
        .await
    }

    /// A signed upload whose body is sent with `Content-Encoding: coding` (the signature covers `body`,
    /// the bytes as sent).
    async fn send_encoded(&self, coding: &str, body: Vec<u8>) -> (u16, Value) {
        let path = "/v1/terminals/T-1/journal";
        let n = self.nonce.fetch_add(1, Ordering::SeqCst);
        let h = SignedHeaders::sign(
            &self.keys.request,
            "T-1",
            "POST",
            path,
            self.clock.load(Ordering::SeqCst),
            [n; 16],
            &body,
        );
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(body);
        let (status, _, v) = json_answer(req.signed(&h).send().await.unwrap()).await;
        (status, v)
    }

    async fn head(&self) -> (u16, Value) {
        self.send("GET", "/v1/terminals/T-1/journal/head", Vec::new())
            .await
    }
}

fn stored_count(s: &Server) -> i64 {
    blocking(|| {
        s.db.read(|tx| -> Result<i64, StorageError> {
            tx.query_one("SELECT count(*) FROM journal", &[])?.i64(0)
        })
        .unwrap()
    })
}

async fn upload_is_idempotent_and_the_head_resumes(engine: Engine) {
    let s = start(engine).await;
    let recs = chain(&s.keys, 10, |_| 1);
    let (st, v) = s.head().await;
    assert_eq!((st, v["acknowledged_seq"].as_u64()), (200, Some(0)));
    assert!(v["acknowledged_mac"].is_null());

    let (st, v) = s.upload(1, &recs[..6]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["acknowledged_seq"], 6);
    assert_eq!(v["acknowledged_mac"], hex::encode(recs[5].1));
    // The terminal's reader of the answer agrees.
    let ack = redeemd::sync::wire::parse_ack(v.to_string().as_bytes()).unwrap();
    assert_eq!(
        (ack.acknowledged_seq, ack.acknowledged_mac),
        (6, Some(recs[5].1))
    );
    assert_eq!(
        (v["stored"].as_u64(), v["duplicates"].as_u64()),
        (Some(6), Some(0))
    );

    // The answer was "lost": the same batch again, plus the rest, stores nothing twice.
    let (st, v) = s.upload(4, &recs[3..]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["acknowledged_seq"], 10);
    assert_eq!(
        (v["stored"].as_u64(), v["duplicates"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(stored_count(&s), 10);

    let (st, v) = s.head().await;
    assert_eq!(st, 200);
    let head = redeemd::sync::wire::parse_head("T-1", v.to_string().as_bytes()).unwrap();
    assert_eq!(
        (head.acknowledged_seq, head.acknowledged_mac),
        (10, Some(recs[9].1))
    );
    assert_eq!(v["acknowledged_seq"], 10);
    assert_eq!(v["acknowledged_mac"], hex::encode(recs[9].1));
}

async fn a_reused_seq_with_other_content_is_a_conflict_never_an_overwrite(engine: Engine) {
    let s = start(engine).await;
    let recs = chain(&s.keys, 5, |_| 1);
    assert_eq!(s.upload(1, &recs).await.0, 200);
    // A fork: the terminal's database restored from a backup at seq 3, then new redemptions.
    let fork = chain(&s.keys, 5, |seq| if seq > 3 { 2 } else { 1 });
    let (st, v) = s.upload(1, &fork).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("sequence_conflict")),
        "{v}"
    );
    assert_eq!(v["seq"], 4);
    assert_eq!(v["terminal_id"], "T-1");
    let (_, head) = s.head().await;
    assert_eq!(head["acknowledged_mac"], hex::encode(recs[4].1));
}

async fn gaps_tampering_and_broken_chains_are_named_and_nothing_is_stored(engine: Engine) {
    let s = start(engine).await;
    let recs = chain(&s.keys, 8, |_| 1);
    let (st, v) = s.upload(3, &recs[2..]).await;
    assert_eq!((st, v["code"].as_str()), (409, Some("sequence_gap")), "{v}");
    assert_eq!(v["acknowledged_seq"], 0);

    // Seq 5 edited in the shop database (its stored MAC kept): named, whole batch refused.
    let mut tampered = recs.clone();
    tampered[4].0.quantity = 9;
    let (st, v) = s.upload(1, &tampered).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("record_mac_invalid")),
        "{v}"
    );
    assert_eq!(v["seq"], 5);
    assert!(v["detail"].as_str().unwrap().contains("journal seq 5"));
    assert_eq!(stored_count(&s), 0);

    // Seq 6 deleted: seq 7 does not chain to seq 5.
    let mut gap = recs[..5].to_vec();
    let mut r7 = recs[6].clone();
    r7.0.seq = 6;
    r7.1 = r7.0.mac(&s.keys.journal);
    gap.push(r7);
    let (st, v) = s.upload(1, &gap).await;
    assert_eq!((st, v["code"].as_str()), (422, Some("chain_broken")), "{v}");
    assert_eq!(v["seq"], 6);
    assert_eq!(stored_count(&s), 0);

    // Another terminal's record in this terminal's upload.
    let other = TerminalSecret::from_bytes(&[8; 32])
        .unwrap()
        .derive_all("T-2");
    let (st, v) = s.upload(1, &chain(&other, 1, |_| 1)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("record_mismatch")),
        "{v}"
    );

    // The records before a refused one can still be uploaded; the exceptions list names each refusal.
    assert_eq!(s.upload(1, &recs[..4]).await.0, 200);
    let ex = blocking(|| s.db.read(|tx| storage::exceptions(tx, "T-1")).unwrap());
    // (The records' card is not a platform card: each stored one is also noted as `unknown_card`.)
    let codes: Vec<_> = ex
        .iter()
        .filter(|(_, code, _)| code != "unknown_card")
        .map(|(seq, code, _)| (*seq, code.as_str()))
        .collect();
    assert_eq!(ex.len(), 3 + 4);
    assert_eq!(
        codes,
        [
            (Some(5), "record_mac_invalid"),
            (Some(6), "chain_broken"),
            (Some(1), "record_mismatch")
        ]
    );
}

async fn authentication_failures_have_precise_codes(engine: Engine) {
    let s = start(engine).await;
    let body = upload_body(1, &chain(&s.keys, 1, |_| 1));
    let path = "/v1/terminals/T-1/journal";
    let code = |v: &Value| v["code"].as_str().unwrap().to_owned();

    let (st, v) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| {
            h.signature = "0".repeat(64)
        })
        .await;
    assert_eq!((st, code(&v)), (401, "bad_signature".into()));
    // Signed for another body: the headers verify, the body read after them does not.
    let (st, v) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| {
            *h = SignedHeaders::sign(&s.keys.request, "T-1", "POST", path, T0, [202; 16], b"{}")
        })
        .await;
    assert_eq!((st, code(&v)), (401, "body_hash_mismatch".into()));
    // A hash header other than the signed one is a bad signature (the signature covers it).
    let (st, v) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| {
            h.content_sha256 = "0".repeat(64)
        })
        .await;
    assert_eq!((st, code(&v)), (401, "bad_signature".into()));
    let (st, v) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| {
            h.nonce = "xyz".into()
        })
        .await;
    assert_eq!((st, code(&v)), (401, "auth_malformed".into()));
    let stranger = TerminalSecret::from_bytes(&[1; 32])
        .unwrap()
        .derive_all("T-9");
    let (st, v) = s
        .send_as(&stranger, "POST", path, body.clone(), |_| {})
        .await;
    assert_eq!((st, code(&v)), (401, "unknown_terminal".into()));
    let t2 = TerminalSecret::from_bytes(&[8; 32])
        .unwrap()
        .derive_all("T-2");
    let (st, v) = s.send_as(&t2, "POST", path, body.clone(), |_| {}).await;
    assert_eq!((st, code(&v)), (403, "terminal_mismatch".into()));

    // Skewed clock: signed 301 s before the server's time.
    let (st, v) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| {
            let ts = h.timestamp_ms - 301_000;
            *h = SignedHeaders::sign(&s.keys.request, "T-1", "POST", path, ts, [200; 16], &body);
        })
        .await;
    assert_eq!((st, code(&v)), (401, "clock_skew".into()));
    assert_eq!(v["server_time_ms"], T0);
    assert_eq!(stored_count(&s), 0);

    // Replay: the same signed request twice.
    let fixed = SignedHeaders::sign(&s.keys.request, "T-1", "POST", path, T0, [201; 16], &body);
    let (st, _) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| *h = fixed.clone())
        .await;
    assert_eq!(st, 200);
    let (st, v) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| *h = fixed.clone())
        .await;
    assert_eq!((st, code(&v)), (401, "nonce_replayed".into()));
}

/// Sends a request head announcing a body of `content_length` bytes with `Expect: 100-continue`, and
/// none of the body: the server's first answer, which must come without the body (a server waiting for
/// it would answer only after its 60 s body timeout; the read gives up after 10 s).
async fn head_only(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    content_length: u64,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\nExpect: 100-continue\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), sock.read(&mut buf))
        .await
        .expect("no answer without the body: the server waits for it")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `docs/api/README.md`, "Authentication": a request is authenticated from its headers before its body
/// is read. Each refusal of the headers comes while the body (8 MiB announced) is still unsent, and
/// without a `100 Continue` inviting it; a request that passes gets `100 Continue`.
async fn authentication_refuses_from_the_headers_before_the_body_is_read(engine: Engine) {
    let s = start(engine).await;
    blocking(|| {
        s.db.write(|tx| {
            storage::enroll(tx, &vault(), "T-3", "M-1", &[9; 32], T0)?;
            storage::set_enabled(tx, "T-3", false)
                .map_err(clearing_server::storage::terminals::TerminalError::from)
        })
        .unwrap()
    });
    let path = "/v1/terminals/T-1/journal";
    let body_len = 8 << 20;
    let sign = |keys: &TerminalKeys, ts: i64, nonce: u8| {
        SignedHeaders::sign(
            &keys.request,
            &keys.terminal_id,
            "POST",
            path,
            ts,
            [nonce; 16],
            b"x",
        )
    };
    let t3 = TerminalSecret::from_bytes(&[9; 32])
        .unwrap()
        .derive_all("T-3");
    let stranger = TerminalSecret::from_bytes(&[1; 32])
        .unwrap()
        .derive_all("T-9");
    let mut forged = sign(&s.keys, T0, 1);
    forged.signature = "0".repeat(64);
    let replayed = sign(&s.keys, T0, 2);
    // The replayed nonce is first spent by a request that passes (and is sent its body).
    let (st, _) = s
        .send_as(&s.keys, "POST", path, b"x".to_vec(), |h| {
            *h = replayed.clone()
        })
        .await;
    assert_eq!(st, 400, "x is not JSON: refused after authentication");
    for (what, headers, want) in [
        ("no signature headers", vec![], "401 Unauthorized"),
        (
            "unknown terminal",
            sign(&stranger, T0, 3).pairs().to_vec(),
            "unknown_terminal",
        ),
        (
            "disabled terminal",
            sign(&t3, T0, 4).pairs().to_vec(),
            "terminal_disabled",
        ),
        ("bad signature", forged.pairs().to_vec(), "bad_signature"),
        (
            "clock skew",
            sign(&s.keys, T0 - 301_000, 5).pairs().to_vec(),
            "clock_skew",
        ),
        (
            "replayed nonce",
            replayed.pairs().to_vec(),
            "nonce_replayed",
        ),
    ] {
        let text = head_only(&s, "POST", path, &headers, body_len).await;
        assert!(
            !text.starts_with("HTTP/1.1 100"),
            "{what}: invited the body: {text}"
        );
        assert!(text.contains(want), "{what}: {text}");
    }
    // Authenticated: the body is invited (and would then be checked against the signed hash).
    let text = head_only(&s, "POST", path, &sign(&s.keys, T0, 6).pairs(), body_len).await;
    assert!(text.starts_with("HTTP/1.1 100 Continue"), "{text}");
    assert_eq!(stored_count(&s), 0);
}

/// `docs/api/README.md`, "Authentication" (nonces): a `GET`'s nonce is remembered in the volatile store —
/// PostgreSQL's unlogged table committed asynchronously, SQLite's own file written without fsync — so
/// that a pass with nothing new writes nothing durable, and so is a health report's, which is kept by a
/// commit that does not wait for the disk; a `POST`'s in the durable table. All refuse a replay.
async fn a_gets_nonce_costs_no_durable_write_and_a_posts_is_kept_durably(engine: Engine) {
    use clearing_server::storage::Isolation;
    let s = start(engine).await;
    let count = |isolation: Isolation, table: &str| {
        let sql = format!("SELECT count(*) FROM {table}");
        blocking(|| {
            s.db.transaction(isolation, |tx| -> Result<i64, StorageError> {
                tx.query_one(&sql, &[])?.i64(0)
            })
            .unwrap()
        })
    };
    let head = SignedHeaders::sign(
        &s.keys.request,
        "T-1",
        "GET",
        "/v1/terminals/T-1/journal/head",
        T0,
        [210; 16],
        b"",
    );
    // Sent twice with the same signed headers: answered `first`, then refused as a replay.
    let twice =
        async |method: &str, path: &str, body: &[u8], signed: &SignedHeaders, first: u16| {
            for want in [first, 401] {
                let (st, v) = s
                    .send_as(&s.keys, method, path, body.to_vec(), |h| {
                        *h = signed.clone()
                    })
                    .await;
                assert_eq!(st, want, "{v}");
            }
        };
    twice("GET", "/v1/terminals/T-1/journal/head", b"", &head, 200).await;
    assert_eq!(count(Isolation::Volatile, "volatile_nonce"), 1);
    assert_eq!(
        count(Isolation::Snapshot, "nonce"),
        0,
        "a GET wrote a durable nonce"
    );
    assert_eq!(s.upload(1, &chain(&s.keys, 1, |_| 1)).await.0, 200);
    assert_eq!(count(Isolation::Snapshot, "nonce"), 1);
    assert_eq!(count(Isolation::Volatile, "volatile_nonce"), 1);
    // A health report (the last request of every pass): kept, its nonce volatile too — a replay of it
    // changes nothing — and the replay still refused.
    let report = redeemd_contract::health::HealthReport {
        daemon_version: "0.1.0".into(),
        started_at_ms: T0 - 60_000,
        reported_at_ms: T0,
        sync_interval_secs: 60,
        readers: Vec::new(),
        cache: None,
        journal: redeemd_contract::health::JournalHealth {
            head_seq: 1,
            unsynced: 0,
            oldest_unsynced_at_ms: None,
        },
        halted: None,
        last_close: None,
    };
    let body = serde_json::to_vec(&report).unwrap();
    let path = "/v1/terminals/T-1/health";
    let signed = SignedHeaders::sign(&s.keys.request, "T-1", "POST", path, T0, [211; 16], &body);
    twice("POST", path, &body, &signed, 204).await;
    assert_eq!(count(Isolation::Volatile, "volatile_nonce"), 2);
    assert_eq!(
        count(Isolation::Snapshot, "nonce"),
        1,
        "a health report wrote a durable nonce"
    );
    assert_eq!(count(Isolation::Snapshot, "terminal_health"), 1);
    // What makes the volatile store cost no flush, as each engine states it.
    let setting = blocking(|| {
        s.db.transaction(Isolation::Volatile, |tx| -> Result<String, StorageError> {
            Ok(match engine {
                Engine::Sqlite => tx.query_one("PRAGMA synchronous", &[])?.i64(0)?.to_string(),
                Engine::Postgres => {
                    let unlogged = tx
                        .query_one(
                            "SELECT relpersistence::text FROM pg_class WHERE relname = 'volatile_nonce'",
                            &[],
                        )?
                        .text(0)?;
                    let commit = tx.query_one("SHOW synchronous_commit", &[])?.text(0)?;
                    format!("{unlogged} {commit}")
                }
            })
        })
        .unwrap()
    });
    let want = match engine {
        Engine::Sqlite => "0",       // synchronous=OFF
        Engine::Postgres => "u off", // unlogged, asynchronous commit
    };
    assert_eq!(setting, want);
    // What makes a health report's commit not wait for the disk, and every other write wait for it.
    let sync = |isolation: Isolation| {
        blocking(|| {
            s.db.transaction(isolation, |tx| -> Result<String, StorageError> {
                Ok(match engine {
                    Engine::Sqlite => tx.query_one("PRAGMA synchronous", &[])?.i64(0)?.to_string(),
                    Engine::Postgres => tx.query_one("SHOW synchronous_commit", &[])?.text(0)?,
                })
            })
            .unwrap()
        })
    };
    let (unflushed, durable) = match engine {
        Engine::Sqlite => ("1", "2"), // NORMAL (WAL: no fsync at commit), then FULL again
        Engine::Postgres => ("off", "on"),
    };
    assert_eq!(sync(Isolation::Unflushed), unflushed);
    for _ in 0..30 {
        // Every connection of the pool, whichever served the unflushed one.
        assert_eq!(sync(Isolation::Serializable), durable);
    }
}

/// Issue 14's contract mismatches, each answered as `docs/api/README.md` and `openapi.yaml` say: a
/// `sequence_gap` carries `acknowledged_seq` whichever way the batch fails to continue the head
/// (records not consecutive from `from_seq`, or `from_seq` past the head); a seq or count beyond the
/// API's int64 is `400 malformed_request` (not a gap, not `200 mismatched`); more close items than the
/// documented 10,000 is `413 body_too_large`, like more records than 5,000.
async fn contract_mismatches_are_answered_as_documented(engine: Engine) {
    let s = start(engine).await;
    let recs = chain(&s.keys, 8, |_| 1);
    let journal = "/v1/terminals/T-1/journal";
    let code = |v: &Value| v["code"].as_str().map(str::to_owned);
    // Records not consecutive from from_seq: with nothing stored, and after 5 are stored.
    let skipping = |from: u64, seqs: &[usize]| {
        let picked: Vec<_> = seqs.iter().map(|&i| recs[i - 1].clone()).collect();
        let mut v: Value =
            serde_json::from_slice(&redeemd::sync::wire::upload_body(&picked)).unwrap();
        v["from_seq"] = json!(from);
        serde_json::to_vec(&v).unwrap()
    };
    for (stored, from, seqs) in [
        (0, 1, &[1, 3][..]),
        (0, 1, &[2][..]),
        (5, 6, &[6, 8][..]),
        (5, 6, &[7][..]),
        (5, 4, &[4, 6][..]),
    ] {
        if stored == 5 && stored_count(&s) == 0 {
            assert_eq!(s.upload(1, &recs[..5]).await.0, 200);
        }
        let (st, v) = s.send("POST", journal, skipping(from, seqs)).await;
        assert_eq!(
            (st, code(&v).as_deref()),
            (409, Some("sequence_gap")),
            "from {from} seqs {seqs:?}: {v}"
        );
        assert_eq!(
            v["acknowledged_seq"], stored,
            "from {from} seqs {seqs:?}: {v}"
        );
    }
    // Beyond int64: a request the schema forbids, whatever the head.
    let item = json!({"seq": 6, "record": "AA==", "mac": "00".repeat(32)});
    for body in [
        json!({"from_seq": 1u64 << 63, "records": [item.clone()]}),
        json!({"from_seq": u64::MAX, "records": [item.clone()]}),
        json!({"from_seq": 6, "records": [{"seq": 1u64 << 63, "record": "AA==", "mac": "00".repeat(32)}]}),
    ] {
        let (st, v) = s
            .send("POST", journal, serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(
            (st, code(&v).as_deref()),
            (400, Some("malformed_request")),
            "{body}: {v}"
        );
    }
    let close = "/v1/terminals/T-1/batch-close";
    let day = |item: Value, first: u64, through: u64| {
        serde_json::to_vec(
            &json!({"business_date": "2026-11-18", "utc_offset_minutes": 480,
            "first_seq": first, "through_seq": through, "items": [item]}),
        )
        .unwrap()
    };
    let line = |redeemed: u64, voided: u64| {
        json!({"package_id": "P1", "service_code": "WASH", "redeemed": redeemed, "voided": voided,
               "net_units": 5, "net_amount_fen": 17500})
    };
    for body in [
        day(line(1 << 63, 0), 1, 5),
        day(line(5, 1 << 63), 1, 5),
        day(line(u64::MAX, 0), 1, 5),
        day(line(5, 0), 1 << 63, 1 << 63),
        day(line(5, 0), 1, 1 << 63),
    ] {
        let (st, v) = s.send("POST", close, body).await;
        assert_eq!(
            (st, code(&v).as_deref()),
            (400, Some("malformed_request")),
            "{v}"
        );
        assert_eq!(v["terminal_id"], "T-1");
    }
    let items: Vec<Value> = (0..=10_000)
        .map(|i| {
            json!({"package_id": "P1", "service_code": format!("S{i}"), "redeemed": 0,
                        "voided": 0, "net_units": 0, "net_amount_fen": 0})
        })
        .collect();
    let body = serde_json::to_vec(
        &json!({"business_date": "2026-11-18", "utc_offset_minutes": 480,
        "first_seq": 1, "through_seq": 5, "items": items}),
    )
    .unwrap();
    let (st, v) = s.send("POST", close, body).await;
    assert_eq!(
        (st, code(&v).as_deref()),
        (413, Some("body_too_large")),
        "{v}"
    );
    assert_eq!(v["terminal_id"], "T-1");
    // Nothing of it was stored: the day can still be closed.
    let (st, v) = s.send("POST", close, day(line(5, 0), 1, 5)).await;
    assert_eq!((st, v["result"].as_str()), (200, Some("matched")), "{v}");
}

/// A refusal in the exceptions list is marked resolved once the terminal's correct record for that seq
/// is stored (an edited row restored from the terminal's backup, a chain repaired): it no longer needs
/// a person.
async fn a_refusal_is_resolved_when_a_correct_record_for_its_seq_is_stored(engine: Engine) {
    let s = start(engine).await;
    let recs = chain(&s.keys, 4, |_| 1);
    let mut edited = recs.clone();
    edited[1].0.quantity = 9;
    assert_eq!(s.upload(1, &edited).await.1["code"], "record_mac_invalid");
    let mut unlinked = recs[2].clone();
    unlinked.0.prev_mac = [0; 32];
    unlinked.1 = unlinked.0.mac(&s.keys.journal);
    assert_eq!(
        s.upload(1, &[recs[0].clone(), recs[1].clone(), unlinked])
            .await
            .1["code"],
        "chain_broken"
    );
    let open = |s: &Server| {
        blocking(|| {
            s.db.read(|tx| -> Result<Vec<(i64, String)>, StorageError> {
                tx.query(
                    "SELECT seq, code FROM exception WHERE resolved_ms IS NULL AND code IN ('record_mac_invalid', 'chain_broken') ORDER BY seq",
                    &[],
                )?
                .iter()
                .map(|r| Ok((r.i64(0)?, r.text(1)?)))
                .collect()
            })
            .unwrap()
        })
    };
    assert_eq!(
        open(&s),
        [(2, "record_mac_invalid".into()), (3, "chain_broken".into())]
    );
    assert_eq!(s.upload(1, &recs).await.0, 200);
    assert_eq!(open(&s), []);
}

async fn malformed_and_oversized_bodies_are_refused_without_writes(engine: Engine) {
    let s = start(engine).await;
    let path = "/v1/terminals/T-1/journal";
    let (st, v) = s
        .send("POST", path, b"{\"from_seq\": 1, \"records\": [".to_vec())
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("malformed_request")),
        "{v}"
    );
    let (st, v) = s
        .send(
            "POST",
            path,
            br#"{"from_seq":1,"records":[{"seq":1,"record":"!!","mac":"00"}]}"#.to_vec(),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("malformed_request")),
        "{v}"
    );
    // A declared 100 MB body of an authenticated request: refused before the body is read (raw
    // socket: the client sends none of it).
    let signed = SignedHeaders::sign(&s.keys.request, "T-1", "POST", path, T0, [204; 16], b"{}");
    let text = head_only(&s, "POST", path, &signed.pairs(), 104_857_600).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("application/problem+json") && text.contains("body_too_large"),
        "{text}"
    );
    // More records than one upload may carry (schema-valid items, refused by count before any check).
    let item = json!({"seq": 1, "record": "AA==", "mac": "00".repeat(32)});
    let items: Vec<Value> = (1..=clearing_server::http::terminal::MAX_RECORDS as u64 + 1)
        .map(|seq| {
            let mut i = item.clone();
            i["seq"] = json!(seq);
            i
        })
        .collect();
    let body = serde_json::to_vec(&json!({"from_seq": 1, "records": items})).unwrap();
    let (st, v) = s.send("POST", path, body).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    // A request body in a coding other than gzip is refused as such, not parsed as JSON.
    let (st, v) = s.send_encoded("br", b"\x1f\x8b not brotli".to_vec()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{v}"
    );
    let (st, v) = s.send("GET", "/v1/nothing", Vec::new()).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
    let (st, v) = s.send("PUT", path, Vec::new()).await;
    assert_eq!((st, v["code"].as_str()), (405, Some("method_not_allowed")));
    assert_eq!(stored_count(&s), 0);
}

async fn batch_close_reconciles_once_per_day(engine: Engine) {
    let s = start(engine).await;
    let path = "/v1/terminals/T-1/batch-close";
    // T0 is 2026-11-18 19:06 at UTC+8; the chain's records are a few ms apart.
    let close = |items: Value, date: &str| {
        serde_json::to_vec(&json!({"business_date": date, "utc_offset_minutes": 480,
            "first_seq": 1, "through_seq": 5, "items": items}))
        .unwrap()
    };
    let day = json!([{"package_id": "P1", "service_code": "WASH", "redeemed": 5, "voided": 0,
        "net_units": 5, "net_amount_fen": 17500}]);
    let (st, v) = s.send("POST", path, close(day.clone(), "2026-11-18")).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("journal_incomplete")),
        "{v}"
    );

    assert_eq!(s.upload(1, &chain(&s.keys, 5, |_| 1)).await.0, 200);
    let (st, v) = s.send("POST", path, close(day.clone(), "2026-11-18")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"result": "matched", "business_date": "2026-11-18", "differences": []})
    );
    // A resend gets the same answer; other totals for a closed day are a conflict.
    let (st, again) = s.send("POST", path, close(day.clone(), "2026-11-18")).await;
    assert_eq!((st, &again), (200, &v));
    let mut other = day.clone();
    other[0]["redeemed"] = json!(4);
    let (st, v) = s
        .send("POST", path, close(other.clone(), "2026-11-18"))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("batch_close_conflict")),
        "{v}"
    );

    // The next day holds none of these records: the terminal's claim is a difference.
    let (st, v) = s.send("POST", path, close(other, "2026-11-19")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"], "mismatched");
    assert_eq!(v["differences"][0]["terminal"]["redeemed"], 4);
    assert!(v["differences"][0]["server"].is_null());

    let (st, v) = s.send("POST", path, close(day, "2026-02-30")).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("malformed_request")),
        "{v}"
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

async fn gzip_uploads_are_inflated_after_authentication_and_bombs_are_refused(engine: Engine) {
    let s = start(engine).await;
    let recs = chain(&s.keys, 3, |_| 1);
    let (st, v) = s.send_encoded("gzip", gzip(&upload_body(1, &recs))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["acknowledged_seq"].as_u64(), v["stored"].as_u64()),
        (Some(3), Some(3))
    );

    // 40 MiB of spaces after a valid start: 40 KiB on the wire, refused while inflating.
    let mut bomb = b"{\"from_seq\": 4, \"records\": [".to_vec();
    bomb.resize(40 << 20, b' ');
    let packed = gzip(&bomb);
    assert!(packed.len() < 100_000);
    let (st, v) = s.send_encoded("gzip", packed).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    // Not gzip at all.
    let (st, v) = s.send_encoded("gzip", b"plain text".to_vec()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("malformed_request")),
        "{v}"
    );
    // The body hash is over the bytes as sent: signing the inflated body does not pass.
    let body = upload_body(4, &chain(&s.keys, 4, |_| 1)[3..]);
    let path = "/v1/terminals/T-1/journal";
    let (st, v) = s
        .send_as(&s.keys, "POST", path, gzip(&body), |h| {
            *h = SignedHeaders::sign(&s.keys.request, "T-1", "POST", path, T0, [203; 16], &body)
        })
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (401, Some("body_hash_mismatch")),
        "{v}"
    );
    assert_eq!(stored_count(&s), 3);
}

/// A terminal holds its own journal key, so it can upload records with any amount: fen totals at the
/// limits of the API's int64 must be answered like any others, and the server must go on serving.
async fn a_close_of_amounts_beyond_int64_is_answered_and_the_server_keeps_serving(engine: Engine) {
    use redeemd_contract::close;
    let s = start(engine).await;
    let mut prev = redeemd_contract::journal::genesis_mac(&s.keys.journal, "T-1");
    let recs: Vec<(JournalRecord, Tag)> = (1..=3)
        .map(|seq| {
            let l = common::Line::redeem(redeemd_contract::CardRef([3; 32]), "P1", "WASH", 1);
            let mut r = common::line(&s.keys, seq, prev, &l);
            r.amount_fen = u64::MAX;
            prev = r.mac(&s.keys.journal);
            (r, prev)
        })
        .collect();
    assert_eq!(s.upload(1, &recs).await.0, 200);
    let date = "2026-11-18";
    let window = close::day_window(close::parse_date(date).unwrap(), 480);
    let items: Vec<close::ItemTotal> = close::totals(recs.iter().map(|(r, _)| r), window)
        .into_values()
        .collect();
    assert_eq!(items[0].net_amount_fen, i64::MAX, "saturated, not wrapped");
    let body = serde_json::to_vec(&close::BatchClose {
        business_date: date.into(),
        utc_offset_minutes: 480,
        first_seq: 1,
        through_seq: 3,
        items,
    })
    .unwrap();
    let (st, v) = s.send("POST", "/v1/terminals/T-1/batch-close", body).await;
    assert_eq!((st, v["result"].as_str()), (200, Some("matched")), "{v}");
    let (st, v) = s.head().await;
    assert_eq!((st, v["acknowledged_seq"].as_u64()), (200, Some(3)), "{v}");
}

on_both_engines!(async upload_is_idempotent_and_the_head_resumes, a_reused_seq_with_other_content_is_a_conflict_never_an_overwrite, gaps_tampering_and_broken_chains_are_named_and_nothing_is_stored, authentication_failures_have_precise_codes, authentication_refuses_from_the_headers_before_the_body_is_read, a_gets_nonce_costs_no_durable_write_and_a_posts_is_kept_durably, contract_mismatches_are_answered_as_documented, a_refusal_is_resolved_when_a_correct_record_for_its_seq_is_stored, malformed_and_oversized_bodies_are_refused_without_writes, batch_close_reconciles_once_per_day, gzip_uploads_are_inflated_after_authentication_and_bombs_are_refused, a_close_of_amounts_beyond_int64_is_answered_and_the_server_keeps_serving);
