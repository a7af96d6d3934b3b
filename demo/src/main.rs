//! `cargo run -p redeemd-demo`: the whole loop on one machine, no hardware, in a temporary directory.
//!
//! 1. the **platform**: the reference clearing server on loopback; a merchant, a terminal enrolled for
//!    it, two member cards with customized packages;
//! 2. the **shop**: `redeemd run` configured for that terminal, its reader port a pseudo-terminal whose
//!    other end is the simulated reader (`redeemd::simulator`, the reader side of the wire protocol);
//! 3. a scripted session at the counter — a redemption with its receipt, a card reported lost at the
//!    platform and declined at the counter, a void, the platform going away and redemptions going on
//!    offline, the platform back and the backlog synced — and the merchant statement the platform
//!    clears from the uploaded records;
//! 4. the **web console**: an operator's and a merchant's login created, the console's address printed.
//!
//! Everything runs as real processes (`clearing-server`, `redeemd`) over real files, sockets and ptys;
//! the transcript says who speaks: `platform`, `reader` (what the reader shows), `daemon` (its log:
//! what it decided). Exits 0 when every step did what it should, non-zero naming the step otherwise.
//! `--keep` keeps the directory (databases, config, logs) for a look afterwards; `--keep-running` keeps
//! the platform and the shop running after the session, the reader linked, until Ctrl-C, so that a
//! person can open the console (its address and logins are printed) and look.

use std::fmt;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use redeemd::simulator::line::{Line, LineSpec};
use redeemd::simulator::reader::{ReaderSettings, SimReader};
use redeemd::simulator::scenario::{self, Runner};

/// A demo step that did not do what it should.
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn fail<T>(what: impl Into<String>) -> Result<T> {
    Err(Failure(what.into()))
}

const TERMINAL: &str = "T-DEMO-01";
const MERCHANT: &str = "M-CARWASH-01";
const CARD_ANNA: &str = "6228480000000000018";
const CARD_BO: &str = "6228480000000000026";
const BAUD: u32 = 115_200;
/// The daemon's sync interval here: the shortest it accepts, so the demo does not wait long.
const SYNC_SECS: u64 = 5;

/// What the command line asked for.
struct Options {
    /// Keep the working directory.
    keep: bool,
    /// Keep the platform and the shop running after the session, until Ctrl-C.
    keep_running: bool,
}

fn main() -> ExitCode {
    let mut options = Options {
        keep: false,
        keep_running: false,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--keep" => options.keep = true,
            "--keep-running" => options.keep_running = true,
            other => {
                let _ = writeln!(
                    std::io::stderr(),
                    "demo: unknown argument {other:?} (known: --keep, --keep-running)"
                );
                return ExitCode::from(2);
            }
        }
    }
    match run(&options) {
        Ok(()) => {
            say("demo", "every step did what it should");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(who: &str, what: &str) {
    for line in what.lines() {
        println!("{who:>8} │ {line}");
    }
    let _ = std::io::stdout().flush();
}

fn act(title: &str) {
    println!("\n━━ {title}");
}

fn run(options: &Options) -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = tempfile::Builder::new().prefix("redeemd-demo-").tempdir()?;
    let root = dir.path().to_path_buf();
    if options.keep {
        let kept = dir.keep();
        say("demo", &format!("working in {} (kept)", kept.display()));
    } else {
        say("demo", &format!("working in {}", root.display()));
    }

    act("1. The platform: clearing server, a merchant, a terminal, two member cards");
    let mut platform = Platform::start(&bins, &root)?;
    platform.setup()?;

    act("2. The shop: redeemd on a serial port, a reader on the other end");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The pty's file descriptor registers with the runtime's reactor.
    let _in_runtime = runtime.enter();
    let link = root.join("reader-0");
    let line = Line::open(&LineSpec::CreatePty, BAUD, Some(&link))?;
    say(
        "reader",
        &format!(
            "powered on: {} (port {})",
            line.slave_path().display(),
            link.display()
        ),
    );
    let mut reader = SimReader::new(
        line,
        ReaderSettings {
            serial: "SIM-DEMO-1".into(),
            ..ReaderSettings::default()
        },
    )?;
    let mut shop = Shop::start(&bins, &root, &link, &platform.key_file, platform.port)?;
    runtime.block_on(reader.wait_link_up(Duration::from_secs(20)))?;
    shop.wait_for("first sync installs the platform's cache", |s| {
        s.cache_version > 0
    })?;
    shop.show_log();

    let mut runner = Runner::new();
    let mut counter = |reader: &mut SimReader, name: &str, text: &str| -> Result<()> {
        let scenario = scenario::parse(name, text)?;
        let mut transcript = Vec::new();
        let result = runtime.block_on(runner.run(reader, &scenario, &mut transcript));
        say("reader", &String::from_utf8_lossy(&transcript));
        result.map_err(Failure::from)
    };

    act("3. A redemption at the counter");
    counter(
        &mut reader,
        "redeem",
        &format!(
            "swipe {CARD_ANNA} cashier=c01\nexpect menu\nredeem 0x1\nexpect approved\nexpect receipt contains \"精洗\"\n"
        ),
    )?;
    shop.show_log();

    act("4. A card reported lost at the platform is declined at the counter after one sync");
    platform.admin(&["card", "lost", "--number", CARD_BO])?;
    shop.wait_for("the deny list reaches the shop", |s| s.deny_version > 0)?;
    counter(
        &mut reader,
        "lost",
        &format!("swipe {CARD_BO} cashier=c01\nexpect declined reason=CARD_LOST\n"),
    )?;
    shop.show_log();

    act("5. A redemption keyed by mistake is voided at once");
    counter(
        &mut reader,
        "void",
        &format!(
            "swipe {CARD_ANNA} cashier=c01\nexpect menu\nredeem 0x1\nexpect approved\nvoid last reason=cashier-error\nexpect approved\n"
        ),
    )?;
    shop.show_log();

    act("6. The platform goes away; the counter goes on offline");
    platform.stop()?;
    counter(
        &mut reader,
        "offline",
        &format!(
            "swipe {CARD_ANNA} cashier=c02\nexpect menu\nredeem 0x1 1x1\nexpect approved\nswipe {CARD_ANNA} cashier=c02\nexpect menu\nredeem 0x2\nexpect approved\n"
        ),
    )?;
    shop.wait_for("sync notices the platform is away", |s| {
        s.unsynced_records > 0 && !s.last_result_ok
    })?;
    shop.show_log();
    shop.show_status()?;

    act("7. The platform is back; the backlog is synced");
    platform.restart()?;
    shop.wait_for("the backlog reaches the platform", |s| {
        s.unsynced_records == 0 && s.last_result_ok
    })?;
    shop.show_log();
    shop.show_status()?;

    act("8. The platform clears: the merchant statement, the member's usage, the exceptions");
    let statement = platform.admin(&["statement", "merchant", "--merchant", MERCHANT])?;
    // 1 + 1 (voided) + 1 + 2 washes and 1 oil change: 6 records, net ¥140 + ¥120.
    if !statement.contains("records 6  net amount ¥260.00") {
        return fail("the merchant statement does not hold the six records of this session");
    }
    platform.admin(&["statement", "member", "--number", CARD_ANNA])?;
    let exceptions = platform.admin(&["exceptions"])?;
    if !exceptions.starts_with("exceptions: 0") {
        return fail("the platform lists exceptions for an honest session");
    }

    act("9. The web console");
    let operator = platform.add_login("operator", "operator", "operator")?;
    let merchant = platform.add_login("carwash", "merchant", MERCHANT)?;
    let console = format!("http://127.0.0.1:{}/console/", platform.port);
    say(
        "platform",
        &format!(
            "console: {console}\n  operator login: operator / {operator}\n  merchant login: carwash / {merchant} ({MERCHANT})"
        ),
    );
    if options.keep_running {
        say(
            "demo",
            "the platform and the shop keep running: open the console in a browser on this machine; Ctrl-C stops them",
        );
        runtime.block_on(async {
            let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
            loop {
                tokio::select! {
                    asked = &mut stop => return asked.map_err(Failure::from),
                    // The reader answers the daemon's heartbeats only while it is polled.
                    idled = reader.idle(Duration::from_millis(500)) => idled?,
                }
            }
        })?;
        println!();
        shop.show_log();
    } else {
        say(
            "demo",
            "run the demo with --keep-running to keep the platform running and open the console",
        );
    }

    shop.stop();
    platform.stop()?;
    platform.no_card_number_in_clear(&[CARD_ANNA, CARD_BO])?;
    Ok(())
}

/// The two programs, built by Cargo next to this one.
struct Binaries {
    redeemd: PathBuf,
    clearing_server: PathBuf,
}

impl Binaries {
    /// Builds `redeemd` and `clearing-server` with this demo's Cargo profile when run by Cargo (a
    /// no-op when they are up to date), and finds them next to the demo's own executable.
    fn locate() -> Result<Binaries> {
        let exe = std::env::current_exe()?;
        let Some(dir) = exe.parent() else {
            return fail(format!("{}: no parent directory", exe.display()));
        };
        if let Ok(cargo) = std::env::var("CARGO") {
            let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
            let profile = if profile == "debug" { "dev" } else { profile };
            say("demo", "building redeemd and clearing-server (cargo build)");
            let status = Command::new(cargo)
                .args(["build", "--quiet", "--locked", "--profile", profile])
                .args(["-p", "redeemd", "-p", "clearing-server", "--bins"])
                .status()?;
            if !status.success() {
                return fail(format!("cargo build failed: {status}"));
            }
        }
        let found = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                fail(format!(
                    "{} not found: run the demo with `cargo run -p redeemd-demo`",
                    path.display()
                ))
            }
        };
        Ok(Binaries {
            redeemd: found("redeemd")?,
            clearing_server: found("clearing-server")?,
        })
    }
}

/// The reference clearing server, as a real process on a loopback port.
struct Platform {
    binary: PathBuf,
    db: PathBuf,
    log: PathBuf,
    key_file: PathBuf,
    /// The platform master key, apart from the database: card numbers are stored sealed under it.
    master_key: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl Platform {
    fn start(bins: &Binaries, root: &Path) -> Result<Platform> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut platform = Platform {
            binary: bins.clearing_server.clone(),
            db: root.join("platform.sqlite3"),
            log: root.join("platform.log"),
            key_file: root.join("terminal.key"),
            master_key: root.join("platform-master.key"),
            port,
            server: None,
        };
        let out = Command::new(&platform.binary)
            .args(["admin", "key", "generate", "--out"])
            .arg(&platform.master_key)
            .output()?;
        if !out.status.success() {
            return fail(format!(
                "clearing-server admin key generate: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        platform.restart()?;
        Ok(platform)
    }

    fn restart(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .arg("--master-key-file")
            .arg(&self.master_key)
            .arg("--db")
            .arg(&self.db)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.server = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if Instant::now() > deadline {
                return fail(format!(
                    "clearing server not listening on {addr} after 20 s (log: {})",
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say(
            "platform",
            &format!("clearing server listening on http://{addr}"),
        );
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.server.take() {
            child.kill()?;
            child.wait()?;
            say("platform", "clearing server stopped");
        }
        Ok(())
    }

    /// PCI DSS 3.5: the platform's database, its WAL and its log hold no card number in clear (they
    /// are sealed under the master key; reports print them masked).
    fn no_card_number_in_clear(&self, numbers: &[&str]) -> Result<()> {
        let mut files = vec![self.log.clone()];
        for suffix in ["", "-wal", "-shm"] {
            files.push(PathBuf::from(format!("{}{suffix}", self.db.display())));
        }
        for file in &files {
            let Ok(bytes) = std::fs::read(file) else {
                continue;
            };
            for n in numbers {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    return fail(format!("a card number in clear in {}", file.display()));
                }
            }
        }
        say(
            "platform",
            "no card number in clear in the database, its WAL or the log",
        );
        Ok(())
    }

    /// `clearing-server admin …`, its output shown.
    fn admin(&self, args: &[&str]) -> Result<String> {
        say(
            "platform",
            &format!("$ clearing-server admin {}", args.join(" ")),
        );
        let out = Command::new(&self.binary)
            .arg("--master-key-file")
            .arg(&self.master_key)
            .arg("--db")
            .arg(&self.db)
            .arg("admin")
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        say("platform", &text);
        say("platform", &String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return fail(format!(
                "clearing-server admin {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text)
    }

    /// A console login (`admin user add`, the password on its standard input): a fresh random
    /// password, returned to be printed.
    fn add_login(&self, name: &str, role: &str, subject: &str) -> Result<String> {
        let mut random = [0u8; 9];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        say(
            "platform",
            &format!(
                "$ clearing-server admin user add --name {name} --role {role} --subject {subject}   (password on stdin)"
            ),
        );
        let mut child = Command::new(&self.binary)
            .arg("--master-key-file")
            .arg(&self.master_key)
            .arg("--db")
            .arg(&self.db)
            .args(["admin", "user", "add", "--name", name, "--role", role])
            .args(["--subject", subject])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{password}")?;
        }
        let out = child.wait_with_output()?;
        say("platform", String::from_utf8_lossy(&out.stderr).trim());
        if !out.status.success() {
            return fail(format!(
                "clearing-server admin user add {name}: {}",
                out.status
            ));
        }
        Ok(password)
    }

    fn setup(&mut self) -> Result<()> {
        self.admin(&[
            "merchant",
            "--id",
            MERCHANT,
            "--name",
            "明亮洗车 Bright Car Wash",
            "--commission-bps",
            "500",
            "--category",
            "car-wash",
        ])?;
        let key = self.key_file.to_string_lossy().into_owned();
        self.admin(&[
            "enroll",
            "--terminal",
            TERMINAL,
            "--merchant",
            MERCHANT,
            "--key-file",
            &key,
        ])?;
        self.admin(&[
            "card",
            "create",
            "--number",
            CARD_ANNA,
            "--holder",
            "王安娜",
        ])?;
        self.admin(&["card", "create", "--number", CARD_BO])?;
        for card in [CARD_ANNA, CARD_BO] {
            self.admin(&[
                "card",
                "customize",
                "--number",
                card,
                "--package",
                "CARE-2026",
                "--title",
                "年度养护套餐",
                "--valid-from",
                "2026-01-01",
                "--valid-until",
                "2027-12-31",
                "--item",
                "WASH:精洗:10:3500",
                "--item",
                "OIL:换机油:3:12000",
            ])?;
        }
        Ok(())
    }
}

/// The shop's side: config, key, state directory, and the real `redeemd run`.
struct Shop {
    redeemd: PathBuf,
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
    log_shown: usize,
    daemon: Option<Child>,
}

impl Shop {
    fn start(
        bins: &Binaries,
        root: &Path,
        port: &Path,
        key_file: &Path,
        server_port: u16,
    ) -> Result<Shop> {
        let state = root.join("shop-state");
        // What systemd's StateDirectory= does for the packaged service: the daemon never creates it.
        std::fs::create_dir(&state)?;
        let config = root.join("redeemd.toml");
        std::fs::write(
            &config,
            format!(
                "terminal_id = \"{TERMINAL}\"\nmerchant_id = \"{MERCHANT}\"\nstate_dir = \"{}\"\n\n\
                 [key]\nfile = \"{}\"\n\n\
                 [[reader]]\nname = \"counter-1\"\nport = \"{}\"\nbaud = {BAUD}\n\n\
                 [sync]\nserver_url = \"http://127.0.0.1:{server_port}\"\ninterval_secs = {SYNC_SECS}\n",
                state.display(),
                key_file.display(),
                port.display()
            ),
        )?;
        say(
            "shop",
            &format!(
                "config {}:\n{}",
                config.display(),
                std::fs::read_to_string(&config)?
            ),
        );
        let log = root.join("redeemd.log");
        let log_file = std::fs::File::create(&log)?;
        let daemon = Command::new(&bins.redeemd)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()?;
        say("shop", "$ redeemd run");
        Ok(Shop {
            redeemd: bins.redeemd.clone(),
            config,
            state,
            log,
            log_shown: 0,
            daemon: Some(daemon),
        })
    }

    /// Prints the daemon's log lines written since the last call.
    fn show_log(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.log) else {
            return;
        };
        let lines: Vec<&str> = text.lines().collect();
        for line in lines.iter().skip(self.log_shown) {
            say("daemon", strip_timestamp(line));
        }
        self.log_shown = lines.len();
    }

    /// Waits (up to 30 s) until the daemon's published status satisfies `ready`.
    fn wait_for(&mut self, what: &str, ready: impl Fn(&SyncView) -> bool) -> Result<()> {
        say("demo", &format!("waiting: {what}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(daemon) = self.daemon.as_mut()
                && let Some(status) = daemon.try_wait()?
            {
                self.show_log();
                return fail(format!("redeemd exited ({status}) while waiting: {what}"));
            }
            if let Ok(view) = SyncView::read(&self.state)
                && ready(&view)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.show_log();
                return fail(format!("not within 30 s: {what}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn show_status(&self) -> Result<()> {
        let out = Command::new(&self.redeemd)
            .arg("--config")
            .arg(&self.config)
            .arg("status")
            .output()?;
        say("shop", "$ redeemd status");
        say("shop", &String::from_utf8_lossy(&out.stdout));
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
            say("shop", "redeemd stopped");
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `2026-11-27T21:40:12.123456Z  INFO redeemd::daemon: text` → `INFO redeemd::daemon: text`.
fn strip_timestamp(line: &str) -> &str {
    match line.split_once(' ') {
        Some((first, rest)) if first.contains('T') && first.ends_with('Z') => rest.trim_start(),
        _ => line,
    }
}

/// The daemon's published sync status, as far as the demo waits on it.
struct SyncView {
    cache_version: u64,
    deny_version: u64,
    unsynced_records: u64,
    last_result_ok: bool,
}

impl SyncView {
    fn read(state: &Path) -> std::result::Result<SyncView, String> {
        let status = redeemd::daemon::status::read(state)?;
        let sync = status.sync.ok_or("sync is not configured")?;
        Ok(SyncView {
            cache_version: sync.cache_version,
            deny_version: sync.deny_version,
            unsynced_records: sync.unsynced_records,
            last_result_ok: sync.last_result.as_deref() == Some("ok"),
        })
    }
}
