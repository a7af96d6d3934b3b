//! One state directory, one daemon, never a silent fresh start: the daemon's lock, where a database
//! may be created (and where never), a state directory that is missing or a file, doctor before the
//! first start, and a full disk shown by `redeemd status`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use redeemd::simulator::{Line, LineSpec, SwipeResult};
use redeemd::store::DB_FILE;
use redeemd::store::state_dir::{LOCK_FILE, MARKER_FILE};

use crate::daemon::{approved, declined, menu, reader, shop, swipe, wire};
use crate::shop::{Daemon, Mounted, Shop, redeemd_with, running_as_root};
use crate::support::{MERCHANT, SECRET_HEX, TERMINAL};

fn redeemd(config: &Path, args: &[&str]) -> (i32, String) {
    redeemd_with(config, args)
}

/// A shop's configuration and key without any state: `state_dir` as given, one reader port path,
/// no sync.
struct Bare {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn bare(state_dir: impl FnOnce(&Path) -> PathBuf) -> Bare {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("terminal.key");
    std::fs::write(&key, format!("{SECRET_HEX}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let state = state_dir(dir.path());
    let config = dir.path().join("redeemd.toml");
    std::fs::write(
        &config,
        format!(
            "terminal_id = \"{TERMINAL}\"\nmerchant_id = \"{MERCHANT}\"\nstate_dir = \"{}\"\n\
             [key]\nfile = \"{}\"\n[[reader]]\nname = \"counter-0\"\nport = \"{}\"\n",
            state.display(),
            key.display(),
            dir.path().join("reader-0").display()
        ),
    )
    .unwrap();
    Bare { dir, config }
}

/// Every command that reads the state directory, with the arguments it needs.
const EVERY_COMMAND: [&[&str]; 10] = [
    &["run"],
    &["status"],
    &["sync"],
    &["journal", "verify"],
    &["cache", "verify"],
    &["cache", "info"],
    &["journal", "export"],
    &["report", "--date", "2026-09-21"],
    &["doctor", "--user", "root"],
    &["init"],
];

#[test]
fn a_second_daemon_on_one_state_directory_is_refused_naming_the_first() {
    let shop = shop(0, "");
    let first = Daemon::start(&shop);
    let started = Instant::now();
    let (code, out) = redeemd(&shop.config, &["run"]);
    assert_eq!(code, 75, "{out}");
    assert!(
        out.contains(&format!(
            "is in use by another redeemd (pid {})",
            first.pid()
        )),
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "it waited");
    // The read-only tools still work beside the daemon.
    let (code, out) = redeemd(&shop.config, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("pid {} (running)", first.pid())),
        "{out}"
    );
    let (code, out) = redeemd(&shop.config, &["journal", "verify"]);
    assert_eq!(code, 0, "{out}");
    // Once the first is gone, the directory is free.
    drop(first);
    let second = Daemon::start(&shop);
    drop(second);
    assert!(shop.state.join(LOCK_FILE).exists());
}

#[test]
fn run_never_creates_a_missing_state_directory_nor_its_parents() {
    // A typo in the path: neither the directory nor its parents appear.
    let b = bare(|d| d.join("no").join("such").join("state"));
    let (code, out) = redeemd(&b.config, &["run"]);
    assert_eq!(code, 66, "{out}");
    assert!(out.contains("does not exist"), "{out}");
    let (code, out) = redeemd(&b.config, &["init"]);
    assert_eq!(code, 66, "{out}");
    assert!(out.contains("its parent directory does not exist"), "{out}");
    assert!(!b.dir.path().join("no").exists());
    // The parent exists, the state directory not: `run` still creates nothing; `init` creates it.
    let b = bare(|d| d.join("state"));
    let state = b.dir.path().join("state");
    let (code, out) = redeemd(&b.config, &["run"]);
    assert_eq!(code, 66, "{out}");
    assert!(out.contains("redeemd init"), "{out}");
    assert!(!state.exists());
    let (code, out) = redeemd(&b.config, &["init"]);
    assert_eq!(code, 0, "{out}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(state.join(DB_FILE).is_file() && state.join(MARKER_FILE).is_file());
    let (code, out) = redeemd(&b.config, &["init"]);
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("already holds a database"), "{out}");
    let (code, out) = redeemd(&b.config, &["journal", "verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_first_start_in_an_empty_state_directory_creates_the_database() {
    let b = bare(|d| d.join("state"));
    let state = b.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let shop = Shop {
        dir: tempfile::tempdir().unwrap(),
        config: b.config.clone(),
        state: state.clone(),
    };
    let daemon = Daemon::start(&shop);
    assert!(daemon.has_log("created a new database"));
    drop(daemon);
    assert!(state.join(DB_FILE).is_file());
    let marker = redeemd::store::state_dir::read_marker(&state)
        .unwrap()
        .unwrap();
    assert_eq!(
        (marker.terminal_id.as_str(), marker.journal_head_seq),
        (TERMINAL, 0)
    );
}

#[test]
fn a_deleted_or_emptied_database_is_refused_with_the_way_out() {
    let shop = shop(0, "");
    let text = std::fs::read_to_string(&shop.config).unwrap();
    std::fs::write(
        &shop.config,
        format!("{text}[sync]\nserver_url = \"http://127.0.0.1:9\"\n"),
    )
    .unwrap();
    let db = shop.state.join(DB_FILE);
    assert!(shop.state.join(MARKER_FILE).is_file());
    // Deleted (with its WAL): nothing starts a new journal in its place.
    for f in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{f}", db.display()));
    }
    for args in [&["run"][..], &["status"], &["journal", "verify"], &["sync"]] {
        let (code, out) = redeemd(&shop.config, args);
        assert_eq!(code, 65, "{args:?}: {out}");
        assert!(
            out.contains(
                "is missing, but this state directory held the journal of terminal T-0001"
            ) && out.contains("Restore redeemd.sqlite3"),
            "{args:?}: {out}"
        );
        assert!(!db.exists(), "{args:?} created a database");
    }
    let (code, out) = redeemd(&shop.config, &["doctor", "--user", "root"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM  database") && out.contains("is missing"),
        "{out}"
    );
    // Emptied to 0 bytes: the same, and the file stays as it is.
    std::fs::write(&db, b"").unwrap();
    for args in [&["run"][..], &["journal", "verify"], &["cache", "verify"]] {
        let (code, out) = redeemd(&shop.config, args);
        assert_eq!(code, 65, "{args:?}: {out}");
        assert!(out.contains("is an empty (0-byte) file"), "{args:?}: {out}");
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "{args:?}");
    }
    // Without the marker (a daemon before it existed ran here): the files it left say so.
    std::fs::remove_file(&db).unwrap();
    std::fs::remove_file(shop.state.join(MARKER_FILE)).unwrap();
    std::fs::write(shop.state.join("status.json"), b"{}").unwrap();
    let (code, out) = redeemd(&shop.config, &["run"]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("holds no database but is not empty (status.json)"),
        "{out}"
    );
    assert!(!db.exists());
}

#[test]
fn a_state_directory_that_is_a_file_is_named_by_every_command() {
    let b = bare(|d| d.join("state"));
    std::fs::write(b.dir.path().join("state"), b"not a directory").unwrap();
    let text = std::fs::read_to_string(&b.config).unwrap();
    std::fs::write(
        &b.config,
        format!("{text}[sync]\nserver_url = \"http://127.0.0.1:9\"\n"),
    )
    .unwrap();
    for args in EVERY_COMMAND {
        let (code, out) = redeemd(&b.config, args);
        assert!(
            out.contains("state") && out.contains("is not a directory"),
            "{args:?} ({code}): {out}"
        );
        let expected = if args[0] == "doctor" { 1 } else { 66 };
        assert_eq!(code, expected, "{args:?}: {out}");
    }
}

/// A live pty behind the reader's port path, for doctor's port check.
fn live_port(b: &Bare) -> Line {
    Line::open(
        &LineSpec::CreatePty,
        115_200,
        Some(&b.dir.path().join("reader-0")),
    )
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn doctor_before_the_first_start_says_so_and_passes() {
    // No state directory yet (systemd makes it at the first start).
    let b = bare(|d| d.join("state"));
    let _line = live_port(&b);
    let (code, out) = redeemd(&b.config, &["doctor", "--user", "root"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("INFO")
            && l.contains("state dir")
            && l.contains("not started yet")),
        "{out}"
    );
    assert!(!out.contains("PROBLEM"), "{out}");
    assert!(!b.dir.path().join("state").exists(), "doctor created it");
    // An empty state directory: the database is not there yet, and doctor leaves nothing in it.
    let state = b.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let (code, out) = redeemd(&b.config, &["doctor", "--user", "root"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("INFO")
            && l.contains("database")
            && l.contains("not started yet")),
        "{out}"
    );
    assert!(out.contains("OK       state dir"), "{out}");
    let left: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
    assert!(left.is_empty(), "doctor left {left:?}");
}

/// Fills the filesystem of `dir` with a file until the disk refuses.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "{e}");
            break;
        }
    }
    // Small writes for the last partial block.
    while f.write_all(&[0u8; 512]).and_then(|()| f.sync_all()).is_ok() {}
    filler
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_disk_is_shown_by_status_and_redemptions_resume_once_space_is_freed() {
    if !running_as_root() {
        // Mounting needs root; CI runs as root (`.ci/run`), so there this test always runs.
        eprintln!("skipped: mounting a size-limited tmpfs needs root");
        return;
    }
    let shop = shop(1, "");
    // The state directory on a 4 MiB filesystem of its own.
    let saved = shop.dir.path().join("saved-state");
    std::fs::create_dir(&saved).unwrap();
    for entry in std::fs::read_dir(&shop.state).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), saved.join(entry.file_name())).unwrap();
    }
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&shop.state)
        .status()
        .unwrap();
    assert!(status.success(), "mount of a tmpfs failed");
    let _mounted = Mounted(shop.state.clone());
    for entry in std::fs::read_dir(&saved).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), shop.state.join(entry.file_name())).unwrap();
    }
    let daemon = Daemon::start(&shop);
    let mut r = reader(&shop, 0, "R-FULL").await;
    menu(swipe(&mut r, 1).await);
    approved(r.redeem(&[(0, 1)], None).await.unwrap());
    let filler = fill(&shop.state);
    // The disk is full: the swipe's answer (PROTOCOL.md §8.2: stored before it is sent) or else the
    // redemption cannot be recorded, so one of them is declined STORAGE_FAILURE.
    let refused = match swipe(&mut r, 1).await {
        SwipeResult::Declined(d) => d.reason,
        SwipeResult::Menu(_) => declined(r.redeem(&[(0, 1)], None).await.unwrap()),
    };
    assert_eq!(refused, wire(redeemd::engine::DeclineReason::InternalError));
    // `status` says so: free space now, and the daemon's last storage error.
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        let (code, out) = redeemd(&shop.config, &["status"]);
        assert_eq!(code, 0, "{out}");
        if out.contains("LAST ERROR") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.contains("storage        DISK FULL: 0 bytes free"),
        "{out}"
    );
    assert!(
        out.contains("LAST ERROR") && out.contains("database or disk is full"),
        "{out}\n{}",
        daemon.log_text()
    );
    let published = redeemd::daemon::status::read(&shop.state).unwrap();
    let storage = published.storage.unwrap();
    assert!(storage.last_error.is_some(), "{storage:?}");
    let (code, out) = redeemd(&shop.config, &["doctor", "--user", "root"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fix: free disk space"), "{out}");
    // Space freed: the next redemption is recorded, and the error clears.
    std::fs::remove_file(filler).unwrap();
    menu(swipe(&mut r, 1).await);
    approved(r.redeem(&[(0, 1)], None).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out) = redeemd(&shop.config, &["status"]);
        if !out.contains("LAST ERROR") {
            assert!(!out.contains("DISK FULL"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the storage error did not clear: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(r);
    drop(daemon);
}
