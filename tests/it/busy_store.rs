//! The link is served while a decision waits for the store (PROTOCOL.md §4.4, §4.9, §4.12, §5.16):
//! the real `redeemd run` over a pty, while another connection holds the shop database's write
//! lock for seconds — as `redeemd sync` or `cache install` may beside a running daemon. The reader
//! end is a `ReaderSession` driven here by hand, every byte the daemon sends also decoded on the
//! side, so that each frame's arrival time is seen: the request's ACK, a PONG, the DISPLAY, the
//! answer.

use std::time::{Duration, Instant};

use firmware_protocol::message::{
    CardPresented, EntryMode, ErrorCode, Identity, List, Message, MessageType, Redeem, RedeemItem,
};
use firmware_protocol::{
    Capabilities, Config, Decoder, Encodings, Flags, Header, Instant as LinkInstant, MessageId,
    OwnedEvent, ReaderIdentity, ReaderSession, ShortAscii, TextEncoding, WIRE_BUF_LEN,
    encode_frame,
};
use redeemd::simulator::{Line, LineSpec};

use crate::daemon::{CARD_TWO_PACKAGES, shop};
use crate::shop::{BAUD, Daemon, Shop};
use crate::support;

/// How long the other connection holds the write lock (below the store's 5 s busy timeout).
const HOLD: Duration = Duration::from_secs(3);

/// A frame the daemon sent, when it arrived (since the reader's start).
#[derive(Debug, Clone)]
struct Seen {
    at: Duration,
    header: Header,
}

/// A reader as firmware drives its session, with every frame from the daemon on record.
struct WireReader {
    line: Line,
    session: ReaderSession,
    observer: Decoder,
    start: Instant,
    seen: Vec<Seen>,
    events: Vec<(Duration, OwnedEvent)>,
}

impl WireReader {
    async fn linked(shop: &Shop, serial: &str) -> WireReader {
        let line = Line::open(&LineSpec::CreatePty, BAUD, Some(&shop.port(0))).unwrap();
        let identity = ReaderIdentity {
            serial: ShortAscii::new(serial).unwrap(),
            firmware: ShortAscii::new("wire-1").unwrap(),
            capabilities: Capabilities::PRINTER,
            encodings: Encodings::UTF8,
        };
        let session = ReaderSession::new(Config::new(BAUD), identity, 0x5EED_0000 ^ 0xB5);
        let mut r = WireReader {
            line,
            session,
            observer: Decoder::new(),
            start: Instant::now(),
            seen: Vec::new(),
            events: Vec::new(),
        };
        r.run_until(Duration::from_secs(20), |r| r.session.is_up())
            .await;
        assert!(r.session.is_up(), "no link: {:?}", r.events);
        r
    }

    fn now(&self) -> LinkInstant {
        LinkInstant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    async fn flush(&mut self) {
        let mut buf = [0u8; WIRE_BUF_LEN];
        let now = self.now();
        while let Some(n) = self.session.poll_transmit(now, &mut buf) {
            self.line.write(&buf[..n]).await.unwrap();
        }
    }

    /// Pumps the session (reads, timers, writes) until `done` holds or `within` has passed.
    async fn run_until(&mut self, within: Duration, done: impl Fn(&WireReader) -> bool) {
        let deadline = Instant::now() + within;
        let mut rx = [0u8; 2048];
        while !done(self) && Instant::now() < deadline {
            self.flush().await;
            let wake = self
                .session
                .poll_timeout()
                .map(|t| self.start + Duration::from_millis(t.as_millis()))
                .map_or(deadline, |t| t.min(deadline))
                .max(Instant::now());
            let read = tokio::time::timeout_at(wake.into(), self.line.read(&mut rx)).await;
            let now = self.now();
            if let Ok(n) = read {
                let n = n.unwrap();
                let at = self.start.elapsed();
                let mut rest = &rx[..n];
                while !rest.is_empty() {
                    let d = self.observer.push(rest);
                    if let Some(Ok(frame)) = d.result {
                        self.seen.push(Seen {
                            at,
                            header: frame.header,
                        });
                    }
                    rest = &rest[d.consumed..];
                }
                let mut rest = &rx[..n];
                while !rest.is_empty() {
                    let used = self.session.handle_bytes(now, rest);
                    rest = &rest[used..];
                    self.take_events();
                }
            }
            self.session.handle_timeout(now);
            self.take_events();
        }
        self.flush().await;
    }

    fn take_events(&mut self) {
        while let Some(e) = self.session.poll_event() {
            self.events.push((self.start.elapsed(), e.into()));
        }
    }

    /// Queues `message` on the session and writes it; returns its id and when it went out.
    async fn send(&mut self, message: &Message<'_>) -> (MessageId, Duration) {
        let id = self.session.send(message).unwrap();
        let at = self.start.elapsed();
        self.flush().await;
        (id, at)
    }

    /// Writes a PING straight to the line (the session sends its own only after T_HB of silence).
    async fn ping(&mut self) -> Duration {
        let header = Header {
            flags: Flags::ACK,
            seq: 0,
            ack: 0,
            msg_type: MessageType::Ping.as_u8(),
        };
        let mut wire = [0u8; WIRE_BUF_LEN];
        let n = encode_frame(&header, &[], &mut wire).unwrap();
        let at = self.start.elapsed();
        self.line.write(&wire[..n]).await.unwrap();
        at
    }

    fn delivered_at(&self, id: MessageId) -> Option<Duration> {
        self.events.iter().find_map(|(at, e)| match e {
            OwnedEvent::Delivered { id: d, .. } if *d == id => Some(*at),
            _ => None,
        })
    }

    /// The application messages received, with their arrival times.
    fn messages(&self) -> Vec<(Duration, MessageType, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|(at, e)| match e {
                OwnedEvent::Message { msg_type, payload } => {
                    Some((*at, *msg_type, payload.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn link_went_down(&self) -> bool {
        self.events
            .iter()
            .any(|(_, e)| matches!(e, OwnedEvent::LinkDown(_)))
    }
}

/// Holds the shop database's write lock (`BEGIN IMMEDIATE` on its own connection) for [`HOLD`] on
/// another thread; returns once the lock is taken.
fn hold_write_lock(shop: &Shop) -> std::thread::JoinHandle<()> {
    let path = shop.state.join(redeemd::store::DB_FILE);
    let (taken, is_taken) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        taken.send(()).unwrap();
        std::thread::sleep(HOLD);
        conn.execute_batch("ROLLBACK").unwrap();
    });
    is_taken.recv().unwrap();
    holder
}

fn swipe(txn_id: u32, card: &str) -> Message<'_> {
    Message::CardPresented(CardPresented {
        txn_id,
        entry_mode: EntryMode::Magstripe,
        card,
        cashier_id: "C-7",
    })
}

fn parsed(payload: &[u8], msg_type: MessageType) -> Message<'_> {
    Message::parse(msg_type.as_u8(), payload, TextEncoding::Utf8).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn s4_4_a_request_is_acknowledged_and_the_link_served_while_the_store_is_busy() {
    let shop = shop(1, "");
    let daemon = Daemon::start(&shop);
    let mut r = WireReader::linked(&shop, "R-BUSY").await;
    let t_ack = r.session.config().ack_timeout_for(1024);
    let card = support::number(CARD_TWO_PACKAGES);

    // A swipe while the store is free: the menu REDEEM quotes.
    let (_, _) = r.send(&swipe(1, &card)).await;
    r.run_until(Duration::from_secs(10), |r| !r.messages().is_empty())
        .await;
    assert_eq!(r.messages()[0].1, MessageType::CardMenu, "{:?}", r.events);

    // The store held by another connection, a REDEEM: it waits for the lock.
    let holder = hold_write_lock(&shop);
    let held_at = r.start.elapsed();
    let items = [RedeemItem {
        entry_index: 0,
        quantity: 1,
    }];
    let (id, sent_at) = r
        .send(&Message::Redeem(Redeem {
            txn_id: 1,
            items: List::new(&items),
            identity: Identity::NONE,
        }))
        .await;
    r.run_until(Duration::from_millis(500), |r| r.delivered_at(id).is_some())
        .await;
    let acked = r
        .delivered_at(id)
        .unwrap_or_else(|| panic!("REDEEM not acknowledged: {:?}", r.events));
    assert!(
        acked - sent_at <= t_ack,
        "acknowledged after {:?} (T_ACK {t_ack:?})",
        acked - sent_at
    );
    // A PING half a second in is answered at once.
    r.run_until(Duration::from_millis(500), |_| false).await;
    let pinged_at = r.ping().await;
    let pong = |r: &WireReader| {
        r.seen
            .iter()
            .find(|s| s.at >= pinged_at && s.header.msg_type == MessageType::Pong.as_u8())
            .map(|s| s.at)
    };
    r.run_until(Duration::from_secs(1), |r| pong(r).is_some())
        .await;
    let ponged = pong(&r).unwrap_or_else(|| panic!("no PONG: {:?}", r.seen));
    assert!(
        ponged - pinged_at <= t_ack,
        "PONG after {:?}",
        ponged - pinged_at
    );
    // Then DISPLAY "please wait" after T_DISPLAY, once, and the answer once the lock is free.
    r.run_until(Duration::from_secs(10), |r| {
        r.messages()
            .iter()
            .any(|(_, t, _)| *t == MessageType::Approved)
    })
    .await;
    holder.join().unwrap();
    let answers: Vec<_> = r.messages().into_iter().skip(1).collect();
    let kinds: Vec<MessageType> = answers.iter().map(|(_, t, _)| *t).collect();
    assert_eq!(
        kinds,
        vec![MessageType::Display, MessageType::Approved],
        "{:?}",
        r.events
    );
    let (display_at, _, display) = &answers[0];
    let Message::Display(d) = parsed(display, MessageType::Display) else {
        unreachable!()
    };
    assert_eq!(d.txn_id, 1);
    assert!(
        *display_at - sent_at >= Duration::from_millis(1000)
            && *display_at - sent_at < Duration::from_millis(2500),
        "DISPLAY {:?} after the REDEEM",
        *display_at - sent_at
    );
    let (approved_at, _, approved) = &answers[1];
    assert!(
        *approved_at - held_at >= HOLD,
        "answered at {approved_at:?}, before the lock was released"
    );
    assert!(!r.link_went_down(), "{:?}", r.events);
    assert_eq!(r.session.stats().retransmissions, 0);
    // Stored once: one journal row, and QUERY gets the same bytes.
    let before = r.messages().len();
    r.send(&Message::Query(firmware_protocol::message::Query::Txn(1)))
        .await;
    r.run_until(Duration::from_secs(10), |r| r.messages().len() > before)
        .await;
    assert_eq!(&r.messages()[before].2, approved, "QUERY: the stored bytes");
    drop(r);
    drop(daemon);
    let store = support::open(&shop.state);
    assert_eq!(support::journal_rows(&store), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn s4_12_requests_beyond_the_backlog_while_the_store_is_busy_are_answered_busy() {
    let shop = shop(1, "");
    let _daemon = Daemon::start(&shop);
    let mut r = WireReader::linked(&shop, "R-BUSY-2").await;
    let card = support::number(CARD_TWO_PACKAGES);
    let holder = hold_write_lock(&shop);
    // Six swipes without waiting for answers: one decided, four waiting, the sixth BUSY.
    let mut sent = Vec::new();
    for txn in 1..=6 {
        let (id, at) = r.send(&swipe(txn, &card)).await;
        r.run_until(Duration::from_millis(500), |r| r.delivered_at(id).is_some())
            .await;
        assert!(r.delivered_at(id).is_some(), "swipe {txn} not acknowledged");
        sent.push(at);
    }
    r.run_until(Duration::from_secs(10), |r| {
        r.messages()
            .iter()
            .filter(|(_, t, _)| *t == MessageType::CardMenu)
            .count()
            == 5
    })
    .await;
    holder.join().unwrap();
    let mut busy = Vec::new();
    let mut menus = Vec::new();
    let mut displays = Vec::new();
    for (at, t, p) in r.messages() {
        match parsed(&p, t) {
            Message::Error(e) => busy.push((at, e.code, e.offending_type)),
            Message::CardMenu(m) => menus.push(m.txn_id),
            Message::Display(d) => displays.push(d.txn_id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        busy.iter().map(|b| (b.1, b.2)).collect::<Vec<_>>(),
        vec![(ErrorCode::BUSY, MessageType::CardPresented.as_u8())]
    );
    assert!(
        busy[0].0 < sent[0] + HOLD,
        "BUSY at once, not after the hold"
    );
    assert_eq!(menus, vec![1, 2, 3, 4, 5], "the rest in order");
    // Each of the five, decided or waiting, got its one DISPLAY.
    displays.sort_unstable();
    assert_eq!(displays, vec![1, 2, 3, 4, 5]);
    assert!(!r.link_went_down(), "{:?}", r.events);
}
