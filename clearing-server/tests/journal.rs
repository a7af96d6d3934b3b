//! The journal endpoints over real HTTP on loopback, against a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use clearing_server::AppState;
use clearing_server::storage::{self, Db, StorageError};
use common::engines::{Engine, blocking, database, vault};
use common::{T0, chain, upload_body};
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
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.bytes().await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            assert_eq!(ctype.as_deref(), Some("application/problem+json"), "{v}");
            assert_eq!(v["status"], status);
        }
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
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(body);
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let v = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
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
    let (st, v) = s
        .send_as(&s.keys, "POST", path, body.clone(), |h| {
            h.content_sha256 = "0".repeat(64)
        })
        .await;
    assert_eq!((st, code(&v)), (401, "body_hash_mismatch".into()));
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
    // A declared 100 MB body: refused before the body is read (raw socket: the client sends only 1 KiB).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = s.base.trim_start_matches("http://");
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&[b' '; 1024]).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = sock.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(
            text.contains("application/problem+json") && text.contains("body_too_large"),
            "{text}"
        );
    }
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
    let (st, v) = s
        .send_as(
            &s.keys,
            "POST",
            "/v1/terminals/T-1/journal",
            gzip(&body),
            |h| h.content_sha256 = hex::encode(redeemd_contract::request::body_sha256(&body)),
        )
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

on_both_engines!(async upload_is_idempotent_and_the_head_resumes, a_reused_seq_with_other_content_is_a_conflict_never_an_overwrite, gaps_tampering_and_broken_chains_are_named_and_nothing_is_stored, authentication_failures_have_precise_codes, malformed_and_oversized_bodies_are_refused_without_writes, batch_close_reconciles_once_per_day, gzip_uploads_are_inflated_after_authentication_and_bombs_are_refused, a_close_of_amounts_beyond_int64_is_answered_and_the_server_keeps_serving);
