//! The catalogue of packages the member app offers (`catalogue_offer`; rules in
//! `crate::core::catalogue`).

use super::sql::{Row, StorageError, Tx};
use crate::core::cards::{ItemSpec, json, scope_from_db, scope_to_db};
use crate::core::catalogue::Offer;
use crate::params;

/// Creates or replaces an offer.
pub fn put(tx: &mut dyn Tx, o: &Offer, now_ms: i64) -> Result<(), StorageError> {
    let (kind, list) = scope_to_db(&o.scope);
    tx.execute(
        "INSERT INTO catalogue_offer (id, title, valid_days, scope_kind, scope_list, daily_cap, identity_required,
                                      items, active, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET title = $2, valid_days = $3, scope_kind = $4, scope_list = $5,
             daily_cap = $6, identity_required = $7, items = $8, active = $9, updated_ms = $10",
        params![
            &o.id,
            &o.title,
            o.valid_days,
            kind,
            &list,
            o.daily_cap,
            o.identity_required,
            &json(&o.items),
            o.active,
            now_ms
        ],
    )?;
    Ok(())
}

const COLUMNS: &str = "SELECT id, title, valid_days, scope_kind, scope_list, daily_cap, identity_required, items, active
                       FROM catalogue_offer";

fn row(r: &Row) -> Result<Offer, StorageError> {
    let id = r.text(0)?;
    let corrupt =
        |what: &str| StorageError::Other(format!("catalogue offer {id}: stored {what} unusable"));
    let (kind, list) = (r.i64(3)?, r.text(4)?);
    let items: Vec<ItemSpec> = serde_json::from_str(&r.text(7)?).map_err(|_| corrupt("items"))?;
    Ok(Offer {
        title: r.text(1)?,
        valid_days: u32::try_from(r.i64(2)?).map_err(|_| corrupt("validity"))?,
        scope: scope_from_db(kind, &list).ok_or_else(|| corrupt("scope"))?,
        daily_cap: r.opt_i64(5)?.and_then(|c| u32::try_from(c).ok()),
        identity_required: r.bool(6)?,
        items,
        active: r.bool(8)?,
        id,
    })
}

pub fn offers(tx: &mut dyn Tx, active_only: bool) -> Result<Vec<Offer>, StorageError> {
    let sql = if active_only {
        format!("{COLUMNS} WHERE active = 1 ORDER BY id")
    } else {
        format!("{COLUMNS} ORDER BY id")
    };
    tx.query(&sql, &[])?.iter().map(row).collect()
}

pub fn offer(tx: &mut dyn Tx, id: &str) -> Result<Option<Offer>, StorageError> {
    tx.query_opt(&format!("{COLUMNS} WHERE id = $1"), params![id])?
        .map(|r| row(&r))
        .transpose()
}
