//! How a reactor's bytes get in and out: the one part of a reactor that differs between
//! the epoll and io_uring backends. A driver owns the loop, the client listener and the
//! wait; everything a connection does with its bytes is in `crate::connections`.
//!
//! - [`epoll`]: readiness through `mio` (epoll), reads and writes as system calls.
//! - [`uring`]: completions through one io_uring per reactor: multishot accept,
//!   multishot receive into a provided buffer ring, sends batched into one
//!   `io_uring_enter` per turn.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;

use crate::connections::Conn;

pub(crate) mod epoll;
pub(crate) mod uring;

/// Which backend the reactors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// The measured-better backend this kernel supports (see [`IoBackend::resolve`]).
    #[default]
    Auto,
    /// epoll readiness, through `mio`.
    Epoll,
    /// io_uring completions.
    IoUring,
}

impl IoBackend {
    /// The name in `--io` and in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Epoll => "epoll",
            IoBackend::IoUring => "io_uring",
        }
    }

    /// Parses `auto`, `epoll` or `io-uring` (also `io_uring`).
    pub fn parse(s: &str) -> Option<IoBackend> {
        match s {
            "auto" => Some(IoBackend::Auto),
            "epoll" => Some(IoBackend::Epoll),
            "io-uring" | "io_uring" | "uring" => Some(IoBackend::IoUring),
            _ => None,
        }
    }

    /// The backend to run: `auto` becomes the one that measured better on this kernel
    /// (`bench/RESULTS.md`), falling back to epoll with one log line when io_uring is
    /// preferred but the kernel lacks what the driver uses. An explicit `io-uring` the
    /// kernel cannot run is an error.
    pub fn resolve(self) -> io::Result<IoBackend> {
        match self {
            IoBackend::Epoll => Ok(IoBackend::Epoll),
            IoBackend::IoUring => {
                uring::probe()?;
                Ok(IoBackend::IoUring)
            }
            IoBackend::Auto => {
                if !AUTO_PREFERS_URING {
                    return Ok(IoBackend::Epoll);
                }
                match uring::probe() {
                    Ok(()) => Ok(IoBackend::IoUring),
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring unavailable; using epoll");
                        Ok(IoBackend::Epoll)
                    }
                }
            }
        }
    }
}

/// Whether `auto` picks io_uring where the kernel supports it: set by what
/// `bench/compare.sh` measured on this machine (see `bench/RESULTS.md`).
const AUTO_PREFERS_URING: bool = false;

/// What the backend-independent reactor asks of the one that moves its bytes.
pub(crate) trait Driver: Sized {
    /// The backend's name, as `/metrics` shows it.
    const NAME: &'static str;
    /// What the driver keeps per connection.
    type ConnIo: Default + std::fmt::Debug;

    /// The `mio` registry the control listener, its connections and the inbox's waker
    /// are registered with.
    fn registry(&self) -> &mio::Registry;

    /// The next accepted client connection; `WouldBlock` when none waits.
    fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)>;

    /// Stops accepting client connections for good (a drain).
    fn stop_accepting(&mut self);

    /// Starts moving the bytes of a connection about to be stored at `key`.
    fn add(&mut self, key: usize, conn: &mut Conn<Self::ConnIo>) -> io::Result<()>;

    /// Writes the connection's queue, or starts to: the bytes written now. `now`: the
    /// queue is full, so a driver that batches its writes to the end of the turn writes
    /// what it can at once.
    fn write(&mut self, key: usize, conn: &mut Conn<Self::ConnIo>, now: bool) -> io::Result<usize>;

    /// The connection was removed: stop moving its bytes and close the socket once
    /// nothing the kernel holds refers to it.
    fn release(&mut self, key: usize, generation: u32, stream: TcpStream, io: Self::ConnIo);
}
