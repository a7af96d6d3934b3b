//! The daemon's sync task: a pass right after start, then one every `sync.interval_secs`; after a
//! failed pass, exponential backoff with full jitter (1 s doubling to 10 min, never sooner than the
//! server's `Retry-After`: [`crate::sync::plan::Backoff`]). Each pass ends with the terminal's health
//! report, its readers taken from the status board ([`StatusBoard::health_facts`]).
//!
//! A divergence between the local journal and the server's ([`crate::sync::plan::Divergence`]) halts
//! uploading for the life of the process with an ERROR line and a `halted` status field: the journal is
//! never re-uploaded differently, and an operator must look (a restart re-checks the head and halts
//! again if nothing was fixed). Deny lists and entitlements are still fetched while halted.
//!
//! Each pass holds the state directory's [`SyncLock`]; when `redeemd sync` holds it, the task skips
//! that round. All store work goes through the [`StoreHandle`] in short pieces on the blocking pool.

use std::path::PathBuf;
use std::time::Duration;

use redeemd_contract::keys::MacKey;

use super::status::StatusBoard;
use crate::config::SyncConfig;
use crate::store::owner::{StoreHandle, wall_clock_ms};
use crate::sync::client::{Client, ClientOptions, SyncError};
use crate::sync::pass::{PassReport, Step, SyncLock, Syncer, on_store};
use crate::sync::plan::Backoff;

/// What the task needs.
pub struct SyncContext {
    pub server_url: String,
    pub config: SyncConfig,
    pub state_dir: PathBuf,
    pub terminal_id: String,
    /// The shop's business day for end-of-day closes.
    pub utc_offset_minutes: i32,
    pub request_key: MacKey,
    pub store: StoreHandle,
    pub status: StatusBoard,
}

/// The client options of a configuration.
pub fn client_options(c: &SyncConfig) -> ClientOptions {
    ClientOptions {
        connect_timeout: c.connect_timeout,
        request_timeout: c.request_timeout,
        bundle_timeout: c.bundle_timeout,
        ..ClientOptions::default()
    }
}

/// Runs passes until the runtime shuts down.
pub async fn run(ctx: SyncContext) {
    let client = match Client::new(
        &ctx.server_url,
        &ctx.terminal_id,
        ctx.request_key.clone(),
        client_options(&ctx.config),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "sync disabled: cannot build the HTTP client");
            ctx.status.sync(|s| s.last_result = Some(e.to_string()));
            return;
        }
    };
    ctx.status
        .sync(|s| s.server_url.clone_from(&ctx.server_url));
    let board = ctx.status.clone();
    let mut syncer = Syncer::new(client, ctx.utc_offset_minutes).with_health(
        std::sync::Arc::new(move || board.health_facts()),
        ctx.config.interval.as_secs(),
    );
    let mut backoff = Backoff::default();
    loop {
        let delay = match take_lock(&ctx).await {
            Some(lock) => {
                let report = syncer.pass(&ctx.store).await;
                drop(lock);
                let delay = next_delay(&report, &mut backoff, ctx.config.interval);
                log(&report);
                publish(&ctx, &report, backoff.failures(), delay).await;
                delay
            }
            None => ctx.config.interval,
        };
        tokio::time::sleep(delay).await;
    }
}

async fn take_lock(ctx: &SyncContext) -> Option<SyncLock> {
    let dir = ctx.state_dir.clone();
    match tokio::task::spawn_blocking(move || SyncLock::acquire(&dir, Duration::ZERO)).await {
        Ok(Ok(Some(lock))) => Some(lock),
        Ok(Ok(None)) => {
            tracing::info!(
                "sync: another process (redeemd sync?) holds the sync lock: skipping this round"
            );
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "sync: cannot open the sync lock: skipping this round");
            None
        }
        Err(_) => None,
    }
}

/// After a pass: the interval when nothing failed, else the backoff (honouring `Retry-After`).
pub fn next_delay(report: &PassReport, backoff: &mut Backoff, interval: Duration) -> Duration {
    if report.backoff_failures().is_empty() {
        backoff.reset();
        return interval;
    }
    let random = getrandom::u64().unwrap_or(u64::MAX / 2);
    Duration::from_millis(backoff.failed(report.retry_after_ms(), random))
}

fn log(report: &PassReport) {
    for e in report.failures() {
        match e {
            SyncError::Diverged(d) => {
                tracing::error!(reason = %d, "sync: journal upload HALTED: an operator must look; the journal is never re-uploaded differently");
            }
            e => tracing::warn!(error = %e, "sync failed"),
        }
    }
    let changed = matches!(&report.deny, Step::Done(d) if d.applied > 0)
        || matches!(&report.journal, Step::Done(u) if u.uploaded > 0 || u.resumed_through.is_some())
        || matches!(
            &report.entitlements,
            Step::Done(crate::sync::pass::EntitlementsReport::Installed(_))
        );
    let summary = report.lines().join("; ");
    if changed {
        tracing::info!(%summary, "sync pass");
    } else {
        tracing::debug!(%summary, "sync pass");
    }
}

async fn publish(ctx: &SyncContext, report: &PassReport, failures: u32, delay: Duration) {
    let now = wall_clock_ms();
    let facts = on_store(&ctx.store, |s, _| {
        let j = s.journal_info();
        let oldest = s.oldest_unsynced_wall_ms()?;
        let cache = s.cache_info()?;
        Ok((j, oldest, cache, s.deny_info()))
    })
    .await;
    let errors: Vec<String> = report.failures().iter().map(|e| e.to_string()).collect();
    ctx.status.sync(|s| {
        s.last_attempt_at_ms = Some(now);
        s.last_result = Some(if errors.is_empty() {
            "ok".to_owned()
        } else {
            errors.join("; ")
        });
        if errors.is_empty() {
            s.last_success_at_ms = Some(now);
        }
        if matches!(report.deny, Step::Done(_)) {
            s.deny_checked_at_ms = Some(now);
        }
        s.consecutive_failures = failures;
        s.next_attempt_at_ms =
            Some(now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)));
        s.halted = report.halted.map(|d| d.to_string());
        if let Ok((j, oldest, cache, deny)) = &facts {
            s.unsynced_records = j.head_seq.saturating_sub(j.synced_through_seq);
            s.oldest_unsynced_at_ms = *oldest;
            s.cache_version = cache.as_ref().map_or(0, |c| c.manifest.version);
            s.cache_installed_at_ms = cache.as_ref().map(|c| c.installed_wall_ms);
            s.deny_version = deny.version;
        }
    });
}
