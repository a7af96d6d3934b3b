//! A fake clearing server for the sync tests: raw HTTP/1.1 on a loopback `TcpListener`, so that a
//! test controls every byte — an honest platform by default (journal head and upload, deny list,
//! entitlements, every request's signature verified), and a hook that makes any request misbehave
//! (hang, cut a body short, answer 500, garbage, a hostile acknowledgement, a forged bundle…).

use std::sync::{Arc, Mutex};

use base64::Engine;
use redeemd_contract::deny::DenyEntry;
use redeemd_contract::request::{MemoryNonces, ParsedAuth, ReceivedHeaders};
use redeemd_contract::{JournalRecord, TerminalKeys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{MERCHANT, TERMINAL};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn is(&self, method: &str, path_prefix: &str) -> bool {
        self.method == method
            && self
                .path
                .starts_with(&format!("/v1/terminals/{TERMINAL}/{path_prefix}"))
    }
}

/// What the server does with a request.
pub enum Reply {
    Status {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// Never answer (the connection stays open until the test ends).
    Hang,
    /// Declare `declared` bytes of body, send `sent`, close.
    CutBody { declared: usize, sent: Vec<u8> },
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Status {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: body.into().into_bytes(),
        }
    }
    pub fn problem(status: u16, code: &str, detail: &str, retry_after: Option<u64>) -> Reply {
        let mut headers = vec![("Content-Type", "application/problem+json".into())];
        if let Some(s) = retry_after {
            headers.push(("Retry-After", s.to_string()));
        }
        Reply::Status {
            status,
            headers,
            body: serde_json::json!({
                "type": format!("https://redeemd.invalid/problems/{code}"),
                "title": code, "status": status, "code": code, "detail": detail,
            })
            .to_string()
            .into_bytes(),
        }
    }
}

/// The honest platform's state.
pub struct Honest {
    pub keys: TerminalKeys,
    /// (seq, record bytes, MAC) as stored.
    pub journal: Vec<(u64, Vec<u8>, Vec<u8>)>,
    pub deny: Vec<DenyEntry>,
    /// The current bundle and its version; `since` ≥ version gets 204.
    pub bundle: Option<(u64, Vec<u8>)>,
    /// Compress bundles with this encoding when the request accepts it.
    pub encoding: Option<&'static str>,
    pub bad_signatures: u64,
    /// Entries per deny-list answer at most (the real server pages at 10,000).
    pub deny_page: usize,
    /// End-of-day closes received, in order.
    pub closes: Vec<redeemd_contract::close::BatchClose>,
    /// Health reports received, in order.
    pub health: Vec<redeemd_contract::health::HealthReport>,
    nonces: MemoryNonces,
}

impl Honest {
    pub fn new(keys: TerminalKeys) -> Honest {
        Honest {
            keys,
            journal: Vec::new(),
            deny: Vec::new(),
            bundle: None,
            encoding: None,
            bad_signatures: 0,
            deny_page: 10_000,
            closes: Vec::new(),
            health: Vec::new(),
            nonces: MemoryNonces::new(),
        }
    }

    pub fn deny_json(&self, since: u64) -> String {
        let entries: Vec<serde_json::Value> = self
            .deny
            .iter()
            .filter(|e| e.version > since)
            .take(self.deny_page)
            .map(|e| deny_entry_json(e, &hex::encode(e.mac(&self.keys.cache, MERCHANT))))
            .collect();
        serde_json::json!({
            "merchant_id": MERCHANT,
            "version": self.deny.last().map_or(0, |e| e.version),
            "entries": entries,
        })
        .to_string()
    }

    fn answer(&mut self, req: &Request) -> Reply {
        if let Err(e) = self.check_signature(req) {
            self.bad_signatures += 1;
            return Reply::problem(401, e.code(), &e.to_string(), None);
        }
        // A compressed body was authenticated as sent; inflate it for reading, as the real server does.
        let inflated;
        let req = if req.header("content-encoding") == Some("gzip") {
            use std::io::Read;
            let mut body = Vec::new();
            flate2::read::GzDecoder::new(&req.body[..])
                .read_to_end(&mut body)
                .unwrap();
            inflated = Request {
                body,
                ..req.clone()
            };
            &inflated
        } else {
            req
        };
        let since = || {
            req.path
                .split("since=")
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if req.is("GET", "journal/head") {
            let (seq, mac) = self
                .journal
                .last()
                .map_or((0, None), |(s, _, m)| (*s, Some(hex::encode(m))));
            return Reply::json(
                200,
                serde_json::json!({"terminal_id": TERMINAL, "acknowledged_seq": seq, "acknowledged_mac": mac})
                    .to_string(),
            );
        }
        if req.is("POST", "journal") {
            let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            let mut last = None;
            for item in v["records"].as_array().unwrap() {
                let seq = item["seq"].as_u64().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(item["record"].as_str().unwrap())
                    .unwrap();
                let mac = hex::decode(item["mac"].as_str().unwrap()).unwrap();
                let rec = JournalRecord::decode(&bytes).unwrap();
                assert!(rec.verify_mac(&self.keys.journal, &mac), "seq {seq}");
                let head = self.journal.last().map_or(0, |(s, _, _)| *s);
                if seq == head + 1 {
                    self.journal.push((seq, bytes, mac.clone()));
                } else {
                    assert!(seq <= head, "gap at {seq}");
                    assert_eq!(self.journal[seq as usize - 1].2, mac, "conflict at {seq}");
                }
                last = Some((seq, mac));
            }
            let (seq, mac) = last.unwrap();
            return Reply::json(
                200,
                serde_json::json!({"acknowledged_seq": seq, "acknowledged_mac": hex::encode(mac), "stored": 1, "duplicates": 0})
                    .to_string(),
            );
        }
        if req.is("GET", "deny-list") {
            return Reply::json(200, self.deny_json(since()));
        }
        if req.is("POST", "batch-close") {
            use redeemd_contract::close;
            let c: close::BatchClose = serde_json::from_slice(&req.body).unwrap();
            let head = self.journal.last().map_or(0, |(s, _, _)| *s);
            assert!(
                c.through_seq <= head,
                "close through {} above the head {head}",
                c.through_seq
            );
            let records: Vec<JournalRecord> = self
                .journal
                .iter()
                .map(|(_, bytes, _)| JournalRecord::decode(bytes).unwrap())
                .collect();
            let day = close::parse_date(&c.business_date).unwrap();
            let server = close::totals(&records, close::day_window(day, c.utc_offset_minutes));
            let answer = close::reconcile(&c, &server);
            self.closes.push(c);
            return Reply::json(200, serde_json::to_string(&answer).unwrap());
        }
        if req.is("POST", "health") {
            let report: redeemd_contract::health::HealthReport =
                serde_json::from_slice(&req.body).unwrap();
            report.check().unwrap();
            self.health.push(report);
            return Reply::Status {
                status: 204,
                headers: vec![],
                body: vec![],
            };
        }
        if req.is("GET", "entitlements") {
            return match &self.bundle {
                Some((v, bytes)) if *v > since() => {
                    let accept = req.header("accept-encoding").unwrap_or("");
                    match self.encoding.filter(|e| accept.contains(e)) {
                        Some("zstd") => Reply::Status {
                            status: 200,
                            headers: vec![("Content-Encoding", "zstd".into())],
                            body: zstd::encode_all(&bytes[..], 3).unwrap(),
                        },
                        Some("gzip") => {
                            use std::io::Write;
                            let mut z = flate2::write::GzEncoder::new(
                                Vec::new(),
                                flate2::Compression::fast(),
                            );
                            z.write_all(bytes).unwrap();
                            Reply::Status {
                                status: 200,
                                headers: vec![("Content-Encoding", "gzip".into())],
                                body: z.finish().unwrap(),
                            }
                        }
                        _ => Reply::Status {
                            status: 200,
                            headers: vec![],
                            body: bytes.clone(),
                        },
                    }
                }
                _ => Reply::Status {
                    status: 204,
                    headers: vec![],
                    body: vec![],
                },
            };
        }
        Reply::problem(404, "not_found", &req.path, None)
    }

    fn check_signature(
        &mut self,
        req: &Request,
    ) -> Result<(), redeemd_contract::request::RequestAuthError> {
        let h = |n: &str| req.header(n).map(str::as_bytes);
        let parsed = ParsedAuth::parse(&ReceivedHeaders {
            terminal: h("x-redeemd-terminal"),
            timestamp: h("x-redeemd-timestamp"),
            nonce: h("x-redeemd-nonce"),
            content_sha256: h("x-redeemd-content-sha256"),
            signature: h("x-redeemd-signature"),
        })?;
        let now = crate::shop::wall_now();
        parsed.verify(
            &self.keys.request,
            &req.method,
            &req.path,
            redeemd_contract::request::body_sha256(&req.body),
            now,
            300_000,
            &mut self.nonces,
        )
    }
}

pub fn deny_entry_json(e: &DenyEntry, mac_hex: &str) -> serde_json::Value {
    serde_json::json!({
        "version": e.version, "card_ref": e.card_ref.to_hex(), "status": e.status.as_str(),
        "entry_version": e.entry_version, "reported_at_ms": e.reported_at_ms, "mac": mac_hex,
    })
}

type Hook = Box<dyn FnMut(&Request, &mut Honest) -> Option<Reply> + Send>;

/// A running fake platform.
pub struct Platform {
    pub url: String,
    pub honest: Arc<Mutex<Honest>>,
    pub requests: Arc<Mutex<Vec<Request>>>,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl Platform {
    pub async fn start(honest: Honest) -> Platform {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let p = Platform {
            url,
            honest: Arc::new(Mutex::new(honest)),
            requests: Arc::new(Mutex::new(Vec::new())),
            hook: Arc::new(Mutex::new(None)),
        };
        let (honest, requests, hook) = (p.honest.clone(), p.requests.clone(), p.hook.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (honest, requests, hook) = (honest.clone(), requests.clone(), hook.clone());
                tokio::spawn(async move {
                    serve(sock, honest, requests, hook).await;
                });
            }
        });
        p
    }

    /// Makes requests misbehave: `hook` answers a request instead of the honest platform by returning
    /// `Some`. Replaces any earlier hook.
    pub fn misbehave(
        &self,
        hook: impl FnMut(&Request, &mut Honest) -> Option<Reply> + Send + 'static,
    ) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }

    pub fn behave(&self) {
        *self.hook.lock().unwrap() = None;
    }

    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.is(method, path_prefix))
            .count()
    }
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    honest: Arc<Mutex<Honest>>,
    requests: Arc<Mutex<Vec<Request>>>,
    hook: Arc<Mutex<Option<Hook>>>,
) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (
        first.next().unwrap_or("").to_owned(),
        first.next().unwrap_or("").to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    let req = Request {
        method,
        path,
        headers,
        body,
    };
    requests.lock().unwrap().push(req.clone());
    let reply = {
        let mut honest = honest.lock().unwrap();
        let hooked = hook
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|h| h(&req, &mut honest));
        hooked.unwrap_or_else(|| honest.answer(&req))
    };
    match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
            for (n, v) in headers {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
            out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let _ = sock.write_all(out.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        }
        Reply::Hang => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        Reply::CutBody { declared, sent } => {
            let out = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
            );
            let _ = sock.write_all(out.as_bytes()).await;
            let _ = sock.write_all(&sent).await;
        }
    }
    let _ = sock.shutdown().await;
}
