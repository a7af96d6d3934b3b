//! End to end: the real `redeemd run` against the real reference `clearing-server` binary over
//! loopback HTTP, with simulated readers on ptys.
//!
//! **Where the server binary comes from.** Cargo builds only the binaries of the package under test
//! for its integration tests, so `clearing-server` is looked for next to `redeemd`
//! (`env!("CARGO_BIN_EXE_redeemd")`'s directory: it is there after any workspace build). If it is
//! missing, it is built once with the cargo that runs these tests (`$CARGO build -p clearing-server
//! --bin clearing-server`, same target directory and profile), so `cargo test -p redeemd` works on a
//! fresh checkout too.
//!
//! Everything the shop knows comes from the platform: the terminal is enrolled with `clearing-server
//! admin enroll` (which writes the secret the daemon uses), the cards are created and customized with
//! `clearing-server admin card …`, and the daemon's first pass installs the server's snapshot.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use firmware_protocol::message::EntryMode;
use redeemd::engine::DeclineReason;
use redeemd::simulator::{SimReader, SwipeResult};
use redeemd::store::{Store, StoreConfig};
use redeemd_contract::model::CardRef;
use redeemd_contract::{TerminalKeys, TerminalSecret};

use crate::daemon::{approved, menu, reader, swipe, wire};
use crate::shop::{Daemon, Shop, wall_now};
use crate::support::{self, MERCHANT, TERMINAL};

/// The `clearing-server` binary beside `redeemd`, brought up to date on first use: Cargo builds
/// only this package's binaries for its tests, and `cargo test -p redeemd` would otherwise run
/// whatever server an earlier build left there, however old (a no-op build when it is current).
pub(crate) fn clearing_server() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let redeemd = Path::new(env!("CARGO_BIN_EXE_redeemd"));
        let dir = redeemd.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
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
        let status = c.status().unwrap();
        assert!(status.success(), "building clearing-server failed");
        dir.join("clearing-server")
    })
}

/// `clearing-server` with the platform master key these tests use (a key file of mode 0600 made once,
/// in its own directory: a platform keeps the key apart from the database).
pub(crate) fn platform_command() -> Command {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("clearing-key-")
            .tempdir()
            .unwrap()
            .keep();
        let path = dir.join("master.key");
        std::fs::write(&path, format!("{}\n", "5a".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    });
    let mut c = Command::new(clearing_server());
    c.env("CLEARING_MASTER_KEY_FILE", key);
    c
}

/// A running `clearing-server serve`; killed (SIGKILL) on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    pub(crate) db: PathBuf,
}

impl Server {
    pub(crate) fn start(db: &Path, listen: &str) -> Server {
        Server::start_with(db, listen, &[], &[])
    }

    /// [`Server::start`] with more `serve` arguments and `env` added to the process's environment
    /// (e.g. a faked wall clock: `offline_week.rs`).
    pub(crate) fn start_with(
        db: &Path,
        listen: &str,
        serve_args: &[&str],
        env: &[(&str, OsString)],
    ) -> Server {
        let mut child = platform_command()
            .arg("--db")
            .arg(db)
            .args(["serve", "--listen", listen])
            .args(serve_args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(a) = line.split("listening on http://").nth(1) {
                break a.trim().to_owned();
            }
        };
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server {
            child,
            addr,
            db: db.to_owned(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// kill -9, as a power cut or an OOM kill would.
    pub(crate) fn kill9(mut self) -> (PathBuf, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.db.clone(), self.addr.clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the server holds for the terminal: (rows, highest seq, MAC at the highest seq).
pub(crate) fn server_journal(db: &Path) -> (u64, u64, Vec<u8>) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT count(*), coalesce(max(seq), 0), coalesce((SELECT mac FROM journal WHERE terminal_id = ?1 ORDER BY seq DESC LIMIT 1), x'') FROM journal WHERE terminal_id = ?1",
        [TERMINAL],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get(2)?)),
    )
    .unwrap()
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {timeout:?}");
}

/// A platform with the terminal enrolled, and a shop whose key is the enrolled secret.
pub(crate) struct Setup {
    pub(crate) root: tempfile::TempDir,
    pub(crate) server_db: PathBuf,
    pub(crate) keys: TerminalKeys,
    pub(crate) shop: Shop,
}

/// `clearing-server --db <db> admin …`, which must succeed; its stdout.
pub(crate) fn admin(db: &Path, args: &[&str]) -> String {
    let out = platform_command()
        .arg("--db")
        .arg(db)
        .arg("admin")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Issues card `i` on the platform with a car-wash package: WASH ×10 (entry 0), WAX ×2 (entry 1).
pub(crate) fn issue_card(db: &Path, i: u64) {
    let number = support::number(i);
    admin(db, &["card", "create", "--number", &number]);
    admin(
        db,
        &[
            "card",
            "customize",
            "--number",
            &number,
            "--package",
            "P1",
            "--title",
            "洗车套餐",
            "--valid-from",
            "2026-01-01",
            "--valid-until",
            "2099-12-31",
            "--item",
            "WASH:精洗:10:3500",
            "--item",
            "WAX:打蜡:2:8000",
        ],
    );
}

/// Enrolls the terminal, issues cards 0..4 on the platform, and lays out a shop (one reader) whose
/// key is the enrolled secret and whose state directory is empty: its cache comes from the server.
pub(crate) fn setup() -> Setup {
    let root = tempfile::tempdir().unwrap();
    let server_db = root.path().join("clearing.sqlite3");
    let key = root.path().join("terminal.key");
    admin(
        &server_db,
        &[
            "merchant",
            "--id",
            MERCHANT,
            "--name",
            "城东洗车",
            "--commission-bps",
            "500",
        ],
    );
    let key_text = key.display().to_string();
    admin(
        &server_db,
        &[
            "enroll",
            "--terminal",
            TERMINAL,
            "--merchant",
            MERCHANT,
            "--key-file",
            &key_text,
        ],
    );
    for i in 0..5 {
        issue_card(&server_db, i);
    }
    let secret = TerminalSecret::from_hex_text(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let keys = secret.derive_all(TERMINAL);
    let dir = tempfile::Builder::new()
        .prefix("redeemd-shop-")
        .tempdir()
        .unwrap();
    let shop_key = dir.path().join("terminal.key");
    std::fs::copy(&key, &shop_key).unwrap();
    std::fs::set_permissions(&shop_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let state = dir.path().join("state");
    // Empty, as systemd's StateDirectory= leaves it before the first start.
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("redeemd.toml");
    let shop = Shop { dir, config, state };
    Setup {
        root,
        server_db,
        keys,
        shop,
    }
}

/// The config of a shop with one reader (`counter-0` on `shop.port(0)`) for `terminal`, syncing every 5 s
/// with `server_url`, with the `[risk]` lines `risk`.
pub(crate) fn write_config(shop: &Shop, terminal: &str, server_url: &str, risk: &str) {
    let toml = format!(
        "terminal_id = \"{terminal}\"\nmerchant_id = \"{MERCHANT}\"\nstate_dir = \"{}\"\n\
         [key]\nfile = \"{}\"\n[[reader]]\nname = \"counter-0\"\nport = \"{}\"\nbaud = {}\n\
         [risk]\n{risk}\n\
         [sync]\nserver_url = \"{server_url}\"\ninterval_secs = 5\nrequest_timeout_secs = 5\n",
        shop.state.display(),
        shop.dir.path().join("terminal.key").display(),
        shop.port(0).display(),
        crate::shop::BAUD,
    );
    std::fs::write(&shop.config, toml).unwrap();
}

impl Setup {
    /// Writes the shop's config for `server_url`.
    pub(crate) fn point_at(&self, server_url: &str) {
        write_config(
            &self.shop,
            TERMINAL,
            server_url,
            "max_offline_uses_per_card = 1000000\nmax_offline_redemptions = 1000000",
        );
    }

    pub(crate) fn open_store(&self) -> Store {
        Store::open(
            &self.shop.state,
            self.keys.clone(),
            StoreConfig {
                terminal_id: TERMINAL.into(),
                merchant_id: MERCHANT.into(),
                limits: support::limits(),
            },
        )
        .unwrap()
    }

    /// Appends `n` records straight into the journal (the daemon must not be running).
    pub(crate) fn seed(&self, n: u64) {
        let mut s = self.open_store();
        let mut it = (0..n).map(|i| {
            let mut r = [0u8; 32];
            r[..8].copy_from_slice(&(i % 997).to_be_bytes());
            (CardRef(r), "P-wash".to_owned(), "WASH".to_owned(), 1)
        });
        s.seed_redemptions(&mut it, support::now(wall_now()))
            .unwrap();
    }

    /// The installed cache version (0: none), read beside a running daemon.
    pub(crate) fn cache_version(&self) -> u64 {
        self.open_store()
            .cache_info()
            .unwrap()
            .map_or(0, |c| c.manifest.version)
    }

    /// (head, acknowledged) of the local journal, read beside a running daemon.
    pub(crate) fn local(&self) -> (u64, u64) {
        let j = self.open_store().journal_info();
        (j.head_seq, j.synced_through_seq)
    }

    pub(crate) fn local_head_mac(&self) -> Vec<u8> {
        let s = self.open_store();
        let head = s.journal_info().head_seq;
        s.journal_records(head, 1).unwrap()[0].1.to_vec()
    }

    /// `redeemd sync` (a second process beside the daemon): exit code and output.
    pub(crate) fn sync_cli(&self) -> (Option<i32>, String) {
        let out = self.shop.redeemd().arg("sync").output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// [`setup`] with the real platform serving it, the daemon started and its first snapshot
/// installed, and the reader `serial` linked.
async fn served(serial: &str) -> (Setup, Server, Daemon, SimReader) {
    let s = setup();
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let daemon = Daemon::start(&s.shop);
    wait_for(
        "the platform's snapshot installed",
        Duration::from_secs(30),
        || s.cache_version() > 0,
    );
    let r = reader(&s.shop, 0, serial).await;
    (s, server, daemon, r)
}

#[tokio::test(flavor = "current_thread")]
async fn redemptions_at_the_reader_reach_the_real_clearing_server() {
    let (s, server, daemon, mut r) = served("R-E2E").await;
    let m = menu(swipe(&mut r, 1).await);
    assert_eq!(m.entries.len(), 2, "{m:?}");
    approved(r.redeem(&[(0, 2)], None).await.unwrap());
    menu(swipe(&mut r, 2).await);
    approved(r.redeem(&[(0, 1), (1, 1)], None).await.unwrap());
    // Three records (one line, then two): the daemon's own passes upload them.
    wait_for("records on the server", Duration::from_secs(60), || {
        server_journal(&server.db).1 == 3
    });
    wait_for("acknowledged locally", Duration::from_secs(30), || {
        s.local() == (3, 3)
    });
    assert_eq!(server_journal(&server.db).2, s.local_head_mac());
    // The pass is reported in the log and in status.json.
    daemon.wait_log("sync pass", Duration::from_secs(10));
    wait_for("a clean pass published", Duration::from_secs(30), || {
        redeemd::daemon::status::read(&s.shop.state)
            .ok()
            .and_then(|st| st.sync)
            .is_some_and(|sy| sy.last_result.as_deref() == Some("ok") && sy.unsynced_records == 0)
    });
    let sync = redeemd::daemon::status::read(&s.shop.state)
        .unwrap()
        .sync
        .unwrap();
    assert!(sync.last_success_at_ms.is_some() && sync.deny_checked_at_ms.is_some());
    assert!(sync.cache_version > 0);
    assert_eq!(sync.halted, None);
    let out = s.shop.redeemd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last attempt"), "{text}");
    assert!(text.contains("deny list      version 0"), "{text}");
    assert!(text.contains("0 unsynced"), "{text}");
}

#[test]
fn a_server_killed_mid_upload_and_restarted_ends_with_every_record_once() {
    const RECORDS: u64 = 12_000;
    let s = setup();
    s.seed(RECORDS);
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let daemon = Daemon::start(&s.shop);
    // Kill the server as soon as the first batches are stored, while the rest are in flight.
    wait_for("first batch stored", Duration::from_secs(60), || {
        server_journal(&server.db).0 >= 1000
    });
    let (db, addr) = server.kill9();
    let held = server_journal(&db).0;
    eprintln!("server killed holding {held} of {RECORDS} records");
    std::thread::sleep(Duration::from_millis(500));
    let server = Server::start(&db, &addr);
    // `redeemd sync` (a second process beside the daemon) pushes the rest now; the daemon's own
    // retries may get there first, and either way nothing is sent twice.
    let (code, out) = s.sync_cli();
    assert!(out.contains("journal "), "{out}");
    assert_eq!(code, Some(0), "{out}");
    wait_for(
        "every record on the server",
        Duration::from_secs(120),
        || server_journal(&server.db).0 == RECORDS,
    );
    let (rows, max, mac) = server_journal(&server.db);
    assert_eq!(
        (rows, max),
        (RECORDS, RECORDS),
        "nothing lost, nothing doubled"
    );
    assert_eq!(
        mac,
        s.local_head_mac(),
        "the server holds exactly our records"
    );
    wait_for("acknowledged locally", Duration::from_secs(30), || {
        s.local() == (RECORDS, RECORDS)
    });
    assert!(!daemon.has_log("HALTED"), "{}", daemon.log_text());
}

#[test]
fn a_daemon_restored_from_a_backup_behind_the_server_resumes_without_duplicates() {
    let s = setup();
    s.seed(50);
    // The backup: 50 records, none acknowledged yet.
    let backup = s.root.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    let db = s.shop.state.join(redeemd::store::DB_FILE);
    std::fs::copy(&db, backup.join(redeemd::store::DB_FILE)).unwrap();
    let server = Server::start(&s.server_db, "127.0.0.1:0");
    s.point_at(&server.url());
    let (_, out) = s.sync_cli();
    assert!(out.contains("50 records uploaded"), "{out}");
    assert_eq!(s.local(), (50, 50));
    // The shop PC's disk dies; the state is restored from the backup (acknowledged: 0).
    for f in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(s.shop.state.join(format!("{}{f}", redeemd::store::DB_FILE)));
    }
    std::fs::copy(backup.join(redeemd::store::DB_FILE), &db).unwrap();
    assert_eq!(s.local(), (50, 0));
    let daemon = Daemon::start(&s.shop);
    wait_for(
        "acknowledged from the server's head",
        Duration::from_secs(30),
        || s.local() == (50, 50),
    );
    daemon.wait_log(
        "server already held through seq 50: not sent again",
        Duration::from_secs(10),
    );
    drop(daemon);
    assert_eq!(server_journal(&server.db).0, 50);
    // New records after the restore continue the chain and upload once.
    s.seed(5);
    let (_, out) = s.sync_cli();
    assert!(out.contains("5 records uploaded"), "{out}");
    assert_eq!(server_journal(&server.db).0, 55);

    // A backup *older* than what the server holds (its head above the local journal): halted, reported,
    // nothing uploaded — the next redemptions would reuse seqs the server holds with other content.
    for f in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(s.shop.state.join(format!("{}{f}", redeemd::store::DB_FILE)));
    }
    std::fs::copy(backup.join(redeemd::store::DB_FILE), &db).unwrap();
    s.seed(3);
    let (code, out) = s.sync_cli();
    assert_eq!(code, Some(75), "{out}");
    assert!(
        out.contains("HALTED        server head 55 is above the local journal head 53"),
        "{out}"
    );
    assert_eq!(server_journal(&server.db).0, 55);
}

#[tokio::test(flavor = "current_thread")]
async fn a_card_issued_on_the_platform_is_redeemable_and_a_loss_report_declines_it_after_one_sync()
{
    let (s, server, _daemon, mut r) = served("R-E2E").await;
    // A card issued and customized on the platform while the shop runs: one sync, then redeemable.
    let unknown = r
        .swipe(&support::number(7), EntryMode::Magstripe, "cashier-7")
        .await
        .unwrap();
    assert!(
        matches!(&unknown, SwipeResult::Declined(d) if d.reason == wire(DeclineReason::CardUnknown)),
        "{unknown:?}"
    );
    issue_card(&server.db, 7);
    let (code, out) = s.sync_cli();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("entitlements  installed version"), "{out}");
    // Another process changed the database: the daemon notices within a second.
    std::thread::sleep(Duration::from_millis(1200));
    let m = menu(swipe(&mut r, 7).await);
    assert_eq!(m.entries.len(), 2, "{m:?}");
    let a = approved(r.redeem(&[(0, 1)], None).await.unwrap());
    assert_eq!(a.uses_left, vec![(0, 9)]);
    // Card 1 reported lost on the platform: after one sync, declined at the reader with that reason.
    menu(swipe(&mut r, 1).await);
    admin(
        &server.db,
        &["card", "lost", "--number", &support::number(1)],
    );
    let (code, out) = s.sync_cli();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("deny list     1 entries applied"), "{out}");
    std::thread::sleep(Duration::from_millis(1200));
    let lost = r
        .swipe(&support::number(1), EntryMode::Magstripe, "cashier-7")
        .await
        .unwrap();
    assert!(
        matches!(&lost, SwipeResult::Declined(d) if d.reason == wire(DeclineReason::CardLost)),
        "{lost:?}"
    );
    // Unlocked on the platform: the newer cache entry supersedes the loss report.
    admin(
        &server.db,
        &["card", "unlock", "--number", &support::number(1)],
    );
    let (code, out) = s.sync_cli();
    assert_eq!(code, Some(0), "{out}");
    std::thread::sleep(Duration::from_millis(1200));
    menu(swipe(&mut r, 1).await);
    // The redemption reached the platform.
    wait_for(
        "the redemption on the platform",
        Duration::from_secs(30),
        || server_journal(&server.db).0 == 1,
    );
}

/// PROTOCOL.md §7.1 `CARD_REISSUED`, end to end: a card reissued on the real platform (补卡) is
/// declined with that reason at the reader after one sync — the deny list and the card's new entry
/// both say "reissued" — and its new number redeems what was left.
#[tokio::test(flavor = "current_thread")]
async fn a_reissued_cards_old_number_is_declined_card_reissued_after_one_sync() {
    let (s, server, _daemon, mut r) = served("R-REISSUE").await;
    let m = menu(swipe(&mut r, 2).await);
    approved(r.redeem(&[(0, 1)], None).await.unwrap());
    assert_eq!(m.entries[0].uses_left, 10);
    let (code, out) = s.sync_cli();
    assert_eq!(code, Some(0), "{out}");
    admin(
        &server.db,
        &[
            "card",
            "reissue",
            "--from",
            &support::number(2),
            "--to",
            &support::number(8),
        ],
    );
    let (code, out) = s.sync_cli();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("deny list     1 entries applied"), "{out}");
    // Another process changed the database: the daemon notices within a second.
    std::thread::sleep(Duration::from_millis(1200));
    let old = r
        .swipe(&support::number(2), EntryMode::Magstripe, "cashier-7")
        .await
        .unwrap();
    assert!(
        matches!(&old, SwipeResult::Declined(d) if d.reason == wire(DeclineReason::CardReissued)),
        "{old:?}"
    );
    // The new card holds what was left: 9 washes.
    let new = menu(swipe(&mut r, 8).await);
    assert_eq!(new.entries[0].uses_left, 9, "{new:?}");
    // The old card's cache entry itself is signed "reissued", not only its deny entry.
    let old_ref = redeemd_contract::model::CardNumber::parse(&support::number(2))
        .unwrap()
        .card_ref(&s.keys.card_token);
    let db = rusqlite::Connection::open(s.shop.state.join(redeemd::store::DB_FILE)).unwrap();
    let body: Vec<u8> = db
        .query_row(
            "SELECT body FROM cache_entry WHERE card_ref = ?1",
            [&old_ref.0[..]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        redeemd_contract::Card::decode(&body).unwrap().status,
        redeemd_contract::CardStatus::Reissued
    );
}
