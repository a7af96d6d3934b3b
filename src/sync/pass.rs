//! One sync pass, in the order of `docs/api/README.md`: the deny list first (cheap, and a loss report
//! must reach the counter within one poll), then the journal (resume from the server's head, upload
//! what it has not acknowledged, in batches), then the entitlements (a delta or a snapshot, installed in
//! chunks so that the counter never waits behind it), then the end-of-day closes of the business days
//! that ended with every record acknowledged ([`super::close`]), and last, in the daemon, the
//! terminal's health report ([`super::health`]: what this pass left behind).
//!
//! The steps are independent: a refused deny list does not stop the upload, and a halted upload does
//! not stop loss reports or new entitlements. Only when the server is unreachable or overloaded
//! ([`SyncError::server_unreachable`]) are the remaining steps of the pass skipped.
//!
//! Store work goes through the store's one owner, [`StoreHandle`] — in the daemon the same handle every
//! reader thread takes in turn, in `redeemd sync` one of its own — in short pieces on the blocking pool
//! (a batch of records read, an acknowledgement recorded, a chunk of a bundle staged), so a reader
//! waits for the lock one piece at most, and no async worker is blocked.
//!
//! Two processes may sync the same state directory (the daemon and `redeemd sync`): each pass holds
//! [`SyncLock`] (`flock` on `sync.lock` in the state directory), so they take turns; the store's writes
//! re-read the state under SQLite's write lock, so neither overwrites what the other committed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redeemd_contract::keys::Tag;

use redeemd_contract::JournalRecord;
use redeemd_contract::close::business_day;

use super::client::{Client, SyncError, UploadAnswer, server_error};
use super::close::closes_due;
use super::health::{self, HealthSource, StoreFacts};
use super::plan::{self, Divergence, LocalJournal, Next, Resume, Uploader};
use super::wire;
use crate::engine::Now;
use crate::store::close::CloseResult;
use crate::store::owner::StoreHandle;
use crate::store::{BundleInstall, DenyReport, InstallReport, Store, StoreError};

/// Decoded bundle bytes handed to the installer per blocking call.
const FEED_BYTES: usize = 1 << 20;
/// Deny-list answers (pages of up to 10,000 entries) applied in one pass at most.
const MAX_DENY_PAGES: u32 = 100;
/// Re-reads of the server's head within one pass (after `sequence_gap`) before giving up.
const MAX_HEAD_READS: u32 = 3;
/// Journal records read per store call when planning closes (the store is free in between).
const CLOSE_READ_RECORDS: usize = 5000;
/// Business days closed in one pass at most: a terminal back after weeks offline (or upgraded with a
/// long journal: closes start at its first record) catches up over a few passes, and the next deny-list
/// poll does not wait behind hundreds of closes.
const MAX_CLOSES_PER_PASS: usize = 31;
/// After a `404` to a close, how long closes wait before they are tried again.
pub const CLOSES_RETRY_AFTER_404: Duration = Duration::from_secs(6 * 3600);
/// After a `404` to a health report (an older platform), how long reports wait.
pub const HEALTH_RETRY_AFTER_404: Duration = Duration::from_secs(6 * 3600);

/// What the journal step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// Records sent and acknowledged in this pass.
    pub uploaded: u64,
    pub batches: u64,
    /// The server already held records the terminal had not recorded as acknowledged (lost acks, a
    /// restored backup): acknowledged from its head without sending them again.
    pub resumed_through: Option<u64>,
    /// The local acknowledged seq after the step.
    pub acknowledged_through: u64,
}

/// What the entitlements step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntitlementsReport {
    UpToDate { version: u64 },
    Installed(InstallReport),
}

/// What the close step did: the days closed in this pass and the platform's verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseReport {
    pub closed: Vec<(String, CloseResult)>,
}

/// One step's outcome.
#[derive(Debug)]
pub enum Step<T> {
    Done(T),
    Failed(SyncError),
    Skipped(String),
}

impl<T> Step<T> {
    pub fn error(&self) -> Option<&SyncError> {
        match self {
            Step::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// What one pass did, step by step.
#[derive(Debug)]
pub struct PassReport {
    pub deny: Step<DenyReport>,
    pub journal: Step<UploadReport>,
    pub entitlements: Step<EntitlementsReport>,
    pub closes: Step<CloseReport>,
    /// The health report: `None` when this pass reports none (`redeemd sync`: the daemon reports).
    pub health: Option<Step<HealthReportSent>>,
    /// Set when uploading is halted (found in this pass or an earlier one).
    pub halted: Option<Divergence>,
}

/// What the health step sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReportSent {
    pub readers: usize,
    pub readers_down: usize,
}

impl PassReport {
    /// The failed steps' errors, in order.
    pub fn failures(&self) -> Vec<&SyncError> {
        self.step_errors(|_| true)
    }

    /// The failures that call for backing off: every step's, except a close or a health report that
    /// failed on its own (the platform reachable). A day's close and the next report wait for the next
    /// pass anyway; backing the whole sync off for them would delay loss reports and uploads by up to
    /// the backoff's ten minutes.
    pub fn backoff_failures(&self) -> Vec<&SyncError> {
        self.step_errors(|e| e.server_unreachable() || e.retry_after_ms().is_some())
    }

    /// The failed steps' errors in order, the close's and the health report's only where `late`
    /// says.
    fn step_errors(&self, late: impl Fn(&SyncError) -> bool) -> Vec<&SyncError> {
        let health = self.health.as_ref().and_then(Step::error);
        [
            self.deny.error(),
            self.journal.error(),
            self.entitlements.error(),
            self.closes.error().filter(|e| late(e)),
            health.filter(|e| late(e)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Everything done, nothing halted.
    pub fn ok(&self) -> bool {
        self.failures().is_empty() && self.halted.is_none()
    }

    /// The longest `Retry-After` any step was given.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.failures()
            .iter()
            .filter_map(|e| e.retry_after_ms())
            .max()
    }

    /// One line per step, for `redeemd sync` and the log.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.push(match &self.deny {
            Step::Done(d) if d.applied == 0 => {
                format!("deny list     up to date (version {})", d.version)
            }
            Step::Done(d) => format!(
                "deny list     {} entries applied, now version {}",
                d.applied, d.version
            ),
            Step::Failed(e) => format!("deny list     FAILED: {e}"),
            Step::Skipped(why) => format!("deny list     skipped: {why}"),
        });
        out.push(match &self.journal {
            Step::Done(u) => {
                let mut line = format!(
                    "journal       {} records uploaded in {} batches, acknowledged through seq {}",
                    u.uploaded, u.batches, u.acknowledged_through
                );
                if let Some(r) = u.resumed_through {
                    line.push_str(&format!(
                        " (server already held through seq {r}: not sent again)"
                    ));
                }
                line
            }
            Step::Failed(e) => format!("journal       FAILED: {e}"),
            Step::Skipped(why) => format!("journal       skipped: {why}"),
        });
        out.push(match &self.entitlements {
            Step::Done(EntitlementsReport::UpToDate { version }) => {
                format!("entitlements  up to date (version {version})")
            }
            Step::Done(EntitlementsReport::Installed(r)) => format!(
                "entitlements  installed version {} ({:?}): {} entries written, {} removed",
                r.manifest.version, r.manifest.kind, r.upserts, r.removals
            ),
            Step::Failed(e) => format!("entitlements  FAILED: {e}"),
            Step::Skipped(why) => format!("entitlements  skipped: {why}"),
        });
        out.push(match &self.closes {
            Step::Done(c) if c.closed.is_empty() => "batch close   nothing due".to_owned(),
            Step::Done(c) => format!(
                "batch close   {}",
                c.closed
                    .iter()
                    .map(|(day, r)| format!("{day} {}", r.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::Failed(e) => format!("batch close   FAILED: {e}"),
            Step::Skipped(why) => format!("batch close   skipped: {why}"),
        });
        if let Some(h) = &self.health {
            out.push(match h {
                Step::Done(h) => format!(
                    "health        reported ({} readers, {} not linked)",
                    h.readers, h.readers_down
                ),
                Step::Failed(e) => format!("health        FAILED: {e}"),
                Step::Skipped(why) => format!("health        skipped: {why}"),
            });
        }
        out
    }
}

/// Sync state that lives across passes: the client, the upload planner (batch size, a record the
/// server refused) and a halt, which only an operator (and a restart) lifts.
pub struct Syncer {
    pub client: Client,
    pub uploader: Uploader,
    pub halted: Option<Divergence>,
    /// The platform's answer refusing a record (`uploader.refused_at`): reported by every pass until an
    /// operator intervenes, since the records from it on cannot be cleared.
    pub refused_record: Option<String>,
    /// The shop's business day for closes: its offset from UTC (`utc_offset_minutes` in the config).
    pub utc_offset_minutes: i32,
    /// The platform answered `404` to a close: it has no `batch-close` (an older platform), or
    /// something in between answered for it. Closes are skipped until then (one warning, not one per
    /// pass), and tried again after [`CLOSES_RETRY_AFTER_404`].
    pub closes_unsupported_until: Option<Instant>,
    /// Where the health report's readers come from, and the sync interval it states: the daemon's
    /// status board. `None` (`redeemd sync`): no report.
    pub health: Option<(HealthSource, u64)>,
    /// The platform answered `404` to a report (an older platform): reports wait until then.
    pub health_unsupported_until: Option<Instant>,
}

/// Problem codes by which the platform refuses one record of a batch (`docs/api/README.md`).
const RECORD_REFUSALS: [&str; 4] = [
    "record_malformed",
    "record_mismatch",
    "record_mac_invalid",
    "chain_broken",
];

impl Syncer {
    pub fn new(client: Client, utc_offset_minutes: i32) -> Syncer {
        Syncer {
            client,
            uploader: Uploader::default(),
            halted: None,
            refused_record: None,
            utc_offset_minutes,
            closes_unsupported_until: None,
            health: None,
            health_unsupported_until: None,
        }
    }

    /// The same syncer reporting the terminal's health after every pass, its readers from `source`.
    pub fn with_health(self, source: HealthSource, sync_interval_secs: u64) -> Syncer {
        Syncer {
            health: Some((source, sync_interval_secs)),
            ..self
        }
    }

    /// Runs one pass against the server.
    pub async fn pass(&mut self, store: &StoreHandle) -> PassReport {
        let unreachable = |e: &SyncError| {
            e.server_unreachable()
                .then(|| format!("server unreachable ({e})"))
        };
        let deny = match self.deny_step(store).await {
            Ok(d) => Step::Done(d),
            Err(e) => Step::Failed(e),
        };
        let mut skip = deny.error().and_then(unreachable);
        let journal = if let Some(why) = &skip {
            Step::Skipped(why.clone())
        } else if let Some(d) = self.halted {
            Step::Skipped(format!("halted: {d}"))
        } else {
            match self.journal_step(store).await {
                Ok(u) => Step::Done(u),
                Err(e) => {
                    skip = unreachable(&e);
                    Step::Failed(e)
                }
            }
        };
        let entitlements = if let Some(why) = &skip {
            Step::Skipped(why.clone())
        } else {
            match self.entitlements_step(store).await {
                Ok(r) => Step::Done(r),
                Err(e) => {
                    skip = unreachable(&e);
                    Step::Failed(e)
                }
            }
        };
        // A close needs its day's records acknowledged: nothing to do while uploading is halted
        // or failed (the next pass retries).
        let closes = if let Some(why) = skip.clone() {
            Step::Skipped(why)
        } else if !matches!(journal, Step::Done(_)) {
            Step::Skipped("the journal step did not complete".into())
        } else if self
            .closes_unsupported_until
            .is_some_and(|until| Instant::now() < until)
        {
            Step::Skipped("the platform has no batch-close endpoint (tried again later)".into())
        } else {
            match self.close_step(store).await {
                Ok(r) => Step::Done(r),
                Err(e) => {
                    if matches!(&e, SyncError::Server { status: 404, .. }) {
                        tracing::warn!(error = %e, retry_in_h = CLOSES_RETRY_AFTER_404.as_secs() / 3600, "the platform has no batch-close endpoint: end-of-day closes wait");
                        self.closes_unsupported_until =
                            Some(Instant::now() + CLOSES_RETRY_AFTER_404);
                    }
                    Step::Failed(e)
                }
            }
        };
        let health = match &self.health {
            None => None,
            Some(_) if skip.is_some() => skip.map(Step::Skipped),
            Some(_)
                if self
                    .health_unsupported_until
                    .is_some_and(|until| Instant::now() < until) =>
            {
                Some(Step::Skipped(
                    "the platform has no health endpoint (tried again later)".into(),
                ))
            }
            Some((source, interval)) => {
                Some(match self.health_step(store, source, *interval).await {
                    Ok(sent) => Step::Done(sent),
                    Err(e) => {
                        if matches!(&e, SyncError::Server { status: 404, .. }) {
                            tracing::warn!(error = %e, retry_in_h = HEALTH_RETRY_AFTER_404.as_secs() / 3600, "the platform has no health endpoint: health reports wait");
                            self.health_unsupported_until =
                                Some(Instant::now() + HEALTH_RETRY_AFTER_404);
                        }
                        Step::Failed(e)
                    }
                })
            }
        };
        PassReport {
            deny,
            journal,
            entitlements,
            closes,
            health,
            halted: self.halted,
        }
    }

    /// Sends the terminal's health as this pass left it: readers from the status board, backlog,
    /// cache and last close from the store.
    async fn health_step(
        &self,
        store: &StoreHandle,
        source: &HealthSource,
        sync_interval_secs: u64,
    ) -> Result<HealthReportSent, SyncError> {
        let (facts, now) = on_store(store, |s, now| {
            s.refresh()?;
            Ok((
                StoreFacts {
                    journal: s.journal_info(),
                    oldest_unsynced_at_ms: s.oldest_unsynced_wall_ms()?,
                    cache: s.cache_info()?,
                    last_close: s.last_close()?,
                },
                now,
            ))
        })
        .await
        .map_err(SyncError::Store)?;
        let report = health::report(
            &source(),
            &facts,
            self.halted,
            sync_interval_secs,
            now.wall_ms,
        );
        self.client.health(&report).await?;
        Ok(HealthReportSent {
            readers: report.readers.len(),
            readers_down: report
                .readers
                .iter()
                .filter(|r| r.state != redeemd_contract::health::LinkState::LinkUp)
                .count(),
        })
    }

    /// Closes the business days that ended with every record acknowledged, oldest first, and records
    /// each verdict. A mismatch is logged as an error with the items that differ (the platform lists the
    /// day in its exceptions too); a conflict (the platform holds another close for the day) likewise,
    /// and the next day goes on.
    async fn close_step(&self, store: &StoreHandle) -> Result<CloseReport, SyncError> {
        let offset = self.utc_offset_minutes;
        let mut report = CloseReport::default();
        while report.closed.len() < MAX_CLOSES_PER_PASS {
            // The first unclosed day's records, read in short store calls until a record of a later
            // day (or the journal's head) shows that the day is whole.
            let mut records: Vec<JournalRecord> = Vec::new();
            let (complete, acknowledged, today) = loop {
                let next = records.last().map(|r| r.seq + 1);
                let (chunk, info, now) = on_store(store, move |s, now| {
                    let from = match next {
                        Some(seq) => seq,
                        None => s.closed_through_seq()? + 1,
                    };
                    let chunk = s.journal_records(from, CLOSE_READ_RECORDS)?;
                    Ok((chunk, s.journal_info(), now))
                })
                .await
                .map_err(SyncError::Store)?;
                let read_nothing = chunk.is_empty();
                records.extend(chunk.into_iter().map(|(r, _)| r));
                let first_day = records.first().map(|r| business_day(r.wall_ms, offset));
                // (An empty read ends it too: nothing more can come from reading on.)
                let at_head = read_nothing || records.last().is_none_or(|r| r.seq >= info.head_seq);
                let day_ended_in_read = records
                    .last()
                    .is_some_and(|r| Some(business_day(r.wall_ms, offset)) != first_day);
                if at_head || day_ended_in_read {
                    break (
                        at_head,
                        info.synced_through_seq,
                        business_day(now.wall_ms, offset),
                    );
                }
            };
            let due = closes_due(&records, complete, acknowledged, offset, today);
            if due.is_empty() {
                break;
            }
            let room = MAX_CLOSES_PER_PASS - report.closed.len();
            for close in due.into_iter().take(room) {
                let (result, answer) = match self.client.batch_close(&close).await {
                    Ok(a) => {
                        let answer = serde_json::to_string(&a).unwrap_or_default();
                        if a.result == "matched" {
                            tracing::info!(business_date = %close.business_date, through_seq = close.through_seq, "batch close matched");
                            (CloseResult::Matched, answer)
                        } else {
                            tracing::error!(business_date = %close.business_date, differences = %answer, "batch close MISMATCHED: the platform's totals for the day differ from the terminal's");
                            (CloseResult::Mismatched, answer)
                        }
                    }
                    Err(e) if matches!(&e, SyncError::Server { code, .. } if code == "batch_close_conflict") =>
                    {
                        tracing::error!(business_date = %close.business_date, error = %e, "batch close CONFLICT: the platform holds another close for this day");
                        (CloseResult::Conflict, e.to_string())
                    }
                    // The platform refuses this close as such: sending it again cannot help, and
                    // the days after it must still be closed.
                    Err(e)
                        if matches!(
                            &e,
                            SyncError::Server {
                                status: 400 | 413 | 422,
                                ..
                            }
                        ) =>
                    {
                        tracing::error!(business_date = %close.business_date, error = %e, "batch close REFUSED by the platform: an operator must look");
                        (CloseResult::Refused, e.to_string())
                    }
                    Err(e) => return Err(e),
                };
                let date = close.business_date.clone();
                on_store(store, move |s, now| {
                    s.record_close(&close, result, &answer, now.wall_ms)
                })
                .await
                .map_err(SyncError::Store)?;
                report.closed.push((date, result));
            }
        }
        Ok(report)
    }

    /// Applies the deny list from the applied version on. The server answers at most 10,000 entries at
    /// a time (`openapi.yaml`): while its list version is above what was applied, ask again from there.
    async fn deny_step(&self, store: &StoreHandle) -> Result<DenyReport, SyncError> {
        let mut since = on_store(store, |s, _| {
            s.refresh()?;
            Ok(s.deny_info().version)
        })
        .await
        .map_err(SyncError::Store)?;
        let mut total = DenyReport {
            applied: 0,
            version: since,
        };
        for _ in 0..MAX_DENY_PAGES {
            let list = self.client.deny_list(since).await?;
            let server_version = list.version;
            let r = on_store(store, move |s, _| s.apply_deny_list(&list))
                .await
                .map_err(SyncError::Deny)?;
            total.applied += r.applied;
            total.version = r.version;
            if r.applied == 0 || r.version >= server_version {
                break;
            }
            since = r.version;
        }
        Ok(total)
    }

    /// Compares the server's head with the local journal; records lost acknowledgements.
    async fn resume(&mut self, store: &StoreHandle) -> Result<Option<u64>, SyncError> {
        let head = self.client.journal_head().await?;
        let h = head.acknowledged_seq;
        let (local, mine) = on_store(store, move |s, _| {
            s.refresh()?;
            let local = LocalJournal::from(s.journal_info());
            let mine = if h > 0 && h <= local.head_seq {
                s.journal_records(h, 1)?
                    .into_iter()
                    .find(|(r, _)| r.seq == h)
                    .map(|(_, m)| m)
            } else {
                None
            };
            Ok((local, mine))
        })
        .await
        .map_err(SyncError::Store)?;
        match plan::resume(local, &head, mine.as_ref()) {
            Resume::Halt(d) => {
                self.halted = Some(d);
                Err(SyncError::Diverged(d))
            }
            Resume::Continue { mark_synced: None } => Ok(None),
            Resume::Continue {
                mark_synced: Some(seq),
            } => {
                on_store(store, move |s, _| s.mark_synced(seq))
                    .await
                    .map_err(SyncError::Store)?;
                Ok(Some(seq))
            }
        }
    }

    async fn journal_step(&mut self, store: &StoreHandle) -> Result<UploadReport, SyncError> {
        let mut report = UploadReport {
            resumed_through: self.resume(store).await?,
            ..UploadReport::default()
        };
        let mut head_reads = 1;
        loop {
            let uploader = self.uploader;
            let (local, batch) = on_store(store, move |s, _| {
                let local = LocalJournal::from(s.journal_info());
                let Some(batch) = uploader.next_batch(local) else {
                    return Ok((local, None));
                };
                let (records, findings) = s.journal_records_as_stored(
                    batch.from_seq,
                    usize::try_from(batch.records()).unwrap_or(usize::MAX),
                )?;
                for finding in findings {
                    tracing::error!(
                        %finding,
                        "journal row fails its check; uploading it as stored so that the platform names it (it will not be cleared)"
                    );
                }
                Ok((local, Some((batch, records))))
            })
            .await
            .map_err(SyncError::Store)?;
            report.acknowledged_through = local.acked_seq;
            let Some((batch, records)) = batch else {
                // Records wait behind one the platform refused: not a clean pass, whatever was sent.
                if let Some(refused) = &self.refused_record
                    && self
                        .uploader
                        .refused_at
                        .is_some_and(|seq| seq <= local.head_seq)
                {
                    return Err(SyncError::RecordRefused(refused.clone()));
                }
                return Ok(report);
            };
            if records.len() as u64 != batch.records() {
                return Err(SyncError::Store(StoreError::Integrity(
                    crate::store::Integrity::new(
                        format!("journal seq {}..={}", batch.from_seq, batch.through_seq),
                        format!("{} rows found", records.len()),
                    ),
                )));
            }
            let macs: Vec<(u64, Tag)> = records.iter().map(|(r, m)| (r.seq, *m)).collect();
            let sent_mac = |seq: u64| macs.iter().find(|(s, _)| *s == seq).map(|(_, m)| *m);
            let next = match self.client.upload(wire::upload_body(&records)).await? {
                UploadAnswer::Acknowledged(ack) => {
                    self.uploader
                        .apply_ack(batch, local.acked_seq, &ack, sent_mac)?
                }
                UploadAnswer::Refused(problem, extras) => {
                    if RECORD_REFUSALS.contains(&problem.code.as_str()) {
                        self.refused_record = Some(
                            server_error("journal upload", &problem, extras.clone()).to_string(),
                        );
                    }
                    match self.uploader.apply_problem(batch, &problem)? {
                        Next::Retry { .. } => {
                            return Err(server_error("journal upload", &problem, extras));
                        }
                        other => other,
                    }
                }
            };
            match next {
                Next::Acknowledged { mark_synced } => {
                    let recorded = on_store(store, move |s, _| {
                        s.mark_synced(mark_synced)?;
                        Ok(s.journal_info().synced_through_seq)
                    })
                    .await
                    .map_err(SyncError::Store)?;
                    // Every turn of this loop must move the acknowledged seq on: a store whose view
                    // lagged would otherwise have the same batch sent forever.
                    if recorded < mark_synced {
                        return Err(SyncError::Setup(format!(
                            "the store did not record the acknowledgement through seq {mark_synced} \
                             (it reads {recorded}): stopping this pass"
                        )));
                    }
                    report.uploaded += mark_synced - local.acked_seq;
                    report.batches += 1;
                    report.acknowledged_through = mark_synced;
                }
                Next::ReadHead if head_reads < MAX_HEAD_READS => {
                    head_reads += 1;
                    if let Some(r) = self.resume(store).await? {
                        report.resumed_through = Some(r);
                    }
                }
                Next::ReadHead => {
                    return Err(SyncError::Server {
                        what: "journal upload",
                        status: 409,
                        code: "sequence_gap".into(),
                        detail: Some(format!("still after {MAX_HEAD_READS} reads of the head")),
                        retry_after_ms: None,
                        needs_operator: false,
                    });
                }
                Next::Replan => {}
                Next::Halt(d) => {
                    self.halted = Some(d);
                    return Err(SyncError::Diverged(d));
                }
                // Answered above (a refusal to retry later ends the step with its problem).
                Next::Retry { .. } => {
                    return Err(SyncError::Setup(
                        "planner asked to retry an acknowledged batch".into(),
                    ));
                }
            }
        }
    }

    async fn entitlements_step(
        &self,
        store: &StoreHandle,
    ) -> Result<EntitlementsReport, SyncError> {
        let (since, install) = on_store(store, |s, _| {
            s.refresh()?;
            let version = s.cache_info()?.map_or(0, |c| c.manifest.version);
            Ok((version, BundleInstall::new(s)))
        })
        .await
        .map_err(SyncError::Store)?;
        let Some(mut body) = self.client.entitlements(since).await? else {
            return Ok(EntitlementsReport::UpToDate { version: since });
        };
        let mut install = Some(install);
        let mut buf: Vec<u8> = Vec::with_capacity(FEED_BYTES);
        loop {
            let chunk = match body.chunk().await {
                Ok(c) => c,
                Err(e) => {
                    if let Some(i) = install.take() {
                        abort(store, i).await;
                    }
                    return Err(e);
                }
            };
            let end = chunk.is_none();
            if let Some(c) = chunk {
                buf.extend_from_slice(&c);
            }
            if buf.len() >= FEED_BYTES || (end && !buf.is_empty()) {
                let Some(i) = install.take() else {
                    return Err(SyncError::Setup("install state lost".into()));
                };
                let bytes = std::mem::take(&mut buf);
                let (i, result) = blocking(store, move |access| {
                    let mut i = i;
                    let r = i.feed(access, &bytes);
                    (i, r)
                })
                .await
                .map_err(SyncError::Install)?;
                // On an error the installer has dropped its staging table already.
                result.map_err(SyncError::Install)?;
                install = Some(i);
            }
            if end {
                break;
            }
        }
        let Some(i) = install.take() else {
            return Err(SyncError::Setup("install state lost".into()));
        };
        let report = blocking(store, move |access| i.finish(access))
            .await
            .map_err(SyncError::Install)?
            .map_err(SyncError::Install)?;
        Ok(EntitlementsReport::Installed(report))
    }
}

async fn abort(store: &StoreHandle, install: BundleInstall) {
    let _ = blocking(store, move |access| install.abort(access)).await;
}

/// Runs `f` with the store on the blocking pool (the store's lock taken inside `f`'s call).
pub async fn on_store<T: Send + 'static>(
    store: &StoreHandle,
    f: impl FnOnce(&mut Store, Now) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let handle = store.clone();
    tokio::task::spawn_blocking(move || handle.run_blocking(f))
        .await
        .map_err(|_| StoreError::Unavailable)?
        .map_err(|_| StoreError::Unavailable)?
}

/// Runs `f` on the blocking pool with a [`crate::store::StoreAccess`] that takes the store's lock for
/// each short call `f` makes (and releases it in between).
async fn blocking<T: Send + 'static>(
    store: &StoreHandle,
    f: impl FnOnce(&mut StoreHandle) -> T + Send + 'static,
) -> Result<T, StoreError> {
    let mut handle = store.clone();
    tokio::task::spawn_blocking(move || f(&mut handle))
        .await
        .map_err(|_| StoreError::Unavailable)
}

/// Exclusive right to sync one state directory: `flock` on `sync.lock` in it (released when dropped,
/// or when the process dies). Also taken by `redeemd cache install`, which uses the same staging table.
#[derive(Debug)]
pub struct SyncLock {
    _file: std::fs::File,
}

/// The lock file of a state directory.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sync.lock")
}

impl SyncLock {
    /// Takes the lock, waiting up to `wait` (polling: a blocking `flock` could not be given up).
    /// `Ok(None)`: another process held it all that time.
    pub fn acquire(state_dir: &Path, wait: Duration) -> std::io::Result<Option<SyncLock>> {
        let path = lock_path(state_dir);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            Ok(f) => f,
            // Created by another account (root running a tool): a read-only descriptor locks too.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                std::fs::File::open(&path)?
            }
            Err(e) => return Err(e),
        };
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(SyncLock { _file: file })),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    }
}
