//! The entitlement data model: what the platform tells a terminal about one card.
//!
//! A card is known only by its [`CardRef`] — the card number encrypted deterministically under the
//! terminal's card-token key — plus a masked number for display. Identity data (e.g. the last four digits of the holder's phone)
//! is carried only as a keyed verifier.

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::{CardTokenKey, MacKey, TAG_LEN, Tag};
use thiserror::Error;

/// A terminal's reference to a card number: `AES-256-SIV(card-token key, AD = "redeemd/card-ref/v2",
/// encode16(digits))`, 32 bytes (16 of synthetic IV, 16 of ciphertext). Deterministic, so a terminal
/// finds its cache entry by it; different at every terminal (the key is per terminal), so two shops'
/// databases cannot be joined on it; reversible with the key ([`CardTokenKey::reveal`]), so the platform
/// finds the card of an uploaded record without storing an index per terminal and card.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CardRef(pub [u8; TAG_LEN]);

impl std::fmt::Debug for CardRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardRef({})", self.to_hex())
    }
}

impl CardRef {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A card number as swiped: 12 to 19 decimal digits. Never stored, never logged; `Debug` is masked.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardNumber({})", self.masked())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CardNumberError {
    #[error("card number has {len} digits; 12 to 19 are allowed")]
    BadLength { len: usize },
    #[error("card number contains a character other than a digit, space or dash")]
    NotDigits,
}

impl CardNumber {
    /// Accepts digits with optional spaces or dashes (as printed on a card).
    pub fn parse(raw: &str) -> Result<Self, CardNumberError> {
        let mut digits = String::with_capacity(19);
        for c in raw.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                _ => return Err(CardNumberError::NotDigits),
            }
        }
        if !(12..=19).contains(&digits.len()) {
            return Err(CardNumberError::BadLength { len: digits.len() });
        }
        Ok(Self(digits))
    }

    /// The digits alone (spaces and dashes removed). For the platform, which issues and stores card
    /// numbers; the terminal never stores or logs them.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// First six and last four digits, the rest as `*` (PCI-style display).
    pub fn masked(&self) -> String {
        let d = &self.0;
        let n = d.len();
        format!("{}{}{}", &d[..6], "*".repeat(n - 10), &d[n - 4..])
    }

    /// This terminal's reference to the card (see [`CardRef`]).
    pub fn card_ref(&self, card_token_key: &CardTokenKey) -> CardRef {
        let mut block = self.encode16();
        let mut out = [0u8; TAG_LEN];
        // One 16-byte block and one header: within every AES-SIV limit, so this cannot fail; an
        // all-zero reference (which matches no entry) rather than a panic if it ever did.
        if let Ok(siv) = card_token_key
            .cipher()
            .encrypt_in_place_detached([CARD_REF_AD], &mut block)
        {
            out[..16].copy_from_slice(&siv);
            out[16..].copy_from_slice(&block);
        }
        CardRef(out)
    }

    /// The number in one block: its digit count, the digits' value as a big-endian `u64` (19 digits
    /// fit), then zeros. The count keeps leading zeros (`0012…` and `12…` differ).
    fn encode16(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.0.len() as u8;
        let value = self.0.bytes().fold(0u64, |v, d| {
            v.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
        });
        b[1..9].copy_from_slice(&value.to_be_bytes());
        b
    }

    fn decode16(b: &[u8; 16]) -> Option<CardNumber> {
        let len = usize::from(b[0]);
        if !(12..=19).contains(&len) || b[9..].iter().any(|&x| x != 0) {
            return None;
        }
        let value = u64::from_be_bytes(b[1..9].try_into().ok()?);
        let digits = format!("{value:0len$}");
        (digits.len() == len).then_some(CardNumber(digits))
    }
}

/// Associated data of every card reference (a domain tag: the key is used for nothing else).
const CARD_REF_AD: &[u8] = b"redeemd/card-ref/v2";

/// Why a card reference does not give back a card number under a terminal's key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CardRefError {
    #[error("card reference {0} was not made with this terminal's card-token key")]
    NotThisTerminals(String),
    #[error("card reference {0} does not hold a card number")]
    NotANumber(String),
}

impl CardTokenKey {
    /// The card number behind `card_ref`, if this key made it. AES-SIV authenticates: a reference
    /// made under another key, or any other 32 bytes, is refused, never misread as some number.
    pub fn reveal(&self, card_ref: &CardRef) -> Result<CardNumber, CardRefError> {
        let mut block: [u8; 16] = card_ref.0[16..]
            .try_into()
            .map_err(|_| CardRefError::NotANumber(card_ref.to_hex()))?;
        let siv: [u8; 16] = card_ref.0[..16]
            .try_into()
            .map_err(|_| CardRefError::NotANumber(card_ref.to_hex()))?;
        self.cipher()
            .decrypt_in_place_detached([CARD_REF_AD], &mut block, (&siv).into())
            .map_err(|_| CardRefError::NotThisTerminals(card_ref.to_hex()))?;
        CardNumber::decode16(&block).ok_or_else(|| CardRefError::NotANumber(card_ref.to_hex()))
    }
}

/// The verifier the platform stores for a named card's identity data (phone last four, PIN):
/// `HMAC(identity key, "redeemd/identity/v1" ‖ card ref ‖ identity data)`.
pub fn identity_verifier(identity_key: &MacKey, card: &CardRef, identity_data: &[u8]) -> Tag {
    identity_key.mac(&[b"redeemd/identity/v1", &card.0, identity_data])
}

/// Constant-time check of identity data against a stored verifier.
pub fn identity_matches(
    identity_key: &MacKey,
    card: &CardRef,
    identity_data: &[u8],
    verifier: &Tag,
) -> bool {
    identity_key.verify(&[b"redeemd/identity/v1", &card.0, identity_data], verifier)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardStatus {
    Active = 1,
    Lost = 2,
    Frozen = 3,
    Cancelled = 4,
    /// Cancelled because it was reissued (补卡): its entitlements moved to a new card.
    Reissued = 5,
}

impl CardStatus {
    fn from_tag(tag: u8, at: usize) -> Result<Self, DecodeError> {
        Ok(match tag {
            1 => Self::Active,
            2 => Self::Lost,
            3 => Self::Frozen,
            4 => Self::Cancelled,
            5 => Self::Reissued,
            _ => {
                return Err(DecodeError::BadTag {
                    field: "card status",
                    tag,
                    at,
                });
            }
        })
    }
}

/// A named card's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// For display only, already masked by the platform (e.g. "张*").
    pub masked_name: String,
    /// Keyed verifier of the identity data; `None` if the holder has none on file.
    pub identity_verifier: Option<Tag>,
}

/// Where a package may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MerchantScope {
    All,
    Merchants(Vec<String>),
    Categories(Vec<String>),
}

impl MerchantScope {
    pub fn allows(&self, merchant_id: &str, merchant_categories: &[String]) -> bool {
        match self {
            MerchantScope::All => true,
            MerchantScope::Merchants(list) => list.iter().any(|m| m == merchant_id),
            MerchantScope::Categories(list) => list.iter().any(|c| merchant_categories.contains(c)),
        }
    }
}

/// One service or good of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub service_code: String,
    /// Display title (Chinese), e.g. "精洗".
    pub title: String,
    pub uses_total: u32,
    /// Uses left as the platform knew it when it signed this entry (see [`Card::usage_through_seq`]).
    pub uses_left: u32,
    /// What the platform pays the merchant per use, in fen.
    pub price_fen: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub id: String,
    pub title: String,
    pub items: Vec<Item>,
    /// Unix milliseconds, inclusive.
    pub valid_from_ms: i64,
    /// Unix milliseconds, exclusive.
    pub valid_until_ms: i64,
    pub scope: MerchantScope,
    /// Maximum uses (all items of the package together) per local business day at this terminal.
    pub daily_cap: Option<u32>,
    /// Named cards only: ask for identity confirmation before redeeming from this package.
    pub identity_required: bool,
}

/// Everything the terminal knows about one card. The card reference is not part of the body: it is the
/// entry's key and is covered by the entry MAC separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// First six / last four, e.g. "622848******1234".
    pub masked_number: String,
    pub status: CardStatus,
    pub holder: Option<Holder>,
    /// The `uses_left` figures of this entry already account for this terminal's journal records up to
    /// and including this sequence number (0: none). Local usage counts only records after it.
    pub usage_through_seq: u64,
    pub packages: Vec<Package>,
}

impl Card {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.str(&self.masked_number).u8(self.status as u8);
        match &self.holder {
            None => {
                w.u8(0);
            }
            Some(h) => {
                w.u8(1).str(&h.masked_name);
                match &h.identity_verifier {
                    None => w.u8(0),
                    Some(v) => w.u8(1).fixed(v),
                };
            }
        }
        w.u64(self.usage_through_seq).count(self.packages.len());
        for p in &self.packages {
            w.str(&p.id)
                .str(&p.title)
                .i64(p.valid_from_ms)
                .i64(p.valid_until_ms);
            let (tag, list) = match &p.scope {
                MerchantScope::All => (0u8, &[][..]),
                MerchantScope::Merchants(l) => (1, &l[..]),
                MerchantScope::Categories(l) => (2, &l[..]),
            };
            w.u8(tag).count(list.len());
            for s in list {
                w.str(s);
            }
            match p.daily_cap {
                None => w.u8(0),
                Some(c) => w.u8(1).u32(c),
            };
            w.bool(p.identity_required).count(p.items.len());
            for i in &p.items {
                w.str(&i.service_code)
                    .str(&i.title)
                    .u32(i.uses_total)
                    .u32(i.uses_left)
                    .u64(i.price_fen);
            }
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let masked_number = r.string("masked number")?;
        let at = r.position();
        let status = CardStatus::from_tag(r.u8()?, at)?;
        let holder = if r.option_tag("holder")? {
            let masked_name = r.string("holder name")?;
            let identity_verifier = if r.option_tag("identity verifier")? {
                Some(r.array()?)
            } else {
                None
            };
            Some(Holder {
                masked_name,
                identity_verifier,
            })
        } else {
            None
        };
        let usage_through_seq = r.u64()?;
        let n = r.count(8)?;
        let mut packages = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.string("package id")?;
            let title = r.string("package title")?;
            let valid_from_ms = r.i64()?;
            let valid_until_ms = r.i64()?;
            let at = r.position();
            let tag = r.u8()?;
            let m = r.count(4)?;
            let mut list = Vec::with_capacity(m);
            for _ in 0..m {
                list.push(r.string("scope entry")?);
            }
            let scope = match tag {
                0 if list.is_empty() => MerchantScope::All,
                0 => {
                    return Err(DecodeError::Invalid {
                        field: "merchant scope",
                        reason: "'all' with a list",
                    });
                }
                1 => MerchantScope::Merchants(list),
                2 => MerchantScope::Categories(list),
                _ => {
                    return Err(DecodeError::BadTag {
                        field: "merchant scope",
                        tag,
                        at,
                    });
                }
            };
            let daily_cap = if r.option_tag("daily cap")? {
                Some(r.u32()?)
            } else {
                None
            };
            let identity_required = r.bool("identity required")?;
            // An item is at least 24 bytes: two empty strings (4 + 4), two u32, one u64.
            let k = r.count(24)?;
            let mut items: Vec<Item> = Vec::with_capacity(k);
            for _ in 0..k {
                let item = Item {
                    service_code: r.string("service code")?,
                    title: r.string("item title")?,
                    uses_total: r.u32()?,
                    uses_left: r.u32()?,
                    price_fen: r.u64()?,
                };
                // Usage is counted per (package, service code): two entries sharing one count
                // would each be checked against their own uses left, and over-drawn together.
                if items.iter().any(|i| i.service_code == item.service_code) {
                    return Err(DecodeError::Invalid {
                        field: "service code",
                        reason: "twice in one package",
                    });
                }
                items.push(item);
            }
            if packages.iter().any(|p: &Package| p.id == id) {
                return Err(DecodeError::Invalid {
                    field: "package id",
                    reason: "twice in one card",
                });
            }
            packages.push(Package {
                id,
                title,
                items,
                valid_from_ms,
                valid_until_ms,
                scope,
                daily_cap,
                identity_required,
            });
        }
        r.finish()?;
        Ok(Card {
            masked_number,
            status,
            holder,
            usage_through_seq,
            packages,
        })
    }

    /// The encoding split around the two fields that differ from terminal to terminal (the holder's
    /// identity verifier and [`Card::usage_through_seq`]), so that a platform signing one card for many
    /// terminals encodes it once: [`BodyTemplate::body`] with a terminal's fields is exactly
    /// [`Card::encode`] of the card carrying them. The card's own values of those two fields are ignored.
    pub fn template(&self) -> BodyTemplate {
        let mut head = Writer::with_capacity(64);
        head.str(&self.masked_number).u8(self.status as u8);
        match &self.holder {
            None => head.u8(0),
            Some(h) => head.u8(1).str(&h.masked_name),
        };
        let mut rest = self.clone();
        rest.holder = None;
        rest.usage_through_seq = 0;
        // Everything after the usage field: the packages, as `encode` writes them.
        let whole = rest.encode();
        let skip = 4 + self.masked_number.len() + 1 + 1 + 8;
        BodyTemplate {
            head: head.into_bytes(),
            named: self.holder.is_some(),
            tail: whole.get(skip..).map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }

    /// All (package, item) pairs in signed order; the position in this list is the card's *entry index*.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &Package, &Item)> {
        self.packages
            .iter()
            .flat_map(|p| p.items.iter().map(move |i| (p, i)))
            .enumerate()
            .map(|(n, (p, i))| (n, p, i))
    }
}

/// A card's encoding around the per-terminal fields ([`Card::template`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTemplate {
    /// Masked number, status and holder up to its identity-verifier option.
    head: Vec<u8>,
    named: bool,
    /// The packages, after `usage_through_seq`.
    tail: Vec<u8>,
}

impl BodyTemplate {
    /// The body with a terminal's fields: its identity verifier (named cards only; ignored for an
    /// anonymous one) and its `usage_through_seq`.
    pub fn body(&self, identity_verifier: Option<&Tag>, usage_through_seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + 41 + self.tail.len());
        out.extend_from_slice(&self.head);
        if self.named {
            match identity_verifier {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(v);
                }
            }
        }
        out.extend_from_slice(&usage_through_seq.to_be_bytes());
        out.extend_from_slice(&self.tail);
        out
    }

    /// Bytes held (for a cache's accounting).
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_card() -> Card {
        Card {
            masked_number: "622848******1234".into(),
            status: CardStatus::Active,
            holder: Some(Holder {
                masked_name: "张*".into(),
                identity_verifier: Some([9; 32]),
            }),
            usage_through_seq: 12,
            packages: vec![Package {
                id: "P1".into(),
                title: "洗车套餐".into(),
                items: vec![Item {
                    service_code: "WASH".into(),
                    title: "精洗".into(),
                    uses_total: 10,
                    uses_left: 7,
                    price_fen: 3500,
                }],
                valid_from_ms: 1,
                valid_until_ms: 2,
                scope: MerchantScope::Categories(vec!["wash".into()]),
                daily_cap: Some(2),
                identity_required: true,
            }],
        }
    }

    #[test]
    fn card_roundtrips() {
        let c = sample_card();
        assert_eq!(Card::decode(&c.encode()).unwrap(), c);
    }

    /// A template with a terminal's fields plugged in is the card's encoding with those fields, for
    /// named cards (with and without a verifier) and anonymous ones.
    #[test]
    fn a_template_with_a_terminals_fields_is_the_cards_encoding() {
        let named = sample_card();
        let mut anonymous = named.clone();
        anonymous.holder = None;
        anonymous.packages.push(Package {
            id: "P2".into(),
            ..named.packages[0].clone()
        });
        for card in [named, anonymous] {
            let t = card.template();
            for (verifier, usage) in [(None, 0), (Some([7u8; 32]), 99), (Some([1; 32]), u64::MAX)] {
                let mut want = card.clone();
                want.usage_through_seq = usage;
                if let Some(h) = want.holder.as_mut() {
                    h.identity_verifier = verifier;
                }
                assert_eq!(t.body(verifier.as_ref(), usage), want.encode(), "{card:?}");
            }
        }
    }

    #[test]
    fn a_package_or_an_item_twice_in_one_card_is_refused() {
        let mut c = sample_card();
        let item = c.packages[0].items[0].clone();
        c.packages[0].items.push(item);
        assert_eq!(
            Card::decode(&c.encode()),
            Err(DecodeError::Invalid {
                field: "service code",
                reason: "twice in one package"
            })
        );
        let mut c = sample_card();
        let package = c.packages[0].clone();
        c.packages.push(package);
        assert_eq!(
            Card::decode(&c.encode()),
            Err(DecodeError::Invalid {
                field: "package id",
                reason: "twice in one card"
            })
        );
    }

    #[test]
    fn a_card_of_minimal_items_roundtrips() {
        // An item is at least 24 bytes (two empty strings, two u32, one u64); a last item list of
        // such items is valid and must not be refused as truncated.
        let mut c = sample_card();
        c.packages[0].items = ["W", "X", "Y"]
            .map(|code| Item {
                service_code: code.into(),
                title: String::new(),
                uses_total: 1,
                uses_left: 1,
                price_fen: 0,
            })
            .to_vec();
        assert_eq!(Card::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn card_numbers_are_normalized_and_masked() {
        let n = CardNumber::parse("6228 4800-1234 1234").unwrap();
        assert_eq!(n.masked(), "622848******1234");
        assert!(!format!("{n:?}").contains("48001234"));
        assert_eq!(
            CardNumber::parse("12345").unwrap_err(),
            CardNumberError::BadLength { len: 5 }
        );
        assert_eq!(
            CardNumber::parse("1234567890123x").unwrap_err(),
            CardNumberError::NotDigits
        );
    }

    fn token(terminal: &str) -> CardTokenKey {
        crate::keys::TerminalSecret::from_bytes(&[9; 32])
            .unwrap()
            .derive_card_token(terminal)
    }

    #[test]
    fn a_card_reference_is_deterministic_per_terminal_and_reverses_only_with_its_key() {
        let n = CardNumber::parse("6228480012345678").unwrap();
        let (t1, t2) = (token("T-1"), token("T-2"));
        let r1 = n.card_ref(&t1);
        assert_eq!(r1, n.card_ref(&t1), "the terminal finds its entry again");
        assert_ne!(
            r1,
            n.card_ref(&t2),
            "two shops' references cannot be joined"
        );
        assert_eq!(t1.reveal(&r1).unwrap(), n);
        assert!(matches!(
            t2.reveal(&r1),
            Err(CardRefError::NotThisTerminals(_))
        ));
        // Leading zeros and lengths are kept apart.
        for raw in [
            "001234567890",
            "1234567890",
            "12345678901200",
            "9999999999999999999",
        ] {
            let Ok(n) = CardNumber::parse(raw) else {
                continue;
            };
            assert_eq!(t1.reveal(&n.card_ref(&t1)).unwrap(), n, "{raw}");
        }
        assert_ne!(
            CardNumber::parse("001234567890").unwrap().card_ref(&t1),
            CardNumber::parse("000123456789").unwrap().card_ref(&t1)
        );
        // A fixed vector (checked against an independent AES-SIV: Python `cryptography`'s AESSIV with
        // the HKDF key), so that the terminal and the platform cannot drift apart unnoticed.
        assert_eq!(
            r1.to_hex(),
            "b268c4f93ee3863b4401b7832a440e3eba1264d9b5523a4e94f8ce6c8980b142"
        );
    }

    proptest! {
        #[test]
        fn every_number_round_trips_and_forged_references_are_refused(
            digits in "[0-9]{12,19}",
            forged in proptest::array::uniform32(any::<u8>()),
        ) {
            let t = token("T-1");
            let n = CardNumber::parse(&digits).unwrap();
            prop_assert_eq!(t.reveal(&n.card_ref(&t)).unwrap(), n);
            let f = CardRef(forged);
            if let Ok(m) = t.reveal(&f) {
                // Only if the 32 bytes are exactly that number's reference (2^-128).
                prop_assert_eq!(m.card_ref(&t), f);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Card::decode(&bytes);
        }

        #[test]
        fn every_truncation_or_flip_of_a_card_is_refused_or_changes_the_value(pos in 0usize..200, bit in 0u8..8) {
            let c = sample_card();
            let bytes = c.encode();
            let pos = pos % bytes.len();
            prop_assert!(Card::decode(&bytes[..pos]).is_err());
            let mut flipped = bytes.clone();
            flipped[pos] ^= 1 << bit;
            prop_assert_ne!(Card::decode(&flipped).ok(), Some(c));
        }
    }
}
