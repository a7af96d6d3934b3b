//! The terminal's record of its end-of-day closes (批结算, `docs/api/README.md`, "`POST batch-close`").
//!
//! A business day is closed once it has ended (in the configured UTC offset) and every record of it is
//! acknowledged by the platform; the sync pass plans the closes (`sync::close::closes_due`), sends them,
//! and records each answer here. The journal seq a close ran through is where the next day's close
//! starts, so each record is counted in exactly one close.

use redeemd_contract::close::BatchClose;
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

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
    /// The journal seq the latest close ran through (0: none yet).
    pub fn closed_through_seq(&self) -> Result<u64, StoreError> {
        let seq: i64 = self.conn.query_row(
            "SELECT coalesce(max(through_seq), 0) FROM batch_close",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(seq).unwrap_or(0))
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
        self.conn
            .prepare_cached(
                "INSERT INTO batch_close (business_date, utc_offset_minutes, first_seq, through_seq, \
                 result, answer, closed_wall_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                close.business_date,
                close.utc_offset_minutes,
                close.first_seq as i64,
                close.through_seq as i64,
                result.as_str(),
                answer,
                wall_ms
            ])?;
        Ok(())
    }

    /// The close with the highest journal seq, if any. A row whose result is not one of ours (edited)
    /// reads as a mismatch, the answer that makes a person look.
    pub fn last_close(&self) -> Result<Option<CloseInfo>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT business_date, result, through_seq, closed_wall_ms FROM batch_close \
                 ORDER BY through_seq DESC LIMIT 1",
                [],
                |r| {
                    Ok(CloseInfo {
                        business_date: r.get(0)?,
                        result: CloseResult::parse(&r.get::<_, String>(1)?)
                            .unwrap_or(CloseResult::Mismatched),
                        through_seq: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        closed_wall_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }
}
