//! The HTTP layer: the terminal API (`docs/api/openapi.yaml`) served with axum over hyper connections
//! that enforce the connection limits ([`serve`]).
//!
//! * [`auth`] — the body read under its size and time limits, then `redeemd_contract::request`
//!   verification for the path's terminal (nonces in the database), then gzip inflated;
//! * [`terminal`] — the handlers: thin, parsing the request and calling [`crate::storage`];
//! * [`problem`] — `application/problem+json` answers with the stable codes of `docs/api/README.md`;
//! * [`encoding`] — response compression;
//! * [`admission`] — overload shed: a bounded number of requests worked on, a bounded wait, `503` with
//!   `Retry-After` beyond.
//! * [`platform`] — the platform API beside it (operators, merchants, the member app, shops pairing,
//!   terminals' health reports): [`caller`] (bearer keys, client address, strict JSON bodies),
//!   [`operator`], [`merchant`], [`member`], [`pairing`] — thin handlers over [`crate::service`];
//! * [`console`] — the web console for operators and merchants (HTML pages under `/console/`), one
//!   more client of [`crate::service`].
//!
//! Database work runs on blocking threads (both drivers are synchronous), each request on a connection
//! of the database's pool; a snapshot is produced on its own thread and streamed through a bounded
//! channel.

pub mod admission;
pub mod auth;
pub mod caller;
pub mod console;
pub mod encoding;
pub mod member;
pub mod merchant;
pub mod operator;
pub mod pairing;
pub mod platform;
pub mod problem;
pub mod terminal;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::core::cache_policy::CachePolicy;
use crate::core::fleet::FleetPolicy;
use crate::storage::Db;
use crate::vault::Vault;
use problem::Problem;

/// An answer that carries a credential (an API key, a pairing code, a terminal's secret): JSON that
/// no cache between the server and the caller keeps.
pub(crate) fn credential_answer(
    status: axum::http::StatusCode,
    body: impl serde::Serialize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// What one client may hold of the server (`docs/api/README.md`, "Size limits"): connections at once,
/// and how long a request's head and body may take to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog until one closes. High, so
    /// that idle sockets (a terminal's keep-alive between passes, or a client holding sockets open on
    /// purpose) never keep a working terminal out: each costs a file descriptor and a few KiB.
    pub max_connections: usize,
    /// Time for a request's head to arrive, counted from the connection's start or the end of the
    /// previous response: a slow head, or an idle keep-alive connection, is closed after it. Short: a
    /// terminal's requests within a pass follow each other at once, and the next pass is a minute away.
    pub header_timeout: std::time::Duration,
    /// Time for a request's whole body to arrive (`408 request_timeout` after it).
    pub body_timeout: std::time::Duration,
    /// Requests worked on at once, and how long the others may wait (`503` with `Retry-After` after).
    pub admission: crate::core::admission::AdmissionPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(60),
            admission: crate::core::admission::AdmissionPolicy::default(),
        }
    }
}

/// File descriptors kept for what is not a client connection (database connections and files, the
/// listener, logs).
pub const RESERVED_FDS: u64 = 256;

impl Limits {
    /// The same limits with at most as many connections as `open_files` descriptors allow beside
    /// [`RESERVED_FDS`] (at least 16): past it `accept` would fail instead of connections waiting.
    pub fn within_open_files(self, open_files: u64) -> Self {
        let fit = open_files.saturating_sub(RESERVED_FDS).max(16);
        Self {
            max_connections: self
                .max_connections
                .min(usize::try_from(fit).unwrap_or(usize::MAX)),
            ..self
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (systemd's default soft limit is
/// 1,024, the hard one 524,288) and returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        // Refused (a container that forbids it): the current limit stands.
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Serves [`router`]`(state)` on `listener` until `shutdown` completes, then lets the open
/// connections finish. Unlike `axum::serve`, it enforces [`AppState::limits`]: at most
/// `max_connections` at once (the rest wait in the listen backlog, so a flood of idle sockets cannot
/// take every file descriptor), and a request head not received within `header_timeout` closes the
/// connection (slow loris; also an idle keep-alive connection). The body timeout is enforced where
/// the body is read, after the headers authenticated the request (`auth`). Accepted sockets get
/// `TCP_NODELAY`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    let app = router(state);
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(tokio::sync::Semaphore::new(max as usize));
    let (closing, _) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match stream {
            Ok((stream, peer)) => {
                // A bundle's head and first chunk go out as separate writes: without NODELAY, Nagle
                // holds the second until the client's delayed ACK (40 ms) on every answer.
                if let Err(e) = stream.set_nodelay(true) {
                    eprintln!("clearing-server: TCP_NODELAY: {e}");
                }
                (stream, peer)
            }
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: try again
                // shortly rather than spin or stop serving.
                eprintln!("clearing-server: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let tower = hyper_util::service::TowerToHyperService::new(app.clone());
        // The peer's address for the handlers that throttle by source (`caller::Source`).
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                hyper::service::Service::call(&tower, req)
            });
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // Errors are the client's (reset, timed out, malformed head): nothing to do but close.
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    drop(closing);
    // Every connection gives its slot back when it ends.
    let _all = slots.acquire_many(max).await;
    Ok(())
}

/// The server clock, unix milliseconds (injectable for tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

#[derive(Clone)]
pub struct AppState {
    db: Arc<Db>,
    /// The platform master key: opens terminal secrets and card numbers, seals new ones.
    vault: Arc<Vault>,
    /// When this process last pruned expired nonces of each store (`NonceKind` as the index; server
    /// clock): a schedule, not state that correctness depends on (every process prunes now and then;
    /// nonces live in the database).
    nonces_pruned_ms: Arc<[std::sync::atomic::AtomicI64; 2]>,
    /// Terminals' derived keys, by the sealed secret they came from (`terminals::KeyCache`).
    keys: Arc<crate::storage::terminals::KeyCache>,
    /// Cards recently in deltas, prepared once for every terminal (`bundle::CardCache`).
    cards: Arc<crate::storage::bundle::CardCache>,
    clock: Clock,
    /// How long the bundles it signs are valid, and when a quiet platform renews them
    /// (`serve --cache-validity-hours`; [`CachePolicy::default`] otherwise).
    pub cache: CachePolicy,
    /// Connection and request limits ([`serve`]; [`Limits::default`] otherwise).
    pub limits: Limits,
    /// The permits and queue of [`Limits::admission`].
    admission: Arc<admission::Admission>,
    /// The thresholds of the fleet's alerts (`serve --silent-intervals`).
    pub fleet: FleetPolicy,
}

impl AppState {
    pub fn new(db: Db, vault: Vault, clock: Clock) -> Self {
        Self::shared(Arc::new(db), Arc::new(vault), clock)
    }

    /// A state over a database and vault the caller keeps using too (tests, benches).
    pub fn shared(db: Arc<Db>, vault: Arc<Vault>, clock: Clock) -> Self {
        Self {
            db,
            vault,
            nonces_pruned_ms: Arc::new([
                std::sync::atomic::AtomicI64::new(i64::MIN),
                std::sync::atomic::AtomicI64::new(i64::MIN),
            ]),
            keys: Arc::default(),
            cards: Arc::default(),
            cache: CachePolicy::default(),
            limits: Limits::default(),
            fleet: FleetPolicy::default(),
            admission: Arc::new(admission::Admission::new(
                Limits::default().admission,
                clock.clone(),
            )),
            clock,
        }
    }

    /// The same state judging the fleet under `fleet`.
    pub fn with_fleet_policy(self, fleet: FleetPolicy) -> Self {
        Self { fleet, ..self }
    }

    /// The same state signing bundles under `cache`.
    pub fn with_cache_policy(self, cache: CachePolicy) -> Self {
        Self { cache, ..self }
    }

    /// The same state served under `limits`.
    pub fn with_limits(self, limits: Limits) -> Self {
        Self {
            admission: Arc::new(admission::Admission::new(
                limits.admission,
                self.clock.clone(),
            )),
            limits,
            ..self
        }
    }

    /// The database, for a caller running its own work on it.
    pub fn db(&self) -> Arc<Db> {
        self.db.clone()
    }

    pub fn vault(&self) -> Arc<Vault> {
        self.vault.clone()
    }

    /// Runs `f` with the database and the vault on a blocking thread. A panic in `f` answers `500` (its
    /// transaction rolled back as it unwound) and the server goes on serving.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db, &Vault) -> Result<T, Problem> + Send + 'static,
    ) -> Result<T, Problem> {
        let (db, vault) = (self.db.clone(), self.vault.clone());
        tokio::task::spawn_blocking(move || f(&db, &vault))
            .await
            .map_err(|e| Problem::internal(format!("database task: {e}")))?
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/terminals/{terminal_id}/entitlements",
            get(terminal::entitlements),
        )
        .route(
            "/v1/terminals/{terminal_id}/deny-list",
            get(terminal::deny_list),
        )
        .route(
            "/v1/terminals/{terminal_id}/journal/head",
            get(terminal::journal_head),
        )
        .route(
            "/v1/terminals/{terminal_id}/journal",
            post(terminal::journal_upload),
        )
        .route(
            "/v1/terminals/{terminal_id}/batch-close",
            post(terminal::batch_close),
        )
        .merge(platform::routes())
        .merge(console::routes())
        .fallback(|| async { Problem::new(404, "not_found", "no such resource".into()) })
        .method_not_allowed_fallback(|| async {
            Problem::new(405, "method_not_allowed", "method not allowed here".into())
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::StorageError;

    #[tokio::test]
    async fn a_request_that_panics_on_the_database_thread_does_not_take_the_server_down() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.sqlite3").display().to_string()).unwrap();
        let vault = Vault::new(crate::vault::MasterKey::from_bytes(&[9; 32]).unwrap());
        let state = AppState::new(db, vault, Arc::new(|| 0));
        let r: Result<(), Problem> = state
            .with_db(|db, _| {
                db.write(|tx| -> Result<(), Problem> {
                    tx.execute(
                        "INSERT INTO merchant (id, name, commission_bps) VALUES ('M-9', 'x', 0)",
                        &[],
                    )?;
                    panic!("a bug in a handler");
                })
            })
            .await;
        assert_eq!(r.unwrap_err().status, 500);
        // The next request is served, and the panicked one's write was rolled back.
        let merchants = state
            .with_db(|db, _| {
                db.read(|tx| -> Result<i64, StorageError> {
                    tx.query_one("SELECT count(*) FROM merchant WHERE id = 'M-9'", &[])?
                        .i64(0)
                })
                .map_err(Problem::from)
            })
            .await
            .unwrap();
        assert_eq!(merchants, 0);
    }
}
