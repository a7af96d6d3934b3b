//! Store behaviour: approvals, idempotent replays across restarts, voids, identity lockout, limits.

use redeemd::engine::DeclineReason;
use redeemd::store::{Decision, MenuOutcome, Queried, Request, Source, Store, verify};

use crate::support::*;

/// What QUERY of `txn` (`None`: LAST) of `reader` gets.
fn query(s: &mut Store, reader: &str, txn: Option<u32>) -> Queried {
    s.answer_query(reader, txn).unwrap()
}

fn stored(txn: u32, reply: &[u8]) -> Queried {
    Queried::Stored {
        txn_id: txn,
        reply: reply.to_vec(),
    }
}

#[test]
fn approval_is_replayed_byte_identically_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 3);
    let first = redeem(&mut s, "r1", 77, 1, &[(0, 2), (1, 1)], T0);
    let a = approved(&first).clone();
    assert_eq!(
        a.lines
            .iter()
            .map(|l| l.uses_left_after)
            .collect::<Vec<_>>(),
        vec![8, 1]
    );
    assert_eq!((a.first_seq, journal_rows(&s)), (1, 2));
    // The same transaction again: same bytes, nothing new written.
    let again = redeem(&mut s, "r1", 77, 1, &[(0, 2), (1, 1)], T0 + 1);
    assert_eq!(
        (again.reply.clone(), again.decision.clone(), again.source),
        (first.reply.clone(), None, Source::Replayed)
    );
    assert_eq!(journal_rows(&s), 2);
    drop(s);
    let mut s = open(dir.path());
    let after = redeem(&mut s, "r1", 77, 1, &[(0, 2), (1, 1)], T0 + 2);
    assert_eq!(after.reply, first.reply);
    assert_eq!(query(&mut s, "r1", Some(77)), stored(77, &first.reply));
    assert_eq!(query(&mut s, "r1", None), stored(77, &first.reply));
    // The id reused with other content (another card, other items): refused, nothing deducted, and
    // the stored answer stays what QUERY returns.
    let reused = redeem(&mut s, "r1", 77, 2, &[(0, 1)], T0 + 3);
    assert_eq!(reused.source, Source::Refused(DeclineReason::TxnIdReused));
    let reused = redeem_swiped(&mut s, "r1", 77, &[(0, 1)], None, T0 + 3);
    assert_eq!(reused.source, Source::Refused(DeclineReason::TxnIdReused));
    assert_eq!(query(&mut s, "r1", Some(77)), stored(77, &first.reply));
    assert_eq!(menu_left(&mut s, 1, T0 + 4), vec![(0, 8), (1, 1), (2, 3)]);
    // Another reader may use the same transaction id.
    assert_eq!(
        approved(&redeem(&mut s, "r2", 77, 1, &[(0, 1)], T0 + 5)).first_seq,
        3
    );
}

#[test]
fn declines_are_stored_and_write_no_journal_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 2);
    let cases: &[(u64, &[(u16, u64)], DeclineReason)] = &[
        (0, &[(0, 0)], DeclineReason::BadQuantity),
        (0, &[(0, 1 << 32)], DeclineReason::BadQuantity),
        (0, &[(0, u64::MAX)], DeclineReason::BadQuantity),
        (0, &[(3, 1)], DeclineReason::UnknownEntry),
        (0, &[(1, 3)], DeclineReason::InsufficientUses),
        (0, &[(2, 1)], DeclineReason::IdentityRequired),
        // The swipe itself declines: QUERY gets the swipe's answer.
        (99, &[(0, 1)], DeclineReason::CardUnknown),
    ];
    for (txn, (card, items, reason)) in cases.iter().enumerate() {
        let o = redeem(&mut s, "r1", txn as u64, *card, items, T0);
        assert_eq!(declined(&o), *reason, "case {txn}");
        let txn = u32::try_from(txn).unwrap();
        assert_eq!(query(&mut s, "r1", Some(txn)), stored(txn, &o.reply));
    }
    let body = payload("swipe 100 12ab");
    let bad = Request {
        reader_id: "r1",
        txn_id: 100,
        payload: &body,
    };
    let o = s
        .answer_card_presented(bad, "12ab", "c", now(T0), &REPLIES)
        .unwrap();
    assert_eq!(declined(&o), DeclineReason::BadCardNumber);
    assert_eq!(journal_rows(&s), 0);
    // The decline tells what is left.
    match redeem(&mut s, "r1", 101, 0, &[(1, 3)], T0).decision {
        Some(Decision::Declined(d)) => assert_eq!(d.remaining.unwrap().entries.len(), 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_cache_declines_and_menu_entry_version_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    assert_eq!(
        declined(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0)),
        DeclineReason::NoCache
    );
    s.install_bundle(&full(1, 1)[..], now(T0)).unwrap();
    // The menu showed entry version 1; the card's entry is re-signed at version 2 before the REDEEM.
    swipe(&mut s, "r", 2, 0, T0);
    s.install_bundle(&full(2, 1)[..], now(T0)).unwrap();
    assert_eq!(
        declined(&redeem_swiped(&mut s, "r", 2, &[(0, 1)], None, T0)),
        DeclineReason::MenuChanged
    );
    approved(&redeem(&mut s, "r", 3, 0, &[(0, 1)], T0));
}

#[test]
fn void_restores_uses_once_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 1);
    let a = approved(&redeem(&mut s, "r", 1, 0, &[(0, 3), (1, 2)], T0)).clone();
    assert_eq!(menu_left(&mut s, 0, T0), vec![(0, 7), (2, 3)]);
    assert_eq!(
        declined(&void(&mut s, "r", 2, "00000199", T0)),
        DeclineReason::UnknownAuthCode
    );
    let v = void(&mut s, "r", 3, &a.auth_code, T0 + HOUR);
    match &v.decision {
        Some(Decision::Voided(va)) => {
            assert_eq!(va.original_auth_code, a.auth_code);
            assert_eq!(
                va.lines
                    .iter()
                    .map(|l| (l.quantity, l.uses_left_after))
                    .collect::<Vec<_>>(),
                vec![(3, Some(10)), (2, Some(2))]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        menu_left(&mut s, 0, T0 + HOUR),
        vec![(0, 10), (1, 2), (2, 3)]
    );
    assert_eq!(
        declined(&void(&mut s, "r", 4, &a.auth_code, T0 + HOUR)),
        DeclineReason::AlreadyVoided
    );
    // Replay of the void: same bytes, no second restore.
    assert_eq!(void(&mut s, "r", 3, &a.auth_code, T0 + HOUR).reply, v.reply);
    let b = approved(&redeem(&mut s, "r", 5, 0, &[(0, 1)], T0 + HOUR)).clone();
    assert_eq!(
        declined(&void(&mut s, "r", 6, &b.auth_code, T0 + 30 * HOUR)),
        DeclineReason::VoidWindowPassed
    );
    // A void record cannot itself be voided.
    let vcode = redeemd_contract::journal::auth_code(&keys().journal, TERMINAL, 3);
    assert_eq!(
        declined(&void(&mut s, "r", 7, &vcode, T0 + 30 * HOUR)),
        DeclineReason::UnknownAuthCode
    );
    let report = verify::journal(s.connection(), &keys()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
}

#[test]
fn identity_lockout_is_durable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 1);
    let attempt = |s: &mut Store, txn: u64, id: &[u8], at: i64| {
        swipe(s, "r", txn, 0, at);
        redeem_swiped(s, "r", txn, &[(2, 1)], Some(id), at)
    };
    assert_eq!(
        declined(&attempt(&mut s, 1, b"0000", T0)),
        DeclineReason::IdentityWrong
    );
    assert_eq!(
        declined(&attempt(&mut s, 2, b"1111", T0)),
        DeclineReason::IdentityWrong
    );
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(
        declined(&attempt(&mut s, 3, b"2222", T0)),
        DeclineReason::IdentityLockedOut
    );
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(
        declined(&attempt(&mut s, 4, PHONE_LAST4, T0 + 1)),
        DeclineReason::IdentityLockedOut
    );
    let ok = attempt(&mut s, 5, PHONE_LAST4, T0 + HOUR);
    assert_eq!(approved(&ok).lines[0].uses_left_after, 2);
}

#[test]
fn clock_set_back_is_refused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 1);
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0 + 10 * HOUR));
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(
        declined(&redeem(&mut s, "r", 2, 0, &[(0, 1)], T0)),
        DeclineReason::ClockNotTrusted
    );
    approved(&redeem(&mut s, "r", 3, 0, &[(0, 1)], T0 + 10 * HOUR + 1));
}

#[test]
fn offline_limits_reset_when_the_platform_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.limits.max_offline_redemptions = 2;
    let mut s = Store::open(dir.path(), keys(), cfg.clone()).unwrap();
    s.install_bundle(&full(1, 2)[..], now(T0)).unwrap();
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0));
    approved(&redeem(&mut s, "r", 2, 1, &[(0, 1), (1, 1)], T0));
    assert_eq!(
        declined(&redeem(&mut s, "r", 3, 0, &[(0, 1)], T0)),
        DeclineReason::TerminalOfflineLimitReached
    );
    assert!(s.mark_synced(99).is_err());
    s.mark_synced(3).unwrap();
    drop(s);
    let mut s = Store::open(dir.path(), keys(), cfg).unwrap();
    assert_eq!(s.journal_info().offline_redemptions, 0);
    approved(&redeem(&mut s, "r", 4, 0, &[(0, 1)], T0));
}

#[test]
fn card_numbers_never_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 5);
    for i in 0..5 {
        approved(&redeem(&mut s, "r", i, i, &[(0, 1)], T0));
        let _ = s.menu(&number(i), now(T0)).unwrap();
    }
    let check = |dir: &std::path::Path| {
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for i in 0..5 {
                let n = number(i);
                for needle in [n.as_bytes(), &n.as_bytes()[6..15]] {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle),
                        "card number {i} found on disk"
                    );
                }
            }
        }
    };
    check(dir.path()); // database and WAL while open
    drop(s);
    check(dir.path());
}

#[test]
fn opening_with_another_terminal_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(store_with_cards(dir.path(), 1));
    let mut cfg = config();
    cfg.terminal_id = "T-0002".into();
    let err = Store::open(dir.path(), secret().derive_all("T-0002"), cfg).unwrap_err();
    assert!(err.to_string().contains("T-0001"), "{err}");
}

#[test]
fn requests_print_masked_and_the_database_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_cards(dir.path(), 1);
    let mode = std::fs::metadata(dir.path().join(redeemd::store::DB_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "database mode {mode:o}");
    drop(s);
    // A request's payload may hold the card number: its Debug form shows only its length.
    let n = number(0);
    let body = payload(&format!("swipe 1 {n} identity 1234"));
    let req = Request {
        reader_id: "r",
        txn_id: 1,
        payload: &body,
    };
    let printed = format!("{req:?}");
    assert!(
        !printed.contains(&n) && !printed.contains("1234") && printed.contains("bytes"),
        "{printed}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..proptest::prelude::ProptestConfig::default() })]

    /// Random redemptions and voids through the real store: uses left never go below zero and always equal
    /// the snapshot figure minus the fold of the journal; the chain and usage rows always verify.
    #[test]
    fn random_redemptions_and_voids_keep_uses_left_equal_to_the_journal(
        ops in proptest::collection::vec((0u8..4, 0u64..2, 0u16..3, 1u64..4, proptest::prelude::any::<u16>()), 1..30)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with_cards(dir.path(), 2);
        let mut codes: Vec<String> = Vec::new();
        for (i, (op, card, index, qty, pick)) in ops.into_iter().enumerate() {
            let txn = i as u64;
            let at = T0 + txn as i64 * 1000;
            if op == 0 && !codes.is_empty() {
                let code = codes[usize::from(pick) % codes.len()].clone();
                let _ = void(&mut s, "p", txn, &code, at);
            } else {
                swipe(&mut s, "p", txn, card, at);
                if let Some(Decision::Redeemed(a)) = redeem_swiped(&mut s, "p", txn, &[(index, qty)], Some(PHONE_LAST4), at).decision {
                    codes.push(a.auth_code);
                }
            }
            for card in 0..2u64 {
                let net = |svc: &str| -> i64 {
                    s.connection().query_row(
                        "SELECT coalesce(sum(CASE kind WHEN 1 THEN quantity ELSE -quantity END), 0) FROM journal WHERE card_ref = ?1 AND service_code = ?2",
                        rusqlite::params![&card_ref(card).0[..], svc],
                        |r| r.get(0),
                    ).unwrap()
                };
                let expected = [(0u16, 10 - net("WASH")), (1, 2 - net("WAX")), (2, 3 - net("OIL"))];
                for (_, left) in expected {
                    proptest::prop_assert!(left >= 0);
                }
                let shown: Vec<(u16, i64)> = match s.menu(&number(card), now(at)).unwrap() {
                    MenuOutcome::Menu(m) => m.entries.iter().map(|e| (e.index, i64::from(e.uses_left))).collect(),
                    MenuOutcome::Declined(d) => { proptest::prop_assert_eq!(d.reason, DeclineReason::InsufficientUses); Vec::new() }
                };
                let want: Vec<(u16, i64)> = expected.iter().copied().filter(|(_, l)| *l > 0).collect();
                proptest::prop_assert_eq!(shown, want);
            }
        }
        let report = verify::journal(s.connection(), &keys()).unwrap();
        proptest::prop_assert!(report.is_clean(), "{:?}", report.findings);
    }
}

#[test]
fn maintenance_checkpoints_off_the_commit_path_and_loses_nothing() {
    use redeemd::store::CHECKPOINT_EVERY_COMMITS;
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 4);
    // Right after open the WAL contents are unknown: the first call checkpoints.
    assert!(s.maintenance().unwrap().checkpointed);
    // Then nothing to do until enough commits have accumulated.
    approved(&redeem(&mut s, "r", 1, 0, &[(0, 1)], T0));
    assert_eq!(s.maintenance().unwrap(), Default::default());
    for txn in 2..=u64::from(CHECKPOINT_EVERY_COMMITS) {
        approved(&redeem(&mut s, "r", txn, txn % 4, &[(0, 1)], T0));
    }
    let m = s.maintenance().unwrap();
    assert!(m.checkpointed && !m.busy, "{m:?}");
    assert!(m.wal_frames >= u64::from(CHECKPOINT_EVERY_COMMITS), "{m:?}");
    assert_eq!(m.checkpointed_frames, m.wal_frames);
    // The WAL was restarted by the maintenance itself: it now holds only that no-op write.
    let frames: i64 = s
        .connection()
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .unwrap();
    assert!(frames <= 1, "{frames} frames left in the WAL");
    // Everything is still there and verifies, also after a restart.
    let code = approved(&redeem(&mut s, "r", 100, 1, &[(0, 1)], T0))
        .auth_code
        .clone();
    drop(s);
    let mut s = open(dir.path());
    assert!(verify::journal(s.connection(), &keys()).unwrap().is_clean());
    assert_eq!(
        s.journal_info().head_seq,
        u64::from(CHECKPOINT_EVERY_COMMITS) + 1
    );
    assert!(matches!(
        void(&mut s, "r", 101, &code, T0 + 1).decision,
        Some(Decision::Voided(_))
    ));
    assert!(matches!(
        query(&mut s, "r", Some(100)),
        Queried::Stored { .. }
    ));
}

/// `redeemd sync` and the daemon each hold a store on the same state directory: an acknowledgement the
/// other one recorded first must still show in this one's view (a stale view had the sync pass send the
/// same batch forever).
#[test]
fn an_acknowledgement_recorded_by_another_connection_shows_in_this_ones_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = store_with_cards(dir.path(), 2);
    approved(&redeem(&mut daemon, "r", 1, 0, &[(0, 1)], T0));
    approved(&redeem(&mut daemon, "r", 2, 1, &[(0, 1)], T0));
    let mut cli = open(dir.path());
    cli.mark_synced(2).unwrap();
    assert_eq!(
        daemon.journal_info().synced_through_seq,
        0,
        "not reloaded yet"
    );
    daemon.mark_synced(1).unwrap();
    assert_eq!(daemon.journal_info().synced_through_seq, 2);
    daemon.mark_synced(2).unwrap();
    assert_eq!(daemon.journal_info().synced_through_seq, 2);
}

#[test]
fn a_price_the_journal_cannot_hold_is_declined_not_approved_into_an_unreadable_row() {
    // The journal keeps amounts in a signed 64-bit column: a signed entry whose price × quantity
    // does not fit must be refused before anything is written, not approved into a row that every
    // later read (upload, export, report) takes for a tampered one.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let mut c = card(0, 10);
    c.packages[0].items[0].price_fen = 1 << 62; // × 2 = 2^63, one more than i64::MAX
    let b = bundle(
        redeemd_contract::snapshot::BundleKind::Full,
        1,
        0,
        &[(0, Some(c))],
        T0 + 1000 * HOUR,
    );
    s.install_bundle(&b[..], now(T0)).unwrap();
    let o = redeem(&mut s, "r", 1, 0, &[(0, 2)], T0);
    assert_eq!(declined(&o), DeclineReason::BadQuantity);
    assert_eq!(journal_rows(&s), 0);
    // One of them fits, and its row reads back.
    approved(&redeem(&mut s, "r", 2, 0, &[(0, 1)], T0));
    let rows = s.journal_records(1, 10).unwrap();
    assert_eq!(rows[0].0.amount_fen, 1 << 62);
}

#[test]
fn a_bundle_version_the_store_cannot_hold_is_refused_and_the_cache_kept() {
    // Versions are kept in SQLite's signed 64-bit integers: a signed bundle with a larger version
    // must be refused like any bad bundle, not installed into rows that no longer verify (which
    // left a store that refused to open).
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with_cards(dir.path(), 2);
    let huge = 1u64 << 63;
    let b = bundle(
        redeemd_contract::snapshot::BundleKind::Full,
        huge,
        1,
        &[(0, Some(card(0, 10)))],
        T0 + 1000 * HOUR,
    );
    let e = s.install_bundle(&b[..], now(T0)).unwrap_err();
    assert!(e.to_string().contains(&huge.to_string()), "{e}");
    assert_eq!(s.cache_info().unwrap().unwrap().manifest.version, 1);
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(s.cache_info().unwrap().unwrap().manifest.version, 1);
    approved(&redeem(&mut s, "r", 1, 1, &[(0, 1)], T0));
}

/// `redeemd sync` beside the daemon: a connection reloads its view (after recording an
/// acknowledgement, or when it sees another connection's commit) while the daemon's appends. The reload
/// reads the MACed chain head and the journal's last row; if a commit lands between the two reads, they
/// are from different moments, and the view must not call that removed or added rows. (Bounded soak:
/// several reloading connections, five hundred commits; the window is two statements wide.)
#[test]
fn a_view_reloaded_while_another_connection_appends_sees_one_consistent_moment() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = store_with_cards(dir.path(), 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloaders: Vec<_> = (0..4)
        .map(|_| {
            let mut cli = open(dir.path());
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    cli.refresh().map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    let mut approvals = 0;
    for txn in 0..500 {
        let o = redeem(&mut daemon, "r1", txn, txn % 200, &[(0, 1)], T0);
        approvals += u64::from(matches!(o.decision, Some(Decision::Redeemed(_))));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads: Vec<_> = reloaders.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(approvals, 500);
    assert!(reloads.iter().all(Result::is_ok), "{reloads:?}");
}
