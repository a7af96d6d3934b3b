//! The platform's operations for its people: one function per thing an operator, a merchant or the
//! member app can do or see, each checking the caller's role in one place (`crate::core::access::check`)
//! before it touches anything, running in one database transaction, and writing every change to the
//! audit log in that same transaction. The platform API (`crate::http::platform`), the admin CLI
//! (`crate::admin`) and the web console are thin clients of these.
//!
//! * [`merchants`] — merchants, terminals (with their health and alerts), pairing codes, statements
//!   per period and per day, exceptions;
//! * [`cards`] — issuing, customizing, status changes, reissue, usage, grants to the member app;
//! * [`member`] — the member app acting for one granted card: packages and uses left, usage, report
//!   lost, customize from the catalogue;
//! * [`exceptions`] — the exceptions as work to resolve, and their resolutions;
//! * [`catalogue`] — the catalogue of offers;
//! * [`people`] — API keys, console logins, the audit log;
//! * [`fleet`] — the fleet view and the terminals' health reports;
//! * [`enroll`] — a pairing code redeemed by a shop PC.
//!
//! Refusals are [`Problem`]s: a field named (`422 invalid_field`), another merchant's resource not
//! found (`404`), an action the role may never take forbidden (`403`), a state in the way (`409`).

pub mod cards;
pub mod catalogue;
pub mod enroll;
pub mod exceptions;
pub mod fleet;
pub mod member;
pub mod merchants;
pub mod people;

use crate::core::access::{self, Denied, Principal, Role, Want};
use crate::core::fleet::FleetPolicy;
use crate::core::problem::Problem;
use crate::storage::{Db, StorageError, Tx, audit};
use crate::vault::Vault;

/// One caller's view of the platform at one moment: the database and key, who calls, and the time.
pub struct Service<'a> {
    pub db: &'a Db,
    pub vault: &'a Vault,
    pub who: &'a Principal,
    pub now_ms: i64,
    /// The thresholds of the fleet's alerts (`serve --silent-intervals`).
    pub fleet: FleetPolicy,
}

impl<'a> Service<'a> {
    pub fn new(db: &'a Db, vault: &'a Vault, who: &'a Principal, now_ms: i64) -> Service<'a> {
        Service {
            db,
            vault,
            who,
            now_ms,
            fleet: FleetPolicy::default(),
        }
    }

    /// The one place a caller is let in or turned away: `what` names the resource a `404` is about.
    fn allow(&self, want: Want<'_>, what: impl FnOnce() -> String) -> Result<(), Problem> {
        access::check(self.who, want).map_err(|d| match d {
            Denied::NotFound => Problem::not_found(format!("{} not found", what())),
            Denied::Forbidden => {
                Problem::forbidden(format!("a {} credential may not do this", self.who.role))
            }
        })
    }

    /// Whether the caller may touch `want` (the console asks before it shows a form of an operation
    /// the caller's role never has): the same one check every operation makes.
    pub fn allowed(&self, want: Want<'_>) -> Result<(), Problem> {
        self.allow(want, || "page".into())
    }

    /// Writes the audit entry of a change, in the change's transaction.
    fn audit(
        &self,
        tx: &mut dyn Tx,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StorageError> {
        audit::record(tx, self.now_ms, &self.who.actor(), action, target, detail)
    }
}

/// The admin CLI as a caller: an operator, named by the account that runs it.
pub fn cli_principal() -> Principal {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    Principal::new(Role::Operator, "admin", format!("admin CLI, user {user}"))
}

/// `N` fresh random bytes.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], Problem> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Problem::internal(format!("no randomness: {e}")))?;
    Ok(b)
}

/// A period from optional `from` / `until` texts (a day in China Standard Time, or RFC 3339): `from`
/// inclusive, `until` inclusive of that day; unbounded when left out. One that ends before it starts
/// is refused (it would read like a quiet period).
pub fn window(from: Option<&str>, until: Option<&str>) -> Result<(i64, i64), Problem> {
    use crate::core::cards::parse_time;
    let f = from.map_or(Ok(i64::MIN), |s| parse_time("from", s, false))?;
    let u = until.map_or(Ok(i64::MAX), |s| parse_time("until", s, true))?;
    if u <= f {
        return Err(Problem::invalid(
            "until",
            format!(
                "the period from {} to {} is empty",
                from.unwrap_or(""),
                until.unwrap_or("")
            ),
        ));
    }
    Ok((f, u))
}
