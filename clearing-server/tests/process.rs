//! The real `clearing-server` binary: `admin enroll` writes a private key file, `serve` answers a
//! request signed with that key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use redeemd_contract::keys::TerminalSecret;
use redeemd_contract::request::SignedHeaders;

const BIN: &str = env!("CARGO_BIN_EXE_clearing-server");

/// Kills the server process when the test ends, even on a failed assertion.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn enroll_then_serve_a_signed_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite3");
    let key = dir.path().join("T-1.key");
    let enroll = |key: &std::path::Path| {
        Command::new(BIN)
            .args([
                "--db",
                db.to_str().unwrap(),
                "admin",
                "enroll",
                "--terminal",
                "T-1",
            ])
            .args(["--merchant", "M-1", "--key-file", key.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = enroll(&key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let secret = TerminalSecret::from_hex_text(&std::fs::read_to_string(&key).unwrap()).unwrap();

    // Enrolling the same terminal again fails and leaves no orphan key file.
    let again = dir.path().join("again.key");
    let out = enroll(&again);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));
    assert!(!again.exists());

    let mut child = Child(
        Command::new(BIN)
            .args([
                "--db",
                db.to_str().unwrap(),
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_owned();

    let keys = secret.derive_all("T-1");
    let path = "/v1/terminals/T-1/journal/head";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let h = SignedHeaders::sign(&keys.request, "T-1", "GET", path, now, [1; 16], b"");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
        for (k, v) in h.pairs() {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"acknowledged_seq\":0"), "{body}");
}
