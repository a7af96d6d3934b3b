//! The terminal's health report (`POST /v1/terminals/{id}/health`, `redeemd_contract::health`), built
//! as pure code from what the daemon knows: its status board's readers (link state, serial, firmware,
//! last transaction), and the store's journal backlog, cache and last close. Sent at the end of every
//! pass of the daemon's sync task (`super::pass`); the platform keeps the latest and derives its fleet
//! alerts from it.

use std::sync::Arc;

use redeemd_contract::health::{
    CacheHealth, CloseHealth, CloseVerdict, HealthReport, JournalHealth, LinkState, ReaderHealth,
    bounded,
};

use super::plan::Divergence;
use crate::store::close::{CloseInfo, CloseResult};
use crate::store::{CacheInfo, JournalInfo};

/// One reader as the daemon's status board has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderFacts {
    pub name: String,
    /// As the board spells it: `opening`, `port error`, `waiting for reader`, `link up`.
    pub state: String,
    pub detail: Option<String>,
    pub reader_serial: Option<String>,
    pub firmware: Option<String>,
    pub last_transaction_at_ms: Option<i64>,
}

/// What the daemon's status board supplies to a report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardFacts {
    pub started_at_ms: i64,
    pub readers: Vec<ReaderFacts>,
}

/// Where a pass gets the board's facts (the daemon's status board; `redeemd sync` reports none).
pub type HealthSource = Arc<dyn Fn() -> BoardFacts + Send + Sync>;

/// What the store knows, read in one short store call.
#[derive(Debug, Clone)]
pub struct StoreFacts {
    pub journal: JournalInfo,
    pub oldest_unsynced_at_ms: Option<i64>,
    pub cache: Option<CacheInfo>,
    pub last_close: Option<CloseInfo>,
}

/// A board state as the API spells it; a state this version does not know is reported as not linked.
pub fn link_state(board: &str) -> LinkState {
    match board {
        "link up" => LinkState::LinkUp,
        "opening" => LinkState::Opening,
        "waiting for reader" => LinkState::WaitingForReader,
        _ => LinkState::PortError,
    }
}

/// The report of a terminal at `now_ms`, its texts cut to the API's bounds and at most its number of
/// readers.
pub fn report(
    board: &BoardFacts,
    store: &StoreFacts,
    halted: Option<Divergence>,
    sync_interval_secs: u64,
    now_ms: i64,
) -> HealthReport {
    let opt = |s: &Option<String>| s.as_deref().map(bounded);
    HealthReport {
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at_ms: board.started_at_ms,
        reported_at_ms: now_ms,
        sync_interval_secs: sync_interval_secs.clamp(1, 86_400),
        readers: board
            .readers
            .iter()
            .take(redeemd_contract::health::MAX_READERS)
            .map(|r| ReaderHealth {
                name: bounded(&r.name),
                state: link_state(&r.state),
                detail: opt(&r.detail),
                reader_serial: opt(&r.reader_serial),
                firmware: opt(&r.firmware),
                last_transaction_at_ms: r.last_transaction_at_ms,
            })
            .collect(),
        cache: store.cache.as_ref().map(|c| CacheHealth {
            version: c.manifest.version,
            installed_at_ms: c.installed_wall_ms,
            expires_at_ms: c.manifest.expires_at_ms,
        }),
        journal: JournalHealth {
            head_seq: store.journal.head_seq,
            unsynced: store
                .journal
                .head_seq
                .saturating_sub(store.journal.synced_through_seq),
            oldest_unsynced_at_ms: store.oldest_unsynced_at_ms,
        },
        halted: halted.map(|d| bounded(&d.to_string())),
        last_close: store.last_close.as_ref().map(|c| CloseHealth {
            business_date: bounded(&c.business_date),
            result: match c.result {
                CloseResult::Matched => CloseVerdict::Matched,
                CloseResult::Mismatched => CloseVerdict::Mismatched,
                CloseResult::Conflict => CloseVerdict::Conflict,
                CloseResult::Refused => CloseVerdict::Refused,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store() -> StoreFacts {
        StoreFacts {
            journal: JournalInfo {
                head_seq: 12,
                synced_through_seq: 9,
                offline_redemptions: 0,
                last_trusted_wall_ms: 0,
            },
            oldest_unsynced_at_ms: Some(1_000),
            cache: None,
            last_close: Some(CloseInfo {
                business_date: "2026-11-27".into(),
                result: CloseResult::Mismatched,
                through_seq: 9,
                closed_wall_ms: 2_000,
            }),
        }
    }

    #[test]
    fn the_report_says_what_the_board_and_the_store_know_within_bounds() {
        let board = BoardFacts {
            started_at_ms: 5,
            readers: vec![
                ReaderFacts {
                    name: "counter-1".into(),
                    state: "link up".into(),
                    reader_serial: Some("SIM-0001".into()),
                    firmware: Some("sim-1.0".into()),
                    last_transaction_at_ms: Some(3_000),
                    ..ReaderFacts::default()
                },
                ReaderFacts {
                    name: "counter-2".into(),
                    state: "port error".into(),
                    detail: Some("x".repeat(1000)),
                    ..ReaderFacts::default()
                },
            ],
        };
        let r = report(&board, &store(), None, 60, 9_000);
        assert!(r.check().is_ok(), "{r:?}");
        assert_eq!(r.readers[0].state, LinkState::LinkUp);
        assert_eq!(r.readers[1].state, LinkState::PortError);
        assert_eq!(r.readers[1].detail.as_ref().unwrap().len(), 256);
        assert_eq!((r.journal.head_seq, r.journal.unsynced), (12, 3));
        assert_eq!(r.last_close.unwrap().result, CloseVerdict::Mismatched);
        assert_eq!((r.started_at_ms, r.reported_at_ms), (5, 9_000));
        assert_eq!(
            link_state("waiting for reader"),
            LinkState::WaitingForReader
        );
        assert_eq!(link_state("something new"), LinkState::PortError);
    }
}
