//! What the simulator reads about the machine: a process's CPU time (`/proc/PID/stat`, utime +
//! stime), the process listening on a TCP port (`/proc/net/tcp*` and `/proc/*/fd`), and the size of
//! the platform's database (its files, or a SQL query through `psql`).

use std::io;
use std::path::{Path, PathBuf};

/// CPU seconds (user + system) a process used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds this process used so far.
pub fn own_cpu_seconds() -> io::Result<f64> {
    stat_cpu_seconds("/proc/self/stat")
}

fn stat_cpu_seconds(path: &str) -> io::Result<f64> {
    let text = std::fs::read_to_string(path)?;
    let ticks = parse_stat_ticks(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: no utime and stime fields"),
        )
    })?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// utime + stime (clock ticks) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted from its closing parenthesis: utime and
/// stime are fields 14 and 15.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// This process's peak resident memory (`VmHWM` in `/proc/self/status`), bytes.
pub fn own_peak_rss_bytes() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/self/status: no VmHWM"))
}

/// The process listening on TCP `port` (IPv4 or IPv6), if this user may see it.
pub fn pid_listening_on(port: u16) -> io::Result<Option<u32>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => inodes.extend(listening_inodes(&text, port)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if inodes.is_empty() {
        return Ok(None);
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in std::fs::read_dir("/proc")? {
        let Ok(proc_entry) = proc_entry else { continue };
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go, and others' descriptors may be unreadable: skip those.
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && link.to_str().is_some_and(|l| wanted.iter().any(|w| w == l))
            {
                return Ok(Some(pid));
            }
        }
    }
    Ok(None)
}

/// The inodes of sockets listening on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == LISTEN)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// How to measure the platform's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbSize {
    /// A file (with its `-wal` and `-shm` beside it) or a directory (every file under it).
    Path(PathBuf),
    /// A query answering one number of bytes, run with `psql` on a connection URL.
    Sql { url: String, query: String },
}

impl DbSize {
    /// What `--db` names: a `postgres://` URL is measured with `pg_database_size`, anything else is
    /// a SQLite path (an optional `sqlite:` prefix removed).
    pub fn of_db(db: &str) -> DbSize {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            DbSize::Sql {
                url: db.to_owned(),
                query: "SELECT pg_database_size(current_database())".into(),
            }
        } else {
            DbSize::Path(PathBuf::from(db.strip_prefix("sqlite:").unwrap_or(db)))
        }
    }

    /// Bytes, or why they could not be measured.
    pub async fn measure(&self) -> Result<u64, String> {
        match self {
            DbSize::Path(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || path_size(&p))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("database size: {e}"))
            }
            DbSize::Sql { url, query } => {
                let out = tokio::process::Command::new("psql")
                    .args(["-XAtq", url.as_str(), "-c", query.as_str()])
                    .output()
                    .await
                    .map_err(|e| format!("database size: psql: {e}"))?;
                let text = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() {
                    return Err(format!(
                        "database size: psql exited with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                text.trim().parse().map_err(|_| {
                    format!(
                        "database size: {query:?} answered {:?}, not a number of bytes",
                        text.trim()
                    )
                })
            }
        }
    }
}

fn path_size(p: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(p)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
    if meta.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(p)? {
            let entry = entry?;
            let m = entry.metadata()?;
            total += if m.is_dir() {
                path_size(&entry.path())?
            } else {
                m.len()
            };
        }
        return Ok(total);
    }
    let mut total = meta.len();
    for suffix in ["-wal", "-shm"] {
        let mut side = p.as_os_str().to_owned();
        side.push(suffix);
        if let Ok(m) = std::fs::metadata(PathBuf::from(side)) {
            total += m.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "4242 (clearing (x) srv) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat_ticks(line), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert!(own_cpu_seconds().unwrap() >= 0.0);
        assert!(own_peak_rss_bytes().unwrap() > 1 << 20);
        assert!(cpu_seconds(std::process::id()).is_ok());
    }

    #[test]
    fn the_listening_process_is_found_by_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port).unwrap(), Some(std::process::id()));
        drop(listener);
        assert_eq!(pid_listening_on(port).unwrap(), None);
    }

    #[tokio::test]
    async fn a_sqlite_database_counts_its_wal_and_a_directory_everything_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.sqlite3");
        std::fs::write(&db, [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("c.sqlite3-wal"), [0u8; 20]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), [0u8; 3]).unwrap();
        assert_eq!(DbSize::Path(db.clone()).measure().await.unwrap(), 120);
        assert_eq!(
            DbSize::of_db(&format!("sqlite:{}", db.display()))
                .measure()
                .await
                .unwrap(),
            120
        );
        assert_eq!(
            DbSize::Path(dir.path().into()).measure().await.unwrap(),
            123
        );
        assert!(
            DbSize::Path(dir.path().join("none"))
                .measure()
                .await
                .is_err()
        );
        assert!(matches!(
            DbSize::of_db("postgres://h/db"),
            DbSize::Sql { .. }
        ));
    }
}
