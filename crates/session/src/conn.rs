//! One client connection, from the first byte of the upgrade request to the end of the
//! close handshake (RFC 6455 §4, §5.5, §7).
//!
//! ```text
//! Handshake ──101──► Open ──our close──► Closing ──peer's close / EOF──► Closed
//!     │               │  └─peer's close: answer 1000───────────────────────► Closed
//!     └─error status──┴─protocol error: close code, shut down writing─► Closing (discard)
//! ```
//! The fallback transports leave the WebSocket path at the request head (see
//! [`crate::fallback`]): `GET /sse` becomes a [`Phase::Sse`] stream, `GET /poll` a
//! [`Phase::Poll`] parked until a message or its timeout, `POST /send` a [`Phase::Send`]
//! that reads its body, is answered, and returns to [`Phase::Handshake`] for the next
//! request on a keep-alive connection.
//!
//! Timers are derived from two instants and need no bookkeeping on reads: while open,
//! reading only moves `since`; the driver's single timer fires at the old deadline, finds
//! nothing due, and is re-armed at [`Session::next_deadline`].

use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use protocol::deflate::{negotiate, DeflateParams, Deflater, Inflater};
use protocol::frame::{server_close, server_frame, FrameBuilder};
use protocol::handshake::{
    error_response, switching_protocols, validate, Request, RequestParser, Status,
};
use protocol::{CloseCode, Decoder, Message, OpCode};

use crate::auth::{authenticate, AuthError, AuthMode, RoomGrant};
use crate::client_protocol::{self, ClientRequest};
use crate::config::{SessionConfig, MAX_RATE_LIMITED_IN_A_ROW};
use crate::effects::{CloseKind, Effects, Event, TransmitKind};
use crate::fallback::{self, Transport};
use crate::messages;

/// Compression contexts shared by all connections of a reactor: with no context takeover
/// (the default) they carry nothing from one message to the next.
///
/// A client may ask for a smaller server window (RFC 7692 §7.1.2.1) and then cannot inflate
/// back-references further than it: so there is one compressor per window size in use,
/// each made the first time a connection with that window needs it.
#[derive(Debug)]
pub struct Codecs {
    /// Inflates client messages (a 15-bit window inflates any smaller one).
    pub inflater: Inflater,
    level: u32,
    /// Indexed by window bits − [`MIN_WINDOW_BITS`].
    deflaters: [Option<Box<Deflater>>; WINDOW_SIZES],
}

/// Smallest server window zlib produces in raw mode (negotiation never agrees on less).
pub const MIN_WINDOW_BITS: u8 = 9;
/// Window sizes 9..=15.
pub const WINDOW_SIZES: usize = 7;

impl Codecs {
    /// Stateless codecs for `config`; no compressor is allocated until one is used.
    pub fn new(config: &SessionConfig) -> Self {
        Codecs {
            inflater: Inflater::new(15, true),
            level: config.deflate.level,
            deflaters: Default::default(),
        }
    }

    /// The shared compressor for a window of `window_bits` (clamped to 9..=15).
    pub fn deflater(&mut self, window_bits: u8) -> &mut Deflater {
        let bits = window_bits.clamp(MIN_WINDOW_BITS, 15);
        let level = self.level;
        self.deflaters[usize::from(bits - MIN_WINDOW_BITS)]
            .get_or_insert_with(|| Box::new(Deflater::new(level, bits, true)))
    }
}

/// Which endpoint a connection was upgraded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/ws`: client requests go to the router.
    Push,
    /// `/echo`: every data message is sent back.
    Echo,
}

#[derive(Debug)]
struct HandshakeState {
    parser: RequestParser,
    /// Admission control's verdict, answered once the request is read.
    reject: Option<Status>,
    /// A keep-alive `/send` connection's rate limit, carried to its next request.
    rate: Option<RateLimit>,
    /// Requests answered so far from the bytes of one read (pipelined behind a `/send`).
    pipelined: u8,
}

/// An open `/sse` stream. `Session::since` is when the last heartbeat was due: the client
/// sends nothing after its request, so there is no silence to measure.
#[derive(Debug)]
struct Stream {
    token_expires: Option<Instant>,
}

/// A parked `/poll`.
#[derive(Debug)]
struct Parked {
    /// When it is answered with no messages.
    deadline: Instant,
    /// The user's latest seq when it was parked (the router's `welcome.seq`).
    seq: Option<u64>,
    /// The request's `Origin`, for the answer's CORS header.
    origin: Option<Box<[u8]>>,
}

/// A `POST /send` whose body is being read, then answered.
#[derive(Debug)]
struct SendBody {
    uid: String,
    /// `Content-Length`.
    need: usize,
    body: BytesMut,
    keep_alive: bool,
    origin: Option<Box<[u8]>>,
    rate: RateLimit,
    /// Requests answered before this one from the same read.
    pipelined: u8,
    /// Bytes after the body: the next request(s), answered after this one.
    next: BytesMut,
}

/// What a keep-alive connection carries from one request to the next: its rate limit, and
/// how many requests of the current read were answered (bounding pipelining).
type Carried = (Option<RateLimit>, u8);

/// Requests answered from the bytes of one read behind a `POST /send`, each in order
/// (RFC 9112 §9.3.2); past it the connection closes after the last answer and the client
/// sends the rest again. Each is answered within the call that read them, so this bounds
/// that call's work and depth.
const MAX_PIPELINED: u8 = 16;

/// Codecs of a connection that negotiated context takeover (never with the defaults).
#[derive(Debug)]
struct OwnCodecs {
    inflater: Option<Inflater>,
    deflater: Option<Deflater>,
}

#[derive(Debug)]
struct Open {
    decoder: Decoder,
    endpoint: Endpoint,
    deflate: Option<DeflateParams>,
    own: Option<Box<OwnCodecs>>,
    ping_outstanding: bool,
    bad_requests: u32,
    /// When the token stops being valid (JWT auth only).
    token_expires: Option<Instant>,
    rate: RateLimit,
    /// Rooms the token allows joining; `None` for any. Boxed: most connections have none.
    rooms: Option<Box<RoomGrant>>,
}

/// Whether a request is subject to the per-connection rate limit.
fn costs_others(req: &ClientRequest) -> bool {
    !matches!(req, ClientRequest::Ping | ClientRequest::Ack { .. })
}

/// A token bucket over client requests: `client_rate` a second, bursts of twice that.
#[derive(Debug)]
struct RateLimit {
    tokens: f32,
    refilled: Instant,
    /// Requests refused in a row; the contract closes with 1008 at ten.
    refused_in_a_row: u32,
}

impl RateLimit {
    fn new(now: Instant, rate: u32) -> Self {
        RateLimit {
            tokens: burst(rate),
            refilled: now,
            refused_in_a_row: 0,
        }
    }

    /// Takes a token if one is there.
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f32();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst(rate));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }
}

fn burst(rate: u32) -> f32 {
    2.0 * rate as f32
}

#[derive(Debug)]
struct Closing {
    /// `None` after a protocol error: input is discarded unread.
    decoder: Option<Decoder>,
    deadline: Instant,
    deflate: bool,
}

#[derive(Debug)]
enum Phase {
    Handshake(Box<HandshakeState>),
    Open(Open),
    Sse(Stream),
    Poll(Box<Parked>),
    Send(Box<SendBody>),
    Closing(Closing),
    Closed,
}

/// The per-connection state machine.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    /// Handshake: when the connection was accepted. Open: when the peer last sent bytes.
    since: Instant,
}

/// What a call needs besides the session itself.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The listener's settings.
    pub config: &'a SessionConfig,
    /// The reactor's shared codecs.
    pub codecs: &'a mut Codecs,
    /// The current time.
    pub now: Instant,
    /// Node-unique connection ID, sent in `welcome`.
    pub conn_id: ConnId,
}

/// A connection ID unique on this node for the process lifetime: its reactor, slab slot
/// and the slot's generation. Formatted only when sent, never per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    /// The owning reactor.
    pub reactor: u16,
    /// Slot in the reactor's slab.
    pub slot: u32,
    /// Generation of the slot.
    pub generation: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:x}-{:x}-{:x}",
            self.reactor, self.slot, self.generation
        )
    }
}

impl Session {
    /// A connection just accepted. `reject` is admission control's verdict (capacity, per-IP
    /// limit, draining): the request is still read so the client gets a real HTTP status.
    pub fn new(now: Instant, reject: Option<Status>, config: &SessionConfig) -> Self {
        Session {
            phase: Phase::Handshake(Box::new(HandshakeState {
                parser: RequestParser::new(config.max_header_bytes),
                reject,
                rate: None,
                pipelined: 0,
            })),
            since: now,
        }
    }

    /// Upgraded (or streaming, or parked) and not closing: takes deliveries.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_) | Phase::Sse(_) | Phase::Poll(_))
    }

    /// Still in the upgrade handshake.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshake(_))
    }

    /// Still handshaking with part of a request received (a `/send` body included): an
    /// honest client sends its request in one go, so one that stops midway is dribbling
    /// (or very slow).
    pub fn handshake_partial(&self) -> bool {
        match &self.phase {
            Phase::Handshake(hs) => hs.parser.buffered() > 0,
            Phase::Send(send) => send.body.len() < send.need,
            _ => false,
        }
    }

    /// Finished: the driver closes the socket once its queue is flushed.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether permessage-deflate was negotiated (and server frames may be compressed).
    pub fn compresses(&self) -> bool {
        self.compress_window().is_some()
    }

    /// The window, in bits, that server frames to this connection must be compressed
    /// within; `None` when permessage-deflate was not negotiated.
    pub fn compress_window(&self) -> Option<u8> {
        match &self.phase {
            Phase::Open(o) => o.deflate.map(|p| p.server_max_window_bits),
            _ => None,
        }
    }

    /// Bytes received. `input` is consumed entirely.
    pub fn handle_input(&mut self, input: &mut BytesMut, cx: &mut Ctx<'_>, fx: &mut Effects) {
        if input.is_empty() {
            return;
        }
        match &mut self.phase {
            Phase::Handshake(hs) => {
                let data = input.split();
                match hs.parser.feed(&data) {
                    Ok(None) => {}
                    Ok(Some(req)) => {
                        let reject = hs.reject;
                        let rate = hs.rate.take();
                        let pipelined = hs.pipelined;
                        self.upgrade(req, reject, (rate, pipelined), cx, fx);
                    }
                    Err(e) => self.refuse(e.status(), &e.to_string(), fx),
                }
            }
            Phase::Open(_) => {
                self.since = cx.now;
                self.read_frames(input, cx, fx);
            }
            Phase::Send(_) => self.read_body(input, cx, fx),
            // Nothing a client sends after an `/sse` or `/poll` request means anything.
            Phase::Sse(_) | Phase::Poll(_) => input.clear(),
            Phase::Closing(_) => self.read_while_closing(input, cx, fx),
            Phase::Closed => input.clear(),
        }
    }

    /// The peer closed its side of the TCP connection.
    pub fn handle_eof(&mut self, fx: &mut Effects) {
        self.phase = Phase::Closed;
        fx.close = Some(CloseKind::Graceful);
    }

    /// The driver's timer fired. Does whatever is due at `now` (possibly nothing).
    pub fn handle_timeout(&mut self, cx: &mut Ctx<'_>, fx: &mut Effects) {
        let now = cx.now;
        let config = cx.config;
        match &mut self.phase {
            // A `/send` body is read within the handshake timeout too (slowloris).
            Phase::Handshake(_) | Phase::Send(_) => {
                if now >= self.since + config.handshake_timeout {
                    fx.events.push(Event::HandshakeTimeout);
                    self.phase = Phase::Closed;
                    fx.close = Some(CloseKind::Graceful);
                }
            }
            Phase::Sse(stream) => {
                if config.close_on_token_expiry && stream.token_expires.is_some_and(|t| now >= t) {
                    fx.events.push(Event::TokenExpired);
                    self.close(CloseCode::POLICY, "token expired", cx, fx);
                } else if now >= self.since + config.heartbeat {
                    self.since = now;
                    fx.events.push(Event::HeartbeatSent);
                    fx.send(
                        TransmitKind::Control,
                        Bytes::from_static(fallback::SSE_HEARTBEAT),
                    );
                }
            }
            Phase::Poll(p) => {
                if now >= p.deadline {
                    let seq = p.seq;
                    self.answer_poll(fallback::poll_body([], seq), false, fx);
                }
            }
            Phase::Open(open) => {
                let silent = now.saturating_duration_since(self.since);
                if config.close_on_token_expiry && open.token_expires.is_some_and(|t| now >= t) {
                    fx.events.push(Event::TokenExpired);
                    self.close(CloseCode::POLICY, "token expired", cx, fx);
                } else if silent >= config.idle_timeout {
                    fx.events.push(Event::IdleTimeout);
                    self.close(CloseCode::GOING_AWAY, "idle timeout", cx, fx);
                } else if silent >= config.heartbeat && !open.ping_outstanding {
                    open.ping_outstanding = true;
                    fx.events.push(Event::HeartbeatSent);
                    fx.send(TransmitKind::Control, server_frame(OpCode::Ping, b""));
                }
            }
            Phase::Closing(c) => {
                if now >= c.deadline {
                    fx.events.push(Event::CloseTimeout);
                    self.phase = Phase::Closed;
                    fx.close = Some(CloseKind::Reset);
                }
            }
            Phase::Closed => {}
        }
    }

    /// Starts a server-initiated close (drain, idle, slow consumer, policy). The socket stays
    /// open for the peer's close frame until the close timeout.
    pub fn close(&mut self, code: CloseCode, reason: &str, cx: &mut Ctx<'_>, fx: &mut Effects) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Open(open) => {
                fx.send(TransmitKind::Close, server_close(code, reason));
                self.phase = Phase::Closing(Closing {
                    decoder: Some(open.decoder),
                    deadline: cx.now + cx.config.close_timeout,
                    deflate: open.deflate.is_some(),
                });
            }
            Phase::Sse(_) => {
                fx.send(TransmitKind::Close, fallback::sse_close(code.0, reason));
                fx.close = Some(CloseKind::Graceful);
            }
            // A parked poll is answered rather than cut: the client polls again.
            Phase::Poll(p) => {
                let seq = p.seq;
                self.phase = Phase::Poll(p);
                self.answer_poll(fallback::poll_body([], seq), false, fx);
            }
            Phase::Handshake(_) | Phase::Send(_) => fx.close = Some(CloseKind::Graceful),
            other @ Phase::Closing(_) => self.phase = other,
            Phase::Closed => fx.close = Some(CloseKind::Graceful),
        }
    }

    /// When the driver's timer should next fire.
    pub fn next_deadline(&self, config: &SessionConfig) -> Option<Instant> {
        match &self.phase {
            Phase::Handshake(_) | Phase::Send(_) => Some(self.since + config.handshake_timeout),
            Phase::Sse(stream) => {
                let beat = self.since + config.heartbeat;
                match stream.token_expires {
                    Some(t) if config.close_on_token_expiry => Some(beat.min(t)),
                    _ => Some(beat),
                }
            }
            Phase::Poll(p) => Some(p.deadline),
            Phase::Open(o) => {
                let silence = if o.ping_outstanding {
                    self.since + config.idle_timeout
                } else {
                    self.since + config.heartbeat.min(config.idle_timeout)
                };
                match o.token_expires {
                    Some(t) if config.close_on_token_expiry => Some(silence.min(t)),
                    _ => Some(silence),
                }
            }
            Phase::Closing(c) => Some(c.deadline),
            Phase::Closed => None,
        }
    }

    /// Sends `welcome` to a `/ws` connection the router has registered (the driver calls
    /// this when it hands [`Event::Opened`] to the router), then the router's replay of
    /// retained messages and, if the resume point was refused, an `error`.
    pub fn welcome(&mut self, uid: &str, w: messages::Welcome, cx: &mut Ctx<'_>, fx: &mut Effects) {
        match self.phase {
            Phase::Open(_) | Phase::Sse(_) => {}
            Phase::Poll(_) => return self.poll_opened(w, cx, fx),
            _ => return,
        }
        let sse = matches!(self.phase, Phase::Sse(_));
        let welcome = messages::welcome(
            &cx.conn_id.to_string(),
            uid,
            cx.config.heartbeat.as_secs(),
            &cx.config.reconnect,
            w.seq,
            w.recovered,
        );
        if sse {
            // The same JSON as `/ws` sends, as events; the replay's carry their seq as `id`.
            for frame in std::iter::once(welcome).chain(w.replay) {
                if let Some(event) = fallback::sse_from_frame(&frame) {
                    fx.send(TransmitKind::Data, event);
                }
            }
            if let Some(e) = w.error {
                let event = fallback::sse_event(&client_protocol::error_json(e), None);
                fx.send(TransmitKind::Data, event);
            }
            return;
        }
        fx.send(TransmitKind::Data, welcome);
        for frame in w.replay {
            fx.send(TransmitKind::Data, frame);
        }
        if let Some(e) = w.error {
            let f = self.data_frame(OpCode::Text, &client_protocol::error_json(e), cx.codecs);
            fx.send(TransmitKind::Data, f);
        }
    }

    /// A parked poll the router registered: answered at once with the retained messages
    /// after its `since` (the oldest first, up to the message-size limit: the rest comes
    /// with the next poll, so none is skipped), else left parked for the next delivery.
    fn poll_opened(&mut self, w: messages::Welcome, cx: &mut Ctx<'_>, fx: &mut Effects) {
        let Phase::Poll(p) = &mut self.phase else {
            return;
        };
        p.seq = w.seq;
        if let Some(e) = w.error {
            if e.code == client_protocol::HISTORY_DISABLED.code {
                // `since` means nothing on a node without history.
                let origin = p.origin.take();
                fx.events.push(Event::BadRequest);
                fx.send(
                    TransmitKind::Handshake,
                    fallback::json_response(
                        400,
                        &client_protocol::error_json(e),
                        false,
                        origin.as_deref(),
                    ),
                );
                self.phase = Phase::Closed;
                fx.close = Some(CloseKind::Graceful);
            } else {
                // `since` past the latest (the node lost its history): the client
                // continues from the latest seq.
                self.answer_poll(fallback::poll_body([], w.seq), false, fx);
            }
            return;
        }
        if w.replay.is_empty() {
            return;
        }
        let limit = cx.config.decoder.max_message_size;
        let mut taken = Vec::new();
        let mut bytes = 0;
        for json in w.replay.iter().filter_map(|f| fallback::frame_payload(f)) {
            if !taken.is_empty() && bytes + json.len() > limit {
                break;
            }
            bytes += json.len() + 1;
            taken.push(json);
        }
        let seq = if taken.len() == w.replay.len() {
            w.seq
        } else {
            taken.last().and_then(|j| fallback::msg_seq(j)).or(w.seq)
        };
        let any = !taken.is_empty();
        self.answer_poll(fallback::poll_body(taken, seq), any, fx);
    }

    /// A message for a parked poll: answers it.
    pub fn poll_deliver(&mut self, frame: &[u8], fx: &mut Effects) {
        let Phase::Poll(p) = &self.phase else {
            return;
        };
        let Some(json) = fallback::frame_payload(frame) else {
            return;
        };
        // A broadcast carries no seq: the client resumes from where it was parked.
        let seq = fallback::msg_seq(json).or(p.seq);
        self.answer_poll(fallback::poll_body([json], seq), true, fx);
    }

    /// Answers a parked poll and ends the connection.
    fn answer_poll(&mut self, body: Vec<u8>, messages: bool, fx: &mut Effects) {
        let origin = match &mut self.phase {
            Phase::Poll(p) => p.origin.take(),
            _ => None,
        };
        fx.events.push(Event::PollAnswered(messages));
        fx.send(
            TransmitKind::Handshake,
            fallback::json_response(200, &body, false, origin.as_deref()),
        );
        self.phase = Phase::Closed;
        fx.close = Some(CloseKind::Graceful);
    }

    /// The router's verdict on a `POST /send` ([`Event::HttpSend`]): answers it.
    pub fn send_answered(
        &mut self,
        result: Result<(), client_protocol::RequestError>,
        cx: &mut Ctx<'_>,
        fx: &mut Effects,
    ) {
        if !matches!(self.phase, Phase::Send(_)) {
            return;
        }
        match result {
            Ok(()) => self.answer_send(200, fallback::SENT_JSON, true, cx, fx),
            Err(e) => {
                let status = if e.code == "unavailable" { 503 } else { 400 };
                self.answer_send(status, &client_protocol::error_json(e), true, cx, fx);
            }
        }
    }

    /// Reads a `POST /send` body; once whole, parses and rate-limits it.
    fn read_body(&mut self, input: &mut BytesMut, cx: &mut Ctx<'_>, fx: &mut Effects) {
        let Phase::Send(send) = &mut self.phase else {
            input.clear();
            return;
        };
        if send.body.len() < send.need {
            let n = (send.need - send.body.len()).min(input.len());
            send.body.extend_from_slice(&input.split_to(n));
        }
        if send.body.len() < send.need {
            return;
        }
        // Bytes past the body are the next request(s): read once this one is answered.
        if !input.is_empty() {
            send.next = input.split();
        }
        let parsed = client_protocol::parse(&send.body, cx.config.max_recipients);
        send.body = BytesMut::new();
        match parsed {
            Ok(_) if !send.rate.take(cx.now, cx.config.client_rate) => {
                let close = send.rate.refused_in_a_row >= MAX_RATE_LIMITED_IN_A_ROW;
                fx.events.push(Event::RateLimited);
                if close {
                    fx.events.push(Event::TooManyRateLimited);
                }
                let body = client_protocol::error_json(client_protocol::RATE_LIMITED);
                self.answer_send(429, &body, !close, cx, fx);
            }
            Ok(ClientRequest::Send { to, data }) => {
                // The driver asks the router and calls `send_answered`.
                fx.events.push(Event::HttpSend {
                    uid: send.uid.clone(),
                    to,
                    data,
                });
            }
            Ok(_) => {
                fx.events.push(Event::BadRequest);
                let body = client_protocol::error_json(client_protocol::RequestError {
                    code: "bad_request",
                    message: "POST /send takes one \"send\" request",
                });
                self.answer_send(400, &body, true, cx, fx);
            }
            Err(e) => {
                fx.events.push(Event::BadRequest);
                self.answer_send(400, &client_protocol::error_json(e), true, cx, fx);
            }
        }
    }

    /// Answers a `POST /send`; on a keep-alive connection, reads the next request.
    fn answer_send(
        &mut self,
        status: u16,
        body: &[u8],
        may_keep: bool,
        cx: &mut Ctx<'_>,
        fx: &mut Effects,
    ) {
        let Phase::Send(send) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return;
        };
        let mut send = *send;
        let more = !send.next.is_empty();
        let keep_alive = may_keep && send.keep_alive && !(more && send.pipelined >= MAX_PIPELINED);
        fx.events.push(Event::SendAnswered(status));
        fx.send(
            TransmitKind::Handshake,
            fallback::json_response(status, body, keep_alive, send.origin.as_deref()),
        );
        if !keep_alive {
            fx.close = Some(CloseKind::Graceful);
            return;
        }
        self.phase = Phase::Handshake(Box::new(HandshakeState {
            parser: RequestParser::new(cx.config.max_header_bytes),
            reject: None,
            rate: Some(send.rate),
            pipelined: if more { send.pipelined + 1 } else { 0 },
        }));
        self.since = cx.now;
        if more {
            self.handle_input(&mut send.next, cx, fx);
        }
    }

    /// Encodes a data frame for this connection, compressed when deflate was negotiated.
    pub fn data_frame(&mut self, opcode: OpCode, payload: &[u8], codecs: &mut Codecs) -> Bytes {
        match &mut self.phase {
            Phase::Open(Open {
                deflate: Some(params),
                own,
                ..
            }) => {
                let deflater = match own.as_mut().and_then(|o| o.deflater.as_mut()) {
                    Some(d) => d,
                    None => codecs.deflater(params.server_max_window_bits),
                };
                let mut f = FrameBuilder::with_capacity(payload.len() / 2 + 16);
                f.extend_compressed(deflater, payload);
                f.finish(opcode, true)
            }
            _ => server_frame(opcode, payload),
        }
    }

    fn refuse(&mut self, status: Status, message: &str, fx: &mut Effects) {
        fx.events.push(Event::Rejected(status));
        fx.send(
            TransmitKind::Handshake,
            Bytes::from(error_response(status, message)),
        );
        self.phase = Phase::Closed;
        fx.close = Some(CloseKind::Graceful);
    }

    fn upgrade(
        &mut self,
        req: Request,
        reject: Option<Status>,
        carried: Carried,
        cx: &mut Ctx<'_>,
        fx: &mut Effects,
    ) {
        if let Some(status) = reject {
            return self.refuse(status, "not accepting connections now", fx);
        }
        let endpoint = match req.path() {
            "/ws" => Endpoint::Push,
            "/echo" if cx.config.echo => Endpoint::Echo,
            "/sse" | "/poll" | "/send" => return self.open_fallback(req, carried, cx, fx),
            _ => return self.refuse(Status::NotFound, "no such endpoint", fx),
        };
        let upgrade = match validate(&req) {
            Ok(u) => u,
            Err(e) => return self.refuse(e.status(), &e.to_string(), fx),
        };
        if let (Some(allowed), Some(origin)) = (&cx.config.allowed_origins, &upgrade.origin) {
            if !allowed.iter().any(|a| a == origin) {
                return self.refuse(Status::Forbidden, "origin not allowed", fx);
            }
        }
        let mut token_expires = None;
        let mut rooms = None;
        let opened = match endpoint {
            // Development nodes echo for anyone; otherwise /echo takes /ws's credentials.
            Endpoint::Echo => match &cx.config.auth {
                AuthMode::Dev => Event::EchoOpened,
                AuthMode::Jwt(_) => match authenticate(&cx.config.auth, &req, SystemTime::now()) {
                    Ok(_) => Event::EchoOpened,
                    Err(e) => return self.refuse(Status::Unauthorized, &e.to_string(), fx),
                },
            },
            Endpoint::Push => match authenticate(&cx.config.auth, &req, SystemTime::now()) {
                Ok(id) => {
                    let since = match req.query_param("since") {
                        None => None,
                        Some(s) => match s.parse::<u64>() {
                            Ok(n) => Some(n),
                            Err(_) => {
                                return self.refuse(
                                    Status::BadRequest,
                                    "since must be a non-negative integer",
                                    fx,
                                )
                            }
                        },
                    };
                    // A token may claim an `exp` centuries away; past what `Instant` can
                    // hold it simply never expires while connected.
                    token_expires = id.expires_in.and_then(|d| cx.now.checked_add(d));
                    rooms = id.rooms.map(Box::new);
                    Event::Opened {
                        uid: id.uid,
                        device: id.device,
                        since,
                        transport: Transport::Ws,
                        subs: id.subs,
                    }
                }
                Err(
                    e @ (AuthError::Missing
                    | AuthError::Invalid
                    | AuthError::Expired
                    | AuthError::NotYetValid
                    | AuthError::TooLong),
                ) => return self.refuse(Status::Unauthorized, &e.to_string(), fx),
            },
        };
        let agreed = negotiate(
            req.header_values("sec-websocket-extensions"),
            &cx.config.deflate,
        );
        let (deflate, extensions) = match agreed {
            Some((p, header)) => (Some(p), Some(header)),
            None => (None, None),
        };
        fx.send(
            TransmitKind::Handshake,
            Bytes::from(switching_protocols(
                &upgrade.accept,
                None,
                extensions.as_deref(),
            )),
        );
        let own = deflate.and_then(|p| {
            let inflater = (!p.client_no_context_takeover)
                .then(|| Inflater::new(p.client_max_window_bits, false));
            let deflater = (!p.server_no_context_takeover)
                .then(|| Deflater::new(cx.config.deflate.level, p.server_max_window_bits, false));
            (inflater.is_some() || deflater.is_some())
                .then(|| Box::new(OwnCodecs { inflater, deflater }))
        });
        // A client may have sent frames right behind its request.
        // The `welcome` of a `/ws` connection waits for the router ([`Session::welcome`]):
        // it carries the user's seq, and the replay goes right behind it.
        let mut rest = BytesMut::from(&req.trailing()[..]);
        fx.events.push(opened);
        self.phase = Phase::Open(Open {
            decoder: Decoder::new(),
            endpoint,
            deflate,
            own,
            ping_outstanding: false,
            bad_requests: 0,
            token_expires,
            rate: RateLimit::new(cx.now, cx.config.client_rate),
            rooms,
        });
        self.since = cx.now;
        if !rest.is_empty() {
            self.read_frames(&mut rest, cx, fx);
        }
    }

    /// `GET /sse`, `GET /poll`, `POST /send`: the same origin check, identity and
    /// resume point as `/ws`, then a response instead of an upgrade.
    fn open_fallback(
        &mut self,
        req: Request,
        carried: Carried,
        cx: &mut Ctx<'_>,
        fx: &mut Effects,
    ) {
        let path = req.path();
        let origin = req.header("origin");
        if let (Some(allowed), Some(o)) = (&cx.config.allowed_origins, origin) {
            if !allowed.iter().any(|a| a.as_bytes() == o) {
                return self.refuse(Status::Forbidden, "origin not allowed", fx);
            }
        }
        if req.method() == "OPTIONS" {
            // A browser's CORS preflight, before a `/send` with `Authorization` or a JSON
            // content type from another origin.
            fx.send(
                TransmitKind::Handshake,
                Bytes::from(fallback::preflight_response(origin)),
            );
            self.phase = Phase::Closed;
            fx.close = Some(CloseKind::Graceful);
            return;
        }
        let method = if path == "/send" { "POST" } else { "GET" };
        if req.method() != method {
            return self.refuse(
                Status::MethodNotAllowed,
                "wrong method for this endpoint",
                fx,
            );
        }
        let id = match authenticate(&cx.config.auth, &req, SystemTime::now()) {
            Ok(id) => id,
            Err(e) => return self.refuse(Status::Unauthorized, &e.to_string(), fx),
        };
        let origin: Option<Box<[u8]>> = origin.map(Box::from);
        if path == "/send" {
            return self.start_send(&req, id.uid, origin, carried, cx, fx);
        }
        // An `EventSource` reconnecting sends the id of the last event it saw; that
        // resumes like `since`, and overrides the `since` of the URL it reconnects to.
        let last_event_id = (path == "/sse")
            .then(|| req.header("last-event-id"))
            .flatten()
            .filter(|v| !v.is_empty());
        let since = match last_event_id {
            Some(v) => std::str::from_utf8(v).ok().map(|v| v.trim().parse::<u64>()),
            None => req.query_param("since").map(|s| s.parse::<u64>()),
        };
        let since = match since {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return self.refuse(
                    Status::BadRequest,
                    "since must be a non-negative integer",
                    fx,
                )
            }
        };
        let transport = if path == "/sse" {
            fx.send(
                TransmitKind::Handshake,
                Bytes::from(fallback::sse_head(
                    origin.as_deref(),
                    cx.config.reconnect.base_ms,
                )),
            );
            self.phase = Phase::Sse(Stream {
                token_expires: id.expires_in.and_then(|d| cx.now.checked_add(d)),
            });
            Transport::Sse
        } else {
            self.phase = Phase::Poll(Box::new(Parked {
                deadline: cx.now + cx.config.poll_timeout,
                seq: None,
                origin,
            }));
            Transport::Poll
        };
        self.since = cx.now;
        fx.events.push(Event::Opened {
            uid: id.uid,
            device: id.device,
            since,
            transport,
            subs: id.subs,
        });
    }

    /// Starts reading a `POST /send` body: `Content-Length` only, at most the
    /// message-size limit.
    fn start_send(
        &mut self,
        req: &Request,
        uid: String,
        origin: Option<Box<[u8]>>,
        (rate, pipelined): Carried,
        cx: &mut Ctx<'_>,
        fx: &mut Effects,
    ) {
        if req.header("transfer-encoding").is_some() {
            return self.refuse(Status::LengthRequired, "send a Content-Length body", fx);
        }
        let need = match req
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            Some(n) => n,
            None => return self.refuse(Status::LengthRequired, "send a Content-Length body", fx),
        };
        if need > cx.config.decoder.max_message_size {
            return self.refuse(
                Status::PayloadTooLarge,
                "body over the message size limit",
                fx,
            );
        }
        let connection = req.header("connection").unwrap_or_default();
        let keep_alive = req.minor_version() == 1
            && !connection
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        if req
            .header("expect")
            .is_some_and(|e| e.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
        {
            fx.send(
                TransmitKind::Handshake,
                Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
            );
        }
        self.phase = Phase::Send(Box::new(SendBody {
            uid,
            need,
            body: BytesMut::with_capacity(need.min(64 * 1024)),
            keep_alive,
            origin,
            rate: rate.unwrap_or_else(|| RateLimit::new(cx.now, cx.config.client_rate)),
            pipelined,
            next: BytesMut::new(),
        }));
        let mut rest = BytesMut::from(&req.trailing()[..]);
        self.read_body(&mut rest, cx, fx);
    }

    fn read_frames(&mut self, input: &mut BytesMut, cx: &mut Ctx<'_>, fx: &mut Effects) {
        loop {
            let Phase::Open(open) = &mut self.phase else {
                input.clear();
                return;
            };
            open.ping_outstanding = false;
            let inflater = match (
                &open.deflate,
                open.own.as_mut().and_then(|o| o.inflater.as_mut()),
            ) {
                (None, _) => None,
                (Some(_), Some(own)) => Some(own),
                (Some(_), None) => Some(&mut cx.codecs.inflater),
            };
            match open.decoder.decode(input, &cx.config.decoder, inflater) {
                Ok(None) => return,
                Ok(Some(Message::Ping(payload))) => {
                    fx.send(TransmitKind::Pong, server_frame(OpCode::Pong, &payload));
                }
                Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Close(_))) => {
                    // The contract answers every client close with 1000.
                    fx.send(TransmitKind::Close, server_close(CloseCode::NORMAL, ""));
                    self.phase = Phase::Closed;
                    fx.close = Some(CloseKind::Graceful);
                    input.clear();
                    return;
                }
                Ok(Some(Message::Text(t))) => match open.endpoint {
                    Endpoint::Echo => {
                        let f = self.data_frame(OpCode::Text, &t, cx.codecs);
                        fx.send(TransmitKind::Data, f);
                        fx.events.push(Event::Echoed);
                    }
                    Endpoint::Push => match client_protocol::parse(&t, cx.config.max_recipients) {
                        // What costs the server work for others (deliveries, registry
                        // changes, replays) is rate-limited; pings and acks are not, so a
                        // client acking every message of a busy stream is never refused.
                        Ok(req)
                            if costs_others(&req)
                                && !open.rate.take(cx.now, cx.config.client_rate) =>
                        {
                            self.rate_limited(cx, fx);
                        }
                        Ok(ClientRequest::Ping) => {
                            fx.events.push(Event::AppPing);
                            let f = self.data_frame(
                                OpCode::Text,
                                client_protocol::pong_json(),
                                cx.codecs,
                            );
                            fx.send(TransmitKind::Data, f);
                        }
                        Ok(ClientRequest::Join { room, .. })
                            if open.rooms.as_ref().is_some_and(|g| !g.allows(&room)) =>
                        {
                            fx.events.push(Event::Forbidden);
                            let body = client_protocol::error_json(client_protocol::FORBIDDEN);
                            let f = self.data_frame(OpCode::Text, &body, cx.codecs);
                            fx.send(TransmitKind::Data, f);
                        }
                        Ok(req) => fx.events.push(Event::Request(req)),
                        Err(e) => self.bad_request(e, cx, fx),
                    },
                },
                Ok(Some(Message::Binary(b))) => match open.endpoint {
                    Endpoint::Echo => {
                        let f = self.data_frame(OpCode::Binary, &b, cx.codecs);
                        fx.send(TransmitKind::Data, f);
                        fx.events.push(Event::Echoed);
                    }
                    Endpoint::Push => self.bad_request(
                        client_protocol::RequestError {
                            code: "bad_request",
                            message: "requests are JSON text messages",
                        },
                        cx,
                        fx,
                    ),
                },
                Err(e) => {
                    let code = e.close_code();
                    fx.events.push(Event::ProtocolError(code));
                    fx.send(TransmitKind::Close, server_close(code, &e.to_string()));
                    self.phase = Phase::Closing(Closing {
                        decoder: None,
                        deadline: cx.now + cx.config.close_timeout,
                        deflate: false,
                    });
                    fx.close = Some(CloseKind::ShutdownWrite);
                    input.clear();
                    return;
                }
            }
        }
    }

    /// Answers a malformed request; past the configured number, closes with 1008.
    fn bad_request(
        &mut self,
        e: client_protocol::RequestError,
        cx: &mut Ctx<'_>,
        fx: &mut Effects,
    ) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        open.bad_requests += 1;
        let too_many = open.bad_requests > cx.config.max_bad_requests;
        fx.events.push(Event::BadRequest);
        let f = self.data_frame(OpCode::Text, &client_protocol::error_json(e), cx.codecs);
        fx.send(TransmitKind::Data, f);
        if too_many {
            fx.events.push(Event::TooManyBadRequests);
            self.close(CloseCode::POLICY, "too many malformed requests", cx, fx);
        }
    }

    /// Answers a request past the rate limit; ten refused in a row close with 1008.
    fn rate_limited(&mut self, cx: &mut Ctx<'_>, fx: &mut Effects) {
        let Phase::Open(open) = &self.phase else {
            return;
        };
        let too_many = open.rate.refused_in_a_row >= MAX_RATE_LIMITED_IN_A_ROW;
        fx.events.push(Event::RateLimited);
        let body = client_protocol::error_json(client_protocol::RATE_LIMITED);
        let f = self.data_frame(OpCode::Text, &body, cx.codecs);
        fx.send(TransmitKind::Data, f);
        if too_many {
            fx.events.push(Event::TooManyRateLimited);
            self.close(CloseCode::POLICY, "request rate limit exceeded", cx, fx);
        }
    }

    fn read_while_closing(&mut self, input: &mut BytesMut, cx: &mut Ctx<'_>, fx: &mut Effects) {
        let Phase::Closing(c) = &mut self.phase else {
            return;
        };
        let Some(decoder) = c.decoder.as_mut() else {
            input.clear();
            return;
        };
        let inflater = c.deflate.then_some(&mut cx.codecs.inflater);
        let mut inflater = inflater;
        loop {
            match decoder.decode(input, &cx.config.decoder, inflater.as_deref_mut()) {
                Ok(Some(Message::Close(_))) => {
                    self.phase = Phase::Closed;
                    fx.close = Some(CloseKind::Graceful);
                    input.clear();
                    return;
                }
                // Data after our close frame is ignored (RFC 6455 §5.5.1).
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    self.phase = Phase::Closed;
                    fx.close = Some(CloseKind::Reset);
                    input.clear();
                    return;
                }
            }
        }
    }
}
