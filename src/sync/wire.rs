//! The JSON bodies of the clearing API, terminal side (`docs/api/openapi.yaml`): building an upload,
//! reading a head, an acknowledgement or a problem. Pure, so that the HTTP client stays thin and every
//! hostile or garbled answer is handled here with a named reason (never a panic).

use base64::Engine;
use redeemd_contract::JournalRecord;
use redeemd_contract::keys::{TAG_LEN, Tag};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use redeemd_contract::{CardRef, DenyEntry, DenyStatus};

use super::plan::{Problem, ServerHead};
use crate::store::DenyList;

/// Why a server answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("answer is not the expected JSON: {0}")]
    Json(String),
    #[error("answer field {field}: {reason}")]
    Field {
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Serialize)]
struct UploadItem<'a> {
    seq: u64,
    record: String,
    mac: &'a str,
}

#[derive(Serialize)]
struct Upload<'a> {
    from_seq: u64,
    records: Vec<UploadItem<'a>>,
}

/// The body of `POST journal` for consecutive `records` (with their MACs), in order.
pub fn upload_body(records: &[(JournalRecord, Tag)]) -> Vec<u8> {
    let macs: Vec<String> = records.iter().map(|(_, m)| hex::encode(m)).collect();
    let body = Upload {
        from_seq: records.first().map_or(0, |(r, _)| r.seq),
        records: records
            .iter()
            .zip(&macs)
            .map(|((r, _), mac)| UploadItem {
                seq: r.seq,
                record: base64::engine::general_purpose::STANDARD.encode(r.encode()),
                mac,
            })
            .collect(),
    };
    // Serializing plain strings and integers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

fn tag(field: &'static str, hex_text: &str) -> Result<Tag, WireError> {
    let bad = WireError::Field {
        field,
        reason: "not 64 lowercase hex digits",
    };
    if hex_text.len() != 2 * TAG_LEN
        || !hex_text
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad);
    }
    let mut out = [0u8; TAG_LEN];
    hex::decode_to_slice(hex_text, &mut out).map_err(|_| bad)?;
    Ok(out)
}

#[derive(Deserialize)]
struct HeadJson {
    terminal_id: String,
    acknowledged_seq: u64,
    acknowledged_mac: Option<String>,
}

/// Reads a `GET journal/head` answer, checking it is about `terminal_id`.
/// Reads the answer to `POST batch-close` for `close`: the platform's verdict on that business day.
pub fn parse_close_answer(
    close: &redeemd_contract::close::BatchClose,
    body: &[u8],
) -> Result<redeemd_contract::close::BatchCloseResult, WireError> {
    let a: redeemd_contract::close::BatchCloseResult =
        serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    if a.business_date != close.business_date {
        return Err(WireError::Field {
            field: "business_date",
            reason: "another day's answer",
        });
    }
    if !matches!(a.result.as_str(), "matched" | "mismatched") {
        return Err(WireError::Field {
            field: "result",
            reason: "neither matched nor mismatched",
        });
    }
    if a.result == "matched" && !a.differences.is_empty() {
        return Err(WireError::Field {
            field: "differences",
            reason: "listed for a matched close",
        });
    }
    Ok(a)
}

pub fn parse_head(terminal_id: &str, body: &[u8]) -> Result<ServerHead, WireError> {
    let h: HeadJson = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    if h.terminal_id != terminal_id {
        return Err(WireError::Field {
            field: "terminal_id",
            reason: "another terminal's head",
        });
    }
    let acknowledged_mac = match (h.acknowledged_seq, h.acknowledged_mac) {
        (0, None) => None,
        (0, Some(_)) => {
            return Err(WireError::Field {
                field: "acknowledged_mac",
                reason: "present while acknowledged_seq is 0",
            });
        }
        (_, None) => {
            return Err(WireError::Field {
                field: "acknowledged_mac",
                reason: "missing",
            });
        }
        (_, Some(m)) => Some(tag("acknowledged_mac", &m)?),
    };
    Ok(ServerHead {
        acknowledged_seq: h.acknowledged_seq,
        acknowledged_mac,
    })
}

#[derive(Deserialize)]
struct AckJson {
    acknowledged_seq: u64,
    acknowledged_mac: String,
}

/// Reads a `200` answer to `POST journal` (then [`super::plan::Uploader::apply_ack`] judges it).
pub fn parse_ack(body: &[u8]) -> Result<ServerHead, WireError> {
    let a: AckJson = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    Ok(ServerHead {
        acknowledged_seq: a.acknowledged_seq,
        acknowledged_mac: Some(tag("acknowledged_mac", &a.acknowledged_mac)?),
    })
}

#[derive(Deserialize)]
struct ProblemJson {
    code: String,
    seq: Option<u64>,
}

/// Reads an error answer. A body that is not problem+json still gives a [`Problem`] with the code
/// `unreadable` (a proxy's HTML page, a truncated body), so the planner retries with backoff.
pub fn parse_problem(status: u16, retry_after_ms: Option<u64>, body: &[u8]) -> Problem {
    let (code, seq) = match serde_json::from_slice::<ProblemJson>(body) {
        Ok(p) if !p.code.is_empty() && p.code.len() <= 64 => (p.code, p.seq),
        _ => ("unreadable".to_owned(), None),
    };
    Problem {
        status,
        code,
        seq,
        retry_after_ms,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyEntryJson {
    version: u64,
    card_ref: String,
    status: String,
    entry_version: u64,
    reported_at_ms: i64,
    mac: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyListJson {
    merchant_id: String,
    version: u64,
    entries: Vec<DenyEntryJson>,
}

/// Most entries accepted in one deny-list answer (a merchant's whole list fits many times over).
pub const MAX_DENY_ENTRIES: usize = 100_000;

/// Reads a `GET deny-list` answer. Only the shape is checked here; the MACs, the merchant and the
/// versions are checked by the store before anything is applied
/// ([`crate::store::Store::apply_deny_list`]).
pub fn parse_deny_list(body: &[u8]) -> Result<DenyList, WireError> {
    let l: DenyListJson =
        serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    if l.entries.len() > MAX_DENY_ENTRIES {
        return Err(WireError::Field {
            field: "entries",
            reason: "more entries than the terminal accepts in one answer",
        });
    }
    let entries = l
        .entries
        .into_iter()
        .map(|e| {
            let status = DenyStatus::parse(&e.status).map_err(|_| WireError::Field {
                field: "entries[].status",
                reason: "not lost, frozen, cancelled or reissued",
            })?;
            Ok((
                DenyEntry {
                    version: e.version,
                    card_ref: CardRef(tag("entries[].card_ref", &e.card_ref)?),
                    status,
                    entry_version: e.entry_version,
                    reported_at_ms: e.reported_at_ms,
                },
                tag("entries[].mac", &e.mac)?.to_vec(),
            ))
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(DenyList {
        merchant_id: l.merchant_id,
        version: l.version,
        entries,
    })
}

#[derive(Deserialize)]
struct ProblemExtrasJson {
    detail: Option<String>,
    server_time_ms: Option<i64>,
}

/// The parts of a problem answer that are for people and for the clock, not for the planner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProblemExtras {
    /// `detail`, cut to 200 characters and stripped of control characters (it goes into logs).
    pub detail: Option<String>,
    /// The server's clock, sent with `clock_skew`.
    pub server_time_ms: Option<i64>,
}

/// Reads `detail` and `server_time_ms` of a problem answer, if it is one.
pub fn problem_extras(body: &[u8]) -> ProblemExtras {
    match serde_json::from_slice::<ProblemExtrasJson>(body) {
        Ok(p) => ProblemExtras {
            detail: p.detail.map(|d| {
                d.chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect::<String>()
            }),
            server_time_ms: p.server_time_ms,
        },
        Err(_) => ProblemExtras::default(),
    }
}

/// `Retry-After` in milliseconds: delay-seconds only (an HTTP date needs a clock: treat as absent).
pub fn retry_after_ms(header: Option<&str>) -> Option<u64> {
    let t = header?.trim();
    (!t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse::<u64>().ok())
        .flatten()
        .map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use redeemd_contract::CardRef;
    use redeemd_contract::journal::genesis_mac;
    use redeemd_contract::keys::{Purpose, TerminalSecret};

    fn records(n: u64) -> Vec<(JournalRecord, Tag)> {
        let key = TerminalSecret::from_bytes(&[4; 32])
            .unwrap()
            .derive(Purpose::JournalMac, "T-1");
        let mut prev = genesis_mac(&key, "T-1");
        (1..=n)
            .map(|seq| {
                let r = JournalRecord {
                    prev_mac: prev,
                    ..crate::sync::test_record(seq, 1, 1)
                };
                prev = r.mac(&key);
                (r, prev)
            })
            .collect()
    }

    #[test]
    fn upload_carries_the_exact_canonical_bytes() {
        let recs = records(3);
        let v: serde_json::Value = serde_json::from_slice(&upload_body(&recs)).unwrap();
        assert_eq!(v["from_seq"], 1);
        for (i, (r, m)) in recs.iter().enumerate() {
            let item = &v["records"][i];
            assert_eq!(item["seq"], r.seq);
            assert_eq!(item["mac"], hex::encode(m));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(item["record"].as_str().unwrap())
                .unwrap();
            assert_eq!(JournalRecord::decode(&bytes).unwrap(), *r);
        }
    }

    #[test]
    fn heads_and_acks_are_checked() {
        let mac = hex::encode([0xabu8; 32]);
        let ok =
            format!(r#"{{"terminal_id":"T-1","acknowledged_seq":4,"acknowledged_mac":"{mac}"}}"#);
        assert_eq!(
            parse_head("T-1", ok.as_bytes()),
            Ok(ServerHead {
                acknowledged_seq: 4,
                acknowledged_mac: Some([0xab; 32])
            })
        );
        assert!(parse_head("T-2", ok.as_bytes()).is_err());
        let empty = br#"{"terminal_id":"T-1","acknowledged_seq":0,"acknowledged_mac":null}"#;
        assert_eq!(parse_head("T-1", empty).unwrap().acknowledged_seq, 0);
        let no_mac = br#"{"terminal_id":"T-1","acknowledged_seq":3,"acknowledged_mac":null}"#;
        assert!(parse_head("T-1", no_mac).is_err());
        let upper = ok.replace(&mac, &mac.to_uppercase());
        assert!(parse_head("T-1", upper.as_bytes()).is_err());
        assert!(parse_head("T-1", b"<html>").is_err());
        let ack = format!(
            r#"{{"acknowledged_seq":9,"acknowledged_mac":"{mac}","stored":1,"duplicates":0}}"#
        );
        assert_eq!(parse_ack(ack.as_bytes()).unwrap().acknowledged_seq, 9);
        assert!(parse_ack(br#"{"acknowledged_seq":-1,"acknowledged_mac":""}"#).is_err());
    }

    #[test]
    fn problems_and_retry_after() {
        let p = parse_problem(
            422,
            None,
            br#"{"type":"x","title":"t","status":422,"code":"chain_broken","seq":5}"#,
        );
        assert_eq!((p.code.as_str(), p.seq), ("chain_broken", Some(5)));
        let p = parse_problem(502, Some(2000), b"<html>Bad gateway</html>");
        assert_eq!(
            (p.status, p.code.as_str(), p.retry_after_ms),
            (502, "unreadable", Some(2000))
        );
        assert_eq!(retry_after_ms(Some(" 30 ")), Some(30_000));
        assert_eq!(retry_after_ms(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after_ms(Some("-1")), None);
        assert_eq!(retry_after_ms(None), None);
    }

    #[test]
    fn deny_lists_are_read_strictly() {
        let mac = hex::encode([0xa7u8; 32]);
        let card = hex::encode([5u8; 32]);
        let ok = format!(
            r#"{{"merchant_id":"M-1","version":17,"entries":[{{"version":17,"card_ref":"{card}","status":"lost","entry_version":43,"reported_at_ms":1795000000000,"mac":"{mac}"}}]}}"#
        );
        let l = parse_deny_list(ok.as_bytes()).unwrap();
        assert_eq!((l.merchant_id.as_str(), l.version), ("M-1", 17));
        assert_eq!(l.entries[0].0.status, DenyStatus::Lost);
        assert_eq!(l.entries[0].0.card_ref, CardRef([5; 32]));
        assert_eq!(l.entries[0].1, vec![0xa7u8; 32]);
        for bad in [
            ok.replace("lost", "active"),
            ok.replace(&card, "5f0c"),
            ok.replace(&mac, &mac.to_uppercase()),
            ok.replace(r#""entry_version":43"#, r#""entry_version":-1"#),
            ok.replace(r#""mac""#, r#""extra":1,"mac""#),
            "[]".to_owned(),
        ] {
            assert!(parse_deny_list(bad.as_bytes()).is_err(), "{bad}");
        }
        let empty = br#"{"merchant_id":"M-1","version":0,"entries":[]}"#;
        assert!(parse_deny_list(empty).unwrap().entries.is_empty());
    }

    #[test]
    fn problem_extras_are_sanitised() {
        let p = problem_extras(
            br#"{"code":"clock_skew","detail":"off by\n 400 s","server_time_ms":1795000000000}"#,
        );
        assert_eq!(p.detail.as_deref(), Some("off by 400 s"));
        assert_eq!(p.server_time_ms, Some(1_795_000_000_000));
        assert_eq!(problem_extras(b"<html>"), ProblemExtras::default());
    }

    proptest! {
        #[test]
        fn garbage_answers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), status in 0u16..1000) {
            let _ = parse_head("T-1", &body);
            let _ = parse_ack(&body);
            let _ = parse_problem(status, None, &body);
            let _ = retry_after_ms(std::str::from_utf8(&body).ok());
            let _ = parse_deny_list(&body);
            let _ = problem_extras(&body);
            let _ = parse_close_answer(&close_of("2026-11-27"), &body);
        }

        /// Only a well-formed verdict on the day that was closed is accepted.
        #[test]
        fn a_close_answer_must_be_about_that_day_and_consistent(
            day in 1u32..=28,
            answered in 1u32..=28,
            result in prop_oneof![Just("matched"), Just("mismatched"), Just("unknown")],
            differences in any::<bool>(),
        ) {
            let date = format!("2026-11-{day:02}");
            let body = serde_json::json!({
                "result": result,
                "business_date": format!("2026-11-{answered:02}"),
                "differences": if differences {
                    serde_json::json!([{"package_id": "P1", "service_code": "WASH", "terminal": null, "server": null}])
                } else {
                    serde_json::json!([])
                },
            })
            .to_string();
            let parsed = parse_close_answer(&close_of(&date), body.as_bytes());
            let valid = day == answered
                && result != "unknown"
                && !(result == "matched" && differences);
            prop_assert_eq!(parsed.is_ok(), valid, "{}", body);
        }
    }

    fn close_of(date: &str) -> redeemd_contract::close::BatchClose {
        redeemd_contract::close::BatchClose {
            business_date: date.into(),
            utc_offset_minutes: 480,
            first_seq: 1,
            through_seq: 2,
            items: Vec::new(),
        }
    }
}
