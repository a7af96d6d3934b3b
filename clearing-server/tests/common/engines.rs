//! The two database engines the server's tests run on: an SQLite file in the test's directory, or a
//! fresh database in a PostgreSQL cluster that this test binary starts for itself.
//!
//! The cluster: Debian's PostgreSQL 15 server binaries (`initdb`, `pg_ctl` in
//! `/usr/lib/postgresql/15/bin`, package `postgresql`), a data directory under the system's temp dir,
//! listening only on a Unix socket in that directory. `initdb` refuses to run as root, so as root the
//! cluster belongs to the `postgres` account (`runuser -u postgres`). One cluster per test binary, one
//! database per test; a watcher process stops the cluster and removes its directory when the test
//! binary exits, however it exits. Without the binaries the tests fail saying which package to install.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Where Debian's `postgresql-15` puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A database for one test: `dir/clearing.sqlite3`, or a new database in this binary's cluster. The
/// string is what `clearing-server --db` takes.
pub fn database(engine: Engine, dir: &Path) -> String {
    match engine {
        Engine::Sqlite => dir.join("clearing.sqlite3").display().to_string(),
        Engine::Postgres => cluster().create_database(),
    }
}

/// Every file the database of a test may have written: the SQLite file, its WAL and shared memory; or
/// the whole PostgreSQL cluster (data files, WAL segments, server log).
pub fn database_files(engine: Engine, dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    match engine {
        Engine::Sqlite => walk(dir, &mut out),
        Engine::Postgres => walk(&cluster().dir, &mut out),
    }
    out.retain(|p| {
        engine == Engine::Postgres
            || p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("clearing.sqlite3"))
    });
    out
}

struct Cluster {
    /// The socket directory (also the data directory's parent).
    dir: PathBuf,
    admin: Mutex<postgres::Client>,
    next: AtomicU32,
    /// Outlives this process on purpose: it stops the cluster once the process is gone.
    _watcher: std::process::Child,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `command` as the cluster's owner: `postgres` when running as root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    // Callable from async tests too: starting the cluster and its client blocks.
    CLUSTER.get_or_init(|| match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(start_cluster),
        Err(_) => start_cluster(),
    })
}

fn start_cluster() -> Cluster {
    let bin = Path::new(PG_BIN);
    assert!(
        bin.join("initdb").is_file() && bin.join("pg_ctl").is_file(),
        "PostgreSQL server binaries not found in {PG_BIN}: install the Debian package `postgresql` \
         (apt-get install -y postgresql); the server's tests run every case on PostgreSQL too"
    );
    let dir = tempfile::Builder::new()
        .prefix("clearing-pg-")
        .tempdir()
        .unwrap()
        .keep();
    if is_root() {
        let owner = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        assert!(
            owner.status.success(),
            "running as root, the cluster needs the `postgres` account (package `postgresql`)"
        );
        let uid: u32 = String::from_utf8_lossy(&owner.stdout)
            .trim()
            .parse()
            .unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
    }
    let data = dir.join("data");
    let mut initdb = as_owner(&bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    run(initdb, "initdb");
    let mut start = as_owner(&bin.join("pg_ctl"));
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-o"])
        .arg(format!(
            "-k {} -c listen_addresses='' -c max_connections=400",
            dir.display()
        ))
        .arg("start");
    run(start, "pg_ctl start");
    // Stops the cluster and removes its files once this test binary has exited.
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 0.5; done; {bin}/pg_ctl -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        bin = PG_BIN,
        data = data.display(),
        dir = dir.display()
    );
    let mut w = as_owner(Path::new("/bin/sh"));
    w.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let watcher = w.spawn().unwrap();
    let admin = postgres::Config::new()
        .host_path(&dir)
        .user("postgres")
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    Cluster {
        dir,
        admin: Mutex::new(admin),
        next: AtomicU32::new(1),
        _watcher: watcher,
    }
}

impl Cluster {
    fn create_database(&self) -> String {
        let name = format!("t{}", self.next.fetch_add(1, Ordering::SeqCst));
        let create = || {
            self.admin
                .lock()
                .unwrap()
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap()
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(create),
            Err(_) => create(),
        }
        format!(
            "postgresql://postgres@{}/{name}",
            percent(&self.dir.display().to_string())
        )
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The master key every test seals with (the binary gets it through [`master_key_file`]).
pub const MASTER_KEY: [u8; 32] = [42; 32];

pub fn vault() -> clearing_server::vault::Vault {
    clearing_server::vault::Vault::new(
        clearing_server::vault::MasterKey::from_bytes(&MASTER_KEY).unwrap(),
    )
}

/// [`MASTER_KEY`] in a key file of mode 0600, for `clearing-server --master-key-file`.
pub fn master_key_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("clearing-key-")
            .tempdir()
            .unwrap()
            .keep();
        let path = dir.join("master.key");
        std::fs::write(&path, format!("{}\n", hex::encode(MASTER_KEY))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    })
}

/// Runs database work from an async test: the drivers block (PostgreSQL's client runs its own
/// runtime), which a test's runtime thread must not do without saying so.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs an async test body once per engine: `on_both_engines!(async name)` defines the tests
/// `name::sqlite` and `name::postgres` calling `async fn name(engine: Engine)`; `sync` for a plain
/// `fn name(engine: Engine)`.
#[macro_export]
macro_rules! on_both_engines {
    (async $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::engines::Engine::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::engines::Engine::Postgres).await
            }
        }
    )+};
    (sync $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::common::engines::Engine::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name($crate::common::engines::Engine::Postgres)
            }
        }
    )+};
}
