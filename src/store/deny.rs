//! The deny overlay: verified deny-list entries (`docs/api/README.md`, "`GET deny-list`") that refuse
//! a card lost, frozen, cancelled or reissued since its cache entry was signed.
//!
//! * **Apply** ([`Store::apply_deny_list`]): every entry of an answer is verified first (MAC with the
//!   cache key, merchant, strictly ascending versions above the applied one); one bad entry refuses
//!   the whole answer and nothing is written. The rows and the MACed terminal state (highest applied
//!   version, row count) are written in one short transaction.
//! * **Load** (at open and whenever another connection changed the database, see `Store::reload`):
//!   every row's MAC is verified again, and the row count and highest version must equal the MACed
//!   terminal state — an edited row fails its MAC, a **deleted** row fails the count. Either makes the
//!   store refuse to open (or, in a running daemon, decline every card with `IntegrityFailure`) until
//!   an operator restores the database: a loss report that silently vanished must never re-enable a card.
//! * **Lookup**: the verified entries live in memory (a deny list is small: the cards of one merchant
//!   reported since their last cache entry), so a lookup costs a hash probe and cannot be fooled by an
//!   edit made after the load.
//!
//! A deny entry can only refuse: [`crate::engine::deny_overlay`] picks the status, and its type has no
//! "active".

use std::collections::HashMap;

use redeemd_contract::deny::{DenyEntry, DenyStatus};
use redeemd_contract::keys::{MacKey, Tag};
use redeemd_contract::model::CardRef;
use rusqlite::{Connection, TransactionBehavior, params};
use thiserror::Error;

use super::rows::{Integrity, TerminalRow};
use super::{Store, StoreError};

/// A deny-list answer as received (`GET deny-list?since=N`), not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyList {
    pub merchant_id: String,
    /// The server's current deny-list version.
    pub version: u64,
    /// Entries with their MACs as sent (any length: a wrong one simply fails).
    pub entries: Vec<(DenyEntry, Vec<u8>)>,
}

/// Why a deny-list answer was refused. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DenyError {
    #[error("the list is for merchant {found:?}, this terminal is {expected:?}")]
    WrongMerchant { expected: String, found: String },
    #[error("entry {index} (card {card}): bad MAC")]
    BadMac { index: usize, card: String },
    #[error(
        "entry {index} (card {card}): version {version} is not above {floor} (entries must ascend above the applied version)"
    )]
    NotAscending {
        index: usize,
        card: String,
        version: u64,
        floor: u64,
    },
    #[error("entry {index} (card {card}): version {version} is above the list's version {list}")]
    AboveList {
        index: usize,
        card: String,
        version: u64,
        list: u64,
    },
    #[error(
        "entry {index} (card {card}): {field} {value} is above {max}, the largest the store can keep",
        max = i64::MAX
    )]
    VersionTooLarge {
        index: usize,
        card: String,
        field: &'static str,
        value: u64,
    },
    #[error(
        "the server's deny-list version {server} is below the applied {applied} (server restored from an older backup?)"
    )]
    Rollback { server: u64, applied: u64 },
}

/// What [`Store::apply_deny_list`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyReport {
    pub applied: usize,
    /// The highest deny-list version now applied.
    pub version: u64,
}

/// The applied deny list, as stored in the MACed terminal state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DenyInfo {
    pub version: u64,
    pub entries: u64,
}

/// Verified deny entries by card, in ascending deny-list version.
pub(super) type DenySet = HashMap<CardRef, Vec<DenyEntry>>;

/// Checks a whole answer against the applied version; returns the entries to store.
pub fn verify_answer(
    cache_key: &MacKey,
    merchant_id: &str,
    applied_version: u64,
    list: &DenyList,
) -> Result<Vec<(DenyEntry, Tag)>, DenyError> {
    if list.merchant_id != merchant_id {
        return Err(DenyError::WrongMerchant {
            expected: merchant_id.to_owned(),
            found: list.merchant_id.clone(),
        });
    }
    if list.version < applied_version {
        return Err(DenyError::Rollback {
            server: list.version,
            applied: applied_version,
        });
    }
    let mut floor = applied_version;
    let mut out = Vec::with_capacity(list.entries.len());
    for (index, (e, mac)) in list.entries.iter().enumerate() {
        let card = || e.card_ref.to_hex();
        // The MAC first: an entry that does not verify is named as such, whatever else is wrong.
        let tag: Option<Tag> = mac.as_slice().try_into().ok();
        let Some(tag) = tag.filter(|_| e.verify(cache_key, merchant_id, mac)) else {
            return Err(DenyError::BadMac {
                index,
                card: card(),
            });
        };
        if e.version <= floor {
            return Err(DenyError::NotAscending {
                index,
                card: card(),
                version: e.version,
                floor,
            });
        }
        // Rows and the terminal state keep versions in SQLite's signed integers: a larger one would
        // be committed as another number, fail its MAC at the next load and leave the store unopenable.
        for (field, value) in [("version", e.version), ("entry version", e.entry_version)] {
            if i64::try_from(value).is_err() {
                return Err(DenyError::VersionTooLarge {
                    index,
                    card: card(),
                    field,
                    value,
                });
            }
        }
        if e.version > list.version {
            return Err(DenyError::AboveList {
                index,
                card: card(),
                version: e.version,
                list: list.version,
            });
        }
        floor = e.version;
        out.push((e.clone(), tag));
    }
    Ok(out)
}

/// Reads every stored deny row in version order, verifying each on its own (MAC, column types);
/// `on_row` gets the entry or the named failure.
pub(crate) fn each_row(
    conn: &Connection,
    cache_key: &MacKey,
    merchant_id: &str,
    mut on_row: impl FnMut(Result<DenyEntry, Integrity>),
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, card_ref, status, entry_version, reported_at_ms, mac FROM deny_entry ORDER BY version",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        on_row(check_row(row, cache_key, merchant_id)?);
    }
    Ok(())
}

fn check_row(
    row: &rusqlite::Row<'_>,
    cache_key: &MacKey,
    merchant_id: &str,
) -> rusqlite::Result<Result<DenyEntry, Integrity>> {
    use rusqlite::types::ValueRef;
    let what = match row.get_ref(0)? {
        ValueRef::Integer(v) => format!("deny entry {v}"),
        other => format!("deny entry {other:?}"),
    };
    let bad = |reason: &str| Ok(Err(Integrity::new(&what, reason)));
    let int = |i: usize| -> rusqlite::Result<Option<i64>> {
        Ok(match row.get_ref(i)? {
            ValueRef::Integer(v) => Some(v),
            _ => None,
        })
    };
    let blob = |i: usize| -> rusqlite::Result<Option<Vec<u8>>> {
        Ok(match row.get_ref(i)? {
            ValueRef::Blob(b) => Some(b.to_vec()),
            _ => None,
        })
    };
    let (Some(version), Some(card), Some(status), Some(entry_version), Some(reported), Some(mac)) =
        (int(0)?, blob(1)?, int(2)?, int(3)?, int(4)?, blob(5)?)
    else {
        return bad("bad column type (row edited)");
    };
    let (Ok(version), Ok(card_ref), Ok(entry_version)) = (
        u64::try_from(version),
        <[u8; 32]>::try_from(card.as_slice()),
        u64::try_from(entry_version),
    ) else {
        return bad("MAC mismatch (row edited)");
    };
    let Some(status) = u8::try_from(status).ok().and_then(DenyStatus::from_code) else {
        return bad("MAC mismatch (row edited): status is not lost, frozen, cancelled or reissued");
    };
    let entry = DenyEntry {
        version,
        card_ref: CardRef(card_ref),
        status,
        entry_version,
        reported_at_ms: reported,
    };
    if !entry.verify(cache_key, merchant_id, &mac) {
        return bad("MAC mismatch (row edited)");
    }
    Ok(Ok(entry))
}

/// The check a deleted (or added) row cannot pass: count and highest version against the MACed state.
pub(crate) fn count_matches(
    rows: u64,
    max_version: u64,
    state: &TerminalRow,
) -> Result<(), Integrity> {
    if rows == state.deny_count && max_version == state.deny_version {
        return Ok(());
    }
    Err(Integrity::new(
        "deny list",
        format!(
            "{rows} rows up to version {max_version}, but the MACed terminal state says {} rows up to version {}: rows were removed or added",
            state.deny_count, state.deny_version
        ),
    ))
}

impl Store {
    /// The applied deny list's version and size.
    pub fn deny_info(&self) -> DenyInfo {
        DenyInfo {
            version: self.state.deny_version,
            entries: self.state.deny_count,
        }
    }

    /// Verifies a deny-list answer and stores it, all or nothing, in one short transaction.
    pub fn apply_deny_list(&mut self, list: &DenyList) -> Result<DenyReport, StoreError> {
        let result = self.apply_deny_list_inner(list);
        self.note_storage(result)
    }

    fn apply_deny_list_inner(&mut self, list: &DenyList) -> Result<DenyReport, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The state as committed now (another connection may have applied entries since we loaded).
        let state = super::read_terminal_row(&tx, &self.keys)?;
        let entries = verify_answer(
            &self.keys.cache,
            &self.cfg.merchant_id,
            state.deny_version,
            list,
        )?;
        if entries.is_empty() {
            return Ok(DenyReport {
                applied: 0,
                version: state.deny_version,
            });
        }
        let mut next = state.clone();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO deny_entry (version, card_ref, status, entry_version, reported_at_ms, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (e, mac) in &entries {
                insert.execute(params![
                    i64::try_from(e.version).unwrap_or(i64::MAX),
                    &e.card_ref.0[..],
                    e.status.code(),
                    i64::try_from(e.entry_version).unwrap_or(i64::MAX),
                    e.reported_at_ms,
                    &mac[..],
                ])?;
                next.deny_version = e.version;
                next.deny_count += 1;
            }
        }
        super::write_terminal_row(&tx, &next, &self.keys)?;
        tx.commit()?;
        self.reload().map_err(StoreError::from)?;
        Ok(DenyReport {
            applied: entries.len(),
            version: next.deny_version,
        })
    }

    /// The deny status that refuses `card_ref`, given the version of its verified cache entry
    /// (`None`: the card is not in the cache).
    pub(crate) fn deny_status(
        &self,
        card_ref: &CardRef,
        cache_entry_version: Option<u64>,
    ) -> Option<DenyStatus> {
        let entries = self.deny.get(card_ref)?;
        crate::engine::deny_overlay(entries, cache_entry_version)
    }
}
