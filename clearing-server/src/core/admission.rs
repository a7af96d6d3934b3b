//! Overload, as pure rules: how many requests a server process works on at once, how long one may wait
//! for its turn, and when to tell a refused client to come back (`Retry-After`). The HTTP layer
//! (`crate::http::admission`) holds the permits and the queue; this module decides, on a clock passed
//! in.
//!
//! * At most [`AdmissionPolicy::max_in_flight`] requests are worked on at once (a bundle until its
//!   last byte is sent): past that, more work only makes every request slower — the database and the
//!   CPU are what they are — and the answers late.
//! * The others wait in one FIFO queue, each no longer than its [`Priority`]'s deadline, and no more
//!   than [`AdmissionPolicy::max_queued`] of them: a request that would wait longer is refused at once
//!   with `503 unavailable` and `Retry-After`. Admission is by *measured* waiting time, not by a guess
//!   of capacity: whatever the machine manages, an admitted request has waited at most its deadline.
//! * A pass's first request (the deny list) gets the shorter deadline: under overload, new passes are
//!   turned away before the passes already under way lose the work they did (a refused deny list ends
//!   the terminal's pass before it started; the terminal waits at least `Retry-After`).
//! * `Retry-After` is the time the queue takes to drain at the measured completion rate, doubled at
//!   random (the caller passes the randomness), at least 1 s and at most
//!   [`AdmissionPolicy::max_retry_after_s`], so that the refused do not all come back in the same
//!   second.

/// The limits of one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// Requests worked on at once.
    pub max_in_flight: usize,
    /// Requests waiting at once; one more is refused without waiting.
    pub max_queued: usize,
    /// Longest wait of a pass's first request (`GET deny-list`).
    pub pass_start_wait_ms: u64,
    /// Longest wait of any other request (a pass under way).
    pub in_pass_wait_ms: u64,
    /// Highest `Retry-After` sent, in seconds.
    pub max_retry_after_s: u64,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        Self {
            max_in_flight: 16,
            max_queued: 2048,
            pass_start_wait_ms: 100,
            in_pass_wait_ms: 250,
            max_retry_after_s: 60,
        }
    }
}

/// What a request is to the fleet's passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The first request of a pass (`GET deny-list`): refused first.
    PassStart,
    /// Any other request: a pass under way.
    InPass,
}

impl Priority {
    /// A terminal's pass starts with its deny list (`docs/api/README.md`).
    pub fn of(method: &str, path: &str) -> Priority {
        if method.eq_ignore_ascii_case("GET") && path.ends_with("/deny-list") {
            Priority::PassStart
        } else {
            Priority::InPass
        }
    }
}

/// What to do with an arriving request that found every permit taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Wait for a permit at most this long, then refuse.
    Wait { deadline_ms: u64 },
    /// Refuse now: the queue is full.
    Refuse,
}

impl AdmissionPolicy {
    /// The decision for a request of `priority` when `queued` others already wait.
    pub fn arrival(&self, priority: Priority, queued: usize) -> Arrival {
        if queued >= self.max_queued {
            return Arrival::Refuse;
        }
        Arrival::Wait {
            deadline_ms: match priority {
                Priority::PassStart => self.pass_start_wait_ms,
                Priority::InPass => self.in_pass_wait_ms,
            },
        }
    }
}

/// Completions per second, measured over windows of [`Throughput::WINDOW_MS`] and smoothed.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    window_start_ms: i64,
    in_window: u64,
    /// Smoothed completions per second (0 until a window closed).
    per_s: f64,
}

impl Throughput {
    pub const WINDOW_MS: i64 = 1_000;

    pub fn new(now_ms: i64) -> Self {
        Self {
            window_start_ms: now_ms,
            in_window: 0,
            per_s: 0.0,
        }
    }

    fn roll(&mut self, now_ms: i64) {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed < Self::WINDOW_MS {
            return;
        }
        let rate = self.in_window as f64 * 1000.0 / elapsed as f64;
        // Half the weight on the newest window: a change of load shows within seconds.
        self.per_s = if self.per_s == 0.0 {
            rate
        } else {
            0.5 * self.per_s + 0.5 * rate
        };
        self.window_start_ms = now_ms;
        self.in_window = 0;
    }

    /// A request finished.
    pub fn completed(&mut self, now_ms: i64) {
        self.roll(now_ms);
        self.in_window += 1;
    }

    /// The smoothed rate, completions per second.
    pub fn per_s(&mut self, now_ms: i64) -> f64 {
        self.roll(now_ms);
        self.per_s
    }
}

impl AdmissionPolicy {
    /// `Retry-After` in seconds for a refusal while `waiting` requests (queued and in flight) are ahead,
    /// at `per_s` completions a second; `random` spreads it (any value: its low bits pick a point in
    /// `[drain, 2 × drain]`).
    pub fn retry_after_s(&self, waiting: usize, per_s: f64, random: u64) -> u64 {
        let drain = if per_s > 0.0 {
            (waiting as f64 / per_s).ceil() as u64
        } else {
            // Nothing finished yet to measure by: a guess of one second per permit-full.
            (waiting as u64).div_ceil(self.max_in_flight.max(1) as u64)
        };
        let drain = drain.clamp(1, self.max_retry_after_s);
        (drain + random % (drain + 1)).clamp(1, self.max_retry_after_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_starts_wait_less_and_a_full_queue_refuses_at_once() {
        let p = AdmissionPolicy::default();
        assert_eq!(
            p.arrival(Priority::PassStart, 0),
            Arrival::Wait { deadline_ms: 100 }
        );
        assert_eq!(
            p.arrival(Priority::InPass, 2047),
            Arrival::Wait { deadline_ms: 250 }
        );
        assert_eq!(p.arrival(Priority::InPass, 2048), Arrival::Refuse);
        assert_eq!(
            Priority::of("GET", "/v1/terminals/T-1/deny-list"),
            Priority::PassStart
        );
        assert_eq!(
            Priority::of("GET", "/v1/terminals/T-1/entitlements"),
            Priority::InPass
        );
        assert_eq!(
            Priority::of("POST", "/v1/terminals/T-1/deny-list"),
            Priority::InPass
        );
    }

    #[test]
    fn throughput_is_measured_per_window_and_smoothed() {
        let mut t = Throughput::new(0);
        for i in 0..500 {
            t.completed(i);
        }
        assert_eq!(t.per_s(999), 0.0, "no window closed yet");
        assert_eq!(t.per_s(1000), 500.0);
        for i in 0..100 {
            t.completed(1000 + i * 10);
        }
        assert_eq!(t.per_s(2000), 300.0, "half 500, half 100");
        // A silence counts as a window without completions.
        assert_eq!(t.per_s(4000), 150.0);
    }

    #[test]
    fn retry_after_is_the_drain_time_spread_to_twice_it_within_bounds() {
        let p = AdmissionPolicy::default();
        // 1,000 ahead at 500/s: 2 s to drain, sent as 2, 3 or 4.
        let seen: std::collections::BTreeSet<u64> =
            (0..100).map(|r| p.retry_after_s(1000, 500.0, r)).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [2, 3, 4]);
        // Never 0, never above the cap, also with nothing measured yet.
        assert_eq!(p.retry_after_s(0, 1000.0, 0), 1);
        assert!((1..=2).contains(&p.retry_after_s(3, 0.0, 7)));
        assert_eq!(p.retry_after_s(1_000_000, 1.0, u64::MAX), 60);
        assert_eq!(p.retry_after_s(usize::MAX, 0.0, 3), 60);
    }
}
