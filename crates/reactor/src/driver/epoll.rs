//! The epoll driver: edge-triggered readiness through `mio`, reads into one buffer shared
//! by the reactor's connections, vectored writes as soon as a connection is flushed.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::SockRef;

use super::Driver;
use crate::connections::flush_budget::FlushBudget;
use crate::connections::{Conn, Reactor, LISTENER, SERVICE_BASE, SERVICE_LISTENER, WAKER};

/// Bytes read per `recv`; the buffer is the reactor's, shared by all its connections.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per loop turn before others get their turn.
const READS_PER_TURN: usize = 8;

/// One reactor's `mio::Poll` and client listener.
#[derive(Debug)]
pub(crate) struct Epoll {
    poll: Poll,
    listener: TcpListener,
    /// Connections whose read budget ran out while readable.
    again: Vec<usize>,
}

impl Epoll {
    pub(crate) fn new(poll: Poll, mut listener: TcpListener) -> io::Result<Epoll> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Epoll {
            poll,
            listener,
            again: Vec::new(),
        })
    }
}

impl Driver for Epoll {
    const NAME: &'static str = "epoll";
    type ConnIo = ();

    fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        self.listener.accept()
    }

    fn stop_accepting(&mut self) {
        let _ = self.poll.registry().deregister(&mut self.listener);
    }

    fn add(&mut self, key: usize, conn: &mut Conn<()>) -> io::Result<()> {
        self.poll.registry().register(
            &mut conn.stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn write(&mut self, _key: usize, conn: &mut Conn<()>, _now: bool) -> io::Result<usize> {
        conn.out.flush(conn.tls.as_deref_mut(), &mut conn.stream)
    }

    fn release(&mut self, _key: usize, _generation: u32, stream: TcpStream, _io: ()) {
        // Closing the descriptor takes it out of the epoll set.
        drop(stream);
    }
}

impl Reactor<Epoll> {
    /// Runs until a drain completes.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            // Asleep from here: a sender that queues a command must wake us. The flag is
            // cleared before the inbox is looked at (in `poll_timeout`), so a command
            // queued in between is either seen there or wakes the poll.
            self.inbox_shared().notified.store(false, Ordering::SeqCst);
            let timeout = self.poll_timeout(!self.io.again.is_empty());
            if let Err(e) = self.io.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // Awake: the inbox is drained before we sleep again, so senders (this thread
            // included, when a hook pushes) need not write to the waker meanwhile.
            self.inbox_shared().notified.store(true, Ordering::SeqCst);
            let now = Instant::now();
            self.begin_turn(now, &mut expired);
            // A long turn (hundreds of ready sockets under load) must not hold back what
            // earlier events routed: deliver and write after a bounded amount of work.
            let mut budget = FlushBudget::new(now);
            let again = std::mem::take(&mut self.io.again);
            for key in again {
                self.on_readable(key, true);
                if budget.spent() {
                    self.deliver_now();
                }
            }
            for event in events.iter() {
                let closed = event.is_read_closed() || event.is_error();
                match event.token() {
                    LISTENER => self.accept_loop(),
                    token @ (WAKER | SERVICE_LISTENER) => self.on_poll_event(token, closed),
                    Token(key) if key >= SERVICE_BASE => {
                        self.on_poll_event(Token(key), closed);
                        // The pushes this request routed to our own connections go out
                        // now, not behind the rest of the turn's sockets.
                        if self.has_commands() {
                            self.deliver_now();
                            budget.restart(Instant::now());
                            continue;
                        }
                    }
                    Token(key) => {
                        if event.is_readable() || closed {
                            // Without a hang-up or error in the event, a short read drained
                            // the socket, and one more `recv` would only say so.
                            self.on_readable(key, closed);
                        }
                        if event.is_writable() || event.is_write_closed() {
                            self.flush(key);
                        }
                    }
                }
                if budget.spent() {
                    self.deliver_now();
                }
            }
            if self.end_turn(now) {
                return Ok(());
            }
        }
    }

    /// Reads a ready connection until it is drained or its budget is spent. A read shorter
    /// than the buffer means the socket was drained: data arriving later raises a new
    /// edge-triggered event (as it does for nginx's `ready = 0` after a short read), so no
    /// `recv` is spent to hear `WouldBlock`, unless `until_would_block` (the peer hung up:
    /// its EOF must be read now, no further event will announce it).
    fn on_readable(&mut self, key: usize, until_would_block: bool) {
        for _ in 0..READS_PER_TURN {
            if !self.wants_input(key) {
                return;
            }
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            self.read_buf.clear();
            self.read_buf.reserve(READ_CHUNK);
            let spare = self.read_buf.spare_capacity_mut();
            let len = spare.len().min(READ_CHUNK);
            let spare = &mut spare[..len];
            match recv(&conn.stream, spare) {
                Ok(0) => {
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity
                    // it was given, which starts at the buffer's current length (0).
                    unsafe { self.read_buf.set_len(n) };
                    self.on_received(key);
                    if n < len && !until_would_block {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(key, false);
                    return;
                }
            }
        }
        // Budget spent with data possibly left: edge-triggered readiness will not repeat,
        // so remember to come back.
        self.io.again.push(key);
    }
}

/// `recv` into uninitialised memory, so the shared read buffer is never zeroed.
fn recv(stream: &TcpStream, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    SockRef::from(stream).recv(buf)
}
