#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Engine rule tests: a small fixture card, a helper that appends approved lines to a history the way
//! the store does, and property tests over random redemption/void sequences.

use super::*;
use proptest::prelude::*;
use redeemd_contract::model::{CardRef, Holder, MerchantScope};

/// The first moment of the business day (UTC+8) after the one `wall_ms` falls in.
fn midnight_after(wall_ms: i64) -> i64 {
    redeemd_contract::close::day_window(business_day(wall_ms, 480) + 1, 480).0
}

const T0: i64 = 1_790_000_000_000; // some instant in 2026
const HOUR: i64 = 3_600_000;

fn card() -> Card {
    Card {
        masked_number: "622848******1234".into(),
        status: CardStatus::Active,
        holder: Some(Holder {
            masked_name: "张*".into(),
            identity_verifier: Some([1; 32]),
        }),
        usage_through_seq: 0,
        packages: vec![
            Package {
                id: "P-wash".into(),
                title: "洗车".into(),
                items: vec![
                    Item {
                        service_code: "WASH".into(),
                        title: "精洗".into(),
                        uses_total: 10,
                        uses_left: 10,
                        price_fen: 3000,
                    },
                    Item {
                        service_code: "WAX".into(),
                        title: "打蜡".into(),
                        uses_total: 2,
                        uses_left: 1,
                        price_fen: 8000,
                    },
                ],
                valid_from_ms: T0 - 100 * HOUR,
                valid_until_ms: T0 + 1000 * HOUR,
                scope: MerchantScope::All,
                daily_cap: Some(3),
                identity_required: false,
            },
            Package {
                id: "P-oil".into(),
                title: "保养".into(),
                items: vec![Item {
                    service_code: "OIL".into(),
                    title: "换机油".into(),
                    uses_total: 3,
                    uses_left: 3,
                    price_fen: 20000,
                }],
                valid_from_ms: T0 - 100 * HOUR,
                valid_until_ms: T0 + 10 * HOUR,
                scope: MerchantScope::Categories(vec!["repair".into()]),
                daily_cap: None,
                identity_required: true,
            },
        ],
    }
}

struct Fixture {
    limits: Limits,
    categories: Vec<String>,
    terminal: TerminalFacts,
    history: Vec<JournalRecord>,
    denied: Option<DenyStatus>,
    card: Card,
}

impl Fixture {
    fn new() -> Self {
        Self {
            limits: Limits::default(),
            categories: vec!["wash".into(), "repair".into()],
            terminal: TerminalFacts::default(),
            history: Vec::new(),
            denied: None,
            card: card(),
        }
    }
    fn ctx(&self) -> Context<'_> {
        Context {
            limits: &self.limits,
            cache: CacheFacts {
                version: 7,
                merchant_id: "M-1",
                merchant_categories: &self.categories,
                issued_at_ms: T0 - HOUR,
                expires_at_ms: T0 + 48 * HOUR,
            },
            terminal: self.terminal,
        }
    }
    fn view(&self) -> CardView<'_> {
        CardView {
            card: &self.card,
            entry_version: 7,
            history: &self.history,
            denied: self.denied,
        }
    }
    fn menu(&self, wall: i64) -> Result<Menu, DeclineReason> {
        menu(&self.ctx(), self.view(), now(wall))
    }
    fn redeem_with(&mut self, wall: i64, items: &[(u16, u64)], id: IdentityInput) -> RedeemVerdict {
        let v = decide_redeem(
            &self.ctx(),
            self.view(),
            items,
            IdentityState::default(),
            id,
            now(wall),
        );
        if let Ok(lines) = &v.result {
            let group = self.history.last().map_or(1, |r| r.seq + 1);
            let n = lines.len() as u16;
            for (i, l) in lines.iter().enumerate() {
                self.history.push(rec(
                    group + i as u64,
                    RecordKind::Redeem,
                    &l.package_id,
                    &l.service_code,
                    l.quantity,
                    0,
                    group,
                    n,
                    wall,
                ));
            }
            self.terminal.offline_redemptions += 1;
            self.terminal.last_trusted_wall_ms = self.terminal.last_trusted_wall_ms.max(wall);
        }
        v
    }
    fn redeem(&mut self, wall: i64, items: &[(u16, u64)]) -> Result<Vec<Line>, DeclineReason> {
        self.redeem_with(wall, items, IdentityInput::NotProvided)
            .result
    }
    fn void(&mut self, wall: i64, group: u64) -> Result<(), DeclineReason> {
        let originals: Vec<JournalRecord> = self
            .history
            .iter()
            .filter(|r| r.group_seq == group && r.kind == RecordKind::Redeem)
            .cloned()
            .collect();
        let voided = self
            .history
            .iter()
            .any(|r| r.kind == RecordKind::Void && r.original_seq == group);
        decide_void(&self.limits, self.terminal, &originals, voided, now(wall))?;
        let first = self.history.last().map_or(1, |r| r.seq + 1);
        for (i, o) in originals.iter().enumerate() {
            self.history.push(rec(
                first + i as u64,
                RecordKind::Void,
                &o.package_id,
                &o.service_code,
                o.quantity,
                o.seq,
                first,
                originals.len() as u16,
                wall,
            ));
        }
        Ok(())
    }
    fn left(&self, wall: i64, index: u16) -> Option<u32> {
        self.menu(wall)
            .ok()?
            .entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.uses_left)
    }
}

fn now(wall_ms: i64) -> Now {
    Now {
        wall_ms,
        boot_ms: 0,
    }
}

#[allow(clippy::too_many_arguments)]
fn rec(
    seq: u64,
    kind: RecordKind,
    pkg: &str,
    svc: &str,
    quantity: u32,
    original_seq: u64,
    group_seq: u64,
    line_count: u16,
    wall_ms: i64,
) -> JournalRecord {
    JournalRecord {
        terminal_id: "T".into(),
        seq,
        kind,
        auth_code: String::new(),
        merchant_id: "M-1".into(),
        card_ref: CardRef([0; 32]),
        package_id: pkg.into(),
        service_code: svc.into(),
        item_title: String::new(),
        quantity,
        amount_fen: 0,
        original_seq,
        group_seq,
        line: (seq - group_seq) as u16,
        line_count,
        reader_id: "r".into(),
        reader_txn_id: seq,
        cashier_id: "c".into(),
        wall_ms,
        boot_ms: 0,
        cache_version: 7,
        entry_version: 7,
        prev_mac: [0; 32],
    }
}

#[test]
fn menu_lists_usable_entries_with_stable_indexes() {
    let f = Fixture::new();
    let m = f.menu(T0).unwrap();
    let idx: Vec<u16> = m.entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![0, 1, 2]);
    assert!(m.entries[2].identity_required && !m.entries[0].identity_required);
    assert_eq!(m.entries[1].uses_left, 1);
}

#[test]
fn used_up_entries_leave_the_menu_without_shifting_indexes() {
    let mut f = Fixture::new();
    f.redeem(T0, &[(1, 1)]).unwrap();
    let idx: Vec<u16> = f
        .menu(T0)
        .unwrap()
        .entries
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(idx, vec![0, 2]);
    assert_eq!(
        f.redeem(T0, &[(1, 1)]),
        Err(DeclineReason::InsufficientUses)
    );
}

#[test]
fn multi_line_redemption_is_all_or_nothing() {
    let mut f = Fixture::new();
    assert_eq!(
        f.redeem(T0, &[(0, 1), (1, 2)]),
        Err(DeclineReason::InsufficientUses)
    );
    assert!(f.history.is_empty());
    let lines = f.redeem(T0, &[(0, 2), (1, 1)]).unwrap();
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.quantity, l.uses_left_after, l.amount_fen))
            .collect::<Vec<_>>(),
        vec![(2, 8, 6000), (1, 0, 8000)]
    );
}

#[test]
fn card_status_is_checked_first() {
    for (status, reason) in [
        (CardStatus::Lost, DeclineReason::CardLost),
        (CardStatus::Frozen, DeclineReason::CardFrozen),
        (CardStatus::Cancelled, DeclineReason::CardCancelled),
        (CardStatus::Reissued, DeclineReason::CardReissued),
    ] {
        let mut f = Fixture::new();
        f.card.status = status;
        assert_eq!(f.menu(T0), Err(reason));
        assert_eq!(f.redeem(T0, &[(0, 1)]), Err(reason));
    }
}

#[test]
fn a_deny_entry_refuses_an_active_card_with_its_status_and_never_enables_one() {
    for s in [
        DenyStatus::Lost,
        DenyStatus::Frozen,
        DenyStatus::Cancelled,
        DenyStatus::Reissued,
    ] {
        let mut f = Fixture::new();
        f.denied = Some(s);
        let reason = match s {
            DenyStatus::Lost => DeclineReason::CardLost,
            DenyStatus::Frozen => DeclineReason::CardFrozen,
            DenyStatus::Cancelled => DeclineReason::CardCancelled,
            DenyStatus::Reissued => DeclineReason::CardReissued,
        };
        assert_eq!(f.menu(T0), Err(reason));
        assert_eq!(f.redeem(T0, &[(0, 1)]), Err(reason));
    }
    // A cancelled card stays refused whatever the deny entry says.
    let mut f = Fixture::new();
    f.card.status = CardStatus::Cancelled;
    f.denied = Some(DenyStatus::Lost);
    assert!(f.menu(T0).is_err());
}

#[test]
fn deny_entries_are_superseded_by_a_cache_entry_at_their_entry_version() {
    let entry = |version, entry_version, status| DenyEntry {
        version,
        card_ref: CardRef([1; 32]),
        status,
        entry_version,
        reported_at_ms: 0,
    };
    let lost = entry(3, 10, DenyStatus::Lost);
    let frozen = entry(5, 12, DenyStatus::Frozen);
    let both = [lost.clone(), frozen];
    assert_eq!(deny_overlay(&both, Some(9)), Some(DenyStatus::Frozen));
    assert_eq!(deny_overlay(&both, Some(10)), Some(DenyStatus::Frozen));
    assert_eq!(deny_overlay(&both, Some(12)), None, "unlocked at 12");
    assert_eq!(deny_overlay(&both, None), Some(DenyStatus::Frozen));
    assert_eq!(deny_overlay(&[lost], Some(10)), None);
    assert_eq!(deny_overlay(&[], None), None);
}

#[test]
fn validity_window_and_scope() {
    let mut f = Fixture::new();
    // The oil package ends at T0 + 10 h; at T0 + 11 h only the wash entries remain.
    let late = T0 + 11 * HOUR;
    assert_eq!(f.menu(late).unwrap().entries.len(), 2);
    assert_eq!(f.redeem(late, &[(2, 1)]), Err(DeclineReason::Expired));
    f.card.packages[0].valid_from_ms = T0 + HOUR;
    assert_eq!(f.redeem(T0, &[(0, 1)]), Err(DeclineReason::NotYetValid));
    f.categories = vec!["wash".into()];
    assert_eq!(
        f.redeem(T0, &[(2, 1)]),
        Err(DeclineReason::NotValidAtMerchant)
    );
    f.card.packages[1].scope = MerchantScope::Merchants(vec!["M-1".into()]);
    assert_eq!(
        f.redeem_with(T0, &[(2, 1)], IdentityInput::Matches)
            .result
            .map(|l| l.len()),
        Ok(1)
    );
}

#[test]
fn nothing_usable_gives_the_most_useful_reason() {
    let mut f = Fixture::new();
    f.categories.clear();
    f.card.packages[0].valid_until_ms = T0 - 1;
    assert_eq!(f.menu(T0), Err(DeclineReason::NotValidAtMerchant));
    f.card.packages.clear();
    assert_eq!(f.menu(T0), Err(DeclineReason::InsufficientUses));
}

#[test]
fn daily_cap_counts_the_business_day_and_voids_give_it_back() {
    let mut f = Fixture::new();
    f.redeem(T0, &[(0, 2)]).unwrap();
    assert_eq!(
        f.redeem(T0, &[(0, 1), (1, 1)]),
        Err(DeclineReason::DailyCapReached)
    );
    f.redeem(T0, &[(1, 1)]).unwrap();
    assert_eq!(
        f.menu(T0)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        vec![2]
    );
    f.void(T0 + 1, 1).unwrap();
    assert_eq!(f.redeem(T0 + 2, &[(0, 2)]).map(|l| l.len()), Ok(1));
    // Next business day (China time) the cap starts again.
    let next_day = midnight_after(T0);
    assert!(f.redeem(next_day, &[(0, 3)]).is_ok());
}

#[test]
fn bad_quantities_and_unknown_entries() {
    let mut f = Fixture::new();
    assert_eq!(f.redeem(T0, &[]), Err(DeclineReason::BadQuantity));
    assert_eq!(f.redeem(T0, &[(0, 0)]), Err(DeclineReason::BadQuantity));
    assert_eq!(
        f.redeem(T0, &[(0, 1 << 32)]),
        Err(DeclineReason::BadQuantity)
    );
    assert_eq!(
        f.redeem(T0, &[(0, u64::MAX)]),
        Err(DeclineReason::BadQuantity)
    );
    assert_eq!(
        f.redeem(T0, &[(0, 600), (0, 600)]),
        Err(DeclineReason::BadQuantity)
    );
    assert_eq!(f.redeem(T0, &[(3, 1)]), Err(DeclineReason::UnknownEntry));
    assert_eq!(
        f.redeem(T0, &[(u16::MAX, 1)]),
        Err(DeclineReason::UnknownEntry)
    );
    assert_eq!(
        f.redeem(T0, &vec![(0, 1); MAX_LINES + 1]),
        Err(DeclineReason::BadQuantity)
    );
    // Duplicate indexes are summed.
    assert_eq!(f.redeem(T0, &[(0, 1), (0, 1)]).unwrap()[0].quantity, 2);
}

#[test]
fn identity_attempts_lock_out_and_unlock() {
    let mut f = Fixture::new();
    let ctx_now =
        |f: &Fixture, st, id, wall| decide_redeem(&f.ctx(), f.view(), &[(2, 1)], st, id, now(wall));
    assert_eq!(
        ctx_now(&f, IdentityState::default(), IdentityInput::NotProvided, T0).result,
        Err(DeclineReason::IdentityRequired)
    );
    let mut st = IdentityState::default();
    let mut reasons = vec![];
    for _ in 0..3 {
        let v = ctx_now(&f, st, IdentityInput::DoesNotMatch, T0);
        st = v.identity_update.unwrap();
        reasons.push(v.result.unwrap_err());
    }
    assert_eq!(
        reasons,
        vec![
            DeclineReason::IdentityWrong,
            DeclineReason::IdentityWrong,
            DeclineReason::IdentityLockedOut
        ]
    );
    assert_eq!(st.locked_until_ms, T0 + f.limits.identity_lockout_ms);
    // Even the right answer is refused while locked.
    assert_eq!(
        ctx_now(&f, st, IdentityInput::Matches, T0 + 1).result,
        Err(DeclineReason::IdentityLockedOut)
    );
    let after = T0 + f.limits.identity_lockout_ms + 1;
    let v = ctx_now(&f, st, IdentityInput::Matches, after);
    assert!(v.result.is_ok());
    assert_eq!(v.identity_update, Some(IdentityState::default()));
    // Anonymous cards are never asked.
    f.card.holder = None;
    assert!(
        ctx_now(&f, IdentityState::default(), IdentityInput::NotProvided, T0)
            .result
            .is_ok()
    );
}

#[test]
fn clock_set_back_cannot_revive_an_expired_package_or_cache() {
    let mut f = Fixture::new();
    let late = T0 + 11 * HOUR;
    f.redeem(late, &[(0, 1)]).unwrap();
    // The oil package expired at T0 + 10 h; setting the clock back to T0 is refused.
    assert_eq!(
        f.redeem_with(T0, &[(2, 1)], IdentityInput::Matches).result,
        Err(DeclineReason::ClockNotTrusted)
    );
    // Within the tolerance the effective time is still the last trusted time: still expired.
    let slightly_back = late - f.limits.clock_tolerance_ms / 2;
    assert_eq!(
        f.redeem_with(slightly_back, &[(2, 1)], IdentityInput::Matches)
            .result,
        Err(DeclineReason::Expired)
    );
    // Before the cache was issued: not trusted.
    let f2 = Fixture::new();
    assert_eq!(f2.menu(T0 - 2 * HOUR), Err(DeclineReason::ClockNotTrusted));
    // Past the cache's expires-at: fail closed.
    assert_eq!(f2.menu(T0 + 48 * HOUR), Err(DeclineReason::CacheExpired));
}

#[test]
fn offline_limits() {
    let mut f = Fixture::new();
    f.limits.max_offline_uses_per_card = 3;
    f.card.packages[0].daily_cap = None;
    f.redeem(T0, &[(0, 2)]).unwrap();
    assert_eq!(
        f.redeem(T0, &[(0, 2)]),
        Err(DeclineReason::CardOfflineLimitReached)
    );
    f.redeem(T0, &[(1, 1)]).unwrap();
    assert_eq!(f.menu(T0), Err(DeclineReason::CardOfflineLimitReached));
    // Once the platform acknowledged the records, the allowance starts again.
    f.terminal.synced_through_seq = 2;
    f.terminal.offline_redemptions = 0;
    assert!(f.menu(T0).is_ok());
    f.limits.max_offline_redemptions = 1;
    f.redeem(T0, &[(0, 1)]).unwrap();
    assert_eq!(
        f.redeem(T0, &[(0, 1)]),
        Err(DeclineReason::TerminalOfflineLimitReached)
    );
}

#[test]
fn usage_before_the_snapshot_is_not_counted_twice() {
    let mut f = Fixture::new();
    f.redeem(T0, &[(0, 2)]).unwrap();
    assert_eq!(f.left(T0, 0), Some(8));
    // The platform's next entry says 8 left, accounting for seq 1.
    f.card.packages[0].items[0].uses_left = 8;
    f.card.usage_through_seq = 1;
    assert_eq!(f.left(T0, 0), Some(8));
}

#[test]
fn voids_restore_uses_once_and_within_the_window() {
    let mut f = Fixture::new();
    f.redeem(T0, &[(0, 2), (1, 1)]).unwrap();
    assert_eq!(f.void(T0 + HOUR, 3), Err(DeclineReason::UnknownAuthCode)); // not a group
    f.void(T0 + HOUR, 1).unwrap();
    assert_eq!(
        (f.left(T0 + HOUR, 0), f.left(T0 + HOUR, 1)),
        (Some(10), Some(1))
    );
    assert_eq!(f.void(T0 + HOUR, 1), Err(DeclineReason::AlreadyVoided));
    f.redeem(T0 + HOUR, &[(0, 1)]).unwrap();
    let g = f.history.last().unwrap().group_seq;
    assert_eq!(
        f.void(T0 + HOUR + f.limits.void_window_ms + 1, g),
        Err(DeclineReason::VoidWindowPassed)
    );
}

proptest! {
    /// A random sequence of redemptions and voids never lets uses left go below zero, and uses left always
    /// equals the snapshot figure minus the fold of the journal.
    #[test]
    fn uses_left_is_the_snapshot_minus_the_journal(ops in proptest::collection::vec((0u8..4, 0u16..4, 1u64..5, 0u64..40), 1..60)) {
        let mut f = Fixture::new();
        f.limits.max_offline_uses_per_card = 1000;
        f.card.packages[0].daily_cap = None;
        let mut wall = T0;
        for (op, index, qty, pick) in ops {
            wall += 60_000;
            if op == 0 {
                let groups: Vec<u64> = f.history.iter().filter(|r| r.kind == RecordKind::Redeem && r.line == 0).map(|r| r.group_seq).collect();
                if let Some(&g) = groups.get(pick as usize % groups.len().max(1)) {
                    let _ = f.void(wall, g);
                }
            } else {
                let _ = f.redeem_with(wall, &[(index, qty)], IdentityInput::Matches);
            }
            for (i, p, it) in f.card.entries() {
                let net: i64 = f.history.iter().filter(|r| r.package_id == p.id && r.service_code == it.service_code)
                    .map(|r| if r.kind == RecordKind::Redeem { i64::from(r.quantity) } else { -i64::from(r.quantity) }).sum();
                prop_assert!(net >= 0 && net <= i64::from(it.uses_left), "entry {i}: net {net}");
                let usage = Usage::fold(&f.card, &f.history, 0, business_day(wall, 480), 480);
                prop_assert_eq!(i64::from(usage.uses_left(p, it)), i64::from(it.uses_left) - net);
            }
        }
    }

    /// Arbitrary requests never panic and approvals never exceed what is left.
    #[test]
    fn arbitrary_requests_never_overdraw(items in proptest::collection::vec((any::<u16>(), any::<u64>()), 0..20)) {
        let mut f = Fixture::new();
        if let Ok(lines) = f.redeem_with(T0, &items, IdentityInput::Matches).result {
            for l in lines {
                prop_assert!(l.quantity >= 1);
            }
        }
    }
}

#[test]
fn a_clock_set_back_across_midnight_within_the_tolerance_does_not_lift_the_daily_cap() {
    // Records are stamped with the wall clock, and the fold books them on its business day; the rules
    // run on the effective time (the last trusted time when the clock is a little behind). Around
    // midnight the two days differ: the cap must count the day the new records will be booked on too.
    let midnight = midnight_after(T0);
    let mut f = Fixture::new();
    f.terminal.last_trusted_wall_ms = midnight + 60_000;
    let behind = midnight - 2 * 60_000; // within the 5 min tolerance
    f.redeem(behind, &[(0, 3)]).unwrap();
    assert_eq!(
        f.redeem(behind, &[(0, 1)]),
        Err(DeclineReason::DailyCapReached)
    );
    assert_eq!(f.menu(behind).map(|m| m.entries.len()), Ok(1)); // only the oil entry
    // The other way round: the cap used after midnight is not reopened by stepping the clock back.
    let mut f = Fixture::new();
    f.redeem(midnight + 60_000, &[(0, 3)]).unwrap();
    assert_eq!(
        f.redeem(behind, &[(0, 1)]),
        Err(DeclineReason::DailyCapReached)
    );
}

proptest! {
    /// Whatever the wall clock does (forward, or back within and beyond the tolerance, around
    /// midnight), the journal never books more than the daily cap on one business day.
    #[test]
    fn the_journal_never_books_more_than_the_cap_on_a_day(steps in proptest::collection::vec((-6i64..10, 1u64..4, 0u16..2), 1..40)) {
        let midnight = midnight_after(T0);
        let mut f = Fixture::new();
        f.card.packages[0].items[0].uses_left = 1000;
        f.card.packages[0].items[1].uses_left = 1000;
        f.limits.max_offline_uses_per_card = 10_000;
        let mut wall = midnight - 10 * 60_000;
        for (minutes, qty, index) in steps {
            wall += minutes * 60_000;
            let _ = f.redeem(wall, &[(index, qty)]);
            let mut per_day: HashMap<i64, i64> = HashMap::new();
            for r in f.history.iter().filter(|r| r.package_id == "P-wash") {
                *per_day.entry(business_day(r.wall_ms, 480)).or_default() += i64::from(r.quantity);
            }
            prop_assert!(per_day.values().all(|&n| n <= 3), "{per_day:?}");
        }
    }
}
