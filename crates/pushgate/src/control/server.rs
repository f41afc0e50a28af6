//! The control listener's event loop: accept (evicting when full), drive connections,
//! close those whose time ran out.
//!
//! The listener must stay reachable whatever its clients do: a full table never refuses
//! a new connection, it evicts the connection that matters least (see
//! [`Class`](super::table::Class)), so no number of idle sockets can lock Prometheus, the
//! orchestrator's probes or a backend's pushes out.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::conn::{Conn, Next};
use super::routes::ControlState;
use super::stats::Eviction;
use super::table::Table;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Longest poll when no deadline is nearer; the stop flag also wakes the loop.
const MAX_POLL: Duration = Duration::from_secs(1);

/// `accept` errors that mean the process is out of file descriptors (Linux and the BSDs
/// agree on these numbers); std has no stable `ErrorKind` for them.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// A running control listener.
#[derive(Debug)]
pub struct ControlServer {
    /// The bound address.
    pub local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl ControlServer {
    /// Stops the listener and waits for its thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

/// Binds `addr` and serves `state` on a new thread. `running` says whether the reactors
/// are up (for `/readyz`).
pub fn spawn(
    addr: SocketAddr,
    state: Arc<ControlState>,
    running: impl Fn() -> bool + Send + 'static,
) -> io::Result<ControlServer> {
    let mut listener = bind(addr)?;
    let local_addr = listener.local_addr()?;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let mut server = Server {
                poll,
                listener,
                clients: Table::new(),
                state,
            };
            server.run(&running, &stop2);
        })?;
    Ok(ControlServer {
        local_addr,
        stop,
        waker,
        thread,
    })
}

/// Connections the kernel completes before they are accepted. mio's and std's 128 overflow
/// in a burst of connects while this thread is off the CPU, and every overflow costs the
/// client a SYN retransmission: a second of latency for a health check.
const BACKLOG: i32 = 1024;

/// Binds with `SO_REUSEADDR` (a restart rebinds at once) but not `SO_REUSEPORT`: a second
/// gateway started on the same control port must fail, not split its traffic.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    clients: Table<Conn>,
    state: Arc<ControlState>,
}

impl Server {
    fn run(&mut self, running: &impl Fn() -> bool, stop: &AtomicBool) {
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::Relaxed) {
            let timeout = self.clients.next_deadline().map_or(MAX_POLL, |d| {
                // Rounded up a millisecond so the loop never wakes just before a deadline.
                (d.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
                    .min(MAX_POLL)
            });
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "control poll failed");
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept_all(running),
                    // An event for a key evicted and reused earlier in this batch reaches
                    // the new connection, which finds nothing to read: harmless.
                    Token(key) => self.drive(key, running),
                }
            }
            self.expire(Instant::now());
        }
    }

    /// Accepts until the backlog is empty.
    fn accept_all(&mut self, running: &impl Fn() -> bool) {
        // One eviction per failed accept at most, and never more than there are clients.
        let mut fd_retries = self.clients.len();
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, running),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) && fd_retries > 0 => {
                    fd_retries -= 1;
                    if !self.evict_one(Eviction::FdLimit) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, running: &impl Fn() -> bool) {
        if self.clients.len() >= self.state.limits.max_clients {
            self.evict_one(Eviction::Full);
        }
        let now = Instant::now();
        let registry = self.poll.registry();
        let limits = self.state.limits;
        let added = self.clients.insert_with(|key| {
            registry.register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let conn = Conn::new(stream, now);
            let schedule = conn.schedule(&limits);
            Ok::<_, io::Error>((conn, schedule))
        });
        match added {
            Ok(key) => {
                self.state.listener_stats.connections.add(1);
                // Read what the client already sent before accepting the next one: a
                // request waiting in the socket makes it busy, not silent, and the next
                // accept in this batch may have to choose whom to evict.
                self.drive(key, running);
            }
            Err(e) => tracing::warn!(error = %e, "control connection not registered"),
        }
    }

    /// Closes the connection that matters least; false when there is none.
    fn evict_one(&mut self, why: Eviction) -> bool {
        let Some((key, _)) = self.clients.first_to_evict() else {
            return false;
        };
        self.close(key);
        self.state.listener_stats.evicted(why);
        true
    }

    fn drive(&mut self, key: usize, running: &impl Fn() -> bool) {
        let now = Instant::now();
        let Some(conn) = self.clients.get_mut(key) else {
            return;
        };
        match conn.on_ready(&self.state, running, now) {
            Next::Keep => {
                let schedule = conn.schedule(&self.state.limits);
                self.clients.reschedule(key, schedule);
            }
            Next::Close => self.close(key),
        }
    }

    /// Closes every connection whose deadline has passed, earliest first.
    fn expire(&mut self, now: Instant) {
        while let Some(key) = self.clients.expired(now) {
            let why = self.clients.get_mut(key).and_then(|c| c.timeout_reason());
            self.close(key);
            if let Some(why) = why {
                self.state.listener_stats.evicted(why);
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.clients.remove(key) {
            let _ = self.poll.registry().deregister(conn.stream_mut());
            self.state.listener_stats.connections.sub(1);
        }
    }
}
