//! The reader conversation (PROTOCOL.md §8) as a sans-IO state machine: what the daemon does with
//! the application messages of one reader's link, with no I/O and no clock.
//!
//! It sits above the link (`firmware_protocol::HostSession`: frames, ACKs, retransmission,
//! handshake) and below the store. The driver (`crate::daemon::reader`) feeds it what happens and
//! carries out what it asks for, in the style of quinn-proto:
//!
//! * inputs: the link came up (reader serial, text encoding) or went down; a message was delivered;
//!   the store decided a request ([`Conversation::handle_decided`]); time passed
//!   ([`Conversation::handle_timeout`], at [`Conversation::poll_timeout`]);
//! * effects ([`Conversation::poll_effect`]): "decide this request with the store" ([`Job`], carried
//!   out by [`execute::execute`] under the store's lock), "send this message on the link", "log
//!   this".
//!
//! What it decides: one request at a time, in the order delivered, later ones waiting (up to
//! [`BACKLOG_MAX`], beyond that ERROR `BUSY`); every request, QUERY included, goes to the store,
//! which applies the idempotency rules ([`rules`]) in the transaction that stores the answer — no
//! answer comes from memory, which a restart would lose; an answer whose link went down while it
//! was decided is not sent (the reader will QUERY: §8.5); a request not answered [`T_DISPLAY`] after
//! it was delivered — being decided, or waiting behind another — gets one DISPLAY "please wait" for
//! its transaction (§5.16); an ERROR from the reader is logged, never answered (§4.12).
//!
//! Time is [`Instant`] (milliseconds, the driver's clock); the tests (`tests.rs`) run it on a
//! virtual clock against a real store in a temporary directory.

pub mod execute;
pub mod render;
pub mod rules;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use firmware_protocol::Instant;
use firmware_protocol::message::{
    Display, Error as ErrorMessage, ErrorCode, IdentityCheck, Message, MessageType, Query, Text,
    TextEncoding,
};
use zeroize::Zeroizing;

use crate::config::Language;
use render::{Presentation, StoredReply};

/// How long after its delivery an unanswered request gets DISPLAY "please wait" (PROTOCOL.md §5.16).
pub const T_DISPLAY: Duration = Duration::from_secs(1);

/// Requests waiting behind the one being decided; more is a misbehaving reader (ERROR `BUSY`).
pub const BACKLOG_MAX: usize = 4;

/// Identifies a [`Job`] handed out in [`Effect::Decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// A request for the store to decide: [`execute::execute`] carries it out.
pub struct Job {
    /// The reader's serial number: the first part of the idempotency key.
    pub reader_id: String,
    /// The request's txn id (for QUERY LAST: 0).
    pub txn_id: u32,
    /// How its answer is rendered (the cashier's language, the link's encoding).
    pub presentation: Presentation,
    /// The payload as delivered, compared with a repeated request's (it may hold a card number).
    pub payload: Zeroizing<Vec<u8>>,
    pub request: JobRequest,
}

/// The request part of a [`Job`], parsed.
pub enum JobRequest {
    CardPresented {
        card: Zeroizing<String>,
        cashier_id: String,
    },
    Redeem {
        /// (entry index, quantity).
        items: Vec<(u16, u64)>,
        /// The digits typed, when the REDEEM carries an identity check.
        identity: Option<Zeroizing<Vec<u8>>>,
    },
    Void {
        original_auth_code: String,
    },
    /// `None`: QUERY LAST.
    Query(Option<u32>),
}

impl Job {
    /// The request's kind as the log and the status file name it.
    pub fn kind(&self) -> &'static str {
        match self.request {
            JobRequest::CardPresented { .. } => "swipe",
            JobRequest::Redeem { .. } => "redeem",
            JobRequest::Void { .. } => "void",
            JobRequest::Query(_) => "query",
        }
    }
}

/// Never the card number or the identity digits.
impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("reader_id", &self.reader_id)
            .field("txn_id", &self.txn_id)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// What the store decided for a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The answer as sent: type byte, then payload ([`StoredReply`]).
    pub reply: Vec<u8>,
    /// What happened, for the log line.
    pub outcome: String,
    /// A stored row that failed its check, or a store failure: logged as an error, naming it.
    pub problem: Option<String>,
}

/// A transaction answered: for the driver's log line and status entry, once its answer is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub ticket: Ticket,
    pub txn_id: u32,
    pub kind: &'static str,
    pub outcome: String,
}

/// Something to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The reader sent ERROR (PROTOCOL.md §4.12: logged, never answered).
    PeerError {
        code: ErrorCode,
        offending_type: u8,
        text: String,
    },
    /// More requests than [`BACKLOG_MAX`] waited: this one was answered ERROR `BUSY`.
    Busy { msg_type: MessageType },
    /// An answer was decided (and stored) after its link went down: not sent, the reader will QUERY.
    NotSent { txn_id: u32, kind: &'static str },
    /// A decision met a stored row that failed its check, or the store failed (see [`Decided`]).
    StoreProblem {
        txn_id: u32,
        kind: &'static str,
        problem: String,
    },
    /// A delivered message did not parse again (the session validated it: a bug).
    Unparsable {
        msg_type: MessageType,
        error: String,
    },
}

/// What the driver must do.
#[derive(Debug)]
pub enum Effect {
    /// Decide `job` with the store, then report with [`Conversation::handle_decided`].
    Decide { ticket: Ticket, job: Job },
    /// Queue this message on the link (`HostSession::send_raw`); `answered` when it answers a
    /// request.
    Send {
        msg_type: MessageType,
        payload: Vec<u8>,
        answered: Option<Answered>,
    },
    /// Log this.
    Log(Note),
}

/// The link the conversation is on.
#[derive(Debug, Clone)]
struct Link {
    reader_id: String,
    encoding: TextEncoding,
    /// Counts links: an answer is sent only on the link its request came on.
    epoch: u64,
}

/// The request out for decision.
#[derive(Debug, Clone, Copy)]
struct Deciding {
    ticket: Ticket,
    epoch: u64,
    txn_id: u32,
    kind: &'static str,
    /// When to send DISPLAY, until it is sent.
    display_at: Option<Instant>,
}

/// A delivered request waiting for the one being decided.
#[derive(Debug)]
struct Waiting {
    epoch: u64,
    msg_type: MessageType,
    payload: Zeroizing<Vec<u8>>,
    /// The txn id its DISPLAY carries (0 for QUERY LAST, and for a payload that does not parse,
    /// which [`Conversation::start`] reports when its turn comes).
    txn_id: u32,
    /// When to send DISPLAY (T_DISPLAY after delivery: §5.16), until it is sent.
    display_at: Option<Instant>,
}

/// One reader's conversation: see the module docs.
#[derive(Debug)]
pub struct Conversation {
    language: Language,
    utc_offset_minutes: i32,
    link: Option<Link>,
    epochs: u64,
    deciding: Option<Deciding>,
    /// Delivered requests waiting for the one being decided, in order.
    backlog: VecDeque<Waiting>,
    tickets: u64,
    effects: VecDeque<Effect>,
}

impl Conversation {
    /// A conversation with no link yet; texts in `language`, times at `utc_offset_minutes`.
    pub fn new(language: Language, utc_offset_minutes: i32) -> Conversation {
        Conversation {
            language,
            utc_offset_minutes,
            link: None,
            epochs: 0,
            deciding: None,
            backlog: VecDeque::new(),
            tickets: 0,
            effects: VecDeque::new(),
        }
    }

    /// The handshake completed with the reader `reader_serial`; texts go in `encoding`.
    pub fn handle_link_up(&mut self, _now: Instant, reader_serial: &str, encoding: TextEncoding) {
        self.epochs += 1;
        self.link = Some(Link {
            reader_id: reader_serial.to_owned(),
            encoding,
            epoch: self.epochs,
        });
    }

    /// The link went down: requests waiting are dropped (the reader QUERYs what it did not get
    /// answered, §8.5); a request being decided is decided and stored, but not answered.
    pub fn handle_link_down(&mut self, _now: Instant) {
        self.link = None;
        self.backlog.clear();
    }

    /// An application message the session delivered (already validated in the link's encoding).
    pub fn handle_message(&mut self, now: Instant, msg_type: MessageType, payload: &[u8]) {
        let Some(link) = &self.link else {
            return; // the session delivers nothing while down
        };
        if msg_type == MessageType::Error {
            // PROTOCOL.md §4.12: an ERROR is never answered with an ERROR.
            let note = match Message::parse(msg_type.as_u8(), payload, link.encoding) {
                Ok(Message::Error(e)) => Note::PeerError {
                    code: e.code,
                    offending_type: e.offending_type,
                    text: render::decode_text(e.text.as_bytes(), link.encoding),
                },
                _ => Note::Unparsable {
                    msg_type,
                    error: "ERROR payload".into(),
                },
            };
            self.effects.push_back(Effect::Log(note));
            return;
        }
        if self.deciding.is_some() || !self.backlog.is_empty() {
            if self.backlog.len() >= BACKLOG_MAX {
                self.effects.push_back(Effect::Log(Note::Busy { msg_type }));
                self.send_error(ErrorCode::BUSY, msg_type, "busy: one request at a time");
                return;
            }
            let txn_id = match Message::parse(msg_type.as_u8(), payload, link.encoding) {
                Ok(message) => request_txn_id(&message),
                Err(_) => 0,
            };
            self.backlog.push_back(Waiting {
                epoch: link.epoch,
                msg_type,
                payload: Zeroizing::new(payload.to_vec()),
                txn_id,
                display_at: Some(now + T_DISPLAY),
            });
            return;
        }
        self.start(
            now,
            msg_type,
            Zeroizing::new(payload.to_vec()),
            Some(now + T_DISPLAY),
        );
    }

    /// The store decided the request of `ticket` (an [`Effect::Decide`]).
    pub fn handle_decided(&mut self, now: Instant, ticket: Ticket, decided: Decided) {
        let Some(deciding) = self.deciding.filter(|d| d.ticket == ticket) else {
            return; // not ours: a bug in the driver; nothing to answer
        };
        self.deciding = None;
        if let Some(problem) = decided.problem {
            self.effects.push_back(Effect::Log(Note::StoreProblem {
                txn_id: deciding.txn_id,
                kind: deciding.kind,
                problem,
            }));
        }
        let on_its_link = self
            .link
            .as_ref()
            .is_some_and(|l| l.epoch == deciding.epoch);
        match StoredReply::split(&decided.reply) {
            Some((msg_type, payload)) if on_its_link => {
                self.effects.push_back(Effect::Send {
                    msg_type,
                    payload: payload.to_vec(),
                    answered: Some(Answered {
                        ticket,
                        txn_id: deciding.txn_id,
                        kind: deciding.kind,
                        outcome: decided.outcome,
                    }),
                });
            }
            Some(_) => self.effects.push_back(Effect::Log(Note::NotSent {
                txn_id: deciding.txn_id,
                kind: deciding.kind,
            })),
            None => self.effects.push_back(Effect::Log(Note::StoreProblem {
                txn_id: deciding.txn_id,
                kind: deciding.kind,
                problem: "the decided answer is not a reply: not sent".into(),
            })),
        }
        self.next(now);
    }

    /// Runs what is due at `now`: DISPLAY for each request, decided or waiting, not answered
    /// [`T_DISPLAY`] after it was delivered, in the order they were delivered.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = |display_at: &mut Option<Instant>| {
            let due = display_at.is_some_and(|at| at <= now);
            if due {
                *display_at = None;
            }
            due
        };
        let mut displays = Vec::new();
        if let Some(d) = self.deciding.as_mut()
            && due(&mut d.display_at)
        {
            displays.push((d.txn_id, d.epoch));
        }
        for w in &mut self.backlog {
            if due(&mut w.display_at) {
                displays.push((w.txn_id, w.epoch));
            }
        }
        for (txn_id, epoch) in displays {
            self.display(txn_id, epoch);
        }
    }

    /// Queues DISPLAY "please wait" for `txn_id`, if its link is still the current one.
    fn display(&mut self, txn_id: u32, epoch: u64) {
        let Some(link) = self.link.as_ref().filter(|l| l.epoch == epoch) else {
            return;
        };
        let text = self.presentation(link.encoding).please_wait();
        let mut buf = vec![0u8; 256];
        let message = Message::Display(Display {
            txn_id,
            text: Text::new(&text),
        });
        if let Ok(n) = message.emit(&mut buf) {
            buf.truncate(n);
            self.effects.push_back(Effect::Send {
                msg_type: MessageType::Display,
                payload: buf,
                answered: None,
            });
        }
    }

    /// When [`Self::handle_timeout`] must be called next, if anything is timed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deciding
            .and_then(|d| d.display_at)
            .into_iter()
            .chain(self.backlog.iter().filter_map(|w| w.display_at))
            .min()
    }

    /// The next thing to do, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Nothing is being decided or waiting (a moment for the store's maintenance).
    pub fn is_idle(&self) -> bool {
        self.deciding.is_none() && self.backlog.is_empty()
    }

    fn presentation(&self, encoding: TextEncoding) -> Presentation {
        Presentation {
            language: self.language,
            encoding,
            utc_offset_minutes: self.utc_offset_minutes,
        }
    }

    /// Starts deciding the next waiting request of the current link, if any.
    fn next(&mut self, now: Instant) {
        while self.deciding.is_none() {
            let Some(w) = self.backlog.pop_front() else {
                return;
            };
            if self.link.as_ref().is_some_and(|l| l.epoch == w.epoch) {
                self.start(now, w.msg_type, w.payload, w.display_at);
            }
        }
    }

    /// Turns a request into a [`Job`] for the store; its DISPLAY is due at `display_at` (`None`:
    /// sent while it waited).
    fn start(
        &mut self,
        _now: Instant,
        msg_type: MessageType,
        payload: Zeroizing<Vec<u8>>,
        display_at: Option<Instant>,
    ) {
        let Some(link) = self.link.clone() else {
            return;
        };
        let request = match Message::parse(msg_type.as_u8(), &payload, link.encoding) {
            Ok(Message::CardPresented(cp)) => (
                cp.txn_id,
                JobRequest::CardPresented {
                    card: Zeroizing::new(cp.card.to_owned()),
                    cashier_id: cp.cashier_id.to_owned(),
                },
            ),
            Ok(Message::Redeem(r)) => (
                r.txn_id,
                JobRequest::Redeem {
                    items: r
                        .items
                        .iter()
                        .map(|i| (u16::from(i.entry_index), u64::from(i.quantity)))
                        .collect(),
                    identity: (r.identity.check != IdentityCheck::None)
                        .then(|| Zeroizing::new(r.identity.data.as_bytes().to_vec())),
                },
            ),
            Ok(Message::Void(v)) => (
                v.txn_id,
                JobRequest::Void {
                    original_auth_code: v.original_auth_code.to_owned(),
                },
            ),
            Ok(Message::Query(q)) => match q {
                Query::Last => (0, JobRequest::Query(None)),
                Query::Txn(id) => (id, JobRequest::Query(Some(id))),
            },
            Ok(other) => {
                // The session refuses the types a daemon never receives before they get here.
                self.send_error(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    other.message_type(),
                    "not a request",
                );
                return;
            }
            Err(e) => {
                self.effects.push_back(Effect::Log(Note::Unparsable {
                    msg_type,
                    error: e.to_string(),
                }));
                self.send_error(ErrorCode::INTERNAL, msg_type, "internal");
                return;
            }
        };
        let (txn_id, request) = request;
        let job = Job {
            reader_id: link.reader_id.clone(),
            txn_id,
            presentation: self.presentation(link.encoding),
            payload,
            request,
        };
        self.tickets += 1;
        let ticket = Ticket(self.tickets);
        self.deciding = Some(Deciding {
            ticket,
            epoch: link.epoch,
            txn_id,
            kind: job.kind(),
            display_at,
        });
        self.effects.push_back(Effect::Decide { ticket, job });
    }

    fn send_error(&mut self, code: ErrorCode, about: MessageType, text: &str) {
        let mut buf = vec![0u8; 192];
        let message = Message::Error(ErrorMessage {
            code,
            offending_type: about.as_u8(),
            text: Text::from_utf8(text),
        });
        if let Ok(n) = message.emit(&mut buf) {
            buf.truncate(n);
            self.effects.push_back(Effect::Send {
                msg_type: MessageType::Error,
                payload: buf,
                answered: None,
            });
        }
    }
}

/// The txn id a request's DISPLAY carries: its own, 0 for QUERY LAST (PROTOCOL.md §5.16).
fn request_txn_id(message: &Message<'_>) -> u32 {
    match message {
        Message::CardPresented(cp) => cp.txn_id,
        Message::Redeem(r) => r.txn_id,
        Message::Void(v) => v.txn_id,
        Message::Query(Query::Txn(id)) => *id,
        _ => 0,
    }
}
