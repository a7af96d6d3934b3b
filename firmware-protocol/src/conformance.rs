//! The conformance flows of PROTOCOL.md §11.1: for each rule of §4.12, §5, §7 and §8 that a daemon
//! owes a reader, a scripted dialogue — what the reader sends, what the daemon must answer — and a
//! sans-IO runner that plays the reader's side and checks every answer. `std` feature.
//!
//! The same flows serve both ends. `redeemd simulate-reader --conformance` runs them against a
//! daemon over a serial line (or a pty) and prints PASS or FAIL per rule. A reader firmware team
//! runs them through its own link layer against a daemon in its test rig: [`FlowRun`] knows nothing
//! of the line, it hands out payloads to send ([`Action`]) and judges the answers given back
//! ([`FlowRun::answer`]), so any transport can carry it; and each flow, as PROTOCOL.md lists it,
//! shows what the reader may rely on (a stored answer comes back byte for byte, a reused txn id
//! deducts nothing, QUERY LAST after a reboot, …).
//!
//! A flow needs one member card the daemon knows, with an entry that asks no identity and has at
//! least two uses left ([`FlowRun::new`]). Every redemption a flow makes is voided by the same
//! flow, so the card ends as it began; a daemon of a real shop still journals them (and the
//! platform clears a redemption and its void to nothing): use a test card.
//!
//! Two flows ([`Flow::needs_busy_store`]) check what the daemon does while its store makes a
//! decision wait (§4.4, §5.16), which nothing a reader sends can cause: their requests come with
//! [`Action::Send::busy_store_ms`], and the driver makes the daemon's store busy that long before
//! sending (`redeemd simulate-reader --busy-store` holds the write lock of the daemon's database),
//! or skips the flow. They are judged on more than the answer ([`Observed`]): whether the reader's
//! link had to retransmit the request, and the DISPLAY messages that came before the answer.

use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use crate::message::{
    CardPresented, DeclineReason, EntryMode, ErrorCode, Identity, IdentityCheck, List, Message,
    MessageType, Query, Redeem, RedeemItem, TextEncoding, Void, VoidReason,
};

/// The k-th new txn id of a flow (the runner maps it to a real one, after every id used before).
pub type Txn = usize;

/// Which card a swipe presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Card {
    /// The member card given to [`FlowRun::new`].
    Member,
    /// This text, which is no card number (§7.1 `BAD_CARD_NUMBER`).
    Invalid(&'static str),
}

/// Which menu entry a REDEEM names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The first entry of the transaction's menu that asks no identity and has two uses or more.
    Usable,
    /// This index (for a REDEEM without a menu).
    Index(u8),
}

/// Which authorization code a VOID quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// The `auth_code` of the APPROVED answered at this step of the flow.
    Of(usize),
    /// This code, which the daemon never issued.
    Unknown(&'static str),
}

/// What the reader sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// CARD_PRESENTED of the card under the txn id.
    Swipe(Txn, Card),
    /// REDEEM under the txn id: (entry, quantity) items, no identity data.
    Redeem(Txn, Vec<(Entry, u16)>),
    /// VOID under the txn id of the authorization code.
    Void(Txn, Auth),
    /// QUERY of the txn id.
    Query(Txn),
    /// QUERY LAST (txn id 0).
    QueryLast,
    /// A message of this type (a code of §5.2) with exactly this payload: malformed on purpose,
    /// of a type the reader never sends, or an ERROR. (An unknown type is a link-layer case, the
    /// vector `malformed-unknown-type.hex`.)
    Raw(u8, Vec<u8>),
}

/// What the daemon must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// CARD_MENU for the transaction.
    Menu(Txn),
    /// APPROVED for the transaction.
    Approved(Txn),
    /// APPROVED for the transaction, with an empty `uses_left` (a void's: §5.12).
    ApprovedVoid(Txn),
    /// DECLINED for the transaction (`None`: txn id 0) with this reason (`None`: any).
    Declined(Option<Txn>, Option<DeclineReason>),
    /// The very bytes (type and payload) answered at that earlier step.
    SameAs(usize),
    /// ERROR with this code, and a text that contains this (if given).
    Error(ErrorCode, Option<&'static str>),
    /// Any application message.
    Anything,
    /// No application message within [`QUIET_MS`].
    Nothing,
}

/// One step of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The reader sends, the daemon answers.
    Ask(Request, Expect),
    /// As [`Step::Ask`], with the daemon's store busy for [`BUSY_STORE_MS`] from just before the
    /// request is sent. The request must be acknowledged without a retransmission (§4.4), and with
    /// `display`, exactly one DISPLAY for its transaction must come before the answer, no sooner
    /// than [`T_DISPLAY_MS`] after the request was sent (§5.16).
    AskWhileBusy {
        /// What the reader sends.
        request: Request,
        /// What the daemon must answer once its store is free.
        expect: Expect,
        /// Whether the step checks the DISPLAY too.
        display: bool,
    },
    /// The reader reboots (a new boot nonce) and links again.
    Reboot,
}

/// One rule, checked by one dialogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// PROTOCOL.md section, e.g. `§8.2`.
    pub section: &'static str,
    /// The rule, in a sentence.
    pub rule: &'static str,
    /// The dialogue.
    pub steps: Vec<Step>,
}

/// How long to wait for an answer the flow expects ([`QUIET_MS`] for one it must not get).
pub const ANSWER_WAIT_MS: u64 = 10_000;
/// How long a flow waits to be sure that nothing is answered.
pub const QUIET_MS: u64 = 500;
/// How long a [`Step::AskWhileBusy`] wants the daemon's store busy: three times T_DISPLAY, and
/// nearly three times what a reader's link survives without acknowledgements (4 × T_ACK, 1.1 s at
/// 115,200 baud), below a daemon's own wait for its database (5 s).
pub const BUSY_STORE_MS: u64 = 3_000;
/// T_DISPLAY (PROTOCOL.md §5.16).
pub const T_DISPLAY_MS: u64 = 1_000;

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this message and give the first application message that comes back (DISPLAY
    /// skipped; each DISPLAY restarts the wait) within `wait_ms`, or `None`, to
    /// [`FlowRun::answer`] — or, with what else was seen, to [`FlowRun::answer_observed`].
    Send {
        /// Its type.
        msg_type: MessageType,
        /// Its payload.
        payload: Vec<u8>,
        /// How long to wait for the answer.
        wait_ms: u64,
        /// Make the daemon's store busy for this long first (another process holding its
        /// database's write lock), returning once it is: [`Step::AskWhileBusy`].
        busy_store_ms: Option<u64>,
    },
    /// Reboot the reader (new boot nonce, same serial and txn counter) and wait for the link.
    Reboot,
}

/// What came back for one request, as the driver saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The first application message other than DISPLAY within the wait, if any.
    pub answer: Option<(MessageType, Vec<u8>)>,
    /// The DISPLAY payloads that came before it, each with its arrival in ms after the request
    /// was sent.
    pub displays: Vec<(u64, Vec<u8>)>,
    /// How often the reader's link sent the request's frames again (T_ACK expired, or a NAK).
    pub retransmissions: u32,
}

impl Flow {
    /// Whether the flow needs the daemon's store made busy ([`Step::AskWhileBusy`]).
    pub fn needs_busy_store(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::AskWhileBusy { .. }))
    }
}

/// A flow being played from the reader's side. See the module docs.
#[derive(Debug)]
pub struct FlowRun<'a> {
    flow: &'a Flow,
    card: String,
    encoding: TextEncoding,
    first_txn: u32,
    step: usize,
    /// The answer of each step so far.
    answers: Vec<Option<(MessageType, Vec<u8>)>>,
}

impl<'a> FlowRun<'a> {
    /// Plays `flow` with txn ids from `first_txn` on (every later id is new: never reuse one of an
    /// earlier run), the member card `card`, on a link whose text encoding is `encoding`.
    pub fn new(flow: &'a Flow, first_txn: u32, card: &str, encoding: TextEncoding) -> Self {
        FlowRun {
            flow,
            card: card.to_string(),
            encoding,
            first_txn,
            step: 0,
            answers: Vec::new(),
        }
    }

    /// The first txn id after every one this flow uses: where the next flow starts.
    pub fn next_free_txn(&self) -> u32 {
        let used = self
            .flow
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Ask(send, _) | Step::AskWhileBusy { request: send, .. } => send_txn(send),
                Step::Reboot => None,
            })
            .max()
            .map_or(0, |k| k + 1);
        self.first_txn
            .saturating_add(u32::try_from(used).unwrap_or(u32::MAX))
    }

    /// What to do next; `None` when the flow is done (and passed).
    pub fn next_action(&mut self) -> Result<Option<Action>, String> {
        let Some(step) = self.flow.steps.get(self.step) else {
            return Ok(None);
        };
        match step {
            Step::Reboot => {
                self.answers.push(None);
                self.step += 1;
                Ok(Some(Action::Reboot))
            }
            Step::Ask(send, expect)
            | Step::AskWhileBusy {
                request: send,
                expect,
                ..
            } => {
                let (msg_type, payload) = self.request(send)?;
                let wait_ms = if *expect == Expect::Nothing {
                    QUIET_MS
                } else {
                    ANSWER_WAIT_MS
                };
                let busy_store_ms =
                    matches!(step, Step::AskWhileBusy { .. }).then_some(BUSY_STORE_MS);
                Ok(Some(Action::Send {
                    msg_type,
                    payload,
                    wait_ms,
                    busy_store_ms,
                }))
            }
        }
    }

    /// Judges the answer to the last [`Action::Send`] (for a [`Step::AskWhileBusy`], use
    /// [`Self::answer_observed`]: this one reports no DISPLAY and no retransmission).
    pub fn answer(&mut self, got: Option<(MessageType, Vec<u8>)>) -> Result<(), String> {
        self.answer_observed(Observed {
            answer: got,
            ..Observed::default()
        })
    }

    /// Judges what came back for the last [`Action::Send`].
    pub fn answer_observed(&mut self, seen: Observed) -> Result<(), String> {
        let (send, checked) = match self.flow.steps.get(self.step) {
            Some(Step::Ask(send, expect)) => (send, self.check(expect, seen.answer.as_ref())),
            Some(Step::AskWhileBusy {
                request,
                expect,
                display,
            }) => (request, self.check_busy(request, expect, *display, &seen)),
            _ => return Err("no request is waiting for an answer".into()),
        };
        let at = self.step + 1;
        self.answers.push(seen.answer);
        self.step += 1;
        checked.map_err(|problem| format!("step {at} ({}): {problem}", describe(send)))
    }

    /// The checks of a [`Step::AskWhileBusy`], the answer's last.
    fn check_busy(
        &self,
        request: &Request,
        expect: &Expect,
        display: bool,
        seen: &Observed,
    ) -> Result<(), String> {
        if seen.retransmissions > 0 {
            return Err(format!(
                "the request was not acknowledged within T_ACK while the store was busy: sent \
                 again {} time(s)",
                seen.retransmissions
            ));
        }
        if display {
            let txn = send_txn(request).map_or(0, |k| self.txn(k));
            let [(at_ms, payload)] = seen.displays.as_slice() else {
                return Err(format!(
                    "expected one DISPLAY for txn {txn} before the answer, got {}",
                    seen.displays.len()
                ));
            };
            match Message::parse(MessageType::Display.as_u8(), payload, self.encoding) {
                Ok(Message::Display(d)) if d.txn_id == txn => {}
                Ok(Message::Display(d)) => {
                    return Err(format!("DISPLAY for txn {}, not {txn}", d.txn_id));
                }
                _ => return Err("the DISPLAY does not parse".into()),
            }
            if *at_ms < T_DISPLAY_MS {
                return Err(format!(
                    "DISPLAY {at_ms} ms after the request, before T_DISPLAY ({T_DISPLAY_MS} ms)"
                ));
            }
        }
        self.check(expect, seen.answer.as_ref())
    }

    fn txn(&self, k: Txn) -> u32 {
        self.first_txn
            .saturating_add(u32::try_from(k).unwrap_or(u32::MAX))
    }

    fn request(&self, send: &Request) -> Result<(MessageType, Vec<u8>), String> {
        let mut buf = vec![0u8; crate::message::MAX_MESSAGE_LEN];
        let message = match send {
            Request::Raw(code, payload) => {
                let msg_type = MessageType::from_u8(*code);
                return Ok((
                    msg_type.ok_or_else(|| format!("type {code:#04x} cannot be sent"))?,
                    payload.clone(),
                ));
            }
            Request::Swipe(k, card) => Message::CardPresented(CardPresented {
                txn_id: self.txn(*k),
                entry_mode: EntryMode::Magstripe,
                card: match card {
                    Card::Member => self.card.as_str(),
                    Card::Invalid(text) => text,
                },
                cashier_id: "CONFORMANCE",
            }),
            Request::Void(k, auth) => {
                let code = match auth {
                    Auth::Unknown(code) => (*code).to_string(),
                    Auth::Of(step) => self.auth_code(*step)?,
                };
                let n = Message::Void(Void {
                    txn_id: self.txn(*k),
                    original_auth_code: &code,
                    reason: VoidReason::Other,
                })
                .emit(&mut buf)
                .map_err(|e| e.to_string())?;
                buf.truncate(n);
                return Ok((MessageType::Void, buf));
            }
            Request::Redeem(k, items) => {
                let items = items
                    .iter()
                    .map(|(entry, quantity)| {
                        Ok(RedeemItem {
                            entry_index: match entry {
                                Entry::Index(i) => *i,
                                Entry::Usable => self.usable_entry(*k)?,
                            },
                            quantity: *quantity,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let n = Message::Redeem(Redeem {
                    txn_id: self.txn(*k),
                    items: List::new(&items),
                    identity: Identity::NONE,
                })
                .emit(&mut buf)
                .map_err(|e| e.to_string())?;
                buf.truncate(n);
                return Ok((MessageType::Redeem, buf));
            }
            Request::Query(k) => Message::Query(Query::Txn(self.txn(*k))),
            Request::QueryLast => Message::Query(Query::Last),
        };
        let n = message.emit(&mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n);
        Ok((message.message_type(), buf))
    }

    /// The answer of an earlier step, parsed.
    fn earlier(&self, step: usize) -> Result<Message<'_>, String> {
        let Some(Some((t, p))) = self.answers.get(step) else {
            return Err(format!("step {} has no answer", step + 1));
        };
        Message::parse(t.as_u8(), p, self.encoding).map_err(|e| e.to_string())
    }

    fn auth_code(&self, step: usize) -> Result<String, String> {
        match self.earlier(step)? {
            Message::Approved(a) => Ok(a.auth_code.to_string()),
            other => Err(format!(
                "step {} was not APPROVED but {}",
                step + 1,
                other.message_type()
            )),
        }
    }

    /// The usable entry of the menu transaction `k` got.
    fn usable_entry(&self, k: Txn) -> Result<u8, String> {
        let txn = self.txn(k);
        for (t, p) in self.answers.iter().flatten() {
            if let Ok(Message::CardMenu(m)) = Message::parse(t.as_u8(), p, self.encoding)
                && m.txn_id == txn
            {
                return m
                    .entries
                    .iter()
                    .find(|e| e.identity == IdentityCheck::None && e.uses_left >= 2)
                    .map(|e| e.index)
                    .ok_or_else(|| {
                        "the card's menu has no entry without identity check and with two uses \
                         left: use another card"
                            .to_string()
                    });
            }
        }
        Err(format!("no menu for txn {txn} to pick an entry from"))
    }

    fn check(&self, expect: &Expect, got: Option<&(MessageType, Vec<u8>)>) -> Result<(), String> {
        let Some((msg_type, payload)) = got else {
            return if *expect == Expect::Nothing {
                Ok(())
            } else {
                Err(format!("expected {}, got no answer", self.expected(expect)))
            };
        };
        let message = Message::parse(msg_type.as_u8(), payload, self.encoding)
            .map_err(|e| format!("the answer does not parse: {e}"))?;
        let wrong = || {
            Err(format!(
                "expected {}, got {}",
                self.expected(expect),
                summary(&message)
            ))
        };
        match expect {
            Expect::Nothing => wrong(),
            Expect::Anything => Ok(()),
            Expect::Menu(k) => match message {
                Message::CardMenu(m) if m.txn_id == self.txn(*k) => Ok(()),
                _ => wrong(),
            },
            Expect::Approved(k) => match message {
                Message::Approved(a) if a.txn_id == self.txn(*k) => Ok(()),
                _ => wrong(),
            },
            Expect::ApprovedVoid(k) => match message {
                Message::Approved(a) if a.txn_id == self.txn(*k) && a.uses_left.is_empty() => {
                    Ok(())
                }
                _ => wrong(),
            },
            Expect::Declined(k, reason) => match message {
                Message::Declined(d)
                    if d.txn_id == k.map_or(0, |k| self.txn(k))
                        && reason.is_none_or(|r| r == d.reason) =>
                {
                    Ok(())
                }
                _ => wrong(),
            },
            Expect::Error(code, text) => match message {
                Message::Error(e)
                    if e.code == *code
                        && text
                            .is_none_or(|t| e.text.to_str().is_some_and(|got| got.contains(t))) =>
                {
                    Ok(())
                }
                _ => wrong(),
            },
            Expect::SameAs(step) => match self.answers.get(*step) {
                Some(Some((t, p))) if t == msg_type && p == payload => Ok(()),
                Some(Some((t, p))) => Err(format!(
                    "expected the bytes of step {}'s answer, {} {}, got {} {}",
                    step + 1,
                    t.name(),
                    hex(p),
                    msg_type.name(),
                    hex(payload)
                )),
                _ => Err(format!("step {} has no answer to compare", step + 1)),
            },
        }
    }

    fn expected(&self, expect: &Expect) -> String {
        match expect {
            Expect::Menu(k) => format!("CARD_MENU txn {}", self.txn(*k)),
            Expect::Approved(k) => format!("APPROVED txn {}", self.txn(*k)),
            Expect::ApprovedVoid(k) => {
                format!("APPROVED txn {} without uses_left", self.txn(*k))
            }
            Expect::Declined(k, reason) => format!(
                "DECLINED txn {} {}",
                k.map_or(0, |k| self.txn(k)),
                reason.map_or("(any reason)".to_string(), reason_name)
            ),
            Expect::SameAs(step) => format!("the bytes of step {}'s answer", step + 1),
            Expect::Error(code, text) => format!(
                "ERROR {}{}",
                code.name().unwrap_or("?"),
                text.map(|t| format!(" naming {t:?}")).unwrap_or_default()
            ),
            Expect::Anything => "an answer".into(),
            Expect::Nothing => "no answer".into(),
        }
    }
}

fn send_txn(send: &Request) -> Option<Txn> {
    match send {
        Request::Swipe(k, _) | Request::Redeem(k, _) | Request::Void(k, _) | Request::Query(k) => {
            Some(*k)
        }
        Request::QueryLast | Request::Raw(..) => None,
    }
}

fn describe(send: &Request) -> &'static str {
    match send {
        Request::Swipe(..) => "CARD_PRESENTED",
        Request::Redeem(..) => "REDEEM",
        Request::Void(..) => "VOID",
        Request::Query(_) => "QUERY",
        Request::QueryLast => "QUERY LAST",
        Request::Raw(..) => "a message as given",
    }
}

fn reason_name(reason: DeclineReason) -> String {
    reason
        .name()
        .map_or_else(|| format!("reason {}", reason.0), ToString::to_string)
}

fn summary(message: &Message<'_>) -> String {
    match message {
        Message::CardMenu(m) => format!("CARD_MENU txn {}", m.txn_id),
        Message::Approved(a) => format!(
            "APPROVED txn {} ({} uses_left entries)",
            a.txn_id,
            a.uses_left.len()
        ),
        Message::Declined(d) => format!("DECLINED txn {} {}", d.txn_id, reason_name(d.reason)),
        Message::Error(e) => format!(
            "ERROR {} {:?}",
            e.code.name().unwrap_or("?"),
            e.text.to_str().unwrap_or("")
        ),
        other => other.message_type().name().to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A REDEEM payload whose `identity_check` is 3 (out of range).
fn redeem_with_identity_check_3() -> Vec<u8> {
    // txn 1, one item (entry 0, quantity 1), identity_check 3, no identity data.
    vec![1, 0, 0, 0, 1, 0, 1, 0, 3, 0]
}

/// An ERROR as a reader sends it about something the daemon sent.
fn error_from_reader() -> Vec<u8> {
    let mut payload = vec![ErrorCode::UNEXPECTED_MESSAGE.0 as u8, 0, 0x40, 16];
    payload.extend_from_slice(b"menu not awaited");
    payload
}

/// Every flow, in the order of PROTOCOL.md §11.1.
pub fn flows() -> Vec<Flow> {
    use Expect as E;
    use Request as S;
    use Step::Ask;
    let reused = Some(DeclineReason::TXN_ID_REUSED);
    let one = |k: Txn| S::Redeem(k, vec![(Entry::Usable, 1)]);
    vec![
        Flow {
            section: "§8.2",
            rule: "a CARD_PRESENTED sent again gets its stored answer, byte-identical",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(S::Swipe(0, Card::Member), E::SameAs(0)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "a REDEEM sent again gets its stored APPROVED, and its CARD_PRESENTED sent again \
                   the menu of before the redemption",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(one(0), E::Approved(0)),
                Ask(one(0), E::SameAs(1)),
                Ask(S::Swipe(0, Card::Member), E::SameAs(0)),
                Ask(S::Void(1, Auth::Of(1)), E::Approved(1)),
                Ask(S::Void(1, Auth::Of(1)), E::SameAs(4)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "another REDEEM under an answered txn id is DECLINED TXN_ID_REUSED, deducts \
                   nothing, and QUERY still returns the first answer",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(one(0), E::Approved(0)),
                Ask(
                    S::Redeem(0, vec![(Entry::Usable, 2)]),
                    E::Declined(Some(0), reused),
                ),
                Ask(S::Query(0), E::SameAs(1)),
                Ask(S::Void(1, Auth::Of(1)), E::Approved(1)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "another REDEEM under a txn id whose REDEEM was declined is TXN_ID_REUSED, not \
                   decided afresh",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(
                    S::Redeem(0, vec![(Entry::Usable, 999)]),
                    E::Declined(Some(0), None),
                ),
                Ask(
                    S::Redeem(0, vec![(Entry::Usable, 998)]),
                    E::Declined(Some(0), reused),
                ),
                Ask(S::Query(0), E::SameAs(1)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "a VOID quoting another original under an answered VOID's txn id is \
                   TXN_ID_REUSED",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(one(0), E::Approved(0)),
                Ask(S::Void(1, Auth::Of(1)), E::Approved(1)),
                Ask(
                    S::Void(1, Auth::Unknown("00000099")),
                    E::Declined(Some(1), reused),
                ),
                Ask(S::Query(1), E::SameAs(2)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "another card under an answered CARD_PRESENTED's txn id is TXN_ID_REUSED",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(
                    S::Swipe(0, Card::Invalid("12345")),
                    E::Declined(Some(0), reused),
                ),
                Ask(S::Query(0), E::SameAs(0)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "a txn id belongs to one transaction: a VOID under a swipe's id, a swipe or a \
                   REDEEM under a void's id are TXN_ID_REUSED",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(
                    S::Void(0, Auth::Unknown("00000099")),
                    E::Declined(Some(0), reused),
                ),
                Ask(
                    S::Void(1, Auth::Unknown("00000099")),
                    E::Declined(Some(1), Some(DeclineReason::ORIGINAL_NOT_FOUND)),
                ),
                Ask(S::Swipe(1, Card::Member), E::Declined(Some(1), reused)),
                Ask(
                    S::Redeem(1, vec![(Entry::Index(0), 1)]),
                    E::Declined(Some(1), reused),
                ),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "answers to CARD_PRESENTED are stored: QUERY of a swipe gets its menu or its \
                   decline",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(
                    S::Swipe(1, Card::Invalid("12345")),
                    E::Declined(Some(1), Some(DeclineReason::BAD_CARD_NUMBER)),
                ),
                Ask(S::Query(0), E::SameAs(0)),
                Ask(S::Query(1), E::SameAs(1)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "a REDEEM without a swipe answered with a menu is DECLINED NO_CARD, and not \
                   stored",
            steps: vec![
                Ask(
                    S::Redeem(0, vec![(Entry::Index(0), 1)]),
                    E::Declined(Some(0), Some(DeclineReason::NO_CARD)),
                ),
                Ask(
                    S::Query(0),
                    E::Declined(Some(0), Some(DeclineReason::TXN_UNKNOWN)),
                ),
                Ask(
                    S::Swipe(1, Card::Invalid("12345")),
                    E::Declined(Some(1), Some(DeclineReason::BAD_CARD_NUMBER)),
                ),
                Ask(
                    S::Redeem(1, vec![(Entry::Index(0), 1)]),
                    E::Declined(Some(1), Some(DeclineReason::NO_CARD)),
                ),
                Ask(S::Query(1), E::SameAs(2)),
            ],
        },
        Flow {
            section: "§8.2",
            rule: "a txn id answered NO_CARD is unused: a CARD_PRESENTED under it is decided",
            steps: vec![
                Ask(
                    S::Redeem(0, vec![(Entry::Index(0), 1)]),
                    E::Declined(Some(0), Some(DeclineReason::NO_CARD)),
                ),
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(S::Query(0), E::SameAs(1)),
            ],
        },
        Flow {
            section: "§8.5",
            rule: "QUERY returns the stored answer of the transaction's latest request",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(S::Query(0), E::SameAs(0)),
                Ask(one(0), E::Approved(0)),
                Ask(S::Query(0), E::SameAs(2)),
                Ask(S::Void(1, Auth::Of(2)), E::Approved(1)),
                Ask(S::Query(1), E::SameAs(4)),
            ],
        },
        Flow {
            section: "§8.5",
            rule: "QUERY of a txn id without a stored answer is DECLINED TXN_UNKNOWN carrying that \
                   id",
            steps: vec![Ask(
                S::Query(0),
                E::Declined(Some(0), Some(DeclineReason::TXN_UNKNOWN)),
            )],
        },
        Flow {
            section: "§8.5",
            rule: "QUERY LAST returns the reader's latest stored transaction; refusals, replays \
                   and queries do not change it",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(S::QueryLast, E::SameAs(0)),
                Ask(one(0), E::Approved(0)),
                Ask(S::QueryLast, E::SameAs(2)),
                Ask(
                    S::Redeem(0, vec![(Entry::Usable, 2)]),
                    E::Declined(Some(0), reused),
                ),
                Ask(one(0), E::SameAs(2)),
                Ask(
                    S::Query(2),
                    E::Declined(Some(2), Some(DeclineReason::TXN_UNKNOWN)),
                ),
                Ask(S::QueryLast, E::SameAs(2)),
                Ask(S::Void(1, Auth::Of(2)), E::Approved(1)),
                Ask(S::QueryLast, E::SameAs(8)),
            ],
        },
        Flow {
            section: "§8.5",
            rule: "after a reboot, QUERY LAST and QUERY of the txn id get the stored answer",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Step::Reboot,
                Ask(S::QueryLast, E::SameAs(0)),
                Ask(S::Query(0), E::SameAs(0)),
            ],
        },
        Flow {
            section: "§4.12",
            rule: "an ERROR from the reader is never answered, and the link stays up",
            steps: vec![
                Ask(
                    S::Raw(MessageType::Error.as_u8(), error_from_reader()),
                    E::Nothing,
                ),
                Ask(S::QueryLast, E::Anything),
            ],
        },
        Flow {
            section: "§4.12",
            rule: "a field out of range is answered ERROR MALFORMED_MESSAGE naming the field as \
                   §5 does",
            steps: vec![Ask(
                S::Raw(MessageType::Redeem.as_u8(), redeem_with_identity_check_3()),
                E::Error(
                    ErrorCode::MALFORMED_MESSAGE,
                    Some("REDEEM.identity_check: value 3 out of range"),
                ),
            )],
        },
        Flow {
            section: "§4.12",
            rule: "a type the daemon never receives is answered ERROR UNEXPECTED_MESSAGE",
            steps: vec![Ask(
                S::Raw(MessageType::Display.as_u8(), vec![0, 0, 0, 0, 1, b'x']),
                E::Error(ErrorCode::UNEXPECTED_MESSAGE, None),
            )],
        },
        Flow {
            section: "§5.12",
            rule: "a VOID's APPROVED carries no uses_left",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(one(0), E::Approved(0)),
                Ask(S::Void(1, Auth::Of(1)), E::ApprovedVoid(1)),
            ],
        },
        Flow {
            section: "§5.14",
            rule: "a VOID quoting a VOID's auth code is DECLINED ORIGINAL_NOT_FOUND",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(one(0), E::Approved(0)),
                Ask(S::Void(1, Auth::Of(1)), E::Approved(1)),
                Ask(
                    S::Void(2, Auth::Of(2)),
                    E::Declined(Some(2), Some(DeclineReason::ORIGINAL_NOT_FOUND)),
                ),
            ],
        },
        Flow {
            section: "§7.1",
            rule: "BAD_QUANTITY: more than 999 uses of one entry in one REDEEM",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Ask(
                    S::Redeem(0, vec![(Entry::Usable, 600), (Entry::Usable, 600)]),
                    E::Declined(Some(0), Some(DeclineReason::BAD_QUANTITY)),
                ),
            ],
        },
        Flow {
            section: "§7.1",
            rule: "BAD_CARD_NUMBER: a card that is not 12 to 19 digits",
            steps: vec![
                Ask(
                    S::Swipe(0, Card::Invalid("12345")),
                    E::Declined(Some(0), Some(DeclineReason::BAD_CARD_NUMBER)),
                ),
                Ask(
                    S::Swipe(1, Card::Invalid("6228ABCD0000000000")),
                    E::Declined(Some(1), Some(DeclineReason::BAD_CARD_NUMBER)),
                ),
            ],
        },
        Flow {
            section: "§4.4",
            rule: "while the daemon's store is busy, a request is acknowledged at once: no \
                   retransmission, the link stays up, the answer follows",
            steps: vec![Step::AskWhileBusy {
                request: S::Swipe(0, Card::Member),
                expect: E::Menu(0),
                display: false,
            }],
        },
        Flow {
            section: "§5.16",
            rule: "a request not answered T_DISPLAY after its delivery gets one DISPLAY for its \
                   transaction, then its answer",
            steps: vec![
                Ask(S::Swipe(0, Card::Member), E::Menu(0)),
                Step::AskWhileBusy {
                    request: one(0),
                    expect: E::Approved(0),
                    display: true,
                },
                Ask(S::Void(1, Auth::Of(1)), E::Approved(1)),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_raw_payloads_are_what_their_flows_say() {
        let e =
            Message::parse(0x21, &redeem_with_identity_check_3(), TextEncoding::Utf8).unwrap_err();
        assert_eq!(e.to_string(), "REDEEM.identity_check: value 3 out of range");
        let error = error_from_reader();
        let Message::Error(e) = Message::parse(0x60, &error, TextEncoding::Utf8).unwrap() else {
            panic!()
        };
        assert_eq!(e.offending_type, 0x40);
    }

    #[test]
    fn every_flow_hands_out_its_requests_and_every_txn_id_is_new() {
        let mut first = 10;
        for flow in flows() {
            let mut run = FlowRun::new(&flow, first, "6228487314159271829", TextEncoding::Utf8);
            assert!(run.next_free_txn() >= first, "{}", flow.rule);
            // The first request can always be built (later ones may need earlier answers).
            assert!(run.next_action().unwrap().is_some(), "{}", flow.rule);
            first = run.next_free_txn();
        }
    }

    #[test]
    fn protocol_md_lists_every_flow_in_order() {
        let spec = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md"),
        )
        .unwrap();
        let table = spec
            .split("### 11.1 Conformance flows")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap();
        let listed: Vec<String> = table
            .lines()
            .filter(|l| l.starts_with("| §"))
            .map(ToString::to_string)
            .collect();
        let flows: Vec<String> = flows()
            .iter()
            .map(|f| format!("| {} | {} |", f.section, f.rule))
            .collect();
        assert_eq!(
            listed, flows,
            "PROTOCOL.md §11.1 and conformance::flows() differ"
        );
    }

    fn emitted(message: &Message<'_>) -> (MessageType, Vec<u8>) {
        let mut buf = vec![0u8; 512];
        let n = message.emit(&mut buf).unwrap();
        buf.truncate(n);
        (message.message_type(), buf)
    }

    #[test]
    fn a_step_while_the_store_is_busy_is_judged_on_its_ack_and_its_display() {
        let flows = flows();
        let flow = flows.iter().find(|f| f.section == "§5.16").unwrap();
        assert!(flow.needs_busy_store());
        let menu = emitted(&Message::CardMenu(crate::message::CardMenu {
            txn_id: 7,
            holder_name: crate::message::Text::from_utf8(""),
            masked_card: "",
            entries: List::new(&[crate::message::MenuEntry {
                index: 0,
                title: crate::message::Text::from_utf8("wash"),
                uses_left: 5,
                expiry: None,
                identity: IdentityCheck::None,
            }]),
        }));
        let approved = emitted(&Message::Approved(crate::message::Approved {
            txn_id: 7,
            auth_code: "A1",
            journal_ref: "J1",
            uses_left: List::new(&[]),
            receipt: List::new(&[]),
        }));
        let display = |txn_id| {
            emitted(&Message::Display(crate::message::Display {
                txn_id,
                text: crate::message::Text::from_utf8("please wait"),
            }))
            .1
        };
        let cases: [(Observed, Option<&str>); 5] = [
            (
                Observed {
                    answer: Some(approved.clone()),
                    displays: vec![(1_020, display(7))],
                    retransmissions: 0,
                },
                None,
            ),
            (
                Observed {
                    answer: Some(approved.clone()),
                    displays: vec![(1_020, display(7))],
                    retransmissions: 2,
                },
                Some("not acknowledged within T_ACK"),
            ),
            (
                Observed {
                    answer: Some(approved.clone()),
                    displays: vec![],
                    retransmissions: 0,
                },
                Some("expected one DISPLAY for txn 7 before the answer, got 0"),
            ),
            (
                Observed {
                    answer: Some(approved.clone()),
                    displays: vec![(400, display(7))],
                    retransmissions: 0,
                },
                Some("before T_DISPLAY"),
            ),
            (
                Observed {
                    answer: Some(approved.clone()),
                    displays: vec![(1_020, display(8))],
                    retransmissions: 0,
                },
                Some("DISPLAY for txn 8, not 7"),
            ),
        ];
        for (seen, problem) in cases {
            let mut run = FlowRun::new(flow, 7, "6228487314159271829", TextEncoding::Utf8);
            run.next_action().unwrap();
            run.answer(Some(menu.clone())).unwrap();
            let Some(Action::Send { busy_store_ms, .. }) = run.next_action().unwrap() else {
                panic!()
            };
            assert_eq!(busy_store_ms, Some(BUSY_STORE_MS));
            match (run.answer_observed(seen), problem) {
                (Ok(()), None) => {}
                (Err(e), Some(p)) => assert!(e.contains(p), "{e}"),
                (got, want) => panic!("{got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn a_wrong_answer_fails_naming_the_step_and_what_came() {
        let flows = flows();
        let flow = &flows[0];
        let mut run = FlowRun::new(flow, 5, "6228487314159271829", TextEncoding::Utf8);
        run.next_action().unwrap();
        let mut declined = vec![0u8; 64];
        let n = Message::Declined(crate::message::Declined {
            txn_id: 5,
            reason: DeclineReason::CARD_UNKNOWN,
            text: crate::message::Text::from_utf8(""),
        })
        .emit(&mut declined)
        .unwrap();
        declined.truncate(n);
        let e = run
            .answer(Some((MessageType::Declined, declined)))
            .unwrap_err();
        assert_eq!(
            e,
            "step 1 (CARD_PRESENTED): expected CARD_MENU txn 5, got DECLINED txn 5 CARD_UNKNOWN"
        );
    }
}
