//! The reader simulator: the reader side of the reader↔daemon protocol, written the way reader
//! firmware uses the `firmware-protocol` crate, for integration tests, demos and a technician
//! checking an installation without a bank POS at hand.
//!
//! * [`line`] — the serial line: a real port, or a pseudo-terminal pair whose slave a daemon
//!   opens (EIO handling, unplug/replug, the udev-like symlink).
//! * [`reader`] — [`SimReader`]: handshake, swipe, redeem, redeem again, void, query, reboot,
//!   noise; every wait bounded; owned, decoded answers ([`screen`]).
//! * [`scenario`] — scenario files (`fixtures/scenarios/*.scenario`) and their runner; the
//!   interactive mode reads the same steps from stdin.
//! * [`conformance`] — the conformance flows of PROTOCOL.md §11.1 (`firmware_protocol::conformance`)
//!   played against a daemon, one PASS or FAIL line per rule.
//!
//! Txn ids continue after the daemon's latest transaction of this reader (QUERY LAST) unless the
//! caller seeds them: a simulator keeps no flash, and a second session must not reuse the first's
//! ids (PROTOCOL.md §8.1).
//!
//! [`run_cli`] is the entry point of `redeemd simulate-reader`. User documentation:
//! `docs/simulator.md`.

pub mod conformance;
pub mod line;
pub mod reader;
pub mod scenario;
pub mod screen;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use firmware_protocol::Encodings;

pub use line::{Line, LineSpec};
pub use reader::{DEFAULT_TXN_TIMEOUT, ReaderSettings, RedeemResult, SimReader, SwipeResult};
pub use scenario::{Runner, Scenario, Step};
pub use screen::{Answer, Approval, Decline, Menu, MenuLine, Reply};

/// Everything that can go wrong in the simulator, naming what was expected and what came.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Bad options or settings.
    #[error("{0}")]
    Setup(String),
    /// The line could not be opened.
    #[error("cannot open {path}: {reason}")]
    Open {
        /// Device path (or "new pseudo-terminal").
        path: String,
        /// Why.
        reason: String,
    },
    /// An I/O error on the line or the transcript.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: String,
        /// The error.
        source: std::io::Error,
    },
    /// Nothing came in time.
    #[error("timeout: no {waiting_for} after {after:?}")]
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// How long.
        after: Duration,
    },
    /// The daemon refused the handshake.
    #[error("the daemon refused the handshake: {0}")]
    HandshakeRejected(String),
    /// The daemon answered ERROR: it found our message bad.
    #[error("the daemon answered ERROR {code} about message type 0x{offending_type:02x}: {text}")]
    PeerError {
        /// Error code name or number.
        code: String,
        /// Type byte of our message it complained about.
        offending_type: u8,
        /// Its detail text.
        text: String,
    },
    /// An answer of the wrong kind for the request.
    #[error("expected {expected}, got {got}")]
    UnexpectedAnswer {
        /// What fits the request.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// A request could not be built or queued.
    #[error("cannot send {what}: {reason}")]
    Request {
        /// Message type.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// REDEEM or a current-transaction QUERY before any swipe.
    #[error("no card swiped yet: swipe first")]
    NoCard,
    /// `redeem_again` before any REDEEM of this card.
    #[error("no REDEEM sent for the current card yet")]
    NoRedeem,
    /// The session consumed no bytes and produced no event (a protocol crate bug).
    #[error("the reader session stalled with {pending} bytes unconsumed")]
    Stalled {
        /// Bytes it would not take.
        pending: usize,
    },
    /// A scenario line that does not parse or cannot run.
    #[error("{location}: {problem}")]
    Script {
        /// `file:line`.
        location: String,
        /// What is wrong.
        problem: String,
    },
    /// Conformance flows that failed (each printed with its reason).
    #[error("{failed} of {total} conformance rules failed")]
    Conformance {
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
    },
    /// A scenario `expect` that did not hold.
    #[error("{location}: expected {expected}, got {got}")]
    ExpectationFailed {
        /// `file:line`.
        location: String,
        /// What the line asked for.
        expected: String,
        /// What the reader had.
        got: String,
    },
    /// An error while running a scenario step.
    #[error("{location}: {source}")]
    At {
        /// `file:line`.
        location: String,
        /// The error.
        source: Box<SimError>,
    },
}

/// What to run once the line is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Run a scenario file, then exit.
    Script(PathBuf),
    /// Read steps from stdin (a card number swipes, `1x2` redeems, `quit` ends).
    Interactive,
    /// Play the conformance flows with this member card, then exit (non-zero if one failed).
    Conformance {
        /// A card the daemon knows, with an entry that asks no identity and has two uses left.
        card: String,
        /// The daemon's state directory, for the flows that need its store busy (else skipped).
        busy_store: Option<PathBuf>,
    },
}

/// Options of `redeemd simulate-reader` (plain data: the CLI fills it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatorOptions {
    /// A device path, or a new pseudo-terminal.
    pub line: LineSpec,
    /// With a pseudo-terminal: maintain this symlink to the current slave path.
    pub link: Option<PathBuf>,
    /// Baud rate (nominal on a pty; it sets the protocol timers).
    pub baud: u32,
    /// Reader identity, encodings offered, txn counter seed, T_TXN.
    pub reader: ReaderSettings,
    /// Take the txn counter from `reader.next_txn_id` as given; otherwise continue after the
    /// daemon's latest transaction of this reader (QUERY LAST), if that is further.
    pub txn_id_given: bool,
    /// How long to wait for the daemon to link up at start.
    pub connect_timeout: Duration,
    /// Scenario or interactive.
    pub mode: Mode,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            line: LineSpec::CreatePty,
            link: None,
            baud: 115_200,
            reader: ReaderSettings::default(),
            txn_id_given: false,
            connect_timeout: Duration::from_secs(60),
            mode: Mode::Interactive,
        }
    }
}

/// Parses `utf8`, `gb18030` or `both` (the `--encoding` flag).
pub fn encodings_from_str(s: &str) -> Option<Encodings> {
    match s {
        "utf8" | "utf-8" => Some(Encodings::UTF8),
        "gb18030" => Some(Encodings::GB18030),
        "both" => Some(Encodings::BOTH),
        _ => None,
    }
}

fn stdout_error(e: std::io::Error) -> SimError {
    SimError::Io {
        doing: "writing to stdout".into(),
        source: e,
    }
}

/// `redeemd simulate-reader`: opens the line, announces the path a daemon should open, waits for
/// the link, then runs the scenario or the interactive loop. The transcript goes to stdout.
/// Needs a tokio runtime with the time and I/O drivers enabled.
pub async fn run_cli(options: SimulatorOptions) -> Result<(), SimError> {
    // Parse the scenario before touching the line: a typo fails at once, not after the link wait.
    let scenario = match &options.mode {
        Mode::Script(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
                doing: format!("reading {}", path.display()),
                source: e,
            })?;
            Some(scenario::parse(&path.display().to_string(), &text)?)
        }
        Mode::Interactive | Mode::Conformance { .. } => None,
    };
    let line = Line::open(&options.line, options.baud, options.link.as_deref())?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "reader {} on {}{}",
        options.reader.serial,
        line.slave_path().display(),
        line.link_path()
            .map(|l| format!(" (link {})", l.display()))
            .unwrap_or_default()
    )
    .map_err(stdout_error)?;
    let mut reader = SimReader::new(line, options.reader)?;
    reader.wait_link_up(options.connect_timeout).await?;
    if let Some(info) = reader.link_info() {
        writeln!(
            out,
            "link up: protocol {}, max payload {}, {:?}",
            info.version, info.max_payload, info.encoding
        )
        .map_err(stdout_error)?;
    }
    if !options.txn_id_given {
        let last = reader.resume_txn_ids().await?;
        writeln!(
            out,
            "txn ids from {} ({})",
            reader.next_txn_id(),
            last.map_or_else(
                || "the daemon has no transaction of this reader".to_owned(),
                |t| format!("the daemon's latest transaction of this reader is {t}")
            )
        )
        .map_err(stdout_error)?;
    }
    let mut runner = Runner::new();
    if let Mode::Conformance { card, busy_store } = &options.mode {
        return conformance::run(&mut reader, card, busy_store.as_deref(), &mut out).await;
    }
    match scenario {
        Some(scenario) => runner.run(&mut reader, &scenario, &mut out).await,
        None => {
            // Stdin blocks: a thread reads it, the reader keeps the link alive meanwhile.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            std::thread::spawn(move || {
                for line in std::io::stdin().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            interactive(&mut reader, &mut runner, rx, &mut out).await
        }
    }
}

/// One typed line as a step: a bare card number swipes, bare `ENTRYxQTY` words redeem, anything
/// else is a scenario step. `Ok(None)` for a blank line.
pub fn interactive_step(line: &str) -> Result<Option<Step>, String> {
    let trimmed = line.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) && trimmed.len() >= 6 {
        return scenario::parse_step(&format!("swipe {trimmed}"));
    }
    let first = trimmed.split_whitespace().next().unwrap_or_default();
    if first.contains('x') && first.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return scenario::parse_step(&format!("redeem {trimmed}"));
    }
    scenario::parse_step(trimmed)
}

/// The interactive loop over typed `lines` (stdin in the CLI); ends at `quit` or the end of input.
pub async fn interactive(
    reader: &mut SimReader,
    runner: &mut Runner,
    mut lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    out: &mut dyn Write,
) -> Result<(), SimError> {
    writeln!(
        out,
        "type a card number to swipe, ENTRYxQTY to redeem (e.g. 1x2 phone=6688), void last, \
         query last, redeem-again, reboot, noise 64, quit"
    )
    .map_err(stdout_error)?;
    let mut number = 0usize;
    loop {
        match lines.try_recv() {
            Ok(line) => {
                number += 1;
                if matches!(line.trim(), "quit" | "exit") {
                    return Ok(());
                }
                let location = format!("stdin:{number}");
                match interactive_step(&line) {
                    Ok(None) => {}
                    Ok(Some(step)) => {
                        // A failed step is shown, not fatal: the person types the next one.
                        if let Err(e) = runner.run_step(reader, &step, &location, out).await {
                            writeln!(out, "  error: {e}").map_err(stdout_error)?;
                        }
                    }
                    Err(problem) => {
                        writeln!(out, "  {location}: {problem}").map_err(stdout_error)?;
                    }
                }
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                reader.idle(Duration::from_millis(100)).await?;
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Ok(()),
        }
    }
}
