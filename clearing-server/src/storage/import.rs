//! Bulk card import: the cards `core::import` read from a file, issued with their packages in one
//! transaction — all of them or none.
//!
//! Written in multi-row statements ([`ROWS_PER_STATEMENT`] rows each), because a statement per row
//! costs a round trip each on PostgreSQL (100,000 cards with two items are ~900,000 rows): the numbers
//! are looked up by their lookup keys a thousand at a time (one already issued refuses the whole
//! file, naming its line), then the cards, packages, items, signed prices and scope history go in
//! batches. Every card takes one new entitlement version, the same for all, so that every terminal
//! gets them in its next delta.
//!
//! The transaction is read committed: what must hold is held by the card's unique lookup key (a
//! concurrent `card create` of a number in the file fails one of the two by name) and by the version
//! counter's row lock, which the import takes first and keeps until it commits — uploads, which bump
//! the counter too, wait for it (a few seconds for 100,000 cards: run imports off-peak).

use std::collections::HashMap;

use redeemd_contract::model::CardStatus;

use super::cards::{self, CardError, SEALED_IDENTITY, SEALED_NUMBER, StoredPackage};
use super::sql::{Param, Row, StorageError, Tx, int};
use crate::core::card_search;
use crate::core::cards::{scope_to_db, scopes_json, template};
use crate::core::import::ImportCard;
use crate::core::problem::Problem;
use crate::vault::Vault;

/// Rows written by one statement (the widest, `card`, binds 12 parameters a row: far below the
/// engines' limits of 32,766 and 65,535).
pub const ROWS_PER_STATEMENT: usize = 500;
/// Lookup keys asked for by one query.
const KEYS_PER_QUERY: usize = 1000;

/// What an import issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub cards: u64,
    pub packages: u64,
    pub items: u64,
    /// The entitlement version every imported card has.
    pub version: u64,
}

/// `INSERT INTO <into> VALUES (…), (…), …` of `rows` (each `columns` wide) in statements of
/// [`ROWS_PER_STATEMENT`] rows, with `returning` appended; the rows returned, in statement order.
fn insert_rows(
    tx: &mut dyn Tx,
    into: &str,
    columns: usize,
    rows: &[Vec<Param<'_>>],
    returning: &str,
) -> Result<Vec<Row>, StorageError> {
    let mut out = Vec::new();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = format!("INSERT INTO {into} VALUES ");
        let mut params = Vec::with_capacity(chunk.len() * columns);
        for (r, row) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..columns {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", r * columns + c + 1));
            }
            sql.push(')');
            params.extend_from_slice(row);
        }
        sql.push_str(returning);
        if returning.is_empty() {
            tx.execute(&sql, &params)?;
        } else {
            out.extend(tx.query(&sql, &params)?);
        }
    }
    Ok(out)
}

/// Issues every card of `cards` with its packages, or none: a number the platform already issued
/// refuses the whole import with its line.
pub fn import_cards(
    tx: &mut dyn Tx,
    vault: &Vault,
    cards: &[ImportCard],
    now_ms: i64,
) -> Result<Imported, CardError> {
    refuse_issued(tx, vault, cards)?;
    let version = cards::bump_version(tx, now_ms)?;
    let v = int("version", version)?;

    // Cards: sealed number and identity, lookup key, the derived body (no uses yet), and the search
    // index's first six, last four and folded holder (`core::card_search`), as `card create` writes.
    struct CardValues {
        key: String,
        sealed: Vec<u8>,
        identity: Option<Vec<u8>>,
        body: Vec<u8>,
        head: Option<String>,
        tail: Option<String>,
        holder_key: Option<String>,
    }
    let fingerprint = vault.current().fingerprint();
    let values: Vec<CardValues> = cards
        .iter()
        .map(|c| {
            let stored: Vec<StoredPackage> = c
                .packages
                .iter()
                .map(|(_, p)| StoredPackage {
                    used: vec![0; p.items.len()],
                    spec: p.clone(),
                })
                .collect();
            let (head, tail) = card_search::head_and_tail(&c.card.number.masked()).unzip();
            Ok(CardValues {
                head,
                tail,
                holder_key: c.card.holder_name.as_deref().map(card_search::holder_key),
                key: vault.lookup_key(c.card.number.digits()),
                sealed: vault.seal(SEALED_NUMBER, c.card.number.digits().as_bytes())?,
                identity: c
                    .card
                    .identity_data
                    .as_ref()
                    .map(|i| vault.seal(SEALED_IDENTITY, i.as_bytes()))
                    .transpose()?,
                body: template(
                    c.card.number.masked(),
                    CardStatus::Active,
                    c.card.holder_name.as_deref(),
                    &stored,
                )
                .encode(),
            })
        })
        .collect::<Result<_, CardError>>()?;
    let rows: Vec<Vec<Param<'_>>> = cards
        .iter()
        .zip(&values)
        .map(|(c, val)| {
            vec![
                Param::Text(&val.key),
                Param::Blob(&val.sealed),
                Param::Blob(&fingerprint),
                Param::Int(CardStatus::Active as i64),
                c.card.holder_name.as_deref().into(),
                val.identity.as_deref().into(),
                Param::Int(now_ms),
                Param::Int(v),
                Param::Blob(&val.body),
                val.head.as_deref().into(),
                val.tail.as_deref().into(),
                val.holder_key.as_deref().into(),
            ]
        })
        .collect();
    let ids: HashMap<String, i64> = insert_rows(
        tx,
        "card (number_key, number_sealed, sealed_with, status, holder_name, identity_sealed, \
         created_ms, version, body, number_head, number_tail, holder_key)",
        12,
        &rows,
        " RETURNING number_key, id",
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.i64(1)?)))
    .collect::<Result<_, StorageError>>()?;
    let id_of = |val: &CardValues| {
        ids.get(&val.key).copied().ok_or_else(|| {
            CardError::Storage(StorageError::Other(
                "an imported card's id did not come back from its insert".into(),
            ))
        })
    };
    let card_ids: Vec<i64> = values.iter().map(id_of).collect::<Result<_, _>>()?;

    // Packages, their items, the price signed from this version on, and the scope history (none
    // before this version: a terminal at an older version never had these cards).
    let scope_rows: Vec<(u8, String)> = cards
        .iter()
        .flat_map(|c| c.packages.iter().map(|(_, p)| scope_to_db(&p.scope)))
        .collect();
    let mut packages = Vec::new();
    let mut items = Vec::new();
    let mut prices = Vec::new();
    let mut history = Vec::new();
    let mut scope = scope_rows.iter();
    let empty = scopes_json(&[]);
    for (c, id) in cards.iter().zip(&card_ids) {
        if !c.packages.is_empty() {
            history.push(vec![Param::Int(*id), Param::Int(v), Param::Text(&empty)]);
        }
        for (position, (_, p)) in c.packages.iter().enumerate() {
            let (kind, list) = scope
                .next()
                .ok_or_else(|| CardError::Stored("a package's scope was not computed".into()))?;
            packages.push(vec![
                Param::Int(*id),
                Param::Text(&p.id),
                Param::Int(position as i64),
                Param::Text(&p.title),
                Param::Int(p.valid_from_ms),
                Param::Int(p.valid_until_ms),
                Param::Int(i64::from(*kind)),
                Param::Text(list),
                p.daily_cap.into(),
                p.identity_required.into(),
                Param::Int(now_ms),
            ]);
            for (item_position, i) in p.items.iter().enumerate() {
                let price = Param::Int(i64::try_from(i.price_fen).unwrap_or(i64::MAX));
                items.push(vec![
                    Param::Int(*id),
                    Param::Text(&p.id),
                    Param::Text(&i.service_code),
                    Param::Int(item_position as i64),
                    Param::Text(&i.title),
                    Param::Int(i64::from(i.uses_total)),
                    price,
                ]);
                prices.push(vec![
                    Param::Int(*id),
                    Param::Text(&p.id),
                    Param::Text(&i.service_code),
                    Param::Int(v),
                    price,
                ]);
            }
        }
    }
    insert_rows(
        tx,
        "package (card_id, id, position, title, valid_from_ms, valid_until_ms, scope_kind, \
         scope_list, daily_cap, identity_required, customized_ms)",
        11,
        &packages,
        "",
    )?;
    insert_rows(
        tx,
        "package_item (card_id, package_id, service_code, position, title, uses_total, price_fen)",
        7,
        &items,
        "",
    )?;
    insert_rows(
        tx,
        "item_price (card_id, package_id, service_code, from_version, price_fen)",
        5,
        &prices,
        "",
    )?;
    insert_rows(
        tx,
        "scope_change (card_id, version, scopes_before)",
        3,
        &history,
        "",
    )?;
    Ok(Imported {
        cards: cards.len() as u64,
        packages: packages.len() as u64,
        items: items.len() as u64,
        version,
    })
}

/// Refuses the import if any of its numbers was issued already (under the current master key's
/// lookup key, or the previous one during a rotation), naming the first such line.
fn refuse_issued(tx: &mut dyn Tx, vault: &Vault, cards: &[ImportCard]) -> Result<(), CardError> {
    let mut line_of: HashMap<String, &ImportCard> = HashMap::with_capacity(cards.len());
    for c in cards {
        for key in vault.lookup_keys(c.card.number.digits()) {
            line_of.insert(key, c);
        }
    }
    let keys: Vec<&String> = line_of.keys().collect();
    let mut issued: Vec<&ImportCard> = Vec::new();
    for chunk in keys.chunks(KEYS_PER_QUERY) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let params: Vec<Param<'_>> = chunk.iter().map(|k| Param::Text(k)).collect();
        let rows = tx.query(
            &format!(
                "SELECT number_key FROM card WHERE number_key IN ({})",
                marks.join(", ")
            ),
            &params,
        )?;
        for r in rows {
            if let Some(c) = line_of.get(&r.text(0)?) {
                issued.push(c);
            }
        }
    }
    issued.sort_by_key(|c| c.line);
    match issued.first() {
        None => Ok(()),
        Some(c) => Err(Problem::conflict(
            "already_exists",
            format!(
                "line {}: card {} was already issued{}; nothing was imported",
                c.line,
                c.card.number.masked(),
                match issued.len() {
                    1 => String::new(),
                    n => format!(" (and {} more cards of the file)", n - 1),
                }
            ),
        )
        .into()),
    }
}
