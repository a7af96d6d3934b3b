//! The running daemon's status, published as `status.json` in the state directory for
//! `redeemd status` (a separate process) to read.
//!
//! A file rather than a socket: it needs no listener, no permissions beyond the state directory,
//! and still says something useful when the daemon is gone (the `updated_at` and `pid` tell how
//! stale it is). It is replaced atomically (write, then rename), never fsynced: it is a view, not a
//! record.
//!
//! Port and sync changes are published at once; a transaction's entry and a link going up or down
//! are published a moment later ([`PUBLISH_DELAY`], by the reader's thread once the answer is out,
//! [`StatusBoard::later`]): replacing the file is not cheap on ext4 — the rename over the old file
//! frees its inode's blocks, which on a disk mounted with `discard` waits for a synchronous
//! discard, and flushes the new file's data (auto_da_alloc) — and the next request must not queue
//! behind it. Transactions in quick succession, and a reader re-linking over and over, share one
//! publication.
//!
//! The file is padded with spaces (JSON allows trailing whitespace) to whole 4 KiB pages with at
//! least 1 KiB to spare, so that on a **full disk**, where the new file cannot be written, the daemon
//! can still overwrite the old one in place, in blocks it already holds: `storage` then says why
//! redemptions fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::owner::wall_clock_ms as wall_ms;

pub const STATUS_FILE: &str = "status.json";

/// How long after a transaction its status entry is published at the latest.
pub const PUBLISH_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub readers: BTreeMap<String, ReaderStatus>,
    /// `None` when sync is not configured.
    #[serde(default)]
    pub sync: Option<SyncStatus>,
    /// The full journal check run at start (`crate::daemon::check_journal_at_start`): `running`, then
    /// `clean (N rows)` or the findings.
    #[serde(default)]
    pub journal_check: Option<String>,
    /// The state directory's disk, as the daemon last saw it.
    #[serde(default)]
    pub storage: Option<StorageStatus>,
}

/// Free space on the state directory's filesystem and the last write the disk refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorageStatus {
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// The last store write that failed for want of storage (a full disk, an I/O error), until a
    /// later one succeeded.
    pub last_error: Option<crate::store::StorageError>,
}

/// The sync task's view, updated after every pass (`crate::daemon::sync`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncStatus {
    pub server_url: String,
    pub last_attempt_at_ms: Option<i64>,
    /// `ok`, or the failed steps' errors joined by `; `.
    pub last_result: Option<String>,
    pub last_success_at_ms: Option<i64>,
    pub next_attempt_at_ms: Option<i64>,
    pub consecutive_failures: u32,
    /// Why uploading is halted (the journal diverged from the server's): an operator must look.
    pub halted: Option<String>,
    /// Records the platform has not acknowledged, and the wall time of the oldest of them.
    pub unsynced_records: u64,
    pub oldest_unsynced_at_ms: Option<i64>,
    pub cache_version: u64,
    pub cache_installed_at_ms: Option<i64>,
    pub deny_version: u64,
    /// The last time a deny-list answer was checked and applied (how fresh loss reports are).
    pub deny_checked_at_ms: Option<i64>,
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
    inner: Arc<Mutex<Board>>,
    /// Held while the file is written: one writer at a time, each with the latest state, and
    /// changes in memory never wait for the disk.
    writing: Arc<Mutex<()>>,
    path: PathBuf,
}

struct Board {
    status: DaemonStatus,
    /// Changed since the file was last written.
    unpublished: bool,
}

impl StatusBoard {
    pub fn new(state_dir: &Path) -> StatusBoard {
        let status = DaemonStatus {
            pid: std::process::id(),
            started_at_ms: wall_ms(),
            updated_at_ms: wall_ms(),
            readers: BTreeMap::new(),
            sync: None,
            journal_check: None,
            storage: None,
        };
        let board = StatusBoard {
            inner: Arc::new(Mutex::new(Board {
                status,
                unpublished: true,
            })),
            writing: Arc::new(Mutex::new(())),
            path: state_dir.join(STATUS_FILE),
        };
        board.publish();
        board
    }

    /// What a health report says of the daemon (`crate::sync::health`): its start and each reader as
    /// the board has it now.
    pub fn health_facts(&self) -> crate::sync::health::BoardFacts {
        let board = self.lock();
        crate::sync::health::BoardFacts {
            started_at_ms: board.status.started_at_ms,
            readers: board
                .status
                .readers
                .iter()
                .map(|(name, r)| crate::sync::health::ReaderFacts {
                    name: name.clone(),
                    state: r.state.clone(),
                    detail: r.detail.clone(),
                    reader_serial: r.reader_serial.clone(),
                    firmware: r.firmware.clone(),
                    last_transaction_at_ms: r.last_transaction.as_ref().map(|t| t.at_ms),
                })
                .collect(),
        }
    }

    /// Changes one reader's entry (created on first use) and republishes the file.
    pub fn reader(&self, name: &str, change: impl FnOnce(&mut ReaderStatus)) {
        self.later(name, change);
        self.publish();
    }

    /// Changes one reader's entry in memory only: the caller [`publish`](Self::publish)es within
    /// [`PUBLISH_DELAY`] (see the module docs), or the next immediate change takes it along.
    pub fn later(&self, name: &str, change: impl FnOnce(&mut ReaderStatus)) {
        self.change(|s| change(s.readers.entry(name.to_owned()).or_default()));
    }

    /// Changes the sync entry (created on first use) and republishes the file.
    pub fn sync(&self, change: impl FnOnce(&mut SyncStatus)) {
        self.change(|s| change(s.sync.get_or_insert_with(SyncStatus::default)));
        self.publish();
    }

    /// Sets the start-up journal check's state and republishes the file.
    pub fn journal_check(&self, state: String) {
        self.change(|s| s.journal_check = Some(state));
        self.publish();
    }

    /// Sets the storage entry and republishes the file, if it changed.
    pub fn storage(&self, storage: StorageStatus) {
        {
            let board = self.lock();
            if board.status.storage.as_ref() == Some(&storage) {
                return;
            }
        }
        self.change(|s| s.storage = Some(storage));
        self.publish();
    }

    fn change(&self, change: impl FnOnce(&mut DaemonStatus)) {
        let mut board = self.lock();
        change(&mut board.status);
        board.status.updated_at_ms = wall_ms();
        board.unpublished = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        // A poisoned lock only means another thread panicked mid-update: the data is still a
        // plain status snapshot, so keep publishing.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the file if anything changed since it was last written.
    pub fn publish(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let json = {
            let mut board = self.lock();
            if !board.unpublished {
                return;
            }
            board.unpublished = false;
            serde_json::to_vec_pretty(&board.status)
        };
        let Ok(mut json) = json else { return };
        pad_to_pages(&mut json);
        let tmp = self.path.with_extension("json.tmp");
        let result = std::fs::write(&tmp, &json).and_then(|()| std::fs::rename(&tmp, &self.path));
        let result = match result {
            // A full disk: into the blocks the old file holds (see the module docs).
            Err(e) if e.raw_os_error() == Some(28) => {
                let _ = std::fs::remove_file(&tmp);
                overwrite_in_place(&self.path, &json).map_err(|_| e)
            }
            other => other,
        };
        if let Err(e) = result {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot publish status");
        }
    }
}

/// Pads the JSON with spaces to whole 4 KiB pages, at least 1 KiB of them spare.
fn pad_to_pages(json: &mut Vec<u8>) {
    const PAGE: usize = 4096;
    let len = (json.len() + 1024).div_ceil(PAGE) * PAGE;
    json.resize(len, b' ');
}

/// Writes `json` over the start of the existing file when it fits in the file's length, without
/// truncating (so that no block is freed and none needs allocating); the rest stays spaces.
fn overwrite_in_place(path: &Path, json: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let old_len = file.metadata()?.len();
    let body = json.trim_ascii_end();
    if body.len() as u64 > old_len {
        return Err(std::io::Error::other("status does not fit in the old file"));
    }
    let pad = usize::try_from(old_len).unwrap_or(usize::MAX) - body.len();
    file.seek(SeekFrom::Start(0))?;
    file.write_all(body)?;
    file.write_all(&vec![b' '; pad])?;
    Ok(())
}

/// Reads a published status file.
pub fn read(state_dir: &Path) -> Result<DaemonStatus, String> {
    let path = state_dir.join(STATUS_FILE);
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}
