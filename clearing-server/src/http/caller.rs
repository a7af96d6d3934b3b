//! What every handler of the platform API (`super::platform`) takes from a request: the caller, from
//! `Authorization: Bearer rdk_…` (`crate::service::people::authenticate`); the client's address, for
//! throttling guesses; and JSON bodies read under a size limit and parsed strictly, a wrong or unknown
//! field named by its path (`items[1].uses_total`).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::problem::Problem;
use crate::core::access::Principal;
use crate::service::Service;

/// Largest platform-API request body.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// The authenticated caller of a platform-API request.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(Problem::new(
                401,
                "auth_missing",
                "Authorization: Bearer <API key> is required".into(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("")
            .to_owned();
        let principal = state
            .with_db(move |db, _| crate::service::people::authenticate(db, &token))
            .await?;
        Ok(Caller(principal))
    }
}

/// The client's address: the peer, or — from a reverse proxy on this host (the shipped setup: TLS
/// terminated in front of a loopback listener) — the last `X-Forwarded-For` entry, which the proxy
/// appended. `unknown` when the server was not started by [`super::serve`] (tests with axum's own).
pub struct Source(pub String);

impl FromRequestParts<AppState> for Source {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Problem> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = || {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .last()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        };
        Ok(Source(match peer {
            Some(ip) if ip.is_loopback() => forwarded().unwrap_or_else(|| ip.to_string()),
            Some(ip) => ip.to_string(),
            None => forwarded().unwrap_or_else(|| "unknown".into()),
        }))
    }
}

/// A JSON body of type `T`: `application/json`, at most [`MAX_JSON_BODY`] bytes, parsed strictly.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        let (parts, body) = req.into_parts();
        require_json(&parts.headers)?;
        let bytes = read(body, state.limits.body_timeout).await?;
        parse(&bytes).map(Json)
    }
}

pub(super) fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(Problem::new(
            415,
            "unsupported_media_type",
            "request bodies are application/json".into(),
        ))
    }
}

async fn read(body: Body, timeout: std::time::Duration) -> Result<axum::body::Bytes, Problem> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_JSON_BODY)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(Problem::new(
            413,
            "body_too_large",
            format!("request body above {MAX_JSON_BODY} bytes"),
        )),
        Err(_) => Err(Problem::new(
            408,
            "request_timeout",
            "request body not received in time".into(),
        )),
    }
}

/// Parses a body, naming the field that is wrong, unknown or missing (`400 malformed_request` with
/// `field`), or saying it is not JSON.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // Every body is a JSON object (serde would also read a struct from an array of its fields).
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(Problem::new(
            400,
            "malformed_request",
            "the body must be a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        // serde names a missing field in its message, at the path of the object that lacks it.
        let named = text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(|name| {
                if path == "." {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            });
        match named.or_else(|| (inner.is_data() && path != ".").then_some(path)) {
            Some(field) => Problem::invalid(field, text).with_status(400, "malformed_request"),
            None => Problem::new(400, "malformed_request", text),
        }
    })?;
    de.end()
        .map_err(|e| Problem::new(400, "malformed_request", e.to_string()))?;
    Ok(value)
}

impl AppState {
    /// Runs `f` as `who` through the platform's operations on a blocking thread.
    pub(super) async fn as_caller<T: Send + 'static>(
        &self,
        who: Principal,
        f: impl FnOnce(&Service<'_>) -> Result<T, Problem> + Send + 'static,
    ) -> Result<T, Problem> {
        let (now, fleet) = ((self.clock)(), self.fleet);
        self.with_db(move |db, vault| {
            let svc = Service {
                fleet,
                ..Service::new(db, vault, &who, now)
            };
            f(&svc)
        })
        .await
    }
}
