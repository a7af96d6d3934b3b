//! Scenario files: a line-based script a technician can read and write, run against a daemon by
//! a [`SimReader`], printing what the reader screen shows. Reference: `docs/simulator.md`.
//!
//! ```text
//! # comment                     (also after a step)
//! swipe 6222020000000001 cashier=c01 mode=chip
//! expect menu entries=2
//! redeem 0x1 1x2 phone=6688      # entry 0 once, entry 1 twice, phone last four
//! expect approved
//! expect receipt contains "洗车"
//! redeem-again
//! expect same-reply
//! ```

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use firmware_protocol::{DeclineReason, EntryMode, IdentityCheck, VoidReason};

use super::SimError;
use super::reader::{
    SimReader, decline_reason_from_str, entry_mode_from_str, identity, void_reason_from_str,
};
use super::screen::{Answer, Reply, decline_name, mask_card, render};

/// Longest quantity a REDEEM line may ask (PROTOCOL.md §5.11).
const MAX_QUANTITY: u16 = 999;

/// Which QUERY to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryTarget {
    /// QUERY LAST (wire txn id 0).
    Last,
    /// The txn id of the last swipe.
    Current,
    /// An explicit txn id.
    Txn(u32),
}

/// Which authorization code a void quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoidTarget {
    /// The auth code of the last approved REDEEM.
    Last,
    /// An explicit code.
    Code(String),
}

/// What an `expect` checks about the latest answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// CARD_MENU, optionally with this many entries.
    Menu {
        /// Number of entries, if given.
        entries: Option<usize>,
    },
    /// APPROVED.
    Approved,
    /// DECLINED, optionally with this reason.
    Declined {
        /// Reason, if given.
        reason: Option<DeclineReason>,
    },
    /// A receipt line of the APPROVED contains the text.
    ReceiptContains(String),
    /// The DECLINED text, a menu title or holder, or a DISPLAY contains the text.
    ScreenContains(String),
    /// The entry has this many uses left (APPROVED's list, or the menu's line).
    UsesLeft {
        /// Entry index.
        entry: u8,
        /// Uses left.
        left: u16,
    },
    /// The latest answer is byte-identical to the one before it.
    SameReply,
}

impl std::fmt::Display for Expectation {
    /// In scenario syntax, for the transcript.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expectation::Menu { entries: None } => write!(f, "menu"),
            Expectation::Menu { entries: Some(n) } => write!(f, "menu entries={n}"),
            Expectation::Approved => write!(f, "approved"),
            Expectation::Declined { reason: None } => write!(f, "declined"),
            Expectation::Declined { reason: Some(r) } => {
                write!(f, "declined reason={}", decline_name(*r))
            }
            Expectation::ReceiptContains(t) => write!(f, "receipt contains {t:?}"),
            Expectation::ScreenContains(t) => write!(f, "screen contains {t:?}"),
            Expectation::UsesLeft { entry, left } => write!(f, "uses-left {entry}={left}"),
            Expectation::SameReply => write!(f, "same-reply"),
        }
    }
}

/// One step of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// CARD_PRESENTED.
    Swipe {
        /// Card number or token.
        card: String,
        /// Operator id.
        cashier: String,
        /// How it was read.
        mode: EntryMode,
    },
    /// REDEEM of the last swipe.
    Redeem {
        /// `(entry index, quantity)`.
        items: Vec<(u8, u16)>,
        /// Identity confirmation typed.
        identity: Option<(IdentityCheck, String)>,
    },
    /// The last REDEEM again, same bytes.
    RedeemAgain,
    /// VOID.
    Void {
        /// What to void.
        target: VoidTarget,
        /// Why.
        reason: VoidReason,
    },
    /// QUERY.
    Query(QueryTarget),
    /// Check the latest answer.
    Expect(Expectation),
    /// Bytes of line noise (pseudo-random, seeded by the count: deterministic).
    Noise(usize),
    /// Half a frame, then that many bytes of noise.
    TornFrame(usize),
    /// Power-cycle the reader.
    Reboot,
    /// Pull the cable (pty).
    Unplug,
    /// Plug it in again (new pty, symlink re-pointed).
    Replug,
    /// Keep the link alive for a while.
    Sleep(Duration),
    /// Wait for the link (after replug, at start).
    WaitLink(Duration),
    /// Seed the txn counter.
    SetTxn(u32),
}

/// A parsed scenario: steps with their 1-based line numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// File name used in messages.
    pub name: String,
    /// `(line, step)`.
    pub steps: Vec<(usize, Step)>,
}

fn script_error(name: &str, line: usize, problem: impl Into<String>) -> SimError {
    SimError::Script {
        location: format!("{name}:{line}"),
        problem: problem.into(),
    }
}

/// Splits a line into words; `"..."` quotes (with `\"` and `\\`), `#` starts a comment outside
/// quotes.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => return Ok(words),
            Some('"') => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated quoted text".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => return Err(format!("unknown escape \\{c} in quoted text")),
                            None => return Err("unterminated quoted text".into()),
                        },
                        Some(c) => word.push(c),
                    }
                }
                words.push(word);
            }
            Some(_) => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '#' {
                        break;
                    }
                    if c == '"' {
                        return Err("a quote must start a word".into());
                    }
                    word.push(c);
                    chars.next();
                }
                words.push(word);
            }
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |at| s.split_at(at));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration {s:?}: expected e.g. 500ms or 2s"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return Err(format!("duration {s:?}: unit must be ms or s")),
    };
    if d > Duration::from_secs(3600) {
        return Err(format!("duration {s:?}: at most one hour"));
    }
    Ok(d)
}

fn parse_item(s: &str) -> Result<(u8, u16), String> {
    let (entry, qty) = s.split_once('x').unwrap_or((s, "1"));
    let entry: u8 = entry.parse().map_err(|_| {
        format!("item {s:?}: entry index must be 0..=255 (write ENTRYxQTY, e.g. 1x2)")
    })?;
    let qty: u16 = qty
        .parse()
        .ok()
        .filter(|q| (1..=MAX_QUANTITY).contains(q))
        .ok_or_else(|| format!("item {s:?}: quantity must be 1..={MAX_QUANTITY}"))?;
    Ok((entry, qty))
}

/// `key=value` options after the positional words; every key must be known.
fn options<'a>(words: &'a [String], known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    words
        .iter()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("unexpected word {w:?} (options are key=value)"))?;
            if known.contains(&k) {
                Ok((k, v))
            } else {
                Err(format!(
                    "unknown option {k:?} (known: {})",
                    known.join(", ")
                ))
            }
        })
        .collect()
}

fn exactly<'a>(words: &'a [String], n: usize, usage: &str) -> Result<&'a [String], String> {
    if words.len() == n {
        Ok(words)
    } else {
        Err(format!("usage: {usage}"))
    }
}

fn parse_expect(words: &[String]) -> Result<Expectation, String> {
    let usage = "expect menu [entries=N] | approved | declined [reason=NAME] | receipt contains \"TEXT\" | screen contains \"TEXT\" | uses-left ENTRY=N | same-reply";
    let Some((what, rest)) = words.split_first() else {
        return Err(format!("usage: {usage}"));
    };
    Ok(match what.as_str() {
        "menu" => {
            let mut entries = None;
            for (_, v) in options(rest, &["entries"])? {
                entries = Some(
                    v.parse()
                        .map_err(|_| format!("entries={v:?}: not a count"))?,
                );
            }
            Expectation::Menu { entries }
        }
        "approved" => {
            exactly(rest, 0, "expect approved")?;
            Expectation::Approved
        }
        "declined" => {
            let mut reason = None;
            for (_, v) in options(rest, &["reason"])? {
                reason =
                    Some(decline_reason_from_str(v).ok_or_else(|| {
                        format!("reason={v:?}: not a decline reason name or code")
                    })?);
            }
            Expectation::Declined { reason }
        }
        "receipt" | "screen" => {
            let rest = exactly(rest, 2, &format!("expect {what} contains \"TEXT\""))?;
            if rest.first().map(String::as_str) != Some("contains") {
                return Err(format!("usage: expect {what} contains \"TEXT\""));
            }
            let text = rest.get(1).cloned().unwrap_or_default();
            if what == "receipt" {
                Expectation::ReceiptContains(text)
            } else {
                Expectation::ScreenContains(text)
            }
        }
        "uses-left" => {
            let rest = exactly(rest, 1, "expect uses-left ENTRY=N")?;
            let word = rest.first().map(String::as_str).unwrap_or_default();
            let (e, n) = word
                .split_once('=')
                .ok_or("usage: expect uses-left ENTRY=N")?;
            Expectation::UsesLeft {
                entry: e.parse().map_err(|_| format!("entry {e:?}: not 0..=255"))?,
                left: n
                    .parse()
                    .map_err(|_| format!("uses left {n:?}: not 0..=65535"))?,
            }
        }
        "same-reply" => {
            exactly(rest, 0, "expect same-reply")?;
            Expectation::SameReply
        }
        other => return Err(format!("unknown expectation {other:?}; {usage}")),
    })
}

/// Parses one line: `Ok(None)` for a blank or comment line.
pub fn parse_step(line: &str) -> Result<Option<Step>, String> {
    let words = tokenize(line)?;
    let Some((verb, rest)) = words.split_first() else {
        return Ok(None);
    };
    let step = match verb.as_str() {
        "swipe" => {
            let (card, opts) = rest.split_first().ok_or(
                "usage: swipe CARD [cashier=ID] [mode=magstripe|chip|contactless|manual|qr]",
            )?;
            if card.contains('=') || card.is_empty() || card.len() > 64 {
                return Err(format!("swipe: {card:?} is not a card number"));
            }
            let mut cashier = String::new();
            let mut mode = EntryMode::Magstripe;
            for (k, v) in options(opts, &["cashier", "mode"])? {
                match k {
                    "cashier" => cashier = v.to_owned(),
                    _ => {
                        mode = entry_mode_from_str(v).ok_or_else(|| {
                            format!("mode={v:?}: one of magstripe, chip, contactless, manual, qr")
                        })?;
                    }
                }
            }
            Step::Swipe {
                card: card.clone(),
                cashier,
                mode,
            }
        }
        "redeem" => {
            let mut items = Vec::new();
            let mut identity = None;
            for word in rest {
                if let Some((k, v)) = word.split_once('=') {
                    let check = match k {
                        "phone" => IdentityCheck::PhoneLast4,
                        "pin" => IdentityCheck::Pin,
                        _ => return Err(format!("unknown option {k:?} (known: phone, pin)")),
                    };
                    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(format!("{k}={v:?}: 1 to 12 digits"));
                    }
                    identity = Some((check, v.to_owned()));
                } else {
                    items.push(parse_item(word)?);
                }
            }
            if items.is_empty() || items.len() > 16 {
                return Err(
                    "usage: redeem ENTRYxQTY... (1 to 16 items) [phone=DIGITS|pin=DIGITS]".into(),
                );
            }
            Step::Redeem { items, identity }
        }
        "redeem-again" => {
            exactly(rest, 0, "redeem-again")?;
            Step::RedeemAgain
        }
        "void" => {
            let (target, opts) = rest.split_first().ok_or(
                "usage: void last|AUTH_CODE [reason=cashier-error|customer-request|other]",
            )?;
            let target = if target == "last" {
                VoidTarget::Last
            } else if target.contains('=') || target.len() > 16 {
                return Err(format!("void: {target:?} is not an authorization code"));
            } else {
                VoidTarget::Code(target.clone())
            };
            let mut reason = VoidReason::CashierError;
            for (_, v) in options(opts, &["reason"])? {
                reason = void_reason_from_str(v).ok_or_else(|| {
                    format!("reason={v:?}: one of cashier-error, customer-request, other")
                })?;
            }
            Step::Void { target, reason }
        }
        "query" => {
            let rest = exactly(rest, 1, "query last|current|TXN_ID")?;
            let target = rest.first().map(String::as_str).unwrap_or_default();
            Step::Query(match target {
                "last" => QueryTarget::Last,
                "current" => QueryTarget::Current,
                id => QueryTarget::Txn(id.parse().ok().filter(|&n| n != 0).ok_or_else(|| {
                    format!("query: {id:?} is not last, current or a txn id ≥ 1")
                })?),
            })
        }
        "expect" => Step::Expect(parse_expect(rest)?),
        "noise" | "torn-frame" => {
            let rest = exactly(rest, 1, &format!("{verb} BYTES"))?;
            let n: usize = rest
                .first()
                .and_then(|w| w.parse().ok())
                .filter(|&n| n <= 65_536)
                .ok_or_else(|| format!("{verb}: byte count 0..=65536"))?;
            if verb == "noise" {
                Step::Noise(n)
            } else {
                Step::TornFrame(n)
            }
        }
        "reboot" | "unplug" | "replug" => {
            exactly(rest, 0, verb)?;
            match verb.as_str() {
                "reboot" => Step::Reboot,
                "unplug" => Step::Unplug,
                _ => Step::Replug,
            }
        }
        "sleep" | "wait-link" => {
            let rest = exactly(rest, 1, &format!("{verb} DURATION (e.g. 500ms, 2s)"))?;
            let d = parse_duration(rest.first().map(String::as_str).unwrap_or_default())?;
            if verb == "sleep" {
                Step::Sleep(d)
            } else {
                Step::WaitLink(d)
            }
        }
        "txn" => {
            let rest = exactly(rest, 1, "txn NEXT_ID")?;
            Step::SetTxn(
                rest.first()
                    .and_then(|w| w.parse().ok())
                    .filter(|&n| n != 0)
                    .ok_or("txn: the next txn id, 1..=4294967295")?,
            )
        }
        other => return Err(format!("unknown step {other:?}")),
    };
    Ok(Some(step))
}

/// Parses a whole scenario; the first bad line is the error (`name:line: problem`).
pub fn parse(name: &str, text: &str) -> Result<Scenario, SimError> {
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_step(line) {
            Ok(Some(step)) => steps.push((i + 1, step)),
            Ok(None) => {}
            Err(problem) => return Err(script_error(name, i + 1, problem)),
        }
    }
    Ok(Scenario {
        name: name.to_owned(),
        steps,
    })
}

/// Deterministic line noise: `n` bytes from a xorshift generator seeded by `n`, `0x00` included
/// (so some of it ends a bogus frame).
pub fn noise(n: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect()
}

/// Runs steps against a reader and keeps what `expect` needs: the answers so far and the last
/// approved REDEEM's auth code.
#[derive(Debug)]
pub struct Runner {
    replies: Vec<Reply>,
    last_auth: Option<String>,
    /// Timeout for link waits (reboot, replug).
    pub link_timeout: Duration,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            replies: Vec::new(),
            last_auth: None,
            link_timeout: Duration::from_secs(10),
        }
    }
}

impl Runner {
    /// A runner with no history.
    pub fn new() -> Runner {
        Runner::default()
    }

    /// Answers received so far, oldest first.
    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// Runs every step; the transcript goes to `out`. Stops at the first failure, naming the line.
    pub async fn run(
        &mut self,
        reader: &mut SimReader,
        scenario: &Scenario,
        out: &mut dyn Write,
    ) -> Result<(), SimError> {
        for (line, step) in &scenario.steps {
            let location = format!("{}:{line}", scenario.name);
            self.run_step(reader, step, &location, out).await?;
        }
        Ok(())
    }

    /// Runs one step, `location` naming it in errors (`file:line`, or `stdin` interactively).
    pub async fn run_step(
        &mut self,
        reader: &mut SimReader,
        step: &Step,
        location: &str,
        out: &mut dyn Write,
    ) -> Result<(), SimError> {
        let at = |e: SimError| SimError::At {
            location: location.to_owned(),
            source: Box::new(e),
        };
        let mut text = String::new();
        let reply = match step {
            Step::Swipe {
                card,
                cashier,
                mode,
            } => {
                let _ = writeln!(
                    text,
                    "> swipe {} cashier={cashier:?} {mode:?}",
                    mask_card(card)
                );
                reader.swipe(card, *mode, cashier).await.map_err(at)?;
                reader.last_reply().cloned()
            }
            Step::Redeem {
                items,
                identity: id,
            } => {
                let list: Vec<String> = items.iter().map(|(e, q)| format!("{e}x{q}")).collect();
                let _ = writeln!(
                    text,
                    "> redeem {}{}",
                    list.join(" "),
                    if id.is_some() {
                        " (identity entered)"
                    } else {
                        ""
                    }
                );
                let identity = id.as_ref().map(|(check, digits)| identity(*check, digits));
                reader.redeem(items, identity).await.map_err(at)?;
                let reply = reader.last_reply().cloned();
                if let Some(Reply {
                    answer: Answer::Approved(a),
                    ..
                }) = &reply
                {
                    self.last_auth = Some(a.auth_code.clone());
                }
                reply
            }
            Step::RedeemAgain => {
                let _ = writeln!(text, "> redeem-again (same REDEEM, same txn id)");
                Some(reader.redeem_again().await.map_err(at)?)
            }
            Step::Void { target, reason } => {
                let code = match target {
                    VoidTarget::Code(c) => c.clone(),
                    VoidTarget::Last => self.last_auth.clone().ok_or_else(|| SimError::Script {
                        location: location.to_owned(),
                        problem: "void last: no approved redemption yet".into(),
                    })?,
                };
                let _ = writeln!(text, "> void {code} {reason:?}");
                reader.void(&code, *reason).await.map_err(at)?;
                reader.last_reply().cloned()
            }
            Step::Query(target) => {
                let _ = writeln!(text, "> query {target:?}");
                Some(
                    match target {
                        QueryTarget::Last => reader.query_last().await,
                        QueryTarget::Current => match reader.card_txn() {
                            Some(id) => reader.query(id).await,
                            None => Err(SimError::NoCard),
                        },
                        QueryTarget::Txn(id) => reader.query(*id).await,
                    }
                    .map_err(at)?,
                )
            }
            Step::Expect(expectation) => {
                self.check(expectation)
                    .map_err(|(expected, got)| SimError::ExpectationFailed {
                        location: location.to_owned(),
                        expected,
                        got,
                    })?;
                let _ = writeln!(text, "  ok: expect {expectation}");
                None
            }
            Step::Noise(n) => {
                let _ = writeln!(text, "> noise: {n} bytes");
                reader.inject_noise(&noise(*n)).await.map_err(at)?;
                None
            }
            Step::TornFrame(n) => {
                let _ = writeln!(text, "> half a frame, then {n} bytes of noise");
                reader.inject_torn_frame(&noise(*n)).await.map_err(at)?;
                None
            }
            Step::Reboot => {
                let _ = writeln!(text, "> reboot");
                reader.reboot(self.link_timeout).await.map_err(at)?;
                let _ = writeln!(
                    text,
                    "  link up again, boot nonce {:016x}",
                    reader.boot_nonce()
                );
                None
            }
            Step::Unplug => {
                let _ = writeln!(text, "> unplug");
                reader.unplug().map_err(at)?;
                None
            }
            Step::Replug => {
                reader.replug().map_err(at)?;
                let _ = writeln!(
                    text,
                    "> replug: now {}",
                    reader.line().slave_path().display()
                );
                None
            }
            Step::Sleep(d) => {
                let _ = writeln!(text, "> sleep {d:?}");
                reader.idle(*d).await.map_err(at)?;
                None
            }
            Step::WaitLink(d) => {
                let _ = writeln!(text, "> wait-link {d:?}");
                reader.wait_link_up(*d).await.map_err(at)?;
                None
            }
            Step::SetTxn(id) => {
                let _ = writeln!(text, "> txn {id}");
                reader.set_next_txn_id(*id).map_err(at)?;
                None
            }
        };
        for note in reader.take_notes() {
            let _ = writeln!(text, "  note: {note}");
        }
        if let Some(reply) = reply {
            text.push_str(&render(&reply));
            self.replies.push(reply);
        }
        out.write_all(text.as_bytes()).map_err(|e| SimError::Io {
            doing: "writing the transcript".into(),
            source: e,
        })
    }

    /// `Err((expected, got))` when the latest answer does not meet `expectation`.
    fn check(&self, expectation: &Expectation) -> Result<(), (String, String)> {
        let latest = self.replies.last();
        let got = latest.map_or_else(|| "no answer yet".to_owned(), summary);
        let fail = |expected: String| Err((expected, got.clone()));
        let Some(latest) = latest else {
            return fail(expectation.to_string());
        };
        match expectation {
            Expectation::Menu { entries } => match &latest.answer {
                Answer::Menu(m) if entries.is_none_or(|n| n == m.entries.len()) => Ok(()),
                _ => fail(match entries {
                    Some(n) => format!("a menu with {n} entries"),
                    None => "a menu".into(),
                }),
            },
            Expectation::Approved => match latest.answer {
                Answer::Approved(_) => Ok(()),
                _ => fail("APPROVED".into()),
            },
            Expectation::Declined { reason } => match &latest.answer {
                Answer::Declined(d) if reason.is_none_or(|r| r == d.reason) => Ok(()),
                _ => fail(match reason {
                    Some(r) => format!("DECLINED {}", decline_name(*r)),
                    None => "DECLINED".into(),
                }),
            },
            Expectation::ReceiptContains(needle) => match &latest.answer {
                Answer::Approved(a) if a.receipt.iter().any(|l| l.contains(needle.as_str())) => {
                    Ok(())
                }
                Answer::Approved(a) => Err((
                    format!("a receipt line containing {needle:?}"),
                    format!("receipt {:?}", a.receipt),
                )),
                _ => fail(format!("an APPROVED receipt containing {needle:?}")),
            },
            Expectation::ScreenContains(needle) => {
                let mut screen = latest.displays.clone();
                match &latest.answer {
                    Answer::Declined(d) => screen.push(d.text.clone()),
                    Answer::Menu(m) => {
                        screen.push(m.holder.clone());
                        screen.extend(m.entries.iter().map(|e| e.title.clone()));
                    }
                    Answer::Approved(a) => screen.extend(a.receipt.iter().cloned()),
                }
                if screen.iter().any(|l| l.contains(needle.as_str())) {
                    Ok(())
                } else {
                    Err((
                        format!("screen text containing {needle:?}"),
                        format!("{screen:?}"),
                    ))
                }
            }
            Expectation::UsesLeft { entry, left } => {
                let actual = match &latest.answer {
                    Answer::Approved(a) => a
                        .uses_left
                        .iter()
                        .find(|(i, _)| i == entry)
                        .map(|&(_, n)| n),
                    Answer::Menu(m) => m
                        .entries
                        .iter()
                        .find(|e| e.index == *entry)
                        .map(|e| e.uses_left),
                    Answer::Declined(_) => None,
                };
                match actual {
                    Some(n) if n == *left => Ok(()),
                    Some(n) => Err((
                        format!("entry {entry}: {left} uses left"),
                        format!("entry {entry}: {n} uses left"),
                    )),
                    None => fail(format!("entry {entry}: {left} uses left")),
                }
            }
            Expectation::SameReply => {
                let Some(previous) = self
                    .replies
                    .len()
                    .checked_sub(2)
                    .and_then(|i| self.replies.get(i))
                else {
                    return fail("two answers to compare".into());
                };
                if latest.same_bytes(previous) {
                    Ok(())
                } else {
                    Err((
                        format!(
                            "the same bytes as the answer before: {} {}",
                            previous.msg_type.name(),
                            hex::encode(&previous.payload)
                        ),
                        format!(
                            "{} {}",
                            latest.msg_type.name(),
                            hex::encode(&latest.payload)
                        ),
                    ))
                }
            }
        }
    }
}

fn summary(reply: &Reply) -> String {
    match &reply.answer {
        Answer::Menu(m) => format!("a menu with {} entries (txn {})", m.entries.len(), m.txn_id),
        Answer::Approved(a) => format!("APPROVED auth {} (txn {})", a.auth_code, a.txn_id),
        Answer::Declined(d) => format!(
            "DECLINED {}: {} (txn {})",
            decline_name(d.reason),
            d.text,
            d.txn_id
        ),
    }
}
