//! `redeemd enroll --server URL --code XXXX-XXXX`: a shop PC joins the platform with a one-time pairing
//! code instead of a copied secret (`docs/api/README.md`, "Pairing"). It fetches the terminal id, the
//! merchant id and a fresh secret (`POST /v1/enroll`), writes the secret to the configuration's key file
//! (mode 0600; `/etc/redeemd/terminal.key` for the package's credential), sets `terminal_id` and
//! `merchant_id` in the configuration in place (its comments and layout kept), and says what to run
//! next.
//!
//! A code works once, so everything that could stop the enrolment is checked before it is used: the
//! URL (HTTPS, or plain HTTP to loopback only, as sync requires), the code's form, the configuration
//! (valid, its key source), that the key file does not exist (never overwritten without `--force`),
//! and that both files' directories are writable. Should a write fail after the platform answered, the
//! message says what was written where and what is left to do by hand; the secret is never printed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redeemd_contract::TerminalSecret;
use redeemd_contract::request::is_valid_id;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::config::{Config, KeySource, check_server_url};

/// Why an enrolment stopped. Each says what to do.
#[derive(Debug, Error)]
pub enum EnrollError {
    #[error("--server: {0}")]
    Server(String),
    #[error("--code: {0}")]
    Code(#[from] redeemd_contract::pairing::BadCode),
    #[error(
        "{} exists: a terminal's secret is never overwritten (its journal needs it). If this PC's \
         terminal is retired, move the file aside and run enroll again (or give --force)",
        .0.display()
    )]
    KeyExists(PathBuf),
    #[error("{}: cannot write there: {source}", path.display())]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the platform: {0}")]
    Transport(String),
    #[error("the platform refused the pairing code ({status} {code}): {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("the platform is busy or limiting attempts ({status} {code}): {detail}")]
    Later {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("unusable answer from the platform: {0}")]
    Answer(String),
    #[error("{}: {source}; {left}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
        /// What was done already and what is left to do by hand.
        left: String,
    },
}

impl EnrollError {
    /// The exit code (README, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            EnrollError::Server(_) | EnrollError::Code(_) => 64,
            EnrollError::KeyExists(_) | EnrollError::NotWritable { .. } => 73,
            EnrollError::Write { .. } => 74,
            EnrollError::Transport(_) | EnrollError::Later { .. } | EnrollError::Answer(_) => 75,
            EnrollError::Refused { .. } => 77,
        }
    }
}

/// What the platform sent.
pub struct Enrolled {
    pub terminal_id: String,
    pub merchant_id: String,
    pub secret_hex: Zeroizing<String>,
}

#[derive(serde::Deserialize)]
struct AnswerJson {
    terminal_id: String,
    merchant_id: String,
    secret: String,
}

/// Reads the platform's answer: ids a configuration accepts and a secret of the right form.
pub fn parse_answer(body: &[u8]) -> Result<Enrolled, EnrollError> {
    let a: AnswerJson =
        serde_json::from_slice(body).map_err(|e| EnrollError::Answer(e.to_string()))?;
    let secret = Zeroizing::new(a.secret);
    for (what, id) in [
        ("terminal_id", &a.terminal_id),
        ("merchant_id", &a.merchant_id),
    ] {
        if !is_valid_id(id) {
            return Err(EnrollError::Answer(format!(
                "{what} is not 1-64 characters of A-Z a-z 0-9 . _ -"
            )));
        }
    }
    TerminalSecret::from_hex_text(&secret)
        .map_err(|e| EnrollError::Answer(format!("secret: {e}")))?;
    Ok(Enrolled {
        terminal_id: a.terminal_id,
        merchant_id: a.merchant_id,
        secret_hex: secret,
    })
}

/// The configuration's text with `terminal_id` and `merchant_id` set, everything else — comments,
/// order, spacing, a comment after either value — as it was.
pub fn set_ids(text: &str, terminal_id: &str, merchant_id: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for (key, id) in [("terminal_id", terminal_id), ("merchant_id", merchant_id)] {
        let mut value = toml_edit::Value::from(id);
        if let Some(old) = doc.get(key).and_then(toml_edit::Item::as_value) {
            *value.decor_mut() = old.decor().clone();
        }
        doc[key] = toml_edit::Item::Value(value);
    }
    Ok(doc.to_string())
}

/// Where the secret goes: the configuration's key file, or the source of its systemd credential in
/// `credential_dir` (`LoadCredential=terminal.key:/etc/redeemd/terminal.key`).
pub fn key_path(source: &KeySource, credential_dir: &Path) -> PathBuf {
    match source {
        KeySource::File(p) => p.clone(),
        KeySource::Credential(name) => credential_dir.join(name),
    }
}

/// What `redeemd enroll` was asked.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub server: String,
    pub code: String,
    pub force: bool,
    pub config_path: PathBuf,
    pub key_path: PathBuf,
}

/// What an enrolment did, for the caller to print.
#[derive(Debug, Clone)]
pub struct Done {
    pub terminal_id: String,
    pub merchant_id: String,
    pub server: String,
    /// The configuration's `[sync] server_url`, when it is not the server enrolled with.
    pub other_server_url: Option<Option<String>>,
    /// A database in the state directory from before (it will not open with the new secret).
    pub old_database: Option<PathBuf>,
}

/// Enrolls: the checks, the platform, then the key file and the configuration.
pub fn enroll(req: &EnrollRequest, config: &Config) -> Result<Done, EnrollError> {
    let server = check_server_url(&req.server).map_err(EnrollError::Server)?;
    let code = redeemd_contract::pairing::normalize(&req.code)?;
    if req.key_path.exists() && !req.force {
        return Err(EnrollError::KeyExists(req.key_path.clone()));
    }
    let text =
        std::fs::read_to_string(&req.config_path).map_err(|source| EnrollError::NotWritable {
            path: req.config_path.clone(),
            source,
        })?;
    // Checked on the current ids (the new ones are checked by the answer's parser).
    set_ids(&text, &config.terminal_id, &config.merchant_id).map_err(|e| {
        EnrollError::NotWritable {
            path: req.config_path.clone(),
            source: std::io::Error::other(e),
        }
    })?;
    for file in [&req.key_path, &req.config_path] {
        probe_writable(file)?;
    }
    let answer = post(&server, &code)?;
    let done_before = "nothing was written; the code is used: ask for a new one".to_owned();
    write_key(&req.key_path, &answer.secret_hex, req.force).map_err(|source| {
        EnrollError::Write {
            path: req.key_path.clone(),
            source,
            left: done_before,
        }
    })?;
    let left = format!(
        "the secret was written to {}; set terminal_id = \"{}\" and merchant_id = \"{}\" in {} by hand",
        req.key_path.display(),
        answer.terminal_id,
        answer.merchant_id,
        req.config_path.display()
    );
    let edited = set_ids(&text, &answer.terminal_id, &answer.merchant_id).map_err(|e| {
        EnrollError::Write {
            path: req.config_path.clone(),
            source: std::io::Error::other(e),
            left: left.clone(),
        }
    })?;
    replace_file(&req.config_path, edited.as_bytes()).map_err(|source| EnrollError::Write {
        path: req.config_path.clone(),
        source,
        left,
    })?;
    let db = config.state_dir.join(crate::store::DB_FILE);
    Ok(Done {
        other_server_url: (config.sync.server_url.as_deref() != Some(server.as_str()))
            .then(|| config.sync.server_url.clone()),
        terminal_id: answer.terminal_id,
        merchant_id: answer.merchant_id,
        server,
        old_database: db.exists().then_some(db),
    })
}

/// `POST {server}/v1/enroll`.
fn post(server: &str, code: &str) -> Result<Enrolled, EnrollError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EnrollError::Transport(e.to_string()))?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("redeemd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EnrollError::Transport(e.to_string()))?;
        let body = serde_json::json!({ "code": code }).to_string();
        let mut resp = http
            .post(format!("{server}/v1/enroll"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| EnrollError::Transport(transport_text(&e)))?;
        let status = resp.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| EnrollError::Transport(transport_text(&e)))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > 64 << 10 {
                return Err(EnrollError::Answer("more than 64 KiB".into()));
            }
        }
        if status == 200 {
            return parse_answer(&bytes);
        }
        let problem = crate::sync::wire::parse_problem(status, None, &bytes);
        let detail = crate::sync::wire::problem_extras(&bytes)
            .detail
            .unwrap_or_else(|| "no detail".into());
        if status == 429 || status >= 500 {
            Err(EnrollError::Later {
                status,
                code: problem.code,
                detail,
            })
        } else {
            Err(EnrollError::Refused {
                status,
                code: problem.code,
                detail,
            })
        }
    })
}

fn transport_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether a file can be created beside `file` (the directory exists and is writable).
fn probe_writable(file: &Path) -> Result<(), EnrollError> {
    let dir = parent(file);
    let probe = dir.join(format!(".redeemd-enroll-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match result {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(EnrollError::NotWritable {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn parent(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The secret as a key file: a new file of mode 0600, or (`replace`) a new file renamed over the old.
fn write_key(path: &Path, secret_hex: &str, replace: bool) -> std::io::Result<()> {
    let text = Zeroizing::new(format!("{secret_hex}\n"));
    if replace {
        let tmp = path.with_extension("key.new");
        let _ = std::fs::remove_file(&tmp);
        write_new(&tmp, text.as_bytes(), 0o600)?;
        std::fs::rename(&tmp, path)?;
    } else {
        write_new(path, text.as_bytes(), 0o600)?;
    }
    sync_dir(parent(path))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces a file's content by a rename (never a half-written configuration), keeping its mode.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    let tmp = parent(path).join(format!(
        ".{}.enroll-{}",
        path.file_name()
            .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, bytes, mode)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    sync_dir(parent(path))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_ids_are_set_in_place_with_the_comments_kept() {
        let text = "# redeemd configuration\n\n# Identity of this install.\nterminal_id = \"T-0001\"   # as enrolled\nmerchant_id = \"M-0001\"\nstate_dir = \"/var/lib/redeemd\"\n\n[key]\ncredential = \"terminal.key\"\n";
        let out = set_ids(text, "T-9F36", "M-1").unwrap();
        assert_eq!(
            out,
            text.replace("T-0001", "T-9F36").replace("M-0001", "M-1")
        );
        // Keys the file did not have are added; a file that is not TOML is refused.
        assert!(
            set_ids("state_dir = \"/x\"\n", "T", "M")
                .unwrap()
                .contains("terminal_id = \"T\"")
        );
        assert!(set_ids("terminal_id = ", "T", "M").is_err());
    }

    #[test]
    fn the_answer_is_checked() {
        let secret = "ab".repeat(32);
        let ok = format!(r#"{{"terminal_id":"T-1","merchant_id":"M-1","secret":"{secret}"}}"#);
        let e = parse_answer(ok.as_bytes()).unwrap();
        assert_eq!(
            (e.terminal_id.as_str(), e.merchant_id.as_str()),
            ("T-1", "M-1")
        );
        for bad in [
            ok.replace("T-1", "T 1"),
            ok.replace("M-1", ""),
            ok.replace(&secret, "abcd"),
            "<html>".to_owned(),
        ] {
            assert!(parse_answer(bad.as_bytes()).is_err(), "{bad}");
        }
        let e = EnrollError::KeyExists("/etc/redeemd/terminal.key".into());
        assert_eq!(e.exit_code(), 73);
        assert!(e.to_string().contains("never overwritten"), "{e}");
    }

    #[test]
    fn the_key_goes_where_the_configuration_reads_it() {
        assert_eq!(
            key_path(
                &KeySource::Credential("terminal.key".into()),
                Path::new("/etc/redeemd")
            ),
            PathBuf::from("/etc/redeemd/terminal.key")
        );
        assert_eq!(
            key_path(
                &KeySource::File("/srv/t.key".into()),
                Path::new("/etc/redeemd")
            ),
            PathBuf::from("/srv/t.key")
        );
    }
}
