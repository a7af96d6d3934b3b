//! Snapshot and delta installs: atomic, verified, rollback refused, bad entries named.

use redeemd::engine::DeclineReason;
use redeemd::store::{MenuOutcome, StoreError};
use redeemd_contract::CardStatus;
use redeemd_contract::snapshot::BundleKind;

use crate::support::*;

fn version(s: &redeemd::store::Store) -> u64 {
    s.cache_info().unwrap().unwrap().manifest.version
}

#[test]
fn a_bad_entry_mac_is_named_and_the_old_cache_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 3);
    let mut b = full(2, 5);
    // Flip one byte inside the third entry's body: find it by walking the frames.
    let mut pos = 8;
    let mut frame = 0;
    while frame < 3 {
        let len = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 4 + len;
        frame += 1;
    }
    b[pos + 4 + 40] ^= 0x01; // frame 3 = entry index 2
    let err = s.install_bundle(&b[..], now(T0)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("entry 2 (card ") && msg.contains("MAC mismatch"),
        "{msg}"
    );
    assert_eq!(version(&s), 1);
    assert_eq!(s.cache_info().unwrap().unwrap().entries, 3);
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0));
}

#[test]
fn every_truncation_of_a_bundle_is_refused_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 2);
    let b = full(2, 3);
    for cut in (0..b.len()).step_by(37) {
        assert!(
            s.install_bundle(&b[..cut], now(T0)).is_err(),
            "cut at {cut}"
        );
        assert_eq!(version(&s), 1);
    }
    let mut extra = b.clone();
    extra.push(0);
    assert!(s.install_bundle(&extra[..], now(T0)).is_err());
    s.install_bundle(&b[..], now(T0)).unwrap();
    assert_eq!(
        (version(&s), s.cache_info().unwrap().unwrap().entries),
        (2, 3)
    );
}

#[test]
fn older_or_equal_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.install_bundle(&full(5, 2)[..], now(T0)).unwrap();
    for v in [1, 4, 5] {
        match s.install_bundle(&full(v, 2)[..], now(T0)) {
            Err(StoreError::Rollback {
                offered,
                installed: 5,
            }) => assert_eq!(offered, v),
            other => panic!("version {v}: {other:?}"),
        }
    }
    assert_eq!(version(&s), 5);
}

#[test]
fn deltas_change_and_remove_cards_and_need_the_right_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 3);
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 2)], T0));
    let mut lost = card(1, 10);
    lost.status = CardStatus::Lost;
    let mut refreshed = card(0, 10);
    refreshed.packages[0].items[0].uses_left = 8; // the platform has seen seq 1
    refreshed.usage_through_seq = 1;
    let changes = vec![
        (0, Some(refreshed)),
        (1, Some(lost)),
        (2, None),
        (7, Some(card(7, 4))),
    ];
    let wrong_base = bundle(BundleKind::Delta, 3, 2, &changes, T0 + 1000 * HOUR);
    assert!(matches!(
        s.install_bundle(&wrong_base[..], now(T0)),
        Err(StoreError::DeltaBase {
            base: 2,
            installed: 1
        })
    ));
    let delta = bundle(BundleKind::Delta, 2, 1, &changes, T0 + 1000 * HOUR);
    let r = s.install_bundle(&delta[..], now(T0)).unwrap();
    assert_eq!((r.upserts, r.removals), (3, 1));
    assert_eq!(
        declined(&redeem(&mut s, "r", 2, 1, &[(0, 1)], T0)),
        DeclineReason::CardLost
    );
    assert_eq!(
        declined(&redeem(&mut s, "r", 3, 2, &[(0, 1)], T0)),
        DeclineReason::CardUnknown
    );
    assert_eq!(
        approved(&redeem(&mut s, "r", 4, 7, &[(0, 4)], T0)).lines[0].uses_left_after,
        0
    );
    // Card 0: 8 left as of seq 1, no double counting of the 2 already redeemed.
    assert_eq!(
        approved(&redeem(&mut s, "r", 5, 0, &[(0, 1)], T0)).lines[0].uses_left_after,
        7
    );
    // Replaying the same delta is a rollback.
    assert!(matches!(
        s.install_bundle(&delta[..], now(T0)),
        Err(StoreError::Rollback { .. })
    ));
}

#[test]
fn an_expired_cache_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let cards = vec![(0, Some(card(0, 10)))];
    s.install_bundle(
        &bundle(BundleKind::Full, 1, 0, &cards, T0 + HOUR)[..],
        now(T0),
    )
    .unwrap();
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0));
    assert_eq!(
        declined(&redeem(&mut s, "r", 2, 0, &[(0, 1)], T0 + HOUR)),
        DeclineReason::CacheExpired
    );
    assert!(
        matches!(s.menu(&number(0), now(T0 + 2 * HOUR)).unwrap(), MenuOutcome::Declined(d) if d.reason == DeclineReason::CacheExpired)
    );
}

#[test]
fn bundles_for_another_terminal_merchant_or_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let other = redeemd_contract::TerminalSecret::from_bytes(&[9; 32])
        .unwrap()
        .derive_all(TERMINAL);
    let mut signer =
        redeemd_contract::snapshot::BundleSigner::new(&other.cache, BundleKind::Full, MERCHANT, 1);
    let mut b = signer.header();
    b.extend(signer.entry(&card_ref(0), Some(&card(0, 1))).unwrap());
    b.extend(signer.finish(TERMINAL, &[], 0, T0, T0 + HOUR).1);
    assert!(
        s.install_bundle(&b[..], now(T0))
            .unwrap_err()
            .to_string()
            .contains("MAC mismatch")
    );
    let k = keys();
    let signer =
        redeemd_contract::snapshot::BundleSigner::new(&k.cache, BundleKind::Full, "M-9999", 1);
    let b = [
        signer.header(),
        signer.finish(TERMINAL, &[], 0, T0, T0 + HOUR).1,
    ]
    .concat();
    assert!(matches!(
        s.install_bundle(&b[..], now(T0)),
        Err(StoreError::WrongMerchant { .. })
    ));
    let signer =
        redeemd_contract::snapshot::BundleSigner::new(&k.cache, BundleKind::Full, MERCHANT, 1);
    let b = [
        signer.header(),
        signer.finish("T-0002", &[], 0, T0, T0 + HOUR).1,
    ]
    .concat();
    assert!(
        s.install_bundle(&b[..], now(T0))
            .unwrap_err()
            .to_string()
            .contains("terminal")
    );
    assert!(
        s.install_bundle(&b"not a bundle at all"[..], now(T0))
            .is_err()
    );
    assert!(s.cache_info().unwrap().is_none());
}

/// A full install runs in chunks with the store free in between: redemptions made from another thread
/// while the install is in progress are decided (from the old cache) and committed between chunks;
/// the swap then installs the whole new cache at once.
#[test]
fn redemptions_go_through_while_a_big_full_snapshot_installs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use redeemd::store::owner::{Clock, StoreHandle};

    const N: u64 = 12_000;
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let plenty = |i| card(i, 1_000_000);
    s.install_bundle(
        &bundle(
            BundleKind::Full,
            1,
            0,
            &[(0, Some(plenty(0)))],
            T0 + 1000 * HOUR,
        )[..],
        now(T0),
    )
    .unwrap();
    let cards: Vec<_> = (0..N).map(|i| (i, Some(plenty(i)))).collect();
    let big = bundle(BundleKind::Full, 2, 1, &cards, T0 + 1000 * HOUR);
    let handle = StoreHandle::new(s, Clock::new());
    let done = Arc::new(AtomicBool::new(false));
    let installer = {
        let mut h = handle.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let r = redeemd::store::install_from_reader(&mut h, &big[..]);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    // (redemptions approved while staged rows existed, all redemptions)
    let (mut during, mut total) = (0u64, 0u64);
    while !done.load(Ordering::SeqCst) && total < 900 {
        total += 1;
        handle
            .run_blocking(|s, _| {
                let staging: bool = s
                    .connection()
                    .query_row(
                        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'cache_staging'",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                let staged = staging
                    && s.connection()
                        .query_row("SELECT EXISTS (SELECT 1 FROM cache_staging)", [], |r| {
                            r.get::<_, bool>(0)
                        })
                        .unwrap();
                approved(&redeem(s, "r", total, 0, &[(0, 1)], T0));
                during += u64::from(staged);
            })
            .unwrap();
    }
    let report = installer.join().unwrap().unwrap();
    eprintln!("{during} of {total} redemptions made while entries were staged");
    assert_eq!((report.manifest.version, report.upserts), (2, N));
    assert!(
        during >= 3,
        "only {during} of {total} redemptions interleaved with the staged install"
    );
    handle
        .run_blocking(|s, _| {
            assert_eq!(s.cache_info().unwrap().unwrap().entries, N);
            assert_eq!(s.journal_info().head_seq, total);
            // The redemptions made during the install still count against the card afterwards.
            approved(&redeem(s, "r", 10_000, 0, &[(0, 1)], T0));
        })
        .unwrap();
}

/// A card's usage lives in its cache row, so a full install must carry every card's usage into the
/// new table: in chunks while the store is free, and again at the swap for what changed meanwhile. A
/// card the new snapshot drops keeps its usage (a void may still name it; it may come back).
#[test]
fn a_full_install_carries_every_cards_usage_including_redemptions_made_while_it_ran() {
    use redeemd::engine::Now;
    use redeemd::store::{CARRY_SCAN_ROWS, Store, StoreAccess};

    /// Redeems one use of card 1 after every step of the install once usage carrying has begun.
    struct RedeemingBetweenSteps<'a> {
        store: &'a mut Store,
        redeemed: u64,
    }
    impl StoreAccess for RedeemingBetweenSteps<'_> {
        fn with<T>(
            &mut self,
            f: impl FnOnce(&mut Store, Now) -> Result<T, StoreError>,
        ) -> Result<T, StoreError> {
            let out = f(self.store, now(T0));
            let carrying: bool = self
                .store
                .connection()
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'cache_staging') \
                     AND (SELECT count(*) FROM journal) >= 4",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            if carrying {
                self.redeemed += 1;
                approved(&redeem(
                    self.store,
                    "r",
                    1000 + self.redeemed,
                    1,
                    &[(0, 1)],
                    T0,
                ));
            }
            out
        }
    }

    let n = 2 * CARRY_SCAN_ROWS as u64 + 100;
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let cards: Vec<_> = (0..n).map(|i| (i, Some(card(i, 1000)))).collect();
    s.install_bundle(
        &bundle(BundleKind::Full, 1, 0, &cards, T0 + 1000 * HOUR)[..],
        now(T0),
    )
    .unwrap();
    // Usage spread over the carry's chunks, and on the card the next snapshot drops.
    let dropped = n - 1;
    for (txn, c) in [0, CARRY_SCAN_ROWS as u64 + 7, dropped]
        .into_iter()
        .enumerate()
    {
        approved(&redeem(&mut s, "r", txn as u64, c, &[(0, 2)], T0));
    }
    approved(&redeem(&mut s, "r", 3, 1, &[(0, 1)], T0));
    let next = bundle(
        BundleKind::Full,
        2,
        1,
        &cards[..cards.len() - 1],
        T0 + 1000 * HOUR,
    );
    let mut access = RedeemingBetweenSteps {
        store: &mut s,
        redeemed: 0,
    };
    redeemd::store::install_from_reader(&mut access, &next[..]).unwrap();
    let during = access.redeemed;
    assert!(during >= 3, "only {during} redemptions between carry steps");
    assert_eq!(version(&s), 2);
    assert_eq!(menu_left(&mut s, 0, T0)[0], (0, 998));
    assert_eq!(
        menu_left(&mut s, CARRY_SCAN_ROWS as u64 + 7, T0)[0],
        (0, 998)
    );
    // Card 1: one use before the install and one after each step of it, every one still counted.
    assert_eq!(menu_left(&mut s, 1, T0)[0], (0, 999 - during as u32));
    assert_eq!(menu_left(&mut s, 2, T0)[0], (0, 1000));
    assert!(matches!(
        s.menu(&number(dropped), now(T0)).unwrap(),
        MenuOutcome::Declined(d) if d.reason == DeclineReason::CardUnknown
    ));
    // Nothing lost: the usage of every card, the dropped one included, matches the journal.
    let journal = redeemd::store::verify::journal(s.connection(), &keys()).unwrap();
    assert!(journal.is_clean(), "{:?}", journal.findings);
    let cache = redeemd::store::verify::cache(s.connection(), &keys())
        .unwrap()
        .1;
    assert!(cache.is_clean(), "{:?}", cache.findings);
    assert_eq!(cache.checked, n - 1);
}

/// A delta that removes a card with usage keeps the usage (entry columns cleared); one that brings the
/// card back finds it again.
#[test]
fn a_delta_removing_a_used_card_keeps_its_usage_for_when_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 3);
    approved(&redeem(&mut s, "r", 1, 2, &[(0, 3)], T0));
    let remove = bundle(BundleKind::Delta, 2, 1, &[(2, None)], T0 + 1000 * HOUR);
    s.install_bundle(&remove[..], now(T0)).unwrap();
    assert!(matches!(
        s.menu(&number(2), now(T0)).unwrap(),
        MenuOutcome::Declined(d) if d.reason == DeclineReason::CardUnknown
    ));
    assert!(
        redeemd::store::verify::journal(s.connection(), &keys())
            .unwrap()
            .is_clean()
    );
    let back = bundle(
        BundleKind::Delta,
        3,
        2,
        &[(2, Some(card(2, 10)))],
        T0 + 1000 * HOUR,
    );
    s.install_bundle(&back[..], now(T0)).unwrap();
    assert_eq!(menu_left(&mut s, 2, T0)[0], (0, 7));
}

#[test]
fn an_entry_counting_records_beyond_the_local_journal_is_refused() {
    // A terminal restored from an older backup: the platform counted this terminal's records
    // through seq 3, the restored journal ends at seq 1. Installing that entry would take the
    // records the counter writes next at seqs 2 and 3 as already counted.
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 2);
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0));
    let mut ahead = card(0, 10);
    ahead.usage_through_seq = 3;
    let b = bundle(
        BundleKind::Delta,
        2,
        1,
        &[(0, Some(ahead))],
        T0 + 1000 * HOUR,
    );
    match s.install_bundle(&b[..], now(T0)) {
        Err(
            e @ StoreError::AheadOfJournal {
                through: 3,
                head: 1,
                ..
            },
        ) => {
            assert!(e.to_string().contains("restored from a backup"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(version(&s), 1, "the old cache stays");
    // Counted through the journal's own head, the same entry installs.
    let mut caught_up = card(0, 10);
    caught_up.usage_through_seq = 1;
    let b = bundle(
        BundleKind::Delta,
        2,
        1,
        &[(0, Some(caught_up))],
        T0 + 1000 * HOUR,
    );
    s.install_bundle(&b[..], now(T0)).unwrap();
    assert_eq!(version(&s), 2);
}
