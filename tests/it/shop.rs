//! A shop laid out on disk and the real `redeemd run` process: shared by the integration tests
//! (`tests/it/daemon.rs`, `tests/it/doctor.rs`) and the daemon benchmark (`benches/daemon.rs`,
//! which includes this file by path next to `support.rs`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redeemd_contract::Card;
use redeemd_contract::snapshot::BundleKind;

use crate::support::{self, HOUR, MERCHANT, SECRET_HEX, TERMINAL};

pub const BAUD: u32 = 115_200;

pub fn wall_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `support::card(i, wash)` with validity windows around the real clock (the daemon reads it).
pub fn live_card(i: u64, wash: u32) -> Card {
    let now = wall_now();
    let mut card = support::card(i, wash);
    for p in &mut card.packages {
        p.valid_from_ms = now - 1000 * HOUR;
        p.valid_until_ms = now + 1000 * HOUR;
    }
    card
}

/// A shop's files: config, key file (0600), state directory with a signed cache installed
/// through the store, reader port paths (symlinks the simulated readers maintain).
pub struct Shop {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
}

impl Shop {
    /// Lays out a shop under `root` (the system temp dir if `None`) with `readers` readers, the
    /// `extra` TOML appended to the config's top level, and `cards` in its signed cache.
    pub fn build(
        root: Option<&Path>,
        readers: usize,
        extra: &str,
        cards: &[(u64, Option<Card>)],
    ) -> Shop {
        let mut builder = tempfile::Builder::new();
        builder.prefix("redeemd-shop-");
        let dir = match root {
            Some(root) => {
                std::fs::create_dir_all(root).unwrap();
                builder.tempdir_in(root).unwrap()
            }
            None => builder.tempdir().unwrap(),
        };
        let key = dir.path().join("terminal.key");
        std::fs::write(&key, format!("{SECRET_HEX}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let state = dir.path().join("state");
        let mut toml = format!(
            "terminal_id = \"{TERMINAL}\"\nmerchant_id = \"{MERCHANT}\"\nstate_dir = \"{}\"\n\
             {extra}\n[key]\nfile = \"{}\"\n",
            state.display(),
            key.display()
        );
        for i in 0..readers {
            toml.push_str(&format!(
                "[[reader]]\nname = \"counter-{i}\"\nport = \"{}\"\nbaud = {BAUD}\n",
                dir.path().join(format!("reader-{i}")).display()
            ));
        }
        toml.push_str(
            "[risk]\nmax_offline_uses_per_card = 1000000\nmax_offline_redemptions = 1000000\n",
        );
        let config = dir.path().join("redeemd.toml");
        std::fs::write(&config, toml).unwrap();

        // As systemd's StateDirectory= does before the first start.
        std::fs::create_dir(&state).unwrap();
        let mut store =
            redeemd::store::Store::open(&state, support::keys(), support::config()).unwrap();
        let bundle = support::bundle(BundleKind::Full, 1, 0, cards, wall_now() + 1000 * HOUR);
        store
            .install_bundle(&bundle[..], support::now(wall_now()))
            .unwrap();
        Shop { dir, config, state }
    }

    pub fn port(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("reader-{i}"))
    }

    /// `redeemd --config <this shop's config>`, without systemd's or the caller's logging env.
    pub fn redeemd(&self) -> Command {
        let mut c = redeemd_command(&["--config".as_ref(), self.config.as_os_str()]);
        c.env_remove("RUST_LOG");
        c
    }
}

/// `redeemd` with `args`, without the caller's redeemd settings (`REDEEMD_STATE_DIR`,
/// `REDEEMD_KEY_FILE`, systemd's `NOTIFY_SOCKET`) and with no input.
pub fn redeemd_command(args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_redeemd"));
    c.args(args)
        .env_remove("REDEEMD_STATE_DIR")
        .env_remove("REDEEMD_KEY_FILE")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null());
    c
}

/// Runs a command to its end: (exit code, stdout followed by stderr).
pub fn output_of(command: &mut Command) -> (i32, String) {
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `redeemd --config CONFIG ARGS…` run to its end: (exit code, stdout followed by stderr).
pub fn redeemd_with(config: &Path, args: &[&str]) -> (i32, String) {
    let mut leading: Vec<&std::ffi::OsStr> = vec!["--config".as_ref(), config.as_os_str()];
    leading.extend(args.iter().map(std::ffi::OsStr::new));
    output_of(&mut redeemd_command(&leading))
}

/// Unmounts a test's mount point when dropped, even on a failed assertion.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether the tests run as root (mounting a filesystem needs it; CI runs as root).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// A running `redeemd run`, its stderr (the log) collected line by line. Killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(shop: &Shop) -> Daemon {
        Daemon::start_with(shop, &[])
    }

    /// [`Daemon::start`] with `env` added to the process's environment (e.g. a faked wall clock:
    /// `tests/it/offline_week.rs`).
    pub fn start_with(shop: &Shop, env: &[(&str, OsString)]) -> Daemon {
        let mut child = shop
            .redeemd()
            .arg("run")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let d = Daemon { child, log };
        d.wait_log("serving", Duration::from_secs(20));
        d
    }

    pub fn has_log(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.has_log(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no log line containing {needle:?} within {timeout:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon with `signal` (`TERM`: as systemd stops it, waited for; `KILL`: as a crash)
    /// and waits for it to exit.
    pub fn stop(mut self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
