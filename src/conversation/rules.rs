//! PROTOCOL.md §8.2 and §8.5 as pure functions: which answer a request or a QUERY gets, given what
//! is stored for its transaction.
//!
//! No I/O and no clock. The store applies these rules inside the one SQLite transaction that reads
//! a transaction's stored answers and writes the new one (`Store::answer_card_presented` and its
//! siblings), so that nothing can come between the check and the write; the conversation core
//! (`super::Conversation`) never answers a request from memory, which a restart would lose.
//!
//! The rules, as PROTOCOL.md 1.1 states them:
//!
//! * the idempotency key is (reader serial, txn id, request type); a txn id belongs to one
//!   transaction, opened by a CARD_PRESENTED (then at most one REDEEM) or by a VOID;
//! * the same request again (same key, byte-identical payload) gets its stored answer and nothing
//!   else happens;
//! * the same key with another payload, or a request that does not fit the transaction its txn id
//!   belongs to (a VOID under a swipe's id, a CARD_PRESENTED or REDEEM under a void's, a
//!   CARD_PRESENTED under a txn id that already has answers), is DECLINED `TXN_ID_REUSED`;
//! * a REDEEM is decided from its transaction's stored CARD_PRESENTED: without one that was
//!   answered with a menu it is DECLINED `NO_CARD`;
//! * those two refusals are not stored (they describe the request's relation to others, and must not
//!   replace what QUERY returns); neither are answers that describe the terminal
//!   (`INTEGRITY_FAILURE`, `STORAGE_FAILURE`);
//! * QUERY returns the stored answer of the transaction's latest request: the REDEEM's if there is
//!   one, else the CARD_PRESENTED's, or the VOID's.

use firmware_protocol::MessageType;

use crate::engine::DeclineReason;

/// The requests whose answers are stored (PROTOCOL.md §8.2), by their wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    CardPresented,
    Redeem,
    Void,
}

impl RequestKind {
    pub const ALL: [RequestKind; 3] = [Self::CardPresented, Self::Redeem, Self::Void];

    /// The request's message type (PROTOCOL.md §5.2); the store keeps its code.
    pub fn message_type(self) -> MessageType {
        match self {
            Self::CardPresented => MessageType::CardPresented,
            Self::Redeem => MessageType::Redeem,
            Self::Void => MessageType::Void,
        }
    }

    /// The kind of a stored type code; `None` for any other code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.message_type().as_u8() == code)
    }

    /// The name PROTOCOL.md uses.
    pub fn name(self) -> &'static str {
        self.message_type().name()
    }
}

/// An earlier request of the same transaction, as the store holds it (already verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Earlier {
    pub kind: RequestKind,
    /// Its payload was byte-identical to the new request's (compared by keyed digest).
    pub same_payload: bool,
    /// A CARD_PRESENTED answered with CARD_MENU (it holds the card a REDEEM is decided for).
    pub gave_menu: bool,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same request again: send its stored answer, byte-identical; nothing else happens.
    Replay,
    /// A new request: decide it (a REDEEM from its transaction's stored CARD_PRESENTED) and store
    /// the answer before sending it.
    Decide,
    /// Refuse it with this reason; nothing is deducted and nothing is stored.
    Refuse(DeclineReason),
}

/// PROTOCOL.md §8.2: the verdict for a request of `kind`, given the stored answers of its
/// transaction (its txn id, this reader).
pub fn judge(kind: RequestKind, earlier: &[Earlier]) -> Verdict {
    if let Some(same_key) = earlier.iter().find(|e| e.kind == kind) {
        return if same_key.same_payload {
            Verdict::Replay
        } else {
            Verdict::Refuse(DeclineReason::TxnIdReused)
        };
    }
    match kind {
        // They open a transaction: its txn id must be new.
        RequestKind::CardPresented | RequestKind::Void if earlier.is_empty() => Verdict::Decide,
        RequestKind::CardPresented | RequestKind::Void => {
            Verdict::Refuse(DeclineReason::TxnIdReused)
        }
        RequestKind::Redeem => {
            let opened_by = earlier.iter().find(|e| e.kind != RequestKind::Redeem);
            match opened_by {
                Some(e) if e.kind == RequestKind::CardPresented && e.gave_menu => Verdict::Decide,
                // A declined swipe holds no card; no swipe at all (never sent, or a menu a power
                // cut forgot): "swipe first".
                Some(e) if e.kind == RequestKind::CardPresented => {
                    Verdict::Refuse(DeclineReason::NoCard)
                }
                Some(_) => Verdict::Refuse(DeclineReason::TxnIdReused),
                None => Verdict::Refuse(DeclineReason::NoCard),
            }
        }
    }
}

/// PROTOCOL.md §8.5: which stored answer of a transaction QUERY returns — its latest request's.
pub fn answer_for_query(stored: &[RequestKind]) -> Option<RequestKind> {
    [
        RequestKind::Redeem,
        RequestKind::CardPresented,
        RequestKind::Void,
    ]
    .into_iter()
    .find(|k| stored.contains(k))
}

/// Whether an answer with this decline reason is stored (PROTOCOL.md §8.2): refusals that describe
/// the terminal (its integrity, its storage) or the request's relation to others are not; a retry
/// after the fault is fixed is decided afresh.
pub fn is_stored(reason: DeclineReason) -> bool {
    !matches!(
        reason,
        DeclineReason::IntegrityFailure
            | DeclineReason::InternalError
            | DeclineReason::TxnUnknown
            | DeclineReason::TxnIdReused
            | DeclineReason::NoCard
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use RequestKind::*;

    fn earlier(kind: RequestKind, same_payload: bool, gave_menu: bool) -> Earlier {
        Earlier {
            kind,
            same_payload,
            gave_menu,
        }
    }

    #[test]
    fn a_new_txn_id_is_decided_for_swipes_and_voids_and_is_no_card_for_a_redeem() {
        assert_eq!(judge(CardPresented, &[]), Verdict::Decide);
        assert_eq!(judge(Void, &[]), Verdict::Decide);
        assert_eq!(judge(Redeem, &[]), Verdict::Refuse(DeclineReason::NoCard));
    }

    #[test]
    fn the_same_key_replays_with_the_same_payload_and_is_reused_with_another() {
        for kind in RequestKind::ALL {
            let mut stored = vec![earlier(kind, true, true)];
            if kind == Redeem {
                stored.push(earlier(CardPresented, false, true));
            }
            assert_eq!(judge(kind, &stored), Verdict::Replay, "{kind:?}");
            stored[0].same_payload = false;
            assert_eq!(
                judge(kind, &stored),
                Verdict::Refuse(DeclineReason::TxnIdReused),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_redeem_needs_a_swipe_answered_with_a_menu() {
        let menu = earlier(CardPresented, false, true);
        let declined = earlier(CardPresented, false, false);
        assert_eq!(judge(Redeem, &[menu]), Verdict::Decide);
        assert_eq!(
            judge(Redeem, &[declined]),
            Verdict::Refuse(DeclineReason::NoCard)
        );
        assert_eq!(
            judge(Redeem, &[earlier(Void, false, false)]),
            Verdict::Refuse(DeclineReason::TxnIdReused)
        );
    }

    #[test]
    fn a_txn_id_opens_one_transaction_only() {
        let swipe = earlier(CardPresented, false, true);
        let void = earlier(Void, false, false);
        let redeem = earlier(Redeem, false, false);
        let reused = Verdict::Refuse(DeclineReason::TxnIdReused);
        assert_eq!(judge(Void, &[swipe]), reused);
        assert_eq!(judge(CardPresented, &[void]), reused);
        assert_eq!(judge(CardPresented, &[redeem]), reused);
        assert_eq!(judge(Void, &[swipe, redeem]), reused);
    }

    #[test]
    fn query_returns_the_latest_requests_answer() {
        assert_eq!(answer_for_query(&[]), None);
        assert_eq!(answer_for_query(&[CardPresented]), Some(CardPresented));
        assert_eq!(answer_for_query(&[CardPresented, Redeem]), Some(Redeem));
        assert_eq!(answer_for_query(&[Redeem, CardPresented]), Some(Redeem));
        assert_eq!(answer_for_query(&[Void]), Some(Void));
    }

    #[test]
    fn kinds_round_trip_through_their_wire_codes() {
        for kind in RequestKind::ALL {
            assert_eq!(
                RequestKind::from_code(kind.message_type().as_u8()),
                Some(kind)
            );
        }
        assert_eq!(RequestKind::from_code(0x23), None);
    }

    #[test]
    fn only_answers_about_the_request_itself_are_stored() {
        assert!(is_stored(DeclineReason::InsufficientUses));
        assert!(is_stored(DeclineReason::CardLost));
        for r in [
            DeclineReason::IntegrityFailure,
            DeclineReason::InternalError,
            DeclineReason::TxnIdReused,
            DeclineReason::NoCard,
            DeclineReason::TxnUnknown,
        ] {
            assert!(!is_stored(r), "{r:?}");
        }
    }
}
