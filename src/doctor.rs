//! `redeemd doctor`: checks a live install and says, for each check, OK or what is wrong and how to
//! fix it — in words a shop technician can act on.
//!
//! Every check is read-only except the state-directory probe, which writes into an unnamed temporary
//! file (`O_TMPFILE`: it never appears in the directory and vanishes when closed), so that doctor
//! leaves nothing behind. Checks run as whoever calls `doctor` (usually root), so device permissions
//! are judged for the *service* user (`--user`, default `redeemd`) from the device's owner, group and
//! mode, not by opening as root.
//!
//! Before the first start (no state directory yet, or an empty one) the database checks say so as
//! information (`INFO`), not as a problem: a fresh install whose every other check passes exits 0.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, KeySource, ReaderConfig};
use crate::keys::load_secret_with;
use crate::store::owner::wall_clock_ms as wall_ms;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but deserves attention.
    Warning,
    /// Broken: the daemon cannot work right until it is fixed.
    Problem,
    /// Could not be checked here (said why).
    Skipped,
    /// Worth knowing, nothing to fix (e.g. not started yet).
    Info,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "OK",
            Verdict::Warning => "WARNING",
            Verdict::Problem => "PROBLEM",
            Verdict::Skipped => "SKIPPED",
            Verdict::Info => "INFO",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it (problems and warnings).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn info(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Info,
            detail: detail.into(),
            fix: None,
        }
    }
    fn bad(
        verdict: Verdict,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Where doctor looks besides the configuration.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The account the service runs as (`User=` in the unit).
    pub service_user: String,
    /// Where a systemd credential's source file lives (`LoadCredential=NAME:DIR/NAME`).
    pub credential_source_dir: PathBuf,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions {
            service_user: "redeemd".into(),
            credential_source_dir: PathBuf::from(crate::keys::CREDENTIAL_SOURCE_DIR),
        }
    }
}

/// Runs every check on a loaded configuration.
pub fn examine(config: &Config, options: &DoctorOptions) -> Vec<Finding> {
    let mut findings = vec![Finding::ok(
        "config",
        format!(
            "terminal {} of merchant {}, {} reader(s)",
            config.terminal_id,
            config.merchant_id,
            config.readers.len()
        ),
    )];
    let user = Account::lookup(&options.service_user);
    let secret = key_check(config, options, &mut findings);
    findings.push(state_dir_check(&config.state_dir));
    if let Some(secret) = &secret {
        store_checks(config, secret, &mut findings);
    }
    for reader in &config.readers {
        findings.push(port_check(reader, user.as_ref(), &options.service_user));
    }
    findings.push(clock_sync_check());
    findings.push(match (&config.sync.server_url, &secret) {
        (None, _) => Finding::ok(
            "server",
            "sync disabled (no server_url): stand-alone install",
        ),
        (Some(url), None) => Finding {
            check: "server".into(),
            verdict: Verdict::Skipped,
            detail: format!("{url}: not checked without the terminal secret (see \"key\")"),
            fix: None,
        },
        (Some(url), Some(secret)) => server_check(config, url, secret),
    });
    findings
}

/// Asks the server for this terminal's journal head with a signed request: proves the server is
/// reachable, knows the terminal, and accepts its signature (the secret is the platform's).
fn server_check(config: &Config, url: &str, secret: &redeemd_contract::TerminalSecret) -> Finding {
    use crate::sync::client::{Client, ClientOptions, SyncError};
    let options = ClientOptions {
        connect_timeout: std::time::Duration::from_secs(5),
        request_timeout: std::time::Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let keys = secret.derive_all(&config.terminal_id);
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SyncError::Setup(e.to_string()))
        .and_then(|rt| {
            let client = Client::new(url, &config.terminal_id, keys.request, options)?;
            rt.block_on(client.journal_head())
        });
    match asked {
        Ok(head) => Finding::ok(
            "server",
            format!(
                "{url}: reachable, signature accepted; the platform holds this terminal's journal through seq {}",
                head.acknowledged_seq
            ),
        ),
        Err(e @ SyncError::Transport { .. }) => Finding::bad(
            Verdict::Problem,
            "server",
            format!("{url}: {e}"),
            "check the network and server_url in [sync]; redemptions go on offline meanwhile, within the risk limits",
        ),
        Err(SyncError::Server {
            status,
            code,
            detail,
            ..
        }) if matches!(
            code.as_str(),
            "bad_signature" | "unknown_terminal" | "terminal_disabled" | "terminal_mismatch"
        ) =>
        {
            Finding::bad(
                Verdict::Problem,
                "server",
                format!(
                    "{url}: the platform refused this terminal ({status} {code}{})",
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ),
                "check terminal_id and the key file against the platform's enrolment (a re-enrolled terminal gets a new secret); ask the platform whether the terminal is enabled",
            )
        }
        Err(SyncError::Server { code, .. }) if code == "clock_skew" => Finding::bad(
            Verdict::Problem,
            "server",
            format!("{url}: the platform says this PC's clock is more than 5 minutes off"),
            "enable time synchronization (timedatectl set-ntp true)",
        ),
        Err(e) => Finding::bad(
            Verdict::Problem,
            "server",
            format!("{url}: {e}"),
            "see `redeemd status` and the log (journalctl -u redeemd); the server may be misconfigured",
        ),
    }
}

/// Prints findings; returns whether any is a problem.
pub fn report(findings: &[Finding], out: &mut dyn Write) -> std::io::Result<bool> {
    for f in findings {
        writeln!(out, "{:<8} {:<22} {}", f.verdict, f.check, f.detail)?;
        if let Some(fix) = &f.fix {
            writeln!(out, "{:<8} {:<22} fix: {fix}", "", "")?;
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Problem)
        .count();
    if problems == 0 {
        writeln!(out, "no problems found")?;
    } else {
        writeln!(out, "{problems} problem(s) found")?;
    }
    Ok(problems > 0)
}

fn key_check(
    config: &Config,
    options: &DoctorOptions,
    findings: &mut Vec<Finding>,
) -> Option<redeemd_contract::TerminalSecret> {
    // Outside the service, a credential is read from where systemd loads it from.
    let env_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let (source, shown) = match (&config.key, env_dir.as_deref()) {
        (KeySource::Credential(name), None) => {
            let path = options.credential_source_dir.join(name);
            (KeySource::File(path.clone()), path)
        }
        (KeySource::Credential(name), Some(dir)) => (config.key.clone(), dir.join(name)),
        (KeySource::File(p), _) => (config.key.clone(), p.clone()),
    };
    match load_secret_with(&source, env_dir.as_deref()) {
        Ok(secret) => {
            findings.push(Finding::ok(
                "key",
                format!("{} readable by its owner only", shown.display()),
            ));
            Some(secret)
        }
        Err(e) => {
            let fix = match &e {
                crate::keys::KeyError::LoosePermissions { path, .. } => {
                    format!("chmod 600 {}", path.display())
                }
                crate::keys::KeyError::Io { path, .. } => format!(
                    "install the terminal secret from the platform at {} (mode 600)",
                    path.display()
                ),
                _ => "re-install the terminal secret the platform issued for this terminal".into(),
            };
            findings.push(Finding::bad(Verdict::Problem, "key", e.to_string(), fix));
            None
        }
    }
}

fn state_dir_check(dir: &Path) -> Finding {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().filter(|p| p.is_dir());
            return match parent {
                Some(_) => Finding::info(
                    "state dir",
                    format!(
                        "not started yet: {} does not exist; systemd creates it when the service first starts (StateDirectory=), or `redeemd init` for a daemon run by hand",
                        dir.display()
                    ),
                ),
                None => Finding::bad(
                    Verdict::Problem,
                    "state dir",
                    format!("{} does not exist, nor its parent directory", dir.display()),
                    "check state_dir for a typo (redeemd never creates parent directories)",
                ),
            };
        }
        Err(e) => {
            return Finding::bad(
                Verdict::Problem,
                "state dir",
                format!("{}: {e}", dir.display()),
                "check the path in state_dir",
            );
        }
        Ok(m) if !m.is_dir() => {
            return Finding::bad(
                Verdict::Problem,
                "state dir",
                format!("{} is not a directory", dir.display()),
                "point state_dir at a directory (default /var/lib/redeemd)",
            );
        }
        Ok(_) => {}
    }
    let space = crate::store::state_dir::free_space(dir).ok();
    let free = space.map_or_else(String::new, |(free, _)| format!(", {} MB free", free >> 20));
    let free_disk_space = format!(
        "free disk space on the filesystem of {} (`df -h {0}` shows it; old logs: `journalctl --vacuum-size=100M`)",
        dir.display()
    );
    match probe_write(dir) {
        Ok(()) if space.is_some_and(|(f, _)| f < LOW_SPACE_BYTES) => Finding::bad(
            Verdict::Warning,
            "state dir",
            format!("{} is writable, but only{free}", dir.display()),
            free_disk_space,
        ),
        Ok(()) => Finding::ok("state dir", format!("{} is writable{free}", dir.display())),
        Err(e) if e.raw_os_error() == Some(30) => Finding::bad(
            Verdict::Problem,
            "state dir",
            format!("{} is on a read-only filesystem", dir.display()),
            "put state_dir on a writable disk (check `mount`; a full or failing disk is remounted read-only)",
        ),
        // ENOSPC, EDQUOT: no room to write.
        Err(e) if matches!(e.raw_os_error(), Some(28 | 122)) => Finding::bad(
            Verdict::Problem,
            "state dir",
            format!("{}: disk full: {e}", dir.display()),
            free_disk_space,
        ),
        Err(e) => Finding::bad(
            Verdict::Problem,
            "state dir",
            format!("{}: cannot write: {e}", dir.display()),
            "chown -R redeemd:redeemd the directory (systemd's StateDirectory= does this)",
        ),
    }
}

/// Below this much free space in the state directory doctor warns (a redemption needs a few KB, a
/// full cache install twice the cache's size).
const LOW_SPACE_BYTES: u64 = 64 << 20;

/// Writes a page into an unnamed temporary file in `dir` (`O_TMPFILE`): proves the directory takes
/// writes, with room for them, and leaves nothing behind. A filesystem without `O_TMPFILE` gets a
/// named file, removed whatever happened.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let page = [0u8; 4096];
    let unnamed = std::fs::OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::TMPFILE.bits() as i32)
        .open(dir);
    match unnamed {
        Ok(mut file) => return file.write_all(&page).and_then(|()| file.sync_all()),
        // EOPNOTSUPP, EISDIR, EINVAL: no O_TMPFILE here; anything else is the answer.
        Err(e) if !matches!(e.raw_os_error(), Some(95 | 21 | 22)) => return Err(e),
        Err(_) => {}
    }
    let probe = dir.join(format!(".doctor-probe-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|mut file| file.write_all(&page).and_then(|()| file.sync_all()));
    let removed = std::fs::remove_file(&probe);
    match (written, removed) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        (Ok(()), _) => Ok(()),
    }
}

fn store_checks(
    config: &Config,
    secret: &redeemd_contract::TerminalSecret,
    findings: &mut Vec<Finding>,
) {
    use crate::store::StoreError;
    use crate::store::state_dir::{Presence, presence};
    let path = config.state_dir.join(crate::store::DB_FILE);
    match presence(&config.state_dir) {
        Ok(Presence::Empty) => {
            findings.push(Finding::info(
                "database",
                format!(
                    "not started yet: the daemon creates {} at its first start",
                    path.display()
                ),
            ));
            return;
        }
        Ok(Presence::Database) => {}
        // Missing or not a directory: the state dir check said it.
        Err(StoreError::StateDirMissing { .. } | StoreError::NotADirectory { .. }) => return,
        Err(e) => {
            findings.push(Finding::bad(
                Verdict::Problem,
                "database",
                e.to_string(),
                "restore the database from the last backup (see the message); call support",
            ));
            return;
        }
    }
    let expected = Some((config.terminal_id.as_str(), config.merchant_id.as_str()));
    let (detail, fix) = match crate::store::verify::database(
        &config.state_dir,
        secret,
        expected,
        crate::store::verify::Scope::All,
    ) {
        Ok(v) if v.findings.is_empty() => {
            findings.push(Finding::ok(
                "database",
                format!(
                    "integrity check passed; journal chain of {} rows and {} cache entries verify",
                    v.journal_rows.unwrap_or(0),
                    v.cache.as_ref().map_or(0, |c| c.1)
                ),
            ));
            (None, "")
        }
        Ok(v) => {
            let first: Vec<String> = v.findings.iter().take(3).map(ToString::to_string).collect();
            (
                Some(format!(
                    "{} finding(s): {}",
                    v.findings.len(),
                    first.join("; ")
                )),
                "do not edit the database; run `redeemd journal verify` and `redeemd cache verify` for the full list and call support",
            )
        }
        Err(e @ StoreError::WrongKey { .. }) => (
            Some(e.to_string()),
            "install the secret the platform issued for this terminal (the key file, or the credential's source); nothing in the database needs repair",
        ),
        Err(e @ StoreError::WrongTerminal { .. }) => (
            Some(e.to_string()),
            "check terminal_id and merchant_id in the configuration and state_dir: a database of another terminal cannot serve this one",
        ),
        Err(e) => (
            Some(format!("{}: {e}", path.display())),
            "restore the state directory from the last backup; call support with the file",
        ),
    };
    if let Some(detail) = detail {
        findings.push(Finding::bad(Verdict::Problem, "database", detail, fix));
        return;
    }
    let Ok(store) =
        crate::store::Store::open_existing(&config.state_dir, secret, config.limits(), expected)
    else {
        return;
    };
    let now = wall_ms();
    match store.cache_info() {
        Ok(Some(c)) => {
            let m = &c.manifest;
            // Signed times may sit at the ends of i64: differences saturate.
            let hours_left = m.expires_at_ms.saturating_sub(now) / 3_600_000;
            if now < m.issued_at_ms {
                findings.push(Finding::bad(
                    Verdict::Problem,
                    "clock",
                    format!(
                        "the clock is {} h before the cache was issued: the system clock is wrong",
                        m.issued_at_ms.saturating_sub(now) / 3_600_000
                    ),
                    "set the time: `timedatectl set-ntp true` (or set it by hand), then check again",
                ));
            }
            findings.push(if now >= m.expires_at_ms {
                Finding::bad(
                    Verdict::Problem,
                    "cache",
                    format!(
                        "version {} expired {} h ago: redemptions are refused",
                        m.version,
                        hours_left.saturating_neg()
                    ),
                    "connect the shop PC to the network so that sync can fetch a fresh snapshot",
                )
            } else if m.expires_at_ms.saturating_sub(now) < expiry_warning_ms(m) {
                Finding::bad(
                    Verdict::Warning,
                    "cache",
                    format!("version {} expires in {hours_left} h", m.version),
                    "make sure the shop PC reaches the platform before then",
                )
            } else {
                Finding::ok(
                    "cache",
                    format!(
                        "version {}, {} cards, expires in {hours_left} h",
                        m.version, c.entries
                    ),
                )
            });
        }
        Ok(None) => findings.push(Finding::bad(
            Verdict::Problem,
            "cache",
            "no signed entitlement cache installed: every card is declined",
            "let the daemon sync with the platform (or `redeemd cache install FILE`)",
        )),
        Err(e) => findings.push(Finding::bad(
            Verdict::Problem,
            "cache",
            e.to_string(),
            "run `redeemd cache verify` and call support",
        )),
    }
    let j = store.journal_info();
    let unsynced = j.head_seq.saturating_sub(j.synced_through_seq);
    let limit = u64::from(config.risk.max_offline_redemptions);
    findings.push(if unsynced > 0 && unsynced * 2 >= limit {
        Finding::bad(
            Verdict::Warning,
            "backlog",
            format!("{unsynced} journal rows not yet acknowledged by the platform (offline limit {limit} redemptions)"),
            "restore the network connection; the daemon uploads on its own",
        )
    } else {
        Finding::ok("backlog", format!("{unsynced} journal rows not yet acknowledged by the platform"))
    });
}

/// A local account, from /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Account {
    pub fn lookup(name: &str) -> Option<Account> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        Self::from_files(name, &passwd, &group)
    }

    fn from_files(name: &str, passwd: &str, group: &str) -> Option<Account> {
        let fields: Vec<&str> = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))?;
        let uid = fields.get(2)?.parse().ok()?;
        let primary: u32 = fields.get(3)?.parse().ok()?;
        let mut gids = vec![primary];
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(gid), Some(members)) = (f.get(2).and_then(|g| g.parse().ok()), f.get(3))
                && members.split(',').any(|m| m == name)
            {
                gids.push(gid);
            }
        }
        Some(Account { uid, gids })
    }

    /// Whether owner/group/mode let this account read and write.
    fn may_read_write(&self, meta: &std::fs::Metadata) -> bool {
        let mode = meta.permissions().mode();
        if self.uid == 0 {
            return true;
        }
        if meta.uid() == self.uid {
            return mode & 0o600 == 0o600;
        }
        if self.gids.contains(&meta.gid()) {
            return mode & 0o060 == 0o060;
        }
        mode & 0o006 == 0o006
    }
}

fn port_check(reader: &ReaderConfig, user: Option<&Account>, user_name: &str) -> Finding {
    let check = format!("reader {}", reader.name);
    let path = &reader.port;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Finding::bad(
                Verdict::Problem,
                check,
                format!("{}: {e}", path.display()),
                "check the cable and the reader's power; `ls -l /dev/serial/by-id/` lists connected adapters; fix `port` in the config",
            );
        }
    };
    if let Some(user) = user
        && !user.may_read_write(&meta)
    {
        return Finding::bad(
            Verdict::Problem,
            check,
            format!(
                "{} (owner uid {}, group gid {}, mode {:o}) is not readable and writable by user {user_name}",
                path.display(),
                meta.uid(),
                meta.gid(),
                meta.permissions().mode() & 0o777
            ),
            format!(
                "install the udev rule (group dialout, mode 660) or `usermod -aG dialout {user_name}`"
            ),
        );
    }
    let holders = holders_of(path);
    let ours: Vec<&(u32, String)> = holders.iter().filter(|(_, c)| c == "redeemd").collect();
    let others: Vec<&(u32, String)> = holders.iter().filter(|(_, c)| c != "redeemd").collect();
    if !others.is_empty() {
        let who: Vec<String> = others
            .iter()
            .map(|(p, c)| format!("{c} (pid {p})"))
            .collect();
        return Finding::bad(
            Verdict::Problem,
            check,
            format!("{} is held by {}", path.display(), who.join(", ")),
            "stop that program (a terminal program, ModemManager, a second daemon); the udev rule keeps ModemManager away",
        );
    }
    if ours.len() > 1 {
        return Finding::bad(
            Verdict::Problem,
            check,
            format!(
                "{} is opened by {} redeemd processes",
                path.display(),
                ours.len()
            ),
            "run one daemon per port: `systemctl status redeemd`, and stop any started by hand",
        );
    }
    if let Some((pid, _)) = ours.first() {
        return Finding::ok(
            check,
            format!("{} in use by the daemon (pid {pid})", path.display()),
        );
    }
    // Nobody holds it: it must open (this also proves the exclusive lock is free).
    // The blocking open (no runtime here); exclusive by default, like the daemon's.
    match tokio_serial::new(path.to_string_lossy(), reader.baud).open() {
        Ok(_) => Finding::ok(check, format!("{} present and openable", path.display())),
        Err(e) => Finding::bad(
            Verdict::Problem,
            check,
            format!("{}: cannot open: {e}", path.display()),
            "check that it is a serial device and that no other program holds it",
        ),
    }
}

/// Processes that have `path` open, as (pid, command name), from /proc.
fn holders_of(path: &Path) -> Vec<(u32, String)> {
    let Ok(target) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target))
        {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_owned()));
        }
    }
    found
}

fn clock_sync_check() -> Finding {
    let out = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output();
    match out {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "yes" => {
            Finding::ok("clock sync", "system clock synchronized (NTP)")
        }
        Ok(o) if o.status.success() => Finding::bad(
            Verdict::Warning,
            "clock sync",
            "the system clock is not synchronized",
            "`timedatectl set-ntp true`; a clock set back is refused by the daemon",
        ),
        _ if Path::new("/run/systemd/timesync/synchronized").exists() => Finding::ok(
            "clock sync",
            "system clock synchronized (systemd-timesyncd)",
        ),
        _ => Finding {
            check: "clock sync".into(),
            verdict: Verdict::Skipped,
            detail: "cannot tell (no timedatectl answer): check the time by hand".into(),
            fix: None,
        },
    }
}

/// How close to its expiry a cache gets a warning: a day, or a third of its validity when that is
/// shorter. A platform renews a polled cache after at most a third of its validity
/// (`clearing-server serve --cache-validity-hours`), so a syncing shop never gets there; with a 6 h
/// validity a warning at 24 h would never go away.
fn expiry_warning_ms(m: &redeemd_contract::snapshot::Manifest) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    DAY_MS.min(m.expires_at_ms.saturating_sub(m.issued_at_ms).max(0) / 3)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn accounts_come_from_passwd_and_group() {
        let passwd =
            "root:x:0:0::/root:/bin/sh\nredeemd:x:998:997::/var/lib/redeemd:/usr/sbin/nologin\n";
        let group = "root:x:0:\ndialout:x:20:alice,redeemd\nredeemd:x:997:\n";
        let a = Account::from_files("redeemd", passwd, group).unwrap();
        assert_eq!(
            a,
            Account {
                uid: 998,
                gids: vec![997, 20]
            }
        );
        assert!(Account::from_files("nobody", passwd, group).is_none());
    }

    #[test]
    fn a_cache_is_warned_about_a_day_or_a_third_of_its_validity_before_it_expires() {
        let valid_for = |hours: i64| redeemd_contract::snapshot::Manifest {
            kind: redeemd_contract::BundleKind::Full,
            terminal_id: "T-1".into(),
            merchant_id: "M-1".into(),
            merchant_categories: Vec::new(),
            version: 1,
            prev_version: 0,
            entry_count: 0,
            digest: [0; 32],
            issued_at_ms: 1_000,
            expires_at_ms: 1_000 + hours * 3_600_000,
        };
        assert_eq!(expiry_warning_ms(&valid_for(72)), 24 * 3_600_000);
        assert_eq!(expiry_warning_ms(&valid_for(720)), 24 * 3_600_000);
        assert_eq!(expiry_warning_ms(&valid_for(6)), 2 * 3_600_000);
        assert_eq!(expiry_warning_ms(&valid_for(-1)), 0);
    }
}
