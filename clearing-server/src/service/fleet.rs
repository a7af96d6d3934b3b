//! The fleet: every terminal's latest health report and alerts (operators; a merchant sees its own
//! terminals through `merchants`), and a terminal's report stored when it arrives.

use redeemd_contract::health::HealthReport;

use super::Service;
use super::merchants::{TerminalView, terminal_views};
use crate::core::access::Want;
use crate::core::fleet::Alert;
use crate::core::problem::Problem;
use crate::storage::{Db, fleet as store};

impl Service<'_> {
    /// Every terminal with its health and alerts, by id.
    pub fn fleet(&self) -> Result<Vec<TerminalView>, Problem> {
        self.allow(Want::Operate, || "fleet".into())?;
        self.db.read(|tx| terminal_views(self, tx, None))
    }

    /// Every alert of the fleet, terminal by terminal.
    pub fn alerts(&self) -> Result<Vec<Alert>, Problem> {
        Ok(self.fleet()?.into_iter().flat_map(|t| t.alerts).collect())
    }
}

/// Keeps a terminal's health report (it authenticated the request: `crate::http::auth`), after
/// checking its bounds, in a transaction that does not wait for the disk (`Isolation::Unflushed`).
pub fn record_health(
    db: &Db,
    terminal_id: &str,
    report: &HealthReport,
    now_ms: i64,
) -> Result<(), Problem> {
    report
        .check()
        .map_err(|e| Problem::invalid(e.field, e.reason).terminal(terminal_id))?;
    // Unflushed: the next pass's report replaces it anyway, and a commit that waits for the disk on
    // every pass of every terminal is what a fleet's passes would queue behind.
    Ok(db.transaction(crate::storage::Isolation::Unflushed, |tx| {
        store::store_report(tx, terminal_id, report, now_ms)
    })?)
}
