//! One reader's driver: the serial port, the protocol's host session, and the store requests.
//!
//! The driver is thin on purpose. The link (framing, ACKs, retransmission, heartbeats, handshake)
//! is `firmware_protocol::HostSession`, fed with bytes and the clock; decisions are the store's.
//! What lives here is I/O and bookkeeping:
//!
//! * open the port exclusively; when it fails or the device goes away (a read of 0 bytes, EIO, a
//!   write that cannot complete) close it, log once per change, and reopen with backoff — an
//!   unplugged USB reader must not become a busy loop;
//! * decide each application message with the store, in place on this reader's thread
//!   (`store_owner`), and send the stored reply back;
//! * remember the card of the current transaction: REDEEM quotes the txn id of CARD_PRESENTED, not
//!   the card, and a card number never leaves this task except into the store.
//!
//! Each reader has its own thread with a current-thread runtime ([`ReaderThread`]): a request is
//! read, decided and answered on the thread that was woken by its bytes, with no hand-over to
//! another thread (each costs a wake-up, more than a menu decision). Requests are answered in
//! order (readers are stop-and-wait). While one reader's decision holds the store (an fsync:
//! about a millisecond), the other readers' threads go on serving their links until they need
//! the store themselves.

use std::collections::VecDeque;
use std::time::Duration;

use firmware_protocol::WIRE_BUF_LEN;
use firmware_protocol::message::{ErrorCode, Message, MessageType, Query, Text, TextEncoding};
use firmware_protocol::session::Config as LinkConfig;
use firmware_protocol::{HostSession, Instant as LinkInstant, OwnedEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_serial::SerialStream;
use zeroize::Zeroizing;

use super::render::{Presentation, StoredReply};
use super::status::{LastTransaction, PUBLISH_DELAY, StatusBoard};
use super::store_owner::{StoreGone, StoreHandle};
use crate::config::{Language, Parity, ReaderConfig};
use crate::engine::DeclineReason;
use crate::store::{Decision, MenuOutcome, RedeemRequest, VoidRequest};

/// Reopen backoff: first retry quickly (a replug takes a moment), then settle at a slow poll.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A write that cannot complete in this time means the device is gone or wedged.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Application messages waiting behind the one in flight; more is a misbehaving reader.
const BACKLOG_MAX: usize = 4;

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

/// Serves one configured reader forever: open, serve, reopen.
pub async fn run(ctx: ReaderContext) {
    let name = ctx.config.name.clone();
    let port = ctx.config.port.display().to_string();
    let mut backoff = BACKOFF_MIN;
    let mut last_problem: Option<String> = None;
    let mut memory = ReaderMemory::default();
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
                let mut link = Link::new(&ctx, &mut memory);
                let ended = link.serve(stream).await;
                if link.was_up {
                    backoff = BACKOFF_MIN;
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

/// What a reader thread remembers across link and port losses: the transaction in progress.
#[derive(Default)]
struct ReaderMemory {
    /// The reader's serial number: the idempotency key's first half.
    reader_serial: Option<String>,
    swipe: Option<Swipe>,
    /// The last answer sent, for QUERY (CARD_MENU answers are not in the store).
    last_answer: Option<(u32, StoredReply)>,
    cashier: String,
}

struct Swipe {
    txn_id: u32,
    card: Zeroizing<String>,
    cashier: String,
    entry_version: Option<u64>,
}

/// The result of one store job.
struct Done {
    txn_id: u32,
    kind: &'static str,
    reply: StoredReply,
    outcome: String,
    /// A successful menu starts a transaction.
    swipe: Option<Swipe>,
    started: std::time::Instant,
}

impl Done {
    /// An answer that starts no transaction.
    fn answer(
        txn_id: u32,
        kind: &'static str,
        reply: StoredReply,
        outcome: impl Into<String>,
        started: std::time::Instant,
    ) -> Done {
        Done {
            txn_id,
            kind,
            reply,
            outcome: outcome.into(),
            swipe: None,
            started,
        }
    }
}

struct Link<'a> {
    ctx: &'a ReaderContext,
    memory: &'a mut ReaderMemory,
    session: HostSession,
    epoch: tokio::time::Instant,
    encoding: TextEncoding,
    backlog: VecDeque<(MessageType, Vec<u8>)>,
    was_up: bool,
    /// Transactions answered in this turn of the loop, logged once their answers are written.
    answered: Vec<Answered>,
    /// When the status entries of answered transactions are due in the status file.
    publish_status: Option<tokio::time::Instant>,
}

/// A transaction whose answer is queued: its log line and status entry wait until the answer
/// is on the wire (see [`Link::serve`]).
struct Answered {
    txn_id: u32,
    kind: &'static str,
    outcome: String,
    started: std::time::Instant,
}

impl<'a> Link<'a> {
    fn new(ctx: &'a ReaderContext, memory: &'a mut ReaderMemory) -> Self {
        Link {
            ctx,
            memory,
            session: HostSession::new(LinkConfig::new(ctx.config.baud)),
            epoch: tokio::time::Instant::now(),
            encoding: TextEncoding::Utf8,
            backlog: VecDeque::new(),
            was_up: false,
            answered: Vec::new(),
            publish_status: None,
        }
    }

    fn now(&self) -> LinkInstant {
        let ms = self.epoch.elapsed().as_millis();
        LinkInstant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: LinkInstant) -> tokio::time::Instant {
        self.epoch + Duration::from_millis(at.as_millis())
    }

    fn presentation(&self) -> Presentation {
        Presentation {
            language: self.ctx.language,
            encoding: self.encoding,
            utc_offset_minutes: self.ctx.utc_offset_minutes,
        }
    }

    fn name(&self) -> &str {
        &self.ctx.config.name
    }

    /// Serves the open port until the device is gone; returns why.
    async fn serve(&mut self, mut port: SerialStream) -> String {
        let mut rx = [0u8; 1024];
        let mut tx = [0u8; WIRE_BUF_LEN];
        loop {
            let timer = self.session.poll_timeout().map(|t| self.deadline(t));
            tokio::select! {
                read = port.read(&mut rx) => match read {
                    Ok(0) => return "end of file: device unplugged or closed".into(),
                    Ok(n) => self.feed(&rx[..n]),
                    Err(e) => return format!("read failed: {e}"),
                },
                () = sleep_until(timer), if timer.is_some() => {
                    let now = self.now();
                    self.session.handle_timeout(now);
                    self.drain_events();
                }
                () = sleep_until(self.publish_status), if self.publish_status.is_some() => {
                    self.publish_status = None;
                    self.ctx.status.publish();
                }
            }
            self.answer_backlog();
            let now = self.now();
            let mut failed = None;
            while let Some(n) = self.session.poll_transmit(now, &mut tx) {
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
            for answered in std::mem::take(&mut self.answered) {
                self.log_done(answered);
            }
            // Checkpoints belong in idle moments, after the cashier has the answer, not inside
            // the next redemption's commit (`Store::maintenance`).
            if answered_any && self.backlog.is_empty() {
                match self.ctx.store.run_blocking(|store, _| store.maintenance()) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "store maintenance failed"),
                    Err(StoreGone) => tracing::error!("store unusable during maintenance"),
                }
            }
            if let Some(reason) = failed {
                return reason;
            }
        }
    }

    /// Feeds received bytes, taking every event the session produces along the way.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let now = self.now();
            let used = self.session.handle_bytes(now, data);
            data = data.get(used..).unwrap_or_default();
            let got = self.drain_events();
            if used == 0 && !got {
                // The session consumed nothing and has nothing to say: never spin on it.
                tracing::error!(reader = %self.name(), "session made no progress; dropping {} bytes", data.len());
                return;
            }
        }
    }

    fn drain_events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.session.poll_event() {
            any = true;
            let event = OwnedEvent::from(event);
            self.on_event(event);
        }
        any
    }

    fn on_event(&mut self, event: OwnedEvent) {
        let name = self.ctx.config.name.clone();
        match event {
            OwnedEvent::LinkUp(info) => {
                self.was_up = true;
                self.encoding = info.encoding;
                let serial = info.reader.serial.as_str().to_owned();
                let firmware = info.reader.firmware.as_str().to_owned();
                if self.memory.reader_serial.as_deref() != Some(serial.as_str()) {
                    // Another reader on this port: nothing of the previous one applies.
                    *self.memory = ReaderMemory {
                        reader_serial: Some(serial.clone()),
                        ..ReaderMemory::default()
                    };
                }
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
                self.backlog.clear();
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
                if self.backlog.len() >= BACKLOG_MAX {
                    tracing::warn!(reader = %name, msg_type = %msg_type, "reader sent requests faster than answers: busy");
                    self.send_error(ErrorCode::BUSY, msg_type, "busy");
                } else {
                    self.backlog.push_back((msg_type, payload));
                }
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

    /// Answers the received requests, in order. Each store decision runs here, in place on this
    /// reader's thread (see `store_owner`); the answers are queued on the session and written by
    /// the caller.
    fn answer_backlog(&mut self) {
        loop {
            let Some((msg_type, payload)) = self.backlog.pop_front() else {
                return;
            };
            let Some(reader_id) = self.memory.reader_serial.clone() else {
                return;
            };
            // The session validated the payload already; a failure here is a bug, answered as one.
            let message = match Message::parse(msg_type.as_u8(), &payload, self.encoding) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(reader = %self.name(), msg_type = %msg_type, error = %e, "delivered message does not parse");
                    self.send_error(ErrorCode::INTERNAL, msg_type, "internal");
                    continue;
                }
            };
            match self.job(reader_id, message) {
                Ok(Some(done)) => self.finish(done),
                Ok(None) => {}
                Err(StoreGone) => {
                    tracing::error!(reader = %self.name(), msg_type = %msg_type, "store unusable: request refused");
                    self.send_error(ErrorCode::INTERNAL, msg_type, "store unusable");
                }
            }
        }
    }

    /// Decides one request with the store (or answers it at once: `Ok(None)`).
    fn job(&mut self, reader_id: String, message: Message<'_>) -> Result<Option<Done>, StoreGone> {
        let presentation = self.presentation();
        let started = std::time::Instant::now();
        let store = &self.ctx.store;
        let receiver = match message {
            Message::CardPresented(cp) => {
                let txn_id = cp.txn_id;
                let card = Zeroizing::new(cp.card.to_owned());
                let cashier = cp.cashier_id.to_owned();
                self.memory.cashier.clone_from(&cashier);
                // A new swipe ends the previous transaction.
                self.memory.swipe = None;
                store.run_blocking(move |store, now| {
                    let (reply, outcome, entry_version) = match store.menu(&card, now) {
                        Ok(MenuOutcome::Menu(menu)) => (
                            presentation.menu(txn_id, &menu),
                            format!("menu of {} entries", menu.entries.len()),
                            Some(menu.entry_version),
                        ),
                        Ok(MenuOutcome::Declined(d)) => (
                            presentation.declined(txn_id, d.reason),
                            declined_outcome(d.reason, d.detail.as_deref()),
                            None,
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "store failed on a menu");
                            let reason = DeclineReason::InternalError;
                            (
                                presentation.declined(txn_id, reason),
                                declined_outcome(reason, None),
                                None,
                            )
                        }
                    };
                    Done {
                        txn_id,
                        kind: "swipe",
                        reply,
                        outcome,
                        swipe: entry_version.map(|v| Swipe {
                            txn_id,
                            card,
                            cashier,
                            entry_version: Some(v),
                        }),
                        started,
                    }
                })
            }
            Message::Redeem(r) => {
                let txn_id = r.txn_id;
                let items: Vec<(u16, u64)> = r
                    .items
                    .iter()
                    .map(|i| (u16::from(i.entry_index), u64::from(i.quantity)))
                    .collect();
                let identity: Option<Vec<u8>> = (r.identity.check
                    != firmware_protocol::message::IdentityCheck::None)
                    .then(|| r.identity.data.as_bytes().to_vec());
                let swipe = self
                    .memory
                    .swipe
                    .as_ref()
                    .filter(|s| s.txn_id == txn_id)
                    .map(|s| (s.card.clone(), s.cashier.clone(), s.entry_version));
                store.run_blocking(move |store, now| {
                    let Some((card, cashier, entry_version)) = swipe else {
                        // No card for this txn in memory (daemon restarted, or a retransmitted
                        // REDEEM after a new swipe): a stored outcome is the answer, else "swipe".
                        return replay_or_decline(
                            store,
                            &reader_id,
                            txn_id,
                            "redeem",
                            presentation,
                            DeclineReason::NoCard,
                            started,
                        );
                    };
                    let request = RedeemRequest {
                        reader_id: &reader_id,
                        reader_txn_id: u64::from(txn_id),
                        card_number: &card,
                        items: &items,
                        identity: identity.as_deref(),
                        cashier_id: &cashier,
                        menu_entry_version: entry_version,
                    };
                    let result =
                        store.redeem(&request, now, |d| presentation.decision(txn_id, d).0);
                    stored_done(result, txn_id, "redeem", presentation, started)
                })
            }
            Message::Void(v) => {
                let txn_id = v.txn_id;
                let auth = v.original_auth_code.to_owned();
                let reason = format!("{:?}", v.reason);
                let cashier = self.memory.cashier.clone();
                store.run_blocking(move |store, now| {
                    let request = VoidRequest {
                        reader_id: &reader_id,
                        reader_txn_id: u64::from(txn_id),
                        original_auth_code: &auth,
                        reason: &reason,
                        cashier_id: &cashier,
                    };
                    let result = store.void(&request, now, |d| presentation.decision(txn_id, d).0);
                    stored_done(result, txn_id, "void", presentation, started)
                })
            }
            Message::Query(q) => {
                // The answer of this daemon run, if it is the one asked for (CARD_MENU answers
                // live only here); otherwise the store's.
                let remembered = self.memory.last_answer.clone().filter(|(txn, _)| match q {
                    Query::Last => true,
                    Query::Txn(id) => *txn == id,
                });
                if let Some((txn_id, reply)) = remembered {
                    self.send_reply(&reply);
                    self.answered.push(Answered {
                        txn_id,
                        kind: "query",
                        outcome: "stored answer sent again".into(),
                        started,
                    });
                    return Ok(None);
                }
                store.run_blocking(move |store, _now| {
                    let found = match q {
                        Query::Last => store.last_outcome(&reader_id).map(|o| {
                            o.map(|(txn, bytes)| (u32::try_from(txn).unwrap_or(0), bytes))
                        }),
                        Query::Txn(id) => store
                            .stored_outcome(&reader_id, u64::from(id))
                            .map(|o| o.map(|bytes| (id, bytes))),
                    };
                    let asked = match q {
                        Query::Last => 0,
                        Query::Txn(id) => id,
                    };
                    match found {
                        Ok(Some((txn_id, bytes))) => Done::answer(
                            txn_id,
                            "query",
                            StoredReply(bytes),
                            "stored answer sent again",
                            started,
                        ),
                        Ok(None) => declined_done(
                            asked,
                            "query",
                            presentation,
                            DeclineReason::TxnUnknown,
                            started,
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "store failed on a query");
                            declined_done(
                                asked,
                                "query",
                                presentation,
                                DeclineReason::InternalError,
                                started,
                            )
                        }
                    }
                })
            }
            other => {
                // The session refuses wrong-direction types before they get here.
                let t = other.message_type();
                tracing::warn!(reader = %self.name(), msg_type = %t, "unexpected message");
                self.send_error(ErrorCode::UNEXPECTED_MESSAGE, t, "unexpected");
                return Ok(None);
            }
        };
        receiver.map(Some)
    }

    fn finish(&mut self, done: Done) {
        if let Some(swipe) = done.swipe {
            self.memory.swipe = Some(swipe);
        }
        self.send_reply(&done.reply);
        // A QUERY's answer is not a transaction's: remembering it would make QUERY LAST answer
        // the txn last asked about (or TXN_UNKNOWN) instead of the reader's last transaction.
        if done.kind != "query" {
            self.memory.last_answer = Some((done.txn_id, done.reply));
        }
        self.answered.push(Answered {
            txn_id: done.txn_id,
            kind: done.kind,
            outcome: done.outcome,
            started: done.started,
        });
    }

    /// The transaction's log line (latency up to its answer written) and status entry (published
    /// within [`PUBLISH_DELAY`]).
    fn log_done(&mut self, answered: Answered) {
        let Answered {
            txn_id,
            kind,
            outcome,
            started,
        } = answered;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            reader = %self.name(), txn = txn_id, kind, outcome, latency_ms = format_args!("{latency_ms:.3}"),
            "transaction"
        );
        let at_ms = super::store_owner::wall_clock_ms();
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

    fn send_reply(&mut self, reply: &StoredReply) {
        let Some((msg_type, payload)) = StoredReply::split(&reply.0) else {
            tracing::error!(reader = %self.name(), "stored reply is not a reply; not sent");
            return;
        };
        if let Err(e) = self.session.send_raw(msg_type, payload) {
            // Down or full: the answer is stored; the reader recovers it with QUERY.
            tracing::warn!(reader = %self.name(), msg_type = %msg_type, error = %e, "answer not sent; the reader will QUERY");
        }
    }

    fn send_error(&mut self, code: ErrorCode, about: MessageType, text: &str) {
        let message = Message::Error(firmware_protocol::message::Error {
            code,
            offending_type: about.as_u8(),
            text: Text::from_utf8(text),
        });
        if let Err(e) = self.session.send(&message) {
            tracing::warn!(reader = %self.name(), error = %e, "cannot send ERROR");
        }
    }
}

fn declined_outcome(reason: DeclineReason, detail: Option<&str>) -> String {
    match detail {
        Some(d) => format!("declined {reason:?} ({d})"),
        None => format!("declined {reason:?}"),
    }
}

fn declined_done(
    txn_id: u32,
    kind: &'static str,
    presentation: Presentation,
    reason: DeclineReason,
    started: std::time::Instant,
) -> Done {
    Done::answer(
        txn_id,
        kind,
        // DECLINED carries the request's txn id, 0 for QUERY LAST (PROTOCOL.md §5.15).
        presentation.declined(txn_id, reason),
        declined_outcome(reason, None),
        started,
    )
}

fn replay_or_decline(
    store: &mut crate::store::Store,
    reader_id: &str,
    txn_id: u32,
    kind: &'static str,
    presentation: Presentation,
    reason: DeclineReason,
    started: std::time::Instant,
) -> Done {
    match store.stored_outcome(reader_id, u64::from(txn_id)) {
        Ok(Some(bytes)) => Done::answer(
            txn_id,
            kind,
            StoredReply(bytes),
            "repeated request: stored answer sent again",
            started,
        ),
        Ok(None) => declined_done(txn_id, kind, presentation, reason, started),
        Err(e) => {
            tracing::error!(error = %e, "store failed looking up a stored outcome");
            declined_done(
                txn_id,
                kind,
                presentation,
                DeclineReason::InternalError,
                started,
            )
        }
    }
}

fn stored_done(
    result: Result<crate::store::Outcome, crate::store::StoreError>,
    txn_id: u32,
    kind: &'static str,
    presentation: Presentation,
    started: std::time::Instant,
) -> Done {
    match result {
        Ok(outcome) => {
            let summary = match &outcome.decision {
                Some(Decision::Redeemed(a)) => {
                    format!("approved auth {} ({} line(s))", a.auth_code, a.lines.len())
                }
                Some(Decision::Voided(v)) => {
                    format!("voided {} with auth {}", v.original_auth_code, v.auth_code)
                }
                Some(Decision::Declined(d)) => declined_outcome(d.reason, d.detail.as_deref()),
                None if outcome.replay_mismatch => {
                    "txn id reused with other content: first answer sent again".into()
                }
                None => "repeated request: stored answer sent again".into(),
            };
            Done::answer(txn_id, kind, StoredReply(outcome.reply), summary, started)
        }
        Err(e) => {
            tracing::error!(error = %e, kind, "store failed; nothing recorded");
            declined_done(
                txn_id,
                kind,
                presentation,
                DeclineReason::InternalError,
                started,
            )
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
