//! A pairing code redeemed by a shop PC (`POST /v1/enroll`, `redeemd enroll`): the code is the only
//! credential, so it is checked under the throttle of `crate::core::pairing`, used once, and answered
//! with the terminal id, the merchant id and a fresh secret — the only place the secret ever leaves the
//! platform. The audit log names the terminal, the code's creator and the source address, never the
//! code or the secret.

use zeroize::Zeroizing;

use super::merchants::enroll_problem;
use super::random;
use crate::core::cards::rfc3339;
use crate::core::pairing::{self, THROTTLE};
use crate::core::problem::Problem;
use crate::core::throttle;
use crate::storage::{
    Db, Isolation, audit, fleet as fleet_store, head, pairing as pairing_store, terminals,
    throttle as throttle_store,
};
use crate::vault::Vault;

/// What the shop PC receives.
pub struct Enrolled {
    pub terminal_id: String,
    pub merchant_id: String,
    /// The terminal secret, 64 lowercase hex digits.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Enrolled({} for {}, <secret>)",
            self.terminal_id, self.merchant_id
        )
    }
}

/// Redeems `code` from `source` (the client's address) at `now_ms`.
pub fn redeem(
    db: &Db,
    vault: &Vault,
    code: &str,
    source: &str,
    now_ms: i64,
) -> Result<Enrolled, Problem> {
    let canonical = pairing::normalize(code)?;
    let hash = pairing::code_hash(&canonical);
    throttle::check(
        THROTTLE,
        db.read(|tx| throttle_store::failures(tx, THROTTLE, source, now_ms))?,
        now_ms,
    )?;
    let outcome = db.write(|tx| {
        let Some((stored, merchant_id)) = pairing_store::find(tx, &hash)? else {
            return Ok(None);
        };
        pairing::redeemable(&stored, now_ms, rfc3339)?;
        let terminal_id = stored.terminal_id;
        let secret = Zeroizing::new(random::<32>()?);
        match fleet_store::terminal_row(tx, &terminal_id)? {
            None => terminals::enroll(tx, vault, &terminal_id, &merchant_id, &secret[..], now_ms)
                .map_err(enroll_problem)?,
            // Re-paired before it was ever used: a new secret (its codes were made that way).
            Some(t) if t.merchant_id == merchant_id && head(tx, &terminal_id)?.0 == 0 => {
                terminals::rekey(tx, vault, &terminal_id, &secret[..]).map_err(enroll_problem)?;
            }
            Some(_) => {
                return Err(Problem::conflict(
                    "terminal_exists",
                    format!("terminal {terminal_id} was enrolled otherwise since this code was made: ask for a new code"),
                ));
            }
        }
        pairing_store::mark_used(tx, &hash, now_ms, source)?;
        audit::record(
            tx,
            now_ms,
            &format!("shop PC at {source} (pairing code)"),
            "terminal.pair",
            &format!("terminal {terminal_id}"),
            &format!("for merchant {merchant_id}: a fresh secret sent to the shop PC"),
        )?;
        Ok(Some(Enrolled {
            terminal_id,
            merchant_id,
            secret: Zeroizing::new(hex::encode(&secret[..])),
        }))
    })?;
    match outcome {
        Some(e) => Ok(e),
        None => {
            // Counted in its own committed transaction: the refusal must not roll it back.
            db.transaction(Isolation::ReadCommitted, |tx| {
                throttle_store::note_failure(tx, THROTTLE, source, now_ms)
            })?;
            Err(Problem::not_found(
                "no such pairing code: check what was typed, or ask for a new code",
            )
            .with_code("pairing_code_unknown"))
        }
    }
}
