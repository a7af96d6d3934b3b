//! Throttling of guessable secrets (pairing codes, console passwords): failed attempts are counted per
//! source address and for the whole platform in fixed windows (in the database, `storage::throttle`,
//! shared by every server process); past either limit every attempt is refused with `429` and a
//! `Retry-After` until the window ends. Pure.

use super::problem::Problem;

/// The limits of one throttled thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The counter's name in the database.
    pub scope: &'static str,
    /// What is counted, for the refusal: "pairing codes", "logins".
    pub what: &'static str,
    pub window_ms: i64,
    pub per_source: i64,
    pub global: i64,
}

/// Failed attempts counted in the current windows: from this source, and on the whole platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub source: i64,
    pub global: i64,
    /// When the window of the count that decides ends.
    pub window_ends_ms: i64,
}

/// `429 rate_limited` with `Retry-After` when too many attempts failed in the window.
pub fn check(limits: Limits, f: Failures, now_ms: i64) -> Result<(), Problem> {
    let by_source = f.source >= limits.per_source;
    if !by_source && f.global < limits.global {
        return Ok(());
    }
    let wait_s = u64::try_from((f.window_ends_ms - now_ms).max(1000) / 1000).unwrap_or(1);
    Err(Problem::new(
        429,
        "rate_limited",
        format!(
            "too many failed {} {}: try again in {wait_s} s",
            limits.what,
            if by_source {
                "from this address"
            } else {
                "on the platform"
            }
        ),
    )
    .retry_after(wait_s))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const L: Limits = Limits {
        scope: "pairing",
        what: "pairing codes",
        window_ms: 600_000,
        per_source: 10,
        global: 100,
    };

    #[test]
    fn guessing_is_throttled_per_source_and_globally() {
        let f = |source, global| Failures {
            source,
            global,
            window_ends_ms: 10_500,
        };
        assert!(check(L, f(9, 99), 0).is_ok());
        let p = check(L, f(10, 0), 0).unwrap_err();
        assert_eq!((p.status, p.retry_after_secs()), (429, Some(10)));
        assert!(
            p.detail.contains("pairing codes from this address"),
            "{}",
            p.detail
        );
        assert!(
            check(L, f(0, 100), 0)
                .unwrap_err()
                .detail
                .contains("on the platform")
        );
        assert_eq!(
            check(L, f(10, 0), 10_400).unwrap_err().retry_after_secs(),
            Some(1)
        );
    }
}
