//! One reader's driver: the serial port, the protocol's host session and the reader conversation,
//! and the store jobs the conversation asks for. Only I/O lives here:
//!
//! * open the port exclusively; when it fails or the device goes away (a read of 0 bytes, EIO, a
//!   write that cannot complete) close it, log once per change, and reopen with backoff — an
//!   unplugged USB reader must not become a busy loop;
//! * feed the bytes read to `firmware_protocol::HostSession` (the link: framing, ACKs,
//!   retransmission, heartbeats, handshake) and its events to [`Conversation`] (the application
//!   rules of PROTOCOL.md §8), and write what the session transmits;
//! * carry out the conversation's effects: a store job ([`execute`]) on the runtime's blocking
//!   pool, while this thread goes on serving the link; a message to send; a log line, and the
//!   status file's entries.
//!
//! Each reader has its own thread with a current-thread runtime ([`ReaderThread`]). A request's
//! decision never runs on it: the store may make a decision wait for seconds (another process —
//! `redeemd sync`, `cache install` — holding SQLite's write lock, a slow disk, another reader's
//! commit), and meanwhile the link must be served (PROTOCOL.md §4.4, §4.9, §5.16): the request's
//! frame is acknowledged at once (the job is handed to the pool, then the session's transmits are
//! written, the ACK among them), PINGs are answered, heartbeats sent, the conversation's DISPLAY
//! goes out after T_DISPLAY, and further requests queue in the conversation (ERROR `BUSY` beyond
//! its backlog). The hand-over costs a thread wake-up per request (`BENCHMARKS.md`, daemon).
//! Checkpoints run on the pool too, when the store says one is due and nothing is waiting.

use std::time::Duration;

use firmware_protocol::session::Config as LinkConfig;
use firmware_protocol::{HostSession, Instant as LinkInstant, OwnedEvent};
use firmware_protocol::{MessageType, WIRE_BUF_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_serial::SerialStream;

use super::status::{LastTransaction, PUBLISH_DELAY, StatusBoard};
use crate::config::{Language, Parity, ReaderConfig};
use crate::conversation::execute::{execute, store_unusable};
use crate::conversation::{Answered, Conversation, Decided, Effect, Note, Ticket};
use crate::store::owner::{StoreGone, StoreHandle, wall_clock_ms};

/// Reopen backoff: first retry quickly (a replug takes a moment), then settle at a slow poll.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A write that cannot complete in this time means the device is gone or wedged.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything one reader thread needs.
#[derive(Clone)]
pub struct ReaderContext {
    pub config: ReaderConfig,
    pub store: StoreHandle,
    pub language: Language,
    pub utc_offset_minutes: i32,
    pub status: StatusBoard,
}

/// A reader's own thread, running [`run`] on a current-thread runtime until told to stop.
pub struct ReaderThread {
    thread: std::thread::JoinHandle<()>,
    /// Liveness probes for the watchdog: the thread's runtime answers each one.
    probe: mpsc::Sender<oneshot::Sender<()>>,
}

impl ReaderThread {
    /// Starts the thread for `ctx`'s reader; it ends when `stop` turns true (or its sender goes).
    /// `wedge_after` is the test-only trigger that parks the thread for good after that long, as a
    /// bug stuck in a loop would (the watchdog must notice).
    pub fn spawn(
        ctx: ReaderContext,
        index: usize,
        mut stop: watch::Receiver<bool>,
        wedge_after: Option<Duration>,
    ) -> std::io::Result<ReaderThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (probe, mut probes) = mpsc::channel::<oneshot::Sender<()>>(1);
        let thread = std::thread::Builder::new()
            // Linux keeps 15 bytes of a thread name: "redeemd-rdr-" and up to three digits.
            .name(format!("redeemd-rdr-{index}"))
            .spawn(move || {
                runtime.spawn(async move {
                    while let Some(answer) = probes.recv().await {
                        let _ = answer.send(());
                    }
                });
                if let Some(after) = wedge_after {
                    runtime.spawn(async move {
                        tokio::time::sleep(after).await;
                        tracing::warn!("test trigger: wedging a reader thread");
                        loop {
                            std::thread::park();
                        }
                    });
                }
                runtime.block_on(async move {
                    tokio::select! {
                        () = run(ctx) => {}
                        _ = stop.wait_for(|stop| *stop) => {}
                    }
                });
            })?;
        Ok(ReaderThread { thread, probe })
    }

    /// Whether the thread's runtime answers a probe within `within` (for the watchdog): a thread
    /// that died, is stuck in a loop or waits for a wedged store does not.
    pub async fn answers_within(&self, within: Duration) -> bool {
        let probe = async {
            let (answer, answered) = oneshot::channel();
            self.probe.send(answer).await.is_ok() && answered.await.is_ok()
        };
        matches!(tokio::time::timeout(within, probe).await, Ok(true))
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Serves one configured reader forever: open, serve, reopen. The conversation outlives each port:
/// a request being decided when the device went away is still decided and stored.
pub async fn run(ctx: ReaderContext) {
    let name = ctx.config.name.clone();
    let port = ctx.config.port.display().to_string();
    let mut backoff = BACKOFF_MIN;
    let mut last_problem: Option<String> = None;
    let mut driver = Driver {
        conversation: Conversation::new(ctx.language, ctx.utc_offset_minutes),
        ctx: &ctx,
        epoch: tokio::time::Instant::now(),
        deciding: None,
        maintenance_due: false,
        started: None,
        answered: Vec::new(),
        publish_status: None,
    };
    ctx.status.reader(&name, |s| {
        s.port.clone_from(&port);
        s.state = "opening".into();
    });
    loop {
        match open_port(&ctx.config) {
            Ok(stream) => {
                tracing::info!(reader = %name, port = %port, "port opened");
                last_problem = None;
                ctx.status.reader(&name, |s| {
                    s.state = "waiting for reader".into();
                    s.detail = None;
                });
                let mut session = HostSession::new(LinkConfig::new(ctx.config.baud));
                let (ended, was_up) = driver.serve(&mut session, stream).await;
                if was_up {
                    backoff = BACKOFF_MIN;
                }
                if session.is_up() {
                    driver.conversation.handle_link_down(driver.now());
                }
                tracing::warn!(reader = %name, port = %port, reason = %ended, "port closed; reopening");
                ctx.status.reader(&name, |s| {
                    s.state = "port error".into();
                    s.detail = Some(ended.clone());
                });
            }
            Err(e) => {
                let problem = e.to_string();
                if last_problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(reader = %name, port = %port, error = %problem, "cannot open port; retrying");
                    ctx.status.reader(&name, |s| {
                        s.state = "port error".into();
                        s.detail = Some(problem.clone());
                    });
                    last_problem = Some(problem);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn open_port(cfg: &ReaderConfig) -> Result<SerialStream, tokio_serial::Error> {
    let builder = tokio_serial::new(cfg.port.to_string_lossy(), cfg.baud)
        .data_bits(match cfg.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match cfg.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if cfg.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(tokio_serial::FlowControl::None);
    let mut stream = SerialStream::open(&builder)?;
    // Two daemons (or a terminal program) on one reader would each see half the frames.
    stream.set_exclusive(true)?;
    Ok(stream)
}

/// What a store job on the blocking pool hands back: the decision, and whether a checkpoint is
/// due ([`crate::store::Store::maintenance_due`], read under the same lock).
struct JobDone {
    decided: Decided,
    maintenance_due: bool,
}

/// A store job on the blocking pool.
struct Deciding {
    ticket: Ticket,
    task: tokio::task::JoinHandle<JobDone>,
    started: std::time::Instant,
    /// The answer if the job panics (STORAGE_FAILURE): the conversation must not wait forever.
    if_it_panics: Decided,
}

/// The driver of one reader: its conversation and what is in flight for it.
struct Driver<'a> {
    ctx: &'a ReaderContext,
    conversation: Conversation,
    /// Origin of the millisecond clock the session and the conversation run on.
    epoch: tokio::time::Instant,
    /// The store job out on the blocking pool (the conversation hands out one at a time).
    deciding: Option<Deciding>,
    /// A decision reported that a checkpoint is due: run it once nothing waits.
    maintenance_due: bool,
    /// When the decision whose answer is about to be queued started.
    started: Option<(Ticket, std::time::Instant)>,
    /// Transactions answered in this turn of the loop, logged once their answers are written:
    /// (answered, when its decision started).
    answered: Vec<(Answered, std::time::Instant)>,
    /// When the status entries of answered transactions are due in the status file.
    publish_status: Option<tokio::time::Instant>,
}

impl Driver<'_> {
    fn now(&self) -> LinkInstant {
        let ms = self.epoch.elapsed().as_millis();
        LinkInstant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: LinkInstant) -> tokio::time::Instant {
        self.epoch + Duration::from_millis(at.as_millis())
    }

    fn name(&self) -> &str {
        &self.ctx.config.name
    }

    /// Serves the open port until the device is gone; returns why, and whether a link came up.
    async fn serve(&mut self, session: &mut HostSession, mut port: SerialStream) -> (String, bool) {
        let mut rx = [0u8; 1024];
        let mut tx = [0u8; WIRE_BUF_LEN];
        let mut was_up = false;
        loop {
            let timer = [session.poll_timeout(), self.conversation.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .map(|t| self.deadline(t));
            tokio::select! {
                read = port.read(&mut rx) => match read {
                    Ok(0) => return ("end of file: device unplugged or closed".into(), was_up),
                    Ok(n) => was_up |= self.feed(session, &rx[..n]),
                    Err(e) => return (format!("read failed: {e}"), was_up),
                },
                () = sleep_until(timer), if timer.is_some() => {
                    let now = self.now();
                    session.handle_timeout(now);
                    was_up |= self.drain_events(session).1;
                    self.conversation.handle_timeout(now);
                }
                decided = wait_for(&mut self.deciding), if self.deciding.is_some() => {
                    if let Some((ticket, done, started)) = decided {
                        self.maintenance_due |= done.maintenance_due;
                        self.conversation.handle_decided(self.now(), ticket, done.decided);
                        self.started_at(ticket, started);
                    }
                }
                () = sleep_until(self.publish_status), if self.publish_status.is_some() => {
                    self.publish_status = None;
                    self.ctx.status.publish();
                }
            }
            self.carry_out(session);
            let now = self.now();
            let mut failed = None;
            while let Some(n) = session.poll_transmit(now, &mut tx) {
                match tokio::time::timeout(WRITE_TIMEOUT, port.write_all(&tx[..n])).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed = Some(format!("write failed: {e}")),
                    Err(_) => failed = Some("write timed out: device not draining".into()),
                }
                if failed.is_some() {
                    break;
                }
            }
            // Log what was answered only now that the answer is written, and publish it in the
            // status file a moment later: replacing that file (a write and a rename, which frees
            // the old file's blocks with a synchronous discard) took up to ~8 ms while the
            // store's fsync kept the disk busy, and the next request would wait behind it
            // (benches/daemon.rs, `status`).
            let answered_any = !self.answered.is_empty();
            for (answered, started) in std::mem::take(&mut self.answered) {
                self.log_answered(answered, started);
            }
            // Checkpoints belong in idle moments, after the cashier has the answer, not inside
            // the next redemption's commit (`Store::maintenance`); on the pool, like decisions, so
            // that a checkpoint waiting for the disk does not stall the link.
            if answered_any && self.maintenance_due && self.conversation.is_idle() {
                self.maintenance_due = false;
                let store = self.ctx.store.clone();
                tokio::task::spawn_blocking(move || {
                    match store.try_run(|store, _| store.maintenance()) {
                        None | Some(Ok(Ok(_))) => {}
                        Some(Ok(Err(e))) => tracing::warn!(error = %e, "store maintenance failed"),
                        Some(Err(StoreGone)) => {
                            tracing::error!("store unusable during maintenance");
                        }
                    }
                });
            }
            if let Some(reason) = failed {
                return (reason, was_up);
            }
        }
    }

    /// Feeds received bytes, taking every event the session produces along the way. Returns
    /// whether a link came up.
    fn feed(&mut self, session: &mut HostSession, mut data: &[u8]) -> bool {
        let mut up = false;
        while !data.is_empty() {
            let used = session.handle_bytes(self.now(), data);
            data = data.get(used..).unwrap_or_default();
            let (events, link_up) = self.drain_events(session);
            up |= link_up;
            if used == 0 && events == 0 {
                // The session consumed nothing and has nothing to say: never spin on it.
                tracing::error!(reader = %self.name(), "session made no progress; dropping {} bytes", data.len());
                break;
            }
            // A request delivered mid-read goes to the store before the rest is fed: its decision
            // starts now, and later requests queue behind it in the conversation.
            self.carry_out(session);
        }
        up
    }

    /// Hands the session's events to the conversation; returns how many there were and whether a
    /// link came up.
    fn drain_events(&mut self, session: &mut HostSession) -> (usize, bool) {
        let (mut events, mut up) = (0, false);
        while let Some(event) = session.poll_event() {
            let event = OwnedEvent::from(event);
            events += 1;
            up |= matches!(event, OwnedEvent::LinkUp(_));
            self.on_event(event);
        }
        (events, up)
    }

    fn on_event(&mut self, event: OwnedEvent) {
        let name = self.ctx.config.name.clone();
        let now = self.now();
        match event {
            OwnedEvent::LinkUp(info) => {
                let serial = info.reader.serial.as_str().to_owned();
                let firmware = info.reader.firmware.as_str().to_owned();
                self.conversation
                    .handle_link_up(now, &serial, info.encoding);
                tracing::info!(
                    reader = %name, serial = %serial, firmware = %firmware,
                    encoding = ?info.encoding, change = ?info.peer_change,
                    "link up"
                );
                let encoding = format!("{:?}", info.encoding);
                self.ctx.status.later(&name, |s| {
                    s.state = "link up".into();
                    s.detail = None;
                    s.reader_serial = Some(serial);
                    s.firmware = Some(firmware);
                    s.encoding = Some(encoding);
                });
                self.publish_soon();
            }
            OwnedEvent::LinkDown(reason) => {
                tracing::warn!(reader = %name, reason = ?reason, "link down");
                self.conversation.handle_link_down(now);
                self.ctx.status.later(&name, |s| {
                    s.state = "waiting for reader".into();
                    s.detail = Some(format!("link down: {reason:?}"));
                });
                self.publish_soon();
            }
            OwnedEvent::Unconfirmed { msg_type, .. } => {
                tracing::info!(reader = %name, msg_type = %msg_type, "answer not confirmed; the reader will QUERY");
            }
            OwnedEvent::Delivered { .. } => {}
            OwnedEvent::Message { msg_type, payload } => {
                self.conversation.handle_message(now, msg_type, &payload);
            }
            OwnedEvent::MessageRejected {
                msg_type, problem, ..
            } => {
                tracing::warn!(reader = %name, msg_type, problem = ?problem, "message refused");
            }
            OwnedEvent::HandshakeRejected(reason) => {
                tracing::warn!(reader = %name, reason = ?reason, "handshake refused");
            }
        }
    }

    /// Carries out the conversation's effects until it has none: store jobs (handed to the
    /// blocking pool), messages to queue on the session, log lines.
    fn carry_out(&mut self, session: &mut HostSession) {
        while let Some(effect) = self.conversation.poll_effect() {
            match effect {
                Effect::Decide { ticket, job } => {
                    if let Some(earlier) = &self.deciding {
                        // The conversation hands out one job at a time; a second would be a bug.
                        // Answer it STORAGE_FAILURE rather than lose track of the first.
                        tracing::error!(
                            reader = %self.name(), earlier = ?earlier.ticket, job = ?job,
                            "a second store job while one is out: declined"
                        );
                        self.conversation
                            .handle_decided(self.now(), ticket, store_unusable(&job));
                        continue;
                    }
                    let store = self.ctx.store.clone();
                    let if_it_panics = store_unusable(&job);
                    let task = tokio::task::spawn_blocking(move || {
                        store
                            .run_blocking(|store, now| JobDone {
                                decided: execute(store, &job, now),
                                maintenance_due: store.maintenance_due(),
                            })
                            .unwrap_or_else(|StoreGone| JobDone {
                                decided: store_unusable(&job),
                                maintenance_due: false,
                            })
                    });
                    self.deciding = Some(Deciding {
                        ticket,
                        task,
                        started: std::time::Instant::now(),
                        if_it_panics,
                    });
                }
                Effect::Send {
                    msg_type,
                    payload,
                    answered,
                } => {
                    if msg_type == MessageType::Display {
                        tracing::info!(reader = %self.name(), "a decision waits for the store: DISPLAY sent to the reader");
                    }
                    if let Err(e) = session.send_raw(msg_type, &payload) {
                        // Down or full: a stored answer is recovered by the reader's QUERY.
                        tracing::warn!(reader = %self.name(), msg_type = %msg_type, error = %e, "not sent; the reader will QUERY");
                    }
                    if let Some(answered) = answered {
                        let started = self.take_started(answered.ticket);
                        self.answered.push((answered, started));
                    }
                }
                Effect::Log(note) => self.log(note),
            }
        }
    }

    /// Remembers when the decision of `ticket` started, for its log line's latency.
    fn started_at(&mut self, ticket: Ticket, started: std::time::Instant) {
        self.started = Some((ticket, started));
    }

    fn take_started(&mut self, ticket: Ticket) -> std::time::Instant {
        match self.started.take() {
            Some((t, at)) if t == ticket => at,
            _ => std::time::Instant::now(),
        }
    }

    fn log(&self, note: Note) {
        let reader = self.name();
        match note {
            Note::PeerError {
                code,
                offending_type,
                text,
            } => tracing::warn!(
                reader, code = code.name().unwrap_or("?"), code_value = code.0,
                offending_type = format_args!("{offending_type:#04x}"), text = %text,
                "the reader reported an ERROR (not answered)"
            ),
            Note::Busy { msg_type } => {
                tracing::warn!(reader, msg_type = %msg_type, "reader sent requests faster than answers: busy");
            }
            Note::NotSent { txn_id, kind } => tracing::info!(
                reader,
                txn = txn_id,
                kind,
                "answer stored after the link went down: not sent, the reader will QUERY"
            ),
            Note::StoreProblem {
                txn_id,
                kind,
                problem,
            } => {
                tracing::error!(reader, txn = txn_id, kind, %problem, "request declined, nothing recorded")
            }
            Note::Unparsable { msg_type, error } => tracing::error!(
                reader, msg_type = %msg_type, %error, "delivered message does not parse"
            ),
        }
    }

    /// The transaction's log line (latency up to its answer written) and status entry (published
    /// within [`PUBLISH_DELAY`]).
    fn log_answered(&mut self, answered: Answered, started: std::time::Instant) {
        let Answered {
            txn_id,
            kind,
            outcome,
            ..
        } = answered;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            reader = %self.name(), txn = txn_id, kind, outcome, latency_ms = format_args!("{latency_ms:.3}"),
            "transaction"
        );
        let at_ms = wall_clock_ms();
        let kind = kind.to_owned();
        self.ctx.status.later(self.name(), |s| {
            s.last_transaction = Some(LastTransaction {
                txn_id,
                kind,
                outcome,
                at_ms,
            });
        });
        self.publish_soon();
    }

    /// Publishes the status file within [`PUBLISH_DELAY`], together with whatever else changes by
    /// then: transactions in quick succession, and a reader that keeps re-linking (a HELLO flood
    /// from a faulty reader), cost one file replacement per delay, not one per event.
    fn publish_soon(&mut self) {
        self.publish_status
            .get_or_insert_with(|| tokio::time::Instant::now() + PUBLISH_DELAY);
    }
}

/// The decision of the job on the blocking pool, once it is made (`None` only when none is out).
async fn wait_for(
    deciding: &mut Option<Deciding>,
) -> Option<(Ticket, JobDone, std::time::Instant)> {
    let d = deciding.as_mut()?;
    let result = (&mut d.task).await;
    let d = deciding.take()?;
    match result {
        Ok(done) => Some((d.ticket, done, d.started)),
        Err(e) => {
            // The job panicked inside the store: its lock is poisoned, this job and every later
            // one are declined STORAGE_FAILURE, and the watchdog stops (systemd restarts us).
            tracing::error!(error = %e, "store job failed");
            let done = JobDone {
                decided: d.if_it_panics,
                maintenance_due: false,
            };
            Some((d.ticket, done, d.started))
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
