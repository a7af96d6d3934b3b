//! A shop joins with a pairing code, end to end with the real binaries: a code made with
//! `clearing-server admin pairing create`, `redeemd enroll` on the shop writes the secret (0600) and
//! the ids into the configuration (comments kept); the code works once, an expired one is refused, a
//! key file is never overwritten (and the code not used up by trying), and the daemon then syncs with
//! the new secret.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::offline_week::libfaketime;
use crate::shop::{Daemon, Shop};
use crate::support::MERCHANT;
use crate::sync_e2e::{Server, admin, issue_card, platform_command, wait_for};

/// A shop's configuration as the package ships it: comments, the placeholder ids, a key file that does
/// not exist yet, sync to `server` every 5 s, no reader.
fn shop(server: &str) -> (Shop, String) {
    let dir = tempfile::Builder::new()
        .prefix("redeemd-enroll-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let text = format!(
        "# redeemd configuration\n\n\
         # Identity of this install, as enrolled on the platform (redeemd enroll sets both).\n\
         terminal_id = \"T-0001\"   # placeholder\n\
         merchant_id = \"M-0000\"\n\
         state_dir = \"{}\"\n\n\
         # The terminal secret.\n[key]\nfile = \"{}\"\n\n\
         [sync]\nserver_url = \"{server}\"   # the platform\ninterval_secs = 5\n",
        state.display(),
        dir.path().join("terminal.key").display()
    );
    let config = dir.path().join("redeemd.toml");
    std::fs::write(&config, &text).unwrap();
    (Shop { dir, config, state }, text)
}

fn enroll(shop: &Shop, server: &str, code: &str, extra: &[&str]) -> Output {
    shop.redeemd()
        .args(["enroll", "--server", server, "--code", code])
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `admin pairing create` (its stdout is the code).
fn code(db: &Path, terminal: &str) -> String {
    admin(
        db,
        &[
            "pairing",
            "create",
            "--merchant",
            MERCHANT,
            "--terminal",
            terminal,
        ],
    )
    .trim()
    .to_owned()
}

fn key_of(shop: &Shop) -> PathBuf {
    shop.dir.path().join("terminal.key")
}

#[test]
fn a_shop_enrolls_with_a_code_once_and_then_syncs_with_the_new_secret() {
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("clearing.sqlite3");
    admin(
        &db,
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
    issue_card(&db, 0);
    let server = Server::start(&db, "127.0.0.1:0");
    let url = server.url();

    // The code, used once: the secret (0600) and the ids in place, the comments kept.
    let first = code(&db, "T-PAIR");
    assert!(first.len() == 9 && first.as_bytes()[4] == b'-', "{first}");
    let (a, before) = shop(&url);
    let out = enroll(&a, &url, &first.to_lowercase(), &[]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "enrolled terminal T-PAIR for merchant {MERCHANT} at {url}"
        )),
        "{said}"
    );
    assert!(
        said.contains("sudo redeemd doctor") && said.contains("sudo systemctl start redeemd"),
        "{said}"
    );
    let key = std::fs::read_to_string(key_of(&a)).unwrap();
    assert!(
        key.trim().len() == 64 && key.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    assert!(!said.contains(key.trim()), "the secret is never printed");
    assert_eq!(
        std::fs::metadata(key_of(&a)).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let after = std::fs::read_to_string(&a.config).unwrap();
    assert_eq!(
        after,
        before
            .replace("\"T-0001\"", "\"T-PAIR\"")
            .replace("\"M-0000\"", &format!("\"{MERCHANT}\""))
    );

    // Used: refused by name, here with --force so that only the code stands in the way.
    let out = enroll(&a, &url, &first, &["--force"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("already used"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(key_of(&a)).unwrap(),
        key,
        "the key is untouched"
    );

    // A key file is never overwritten without --force, and trying does not use the code up.
    let fresh = code(&db, "T-SPARE");
    let out = enroll(&a, &url, &fresh, &[]);
    assert_eq!(out.status.code(), Some(73), "{}", text(&out));
    assert!(text(&out).contains("never overwritten"), "{}", text(&out));
    assert!(admin(&db, &["pairing", "list", "--merchant", MERCHANT]).contains("T-SPARE"));
    let (b, _) = shop(&url);
    let out = enroll(&b, &url, &fresh, &[]);
    assert!(out.status.success(), "{}", text(&out));

    // Expired: a code made twenty minutes ago (ten minutes' life) on the platform's clock.
    let old = platform_command()
        .arg("--db")
        .arg(&db)
        .args([
            "admin",
            "pairing",
            "create",
            "--merchant",
            MERCHANT,
            "--terminal",
            "T-LATE",
        ])
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", "-20m")
        .output()
        .unwrap();
    assert!(old.status.success(), "{}", text(&old));
    let old = String::from_utf8(old.stdout).unwrap().trim().to_owned();
    let (c, _) = shop(&url);
    let out = enroll(&c, &url, &old, &[]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("expired"), "{}", text(&out));
    assert!(!key_of(&c).exists());
    // Plain HTTP to another host, a mistyped code: refused before anything is sent.
    let out = enroll(&c, "http://clearing.example.com", &fresh, &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let out = enroll(&c, &url, "ABCD-EFGU", &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));

    // The daemon starts with the new secret and syncs: the platform's cache installed, a clean
    // pass, its health report on the platform.
    let _daemon = Daemon::start(&a);
    wait_for(
        "a clean pass with the new secret",
        Duration::from_secs(60),
        || {
            redeemd::daemon::status::read(&a.state)
                .ok()
                .and_then(|s| s.sync)
                .is_some_and(|s| s.last_result.as_deref() == Some("ok") && s.cache_version > 0)
        },
    );
    wait_for(
        "its health report on the platform",
        Duration::from_secs(30),
        || {
            let fleet = admin(&db, &["fleet"]);
            fleet
                .lines()
                .any(|l| l.starts_with("T-PAIR") && l.contains("last report"))
        },
    );
}
