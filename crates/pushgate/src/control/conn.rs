//! One control connection: read requests, answer them in order, and close cleanly.
//!
//! Closing is where HTTP servers lose responses. Closing a socket with unread input makes
//! the kernel send a reset, and a reset makes the peer drop whatever it had not read yet
//! — typically the 413 telling it why. So a connection that is done writes its last
//! response, shuts its write side (the peer sees the end of the response), then reads
//! and discards for at most [`LINGER`] until the peer closes too: nginx's lingering close.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;

use super::http::{json_error, next_request};
use super::routes::ControlState;
use super::stats::Eviction;
use super::table::{Class, Rank, Schedule};
use super::Limits;

/// Longest a finished connection drains its peer's input before it is closed anyway.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// Responses buffered for one client before its requests stop being read: a client that
/// pipelines without reading its responses is slowed down, not buffered without bound.
const MAX_PENDING_OUTPUT: usize = 1024 * 1024;

/// Reads per readiness event while lingering, so a peer streaming a huge body cannot hold
/// the control thread; the rest waits for the next event or the linger deadline.
const LINGER_READS_PER_EVENT: usize = 64;

const READ_CHUNK: usize = 16 * 1024;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests and answering them.
    Open,
    /// The last response is queued: write it, then close. `peer_done` when the peer has
    /// already closed its side, so there is nothing to drain.
    Closing { peer_done: bool },
    /// Write side shut after the last response; discarding input until `until`.
    Lingering { until: Instant },
}

/// What the server loop does with the connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    Keep,
    Close,
}

/// What answering the buffered requests ended with.
enum Answered {
    /// Only a partial request (or nothing) is left: read more.
    NeedMore,
    /// Output is over [`MAX_PENDING_OUTPUT`]: write before answering more.
    Backpressure,
    /// The last response is queued.
    Closing,
}

#[derive(Debug)]
pub(super) struct Conn {
    stream: TcpStream,
    /// Bounded by the head limit plus the body limit plus one read: only a partial
    /// request is ever left here when more is read.
    inbuf: BytesMut,
    out: Vec<u8>,
    phase: Phase,
    /// A complete request has been received.
    served: bool,
    /// Accepted, or last read or wrote a byte.
    last_active: Instant,
    accepted: Instant,
}

impl Conn {
    pub(super) fn new(stream: TcpStream, now: Instant) -> Conn {
        Conn {
            stream,
            inbuf: BytesMut::new(),
            out: Vec::new(),
            phase: Phase::Open,
            served: false,
            last_active: now,
            accepted: now,
        }
    }

    pub(super) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Why its deadline closes it, for the eviction counter; `None` when lingering ran
    /// out, which costs the client nothing (its last response was delivered).
    pub(super) fn timeout_reason(&self) -> Option<Eviction> {
        match self.phase {
            Phase::Lingering { .. } => None,
            Phase::Open if !self.served => Some(Eviction::FirstRequestTimeout),
            Phase::Open | Phase::Closing { .. } => Some(Eviction::IdleTimeout),
        }
    }

    /// Its eviction rank and deadline, from its phase and activity.
    pub(super) fn schedule(&self, limits: &Limits) -> Schedule {
        let quiet = self.inbuf.is_empty() && self.out.is_empty();
        let (class, deadline) = match self.phase {
            Phase::Lingering { until } => (Class::Lingering, until),
            // Measured from the accept, not from the last byte: a client trickling a
            // header a byte at a time (slowloris) gets no longer than a silent one.
            Phase::Open if !self.served => (
                if quiet { Class::Silent } else { Class::Busy },
                self.accepted + limits.first_request_timeout,
            ),
            Phase::Open => (
                if quiet { Class::Idle } else { Class::Busy },
                self.last_active + limits.idle_timeout,
            ),
            Phase::Closing { .. } => (Class::Busy, self.last_active + limits.idle_timeout),
        };
        Schedule {
            rank: Rank {
                class,
                since: self.last_active,
            },
            deadline,
        }
    }

    /// Makes all the progress the socket allows; called on every readiness event (edge
    /// triggered: input left unread under backpressure is picked up when the client
    /// drains its responses and the socket turns writable).
    pub(super) fn on_ready(
        &mut self,
        state: &ControlState,
        running: &impl Fn() -> bool,
        now: Instant,
    ) -> Next {
        loop {
            match self.phase {
                Phase::Open => match self.answer(state, running) {
                    Answered::Closing => {}
                    Answered::Backpressure => {
                        if !self.flush(now) {
                            return Next::Close;
                        }
                        if self.out.len() > MAX_PENDING_OUTPUT {
                            return Next::Keep;
                        }
                    }
                    Answered::NeedMore => {
                        if !self.flush(now) {
                            return Next::Close;
                        }
                        if self.out.len() > MAX_PENDING_OUTPUT {
                            return Next::Keep;
                        }
                        match self.read_some(now) {
                            Ok(true) => {}
                            // The peer is done sending; what it sent is answered.
                            Ok(false) => self.phase = Phase::Closing { peer_done: true },
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.release_idle_buffers();
                                return Next::Keep;
                            }
                            Err(_) => return Next::Close,
                        }
                    }
                },
                Phase::Closing { peer_done } => {
                    if !self.flush(now) {
                        return Next::Close;
                    }
                    if !self.out.is_empty() {
                        return Next::Keep;
                    }
                    if peer_done || self.stream.shutdown(Shutdown::Write).is_err() {
                        return Next::Close;
                    }
                    self.phase = Phase::Lingering {
                        until: now + LINGER,
                    };
                }
                Phase::Lingering { until } => return self.discard(now, until),
            }
        }
    }

    /// Reads once into the input buffer: Ok(false) at the end of input.
    fn read_some(&mut self, now: Instant) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.last_active = now;
                    self.inbuf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Lingering: throws input away until the peer closes or the time is up.
    fn discard(&mut self, now: Instant, until: Instant) -> Next {
        if now >= until {
            return Next::Close;
        }
        let mut chunk = [0u8; READ_CHUNK];
        for _ in 0..LINGER_READS_PER_EVENT {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Keep
    }

    /// Writes buffered responses until done or `WouldBlock`; false on a broken connection.
    fn flush(&mut self, now: Instant) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.last_active = now;
                    self.out.drain(..n.min(self.out.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Answers the complete requests at the front of the input, in order, while the
    /// output backlog is small.
    fn answer(&mut self, state: &ControlState, running: &impl Fn() -> bool) -> Answered {
        loop {
            if self.out.len() > MAX_PENDING_OUTPUT {
                return Answered::Backpressure;
            }
            match next_request(&mut self.inbuf, state.max_body_bytes) {
                Ok(Some(req)) => {
                    self.served = true;
                    let resp = state.handle(&req, running());
                    self.out.extend_from_slice(&resp);
                    if !req.keep_alive {
                        self.close_after_response();
                        return Answered::Closing;
                    }
                }
                Ok(None) => return Answered::NeedMore,
                Err(e) => {
                    // The framing of whatever follows is unknown (or, for 413, not worth
                    // reading): answer, and close once the answer is out.
                    let (status, msg) = e.status();
                    self.out.extend_from_slice(&json_error(status, msg, false));
                    self.close_after_response();
                    return Answered::Closing;
                }
            }
        }
    }

    /// Between requests a connection holds no memory beyond its entry: a keep-alive pool
    /// of a thousand sockets should not pin a thousand read and write buffers.
    fn release_idle_buffers(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = BytesMut::new();
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = Vec::new();
        }
    }

    fn close_after_response(&mut self) {
        self.inbuf = BytesMut::new();
        self.phase = Phase::Closing { peer_done: false };
    }
}
