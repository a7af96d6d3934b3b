//! Fleet health fed back, end to end: the real `redeemd run` reports its health at the end of every
//! sync pass to the real `clearing-server`, and a reader unplugged at the shop shows as a
//! `reader_down` alert in `clearing-server admin fleet` within two sync intervals.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::reader;
use crate::shop::Daemon;
use crate::support::TERMINAL;
use crate::sync_e2e::{Server, admin, setup, wait_for};

/// The shop's `[sync] interval_secs` (`sync_e2e::write_config`).
const INTERVAL: Duration = Duration::from_secs(5);
/// The platform does not call a reader down in a daemon's first 10 s
/// (`clearing_server::core::fleet::READER_GRACE_MS`, a crate this one does not depend on).
const READER_GRACE_MS: i64 = 10_000;

/// `admin fleet --json`: this terminal's entry.
fn fleet(db: &std::path::Path) -> Value {
    let all: Value = serde_json::from_str(&admin(db, &["fleet", "--json"])).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|t| t["terminal_id"] == TERMINAL)
        .cloned()
        .unwrap()
}

fn alerts(t: &Value) -> Vec<String> {
    t["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_reader_unplugged_at_the_shop_is_an_alert_in_admin_fleet_within_two_sync_intervals() {
    let s = setup();
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let _daemon = Daemon::start(&s.shop);
    wait_for(
        "the platform's snapshot installed",
        Duration::from_secs(30),
        || s.cache_version() > 0,
    );
    let mut r = reader(&s.shop, 0, "R-FLEET").await;
    // A report with the reader linked, from a daemon past its start-up grace: no alert. The reader
    // idles meanwhile (it answers the daemon's heartbeats only while it is polled).
    let deadline = Instant::now() + Duration::from_secs(60);
    let healthy = loop {
        let t = fleet(&s.server_db);
        let h = &t["health"];
        if h["readers"][0]["state"] == "link_up"
            && h["reported_at_ms"].as_i64().unwrap_or(0) - h["started_at_ms"].as_i64().unwrap_or(0)
                >= READER_GRACE_MS
            && h["cache"]["version"].as_u64() == Some(s.cache_version())
        {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no healthy report within 60 s: {t}"
        );
        r.idle(Duration::from_millis(300)).await.unwrap();
    };
    assert_eq!(alerts(&healthy), Vec::<String>::new(), "{healthy}");
    let h = &healthy["health"];
    assert_eq!(h["readers"][0]["name"], "counter-0");
    assert_eq!(h["readers"][0]["reader_serial"], "R-FLEET");
    assert_eq!(h["daemon_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["sync_interval_secs"], 5);
    assert_eq!(h["journal"]["unsynced"], 0);
    assert!(h["halted"].is_null() && h["last_close"].is_null(), "{h}");
    // Unplugged: the pty the reader held is gone.
    r.unplug().unwrap();
    let unplugged = Instant::now();
    let mut down = Value::Null;
    while unplugged.elapsed() < 4 * INTERVAL {
        down = fleet(&s.server_db);
        if alerts(&down).iter().any(|a| a == "reader_down") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = unplugged.elapsed();
    eprintln!("reader_down alert in admin fleet {took:?} after the unplug");
    assert!(
        alerts(&down).iter().any(|a| a == "reader_down"),
        "no alert after {took:?}: {down}"
    );
    assert!(
        took <= 2 * INTERVAL,
        "the alert took {took:?}, more than two sync intervals"
    );
    assert_ne!(down["health"]["readers"][0]["state"], "link_up", "{down}");
    // The text a person reads names the reader and why.
    let text = admin(&s.server_db, &["fleet"]);
    assert!(
        text.contains("ALERT reader_down: reader counter-0 (R-FLEET)"),
        "{text}"
    );
}
