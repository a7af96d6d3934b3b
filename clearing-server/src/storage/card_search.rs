//! Cards found by what a person can say of them (`crate::core::card_search`): the last four digits and
//! perhaps the first six, the start of the holder's name, or the whole number (by its lookup hash).
//! The index columns are written with the card (`super::cards::insert_card`); [`fill_index`] fills them
//! for the rows of a database older than schema version 9.

use super::cards::{CARD_COLUMNS, CardError, CardRow, card_by_id, card_id_by_number, card_row};
use super::sql::{Param, Tx};
use crate::core::card_search::{self, CardQuery, NumberQuery, holder_key, prefix_end};
use crate::params;
use crate::vault::Vault;

/// The cards `q` matches, by id, at most `limit` of them.
pub fn find(
    tx: &mut dyn Tx,
    vault: &Vault,
    q: &CardQuery,
    limit: u32,
) -> Result<Vec<CardRow>, CardError> {
    if let Some(NumberQuery::Whole(n)) = &q.number {
        let Some(id) = card_id_by_number(tx, vault, n)? else {
            return Ok(Vec::new());
        };
        let row = card_by_id(tx, id)?;
        let holder_matches = q.holder.as_deref().is_none_or(|prefix| {
            row.holder_name
                .as_deref()
                .is_some_and(|h| holder_key(h).starts_with(prefix))
        });
        return Ok(if holder_matches {
            vec![row]
        } else {
            Vec::new()
        });
    }
    /// Binds `v` as the next parameter; its placeholder.
    fn bind(values: &mut Vec<String>, v: String) -> String {
        values.push(v);
        format!("${}", values.len())
    }
    let mut conditions = Vec::new();
    let mut values: Vec<String> = Vec::new();
    if let Some(NumberQuery::Masked { head, tail }) = &q.number {
        conditions.push(format!("number_tail = {}", bind(&mut values, tail.clone())));
        if let Some(h) = head {
            conditions.push(format!("number_head = {}", bind(&mut values, h.clone())));
        }
    }
    if let Some(prefix) = &q.holder {
        let from = bind(&mut values, prefix.clone());
        let until = bind(&mut values, prefix_end(prefix));
        conditions.push(format!("holder_key >= {from} AND holder_key < {until}"));
    }
    let limit_at = values.len() + 1;
    let sql = format!(
        "{CARD_COLUMNS} WHERE {} ORDER BY id LIMIT ${limit_at}",
        conditions.join(" AND ")
    );
    let mut params: Vec<Param<'_>> = values.iter().map(Param::from).collect();
    params.push(Param::from(i64::from(limit)));
    tx.query(&sql, &params)?.iter().map(card_row).collect()
}

/// Rows filled per call of [`fill_index`].
pub const FILL_BATCH: i64 = 1_000;

/// Writes the search columns of up to [`FILL_BATCH`] cards that do not have them yet (a database
/// migrated from schema 7): the number's first six and last four from the card's masked number, the
/// folded holder name. Returns how many it filled.
pub fn fill_index(tx: &mut dyn Tx) -> Result<u64, CardError> {
    let rows = tx.query(
        &format!("{CARD_COLUMNS} WHERE number_tail IS NULL ORDER BY id LIMIT $1"),
        params![FILL_BATCH],
    )?;
    for r in &rows {
        let card = card_row(r)?;
        let (head, tail) =
            card_search::head_and_tail(&card.masked).ok_or_else(|| CardError::Corrupt {
                what: "masked number",
                card_id: card.id,
                reason: format!("{:?} has no first six and last four digits", card.masked),
            })?;
        tx.execute(
            "UPDATE card SET number_head = $2, number_tail = $3, holder_key = $4 WHERE id = $1",
            params![
                card.id,
                &head,
                &tail,
                card.holder_name.as_deref().map(holder_key).as_ref()
            ],
        )?;
    }
    Ok(rows.len() as u64)
}
