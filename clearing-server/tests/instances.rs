//! Two `clearing-server serve` processes on one database, as a platform runs several stateless
//! instances behind a load balancer: one terminal's batches uploaded through both at once are stored
//! exactly once (and counted once on the card), a nonce accepted by one is refused by the other, a
//! day is closed once whichever instance answers, and both sign the same, monotonic bundle versions.
//! Everything that must hold across instances comes from the database, never from process memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::binary::{enrolled, now_ms, ok, query, runtime, send, serve};
use common::engines::{Engine, database};
use common::{Line, Signed, T0, lines};
use redeemd_contract::JournalRecord;
use redeemd_contract::close::{self, BatchClose};
use redeemd_contract::keys::{Tag, TerminalKeys};
use redeemd_contract::model::CardNumber;
use redeemd_contract::request::SignedHeaders;
use serde_json::Value;

const CARD: &str = "6228480012345678";
const RECORDS: u64 = 1_200;
const JOURNAL: &str = "/v1/terminals/T-1/journal";
const HEAD: &str = "/v1/terminals/T-1/journal/head";

/// One client of the terminal, uploading the whole chain through `addr` in batches of `batch`: it
/// reads the head, sends from there, and starts again on `409 sequence_gap` (the other client got
/// further first). Returns the records this client's answers said were newly stored.
async fn upload_all(
    addr: String,
    keys: TerminalKeys,
    recs: Vec<(JournalRecord, Tag)>,
    batch: u64,
) -> u64 {
    let mut stored = 0;
    loop {
        let (st, head) = send(&addr, &keys, "GET", HEAD, Vec::new()).await.unwrap();
        assert_eq!(st, 200, "{head}");
        let from = head["acknowledged_seq"].as_u64().unwrap() + 1;
        if from > RECORDS {
            return stored;
        }
        let to = (from + batch - 1).min(RECORDS);
        let body = redeemd::sync::wire::upload_body(&recs[from as usize - 1..to as usize]);
        let (st, v) = send(&addr, &keys, "POST", JOURNAL, body).await.unwrap();
        match st {
            200 => {
                assert_eq!(v["acknowledged_seq"], to, "{v}");
                assert_eq!(
                    v["stored"].as_u64().unwrap() + v["duplicates"].as_u64().unwrap(),
                    to - from + 1,
                    "{v}"
                );
                stored += v["stored"].as_u64().unwrap();
            }
            409 if v["code"] == "sequence_gap" => {}
            _ => panic!("upload {from}..={to} through {addr}: {st} {v}"),
        }
    }
}

fn bundle_version(addr: &str, keys: &TerminalKeys) -> u64 {
    let path = "/v1/terminals/T-1/entitlements?since=0";
    let h = SignedHeaders::sign(
        &keys.request,
        "T-1",
        "GET",
        path,
        now_ms(),
        rand_nonce(),
        b"",
    );
    runtime().block_on(async {
        let req = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .signed(&h);
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let v = resp.headers()["x-redeemd-bundle-version"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let _ = resp.bytes().await.unwrap();
        v
    })
}

fn rand_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).unwrap();
    n
}

fn two_instances_share_one_database(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(engine, dir.path());
    let keys = enrolled(&db, dir.path(), "T-1");
    ok(&db, &["card", "create", "--number", CARD]);
    ok(
        &db,
        &[
            "card",
            "customize",
            "--number",
            CARD,
            "--package",
            "P1",
            "--title",
            "洗车套餐",
            "--valid-from",
            "2026-01-01",
            "--valid-until",
            "2030-12-31",
            "--item",
            "WASH:精洗:100000:3500",
        ],
    );
    let card_ref = CardNumber::parse(CARD).unwrap().card_ref(&keys.card_token);
    let recs = lines(
        &keys,
        None,
        &vec![Line::redeem(card_ref, "P1", "WASH", 1); RECORDS as usize],
    );
    let (a, b) = (serve(&db), serve(&db));

    // Both instances sign bundles from the same counter.
    let v0 = bundle_version(&a.addr, &keys);
    assert_eq!(bundle_version(&b.addr, &keys), v0);

    // Two clients of the one terminal race through the two instances with different batch sizes.
    let rt = runtime();
    let (stored_a, stored_b) = rt.block_on(async {
        let a = tokio::spawn(upload_all(a.addr.clone(), keys.clone(), recs.clone(), 100));
        let b = tokio::spawn(upload_all(b.addr.clone(), keys.clone(), recs.clone(), 150));
        (a.await.unwrap(), b.await.unwrap())
    });
    eprintln!("stored through A: {stored_a}, through B: {stored_b}");
    assert_eq!(
        stored_a + stored_b,
        RECORDS,
        "each record stored exactly once"
    );
    let (n, distinct, max) = query(
        &db,
        "SELECT count(*), count(DISTINCT seq), max(seq) FROM journal WHERE terminal_id = 'T-1'",
    )
    .map(|r| (r.u64(0).unwrap(), r.u64(1).unwrap(), r.u64(2).unwrap()))
    .next()
    .unwrap();
    assert_eq!((n, distinct, max), (RECORDS, RECORDS, RECORDS));
    // Counted once on the card, whichever instance stored each record.
    let shown = ok(&db, &["card", "show", "--number", CARD]);
    assert!(
        shown.contains(&format!("{} left of 100000", 100_000 - RECORDS)),
        "{shown}"
    );
    // The uploads moved the counter; both instances see the same, higher version.
    let v1 = bundle_version(&b.addr, &keys);
    assert!(v1 > v0, "{v1} after {v0}");
    assert_eq!(bundle_version(&a.addr, &keys), v1);

    // A request accepted by one instance is a replay at the other.
    let h = SignedHeaders::sign(
        &keys.request,
        "T-1",
        "GET",
        HEAD,
        now_ms(),
        rand_nonce(),
        b"",
    );
    let replay = |addr: &str| {
        let (addr, h) = (addr.to_owned(), h.clone());
        runtime().block_on(async move {
            let req = reqwest::Client::new()
                .get(format!("http://{addr}{HEAD}"))
                .signed(&h);
            let resp = req.send().await.unwrap();
            let st = resp.status().as_u16();
            (
                st,
                serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).unwrap(),
            )
        })
    };
    assert_eq!(replay(&a.addr).0, 200);
    let (st, v) = replay(&b.addr);
    assert_eq!(
        (st, v["code"].as_str()),
        (401, Some("nonce_replayed")),
        "{v}"
    );

    // The day's close sent through both at once: one stored answer, the same to both.
    let records: Vec<JournalRecord> = recs.iter().map(|(r, _)| r.clone()).collect();
    let day = close::business_day(T0, 480);
    let items: Vec<_> = close::totals(&records, close::day_window(day, 480))
        .into_values()
        .collect();
    let the_close = BatchClose {
        business_date: close::format_date(day),
        utc_offset_minutes: 480,
        first_seq: 1,
        through_seq: RECORDS,
        items,
    };
    let body = serde_json::to_vec(&the_close).unwrap();
    let path = "/v1/terminals/T-1/batch-close";
    let (ra, rb) = rt.block_on(async {
        let (ka, kb) = (keys.clone(), keys.clone());
        let (ba, bb) = (body.clone(), body.clone());
        let (aa, ab) = (a.addr.clone(), b.addr.clone());
        tokio::join!(
            async move { send(&aa, &ka, "POST", path, ba).await.unwrap() },
            async move { send(&ab, &kb, "POST", path, bb).await.unwrap() }
        )
    });
    assert_eq!(ra.0, 200, "{}", ra.1);
    assert_eq!(ra, rb);
    assert_eq!(ra.1["result"], "matched", "{}", ra.1);
    let closes = query(&db, "SELECT count(*) FROM batch_close")
        .map(|r| r.u64(0).unwrap())
        .next()
        .unwrap();
    assert_eq!(closes, 1);
    let mut other = the_close.clone();
    other.items[0].redeemed += 1;
    let (st, v) = rt
        .block_on(send(
            &b.addr,
            &keys,
            "POST",
            path,
            serde_json::to_vec(&other).unwrap(),
        ))
        .unwrap();
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("batch_close_conflict")),
        "{v}"
    );
    drop((a, b));
}

on_both_engines!(sync two_instances_share_one_database);
