//! The daemon's configuration: one TOML file, loaded and validated before the runtime starts.
//!
//! Every error names the key it is about (`reader[1].baud: 115201 is not one of [9600, …]`) so a
//! technician can fix the file without reading code. A file TOML cannot read is reported with its
//! line and column and the line itself, over several lines as written, and types in words a
//! technician knows ("a whole number from 0 to 255", not "u8"). Two readers naming one device by two
//! paths (a symlink, `..`) are refused. `main` maps [`ConfigError`] to exit status 64 (EX_USAGE). The
//! commented reference is `fixtures/redeemd.toml`; keep the two in step.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::Limits;
pub use crate::keys::KeySource;

/// Where the configuration lives when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/redeemd/redeemd.toml";

/// Why a configuration could not be used. Each variant names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type: `message` starts with the line and
    /// column and may span several lines (the line itself, a caret under the place).
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// A validated configuration. Constructed only by [`Config::load`] / [`Config::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub terminal_id: String,
    pub merchant_id: String,
    pub state_dir: PathBuf,
    pub language: Language,
    /// The business day's offset from UTC, in minutes east (China: +480). Daily caps, void
    /// windows and `report --date` count days in this time.
    pub utc_offset_minutes: i32,
    pub key: KeySource,
    pub readers: Vec<ReaderConfig>,
    pub risk: RiskConfig,
    pub void_window: Duration,
    pub sync: SyncConfig,
    pub log: LogConfig,
}

/// Language of texts shown on the reader and printed on receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Zh,
    En,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// One serial reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderConfig {
    pub name: String,
    pub port: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskConfig {
    pub max_offline_uses_per_card: u32,
    pub max_offline_redemptions: u32,
    pub identity_max_attempts: u32,
    pub identity_lockout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// `None`: sync disabled (a stand-alone test install).
    pub server_url: Option<String>,
    pub interval: Duration,
    pub connect_timeout: Duration,
    /// A JSON request's whole time, and the longest stall while reading any answer.
    pub request_timeout: Duration,
    /// A whole entitlement bundle download.
    pub bundle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    terminal_id: String,
    merchant_id: String,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_language")]
    language: Language,
    #[serde(default = "default_utc_offset")]
    utc_offset_minutes: i32,
    key: RawKey,
    #[serde(default, rename = "reader")]
    readers: Vec<RawReader>,
    #[serde(default)]
    risk: RawRisk,
    #[serde(default)]
    void: RawVoid,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    file: Option<PathBuf>,
    credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReader {
    name: String,
    port: PathBuf,
    #[serde(default = "default_baud")]
    baud: u32,
    #[serde(default = "default_data_bits")]
    data_bits: u8,
    #[serde(default = "default_parity")]
    parity: Parity,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRisk {
    max_offline_uses_per_card: u32,
    max_offline_redemptions: u32,
    identity_max_attempts: u32,
    identity_lockout_minutes: u64,
}

impl Default for RawRisk {
    fn default() -> Self {
        Self {
            max_offline_uses_per_card: 20,
            max_offline_redemptions: 2_000,
            identity_max_attempts: 3,
            identity_lockout_minutes: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawVoid {
    window_secs: u64,
}

impl Default for RawVoid {
    fn default() -> Self {
        Self {
            window_secs: 24 * 3600,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSync {
    server_url: Option<String>,
    interval_secs: u64,
    connect_timeout_secs: u64,
    request_timeout_secs: u64,
    bundle_timeout_secs: u64,
}

impl Default for RawSync {
    fn default() -> Self {
        Self {
            server_url: None,
            interval_secs: 60,
            connect_timeout_secs: 10,
            request_timeout_secs: 30,
            bundle_timeout_secs: 900,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: LogFormat,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/redeemd")
}
fn default_language() -> Language {
    Language::Zh
}
fn default_utc_offset() -> i32 {
    480
}
fn default_baud() -> u32 {
    115_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}

/// Baud rates a PC UART and the USB-serial adapters we meet at shops actually support.
const STANDARD_BAUD_RATES: [u32; 8] = [
    9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600,
];

impl Config {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validate `text` as if read from `path` (the path only appears in error messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: syntax_message(text, &e),
        })?;
        Validator { path }.validate(raw)
    }
}

/// A TOML error as a technician reads it: `line L, column C: what`, then the line and a caret
/// under the place, as written (several lines).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let what = plain_words(e.message().trim_end());
    let Some(span) = e.span() else {
        return what;
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or_default();
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let column = text
        .get(line_start..start)
        .map_or(1, |s| s.chars().count() + 1);
    let width = text
        .get(start..span.end.min(text.len()))
        .map_or(1, |s| s.lines().next().unwrap_or_default().chars().count())
        .max(1);
    let gutter = " ".repeat(line_no.to_string().len());
    format!(
        "line {line_no}, column {column}: {what}\n{gutter} |\n{line_no} | {line}\n{gutter} | {}{}",
        " ".repeat(column - 1),
        "^".repeat(width)
    )
}

/// serde's names of the types it expected, in a technician's words.
fn plain_words(message: &str) -> String {
    const WORDS: [(&str, &str); 11] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected i8", "expected a whole number from -128 to 127"),
        (
            "expected i16",
            "expected a whole number from -32768 to 32767",
        ),
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected i64", "expected a whole number"),
        ("expected path string", "expected a path in quotes"),
        ("expected a string", "expected text in quotes"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut out = message.to_owned();
    for (jargon, words) in WORDS {
        // Whole words only: "expected u8" must not rewrite "expected u80…".
        let mut from = 0;
        while let Some(at) = out[from..].find(jargon).map(|i| i + from) {
            let end = at + jargon.len();
            if out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                from = end;
                continue;
            }
            out.replace_range(at..end, words);
            from = at + words.len();
        }
    }
    out
}

/// The device a port path names, for comparing two readers' ports: the path with every symlink
/// resolved when it exists, else the path with `.` and `..` worked out lexically (an unplugged
/// reader's path).
fn device_of(port: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(port) {
        return real;
    }
    let mut out = PathBuf::new();
    for part in port.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Config {
    /// The engine's risk limits and policy, from this configuration.
    pub fn limits(&self) -> Limits {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Limits {
            max_offline_uses_per_card: self.risk.max_offline_uses_per_card,
            max_offline_redemptions: self.risk.max_offline_redemptions,
            identity_max_attempts: self.risk.identity_max_attempts,
            identity_lockout_ms: ms(self.risk.identity_lockout),
            void_window_ms: ms(self.void_window),
            utc_offset_minutes: self.utc_offset_minutes,
            ..Limits::default()
        }
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: impl fmt::Display, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    fn identifier(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        if redeemd_contract::request::is_valid_id(value) {
            Ok(value.to_owned())
        } else {
            Err(self.invalid(
                key,
                format!("{value:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'"),
            ))
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let terminal_id = self.identifier("terminal_id", &raw.terminal_id)?;
        let merchant_id = self.identifier("merchant_id", &raw.merchant_id)?;
        if !raw.state_dir.is_absolute() {
            return Err(self.invalid(
                "state_dir",
                format!("{:?} must be an absolute path", raw.state_dir),
            ));
        }
        let key = match (raw.key.file, raw.key.credential) {
            (Some(file), None) if file.is_absolute() => KeySource::File(file),
            (Some(file), None) => {
                return Err(self.invalid("key.file", format!("{file:?} must be an absolute path")));
            }
            (None, Some(name)) if !name.is_empty() && !name.contains('/') => {
                KeySource::Credential(name)
            }
            (None, Some(name)) => {
                return Err(self.invalid(
                    "key.credential",
                    format!("{name:?} must be a credential name without '/'"),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(self.invalid("key", "set either `file` or `credential`, not both"));
            }
            (None, None) => {
                return Err(self.invalid(
                    "key",
                    "set `file` (a path) or `credential` (a systemd credential name)",
                ));
            }
        };

        let mut readers: Vec<ReaderConfig> = Vec::with_capacity(raw.readers.len());
        for (i, r) in raw.readers.into_iter().enumerate() {
            let at = |field: &str| format!("reader[{i}].{field}");
            let name = self.identifier(&at("name"), &r.name)?;
            if readers.iter().any(|o| o.name == name) {
                return Err(self.invalid(at("name"), format!("{name:?} is used by another reader")));
            }
            if !r.port.is_absolute() {
                return Err(self.invalid(
                    at("port"),
                    format!(
                        "{:?} must be an absolute device path, e.g. /dev/serial/by-id/…",
                        r.port
                    ),
                ));
            }
            let device = device_of(&r.port);
            if let Some((j, other)) = readers
                .iter()
                .enumerate()
                .find(|(_, o)| device_of(&o.port) == device)
            {
                let reason = if other.port == r.port {
                    format!("{:?} is used by another reader (reader[{j}])", r.port)
                } else {
                    format!(
                        "{:?} is the same device as reader[{j}].port {:?} (both are {}): one reader per device",
                        r.port,
                        other.port,
                        device.display()
                    )
                };
                return Err(self.invalid(at("port"), reason));
            }
            if !STANDARD_BAUD_RATES.contains(&r.baud) {
                return Err(self.invalid(
                    at("baud"),
                    format!("{} is not one of {STANDARD_BAUD_RATES:?}", r.baud),
                ));
            }
            if !(5..=8).contains(&r.data_bits) {
                return Err(self.invalid(
                    at("data_bits"),
                    format!("{} must be 5, 6, 7 or 8", r.data_bits),
                ));
            }
            if !(1..=2).contains(&r.stop_bits) {
                return Err(
                    self.invalid(at("stop_bits"), format!("{} must be 1 or 2", r.stop_bits))
                );
            }
            readers.push(ReaderConfig {
                name,
                port: r.port,
                baud: r.baud,
                data_bits: r.data_bits,
                parity: r.parity,
                stop_bits: r.stop_bits,
            });
        }

        if !(-14 * 60..=14 * 60).contains(&raw.utc_offset_minutes) {
            return Err(self.invalid(
                "utc_offset_minutes",
                format!("{} is outside -840..=840", raw.utc_offset_minutes),
            ));
        }
        if raw.risk.identity_max_attempts == 0 {
            return Err(self.invalid("risk.identity_max_attempts", "must be at least 1"));
        }
        if raw.sync.interval_secs < 5 {
            return Err(self.invalid(
                "sync.interval_secs",
                format!("{} is below the minimum of 5", raw.sync.interval_secs),
            ));
        }
        for (key, secs) in [
            ("sync.connect_timeout_secs", raw.sync.connect_timeout_secs),
            ("sync.request_timeout_secs", raw.sync.request_timeout_secs),
            ("sync.bundle_timeout_secs", raw.sync.bundle_timeout_secs),
        ] {
            if !(1..=86_400).contains(&secs) {
                return Err(self.invalid(key, format!("{secs} is outside 1..=86400")));
            }
        }
        let server_url = match raw.sync.server_url {
            Some(url) => Some(self.server_url(&url)?),
            None => None,
        };
        let level = raw.log.level.to_ascii_lowercase();
        if !matches!(
            level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(self.invalid(
                "log.level",
                format!(
                    "{:?} must be error, warn, info, debug or trace",
                    raw.log.level
                ),
            ));
        }

        Ok(Config {
            terminal_id,
            merchant_id,
            state_dir: raw.state_dir,
            language: raw.language,
            utc_offset_minutes: raw.utc_offset_minutes,
            key,
            readers,
            risk: RiskConfig {
                max_offline_uses_per_card: raw.risk.max_offline_uses_per_card,
                max_offline_redemptions: raw.risk.max_offline_redemptions,
                identity_max_attempts: raw.risk.identity_max_attempts,
                identity_lockout: Duration::from_secs(
                    raw.risk.identity_lockout_minutes.saturating_mul(60),
                ),
            },
            void_window: Duration::from_secs(raw.void.window_secs),
            sync: SyncConfig {
                server_url,
                interval: Duration::from_secs(raw.sync.interval_secs),
                connect_timeout: Duration::from_secs(raw.sync.connect_timeout_secs),
                request_timeout: Duration::from_secs(raw.sync.request_timeout_secs),
                bundle_timeout: Duration::from_secs(raw.sync.bundle_timeout_secs),
            },
            log: LogConfig {
                format: raw.log.format,
                level,
            },
        })
    }

    fn server_url(&self, url: &str) -> Result<String, ConfigError> {
        check_server_url(url).map_err(|reason| self.invalid("sync.server_url", reason))
    }
}

/// A platform URL, checked: HTTPS, except to a loopback address (the reference server in tests and
/// the demo). Returns it without a trailing `/`, or why it is refused. `[sync] server_url` and
/// `redeemd enroll --server` both follow it.
pub fn check_server_url(text: &str) -> Result<String, String> {
    // Parsed by the WHATWG rules of the `url` crate, which reqwest connects by: a hand-split URL
    // can name another host than the one reqwest reaches (`http://evil.example\@127.0.0.1`).
    let url = url::Url::parse(text)
        .map_err(|e| format!("{text:?} is not a URL ({e}; expected https://host[:port])"))?;
    let loopback = match url.host() {
        None => return Err(format!("{text:?} has no host")),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    match url.scheme() {
        "https" => Ok(text.trim_end_matches('/').to_owned()),
        "http" if loopback => Ok(text.trim_end_matches('/').to_owned()),
        "http" => Err(format!(
            "{text:?} uses plain http to a remote host ({}); use https:// (http is only allowed to 127.0.0.1/::1/localhost)",
            url.host_str().unwrap_or_default()
        )),
        other => Err(format!("scheme {other:?} is not supported; use https://")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const MINIMAL: &str = r#"
terminal_id = "T-1"
merchant_id = "M-1"
[key]
file = "/etc/redeemd/terminal.key"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn error_of(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/redeemd"));
        assert_eq!(c.language, Language::Zh);
        assert_eq!(c.sync.interval, Duration::from_secs(60));
        assert_eq!(c.void_window, Duration::from_secs(86_400));
        assert!(c.readers.is_empty());
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn reference_fixture_is_valid() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/redeemd.toml"
        ))
        .unwrap();
        let c = parse(&text).unwrap();
        assert_eq!(c.readers.len(), 2);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = error_of(&format!(
            "{MINIMAL}\n[[reader]]\nname = \"a\"\nport = \"/dev/ttyS0\"\nbaudrate = 9600\n"
        ));
        assert!(e.contains("baudrate"), "{e}");
    }

    #[test]
    fn bad_reader_fields_are_named_with_index() {
        let two = |extra: &str| {
            format!(
                "{MINIMAL}\n[[reader]]\nname = \"a\"\nport = \"/dev/ttyS0\"\n[[reader]]\nname = \"b\"\nport = \"/dev/ttyS1\"\n{extra}"
            )
        };
        assert!(error_of(&two("baud = 115201")).contains("reader[1].baud: 115201"));
        assert!(error_of(&two("stop_bits = 3")).contains("reader[1].stop_bits"));
        let dup = format!(
            "{MINIMAL}\n[[reader]]\nname = \"a\"\nport = \"/dev/ttyS0\"\n[[reader]]\nname = \"a\"\nport = \"/dev/ttyS1\"\n"
        );
        assert!(error_of(&dup).contains("reader[1].name"));
        let rel = format!("{MINIMAL}\n[[reader]]\nname = \"a\"\nport = \"ttyS0\"\n");
        assert!(error_of(&rel).contains("reader[0].port"));
    }

    #[test]
    fn key_source_must_be_exactly_one() {
        let none = "terminal_id = \"T\"\nmerchant_id = \"M\"\n[key]\n";
        assert!(error_of(none).contains("key:"));
        let both =
            "terminal_id = \"T\"\nmerchant_id = \"M\"\n[key]\nfile = \"/k\"\ncredential = \"k\"\n";
        assert!(error_of(both).contains("not both"));
        let cred =
            "terminal_id = \"T\"\nmerchant_id = \"M\"\n[key]\ncredential = \"terminal.key\"\n";
        assert_eq!(
            parse(cred).unwrap().key,
            KeySource::Credential("terminal.key".into())
        );
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let with = |url: &str| format!("{MINIMAL}\n[sync]\nserver_url = \"{url}\"\n");
        assert!(parse(&with("http://127.0.0.1:8080")).is_ok());
        assert!(parse(&with("http://[::1]:8080/")).is_ok());
        assert!(parse(&with("http://localhost:8080")).is_ok());
        assert!(parse(&with("https://clearing.example.com")).is_ok());
        let e = error_of(&with("http://clearing.example.com"));
        assert!(e.contains("sync.server_url") && e.contains("https"), "{e}");
        assert!(error_of(&with("ftp://x")).contains("scheme"));
        assert!(error_of(&with("nonsense")).contains("not a URL"));
        // The host is the one reqwest connects to, by the same parser's rules.
        for remote in [
            "http://evil.example\\@127.0.0.1/",
            "http://127.0.0.1@evil.example",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example:8080",
        ] {
            let e = check_server_url(remote).unwrap_err();
            assert!(e.contains("plain http to a remote host"), "{remote}: {e}");
        }
        assert!(check_server_url("https://").is_err());
        let zero = format!("{MINIMAL}\n[sync]\nrequest_timeout_secs = 0\n");
        assert!(error_of(&zero).contains("sync.request_timeout_secs"));
    }

    #[test]
    fn one_device_under_two_paths_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("ttyS9");
        std::fs::write(&device, b"").unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        let link = dir.path().join("x").join("reader-0");
        std::os::unix::fs::symlink(&device, &link).unwrap();
        let two = |a: &Path, b: &Path| {
            format!(
                "{MINIMAL}\n[[reader]]\nname = \"a\"\nport = \"{}\"\n[[reader]]\nname = \"b\"\nport = \"{}\"\n",
                a.display(),
                b.display()
            )
        };
        // A symlink to the device, and the same link spelt with `..`.
        let e = error_of(&two(&device, &link));
        assert!(
            e.contains("reader[1].port") && e.contains("same device as reader[0].port"),
            "{e}"
        );
        let dotted = dir.path().join("x").join("..").join("x").join("reader-0");
        let e = error_of(&two(&link, &dotted));
        assert!(e.contains("same device"), "{e}");
        // Paths that do not exist (unplugged readers) are compared with `..` worked out.
        let e = error_of(&two(
            Path::new("/dev/none/r0"),
            Path::new("/dev/none/x/../r0"),
        ));
        assert!(e.contains("same device"), "{e}");
        assert!(parse(&two(Path::new("/dev/none/r0"), Path::new("/dev/none/r1"))).is_ok());
    }

    #[test]
    fn toml_errors_keep_their_lines_and_say_types_in_words() {
        let text = format!(
            "{MINIMAL}\n[[reader]]\nname = \"a\"\nport = \"/dev/ttyS0\"\nbaud = \"fast\"\n"
        );
        let e = error_of(&text);
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines[0].contains("test.toml: line 10, column 8: invalid type: string \"fast\""),
            "{e}"
        );
        assert!(
            lines[0].ends_with("expected a whole number from 0 to 4294967295"),
            "{e}"
        );
        assert_eq!(lines[2], "10 | baud = \"fast\"", "{e}");
        assert_eq!(lines[3], "   |        ^^^^^^", "{e}");
        assert!(!e.contains("u32"), "{e}");
        let e = error_of(&format!("{MINIMAL}\n[risk]\nidentity_max_attempts = -1\n"));
        assert!(
            e.contains("expected a whole number from 0 to 4294967295"),
            "{e}"
        );
        let e = error_of("terminal_id = \"T\"\nmerchant_id = \n");
        assert!(e.contains("line 2, column"), "{e}");
        assert_eq!(plain_words("expected u80"), "expected u80");
    }

    #[test]
    fn identifiers_are_checked() {
        let e = error_of("terminal_id = \"T 1\"\nmerchant_id = \"M\"\n[key]\nfile = \"/k\"\n");
        assert!(e.contains("terminal_id"), "{e}");
    }
}
