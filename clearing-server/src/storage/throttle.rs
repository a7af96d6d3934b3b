//! Failed-attempt counters shared by every server process (`throttle`): per source address, and one
//! row (`*`) for the whole platform, in fixed windows. Used for pairing codes (`crate::core::pairing`)
//! and for anything else guessable (console logins).

use super::sql::{StorageError, Tx};
use crate::core::throttle::{Failures, Limits};
use crate::params;

/// The platform-wide row's source.
const GLOBAL: &str = "*";

/// Failures counted under `limits` in the current windows of `source` and of the platform.
pub fn failures(
    tx: &mut dyn Tx,
    limits: Limits,
    source: &str,
    now_ms: i64,
) -> Result<Failures, StorageError> {
    let (scope, window_ms) = (limits.scope, limits.window_ms);
    let mut count = |who: &str| -> Result<(i64, i64), StorageError> {
        let row = tx.query_opt(
            "SELECT window_start_ms, failures FROM throttle WHERE scope = $1 AND source = $2",
            params![scope, who],
        )?;
        let current = match row {
            Some(r) => Some((r.i64(0)?, r.i64(1)?)),
            None => None,
        }
        .filter(|(start, _)| now_ms < start + window_ms);
        Ok(current.map_or((now_ms + window_ms, 0), |(start, n)| (start + window_ms, n)))
    };
    let (source_end, source_n) = count(source)?;
    let (global_end, global_n) = count(GLOBAL)?;
    Ok(Failures {
        source: source_n,
        global: global_n,
        window_ends_ms: if source_n >= global_n {
            source_end
        } else {
            global_end
        },
    })
}

/// Counts one failure under `limits` from `source` (and for the platform), a new window starting
/// where the last one ended. The caller commits the count even though it refuses the request.
pub fn note_failure(
    tx: &mut dyn Tx,
    limits: Limits,
    source: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let (scope, window_ms) = (limits.scope, limits.window_ms);
    for who in [source, GLOBAL] {
        tx.execute(
            "INSERT INTO throttle (scope, source, window_start_ms, failures) VALUES ($1, $2, $3, 1)
             ON CONFLICT (scope, source) DO UPDATE SET
                 failures = CASE WHEN throttle.window_start_ms + $4 <= $3 THEN 1 ELSE throttle.failures + 1 END,
                 window_start_ms = CASE WHEN throttle.window_start_ms + $4 <= $3 THEN $3
                                        ELSE throttle.window_start_ms END",
            params![scope, who, now_ms, window_ms],
        )?;
    }
    // Sources that stopped failing are forgotten once their window passed.
    tx.execute(
        "DELETE FROM throttle WHERE scope = $1 AND source <> $2 AND window_start_ms + $3 <= $4",
        params![scope, GLOBAL, window_ms, now_ms],
    )?;
    Ok(())
}
