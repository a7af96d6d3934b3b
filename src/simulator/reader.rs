//! [`SimReader`]: a bank POS reader as its firmware drives the protocol crate.
//!
//! There is no background task: every method pumps the session itself (feed received bytes,
//! drain events, write frames, run timers) until its answer arrives or its timeout passes. Between
//! calls nothing runs, as in a firmware main loop that is busy elsewhere; a caller that waits
//! for something else (a daemon restart) while the link should stay alive calls
//! [`SimReader::idle`]. A link that died meanwhile is noticed and re-established on the next call.
//!
//! Application rules of PROTOCOL.md §8 followed here: transaction ids from a counter the caller
//! can seed (the firmware's flash), or continued after the daemon's latest transaction of this
//! reader ([`SimReader::resume_txn_ids`], QUERY LAST: a simulator has no flash and must never reuse
//! an id), REDEEM reusing the CARD_PRESENTED's id, VOID taking a new one, the transaction timer
//! T_TXN restarted by DISPLAY, and after a link-down with a request unanswered a QUERY for that txn
//! id once the link is back — the request again, same bytes and id, only when that QUERY shows it
//! was not recorded.

use std::collections::VecDeque;
use std::time::Duration;

use firmware_protocol::conformance::Observed;
use firmware_protocol::{Capabilities, DeclineReason, Flags, Header, RejectReason};
use firmware_protocol::{
    CardPresented, Config, Encodings, EntryMode, Identity, IdentityCheck, Instant as ProtoInstant,
    LinkInfo, List, MAX_MESSAGE_LEN, Message, MessageId, MessageType, OwnedEvent, Query,
    ReaderIdentity, ReaderSession, Redeem, RedeemItem, ShortAscii, TextEncoding, Void, VoidReason,
    WIRE_BUF_LEN, encode_frame,
};
use tokio::time::Instant;

use super::SimError;
use super::line::Line;
use super::screen::{Answer, Approval, Decline, Menu, Reply, decode_answer, decode_text};

/// PROTOCOL.md §8.6: the recommended transaction timer.
pub const DEFAULT_TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the simulated reader is and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderSettings {
    /// Serial number, 1..=32 printable ASCII bytes.
    pub serial: String,
    /// Firmware version, 1..=32 printable ASCII bytes.
    pub firmware: String,
    /// Text encodings offered in HELLO (the daemon picks UTF-8 when offered).
    pub encodings: Encodings,
    /// The txn id the next transaction takes (the firmware's flash counter), ≥ 1.
    pub next_txn_id: u32,
    /// T_TXN: how long to wait for an answer; DISPLAY restarts it.
    pub txn_timeout: Duration,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        ReaderSettings {
            serial: "SIM-0001".into(),
            firmware: "sim-1.0".into(),
            encodings: Encodings::BOTH,
            next_txn_id: 1,
            txn_timeout: DEFAULT_TXN_TIMEOUT,
        }
    }
}

/// Answer to a swipe (CARD_PRESENTED).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwipeResult {
    /// The card's usable entitlements.
    Menu(Menu),
    /// Refused (unknown, lost, frozen card...).
    Declined(Decline),
}

/// Answer to REDEEM or VOID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedeemResult {
    /// Approved: receipt, uses left, and the raw reply payload.
    Approved(Approval),
    /// Refused, with the reason and the screen text.
    Declined(Decline),
}

/// A request in flight and how to recognise its answer.
#[derive(Clone, Copy, Debug)]
enum Awaiting {
    /// An answer carrying this txn id.
    Txn(u32),
    /// Any answer (QUERY LAST).
    Any,
}

/// The simulated reader. See the module docs.
pub struct SimReader {
    line: Line,
    session: ReaderSession,
    settings: ReaderSettings,
    identity: ReaderIdentity,
    config: Config,
    /// Origin of the protocol clock.
    epoch: Instant,
    /// Events taken from the session and not yet looked at by a waiting method.
    inbox: VecDeque<OwnedEvent>,
    /// Encoding of the current (or last) link.
    encoding: TextEncoding,
    next_txn_id: u32,
    /// Txn id of the last swipe, which REDEEM quotes.
    card_txn: Option<u32>,
    /// The last REDEEM's payload, for [`SimReader::redeem_again`].
    last_redeem: Option<Vec<u8>>,
    last_reply: Option<Reply>,
    /// The last answered request's round trip on the wire (see [`SimReader::last_round_trip`]).
    last_round_trip: Option<Duration>,
    /// Things worth telling a person that are not answers (stale answers, link drops, recovery).
    notes: Vec<String>,
}

impl std::fmt::Debug for SimReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimReader")
            .field("serial", &self.settings.serial)
            .field("line", &self.line)
            .field("session", &self.session)
            .field("next_txn_id", &self.next_txn_id)
            .finish_non_exhaustive()
    }
}

fn ascii(field: &str, value: &str) -> Result<ShortAscii, SimError> {
    ShortAscii::new(value).ok_or_else(|| {
        SimError::Setup(format!(
            "{field} {value:?}: must be 1 to 32 printable ASCII characters"
        ))
    })
}

fn boot_nonce() -> Result<u64, SimError> {
    getrandom::u64().map_err(|e| SimError::Setup(format!("no randomness for the boot nonce: {e}")))
}

fn emit(message: &Message<'_>) -> Result<Vec<u8>, SimError> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let len = message.emit(&mut buf).map_err(|e| SimError::Request {
        what: message.message_type().name(),
        reason: e.to_string(),
    })?;
    buf.truncate(len);
    Ok(buf)
}

impl SimReader {
    /// A reader on `line`, freshly booted (new boot nonce), not yet linked: the first call that
    /// needs the link, or [`Self::wait_link_up`], performs the handshake.
    pub fn new(line: Line, settings: ReaderSettings) -> Result<SimReader, SimError> {
        if settings.next_txn_id == 0 {
            return Err(SimError::Setup(
                "txn id 0 is reserved; start at 1 or more".into(),
            ));
        }
        let identity = ReaderIdentity {
            serial: ascii("serial number", &settings.serial)?,
            firmware: ascii("firmware version", &settings.firmware)?,
            capabilities: Capabilities(
                Capabilities::PRINTER.0
                    | Capabilities::KEYPAD.0
                    | Capabilities::MAGSTRIPE.0
                    | Capabilities::CHIP.0
                    | Capabilities::CONTACTLESS.0,
            ),
            encodings: settings.encodings,
        };
        if !settings.encodings.contains(TextEncoding::Utf8)
            && !settings.encodings.contains(TextEncoding::Gb18030)
        {
            return Err(SimError::Setup(
                "offer at least one of UTF-8 and GB18030".into(),
            ));
        }
        let config = Config::new(line.baud());
        let session = ReaderSession::new(config, identity, boot_nonce()?);
        Ok(SimReader {
            line,
            session,
            identity,
            config,
            epoch: Instant::now(),
            inbox: VecDeque::new(),
            encoding: TextEncoding::Utf8,
            next_txn_id: settings.next_txn_id,
            card_txn: None,
            last_redeem: None,
            last_reply: None,
            last_round_trip: None,
            notes: Vec::new(),
            settings,
        })
    }

    /// The line (its slave path for a daemon to open, dropped-byte count).
    pub fn line(&self) -> &Line {
        &self.line
    }

    /// The current link, if up.
    pub fn link_info(&self) -> Option<&LinkInfo> {
        self.session.link_info()
    }

    /// The boot nonce of the current boot.
    pub fn boot_nonce(&self) -> u64 {
        self.session.boot_nonce()
    }

    /// The txn id the next swipe or void will take.
    pub fn next_txn_id(&self) -> u32 {
        self.next_txn_id
    }

    /// Continues the txn counter after this reader's latest transaction at the daemon (QUERY LAST,
    /// PROTOCOL.md §8.5), unless the counter is already beyond it: a reader without flash must still
    /// never reuse a txn id (§8.1). Returns the txn id the daemon reported (`None`: it has none).
    pub async fn resume_txn_ids(&mut self) -> Result<Option<u32>, SimError> {
        let reply = self.query_last().await?;
        let last = reply.answer.txn_id();
        if last == 0 {
            return Ok(None);
        }
        if last >= self.next_txn_id {
            self.next_txn_id = last.checked_add(1).unwrap_or(1);
        }
        Ok(Some(last))
    }

    /// Sends one application message as given — a request, a malformed payload, a type a reader
    /// never sends, an ERROR: nothing is checked — and returns the first application message that
    /// comes back within `wait`, DISPLAY skipped: `None` if none does. For the conformance flows,
    /// which judge the answers byte for byte.
    pub async fn exchange(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
        wait: Duration,
    ) -> Result<Option<(MessageType, Vec<u8>)>, SimError> {
        Ok(self
            .exchange_observed(msg_type, payload, wait)
            .await?
            .answer)
    }

    /// [`Self::exchange`], with what else was seen until the answer: each DISPLAY (which restarts
    /// the wait) with its arrival after the request's write, and how often the link had to send
    /// the request's frames again (T_ACK expired or NAK: the daemon did not acknowledge in time).
    pub async fn exchange_observed(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
        wait: Duration,
    ) -> Result<Observed, SimError> {
        self.wait_link_up(self.settings.txn_timeout).await?;
        self.inbox.clear();
        let retransmissions = self.session.stats().retransmissions;
        self.session
            .send_unchecked(msg_type, payload)
            .map_err(|e| SimError::Request {
                what: msg_type.name(),
                reason: e.to_string(),
            })?;
        self.flush().await?;
        let sent = Instant::now();
        let mut seen = Observed::default();
        let mut deadline = sent + wait;
        loop {
            while let Some(event) = self.inbox.pop_front() {
                match event {
                    OwnedEvent::Message {
                        msg_type: MessageType::Display,
                        payload,
                    } => {
                        let at = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
                        seen.displays.push((at, payload));
                        deadline = Instant::now() + wait;
                    }
                    OwnedEvent::Message { msg_type, payload } => {
                        seen.answer = Some((msg_type, payload));
                    }
                    OwnedEvent::LinkDown(reason) => {
                        return Err(SimError::Request {
                            what: msg_type.name(),
                            reason: format!("link down ({reason:?}) before an answer"),
                        });
                    }
                    _ => {}
                }
                if seen.answer.is_some() {
                    break;
                }
            }
            if seen.answer.is_some() || Instant::now() >= deadline {
                seen.retransmissions = self
                    .session
                    .stats()
                    .retransmissions
                    .saturating_sub(retransmissions);
                return Ok(seen);
            }
            self.step(deadline).await?;
        }
    }

    /// Seeds the flash counter (tests reuse ids on purpose to see `TXN_ID_REUSED`). 0 is refused.
    pub fn set_next_txn_id(&mut self, id: u32) -> Result<(), SimError> {
        if id == 0 {
            return Err(SimError::Setup("txn id 0 is reserved".into()));
        }
        self.next_txn_id = id;
        Ok(())
    }

    /// Txn id of the last swipe (what REDEEM and `query current` use).
    pub fn card_txn(&self) -> Option<u32> {
        self.card_txn
    }

    /// The last answer received (any request).
    pub fn last_reply(&self) -> Option<&Reply> {
        self.last_reply.as_ref()
    }

    /// How long the last answered request took on the wire: from the start of its write to the
    /// return of the read that completed its answer. The reader's own work around it (encoding the
    /// request, parsing the answer, acknowledging it) is left out, so this is what the daemon and
    /// the line cost, comparable with a bare round trip of the same bytes. `None` before the first
    /// answer; after a link drop it spans the recovery too, and a request that had to wait behind
    /// an unacknowledged frame of ours is timed from that frame's write.
    pub fn last_round_trip(&self) -> Option<Duration> {
        self.last_round_trip
    }

    /// Takes the notes gathered since the last call (link drops, recoveries, stale answers).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Waits until the handshake is done (immediately if the link is up).
    pub async fn wait_link_up(&mut self, timeout: Duration) -> Result<(), SimError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.session.is_up() {
                return Ok(());
            }
            // A refusal is final for this wait: the session retries only after T_REFUSED (30 s).
            if let Some(reason) = self.inbox.iter().find_map(|e| match e {
                OwnedEvent::HandshakeRejected(r) => Some(*r),
                _ => None,
            }) {
                self.inbox
                    .retain(|e| !matches!(e, OwnedEvent::HandshakeRejected(_)));
                return Err(handshake_rejected(reason));
            }
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    waiting_for: format!(
                        "link up (HELLO_ACK) on {}",
                        self.line.slave_path().display()
                    ),
                    after: timeout,
                });
            }
            self.step(deadline).await?;
        }
    }

    /// Keeps the link alive (heartbeats, acknowledgements) for `duration` without sending a request.
    pub async fn idle(&mut self, duration: Duration) -> Result<(), SimError> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.step(deadline).await?;
        }
        Ok(())
    }

    fn take_txn_id(&mut self) -> u32 {
        let id = self.next_txn_id;
        // Never 0 (reserved), even after wrapping (a real reader is re-provisioned by then).
        self.next_txn_id = id.checked_add(1).unwrap_or(1);
        id
    }

    /// A card was read: CARD_PRESENTED with a new txn id; the menu or the refusal.
    pub async fn swipe(
        &mut self,
        card: &str,
        entry_mode: EntryMode,
        cashier_id: &str,
    ) -> Result<SwipeResult, SimError> {
        let txn_id = self.take_txn_id();
        let payload = emit(&Message::CardPresented(CardPresented {
            txn_id,
            entry_mode,
            card,
            cashier_id,
        }))?;
        self.card_txn = Some(txn_id);
        self.last_redeem = None;
        let reply = self
            .request(MessageType::CardPresented, payload, Awaiting::Txn(txn_id))
            .await?;
        match reply.answer {
            Answer::Menu(menu) => Ok(SwipeResult::Menu(menu)),
            Answer::Declined(decline) => Ok(SwipeResult::Declined(decline)),
            Answer::Approved(_) => Err(unexpected("CARD_MENU or DECLINED", &reply)),
        }
    }

    /// REDEEM `(entry index, quantity)` lines of the last swipe's menu, all or nothing.
    pub async fn redeem(
        &mut self,
        items: &[(u8, u16)],
        identity: Option<Identity<'_>>,
    ) -> Result<RedeemResult, SimError> {
        let txn_id = self.card_txn.ok_or(SimError::NoCard)?;
        let lines: Vec<RedeemItem> = items
            .iter()
            .map(|&(entry_index, quantity)| RedeemItem {
                entry_index,
                quantity,
            })
            .collect();
        let payload = emit(&Message::Redeem(Redeem {
            txn_id,
            items: List::new(&lines),
            identity: identity.unwrap_or(Identity::NONE),
        }))?;
        self.last_redeem = Some(payload.clone());
        let reply = self
            .request(MessageType::Redeem, payload, Awaiting::Txn(txn_id))
            .await?;
        redeem_result(reply)
    }

    /// Sends the last REDEEM again, byte for byte with the same txn id (what a reader does when
    /// it is unsure its request arrived). The daemon must answer with its stored outcome; compare
    /// [`Reply::payload`] with the first answer's.
    pub async fn redeem_again(&mut self) -> Result<Reply, SimError> {
        let txn_id = self.card_txn.ok_or(SimError::NoCard)?;
        let payload = self.last_redeem.clone().ok_or(SimError::NoRedeem)?;
        self.request(MessageType::Redeem, payload, Awaiting::Txn(txn_id))
            .await
    }

    /// VOID the redemption approved with `original_auth_code`, under a new txn id.
    pub async fn void(
        &mut self,
        original_auth_code: &str,
        reason: VoidReason,
    ) -> Result<RedeemResult, SimError> {
        let txn_id = self.take_txn_id();
        let payload = emit(&Message::Void(Void {
            txn_id,
            original_auth_code,
            reason,
        }))?;
        let reply = self
            .request(MessageType::Void, payload, Awaiting::Txn(txn_id))
            .await?;
        redeem_result(reply)
    }

    /// QUERY a transaction's stored outcome (raw payload and decoded form).
    pub async fn query(&mut self, txn_id: u32) -> Result<Reply, SimError> {
        if txn_id == 0 {
            return self.query_last().await;
        }
        let payload = emit(&Message::Query(Query::Txn(txn_id)))?;
        self.request(MessageType::Query, payload, Awaiting::Txn(txn_id))
            .await
    }

    /// QUERY LAST: the daemon's most recent transaction of this reader.
    pub async fn query_last(&mut self) -> Result<Reply, SimError> {
        let payload = emit(&Message::Query(Query::Last))?;
        self.request(MessageType::Query, payload, Awaiting::Any)
            .await
    }

    /// Writes `bytes` straight to the line, bypassing the session (line noise).
    pub async fn inject_noise(&mut self, bytes: &[u8]) -> Result<(), SimError> {
        self.line.write(bytes).await
    }

    /// Writes the first half of a valid-looking encoded data frame, then `noise`: a frame cut
    /// mid-way by interference. The daemon must discard it and lose nothing that follows.
    pub async fn inject_torn_frame(&mut self, noise: &[u8]) -> Result<(), SimError> {
        let payload = emit(&Message::Query(Query::Last))?;
        let header = Header {
            flags: Flags::ACK,
            seq: 0x5A,
            ack: 0,
            msg_type: MessageType::Query.as_u8(),
        };
        let mut wire = [0u8; WIRE_BUF_LEN];
        let len = encode_frame(&header, &payload, &mut wire).map_err(|e| SimError::Request {
            what: "torn frame",
            reason: format!("{e:?}"),
        })?;
        let half = wire.get(..len / 2).unwrap_or_default();
        self.line.write(half).await?;
        self.line.write(noise).await
    }

    /// Power-cycles the reader: a new session with a new boot nonce (same serial number, same
    /// txn counter, same last swipe, as kept in flash), then waits for the new handshake.
    pub async fn reboot(&mut self, timeout: Duration) -> Result<(), SimError> {
        self.session = ReaderSession::new(self.config, self.identity, boot_nonce()?);
        self.inbox.clear();
        self.wait_link_up(timeout).await
    }

    /// Pulls the cable (pty mode): the daemon sees its device fail.
    pub fn unplug(&mut self) -> Result<(), SimError> {
        self.line.unplug()
    }

    /// Plugs in again on a new pty (the symlink follows). The link recovers by itself: the reader
    /// pings after T_HB; a daemon that dropped the link answers RESET and the reader relinks.
    pub fn replug(&mut self) -> Result<(), SimError> {
        self.line.replug()
    }

    /// Sends a request and waits for its answer: DISPLAY restarts T_TXN; after a link-down the
    /// request is not sent again but QUERYed once the link is back (PROTOCOL.md §8.5).
    async fn request(
        &mut self,
        msg_type: MessageType,
        payload: Vec<u8>,
        awaiting: Awaiting,
    ) -> Result<Reply, SimError> {
        let timeout = self.settings.txn_timeout;
        self.wait_link_up(timeout).await?;
        // Answers to earlier transactions still in the inbox are stale now.
        self.inbox.clear();
        self.send(msg_type, &payload)?;
        // Transmitted now rather than at the loop's first step, so that its write is the one
        // the round trip is timed from.
        self.flush().await?;
        let written_at = self.line.last_write_started();
        let what = match awaiting {
            Awaiting::Txn(id) => format!("answer to {} txn {id}", msg_type.name()),
            Awaiting::Any => format!("answer to {}", msg_type.name()),
        };
        let mut deadline = Instant::now() + timeout;
        let mut displays = Vec::new();
        let mut link_lost = false;
        let mut recovered = false;
        let mut resent = false;
        loop {
            while let Some(event) = self.inbox.pop_front() {
                match event {
                    OwnedEvent::Message {
                        msg_type: got_type,
                        payload: got,
                    } => {
                        let parsed = Message::parse(got_type.as_u8(), &got, self.encoding)
                            .map_err(|e| SimError::Request {
                                what: got_type.name(),
                                reason: format!("delivered but unparsable: {e:?}"),
                            })?;
                        match parsed {
                            Message::Display(d) => {
                                let text = decode_text(d.text.as_bytes(), self.encoding);
                                if matches!(awaiting, Awaiting::Txn(id) if d.txn_id != 0 && d.txn_id != id)
                                {
                                    self.notes
                                        .push(format!("DISPLAY for txn {}: {text}", d.txn_id));
                                } else {
                                    displays.push(text);
                                    deadline = Instant::now() + timeout;
                                }
                            }
                            Message::Error(e) => {
                                return Err(SimError::PeerError {
                                    code: e.code.name().map_or_else(
                                        || format!("code {}", e.code.0),
                                        str::to_owned,
                                    ),
                                    offending_type: e.offending_type,
                                    text: decode_text(e.text.as_bytes(), self.encoding),
                                });
                            }
                            _ => {
                                let answer = decode_answer(&parsed, &got, self.encoding)?;
                                let for_us = match awaiting {
                                    Awaiting::Any => true,
                                    Awaiting::Txn(id) => answer.txn_id() == id,
                                };
                                // The QUERY after a link-down shows no answer to this request:
                                // nothing stored for its txn id (TXN_UNKNOWN), or for a REDEEM
                                // only its swipe's menu (PROTOCOL.md §8.5). It was not recorded:
                                // sending it again, same bytes and txn id, is safe (the daemon's
                                // idempotency key), once.
                                let not_recorded = match &answer {
                                    Answer::Declined(d) => d.reason == DeclineReason::TXN_UNKNOWN,
                                    Answer::Menu(_) => msg_type == MessageType::Redeem,
                                    Answer::Approved(_) => false,
                                };
                                if for_us
                                    && recovered
                                    && not_recorded
                                    && !resent
                                    && msg_type != MessageType::Query
                                {
                                    resent = true;
                                    self.notes.push(format!(
                                        "the daemon has no answer to the {}: sending it again, same txn id",
                                        msg_type.name()
                                    ));
                                    self.send(msg_type, &payload)?;
                                    deadline = Instant::now() + timeout;
                                    continue;
                                }
                                if for_us {
                                    let reply = Reply {
                                        msg_type: got_type,
                                        payload: got,
                                        answer,
                                        displays,
                                        recovered,
                                    };
                                    self.last_reply = Some(reply.clone());
                                    self.last_round_trip = written_at
                                        .zip(self.line.last_read_returned())
                                        .map(|(out, back)| back.saturating_duration_since(out));
                                    return Ok(reply);
                                }
                                self.notes.push(format!(
                                    "ignored {} for txn {} while waiting for the {what}",
                                    got_type.name(),
                                    answer.txn_id()
                                ));
                            }
                        }
                    }
                    OwnedEvent::LinkDown(reason) => {
                        link_lost = true;
                        self.notes.push(format!(
                            "link down ({reason:?}) while waiting for the {what}"
                        ));
                    }
                    OwnedEvent::LinkUp(_) if link_lost => {
                        link_lost = false;
                        recovered = true;
                        let query = match awaiting {
                            Awaiting::Txn(id) => Query::Txn(id),
                            Awaiting::Any => Query::Last,
                        };
                        self.notes.push(format!(
                            "link back: QUERY {query:?} instead of sending again"
                        ));
                        let payload = emit(&Message::Query(query))?;
                        self.send(MessageType::Query, &payload)?;
                        deadline = Instant::now() + timeout;
                    }
                    OwnedEvent::HandshakeRejected(reason) => {
                        return Err(handshake_rejected(reason));
                    }
                    OwnedEvent::MessageRejected {
                        msg_type, problem, ..
                    } => {
                        self.notes.push(format!(
                            "refused a message of type 0x{msg_type:02x} from the daemon: {problem:?}"
                        ));
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                let shown = if displays.is_empty() {
                    String::new()
                } else {
                    format!(" (the screen showed: {})", displays.join(" / "))
                };
                return Err(SimError::Timeout {
                    waiting_for: format!("{what}{shown}"),
                    after: timeout,
                });
            }
            self.step(deadline).await?;
        }
    }

    fn send(&mut self, msg_type: MessageType, payload: &[u8]) -> Result<MessageId, SimError> {
        self.session
            .send_raw(msg_type, payload)
            .map_err(|e| SimError::Request {
                what: msg_type.name(),
                reason: e.to_string(),
            })
    }

    fn now(&self) -> ProtoInstant {
        ProtoInstant::from_millis(
            u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
        )
    }

    fn to_tokio(&self, at: ProtoInstant) -> Instant {
        self.epoch + Duration::from_millis(at.as_millis())
    }

    /// One turn of the firmware main loop: transmit what is due, wait for bytes, the next timer or
    /// `deadline`, feed what came, run timers.
    async fn step(&mut self, deadline: Instant) -> Result<(), SimError> {
        self.flush().await?;
        let mut wake = deadline;
        if let Some(at) = self.session.poll_timeout() {
            wake = wake.min(self.to_tokio(at));
        }
        let mut buf = [0u8; 4096];
        let received = tokio::select! {
            read = self.line.read(&mut buf) => read?,
            () = tokio::time::sleep_until(wake) => 0,
        };
        self.feed(buf.get(..received).unwrap_or_default())?;
        let now = self.now();
        self.session.handle_timeout(now);
        self.drain_events();
        self.flush().await
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), SimError> {
        let mut rest = data;
        while !rest.is_empty() {
            let consumed = self.session.handle_bytes(self.now(), rest);
            let events = self.drain_events();
            if consumed == 0 && events == 0 {
                return Err(SimError::Stalled {
                    pending: rest.len(),
                });
            }
            rest = rest.get(consumed..).unwrap_or_default();
        }
        Ok(())
    }

    fn drain_events(&mut self) -> usize {
        let mut count = 0;
        while let Some(event) = self.session.poll_event() {
            let event = OwnedEvent::from(event);
            if let OwnedEvent::LinkUp(info) = &event {
                self.encoding = info.encoding;
            }
            self.inbox.push_back(event);
            count += 1;
        }
        count
    }

    async fn flush(&mut self) -> Result<(), SimError> {
        let mut wire = [0u8; WIRE_BUF_LEN];
        loop {
            let now = self.now();
            let Some(len) = self.session.poll_transmit(now, &mut wire) else {
                return Ok(());
            };
            self.line.write(wire.get(..len).unwrap_or_default()).await?;
        }
    }
}

fn handshake_rejected(reason: RejectReason) -> SimError {
    SimError::HandshakeRejected(
        reason
            .name()
            .map_or_else(|| format!("reason {}", reason.0), str::to_owned),
    )
}

fn unexpected(expected: &'static str, reply: &Reply) -> SimError {
    SimError::UnexpectedAnswer {
        expected,
        got: reply.msg_type.name(),
    }
}

fn redeem_result(reply: Reply) -> Result<RedeemResult, SimError> {
    match reply.answer {
        Answer::Approved(approval) => Ok(RedeemResult::Approved(approval)),
        Answer::Declined(decline) => Ok(RedeemResult::Declined(decline)),
        Answer::Menu(_) => Err(unexpected("APPROVED or DECLINED", &reply)),
    }
}

/// Parses the scenario/CLI spelling of an entry mode.
pub fn entry_mode_from_str(s: &str) -> Option<EntryMode> {
    Some(match s {
        "magstripe" => EntryMode::Magstripe,
        "chip" => EntryMode::Chip,
        "contactless" => EntryMode::Contactless,
        "manual" => EntryMode::Manual,
        "qr" => EntryMode::Qr,
        _ => return None,
    })
}

/// Parses the scenario/CLI spelling of a void reason.
pub fn void_reason_from_str(s: &str) -> Option<VoidReason> {
    Some(match s {
        "cashier-error" => VoidReason::CashierError,
        "customer-request" => VoidReason::CustomerRequest,
        "other" => VoidReason::Other,
        _ => return None,
    })
}

/// Parses a decline reason by name (`NOT_ENOUGH_USES`, case-insensitive, `-` for `_`) or number.
pub fn decline_reason_from_str(s: &str) -> Option<DeclineReason> {
    if let Ok(code) = s.parse::<u16>() {
        return Some(DeclineReason(code));
    }
    let wanted = s.to_ascii_uppercase().replace('-', "_");
    // Every code, so that names added to the protocol are known here without a second list.
    (0..=u16::MAX)
        .map(DeclineReason)
        .find(|r| r.name() == Some(wanted.as_str()))
}

/// Identity confirmation typed on the keypad.
pub fn identity(check: IdentityCheck, digits: &str) -> Identity<'_> {
    Identity {
        check,
        data: digits,
    }
}
