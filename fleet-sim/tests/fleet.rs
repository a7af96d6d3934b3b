//! A small fleet end to end: the real `fleet-sim` binary sets up cards and runs 20 terminals for a
//! few seconds against the real `clearing-server` binary on SQLite, with loss reports, voids, closes
//! and acknowledgements dropped on purpose; the reconciliation must be exact.
//!
//! `clearing-server` is looked for beside `fleet-sim` (Cargo builds only this package's binaries for
//! its tests) and built there with the cargo running the tests when it is missing or stale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn clearing_server() -> PathBuf {
    let me = Path::new(env!("CARGO_BIN_EXE_fleet-sim"));
    let dir = me.parent().unwrap();
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args([
        "build",
        "--quiet",
        "-p",
        "clearing-server",
        "--bin",
        "clearing-server",
    ])
    .arg("--target-dir")
    .arg(dir.parent().unwrap());
    if dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    assert!(
        c.status().unwrap().success(),
        "building clearing-server failed"
    );
    dir.join("clearing-server")
}

/// `clearing-server serve` on a free loopback port; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(bin: &Path, db: &Path, master_key: &Path) -> Server {
        let mut child = Command::new(bin)
            .arg("--db")
            .arg(db)
            .arg("--master-key-file")
            .arg(master_key)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(a) = line.split("listening on ").nth(1) {
                break a.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_small_fleet_runs_real_passes_and_reconciles_exactly() {
    let bin = clearing_server();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("clearing.sqlite3");
    let fleet_dir = tmp.path().join("fleet");
    // The platform seals card numbers under its master key: every admin command needs it too.
    let master_key = tmp.path().join("master.key");
    let made = Command::new(&bin)
        .args(["admin", "key", "generate", "--out"])
        .arg(&master_key)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = Server::start(&bin, &db, &master_key);
    let common = |c: &mut Command| {
        c.arg("--dir")
            .arg(&fleet_dir)
            .arg("--db")
            .arg(&db)
            .arg("--clearing-server")
            .arg(&bin)
            .arg(format!(
                "--admin-arg=--master-key-file={}",
                master_key.display()
            ));
    };

    let mut setup = Command::new(env!("CARGO_BIN_EXE_fleet-sim"));
    setup.args(["setup", "--cards", "200"]);
    common(&mut setup);
    let out = setup.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(fleet_dir.join("cards.csv")).unwrap();
    assert_eq!(csv.lines().count(), 201);

    let json = tmp.path().join("run.json");
    let mut run = Command::new(env!("CARGO_BIN_EXE_fleet-sim"));
    run.args([
        "run",
        "--server",
        &server.url,
        "--terminals",
        "20",
        "--terminals-per-merchant",
        "2",
        "--interval",
        "1",
        "--duration",
        "6",
        // About 100 counter events a terminal a minute, a minute and a half of them already made
        // at the first install, days ending over that span: closes are due during the run.
        "--redemptions-per-day",
        "3000000",
        "--backlog",
        "90",
        "--day-end",
        "run",
        "--verify-ratio",
        "0.5",
        "--void-ratio",
        "0.05",
        "--loss-reports-per-min",
        "60",
        "--drop-ack-ratio",
        "0.2",
        "--seed",
        "7",
        "--server-pid",
        &server.child.id().to_string(),
        "--json",
    ])
    .arg(&json);
    common(&mut run);
    let out = run.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reconciliation: EXACT"), "{stdout}");

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &v["reconciliation"];
    assert_eq!(r["terminals"], 20, "{stdout}");
    assert_eq!(r["terminals_ok"], 20, "{stdout}");
    assert_eq!(r["merchants"], 10, "{stdout}");
    assert_eq!(r["merchants_ok"], 10, "{stdout}");
    assert!(r["records"].as_u64().unwrap() > 100, "{stdout}");
    assert!(r["problems"].as_array().unwrap().is_empty(), "{stdout}");

    let phases = v["phases"].as_array().unwrap();
    let sum = |field: &str| -> u64 { phases.iter().map(|p| p[field].as_u64().unwrap_or(0)).sum() };
    let matched: u64 = phases
        .iter()
        .map(|p| p["closes"]["matched"].as_u64().unwrap_or(0))
        .sum();
    let other_closes: u64 = phases
        .iter()
        .flat_map(|p| p["closes"].as_object().unwrap().iter())
        .filter(|(k, _)| k.as_str() != "matched")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert!(matched > 0, "no business day was closed\n{stdout}");
    assert_eq!(other_closes, 0, "{stdout}");
    // Answers were dropped, and the next passes found those records held at the head.
    assert!(sum("acks_dropped") > 0, "{stdout}");
    assert!(sum("acks_resumed") > 0, "{stdout}");
    assert!(sum("voids") > 0, "{stdout}");
    assert!(sum("loss_reports_applied") > 0, "{stdout}");
    // Full snapshots and sampled deltas verified entry by entry, the other deltas by their manifest.
    assert!(sum("bundles_verified") >= 20, "{stdout}");
    assert!(sum("bundles_light") > 0, "{stdout}");
    // Every request answered: nothing failed but what the simulator did on purpose.
    for p in phases {
        assert_eq!(
            p["errors"].as_array().unwrap().len(),
            0,
            "{}: {stdout}",
            p["name"]
        );
        assert_eq!(p["unavailable"], 0);
    }
    let measured = phases.iter().find(|p| p["name"] == "measured").unwrap();
    assert!(measured["passes"].as_u64().unwrap() >= 60, "{stdout}");
    assert!(
        measured["server_cpu_ms_per_pass"].as_f64().unwrap() > 0.0,
        "{stdout}"
    );
    let endpoints: Vec<&str> = measured["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    for e in [
        "GET deny-list",
        "GET journal/head",
        "POST journal",
        "GET entitlements (delta)",
        "POST health",
    ] {
        assert!(endpoints.contains(&e), "{e} missing: {endpoints:?}");
    }
    assert!(v["db_bytes_after"].as_u64().unwrap() > v["db_bytes_before"].as_u64().unwrap());
}
