//! A key that is not this terminal's, and a database of another terminal, are named as such by every
//! command — not reported as tampering — thanks to the key check value stored when the database was
//! created; an edited row is still "row edited".

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use redeemd::store::{DB_FILE, Store, StoreConfig};
use redeemd_contract::TerminalSecret;

use crate::shop::{Shop, redeemd_with};
use crate::support::{self, TERMINAL};

const OTHER_SECRET: &str = "4343434343434343434343434343434343434343434343434343434343434343";

/// Every command that opens the database, with what it needs (a bundle for `cache install`).
fn every_command(bundle: &Path) -> Vec<Vec<String>> {
    let owned = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        owned(&["run"]),
        owned(&["status"]),
        owned(&["sync"]),
        owned(&["journal", "verify"]),
        owned(&["cache", "verify"]),
        owned(&["cache", "info"]),
        owned(&["journal", "export"]),
        owned(&["report", "--date", "2026-09-21"]),
        owned(&["doctor", "--user", "root"]),
        vec![
            "cache".into(),
            "install".into(),
            bundle.display().to_string(),
        ],
    ]
}

fn run(config: &Path, args: &[String]) -> (i32, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    redeemd_with(config, &args)
}

/// The shop's configuration pointed at a key file holding `secret_hex`, with a (dead) sync server.
fn with_key(shop: &Shop, secret_hex: &str) -> PathBuf {
    let key = shop.dir.path().join("given.key");
    std::fs::write(&key, format!("{secret_hex}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&shop.config).unwrap();
    let original = shop.dir.path().join("terminal.key");
    let config = shop.dir.path().join("given.toml");
    std::fs::write(
        &config,
        format!(
            "{}[sync]\nserver_url = \"http://127.0.0.1:9\"\n",
            text.replace(&original.display().to_string(), &key.display().to_string())
        ),
    )
    .unwrap();
    config
}

fn bundle(shop: &Shop) -> PathBuf {
    let path = shop.dir.path().join("v2.bundle");
    std::fs::write(&path, support::full(2, 1)).unwrap();
    path
}

#[test]
fn another_terminals_key_is_named_as_such_by_every_command() {
    let shop = crate::daemon::shop(0, "");
    let config = with_key(&shop, OTHER_SECRET);
    for args in every_command(&bundle(&shop)) {
        let (code, out) = run(&config, &args);
        assert!(
            out.contains("this database of terminal T-0001 was created with another key"),
            "{args:?} ({code}): {out}"
        );
        assert!(
            !out.contains("MAC mismatch") && !out.contains("TAMPERED"),
            "{args:?}: a wrong key reported as tampering: {out}"
        );
        let expected = if args[0] == "doctor" { 1 } else { 77 };
        assert_eq!(code, expected, "{args:?}: {out}");
    }
    // Without a configuration (the tools given a state directory and a key file), the same.
    let key = shop.dir.path().join("given.key");
    let out = Command::new(env!("CARGO_BIN_EXE_redeemd"))
        .arg("--state-dir")
        .arg(&shop.state)
        .arg("--key-file")
        .arg(&key)
        .args(["journal", "verify"])
        .env_remove("REDEEMD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{text}");
    assert!(text.contains("created with another key"), "{text}");
}

#[test]
fn another_terminals_database_is_named_as_such_by_every_command() {
    let shop = crate::daemon::shop(0, "");
    // The state directory now holds terminal T-0002's database (its own secret, another merchant).
    for f in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{f}", shop.state.join(DB_FILE).display()));
    }
    std::fs::remove_file(shop.state.join(redeemd::store::state_dir::MARKER_FILE)).unwrap();
    let other = TerminalSecret::from_hex_text(OTHER_SECRET).unwrap();
    drop(
        Store::open(
            &shop.state,
            other.derive_all("T-0002"),
            StoreConfig {
                terminal_id: "T-0002".into(),
                merchant_id: "M-0002".into(),
                limits: support::limits(),
            },
        )
        .unwrap(),
    );
    let config = with_key(&shop, support::SECRET_HEX);
    for args in every_command(&bundle(&shop)) {
        let (code, out) = run(&config, &args);
        assert!(
            out.contains("this database belongs to terminal \"T-0002\" / merchant \"M-0002\", but the configuration is for \"T-0001\" / \"M-0001\""),
            "{args:?} ({code}): {out}"
        );
        assert!(!out.contains("MAC mismatch"), "{args:?}: {out}");
        let expected = if args[0] == "doctor" { 1 } else { 65 };
        assert_eq!(code, expected, "{args:?}: {out}");
    }
}

#[test]
fn the_key_check_tells_a_wrong_key_from_an_edited_row() {
    // Each case on a fresh database: what `open` says after `sql` (None: a wrong key instead).
    let after = |sql: Option<&str>| -> String {
        let dir = tempfile::tempdir().unwrap();
        drop(support::store_with_cards(dir.path(), 1));
        let keys = match sql {
            Some(sql) => {
                let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
                conn.execute_batch(sql).unwrap();
                support::keys()
            }
            None => TerminalSecret::from_hex_text(OTHER_SECRET)
                .unwrap()
                .derive_all(TERMINAL),
        };
        Store::open(dir.path(), keys, support::config())
            .unwrap_err()
            .to_string()
    };
    let e = after(None);
    assert!(e.contains("created with another key"), "{e}");
    let edits = [
        (
            "UPDATE terminal_state SET terminal_id = 'T-0009'",
            "column terminal_id says \"T-0009\", but the key check shows the database was created for \"T-0001\" (row edited)",
        ),
        (
            "UPDATE terminal_state SET last_trusted_wall_ms = last_trusted_wall_ms + 1",
            "terminal state: MAC mismatch (row edited)",
        ),
        (
            "UPDATE key_check SET journal = zeroblob(32)",
            "key check: this terminal's key opens the terminal state but does not reproduce the key check value (row edited)",
        ),
        (
            "UPDATE key_check SET cache = zeroblob(32), journal = zeroblob(32), request = zeroblob(32), \
             card_token = zeroblob(32), identity = zeroblob(32)",
            "key check: this terminal's key opens the terminal state but does not reproduce the key check value (row edited)",
        ),
        ("DELETE FROM key_check", "key check: row missing (deleted)"),
        (
            "UPDATE key_check SET terminal_id = 'T-0009'",
            "key check: column terminal_id does not name \"T-0001\"",
        ),
    ];
    for (sql, says) in edits {
        let e = after(Some(sql));
        assert!(e.contains(says), "{sql}: {e}");
        assert!(!e.contains("another key"), "{sql}: {e}");
    }
}
