//! Bulk card import (`clearing-server admin card import FILE.csv`), as pure code: the CSV read into
//! the cards and packages to issue, every line checked by the rules the `card create` and `card
//! customize` commands apply, each error named by its line. Nothing here touches the database;
//! `storage::import` writes what this returns, all or nothing.
//!
//! The file (UTF-8, comma-separated, RFC 4180 quoting; the header line names the columns, in any
//! order; `#` starts a comment line):
//!
//! | column | required | what |
//! | --- | --- | --- |
//! | `number` | yes | the card number, 12–19 digits (spaces and dashes allowed) |
//! | `holder` | no | a named card's holder |
//! | `identity` | no | identity data the member types at the counter (needs `holder`) |
//! | `package` | no | a package id; empty for a card without packages (then every column below is empty) |
//! | `title` | with `package` | the package's title |
//! | `valid_from`, `valid_until` | with `package` | `YYYY-MM-DD` in China Standard Time (`valid_until` includes that day) or RFC 3339 |
//! | `scope` | no | empty or `all`: every merchant; `merchants:M-1;M-2`; `categories:car-wash;detailing` |
//! | `daily_cap` | no | uses per business day and terminal, all items of the package together |
//! | `identity_required` | no | `yes`/`no` (also `true`/`false`, `1`/`0`; empty: no) |
//! | `items` | with `package` | `CODE:TITLE:USES:PRICE_FEN`, several separated by `;` |
//!
//! One line per card and package: a card with two packages has two lines with the same number (not
//! necessarily adjacent); its `holder` and `identity` must agree on every line that gives them.

use std::collections::HashMap;

use redeemd_contract::model::{CardNumber, MerchantScope};

use super::cards::{ItemSpec, NewCard, PackageSpec, check_id, parse_time};

/// A card to issue, with the line that first named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportCard {
    pub line: u64,
    pub card: NewCard,
    /// Each package with its line.
    pub packages: Vec<(u64, PackageSpec)>,
}

/// A line the import refuses, and why (card numbers masked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: u64,
    pub reason: String,
}

/// Errors reported for one file at most: the rest are counted.
pub const MAX_REPORTED: usize = 20;

/// Why a file was refused: its bad lines (the first [`MAX_REPORTED`]) and how many there were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub errors: Vec<LineError>,
    pub total: u64,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bad line{}; nothing was imported",
            self.total,
            if self.total == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        if self.total > self.errors.len() as u64 {
            write!(
                f,
                "\n  … and {} more",
                self.total - self.errors.len() as u64
            )?;
        }
        Ok(())
    }
}

/// The columns, card first, then the package (from `package` on).
const COLUMNS: [&str; 11] = [
    "number",
    "holder",
    "identity",
    "package",
    "title",
    "valid_from",
    "valid_until",
    "scope",
    "daily_cap",
    "identity_required",
    "items",
];

/// Reads a whole import file. Either every line is good and the cards come back in the order of their
/// first line, or the file is refused with its bad lines.
pub fn parse(input: &[u8]) -> Result<Vec<ImportCard>, Refused> {
    let mut refused = Refused {
        errors: Vec::new(),
        total: 0,
    };
    let fail = |refused: &mut Refused, line: u64, reason: String| {
        refused.total += 1;
        if refused.errors.len() < MAX_REPORTED {
            refused.errors.push(LineError { line, reason });
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(input);
    let columns = match header(&mut reader) {
        Ok(c) => c,
        Err(reason) => {
            fail(&mut refused, 1, reason);
            return Err(refused);
        }
    };
    let mut cards: Vec<ImportCard> = Vec::new();
    let mut by_number: HashMap<String, usize> = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // A broken record (unclosed quote, wrong number of fields, not UTF-8): named, and the
                // reader goes on with the next one.
                let line = e.position().map_or(line, |p| p.line());
                fail(&mut refused, line, e.to_string());
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        match parse_line(&Fields {
            columns: &columns,
            record: &record,
        }) {
            Err(reason) => fail(&mut refused, line, reason),
            Ok((card, package)) => {
                let digits = card.number.digits().to_owned();
                match by_number.get(&digits) {
                    None => {
                        by_number.insert(digits, cards.len());
                        cards.push(ImportCard {
                            line,
                            card,
                            packages: package.map(|p| (line, p)).into_iter().collect(),
                        });
                    }
                    Some(&at) => {
                        let known = &mut cards[at];
                        if let Err(reason) = merge(known, card, package, line) {
                            fail(&mut refused, line, reason);
                        }
                    }
                }
            }
        }
    }
    if cards.is_empty() && refused.total == 0 {
        fail(
            &mut refused,
            1,
            "no cards: the file holds only its header".into(),
        );
    }
    if refused.total > 0 {
        return Err(refused);
    }
    Ok(cards)
}

/// The header's columns by name.
fn header(reader: &mut csv::Reader<&[u8]>) -> Result<HashMap<String, usize>, String> {
    let h = reader
        .headers()
        .map_err(|e| format!("header: {e}"))?
        .clone();
    let mut columns = HashMap::new();
    for (i, name) in h.iter().enumerate() {
        let name = name.trim_start_matches('\u{feff}').to_ascii_lowercase();
        if !COLUMNS.contains(&name.as_str()) {
            return Err(format!(
                "header: unknown column {name:?} (the columns are {})",
                COLUMNS.join(", ")
            ));
        }
        if columns.insert(name.clone(), i).is_some() {
            return Err(format!("header: column {name:?} appears twice"));
        }
    }
    if !columns.contains_key("number") {
        return Err("header: no column \"number\"".into());
    }
    Ok(columns)
}

/// One line's fields by column name (`""` for a column the file does not have).
struct Fields<'a> {
    columns: &'a HashMap<String, usize>,
    record: &'a csv::StringRecord,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> &'a str {
        self.columns
            .get(name)
            .and_then(|&i| self.record.get(i))
            .unwrap_or("")
    }
}

/// One line: its card, and its package if it names one.
fn parse_line(fields: &Fields<'_>) -> Result<(NewCard, Option<PackageSpec>), String> {
    let field = |name: &str| fields.get(name);
    let number = CardNumber::parse(field("number")).map_err(|e| format!("number: {e}"))?;
    let opt = |name: &str| Some(field(name).to_owned()).filter(|v| !v.is_empty());
    let card = NewCard {
        holder_name: opt("holder"),
        identity_data: opt("identity"),
        number,
    };
    card.check()
        .map_err(|e| format!("card {}: {}", card.number.masked(), e.message()))?;
    let Some(id) = opt("package") else {
        // The columns after `package` describe it.
        if let Some(c) = COLUMNS[4..].iter().find(|c| !field(c).is_empty()) {
            return Err(format!("{c} is given but package is empty"));
        }
        return Ok((card, None));
    };
    let required = |name: &str| opt(name).ok_or_else(|| format!("package {id}: {name} is empty"));
    let items = required("items")?
        .split(';')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(ItemSpec::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("package {id}: {}", e.message()))?;
    let spec =
        PackageSpec {
            title: required("title")?,
            valid_from_ms: parse_time("valid_from", &required("valid_from")?, false)
                .map_err(|e| format!("package {id}: {}", e.message()))?,
            valid_until_ms: parse_time("valid_until", &required("valid_until")?, true)
                .map_err(|e| format!("package {id}: {}", e.message()))?,
            scope: scope(field("scope")).map_err(|e| format!("package {id}: scope: {e}"))?,
            daily_cap: match field("daily_cap") {
                "" => None,
                cap => Some(cap.parse::<u32>().map_err(|_| {
                    format!("package {id}: daily_cap {cap:?} is not a whole number")
                })?),
            },
            identity_required: match field("identity_required").to_ascii_lowercase().as_str() {
                "" | "no" | "false" | "0" => false,
                "yes" | "true" | "1" => true,
                other => {
                    return Err(format!(
                        "package {id}: identity_required {other:?} is not yes or no"
                    ));
                }
            },
            items,
            id,
        };
    spec.check().map_err(|e| e.message())?;
    if spec.identity_required && card.identity_data.is_none() {
        return Err(format!(
            "package {}: identity_required on card {} which has no identity data",
            spec.id,
            card.number.masked()
        ));
    }
    Ok((card, Some(spec)))
}

/// `all` (or empty), `merchants:A;B`, `categories:A;B`.
fn scope(text: &str) -> Result<MerchantScope, String> {
    if text.is_empty() || text.eq_ignore_ascii_case("all") {
        return Ok(MerchantScope::All);
    }
    let (kind, list) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not all, merchants:… or categories:…"))?;
    let list: Vec<String> = list
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for id in &list {
        check_id(kind, id).map_err(|e| e.message())?;
    }
    if list.is_empty() {
        return Err(format!("{text:?} lists nothing"));
    }
    match kind.trim().to_ascii_lowercase().as_str() {
        "merchants" => Ok(MerchantScope::Merchants(list)),
        "categories" => Ok(MerchantScope::Categories(list)),
        _ => Err(format!("{kind:?} is not merchants or categories")),
    }
}

/// A later line of a card already read: its holder and identity agree, its package is new.
fn merge(
    known: &mut ImportCard,
    card: NewCard,
    package: Option<PackageSpec>,
    line: u64,
) -> Result<(), String> {
    let masked = card.number.masked();
    for (what, theirs, ours) in [
        ("holder", &card.holder_name, &mut known.card.holder_name),
        (
            "identity",
            &card.identity_data,
            &mut known.card.identity_data,
        ),
    ] {
        match (theirs, &ours) {
            (Some(t), Some(o)) if t != o => {
                return Err(format!(
                    "card {masked}: {what} differs from line {}",
                    known.line
                ));
            }
            (Some(t), None) => *ours = Some(t.clone()),
            _ => {}
        }
    }
    known
        .card
        .check()
        .map_err(|e| format!("card {masked}: {}", e.message()))?;
    let Some(p) = package else {
        return Err(format!(
            "card {masked} is already on line {} and this line names no package",
            known.line
        ));
    };
    if let Some((first, _)) = known.packages.iter().find(|(_, q)| q.id == p.id) {
        return Err(format!(
            "card {masked}: package {} is already on line {first}",
            p.id
        ));
    }
    if p.identity_required && known.card.identity_data.is_none() {
        return Err(format!(
            "package {}: identity_required on card {masked} which has no identity data",
            p.id
        ));
    }
    known.packages.push((line, p));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HEADER: &str = "number,holder,identity,package,title,valid_from,valid_until,scope,daily_cap,identity_required,items\n";

    #[test]
    fn a_file_reads_into_cards_with_their_packages() {
        let file = format!(
            "{HEADER}\
             6228480012345678,张三,1234,P1,洗车套餐,2026-01-01,2027-12-31,categories:car-wash,2,yes,WASH:精洗:10:3500;OIL:换机油:3:12000\n\
             # a comment line\n\
             6228480012349999,,,,,,,,,,\n\
             \"6228 4800 1234 5678\",,,P2,\"Tyres, front\",2026-01-01,2026-06-30,merchants:M-1;M-2,,,TYRE:补胎:1:5000\n"
        );
        let cards = parse(file.as_bytes()).unwrap();
        assert_eq!(cards.len(), 2);
        let a = &cards[0];
        assert_eq!((a.line, a.card.holder_name.as_deref()), (2, Some("张三")));
        assert_eq!(a.packages.len(), 2);
        let (line, p2) = &a.packages[1];
        assert_eq!(*line, 5);
        assert_eq!(p2.title, "Tyres, front");
        assert_eq!(
            p2.scope,
            MerchantScope::Merchants(vec!["M-1".into(), "M-2".into()])
        );
        let p1 = &a.packages[0].1;
        assert_eq!(
            (p1.daily_cap, p1.identity_required, p1.items.len()),
            (Some(2), true, 2)
        );
        assert_eq!(p1.items[1].price_fen, 12000);
        assert!(cards[1].packages.is_empty());
        // Columns in another order, some left out.
        let cards = parse(b"items,number,package,title,valid_from,valid_until\nW:w:1:1,6228480012345678,P,t,2026-01-01,2026-02-01\n").unwrap();
        assert_eq!(cards[0].packages[0].1.scope, MerchantScope::All);
    }

    #[test]
    fn every_bad_line_is_named_and_nothing_is_returned() {
        let file = format!(
            "{HEADER}\
             6228480012345678,,,P1,t,2026-01-01,2026-12-31,,,,WASH:w:1:1\n\
             12345,,,,,,,,,,\n\
             6228480012345679,,,P1,t,2026-13-01,2026-12-31,,,,WASH:w:1:1\n\
             6228480012345680,,,P1,t,2026-01-01,2026-12-31,,,,WASH:w:0:1\n\
             6228480012345681,,,P1,t,2026-01-01,2026-12-31,,,yes,WASH:w:1:1\n\
             6228480012345678,李四,,P2,t,2026-01-01,2026-12-31,,,,WASH:w:1:1\n\
             6228480012345678,,,P1,t,2026-01-01,2026-12-31,,,,WASH:w:1:1\n\
             6228480012345682,,,,t,,,,,,\n\
             6228480012345683,,,P1,t,2026-01-01,2026-12-31,planets:x,,,WASH:w:1:1\n\
             6228480012345684,only,three\n"
        );
        let e = parse(file.as_bytes()).unwrap_err();
        let lines: Vec<u64> = e.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 8, 9, 10, 11], "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("8 bad lines; nothing was imported"),
            "{text}"
        );
        for needle in [
            "line 3: number: card number has 5 digits",
            "line 4: package P1: valid_from: \"2026-13-01\"",
            "line 5: package P1: items: \"WASH:w:0:1\": uses_total: 0: 1 to 100000",
            "line 6: package P1: identity_required on card 622848******5681",
            "line 7",
            "line 8: card 622848******5678: package P1 is already on line 2",
            "line 9: title is given but package is empty",
            "line 10: package P1: scope: \"planets\" is not merchants or categories",
            "line 11:",
        ] {
            if needle == "line 7" {
                // 李四 names a holder where line 2 named none: taken, not a conflict.
                assert!(!text.contains("line 7:"), "{text}");
            } else {
                assert!(text.contains(needle), "{needle:?} in {text}");
            }
        }
        assert!(!text.contains("6228480012345"), "a number in clear: {text}");
    }

    #[test]
    fn a_bad_header_or_an_empty_file_is_refused() {
        for (file, want) in [
            (
                "numbr,package\n6228480012345678,\n",
                "unknown column \"numbr\"",
            ),
            ("package,title\n", "no column \"number\""),
            ("number,number\n", "appears twice"),
            ("number\n", "no cards"),
        ] {
            let e = parse(file.as_bytes()).unwrap_err();
            assert_eq!(e.errors[0].line, 1);
            assert!(e.to_string().contains(want), "{file:?}: {e}");
        }
    }

    #[test]
    fn a_holder_given_twice_differently_is_refused() {
        let file = format!(
            "{HEADER}\
             6228480012345678,张三,,P1,t,2026-01-01,2026-12-31,,,,WASH:w:1:1\n\
             6228480012345678,李四,,P2,t,2026-01-01,2026-12-31,,,,WASH:w:1:1\n"
        );
        let e = parse(file.as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 3: card 622848******5678: holder differs from line 2"),
            "{e}"
        );
    }
}
