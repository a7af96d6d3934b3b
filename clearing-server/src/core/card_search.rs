//! Finding a card without its full number: what a person on the phone can say ("the card ending
//! 5678", "622848…5678", "张三") turned into a search the database can answer from its index. Pure.
//!
//! **What the index holds.** A card number is stored sealed, and found by a keyed hash of the whole
//! number (`crate::vault`). For search the `card` row also holds the number's first six and last four
//! digits — the truncation PCI DSS lets a system show — and the holder's name folded for comparison
//! ([`holder_key`]). Nothing derived from the middle digits is stored: with the first six and the last
//! four known, an unkeyed hash of the number could be reversed by trying the million or so middles,
//! which is why the lookup hash is an HMAC under a key kept apart from the database. A search by
//! masked number therefore needs the last four (the first six alone name a card programme, not a card);
//! the whole number is looked up by its hash as before.

use redeemd_contract::model::CardNumber;

use super::cards::MAX_TITLE_CHARS;
use super::problem::Problem;

/// Most cards one search lists; a search that matches more says so.
pub const MAX_MATCHES: u32 = 50;

/// A card search, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardQuery {
    pub number: Option<NumberQuery>,
    /// A prefix of the folded holder name ([`holder_key`]).
    pub holder: Option<String>,
}

/// What was given of the number.
#[derive(Clone, PartialEq, Eq)]
pub enum NumberQuery {
    /// The whole number: found by its lookup hash.
    Whole(CardNumber),
    /// The last four digits, and the first six if they were given.
    Masked { head: Option<String>, tail: String },
}

impl std::fmt::Debug for NumberQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never the whole number, even in a debug print.
            NumberQuery::Whole(n) => write!(f, "Whole({})", n.masked()),
            NumberQuery::Masked { head, tail } => write!(f, "Masked({head:?}, {tail:?})"),
        }
    }
}

/// The first six and last four digits of a card's masked number (`622848******5678`), as the search
/// index holds them.
pub fn head_and_tail(masked: &str) -> Option<(String, String)> {
    let digits: Vec<char> = masked.chars().collect();
    if digits.len() < 10 {
        return None;
    }
    let head: String = digits[..6].iter().collect();
    let tail: String = digits[digits.len() - 4..].iter().collect();
    (head.chars().all(|c| c.is_ascii_digit()) && tail.chars().all(|c| c.is_ascii_digit()))
        .then_some((head, tail))
}

/// A holder's name as searched: lower case, runs of white space as one space, trimmed. Exact
/// characters otherwise (`张三` is not `張三`).
pub fn holder_key(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The first string after every string that starts with `prefix`, in code point order (which is
/// UTF-8 byte order: SQLite's `BINARY`, PostgreSQL's `COLLATE "C"`): a prefix search is the range
/// `[prefix, prefix_end(prefix))`.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}{}", char::MAX)
}

const NUMBER_FORMS: &str =
    "the last 4 digits (5678), the first 6 and the last 4 (622848******5678), or the whole number";

impl CardQuery {
    /// A search from what a person typed: `number` (spaces and dashes ignored; `*`, `x`, `.` or `…`
    /// stand for the hidden digits) and `holder` (the start of the holder's name). Empty fields are
    /// left out; at least one is needed. A refused field is named (`number`, `holder`).
    pub fn parse(number: &str, holder: &str) -> Result<CardQuery, Problem> {
        let number = number.trim();
        let holder = holder_key(holder);
        if number.is_empty() && holder.is_empty() {
            return Err(Problem::invalid(
                "number",
                "give a card number (masked or whole) or a holder's name",
            ));
        }
        if holder.chars().count() > MAX_TITLE_CHARS || holder.chars().any(char::is_control) {
            return Err(Problem::invalid(
                "holder",
                format!("at most {MAX_TITLE_CHARS} characters, no control characters"),
            ));
        }
        Ok(CardQuery {
            number: (!number.is_empty())
                .then(|| parse_number(number))
                .transpose()?,
            holder: (!holder.is_empty()).then_some(holder),
        })
    }
}

fn parse_number(s: &str) -> Result<NumberQuery, Problem> {
    // Not echoed in the refusal: it may be a real number with a typo.
    let bad = || Problem::invalid("number", NUMBER_FORMS);
    let kept: String = s.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let is_mask = |c: char| matches!(c, '*' | 'x' | 'X' | '.' | '…' | '•');
    if kept.chars().all(|c| c.is_ascii_digit()) {
        return match kept.len() {
            4 => Ok(NumberQuery::Masked {
                head: None,
                tail: kept,
            }),
            10 => Ok(NumberQuery::Masked {
                head: Some(kept[..6].to_owned()),
                tail: kept[6..].to_owned(),
            }),
            12..=19 => CardNumber::parse(&kept)
                .map(NumberQuery::Whole)
                .map_err(|e| Problem::invalid("number", e.to_string())),
            _ => Err(bad()),
        };
    }
    // Digits, then the mask characters, then digits: `622848******5678`, `…5678`.
    let head: String = kept.chars().take_while(char::is_ascii_digit).collect();
    let rest = &kept[head.len()..];
    let mask_len = rest
        .chars()
        .take_while(|c| is_mask(*c))
        .map(char::len_utf8)
        .sum::<usize>();
    let tail = &rest[mask_len..];
    if mask_len == 0 || tail.len() != 4 || !tail.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(NumberQuery::Masked {
        head: match head.len() {
            0 => None,
            6 => Some(head),
            _ => return Err(bad()),
        },
        tail: tail.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn masked(head: Option<&str>, tail: &str) -> Option<NumberQuery> {
        Some(NumberQuery::Masked {
            head: head.map(str::to_owned),
            tail: tail.to_owned(),
        })
    }

    #[test]
    fn a_masked_number_is_read_in_the_forms_a_person_says_it() {
        for (typed, head, tail) in [
            ("5678", None, "5678"),
            ("622848******5678", Some("622848"), "5678"),
            ("622848 **** **** 5678", Some("622848"), "5678"),
            ("622848…5678", Some("622848"), "5678"),
            ("6228485678", Some("622848"), "5678"),
            ("*5678", None, "5678"),
            ("xxxx-xxxx-xxxx-5678", None, "5678"),
        ] {
            assert_eq!(
                CardQuery::parse(typed, "").unwrap().number,
                masked(head, tail),
                "{typed}"
            );
        }
        let whole = CardQuery::parse("6228 4800 1234 5678", "").unwrap();
        assert!(matches!(whole.number, Some(NumberQuery::Whole(_))));
        assert_eq!(
            format!("{:?}", whole.number.unwrap()),
            "Whole(622848******5678)"
        );
    }

    #[test]
    fn what_is_not_a_number_search_is_refused_by_field() {
        for typed in ["567", "62284*5678", "622848**567", "622848", "abc", "12345"] {
            let p = CardQuery::parse(typed, "").unwrap_err();
            assert_eq!(p.field(), Some("number"), "{typed}");
            assert_eq!(p.detail, NUMBER_FORMS, "{typed}");
        }
        assert_eq!(
            CardQuery::parse("  ", " ").unwrap_err().field(),
            Some("number")
        );
        assert_eq!(
            CardQuery::parse("", &"名".repeat(65)).unwrap_err().field(),
            Some("holder")
        );
    }

    #[test]
    fn holder_names_are_folded_and_searched_as_a_prefix() {
        assert_eq!(holder_key("  Zhang   SAN "), "zhang san");
        assert_eq!(holder_key("张三"), "张三");
        let q = CardQuery::parse("", " 张 ").unwrap();
        assert_eq!(q.holder.as_deref(), Some("张"));
        let end = prefix_end("张");
        for name in ["张", "张三", "张𠀀"] {
            assert!(name >= "张" && name < end.as_str(), "{name}");
        }
        assert!("弛" >= end.as_str() || "弛" < "张");
    }

    #[test]
    fn the_index_holds_the_first_six_and_last_four_only() {
        let n = CardNumber::parse("6228480012345678").unwrap();
        assert_eq!(
            head_and_tail(&n.masked()),
            Some(("622848".into(), "5678".into()))
        );
        assert_eq!(head_and_tail("62284"), None);
    }
}
