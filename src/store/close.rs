//! The terminal's record of its end-of-day closes (批结算, `docs/api/README.md`, "`POST batch-close`").
//!
//! A business day is closed once it has ended (in the configured UTC offset) and every record of it is
//! acknowledged by the platform; the sync pass plans the closes (`sync::close::closes_due`), sends them,
//! and records each answer here. The journal seq a close ran through is where the next day's close
//! starts, so each record is counted in exactly one close.
//!
//! Each row carries the terminal's MAC (schema 7): the row a sync pass plans from (the latest close)
//! and the one `status` shows are verified before use, so an edited `through_seq` can neither skip a
//! day's close nor repeat one, and an edited verdict cannot hide a mismatch.

use redeemd_contract::TerminalKeys;
use redeemd_contract::close::BatchClose;
use redeemd_contract::keys::tags_equal;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, params};

use super::rows::{CloseRow, Integrity};
use super::{Store, StoreError};

/// The columns of a close row in the order [`row_at`] reads them.
const CLOSE_COLUMNS: &str = "business_date, utc_offset_minutes, first_seq, through_seq, result, answer, closed_wall_ms, mac";

/// Reads and verifies one close row (selected with [`CLOSE_COLUMNS`]). An unsealed state accepts a
/// row without a MAC (a database migrated from before schema 7, not sealed yet).
fn row_at(
    r: &rusqlite::Row<'_>,
    keys: &TerminalKeys,
    sealed: bool,
) -> rusqlite::Result<Result<CloseRow, Integrity>> {
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_owned),
            _ => None,
        })
    };
    let int = |i: usize| -> rusqlite::Result<Option<i64>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Integer(v) => Some(v),
            _ => None,
        })
    };
    let what = format!(
        "batch close {}",
        text(0)?.unwrap_or_else(|| "(date not text)".into())
    );
    let (
        Some(business_date),
        Some(utc_offset_minutes),
        Some(first_seq),
        Some(through_seq),
        Some(result),
        Some(answer),
        Some(closed_wall_ms),
    ) = (
        text(0)?,
        int(1)?,
        int(2)?,
        int(3)?,
        text(4)?,
        text(5)?,
        int(6)?,
    )
    else {
        return Ok(Err(Integrity::new(
            what,
            "a column has the wrong type (row edited)",
        )));
    };
    let row = CloseRow {
        business_date,
        utc_offset_minutes,
        first_seq,
        through_seq,
        result,
        answer,
        closed_wall_ms,
    };
    Ok(match r.get_ref(7)? {
        ValueRef::Null if !sealed => Ok(row),
        ValueRef::Blob(mac) if tags_equal(&row.mac(&keys.journal), mac) => Ok(row),
        ValueRef::Null => Err(Integrity::new(what, "MAC missing (row edited)")),
        _ => Err(Integrity::new(
            format!("{what} (through seq {})", row.through_seq),
            "MAC mismatch (row edited)",
        )),
    })
}

/// Every close row checked, for `journal verify`: the findings, and the number of rows.
pub(crate) fn verify_rows(
    conn: &Connection,
    keys: &TerminalKeys,
    sealed: bool,
    findings: &mut Vec<Integrity>,
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {CLOSE_COLUMNS} FROM batch_close ORDER BY through_seq"
    ))?;
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        n += 1;
        if let Err(i) = row_at(r, keys, sealed)? {
            findings.push(i);
        }
    }
    Ok(n)
}

/// MACs every close row as it is (sealing a database migrated to schema 7, `Store::seal`).
pub(crate) fn seal_rows(conn: &Connection, keys: &TerminalKeys) -> Result<(), StoreError> {
    let rows: Vec<Result<CloseRow, Integrity>> = {
        let mut stmt = conn.prepare(&format!("SELECT {CLOSE_COLUMNS} FROM batch_close"))?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(row_at(r, keys, false)?);
        }
        out
    };
    let mut update = conn
        .prepare("UPDATE batch_close SET mac = ?1 WHERE business_date = ?2 AND through_seq = ?3")?;
    for row in rows {
        let row = row?;
        update.execute(params![
            &row.mac(&keys.journal)[..],
            row.business_date,
            row.through_seq
        ])?;
    }
    Ok(())
}

/// The platform's verdict on a close, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseResult {
    /// The platform's totals for the day equal the terminal's.
    Matched,
    /// They differ: the answer lists the items (an operator and the platform's exceptions look).
    Mismatched,
    /// The platform holds another close for that day (`409 batch_close_conflict`).
    Conflict,
    /// The platform refused the close itself (`400`, `413`, `422`): recorded so that later days are
    /// still closed; an operator looks (the answer is kept).
    Refused,
}

impl CloseResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseResult::Matched => "matched",
            CloseResult::Mismatched => "mismatched",
            CloseResult::Conflict => "conflict",
            CloseResult::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Option<CloseResult> {
        [
            CloseResult::Matched,
            CloseResult::Mismatched,
            CloseResult::Conflict,
            CloseResult::Refused,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// The latest recorded close.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CloseInfo {
    pub business_date: String,
    pub result: CloseResult,
    pub through_seq: u64,
    pub closed_wall_ms: i64,
}

impl Store {
    /// The latest close row, verified (`None`: no close yet).
    fn latest_close(&self) -> Result<Option<CloseRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CLOSE_COLUMNS} FROM batch_close ORDER BY through_seq DESC LIMIT 1"
        ))?;
        let mut rows = stmt.query([])?;
        match rows.next()? {
            None => Ok(None),
            Some(r) => Ok(Some(row_at(r, &self.keys, self.state.sealed)??)),
        }
    }

    /// The journal seq the latest close ran through (0: none yet), from its verified row.
    pub fn closed_through_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .latest_close()?
            .map_or(0, |c| u64::try_from(c.through_seq).unwrap_or(0)))
    }

    /// Records the platform's answer to a close. A second close of a day already closed (records
    /// stamped into that day after it was closed, a clock set back) is a row of its own, so the first
    /// verdict stays as evidence; its `through_seq` moves the next close on past those records.
    pub fn record_close(
        &mut self,
        close: &BatchClose,
        result: CloseResult,
        answer: &str,
        wall_ms: i64,
    ) -> Result<(), StoreError> {
        let row = CloseRow {
            business_date: close.business_date.clone(),
            utc_offset_minutes: i64::from(close.utc_offset_minutes),
            first_seq: i64::try_from(close.first_seq).unwrap_or(i64::MAX),
            through_seq: i64::try_from(close.through_seq).unwrap_or(i64::MAX),
            result: result.as_str().to_owned(),
            answer: answer.to_owned(),
            closed_wall_ms: wall_ms,
        };
        let written = self
            .conn
            .prepare_cached(
                "INSERT INTO batch_close (business_date, utc_offset_minutes, first_seq, through_seq, \
                 result, answer, closed_wall_ms, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    row.business_date,
                    row.utc_offset_minutes,
                    row.first_seq,
                    row.through_seq,
                    row.result,
                    row.answer,
                    row.closed_wall_ms,
                    &row.mac(&self.keys.journal)[..],
                ])
            })
            .map(|_| ())
            .map_err(StoreError::from);
        self.note_storage(written)
    }

    /// The close with the highest journal seq, if any, from its verified row. A result that is not
    /// one of ours (a row written by a later version) reads as a mismatch, the answer that makes a
    /// person look.
    pub fn last_close(&self) -> Result<Option<CloseInfo>, StoreError> {
        Ok(self.latest_close()?.map(|c| CloseInfo {
            result: CloseResult::parse(&c.result).unwrap_or(CloseResult::Mismatched),
            through_seq: u64::try_from(c.through_seq).unwrap_or(0),
            closed_wall_ms: c.closed_wall_ms,
            business_date: c.business_date,
        }))
    }
}
