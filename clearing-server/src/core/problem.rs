//! A refusal with its stable code from the API contract (`docs/api/README.md`, "Errors"): what an
//! operation of the server answers when it will not do what was asked. The HTTP layer sends it as
//! `application/problem+json` (`crate::http::problem`); the status is the contract's for that code.
//! The admin CLI prints it ([`Problem::for_cli`]), naming a refused field by its command-line flag.

/// A problem answer. `type` and `title` are derived from `code` when it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    /// What went wrong, for a person. With [`Problem::field`] set, the reason about that field (the
    /// API prefixes the field's name, the CLI its flag).
    pub detail: String,
    pub terminal_id: Option<String>,
    pub seq: Option<u64>,
    pub server_time_ms: Option<i64>,
    /// The refused field and the wait, when there is one (boxed: most problems have neither).
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Extra {
    /// The server's journal head (sequence and chain errors).
    acknowledged_seq: Option<u64>,
    /// The request field a refusal is about (`commission_bps`, `items[1].uses_total`).
    field: Option<String>,
    /// How long to wait before asking again (`429`), sent as `Retry-After`.
    retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(status: u16, code: &'static str, detail: String) -> Self {
        Self {
            status,
            code,
            detail,
            terminal_id: None,
            seq: None,
            server_time_ms: None,
            extra: None,
        }
    }
    pub fn internal(detail: String) -> Self {
        Self::new(500, "internal", detail)
    }
    /// `404 not_found`: no such resource *for this caller* (another merchant's resource is not
    /// found either: its existence is not confirmed).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not_found", detail.into())
    }
    /// `403 forbidden`: the caller's role may not do this at all.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(403, "forbidden", detail.into())
    }
    /// `422 invalid_field`: `field` of the request is refused for `reason`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut p = Self::new(422, "invalid_field", reason.into());
        p.extra.get_or_insert_default().field = Some(field.into());
        p
    }
    /// The server's journal head the problem carries.
    pub fn acknowledged_seq(&self) -> Option<u64> {
        self.extra.as_ref()?.acknowledged_seq
    }
    /// The request field the refusal is about.
    pub fn field(&self) -> Option<&str> {
        self.extra.as_ref()?.field.as_deref()
    }
    /// How long to wait before asking again, in seconds (sent as `Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.extra.as_ref()?.retry_after_secs
    }
    /// The same problem with a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.extra.get_or_insert_default().retry_after_secs = Some(secs);
        self
    }
    /// `409` with a code saying which state stands in the way.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(409, code, detail.into())
    }
    /// The same problem under another status and code (a field refused by its form, not its value).
    pub fn with_status(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
    /// The same problem under a more precise stable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }
    pub fn acknowledged(mut self, seq: u64) -> Self {
        self.extra.get_or_insert_default().acknowledged_seq = Some(seq);
        self
    }
    pub fn terminal(mut self, id: &str) -> Self {
        self.terminal_id = Some(id.to_owned());
        self
    }

    /// The detail as the API sends it: `field: reason` when a field is named.
    pub fn message(&self) -> String {
        match self.field() {
            Some(f) => format!("{f}: {}", self.detail),
            None => self.detail.clone(),
        }
    }

    /// The detail as `clearing-server admin` prints it: a field named by its flag (`valid_until` →
    /// `--valid-until`, `items[1].title` → `--item 2: title`).
    pub fn for_cli(&self) -> String {
        match self.field() {
            Some(f) => format!("{}: {}", cli_flag(f), self.detail),
            None => self.detail.clone(),
        }
    }
}

/// The admin command-line flag of an API field.
fn cli_flag(field: &str) -> String {
    let (head, rest) = match field.find(['[', '.']) {
        Some(i) => field.split_at(i),
        None => (field, ""),
    };
    // Lists are repeated singular flags: `--item`, `--category`, `--scope-merchant`.
    let flag = match head {
        "items" => "item".to_owned(),
        "categories" => "category".to_owned(),
        other => other.replace('_', "-"),
    };
    match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((index, tail)) => {
            let n = index
                .parse::<usize>()
                .map_or_else(|_| index.to_owned(), |i| (i + 1).to_string());
            let tail = tail.trim_start_matches('.');
            if tail.is_empty() {
                format!("--{flag} {n}")
            } else {
                format!("--{flag} {n}: {tail}")
            }
        }
        None if rest.is_empty() => format!("--{flag}"),
        None => format!("--{flag}{}", rest.replace(['_', '.'], "-")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_by_api_name_or_cli_flag() {
        let p = Problem::invalid("commission_bps", "20000 is above 10000 (100 %)");
        assert_eq!(p.message(), "commission_bps: 20000 is above 10000 (100 %)");
        assert_eq!(
            p.for_cli(),
            "--commission-bps: 20000 is above 10000 (100 %)"
        );
        assert_eq!(
            Problem::invalid("items[1].uses_total", "0: at least 1").for_cli(),
            "--item 2: uses_total: 0: at least 1"
        );
        assert_eq!(cli_flag("scope.merchants"), "--scope-merchants");
        assert_eq!(Problem::not_found("card #9").for_cli(), "card #9");
    }
}
