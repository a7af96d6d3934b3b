//! `redeemd simulate-reader --conformance`: the conformance flows of PROTOCOL.md §11.1
//! (`firmware_protocol::conformance`) played by a [`SimReader`] against a daemon, one line per rule:
//! `PASS §8.2 …` or `FAIL §8.2 …: step 3 (REDEEM): expected …, got …`. The flows that need the
//! daemon's store busy (§4.4, §5.16) run with `--busy-store STATE_DIR`, which holds the write lock
//! of the daemon's database for the time the flow asks, as `redeemd sync` may beside a running
//! daemon; without it they print `SKIP`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firmware_protocol::TextEncoding;
use firmware_protocol::conformance::{Action, FlowRun, flows};

use super::{SimError, SimReader, stdout_error};

/// How long a reboot in a flow may take to link again.
const RELINK: Duration = Duration::from_secs(15);
/// How long to wait for the daemon's database write lock before holding it (the daemon may be in
/// the middle of a commit).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Plays every flow with the member card `card`, txn ids from the reader's counter on (left after
/// the last one used). `busy_store`: the daemon's state directory, for the flows that need its
/// store busy. `Err(SimError::Conformance)` if any rule failed.
pub async fn run(
    reader: &mut SimReader,
    card: &str,
    busy_store: Option<&Path>,
    out: &mut dyn Write,
) -> Result<(), SimError> {
    let flows = flows();
    let mut next_txn = reader.next_txn_id();
    let (mut failed, mut skipped) = (0, 0);
    for flow in &flows {
        if flow.needs_busy_store() && busy_store.is_none() {
            skipped += 1;
            writeln!(
                out,
                "SKIP {} {}: needs the daemon's store busy (--busy-store STATE_DIR)",
                flow.section, flow.rule
            )
            .map_err(stdout_error)?;
            continue;
        }
        let encoding = reader
            .link_info()
            .map_or(TextEncoding::Utf8, |info| info.encoding);
        let mut run = FlowRun::new(flow, next_txn, card, encoding);
        next_txn = run.next_free_txn();
        match play(reader, &mut run, busy_store).await {
            Ok(()) => writeln!(out, "PASS {} {}", flow.section, flow.rule),
            Err(problem) => {
                failed += 1;
                writeln!(out, "FAIL {} {}: {problem}", flow.section, flow.rule)
            }
        }
        .map_err(stdout_error)?;
        for note in reader.take_notes() {
            writeln!(out, "  note: {note}").map_err(stdout_error)?;
        }
    }
    reader.set_next_txn_id(next_txn)?;
    let total = flows.len();
    writeln!(
        out,
        "{total} rules: {} passed, {failed} failed, {skipped} skipped",
        total - failed - skipped
    )
    .map_err(stdout_error)?;
    if failed == 0 {
        Ok(())
    } else {
        Err(SimError::Conformance { failed, total })
    }
}

async fn play(
    reader: &mut SimReader,
    run: &mut FlowRun<'_>,
    busy_store: Option<&Path>,
) -> Result<(), String> {
    while let Some(action) = run.next_action()? {
        match action {
            Action::Send {
                msg_type,
                payload,
                wait_ms,
                busy_store_ms,
            } => {
                let holder = match (busy_store_ms, busy_store) {
                    (Some(ms), Some(dir)) => Some(
                        hold_store(dir, Duration::from_millis(ms))
                            .await
                            .map_err(|e| format!("cannot make the daemon's store busy: {e}"))?,
                    ),
                    (Some(_), None) => return Err("needs --busy-store".into()),
                    (None, _) => None,
                };
                let seen = reader
                    .exchange_observed(msg_type, &payload, Duration::from_millis(wait_ms))
                    .await
                    .map_err(|e| e.to_string());
                if let Some(holder) = holder {
                    let released = holder.await;
                    if let Ok(Err(e)) = released {
                        return Err(format!("holding the daemon's store: {e}"));
                    }
                }
                run.answer_observed(seen?)?;
            }
            Action::Reboot => reader.reboot(RELINK).await.map_err(|e| e.to_string())?,
        }
    }
    Ok(())
}

/// Takes the write lock of the daemon's database in `state_dir` (`BEGIN IMMEDIATE` on a connection
/// of its own) and returns once it holds it; the task releases it (rolls back: nothing is written)
/// after `hold`.
async fn hold_store(
    state_dir: &Path,
    hold: Duration,
) -> Result<tokio::task::JoinHandle<Result<(), String>>, String> {
    let path: PathBuf = state_dir.join(crate::store::DB_FILE);
    let (taken, is_taken) = tokio::sync::oneshot::channel();
    let holder = tokio::task::spawn_blocking(move || {
        let lock = || -> Result<rusqlite::Connection, rusqlite::Error> {
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
            )?;
            conn.busy_timeout(LOCK_WAIT)?;
            conn.execute_batch("BEGIN IMMEDIATE")?;
            Ok(conn)
        };
        match lock() {
            Ok(conn) => {
                let _ = taken.send(Ok(()));
                std::thread::sleep(hold);
                conn.execute_batch("ROLLBACK")
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) => {
                let problem = format!("{}: {e}", path.display());
                let _ = taken.send(Err(problem.clone()));
                Err(problem)
            }
        }
    });
    match is_taken.await {
        Ok(Ok(())) => Ok(holder),
        Ok(Err(problem)) => Err(problem),
        Err(_) => Err("the task holding the store ended".into()),
    }
}
