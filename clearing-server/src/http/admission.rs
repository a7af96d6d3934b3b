//! Overload shed with `503 unavailable` and `Retry-After`, never a collapse: the permits and the queue
//! of `core::admission`'s rules, as an axum middleware in front of every route.
//!
//! A request takes a permit before any work (authentication included) and gives it back when its
//! answer's last byte was handed to the connection — a streamed bundle holds its permit (and with it
//! its database connection) until then. Without a free permit it waits in the semaphore's FIFO queue
//! for at most its priority's deadline; past it, or when the queue is full, it is answered `503` with
//! `Retry-After` from the measured completion rate. So whatever the offered load, the server works on a
//! bounded number of requests, an admitted one has waited a bounded time, and every refusal says when
//! to come back.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{AppState, Clock};
use crate::core::admission::{AdmissionPolicy, Arrival, Priority, Throughput};
use crate::core::problem::Problem;

/// One server process's permits, queue and measured throughput.
pub struct Admission {
    policy: AdmissionPolicy,
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
    throughput: Mutex<Throughput>,
    clock: Clock,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Admission({:?}, {} free, {} queued)",
            self.policy,
            self.permits.available_permits(),
            self.queued.load(Ordering::Relaxed)
        )
    }
}

impl Admission {
    pub fn new(policy: AdmissionPolicy, clock: Clock) -> Self {
        let now = clock();
        Self {
            permits: Arc::new(Semaphore::new(policy.max_in_flight.max(1))),
            queued: AtomicUsize::new(0),
            throughput: Mutex::new(Throughput::new(now)),
            policy,
            clock,
        }
    }

    pub fn policy(&self) -> AdmissionPolicy {
        self.policy
    }

    async fn enter(&self, priority: Priority) -> Result<OwnedSemaphorePermit, Response> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        let waited = match self.policy.arrival(priority, queued) {
            Arrival::Refuse => None,
            Arrival::Wait { deadline_ms } => tokio::time::timeout(
                Duration::from_millis(deadline_ms),
                self.permits.clone().acquire_owned(),
            )
            .await
            .ok()
            .and_then(Result::ok),
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        waited.ok_or_else(|| self.refuse())
    }

    fn refuse(&self) -> Response {
        let now = (self.clock)();
        let per_s = self
            .throughput
            .lock()
            .map(|mut t| t.per_s(now))
            .unwrap_or(0.0);
        let waiting = self.queued.load(Ordering::Relaxed) + self.policy.max_in_flight;
        let retry_after =
            self.policy
                .retry_after_s(waiting, per_s, getrandom::u64().unwrap_or(now as u64));
        let mut response = Problem::new(
            503,
            "unavailable",
            format!(
                "the server is overloaded ({waiting} requests ahead, {per_s:.0} answered a second): retry after {retry_after} s"
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        response
    }

    fn completed(&self) {
        let now = (self.clock)();
        if let Ok(mut t) = self.throughput.lock() {
            t.completed(now);
        }
    }
}

/// The middleware: a permit for the request and its answer's body, or `503` with `Retry-After`.
pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let admission = state.admission.clone();
    let priority = Priority::of(request.method().as_str(), request.uri().path());
    let permit = match admission.enter(priority).await {
        Ok(permit) => permit,
        Err(refusal) => return refusal,
    };
    let response = next.run(request).await;
    let held = Held {
        _permit: permit,
        admission,
    };
    response.map(|body| {
        Body::new(Guarded {
            inner: body,
            _held: held,
        })
    })
}

/// A request's permit, given back (and the request counted as completed) when dropped.
struct Held {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.admission.completed();
    }
}

/// A response body that holds its request's permit until the body is done with (sent, or dropped
/// when the client went away).
struct Guarded {
    inner: Body,
    _held: Held,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
