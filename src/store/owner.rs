//! The one owner of the [`Store`]: a mutex that serialises every decision, taken by the thread
//! that needs it — in the daemon a reader's store job or checkpoint on its runtime's blocking pool,
//! and the sync task's blocking steps; in `redeemd sync` its own pass. Also the daemon's clocks
//! ([`Clock`], [`wall_clock_ms`]).
//!
//! rusqlite is synchronous and every redemption waits for an fsync. Designs measured
//! (`benches/daemon.rs`): a dedicated store thread fed by a channel; reader tasks on a 2-worker
//! runtime taking the mutex inside [`tokio::task::block_in_place`]; one thread per reader taking
//! the mutex in place; and (this one) one thread per reader serving its link, each decision handed
//! to that reader's blocking pool. All serialise decisions — two readers redeeming the last use of
//! a card at the same instant take the lock in turn, and the second sees the first's commit. Taking
//! the lock in place saved a thread wake-up per request (≈50–100 µs on a small VM), but it stalled
//! the reader's link for as long as the store made the decision wait: another process holding
//! SQLite's write lock (`redeemd sync`, `cache install`) or a slow disk could hold it for seconds,
//! with no ACK, no PONG and no DISPLAY, and a reader drops a link after 4 × T_ACK (PROTOCOL.md §4.6).
//! The hand-over is what serving the link during a decision costs.

use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use crate::engine::Now;
use crate::store::Store;

/// The store cannot be used: a panic poisoned it mid-operation (its transaction rolled back), or
/// it does not answer.
#[derive(Debug, thiserror::Error)]
#[error("the store is not usable")]
pub struct StoreGone;

/// A cloneable handle to the store.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<Mutex<Store>>,
    clock: Arc<Clock>,
}

impl StoreHandle {
    pub fn new(store: Store, clock: Clock) -> StoreHandle {
        StoreHandle {
            store: Arc::new(Mutex::new(store)),
            clock: Arc::new(clock),
        }
    }

    /// Runs `f` with the store, blocking the calling thread until the lock is free and `f` is
    /// done: call it from a `spawn_blocking` task or a thread of its own, never from a runtime
    /// that serves anything (a reader's link, the sync task's timers). `f` gets the clock reading taken once it holds the lock, so
    /// decisions are timed when they are made, not when they were requested.
    pub fn run_blocking<T>(&self, f: impl FnOnce(&mut Store, Now) -> T) -> Result<T, StoreGone> {
        // A poisoned lock means a panic inside a store operation: its SQLite transaction rolled
        // back, but the in-memory state may not match. Refuse to decide; the watchdog probe
        // fails too, and systemd restarts the daemon with a fresh store.
        let mut store = self.store.lock().map_err(|_| StoreGone)?;
        let now = self.clock.now();
        Ok(f(&mut store, now))
    }

    /// Like [`Self::run_blocking`], but only if no other thread holds the store now: `None` when one
    /// does (for work that may be skipped, such as an idle-time checkpoint).
    pub fn try_run<T>(&self, f: impl FnOnce(&mut Store, Now) -> T) -> Option<Result<T, StoreGone>> {
        match self.store.try_lock() {
            Ok(mut store) => {
                let now = self.clock.now();
                Some(Ok(f(&mut store, now)))
            }
            Err(TryLockError::WouldBlock) => None,
            Err(TryLockError::Poisoned(_)) => Some(Err(StoreGone)),
        }
    }

    /// Whether the store answers a no-op within `within` (for the watchdog). Runs on the blocking
    /// pool, so a wedged store costs one parked thread, not the caller's runtime.
    pub async fn answers_within(&self, within: Duration) -> bool {
        let probe = self.clone();
        let task = tokio::task::spawn_blocking(move || probe.run_blocking(|_, _| ()).is_ok());
        matches!(tokio::time::timeout(within, task).await, Ok(Ok(true)))
    }
}

/// Long store work (a bundle install) takes the lock once per short step and releases it in between,
/// so that readers interleave. Call from a thread that may block (`spawn_blocking`).
impl crate::store::StoreAccess for StoreHandle {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Store, Now) -> Result<T, crate::store::StoreError>,
    ) -> Result<T, crate::store::StoreError> {
        self.run_blocking(f)
            .map_err(|StoreGone| crate::store::StoreError::Unavailable)?
    }
}

/// The daemon's clocks: wall time (may be wrong or set back: the engine checks it) and time since
/// boot (CLOCK_BOOTTIME, read from /proc/uptime once and advanced with the monotonic clock), which
/// the journal records for the platform's forensics.
#[derive(Debug, Clone)]
pub struct Clock {
    boot_ms_at_start: u64,
    started: std::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let boot_ms_at_start = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| {
                let secs = s.split_whitespace().next()?;
                let (whole, frac) = secs.split_once('.').unwrap_or((secs, "0"));
                let whole: u64 = whole.parse().ok()?;
                let centis: u64 = format!("{frac:0<2}").get(..2)?.parse().ok()?;
                Some(whole * 1000 + centis * 10)
            })
            .unwrap_or(0);
        Clock {
            boot_ms_at_start,
            started: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Now {
        let wall_ms = wall_clock_ms();
        let since_start = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Now {
            wall_ms,
            boot_ms: self.boot_ms_at_start.saturating_add(since_start),
        }
    }
}

/// The wall clock in unix milliseconds (0 if it is set before 1970): the one place the daemon and
/// its tools read it.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
