//! The simulator over real pseudo-terminals against a small in-test host built on
//! `firmware_protocol::HostSession`: it opens the slave path (through the symlink) exclusively, as
//! the daemon does, answers CARD_PRESENTED with a fixed menu and REDEEM with APPROVED, stores its
//! answers and replays them for repeats and QUERY.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware_protocol::{
    Approved, CardMenu, Config, Date, DeclineReason, Declined, Display, Encodings, EntryMode,
    HostSession, IdentityCheck, Instant as ProtoInstant, List, MAX_MESSAGE_LEN, MenuEntry, Message,
    MessageType, OwnedEvent, PeerChange, Query, Text, TextEncoding, UsesLeft, VoidReason,
    WIRE_BUF_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_serial::SerialPortBuilderExt;

use super::scenario::{self, Expectation, Step};
use super::*;

/// A card the host never answers (to test T_TXN).
const SILENT_CARD: &str = "6222029999999999";
/// A card the host declines as unknown.
const UNKNOWN_CARD: &str = "6222020000000000";
const CARD: &str = "6222020000000001";
/// A card whose REDEEM the host commits and then "crashes" before answering (new HostSession).
const CRASH_CARD: &str = "6222020000000002";
/// A card whose first CARD_PRESENTED the host loses in a restart (nothing stored).
const LOST_SWIPE_CARD: &str = "6222020000000003";

#[derive(Debug, Default)]
struct HostLog {
    /// Requests received, by type.
    requests: Vec<MessageType>,
    /// New approvals decided (not replays).
    approvals: u32,
    peer_changes: Vec<PeerChange>,
    /// What a read on the slave returned when it ended the connection ("eof" or the error).
    read_ends: Vec<String>,
    opens: u32,
    /// Host session restarts (CRASH_CARD).
    restarts: u32,
    /// Damaged frames the host saw (bad CRC, COBS, length...).
    damaged_frames: u32,
}

struct TestHost {
    log: Arc<Mutex<HostLog>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestHost {
    fn start(path: &Path) -> TestHost {
        let log = Arc::new(Mutex::new(HostLog::default()));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(host_task(path.to_path_buf(), stopped, log.clone()));
        TestHost {
            log,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn log<T>(&self, f: impl FnOnce(&HostLog) -> T) -> T {
        f(&self.log.lock().unwrap())
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

fn text(s: &str, encoding: TextEncoding) -> Vec<u8> {
    match encoding {
        TextEncoding::Utf8 => s.as_bytes().to_vec(),
        TextEncoding::Gb18030 => encoding_rs::GB18030.encode(s).0.into_owned(),
    }
}

fn emit(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let len = message.emit(&mut buf).unwrap();
    buf.truncate(len);
    buf
}

/// The host's application: answers, stored per (txn, request type) and latest per txn.
#[derive(Default)]
struct HostApp {
    by_request: HashMap<(u32, MessageType), (MessageType, Vec<u8>)>,
    latest: HashMap<u32, (MessageType, Vec<u8>)>,
    last_txn: Option<u32>,
    journal: u32,
    /// Txn ids of CRASH_CARD swipes.
    crash_txns: Vec<u32>,
    /// Set when the host must drop its session instead of answering.
    crash_now: bool,
    lost_a_swipe: bool,
}

impl HostApp {
    /// `(DISPLAY first?, answer)` for a request, or `None` to stay silent.
    fn answer(
        &mut self,
        msg: &Message<'_>,
        encoding: TextEncoding,
        log: &mut HostLog,
    ) -> Option<(bool, MessageType, Vec<u8>)> {
        let key = match msg {
            Message::CardPresented(m) => (m.txn_id, MessageType::CardPresented),
            Message::Redeem(m) => (m.txn_id, MessageType::Redeem),
            Message::Void(m) => (m.txn_id, MessageType::Void),
            Message::Query(q) => {
                let stored = match q {
                    Query::Last => self.last_txn.and_then(|t| self.latest.get(&t)),
                    Query::Txn(t) => self.latest.get(t),
                };
                return Some(match stored {
                    Some((t, p)) => (false, *t, p.clone()),
                    None => {
                        let txn_id = match q {
                            Query::Txn(t) => *t,
                            Query::Last => 0,
                        };
                        let t = text("no such transaction", encoding);
                        let d = Declined {
                            txn_id,
                            reason: DeclineReason::TXN_UNKNOWN,
                            text: Text::new(&t),
                        };
                        (false, MessageType::Declined, emit(&Message::Declined(d)))
                    }
                });
            }
            _ => return None,
        };
        if let Some((t, p)) = self.by_request.get(&key) {
            return Some((false, *t, p.clone()));
        }
        if matches!(msg, Message::CardPresented(m) if m.card == LOST_SWIPE_CARD)
            && !self.lost_a_swipe
        {
            self.lost_a_swipe = true;
            self.crash_now = true;
            return None;
        }
        let (display, answer_type, payload) = match msg {
            Message::CardPresented(m) if m.card == SILENT_CARD => return None,
            Message::CardPresented(m) if m.card == UNKNOWN_CARD => {
                let t = text("卡未登记 Card unknown", encoding);
                let d = Declined {
                    txn_id: m.txn_id,
                    reason: DeclineReason::CARD_UNKNOWN,
                    text: Text::new(&t),
                };
                (false, MessageType::Declined, emit(&Message::Declined(d)))
            }
            Message::CardPresented(m) => {
                if m.card == CRASH_CARD {
                    self.crash_txns.push(m.txn_id);
                }
                let holder = text("张三", encoding);
                let wash = text("洗车 Car wash", encoding);
                let oil = text("换机油 Oil change", encoding);
                let entries = [
                    MenuEntry {
                        index: 0,
                        title: Text::new(&wash),
                        uses_left: 9,
                        expiry: Some(Date {
                            year: 2027,
                            month: 6,
                            day: 30,
                        }),
                        identity: IdentityCheck::None,
                    },
                    MenuEntry {
                        index: 1,
                        title: Text::new(&oil),
                        uses_left: 2,
                        expiry: None,
                        identity: IdentityCheck::PhoneLast4,
                    },
                ];
                let menu = CardMenu {
                    txn_id: m.txn_id,
                    holder_name: Text::new(&holder),
                    masked_card: "6222 **** **** 0001",
                    entries: List::new(&entries),
                };
                (false, MessageType::CardMenu, emit(&Message::CardMenu(menu)))
            }
            Message::Redeem(_) | Message::Void(_) => {
                let (txn_id, prefix) = match msg {
                    Message::Redeem(m) => (m.txn_id, "A"),
                    Message::Void(m) => (m.txn_id, "V"),
                    _ => unreachable!(),
                };
                self.journal += 1;
                log.approvals += 1;
                let auth = format!("{prefix}{txn_id:04}");
                let journal = format!("J-{:06}", self.journal);
                let line = text("洗车 Car wash x1  left 8", encoding);
                let receipt = [Text::new(&line)];
                let left = [UsesLeft {
                    entry_index: 0,
                    uses_left: 8,
                }];
                let approved = Approved {
                    txn_id,
                    auth_code: &auth,
                    journal_ref: &journal,
                    uses_left: List::new(&left),
                    receipt: List::new(&receipt),
                };
                (
                    true,
                    MessageType::Approved,
                    emit(&Message::Approved(approved)),
                )
            }
            _ => return None,
        };
        self.by_request.insert(key, (answer_type, payload.clone()));
        self.latest.insert(key.0, (answer_type, payload.clone()));
        self.last_txn = Some(key.0);
        if matches!(msg, Message::Redeem(m) if self.crash_txns.contains(&m.txn_id)) {
            // Committed, answer stored, and the host restarts before sending it.
            self.crash_now = true;
            return None;
        }
        Some((display, answer_type, payload))
    }
}

/// Opens `path` (retrying while it is missing or being re-pointed), serves until the read ends,
/// then opens it again; the HostSession survives reopenings, as a daemon's would.
async fn host_task(path: PathBuf, mut stop: oneshot::Receiver<()>, log: Arc<Mutex<HostLog>>) {
    let epoch = tokio::time::Instant::now();
    let now = move || ProtoInstant::from_millis(epoch.elapsed().as_millis() as u64);
    let mut session = HostSession::new(Config::new(115_200));
    let mut app = HostApp::default();
    let mut wire = [0u8; WIRE_BUF_LEN];
    'open: loop {
        let port = tokio_serial::new(path.to_string_lossy(), 115_200).open_native_async();
        let Ok(mut port) = port else {
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => continue 'open,
            }
        };
        log.lock().unwrap().opens += 1;
        let mut buf = [0u8; 4096];
        loop {
            let wake = session
                .poll_timeout()
                .map_or(Duration::from_millis(100), |at| {
                    Duration::from_millis(at.as_millis().saturating_sub(now().as_millis()))
                });
            let read = tokio::select! {
                _ = &mut stop => return,
                r = AsyncReadExt::read(&mut port, &mut buf) => Some(r),
                () = tokio::time::sleep(wake) => None,
            };
            let n = match read {
                None => 0,
                Some(Ok(0)) => {
                    log.lock().unwrap().read_ends.push("eof".into());
                    drop(port);
                    continue 'open;
                }
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    log.lock().unwrap().read_ends.push(format!("{e}"));
                    drop(port);
                    continue 'open;
                }
            };
            let mut rest = &buf[..n];
            let mut outgoing = Vec::new();
            loop {
                let used = session.handle_bytes(now(), rest);
                rest = &rest[used..];
                while let Some(event) = session.poll_event() {
                    let event = OwnedEvent::from(event);
                    let mut log = log.lock().unwrap();
                    match event {
                        OwnedEvent::LinkUp(info) => log.peer_changes.push(info.peer_change),
                        OwnedEvent::Message { msg_type, payload } => {
                            log.requests.push(msg_type);
                            let encoding = session
                                .link_info()
                                .map_or(TextEncoding::Utf8, |i| i.encoding);
                            let msg = Message::parse(msg_type.as_u8(), &payload, encoding).unwrap();
                            if let Some(answer) = app.answer(&msg, encoding, &mut log) {
                                outgoing.push((answer, msg_type));
                            }
                        }
                        _ => {}
                    }
                }
                if rest.is_empty() {
                    break;
                }
            }
            let encoding = session
                .link_info()
                .map_or(TextEncoding::Utf8, |i| i.encoding);
            for ((display, answer_type, payload), _) in outgoing {
                if display {
                    let wait = text("请稍候 / please wait", encoding);
                    let txn_id = u32::from_le_bytes(payload[..4].try_into().unwrap());
                    session
                        .send(&Message::Display(Display {
                            txn_id,
                            text: Text::new(&wait),
                        }))
                        .unwrap();
                }
                session.send_raw(answer_type, &payload).unwrap();
            }
            if app.crash_now {
                app.crash_now = false;
                session = HostSession::new(Config::new(115_200));
                log.lock().unwrap().restarts += 1;
            }
            session.handle_timeout(now());
            while session.poll_event().is_some() {}
            let stats = session.stats();
            log.lock().unwrap().damaged_frames = stats.crc_errors + stats.framing_errors;
            while let Some(len) = session.poll_transmit(now(), &mut wire) {
                if AsyncWriteExt::write_all(&mut port, &wire[..len])
                    .await
                    .is_err()
                {
                    continue 'open;
                }
            }
        }
    }
}

/// A reader on a fresh pty with a symlink in `dir`, and a host on that symlink.
async fn setup(dir: &Path, settings: ReaderSettings) -> (SimReader, TestHost, PathBuf) {
    let link = dir.join("reader");
    let line = Line::open(&LineSpec::CreatePty, 115_200, Some(&link)).unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), line.slave_path());
    let reader = SimReader::new(line, settings).unwrap();
    let host = TestHost::start(&link);
    (reader, host, link)
}

const LINK_WAIT: Duration = Duration::from_secs(5);

fn menu(result: SwipeResult) -> Menu {
    match result {
        SwipeResult::Menu(m) => m,
        SwipeResult::Declined(d) => panic!("expected a menu, got {d:?}"),
    }
}

fn approval(result: RedeemResult) -> Approval {
    match result {
        RedeemResult::Approved(a) => a,
        RedeemResult::Declined(d) => panic!("expected APPROVED, got {d:?}"),
    }
}

#[tokio::test]
async fn handshake_swipe_redeem_and_redeem_again_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ReaderSettings {
        next_txn_id: 41,
        ..ReaderSettings::default()
    };
    let (mut reader, host, _link) = setup(dir.path(), settings).await;
    reader.wait_link_up(LINK_WAIT).await.unwrap();
    assert_eq!(reader.link_info().unwrap().encoding, TextEncoding::Utf8);

    assert_eq!(reader.last_round_trip(), None);
    let called = std::time::Instant::now();
    let m = menu(reader.swipe(CARD, EntryMode::Chip, "c01").await.unwrap());
    let whole_call = called.elapsed();
    let on_the_wire = reader.last_round_trip().unwrap();
    assert!(
        !on_the_wire.is_zero() && on_the_wire <= whole_call,
        "round trip {on_the_wire:?} must lie inside the call's {whole_call:?}"
    );
    assert_eq!(m.txn_id, 41);
    assert_eq!(m.holder, "张三");
    assert_eq!(m.entries.len(), 2);
    assert_eq!(m.entries[0].title, "洗车 Car wash");
    assert_eq!(m.entries[1].identity, IdentityCheck::PhoneLast4);

    let a = approval(reader.redeem(&[(0, 1)], None).await.unwrap());
    assert_eq!(a.txn_id, 41);
    assert_eq!(a.auth_code, "A0041");
    assert_eq!(a.receipt, vec!["洗车 Car wash x1  left 8".to_owned()]);
    assert_eq!(a.uses_left, vec![(0, 8)]);
    let first = reader.last_reply().unwrap().clone();
    assert_eq!(first.displays, vec!["请稍候 / please wait".to_owned()]);

    let again = reader.redeem_again().await.unwrap();
    assert!(again.same_bytes(&first), "{again:?} vs {first:?}");
    assert_eq!(
        host.log(|l| l.approvals),
        1,
        "a repeat must not decide again"
    );
    assert_eq!(reader.next_txn_id(), 42);
    host.stop().await;
}

#[tokio::test]
async fn reboot_then_query_last_returns_the_stored_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, _link) = setup(dir.path(), ReaderSettings::default()).await;
    menu(reader.swipe(CARD, EntryMode::Magstripe, "").await.unwrap());
    approval(reader.redeem(&[(0, 1)], None).await.unwrap());
    let before = reader.last_reply().unwrap().clone();
    let nonce = reader.boot_nonce();

    reader.reboot(LINK_WAIT).await.unwrap();
    assert_ne!(reader.boot_nonce(), nonce);
    let after = reader.query_last().await.unwrap();
    assert!(after.same_bytes(&before));
    let by_id = reader.query(before.answer.txn_id()).await.unwrap();
    assert!(by_id.same_bytes(&before));
    assert_eq!(
        host.log(|l| l.peer_changes.clone()),
        vec![PeerChange::FirstContact, PeerChange::Rebooted]
    );
    assert_eq!(host.log(|l| l.approvals), 1);
    host.stop().await;
}

#[tokio::test]
async fn noise_and_a_torn_frame_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, _link) = setup(dir.path(), ReaderSettings::default()).await;
    reader.wait_link_up(LINK_WAIT).await.unwrap();
    reader.inject_noise(&scenario::noise(300)).await.unwrap();
    reader
        .inject_torn_frame(&scenario::noise(40))
        .await
        .unwrap();
    menu(
        reader
            .swipe(CARD, EntryMode::Contactless, "c02")
            .await
            .unwrap(),
    );
    reader.inject_torn_frame(&[0x42; 7]).await.unwrap();
    approval(
        reader
            .redeem(
                &[(1, 1)],
                Some(reader::identity(IdentityCheck::PhoneLast4, "6688")),
            )
            .await
            .unwrap(),
    );
    assert!(
        host.log(|l| l.damaged_frames) > 0,
        "the noise must have reached the host"
    );
    assert_eq!(
        host.log(|l| l.requests.clone()),
        vec![MessageType::CardPresented, MessageType::Redeem]
    );
    host.stop().await;
}

#[tokio::test]
async fn declined_card_and_void() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, _link) = setup(dir.path(), ReaderSettings::default()).await;
    match reader
        .swipe(UNKNOWN_CARD, EntryMode::Manual, "")
        .await
        .unwrap()
    {
        SwipeResult::Declined(d) => {
            assert_eq!(d.reason, DeclineReason::CARD_UNKNOWN);
            assert_eq!(d.text, "卡未登记 Card unknown");
        }
        other => panic!("expected DECLINED, got {other:?}"),
    }
    assert!(matches!(
        reader.redeem_again().await,
        Err(SimError::NoRedeem)
    ));
    menu(reader.swipe(CARD, EntryMode::Chip, "").await.unwrap());
    let a = approval(reader.redeem(&[(0, 1)], None).await.unwrap());
    let v = approval(
        reader
            .void(&a.auth_code, VoidReason::CashierError)
            .await
            .unwrap(),
    );
    assert_eq!(v.txn_id, a.txn_id + 1, "a void takes a new txn id");
    assert!(v.auth_code.starts_with('V'));
    host.stop().await;
}

#[tokio::test]
async fn gb18030_link_decodes_text() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ReaderSettings {
        encodings: Encodings::GB18030,
        ..ReaderSettings::default()
    };
    let (mut reader, host, _link) = setup(dir.path(), settings).await;
    let m = menu(reader.swipe(CARD, EntryMode::Chip, "").await.unwrap());
    assert_eq!(reader.link_info().unwrap().encoding, TextEncoding::Gb18030);
    assert_eq!(m.holder, "张三");
    assert_eq!(m.entries[1].title, "换机油 Oil change");
    host.stop().await;
}

#[tokio::test]
async fn unanswered_request_times_out_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ReaderSettings {
        txn_timeout: Duration::from_millis(400),
        ..ReaderSettings::default()
    };
    let (mut reader, host, _link) = setup(dir.path(), settings).await;
    reader.wait_link_up(LINK_WAIT).await.unwrap();
    let started = std::time::Instant::now();
    let err = reader
        .swipe(SILENT_CARD, EntryMode::Chip, "")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    match &err {
        SimError::Timeout { waiting_for, .. } => {
            assert_eq!(waiting_for, "answer to CARD_PRESENTED txn 1");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    host.stop().await;
}

#[tokio::test]
async fn nobody_on_the_line_is_a_bounded_wait() {
    let line = Line::open(&LineSpec::CreatePty, 115_200, None).unwrap();
    let mut reader = SimReader::new(line, ReaderSettings::default()).unwrap();
    let started = std::time::Instant::now();
    let err = reader
        .wait_link_up(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, SimError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn unplug_and_replug_follow_the_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, link) = setup(dir.path(), ReaderSettings::default()).await;
    menu(reader.swipe(CARD, EntryMode::Chip, "").await.unwrap());
    let old = reader.line().slave_path().to_path_buf();

    reader.unplug().unwrap();
    // The host notices its device failing: the read on the slave ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while host.log(|l| l.read_ends.is_empty()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ends = host.log(|l| l.read_ends.clone());
    assert!(
        !ends.is_empty(),
        "the host's read must end when the master closes"
    );
    eprintln!("slave read after master close: {ends:?}");

    // Hold the freed pty number, so the replug gets another path, as a USB device may.
    let occupier = tokio_serial::SerialStream::pair().unwrap();
    reader.replug().unwrap();
    let new = reader.line().slave_path().to_path_buf();
    assert_ne!(new, old);
    assert_eq!(std::fs::read_link(&link).unwrap(), new);
    eprintln!("replugged: {} -> {}", old.display(), new.display());
    let a = approval(reader.redeem(&[(0, 1)], None).await.unwrap());
    assert_eq!(a.txn_id, 1);
    assert!(host.log(|l| l.opens) >= 2);
    host.stop().await;
    drop(occupier);
    drop(reader);
    assert!(
        std::fs::read_link(&link).is_err(),
        "the symlink goes with the reader"
    );
}

#[tokio::test]
async fn failed_expectation_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, _link) = setup(dir.path(), ReaderSettings::default()).await;
    let parsed = scenario::parse(
        "t.scenario",
        &format!("# a comment\nswipe {CARD}\n\nexpect menu entries=3\n"),
    )
    .unwrap();
    let err = Runner::new()
        .run(&mut reader, &parsed, &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.scenario:4: expected a menu with 3 entries, got a menu with 2 entries (txn 1)"
    );
    host.stop().await;
}

#[test]
fn parser_reports_file_and_line() {
    let err = scenario::parse("scenario.txt", "swipe 1\n\n# x\nswip 62220200\n").unwrap_err();
    assert_eq!(err.to_string(), "scenario.txt:4: unknown step \"swip\"");
    let err = scenario::parse("s", "redeem 1x0").unwrap_err();
    assert_eq!(
        err.to_string(),
        "s:1: item \"1x0\": quantity must be 1..=999"
    );
    let err = scenario::parse("s", "expect receipt contains \"洗车").unwrap_err();
    assert_eq!(err.to_string(), "s:1: unterminated quoted text");
    let err = scenario::parse("s", "swipe 1 cashir=c1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "s:1: unknown option \"cashir\" (known: cashier, mode)"
    );
}

#[test]
fn parser_reads_every_step() {
    let text = r#"
        swipe 6222020000000001 cashier=c01 mode=qr   # trailing comment
        expect menu entries=2
        redeem 1x2 0 phone=6688
        expect approved
        expect receipt contains "洗车 \"x\""
        expect declined reason=not-enough-uses
        expect uses-left 0=8
        redeem-again
        expect same-reply
        void last reason=customer-request
        void A7K2Q9
        query last
        query current
        query 1042
        noise 64
        torn-frame 8
        reboot
        unplug
        replug
        sleep 500ms
        wait-link 2s
        txn 100
    "#;
    let s = scenario::parse("s", text).unwrap();
    let steps: Vec<&Step> = s.steps.iter().map(|(_, step)| step).collect();
    assert_eq!(steps.len(), 22);
    assert_eq!(
        steps[0],
        &Step::Swipe {
            card: "6222020000000001".into(),
            cashier: "c01".into(),
            mode: EntryMode::Qr
        }
    );
    assert_eq!(
        steps[2],
        &Step::Redeem {
            items: vec![(1, 2), (0, 1)],
            identity: Some((IdentityCheck::PhoneLast4, "6688".into()))
        }
    );
    assert_eq!(
        steps[4],
        &Step::Expect(Expectation::ReceiptContains("洗车 \"x\"".into()))
    );
    assert_eq!(
        steps[5],
        &Step::Expect(Expectation::Declined {
            reason: Some(DeclineReason::NOT_ENOUGH_USES)
        })
    );
    assert_eq!(steps[19], &Step::Sleep(Duration::from_millis(500)));
    assert_eq!(s.steps[0].0, 2, "line numbers count blank lines");
}

#[test]
fn every_decline_reason_of_the_protocol_can_be_expected_by_name() {
    // PROTOCOL.md §7.1 names 1..=30 and OTHER; a scenario may expect any of them.
    for code in (1..=30u16).chain([0xFFFF]) {
        let reason = DeclineReason(code);
        let name = reason.name().unwrap();
        assert_eq!(
            reader::decline_reason_from_str(name),
            Some(reason),
            "{name}"
        );
        let text = format!(
            "expect declined reason={}",
            name.to_lowercase().replace('_', "-")
        );
        let s = scenario::parse("s", &text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            s.steps[0].1,
            Step::Expect(Expectation::Declined {
                reason: Some(reason)
            })
        );
    }
}

#[test]
fn interactive_shortcuts() {
    assert!(matches!(
        interactive_step("6222020000000001").unwrap(),
        Some(Step::Swipe { .. })
    ));
    assert_eq!(
        interactive_step("1x2 phone=6688").unwrap(),
        Some(Step::Redeem {
            items: vec![(1, 2)],
            identity: Some((IdentityCheck::PhoneLast4, "6688".into()))
        })
    );
    assert_eq!(interactive_step("  ").unwrap(), None);
    assert!(interactive_step("frobnicate").is_err());
}

#[test]
fn noise_is_deterministic_and_contains_delimiters() {
    assert_eq!(scenario::noise(64), scenario::noise(64));
    assert_eq!(scenario::noise(1000).len(), 1000);
    assert!(scenario::noise(1000).contains(&0));
}

proptest::proptest! {
    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let _ = scenario::parse("p", &text);
    }

    #[test]
    fn parser_never_panics_on_near_miss_steps(
        verb in proptest::sample::select(vec!["swipe", "redeem", "void", "query", "expect", "noise",
            "sleep", "wait-link", "txn", "torn-frame", "redeem-again", "reboot"]),
        rest in "[ 0-9a-z=x\"#\\\\.-]{0,40}",
    ) {
        let _ = scenario::parse_step(&format!("{verb} {rest}"));
        let _ = interactive_step(&format!("{verb} {rest}"));
    }
}

/// A symlink only makes sense for a pty the simulator creates.
#[test]
fn a_port_line_refuses_a_symlink() {
    let err = Line::open(
        &LineSpec::Port("/dev/null".into()),
        9600,
        Some(Path::new("/tmp/x")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("pseudo-terminal"), "{err}");
}

/// What the kernel does with a pty whose slave nobody holds, which [`Line`] relies on: the
/// master's read fails with EIO at once (it does not block, so a loop must back off), and a
/// write is accepted or fails with EIO, never blocks for long.
#[tokio::test]
async fn pty_master_without_a_slave_reads_eio() {
    let (mut master, slave) = tokio_serial::SerialStream::pair().unwrap();
    drop(slave);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(1),
        AsyncReadExt::read(&mut master, &mut buf),
    )
    .await
    .expect("a read on a slave-less master must not block");
    let read_result = format!("{read:?}");
    assert_eq!(read.unwrap_err().raw_os_error(), Some(5), "{read_result}");
    let write = tokio::time::timeout(
        Duration::from_secs(1),
        AsyncWriteExt::write_all(&mut master, b"\x00hello\x00"),
    )
    .await;
    eprintln!("master without slave: read {read_result}, write {write:?}");
    assert!(write.is_ok(), "a small write must not block");
}

/// The host commits a REDEEM and restarts before answering: the reader's next heartbeat gets
/// RESET, it relinks and QUERYs the txn (never sends the REDEEM again) and gets the stored answer.
#[tokio::test]
async fn link_lost_mid_request_recovers_with_query() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, _link) = setup(dir.path(), ReaderSettings::default()).await;
    menu(reader.swipe(CRASH_CARD, EntryMode::Chip, "").await.unwrap());
    let a = approval(reader.redeem(&[(0, 1)], None).await.unwrap());
    let reply = reader.last_reply().unwrap().clone();
    assert!(reply.recovered);
    assert_eq!(a.txn_id, 1);
    assert_eq!(host.log(|l| l.restarts), 1);
    assert_eq!(host.log(|l| l.approvals), 1);
    assert_eq!(
        host.log(|l| l.requests.clone()),
        vec![
            MessageType::CardPresented,
            MessageType::Redeem,
            MessageType::Query
        ]
    );
    assert!(
        reader
            .take_notes()
            .iter()
            .any(|n| n.contains("QUERY Txn(1) instead of sending again")),
    );
    host.stop().await;
}

/// The host restarts before storing anything for a swipe: the reader's QUERY finds nothing
/// (TXN_UNKNOWN), so it sends the same CARD_PRESENTED again, same txn id, and gets the menu.
#[tokio::test]
async fn request_lost_in_a_host_restart_is_sent_again_with_the_same_txn_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, _link) = setup(dir.path(), ReaderSettings::default()).await;
    let m = menu(
        reader
            .swipe(LOST_SWIPE_CARD, EntryMode::Chip, "")
            .await
            .unwrap(),
    );
    assert_eq!(m.txn_id, 1);
    assert!(reader.last_reply().unwrap().recovered);
    assert_eq!(
        host.log(|l| l.requests.clone()),
        vec![
            MessageType::CardPresented,
            MessageType::Query,
            MessageType::CardPresented
        ]
    );
    assert_eq!(reader.next_txn_id(), 2);
    host.stop().await;
}

/// The CLI entry point end to end: a created pty announced through a symlink, a scenario file.
#[tokio::test]
async fn run_cli_runs_a_scenario_file() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyREADER");
    let script = dir.path().join("basic.scenario");
    std::fs::write(
        &script,
        format!(
            "swipe {CARD} cashier=c01\nexpect menu entries=2\nredeem 0x1\nexpect approved\n\
             query current\nexpect same-reply\nvoid last\nexpect approved\n"
        ),
    )
    .unwrap();
    let host = TestHost::start(&link);
    let options = SimulatorOptions {
        link: Some(link.clone()),
        connect_timeout: LINK_WAIT,
        mode: Mode::Script(script.clone()),
        ..SimulatorOptions::default()
    };
    run_cli(options).await.unwrap();
    assert_eq!(host.log(|l| l.approvals), 2, "one redemption, one void");
    host.stop().await;

    let bad = dir.path().join("bad.scenario");
    std::fs::write(&bad, "swipe 1\nexpekt menu\n").unwrap();
    let err = run_cli(SimulatorOptions {
        mode: Mode::Script(bad.clone()),
        ..SimulatorOptions::default()
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}:2: unknown step \"expekt\"", bad.display())
    );
}

/// Typed lines: a card number swipes, `1x1 phone=…` redeems, a typo is shown and the session
/// goes on, `quit` ends.
#[tokio::test]
async fn interactive_mode_shows_the_screen_and_survives_typos() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, host, _link) = setup(dir.path(), ReaderSettings::default()).await;
    reader.wait_link_up(LINK_WAIT).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for line in [CARD, "swip 1", "1x1 phone=6688", "", "quit", "query last"] {
        tx.send(line.to_owned()).unwrap();
    }
    let mut out = Vec::new();
    interactive(&mut reader, &mut Runner::new(), rx, &mut out)
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("[1] 换机油 Oil change  x2 left  no expiry  [phone last four]"),
        "{out}"
    );
    assert!(out.contains("stdin:2: unknown step \"swip\""), "{out}");
    assert!(out.contains("APPROVED txn 1  auth A0001"), "{out}");
    assert_eq!(
        host.log(|l| l.requests.clone()),
        vec![MessageType::CardPresented, MessageType::Redeem],
        "nothing after quit"
    );
    host.stop().await;
}
