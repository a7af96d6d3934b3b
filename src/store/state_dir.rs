//! The state directory's rules: one daemon per directory, and a database created only on purpose.
//!
//! * **Lock** (`daemon.lock`): `redeemd run` and `redeemd init` hold an exclusive `flock` on it for as
//!   long as they run, and write their pid into it. A second daemon on the same directory is refused,
//!   naming the holder; the read-only tools (`status`, `journal verify`, …) take no lock and work beside
//!   it, and `redeemd sync` / `cache install` write beside it on purpose (they take `sync.lock`).
//! * **Marker** (`redeemd.state`): a small file beside the database, written when the database is
//!   created and each time the daemon opens it (terminal, merchant, the journal head then). Once it
//!   exists, a database file that is missing or empty means a journal was lost, and nothing starts a new
//!   journal over it: the store refuses with the way out (restore the file from a backup).
//! * **Creation**: a database is created only in an existing, empty directory (a first start, or
//!   `redeemd init`, which also creates the directory itself but never its parents). A directory that
//!   holds files but no database (a `-wal` file, `status.json`, `sync.lock`: a daemon ran here) is
//!   refused as well: its database was removed.
//!
//! Every command checks the directory itself first, so a path that is missing or a file is named as
//! such by all of them.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DB_FILE, StoreError};

/// The daemon's lock file inside the state directory.
pub const LOCK_FILE: &str = "daemon.lock";
/// The marker written beside the database (see the module docs).
pub const MARKER_FILE: &str = "redeemd.state";
/// Entries a new, empty state directory may hold: the lock taken before the check, and a
/// filesystem's own directory when the state directory is a mount point.
const IGNORED_WHEN_EMPTY: [&str; 2] = [LOCK_FILE, "lost+found"];

/// What the marker records about the database of this directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub terminal_id: String,
    pub merchant_id: String,
    pub created_at_ms: i64,
    /// The journal head when the database was last opened by the daemon.
    pub journal_head_seq: u64,
    pub seen_at_ms: i64,
}

/// What a state directory holds, for a command about to open its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// The database file is there (its contents are checked when it is opened).
    Database,
    /// An existing, empty directory: a first start may create the database here.
    Empty,
}

/// Checks that `dir` exists and is a directory.
pub fn check_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::NotADirectory {
            path: dir.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::StateDirMissing {
            path: dir.to_owned(),
        }),
        Err(source) => Err(StoreError::StateDir {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// What `dir` holds: a database, or nothing yet. Every other case is an error that names it: a
/// missing directory, a file in its place, a database file that is missing or empty where the marker
/// says a journal was, a directory with files but no database.
pub fn presence(dir: &Path) -> Result<Presence, StoreError> {
    check_dir(dir)?;
    let db = dir.join(DB_FILE);
    match std::fs::symlink_metadata(&db) {
        Ok(m) if !m.is_file() => Err(StoreError::Corrupt {
            path: db,
            detail: "not a regular file".into(),
        }),
        // An empty database file with a non-empty WAL is a database whose first transactions were
        // never checkpointed: SQLite reads them from the WAL.
        Ok(m) if m.len() == 0 && !wal_has_data(&db) => Err(StoreError::DatabaseLost {
            path: db,
            how: "an empty (0-byte) file".into(),
            held: held(dir),
        }),
        Ok(_) => Ok(Presence::Database),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if read_marker(dir).is_some() {
                return Err(StoreError::DatabaseLost {
                    path: db,
                    how: "missing".into(),
                    held: held(dir),
                });
            }
            let others = entries(dir)?;
            if others.is_empty() {
                Ok(Presence::Empty)
            } else {
                Err(StoreError::NotEmpty {
                    dir: dir.to_owned(),
                    entries: others,
                })
            }
        }
        Err(source) => Err(StoreError::StateDir { path: db, source }),
    }
}

fn wal_has_data(db: &Path) -> bool {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).is_ok_and(|m| m.len() > 0)
}

/// The directory's entries, but those an empty state directory may hold, sorted.
fn entries(dir: &Path) -> Result<Vec<String>, StoreError> {
    let io = |source| StoreError::StateDir {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry
            .map_err(io)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !IGNORED_WHEN_EMPTY.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// What the marker says this directory held, in words, for an error message.
fn held(dir: &Path) -> String {
    match read_marker(dir) {
        Some(Ok(m)) => format!(
            "the journal of terminal {} (merchant {}; journal head seq {} when the daemon last opened it)",
            m.terminal_id, m.merchant_id, m.journal_head_seq
        ),
        Some(Err(e)) => format!("a journal ({MARKER_FILE} is there but unreadable: {e})"),
        None => "no journal that redeemd recorded".into(),
    }
}

/// The marker, if the directory has one (`Err`: there, but not readable as a marker).
pub fn read_marker(dir: &Path) -> Option<Result<Marker, String>> {
    let path = dir.join(MARKER_FILE);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| e.to_string())),
    }
}

/// Writes the marker durably (a new file, synced, renamed over the old one, the directory synced):
/// it must not be lost in a power cut that keeps the database it vouches for.
pub fn write_marker(dir: &Path, marker: &Marker) -> std::io::Result<()> {
    let path = dir.join(MARKER_FILE);
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(marker).map_err(std::io::Error::other)?;
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // Nothing secret in it (ids and a seq): the tools may read it whoever runs them.
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The daemon's exclusive hold on a state directory; released when dropped (or the process ends).
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

impl DaemonLock {
    /// Takes the lock, or says who holds it. Never waits.
    pub fn acquire(dir: &Path) -> Result<DaemonLock, StoreError> {
        check_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let io = |source| StoreError::StateDir {
            path: path.clone(),
            source,
        };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path);
        let (mut file, writable) = match opened {
            Ok(f) => (f, true),
            // Created by another account (root running `redeemd run` by hand, then the service): a
            // read-only descriptor locks too; the pid it holds is then the last writer's.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                (std::fs::File::open(&path).map_err(io)?, false)
            }
            Err(e) => return Err(io(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse {
                    dir: dir.to_owned(),
                    pid: holder_pid(&path),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        if writable {
            let pid = format!("{}\n", std::process::id());
            file.set_len(0)
                .and_then(|()| file.write_all(pid.as_bytes()))
                .map_err(io)?;
        }
        Ok(DaemonLock { _file: file })
    }
}

/// The pid of the process holding the lock on `path`: from `/proc/locks` when it can be read (exact),
/// else the pid the holder wrote into the file.
fn holder_pid(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    from_proc_locks(meta.dev(), meta.ino()).or_else(|| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// `/proc/locks` lines look like `1: FLOCK  ADVISORY  WRITE 4242 08:01:131075 0 EOF`: the holder's
/// pid, then the file as major:minor:inode (major and minor in hex).
fn from_proc_locks(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let (major, minor) = (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| f.matches(':').count() == 2)?;
        let mut id = fields[at].split(':');
        let (ma, mi, i) = (id.next()?, id.next()?, id.next()?);
        let same = u64::from_str_radix(ma, 16).ok()? == major
            && u64::from_str_radix(mi, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino;
        // A waiting process's line has `->` after the number: it does not hold the lock.
        if same && fields.get(1) != Some(&"->") {
            fields.get(at.checked_sub(1)?)?.parse().ok()
        } else {
            None
        }
    })
}

/// Creates the state directory itself, mode 0700, if it is missing; never its parents.
pub fn create_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::ParentMissing {
            path: dir.to_owned(),
        }),
        Err(source) => Err(StoreError::StateDir {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Free and total bytes of the filesystem holding `dir` (what an unprivileged writer may use).
pub fn free_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(dir)?;
    Ok((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_empty_directory_is_a_first_start_and_a_used_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(presence(dir.path()).unwrap(), Presence::Empty);
        std::fs::write(dir.path().join(LOCK_FILE), b"1\n").unwrap();
        assert_eq!(presence(dir.path()).unwrap(), Presence::Empty);
        std::fs::write(dir.path().join("status.json"), b"{}").unwrap();
        match presence(dir.path()) {
            Err(StoreError::NotEmpty { entries, .. }) => assert_eq!(entries, ["status.json"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_marker_without_its_database_is_a_lost_journal() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker {
            terminal_id: "T-9".into(),
            merchant_id: "M-9".into(),
            created_at_ms: 1,
            journal_head_seq: 42,
            seen_at_ms: 2,
        };
        write_marker(dir.path(), &marker).unwrap();
        assert_eq!(read_marker(dir.path()), Some(Ok(marker)));
        let e = presence(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("missing") && e.contains("T-9") && e.contains("seq 42"),
            "{e}"
        );
        std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
        let e = presence(dir.path()).unwrap_err().to_string();
        assert!(e.contains("0-byte"), "{e}");
    }

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DaemonLock::acquire(dir.path()).unwrap();
        match DaemonLock::acquire(dir.path()) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(DaemonLock::acquire(dir.path()).is_ok());
    }

    #[test]
    fn init_creates_the_directory_but_never_its_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("no").join("such");
        assert!(matches!(
            create_dir(&deep),
            Err(StoreError::ParentMissing { .. })
        ));
        assert!(!dir.path().join("no").exists());
        create_dir(&dir.path().join("state")).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            create_dir(&file),
            Err(StoreError::NotADirectory { .. })
        ));
    }
}
