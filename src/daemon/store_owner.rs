//! The single owner of the [`Store`]: one OS thread that runs store jobs one at a time.
//!
//! rusqlite is synchronous and every redemption waits for an fsync, so the store cannot live on the
//! async runtime. One thread owning the one connection also serialises every decision: two readers
//! redeeming the last use of a card at the same instant are two jobs in this queue, and the second
//! sees the first's commit. Jobs are closures, so the reader driver says what it needs in plain code
//! and this module stays small.

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::engine::Now;
use crate::store::Store;

/// How many jobs may wait for the store. Readers are stop-and-wait, so a handful is plenty; a
/// full queue means the store is stuck, and readers then answer "busy" instead of queueing forever.
const QUEUE_DEPTH: usize = 64;

type Job = Box<dyn FnOnce(&mut Store, &Clock) + Send>;

/// The store thread went away (it panicked or the daemon is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the store thread is not running")]
pub struct StoreGone;

/// A cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
}

/// The running store thread; dropping every [`StoreHandle`] and calling [`StoreThread::join`] ends it.
pub struct StoreThread {
    thread: JoinHandle<()>,
}

impl StoreThread {
    /// Waits for the thread to finish its queue and close the database.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("store thread panicked");
        }
    }
}

/// Starts the store thread.
pub fn spawn(store: Store, clock: Clock) -> std::io::Result<(StoreHandle, StoreThread)> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
    let thread = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let mut store = store;
            while let Some(job) = rx.blocking_recv() {
                job(&mut store, &clock);
            }
            tracing::debug!("store thread: queue closed, database closing");
        })?;
    Ok((StoreHandle { jobs: tx }, StoreThread { thread }))
}

impl StoreHandle {
    /// Runs `f` on the store thread and returns its result. `f` gets the clock reading taken when
    /// the job starts, so decisions are timed when they are made, not when they were queued.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreGone>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store, Now) -> T + Send + 'static,
    {
        let (job, reply) = job(f);
        self.jobs.send(job).await.map_err(|_| StoreGone)?;
        reply.await.map_err(|_| StoreGone)
    }

    /// Queues `f` without waiting for room: fails at once when the queue is full. The receiver
    /// yields the result.
    pub fn try_call<T, F>(&self, f: F) -> Result<oneshot::Receiver<T>, StoreGone>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store, Now) -> T + Send + 'static,
    {
        let (job, reply) = job(f);
        self.jobs.try_send(job).map_err(|_| StoreGone)?;
        Ok(reply)
    }
}

fn job<T, F>(f: F) -> (Job, oneshot::Receiver<T>)
where
    T: Send + 'static,
    F: FnOnce(&mut Store, Now) -> T + Send + 'static,
{
    let (reply_tx, reply_rx) = oneshot::channel();
    let job: Job = Box::new(move |store, clock| {
        // The receiver may be gone (reader unplugged mid-request): the work is done and committed
        // all the same; the reader will QUERY it.
        let _ = reply_tx.send(f(store, clock.now()));
    });
    (job, reply_rx)
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
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let since_start = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Now {
            wall_ms,
            boot_ms: self.boot_ms_at_start.saturating_add(since_start),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
