//! The `redeemd` binary's store tools: exit codes, named findings, exports, reports.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use redeemd::store::DB_FILE;

use crate::support::*;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn key_file(dir: &Path, mode: u32) -> PathBuf {
    let p = dir.join(format!("terminal-{mode:o}.key"));
    std::fs::write(&p, format!("{SECRET_HEX}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn run(state: &Path, key: &Path, args: &[&str]) -> Run {
    redeemd(&[
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ])
    .args(args)
    .into()
}

/// `redeemd` with `leading` arguments, and none of the environment's settings.
fn redeemd(leading: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_redeemd"));
    c.args(leading)
        .env_remove("REDEEMD_STATE_DIR")
        .env_remove("REDEEMD_KEY_FILE");
    c
}

impl From<&mut Command> for Run {
    fn from(c: &mut Command) -> Run {
        let out = c.output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }
}

/// Writes a configuration for `state` and `key` — `top` adds top-level keys, `tables` tables after
/// `[key]` — and runs `redeemd --config` with `args`.
fn run_configured(
    dir: &Path,
    (state, key): (&Path, &Path),
    (top, tables): (&str, &str),
    args: &[&str],
) -> Run {
    let config = dir.join("redeemd.toml");
    std::fs::write(
        &config,
        format!(
            "terminal_id = \"{TERMINAL}\"\nmerchant_id = \"{MERCHANT}\"\nstate_dir = \"{}\"\n\
             {top}[key]\nfile = \"{}\"\n{tables}",
            state.display(),
            key.display()
        ),
    )
    .unwrap();
    redeemd(&["--config".as_ref(), config.as_os_str()])
        .args(args)
        .into()
}

fn populated() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut s = store_with_cards(&state, 3);
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 2), (1, 1)], T0));
    approved(&redeem(&mut s, "r", 2, 1, &[(0, 1)], T0 + HOUR));
    drop(s);
    (dir, state)
}

#[test]
fn verify_passes_on_a_clean_store_and_names_the_row_on_tampering() {
    let (dir, state) = populated();
    let key = key_file(dir.path(), 0o600);
    let r = run(&state, &key, &["journal", "verify"]);
    assert_eq!(
        (r.code, r.stdout.contains("3 rows checked: OK")),
        (0, true),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let r = run(&state, &key, &["cache", "verify"]);
    assert_eq!(
        (r.code, r.stdout.contains("3 entries checked: OK")),
        (0, true),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let conn = rusqlite::Connection::open(state.join(DB_FILE)).unwrap();
    let trigger: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'journal_append_only_update'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // As an attacker would: the trigger dropped for the edit and put back after it.
    conn.execute_batch(&format!(
        "DROP TRIGGER journal_append_only_update; UPDATE journal SET quantity = 5 WHERE seq = 2; {trigger};"
    ))
    .unwrap();
    conn.execute(
        "UPDATE cache_entry SET body = CAST(body || x'00' AS BLOB) WHERE card_ref = ?1",
        [&card_ref(2).0[..]],
    )
    .unwrap();
    drop(conn);
    let r = run(&state, &key, &["journal", "verify"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("FAIL journal seq 2: MAC mismatch"),
        "{}",
        r.stdout
    );
    let r = run(&state, &key, &["cache", "verify"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains(&format!(
            "FAIL cache entry {}: MAC mismatch",
            card_ref(2).to_hex()
        )),
        "{}",
        r.stdout
    );
    // Export refuses to hand over a tampered row, naming it.
    let r = run(&state, &key, &["journal", "export"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("journal seq 2"), "{}", r.stderr);
}

#[test]
fn export_report_and_info() {
    let (dir, state) = populated();
    let key = key_file(dir.path(), 0o400);
    let r = run(&state, &key, &["journal", "export"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["record_id"], "T-0001-1");
    assert_eq!(rows[1]["service_code"], "WAX");
    assert_eq!(rows[2]["card_ref"], card_ref(1).to_hex());
    assert!(!r.stdout.contains(&number(0)));
    let r = run(
        &state,
        &key,
        &["journal", "export", "--format", "csv", "--from-seq", "2"],
    );
    assert_eq!(r.code, 0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("record_id,seq,kind,auth_code"));
    assert_eq!(lines.len(), 3);
    // T0 is 2026-09-21 22:13 in China (UTC+8).
    let r = run(&state, &key, &["report", "--date", "2026-09-21"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.lines().any(|l| l.starts_with("WASH")
            && l.split_whitespace().collect::<Vec<_>>() == ["WASH", "精洗", "3", "0", "3", "9000"]),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.ends_with("17000")),
        "{}",
        r.stdout
    );
    let r = run(&state, &key, &["report", "--date", "2026-09-20"]);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.ends_with(" 0")),
        "{}",
        r.stdout
    );
    let r = run(&state, &key, &["report", "--date", "2026-02-30"]);
    assert_eq!(r.code, 2);
    let r = run(&state, &key, &["cache", "info"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("version        1") && r.stdout.contains("journal head   seq 3"),
        "{}",
        r.stdout
    );
}

#[test]
fn exit_codes_for_bad_keys_missing_state_and_refused_bundles() {
    let (dir, state) = populated();
    let loose = key_file(dir.path(), 0o644);
    let r = run(&state, &loose, &["cache", "info"]);
    assert_eq!(r.code, 77);
    assert!(r.stderr.contains("mode 0644"), "{}", r.stderr);
    let key = key_file(dir.path(), 0o600);
    let r = run(&dir.path().join("nowhere"), &key, &["journal", "verify"]);
    assert_eq!(r.code, 66, "{}", r.stderr);
    let old = dir.path().join("old.bundle");
    std::fs::write(&old, full(1, 3)).unwrap();
    let r = run(&state, &key, &["cache", "install", old.to_str().unwrap()]);
    assert_eq!(r.code, 65);
    assert!(r.stderr.contains("rollback"), "{}", r.stderr);
    let new = dir.path().join("new.bundle");
    std::fs::write(&new, full(2, 4)).unwrap();
    let r = run(&state, &key, &["cache", "install", new.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("installed version 2"));
    let r = run(
        &state,
        &key,
        &[
            "cache",
            "install",
            dir.path().join("missing").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 74);
    std::fs::write(state.join(DB_FILE), b"garbage".repeat(1000)).unwrap();
    let r = run(&state, &key, &["cache", "info"]);
    assert_eq!(r.code, 65, "{}", r.stderr);
}

#[test]
fn report_refuses_an_offset_no_business_day_has() {
    let (dir, state) = populated();
    let key = key_file(dir.path(), 0o600);
    for offset in ["-2147483648", "100000", "841"] {
        let arg = format!("--utc-offset-minutes={offset}");
        let r = run(&state, &key, &["report", "--date", "2026-09-21", &arg]);
        assert_eq!(r.code, 2, "{offset}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("--utc-offset-minutes"), "{}", r.stderr);
    }
    let r = run(
        &state,
        &key,
        &[
            "report",
            "--date",
            "2026-09-21",
            "--utc-offset-minutes=-840",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn report_counts_days_in_the_configured_offset() {
    // One redemption at 2026-09-21 23:13 UTC, which is already the 22nd in China (UTC+8): with
    // utc_offset_minutes = 0 configured, `report --date 2026-09-21` must count it.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut s = store_with_cards(&state, 1);
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0 + 9 * HOUR));
    drop(s);
    let key = key_file(dir.path(), 0o600);
    let r = run_configured(
        dir.path(),
        (&state, &key),
        ("utc_offset_minutes = 0\n", ""),
        &["report", "--date", "2026-09-21"],
    );
    let stdout = r.stdout;
    assert_eq!(r.code, 0, "{stdout}{}", r.stderr);
    assert!(stdout.contains("(UTC+00:00)"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.ends_with(" 3000")),
        "{stdout}"
    );
}

#[test]
fn export_from_a_seq_beyond_the_journal_exports_nothing() {
    let (dir, state) = populated();
    let key = key_file(dir.path(), 0o600);
    for from in [
        "4",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
    ] {
        let r = run(&state, &key, &["journal", "export", "--from-seq", from]);
        assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{from}: {}", r.stderr);
    }
}

#[test]
fn status_reads_a_status_file_with_absurd_times_without_panicking() {
    let (dir, state) = populated();
    let key = key_file(dir.path(), 0o600);
    let min = i64::MIN;
    std::fs::write(
        state.join("status.json"),
        format!(
            r#"{{"pid":1,"started_at_ms":{min},"updated_at_ms":{min},
            "readers":{{"a":{{"port":"/dev/x","state":"link up","last_transaction":
                {{"txn_id":1,"kind":"redeem","outcome":"approved","at_ms":{min}}}}}}},
            "sync":{{"server_url":"x","last_attempt_at_ms":{min},"last_success_at_ms":{min},
                "next_attempt_at_ms":{min},"consecutive_failures":0,"unsynced_records":0,
                "cache_version":0,"deny_version":0,"deny_checked_at_ms":{min}}}}}"#
        ),
    )
    .unwrap();
    let r = run_configured(
        dir.path(),
        (&state, &key),
        ("", "[sync]\nserver_url = \"http://127.0.0.1:9\"\n"),
        &["status"],
    );
    let stdout = r.stdout;
    assert_eq!(r.code, 0, "{stdout}{}", r.stderr);
    assert!(stdout.contains("reader a: link up"), "{stdout}");
}

#[test]
fn report_totals_saturate_on_absurd_signed_prices() {
    // Each amount fits the journal (2^62 fen), their sum does not: the report must still print,
    // its totals held at i64::MAX (as the end-of-day close's are), not overflow.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut s = open(&state);
    let mut c = card(0, 10);
    c.packages[0].items[0].price_fen = 1 << 62;
    let b = bundle(
        redeemd_contract::snapshot::BundleKind::Full,
        1,
        0,
        &[(0, Some(c))],
        T0 + 1000 * HOUR,
    );
    s.install_bundle(&b[..], now(T0)).unwrap();
    for txn in 1..=3 {
        approved(&redeem(&mut s, "r", txn, 0, &[(0, 1)], T0));
    }
    drop(s);
    let key = key_file(dir.path(), 0o600);
    let r = run(&state, &key, &["report", "--date", "2026-09-21"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let total = format!(" {}", i64::MAX);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.ends_with(&total)),
        "{}",
        r.stdout
    );
}

#[test]
fn tools_outside_the_service_read_a_credential_from_its_source() {
    // The shipped config names the `terminal.key` credential, which only the service gets; run by
    // hand, the tools read it where the unit loads it from (/etc/redeemd), not refuse outright.
    let (dir, state) = populated();
    let config = dir.path().join("redeemd.toml");
    std::fs::write(
        &config,
        format!(
            "terminal_id = \"{TERMINAL}\"\nmerchant_id = \"{MERCHANT}\"\nstate_dir = \"{}\"\n\
             [key]\ncredential = \"terminal.key\"\n",
            state.display()
        ),
    )
    .unwrap();
    // (On a machine with a real install that key is not this test's to read: the first half is left out.)
    if !Path::new("/etc/redeemd/terminal.key").exists() {
        let r: Run = redeemd(&["--config".as_ref(), config.as_os_str()])
            .args(["journal", "verify"])
            .env_remove("CREDENTIALS_DIRECTORY")
            .into();
        assert_eq!(r.code, 77, "{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("key file /etc/redeemd/terminal.key"),
            "{}",
            r.stderr
        );
    }
    // A credentials directory, as systemd gives the service, is still what counts.
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let key = key_file(&creds, 0o600);
    std::fs::rename(&key, creds.join("terminal.key")).unwrap();
    let r: Run = redeemd(&["--config".as_ref(), config.as_os_str()])
        .args(["journal", "verify"])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .into();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn sync_without_a_server_names_the_configuration_file() {
    let (dir, state) = populated();
    let key = key_file(dir.path(), 0o600);
    let r = run_configured(dir.path(), (&state, &key), ("", ""), &["sync"]);
    assert_eq!(r.code, 64, "{}{}", r.stdout, r.stderr);
    let config = dir.path().join("redeemd.toml");
    assert!(
        r.stderr.contains(&format!("{}", config.display())) && r.stderr.contains("sync.server_url"),
        "{}",
        r.stderr
    );
}

#[test]
fn state_dir_and_key_flags_override_the_configuration_for_every_command() {
    // The configuration names a state directory and a key that do not exist; the flags name the
    // real ones, and `status` (a daemon-side command) must use them as the store tools do.
    let (dir, state) = populated();
    let key = key_file(dir.path(), 0o600);
    let (nowhere, no_key) = (dir.path().join("nowhere"), dir.path().join("no.key"));
    let state_arg = state.display().to_string();
    let key_arg = key.display().to_string();
    let r = run_configured(
        dir.path(),
        (&nowhere, &no_key),
        ("", ""),
        &["--state-dir", &state_arg, "--key-file", &key_arg, "status"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("seq 3"), "{}", r.stdout);
}
