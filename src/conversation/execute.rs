//! Carrying out a [`Job`] with the store: the one place where the conversation meets the store.
//! The driver calls [`execute`] with the store's lock held (`crate::store::owner::StoreHandle`); the
//! tests call it with a store of their own and a virtual clock.

use super::render::Presentation;
use super::{Decided, Job, JobRequest};
use crate::engine::{DeclineReason, Now};
use crate::store::{Decision, Outcome, Queried, Request, Source, Store};

/// Decides `job` with `store` at `now`: the answer, rendered and (when PROTOCOL.md §8.2 says so)
/// stored before this returns.
pub fn execute(store: &mut Store, job: &Job, now: Now) -> Decided {
    let replies = &job.presentation;
    let request = Request {
        reader_id: &job.reader_id,
        txn_id: job.txn_id,
        payload: &job.payload,
    };
    let result = match &job.request {
        JobRequest::CardPresented { card, cashier_id } => {
            store.answer_card_presented(request, card, cashier_id, now, replies)
        }
        JobRequest::Redeem { items, identity } => {
            let identity = identity.as_ref().map(|d| d.as_slice());
            store.answer_redeem(request, items, identity, now, replies)
        }
        JobRequest::Void { original_auth_code } => {
            store.answer_void(request, original_auth_code, now, replies)
        }
        JobRequest::Query(txn) => return query(store, job, *txn),
    };
    match result {
        Ok(outcome) => decided(outcome),
        Err(e) => failed(job, &format!("store failed, nothing recorded: {e}")),
    }
}

/// The answer when the store cannot be used at all (its lock poisoned by a panic): DECLINED
/// `STORAGE_FAILURE`, nothing deducted or stored.
pub fn store_unusable(job: &Job) -> Decided {
    failed(job, "the store is not usable (a panic poisoned its lock)")
}

fn failed(job: &Job, problem: &str) -> Decided {
    let reason = DeclineReason::InternalError;
    Decided {
        reply: job.presentation.declined(job.txn_id, reason).0,
        outcome: declined_outcome(reason),
        problem: Some(problem.to_owned()),
    }
}

fn query(store: &mut Store, job: &Job, txn: Option<u32>) -> Decided {
    let p: &Presentation = &job.presentation;
    // DECLINED carries the queried txn id: 0 for LAST (PROTOCOL.md §5.15).
    let unknown = |problem: Option<String>, reason: DeclineReason| Decided {
        reply: p.declined(job.txn_id, reason).0,
        outcome: declined_outcome(reason),
        problem,
    };
    match store.answer_query(&job.reader_id, txn) {
        Ok(Queried::Stored { txn_id, reply }) => Decided {
            reply,
            outcome: format!("stored answer of txn {txn_id} sent again"),
            problem: None,
        },
        Ok(Queried::Unknown) => unknown(None, DeclineReason::TxnUnknown),
        Ok(Queried::Unverified(finding)) => unknown(
            Some(format!("stored answer not sent: {finding}")),
            DeclineReason::IntegrityFailure,
        ),
        Err(e) => unknown(
            Some(format!("store failed on a query: {e}")),
            DeclineReason::InternalError,
        ),
    }
}

fn decided(outcome: Outcome) -> Decided {
    let problem = match (&outcome.source, &outcome.decision) {
        (Source::NotStored, Some(Decision::Declined(d))) => d.detail.clone(),
        _ => None,
    };
    let summary = match (&outcome.source, &outcome.decision) {
        (Source::Replayed, _) => "repeated request: stored answer sent again".to_owned(),
        (Source::Refused(r), _) => declined_outcome(*r),
        (_, Some(Decision::Menu(m))) => format!("menu of {} entries", m.entries.len()),
        (_, Some(Decision::Redeemed(a))) => {
            format!("approved auth {} ({} line(s))", a.auth_code, a.lines.len())
        }
        (_, Some(Decision::Voided(v))) => {
            format!("voided {} with auth {}", v.original_auth_code, v.auth_code)
        }
        (_, Some(Decision::Declined(d))) => declined_outcome(d.reason),
        (_, None) => "answered".to_owned(),
    };
    Decided {
        reply: outcome.reply,
        outcome: summary,
        problem,
    }
}

fn declined_outcome(reason: DeclineReason) -> String {
    format!("declined {reason:?}")
}
