//! The thin HTTP driver of a simulated terminal: one HTTP/1.1 connection per terminal, kept between
//! requests and between passes the way the daemon's client (`redeemd::sync::client`, reqwest) keeps
//! its pooled connection, answers decoded as they stream.
//!
//! Why not the daemon's `Client` itself: each builds a `reqwest::Client` with its own TLS
//! configuration — measured at 2 ms and ~107 KB a terminal, 20 s and 1 GB for 10,000 — and hides the
//! per-request figures a load test reports (connect time, status, `Retry-After`). What it does on the
//! wire is reproduced here, with its own constants:
//!
//! * **Connections.** TCP with `TCP_NODELAY` (reqwest's default), connect within
//!   [`ClientOptions::connect_timeout`]; the connection is reused for the next request while it is
//!   open and idle for less than [`POOL_IDLE`] (reqwest's pool default), so a pass's requests share
//!   one, and the next pass reuses it if the server kept it open. A request on a reused connection
//!   that the server had closed before it was sent goes once more on a new one (hyper's pool does).
//!   [`KeepAlive::PerPass`] instead closes it after every pass.
//! * **Timeouts.** A JSON request must finish within `request_timeout`; a bundle within
//!   `bundle_timeout`; no read of a body may stall longer than `request_timeout`.
//! * **Compression.** `Accept-Encoding: zstd, gzip`, answers decoded chunk by chunk by the daemon's
//!   [`ContentDecoder`] under the daemon's limits; request bodies of
//!   [`redeemd::sync::client::GZIP_BODY_FROM_BYTES`] or more are sent gzip-compressed (the signature
//!   covers the bytes as sent).
//!
//! Only `http://` is spoken: the simulator measures the clearing server, which serves plain HTTP
//! behind a TLS proxy in production.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use redeemd::sync::client::ClientOptions;
use redeemd::sync::decode::{ContentDecoder, DecodeError};
use redeemd::sync::wire;

/// How long an idle connection is kept for reuse (reqwest's `pool_idle_timeout` default).
pub const POOL_IDLE: Duration = Duration::from_secs(90);

/// What happens to a terminal's connection after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeepAlive {
    /// Kept for the next pass, as the daemon's client pool keeps it (until the server closes it or it
    /// idled for [`POOL_IDLE`]).
    Daemon,
    /// Closed at the end of every pass: one new connection per pass.
    PerPass,
}

/// Why a request got no HTTP answer (or its body could not be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Transport {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("timed out")]
    Timeout,
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("body undecodable: {0}")]
    Undecodable(String),
    #[error("answer body above {0} bytes")]
    TooLarge(u64),
}

impl Transport {
    /// The error's kind for the report (the detail varies; the kind does not).
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Connect(_) => "connect failed",
            Transport::ConnectTimeout => "connect timed out",
            Transport::Timeout => "timed out",
            Transport::Closed(_) => "connection closed",
            Transport::Undecodable(_) => "body undecodable",
            Transport::TooLarge(_) => "body too large",
        }
    }
}

/// The server: its address and the URL's path prefix.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    authority: String,
    base_path: String,
}

impl Target {
    /// Parses `http://host:port[/prefix]` (the host is resolved once, here).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("server URL {url:?}: only http:// is spoken (a TLS proxy in front of the server is not what is measured)"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("server URL {url:?}: {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("server URL {url:?}: {authority} resolves to no address"))?;
        let path = path.trim_end_matches('/');
        Ok(Target {
            addr,
            authority: authority.to_owned(),
            base_path: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
        })
    }

    /// The path and query of `/v1/terminals/<id>/<rest>` under the URL's prefix, as signed.
    pub fn path(&self, terminal_id: &str, rest: &str) -> String {
        format!("{}/v1/terminals/{terminal_id}/{rest}", self.base_path)
    }
}

/// A terminal's open connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    idle_since: Instant,
}

/// An answer's head, and its body decoded as it arrives.
pub struct Answer {
    pub status: u16,
    pub retry_after_ms: Option<u64>,
    /// `X-Redeemd-Bundle-Kind` (a hint; the manifest is authoritative).
    pub bundle_kind: Option<String>,
    /// Time to connect, when this request opened a new connection.
    pub connect: Option<Duration>,
    body: Incoming,
    decoder: ContentDecoder,
    limit: u64,
    deadline: Instant,
    stall: Duration,
    done: bool,
}

impl Answer {
    /// The next decoded bytes (possibly empty), `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, Transport> {
        if self.done {
            return Ok(None);
        }
        let wait = self
            .stall
            .min(self.deadline.saturating_duration_since(Instant::now()));
        let frame = tokio::time::timeout(wait, self.body.frame())
            .await
            .map_err(|_| Transport::Timeout)?;
        let mut out = Vec::new();
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.decoder
                        .feed(&data, &mut out)
                        .map_err(|e| decode_error(e, self.limit))?;
                }
            }
            Some(Err(e)) => return Err(Transport::Closed(e.to_string())),
            None => {
                self.done = true;
                self.decoder
                    .finish(&mut out)
                    .map_err(|e| decode_error(e, self.limit))?;
                if out.is_empty() {
                    return Ok(None);
                }
            }
        }
        Ok(Some(out))
    }

    /// The whole decoded body.
    pub async fn read_all(mut self) -> Result<Vec<u8>, Transport> {
        let mut all = Vec::new();
        while let Some(c) = self.chunk().await? {
            all.extend_from_slice(&c);
        }
        Ok(all)
    }
}

fn decode_error(e: DecodeError, limit: u64) -> Transport {
    match e {
        DecodeError::TooLarge { .. } => Transport::TooLarge(limit),
        e => Transport::Undecodable(e.to_string()),
    }
}

/// One request to send: method, path and query as signed, the signature's headers, the body as sent.
pub struct Outgoing {
    pub method: &'static str,
    pub path_and_query: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub gzipped: bool,
}

/// The HTTP side of the simulator: the target and the daemon's client options.
#[derive(Debug, Clone)]
pub struct Http {
    pub target: Target,
    pub options: ClientOptions,
}

/// What kind of answer a request expects (its deadline and decoded-size limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Json,
    Bundle,
}

impl Http {
    pub fn new(target: Target) -> Http {
        Http {
            target,
            options: ClientOptions::default(),
        }
    }

    async fn connect(&self) -> Result<Conn, Transport> {
        let tcp = tokio::time::timeout(
            self.options.connect_timeout,
            tokio::net::TcpStream::connect(self.target.addr),
        )
        .await
        .map_err(|_| Transport::ConnectTimeout)?
        .map_err(|e| Transport::Connect(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| Transport::Connect(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| Transport::Connect(e.to_string()))?;
        // The connection's I/O runs beside the terminal's pass; it ends when either side closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            idle_since: Instant::now(),
        })
    }

    fn request(&self, out: &Outgoing) -> Result<Request<Full<Bytes>>, Transport> {
        let mut b = Request::builder()
            .method(out.method)
            .uri(out.path_and_query.as_str())
            .header(header::HOST, self.target.authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("fleet-sim/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT_ENCODING, "zstd, gzip");
        for (name, value) in &out.headers {
            b = b.header(*name, value.as_str());
        }
        if !out.body.is_empty() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        if out.gzipped {
            b = b.header(header::CONTENT_ENCODING, "gzip");
        }
        b.body(Full::new(out.body.clone()))
            .map_err(|e| Transport::Connect(format!("request not buildable: {e}")))
    }

    /// Sends `out` on the terminal's connection (opening one when there is none usable) and returns
    /// the answer's head; its body is read through [`Answer`].
    pub async fn send(
        &self,
        conn: &mut Option<Conn>,
        out: &Outgoing,
        expect: Expect,
    ) -> Result<Answer, Transport> {
        let (whole, limit) = match expect {
            Expect::Json => (
                self.options.request_timeout,
                redeemd::sync::client::MAX_JSON_BYTES as u64,
            ),
            Expect::Bundle => (self.options.bundle_timeout, self.options.max_bundle_bytes),
        };
        let deadline = Instant::now() + whole;
        if conn
            .as_ref()
            .is_some_and(|c| c.sender.is_closed() || c.idle_since.elapsed() >= POOL_IDLE)
        {
            *conn = None;
        }
        let mut connect = None;
        for attempt in 0..2 {
            let reused = conn.is_some();
            let c = match conn {
                Some(c) => c,
                None => {
                    let started = Instant::now();
                    let fresh = self.connect().await?;
                    connect = Some(started.elapsed());
                    conn.insert(fresh)
                }
            };
            // The answer's head, like any read, may take `request_timeout` at most (reqwest's
            // `read_timeout` in the daemon's client); the whole request has its deadline.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(self.options.request_timeout);
            let request = self.request(out)?;
            let sent = tokio::time::timeout(left, async {
                c.sender.ready().await?;
                c.sender.send_request(request).await
            })
            .await;
            let response = match sent {
                Err(_) => {
                    *conn = None;
                    return Err(Transport::Timeout);
                }
                Ok(Ok(r)) => r,
                // The server closed a kept connection before this request went out: once more on
                // a new connection, as hyper's pool retries a canceled request.
                Ok(Err(e)) if reused && attempt == 0 && (e.is_canceled() || e.is_closed()) => {
                    *conn = None;
                    continue;
                }
                Ok(Err(e)) => {
                    *conn = None;
                    return Err(Transport::Closed(e.to_string()));
                }
            };
            c.idle_since = Instant::now();
            let header_text = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let encoding = header_text(header::CONTENT_ENCODING.as_str());
            let decoder = ContentDecoder::new(encoding.as_deref(), limit)
                .map_err(|e| decode_error(e, limit))?;
            let retry_after_ms =
                wire::retry_after_ms(header_text(header::RETRY_AFTER.as_str()).as_deref());
            let bundle_kind = header_text("x-redeemd-bundle-kind");
            return Ok(Answer {
                status: response.status().as_u16(),
                retry_after_ms,
                bundle_kind,
                connect,
                body: response.into_body(),
                decoder,
                limit,
                deadline,
                stall: self.options.request_timeout,
                done: false,
            });
        }
        Err(Transport::Closed(
            "the server closed the connection twice before the request went out".into(),
        ))
    }
}

/// A request body as sent: gzip-compressed from [`redeemd::sync::client::GZIP_BODY_FROM_BYTES`] on,
/// at the fast level (what the daemon's client does; its `gzip` is private to it).
pub fn body_as_sent(body: Vec<u8>) -> (Bytes, bool) {
    use std::io::Write;
    if body.len() < redeemd::sync::client::GZIP_BODY_FROM_BYTES {
        return (Bytes::from(body), false);
    }
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail; if it ever did, the body goes uncompressed (also accepted).
    match z.write_all(&body).and_then(|()| z.finish()) {
        Ok(gz) => (Bytes::from(gz), true),
        Err(_) => (Bytes::from(body), false),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_parse_with_and_without_a_prefix() {
        let t = Target::parse("http://127.0.0.1:8787").unwrap();
        assert_eq!(t.addr.port(), 8787);
        assert_eq!(
            t.path("T-1", "journal/head"),
            "/v1/terminals/T-1/journal/head"
        );
        let t = Target::parse("http://127.0.0.1:9/platform/").unwrap();
        assert_eq!(
            t.path("T-1", "deny-list?since=3"),
            "/platform/v1/terminals/T-1/deny-list?since=3"
        );
        assert!(Target::parse("https://127.0.0.1:1").is_err());
        assert!(Target::parse("http://no-such-host.invalid:1").is_err());
    }

    #[test]
    fn large_bodies_go_gzipped_small_ones_as_they_are() {
        let (b, gz) = body_as_sent(b"{}".to_vec());
        assert_eq!((&b[..], gz), (&b"{}"[..], false));
        let big = vec![b'a'; 4096];
        let (b, gz) = body_as_sent(big.clone());
        assert!(gz && b.len() < big.len());
        let mut d = flate2::read::GzDecoder::new(&b[..]);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut back).unwrap();
        assert_eq!(back, big);
    }
}
