//! The deny overlay in the store: verified deny entries refuse a card (menu and redeem) with its
//! reason until a cache entry at their entry version supersedes them; they never enable a card; one bad
//! entry refuses the whole answer.

use redeemd::engine::DeclineReason;
use redeemd::store::{DenyError, DenyList, MenuOutcome, Store, StoreError};
use redeemd_contract::CardStatus;
use redeemd_contract::deny::{DenyEntry, DenyStatus};
use redeemd_contract::snapshot::BundleKind;

use crate::support::*;

fn entry(version: u64, card: u64, status: DenyStatus, entry_version: u64) -> DenyEntry {
    DenyEntry {
        version,
        card_ref: card_ref(card),
        status,
        entry_version,
        reported_at_ms: T0,
    }
}

fn list(version: u64, entries: &[DenyEntry]) -> DenyList {
    let k = keys();
    DenyList {
        merchant_id: MERCHANT.into(),
        version,
        entries: entries
            .iter()
            .map(|e| (e.clone(), e.mac(&k.cache, MERCHANT).to_vec()))
            .collect(),
    }
}

fn menu_reason(s: &mut Store, card: u64) -> Option<DeclineReason> {
    match s.menu(&number(card), now(T0)).unwrap() {
        MenuOutcome::Menu(_) => None,
        MenuOutcome::Declined(d) => Some(d.reason),
    }
}

/// PROTOCOL.md §7.1 `CARD_REISSUED`: a card the platform reissued comes in the deny list as
/// "reissued" (status 5), for a card in the cache and for one it does not hold, and stays so across
/// a restart (the row is loaded and its MAC verified at open).
#[test]
fn a_deny_entry_reissued_declines_card_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 2);
    s.apply_deny_list(&list(
        2,
        &[
            entry(1, 0, DenyStatus::Reissued, 2),
            entry(2, 9, DenyStatus::Reissued, 1),
        ],
    ))
    .unwrap();
    for card in [0, 9] {
        assert_eq!(menu_reason(&mut s, card), Some(DeclineReason::CardReissued));
    }
    assert_eq!(
        declined(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0)),
        DeclineReason::CardReissued
    );
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(menu_reason(&mut s, 0), Some(DeclineReason::CardReissued));
    approved(&redeem(&mut s, "r", 2, 1, &[(0, 1)], T0));
}

#[test]
fn deny_entries_refuse_with_their_reason_until_a_newer_cache_entry_supersedes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 4);
    let r = s
        .apply_deny_list(&list(
            3,
            &[
                entry(1, 0, DenyStatus::Lost, 2),
                entry(2, 1, DenyStatus::Frozen, 2),
                entry(3, 2, DenyStatus::Cancelled, 2),
            ],
        ))
        .unwrap();
    assert_eq!((r.applied, r.version), (3, 3));
    assert_eq!(menu_reason(&mut s, 0), Some(DeclineReason::CardLost));
    assert_eq!(menu_reason(&mut s, 1), Some(DeclineReason::CardFrozen));
    assert_eq!(
        declined(&redeem(&mut s, "r", 1, 2, &[(0, 1)], T0)),
        DeclineReason::CardCancelled
    );
    approved(&redeem(&mut s, "r", 2, 3, &[(0, 1)], T0));
    // A card the cache does not hold, reported lost: "lost" rather than "unknown".
    s.apply_deny_list(&list(4, &[entry(4, 9, DenyStatus::Lost, 1)]))
        .unwrap();
    assert_eq!(menu_reason(&mut s, 9), Some(DeclineReason::CardLost));
    // Survives a restart (loaded and verified at open).
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(menu_reason(&mut s, 0), Some(DeclineReason::CardLost));
    // Version 2 of the cache: card 0 unlocked (active at entry version 2: supersedes the loss report),
    // card 1 still frozen in the cache itself.
    let mut frozen = card(1, 10);
    frozen.status = CardStatus::Frozen;
    s.install_bundle(
        &bundle(
            BundleKind::Full,
            2,
            1,
            &[
                (0, Some(card(0, 10))),
                (1, Some(frozen)),
                (2, Some(card(2, 10))),
            ],
            T0 + 1000 * HOUR,
        )[..],
        now(T0),
    )
    .unwrap();
    assert_eq!(
        menu_reason(&mut s, 0),
        None,
        "superseded by entry version 2"
    );
    assert_eq!(menu_reason(&mut s, 1), Some(DeclineReason::CardFrozen));
    assert_eq!(menu_reason(&mut s, 2), None);
    assert_eq!(s.deny_info().entries, 4);
}

#[test]
fn a_deny_entry_cannot_enable_a_card() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let mut lost = card(0, 10);
    lost.status = CardStatus::Lost;
    s.install_bundle(
        &bundle(BundleKind::Full, 1, 0, &[(0, Some(lost))], T0 + 1000 * HOUR)[..],
        now(T0),
    )
    .unwrap();
    // Even a deny entry of another status, newer than the cache, only changes why it is refused.
    s.apply_deny_list(&list(1, &[entry(1, 0, DenyStatus::Frozen, 5)]))
        .unwrap();
    assert_eq!(menu_reason(&mut s, 0), Some(DeclineReason::CardFrozen));
    // An old deny entry (superseded) leaves the cache's own "lost".
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let mut lost = card(0, 10);
    lost.status = CardStatus::Lost;
    s.install_bundle(
        &bundle(BundleKind::Full, 3, 0, &[(0, Some(lost))], T0 + 1000 * HOUR)[..],
        now(T0),
    )
    .unwrap();
    s.apply_deny_list(&list(1, &[entry(1, 0, DenyStatus::Frozen, 2)]))
        .unwrap();
    assert_eq!(menu_reason(&mut s, 0), Some(DeclineReason::CardLost));
}

#[test]
fn one_bad_entry_refuses_the_whole_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 3);
    let mut bad = list(
        2,
        &[
            entry(1, 0, DenyStatus::Lost, 2),
            entry(2, 1, DenyStatus::Lost, 2),
        ],
    );
    bad.entries[1].1[0] ^= 1;
    let e = s.apply_deny_list(&bad).unwrap_err();
    assert!(
        matches!(e, StoreError::Deny(DenyError::BadMac { index: 1, .. })),
        "{e}"
    );
    assert!(e.to_string().contains("entry 1 (card "), "{e}");
    assert_eq!(s.deny_info().entries, 0);
    assert_eq!(
        menu_reason(&mut s, 0),
        None,
        "entry 0 was valid but not applied"
    );
    // Other refusals, each naming why.
    let cases = [
        (
            DenyList {
                merchant_id: "M-9".into(),
                ..list(1, &[entry(1, 0, DenyStatus::Lost, 2)])
            },
            "merchant",
        ),
        (
            list(0, &[entry(1, 0, DenyStatus::Lost, 2)]),
            "above the list's version",
        ),
        (
            list(
                3,
                &[
                    entry(2, 0, DenyStatus::Lost, 2),
                    entry(2, 1, DenyStatus::Lost, 2),
                ],
            ),
            "not above",
        ),
    ];
    for (l, says) in cases {
        let e = s.apply_deny_list(&l).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
        assert_eq!(s.deny_info().entries, 0);
    }
    // Applied once; the same entries again (a server ignoring `since`) are refused, and a list whose
    // version went backwards is reported as a rollback.
    s.apply_deny_list(&list(
        2,
        &[
            entry(1, 0, DenyStatus::Lost, 2),
            entry(2, 1, DenyStatus::Lost, 2),
        ],
    ))
    .unwrap();
    let again = s
        .apply_deny_list(&list(2, &[entry(2, 1, DenyStatus::Lost, 2)]))
        .unwrap_err();
    assert!(again.to_string().contains("not above 2"), "{again}");
    let back = s.apply_deny_list(&list(1, &[])).unwrap_err();
    assert!(back.to_string().contains("below the applied 2"), "{back}");
    assert_eq!(s.apply_deny_list(&list(2, &[])).unwrap().applied, 0);
    assert_eq!(s.deny_info().entries, 2);
}

#[test]
fn versions_beyond_int64_are_refused_and_leave_the_store_openable() {
    // Deny rows live in SQLite's signed integers: a larger version would be stored as another number,
    // fail its MAC at the next load and leave the store refusing to open.
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 2);
    let big = i64::MAX as u64 + 1;
    for l in [
        list(big, &[entry(big, 0, DenyStatus::Lost, 2)]),
        list(1, &[entry(1, 0, DenyStatus::Lost, big)]),
    ] {
        let e = s.apply_deny_list(&l).unwrap_err();
        assert!(e.to_string().contains("9223372036854775807"), "{e}");
        assert_eq!(s.deny_info().entries, 0);
    }
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(menu_reason(&mut s, 0), None);
    // The largest representable versions are applied and survive a restart.
    let max = i64::MAX as u64;
    s.apply_deny_list(&list(max, &[entry(max, 0, DenyStatus::Lost, max)]))
        .unwrap();
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(menu_reason(&mut s, 0), Some(DeclineReason::CardLost));
}
