//! One sync pass of a simulated terminal, in the daemon's order and with the daemon's rules
//! (`src/sync/pass.rs`): the counter's redemptions since the last pass are journaled first, then
//! deny list → journal head (resume) → uploads → entitlements (full at first contact, then deltas,
//! `204` when nothing changed) → the closes of business days that ended → the health report.
//!
//! As in the daemon, the steps are independent except when the server is unreachable or overloaded
//! (a transport error, `5xx`, `429`): the remaining steps of the pass are skipped; closes need the
//! journal step done. A failed pass is followed by the daemon's backoff ([`Backoff`], honouring
//! `Retry-After`), which the scheduler applies.
//!
//! Every request is signed with the terminal's request key ([`SignedHeaders`]) and timed; the pass
//! returns what it did as a [`PassLog`].

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use redeemd::store::owner::wall_clock_ms;
use redeemd::sync::plan::{Backoff, Next, Problem, ServerHead};
use redeemd::sync::wire;
use redeemd_contract::request::{NONCE_BYTES, SignedHeaders};

use crate::http::{Answer, Conn, Expect, Http, KeepAlive, Outgoing, Transport, body_as_sent};
use crate::metrics::{CloseVerdict, Endpoint, Failure, PassLog, RequestLog};
use crate::terminal::{CounterModel, Terminal};

/// Deny-list answers applied in one pass at most (the daemon's `MAX_DENY_PAGES`).
const MAX_DENY_PAGES: u32 = 100;
/// Reads of the server's head in one pass (the daemon's `MAX_HEAD_READS`).
const MAX_HEAD_READS: u32 = 3;
/// Business days closed in one pass at most (the daemon's `MAX_CLOSES_PER_PASS`).
const MAX_CLOSES_PER_PASS: usize = 31;

/// What every pass of a run shares.
#[derive(Debug, Clone)]
pub struct PassConfig {
    pub http: Http,
    pub counter: CounterModel,
    /// The share of upload acknowledgements dropped as if lost in transit (the next pass resumes).
    pub drop_ack_ratio: f64,
    /// The share of deltas whose every entry is verified (MAC and body) as a terminal does; the
    /// others are checked by their frames and signed manifest. Full snapshots are always verified.
    pub verify_ratio: f64,
    pub keep_alive: KeepAlive,
    /// The sync interval a health report names, or `None` to send none (`--no-health`).
    pub health_interval_secs: Option<u64>,
}

/// A terminal with what it keeps between passes.
pub struct SimTerminal {
    pub terminal: Terminal,
    conn: Option<Conn>,
    pub backoff: Backoff,
    rng: SmallRng,
}

impl SimTerminal {
    pub fn new(terminal: Terminal, seed: u64) -> SimTerminal {
        SimTerminal {
            terminal,
            conn: None,
            backoff: Backoff::default(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// A uniformly random `u64` (the backoff's jitter).
    pub fn random(&mut self) -> u64 {
        self.rng.random()
    }

    /// Whether this terminal has anything left to upload.
    pub fn pending_records(&self) -> u64 {
        self.terminal.head_seq() - self.terminal.acked_seq()
    }
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StepError {
    Transport(Transport),
    Server {
        status: u16,
        code: String,
        retry_after_ms: Option<u64>,
    },
    /// An answer the terminal refused (unreadable, a bundle or deny list that does not verify, a
    /// hostile acknowledgement) or a journal the server diverged from.
    Refused(String),
    /// The simulator dropped an upload's answer on purpose.
    AckDropped,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Transport(t) => write!(f, "{t}"),
            StepError::Server { status, code, .. } => write!(f, "HTTP {status} {code}"),
            StepError::Refused(why) => f.write_str(why),
            StepError::AckDropped => f.write_str("acknowledgement dropped on purpose"),
        }
    }
}

impl StepError {
    /// The server cannot be reached or is overloaded: the rest of the pass is skipped.
    fn unreachable(&self) -> bool {
        match self {
            StepError::Transport(_) | StepError::AckDropped => true,
            StepError::Server { status, .. } => *status == 429 || *status >= 500,
            StepError::Refused(_) => false,
        }
    }

    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            StepError::Server { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

/// What a pass's outcome means for the next one (the daemon's `next_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Wait the interval.
    Interval,
    /// Back off (a step failed), at least this long when the server said so.
    Backoff { retry_after_ms: Option<u64> },
}

/// One pass's running state.
struct Run<'a> {
    t: &'a mut SimTerminal,
    cfg: &'a PassConfig,
    log: PassLog,
}

/// Runs one pass of `t` now.
pub async fn pass(t: &mut SimTerminal, cfg: &PassConfig) -> (PassLog, After) {
    let started = Instant::now();
    let counter = {
        let SimTerminal { terminal, rng, .. } = t;
        terminal.redeem_until(wall_clock_ms(), &cfg.counter, rng)
    };
    let mut run = Run {
        t,
        cfg,
        log: PassLog::starting(started, counter),
    };
    let deny = run.deny_step().await;
    let mut skip = deny.as_ref().err().is_some_and(StepError::unreachable);
    // Halted uploads are skipped, not failed (nothing to retry: an operator must look).
    let journal = if skip || run.t.terminal.halted.is_some() {
        None
    } else {
        let r = run.journal_step().await;
        skip = r.as_ref().err().is_some_and(StepError::unreachable);
        Some(r)
    };
    let entitlements = if skip {
        None
    } else {
        let r = run.entitlements_step().await;
        skip = r.as_ref().err().is_some_and(StepError::unreachable);
        Some(r)
    };
    let closes = if skip || !matches!(journal, Some(Ok(()))) {
        None
    } else {
        Some(run.close_step().await)
    };
    // The daemon reports its health at the end of every pass that reached the platform; like a
    // close, a failed report backs off only when the platform is unreachable or said when to return.
    let health = match run.cfg.health_interval_secs {
        Some(interval) if !skip => Some(run.health_step(interval).await),
        _ => None,
    };
    let health_failure = health.as_ref().and_then(|r| r.as_ref().err());
    let mut failures: Vec<&StepError> = [deny.as_ref().err()]
        .into_iter()
        .chain([&journal, &entitlements].map(|s| s.as_ref().and_then(|r| r.as_ref().err())))
        .flatten()
        .collect();
    let all_done = journal.is_some() && entitlements.is_some() && closes.is_some();
    let close_failure = closes.as_ref().and_then(|r| r.as_ref().err());
    let ok = failures.is_empty() && close_failure.is_none() && health_failure.is_none() && all_done;
    // A close that failed on its own (the platform reachable, no Retry-After) waits for the next
    // pass without backing the whole sync off (the daemon's `backoff_failures`).
    failures.extend(
        [close_failure, health_failure]
            .into_iter()
            .flatten()
            .filter(|e| e.unreachable() || e.retry_after_ms().is_some()),
    );
    let after = if failures.is_empty() {
        After::Interval
    } else {
        After::Backoff {
            retry_after_ms: failures.iter().filter_map(|e| e.retry_after_ms()).max(),
        }
    };
    if run.cfg.keep_alive == KeepAlive::PerPass {
        run.t.conn = None;
    }
    let mut log = run.log;
    log.ok = ok;
    log.micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    (log, after)
}

impl Run<'_> {
    /// Sends a signed request; a transport failure is logged under `endpoint` and returned.
    async fn send(
        &mut self,
        endpoint: Endpoint,
        method: &'static str,
        rest: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> Result<(Answer, Instant), StepError> {
        let terminal = &self.t.terminal;
        let path_and_query = self.cfg.http.target.path(&terminal.terminal_id, rest);
        let (body, gzipped) = body_as_sent(body);
        let nonce: [u8; NONCE_BYTES] = rand::rng().random();
        let signed = SignedHeaders::sign(
            &terminal.keys().request,
            &terminal.terminal_id,
            method,
            &path_and_query,
            wall_clock_ms(),
            nonce,
            &body,
        );
        let out = Outgoing {
            method,
            path_and_query,
            headers: signed.pairs().to_vec(),
            body,
            gzipped,
        };
        let started = Instant::now();
        match self.cfg.http.send(&mut self.t.conn, &out, expect).await {
            Ok(answer) => {
                if let Some(c) = answer.connect {
                    self.push(Endpoint::Connect, micros(c), None);
                }
                Ok((answer, started))
            }
            Err(e) => Err(self.lost(endpoint, started, e)),
        }
    }

    /// Logs a request that got no (whole) answer, and returns the step's error.
    fn lost(&mut self, endpoint: Endpoint, started: Instant, e: Transport) -> StepError {
        let failure = Failure {
            kind: e.kind().to_owned(),
            detail: e.to_string(),
            unavailable: None,
        };
        self.push(endpoint, elapsed_us(started), Some(failure));
        StepError::Transport(e)
    }

    fn push(&mut self, endpoint: Endpoint, micros: u64, failure: Option<Failure>) {
        self.log.requests.push(RequestLog {
            endpoint,
            micros,
            failure,
        });
    }

    /// Reads a whole JSON answer; a `2xx` gives its body, anything else its problem (logged).
    async fn json(
        &mut self,
        endpoint: Endpoint,
        method: &'static str,
        rest: &str,
        body: Vec<u8>,
    ) -> Result<Result<Vec<u8>, Problem>, StepError> {
        let (answer, started) = self
            .send(endpoint, method, rest, body, Expect::Json)
            .await?;
        let (status, retry_after) = (answer.status, answer.retry_after_ms);
        let text = match answer.read_all().await {
            Ok(t) => t,
            Err(e) => return Err(self.lost(endpoint, started, e)),
        };
        if (200..300).contains(&status) {
            self.push(endpoint, elapsed_us(started), None);
            return Ok(Ok(text));
        }
        let problem = wire::parse_problem(status, retry_after, &text);
        self.push(
            endpoint,
            elapsed_us(started),
            Some(problem_failure(&problem, &text)),
        );
        Ok(Err(problem))
    }

    /// Marks the last logged request as failed for a reason found in its answer.
    fn refuse(&mut self, kind: &str, detail: String) -> StepError {
        if let Some(last) = self.log.requests.last_mut() {
            last.failure = Some(Failure {
                kind: kind.to_owned(),
                detail: detail.clone(),
                unavailable: None,
            });
        }
        StepError::Refused(detail)
    }

    /// Applies the deny list from the applied version on, page after page.
    async fn deny_step(&mut self) -> Result<(), StepError> {
        for _ in 0..MAX_DENY_PAGES {
            let since = self.t.terminal.deny_version();
            let body = self
                .json(
                    Endpoint::DenyList,
                    "GET",
                    &format!("deny-list?since={since}"),
                    Vec::new(),
                )
                .await?
                .map_err(server_error)?;
            let list = wire::parse_deny_list(&body)
                .map_err(|e| self.refuse("unusable answer", format!("deny list: {e}")))?;
            let server_version = list.version;
            let applied = self
                .t
                .terminal
                .apply_deny(&list)
                .map_err(|e| self.refuse("deny list refused", format!("deny list: {e}")))?;
            let now = wall_clock_ms();
            self.log
                .deny_delays_ms
                .extend(applied.reported_at_ms.iter().map(|at| now - at));
            if applied.applied == 0 || applied.version >= server_version {
                break;
            }
        }
        Ok(())
    }

    /// `GET journal/head` and [`Terminal::resume`].
    async fn resume(&mut self) -> Result<(), StepError> {
        let body = self
            .json(Endpoint::JournalHead, "GET", "journal/head", Vec::new())
            .await?
            .map_err(server_error)?;
        let head = wire::parse_head(&self.t.terminal.terminal_id, &body)
            .map_err(|e| self.refuse("unusable answer", format!("journal head: {e}")))?;
        let before = self.t.terminal.acked_seq();
        match self.t.terminal.resume(&head) {
            Ok(Some(seq)) => {
                self.log.tally.acks_resumed += seq - before;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(d) => Err(self.refuse("journal diverged", format!("journal: {d}"))),
        }
    }

    /// Resumes from the server's head, then uploads what it has not acknowledged, in batches.
    async fn journal_step(&mut self) -> Result<(), StepError> {
        self.resume().await?;
        let mut head_reads = 1;
        while let Some((batch, records)) = self.t.terminal.next_batch() {
            let answer = self
                .json(
                    Endpoint::JournalUpload,
                    "POST",
                    "journal",
                    wire::upload_body(&records),
                )
                .await?;
            let next = match answer {
                Ok(body) => {
                    let ack = wire::parse_ack(&body).map_err(|e| {
                        self.refuse("unusable answer", format!("journal upload: {e}"))
                    })?;
                    if self.t.rng.random_bool(self.cfg.drop_ack_ratio) {
                        self.log.tally.acks_dropped += 1;
                        return Err(StepError::AckDropped);
                    }
                    let before = self.t.terminal.acked_seq();
                    let next = self.t.terminal.apply_ack(batch, &ack).map_err(|e| {
                        self.refuse("acknowledgement refused", format!("journal: {e}"))
                    })?;
                    self.log.tally.records_uploaded += self.t.terminal.acked_seq() - before;
                    next
                }
                Err(problem) => match self.t.terminal.apply_problem(batch, &problem) {
                    Ok(Next::Retry { .. }) => return Err(server_error(problem)),
                    Ok(next) => next,
                    Err(e) => return Err(StepError::Refused(format!("journal: {e}"))),
                },
            };
            match next {
                Next::Acknowledged { .. } | Next::Replan => {}
                Next::ReadHead if head_reads < MAX_HEAD_READS => {
                    head_reads += 1;
                    self.resume().await?;
                }
                Next::ReadHead => {
                    return Err(StepError::Refused(format!(
                        "journal upload: sequence_gap still after {MAX_HEAD_READS} reads of the head"
                    )));
                }
                Next::Halt(d) => return Err(StepError::Refused(format!("journal: {d}"))),
                Next::Retry { .. } => {
                    return Err(StepError::Refused(
                        "journal: the planner asked to retry an acknowledged batch".into(),
                    ));
                }
            }
        }
        match self.t.terminal.refused_at() {
            Some(seq) if seq <= self.t.terminal.head_seq() => Err(StepError::Refused(format!(
                "journal seq {seq} refused by the platform: the records from it on wait"
            ))),
            _ => Ok(()),
        }
    }

    /// `GET entitlements?since=V`: up to date, or a bundle streamed into the terminal.
    async fn entitlements_step(&mut self) -> Result<(), StepError> {
        let since = self.t.terminal.cache_version();
        let guess = if since == 0 {
            Endpoint::EntitlementsFull
        } else {
            Endpoint::EntitlementsDelta
        };
        let (mut answer, started) = self
            .send(
                guess,
                "GET",
                &format!("entitlements?since={since}"),
                Vec::new(),
                Expect::Bundle,
            )
            .await?;
        match answer.status {
            204 => {
                self.push(Endpoint::EntitlementsUnchanged, elapsed_us(started), None);
                return Ok(());
            }
            200 => {}
            status => {
                let retry_after = answer.retry_after_ms;
                let text = answer.read_all().await.unwrap_or_default();
                let problem = wire::parse_problem(status, retry_after, &text);
                self.push(
                    guess,
                    elapsed_us(started),
                    Some(problem_failure(&problem, &text)),
                );
                return Err(server_error(problem));
            }
        }
        let endpoint = match answer.bundle_kind.as_deref() {
            Some("full") => Endpoint::EntitlementsFull,
            Some("delta") => Endpoint::EntitlementsDelta,
            _ => guess,
        };
        let verify = self.t.rng.random_bool(self.cfg.verify_ratio);
        let mut intake = self.t.terminal.bundle_intake(verify);
        loop {
            match answer.chunk().await {
                Ok(Some(bytes)) => {
                    if let Err(e) = intake.feed(&bytes, &mut self.t.rng) {
                        self.push(endpoint, elapsed_us(started), None);
                        return Err(self.refuse("bundle refused", e.to_string()));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.lost(endpoint, started, e)),
            }
        }
        match self.t.terminal.install(intake, wall_clock_ms()) {
            Ok(installed) => {
                self.log.tally.bundle_entries += installed.entries;
                if installed.entries_verified {
                    self.log.tally.bundles_verified += 1;
                } else {
                    self.log.tally.bundles_light += 1;
                }
                let endpoint = match installed.kind {
                    redeemd_contract::BundleKind::Full => Endpoint::EntitlementsFull,
                    redeemd_contract::BundleKind::Delta => Endpoint::EntitlementsDelta,
                };
                self.push(endpoint, elapsed_us(started), None);
                Ok(())
            }
            Err(e) => {
                self.push(endpoint, elapsed_us(started), None);
                Err(self.refuse("bundle refused", e.to_string()))
            }
        }
    }

    /// Closes the business days that ended with every record acknowledged, oldest first.
    async fn close_step(&mut self) -> Result<(), StepError> {
        let closes = self.t.terminal.closes_due(wall_clock_ms());
        for close in closes.into_iter().take(MAX_CLOSES_PER_PASS) {
            let body = serde_json::to_vec(&close)
                .map_err(|e| StepError::Refused(format!("batch close: {e}")))?;
            let verdict = match self
                .json(Endpoint::BatchClose, "POST", "batch-close", body)
                .await?
            {
                Ok(body) => {
                    let answer = wire::parse_close_answer(&close, &body)
                        .map_err(|e| self.refuse("unusable answer", format!("batch close: {e}")))?;
                    if answer.result == "matched" {
                        CloseVerdict::Matched
                    } else {
                        CloseVerdict::Mismatched
                    }
                }
                Err(p) if p.code == "batch_close_conflict" => CloseVerdict::Conflict,
                // Refused as such: sending it again cannot help, and the next days must close.
                Err(p) if matches!(p.status, 400 | 413 | 422) => CloseVerdict::Refused,
                Err(p) => return Err(server_error(p)),
            };
            self.t.terminal.record_close(&close);
            self.log.closes.push(verdict);
        }
        Ok(())
    }
}

impl Run<'_> {
    /// Sends the terminal's health report; the platform keeps it (`204`).
    async fn health_step(&mut self, interval_secs: u64) -> Result<(), StepError> {
        let report = self.t.terminal.health(wall_clock_ms(), interval_secs);
        let body = serde_json::to_vec(&report)
            .map_err(|e| StepError::Refused(format!("health report: {e}")))?;
        match self.json(Endpoint::Health, "POST", "health", body).await? {
            Ok(_) => Ok(()),
            Err(p) => Err(server_error(p)),
        }
    }
}

/// The server's journal head for `t` (`GET journal/head`), for the reconciliation at the end.
pub async fn server_head(t: &mut SimTerminal, cfg: &PassConfig) -> Result<ServerHead, String> {
    let mut run = Run {
        t,
        cfg,
        log: PassLog::starting(Instant::now(), Default::default()),
    };
    let body = run
        .json(Endpoint::JournalHead, "GET", "journal/head", Vec::new())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|p| server_error(p).to_string())?;
    wire::parse_head(&run.t.terminal.terminal_id, &body).map_err(|e| e.to_string())
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn elapsed_us(started: Instant) -> u64 {
    micros(started.elapsed())
}

fn server_error(p: Problem) -> StepError {
    StepError::Server {
        status: p.status,
        code: p.code,
        retry_after_ms: p.retry_after_ms,
    }
}

/// How a problem answer is reported: `HTTP 503 unavailable`, with the server's detail.
fn problem_failure(p: &Problem, body: &[u8]) -> Failure {
    Failure {
        kind: format!("HTTP {} {}", p.status, p.code),
        detail: wire::problem_extras(body)
            .detail
            .unwrap_or_else(|| format!("status {}", p.status)),
        unavailable: (p.status == 503).then_some(p.retry_after_ms.is_some()),
    }
}

/// The delay before a terminal's next pass (the daemon's `next_delay`): the interval after a clean
/// pass, else the backoff, never sooner than `Retry-After`.
pub fn next_delay_ms(t: &mut SimTerminal, after: After, interval_ms: u64) -> u64 {
    match after {
        After::Interval => {
            t.backoff.reset();
            interval_ms
        }
        After::Backoff { retry_after_ms } => {
            let random = t.random();
            t.backoff.failed(retry_after_ms, random)
        }
    }
}
