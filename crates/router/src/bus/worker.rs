//! The bus thread: one connection to NATS at a time, opened by [`super::conn`], spoken to
//! with [`super::wire`], and one table ([`super::subs`]) from subscription ID to the user,
//! room or handler a message is for. No task or channel per subscription: a message is
//! parsed in the read buffer and handed to the reactors' inboxes from there.
//!
//! On a lost connection it reconnects (0 ms, then 50 ms doubling to 2 s, with jitter),
//! trying each known server in turn (those configured and those the servers announced),
//! and subscribes again to everything in the table. Interest changes wait in the set the
//! handle fills, and an unsubscribe waits `unsubscribe_delay` in case the user comes
//! straight back, within the bound of [`super::lingering`]. `PING`s on a timer and after
//! subscription changes ([`super::liveness`]) tell a frozen NATS from a quiet one; one left
//! unanswered for [`DEAD_AFTER_TIMEOUTS`] ping timeouts drops the connection.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::chains::{Busy, Chains, MAX_ATTEMPTS};
use super::conn::{self, Info, Stream};
use super::dedup::RecentIds;
use super::inbound::{text_frame, Inbound};
use super::interest::Key;
use super::jetstream::{
    self, PubAck, HEADER_EXPECTED_LAST, HEADER_MSG_ID, HEADER_PREV, HEADER_SEQ,
};
use super::lingering::{Lingering, RecentPeak};
use super::nats::{
    BusMessage, Command, Ends, Handler, NatsBus, NatsConfig, ReplyHandler, Shared, Start, StoreJob,
    StoreOk, JS_ABSENT, JS_READY,
};
use super::servers::Pool;
use super::subject::{self, Kind, Subjects};
use super::subs::{Subs, Target};
use super::trim::Trimmer;
use super::wire::{self, Msg, Op};
use super::{BusError, Outgoing, HEADER_ID, HEADER_SENT, HEADER_TARGETS};

/// Interest changes reconciled per pass before the bus thread looks at publishes again.
const RECONCILE_BATCH: usize = 1024;
/// Publishes taken per pass before interest changes get a turn.
const PUBLISH_BATCH: usize = 4096;
/// Unsubscribes per pass before publishes get a turn again. Not a rate: lingering is
/// bounded by [`NatsConfig::max_lingering`], and unsubscribes must keep up with any churn.
const EXPIRE_BATCH: usize = 1024;
/// How often the bus thread looks at lingering subscriptions and probes when idle.
const TICK: Duration = Duration::from_millis(50);
/// How long the copies of one push are remembered.
const DEDUP_WINDOW: Duration = Duration::from_secs(30);
const DEDUP_MAX: usize = 1 << 16;
/// Bytes waiting to be written past which no more publishes or subscription changes are
/// taken (they wait in the bounded queue and the interest set): a stalled server cannot
/// grow the bus thread's memory.
const WRITE_HIGH: usize = 4 << 20;
/// Write buffer capacity kept once it has been written out.
const WRITE_KEEP: usize = 256 * 1024;
/// Unanswered `PING`s kept track of at most (a frozen server gets no more).
const MAX_PINGS: usize = 64;
/// A `PING` unanswered for this many ping timeouts drops the connection (the node has
/// been unready since the first timeout).
pub(super) const DEAD_AFTER_TIMEOUTS: u32 = 4;
/// Read buffer reserve per read.
const READ_CHUNK: usize = 64 * 1024;
/// How long a store waits for JetStream's answer before it is failed (its message may
/// still have been stored: a retry with the same push ID is de-duplicated).
pub(super) const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the stream's creation may take to be answered.
const SETUP_WINDOW: Duration = Duration::from_secs(5);
/// After a stream setup that found no JetStream, the next one is asked this long after,
/// doubling up to [`STREAM_RETRY_MAX`].
const STREAM_RETRY_MIN: Duration = Duration::from_secs(1);
const STREAM_RETRY_MAX: Duration = Duration::from_secs(30);

/// Messages may be this much larger than `max_payload` (the server counts headers in it;
/// this is slack, not trust).
const BODY_SLACK: usize = 64 * 1024;

/// One open connection's buffers.
struct Conn {
    reader: ReadHalf<Stream>,
    writer: WriteHalf<Stream>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    written: usize,
    /// Written bytes the transport may still hold (TLS records) until flushed.
    unflushed: bool,
    /// Our `PING`s not answered yet, oldest first: sequence number and when sent.
    pings: VecDeque<(u64, Instant)>,
}

impl Conn {
    fn pending(&self) -> usize {
        self.wbuf.len() - self.written
    }
}

enum Event {
    Read(std::io::Result<usize>),
    /// Bytes written, or `None` for a flush.
    Wrote(std::io::Result<Option<usize>>),
    Wake,
}

/// Why a connection ended.
enum End {
    Stop,
    Lost(String),
}

/// A request waiting for replies.
struct Pending {
    deadline: Instant,
    on_reply: ReplyHandler,
    /// When it ends besides its deadline.
    ends: Ends,
}

pub(super) struct Worker {
    config: NatsConfig,
    subjects: Subjects,
    rx: Receiver<Command>,
    bus: Arc<NatsBus>,
    shared: Arc<Shared>,
    router: Arc<dyn Inbound>,
    pool: Pool,
    options: conn::Options,
    subs: Subs,
    handlers: Vec<(String, Handler)>,
    /// The subjects of [`super::control`] (announcements, presence, disconnects, replies).
    control_subjects: Vec<String>,
    /// `_INBOX.<random>`: replies to our requests arrive on `<inbox>.<n>`.
    inbox: String,
    requests: HashMap<u64, Pending>,
    next_request: u64,
    recent: RecentIds,
    /// Changed IDs taken from [`Shared::dirty`] and not reconciled yet (distinct).
    backlog: Vec<Key>,
    /// Subscriptions with no local member left, and when they may go.
    leaving: Lingering,
    /// The most local users and rooms lately.
    peak: RecentPeak,
    trimmer: Trimmer,
    probe_seq: u64,
    next_probe: Instant,
    /// When the history stream is asked for again while JetStream did not answer, and how
    /// many times it was asked on this connection.
    next_stream_setup: Instant,
    stream_setups: u32,
    /// Subscriptions changed since the last probe.
    subs_changed: bool,
    /// The subscription count to publish once probe `.0` is answered.
    gauge_pending: Option<(u64, u64)>,
    was_answering: bool,
    /// `-ERR`s received (for the log's rate limit).
    errors: u64,
    boot: u64,
    seq: AtomicU64,
    /// User messages being stored, one in flight per user.
    chains: Chains,
    /// Store failures logged (for the log's rate limit).
    store_errors: u64,
    /// Users newly subscribed, and the probe whose answer confirms the subscription:
    /// then they catch up with what was stored before it took effect.
    catch_up: VecDeque<(u64, Key)>,
}

impl Worker {
    pub(super) fn new(start: Start, bus: Arc<NatsBus>, router: Arc<dyn Inbound>) -> Self {
        let Start {
            config,
            subjects,
            pool,
            options,
            rx,
        } = start;
        let boot = RandomState::new().hash_one(unix_micros() ^ u64::from(std::process::id()));
        let delay = config.unsubscribe_delay;
        let mut subs = Subs::default();
        subs.add(Target::Broadcast);
        subs.add(Target::Inbox);
        let control_subjects = bus.shared().control.subscriptions().to_vec();
        for i in 0..control_subjects.len() {
            subs.add(Target::Control(i as u32));
        }
        Worker {
            shared: Arc::clone(bus.shared()),
            config,
            subjects,
            rx,
            bus,
            router,
            pool,
            options,
            subs,
            handlers: Vec::new(),
            control_subjects,
            inbox: format!(
                "_INBOX.{boot:016x}{:08x}",
                RandomState::new().hash_one(boot) as u32
            ),
            requests: HashMap::new(),
            next_request: 0,
            recent: RecentIds::new(DEDUP_WINDOW, DEDUP_MAX),
            backlog: Vec::new(),
            leaving: Lingering::default(),
            peak: RecentPeak::new(delay),
            trimmer: Trimmer::new(),
            probe_seq: 0,
            next_probe: Instant::now(),
            next_stream_setup: Instant::now(),
            stream_setups: 0,
            subs_changed: false,
            gauge_pending: None,
            was_answering: true,
            errors: 0,
            boot,
            seq: AtomicU64::new(0),
            chains: Chains::default(),
            store_errors: 0,
            catch_up: VecDeque::new(),
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    pub(super) async fn run(mut self) {
        tracing::info!(url = %self.config.url, prefix = %self.config.prefix, "cluster bus: connecting to NATS");
        let mut failures = 0usize;
        while !self.stopping() {
            let delay = reconnect_delay(failures + 1);
            if !delay.is_zero() && !self.idle(delay).await {
                break;
            }
            let server = self.pool.next();
            let options = self.options.clone();
            let opened = {
                let open = conn::open(&server, &options);
                tokio::pin!(open);
                loop {
                    let queries = self.queries_deadline();
                    tokio::select! {
                        r = &mut open => break Some(r),
                        () = self.shared.wake.notified() => {
                            if self.stopping() {
                                break None;
                            }
                        }
                        () = tokio::time::sleep_until(queries) => {}
                    }
                    self.shared.control.expire_queries(Instant::now());
                }
            };
            match opened {
                None => break,
                Some(Err(e)) => {
                    failures += 1;
                    // Every failure while few, then one in 20: an outage of hours must not
                    // flood the log.
                    if failures <= 3 || failures % 20 == 0 {
                        tracing::warn!(server = %server, error = %e, failures, "cluster bus: cannot connect to NATS");
                    }
                    self.expire_requests(Instant::now(), true);
                }
                Some(Ok((stream, info, rest))) => {
                    failures = 0;
                    let end = self.serve(stream, info, rest, &server.to_string()).await;
                    self.on_lost();
                    match end {
                        End::Stop => break,
                        End::Lost(why) => {
                            tracing::warn!(server = %server, reason = %why, "cluster bus: lost NATS; reconnecting");
                        }
                    }
                }
            }
        }
        self.expire_requests(Instant::now(), true);
    }

    /// Waits `d` (a reconnect backoff) unless told to stop; false if stopping.
    async fn idle(&mut self, d: Duration) -> bool {
        let until = tokio::time::Instant::now() + d;
        loop {
            if self.stopping() {
                return false;
            }
            let queries = self.queries_deadline();
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(queries) => {}
            }
            self.shared.control.expire_queries(Instant::now());
        }
    }

    /// When the earliest presence query ends (far off when none waits): the bus thread
    /// wakes then, not at its next tick, so a query is answered at its deadline.
    fn queries_deadline(&self) -> tokio::time::Instant {
        match self.shared.control.next_deadline() {
            Some(d) => tokio::time::Instant::from_std(d),
            None => tokio::time::Instant::now() + Duration::from_secs(3600),
        }
    }

    fn on_lost(&mut self) {
        let stats = &self.shared.stats;
        stats.disconnects.add(1);
        stats.connected.store(false, Ordering::Relaxed);
        // NATS has none of ours until the next connection restores them.
        stats.subscriptions.set(0);
        // Unready already; probes lost with the connection are not a frozen server.
        self.shared.liveness.reset();
        self.gauge_pending = None;
        // Replies to requests sent on the lost connection will not come.
        self.expire_requests(Instant::now(), true);
        // Nor PubAcks: those messages may or may not have been stored.
        for job in self.chains.drain() {
            finish(job, Err(BusError::History));
        }
        self.catch_up.clear();
    }

    fn subject_of(&self, target: &Target) -> String {
        match target {
            Target::Broadcast => self.subjects.broadcast(),
            Target::Interest((kind, id)) => self.subjects.subject(*kind, id),
            Target::Handler(i) => self.handlers[*i as usize].0.clone(),
            Target::Control(i) => self.control_subjects[*i as usize].clone(),
            Target::Inbox => format!("{}.*", self.inbox),
        }
    }

    async fn serve(&mut self, stream: Stream, info: Info, rest: Vec<u8>, server: &str) -> End {
        let (reader, writer) = tokio::io::split(stream);
        let mut c = Conn {
            reader,
            writer,
            rbuf: rest,
            wbuf: Vec::new(),
            written: 0,
            unflushed: false,
            pings: VecDeque::new(),
        };
        self.on_info(&info);
        // Everything held, in one burst: the server handles it in order, so the probe
        // sent after it confirms all of it.
        for (sid, target) in self.subs.iter() {
            wire::write_sub(&mut c.wbuf, &self.subject_of(target), sid);
        }
        if self.config.history.is_some() {
            // Live copies published while this node was away never reach it: each user it
            // holds catches up once the probe after the burst confirms the subscriptions.
            for (_, target) in self.subs.iter() {
                if let Target::Interest(key) = target {
                    self.catch_up.push_back((self.probe_seq + 1, key.clone()));
                }
            }
        }
        self.subs_changed = true;
        let stats = &self.shared.stats;
        self.shared.liveness.reset();
        // The other nodes learn of this one (again) at once.
        self.shared.control.announce_soon();
        stats.connects.add(1);
        stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(server, server_id = %info.server_id, known_servers = self.pool.len(), "cluster bus: connected to NATS");
        self.stream_setups = 0;
        self.next_stream_setup = Instant::now() + SETUP_WINDOW + STREAM_RETRY_MIN;
        self.setup_stream(&mut c);
        if let Err(e) = self.process(&mut c) {
            return End::Lost(e);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.stopping() {
                // Best effort: with NATS gone a flush would wait for ever, and shutdown
                // must not.
                let pending = &c.wbuf[c.written..];
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    c.writer.write_all(pending).await?;
                    c.writer.flush().await
                })
                .await;
                return End::Stop;
            }
            let now = Instant::now();
            self.take_handlers(&mut c);
            let mut more = false;
            if c.pending() < WRITE_HIGH {
                more |= self.publish_batch(&mut c, now);
                more |= self.publish_control(&mut c, now);
                more |= self.reconcile_batch(&mut c);
                more |= self.expire_leaving(&mut c);
            }
            self.expire_requests(now, false);
            self.shared.control.expire_queries(now);
            self.expire_stores(&mut c, now);
            self.probe(&mut c, now);
            self.confirm_catch_up();
            self.watch_liveness(now);
            self.retry_stream(&mut c, now);
            if let Some((_, sent)) = c.pings.front() {
                if now.saturating_duration_since(*sent)
                    > self.config.ping_timeout * DEAD_AFTER_TIMEOUTS
                {
                    return End::Lost("NATS stopped answering".into());
                }
            }
            let more = more && c.pending() < WRITE_HIGH;
            let to_write = c.pending() > 0;
            let flush = !to_write && c.unflushed;
            if c.rbuf.capacity() - c.rbuf.len() < READ_CHUNK / 4 {
                c.rbuf.reserve(READ_CHUNK);
            }
            let queries = self.queries_deadline();
            let event = tokio::select! {
                r = c.reader.read_buf(&mut c.rbuf) => Event::Read(r),
                w = async {
                    if to_write {
                        c.writer.write(&c.wbuf[c.written..]).await.map(Some)
                    } else {
                        c.writer.flush().await.map(|()| None)
                    }
                }, if to_write || flush => Event::Wrote(w),
                () = self.shared.wake.notified() => Event::Wake,
                _ = tick.tick() => Event::Wake,
                () = tokio::time::sleep_until(queries) => Event::Wake,
                () = tokio::task::yield_now(), if more => Event::Wake,
            };
            match event {
                Event::Read(Ok(0)) => return End::Lost("NATS closed the connection".into()),
                Event::Read(Err(e)) | Event::Wrote(Err(e)) => return End::Lost(e.to_string()),
                Event::Read(Ok(_)) => {
                    if let Err(e) = self.process(&mut c) {
                        return End::Lost(e);
                    }
                }
                Event::Wrote(Ok(None)) => c.unflushed = false,
                Event::Wrote(Ok(Some(0))) => return End::Lost("NATS closed the connection".into()),
                Event::Wrote(Ok(Some(n))) => {
                    c.written += n;
                    c.unflushed = true;
                    if c.written == c.wbuf.len() {
                        c.wbuf.clear();
                        c.written = 0;
                        // Give back what a burst made it grow to.
                        if c.wbuf.capacity() > WRITE_KEEP {
                            c.wbuf = Vec::new();
                        }
                    }
                }
                Event::Wake => {}
            }
        }
    }

    /// Handles every complete operation in the read buffer.
    fn process(&mut self, c: &mut Conn) -> Result<(), String> {
        let max_body = self.shared.max_payload.load(Ordering::Relaxed) + BODY_SLACK;
        let mut at = 0;
        let rbuf = std::mem::take(&mut c.rbuf);
        let result = loop {
            match wire::parse(&rbuf[at..], max_body) {
                Err(e) => break Err(format!("protocol error from NATS: {}", e.0)),
                Ok(None) => break Ok(()),
                Ok(Some((op, n))) => {
                    at += n;
                    match op {
                        Op::Msg(m) => self.on_msg(c, &m),
                        Op::Ping => c.wbuf.extend_from_slice(b"PONG\r\n"),
                        Op::Pong => {
                            if let Some((seq, _)) = c.pings.pop_front() {
                                self.shared.liveness.answered(seq);
                            }
                        }
                        Op::Info(json) => match Info::parse(json) {
                            Ok(info) => self.on_info(&info),
                            Err(e) => tracing::warn!(error = %e, "cluster bus"),
                        },
                        Op::Ok => {}
                        Op::Err(text) => self.on_err(text),
                    }
                }
            }
        };
        let mut rbuf = rbuf;
        rbuf.drain(..at);
        if rbuf.is_empty() && rbuf.capacity() > 4 * READ_CHUNK {
            rbuf = Vec::new();
        }
        c.rbuf = rbuf;
        result
    }

    fn on_info(&mut self, info: &Info) {
        if info.max_payload > 0 {
            self.shared
                .max_payload
                .store(info.max_payload, Ordering::Relaxed);
        }
        let added = self.pool.discovered(&info.connect_urls);
        if added > 0 {
            tracing::info!(
                added,
                known_servers = self.pool.len(),
                "cluster bus: NATS servers discovered"
            );
        }
    }

    fn on_err(&mut self, text: &str) {
        // The server closes the connection after most errors (we then reconnect); it
        // keeps it after a permissions violation, which affects one subject.
        if text.to_ascii_lowercase().contains("slow consumer") {
            self.shared.stats.slow_consumer_drops.add(1);
        }
        // A permission missing for user subjects would say so once per user: the first
        // few, then one in a thousand.
        self.errors += 1;
        if self.errors <= 10 || self.errors % 1000 == 0 {
            tracing::warn!(
                error = text,
                count = self.errors,
                "cluster bus: NATS reported an error"
            );
        }
    }

    fn on_msg(&mut self, c: &mut Conn, m: &Msg<'_>) {
        let Some(target) = self.subs.get(m.sid).cloned() else {
            // For a subscription dropped a moment ago.
            return;
        };
        match target {
            Target::Broadcast => self.deliver(None, m),
            Target::Interest(key) => self.deliver(Some(&key), m),
            Target::Handler(i) => {
                let msg = BusMessage {
                    subject: m.subject,
                    reply: m.reply,
                    payload: m.payload,
                    headers: m.headers,
                };
                (self.handlers[i as usize].1)(&self.bus, &msg);
            }
            Target::Inbox => self.on_reply(c, m),
            Target::Control(_) => {
                self.shared
                    .control
                    .on_message(&*self.router, m.subject, m.reply, m.payload);
            }
        }
    }

    fn on_reply(&mut self, c: &mut Conn, m: &Msg<'_>) {
        let Some(n) = m
            .subject
            .rsplit_once('.')
            .and_then(|(_, n)| n.parse::<u64>().ok())
        else {
            return;
        };
        if let Some(busy) = self.chains.answered(n) {
            self.on_stored(c, busy, m);
            return;
        }
        // "No responders": nobody listens on the subject; the request is over.
        if m.headers.and_then(wire::status) == Some(503) {
            if let Some(mut p) = self.requests.remove(&n) {
                self.shared.pending_requests.fetch_sub(1, Ordering::Relaxed);
                (p.on_reply)(None);
            }
            return;
        }
        let msg = BusMessage {
            subject: m.subject,
            reply: m.reply,
            payload: m.payload,
            headers: m.headers,
        };
        match self.requests.get(&n).map(|p| p.ends) {
            Some(Ends::First) => {
                if let Some(mut p) = self.requests.remove(&n) {
                    self.shared.pending_requests.fetch_sub(1, Ordering::Relaxed);
                    (p.on_reply)(Some(&msg));
                }
            }
            Some(Ends::Batch) if jetstream::ends_batch(m.headers) => {
                if let Some(mut p) = self.requests.remove(&n) {
                    self.shared.pending_requests.fetch_sub(1, Ordering::Relaxed);
                    (p.on_reply)(Some(&msg));
                    (p.on_reply)(None);
                }
            }
            Some(_) => {
                if let Some(p) = self.requests.get_mut(&n) {
                    (p.on_reply)(Some(&msg));
                }
            }
            None => {}
        }
    }

    /// Ends requests whose window has passed (all of them with `all`).
    fn expire_requests(&mut self, now: Instant, all: bool) {
        if self.requests.is_empty() {
            return;
        }
        let done: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| all || p.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in done {
            if let Some(mut p) = self.requests.remove(&n) {
                self.shared.pending_requests.fetch_sub(1, Ordering::Relaxed);
                (p.on_reply)(None);
            }
        }
        if self.requests.is_empty() {
            self.requests = HashMap::new();
        }
    }

    /// A push from NATS, for this node's connections of `on` (a user or a room), or of
    /// everyone (`None`).
    fn deliver(&mut self, on: Option<&Key>, msg: &Msg<'_>) {
        let stats = &self.shared.stats;
        stats.received.add(1);
        let now = Instant::now();
        let header = |name| msg.headers.and_then(|h| wire::header(h, name));
        if let Some(sent) = header(HEADER_SENT).and_then(|v| v.parse::<u64>().ok()) {
            stats
                .latency
                .observe(Duration::from_micros(unix_micros().saturating_sub(sent)));
        }
        if protocol::utf8::validate(msg.payload).is_err() {
            stats.invalid.add(1);
            return;
        }
        let frame = text_frame(msg.payload);
        let Some((kind, id)) = on else {
            self.router.broadcast_local(frame, now);
            return;
        };
        if *kind == Kind::Room {
            // A stored room message: in seq order, once, through the room's chain.
            let seq = header(HEADER_SEQ).and_then(|v| v.parse::<u64>().ok());
            let prev = header(HEADER_PREV).and_then(|v| v.parse::<u64>().ok());
            if let (Some(seq), Some(prev)) = (seq, prev) {
                let targets = header(HEADER_TARGETS);
                if self
                    .router
                    .deliver_stored_room(id, seq, prev, frame.clone(), targets)
                {
                    return;
                }
            }
        }
        match (kind, header(HEADER_TARGETS)) {
            (Kind::User, _) => {
                let seq = header(HEADER_SEQ).and_then(|v| v.parse::<u64>().ok());
                let prev = header(HEADER_PREV).and_then(|v| v.parse::<u64>().ok());
                if let (Some(seq), Some(prev)) = (seq, prev) {
                    if self.router.deliver_stored(id, seq, prev, frame.clone()) {
                        return;
                    }
                }
                self.router.deliver_local(&[&**id], &[], &[], frame, now);
            }
            (Kind::Room, None) => {
                self.router.deliver_local(&[], &[&**id], &[], frame, now);
            }
            (Kind::Room, Some(targets)) => {
                // One copy per room of the push arrives; the first delivers to every
                // listed room's members here, except connections of listed users (their
                // user copy reaches them).
                if let Some(push_id) = header(HEADER_ID) {
                    if !self.recent.first_sight(push_id, now) {
                        stats.duplicates.add(1);
                        return;
                    }
                }
                let mut users = Vec::new();
                let mut rooms = vec![id.to_string()];
                for t in targets.split(' ').filter(|t| !t.is_empty()) {
                    match subject::parse_target(t) {
                        Some((Kind::User, u)) => users.push(u),
                        Some((Kind::Room, r)) => {
                            if *r != **id {
                                rooms.push(r);
                            }
                        }
                        None => {
                            stats.invalid.add(1);
                            return;
                        }
                    }
                }
                let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
                let users: Vec<&str> = users.iter().map(|u| &**u).collect();
                self.router.deliver_local(&[], &rooms, &users, frame, now);
            }
        }
    }

    /// Subscribes the handlers registered since the last look.
    fn take_handlers(&mut self, c: &mut Conn) {
        let new = std::mem::take(&mut *self.shared.new_handlers.lock());
        for (subject, handler) in new {
            self.handlers.push((subject, handler));
            let i = (self.handlers.len() - 1) as u32;
            let sid = self.subs.add(Target::Handler(i));
            wire::write_sub(&mut c.wbuf, &self.handlers[i as usize].0, sid);
        }
    }

    /// Sends a `PING` when one is due, or when the subscriptions changed (its `PONG`
    /// confirms them); publishes the subscription gauge once a probe sent after the last
    /// change is answered.
    fn probe(&mut self, c: &mut Conn, now: Instant) {
        if now >= self.next_probe || self.subs_changed {
            // Before queuing: the clock of the oldest unanswered one runs from here.
            self.shared.liveness.sent(now);
            if c.pings.len() < MAX_PINGS {
                self.probe_seq += 1;
                c.wbuf.extend_from_slice(b"PING\r\n");
                c.pings.push_back((self.probe_seq, now));
                let count = self.subs.interests() as u64 + 1;
                self.gauge_pending = Some((self.probe_seq, count));
            }
            self.next_probe = now + self.shared.liveness.interval();
            self.subs_changed = false;
        }
        if let Some((seq, count)) = self.gauge_pending {
            if self.shared.liveness.answered_seq() >= seq {
                self.shared.stats.subscriptions.set(count);
                self.gauge_pending = None;
            }
        }
    }

    /// Counts and logs the moments NATS stops answering and starts again.
    fn watch_liveness(&mut self, now: Instant) {
        let answering = self.shared.liveness.answering(now);
        if answering != self.was_answering {
            self.was_answering = answering;
            if answering {
                tracing::info!("cluster bus: NATS answers again");
            } else {
                self.shared.stats.ping_timeouts.add(1);
                tracing::warn!(
                    timeout = ?self.config.ping_timeout,
                    "cluster bus: NATS does not answer; not ready"
                );
            }
        }
    }

    /// Writes queued control messages and a due announcement; true if more are waiting.
    fn publish_control(&mut self, c: &mut Conn, now: Instant) -> bool {
        for m in self.shared.control.take_outgoing(now, PUBLISH_BATCH) {
            wire::write_pub(&mut c.wbuf, &m.subject, m.reply.as_deref(), &[], &m.payload);
        }
        self.shared.control.has_outgoing()
    }

    /// Writes queued publishes; true if more are waiting.
    fn publish_batch(&mut self, c: &mut Conn, now: Instant) -> bool {
        for _ in 0..PUBLISH_BATCH {
            if c.pending() >= WRITE_HIGH {
                return true;
            }
            let Ok(cmd) = self.rx.try_recv() else {
                return false;
            };
            match cmd {
                Command::Push(push) => self.publish(c, push),
                Command::Store(job) => match self.chains.push(job) {
                    Ok(Some(job)) => self.send_store(c, job, 0, now),
                    Ok(None) => {}
                    Err(job) => finish(job, Err(BusError::QueueFull)),
                },
                Command::Publish {
                    subject,
                    reply,
                    payload,
                } => {
                    wire::write_pub(&mut c.wbuf, &subject, reply.as_deref(), &[], &payload);
                    self.shared.stats.published.add(1);
                }
                Command::Request {
                    subject,
                    payload,
                    deadline,
                    mut on_reply,
                    ends,
                } => {
                    if deadline <= now {
                        // Waited out in the queue (a reconnect): over before it began.
                        on_reply(None);
                        continue;
                    }
                    self.next_request += 1;
                    let reply = format!("{}.{}", self.inbox, self.next_request);
                    wire::write_pub(&mut c.wbuf, &subject, Some(&reply), &[], &payload);
                    self.shared.stats.published.add(1);
                    self.shared.pending_requests.fetch_add(1, Ordering::Relaxed);
                    self.requests.insert(
                        self.next_request,
                        Pending {
                            deadline,
                            on_reply,
                            ends,
                        },
                    );
                }
            }
        }
        true
    }

    fn publish(&mut self, c: &mut Conn, push: Outgoing) {
        let stats = &self.shared.stats;
        let sent = unix_micros().to_string();
        // A broadcast's copy and users' copies need nothing more than the send time: a
        // connection belongs to one user. Rooms' copies list every target, so that a
        // connection reached twice gets it once.
        let plain = |c: &mut Conn, subject: &str| {
            wire::write_pub(
                &mut c.wbuf,
                subject,
                None,
                &[(HEADER_SENT, &sent)],
                &push.body,
            );
            stats.published.add(1);
        };
        if push.broadcast {
            plain(c, &self.subjects.broadcast());
            return;
        }
        for id in &push.users {
            plain(c, &self.subjects.subject(Kind::User, id));
        }
        if push.rooms.is_empty() {
            return;
        }
        let mut targets = String::new();
        let mut push_id = String::new();
        if push.rooms.len() + push.users.len() > 1 {
            for (kind, ids) in [(Kind::User, &push.users), (Kind::Room, &push.rooms)] {
                for id in ids {
                    if !targets.is_empty() {
                        targets.push(' ');
                    }
                    subject::write_target(kind, id, &mut targets);
                }
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            push_id = format!("{:016x}-{seq:x}", self.boot);
        }
        let mut headers = vec![(HEADER_SENT, sent.as_str())];
        if !push_id.is_empty() {
            headers.push((HEADER_ID, push_id.as_str()));
            headers.push((HEADER_TARGETS, targets.as_str()));
        }
        if push.body.len() + wire::headers_len(&headers)
            > self.shared.max_payload.load(Ordering::Relaxed)
        {
            stats.publish_errors.add(1);
            tracing::warn!(
                rooms = push.rooms.len(),
                users = push.users.len(),
                "push too large for the bus with its target list; other nodes' room members miss it"
            );
            return;
        }
        for id in &push.rooms {
            let subject = self.subjects.subject(Kind::Room, id);
            wire::write_pub(&mut c.wbuf, &subject, None, &headers, &push.body);
            stats.published.add(1);
        }
    }

    /// Creates the history stream, or updates it to the settings (at every connect: the
    /// server may be new, or its JetStream was enabled meanwhile).
    fn setup_stream(&mut self, c: &mut Conn) {
        let Some(js) = self.config.history else {
            return;
        };
        let name = jetstream::stream_name(&self.config.prefix);
        let config = jetstream::stream_config(&name, &self.config.prefix, &js);
        let bus = Arc::clone(&self.bus);
        let shared = Arc::clone(&self.shared);
        let update = (format!("$JS.API.STREAM.UPDATE.{name}"), config.clone());
        let on_reply: ReplyHandler = Box::new(move |m| {
            let Some(m) = m else {
                js_absent(
                    &shared,
                    "no JetStream answered (is nats-server started with -js?)",
                );
                return;
            };
            match jetstream::api_error(m.payload) {
                None => js_ready(&shared),
                Some(e) if e.err_code == jetstream::ERR_STREAM_EXISTS => {
                    // Made with other settings: take ours.
                    let on_update = Arc::clone(&shared);
                    let asked = bus.request_one(
                        &update.0,
                        update.1.clone(),
                        SETUP_WINDOW,
                        Box::new(move |m| match m.map(|m| jetstream::api_error(m.payload)) {
                            Some(None) => js_ready(&on_update),
                            Some(Some(e)) => js_absent(&on_update, &e.description),
                            None => js_absent(&on_update, "no answer to the stream update"),
                        }),
                    );
                    if asked.is_err() {
                        js_absent(&shared, "cannot ask for the stream update");
                    }
                }
                Some(e) => js_absent(&shared, &e.description),
            }
        });
        self.next_request += 1;
        let reply = format!("{}.{}", self.inbox, self.next_request);
        let subject = format!("$JS.API.STREAM.CREATE.{name}");
        wire::write_pub(&mut c.wbuf, &subject, Some(&reply), &[], &config);
        self.shared.pending_requests.fetch_add(1, Ordering::Relaxed);
        self.requests.insert(
            self.next_request,
            Pending {
                deadline: Instant::now() + SETUP_WINDOW,
                on_reply,
                ends: Ends::First,
            },
        );
    }

    /// Asks for the history stream again while JetStream has not answered: a node that
    /// connected while JetStream was electing a leader (one NATS server of the cluster just
    /// died) or before it was enabled would otherwise stay live-only until its next
    /// reconnect, its clients welcomed without a seq.
    fn retry_stream(&mut self, c: &mut Conn, now: Instant) {
        if self.config.history.is_none()
            || self.shared.js.load(Ordering::Relaxed) != JS_ABSENT
            || now < self.next_stream_setup
        {
            return;
        }
        let wait = STREAM_RETRY_MIN
            .saturating_mul(1 << self.stream_setups.min(5))
            .min(STREAM_RETRY_MAX);
        self.stream_setups = self.stream_setups.saturating_add(1);
        // The answer (or its absence) comes within the setup window: no two at once.
        self.next_stream_setup = now + SETUP_WINDOW + wait;
        self.shared.stats.stream_setup_retries.add(1);
        self.setup_stream(c);
    }

    /// Sends `job` to the history stream, expecting the user's last seq as cached.
    fn send_store(&mut self, c: &mut Conn, job: StoreJob, attempts: u32, now: Instant) {
        let expected = self.chains.last(&job.key());
        self.next_request += 1;
        let req = self.next_request;
        let reply = format!("{}.{req}", self.inbox);
        let subject = self.subjects.history(job.kind, &job.id);
        let prev = expected.to_string();
        let mut headers = vec![
            (HEADER_MSG_ID, job.msg_id.as_str()),
            (HEADER_EXPECTED_LAST, prev.as_str()),
            (HEADER_PREV, prev.as_str()),
        ];
        if let Some(t) = &job.targets {
            headers.push((HEADER_TARGETS, t.as_str()));
        }
        wire::write_pub(&mut c.wbuf, &subject, Some(&reply), &headers, &job.body);
        self.chains.sent(Busy {
            req,
            job,
            expected,
            attempts,
            deadline: now + STORE_TIMEOUT,
        });
    }

    /// JetStream answered a store: deliver and publish it live with its seq, send it again
    /// after the right last seq, or fail it; then the user's next store goes.
    fn on_stored(&mut self, c: &mut Conn, busy: Busy, m: &Msg<'_>) {
        let ack = if m.headers.and_then(wire::status) == Some(503) {
            PubAck::Failed("JetStream not answering".into())
        } else {
            jetstream::pub_ack(m.payload)
        };
        let uid = busy.job.key();
        let now = Instant::now();
        match ack {
            PubAck::Stored { seq, duplicate } => {
                self.router.vouch(seq);
                if !duplicate {
                    self.chains.set_last(&uid, Some(seq));
                    self.publish_stored(c, &busy.job, seq, busy.expected);
                }
                finish(busy.job, Ok(StoreOk { seq, duplicate }));
            }
            PubAck::WrongLast(last) if busy.attempts + 1 < MAX_ATTEMPTS => {
                self.chains.set_last(&uid, Some(last));
                self.send_store(c, busy.job, busy.attempts + 1, now);
                return;
            }
            PubAck::WrongLast(_) | PubAck::Failed(_) => {
                self.store_errors += 1;
                if self.store_errors <= 10 || self.store_errors % 1000 == 0 {
                    tracing::warn!(answer = ?ack, count = self.store_errors, "cluster bus: JetStream did not store a message");
                }
                self.chains.set_last(&uid, None);
                self.shared.stats.publish_errors.add(1);
                finish(busy.job, Err(BusError::History));
            }
        }
        if let Some(next) = self.chains.next(&uid) {
            self.send_store(c, next, 0, now);
        }
    }

    /// A stored message: to this node's connections of its user (or members of its
    /// room), and live to the others.
    fn publish_stored(&mut self, c: &mut Conn, job: &StoreJob, seq: u64, prev: u64) {
        let json = jetstream::with_seq(&job.body, seq);
        let frame = text_frame(&json);
        match job.kind {
            Kind::User => {
                self.router.deliver_stored(&job.id, seq, prev, frame);
            }
            Kind::Room => {
                let targets = job.targets.as_deref();
                self.router
                    .deliver_stored_room(&job.id, seq, prev, frame, targets);
            }
        }
        let sent = unix_micros().to_string();
        let (seq, prev) = (seq.to_string(), prev.to_string());
        let mut headers = vec![
            (HEADER_SENT, sent.as_str()),
            (HEADER_SEQ, seq.as_str()),
            (HEADER_PREV, prev.as_str()),
        ];
        if let Some(t) = &job.targets {
            headers.push((HEADER_TARGETS, t.as_str()));
        }
        wire::write_pub(
            &mut c.wbuf,
            &self.subjects.subject(job.kind, &job.id),
            None,
            &headers,
            &json,
        );
        self.shared.stats.published.add(1);
    }

    /// Users whose new subscription NATS confirmed: what was stored for them before it
    /// took effect was published live to nobody here, so they look at their latest.
    fn confirm_catch_up(&mut self) {
        let answered = self.shared.liveness.answered_seq();
        while self
            .catch_up
            .front()
            .is_some_and(|(seq, _)| *seq <= answered)
        {
            if let Some((_, (kind, id))) = self.catch_up.pop_front() {
                self.router.catch_up(kind, &id);
            }
        }
    }

    /// Fails the stores JetStream did not answer in time.
    fn expire_stores(&mut self, c: &mut Conn, now: Instant) {
        for busy in self.chains.expired(now) {
            let uid = busy.job.key();
            self.chains.set_last(&uid, None);
            self.shared.stats.publish_errors.add(1);
            finish(busy.job, Err(BusError::History));
            if let Some(next) = self.chains.next(&uid) {
                self.send_store(c, next, 0, now);
            }
        }
    }

    /// Brings subscriptions in line with the registry for a batch of changed IDs; true if
    /// more are waiting.
    fn reconcile_batch(&mut self, c: &mut Conn) -> bool {
        if self.backlog.is_empty() {
            self.backlog = self.shared.dirty.lock().take();
        }
        let n = self.backlog.len().min(RECONCILE_BATCH);
        let batch = self.backlog.split_off(self.backlog.len() - n);
        if self.backlog.is_empty() {
            // Give back what a burst of changes made it grow to.
            self.backlog = Vec::new();
        }
        let now = Instant::now();
        for key in batch {
            let wanted = self.router.holds(key.0, &key.1);
            let have = self.subs.sid_of(&key).is_some();
            match (wanted, have) {
                (true, true) => {
                    self.leaving.cancel(&key);
                }
                (true, false) => {
                    if self.config.history.is_some() {
                        // The probe sent after this change confirms it.
                        self.catch_up.push_back((self.probe_seq + 1, key.clone()));
                    }
                    let subject = self.subjects.subject(key.0, &key.1);
                    let sid = self.subs.add(Target::Interest(key));
                    wire::write_sub(&mut c.wbuf, &subject, sid);
                    self.shared.stats.interest_changes.add(1);
                    self.subs_changed = true;
                }
                (false, true) => {
                    let when = now + self.config.unsubscribe_delay;
                    self.leaving.start(key, when);
                }
                (false, false) => {}
            }
        }
        !self.backlog.is_empty() || !self.shared.dirty.lock().is_empty()
    }

    /// Drops subscriptions whose delay ran out, and the oldest beyond the lingering
    /// bound, whose user or room is still gone; true if more are waiting.
    fn expire_leaving(&mut self, c: &mut Conn) -> bool {
        let now = Instant::now();
        let online = self.subs.interests().saturating_sub(self.leaving.len());
        let keep = self
            .peak
            .lingering_bound(online, self.config.max_lingering, now);
        let due = self.leaving.take_due(now, EXPIRE_BATCH, keep);
        let more = due.len() == EXPIRE_BATCH;
        let mut released = 0;
        for key in due {
            if self.router.holds(key.0, &key.1) {
                continue;
            }
            if let Some(sid) = self.subs.remove_key(&key) {
                wire::write_unsub(&mut c.wbuf, sid);
                released += 1;
            }
        }
        if released > 0 {
            self.shared.stats.interest_changes.add(released as u64);
            self.subs_changed = true;
            self.trimmer.released(released);
        }
        if !more && self.trimmer.maybe_trim(now) {
            // The table itself is the one thing malloc_trim cannot shrink.
            self.subs.shrink();
        }
        more
    }
}

/// Tells a store's owner (if any) how it went.
fn finish(job: StoreJob, result: Result<StoreOk, BusError>) {
    if let Some(done) = job.done {
        done(result);
    }
}

fn js_ready(shared: &Shared) {
    if shared.js.swap(JS_READY, Ordering::Relaxed) != JS_READY {
        tracing::info!("cluster bus: history stream ready on JetStream");
    }
}

/// No history in the cluster: said once in the log.
fn js_absent(shared: &Shared, why: &str) {
    shared.js.store(JS_ABSENT, Ordering::Relaxed);
    if !shared.js_absent_logged.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            reason = why,
            "cluster bus: no history stream; live delivery only (no seq, no resume)"
        );
    }
}

pub(super) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// 0 ms, then doubling from 50 ms to 2 s, with jitter so that nodes do not come back in
/// step after a NATS restart.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = (attempts - 2).min(6) as u32;
    let base = Duration::from_millis(50 * 2u64.pow(exp)).min(Duration::from_secs(2));
    let jitter = RandomState::new().hash_one(attempts) % (base.as_millis() as u64 / 4 + 1);
    base + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_grows_to_a_cap() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        let d2 = reconnect_delay(2);
        assert!(d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(63));
        for n in 10..40 {
            let d = reconnect_delay(n);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2501),
                "{d:?}"
            );
        }
    }
}
