//! The one owner of the [`Store`]: a mutex that serialises every decision, used in place by the
//! reader task that needs it.
//!
//! rusqlite is synchronous and every redemption waits for an fsync. Two designs were measured
//! (`benches/daemon.rs`): a dedicated store thread fed by a channel, and the requesting task
//! taking the store under a mutex inside [`tokio::task::block_in_place`]. Both serialise
//! decisions — two readers redeeming the last use of a card at the same instant take the lock in
//! turn, and the second sees the first's commit — but the channel costs two thread wake-ups per
//! request (≈50–100 µs each on a small VM, more than the menu decision itself), while
//! `block_in_place` runs the decision on the worker that received the request and hands that
//! worker's other tasks (other readers' links, heartbeats) to the second worker meanwhile.
//!
//! This needs the multi-threaded runtime (`block_in_place` panics on a current-thread one).

use std::sync::{Arc, Mutex};
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

    /// Runs `f` with the store from an async task of the multi-threaded runtime: the calling
    /// worker blocks (its other tasks move to another worker) until the lock is free and `f` is
    /// done. `f` gets the clock reading taken once it holds the lock, so decisions are timed when
    /// they are made, not when they were requested.
    pub fn run<T>(&self, f: impl FnOnce(&mut Store, Now) -> T) -> Result<T, StoreGone> {
        tokio::task::block_in_place(|| self.run_blocking(f))
    }

    /// As [`StoreHandle::run`], for a short read (a menu, a stored answer: tens of µs): the worker
    /// simply holds the lock. Handing the worker over, as `run` does, costs more than such a read
    /// (a thread wake-up); waiting behind another reader's commit blocks this worker for that
    /// commit (about a millisecond), which the links' timers tolerate a hundredfold.
    pub fn run_quick<T>(&self, f: impl FnOnce(&mut Store, Now) -> T) -> Result<T, StoreGone> {
        self.run_blocking(f)
    }

    /// As [`StoreHandle::run`], from a thread that may block (a `spawn_blocking` task).
    pub fn run_blocking<T>(&self, f: impl FnOnce(&mut Store, Now) -> T) -> Result<T, StoreGone> {
        // A poisoned lock means a panic inside a store operation: its SQLite transaction rolled
        // back, but the in-memory state may not match. Refuse to decide; the watchdog probe
        // fails too, and systemd restarts the daemon with a fresh store.
        let mut store = self.store.lock().map_err(|_| StoreGone)?;
        let now = self.clock.now();
        Ok(f(&mut store, now))
    }

    /// Whether the store answers a no-op within `within` (for the watchdog). Runs on the blocking
    /// pool, so a wedged store costs one parked thread, not a worker.
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
