//! What the reader shows: store decisions turned into protocol messages, in the cashier's language
//! and the reader's text encoding. Pure code: no I/O, no clock.
//!
//! A rendered answer is stored by the store in the same transaction as the journal rows it reports
//! (`crate::store::answers`, through [`Replies`]), so this rendering happens exactly once per request
//! and a repeated request or a QUERY gets the same bytes back even if the language or the texts
//! change later. The stored form is [`StoredReply`]: one type byte followed by the message payload.

use firmware_protocol::message::{
    Approved, CardMenu, Date, DeclineReason as WireReason, Declined as WireDeclined, IdentityCheck,
    List, MenuEntry, Message, MessageType, Text, TextEncoding, UsesLeft,
};

use crate::config::Language;
use crate::engine::{DeclineReason, Menu};
use crate::store::{Approval, Decision, Replies, VoidApproval};
use redeemd_contract::close::civil_from_days;

/// The text of a reader's `text8` field, for logs and screens: decoded from the link's encoding,
/// anything undecodable replaced.
pub fn decode_text(bytes: &[u8], encoding: TextEncoding) -> String {
    match encoding {
        TextEncoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        TextEncoding::Gb18030 => encoding_rs::GB18030
            .decode_without_bom_handling(bytes)
            .0
            .into_owned(),
    }
}

/// DISPLAY's text while a decision waits (PROTOCOL.md §8.6), in both languages as §5.16 shows it.
const PLEASE_WAIT: &str = "请稍候 / please wait";

/// Largest payload we ever render (the protocol's reassembly limit).
const MAX_PAYLOAD: usize = firmware_protocol::message::MAX_MESSAGE_LEN;

/// Byte limits of text fields (PROTOCOL.md §5): longer texts are cut at a character boundary.
const TITLE_MAX: usize = 64;
const HOLDER_MAX: usize = 64;
const DECLINE_TEXT_MAX: usize = 128;
const RECEIPT_LINE_MAX: usize = 64;
const RECEIPT_LINES_MAX: usize = 48;
const MENU_ENTRIES_MAX: usize = 32;
const MASKED_CARD_MAX: usize = 32;

/// The platform's masked card number as CARD_MENU.masked_card (printable ASCII, at most 32
/// bytes): anything else in it shows as `?`, and it is cut to fit, rather than failing the menu.
fn masked_card(masked: &str) -> String {
    let shown: String = masked
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(MASKED_CARD_MAX)
        .collect();
    if shown != masked {
        tracing::warn!(
            masked_number_bytes = masked.len(),
            "masked card number is not up to 32 printable ASCII characters: shown as {shown:?}"
        );
    }
    shown
}

/// How texts are shown on one reader's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presentation {
    pub language: Language,
    pub encoding: TextEncoding,
    /// Business-day offset from UTC in minutes: expiry dates and receipt times are local.
    pub utc_offset_minutes: i32,
}

/// A reply as stored and sent: one type byte, then the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply(pub Vec<u8>);

impl StoredReply {
    fn new(msg_type: MessageType, payload: &[u8]) -> Self {
        let mut v = Vec::with_capacity(1 + payload.len());
        v.push(msg_type.as_u8());
        v.extend_from_slice(payload);
        StoredReply(v)
    }

    /// Splits stored bytes back into type and payload; `None` if they are not a reply we store.
    pub fn split(bytes: &[u8]) -> Option<(MessageType, &[u8])> {
        let (&code, payload) = bytes.split_first()?;
        let msg_type = MessageType::from_u8(code)?;
        matches!(
            msg_type,
            MessageType::Approved | MessageType::Declined | MessageType::CardMenu
        )
        .then_some((msg_type, payload))
    }
}

impl Presentation {
    /// `text` in the link's encoding, cut to at most `max` bytes at a character boundary.
    fn encode(&self, text: &str, max: usize) -> Vec<u8> {
        // Every character takes at least one byte in either encoding, so at most `max` of them
        // can fit; starting the cut from the whole text would re-encode it once per character
        // (texts come from the platform, with no length limit).
        let mut end = text.char_indices().nth(max).map_or(text.len(), |(i, _)| i);
        loop {
            let part = &text[..end];
            let bytes = match self.encoding {
                TextEncoding::Utf8 => part.as_bytes().to_vec(),
                // GB18030 maps all of Unicode, so encoding cannot fail.
                TextEncoding::Gb18030 => encoding_rs::GB18030.encode(part).0.into_owned(),
            };
            if bytes.len() <= max || end == 0 {
                return bytes;
            }
            end = part.char_indices().next_back().map_or(0, |(i, _)| i);
        }
    }

    fn zh(&self) -> bool {
        self.language == Language::Zh
    }

    /// The screen text for a decline reason.
    pub fn decline_text(&self, reason: DeclineReason) -> &'static str {
        if self.zh() {
            reason.text_zh()
        } else {
            reason.text_en()
        }
    }

    /// DECLINED for `txn_id`, as a stored reply.
    pub fn declined(&self, txn_id: u32, reason: DeclineReason) -> StoredReply {
        let text = self.encode(self.decline_text(reason), DECLINE_TEXT_MAX);
        self.emit(&Message::Declined(WireDeclined {
            txn_id,
            reason: WireReason(reason.code()),
            text: Text::new(&text),
        }))
    }

    /// CARD_MENU for `txn_id`. Entries whose index does not fit the wire's u8, and any beyond the
    /// 32 a menu can carry, are left out (a card with that many items is a platform bug).
    pub fn menu(&self, txn_id: u32, menu: &Menu) -> StoredReply {
        let titles: Vec<Vec<u8>> = menu
            .entries
            .iter()
            .map(|e| {
                // CARD_MENU needs a title of at least one byte: an entry the platform left
                // untitled is shown by its package or service name rather than failing the menu.
                let title = [&e.title, &e.package_title, &e.service_code]
                    .into_iter()
                    .find(|t| !t.is_empty())
                    .map_or("?", |t| t.as_str());
                self.encode(title, TITLE_MAX)
            })
            .collect();
        let entries: Vec<MenuEntry<'_>> = menu
            .entries
            .iter()
            .zip(&titles)
            .filter_map(|(e, title)| {
                Some(MenuEntry {
                    index: u8::try_from(e.index).ok()?,
                    title: Text::new(title),
                    uses_left: u16::try_from(e.uses_left).unwrap_or(u16::MAX),
                    expiry: self.date(e.valid_until_ms),
                    identity: if e.identity_required {
                        IdentityCheck::PhoneLast4
                    } else {
                        IdentityCheck::None
                    },
                })
            })
            .take(MENU_ENTRIES_MAX)
            .collect();
        let holder = self.encode(menu.holder_name.as_deref().unwrap_or(""), HOLDER_MAX);
        let masked_card = masked_card(&menu.masked_number);
        self.emit(&Message::CardMenu(CardMenu {
            txn_id,
            holder_name: Text::new(&holder),
            masked_card: &masked_card,
            entries: List::new(&entries),
        }))
    }

    /// DISPLAY's text while a decision waits, in the link's encoding.
    pub fn please_wait(&self) -> Vec<u8> {
        self.encode(PLEASE_WAIT, 64)
    }

    /// The reply for a decision: CARD_MENU, APPROVED or DECLINED.
    pub fn decision(&self, txn_id: u32, decision: &Decision) -> StoredReply {
        match decision {
            Decision::Menu(m) => self.menu(txn_id, m),
            Decision::Declined(d) => self.declined(txn_id, d.reason),
            Decision::Redeemed(a) => self.approved_redemption(txn_id, a),
            Decision::Voided(v) => self.approved_void(txn_id, v),
        }
    }

    fn approved_redemption(&self, txn_id: u32, a: &Approval) -> StoredReply {
        let zh = self.zh();
        let mut lines: Vec<String> = vec![
            if zh {
                "会员卡核销凭证"
            } else {
                "MEMBER CARD REDEMPTION"
            }
            .to_owned(),
            format!("{} {}", if zh { "卡号" } else { "Card" }, a.masked_number),
            format!(
                "{} {}",
                if zh { "时间" } else { "Time" },
                self.time(a.wall_ms)
            ),
        ];
        for l in &a.lines {
            lines.push(format!("{} x{}", l.title, l.quantity));
            lines.push(if zh {
                format!("  剩余 {} 次", l.uses_left_after)
            } else {
                format!("  {} left", l.uses_left_after)
            });
        }
        lines.push(format!(
            "{} {}",
            if zh { "授权码" } else { "Auth code" },
            a.auth_code
        ));
        let uses: Vec<UsesLeft> = a
            .lines
            .iter()
            .filter_map(|l| {
                Some(UsesLeft {
                    entry_index: u8::try_from(l.entry_index).ok()?,
                    uses_left: u16::try_from(l.uses_left_after).unwrap_or(u16::MAX),
                })
            })
            .collect();
        self.approved(txn_id, &a.auth_code, a.first_seq, &uses, &lines)
    }

    /// A void's APPROVED carries no `uses_left` (PROTOCOL.md §5.12: entry indexes only mean
    /// something relative to a menu, and a void has none); its receipt says what was restored.
    fn approved_void(&self, txn_id: u32, v: &VoidApproval) -> StoredReply {
        let zh = self.zh();
        let mut lines: Vec<String> = vec![
            if zh {
                "会员卡撤销凭证"
            } else {
                "MEMBER CARD VOID"
            }
            .to_owned(),
            format!(
                "{} {}",
                if zh { "原授权码" } else { "Original auth" },
                v.original_auth_code
            ),
            format!(
                "{} {}",
                if zh { "时间" } else { "Time" },
                self.time(v.wall_ms)
            ),
        ];
        for l in &v.lines {
            lines.push(format!("{} x{}", l.title, l.quantity));
            if let Some(left) = l.uses_left_after {
                lines.push(if zh {
                    format!("  已退回, 剩余 {left} 次")
                } else {
                    format!("  restored, {left} left")
                });
            }
        }
        lines.push(format!(
            "{} {}",
            if zh { "授权码" } else { "Auth code" },
            v.auth_code
        ));
        self.approved(txn_id, &v.auth_code, v.first_seq, &[], &lines)
    }

    fn approved(
        &self,
        txn_id: u32,
        auth_code: &str,
        first_seq: u64,
        uses: &[UsesLeft],
        lines: &[String],
    ) -> StoredReply {
        let encoded: Vec<Vec<u8>> = lines
            .iter()
            .take(RECEIPT_LINES_MAX)
            .map(|l| self.encode(l, RECEIPT_LINE_MAX))
            .collect();
        let receipt: Vec<Text<'_>> = encoded.iter().map(|b| Text::new(b)).collect();
        let journal_ref = first_seq.to_string();
        self.emit(&Message::Approved(Approved {
            txn_id,
            auth_code,
            journal_ref: &journal_ref,
            uses_left: List::new(uses),
            receipt: List::new(&receipt),
        }))
    }

    /// Emits a message we built within every field limit. Should emitting fail anyway (a bug), the
    /// reader gets a generic decline rather than nothing: the store still records what happened.
    fn emit(&self, message: &Message<'_>) -> StoredReply {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        match message.emit(&mut buf) {
            Ok(len) => StoredReply::new(message.message_type(), &buf[..len]),
            Err(e) => {
                tracing::error!(error = %e, msg_type = %message.message_type(), "cannot render reply");
                let txn_id = match message {
                    Message::Approved(a) => a.txn_id,
                    Message::CardMenu(m) => m.txn_id,
                    Message::Declined(d) => d.txn_id,
                    _ => 1,
                };
                let fallback = Message::Declined(WireDeclined {
                    txn_id,
                    reason: WireReason(DeclineReason::InternalError.code()),
                    text: Text::new(b""),
                });
                let len = fallback.emit(&mut buf).unwrap_or(0);
                StoredReply::new(MessageType::Declined, &buf[..len])
            }
        }
    }

    fn local_days(&self, wall_ms: i64) -> (i64, i64) {
        let local_ms = wall_ms.saturating_add(i64::from(self.utc_offset_minutes) * 60_000);
        (
            local_ms.div_euclid(86_400_000),
            local_ms.rem_euclid(86_400_000),
        )
    }

    /// The local calendar day containing the last valid instant of an entitlement, if it fits the
    /// wire's 2000..=2099 range (otherwise: no expiry shown).
    fn date(&self, valid_until_ms: i64) -> Option<Date> {
        if valid_until_ms <= 0 || valid_until_ms == i64::MAX {
            return None;
        }
        let (days, _) = self.local_days(valid_until_ms.saturating_sub(1));
        let (y, m, d) = civil_from_days(days);
        let year = u16::try_from(y)
            .ok()
            .filter(|y| (2000..=2099).contains(y))?;
        Some(Date {
            year,
            month: u8::try_from(m).ok()?,
            day: u8::try_from(d).ok()?,
        })
    }

    fn time(&self, wall_ms: i64) -> String {
        let (days, ms) = self.local_days(wall_ms);
        let (y, m, d) = civil_from_days(days);
        let s = ms / 1000;
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

impl Replies for Presentation {
    fn declined(&self, txn_id: u32, reason: DeclineReason) -> Vec<u8> {
        Presentation::declined(self, txn_id, reason).0
    }

    fn decision(&self, txn_id: u32, decision: &Decision) -> Vec<u8> {
        Presentation::decision(self, txn_id, decision).0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::engine::MenuEntry as EngineEntry;

    fn p(language: Language, encoding: TextEncoding) -> Presentation {
        Presentation {
            language,
            encoding,
            utc_offset_minutes: 480,
        }
    }

    fn parse(reply: &StoredReply, encoding: TextEncoding) -> Message<'_> {
        let (t, payload) = StoredReply::split(&reply.0).unwrap();
        Message::parse(t.as_u8(), payload, encoding).unwrap()
    }

    #[test]
    fn declined_text_in_chinese_and_gb18030() {
        let r = p(Language::Zh, TextEncoding::Gb18030).declined(7, DeclineReason::CardLost);
        let Message::Declined(d) = parse(&r, TextEncoding::Gb18030) else {
            panic!("not DECLINED")
        };
        assert_eq!(d.txn_id, 7);
        assert_eq!(d.reason.0, DeclineReason::CardLost.code());
        let (text, _, bad) = encoding_rs::GB18030.decode(d.text.as_bytes());
        assert!(!bad);
        assert_eq!(text, DeclineReason::CardLost.text_zh());
        assert_ne!(
            d.text.as_bytes(),
            DeclineReason::CardLost.text_zh().as_bytes()
        );
    }

    #[test]
    fn english_texts_on_request() {
        let r = p(Language::En, TextEncoding::Utf8).declined(3, DeclineReason::Expired);
        let Message::Declined(d) = parse(&r, TextEncoding::Utf8) else {
            panic!("not DECLINED")
        };
        assert_eq!(d.text.to_str(), Some(DeclineReason::Expired.text_en()));
    }

    #[test]
    fn long_titles_are_cut_at_a_character_boundary() {
        let pr = p(Language::Zh, TextEncoding::Utf8);
        let title = "洗".repeat(40); // 120 bytes of UTF-8
        let cut = pr.encode(&title, TITLE_MAX);
        assert_eq!(cut.len(), 63);
        assert!(std::str::from_utf8(&cut).is_ok());
    }

    #[test]
    fn menu_renders_entries_with_local_expiry() {
        let menu = Menu {
            masked_number: "622202******0001".into(),
            holder_name: Some("张*".into()),
            entry_version: 3,
            entries: vec![EngineEntry {
                index: 2,
                package_id: "P1".into(),
                package_title: "保养套餐".into(),
                service_code: "WASH".into(),
                title: "精洗".into(),
                uses_left: 8,
                // 2026-12-31T16:00:00Z = 2027-01-01 00:00 in UTC+8: the last valid day is Dec 31.
                valid_until_ms: 1_798_732_800_000,
                identity_required: true,
                price_fen: 3000,
            }],
        };
        let r = p(Language::Zh, TextEncoding::Utf8).menu(9, &menu);
        let Message::CardMenu(m) = parse(&r, TextEncoding::Utf8) else {
            panic!("not CARD_MENU")
        };
        let e = m.entries.iter().next().unwrap();
        assert_eq!(e.index, 2);
        assert_eq!(e.uses_left, 8);
        assert_eq!(
            e.expiry,
            Some(Date {
                year: 2026,
                month: 12,
                day: 31
            })
        );
        assert_eq!(e.identity, IdentityCheck::PhoneLast4);
        assert_eq!(m.holder_name.to_str(), Some("张*"));
    }

    fn one_entry_menu(masked_number: &str, title: &str) -> Menu {
        Menu {
            masked_number: masked_number.into(),
            holder_name: None,
            entry_version: 1,
            entries: vec![EngineEntry {
                index: 0,
                package_id: "P1".into(),
                package_title: "套餐".into(),
                service_code: "WASH".into(),
                title: title.into(),
                uses_left: 3,
                valid_until_ms: 0,
                identity_required: false,
                price_fen: 100,
            }],
        }
    }

    #[test]
    fn a_masked_number_that_does_not_fit_the_wire_still_gives_a_menu() {
        // The platform's masked number is free text: longer than the 32 bytes of
        // CARD_MENU.masked_card, or not ASCII. The card's menu must still reach the reader.
        for masked in [
            "6228 48** **** **** **** **** **** 1234",
            "622848******1234 会员",
        ] {
            for enc in [TextEncoding::Utf8, TextEncoding::Gb18030] {
                let r = p(Language::Zh, enc).menu(5, &one_entry_menu(masked, "精洗"));
                let Message::CardMenu(m) = parse(&r, enc) else {
                    panic!(
                        "{masked:?} on {enc:?}: not CARD_MENU but {:?}",
                        parse(&r, enc)
                    )
                };
                assert_eq!(m.entries.len(), 1);
                assert!(m.masked_card.len() <= 32);
                assert!(m.masked_card.starts_with("6228"), "{:?}", m.masked_card);
            }
        }
    }

    #[test]
    fn an_empty_title_does_not_cost_the_whole_menu() {
        let r =
            p(Language::Zh, TextEncoding::Utf8).menu(5, &one_entry_menu("622848******1234", ""));
        let Message::CardMenu(m) = parse(&r, TextEncoding::Utf8) else {
            panic!("not CARD_MENU but {:?}", parse(&r, TextEncoding::Utf8))
        };
        let e = m.entries.iter().next().unwrap();
        assert!(!e.title.as_bytes().is_empty());
    }

    #[test]
    fn a_huge_title_is_cut_without_encoding_it_once_per_character() {
        // A platform title of 256 KiB (the bundle format has no limit). Encoding every prefix
        // while cutting one character at a time is quadratic: minutes with the store locked.
        let title = "洗".repeat(256 * 1024 / 3);
        for enc in [TextEncoding::Utf8, TextEncoding::Gb18030] {
            let cut = p(Language::Zh, enc).encode(&title, TITLE_MAX);
            let expected = match enc {
                TextEncoding::Utf8 => 63,
                TextEncoding::Gb18030 => 64,
            };
            assert_eq!(cut.len(), expected, "{enc:?}");
        }
    }

    #[test]
    fn gb18030_cut_never_splits_a_four_byte_character() {
        // U+20000 is four bytes in GB18030; ASCII before it shifts the boundary.
        for pad in 0..4 {
            let text = format!("{}{}", "a".repeat(pad), "\u{20000}".repeat(30));
            let cut = p(Language::Zh, TextEncoding::Gb18030).encode(&text, TITLE_MAX);
            assert!(cut.len() <= TITLE_MAX);
            let (decoded, _, bad) = encoding_rs::GB18030.decode(&cut);
            assert!(!bad, "pad {pad}");
            assert!(text.starts_with(&*decoded));
        }
    }

    #[test]
    fn split_refuses_what_we_never_store() {
        assert!(StoredReply::split(&[]).is_none());
        assert!(StoredReply::split(&[0x01, 0, 0]).is_none());
        assert!(StoredReply::split(&[0xEE]).is_none());
    }
}
