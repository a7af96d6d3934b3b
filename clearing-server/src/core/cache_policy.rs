//! How long a signed cache lets a shop redeem offline, and how often a quiet platform renews it
//! (`serve --cache-validity-hours`). Pure: the bundle producer asks it with the time it was given.

use thiserror::Error;

const HOUR_MS: i64 = 3_600_000;

/// How long a signed cache lets a shop redeem without reaching the platform, and how often a quiet
/// platform renews it: platform policy, set with `clearing-server serve --cache-validity-hours`.
///
/// The validity is the longest a shop can stay offline and keep redeeming: past a bundle's
/// `expires_at_ms` the terminal fails closed (`CacheExpired`) until it reaches the platform again.
/// Longer is kinder to shops with bad lines and riskier for the platform: a card reported lost
/// reaches an offline shop only when it syncs, and over-redemption across offline shops grows with
/// time (each shop's `[risk]` limits still apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    validity_ms: i64,
    refresh_after_ms: i64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CachePolicyError {
    #[error(
        "{text:?} is not a number of hours (a whole number from {} to {})",
        CachePolicy::MIN_VALIDITY_HOURS,
        CachePolicy::MAX_VALIDITY_HOURS
    )]
    NotHours { text: String },
    #[error(
        "{hours} h is out of range: a cache is valid for at least {} h and at most {} h (30 days)",
        CachePolicy::MIN_VALIDITY_HOURS,
        CachePolicy::MAX_VALIDITY_HOURS
    )]
    OutOfRange { hours: u64 },
}

impl CachePolicy {
    /// Three days: a long weekend with the line down.
    pub const DEFAULT_VALIDITY_HOURS: u32 = 72;
    pub const MIN_VALIDITY_HOURS: u32 = 1;
    /// 30 days. Beyond that a loss report could stay unseen by an offline shop for more than a
    /// month: an outage that long needs a person, not a longer cache.
    pub const MAX_VALIDITY_HOURS: u32 = 30 * 24;
    /// The longest the version counter stays unmoved on a quiet platform (24 h).
    pub const MAX_REFRESH_AFTER_MS: i64 = 24 * HOUR_MS;

    /// The policy for a validity of `hours` (from [`Self::MIN_VALIDITY_HOURS`] to
    /// [`Self::MAX_VALIDITY_HOURS`]).
    pub fn from_hours(hours: u64) -> Result<Self, CachePolicyError> {
        let range = u64::from(Self::MIN_VALIDITY_HOURS)..=u64::from(Self::MAX_VALIDITY_HOURS);
        if !range.contains(&hours) {
            return Err(CachePolicyError::OutOfRange { hours });
        }
        // In range, so no overflow: at most 720 h.
        let validity_ms = hours as i64 * HOUR_MS;
        // A `204` renews nothing: a terminal's installed cache was issued at most `refresh_after`
        // after the counter last moved, so a terminal that kept polling holds a cache with at least
        // `validity - refresh_after` left when its line goes down. Capped at 24 h, so that the
        // validity the platform sets is what a shop can count on, less at most a day; and at most a
        // third of the validity, so that a short one (tests, a strict platform) is renewed long
        // before it runs out. A bump costs each terminal one empty delta. 72 h -> 24 h either way.
        let refresh_after_ms = (validity_ms / 3).min(Self::MAX_REFRESH_AFTER_MS);
        Ok(Self {
            validity_ms,
            refresh_after_ms,
        })
    }

    /// The policy for a validity given as text in hours (the command line's `--cache-validity-hours`).
    pub fn parse_hours(text: &str) -> Result<Self, CachePolicyError> {
        let hours = text
            .trim()
            .parse::<u64>()
            .map_err(|_| CachePolicyError::NotHours {
                text: text.to_owned(),
            })?;
        Self::from_hours(hours)
    }

    /// A bundle's `expires_at_ms` is its `issued_at_ms` plus this.
    pub fn validity_ms(&self) -> i64 {
        self.validity_ms
    }

    /// The version counter is bumped when it has not moved for this long.
    pub fn refresh_after_ms(&self) -> i64 {
        self.refresh_after_ms
    }
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            validity_ms: i64::from(Self::DEFAULT_VALIDITY_HOURS) * HOUR_MS,
            refresh_after_ms: Self::MAX_REFRESH_AFTER_MS,
        }
    }
}

/// The validity in hours, as `--cache-validity-hours` takes it.
impl std::fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.validity_ms / HOUR_MS)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cache_policy_validity_and_refresh() {
        let h = |n: u64| CachePolicy::from_hours(n).unwrap();
        assert_eq!(h(72), CachePolicy::default());
        assert_eq!(
            (h(72).validity_ms(), h(72).refresh_after_ms()),
            (72 * HOUR_MS, 24 * HOUR_MS)
        );
        assert_eq!(h(192).refresh_after_ms(), 24 * HOUR_MS, "capped at a day");
        assert_eq!(h(6).refresh_after_ms(), 2 * HOUR_MS, "a third when shorter");
        assert_eq!(h(1).refresh_after_ms(), 20 * 60_000);
        for hours in 1..=720 {
            let p = h(hours);
            assert_eq!(p.validity_ms(), hours as i64 * HOUR_MS);
            assert!(p.refresh_after_ms() > 0);
            assert!(p.refresh_after_ms() * 3 <= p.validity_ms(), "{hours} h");
            assert!(p.refresh_after_ms() <= CachePolicy::MAX_REFRESH_AFTER_MS);
            assert_eq!(CachePolicy::parse_hours(&p.to_string()), Ok(p));
        }
        assert_eq!(CachePolicy::parse_hours(" 192 "), Ok(h(192)));
        for (text, err) in [
            ("0", CachePolicyError::OutOfRange { hours: 0 }),
            ("721", CachePolicyError::OutOfRange { hours: 721 }),
            (
                "99999999999999999999",
                CachePolicyError::NotHours {
                    text: "99999999999999999999".into(),
                },
            ),
            ("-1", CachePolicyError::NotHours { text: "-1".into() }),
            ("3d", CachePolicyError::NotHours { text: "3d".into() }),
            (
                "",
                CachePolicyError::NotHours {
                    text: String::new(),
                },
            ),
        ] {
            assert_eq!(CachePolicy::parse_hours(text), Err(err), "{text:?}");
        }
        assert_eq!(
            CachePolicyError::OutOfRange { hours: 0 }.to_string(),
            "0 h is out of range: a cache is valid for at least 1 h and at most 720 h (30 days)"
        );
    }
}
