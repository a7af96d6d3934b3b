//! The reader's end of the serial line: a real port opened by path, or the master end of a
//! pseudo-terminal pair whose slave end a daemon opens (optionally through a symlink that is
//! re-pointed on every replug, like udev's `/dev/serial/by-id` links).
//!
//! Why the simulator never keeps the slave open: the daemon opens the slave with an exclusive
//! lock (`TIOCEXCL` + `flock`), which fails while another handle holds it. So after a pair is
//! created the slave handle is dropped at once and only its path is kept.
//!
//! While no process holds the slave open, reads on the master fail with `EIO` (and the
//! descriptor polls as ready, so a naive loop would spin): that means "nobody connected yet",
//! and [`Line::read`] backs off for [`IDLE_BACKOFF`] and reports no data.
//!
//! That hang-up is also why a pty master is driven through tokio's pipe types ([`Port::Master`])
//! rather than `tokio_serial::SerialStream`: tokio keeps a hang-up it has seen as a final state of
//! the registration ("read closed"), so once the slave was closed — right after the pair is
//! created, and whenever the daemon restarts — every later wait on the master returned at once and
//! each read found `EAGAIN`, forever: the simulator spun a CPU core for as long as it waited for
//! an answer (and distorted every latency measured with it on a small machine). The master's
//! handles expose that readiness, and one that finds `EAGAIN` behind a hang-up is registered
//! afresh, so that it waits properly again.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::pipe;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};

use super::SimError;

/// `EIO` on Linux: what a pty master's read and write return while no slave is open.
const EIO: i32 = 5;

/// Pause after a read that found nobody on the other end (EIO, 0 bytes), so waiting never spins.
pub const IDLE_BACKOFF: Duration = Duration::from_millis(20);

/// Longest a frame write may block before the bytes are dropped as "nobody is reading": a pty
/// master whose slave is closed buffers writes until its buffer is full, then blocks forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the reader's line goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineSpec {
    /// A real serial device, opened exclusively at the configured baud rate, 8N1, no flow control.
    Port(PathBuf),
    /// A new pseudo-terminal pair; the daemon opens the slave path ([`Line::slave_path`]).
    CreatePty,
}

enum Kind {
    Port {
        path: PathBuf,
    },
    Pty {
        slave_path: PathBuf,
        link: Option<PathBuf>,
    },
}

/// The reader's end of the line, registered with the runtime.
enum Port {
    /// A real device (a hang-up there means it is gone).
    Device(SerialStream),
    /// A pty master: one handle for reading and one for writing (see the module docs). `None`
    /// only while being registered afresh, or after that failed.
    Master {
        rx: Option<pipe::Receiver>,
        tx: Option<pipe::Sender>,
    },
}

fn lost() -> io::Error {
    io::Error::other("pty handle lost while registering it again")
}

impl Port {
    /// One read of what is there: waits until something is (or the other end hangs up).
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rx = match self {
            Port::Device(stream) => return stream.read(buf).await,
            Port::Master { rx, .. } => rx,
        };
        loop {
            let handle = rx.as_ref().ok_or_else(lost)?;
            let ready = handle.ready(Interest::READABLE).await?;
            match handle.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing to read though a hang-up said "ready": the other end is back.
                    if ready.is_read_closed() {
                        let fd = rx.take().ok_or_else(lost)?.into_nonblocking_fd()?;
                        *rx = Some(pipe::Receiver::from_owned_fd_unchecked(fd)?);
                    }
                }
                done => return done,
            }
        }
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let tx = match self {
            Port::Device(stream) => return stream.write_all(bytes).await,
            Port::Master { tx, .. } => tx,
        };
        while !bytes.is_empty() {
            let handle = tx.as_ref().ok_or_else(lost)?;
            let ready = handle.ready(Interest::WRITABLE).await?;
            match handle.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if ready.is_write_closed() {
                        let fd = tx.take().ok_or_else(lost)?.into_nonblocking_fd()?;
                        *tx = Some(pipe::Sender::from_owned_fd_unchecked(fd)?);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An open line (see the module docs).
pub struct Line {
    /// `None` while unplugged.
    stream: Option<Port>,
    kind: Kind,
    baud: u32,
    /// Bytes the reader transmitted that went nowhere (unplugged, nobody on the other end).
    dropped_bytes: u64,
    /// When the latest write began and the latest read that returned bytes came back: the two
    /// ends of a request's round trip on the wire (see [`crate::simulator::SimReader::last_round_trip`]).
    last_write_started: Option<Instant>,
    last_read_returned: Option<Instant>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("path", &self.display_path())
            .field("plugged", &self.stream.is_some())
            .field("dropped_bytes", &self.dropped_bytes)
            .finish_non_exhaustive()
    }
}

impl Line {
    /// Opens `spec`. With [`LineSpec::CreatePty`] and a `link` path, the symlink is (re)created to
    /// point at the slave. A `link` with [`LineSpec::Port`] is refused (the device path is the link).
    pub fn open(spec: &LineSpec, baud: u32, link: Option<&Path>) -> Result<Line, SimError> {
        match spec {
            LineSpec::Port(path) => {
                if link.is_some() {
                    return Err(SimError::Setup(
                        "a symlink can only be maintained for a created pseudo-terminal".into(),
                    ));
                }
                let mut stream = tokio_serial::new(path.to_string_lossy(), baud)
                    .data_bits(DataBits::Eight)
                    .parity(Parity::None)
                    .stop_bits(StopBits::One)
                    .flow_control(FlowControl::None)
                    .open_native_async()
                    .map_err(|e| SimError::Open {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                stream.set_exclusive(true).map_err(|e| SimError::Open {
                    path: path.display().to_string(),
                    reason: format!("cannot lock exclusively: {e}"),
                })?;
                Ok(Line::opened(
                    Port::Device(stream),
                    Kind::Port { path: path.clone() },
                    baud,
                ))
            }
            LineSpec::CreatePty => {
                let (master, slave_path) = new_pty()?;
                let link = link.map(Path::to_path_buf);
                if let Some(link) = &link {
                    point_symlink(link, &slave_path)?;
                }
                Ok(Line::opened(master, Kind::Pty { slave_path, link }, baud))
            }
        }
    }

    /// The path a daemon opens: the slave of the pty (or the device path of a real port).
    pub fn slave_path(&self) -> &Path {
        match &self.kind {
            Kind::Port { path } => path,
            Kind::Pty { slave_path, .. } => slave_path,
        }
    }

    /// The symlink maintained to the current slave, if any.
    pub fn link_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Pty { link, .. } => link.as_deref(),
            Kind::Port { .. } => None,
        }
    }

    fn display_path(&self) -> String {
        self.slave_path().display().to_string()
    }

    /// The configured baud rate (nominal on a pty).
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// Whether the line is plugged in.
    pub fn is_plugged(&self) -> bool {
        self.stream.is_some()
    }

    /// Bytes written while nobody could receive them.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    fn opened(port: Port, kind: Kind, baud: u32) -> Line {
        Line {
            stream: Some(port),
            kind,
            baud,
            dropped_bytes: 0,
            last_write_started: None,
            last_read_returned: None,
        }
    }

    /// When the latest write began (`None` before the first).
    pub fn last_write_started(&self) -> Option<Instant> {
        self.last_write_started
    }

    /// When the latest read that returned bytes came back (`None` before the first).
    pub fn last_read_returned(&self) -> Option<Instant> {
        self.last_read_returned
    }

    fn is_pty(&self) -> bool {
        matches!(self.kind, Kind::Pty { .. })
    }

    /// Reads what arrived. `Ok(0)` means "nothing, nobody on the other end" after a short
    /// back-off; while unplugged it never completes (the caller races it against a timer).
    /// Cancel-safe: no byte is consumed unless the future completes.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, SimError> {
        let is_pty = self.is_pty();
        let Some(stream) = self.stream.as_mut() else {
            std::future::pending::<()>().await;
            return Ok(0);
        };
        match stream.read(buf).await {
            Ok(0) => {
                tokio::time::sleep(IDLE_BACKOFF).await;
                Ok(0)
            }
            Ok(n) => {
                self.last_read_returned = Some(Instant::now());
                Ok(n)
            }
            Err(e) if is_pty && e.raw_os_error() == Some(EIO) => {
                tokio::time::sleep(IDLE_BACKOFF).await;
                Ok(0)
            }
            Err(e) => Err(SimError::Io {
                doing: format!("reading {}", self.display_path()),
                source: e,
            }),
        }
    }

    /// Writes a whole frame, or drops it (counted) when nobody can receive it: unplugged, no
    /// slave open (EIO), or the peer not reading for [`WRITE_TIMEOUT`]. A frame cut short this way
    /// is resynchronised by the next frame's leading `0x00`.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SimError> {
        let is_pty = self.is_pty();
        let Some(stream) = self.stream.as_mut() else {
            self.dropped_bytes += bytes.len() as u64;
            return Ok(());
        };
        self.last_write_started = Some(Instant::now());
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_pty && e.raw_os_error() == Some(EIO) => {
                self.dropped_bytes += bytes.len() as u64;
                Ok(())
            }
            Ok(Err(e)) => Err(SimError::Io {
                doing: format!("writing {}", self.display_path()),
                source: e,
            }),
            Err(_elapsed) => {
                self.dropped_bytes += bytes.len() as u64;
                Ok(())
            }
        }
    }

    /// Pulls the cable: closes the pty master (the daemon's reads on the slave then fail with
    /// EIO). Refused on a real port (a person pulls that cable).
    pub fn unplug(&mut self) -> Result<(), SimError> {
        if !self.is_pty() {
            return Err(SimError::Setup(
                "unplug needs a created pseudo-terminal".into(),
            ));
        }
        self.stream = None;
        Ok(())
    }

    /// Plugs in again: a new pty pair (a new /dev/pts path, like a USB device that comes back
    /// under a new ttyACM number) and the symlink atomically re-pointed at it.
    pub fn replug(&mut self) -> Result<(), SimError> {
        let Kind::Pty { slave_path, link } = &mut self.kind else {
            return Err(SimError::Setup(
                "replug needs a created pseudo-terminal".into(),
            ));
        };
        self.stream = None;
        let (master, new_slave) = new_pty()?;
        if let Some(link) = link {
            point_symlink(link, &new_slave)?;
        }
        *slave_path = new_slave;
        self.stream = Some(master);
        Ok(())
    }
}

impl Drop for Line {
    /// Removes the symlink if it still points at our slave (a technician's stale link to a dead
    /// pty would otherwise send the daemon to a missing or foreign device).
    fn drop(&mut self) {
        if let Kind::Pty {
            slave_path,
            link: Some(link),
        } = &self.kind
            && std::fs::read_link(link).is_ok_and(|target| &target == slave_path)
        {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// A new pty pair: keeps the master, learns the slave's path, and opens the slave once to make it
/// raw (8 bits through, no echo, no line editing) before closing it again: from then on, until a
/// daemon opens it, the master sees a closed line (reads fail with `EIO`).
fn new_pty() -> Result<(Port, PathBuf), SimError> {
    use rustix::pty::OpenptFlags;
    let failed = |e: &dyn std::fmt::Display| SimError::Open {
        path: "new pseudo-terminal".into(),
        reason: e.to_string(),
    };
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).map_err(|e| failed(&e))?;
    rustix::pty::grantpt(&master).map_err(|e| failed(&e))?;
    rustix::pty::unlockpt(&master).map_err(|e| failed(&e))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| failed(&e))?;
    let slave_path = PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name.into_bytes()),
    );
    {
        use rustix::fs::{Mode, OFlags};
        let slave = rustix::fs::open(
            &slave_path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| failed(&e))?;
        let mut termios = rustix::termios::tcgetattr(&slave).map_err(|e| failed(&e))?;
        termios.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &termios)
            .map_err(|e| failed(&e))?;
        // The daemon locks the slave exclusively when it opens it: our handle must be gone by then.
    }
    rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).map_err(|e| failed(&e))?;
    let writer: OwnedFd = master.try_clone().map_err(|e| failed(&e))?;
    let port = Port::Master {
        rx: Some(pipe::Receiver::from_owned_fd_unchecked(master).map_err(|e| failed(&e))?),
        tx: Some(pipe::Sender::from_owned_fd_unchecked(writer).map_err(|e| failed(&e))?),
    };
    Ok((port, slave_path))
}

/// Points `link` at `target` atomically: a temporary symlink next to it, renamed over it, so a
/// daemon that opens `link` meanwhile sees either the old target or the new one, never nothing.
fn point_symlink(link: &Path, target: &Path) -> Result<(), SimError> {
    let file_name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| SimError::Setup(format!("{}: not a file path", link.display())))?;
    let temp = link.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let fail = |e: io::Error| SimError::Io {
        doing: format!("pointing {} at {}", link.display(), target.display()),
        source: e,
    };
    std::os::unix::fs::symlink(target, &temp).map_err(fail)?;
    std::fs::rename(&temp, link).map_err(fail)
}
