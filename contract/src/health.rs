//! The terminal's health report (`POST /v1/terminals/{id}/health`, `docs/api/README.md`, "Health"):
//! what the daemon's status board knows about the shop — each reader's link, serial, firmware and last
//! transaction; the cache's version, age and expiry; the journal's backlog; a halt; the last
//! end-of-day close; the daemon's version — sent signed at the end of every sync pass. The platform
//! keeps the latest per terminal and derives its fleet alerts from it.
//!
//! One definition for both sides: the daemon builds it (`redeemd::sync::health`), the server parses it
//! strictly (unknown fields refused) and checks its bounds with [`HealthReport::check`].

use serde::{Deserialize, Serialize};

/// Most readers in one report.
pub const MAX_READERS: usize = 64;
/// Longest text field (names, serials, reasons), in characters.
pub const MAX_TEXT: usize = 256;
/// Largest count or version (the API's int64).
const MAX_COUNT: u64 = i64::MAX as u64;

/// A reader's link as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// The port is being opened.
    Opening,
    /// The port cannot be opened (unplugged, wrong path, permissions): `detail` says why.
    PortError,
    /// The port is open but the reader has not (re)established the link.
    WaitingForReader,
    /// Linked: the counter is served.
    LinkUp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderHealth {
    /// The reader's name in the shop's configuration.
    pub name: String,
    pub state: LinkState,
    /// Why the port is not open, or why the link went down last.
    pub detail: Option<String>,
    pub reader_serial: Option<String>,
    pub firmware: Option<String>,
    /// The wall time of the reader's last transaction.
    pub last_transaction_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheHealth {
    pub version: u64,
    /// When the terminal installed it (its wall clock): the cache's age.
    pub installed_at_ms: i64,
    /// The signed expiry: past it the counter declines every card.
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalHealth {
    pub head_seq: u64,
    /// Records the platform has not acknowledged.
    pub unsynced: u64,
    /// The wall time of the oldest of them.
    pub oldest_unsynced_at_ms: Option<i64>,
}

/// The platform's verdict on the terminal's last end-of-day close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseVerdict {
    Matched,
    Mismatched,
    Conflict,
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseHealth {
    pub business_date: String,
    pub result: CloseVerdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// The daemon's version (`redeemd --version`).
    pub daemon_version: String,
    /// When the daemon started (its wall clock).
    pub started_at_ms: i64,
    /// When the report was made (its wall clock).
    pub reported_at_ms: i64,
    /// The daemon's sync interval: the platform calls a terminal silent after a few of them.
    pub sync_interval_secs: u64,
    pub readers: Vec<ReaderHealth>,
    /// `None`: no cache installed yet.
    pub cache: Option<CacheHealth>,
    pub journal: JournalHealth,
    /// Why uploading is halted (the journal diverged from the platform's).
    pub halted: Option<String>,
    pub last_close: Option<CloseHealth>,
}

/// A report outside its bounds: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct HealthError {
    pub field: String,
    pub reason: String,
}

fn text(field: impl Into<String>, value: &str) -> Result<(), HealthError> {
    let n = value.chars().count();
    if n > MAX_TEXT {
        return Err(HealthError {
            field: field.into(),
            reason: format!("{n} characters, at most {MAX_TEXT}"),
        });
    }
    Ok(())
}

fn count(field: &str, value: u64) -> Result<(), HealthError> {
    if value > MAX_COUNT {
        return Err(HealthError {
            field: field.into(),
            reason: format!("{value}: above 2^63 - 1"),
        });
    }
    Ok(())
}

fn opt_text(field: impl Into<String>, value: &Option<String>) -> Result<(), HealthError> {
    value.as_deref().map_or(Ok(()), |v| text(field, v))
}

impl HealthReport {
    /// The bounds a platform holds a report to: at most [`MAX_READERS`] readers with distinct,
    /// non-empty names, text fields of at most [`MAX_TEXT`] characters, a sync interval of 1 s to a
    /// day, counts and versions of at most 2⁶³ − 1.
    pub fn check(&self) -> Result<(), HealthError> {
        text("daemon_version", &self.daemon_version)?;
        count("journal.head_seq", self.journal.head_seq)?;
        count("journal.unsynced", self.journal.unsynced)?;
        if let Some(c) = &self.cache {
            count("cache.version", c.version)?;
        }
        if self.sync_interval_secs == 0 || self.sync_interval_secs > 86_400 {
            return Err(HealthError {
                field: "sync_interval_secs".into(),
                reason: format!("{}: 1 to 86400", self.sync_interval_secs),
            });
        }
        if self.readers.len() > MAX_READERS {
            return Err(HealthError {
                field: "readers".into(),
                reason: format!("{} readers, at most {MAX_READERS}", self.readers.len()),
            });
        }
        for (i, r) in self.readers.iter().enumerate() {
            if r.name.is_empty() || self.readers[..i].iter().any(|o| o.name == r.name) {
                return Err(HealthError {
                    field: format!("readers[{i}].name"),
                    reason: "empty, or the name of an earlier reader".into(),
                });
            }
            text(format!("readers[{i}].name"), &r.name)?;
            opt_text(format!("readers[{i}].detail"), &r.detail)?;
            opt_text(format!("readers[{i}].reader_serial"), &r.reader_serial)?;
            opt_text(format!("readers[{i}].firmware"), &r.firmware)?;
        }
        opt_text("halted", &self.halted)?;
        if let Some(c) = &self.last_close {
            text("last_close.business_date", &c.business_date)?;
        }
        Ok(())
    }
}

/// `s` cut to at most [`MAX_TEXT`] characters (the daemon's texts, such as an I/O error, are its own
/// and not bounded).
pub fn bounded(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> HealthReport {
        HealthReport {
            daemon_version: "0.1.0".into(),
            started_at_ms: 1,
            reported_at_ms: 2,
            sync_interval_secs: 60,
            readers: vec![ReaderHealth {
                name: "counter-1".into(),
                state: LinkState::PortError,
                detail: Some("No such file or directory".into()),
                reader_serial: Some("SIM-0001".into()),
                firmware: None,
                last_transaction_at_ms: Some(1),
            }],
            cache: None,
            journal: JournalHealth {
                head_seq: 3,
                unsynced: 1,
                oldest_unsynced_at_ms: Some(1),
            },
            halted: None,
            last_close: Some(CloseHealth {
                business_date: "2026-11-27".into(),
                result: CloseVerdict::Mismatched,
            }),
        }
    }

    #[test]
    fn reports_round_trip_strictly_and_are_bounded() {
        let r = sample();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""state":"port_error""#), "{json}");
        assert!(json.contains(r#""result":"mismatched""#), "{json}");
        assert_eq!(serde_json::from_str::<HealthReport>(&json).unwrap(), r);
        let extra = json.replacen('{', r#"{"extra":1,"#, 1);
        assert!(serde_json::from_str::<HealthReport>(&extra).is_err());
        assert!(r.check().is_ok());
        let mut twice = r.clone();
        twice.readers.push(r.readers[0].clone());
        assert_eq!(twice.check().unwrap_err().field, "readers[1].name");
        let mut long = r.clone();
        long.readers[0].detail = Some("x".repeat(MAX_TEXT + 1));
        assert_eq!(long.check().unwrap_err().field, "readers[0].detail");
        let mut never = r;
        never.sync_interval_secs = 0;
        assert!(never.check().is_err());
        assert_eq!(bounded(&"é".repeat(300)).chars().count(), 256);
        let mut huge = sample();
        huge.journal.unsynced = u64::MAX;
        assert_eq!(huge.check().unwrap_err().field, "journal.unsynced");
    }
}
