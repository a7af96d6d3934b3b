//! `redeemd run`: the long-running daemon.
//!
//! Start-up is strictly ordered so that a problem is reported before anything is half running:
//! configuration (validated by the caller), the terminal secret, the state directory's lock (one
//! daemon per directory: a second one exits naming the first's pid), the store (opened and verified;
//! created only in an empty, existing directory), then one thread per reader, then READY=1 to systemd. Each reader's thread has its own
//! current-thread runtime that serves its link and hands each decision to its blocking pool (see
//! `crate::daemon::reader` and `crate::store::owner` for why); the main thread's runtime runs the
//! sync task (its store work on the blocking pool), signals and the watchdog.
//!
//! The watchdog ping needs every reader thread to answer a probe and the store's lock (a no-op):
//! a wedged reader thread *or* a wedged store stops the pings, and systemd restarts the daemon.

pub mod reader;
pub mod status;
pub mod sync;

use std::time::Duration;

use crate::config::Config;
use crate::keys::{KeyError, load_secret};
use crate::store::owner::{Clock, StoreHandle};
use crate::store::{Store, StoreConfig, StoreError};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("store in {dir}: {source}")]
    Store {
        dir: std::path::PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    /// The sync task died (a bug): exiting lets systemd restart the daemon, instead of serving on
    /// while no record reaches the platform and the cache runs out.
    #[error("the sync task stopped: {0}")]
    SyncStopped(String),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let secret = load_secret(&config.key)?;
    let keys = secret.derive_all(&config.terminal_id);
    let in_dir = |source| DaemonError::Store {
        dir: config.state_dir.clone(),
        source,
    };
    // Held until this function returns (the process's end releases it too).
    let _lock = crate::store::state_dir::DaemonLock::acquire(&config.state_dir).map_err(in_dir)?;
    let store = Store::open(
        &config.state_dir,
        keys,
        StoreConfig {
            terminal_id: config.terminal_id.clone(),
            merchant_id: config.merchant_id.clone(),
            limits: config.limits(),
        },
    )
    .map_err(|source| DaemonError::Store {
        dir: config.state_dir.clone(),
        source,
    })?;
    let journal = store.journal_info();
    tracing::info!(
        terminal = %config.terminal_id, merchant = %config.merchant_id,
        journal_head = journal.head_seq, readers = config.readers.len(),
        "store open"
    );

    let request_key = store.keys().request.clone();
    let (db_path, keys) = (store.path().to_owned(), store.keys().clone());
    let store = StoreHandle::new(store, Clock::new());
    let board = status::StatusBoard::new(&config.state_dir);
    check_journal_at_start(db_path, keys, board.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(config.readers.len());
    for (index, reader) in config.readers.iter().enumerate() {
        let ctx = reader::ReaderContext {
            config: reader.clone(),
            store: store.clone(),
            language: config.language,
            utc_offset_minutes: config.utc_offset_minutes,
            status: board.clone(),
        };
        let wedge = (index == 0)
            .then(|| test_wedge_delay("REDEEMD_TEST_WEDGE_READER_AFTER_MS"))
            .flatten();
        readers.push(reader::ReaderThread::spawn(
            ctx,
            index,
            stopped.clone(),
            wedge,
        )?);
    }
    // Sync, signals, the watchdog and its probes (store work on the blocking pool: a wedged store
    // parks a pool thread, not this one).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .thread_name("redeemd")
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(&config, store, &board, request_key, &readers));
    // Ends the reader threads and (with the runtime) the sync task; their store handles go with
    // them and the database closes. A store operation that hangs (a dead disk) is not waited for
    // beyond this.
    let _ = stop.send(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while readers.iter().any(|r| !r.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The last transactions' entries, if their readers stopped before publishing them.
    board.publish();
    tracing::info!("stopped");
    result
}

/// Findings of the start-up journal check logged one by one at most; the rest are counted.
const JOURNAL_CHECK_LOGGED: usize = 20;

/// Verifies the whole journal once, on a thread of its own with its own read-only connection, while the
/// counter is already open: every row's MAC and chain link, the gap-free sequence, the chain head, and
/// each card's usage against its rows — what `redeemd journal verify` does. Opening the store checks
/// only the chain head; a row edited in the middle of an already-acknowledged journal would otherwise
/// wait for the next `journal verify` to be noticed (unacknowledged rows are also named by the platform
/// when they are uploaded). Findings are ERROR lines and the status's `journal_check`; decisions go on
/// (the platform clears nothing it cannot verify).
fn check_journal_at_start(
    db: std::path::PathBuf,
    keys: redeemd_contract::TerminalKeys,
    board: status::StatusBoard,
) {
    board.journal_check("running".into());
    let board_on_error = board.clone();
    let spawned = std::thread::Builder::new()
        .name("journal-check".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let report = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|conn| {
                conn.busy_timeout(Duration::from_secs(5))?;
                crate::store::verify::journal(&conn, &keys)
            });
            let state = match report {
                Err(e) => {
                    tracing::warn!(error = %e, "journal check at start: cannot read the journal");
                    format!("not run: {e}")
                }
                Ok(r) if r.is_clean() => {
                    tracing::info!(rows = r.checked, elapsed_ms = started.elapsed().as_millis() as u64, "journal check at start: clean");
                    format!("clean ({} rows)", r.checked)
                }
                Ok(r) => {
                    for finding in r.findings.iter().take(JOURNAL_CHECK_LOGGED) {
                        tracing::error!(%finding, "journal check at start: a row fails its check (run `redeemd journal verify`; keep the database as evidence)");
                    }
                    let first = r.findings.first().map(ToString::to_string).unwrap_or_default();
                    tracing::error!(findings = r.findings.len(), rows = r.checked, "journal check at start: NOT clean");
                    format!("{} findings in {} rows; first: {first}", r.findings.len(), r.checked)
                }
            };
            board.journal_check(state);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "journal check at start: no thread for it");
        board_on_error.journal_check(format!("not run: no thread ({e})"));
    }
}

async fn serve(
    config: &Config,
    store: StoreHandle,
    board: &status::StatusBoard,
    request_key: redeemd_contract::MacKey,
    readers: &[reader::ReaderThread],
) -> Result<(), DaemonError> {
    // Supervised: `sync::run` returns only when sync cannot work at all (logged there); a panic
    // in a pass ends the daemon (below), so that systemd restarts it.
    let mut sync_task = match &config.sync.server_url {
        Some(url) => {
            let context = sync::SyncContext {
                server_url: url.clone(),
                config: config.sync.clone(),
                state_dir: config.state_dir.clone(),
                terminal_id: config.terminal_id.clone(),
                utc_offset_minutes: config.utc_offset_minutes,
                request_key,
                store: store.clone(),
                status: board.clone(),
            };
            let panic_after = test_wedge_delay("REDEEMD_TEST_PANIC_SYNC_AFTER_MS");
            Some(tokio::spawn(async move {
                if let Some(after) = panic_after {
                    tokio::time::sleep(after).await;
                    panic!("test trigger: the sync task panics");
                }
                sync::run(context).await;
            }))
        }
        None => {
            tracing::info!("sync disabled: no [sync] server_url configured");
            None
        }
    };
    if let Some(after) = test_wedge_delay("REDEEMD_TEST_WEDGE_STORE_AFTER_MS") {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::warn!("test trigger: wedging the store");
            // The store blocks for good, as on a disk that stopped answering an fsync.
            let _ = tokio::task::spawn_blocking(move || {
                store.run_blocking(|_, _| {
                    loop {
                        std::thread::park();
                    }
                })
            })
            .await;
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("serving");

    // Ping at half the watchdog period; a store or a reader thread that does not answer within
    // one period is wedged, and the ping is withheld so that systemd restarts us. The waits are
    // bounded so that SIGTERM is still served while something hangs.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let period = watchdog.unwrap_or(Duration::from_secs(3600));
    let mut ping = tokio::time::interval(period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    let mut storage = tokio::time::interval(STORAGE_CHECK);
    storage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One storage check at a time, off this loop: a wedged store must not stop signals and pings.
    let mut storage_check: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = storage.tick() => {
                if storage_check.as_ref().is_none_or(|c| c.is_finished()) {
                    let (store, dir, board) = (store.clone(), config.state_dir.clone(), board.clone());
                    storage_check = Some(tokio::spawn(async move {
                        publish_storage(&store, &dir, &board).await;
                    }));
                }
            }
            ended = async { sync_task.as_mut()?.await.err() }, if sync_task.is_some() => {
                sync_task = None;
                if let Some(failure) = ended {
                    let reason = panic_message(failure);
                    tracing::error!(%reason, "the sync task stopped; exiting so that systemd restarts the daemon");
                    notify(&[sd_notify::NotifyState::Stopping]);
                    return Err(DaemonError::SyncStopped(reason));
                }
            }
            r = tokio::signal::ctrl_c() => {
                r?;
                break;
            }
            _ = ping.tick(), if watchdog.is_some() => {
                // Every reader thread's runtime and the store's lock must answer.
                let (store_answers, readers_answer) = tokio::join!(
                    store.answers_within(period),
                    async {
                        for reader in readers {
                            if !reader.answers_within(period).await {
                                return false;
                            }
                        }
                        true
                    }
                );
                if store_answers && readers_answer {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                    healthy = true;
                } else if healthy {
                    tracing::error!(
                        store_answers, readers_answer,
                        "store or a reader thread not answering: withholding the watchdog ping"
                    );
                    healthy = false;
                }
            }
        }
    }
    tracing::info!("stopping");
    notify(&[sd_notify::NotifyState::Stopping]);
    Ok(())
}

/// How often the daemon publishes the state directory's free space and its store's last storage
/// error (`status.json` `storage`, shown by `redeemd status`).
const STORAGE_CHECK: Duration = Duration::from_secs(2);

/// Free space below which the published figure moves in steps of 64 KiB; above it, of 1 MiB (each
/// change published rewrites the status file).
const STORAGE_FINE_BELOW: u64 = 256 << 20;

/// Publishes the state directory's free space and the store's last storage error, when they changed.
async fn publish_storage(
    store: &crate::store::owner::StoreHandle,
    state_dir: &std::path::Path,
    board: &status::StatusBoard,
) {
    let (probe, dir) = (store.clone(), state_dir.to_owned());
    let looked = tokio::task::spawn_blocking(move || {
        let error = probe
            .run_blocking(|s, _| s.storage_error().cloned())
            .ok()
            .flatten();
        (error, crate::store::state_dir::free_space(&dir).ok())
    })
    .await;
    let Ok((last_error, space)) = looked else {
        return;
    };
    let round = |free: u64| {
        if free < STORAGE_FINE_BELOW {
            free >> 16 << 16
        } else {
            free >> 20 << 20
        }
    };
    if let Some(e) = &last_error {
        tracing::debug!(error = %e.message, "store: last storage error");
    }
    board.storage(status::StorageStatus {
        free_bytes: space.map(|(free, _)| round(free)),
        total_bytes: space.map(|(_, total)| total),
        last_error,
    });
}

/// What a task's [`tokio::task::JoinError`] says: its panic message, or that it was cancelled.
fn panic_message(failure: tokio::task::JoinError) -> String {
    match failure.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .map_or_else(|| "panicked".to_owned(), |m| format!("panicked: {m}")),
        Err(_) => "cancelled".to_owned(),
    }
}

/// Test-only triggers (`REDEEMD_TEST_WEDGE_STORE_AFTER_MS`, `REDEEMD_TEST_WEDGE_READER_AFTER_MS`,
/// `REDEEMD_TEST_PANIC_SYNC_AFTER_MS`): wedge the store or the first reader's thread, or make the
/// sync task panic, after this long, so tests can watch the watchdog pings stop without systemd
/// and the daemon exit. Harmless when unset, which they always are in production.
fn test_wedge_delay(variable: &str) -> Option<Duration> {
    let ms = std::env::var(variable).ok()?;
    ms.parse().ok().map(Duration::from_millis)
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
