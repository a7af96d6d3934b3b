//! `redeemd simulate-reader --conformance`: the conformance flows of PROTOCOL.md §11.1
//! (`firmware_protocol::conformance`) played by a [`SimReader`] against a daemon, one line per rule:
//! `PASS §8.2 …` or `FAIL §8.2 …: step 3 (REDEEM): expected …, got …`.

use std::io::Write;
use std::time::Duration;

use firmware_protocol::TextEncoding;
use firmware_protocol::conformance::{Action, FlowRun, flows};

use super::{SimError, SimReader, stdout_error};

/// How long a reboot in a flow may take to link again.
const RELINK: Duration = Duration::from_secs(15);

/// Plays every flow with the member card `card`, txn ids from the reader's counter on (left after
/// the last one used). `Err(SimError::Conformance)` if any rule failed.
pub async fn run(reader: &mut SimReader, card: &str, out: &mut dyn Write) -> Result<(), SimError> {
    let flows = flows();
    let mut next_txn = reader.next_txn_id();
    let mut failed = 0;
    for flow in &flows {
        let encoding = reader
            .link_info()
            .map_or(TextEncoding::Utf8, |info| info.encoding);
        let mut run = FlowRun::new(flow, next_txn, card, encoding);
        next_txn = run.next_free_txn();
        match play(reader, &mut run).await {
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
    writeln!(
        out,
        "{} rules: {} passed, {failed} failed",
        flows.len(),
        flows.len() - failed
    )
    .map_err(stdout_error)?;
    if failed == 0 {
        Ok(())
    } else {
        Err(SimError::Conformance {
            failed,
            total: flows.len(),
        })
    }
}

async fn play(reader: &mut SimReader, run: &mut FlowRun<'_>) -> Result<(), String> {
    while let Some(action) = run.next_action()? {
        match action {
            Action::Send {
                msg_type,
                payload,
                wait_ms,
            } => {
                let got = reader
                    .exchange(msg_type, &payload, Duration::from_millis(wait_ms))
                    .await
                    .map_err(|e| e.to_string())?;
                run.answer(got)?;
            }
            Action::Reboot => reader.reboot(RELINK).await.map_err(|e| e.to_string())?,
        }
    }
    Ok(())
}
