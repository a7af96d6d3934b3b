//! A refusal with its stable code from the API contract (`docs/api/README.md`, "Errors"): what an
//! operation of the server answers when it will not do what was asked. The HTTP layer sends it as
//! `application/problem+json` (`crate::http::problem`); the status is the contract's for that code.

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
