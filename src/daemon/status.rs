//! The running daemon's status, published as `status.json` in the state directory for
//! `redeemd status` (a separate process) to read.
//!
//! A file rather than a socket: it needs no listener, no permissions beyond the state directory,
//! and still says something useful when the daemon is gone (the `updated_at` and `pid` tell how
//! stale it is). It is replaced atomically (write, then rename), never fsynced: it is a view, not a
//! record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::store_owner::wall_clock_ms as wall_ms;

pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub readers: BTreeMap<String, ReaderStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReaderStatus {
    pub port: String,
    /// `opening`, `port error`, `waiting for reader`, `link up`.
    pub state: String,
    /// Why the port is not open, or why the link went down last.
    pub detail: Option<String>,
    pub reader_serial: Option<String>,
    pub firmware: Option<String>,
    pub encoding: Option<String>,
    pub last_transaction: Option<LastTransaction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastTransaction {
    pub txn_id: u32,
    pub kind: String,
    pub outcome: String,
    pub at_ms: i64,
}

/// Shared, published status. Cheap to clone.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<DaemonStatus>>,
    path: PathBuf,
}

impl StatusBoard {
    pub fn new(state_dir: &Path) -> StatusBoard {
        let status = DaemonStatus {
            pid: std::process::id(),
            started_at_ms: wall_ms(),
            updated_at_ms: wall_ms(),
            readers: BTreeMap::new(),
        };
        let board = StatusBoard {
            inner: Arc::new(Mutex::new(status)),
            path: state_dir.join(STATUS_FILE),
        };
        board.update_reader(None, |_| {});
        board
    }

    /// Changes one reader's entry (created on first use) and republishes the file.
    pub fn reader(&self, name: &str, change: impl FnOnce(&mut ReaderStatus)) {
        self.update_reader(Some(name), change);
    }

    fn update_reader(&self, name: Option<&str>, change: impl FnOnce(&mut ReaderStatus)) {
        let json = {
            // A poisoned lock only means another task panicked mid-update: the data is still a
            // plain status snapshot, so keep publishing.
            let mut status = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(name) = name {
                change(status.readers.entry(name.to_owned()).or_default());
            }
            status.updated_at_ms = wall_ms();
            serde_json::to_vec_pretty(&*status)
        };
        let Ok(json) = json else { return };
        let tmp = self.path.with_extension("json.tmp");
        let result = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot publish status");
        }
    }
}

/// Reads a published status file.
pub fn read(state_dir: &Path) -> Result<DaemonStatus, String> {
    let path = state_dir.join(STATUS_FILE);
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}
