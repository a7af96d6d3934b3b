//! The real `clearing-server` binary driven from a test: `serve` as a child process (killed when
//! dropped), `admin …` commands, signed requests, and queries on the database it uses.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use clearing_server::storage::{Db, StorageError};
use redeemd_contract::keys::{TerminalKeys, TerminalSecret};
use redeemd_contract::request::SignedHeaders;
use serde_json::Value;

use super::Signed;

pub const BIN: &str = env!("CARGO_BIN_EXE_clearing-server");

/// The binary with the tests' master key.
pub fn platform() -> Command {
    let mut c = Command::new(BIN);
    c.env(
        "CLEARING_MASTER_KEY_FILE",
        super::engines::master_key_file(),
    );
    c
}

/// Kills the server process when dropped, even on a failed assertion.
pub struct Server {
    pub child: std::process::Child,
    pub addr: String,
}
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `admin enroll` of `terminal` for merchant M-1, writing its secret to `key`.
pub fn enroll(db: &str, terminal: &str, key: &Path) -> std::process::Output {
    admin(
        db,
        &[
            "enroll",
            "--terminal",
            terminal,
            "--merchant",
            "M-1",
            "--key-file",
            key.to_str().unwrap(),
        ],
    )
}

pub fn serve(db: &str) -> Server {
    serve_with(db, &[]).0
}

/// `clearing-server --db <db> serve --listen 127.0.0.1:0 <args>`.
pub fn serve_command(db: &str, args: &[&str]) -> Command {
    let mut c = platform();
    c.args(["--db", db, "serve", "--listen", "127.0.0.1:0"])
        .args(args);
    c
}

/// [`serve_command`] started: the server and its log lines up to the listening line.
pub fn serve_with(db: &str, args: &[&str]) -> (Server, Vec<String>) {
    serve_logged(serve_command(db, args))
}

/// `command` (a `serve_command`, perhaps changed) started: the server.
pub fn serve_child(command: Command) -> Server {
    serve_logged(command).0
}

fn serve_logged(mut command: Command) -> (Server, Vec<String>) {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let mut log = Vec::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "server exited: {log:?}"
        );
        log.push(line.trim().to_owned());
        if let Some(addr) = line.trim().split("listening on http://").nth(1) {
            break addr.to_owned();
        }
    };
    (Server { child, addr }, log)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sends one signed request; `None` when the connection failed (server gone).
pub async fn send(
    addr: &str,
    keys: &TerminalKeys,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Option<(u16, Value)> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    let h = SignedHeaders::sign(
        &keys.request,
        &keys.terminal_id,
        method,
        path,
        now_ms(),
        nonce,
        &body,
    );
    let req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .signed(&h);
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let v = serde_json::from_slice(&resp.bytes().await.ok()?).unwrap_or(Value::Null);
    Some((status, v))
}

/// Multi-threaded, so that a spawned request progresses while the test thread kills the server.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The rows of a query on the database the binary uses (read from the test, beside the server).
pub fn query(db: &str, sql: &str) -> impl Iterator<Item = clearing_server::storage::Row> {
    Db::open(db)
        .unwrap()
        .read(|tx| -> Result<_, StorageError> { tx.query(sql, &[]) })
        .unwrap()
        .into_iter()
}

/// Runs `clearing-server --db DB admin ARGS…`.
pub fn admin(db: &str, args: &[&str]) -> std::process::Output {
    platform()
        .args(["--db", db, "admin"])
        .args(args)
        .output()
        .unwrap()
}

/// `admin card import FILE` (the whole command's output: it reports on stderr).
pub fn import(db: &str, file: &Path) -> std::process::Output {
    admin(db, &["card", "import", file.to_str().unwrap()])
}

/// Succeeds, or fails the test with the command's stderr. Returns stdout.
pub fn ok(db: &str, args: &[&str]) -> String {
    let out = admin(db, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with a message containing `needle`. Returns stderr.
pub fn refused(db: &str, args: &[&str], needle: &str) -> String {
    let out = admin(db, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    err
}

/// Keys of a terminal enrolled with `admin enroll --key-file` (the key file in `dir`).
pub fn enrolled(db: &str, dir: &Path, terminal: &str) -> TerminalKeys {
    let key = dir.join(format!("{terminal}.key"));
    let out = enroll(db, terminal, &key);
    assert!(
        out.status.success(),
        "enroll {terminal}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TerminalSecret::from_hex_text(&std::fs::read_to_string(&key).unwrap())
        .unwrap()
        .derive_all(terminal)
}

/// Uploads `recs` (continuing the terminal's chain) and returns the answer.
pub fn upload(
    server: &Server,
    keys: &TerminalKeys,
    recs: &[(redeemd_contract::JournalRecord, redeemd_contract::keys::Tag)],
) -> (u16, Value) {
    let path = format!("/v1/terminals/{}/journal", keys.terminal_id);
    runtime()
        .block_on(send(
            &server.addr,
            keys,
            "POST",
            &path,
            redeemd::sync::wire::upload_body(recs),
        ))
        .unwrap()
}
