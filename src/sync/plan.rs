//! Sync planning: what to upload next, how to apply the server's answer, when to try again.
//!
//! Pure code — no HTTP, no SQLite, no clock, no randomness of its own: the HTTP driver reads the local
//! journal state from the store ([`crate::store::Store::journal_info`], `journal_records`), asks the
//! planner, sends, and feeds the answer back; time and random numbers are parameters. The rules are
//! those of `docs/api/README.md` ("`GET journal/head`: resuming", "`POST journal`").
//!
//! Invariants:
//! * nothing is marked acknowledged unless the server named that seq **and** the MAC the terminal holds
//!   for it (so a server holding another record at that seq never makes the terminal skip its own);
//! * an acknowledgement above what was sent, or below what was acknowledged before, is refused;
//! * a divergence (server behind the acknowledged seq, ahead of the journal, or holding a different
//!   record) stops uploading instead of re-uploading something different: it needs an operator.

use redeemd_contract::keys::{Tag, tags_equal};
use thiserror::Error;

use crate::store::JournalInfo;

/// Records sent per upload unless told otherwise (the server accepts up to 5,000).
pub const DEFAULT_BATCH_RECORDS: u64 = 1000;

/// What the terminal knows of its own journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalJournal {
    /// Highest seq written (0 when the journal is empty).
    pub head_seq: u64,
    /// Highest seq the platform acknowledged, as recorded by the store.
    pub acked_seq: u64,
}

impl From<JournalInfo> for LocalJournal {
    fn from(j: JournalInfo) -> Self {
        Self {
            head_seq: j.head_seq,
            acked_seq: j.synced_through_seq,
        }
    }
}

/// The server's high-water mark, from `GET journal/head` or an upload answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHead {
    pub acknowledged_seq: u64,
    /// MAC of the record at `acknowledged_seq`; `None` only when that is 0.
    pub acknowledged_mac: Option<Tag>,
}

/// Why uploading stops until an operator looks. Never resolved by re-uploading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Divergence {
    #[error(
        "server head {server} is below the acknowledged seq {acked}: the server lost acknowledged records (restored?) or is hostile"
    )]
    ServerBehindAck { server: u64, acked: u64 },
    #[error(
        "server head {server} is above the local journal head {head}: this database is older than what the server holds (restored from a backup?)"
    )]
    ServerAheadOfJournal { server: u64, head: u64 },
    #[error("journal diverged at seq {seq}: the server holds a different record there")]
    Forked { seq: u64 },
    #[error("server reports head {seq} without its MAC")]
    HeadWithoutMac { seq: u64 },
}

/// What to do after comparing the server's head with the local journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Record `mark_synced` as acknowledged first (when it is above the local ack), then upload from
    /// `mark_synced + 1` if anything is left.
    Continue { mark_synced: Option<u64> },
    /// Stop uploading; report.
    Halt(Divergence),
}

/// Compares the server's head `H` with the local journal. `local_mac_at_server_head` is the MAC of the
/// local record at `H` (the caller reads it when `0 < H ≤ head_seq`; `None` otherwise).
pub fn resume(
    local: LocalJournal,
    server: &ServerHead,
    local_mac_at_server_head: Option<&Tag>,
) -> Resume {
    let h = server.acknowledged_seq;
    if h < local.acked_seq {
        return Resume::Halt(Divergence::ServerBehindAck {
            server: h,
            acked: local.acked_seq,
        });
    }
    if h > local.head_seq {
        return Resume::Halt(Divergence::ServerAheadOfJournal {
            server: h,
            head: local.head_seq,
        });
    }
    if h > 0 {
        let Some(server_mac) = server.acknowledged_mac else {
            return Resume::Halt(Divergence::HeadWithoutMac { seq: h });
        };
        match local_mac_at_server_head {
            Some(mine) if tags_equal(mine, &server_mac) => {}
            _ => return Resume::Halt(Divergence::Forked { seq: h }),
        }
    }
    Resume::Continue {
        mark_synced: (h > local.acked_seq).then_some(h),
    }
}

/// A batch of consecutive records to upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub from_seq: u64,
    pub through_seq: u64,
}

impl Batch {
    /// Number of records (a batch is never empty).
    pub fn records(&self) -> u64 {
        self.through_seq + 1 - self.from_seq
    }
}

/// Upload state between answers: the batch size (halved on `body_too_large`) and the first record the
/// server refused as unverifiable (nothing from it on is sent again until an operator intervenes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploader {
    pub batch_records: u64,
    pub refused_at: Option<u64>,
}

impl Default for Uploader {
    fn default() -> Self {
        Self {
            batch_records: DEFAULT_BATCH_RECORDS,
            refused_at: None,
        }
    }
}

/// A problem answer, reduced to what the planner needs (`docs/api/README.md`, "Errors").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub code: String,
    pub seq: Option<u64>,
    pub retry_after_ms: Option<u64>,
}

/// Why an upload answer was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnswerError {
    #[error("server acknowledged seq {acked} but only {through} was sent: refused as hostile")]
    AboveSent { acked: u64, through: u64 },
    #[error("server acknowledged seq {acked}, below the already acknowledged {previous}")]
    Regressed { acked: u64, previous: u64 },
    #[error("server acknowledged seq {seq} with a MAC that is not the one sent")]
    MacMismatch { seq: u64 },
    #[error("server refused seq {seq}, which was not in the batch {from}..={through}")]
    ProblemOutsideBatch { seq: u64, from: u64, through: u64 },
}

/// What the driver does after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Record `mark_synced` as acknowledged, then plan the next batch at once.
    Acknowledged { mark_synced: u64 },
    /// Re-read the server's head and [`resume`] (e.g. `sequence_gap`).
    ReadHead,
    /// Send the next batch (smaller now, or ending before a refused record) at once.
    Replan,
    /// Stop uploading and report (the journal diverged).
    Halt(Divergence),
    /// Retry after a delay from [`Backoff`] (honouring `retry_after_ms`). `report` says whether the
    /// cause needs a person (wrong key, revoked terminal, a client bug) rather than time.
    Retry {
        retry_after_ms: Option<u64>,
        report: bool,
    },
}

impl Uploader {
    /// The next batch after `acked_seq`, or `None` when everything uploadable is acknowledged.
    pub fn next_batch(&self, local: LocalJournal) -> Option<Batch> {
        let from_seq = local.acked_seq.checked_add(1)?;
        let ceiling = match self.refused_at {
            Some(s) => local.head_seq.min(s.saturating_sub(1)),
            None => local.head_seq,
        };
        let size = self.batch_records.max(1);
        (from_seq <= ceiling).then(|| Batch {
            from_seq,
            through_seq: ceiling.min(from_seq.saturating_add(size - 1)),
        })
    }

    /// Applies a `200` answer to `sent`. `previous_ack` is the local ack before sending; `sent_mac_at(seq)`
    /// gives the MAC of a sent record (seqs within the batch).
    pub fn apply_ack(
        &self,
        sent: Batch,
        previous_ack: u64,
        acked: &ServerHead,
        sent_mac_at: impl Fn(u64) -> Option<Tag>,
    ) -> Result<Next, AnswerError> {
        let seq = acked.acknowledged_seq;
        if seq > sent.through_seq {
            return Err(AnswerError::AboveSent {
                acked: seq,
                through: sent.through_seq,
            });
        }
        if seq < previous_ack || seq < sent.from_seq {
            // The contract acknowledges a whole batch; less than its first record is no progress.
            return Err(AnswerError::Regressed {
                acked: seq,
                previous: previous_ack.max(sent.from_seq),
            });
        }
        match (acked.acknowledged_mac, sent_mac_at(seq)) {
            (Some(theirs), Some(ours)) if tags_equal(&theirs, &ours) => {
                Ok(Next::Acknowledged { mark_synced: seq })
            }
            _ => Err(AnswerError::MacMismatch { seq }),
        }
    }

    /// Applies a problem answer to `sent`, updating the batch size or the refused record.
    pub fn apply_problem(&mut self, sent: Batch, p: &Problem) -> Result<Next, AnswerError> {
        let retry = |report| Next::Retry {
            retry_after_ms: p.retry_after_ms,
            report,
        };
        Ok(match p.code.as_str() {
            "sequence_gap" => Next::ReadHead,
            "sequence_conflict" => Next::Halt(Divergence::Forked {
                seq: p.seq.unwrap_or(sent.from_seq),
            }),
            "record_malformed" | "record_mismatch" | "record_mac_invalid" | "chain_broken" => {
                let Some(seq) = p
                    .seq
                    .filter(|s| (sent.from_seq..=sent.through_seq).contains(s))
                else {
                    return Err(AnswerError::ProblemOutsideBatch {
                        seq: p.seq.unwrap_or(0),
                        from: sent.from_seq,
                        through: sent.through_seq,
                    });
                };
                self.refused_at = Some(self.refused_at.map_or(seq, |r| r.min(seq)));
                // The records before it can still be cleared: send them alone.
                if seq > sent.from_seq {
                    Next::Replan
                } else {
                    retry(true)
                }
            }
            "body_too_large" if sent.records() > 1 => {
                self.batch_records = (sent.records() / 2).max(1);
                Next::Replan
            }
            // Transient: time (or a new nonce / signing offset, which every retry gets) fixes them.
            "clock_skew" | "nonce_replayed" | "body_hash_mismatch" | "rate_limited"
            | "unavailable" | "internal" => retry(false),
            _ if p.status >= 500 => retry(false),
            // Wrong key, revoked or unknown terminal, a request the server calls malformed: a person
            // must look, but keep retrying slowly in case it was the server's fault.
            _ => retry(true),
        })
    }
}

/// Exponential backoff with full jitter, never sooner than the server's `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
    /// A `Retry-After` above this is clamped: a broken or hostile server cannot park sync for days.
    pub max_retry_after_ms: u64,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(1_000, 600_000, 3_600_000)
    }
}

impl Backoff {
    pub fn new(base_ms: u64, cap_ms: u64, max_retry_after_ms: u64) -> Self {
        Self {
            base_ms: base_ms.max(1),
            cap_ms: cap_ms.max(base_ms.max(1)),
            max_retry_after_ms,
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from the base again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Records a failure and returns the delay before the next attempt, in ms. `random` is a uniformly
    /// random `u64` from the caller.
    pub fn failed(&mut self, retry_after_ms: Option<u64>, random: u64) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1u64.checked_shl(self.failures).unwrap_or(u64::MAX))
            .min(self.cap_ms);
        self.failures = self.failures.saturating_add(1);
        let jittered = random % ceiling.saturating_add(1);
        let floor = retry_after_ms.unwrap_or(0).min(self.max_retry_after_ms);
        jittered.max(floor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// The MAC of local record `seq` in these tests; `fork` marks records of another journal.
    fn mac(seq: u64, fork: bool) -> Tag {
        let mut t = [0u8; 32];
        t[..8].copy_from_slice(&seq.to_be_bytes());
        t[8] = u8::from(fork);
        t
    }

    fn head(seq: u64, fork: bool) -> ServerHead {
        ServerHead {
            acknowledged_seq: seq,
            acknowledged_mac: (seq > 0).then(|| mac(seq, fork)),
        }
    }

    fn local(acked_seq: u64, head_seq: u64) -> LocalJournal {
        LocalJournal {
            head_seq,
            acked_seq,
        }
    }

    fn resume_with(l: LocalJournal, s: &ServerHead) -> Resume {
        let h = s.acknowledged_seq;
        let mine = (h > 0 && h <= l.head_seq).then(|| mac(h, false));
        resume(l, s, mine.as_ref())
    }

    #[test]
    fn resume_cases_of_the_readme_table() {
        assert_eq!(
            resume_with(local(10, 20), &head(10, false)),
            Resume::Continue { mark_synced: None }
        );
        assert_eq!(
            resume_with(local(0, 0), &head(0, false)),
            Resume::Continue { mark_synced: None }
        );
        // Acks lost (crash after the server committed, or daemon state restored): skip, nothing twice.
        assert_eq!(
            resume_with(local(10, 20), &head(15, false)),
            Resume::Continue {
                mark_synced: Some(15)
            }
        );
        assert_eq!(
            resume_with(local(10, 20), &head(15, true)),
            Resume::Halt(Divergence::Forked { seq: 15 })
        );
        assert_eq!(
            resume_with(local(10, 20), &head(10, true)),
            Resume::Halt(Divergence::Forked { seq: 10 })
        );
        assert_eq!(
            resume_with(local(10, 20), &head(21, false)),
            Resume::Halt(Divergence::ServerAheadOfJournal {
                server: 21,
                head: 20
            })
        );
        assert_eq!(
            resume_with(local(10, 20), &head(9, false)),
            Resume::Halt(Divergence::ServerBehindAck {
                server: 9,
                acked: 10
            })
        );
        let no_mac = ServerHead {
            acknowledged_seq: 12,
            acknowledged_mac: None,
        };
        assert_eq!(
            resume_with(local(10, 20), &no_mac),
            Resume::Halt(Divergence::HeadWithoutMac { seq: 12 })
        );
    }

    #[test]
    fn batches_cover_the_backlog_in_order() {
        let u = Uploader {
            batch_records: 4,
            refused_at: None,
        };
        let mut l = local(0, 10);
        let mut sent = Vec::new();
        while let Some(b) = u.next_batch(l) {
            let next = u
                .apply_ack(b, l.acked_seq, &head(b.through_seq, false), |s| {
                    Some(mac(s, false))
                })
                .unwrap();
            let Next::Acknowledged { mark_synced } = next else {
                panic!("{next:?}")
            };
            sent.push((b.from_seq, b.through_seq));
            l.acked_seq = mark_synced;
        }
        assert_eq!(sent, [(1, 4), (5, 8), (9, 10)]);
        assert_eq!(u.next_batch(local(0, 0)), None);
        assert_eq!(u.next_batch(local(u64::MAX, u64::MAX)), None);
    }

    #[test]
    fn hostile_acks_are_refused() {
        let u = Uploader::default();
        let b = Batch {
            from_seq: 5,
            through_seq: 8,
        };
        let ours = |s| Some(mac(s, false));
        assert_eq!(
            u.apply_ack(b, 4, &head(9, false), ours),
            Err(AnswerError::AboveSent {
                acked: 9,
                through: 8
            })
        );
        assert_eq!(
            u.apply_ack(b, 4, &head(3, false), ours),
            Err(AnswerError::Regressed {
                acked: 3,
                previous: 5
            })
        );
        assert_eq!(
            u.apply_ack(b, 4, &head(8, true), ours),
            Err(AnswerError::MacMismatch { seq: 8 })
        );
        // A partial ack of records it can prove it holds is progress.
        assert_eq!(
            u.apply_ack(b, 4, &head(6, false), ours),
            Ok(Next::Acknowledged { mark_synced: 6 })
        );
    }

    fn problem(status: u16, code: &str, seq: Option<u64>) -> Problem {
        Problem {
            status,
            code: code.into(),
            seq,
            retry_after_ms: Some(30_000),
        }
    }

    #[test]
    fn a_refused_record_stops_uploads_at_it_but_not_before_it() {
        let mut u = Uploader::default();
        let b = u.next_batch(local(0, 50)).unwrap();
        assert_eq!(
            u.apply_problem(b, &problem(422, "record_mac_invalid", Some(42))),
            Ok(Next::Replan)
        );
        assert_eq!(
            u.next_batch(local(0, 50)),
            Some(Batch {
                from_seq: 1,
                through_seq: 41
            })
        );
        assert_eq!(u.next_batch(local(41, 50)), None);
        // Refused at the first record of a batch: nothing can be sent; a person must look.
        let b = Batch {
            from_seq: 42,
            through_seq: 50,
        };
        assert_eq!(
            u.apply_problem(b, &problem(422, "chain_broken", Some(42))),
            Ok(Next::Retry {
                retry_after_ms: Some(30_000),
                report: true
            })
        );
        assert_eq!(
            u.apply_problem(b, &problem(422, "chain_broken", Some(7))),
            Err(AnswerError::ProblemOutsideBatch {
                seq: 7,
                from: 42,
                through: 50
            })
        );
        assert_eq!(
            u.apply_problem(b, &problem(422, "chain_broken", None))
                .unwrap_err(),
            AnswerError::ProblemOutsideBatch {
                seq: 0,
                from: 42,
                through: 50
            }
        );
    }

    #[test]
    fn problems_map_to_actions() {
        let mut u = Uploader::default();
        let b = Batch {
            from_seq: 1,
            through_seq: 1000,
        };
        assert_eq!(
            u.apply_problem(b, &problem(409, "sequence_gap", None)),
            Ok(Next::ReadHead)
        );
        assert_eq!(
            u.apply_problem(b, &problem(409, "sequence_conflict", Some(3))),
            Ok(Next::Halt(Divergence::Forked { seq: 3 }))
        );
        assert_eq!(
            u.apply_problem(b, &problem(413, "body_too_large", None)),
            Ok(Next::Replan)
        );
        assert_eq!(u.batch_records, 500);
        let one = Batch {
            from_seq: 1,
            through_seq: 1,
        };
        assert_eq!(
            u.apply_problem(one, &problem(413, "body_too_large", None)),
            Ok(Next::Retry {
                retry_after_ms: Some(30_000),
                report: true
            })
        );
        for (status, code, report) in [
            (503, "unavailable", false),
            (429, "rate_limited", false),
            (401, "clock_skew", false),
            (502, "something_new", false),
            (401, "bad_signature", true),
            (403, "terminal_disabled", true),
            (400, "malformed_request", true),
        ] {
            assert_eq!(
                u.apply_problem(b, &problem(status, code, None)),
                Ok(Next::Retry {
                    retry_after_ms: Some(30_000),
                    report
                }),
                "{code}"
            );
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let mut b = Backoff::new(1_000, 8_000, 60_000);
        // The largest random value shows each ceiling: 1, 2, 4, 8, 8 s.
        let ceilings: Vec<u64> = (0..5).map(|_| b.failed(None, u64::MAX)).collect();
        let want: Vec<u64> = [1_000u64, 2_000, 4_000, 8_000, 8_000]
            .iter()
            .map(|c| u64::MAX % (c + 1))
            .collect();
        assert_eq!(ceilings, want);
        assert_eq!(b.failures(), 5);
        assert_eq!(b.failed(None, 0), 0);
        assert_eq!(b.failed(Some(30_000), 0), 30_000);
        assert_eq!(b.failed(Some(u64::MAX), 0), 60_000);
        b.reset();
        assert_eq!(b.failed(None, 1_000), 1_000); // ceiling back to 1 s
        assert_eq!(b.failed(None, 2_001), 0); // ceiling 2 s: random mod 2,001
    }

    proptest! {
        /// Whatever the server reports, the terminal never re-uploads an acknowledged seq, never skips
        /// a record the server does not hold, and halts exactly on the divergent cases.
        #[test]
        fn resume_never_skips_or_repeats(acked in 0u64..100, extra in 0u64..100, h in 0u64..300, fork: bool) {
            let l = local(acked, acked + extra);
            let s = head(h, fork);
            let r = resume_with(l, &s);
            let divergent = h < l.acked_seq || h > l.head_seq || (h > 0 && fork);
            match r {
                Resume::Halt(_) => prop_assert!(divergent),
                Resume::Continue { mark_synced } => {
                    prop_assert!(!divergent);
                    let new_ack = mark_synced.unwrap_or(l.acked_seq);
                    prop_assert_eq!(new_ack, h.max(l.acked_seq));
                    let next = Uploader::default().next_batch(local(new_ack, l.head_seq));
                    if let Some(b) = next {
                        prop_assert_eq!(b.from_seq, new_ack + 1);
                        prop_assert!(b.through_seq <= l.head_seq);
                    } else {
                        prop_assert_eq!(new_ack, l.head_seq);
                    }
                }
            }
        }

        #[test]
        fn acks_above_the_batch_are_always_refused(from in 1u64..1000, len in 1u64..100, over in 1u64..1000) {
            let b = Batch { from_seq: from, through_seq: from + len - 1 };
            let r = Uploader::default().apply_ack(b, from - 1, &head(b.through_seq + over, false), |s| Some(mac(s, false)));
            prop_assert!(
                matches!(r, Err(AnswerError::AboveSent { .. })),
                "unexpected answer: {:?}",
                r
            );
        }

        #[test]
        fn batches_stay_within_bounds(acked in 0u64..1000, extra in 0u64..1000, size in 0u64..300, refused in proptest::option::of(0u64..2000)) {
            let u = Uploader { batch_records: size, refused_at: refused };
            let l = local(acked, acked + extra);
            if let Some(b) = u.next_batch(l) {
                prop_assert_eq!(b.from_seq, acked + 1);
                prop_assert!(b.from_seq <= b.through_seq);
                prop_assert!(b.through_seq <= l.head_seq);
                prop_assert!(b.records() <= size.max(1));
                if let Some(r) = refused { prop_assert!(b.through_seq < r); }
            }
        }

        #[test]
        fn backoff_stays_between_retry_after_and_cap(
            failures in 0usize..80, random: u64, retry_after in proptest::option::of(0u64..10_000_000)
        ) {
            let mut b = Backoff::default();
            for _ in 0..failures { b.failed(None, random); }
            let d = b.failed(retry_after, random);
            let floor = retry_after.unwrap_or(0).min(b.max_retry_after_ms);
            prop_assert!(d >= floor);
            prop_assert!(d <= b.cap_ms.max(floor));
        }
    }
}
