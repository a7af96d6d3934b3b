//! `application/problem+json` answers (RFC 9457) of a [`Problem`]: `type` and `title` derived from its
//! stable code; a refused field named in `field` and at the start of `detail`; `Retry-After` when the
//! problem says how long to wait.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::core::problem::Problem;

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    code: &'a str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    terminal_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acknowledged_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_time_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&Wire {
            kind: format!("https://redeemd.invalid/problems/{}", self.code),
            title: self.code.replace('_', " "),
            status: self.status,
            code: self.code,
            detail: self.message(),
            terminal_id: self.terminal_id.as_deref(),
            seq: self.seq,
            acknowledged_seq: self.acknowledged_seq(),
            server_time_ms: self.server_time_ms,
            field: self.field(),
        })
        .unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}
