//! A virtual-clock serial line between a `ReaderSession` and a `HostSession`, with deterministic
//! faults: loss, duplication, bit corruption, garbage between frames, jitter. Serial lines do not
//! reorder, so neither does this one: each direction delivers in transmit order, each frame after
//! its wire time at the configured baud rate.

use std::collections::VecDeque;

use firmware_protocol::session::wire_time;
use firmware_protocol::{
    Capabilities, Config, Encodings, Event, HostSession, InboundProblem, Instant, LinkDownReason,
    LinkInfo, MessageId, MessageType, ReaderIdentity, ReaderSession, RejectReason, ShortAscii,
    WIRE_BUF_LEN,
};

/// Feeds `$bytes` to a session the way a driver must: `handle_bytes`, then drain `poll_event`
/// into `$log` (a `Vec<Ev>`), until all bytes are consumed. Asserts that it never stalls.
macro_rules! feed {
    ($session:expr, $now:expr, $bytes:expr, $log:expr) => {{
        let mut rest: &[u8] = $bytes;
        while !rest.is_empty() {
            let n = $session.handle_bytes($now, rest);
            rest = &rest[n..];
            let mut polled = 0;
            while let Some(e) = $session.poll_event() {
                $log.push(e.into());
                polled += 1;
            }
            assert!(
                n > 0 || polled > 0,
                "handle_bytes stalled with nothing to poll"
            );
        }
    }};
}

/// SplitMix64: small, deterministic, good enough for fault injection.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub loss: u64,
    pub duplicate: u64,
    pub corrupt: u64,
    pub garbage: u64,
    pub max_jitter_ms: u64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        loss: 0,
        duplicate: 0,
        corrupt: 0,
        garbage: 0,
        max_jitter_ms: 0,
    };
}

/// One direction of the line.
#[derive(Debug, Default)]
pub struct Pipe {
    queue: VecDeque<(u64, Vec<u8>)>,
    busy_until: u64,
    last_delivery: u64,
    /// When false, everything sent is lost (cable pulled).
    pub cut: bool,
}

impl Pipe {
    fn send(&mut self, now: u64, bytes: Vec<u8>, baud: u32, jitter: u64) {
        let start = now.max(self.busy_until);
        let wire = wire_time(bytes.len(), baud).as_micros().div_ceil(1000) as u64;
        self.busy_until = start + wire;
        let at = (self.busy_until + jitter).max(self.last_delivery);
        self.last_delivery = at;
        if !self.cut {
            self.queue.push_back((at, bytes));
        }
    }
    fn next_at(&self) -> Option<u64> {
        self.queue.front().map(|(at, _)| *at)
    }
    fn take_due(&mut self, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(at, _)| *at <= now) {
            out.extend(self.queue.pop_front().unwrap().1);
        }
        out
    }
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

/// An owned copy of an [`Event`], for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Up(LinkInfo),
    Down(LinkDownReason),
    Unconfirmed(MessageId, MessageType),
    Delivered(MessageId, MessageType),
    Msg(MessageType, Vec<u8>),
    Rejected(u8, InboundProblem, bool),
    HandshakeRejected(RejectReason),
}

impl From<Event<'_>> for Ev {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::LinkUp(info) => Ev::Up(*info),
            Event::LinkDown(r) => Ev::Down(r),
            Event::Unconfirmed { id, msg_type } => Ev::Unconfirmed(id, msg_type),
            Event::Delivered { id, msg_type } => Ev::Delivered(id, msg_type),
            Event::Message { msg_type, payload } => Ev::Msg(msg_type, payload.to_vec()),
            Event::MessageRejected {
                msg_type,
                problem,
                answered,
            } => Ev::Rejected(msg_type, problem, answered),
            Event::HandshakeRejected(r) => Ev::HandshakeRejected(r),
        }
    }
}

pub fn identity(serial: &str) -> ReaderIdentity {
    ReaderIdentity {
        serial: ShortAscii::new(serial).unwrap(),
        firmware: ShortAscii::new("2.4.1").unwrap(),
        capabilities: Capabilities(Capabilities::PRINTER.0 | Capabilities::KEYPAD.0),
        encodings: Encodings::BOTH,
    }
}

/// The whole simulated world.
pub struct Sim {
    pub now: u64,
    pub baud: u32,
    pub rng: Rng,
    pub faults: Faults,
    pub host: HostSession,
    pub reader: ReaderSession,
    pub h2r: Pipe,
    pub r2h: Pipe,
    /// Every event each side produced, in order.
    pub host_log: Vec<Ev>,
    pub reader_log: Vec<Ev>,
    /// Raw bytes each side transmitted (for garbage/resync assertions).
    pub frames_sent: usize,
}

impl Sim {
    pub fn new(seed: u64, baud: u32, faults: Faults) -> Self {
        Self::with_configs(seed, Config::new(baud), Config::new(baud), faults)
    }

    pub fn with_configs(seed: u64, host: Config, reader: Config, faults: Faults) -> Self {
        let mut rng = Rng::new(seed);
        let nonce = rng.next_u64();
        Sim {
            now: 0,
            baud: host.baud,
            rng,
            faults,
            host: HostSession::new(host),
            reader: ReaderSession::new(reader, identity("RDR-000123"), nonce),
            h2r: Pipe::default(),
            r2h: Pipe::default(),
            host_log: Vec::new(),
            reader_log: Vec::new(),
            frames_sent: 0,
        }
    }

    /// Reboots the reader: a new session, new boot nonce, same serial; bytes in flight to the
    /// reader are lost with its RAM.
    pub fn reboot_reader(&mut self) {
        let config = *self.reader.config();
        let nonce = self.rng.next_u64();
        self.reader = ReaderSession::new(config, identity("RDR-000123"), nonce);
        self.h2r.clear();
    }

    /// Restarts the daemon: a new host session.
    pub fn restart_host(&mut self) {
        let config = *self.host.config();
        self.host = HostSession::new(config);
        self.r2h.clear();
    }

    fn feed_host(&mut self, bytes: &[u8]) {
        feed!(
            self.host,
            Instant::from_millis(self.now),
            bytes,
            self.host_log
        );
    }

    fn feed_reader(&mut self, bytes: &[u8]) {
        feed!(
            self.reader,
            Instant::from_millis(self.now),
            bytes,
            self.reader_log
        );
    }

    /// Injects raw bytes towards the host, as if the reader (or noise) sent them.
    pub fn inject_to_host(&mut self, bytes: &[u8]) {
        self.feed_host(bytes);
        self.flush();
    }

    fn transmit(&mut self, to_reader: bool, frame: Vec<u8>) {
        self.frames_sent += 1;
        let f = self.faults;
        let mut copies = if self.rng.chance(f.loss) { 0 } else { 1 };
        if self.rng.chance(f.duplicate) {
            copies += 1;
        }
        for _ in 0..copies {
            let mut bytes = Vec::new();
            if self.rng.chance(f.garbage) {
                let n = 1 + self.rng.below(24) as usize;
                bytes.extend(self.rng.bytes(n));
            }
            let mut body = frame.clone();
            if self.rng.chance(f.corrupt) {
                let i = self.rng.below(body.len() as u64) as usize;
                body[i] ^= 1 << self.rng.below(8);
            }
            bytes.extend(body);
            let jitter = self.rng.below(f.max_jitter_ms + 1);
            let pipe = if to_reader {
                &mut self.h2r
            } else {
                &mut self.r2h
            };
            pipe.send(self.now, bytes, self.baud, jitter);
        }
    }

    /// Drains events and transmissions of both sides at the current time.
    pub fn flush(&mut self) {
        let now = Instant::from_millis(self.now);
        while let Some(e) = self.host.poll_event() {
            self.host_log.push(e.into());
        }
        while let Some(e) = self.reader.poll_event() {
            self.reader_log.push(e.into());
        }
        let mut buf = [0u8; WIRE_BUF_LEN];
        let mut guard = 0;
        while let Some(n) = self.host.poll_transmit(now, &mut buf) {
            self.transmit(true, buf[..n].to_vec());
            guard += 1;
            assert!(guard < 100, "host transmits forever");
        }
        guard = 0;
        while let Some(n) = self.reader.poll_transmit(now, &mut buf) {
            self.transmit(false, buf[..n].to_vec());
            guard += 1;
            assert!(guard < 100, "reader transmits forever");
        }
    }

    /// Advances the virtual clock to the next thing that happens (a delivery or a timer), at
    /// most to `limit`, and processes it.
    pub fn step(&mut self, limit: u64) {
        self.flush();
        let next = [
            self.h2r.next_at(),
            self.r2h.next_at(),
            self.host.poll_timeout().map(Instant::as_millis),
            self.reader.poll_timeout().map(Instant::as_millis),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(limit)
        .min(limit);
        self.now = self.now.max(next);
        let to_reader = self.h2r.take_due(self.now);
        if !to_reader.is_empty() {
            self.feed_reader(&to_reader);
        }
        let to_host = self.r2h.take_due(self.now);
        if !to_host.is_empty() {
            self.feed_host(&to_host);
        }
        let now = Instant::from_millis(self.now);
        self.host.handle_timeout(now);
        self.reader.handle_timeout(now);
        self.flush();
    }

    /// Runs until `until` (absolute ms) or until `done` holds.
    pub fn run_until(&mut self, until: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        while self.now < until {
            if done(self) {
                return true;
            }
            self.step(until);
        }
        done(self)
    }

    pub fn both_up(&self) -> bool {
        self.host.is_up() && self.reader.is_up()
    }
}
