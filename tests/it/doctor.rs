//! `redeemd doctor` against a technician's usual mistakes: each is named, with its fix, and the
//! exit status says whether anything is wrong.

use std::os::unix::fs::PermissionsExt;

use redeemd::simulator::{Line, LineSpec};
use redeemd_contract::snapshot::{BundleKind, BundleSigner};

use crate::daemon::shop;
use crate::shop::{Mounted, Shop, output_of, running_as_root};
use crate::support::{self, HOUR, MERCHANT, TERMINAL};

/// Runs `redeemd doctor` for the service user `user`; (exit code, stdout).
fn doctor(shop: &Shop, user: &str) -> (i32, String) {
    output_of(shop.redeemd().args(["doctor", "--user", user]))
}

/// A shop whose reader 0 is a live pty (nobody on the daemon side).
fn shop_with_reader() -> (Shop, Line) {
    let shop = shop(1, "");
    let line = Line::open(&LineSpec::CreatePty, 115_200, Some(&shop.port(0))).unwrap();
    (shop, line)
}

#[tokio::test(flavor = "current_thread")]
async fn a_healthy_install_passes() {
    let (shop, _line) = shop_with_reader();
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 0, "{out}");
    for check in [
        "config",
        "key",
        "state dir",
        "database",
        "cache",
        "backlog",
        "reader counter-0",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("OK") && l.contains(check)),
            "{check} not OK:\n{out}"
        );
    }
    assert!(out.contains("no problems found"), "{out}");
}

#[test]
fn a_missing_port_is_a_problem_with_a_fix() {
    let shop = shop(1, "");
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM  reader counter-0"), "{out}");
    assert!(out.contains("No such file or directory"), "{out}");
    assert!(out.contains("fix: check the cable"), "{out}");
}

#[test]
fn a_port_the_service_user_cannot_open_is_named() {
    let shop = shop(1, "");
    // A device node owned by root, mode 600: root can open it, the service user cannot.
    std::fs::write(shop.port(0), b"").unwrap();
    std::fs::set_permissions(shop.port(0), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out) = doctor(&shop, "nobody");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("is not readable and writable by user nobody"),
        "{out}"
    );
    assert!(out.contains("dialout"), "{out}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_port_held_by_another_process_is_named() {
    let (shop, _line) = shop_with_reader();
    let _holder = tokio_serial::new(shop.port(0).to_string_lossy(), 115_200)
        .open()
        .unwrap();
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is held by"), "{out}");
    assert!(
        out.contains(&format!("pid {}", std::process::id())),
        "{out}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_world_readable_key_file_is_a_problem() {
    let (shop, _line) = shop_with_reader();
    let key = shop.dir.path().join("terminal.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("fix: chmod 600 {}", key.display())),
        "{out}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_clock_years_off_is_caught() {
    let (shop, _line) = shop_with_reader();
    // The platform issued this cache three years "from now": the PC clock is years behind.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let future = now + 3 * 365 * 24 * HOUR;
    let keys = support::keys();
    let mut signer = BundleSigner::new(&keys.cache, BundleKind::Full, MERCHANT, 2);
    let mut bundle = signer.header();
    let card = support::card(1, 10);
    bundle.extend(signer.entry(&support::card_ref(1), Some(&card)).unwrap());
    bundle.extend(
        signer
            .finish(TERMINAL, &[], 0, future, future + 1000 * HOUR)
            .1,
    );
    let state = shop.state.clone();
    let mut store = redeemd::store::Store::open(&state, keys, support::config()).unwrap();
    store
        .install_bundle(&bundle[..], support::now(future))
        .unwrap();
    drop(store);
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("before the cache was issued: the system clock is wrong"),
        "{out}"
    );
    assert!(out.contains("timedatectl"), "{out}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_state_dir_that_is_not_a_directory_is_a_problem() {
    let (shop, _line) = shop_with_reader();
    let text = std::fs::read_to_string(&shop.config).unwrap();
    let file = shop.dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let state = shop.dir.path().join("state");
    std::fs::write(
        &shop.config,
        text.replace(&state.display().to_string(), &file.display().to_string()),
    )
    .unwrap();
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not a directory"), "{out}");
}

#[tokio::test(flavor = "current_thread")]
async fn plain_http_to_a_remote_server_is_refused_by_the_config_check() {
    let (shop, _line) = shop_with_reader();
    let text = std::fs::read_to_string(&shop.config).unwrap();
    std::fs::write(
        &shop.config,
        format!("{text}[sync]\nserver_url = \"http://clearing.example.com\"\n"),
    )
    .unwrap();
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("sync.server_url"), "{out}");
    assert!(out.contains("use https://"), "{out}");
}

#[test]
fn a_state_directory_on_a_read_only_filesystem_is_named() {
    if !running_as_root() {
        // Mounting needs root; CI runs as root (`.ci/run`), so there this test always runs.
        eprintln!("skipped: mounting a read-only filesystem needs root");
        return;
    }
    let shop = shop(1, "");
    let ro = shop.dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(status.success(), "mount of a read-only tmpfs failed");
    let _mounted = Mounted(ro.clone());
    let config = std::fs::read_to_string(&shop.config).unwrap();
    let moved: String = config
        .lines()
        .map(|l| {
            if l.starts_with("state_dir = ") {
                format!("state_dir = \"{}\"", ro.display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&shop.config, moved).unwrap();
    let (code, out) = doctor(&shop, "root");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{} is on a read-only filesystem", ro.display())),
        "{out}"
    );
    assert!(
        out.contains("fix: put state_dir on a writable disk"),
        "{out}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_cache_signed_with_extreme_times_is_reported_without_overflowing() {
    // Signed times at the ends of int64 (a platform bug): the differences doctor prints and compares
    // do not fit in an i64, and must neither panic nor flip the verdict.
    for (issued, expires, says) in [
        (i64::MIN, i64::MIN + 1, "expired"),
        (-1, i64::MAX, "OK       cache"),
    ] {
        let (shop, _line) = shop_with_reader();
        let keys = support::keys();
        let mut signer = BundleSigner::new(&keys.cache, BundleKind::Full, MERCHANT, 2);
        let mut bundle = signer.header();
        let card = support::card(1, 10);
        bundle.extend(signer.entry(&support::card_ref(1), Some(&card)).unwrap());
        bundle.extend(signer.finish(TERMINAL, &[], 0, issued, expires).1);
        let mut store = redeemd::store::Store::open(&shop.state, keys, support::config()).unwrap();
        store
            .install_bundle(&bundle[..], support::now(support::T0))
            .unwrap();
        drop(store);
        let (_, out) = doctor(&shop, "root");
        assert!(!out.contains("panicked"), "{out}");
        assert!(out.contains(says), "{out}");
    }
}
