//! The NATS bus, as the rest of the node sees it: a handle that queues pushes, interest
//! changes, raw publishes, requests and fixed-subject handlers for the bus thread
//! ([`super::worker`]), which speaks the NATS protocol itself ([`super::wire`]) over one
//! connection.
//!
//! Reactors and the API thread never wait on it. Publishes go through a bounded
//! crossbeam queue (`try_send`; full means refused, counted, and a 503 or error reply);
//! interest changes go into a set keyed by subject ([`super::interest`]) that the bus
//! thread reconciles against the registry, so a user who leaves and comes back before the
//! bus thread looks costs no bus traffic at all.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::conn;
use super::control::{Control, ControlStats, Disconnect, PresenceDone};
use super::interest::Changed;
use super::jetstream::{self, stream_name, JsConfig, StoredMsg};
use super::liveness::Liveness;
use super::servers::Pool;
use super::stats::BusStats;
use super::subject::{Kind, Subjects};
use super::wire;
use super::worker::Worker;
use super::{BusError, ClusterBus, Outgoing};

/// Settings of the NATS bus.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`, `tls://token@host:4222`,
    /// `nats://user:pass@host`.
    pub url: String,
    /// PEM file of the certificate authorities to trust for TLS to NATS (then every
    /// connection uses TLS); without it `tls://` URLs and servers requiring TLS are
    /// checked against the system's roots.
    pub tls_ca: Option<String>,
    /// Subject prefix shared by the nodes of one deployment.
    pub prefix: String,
    /// This node's name, given to NATS as the connection name.
    pub node_id: String,
    /// Pushes waiting for the bus thread before more are refused.
    pub queue_depth: usize,
    /// How long a subscription outlives the last local connection of its user or room.
    pub unsubscribe_delay: Duration,
    /// Subscriptions kept lingering beyond those of the users and rooms that left since
    /// the recent peak of local ones (which a reconnect storm brings back); past it the
    /// oldest go at once, so churn through new IDs cannot pile them up.
    pub max_lingering: usize,
    /// A round trip to NATS unanswered this long makes the node unready (one is made
    /// every third of it).
    pub ping_timeout: Duration,
    /// History on JetStream (`None`: live delivery only).
    pub history: Option<JsConfig>,
}

/// JetStream state: not known yet (not connected, or the stream is being set up).
pub(super) const JS_UNKNOWN: u8 = 0;
/// The history stream is there.
pub(super) const JS_READY: u8 = 1;
/// The server has no JetStream (or refused the stream): live delivery only.
pub(super) const JS_ABSENT: u8 = 2;

/// Told a store's outcome, on the bus thread: must not block.
pub type StoreDone = Box<dyn FnOnce(Result<StoreOk, BusError>) + Send>;

/// A user message to store in the history stream; once JetStream has stored it, the bus
/// thread delivers it here and publishes it live with its seq.
pub struct StoreJob {
    /// A user's or a room's message.
    pub kind: Kind,
    /// The user or room.
    pub id: Arc<str>,
    /// De-duplication key within the history TTL (the push's ID and the recipient).
    pub msg_id: String,
    /// The client JSON without its seq ([`super::jetstream::stored_body`]).
    pub body: Bytes,
    /// A room's message of a push with several recipients: all of them, as
    /// `Pushgate-Targets` lists them (a connection reached through a listed user or an
    /// earlier listed room gets it from there).
    pub targets: Option<String>,
    /// Told the outcome (on the bus thread), if anyone wants it.
    pub done: Option<StoreDone>,
}

impl std::fmt::Debug for StoreJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreJob")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("msg_id", &self.msg_id)
            .finish_non_exhaustive()
    }
}

impl StoreJob {
    pub(super) fn key(&self) -> super::interest::Key {
        (self.kind, Arc::clone(&self.id))
    }
}

/// A stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOk {
    /// Its seq.
    pub seq: u64,
    /// Stored before, by a push with the same ID (delivered then, not now).
    pub duplicate: bool,
}

/// A message handed to a fixed-subject handler or a request's reply handler. It borrows
/// the bus thread's read buffer: copy what must outlive the call.
#[derive(Debug)]
pub struct BusMessage<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// Where an answer goes, if the publisher wants one.
    pub reply: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
    pub(super) headers: Option<&'a [u8]>,
}

impl BusMessage<'_> {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.and_then(|h| wire::header(h, name))
    }
}

/// Handles every message on one fixed subject, on the bus thread: it must not block (to
/// answer, queue a publish with [`NatsBus::publish_message`]).
pub type Handler = Box<dyn Fn(&NatsBus, &BusMessage<'_>) + Send>;

/// Gets each reply to a request, then `None` once the request's window has passed (or at
/// once when nobody listens on the subject, or the connection was lost). Runs on the bus
/// thread; must not block.
pub type ReplyHandler = Box<dyn FnMut(Option<&BusMessage<'_>>) + Send>;

/// Messages asked for per batch direct get.
pub(super) const BATCH: usize = 256;
/// Bytes asked for at most per batch direct get (the server ends the batch there).
const BATCH_BYTES: usize = 4 << 20;

/// What one batch direct get returned.
#[derive(Debug, Default)]
struct Batch {
    msgs: Vec<StoredMsg>,
    /// Whether the stream holds more after the last (`None`: the server answered with
    /// one message and no batch headers: it has no batch get).
    more: Option<bool>,
    /// The batch's end came (not its deadline).
    ended: bool,
}

impl Batch {
    /// One reply of the batch.
    fn take(&mut self, headers: Option<&[u8]>, payload: &[u8]) -> Result<(), String> {
        if let Some(h) = headers {
            if wire::status(h) == Some(204) {
                // End of batch: what is left after it.
                self.ended = true;
                self.more = Some(
                    wire::header(h, "Nats-Num-Pending")
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|n| n > 0),
                );
                return Ok(());
            }
        }
        let ends = jetstream::ends_batch(headers);
        if let Some(m) = jetstream::direct_answer(headers, payload)? {
            self.msgs.push(m);
        }
        if ends {
            self.ended = true;
        }
        Ok(())
    }
}

/// Requests waiting for replies at most; more are refused as [`BusError::QueueFull`].
pub const MAX_PENDING_REQUESTS: usize = 4096;

/// What the bus thread is asked to send.
pub(super) enum Command {
    /// A push to users, rooms or everyone.
    Push(Outgoing),
    /// A user message for the history stream.
    Store(StoreJob),
    /// A message to any subject, with an optional reply subject.
    Publish {
        subject: String,
        reply: Option<String>,
        payload: Bytes,
    },
    /// A message whose replies go to `on_reply` until `deadline` (the asker's window
    /// runs from when it asked, not from when the bus thread got to it).
    Request {
        subject: String,
        payload: Bytes,
        deadline: Instant,
        on_reply: ReplyHandler,
        ends: Ends,
    },
}

/// When a request ends besides its deadline (then `None` is handed on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ends {
    /// Only at its deadline: every reply counts (presence-like fan-in).
    Window,
    /// At the first reply, with no `None` after it: a JetStream API call.
    First,
    /// At the reply that ends a batch direct get ([`jetstream::ends_batch`]), then
    /// `None`.
    Batch,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Push(p) => f.debug_tuple("Push").field(p).finish(),
            Command::Store(j) => write!(f, "Store({:?} {})", j.kind, j.id),
            Command::Publish { subject, .. } => write!(f, "Publish({subject})"),
            Command::Request { subject, .. } => write!(f, "Request({subject})"),
        }
    }
}

/// State shared by the handle (any thread) and the bus thread.
pub(super) struct Shared {
    pub(super) stats: BusStats,
    /// Users and rooms whose local presence changed, each once.
    pub(super) dirty: Mutex<Changed>,
    /// Fixed-subject handlers not yet taken by the bus thread.
    pub(super) new_handlers: Mutex<Vec<(String, Handler)>>,
    pub(super) wake: Notify,
    pub(super) max_payload: AtomicUsize,
    pub(super) pending_requests: AtomicUsize,
    pub(super) stop: AtomicBool,
    pub(super) liveness: Liveness,
    /// Node announcements, presence and disconnects ([`super::control`]).
    pub(super) control: Control,
    /// [`JS_UNKNOWN`], [`JS_READY`] or [`JS_ABSENT`].
    pub(super) js: AtomicU8,
    /// Whether "no JetStream" was logged (once per process).
    pub(super) js_absent_logged: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connected, and NATS answered lately.
    pub(super) fn is_ready(&self) -> bool {
        self.stats.is_connected() && self.liveness.answering(Instant::now())
    }
}

/// Room for the headers on top of a body, when checking against NATS's payload limit.
pub(super) const HEADER_ALLOWANCE: usize = 512;

/// The NATS implementation of [`ClusterBus`].
#[derive(Debug)]
pub struct NatsBus {
    tx: Sender<Command>,
    subjects: Subjects,
    /// The history stream's name.
    stream: String,
    history: Option<JsConfig>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pending: Mutex<Option<Start>>,
}

/// What the bus thread is started with.
#[derive(Debug)]
pub(super) struct Start {
    pub(super) config: NatsConfig,
    pub(super) subjects: Subjects,
    pub(super) pool: Pool,
    pub(super) options: conn::Options,
    pub(super) rx: Receiver<Command>,
}

impl NatsBus {
    /// A bus that starts working once [`NatsBus::start`] gives it the router.
    pub fn new(config: NatsConfig) -> Result<Self, String> {
        let subjects = Subjects::new(&config.prefix)?;
        let pool = Pool::parse(&config.url)?;
        let options = conn::Options::new(
            format!("pushgate {}", config.node_id),
            config.tls_ca.as_deref(),
        )?;
        let (tx, rx) = crossbeam_channel::bounded(config.queue_depth.max(1));
        Ok(NatsBus {
            tx,
            stream: stream_name(&config.prefix),
            history: config.history,
            subjects: subjects.clone(),
            shared: Arc::new(Shared {
                stats: BusStats::default(),
                dirty: Mutex::new(Changed::default()),
                new_handlers: Mutex::new(Vec::new()),
                wake: Notify::new(),
                max_payload: AtomicUsize::new(1024 * 1024),
                pending_requests: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
                liveness: Liveness::new(config.ping_timeout),
                control: Control::new(
                    &config.prefix,
                    &config.node_id,
                    RandomState::new()
                        .hash_one(super::worker::unix_micros() ^ u64::from(std::process::id())),
                ),
                js: AtomicU8::new(JS_UNKNOWN),
                js_absent_logged: AtomicBool::new(false),
            }),
            thread: Mutex::new(None),
            pending: Mutex::new(Some(Start {
                config,
                subjects,
                pool,
                options,
                rx,
            })),
        }
        .with_waker())
    }

    /// Lets control answers queued on other threads (room listings) wake the bus thread;
    /// a weak reference, so that the bus's state does not keep itself alive.
    fn with_waker(self) -> Self {
        let weak = Arc::downgrade(&self.shared);
        self.shared.control.set_waker(Arc::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.wake.notify_one();
            }
        }));
        self
    }

    /// Starts the bus thread, which connects (retrying with backoff for as long as it
    /// takes) and delivers what arrives to `router`'s reactors. `this` is the bus itself,
    /// handed to fixed-subject handlers so that they can answer.
    pub fn start<R: super::Inbound + 'static>(
        this: &Arc<NatsBus>,
        router: Arc<R>,
    ) -> std::io::Result<()> {
        let router: Arc<dyn super::Inbound> = router;
        let Some(start) = this.pending.lock().take() else {
            return Ok(());
        };
        let bus = Arc::clone(this);
        let handle = std::thread::Builder::new()
            .name("pushgate-bus".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the bus runtime");
                        return;
                    }
                };
                rt.block_on(Worker::new(start, bus, router).run());
            })?;
        *this.thread.lock() = Some(handle);
        Ok(())
    }

    /// Stops the bus thread (pushes are refused from then on).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.stats.connected.store(false, Ordering::Relaxed);
        self.shared.wake.notify_one();
        let t = self.thread.lock().take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Calls `handler` for every message published to `subject` (wildcards allowed), from
    /// now on and across reconnects. For control traffic between nodes (presence queries,
    /// disconnect commands); pushes have their own subjects.
    pub fn handle(&self, subject: &str, handler: Handler) -> Result<(), String> {
        if !wire::valid_subject(subject) {
            return Err(format!("bad subject {subject:?}"));
        }
        self.shared
            .new_handlers
            .lock()
            .push((subject.to_string(), handler));
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Publishes `payload` to `subject`, with `reply` as the subject answers go to.
    pub fn publish_message(
        &self,
        subject: &str,
        reply: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        if !wire::valid_subject(subject) || reply.is_some_and(|r| !wire::valid_subject(r)) {
            return self.refuse(BusError::TooLarge);
        }
        self.check(payload.len())?;
        self.enqueue(Command::Publish {
            subject: subject.to_string(),
            reply: reply.map(str::to_string),
            payload,
        })
    }

    /// Publishes `payload` to `subject` with a reply subject in this node's inbox;
    /// `on_reply` gets every reply that arrives within `window`, then `None`.
    pub fn request(
        &self,
        subject: &str,
        payload: Bytes,
        window: Duration,
        on_reply: ReplyHandler,
    ) -> Result<(), BusError> {
        self.request_with(subject, payload, window, on_reply, Ends::Window)
    }

    /// A request with one answer: `on_reply` gets the first reply, or `None` if none
    /// came within `window`; the request ends there.
    pub fn request_one(
        &self,
        subject: &str,
        payload: Bytes,
        window: Duration,
        on_reply: ReplyHandler,
    ) -> Result<(), BusError> {
        self.request_with(subject, payload, window, on_reply, Ends::First)
    }

    fn request_with(
        &self,
        subject: &str,
        payload: Bytes,
        window: Duration,
        on_reply: ReplyHandler,
        ends: Ends,
    ) -> Result<(), BusError> {
        if !wire::valid_subject(subject) {
            return self.refuse(BusError::TooLarge);
        }
        self.check(payload.len())?;
        if self.shared.pending_requests.load(Ordering::Relaxed) >= MAX_PENDING_REQUESTS {
            return self.refuse(BusError::QueueFull);
        }
        self.enqueue(Command::Request {
            subject: subject.to_string(),
            payload,
            deadline: Instant::now() + window,
            on_reply,
            ends,
        })
    }

    /// Whether user messages get seqs and are stored (history configured and the stream
    /// there).
    pub fn history_ready(&self) -> bool {
        self.history.is_some() && self.shared.js.load(Ordering::Relaxed) == JS_READY
    }

    /// The history settings, if any.
    pub fn history_config(&self) -> Option<JsConfig> {
        self.history
    }

    /// Hands a user message to the bus thread for storing; the outcome goes to the job's
    /// `done`.
    pub fn store(&self, job: StoreJob) -> Result<(), BusError> {
        if !self.history_ready() {
            return self.refuse(BusError::History);
        }
        self.check(job.body.len())?;
        self.enqueue(Command::Store(job))
    }

    /// The latest stored message of `uid` (`None`: none retained). Blocks up to
    /// `timeout`: for a reactor opening a connection, bounded.
    pub fn latest(
        &self,
        kind: Kind,
        uid: &str,
        timeout: Duration,
    ) -> Result<Option<StoredMsg>, BusError> {
        let subject = self.subjects.history(kind, uid);
        let body = serde_json::json!({ "last_by_subj": subject }).to_string();
        self.direct_get(body, timeout)
    }

    /// Subscribes to the acks every node stores, for the undelivered hook's deadlines:
    /// call before [`NatsBus::start`].
    pub fn watch_acks(&self) {
        self.shared.control.watch_acks();
    }

    /// Stores `seq` as the last ack of `uid`'s `device` (the stream keeps it within the
    /// history TTL; no answer is waited for).
    pub fn store_ack(&self, uid: &str, device: &str, seq: u64) -> Result<(), BusError> {
        if !self.history_ready() {
            return self.refuse(BusError::History);
        }
        let subject = self.subjects.ack(uid, device);
        self.publish_message(&subject, None, Bytes::from(seq.to_string()))
    }

    /// The last ack stored for `uid`'s `device` (`None`: none within the TTL).
    pub fn last_ack(
        &self,
        uid: &str,
        device: &str,
        timeout: Duration,
    ) -> Result<Option<u64>, BusError> {
        let subject = self.subjects.ack(uid, device);
        let body = serde_json::json!({ "last_by_subj": subject }).to_string();
        Ok(self
            .direct_get(body, timeout)?
            .and_then(|m| std::str::from_utf8(&m.body).ok()?.trim().parse().ok()))
    }

    /// The stored messages of `uid` with `after < seq <= upto`, in order, at most `max`;
    /// all of them within `timeout` or an error. Read [`BATCH`] at a time with a batch
    /// direct get (NATS ≥ 2.11); a server without it answers each request with one
    /// message, and the same loop then reads one message per round trip (NATS 2.9).
    pub fn fetch_after(
        &self,
        kind: Kind,
        uid: &str,
        after: u64,
        upto: u64,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<StoredMsg>, BusError> {
        let deadline = Instant::now() + timeout;
        let subject = self.subjects.history(kind, uid);
        let mut out = Vec::new();
        let mut at = after;
        while at < upto && out.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BusError::History);
            }
            let want = (max - out.len()).min(BATCH);
            let body = serde_json::json!({
                "seq": at + 1,
                "next_by_subj": subject,
                "batch": want,
                "max_bytes": BATCH_BYTES,
            })
            .to_string();
            let got = self.direct_batch(body, left)?;
            let mut past = got.msgs.is_empty();
            for m in got.msgs {
                if m.seq > upto || m.seq <= at || out.len() == max {
                    past = true;
                    break;
                }
                at = m.seq;
                out.push(m);
            }
            if past || got.more == Some(false) {
                break;
            }
        }
        Ok(out)
    }

    /// One batch direct get, waited for (on an opener or the fill thread, never on a
    /// reactor).
    fn direct_batch(&self, body: String, timeout: Duration) -> Result<Batch, BusError> {
        if self.history.is_none() || timeout.is_zero() {
            return Err(BusError::History);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let subject = format!("$JS.API.DIRECT.GET.{}", self.stream);
        let mut batch = Some(Ok(Batch::default()));
        self.request_with(
            &subject,
            Bytes::from(body),
            timeout,
            Box::new(move |m| {
                let Some(Ok(b)) = batch.as_mut() else {
                    return;
                };
                match m {
                    Some(m) => {
                        if let Err(e) = b.take(m.headers, m.payload) {
                            batch = Some(Err(e));
                        }
                    }
                    None => {
                        if let Some(done) = batch.take() {
                            let _ = tx.try_send(done);
                        }
                    }
                }
                if let Some(Err(_)) = &batch {
                    if let Some(done) = batch.take() {
                        let _ = tx.try_send(done);
                    }
                }
            }),
            Ends::Batch,
        )?;
        match rx.recv_timeout(timeout + Duration::from_millis(50)) {
            Ok(Ok(b)) if b.ended => Ok(b),
            Ok(Ok(_)) => Err(BusError::History),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster bus: batch direct get failed");
                Err(BusError::History)
            }
            Err(_) => Err(BusError::History),
        }
    }

    /// One direct get, waited for.
    fn direct_get(&self, body: String, timeout: Duration) -> Result<Option<StoredMsg>, BusError> {
        if self.history.is_none() || timeout.is_zero() {
            return Err(BusError::History);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let subject = format!("$JS.API.DIRECT.GET.{}", self.stream);
        self.request_one(
            &subject,
            Bytes::from(body),
            timeout,
            Box::new(move |m| {
                let answer = match m {
                    Some(m) => jetstream::direct_answer(m.headers, m.payload),
                    None => Err("no answer".to_owned()),
                };
                let _ = tx.try_send(answer);
            }),
        )?;
        match rx.recv_timeout(timeout + Duration::from_millis(50)) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster bus: direct get failed");
                Err(BusError::History)
            }
            Err(_) => Err(BusError::History),
        }
    }

    fn refuse(&self, e: BusError) -> Result<(), BusError> {
        self.shared.stats.refused[e as usize].add(1);
        Err(e)
    }

    fn check(&self, len: usize) -> Result<(), BusError> {
        if !self.shared.is_ready() {
            return self.refuse(BusError::Disconnected);
        }
        if len + HEADER_ALLOWANCE > self.shared.max_payload.load(Ordering::Relaxed) {
            return self.refuse(BusError::TooLarge);
        }
        Ok(())
    }

    fn enqueue(&self, c: Command) -> Result<(), BusError> {
        match self.tx.try_send(c) {
            Ok(()) => {
                self.shared.wake.notify_one();
                Ok(())
            }
            Err(TrySendError::Full(_)) => self.refuse(BusError::QueueFull),
            Err(TrySendError::Disconnected(_)) => self.refuse(BusError::Disconnected),
        }
    }
}

impl ClusterBus for NatsBus {
    fn publish(&self, push: Outgoing) -> Result<(), BusError> {
        self.check(push.body.len())?;
        self.enqueue(Command::Push(push))
    }

    fn interest_changed(&self, kind: Kind, id: &Arc<str>) {
        self.shared.dirty.lock().mark(kind, id);
        self.shared.wake.notify_one();
    }

    fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    fn stats(&self) -> Option<&BusStats> {
        Some(&self.shared.stats)
    }

    fn presence(&self, uids: &[String], deadline: Instant, done: PresenceDone) {
        if !self.shared.is_ready() {
            return done(Err(BusError::Disconnected));
        }
        self.shared
            .control
            .ask_presence(uids, deadline, || self.shared.wake.notify_one(), done)
    }

    fn room_presence(&self, room: &str, limit: usize, deadline: Instant, done: PresenceDone) {
        if !self.shared.is_ready() {
            return done(Err(BusError::Disconnected));
        }
        self.shared.control.ask_room_presence(
            room,
            limit,
            deadline,
            || self.shared.wake.notify_one(),
            done,
        )
    }

    fn disconnect(&self, req: &Disconnect) -> Result<(), BusError> {
        if !self.shared.is_ready() {
            return Err(BusError::Disconnected);
        }
        self.shared.control.send_disconnect(req)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    fn publish_event(&self, payload: Bytes) -> Result<(), BusError> {
        if !self.shared.is_ready() {
            return Err(BusError::Disconnected);
        }
        self.shared.control.send_event(payload)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    fn change_rooms(&self, req: &crate::rooms::RoomChange) -> Result<(), BusError> {
        if !self.shared.is_ready() {
            return Err(BusError::Disconnected);
        }
        self.shared.control.send_room_change(req)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    fn live_nodes(&self) -> Vec<String> {
        self.shared.control.live_peers(Instant::now())
    }

    fn control_stats(&self) -> Option<&ControlStats> {
        Some(self.shared.control.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(queue_depth: usize) -> NatsBus {
        NatsBus::new(NatsConfig {
            url: "nats://127.0.0.1:1".into(),
            tls_ca: None,
            prefix: "t".into(),
            node_id: "n".into(),
            queue_depth,
            unsubscribe_delay: Duration::ZERO,
            max_lingering: 1024,
            ping_timeout: Duration::from_secs(3),
            history: None,
        })
        .unwrap()
    }

    fn push(len: usize) -> Outgoing {
        Outgoing {
            users: vec![Arc::from("u")],
            rooms: Vec::new(),
            broadcast: false,
            body: Bytes::from(vec![b' '; len]),
        }
    }

    #[test]
    fn batch_answers_and_the_one_message_fallback() {
        let msg = |seq: u64, pending: Option<u64>| {
            let p = pending.map_or(String::new(), |n| format!("Nats-Num-Pending: {n}\r\n"));
            format!("NATS/1.0\r\nNats-Sequence: {seq}\r\nPushgate-Prev: 1\r\n{p}\r\n")
        };
        // NATS 2.11+: messages with Nats-Num-Pending, then the end of batch.
        let mut b = Batch::default();
        b.take(Some(msg(5, Some(1)).as_bytes()), b"a").unwrap();
        assert!(!b.ended);
        b.take(Some(msg(7, Some(3)).as_bytes()), b"b").unwrap();
        let eob = b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 3\r\nNats-Last-Sequence: 7\r\n\r\n";
        assert!(jetstream::ends_batch(Some(eob)));
        b.take(Some(eob), b"").unwrap();
        assert_eq!(b.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 7]);
        assert_eq!((b.ended, b.more), (true, Some(true)));
        // NATS 2.9 answers the same request with one plain message: the batch is over,
        // and whether more follow is not known (the caller asks again from there).
        let plain = msg(9, None);
        assert!(jetstream::ends_batch(Some(plain.as_bytes())));
        let mut b = Batch::default();
        b.take(Some(plain.as_bytes()), b"c").unwrap();
        assert_eq!((b.msgs.len(), b.ended, b.more), (1, true, None));
        // Nothing after the seq asked for.
        let mut b = Batch::default();
        b.take(Some(b"NATS/1.0 404 Message Not Found\r\n\r\n"), b"")
            .unwrap();
        assert!(b.msgs.is_empty() && b.ended);
    }

    #[test]
    fn refuses_rather_than_waits() {
        let b = bus(2);
        assert_eq!(b.publish(push(10)), Err(BusError::Disconnected));
        assert!(!b.is_ready());
        b.shared.stats.connected.store(true, Ordering::Relaxed);
        assert_eq!(b.publish(push(10)), Ok(()));
        assert_eq!(b.publish_message("a.b", Some("r"), Bytes::new()), Ok(()));
        // No bus thread drains the queue: the third waits for nobody.
        assert_eq!(b.publish(push(10)), Err(BusError::QueueFull));
        assert_eq!(b.publish(push(1 << 20)), Err(BusError::TooLarge));
        let refused: Vec<u64> = b.shared.stats.refused.iter().map(|c| c.get()).collect();
        assert_eq!(refused, [1, 1, 1, 0]);
    }

    #[test]
    fn bad_subjects_and_too_many_requests_are_refused() {
        let b = bus(8);
        b.shared.stats.connected.store(true, Ordering::Relaxed);
        assert!(b.handle("a b", Box::new(|_, _| {})).is_err());
        assert!(b.handle("p.ctl.>", Box::new(|_, _| {})).is_ok());
        assert_eq!(
            b.publish_message("a..b", None, Bytes::new()),
            Err(BusError::TooLarge)
        );
        let noop = || -> ReplyHandler { Box::new(|_| {}) };
        let w = Duration::from_secs(1);
        assert_eq!(b.request("q", Bytes::new(), w, noop()), Ok(()));
        b.shared
            .pending_requests
            .store(MAX_PENDING_REQUESTS, Ordering::Relaxed);
        assert_eq!(
            b.request("q", Bytes::new(), w, noop()),
            Err(BusError::QueueFull)
        );
    }

    /// Issue 11: while NATS is unreachable nothing drains the changed interests; churn
    /// of the same few users must not grow them (it did, one entry per event).
    #[test]
    fn interest_churn_during_an_outage_costs_distinct_ids() {
        let b = bus(1);
        let ids: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("u{i}"))).collect();
        for i in 0..50_000 {
            b.interest_changed(Kind::User, &ids[i % ids.len()]);
        }
        b.interest_changed(Kind::Room, &ids[0]);
        assert_eq!(b.shared.dirty.lock().len(), 6);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = bus(1).pending.lock().take().unwrap().config;
        c.prefix = "a.*".into();
        assert!(NatsBus::new(c.clone()).is_err());
        c.prefix = "a".into();
        c.url = "http://x".into();
        assert!(NatsBus::new(c.clone()).is_err());
        c.url = "nats://x".into();
        c.tls_ca = Some("/nonexistent/ca.pem".into());
        assert!(NatsBus::new(c).is_err());
    }
}
