//! What the reader shows: answers decoded from the link's text encoding into owned values, and
//! their rendering as the lines a reader screen and printer would show.

use std::fmt::Write as _;

use firmware_protocol::{Date, DeclineReason, IdentityCheck, Message, MessageType, TextEncoding};

use super::SimError;

/// One usable entitlement of a menu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MenuLine {
    /// Index REDEEM quotes.
    pub index: u8,
    /// Item title.
    pub title: String,
    /// Uses left.
    pub uses_left: u16,
    /// Last valid day.
    pub expiry: Option<Date>,
    /// Identity confirmation needed to redeem it.
    pub identity: IdentityCheck,
}

/// CARD_MENU, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Menu {
    /// The swipe's txn id.
    pub txn_id: u32,
    /// Holder display name (empty for anonymous cards).
    pub holder: String,
    /// Card number as the daemon masked it.
    pub masked_card: String,
    /// Usable entitlements.
    pub entries: Vec<MenuLine>,
}

/// DECLINED, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decline {
    /// The request's txn id.
    pub txn_id: u32,
    /// Reason code (open set).
    pub reason: DeclineReason,
    /// Text to display.
    pub text: String,
}

/// APPROVED, decoded, with the raw payload (to compare stored answers byte for byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// The request's txn id.
    pub txn_id: u32,
    /// Authorization code (VOID quotes it).
    pub auth_code: String,
    /// The daemon's journal reference.
    pub journal_ref: String,
    /// `(entry index, uses left)` after the operation.
    pub uses_left: Vec<(u8, u16)>,
    /// Receipt lines, in order.
    pub receipt: Vec<String>,
    /// The APPROVED payload as received.
    pub payload: Vec<u8>,
}

/// Any answer to a reader request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// CARD_MENU.
    Menu(Menu),
    /// APPROVED.
    Approved(Approval),
    /// DECLINED.
    Declined(Decline),
}

impl Answer {
    /// The txn id the answer carries.
    pub fn txn_id(&self) -> u32 {
        match self {
            Answer::Menu(m) => m.txn_id,
            Answer::Approved(a) => a.txn_id,
            Answer::Declined(d) => d.txn_id,
        }
    }
}

/// An answer as received: type, raw payload, decoded form, and the DISPLAY texts before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// CARD_MENU, APPROVED or DECLINED.
    pub msg_type: MessageType,
    /// The payload, byte for byte.
    pub payload: Vec<u8>,
    /// Decoded.
    pub answer: Answer,
    /// DISPLAY texts received while waiting.
    pub displays: Vec<String>,
    /// Whether it came through a QUERY after the link dropped mid-request.
    pub recovered: bool,
}

impl Reply {
    /// Same message type and same payload bytes.
    pub fn same_bytes(&self, other: &Reply) -> bool {
        self.msg_type == other.msg_type && self.payload == other.payload
    }
}

pub use crate::conversation::render::decode_text;

/// Decodes CARD_MENU, APPROVED or DECLINED parsed from `payload`.
pub fn decode_answer(
    message: &Message<'_>,
    payload: &[u8],
    encoding: TextEncoding,
) -> Result<Answer, SimError> {
    Ok(match message {
        Message::CardMenu(m) => Answer::Menu(Menu {
            txn_id: m.txn_id,
            holder: decode_text(m.holder_name.as_bytes(), encoding),
            masked_card: m.masked_card.to_owned(),
            entries: m
                .entries
                .iter()
                .map(|e| MenuLine {
                    index: e.index,
                    title: decode_text(e.title.as_bytes(), encoding),
                    uses_left: e.uses_left,
                    expiry: e.expiry,
                    identity: e.identity,
                })
                .collect(),
        }),
        Message::Approved(a) => Answer::Approved(Approval {
            txn_id: a.txn_id,
            auth_code: a.auth_code.to_owned(),
            journal_ref: a.journal_ref.to_owned(),
            uses_left: a
                .uses_left
                .iter()
                .map(|u| (u.entry_index, u.uses_left))
                .collect(),
            receipt: a
                .receipt
                .iter()
                .map(|line| decode_text(line.as_bytes(), encoding))
                .collect(),
            payload: payload.to_vec(),
        }),
        Message::Declined(d) => Answer::Declined(Decline {
            txn_id: d.txn_id,
            reason: d.reason,
            text: decode_text(d.text.as_bytes(), encoding),
        }),
        other => {
            return Err(SimError::UnexpectedAnswer {
                expected: "CARD_MENU, APPROVED or DECLINED",
                got: other.message_type().name(),
            });
        }
    })
}

fn date(d: Option<Date>) -> String {
    d.map_or_else(
        || "no expiry".to_owned(),
        |d| format!("until {:04}-{:02}-{:02}", d.year, d.month, d.day),
    )
}

fn identity_note(check: IdentityCheck) -> &'static str {
    match check {
        IdentityCheck::None => "",
        IdentityCheck::PhoneLast4 => "  [phone last four]",
        IdentityCheck::Pin => "  [PIN]",
    }
}

/// The screen (and printer) for `reply`, indented lines ending in `\n`.
pub fn render(reply: &Reply) -> String {
    let mut out = String::new();
    for text in &reply.displays {
        let _ = writeln!(out, "  screen: {text}");
    }
    if reply.recovered {
        let _ = writeln!(
            out,
            "  (answer recovered with QUERY after the link dropped)"
        );
    }
    match &reply.answer {
        Answer::Menu(m) => {
            let holder = if m.holder.is_empty() {
                "(anonymous)"
            } else {
                &m.holder
            };
            let _ = writeln!(
                out,
                "  MENU txn {}  {}  {}",
                m.txn_id, holder, m.masked_card
            );
            if m.entries.is_empty() {
                let _ = writeln!(out, "    (nothing usable on this card)");
            }
            for e in &m.entries {
                let _ = writeln!(
                    out,
                    "    [{}] {}  x{} left  {}{}",
                    e.index,
                    e.title,
                    e.uses_left,
                    date(e.expiry),
                    identity_note(e.identity)
                );
            }
        }
        Answer::Approved(a) => {
            let _ = writeln!(
                out,
                "  APPROVED txn {}  auth {}  ref {}",
                a.txn_id, a.auth_code, a.journal_ref
            );
            let left: Vec<String> = a
                .uses_left
                .iter()
                .map(|(i, n)| format!("[{i}] {n} left"))
                .collect();
            if !left.is_empty() {
                let _ = writeln!(out, "    {}", left.join(", "));
            }
            let _ = writeln!(out, "    ---- receipt ----");
            for line in &a.receipt {
                let _ = writeln!(out, "    | {line}");
            }
        }
        Answer::Declined(d) => {
            let name = decline_name(d.reason);
            let _ = writeln!(out, "  DECLINED txn {}  {}: {}", d.txn_id, name, d.text);
        }
    }
    out
}

/// A decline reason's name, or its number when it has none (codes are open).
pub fn decline_name(reason: DeclineReason) -> String {
    reason
        .name()
        .map_or_else(|| format!("code {}", reason.0), str::to_owned)
}

/// A card number as a reader may show it in a log: first four and last four digits only
/// (PROTOCOL.md §5.9: the reader must not log the card number).
pub fn mask_card(card: &str) -> String {
    let chars: Vec<char> = card.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars.iter().take(4).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head} **** {tail}")
}
