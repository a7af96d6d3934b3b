//! The one owner of the [`Store`]: a mutex that serialises every decision, taken in place by the
//! thread that needs it — in the daemon each reader's thread and the sync task's blocking steps; in
//! `redeemd sync` its own pass. Also the daemon's clocks ([`Clock`], [`wall_clock_ms`]).
//!
//! rusqlite is synchronous and every redemption waits for an fsync. Three designs were measured
//! (`benches/daemon.rs`): a dedicated store thread fed by a channel; reader tasks on a 2-worker
//! runtime taking the mutex inside [`tokio::task::block_in_place`]; and (this one) one thread per
//! reader, each with its own current-thread runtime, taking the mutex directly. All three
//! serialise decisions — two readers redeeming the last use of a card at the same instant take
//! the lock in turn, and the second sees the first's commit — but a channel costs two thread
//! wake-ups per request and the multi-threaded runtime one or two more (work-stealing
//! notifications, `block_in_place` handing the worker's other tasks to another thread), each
//! ≈50–100 µs on a small VM: more than the menu decision itself. A reader's thread serves one
//! link only, so blocking it on the store (an fsync, a checkpoint) delays nobody else's link. When the
//! lock is already held ([`StoreHandle::try_run`] says so), the reader waits for it on the blocking
//! pool instead and keeps its link served meanwhile (heartbeats, and DISPLAY after a second: see
//! `crate::conversation`).

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
    /// done: call it from a reader's own thread or a `spawn_blocking` task, never from a runtime
    /// that serves anything else. `f` gets the clock reading taken once it holds the lock, so
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
    /// does (the caller waits for it elsewhere, e.g. on the blocking pool, and serves its link
    /// meanwhile).
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
