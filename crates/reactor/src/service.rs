//! A request/response listener served by the reactors beside the WebSocket listener: the
//! server API, health and metrics.
//!
//! Serving it here rather than on a thread of its own means a push is read, routed and,
//! for recipients on the same reactor, written to them in one loop turn with no thread hop;
//! and with `SO_REUSEPORT` the API scales with the reactors. What a request means is the
//! [`Service`]'s business (the binary's HTTP routes); this module owns the sockets: reading,
//! bounded output, keep-alive and idle timeouts, a bound on connections that evicts the
//! idlest when full, and a lingering close so an error response is read, not reset.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::clock::Ticks;
use crate::inbox::ReactorHandle;
use crate::parked::{Answered, Parked, Parking, Unanswered};
use crate::stats::ReactorStats;
use crate::wheel::{TimerId, Wheel};

/// What the service wants done with the connection after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading requests.
    KeepAlive,
    /// The answers reached the room given; complete requests may be left in the input, to
    /// be answered once the client has read some.
    Paused,
    /// Write what was answered, then close (no keep-alive, or an error that ends it).
    Close,
}

/// What a [`Service`] keeps for one connection between calls (a parser's progress through
/// a request still arriving, so that it is not parsed again from the start on every read).
/// Opaque to the reactor: `None` when the connection is accepted, dropped with it.
pub type ConnState = Option<Box<dyn std::any::Any + Send>>;

/// Answers requests. One per reactor; called on the reactor's thread, so it must not
/// block: a request whose answer depends on another thread is parked
/// ([`Parking::park`]) and answered later through its [`crate::Completion`].
pub trait Service: Send {
    /// Answers the complete requests at the front of `input` into `out`, removing the
    /// bytes it used, until it has added `room` bytes of answers (then [`Flow::Paused`]); a
    /// partial request stays in `input` for the next call. `eof` says the peer will send
    /// nothing more. The room bounds what a client that pipelines without reading costs.
    /// `state` is this connection's, kept between calls; between them the reactor only
    /// appends to `input`. A service that parks a request returns at once; it is called
    /// again for the requests behind it once the parked one is answered.
    fn serve(
        &mut self,
        state: &mut ConnState,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        room: usize,
        eof: bool,
        parking: &mut Parking<'_>,
    ) -> Flow;

    /// Writes the answer to a parked request that its completion did not answer: `why`
    /// says whether the completion was dropped or the deadline passed; `keep_alive` is
    /// what the request was parked with.
    fn unanswered(&mut self, why: Unanswered, keep_alive: bool, out: &mut Vec<u8>);
}

/// Limits of the service listener, per reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Connections the node holds (each reactor its share); a new one past it evicts the
    /// one that matters least.
    pub max_connections: usize,
    /// A connection silent this long after a request is closed.
    pub idle_timeout: Duration,
    /// A connection that has not completed its first request within this is closed.
    pub first_request_timeout: Duration,
    /// Answers buffered for one connection before its requests stop being read: a client
    /// that pipelines without reading is slowed down, not buffered without bound.
    pub max_pending_output: usize,
    /// Connections one client address may hold (over all reactors); past it a new one is
    /// answered 429 and closed, so one source cannot fill the table. 0 for no limit.
    pub max_connections_per_ip: u32,
}

impl ServiceLimits {
    /// The defaults, which the binary's configuration and `--help` take from here.
    pub const DEFAULT: ServiceLimits = ServiceLimits {
        max_connections: 1024,
        idle_timeout: Duration::from_secs(60),
        first_request_timeout: Duration::from_secs(5),
        max_pending_output: 1024 * 1024,
        max_connections_per_ip: 0,
    };
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits::DEFAULT
    }
}

/// Where and how the reactors serve a [`Service`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The listener, shared by the reactors with `SO_REUSEPORT`.
    pub listen: std::net::SocketAddr,
    /// Per-reactor limits.
    pub limits: ServiceLimits,
}

/// Connections accepted per turn before the reactor's other work gets its turn.
const ACCEPTS_PER_TURN: usize = 128;
/// Back-off after `accept` fails for lack of descriptors and none could be freed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Reads of one connection per readiness event before others get their turn.
const READS_PER_EVENT: usize = 8;

/// "Too many open files" for the process and for the system (Linux errno values).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// How long a connection closed after an error answer is still read (and discarded), so
/// that the client reads the answer instead of a reset (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);

/// How long a new connection may be silent and still count as a request on its way: an
/// honest client's request follows its connect by about a round trip, and a flood of
/// connections that each send a byte must not evict it in that moment.
const SILENT_GRACE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests.
    Open,
    /// Writing the last answer; then shut down writing and linger.
    Closing,
    /// Writing is shut down; input is discarded until EOF or the linger deadline.
    Lingering,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    input: BytesMut,
    /// The service's own state for this connection.
    state: ConnState,
    output: Vec<u8>,
    /// Written so far of `output`.
    written: usize,
    phase: Phase,
    /// Whether a complete request was ever answered (the idle timeout then applies,
    /// rather than the shorter first-request timeout).
    answered: bool,
    /// The service paused at its output room with requests possibly left in `input`.
    paused: bool,
    last_active: Instant,
    timer: Option<(TimerId, u64)>,
    /// The client's address, when it holds a place under the per-address limit.
    ip: Option<std::net::IpAddr>,
    /// A request waiting for its answer from another thread: the connection is read no
    /// further meanwhile.
    parked: Option<Parked>,
    /// The peer's EOF came while a request was parked: acted on once it is answered.
    eof: bool,
}

/// The service connections of one reactor.
pub(crate) struct ServiceConns {
    listener: TcpListener,
    conns: Slab<Conn>,
    service: Box<dyn Service>,
    limits: ServiceLimits,
    /// Added to slab keys for tokens and timer keys, to tell them from WebSocket ones.
    base: usize,
    /// Connections whose read budget ran out with input possibly left.
    again: Vec<usize>,
    /// When to try `accept` again: the accept budget ran out, or descriptors did.
    accept_retry_at: Option<Instant>,
    /// Connections per client address, shared by the reactors.
    per_ip: std::sync::Arc<crate::address_limit::AddressLimit>,
    /// The reactor's own handle, for the completions of parked requests, and where their
    /// answers arrive.
    handle: Option<ReactorHandle>,
    answers: Option<Receiver<Answered>>,
    /// The last parking token given (never reused, unlike slab keys).
    next_token: u64,
    /// When the reactor's current turn began: a request read later in the turn waited
    /// for the work before it (the `read` stage of `pushgate_push_stage_seconds`).
    turn_start: Instant,
}

impl std::fmt::Debug for ServiceConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConns")
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl ServiceConns {
    pub(crate) fn new(
        listener: TcpListener,
        service: Box<dyn Service>,
        limits: ServiceLimits,
        base: usize,
        per_ip: std::sync::Arc<crate::address_limit::AddressLimit>,
    ) -> Self {
        ServiceConns {
            listener,
            conns: Slab::new(),
            service,
            limits,
            base,
            again: Vec::new(),
            accept_retry_at: None,
            per_ip,
            handle: None,
            answers: None,
            next_token: 0,
            turn_start: Instant::now(),
        }
    }

    /// Lets the service park requests: completions answer through `handle`, whose
    /// answers arrive on `answers`.
    pub(crate) fn with_parking(
        mut self,
        handle: ReactorHandle,
        answers: Receiver<Answered>,
    ) -> Self {
        self.handle = Some(handle);
        self.answers = Some(answers);
        self
    }

    /// Whether answers of parked requests are waiting.
    pub(crate) fn has_answers(&self) -> bool {
        self.answers.as_ref().is_some_and(|a| !a.is_empty())
    }

    /// Writes the answers that arrived for parked requests, and serves what their
    /// connections sent behind them.
    pub(crate) fn drain_answers(
        &mut self,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
    ) {
        let Some(rx) = self.answers.clone() else {
            return;
        };
        // Bounded per turn by what is there now: answers arriving meanwhile wait for the
        // next turn rather than starving the rest of this one.
        for _ in 0..rx.len() {
            let Ok(a) = rx.try_recv() else {
                return;
            };
            let matches = self
                .conns
                .get(a.key)
                .is_some_and(|c| c.parked.is_some_and(|p| p.token == a.token));
            if !matches {
                // Its connection went, or its deadline answered it first.
                stats.service_answers_late.add(1);
                continue;
            }
            let why = match a.answer {
                Some(answer) => Ok(answer),
                None => Err(Unanswered::Dropped),
            };
            self.unpark(a.key, why, registry, wheel, ticks, stats);
        }
    }

    /// Writes the parked request's answer (or the service's word for why there is none)
    /// and goes on with the connection: what it sent behind, then reading again.
    fn unpark(
        &mut self,
        key: usize,
        answer: Result<Vec<u8>, Unanswered>,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
    ) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let Some(parked) = c.parked.take() else {
            return;
        };
        if c.written == c.output.len() {
            c.output.clear();
            c.written = 0;
        }
        match answer {
            Ok(answer) => c.output.extend_from_slice(&answer),
            Err(why) => {
                if why == Unanswered::TimedOut {
                    stats.service_parked_timeouts.add(1);
                } else {
                    stats.service_parked_dropped.add(1);
                }
                self.service
                    .unanswered(why, parked.keep_alive, &mut c.output);
            }
        }
        stats.service_parked.sub(1);
        stats.service_requests.add(1);
        c.answered = true;
        c.last_active = ticks.now();
        if !parked.keep_alive {
            c.phase = Phase::Closing;
            c.input = BytesMut::new();
        } else {
            // Requests may wait behind the one answered: served before reading more
            // (the readiness edge may have passed while the connection was not read).
            c.paused = true;
        }
        self.rearm(key, wheel, ticks);
        self.on_ready(key, true, registry, wheel, ticks, stats);
    }

    /// Connections to read again this turn (their budget ran out last time).
    /// A turn of the reactor began at `now`.
    pub(crate) fn turn_started(&mut self, now: Instant) {
        self.turn_start = now;
    }

    pub(crate) fn take_again(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.again)
    }

    /// Whether some connection waits to be read again.
    pub(crate) fn has_again(&self) -> bool {
        !self.again.is_empty()
    }

    /// When `accept` is to be tried again, if it stopped short of the backlog's end.
    pub(crate) fn accept_retry_at(&self) -> Option<Instant> {
        self.accept_retry_at
    }

    pub(crate) fn listener(&mut self) -> &mut TcpListener {
        &mut self.listener
    }

    /// Whether a token or timer key is one of ours; the slab key if so.
    pub(crate) fn own(&self, key: usize) -> Option<usize> {
        key.checked_sub(self.base)
    }

    pub(crate) fn accept_loop(
        &mut self,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
    ) {
        self.accept_retry_at = None;
        let mut evicted_for_fd = false;
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.on_accept(stream, peer.ip(), registry, wheel, ticks, stats)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    stats.accept_errors.add(1);
                    // Out of descriptors: one idle API connection gives its own up, so the
                    // operator's scrape or a backend's push still gets in — once per turn,
                    // and never one with a request or answer in flight (another reactor
                    // may take the descriptor first; then the next turn tries again).
                    let out_of_fds = matches!(e.raw_os_error(), Some(EMFILE | ENFILE));
                    if out_of_fds
                        && !evicted_for_fd
                        && self.evict_idlest_up_to(registry, wheel, ticks, stats, "fd_limit", 2)
                    {
                        evicted_for_fd = true;
                        continue;
                    }
                    tracing::warn!(error = %e, "control accept failed; retrying shortly");
                    self.accept_retry_at = Some(ticks.now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
        // Budget spent with connections possibly left in the backlog: the listener's edge
        // will not repeat, so come back next turn.
        self.accept_retry_at = Some(ticks.now());
    }

    fn on_accept(
        &mut self,
        mut stream: TcpStream,
        ip: std::net::IpAddr,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
    ) {
        if !self.per_ip.take(ip) {
            // Told why, best effort (a fresh socket takes a small answer), then closed.
            stats.count_service_evicted("per_ip");
            let answer = protocol::handshake::error_response(
                protocol::handshake::Status::TooManyRequests,
                "too many connections from this address",
            );
            let _ = stream.write(&answer);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let ip = (self.limits.max_connections_per_ip > 0).then_some(ip);
        if self.conns.len() >= self.limits.max_connections.max(1) {
            self.evict_idlest(registry, wheel, ticks, stats, "full");
        }
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if registry
            .register(
                &mut stream,
                Token(self.base + key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            if let Some(ip) = ip {
                self.per_ip.release(ip);
            }
            return;
        }
        entry.insert(Conn {
            stream,
            input: BytesMut::new(),
            state: None,
            output: Vec::new(),
            written: 0,
            phase: Phase::Open,
            answered: false,
            paused: false,
            last_active: ticks.now(),
            timer: None,
            ip,
            parked: None,
            eof: false,
        });
        stats.service_accepted.add(1);
        stats.service_connections.add(1);
        self.rearm(key, wheel, ticks);
        // A client usually sends its request right behind the connect: read it now, so
        // the next eviction choice sees a request in progress rather than a silent socket.
        self.on_ready(key, false, registry, wheel, ticks, stats);
    }

    /// Makes room: closes the connection that matters least (see [`eviction_rank`]), the
    /// idlest of its rank. A scan of at most `max_connections`, and only when full. False
    /// if there was none.
    fn evict_idlest(
        &mut self,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
        reason: &str,
    ) -> bool {
        self.evict_idlest_up_to(registry, wheel, ticks, stats, reason, u8::MAX)
    }

    /// [`Self::evict_idlest`] among connections of [`eviction_rank`] at most `max_rank`.
    fn evict_idlest_up_to(
        &mut self,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
        reason: &str,
        max_rank: u8,
    ) -> bool {
        let now = ticks.now();
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| eviction_rank(c, now) <= max_rank)
            .min_by_key(|(_, c)| (eviction_rank(c, now), c.last_active))
            .map(|(k, _)| k);
        match victim {
            Some(key) => {
                stats.count_service_evicted(reason);
                self.remove(key, registry, wheel, stats);
                true
            }
            None => false,
        }
    }

    pub(crate) fn on_ready(
        &mut self,
        key: usize,
        until_would_block: bool,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
    ) {
        let mut chunk = [0u8; 16 * 1024];
        let mut reads = 0;
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if reads == READS_PER_EVENT {
                // One client pipelining without pause must not hold the reactor: the rest
                // of its input waits for the next turn (edge-triggered readiness will not
                // repeat, so it is remembered).
                self.again.push(key);
                return;
            }
            if !write_out(c) {
                return self.remove(key, registry, wheel, stats);
            }
            if c.phase == Phase::Closing && c.written == c.output.len() {
                let _ = c.stream.shutdown(Shutdown::Write);
                c.phase = Phase::Lingering;
                c.last_active = ticks.now();
                self.rearm(key, wheel, ticks);
                continue;
            }
            let c = match self.conns.get_mut(key) {
                Some(c) if c.phase == Phase::Closing => return,
                // Not read while its request waits: what it pipelines behind stays in
                // the kernel, not in our memory.
                Some(c) if c.parked.is_some() => return,
                Some(c) if c.output.len() - c.written > self.limits.max_pending_output => return,
                Some(c) => c,
                None => return,
            };
            if c.paused && c.phase == Phase::Open {
                // The client has read enough of its answers: answer what it already sent
                // before reading more (there may be nothing more to read).
                let eof = c.eof;
                self.serve(key, eof, stats, Instant::now());
                continue;
            }
            reads += 1;
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    if c.phase == Phase::Lingering {
                        return self.remove(key, registry, wheel, stats);
                    }
                    // The client is done sending: answer what is complete, then close.
                    self.serve(key, true, stats, Instant::now());
                }
                Ok(n) => {
                    if c.phase == Phase::Lingering {
                        continue;
                    }
                    // Until its first answer a connection's clock runs from its accept, so
                    // trickling a request buys no time.
                    if c.answered {
                        c.last_active = ticks.now();
                    }
                    c.input.extend_from_slice(&chunk[..n]);
                    let now = Instant::now();
                    stats.observe_stage(
                        crate::stats::stage::READ,
                        now.saturating_duration_since(self.turn_start),
                    );
                    self.serve(key, false, stats, now);
                    if let Some(c) = self.conns.get_mut(key).filter(|c| c.answered) {
                        c.last_active = ticks.now();
                    }
                    self.rearm(key, wheel, ticks);
                    // Paused with requests left: go round, they are answered as the
                    // output drains, not only when the client sends more.
                    let open = self
                        .conns
                        .get(key)
                        .is_some_and(|c| c.phase == Phase::Open && !c.paused);
                    if open && n < chunk.len() && !until_would_block {
                        // Drained (see the reactor's `on_readable`): write, don't read again.
                        if let Some(c) = self.conns.get_mut(key) {
                            if !write_out(c) {
                                self.remove(key, registry, wheel, stats);
                            }
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(c) = self.conns.get_mut(key) {
                        if !write_out(c) {
                            self.remove(key, registry, wheel, stats);
                        }
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove(key, registry, wheel, stats),
            }
        }
    }

    fn serve(&mut self, key: usize, eof: bool, stats: &ReactorStats, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.parked.is_some() {
            c.eof |= eof;
            return;
        }
        if c.written == c.output.len() {
            c.output.clear();
            c.written = 0;
        }
        let before = c.output.len();
        let pending = c.output.len() - c.written;
        let room = self
            .limits
            .max_pending_output
            .saturating_sub(pending)
            .max(1);
        let mut parking = Parking {
            handle: self.handle.as_ref(),
            key,
            next_token: &mut self.next_token,
            parked: &mut c.parked,
            now,
        };
        let flow = self.service.serve(
            &mut c.state,
            &mut c.input,
            &mut c.output,
            room,
            eof,
            &mut parking,
        );
        if c.output.len() > before {
            c.answered = true;
            stats.service_requests.add(1);
        }
        if c.parked.is_some() {
            // Whatever it said, nothing more is served until the parked one is answered.
            stats.service_parked.add(1);
            c.paused = false;
            c.eof = eof;
            return;
        }
        c.paused = flow == Flow::Paused;
        if flow == Flow::Close || eof {
            c.phase = Phase::Closing;
            c.input = BytesMut::new();
            c.state = None;
        }
    }

    pub(crate) fn on_timer(
        &mut self,
        key: usize,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        ticks: &Ticks,
        stats: &ReactorStats,
    ) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.timer = None;
        let (phase, answered) = (c.phase, c.answered);
        if c.parked.is_some() {
            if ticks.now() >= deadline(c, &self.limits) {
                self.unpark(
                    key,
                    Err(Unanswered::TimedOut),
                    registry,
                    wheel,
                    ticks,
                    stats,
                );
            } else {
                self.rearm(key, wheel, ticks);
            }
            return;
        }
        if ticks.now() >= deadline(c, &self.limits) {
            if phase == Phase::Open {
                stats.count_service_evicted(if answered {
                    "idle_timeout"
                } else {
                    "first_request_timeout"
                });
            }
            return self.remove(key, registry, wheel, stats);
        }
        self.rearm(key, wheel, ticks);
    }

    fn rearm(&mut self, key: usize, wheel: &mut Wheel<usize>, ticks: &Ticks) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        let due = ticks
            .tick_after(deadline(c, &self.limits))
            .max(wheel.now() + 1);
        let timer = match c.timer {
            Some((_, armed)) if armed <= due => return,
            Some((id, _)) => wheel
                .rearm(id, due)
                .unwrap_or_else(|| wheel.arm(due, self.base + key)),
            None => wheel.arm(due, self.base + key),
        };
        if let Some(c) = self.conns.get_mut(key) {
            c.timer = Some((timer, due));
        }
    }

    fn remove(
        &mut self,
        key: usize,
        registry: &Registry,
        wheel: &mut Wheel<usize>,
        stats: &ReactorStats,
    ) {
        if let Some(mut c) = self.conns.try_remove(key) {
            stats.service_connections.sub(1);
            if let Some(ip) = c.ip {
                self.per_ip.release(ip);
            }
            if c.parked.is_some() {
                // Its completion's answer will find nobody.
                stats.service_parked.sub(1);
            }
            if let Some((id, _)) = c.timer {
                wheel.cancel(id);
            }
            let _ = registry.deregister(&mut c.stream);
        }
    }
}

/// Which connection goes first when room is needed: one done but for its lingering close,
/// then one that never sent a byte, then an idle keep-alive one; one with a request in
/// progress or an answer still being written only when nothing else is left, the one that
/// has waited longest first, and one whose request is parked (its answer on its way from
/// another thread) last of all. A connection accepted within [`SILENT_GRACE`] whose request
/// has not arrived yet counts as one in progress, not as silent: under a flood of
/// connections that each send a byte, it is the newest, so it stays.
fn eviction_rank(c: &Conn, now: Instant) -> u8 {
    let writing = c.written < c.output.len();
    if c.parked.is_some() {
        return 4;
    }
    match c.phase {
        Phase::Closing if writing => 3,
        Phase::Closing | Phase::Lingering => 0,
        Phase::Open if !c.answered && c.input.is_empty() => {
            if now.saturating_duration_since(c.last_active) < SILENT_GRACE {
                3
            } else {
                1
            }
        }
        Phase::Open if c.input.is_empty() && c.written == c.output.len() => 2,
        Phase::Open => 3,
    }
}

/// When the connection is closed unless it does something.
fn deadline(c: &Conn, limits: &ServiceLimits) -> Instant {
    if let Some(p) = c.parked {
        return p.deadline;
    }
    let wait = match c.phase {
        Phase::Lingering => LINGER,
        _ if c.answered => limits.idle_timeout,
        _ => limits.first_request_timeout,
    };
    c.last_active + wait
}

/// Writes what is pending until done or `WouldBlock`; false on a broken connection.
fn write_out(c: &mut Conn) -> bool {
    while c.written < c.output.len() {
        match c.stream.write(&c.output[c.written..]) {
            Ok(0) => return false,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if c.written == c.output.len() && c.output.capacity() > 64 * 1024 {
        // A large answer (metrics) is not kept for the connection's lifetime.
        c.output = Vec::new();
        c.written = 0;
    }
    true
}
