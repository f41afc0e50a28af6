//! The control listener's event loop.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::http::{json_error, next_request};
use super::routes::ControlState;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Control clients are few (Prometheus, backends); more than this are refused.
const MAX_CLIENTS: usize = 1024;
/// A control connection silent this long is closed.
const IDLE: Duration = Duration::from_secs(60);

struct Client {
    stream: TcpStream,
    inbuf: BytesMut,
    out: Vec<u8>,
    close_after_write: bool,
    last_active: Instant,
}

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
    let mut listener = TcpListener::bind(addr)?;
    let local_addr = listener.local_addr()?;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || run(poll, listener, state, running, stop2))?;
    Ok(ControlServer {
        local_addr,
        stop,
        waker,
        thread,
    })
}

fn run(
    mut poll: Poll,
    listener: TcpListener,
    state: Arc<ControlState>,
    running: impl Fn() -> bool,
    stop: Arc<AtomicBool>,
) {
    let mut events = Events::with_capacity(256);
    let mut clients: slab::Slab<Client> = slab::Slab::new();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_secs(1))) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "control poll failed");
                return;
            }
        }
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            if clients.len() >= MAX_CLIENTS {
                                continue;
                            }
                            let entry = clients.vacant_entry();
                            let token = Token(entry.key());
                            if poll
                                .registry()
                                .register(
                                    &mut stream,
                                    token,
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .is_ok()
                            {
                                entry.insert(Client {
                                    stream,
                                    inbuf: BytesMut::new(),
                                    out: Vec::new(),
                                    close_after_write: false,
                                    last_active: Instant::now(),
                                });
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                },
                Token(key) => {
                    let Some(client) = clients.get_mut(key) else {
                        continue;
                    };
                    let keep = serve(client, &state, &running);
                    if !keep {
                        clients.remove(key);
                    }
                }
            }
        }
        let now = Instant::now();
        clients.retain(|_, c| now.duration_since(c.last_active) < IDLE);
    }
}

/// Responses buffered for one client before its requests stop being read: a client that
/// pipelines without reading its responses is slowed down, not buffered without bound.
const MAX_PENDING_OUTPUT: usize = 1024 * 1024;

/// Writes what it can, then reads and answers while the output backlog is small; called
/// on every readiness event, so input left unread under backpressure is picked up when
/// the client drains its responses. False when the connection is done.
fn serve(c: &mut Client, state: &ControlState, running: &impl Fn() -> bool) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if !flush(c) {
            return false;
        }
        if c.close_after_write {
            return !c.out.is_empty();
        }
        if c.out.len() > MAX_PENDING_OUTPUT {
            return true;
        }
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                // The client is done sending; answer what is complete, then close.
                answer(c, state, running);
                c.close_after_write = true;
            }
            Ok(n) => {
                c.last_active = Instant::now();
                c.inbuf.extend_from_slice(&chunk[..n]);
                answer(c, state, running);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return flush(c),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Writes buffered responses until done or `WouldBlock`; false on a broken connection.
fn flush(c: &mut Client) -> bool {
    while !c.out.is_empty() {
        match c.stream.write(&c.out) {
            Ok(0) => return false,
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn answer(c: &mut Client, state: &ControlState, running: &impl Fn() -> bool) {
    while !c.close_after_write {
        match next_request(&mut c.inbuf, state.max_body_bytes) {
            Ok(Some(req)) => {
                let resp = state.handle(&req, running());
                c.out.extend_from_slice(&resp);
                if !req.keep_alive {
                    c.close_after_write = true;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let (status, msg) = e.status();
                c.out.extend_from_slice(&json_error(status, msg, false));
                c.close_after_write = true;
                c.inbuf.clear();
            }
        }
    }
}
