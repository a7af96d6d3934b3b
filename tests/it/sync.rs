//! The sync client and passes against a fake platform on loopback (`platform.rs`): an honest pass
//! (signatures verified by the server, zstd and gzip bundles, clock skew adopted), and a server that
//! misbehaves in each way the client must survive — each case logged with its reason (the error's
//! text), nothing installed or marked, redemptions still served, and the next pass (after backoff)
//! succeeding once the server behaves.

use std::time::Duration;

use redeemd::daemon::sync::next_delay;
use redeemd::store::close::CloseResult;
use redeemd::store::owner::{Clock, StoreHandle};
use redeemd::store::{DenyInfo, Store};
use redeemd::sync::client::{Client, ClientOptions};
use redeemd::sync::pass::{EntitlementsReport, PassReport, Step, Syncer};
use redeemd::sync::plan::Backoff;
use redeemd_contract::deny::{DenyEntry, DenyStatus};
use redeemd_contract::snapshot::BundleKind;

use crate::platform::{Honest, Platform, Reply};
use crate::support::*;

const CARDS: u64 = 5;
/// The installed cache version at the start of each test.
const INSTALLED: u64 = 5;

fn cards() -> Vec<(u64, Option<redeemd_contract::Card>)> {
    (0..CARDS).map(|i| (i, Some(card(i, 10)))).collect()
}

fn full_bundle(version: u64) -> Vec<u8> {
    bundle(BundleKind::Full, version, 0, &cards(), T0 + 1000 * HOUR)
}

/// A store with the cards at version [`INSTALLED`] and three redemptions (seqs 1..=3), behind a handle.
fn shop_store(dir: &std::path::Path) -> StoreHandle {
    let mut s = open(dir);
    s.install_bundle(&full_bundle(INSTALLED)[..], now(T0))
        .unwrap();
    for txn in 1..=3 {
        approved(&redeem(&mut s, "r", txn, txn % CARDS, &[(0, 1)], T0));
    }
    StoreHandle::new(s, Clock::new())
}

fn lost_entry(version: u64, card: u64) -> DenyEntry {
    DenyEntry {
        version,
        card_ref: card_ref(card),
        status: DenyStatus::Lost,
        entry_version: INSTALLED + 1,
        reported_at_ms: T0,
    }
}

/// An honest platform: card 4 reported lost, a full bundle at version 6.
fn honest() -> Honest {
    let mut h = Honest::new(keys());
    h.deny = vec![lost_entry(1, 4)];
    h.bundle = Some((INSTALLED + 1, full_bundle(INSTALLED + 1)));
    h
}

fn syncer(p: &Platform) -> Syncer {
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        bundle_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    Syncer::new(
        Client::new(&p.url, TERMINAL, keys().request, options).unwrap(),
        480,
    )
}

/// (cache version, acknowledged seq, deny list, leftover staging tables).
fn facts(h: &StoreHandle) -> (u64, u64, DenyInfo, i64) {
    h.run_blocking(|s: &mut Store, _| {
        let staging: i64 = s
            .connection()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'cache%staging'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (
            s.cache_info().unwrap().unwrap().manifest.version,
            s.journal_info().synced_through_seq,
            s.deny_info(),
            staging,
        )
    })
    .unwrap()
}

/// A redemption still goes through (the counter is never blocked by sync).
fn redeems(h: &StoreHandle, txn: u64) {
    h.run_blocking(|s, _| {
        approved(&redeem(s, "r2", txn, 1, &[(0, 1)], T0));
    })
    .unwrap();
}

fn failure_text(r: &PassReport) -> String {
    r.failures()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

async fn pass(s: &mut Syncer, h: &StoreHandle) -> PassReport {
    s.pass(h).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_pass_applies_the_deny_list_uploads_and_installs_compressed_bundles() {
    for encoding in [Some("zstd"), Some("gzip"), None] {
        let dir = tempfile::tempdir().unwrap();
        let h = shop_store(dir.path());
        let mut honest = honest();
        honest.encoding = encoding;
        let p = Platform::start(honest).await;
        let mut s = syncer(&p);
        let r = pass(&mut s, &h).await;
        assert!(r.ok(), "{encoding:?}: {}", r.lines().join("\n"));
        let (version, acked, deny, staging) = facts(&h);
        assert_eq!(
            (version, acked, deny.version, staging),
            (INSTALLED + 1, 3, 1, 0)
        );
        assert!(
            matches!(&r.entitlements, Step::Done(EntitlementsReport::Installed(i)) if i.upserts == CARDS)
        );
        {
            let honest = p.honest.lock().unwrap();
            assert_eq!(honest.journal.len(), 3);
            assert_eq!(honest.bad_signatures, 0, "every request signed correctly");
            // The records' day (T0) has ended: closed once, through the last of them.
            let closes: Vec<_> = honest
                .closes
                .iter()
                .map(|c| (c.first_seq, c.through_seq, c.items.len()))
                .collect();
            assert_eq!(closes, [(1, 3, 1)]);
        }
        assert!(
            matches!(&r.closes, Step::Done(c) if c.closed == [(close_date(), CloseResult::Matched)])
        );
        assert_eq!(
            last_close(&h),
            Some((close_date(), CloseResult::Matched, 3))
        );
        // Card 4 was reported lost at entry version 6, and version 6 is installed: superseded.
        // A second pass has nothing to do.
        let r = pass(&mut s, &h).await;
        assert!(r.ok(), "{}", r.lines().join("\n"));
        assert!(matches!(
            r.entitlements,
            Step::Done(EntitlementsReport::UpToDate { version: 6 })
        ));
        assert_eq!(p.count("POST", "journal"), 1, "nothing uploaded twice");
        assert_eq!(p.count("POST", "batch-close"), 1, "a day is closed once");
        // The upload went compressed (and was authenticated as sent); the small close did not.
        let encodings: Vec<(String, Option<String>)> = p
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "POST")
            .map(|r| {
                let path = r.path.rsplit('/').next().unwrap_or_default().to_owned();
                (path, r.header("content-encoding").map(str::to_owned))
            })
            .collect();
        assert_eq!(
            encodings,
            [
                ("journal".to_owned(), Some("gzip".to_owned())),
                ("batch-close".to_owned(), None)
            ]
        );
    }
}

/// The business date of T0 in the tests' offset (UTC+8).
fn close_date() -> String {
    use redeemd_contract::close;
    close::format_date(close::business_day(T0, 480))
}

fn last_close(h: &StoreHandle) -> Option<(String, CloseResult, u64)> {
    h.run_blocking(|s: &mut Store, _| {
        s.last_close()
            .unwrap()
            .map(|c| (c.business_date, c.result, c.through_seq))
    })
    .unwrap()
}

/// One redemption a day on `days` more days after T0 (seqs 4.., cards in turn).
fn redeem_on_days(h: &StoreHandle, days: u64) {
    h.run_blocking(move |s: &mut Store, _| {
        for d in 1..=days {
            let at = T0 + i64::try_from(d).unwrap() * 24 * HOUR;
            approved(&redeem(s, "r3", d, d % CARDS, &[(0, 1)], at));
        }
    })
    .unwrap();
}

/// A long backlog of days is closed 31 a pass (the deny list's next poll does not wait behind hundreds
/// of closes), oldest first, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_days_is_closed_a_month_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    redeem_on_days(&h, 39);
    let p = Platform::start(honest()).await;
    let mut s = syncer(&p);
    let r = pass(&mut s, &h).await;
    assert!(
        matches!(&r.closes, Step::Done(c) if c.closed.len() == 31),
        "{}",
        r.lines().join("\n")
    );
    let r = pass(&mut s, &h).await;
    assert!(
        matches!(&r.closes, Step::Done(c) if c.closed.len() == 9),
        "{}",
        r.lines().join("\n")
    );
    let honest = p.honest.lock().unwrap();
    let dates: Vec<&str> = honest
        .closes
        .iter()
        .map(|c| c.business_date.as_str())
        .collect();
    let mut sorted = dates.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        (dates.len(), sorted),
        (40, dates.clone()),
        "oldest first, each once"
    );
}

/// A close the platform refuses as such is recorded (the operator looks) and the next days are still
/// closed: one bad day does not stop reconciliation for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_close_is_recorded_and_later_days_are_still_closed() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    redeem_on_days(&h, 1);
    let p = Platform::start(honest()).await;
    let first = close_date();
    p.misbehave(
        move |r: &crate::platform::Request, _: &mut crate::platform::Honest| {
            (r.is("POST", "batch-close") && String::from_utf8_lossy(&r.body).contains(&first))
                .then(|| Reply::problem(422, "close_inconsistent", "refused for the test", None))
        },
    );
    let mut s = syncer(&p);
    let r = pass(&mut s, &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    let results: Vec<CloseResult> = match &r.closes {
        Step::Done(c) => c.closed.iter().map(|(_, r)| *r).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(results, [CloseResult::Refused, CloseResult::Matched]);
    assert_eq!(last_close(&h).map(|c| c.2), Some(4));
}

/// An older platform without `batch-close`: the close fails once, without backing the sync off (loss
/// reports and uploads keep their interval), and is not tried again by this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_without_closes_costs_one_warning_not_a_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let p = Platform::start(honest()).await;
    p.misbehave(
        |r: &crate::platform::Request, _: &mut crate::platform::Honest| {
            r.is("POST", "batch-close")
                .then(|| Reply::problem(404, "not_found", "no such route", None))
        },
    );
    let mut s = syncer(&p);
    let r = pass(&mut s, &h).await;
    assert!(
        failure_text(&r).contains("batch close: server answered 404"),
        "{}",
        r.lines().join("\n")
    );
    let mut backoff = Backoff::default();
    assert_eq!(
        next_delay(&r, &mut backoff, Duration::from_secs(60)),
        Duration::from_secs(60)
    );
    assert_eq!(facts(&h).1, 3, "the records were still uploaded");
    let r = pass(&mut s, &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    assert!(matches!(r.closes, Step::Skipped(_)));
    assert_eq!(p.count("POST", "batch-close"), 1);
    assert_eq!(last_close(&h), None);
}

/// The daemon's pass ends with the terminal's health: its readers as the status board has them, and
/// the backlog, cache and last close this pass left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_ends_with_the_terminals_health_report() {
    use redeemd::sync::health::{BoardFacts, ReaderFacts};
    use redeemd_contract::health::{CloseVerdict, LinkState};
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let p = Platform::start(honest()).await;
    let board = BoardFacts {
        started_at_ms: T0,
        readers: vec![ReaderFacts {
            name: "counter-1".into(),
            state: "port error".into(),
            detail: Some("No such file or directory".into()),
            reader_serial: Some("SIM-0001".into()),
            ..ReaderFacts::default()
        }],
    };
    let mut s = syncer(&p).with_health(std::sync::Arc::new(move || board.clone()), 60);
    let r = pass(&mut s, &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    assert!(
        r.lines()
            .iter()
            .any(|l| l == "health        reported (1 readers, 1 not linked)"),
        "{:?}",
        r.lines()
    );
    let honest = p.honest.lock().unwrap();
    let [report] = &honest.health[..] else {
        panic!("{:?}", honest.health)
    };
    assert_eq!(report.readers[0].state, LinkState::PortError);
    assert_eq!(report.readers[0].reader_serial.as_deref(), Some("SIM-0001"));
    assert_eq!((report.journal.head_seq, report.journal.unsynced), (3, 0));
    assert_eq!(
        report.cache.as_ref().map(|c| c.version),
        Some(INSTALLED + 1)
    );
    assert_eq!(
        report.last_close.as_ref().map(|c| c.result),
        Some(CloseVerdict::Matched)
    );
    assert_eq!((report.started_at_ms, report.sync_interval_secs), (T0, 60));
}

/// An older platform without the health endpoint: one failure that does not back the sync off, then
/// no report for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_without_health_reports_costs_one_warning_not_a_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let p = Platform::start(honest()).await;
    p.misbehave(
        |r: &crate::platform::Request, _: &mut crate::platform::Honest| {
            r.is("POST", "health")
                .then(|| Reply::problem(404, "not_found", "no such route", None))
        },
    );
    let mut s = syncer(&p).with_health(std::sync::Arc::new(Default::default), 60);
    let r = pass(&mut s, &h).await;
    assert!(
        failure_text(&r).contains("health report: server answered 404"),
        "{}",
        r.lines().join("\n")
    );
    let mut backoff = Backoff::default();
    assert_eq!(
        next_delay(&r, &mut backoff, Duration::from_secs(60)),
        Duration::from_secs(60)
    );
    let r = pass(&mut s, &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    assert!(matches!(r.health, Some(Step::Skipped(_))));
    assert_eq!(p.count("POST", "health"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_the_platform_holds_otherwise_is_recorded_as_a_conflict_and_not_resent() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let p = Platform::start(honest()).await;
    p.misbehave(
        |r: &crate::platform::Request, _: &mut crate::platform::Honest| {
            r.is("POST", "batch-close").then(|| {
                Reply::problem(
                    409,
                    "batch_close_conflict",
                    "already closed with other totals",
                    None,
                )
            })
        },
    );
    let mut s = syncer(&p);
    let r = pass(&mut s, &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    assert_eq!(
        last_close(&h),
        Some((close_date(), CloseResult::Conflict, 3))
    );
    assert!(
        r.lines().iter().any(|l| l.contains("conflict")),
        "{:?}",
        r.lines()
    );
    pass(&mut s, &h).await;
    assert_eq!(p.count("POST", "batch-close"), 1, "not resent every pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_report_declines_the_card_after_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let mut honest = honest();
    honest.bundle = None; // the snapshot carrying the new status is not ready yet
    let p = Platform::start(honest).await;
    let r = pass(&mut syncer(&p), &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    h.run_blocking(|s, _| {
        assert_eq!(
            declined(&redeem(s, "r", 50, 4, &[(0, 1)], T0)),
            redeemd::engine::DeclineReason::CardLost
        );
        approved(&redeem(s, "r", 51, 3, &[(0, 1)], T0));
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_list_longer_than_one_answer_is_applied_page_by_page_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let mut honest = honest();
    honest.deny = (1..=3).map(|v| lost_entry(v, v)).collect();
    honest.deny_page = 1;
    let p = Platform::start(honest).await;
    let r = pass(&mut syncer(&p), &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    assert!(matches!(r.deny, Step::Done(d) if d.applied == 3 && d.version == 3));
    assert_eq!(p.count("GET", "deny-list"), 3);
    assert_eq!(facts(&h).2.entries, 3);
}

/// The platform answers the next request, once, with `401 clock_skew` and this server time.
fn skew_once(p: &Platform, server_time_ms: i64) {
    let mut once = true;
    p.misbehave(move |_, _| {
        std::mem::take(&mut once).then(|| {
            let body = serde_json::json!({
                "code": "clock_skew", "status": 401, "server_time_ms": server_time_ms,
            });
            Reply::json(401, body.to_string())
        })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_skew_answer_is_adopted_for_signing() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let p = Platform::start(honest()).await;
    skew_once(&p, crate::shop::wall_now() + 3_600_000);
    let mut s = syncer(&p);
    let r = pass(&mut s, &h).await;
    // The server's own checks use the real clock, so signing an hour ahead is refused from now on:
    // what matters here is that the client resent with the adopted offset.
    let offset = s.client.skew_offset_ms();
    assert!((3_500_000..3_700_000).contains(&offset), "{offset}");
    assert!(
        failure_text(&r).contains("clock_skew"),
        "{}",
        r.lines().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_before_1970_is_not_adopted_for_signing() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let p = Platform::start(honest()).await;
    skew_once(&p, i64::MIN);
    let mut s = syncer(&p);
    let r = pass(&mut s, &h).await;
    assert!(
        failure_text(&r).contains("clock_skew"),
        "{}",
        r.lines().join("\n")
    );
    // Signing with it would give negative timestamps, which no server accepts: sync would stay
    // refused (auth_malformed) after the server came back to its senses.
    assert_eq!(s.client.skew_offset_ms(), 0);
    p.behave();
    let r = pass(&mut s, &h).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
}

/// One misbehaviour: the hook, what the failure says, and what must not have changed.
struct Case {
    name: &'static str,
    hook: Box<dyn FnMut(&crate::platform::Request, &mut Honest) -> Option<Reply> + Send>,
    says: &'static str,
    retry_after_ms: Option<u64>,
}

fn cases() -> Vec<Case> {
    let keys = keys();
    let mut bad_mac = full_bundle(INSTALLED + 1);
    // Flip a byte inside entry 1's body (frame 2): walk the frames.
    let mut pos = 8;
    for _ in 0..2 {
        let len = u32::from_be_bytes(bad_mac[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 4 + len;
    }
    bad_mac[pos + 4 + 40] ^= 1;
    let rollback = full_bundle(INSTALLED - 2);
    let good = full_bundle(INSTALLED + 1);
    let forged = {
        let good_entry = lost_entry(1, 4);
        let forged = lost_entry(2, 3);
        let body = serde_json::json!({
        "merchant_id": MERCHANT, "version": 2, "entries": [
            crate::platform::deny_entry_json(&good_entry, &hex::encode(good_entry.mac(&keys.cache, MERCHANT))),
            crate::platform::deny_entry_json(&forged, &hex::encode([0u8; 32])),
        ]});
        body.to_string()
    };
    vec![
        Case {
            name: "times out",
            hook: Box::new(|r, _| r.is("GET", "journal/head").then_some(Reply::Hang)),
            says: "journal head: cannot reach the server: timed out",
            retry_after_ms: None,
        },
        Case {
            name: "closes mid-body",
            hook: Box::new(move |r, _| {
                r.is("GET", "entitlements").then(|| Reply::CutBody {
                    declared: good.len(),
                    sent: good[..good.len() / 2].to_vec(),
                })
            }),
            says: "entitlements: cannot reach the server",
            retry_after_ms: None,
        },
        Case {
            name: "answers 500",
            hook: Box::new(|r, _| {
                r.is("GET", "journal/head")
                    .then(|| Reply::problem(500, "internal", "database is locked", None))
            }),
            says: "journal head: server answered 500 internal: database is locked",
            retry_after_ms: None,
        },
        Case {
            name: "answers garbage JSON",
            hook: Box::new(|r, _| {
                r.is("GET", "journal/head")
                    .then(|| Reply::json(200, "<html>maintenance</html>"))
            }),
            says: "journal head: unusable answer: answer is not the expected JSON",
            retry_after_ms: None,
        },
        Case {
            name: "acks a seq higher than sent",
            hook: Box::new(|r, _| {
                r.is("POST", "journal").then(|| {
                    Reply::json(
                        200,
                        serde_json::json!({"acknowledged_seq": 9, "acknowledged_mac": hex::encode([1u8; 32])})
                            .to_string(),
                    )
                })
            }),
            says: "journal: server acknowledged seq 9 but only 3 was sent: refused as hostile",
            retry_after_ms: None,
        },
        Case {
            name: "serves a bundle with a bad MAC",
            hook: Box::new(move |r, _| {
                r.is("GET", "entitlements").then(|| Reply::Status {
                    status: 200,
                    headers: vec![],
                    body: bad_mac.clone(),
                })
            }),
            says: "entitlements: bundle refused, cache unchanged: entry 1 (card ",
            retry_after_ms: None,
        },
        Case {
            name: "serves an older version",
            hook: Box::new(move |r, _| {
                r.is("GET", "entitlements").then(|| Reply::Status {
                    status: 200,
                    headers: vec![],
                    body: rollback.clone(),
                })
            }),
            says: "version 3 is not newer than the installed 5 (rollback)",
            retry_after_ms: None,
        },
        Case {
            name: "serves a deny entry with a bad MAC",
            hook: Box::new(move |r, _| {
                r.is("GET", "deny-list")
                    .then(|| Reply::json(200, forged.clone()))
            }),
            says: "deny list: deny list refused, nothing applied: entry 1 (card ",
            retry_after_ms: None,
        },
        Case {
            name: "answers 429 with Retry-After",
            hook: Box::new(|r, _| {
                r.is("GET", "deny-list")
                    .then(|| Reply::problem(429, "rate_limited", "slow down", Some(120)))
            }),
            says: "deny list: server answered 429 rate_limited: slow down",
            retry_after_ms: Some(120_000),
        },
        Case {
            name: "answers a batch close with another day's verdict",
            hook: Box::new(|r, _| {
                r.is("POST", "batch-close").then(|| {
                    Reply::json(
                        200,
                        r#"{"result":"matched","business_date":"1999-01-01","differences":[]}"#,
                    )
                })
            }),
            says: "batch close: unusable answer: answer field business_date: another day's answer",
            retry_after_ms: None,
        },
        Case {
            name: "answers 503 with Retry-After",
            hook: Box::new(|r, _| {
                r.is("POST", "journal")
                    .then(|| Reply::problem(503, "unavailable", "maintenance", Some(7)))
            }),
            says: "journal upload: server answered 503 unavailable: maintenance",
            retry_after_ms: Some(7_000),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_server_changes_nothing_and_the_next_pass_retries_after_backoff() {
    for (i, case) in cases().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let h = shop_store(dir.path());
        let p = Platform::start(honest()).await;
        let before = facts(&h);
        p.misbehave(case.hook);
        let mut s = syncer(&p);
        let r = pass(&mut s, &h).await;
        let text = failure_text(&r);
        assert!(
            text.contains(case.says),
            "{}: {}",
            case.name,
            r.lines().join("\n")
        );
        // Nothing installed or marked by the failing step, no staging table left behind.
        let after = facts(&h);
        if case.says.starts_with("entitlements") || case.says.contains("rollback") {
            assert_eq!(after.0, INSTALLED, "{}", case.name);
        }
        if case.says.starts_with("journal") {
            assert_eq!(after.1, before.1, "{}: nothing marked", case.name);
        }
        if case.says.starts_with("deny") {
            assert_eq!(after.2, before.2, "{}: nothing applied", case.name);
        }
        if case.says.starts_with("batch close") {
            assert_eq!(last_close(&h), None, "{}: nothing recorded", case.name);
        }
        assert_eq!(after.3, 0, "{}: staging dropped", case.name);
        // The counter still works.
        redeems(&h, 100 + i as u64);
        // The next pass waits for the backoff (and at least Retry-After), then succeeds. A close that
        // failed by itself (the platform reachable) waits for the next interval instead: backing off
        // would delay loss reports.
        let mut backoff = Backoff::default();
        let delay = next_delay(&r, &mut backoff, Duration::from_secs(60));
        if case.says.starts_with("batch close") {
            assert_eq!(
                (backoff.failures(), delay),
                (0, Duration::from_secs(60)),
                "{}",
                case.name
            );
        } else {
            assert_eq!(backoff.failures(), 1, "{}", case.name);
            assert!(
                delay <= Duration::from_millis(case.retry_after_ms.unwrap_or(1_000).max(1_000))
            );
        }
        if let Some(ms) = case.retry_after_ms {
            assert!(
                delay >= Duration::from_millis(ms),
                "{}: {delay:?}",
                case.name
            );
            assert_eq!(r.retry_after_ms(), Some(ms));
        }
        p.behave();
        let r = pass(&mut s, &h).await;
        assert!(r.ok(), "{} (retry): {}", case.name, r.lines().join("\n"));
        let (version, acked, deny, _) = facts(&h);
        assert_eq!(
            (version, acked, deny.version),
            (INSTALLED + 1, 4, 1),
            "{}",
            case.name
        );
        assert_eq!(
            next_delay(&r, &mut backoff, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(backoff.failures(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_head_behind_the_acknowledged_seq_halts_uploading_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let h = shop_store(dir.path());
    let p = Platform::start(honest()).await;
    let mut s = syncer(&p);
    assert!(pass(&mut s, &h).await.ok());
    // The server loses what it acknowledged (restored from an older backup).
    p.honest.lock().unwrap().journal.truncate(1);
    redeems(&h, 7);
    let r = pass(&mut s, &h).await;
    assert!(
        failure_text(&r).contains("server head 1 is below the acknowledged seq 3"),
        "{}",
        r.lines().join("\n")
    );
    assert!(r.halted.is_some());
    // Later passes do not upload (never re-upload differently), but still fetch deny lists.
    let posts = p.count("POST", "journal");
    let r = pass(&mut s, &h).await;
    assert!(matches!(r.journal, Step::Skipped(ref why) if why.contains("halted")));
    assert!(matches!(r.deny, Step::Done(_)));
    assert!(!r.ok());
    assert_eq!(p.count("POST", "journal"), posts);
    assert_eq!(facts(&h).1, 3);
}

/// `redeemd sync` opens its own store and then waits for the sync lock, while the daemon redeems and
/// uploads on its own connection: by the time it syncs, the server's head is beyond the journal head it
/// loaded at open. That is the same database, not a restore: it must resume, not halt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_that_opened_before_the_daemon_uploaded_resumes_without_halting() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = shop_store(dir.path());
    let cli = StoreHandle::new(open(dir.path()), Clock::new());
    redeems(&daemon, 7); // seq 4
    let p = Platform::start(honest()).await;
    assert!(pass(&mut syncer(&p), &daemon).await.ok());
    redeems(&daemon, 8); // seq 5
    let r = pass(&mut syncer(&p), &cli).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    assert_eq!(p.honest.lock().unwrap().journal.len(), 5);
    assert_eq!(p.count("POST", "journal"), 2, "each record sent once");
    // And the daemon's next pass catches up with the acknowledgement instead of resending.
    let r = pass(&mut syncer(&p), &daemon).await;
    assert!(r.ok(), "{}", r.lines().join("\n"));
    assert_eq!(p.count("POST", "journal"), 2, "each record sent once");
    assert_eq!(facts(&daemon).1, 5);
}
