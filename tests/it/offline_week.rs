//! End to end, a shop offline for a simulated week, with a week really passing on the clocks of the
//! processes that decide: the reference `clearing-server serve` and `redeemd run` share one faked
//! wall clock, moved a day at a time by this test. The daemon does its own syncing, as in a shop:
//! its pass timers and backoff run on the real clock, so the whole week takes seconds.
//!
//! **How the week passes.** libfaketime (Debian package `faketime`) is preloaded into those
//! processes (`LD_PRELOAD`); it answers their `clock_gettime(CLOCK_REALTIME)` — what Rust's
//! `SystemTime::now` calls through glibc — with the real time plus the offset written in a file
//! (`FAKETIME_TIMESTAMP_FILE`, e.g. `+3d`), re-read on every call (`FAKETIME_NO_CACHE=1`), so that
//! one rewrite moves every process at once. `DONT_FAKE_MONOTONIC=1` leaves the monotonic and boot
//! clocks real: tokio's timers, the sync backoff, the reader link's timers and the journal's
//! `boot_ms` run at real speed, only the wall clock jumps. (libfaketime 0.9.10 also answers an
//! *absolute* `clock_nanosleep` on the monotonic clock with `EINVAL` under that option; Rust's
//! `thread::sleep` sleeps relative, and tokio sleeps in `epoll_wait`, so neither meets it.) The file
//! is replaced by a rename, never rewritten in place: libfaketime reads an empty or missing file as
//! "no offset", which would set every clock back to today for a moment. This test process itself is
//! not faked: `wall_now()` here is the real time, and each record's faked day is checked against it.
//!
//! Both processes read the same offset, so the request signatures' clock-skew window holds, and the
//! offset only grows, so the daemon's wall clock never goes back past its last trusted time.
//!
//! Without libfaketime the test fails and says what to install: it is not skipped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redeemd::engine::DeclineReason::{
    self, CacheExpired, CardOfflineLimitReached, TerminalOfflineLimitReached,
};
use redeemd::simulator::SwipeResult;
use redeemd_contract::JournalRecord;
use redeemd_contract::close;
use redeemd_contract::model::{CardNumber, CardRef};
use redeemd_contract::snapshot::Manifest;

use crate::clearing_e2e::{statement_is_the_sum_of_the_records, status_sync, stored_records};
use crate::daemon::{approved, declined, menu, reader, swipe, wire};
use crate::shop::{Daemon, wall_now};
use crate::support::{self, TERMINAL};
use crate::sync_e2e::{Server, Setup, server_journal, setup, wait_for, write_config};

const DAY: i64 = 86_400_000;
/// The platform's cache validity for this test: 8 days, so that a week offline fits.
const VALIDITY_HOURS: &str = "192";
/// The shop's `[risk]` limits between two syncs.
const RISK: &str = "max_offline_uses_per_card = 3\nmax_offline_redemptions = 12";

/// Where Debian's `libfaketime` package puts the library (multiarch), or a `make install` from source.
pub(crate) fn libfaketime() -> PathBuf {
    let candidates = [
        PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu/faketime/libfaketime.so.1",
            std::env::consts::ARCH
        )),
        PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is not installed (looked for {candidates:?}): this test runs the clearing \
                 server and the daemon on a faked wall clock. Install it: `apt-get install faketime`"
            )
        })
}

/// A wall clock shared by every process started with [`FakeTime::env`]: the real time plus a whole
/// number of days that only this test moves.
struct FakeTime {
    lib: PathBuf,
    file: PathBuf,
}

impl FakeTime {
    /// The clock at day 0 (the real time), its offset file in `dir`.
    fn new(dir: &Path) -> FakeTime {
        let clock = FakeTime {
            lib: libfaketime(),
            file: dir.join("faketime"),
        };
        clock.set_day(0);
        clock
    }

    /// Moves every faked process to the real time plus `day` days, at once.
    fn set_day(&self, day: i64) {
        let next = self.file.with_extension("next");
        std::fs::write(&next, format!("+{day}d\n")).unwrap();
        std::fs::rename(&next, &self.file).unwrap();
    }

    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("LD_PRELOAD", self.lib.clone().into()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.clone().into()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }
}

/// What the counter must do with a card.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Approved,
    DeclinedAtSwipe(DeclineReason),
    DeclinedAtRedeem(DeclineReason),
}
use Expect::*;

/// The week at the counter, in order: (day offline, card, washes asked for, what must happen), under
/// [`RISK`]: 3 units per card and 12 redemptions between two syncs.
const WEEK: [(i64, u64, u16, Expect); 15] = [
    (1, 0, 1, Approved),
    (1, 1, 1, Approved),
    (2, 0, 1, Approved),
    (2, 2, 1, Approved),
    (3, 0, 1, Approved),
    (3, 3, 1, Approved),
    // Card 0 has used its 3 offline units: refused at the swipe, though it has 7 washes left.
    (4, 0, 1, DeclinedAtSwipe(CardOfflineLimitReached)),
    // Card 1 has used 1: 3 more would go over its allowance; 2 fit.
    (4, 1, 3, DeclinedAtRedeem(CardOfflineLimitReached)),
    (4, 1, 2, Approved),
    (5, 2, 1, Approved),
    (5, 4, 1, Approved),
    (6, 3, 1, Approved),
    (6, 4, 1, Approved),
    // The terminal's 12th offline redemption, then its limit: any further card is refused.
    (7, 2, 1, Approved),
    (7, 3, 1, DeclinedAtSwipe(TerminalOfflineLimitReached)),
];

fn card_ref(s: &Setup, card: u64) -> CardRef {
    CardNumber::parse(&support::number(card))
        .unwrap()
        .card_ref(&s.keys.card_token)
}

/// The installed cache's manifest, read beside the running daemon.
fn manifest(s: &Setup) -> Manifest {
    s.open_store().cache_info().unwrap().unwrap().manifest
}

/// The local journal, every record verified, in seq order.
fn local_records(s: &Setup) -> Vec<JournalRecord> {
    let store = s.open_store();
    let head = store.journal_info().head_seq;
    store
        .journal_records(1, head as usize)
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// `received_ms` of every record the server holds.
fn received_ms(db: &Path) -> Vec<i64> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare("SELECT received_ms FROM journal ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Asserts that `at` (a faked process's wall time) fell on `day` of the fake clock, the real time
/// having been within `real` meanwhile.
/// The platform's end-of-day closes of the terminal, oldest first: (business date, verdict).
fn server_closes(db: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT business_date, answer FROM batch_close WHERE terminal_id = ?1 ORDER BY business_date")
        .unwrap();
    stmt.query_map([TERMINAL], |r| {
        let answer: String = r.get(1)?;
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        Ok((r.get(0)?, v["result"].as_str().unwrap_or("?").to_owned()))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn on_day(what: &str, at: i64, day: i64, real: (i64, i64)) {
    let window = real.0 + day * DAY..=real.1 + day * DAY;
    assert!(
        window.contains(&at),
        "{what} at {at} ms is not on fake day {day} ({window:?}): the process does not run on the \
         faked clock"
    );
}

async fn expect_swipe_declined(
    r: &mut redeemd::simulator::SimReader,
    card: u64,
    why: DeclineReason,
) {
    match swipe(r, card).await {
        SwipeResult::Declined(d) => assert_eq!(d.reason, wire(why), "card {card}"),
        other => panic!("card {card}: expected {why:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_shop_offline_for_a_week_redeems_within_its_risk_limits_fails_closed_past_its_cache_then_uploads_everything_in_order()
 {
    let s = setup();
    let clock = FakeTime::new(s.root.path());
    let serve = ["--cache-validity-hours", VALIDITY_HOURS];
    let day0 = wall_now();
    let server = Server::start_with(&s.server_db, "127.0.0.1:0", &serve, &clock.env());
    write_config(&s.shop, TERMINAL, &server.url(), RISK);
    let daemon = Daemon::start_with(&s.shop, &clock.env());
    wait_for("cache installed", Duration::from_secs(30), || {
        s.cache_version() > 0
    });
    let first = manifest(&s);
    on_day(
        "the first cache's issue",
        first.issued_at_ms,
        0,
        (day0, wall_now()),
    );
    assert_eq!(
        first.expires_at_ms - first.issued_at_ms,
        8 * DAY,
        "signed under --cache-validity-hours {VALIDITY_HOURS}"
    );
    let mut r = reader(&s.shop, 0, "R-WEEK").await;

    // The platform goes away for the week; the counter goes on, a day at a time. The daemon's next
    // pass (after the day moved, so that it is the first to fail) finds no server, and says so on
    // the fake clock.
    let week_start = wall_now();
    clock.set_day(1);
    let (db, addr) = server.kill9();
    wait_for(
        "a failed pass in status.json",
        Duration::from_secs(15),
        || status_sync(&s.shop).is_some_and(|y| y.consecutive_failures > 0),
    );
    let sync = status_sync(&s.shop).unwrap();
    let result = sync.last_result.unwrap_or_default();
    assert!(result.contains("cannot reach the server"), "{result}");
    let attempt = sync.last_attempt_at_ms.unwrap();
    on_day("the failed pass", attempt, 1, (week_start, wall_now()));
    let mut expected: Vec<(i64, u64, u16)> = Vec::new();
    for (day, card, washes, expect) in WEEK {
        clock.set_day(day);
        let what = format!("day {day}, card {card}, {washes} wash(es): expected {expect:?}");
        match (swipe(&mut r, card).await, expect) {
            (SwipeResult::Declined(d), DeclinedAtSwipe(why)) => {
                assert_eq!(d.reason, wire(why), "{what}");
            }
            (SwipeResult::Menu(m), Approved) => {
                assert!(m.entries[0].uses_left >= washes, "{what}: {m:?}");
                approved(r.redeem(&[(0, washes)], None).await.unwrap());
                expected.push((day, card, washes));
            }
            (SwipeResult::Menu(_), DeclinedAtRedeem(why)) => {
                let got = declined(r.redeem(&[(0, washes)], None).await.unwrap());
                assert_eq!(got, wire(why), "{what}");
            }
            (got, _) => panic!("{what}, got {got:?}"),
        }
        // Recorded only when approved; nothing acknowledged while the platform is away.
        assert_eq!(s.local(), (expected.len() as u64, 0), "{what}");
    }
    let week_end = wall_now();
    assert_eq!(expected.len(), 12, "the terminal's offline limit");

    // Every record is the one the counter approved, made on its fake day: the week is in the journal.
    let local = local_records(&s);
    assert_eq!(local.len(), expected.len());
    for (rec, &(day, card, washes)) in local.iter().zip(&expected) {
        assert_eq!(
            (rec.card_ref, rec.quantity),
            (card_ref(&s, card), u32::from(washes)),
            "seq {}",
            rec.seq
        );
        let what = format!("record seq {}", rec.seq);
        on_day(&what, rec.wall_ms, day, (week_start, week_end));
    }
    let span = local[local.len() - 1].wall_ms - local[0].wall_ms;
    assert!(span >= 6 * DAY, "the records span {span} ms");

    // Day 9, a day past the cache's 8: the counter fails closed, whatever the card; nothing recorded.
    clock.set_day(9);
    for card in [4, 3] {
        expect_swipe_declined(&mut r, card, CacheExpired).await;
    }
    assert_eq!(s.local(), (12, 0));

    // The platform returns (same database, same address, same clock). The daemon's next pass (its
    // backoff after a few failed ones: seconds, on the real clock) uploads the backlog and renews
    // the cache.
    let back = wall_now();
    let server = Server::start_with(&db, &addr, &serve, &clock.env());
    wait_for("the backlog acknowledged", Duration::from_secs(120), || {
        s.local() == (12, 12)
    });
    let (rows, max, mac) = server_journal(&server.db);
    assert_eq!((rows, max), (12, 12), "nothing lost, nothing twice");
    assert_eq!(
        mac,
        s.local_head_mac(),
        "the server holds exactly our chain"
    );
    assert_eq!(
        stored_records(&server.db),
        local,
        "in order, as the shop made them"
    );
    for (i, at) in received_ms(&server.db).into_iter().enumerate() {
        on_day(
            &format!("seq {} received", i + 1),
            at,
            9,
            (back, wall_now()),
        );
    }
    // The same pass closes every business day of the week that has records (批结算): the platform
    // recomputes each day's totals from what it now holds and finds them equal.
    let mut days: Vec<String> = local
        .iter()
        .map(|r| close::format_date(close::business_day(r.wall_ms, 480)))
        .collect();
    days.dedup();
    assert!(days.len() >= 6, "{days:?}");
    wait_for("the week's days closed", Duration::from_secs(30), || {
        s.open_store()
            .last_close()
            .unwrap()
            .map(|c| c.business_date)
            == days.last().cloned()
    });
    assert_eq!(
        server_closes(&server.db),
        days.iter()
            .map(|d| (d.clone(), "matched".to_owned()))
            .collect::<Vec<_>>(),
        "one close per day with records, each matched"
    );
    // The same pass renews the cache: issued on day 9, valid 8 days more.
    wait_for("the cache renewed", Duration::from_secs(30), || {
        s.cache_version() > first.version
    });
    let renewed = manifest(&s);
    on_day(
        "the renewed cache's issue",
        renewed.issued_at_ms,
        9,
        (back, wall_now()),
    );
    assert_eq!(renewed.expires_at_ms - renewed.issued_at_ms, 8 * DAY);

    // The counter is open again, with fresh offline allowances; the next pass uploads the new record.
    let m = menu(swipe(&mut r, 3).await);
    assert_eq!(
        m.entries[0].uses_left, 8,
        "10 washes, 2 redeemed offline: {m:?}"
    );
    approved(r.redeem(&[(0, 1)], None).await.unwrap());
    wait_for("seq 13 acknowledged", Duration::from_secs(30), || {
        s.local() == (13, 13)
    });
    let stored = stored_records(&server.db);
    assert_eq!(
        stored.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=13).collect::<Vec<_>>()
    );
    assert_eq!(server_journal(&server.db).2, s.local_head_mac());
    on_day("seq 13", stored[12].wall_ms, 9, (back, wall_now()));

    // What the merchant is paid is what the shop recorded: 13 + 1 washes at 35.00.
    let statement = statement_is_the_sum_of_the_records(&server.db);
    let washes: i64 = expected.iter().map(|&(_, _, w)| i64::from(w)).sum::<i64>() + 1;
    assert_eq!(washes, 14);
    assert_eq!(statement["net_amount_fen"].as_i64(), Some(washes * 3500));
    assert!(!daemon.has_log("HALTED"), "{}", daemon.log_text());
}
