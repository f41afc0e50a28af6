//! One reactor: a thread with its own `mio::Poll`, listener, connection slab, timer wheel
//! and inbox. Nothing here is shared with other reactors except admission control and
//! the counters they read.
//!
//! Each loop turn: wait for readiness or the next timer; fire due timers; serve ready
//! sockets (reading each until `WouldBlock`, within a per-turn budget, and remembering the
//! ones cut short); drain the inbox; advance a drain in progress.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Shutdown};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use protocol::CloseCode;
use session::conn::{MIN_WINDOW_BITS, WINDOW_SIZES};
use session::{CloseKind, Codecs, ConnId, Ctx, Effects, Event, Session, TransmitKind};
use slab::Slab;
use socket2::SockRef;

use crate::admission::{Admission, Verdict};
use crate::clock::Ticks;
use crate::config::ReactorConfig;
use crate::inbox::{Command, ConnRef, Hooks, InboxShared};
use crate::outbound::Outbound;
use crate::service::ServiceConns;
use crate::stats::ReactorStats;
use crate::wheel::{TimerId, Wheel};

const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX - 2);
const SERVICE_LISTENER: Token = Token(usize::MAX - 3);
/// Tokens and timer keys of service connections start here; WebSocket connections' slab
/// keys never reach it.
pub(crate) const SERVICE_BASE: usize = 1 << 40;

/// Bytes read per `recv`; the buffer is the reactor's, shared by all its connections.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per loop turn before others get their turn.
const READS_PER_TURN: usize = 8;
/// Inbox commands handled per loop turn.
const COMMANDS_PER_TURN: usize = 1024;
/// Ready sockets handled between deliveries and writes within one turn.
const EVENTS_PER_FLUSH: usize = 32;
/// At the pending-handshake bound, how long a connection that sent part of its request
/// and stopped may keep its slot (at most the pressure timeout). A request split over
/// several segments arrives within a round trip's few milliseconds.
const PARTIAL_REQUEST_GRACE: Duration = Duration::from_millis(100);
/// Back-off after `accept` fails for lack of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The two pending-handshake queues.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// Every pending handshake, by accept time.
    Accepted,
    /// Those that sent part of a request, by when that was seen.
    Partial,
}

/// How a connection's gauges are currently counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gauge {
    Handshaking,
    Upgraded,
    Neither,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    ip: IpAddr,
    verdict: Verdict,
    generation: u32,
    session: Session,
    out: Outbound,
    timer: Option<(TimerId, u64)>,
    /// The session is done; close once the queue is flushed.
    close_after_flush: bool,
    /// Writing was shut down after a protocol error.
    write_shut: bool,
    gauge: Gauge,
    /// Upgraded on `/ws` (broadcasts go to these, not to `/echo`).
    push_endpoint: bool,
    /// Listed in `Reactor::partial_order`.
    partial_listed: bool,
    /// Given frames this turn and listed in `Reactor::dirty`, to be written at its end.
    dirty: bool,
}

#[derive(Debug)]
struct DrainPlan {
    targets: Vec<(usize, u32)>,
    next: usize,
    start: Instant,
    window: Duration,
}

/// A reactor thread's state.
pub struct Reactor {
    id: u16,
    poll: Poll,
    listener: TcpListener,
    accept_resume_at: Option<Instant>,
    inbox: Receiver<Command>,
    inbox_shared: Arc<InboxShared>,
    /// Connections in the order they were accepted, while they may still be handshaking:
    /// the front is the one to evict when a new connection finds the pending-handshake
    /// bound reached. Entries that finished their handshake are skipped lazily and
    /// compacted away, so the queue stays within a small multiple of the handshakes
    /// actually pending.
    handshake_order: VecDeque<(usize, u32, Instant)>,
    /// The same for connections that sent part of a request and stopped (see
    /// [`Reactor::make_room_for_handshake`]), in the order they were found so.
    partial_order: VecDeque<(usize, u32, Instant)>,
    /// Accepting stopped at the pending-handshake bound with connections possibly left
    /// in the backlog.
    accept_blocked: bool,
    /// Reused by broadcasts, so walking the connections allocates nothing per push.
    scratch_keys: Vec<usize>,
    /// Connections given frames this turn, written once each at the turn's end.
    dirty: Vec<usize>,
    /// When this turn's pushes were received, observed once they are written.
    received: Vec<Instant>,
    conns: Slab<Conn>,
    next_generation: u32,
    wheel: Wheel<usize>,
    ticks: Ticks,
    /// The server API and health listener, when this reactor serves it.
    services: Option<ServiceConns>,
    config: Arc<ReactorConfig>,
    admission: Arc<Admission>,
    stats: Arc<ReactorStats>,
    hooks: Box<dyn Hooks>,
    codecs: Codecs,
    read_buf: BytesMut,
    fx: Effects,
    /// Connections whose read budget ran out while readable.
    again: Vec<usize>,
    drain: Option<DrainPlan>,
    accept_tokens: f64,
    accept_refill_at: Instant,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("id", &self.id)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// A reactor over `listener`, whose waker is registered on `poll` by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u16,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Receiver<Command>,
        inbox_shared: Arc<InboxShared>,
        config: Arc<ReactorConfig>,
        admission: Arc<Admission>,
        stats: Arc<ReactorStats>,
        hooks: Box<dyn Hooks>,
        mut services: Option<ServiceConns>,
    ) -> io::Result<Reactor> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(s) = services.as_mut() {
            poll.registry()
                .register(s.listener(), SERVICE_LISTENER, Interest::READABLE)?;
        }
        let now = Instant::now();
        Ok(Reactor {
            id,
            poll,
            listener,
            accept_resume_at: None,
            inbox,
            inbox_shared,
            handshake_order: VecDeque::new(),
            partial_order: VecDeque::new(),
            accept_blocked: false,
            scratch_keys: Vec::new(),
            dirty: Vec::new(),
            received: Vec::new(),
            conns: Slab::new(),
            next_generation: 0,
            wheel: Wheel::new(),
            ticks: Ticks::new(now, config.tick),
            services,
            codecs: Codecs::new(&config.session),
            config,
            admission,
            stats,
            hooks,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            fx: Effects::default(),
            again: Vec::new(),
            drain: None,
            accept_tokens: 0.0,
            accept_refill_at: now,
        })
    }

    /// The reactor's index.
    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    /// Runs until a drain completes.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            // Asleep from here: a sender that queues a command must wake us. The flag is
            // cleared before the inbox is looked at (in `poll_timeout`), so a command
            // queued in between is either seen there or wakes the poll.
            self.inbox_shared.notified.store(false, Ordering::SeqCst);
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // Awake: the inbox is drained before we sleep again, so senders (this thread
            // included, when a hook pushes) need not write to the waker meanwhile.
            self.inbox_shared.notified.store(true, Ordering::SeqCst);
            let now = Instant::now();
            expired.clear();
            self.wheel.advance(self.tick_of(now), &mut expired);
            for &key in &expired {
                self.on_timer(key);
            }
            let again = std::mem::take(&mut self.again);
            for key in again {
                self.on_readable(key, true);
            }
            for (i, event) in events.iter().enumerate() {
                // A long turn (hundreds of ready sockets under load) must not hold back
                // what earlier events routed: deliver and write every few events.
                if i > 0 && i % EVENTS_PER_FLUSH == 0 {
                    if !self.inbox.is_empty() {
                        self.drain_inbox();
                    }
                    self.flush_dirty();
                }
                match event.token() {
                    LISTENER => self.accept_loop(),
                    WAKER => self.drain_inbox(),
                    SERVICE_LISTENER => {
                        if let Some(s) = self.services.as_mut() {
                            s.accept_loop(
                                self.poll.registry(),
                                &mut self.wheel,
                                &self.ticks,
                                &self.stats,
                            );
                        }
                    }
                    Token(key) if key >= SERVICE_BASE => {
                        if let Some(s) = self.services.as_mut() {
                            if let Some(k) = s.own(key) {
                                s.on_ready(
                                    k,
                                    event.is_read_closed() || event.is_error(),
                                    self.poll.registry(),
                                    &mut self.wheel,
                                    &self.ticks,
                                    &self.stats,
                                );
                            }
                        }
                    }
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            // Without a hang-up or error in the event, a short read drained
                            // the socket, and one more `recv` would only say so.
                            let closing = event.is_read_closed() || event.is_error();
                            self.on_readable(key, closing);
                        }
                        if event.is_writable() || event.is_write_closed() {
                            self.on_writable(key);
                        }
                    }
                }
            }
            // Commands may arrive faster than wakers are polled; never leave them waiting.
            if !self.inbox.is_empty() {
                self.drain_inbox();
            }
            self.flush_dirty();
            if self.accept_resume_at.is_some_and(|t| now >= t) {
                self.accept_resume_at = None;
                self.accept_loop();
            }
            // Stopped at the bound earlier: this turn's reads may have made room, and the
            // listener's readiness edge was spent, so try `accept` ourselves.
            if self.accept_blocked
                && (self.stats.handshaking.get() as usize) < self.config.max_pending_handshakes
            {
                self.accept_loop();
            }
            if self.drain.is_some() && self.advance_drain(now) {
                return Ok(());
            }
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        self.ticks.tick_of(t)
    }

    fn tick_after(&self, t: Instant) -> u64 {
        self.ticks.tick_after(t)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        // Work already waiting must not sleep until the next unrelated wakeup: the
        // inbox's waker fired once for all of it.
        if !self.again.is_empty() || !self.inbox.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut until: Option<Instant> = self
            .wheel
            .next_due()
            .and_then(|tick| self.ticks.instant_of(tick));
        let mut consider = |t: Instant| until = Some(until.map_or(t, |u| u.min(t)));
        if let Some(t) = self.accept_resume_at {
            consider(t);
        }
        if let Some(plan) = &self.drain {
            consider(plan.next_due(self.config.session.close_timeout));
        }
        until.map(|t| t.saturating_duration_since(now))
    }

    // ---- accepting -------------------------------------------------------------------

    fn accept_loop(&mut self) {
        if self.drain.is_some() {
            return;
        }
        self.accept_blocked = false;
        loop {
            if !self.may_accept() {
                return;
            }
            if !self.make_room_for_handshake(Instant::now()) {
                // The rest wait in the kernel's backlog: this turn's reads complete the
                // handshakes in hand, and the end of the turn tries again.
                self.accept_blocked = true;
                return;
            }
            match self.listener.accept() {
                Ok((stream, peer)) => self.on_accept(stream, peer.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, most likely: pending connections stay in the
                    // backlog; try again shortly.
                    self.stats.accept_errors.add(1);
                    tracing::warn!(reactor = self.id, error = %e, "accept failed; backing off");
                    self.accept_resume_at = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Admission control local to this reactor: the accept rate. (Pending handshakes
    /// never stop accepting; see [`Reactor::make_room_for_handshake`].)
    fn may_accept(&mut self) -> bool {
        let rate = self.config.max_accept_rate;
        if rate > 0 {
            let now = Instant::now();
            let elapsed = now
                .saturating_duration_since(self.accept_refill_at)
                .as_secs_f64();
            self.accept_refill_at = now;
            let burst = f64::from(rate.max(1)) / 10.0 + 1.0;
            self.accept_tokens = (self.accept_tokens + elapsed * f64::from(rate)).min(burst);
            if self.accept_tokens < 1.0 {
                let wait = (1.0 - self.accept_tokens) / f64::from(rate);
                self.accept_resume_at = Some(now + Duration::from_secs_f64(wait));
                return false;
            }
            self.accept_tokens -= 1.0;
        }
        true
    }

    fn on_accept(&mut self, mut stream: TcpStream, ip: IpAddr) {
        let verdict = self.admission.admit(ip);
        if verdict == Verdict::Drop {
            self.stats.count_rejected(503);
            return;
        }
        // Latency matters more than packet count for pushes.
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "register failed");
            self.admission.release(ip, verdict);
            return;
        }
        let reject = match verdict {
            Verdict::Refuse(status) => Some(status),
            _ => None,
        };
        let now = Instant::now();
        self.next_generation = self.next_generation.wrapping_add(1);
        entry.insert(Conn {
            stream,
            ip,
            verdict,
            generation: self.next_generation,
            session: Session::new(now, reject, &self.config.session),
            out: Outbound::default(),
            timer: None,
            close_after_flush: false,
            write_shut: false,
            gauge: Gauge::Handshaking,
            push_endpoint: false,
            partial_listed: false,
            dirty: false,
        });
        self.stats.accepted.add(1);
        self.stats.connections.add(1);
        self.stats.handshaking.add(1);
        self.handshake_order
            .push_back((key, self.next_generation, now));
        self.rearm(key, now);
    }

    /// Whether one more connection may start its handshake: below the pending-handshake
    /// bound, or once the oldest pending handshake has been reset to make room.
    ///
    /// Pausing `accept` until handshakes finish (the first design) let 1 024 connections
    /// that dribble their request a byte a second shut out every honest client until the
    /// handshake timeout freed slots. Evicting the oldest at once (the second) reset
    /// honest clients in a reconnect storm: a burst of 10 000 connects was accepted faster
    /// than their requests were read, and each accept evicted one accepted a moment
    /// before. So under pressure the handshake timeout shortens: a handshake pending for
    /// `pressure_handshake_timeout` is reset to make room (an honest client sends its
    /// request in one go, so it is never that old at the bound), and a younger one only
    /// makes the rest wait in the kernel's backlog for this turn's reads.
    fn make_room_for_handshake(&mut self, now: Instant) -> bool {
        let bound = self.config.max_pending_handshakes.max(1);
        let silent_after = self.config.pressure_handshake_timeout;
        let partial_after = silent_after.min(PARTIAL_REQUEST_GRACE);
        while self.stats.handshaking.get() as usize >= bound {
            // Stalled midway through a request first: no honest client does that for long.
            let partial = self.oldest_pending(Order::Partial);
            if let Some((key, _, _)) = partial.filter(|p| now >= p.2 + partial_after) {
                self.partial_order.pop_front();
                self.evict_handshake(key);
                continue;
            }
            let any = self.oldest_pending(Order::Accepted);
            if let Some((key, _, _)) = any.filter(|a| now >= a.2 + silent_after) {
                self.handshake_order.pop_front();
                self.evict_handshake(key);
                continue;
            }
            let next = [
                partial.map(|p| p.2 + partial_after),
                any.map(|a| a.2 + silent_after),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(t) = next {
                self.accept_resume_at = Some(self.accept_resume_at.map_or(t, |r| r.min(t)));
            }
            return false;
        }
        // Entries of connections that finished their handshake pile up behind a slow one
        // at the front; compact once they outnumber the live ones.
        let live = self.stats.handshaking.get() as usize;
        for order in [&mut self.handshake_order, &mut self.partial_order] {
            if order.len() > 2 * live + 64 {
                let conns = &self.conns;
                order.retain(|&(key, generation, _)| {
                    conns.get(key).is_some_and(|c| {
                        c.generation == generation && c.gauge == Gauge::Handshaking
                    })
                });
            }
        }
        true
    }

    /// The front of one of the pending-handshake queues, after dropping entries of
    /// connections no longer handshaking.
    fn oldest_pending(&mut self, which: Order) -> Option<(usize, u32, Instant)> {
        loop {
            let order = match which {
                Order::Accepted => &self.handshake_order,
                Order::Partial => &self.partial_order,
            };
            let &(key, generation, at) = order.front()?;
            if self.is_handshaking(key, generation) {
                return Some((key, generation, at));
            }
            match which {
                Order::Accepted => self.handshake_order.pop_front(),
                Order::Partial => self.partial_order.pop_front(),
            };
        }
    }

    fn evict_handshake(&mut self, key: usize) {
        self.stats.handshakes_evicted.add(1);
        self.remove(key, true);
    }

    /// Lists a connection that has sent part of its request, once.
    fn note_partial_request(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.partial_listed || c.gauge != Gauge::Handshaking || !c.session.handshake_partial() {
            return;
        }
        c.partial_listed = true;
        self.partial_order
            .push_back((key, c.generation, Instant::now()));
    }

    fn is_handshaking(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.generation == generation && c.gauge == Gauge::Handshaking)
    }

    // ---- socket events ---------------------------------------------------------------

    /// Reads a ready connection until it is drained or its budget is spent. A read shorter
    /// than the buffer means the socket was drained: data arriving later raises a new
    /// edge-triggered event (as it does for nginx's `ready = 0` after a short read), so no
    /// `recv` is spent to hear `WouldBlock`, unless `until_would_block` (the peer hung up:
    /// its EOF must be read now, no further event will announce it).
    fn on_readable(&mut self, key: usize, until_would_block: bool) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            if conn.close_after_flush {
                return;
            }
            self.read_buf.clear();
            self.read_buf.reserve(READ_CHUNK);
            let spare = self.read_buf.spare_capacity_mut();
            let len = spare.len().min(READ_CHUNK);
            let spare = &mut spare[..len];
            match recv(&conn.stream, spare) {
                Ok(0) => {
                    self.with_session(key, |s, _, fx| s.handle_eof(fx));
                    return;
                }
                Ok(n) => {
                    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity
                    // it was given, which starts at the buffer's current length (0).
                    unsafe { self.read_buf.set_len(n) };
                    self.stats.bytes_in.add(n as u64);
                    let mut input = std::mem::take(&mut self.read_buf);
                    self.with_session(key, |s, cx, fx| s.handle_input(&mut input, cx, fx));
                    self.read_buf = input;
                    self.note_partial_request(key);
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
        self.again.push(key);
    }

    fn on_writable(&mut self, key: usize) {
        self.flush(key);
    }

    fn on_timer(&mut self, key: usize) {
        if key >= SERVICE_BASE {
            if let Some(s) = self.services.as_mut() {
                if let Some(k) = s.own(key) {
                    s.on_timer(
                        k,
                        self.poll.registry(),
                        &mut self.wheel,
                        &self.ticks,
                        &self.stats,
                    );
                }
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.timer = None;
        if conn.close_after_flush {
            // The peer never took the rest of its queue.
            self.remove(key, true);
            return;
        }
        self.with_session(key, |s, cx, fx| s.handle_timeout(cx, fx));
    }

    /// Runs `f` on a connection's session with a fresh effects sink, then applies them.
    fn with_session(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut Session, &mut Ctx<'_>, &mut Effects),
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let now = Instant::now();
        let conn_id = ConnId {
            reactor: self.id,
            slot: key as u32,
            generation: conn.generation,
        };
        let mut fx = std::mem::take(&mut self.fx);
        fx.clear();
        {
            let mut cx = Ctx {
                config: &self.config.session,
                codecs: &mut self.codecs,
                now,
                conn_id,
            };
            f(&mut conn.session, &mut cx, &mut fx);
        }
        self.apply(key, &mut fx, now);
        self.fx = fx;
    }

    fn apply(&mut self, key: usize, fx: &mut Effects, now: Instant) {
        let cref = self.conn_ref(key);
        let mut overflowed = false;
        if let Some(conn) = self.conns.get_mut(key) {
            for t in fx.transmits.drain(..) {
                match t.kind {
                    TransmitKind::Handshake | TransmitKind::Control => {
                        conn.out.push_control(t.bytes)
                    }
                    TransmitKind::Pong => conn.out.push_pong(t.bytes),
                    TransmitKind::Close => conn.out.push_close(t.bytes),
                    TransmitKind::Data => {
                        if conn.out.push_data(t.bytes, &self.config.outbound).is_err() {
                            overflowed = true;
                            continue;
                        }
                    }
                }
                self.stats.frames_out.add(1);
            }
        }
        for event in fx.events.drain(..) {
            self.on_event(key, cref, event);
        }
        let close = fx.close.take();
        if overflowed {
            self.slow_consumer(key);
        }
        match close {
            Some(CloseKind::Reset) => {
                self.remove(key, true);
                return;
            }
            Some(CloseKind::Graceful) => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.close_after_flush = true;
                }
            }
            Some(CloseKind::ShutdownWrite) => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.write_shut = true;
                }
            }
            None => {}
        }
        self.flush(key);
        self.rearm(key, now);
    }

    fn on_event(&mut self, key: usize, cref: Option<ConnRef>, event: Event) {
        let stats = &self.stats;
        match event {
            Event::Rejected(status) => {
                stats.count_rejected(status.code());
                self.set_gauge(key, Gauge::Neither);
            }
            Event::Opened { uid, device, since } => {
                stats.handshakes_ok.add(1);
                self.set_gauge(key, Gauge::Upgraded);
                if let Some(c) = self.conns.get_mut(key) {
                    c.push_endpoint = true;
                }
                if let Some(c) = cref {
                    let mut welcome = self.hooks.open(c, &uid, device.as_deref(), since);
                    trim_replay(&mut welcome, &self.config.outbound);
                    self.with_session(key, |s, cx, fx| s.welcome(&uid, welcome, cx, fx));
                }
            }
            Event::EchoOpened => {
                stats.handshakes_ok.add(1);
                self.set_gauge(key, Gauge::Upgraded);
            }
            Event::Request(req) => {
                stats.messages_in.add(1);
                match &req {
                    session::ClientRequest::Send { .. } => stats.client_sends.add(1),
                    _ => stats.client_room_ops.add(1),
                }
                if let Some(c) = cref {
                    self.hooks.on_request(c, req);
                }
            }
            Event::AppPing => {
                stats.messages_in.add(1);
                stats.app_pings.add(1);
            }
            Event::BadRequest => {
                stats.messages_in.add(1);
                stats.bad_requests.add(1);
            }
            Event::RateLimited => {
                stats.messages_in.add(1);
                stats.rate_limited.add(1);
            }
            Event::Forbidden => {
                stats.messages_in.add(1);
                stats.forbidden.add(1);
            }
            Event::TooManyBadRequests | Event::TooManyRateLimited | Event::TokenExpired => {
                stats.policy_closes.add(1)
            }
            Event::Echoed => stats.messages_in.add(1),
            Event::ProtocolError(code) => stats.count_protocol_error(code.0),
            Event::HandshakeTimeout => stats.handshake_timeouts.add(1),
            Event::HeartbeatSent => stats.heartbeats.add(1),
            Event::IdleTimeout => stats.idle_timeouts.add(1),
            Event::CloseTimeout => stats.close_timeouts.add(1),
        }
    }

    fn set_gauge(&mut self, key: usize, to: Gauge) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.gauge {
            Gauge::Handshaking => self.stats.handshaking.sub(1),
            Gauge::Upgraded => self.stats.upgraded.sub(1),
            Gauge::Neither => {}
        }
        match to {
            Gauge::Handshaking => self.stats.handshaking.add(1),
            Gauge::Upgraded => self.stats.upgraded.add(1),
            Gauge::Neither => {}
        }
        conn.gauge = to;
    }

    fn slow_consumer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.session.is_open() {
            return;
        }
        self.stats.slow_consumer_closes.add(1);
        conn.out.discard_data();
        self.with_session(key, |s, cx, fx| {
            s.close(CloseCode::TRY_AGAIN_LATER, "slow consumer", cx, fx)
        });
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.out.flush(&mut conn.stream) {
            Ok(n) => self.stats.bytes_out.add(n as u64),
            Err(_) => {
                self.remove(key, false);
                return;
            }
        }
        if !conn.out.is_empty() {
            return;
        }
        if conn.close_after_flush {
            self.remove(key, false);
        } else if conn.write_shut {
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
    }

    /// Keeps the connection's single wheel entry at or before its next deadline. Moving a
    /// deadline later touches nothing: the early expiry finds nothing due and re-arms.
    fn rearm(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let deadline = if conn.close_after_flush {
            Some(now + self.config.session.close_timeout)
        } else {
            conn.session.next_deadline(&self.config.session)
        };
        let Some(deadline) = deadline else {
            return;
        };
        let due = self.tick_after(deadline).max(self.wheel.now() + 1);
        let current = conn.timer;
        match current {
            Some((_, armed)) if armed <= due => {}
            Some((id, _)) => {
                let new = self
                    .wheel
                    .rearm(id, due)
                    .unwrap_or_else(|| self.wheel.arm(due, key));
                if let Some(c) = self.conns.get_mut(key) {
                    c.timer = Some((new, due));
                }
            }
            None => {
                let id = self.wheel.arm(due, key);
                if let Some(c) = self.conns.get_mut(key) {
                    c.timer = Some((id, due));
                }
            }
        }
    }

    fn remove(&mut self, key: usize, reset: bool) {
        if !self.conns.contains(key) {
            return;
        }
        let cref = self.conn_ref(key);
        let was_upgraded = self
            .conns
            .get(key)
            .is_some_and(|c| c.gauge == Gauge::Upgraded);
        self.set_gauge(key, Gauge::Neither);
        let conn = self.conns.remove(key);
        if let Some((id, _)) = conn.timer {
            self.wheel.cancel(id);
        }
        if reset {
            // RST rather than FIN: the peer broke the protocol or stopped answering.
            let _ = SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
        }
        self.admission.release(conn.ip, conn.verdict);
        self.stats.connections.sub(1);
        if was_upgraded {
            if let Some(c) = cref {
                self.hooks.on_close(c);
            }
        }
        drop(conn);
    }

    fn conn_ref(&self, key: usize) -> Option<ConnRef> {
        self.conns.get(key).map(|c| ConnRef {
            reactor: self.id,
            index: key as u32,
            generation: c.generation,
        })
    }

    // ---- inbox -----------------------------------------------------------------------

    fn drain_inbox(&mut self) {
        if let Some(window) = self.inbox_shared.take_drain() {
            self.start_drain(window, Instant::now());
        }
        for _ in 0..COMMANDS_PER_TURN {
            match self.inbox.try_recv() {
                Ok(cmd) => {
                    self.inbox_shared.taken(&cmd);
                    self.on_command(cmd);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Deliver {
                frame,
                targets,
                received,
            } => {
                let mut compressed = Compressed::default();
                for t in targets {
                    match self.resolve(t) {
                        Some(key) => self.deliver(key, &frame, &mut compressed),
                        None => self.stats.count_dropped("gone", 1),
                    }
                }
                self.received.extend(received);
            }
            Command::Broadcast { frame, received } => {
                let mut keys = std::mem::take(&mut self.scratch_keys);
                keys.clear();
                keys.extend(
                    self.conns
                        .iter()
                        .filter(|(_, c)| c.push_endpoint && c.session.is_open())
                        .map(|(k, _)| k),
                );
                let mut compressed = Compressed::default();
                for &key in &keys {
                    self.deliver(key, &frame, &mut compressed);
                }
                self.scratch_keys = keys;
                self.received.extend(received);
            }
            Command::Close {
                target,
                code,
                reason,
            } => {
                if let Some(key) = self.resolve(target) {
                    self.with_session(key, |s, cx, fx| s.close(code, reason, cx, fx));
                }
            }
        }
    }

    fn resolve(&self, r: ConnRef) -> Option<usize> {
        let key = r.index as usize;
        match self.conns.get(key) {
            Some(c) if r.reactor == self.id && c.generation == r.generation => Some(key),
            _ => None,
        }
    }

    /// Queues a push frame on one connection: the compressed form when the connection
    /// negotiated permessage-deflate and the payload is worth compressing, compressed at
    /// most once per command and window size, and shared by every such recipient on this
    /// reactor.
    fn deliver(&mut self, key: usize, frame: &Bytes, compressed: &mut Compressed) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if !conn.session.is_open() {
            self.stats.count_dropped("gone", 1);
            return;
        }
        let bytes = match conn.session.compress_window() {
            Some(bits) if frame.len() >= self.config.compress_min_bytes => {
                let slot = usize::from(bits.clamp(MIN_WINDOW_BITS, 15) - MIN_WINDOW_BITS);
                compressed[slot]
                    .get_or_insert_with(|| compress_frame(frame, self.codecs.deflater(bits)))
                    .clone()
            }
            _ => frame.clone(),
        };
        // Writes are batched to the end of the turn; a queue filled by this turn's pushes
        // is written now rather than counted against the consumer.
        if self
            .conns
            .get(key)
            .is_some_and(|c| !c.out.has_room(bytes.len(), &self.config.outbound))
        {
            self.flush(key);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.out.push_data(bytes, &self.config.outbound).is_err() {
            self.stats.count_dropped("slow_consumer", 1);
            self.slow_consumer(key);
            return;
        }
        self.stats.frames_out.add(1);
        self.stats.delivered.add(1);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes every connection that was given frames this turn: one vectored write per
    /// connection however many pushes reached it, instead of one per push.
    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
                self.flush(key);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
        if !self.received.is_empty() {
            let now = Instant::now();
            for r in self.received.drain(..) {
                self.stats
                    .push_latency
                    .observe(now.saturating_duration_since(r));
            }
        }
    }

    // ---- shutdown --------------------------------------------------------------------

    fn start_drain(&mut self, window: Duration, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        let _ = self.poll.registry().deregister(&mut self.listener);
        // The service listener stays up through the drain: health checks and scrapes
        // see a draining node (503 on `/readyz`) rather than a refused connection.
        let mut targets = Vec::new();
        let mut handshaking = Vec::new();
        for (key, c) in self.conns.iter() {
            if c.session.is_open() {
                targets.push((key, c.generation));
            } else if c.session.is_handshaking() {
                handshaking.push(key);
            }
        }
        for key in handshaking {
            self.remove(key, false);
        }
        self.drain = Some(DrainPlan {
            targets,
            next: 0,
            start: now,
            window,
        });
    }

    /// Closes the connections whose turn has come; true when the reactor may exit.
    fn advance_drain(&mut self, now: Instant) -> bool {
        let Some(plan) = self.drain.as_mut() else {
            return false;
        };
        let mut due = Vec::new();
        while plan.next < plan.targets.len() && plan.slot_time(plan.next) <= now {
            due.push(plan.targets[plan.next]);
            plan.next += 1;
        }
        let finished_at = plan.start + plan.window + self.config.session.close_timeout;
        for (key, generation) in due {
            if self
                .conns
                .get(key)
                .is_some_and(|c| c.generation == generation)
            {
                self.with_session(key, |s, cx, fx| {
                    s.close(CloseCode::GOING_AWAY, "server shutting down", cx, fx)
                });
            }
        }
        let all_sent = self
            .drain
            .as_ref()
            .is_some_and(|p| p.next >= p.targets.len());
        if all_sent && self.conns.is_empty() {
            return true;
        }
        if now >= finished_at {
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.remove(key, false);
            }
            return true;
        }
        false
    }
}

impl DrainPlan {
    /// When the `i`-th connection is closed: evenly over the window, so clients do not
    /// all reconnect at the same moment.
    fn slot_time(&self, i: usize) -> Instant {
        let n = self.targets.len().max(1) as u32;
        self.start + self.window / n * i as u32
    }

    /// The next moment the drain has work: a close to send, or, once all are sent, the
    /// end of the close timeout (peers answering wake the loop themselves; polling with a
    /// past deadline meanwhile would spin).
    fn next_due(&self, close_timeout: Duration) -> Instant {
        if self.next < self.targets.len() {
            self.slot_time(self.next)
        } else {
            self.start + self.window + close_timeout
        }
    }
}

/// A push compressed for each server window size in use, made on first need.
type Compressed = [Option<Bytes>; WINDOW_SIZES];

/// The same message as `frame` (a final, unmasked server frame), compressed.
fn compress_frame(frame: &Bytes, deflater: &mut protocol::deflate::Deflater) -> Bytes {
    let Ok(Some((header, n))) = protocol::FrameHeader::parse(frame) else {
        return frame.clone();
    };
    let payload = &frame[n..];
    let mut f = protocol::FrameBuilder::with_capacity(payload.len() / 2 + 16);
    f.extend_compressed(deflater, payload);
    f.finish(header.opcode, true)
}

/// `recv` into uninitialised memory, so the shared read buffer is never zeroed.
fn recv(stream: &TcpStream, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    SockRef::from(stream).recv(buf)
}

/// Keeps the replay behind a `welcome` within the connection's outbound queue, with room
/// for the `welcome` and an `error`: past that the connection would be closed as a slow
/// consumer before it read anything, and again on every reconnect. The newest messages
/// are kept, so the client's view runs without a gap into the live ones, and the welcome
/// says `recovered: false` (the client resyncs the older part from its backend).
fn trim_replay(welcome: &mut session::Welcome, limits: &crate::OutboundLimits) {
    /// Room kept for the `welcome` and an `error` frame.
    const RESERVED_BYTES: usize = 2048;
    let max_messages = limits.max_messages.saturating_sub(2);
    let max_bytes = limits.max_bytes.saturating_sub(RESERVED_BYTES);
    let (mut n, mut bytes) = (0, 0);
    for frame in welcome.replay.iter().rev() {
        if n + 1 > max_messages || bytes + frame.len() > max_bytes {
            break;
        }
        n += 1;
        bytes += frame.len();
    }
    let drop = welcome.replay.len() - n;
    if drop > 0 {
        welcome.replay.drain(..drop);
        welcome.recovered = Some(false);
    }
}
