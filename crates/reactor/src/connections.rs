//! One reactor, whatever moves its bytes: its connection slab, timer wheel and inbox, and
//! what a connection does with the bytes it receives and the frames it is given. Nothing
//! here is shared with other reactors except admission control and the counters they
//! read; nothing here makes a system call on a client socket except through the
//! [`Driver`] (`crate::driver`: epoll or io_uring), which owns the loop.
//!
//! Each loop turn (the driver's): wait for I/O or the next timer ([`Reactor::poll_timeout`]);
//! [`Reactor::begin_turn`] fires due timers; the driver hands over received bytes
//! ([`Reactor::on_received`], [`Reactor::on_eof`]) and finished writes; then
//! [`Reactor::end_turn`] drains the inbox, writes what it queued and advances a drain.
//!
//! This file holds the connection record and its session, outbound queue and timer; by
//! concern beside it: [`accept`] (the accept rate and the pending-handshake bound),
//! [`deliver`] (inbox commands and the turn's writes), [`drain`] (shutdown), and the
//! control listener's connections in `crate::service`.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Shutdown};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use mio::net::TcpStream;
use mio::{Interest, Token};
use protocol::CloseCode;
use session::{CloseKind, Codecs, ConnId, Ctx, Effects, Event, Session, TransmitKind, Transport};
use slab::Slab;
use socket2::SockRef;

use crate::admission::{Admission, Verdict};
use crate::clock::Ticks;
use crate::config::ReactorConfig;
use crate::driver::Driver;
use crate::inbox::{ConnRef, Hooks, InboxShared, Queued, Welcomed};
use crate::outbound::Outbound;
use crate::service::ServiceConns;
use crate::stats::{ReactorStats, STAGE_BUCKETS_US};
use crate::tls::TlsStream;
use crate::wheel::{TimerId, Wheel};

mod accept;
mod deliver;
mod drain;
pub(crate) mod flush_budget;

use drain::DrainPlan;

/// The epoll driver's client listener token.
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
/// The inbox's waker, on the driver's `mio::Poll`.
pub(crate) const WAKER: Token = Token(usize::MAX - 2);
/// The control listener, on the driver's `mio::Poll`.
pub(crate) const SERVICE_LISTENER: Token = Token(usize::MAX - 3);
/// Tokens and timer keys of service connections start here; WebSocket connections' slab
/// keys never reach it.
pub(crate) const SERVICE_BASE: usize = 1 << 40;

/// How a connection's gauges are currently counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gauge {
    Handshaking,
    Upgraded,
    Neither,
}

#[derive(Debug)]
pub(crate) struct Conn<I> {
    pub(crate) stream: TcpStream,
    /// What the driver keeps for the connection (nothing, for epoll).
    pub(crate) io: I,
    ip: IpAddr,
    verdict: Verdict,
    pub(crate) generation: u32,
    session: Session,
    /// A `wss://` connection's TLS state: received bytes are decrypted before the session
    /// sees them, and `out` seals what it writes.
    pub(crate) tls: Option<Box<TlsStream>>,
    /// close_notify was queued (or TLS failed, and none can be).
    tls_closed: bool,
    pub(crate) out: Outbound,
    timer: Option<(TimerId, u64)>,
    /// The session is done; close once the queue is flushed.
    pub(crate) close_after_flush: bool,
    /// Writing was shut down after a protocol error.
    write_shut: bool,
    gauge: Gauge,
    /// A connection of a user: `/ws`, `/sse` or `/poll` (broadcasts go to these, not to
    /// `/echo`).
    push_endpoint: bool,
    /// How deliveries reach it (meaningful with `push_endpoint`).
    transport: Transport,
    /// Listed in `Reactor::partial_order`.
    partial_listed: bool,
    /// Given frames this turn and listed in `Reactor::dirty`, to be written at its end.
    dirty: bool,
    /// Its opening is pending: what is delivered waits in `Reactor::opening` until the
    /// welcome comes.
    opening: bool,
}

impl<I> Conn<I> {
    /// Queues TLS close_notify, once, on a TLS connection whose handshake is done and
    /// whose TLS has not failed: true when it was queued.
    fn queue_close_notify(&mut self) -> bool {
        let (Some(tls), false) = (self.tls.as_deref_mut(), self.tls_closed) else {
            return false;
        };
        self.tls_closed = true;
        let mut notify = Vec::new();
        if tls.is_handshaking() || tls.close(&mut notify).is_err() {
            return false;
        }
        self.out.push_sealed(Bytes::from(notify));
        true
    }
}

/// A reactor thread's state, over the driver `D` that moves its bytes.
pub(crate) struct Reactor<D: Driver> {
    id: u16,
    pub(crate) io: D,
    accept_resume_at: Option<Instant>,
    inbox: Receiver<Queued>,
    /// Welcomes of pending openings.
    welcomes: Receiver<Welcomed>,
    /// What pending openings hold, by slab key: out of line, so a connection costs
    /// nothing for it once open.
    opening: std::collections::HashMap<usize, deliver::Held>,
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
    /// When this turn's pushes were received (if known) and taken off the inbox,
    /// observed once they are written.
    received: Vec<(Option<Instant>, Instant)>,
    pub(crate) conns: Slab<Conn<D::ConnIo>>,
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
    /// Received bytes on their way to a session, reused by every connection.
    pub(crate) read_buf: BytesMut,
    /// What TLS decrypted from `read_buf`, reused likewise.
    plain_buf: BytesMut,
    fx: Effects,
    drain: Option<DrainPlan>,
    accept_tokens: f64,
    accept_refill_at: Instant,
}

impl<D: Driver> std::fmt::Debug for Reactor<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("id", &self.id)
            .field("io", &D::NAME)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Reactor<D> {
    /// A reactor over the driver `io`, whose waker the caller registered on the driver's
    /// `mio::Poll`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u16,
        io: D,
        inbox: Receiver<Queued>,
        welcomes: Receiver<Welcomed>,
        inbox_shared: Arc<InboxShared>,
        config: Arc<ReactorConfig>,
        admission: Arc<Admission>,
        stats: Arc<ReactorStats>,
        hooks: Box<dyn Hooks>,
        mut services: Option<ServiceConns>,
    ) -> io::Result<Reactor<D>> {
        if let Some(s) = services.as_mut() {
            io.registry()
                .register(s.listener(), SERVICE_LISTENER, Interest::READABLE)?;
        }
        let now = Instant::now();
        Ok(Reactor {
            id,
            io,
            accept_resume_at: None,
            inbox,
            welcomes,
            opening: std::collections::HashMap::new(),
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
            read_buf: BytesMut::new(),
            plain_buf: BytesMut::new(),
            fx: Effects::default(),
            drain: None,
            accept_tokens: 0.0,
            accept_refill_at: now,
        })
    }

    /// The reactor's index.
    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    /// The reactor's counters.
    pub(crate) fn stats(&self) -> &ReactorStats {
        &self.stats
    }

    /// What the reactor shares with those who send it commands.
    pub(crate) fn inbox_shared(&self) -> &InboxShared {
        &self.inbox_shared
    }

    /// Mid-turn: delivers what the inbox holds and writes the connections it reached, so
    /// a long turn does not hold back what its first events routed.
    pub(crate) fn deliver_now(&mut self) {
        if self.inbox_waiting() {
            self.drain_inbox();
        }
        self.flush_dirty();
    }

    /// Whether commands wait in the inbox (the reactor's own deliveries among them).
    pub(crate) fn has_commands(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// The turn's start, after the wait: due timers, and the control listener's work
    /// left over from the last turn.
    pub(crate) fn begin_turn(&mut self, now: Instant, expired: &mut Vec<usize>) {
        expired.clear();
        self.wheel.advance(self.tick_of(now), expired);
        for &key in expired.iter() {
            self.on_timer(key);
        }
        if let Some(s) = self.services.as_mut() {
            s.turn_started(now);
            if s.accept_retry_at().is_some_and(|t| now >= t) {
                s.accept_loop(
                    self.io.registry(),
                    &mut self.wheel,
                    &self.ticks,
                    &self.stats,
                );
            }
            for key in s.take_again() {
                s.on_ready(
                    key,
                    true,
                    self.io.registry(),
                    &mut self.wheel,
                    &self.ticks,
                    &self.stats,
                );
            }
        }
    }

    /// The turn's end: what the inbox holds, the turn's writes, accepting where it
    /// stopped, a drain in progress. True when the reactor may exit.
    pub(crate) fn end_turn(&mut self, now: Instant) -> bool {
        // Commands may arrive faster than wakers are polled; never leave them waiting.
        if self.inbox_waiting() {
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
        let exit = self.drain.is_some() && self.advance_drain(now);
        self.stats.turn.observe_in(&STAGE_BUCKETS_US, now.elapsed());
        exit
    }

    /// An event of the driver's `mio::Poll` that is not a client connection's: the inbox's
    /// waker, or the control listener and its connections.
    pub(crate) fn on_poll_event(&mut self, token: Token, closed: bool) {
        match token {
            WAKER => self.drain_inbox(),
            SERVICE_LISTENER => {
                if let Some(s) = self.services.as_mut() {
                    s.accept_loop(
                        self.io.registry(),
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
                            closed,
                            self.io.registry(),
                            &mut self.wheel,
                            &self.ticks,
                            &self.stats,
                        );
                    }
                }
            }
            Token(_) => {}
        }
    }

    /// Whether commands or answers of parked control requests wait.
    fn inbox_waiting(&self) -> bool {
        !self.inbox.is_empty()
            || !self.welcomes.is_empty()
            || self
                .services
                .as_ref()
                .is_some_and(ServiceConns::has_answers)
    }

    fn tick_of(&self, t: Instant) -> u64 {
        self.ticks.tick_of(t)
    }

    fn tick_after(&self, t: Instant) -> u64 {
        self.ticks.tick_after(t)
    }

    /// How long the driver may wait for I/O: zero when work is waiting (`ready`: the
    /// driver's own), else until the next timer or deadline, or without end.
    pub(crate) fn poll_timeout(&self, ready: bool) -> Option<Duration> {
        // Work already waiting must not sleep until the next unrelated wakeup: the
        // inbox's waker fired once for all of it.
        let services_again = self
            .services
            .as_ref()
            .is_some_and(|s| s.has_again() || s.has_answers());
        if ready || self.inbox_waiting() || services_again {
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
        if let Some(t) = self
            .services
            .as_ref()
            .and_then(ServiceConns::accept_retry_at)
        {
            consider(t);
        }
        if let Some(plan) = &self.drain {
            consider(plan.next_due(self.config.session.close_timeout));
        }
        until.map(|t| t.saturating_duration_since(now))
    }

    // ---- socket events ---------------------------------------------------------------

    /// The bytes in `read_buf` arrived on the connection: its session takes them (through
    /// TLS, on a `wss://` connection).
    pub(crate) fn on_received(&mut self, key: usize) {
        self.stats.bytes_in.add(self.read_buf.len() as u64);
        let mut input = std::mem::take(&mut self.read_buf);
        if self.conns.get(key).is_some_and(|c| c.tls.is_some()) {
            let mut plain = std::mem::take(&mut self.plain_buf);
            let peer_closed = self.decrypt(key, &input, &mut plain);
            if !plain.is_empty() {
                self.with_session(key, |s, cx, fx| s.handle_input(&mut plain, cx, fx));
            }
            if peer_closed {
                self.on_eof(key);
            }
            plain.clear();
            self.plain_buf = plain;
        } else {
            self.with_session(key, |s, cx, fx| s.handle_input(&mut input, cx, fx));
        }
        input.clear();
        self.read_buf = input;
        self.note_partial_request(key);
    }

    /// Runs received ciphertext through the connection's TLS: the plaintext into `plain`,
    /// TLS's answers onto the queue and out. True when the peer sent close_notify. A TLS
    /// failure is counted, its alert sent, and the connection closed once that is out.
    fn decrypt(&mut self, key: usize, ciphertext: &[u8], plain: &mut BytesMut) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return false;
        };
        let handshaking = tls.is_handshaking();
        let mut answer = Vec::new();
        let result = tls.read_tls(ciphertext, plain, &mut answer);
        conn.out.push_sealed(Bytes::from(answer));
        let peer_closed = match result {
            Ok(()) => {
                if handshaking && !tls.is_handshaking() {
                    self.stats.tls_handshakes[usize::from(tls.resumed())].add(1);
                }
                tls.peer_closed()
            }
            Err(e) => {
                crate::tls::count_failure(&self.stats, handshaking, &e);
                conn.tls_closed = true;
                conn.close_after_flush = true;
                plain.clear();
                self.rearm(key, Instant::now());
                false
            }
        };
        self.flush(key);
        peer_closed
    }

    /// The peer will send nothing more.
    pub(crate) fn on_eof(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.tls.as_ref().is_some_and(|t| t.is_handshaking()) && !conn.tls_closed {
                // A truncated TLS handshake: the session's EOF handling closes it.
                conn.tls_closed = true;
                crate::tls::count_truncated(&self.stats);
            }
        }
        self.with_session(key, |s, _, fx| s.handle_eof(fx));
    }

    /// Whether accepting is held back (the accept rate, the pending-handshake bound, a
    /// back-off, a drain): a driver that accepts ahead must not start again on its own.
    pub(crate) fn accept_paused(&self) -> bool {
        self.accept_blocked || self.accept_resume_at.is_some() || self.drain.is_some()
    }

    /// Whether the connection still wants what it receives (not once its session ended).
    pub(crate) fn wants_input(&self, key: usize) -> bool {
        self.conns.get(key).is_some_and(|c| !c.close_after_flush)
    }

    fn on_timer(&mut self, key: usize) {
        if key >= SERVICE_BASE {
            if let Some(s) = self.services.as_mut() {
                if let Some(k) = s.own(key) {
                    s.on_timer(
                        k,
                        self.io.registry(),
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
                    TransmitKind::Pong => conn.out.push_pong(t.bytes, &self.config.outbound),
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
            Event::Opened {
                uid,
                device,
                since,
                transport,
                subs,
            } => {
                stats.handshakes_ok.add(1);
                stats.transport_opened[transport.index()].add(1);
                stats.transport_connections[transport.index()].add(1);
                self.set_gauge(key, Gauge::Upgraded);
                if let Some(c) = self.conns.get_mut(key) {
                    c.push_endpoint = true;
                    c.transport = transport;
                }
                if let Some(c) = cref {
                    match self.hooks.open(c, &uid, device.as_deref(), since) {
                        Some(welcome) => self.welcome(key, &uid, transport, welcome),
                        None => {
                            if let Some(conn) = self.conns.get_mut(key) {
                                conn.opening = true;
                            }
                            self.stats.openings_pending.add(1);
                            self.opening.insert(key, deliver::Held::new(uid));
                        }
                    }
                    if !subs.is_empty() {
                        self.hooks.subscribe(c, &subs);
                    }
                }
            }
            Event::HttpSend { uid, to, data } => {
                stats.messages_in.add(1);
                let result = self.hooks.send(&uid, &to, &data);
                self.with_session(key, |s, cx, fx| s.send_answered(result, cx, fx));
            }
            Event::SendAnswered(status) => stats.count_send_answer(status),
            Event::PollAnswered(messages) => stats.poll_answers[usize::from(messages)].add(1),
            Event::EchoOpened => {
                stats.handshakes_ok.add(1);
                self.set_gauge(key, Gauge::Upgraded);
            }
            Event::Request(_) => {
                stats.messages_in.add(1);
                if let Some(c) = cref {
                    self.hooks.on_session_event(c, event);
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

    /// Queues `welcome` and its replay on the connection.
    pub(super) fn welcome(
        &mut self,
        key: usize,
        uid: &str,
        transport: Transport,
        mut welcome: session::Welcome,
    ) {
        // A poll answers with the oldest of the replay and leaves the rest for the next
        // poll; the others queue the newest.
        match transport {
            Transport::Ws => trim_replay(&mut welcome, &self.config.outbound, 0),
            Transport::Sse => trim_replay(&mut welcome, &self.config.outbound, SSE_EVENT_OVERHEAD),
            Transport::Poll => {}
        }
        self.with_session(key, |s, cx, fx| s.welcome(uid, welcome, cx, fx));
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

    /// Writes the connection's queue (a completion-based driver may only start to).
    pub(crate) fn flush(&mut self, key: usize) {
        self.write(key, false);
    }

    /// [`Reactor::flush`], and `now`: the queue is full, so written at once where the
    /// driver can, not at the end of the turn.
    pub(crate) fn write(&mut self, key: usize, now: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match self.io.write(key, conn, now) {
            Ok(n) => self.stats.bytes_out.add(n as u64),
            Err(e) => {
                let tls = e
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<crate::tls::TlsError>());
                if let Some(e) = tls {
                    crate::tls::count_failure(&self.stats, false, e);
                }
                self.remove(key, false);
                return;
            }
        }
        self.after_write(key);
    }

    /// Some of the queue was written (by the driver, for a completion-based one): once
    /// it is all out, a connection whose session ended is closed.
    pub(crate) fn after_write(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.out.is_empty() {
            return;
        }
        if !(conn.close_after_flush || conn.write_shut) {
            return;
        }
        // The peer learns the stream ended here, not by truncation: close_notify goes
        // before the FIN (the next call, once it is out, sends that).
        if conn.queue_close_notify() {
            self.flush(key);
            return;
        }
        if conn.close_after_flush {
            self.remove(key, false);
        } else {
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

    pub(crate) fn remove(&mut self, key: usize, reset: bool) {
        if !self.conns.contains(key) {
            return;
        }
        let cref = self.conn_ref(key);
        let was_upgraded = self
            .conns
            .get(key)
            .is_some_and(|c| c.gauge == Gauge::Upgraded);
        if let Some(c) = self
            .conns
            .get(key)
            .filter(|c| c.push_endpoint && was_upgraded)
        {
            self.stats.transport_connections[c.transport.index()].sub(1);
        }
        self.set_gauge(key, Gauge::Neither);
        if self.opening.remove(&key).is_some() {
            self.stats.openings_pending.sub(1);
        }
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
        self.io.release(key, conn.generation, conn.stream, conn.io);
    }

    fn conn_ref(&self, key: usize) -> Option<ConnRef> {
        self.conns.get(key).map(|c| ConnRef {
            reactor: self.id,
            index: key as u32,
            generation: c.generation,
        })
    }
}

/// Most an event is longer than the frame of the same message: `id: <20 digits>\n`,
/// `data: `, the blank line.
const SSE_EVENT_OVERHEAD: usize = 4 + 20 + 1 + 6 + 2;

/// Keeps the replay behind a `welcome` within the connection's outbound queue, with room
/// for the `welcome` and an `error`: past that the connection would be closed as a slow
/// consumer before it read anything, and again on every reconnect. The newest messages
/// are kept, so the client's view runs without a gap into the live ones, and the welcome
/// says `recovered: false` (the client resyncs the older part from its backend).
/// `extra` is what each message grows by on its way to the connection (an event's `id:`
/// and `data:` lines against a frame's header).
fn trim_replay(welcome: &mut session::Welcome, limits: &crate::OutboundLimits, extra: usize) {
    /// Room kept for the `welcome` and an `error` frame.
    const RESERVED_BYTES: usize = 2048;
    let max_messages = limits.max_messages.saturating_sub(2);
    let max_bytes = limits.max_bytes.saturating_sub(RESERVED_BYTES);
    let (mut n, mut bytes) = (0, 0);
    for frame in welcome.replay.iter().rev() {
        if n + 1 > max_messages || bytes + frame.len() + extra > max_bytes {
            break;
        }
        n += 1;
        bytes += frame.len() + extra;
    }
    let drop = welcome.replay.len() - n;
    if drop > 0 {
        welcome.replay.drain(..drop);
        welcome.recovered = Some(false);
    }
}
