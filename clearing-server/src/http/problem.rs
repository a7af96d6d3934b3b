//! `application/problem+json` answers with the stable codes of `docs/api/README.md`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem answer. `type` and `title` are derived from `code` when it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    pub terminal_id: Option<String>,
    pub seq: Option<u64>,
    pub acknowledged_seq: Option<u64>,
    pub server_time_ms: Option<i64>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    code: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    terminal_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acknowledged_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_time_ms: Option<i64>,
}

impl Problem {
    pub fn new(status: u16, code: &'static str, detail: String) -> Self {
        Self {
            status,
            code,
            detail,
            terminal_id: None,
            seq: None,
            acknowledged_seq: None,
            server_time_ms: None,
        }
    }
    pub fn internal(detail: String) -> Self {
        Self::new(500, "internal", detail)
    }
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }
    pub fn acknowledged(mut self, seq: u64) -> Self {
        self.acknowledged_seq = Some(seq);
        self
    }
    pub fn terminal(mut self, id: &str) -> Self {
        self.terminal_id = Some(id.to_owned());
        self
    }
}

/// A database failure is the server's: `500 internal`, nothing committed.
impl From<crate::storage::StorageError> for Problem {
    fn from(e: crate::storage::StorageError) -> Self {
        Problem::internal(e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&Wire {
            kind: format!("https://redeemd.invalid/problems/{}", self.code),
            title: self.code.replace('_', " "),
            status: self.status,
            code: self.code,
            detail: &self.detail,
            terminal_id: self.terminal_id.as_deref(),
            seq: self.seq,
            acknowledged_seq: self.acknowledged_seq,
            server_time_ms: self.server_time_ms,
        })
        .unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    }
}
