//! The NATS bus: async-nats on a dedicated thread with its own single-threaded runtime.
//!
//! Reactors and the API thread never wait on it. Publishes go through a bounded
//! crossbeam queue (`try_send`; full means refused, counted, and a 503 or error reply);
//! interest changes go into a set keyed by subject ([`super::interest`]) that the bus
//! thread reconciles against the registry, so a user who leaves and comes back before the
//! bus thread looks costs no bus traffic at all, and an unsubscribe waits
//! `unsubscribe_delay` in case the user comes straight back (reconnect storms after a
//! deploy or a network blip), within the bound of [`super::lingering`]. Probes
//! ([`super::liveness`]) tell a frozen NATS from a quiet one. Messages from the bus reach
//! the reactors through their inboxes, like any local push.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{Client, ConnectOptions, Event, HeaderMap, Message};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::control::{ClusterPresence, Control, ControlStats, Disconnect};
use super::dedup::RecentIds;
use super::interest::{Changed, Key};
use super::lingering::{Lingering, RecentPeak};
use super::liveness::{self, Liveness, PROBE_SUBJECT};
use super::stats::BusStats;
use super::subject::{self, Kind, Subjects};
use super::trim::Trimmer;
use super::{BusError, ClusterBus, Outgoing, HEADER_ID, HEADER_SENT, HEADER_TARGETS};
use crate::router::Router;

/// Settings of the NATS bus.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`.
    pub url: String,
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
}

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
/// Room for the headers on top of a body, when checking against NATS's payload limit.
const HEADER_ALLOWANCE: usize = 512;

#[derive(Debug)]
struct Shared {
    stats: BusStats,
    /// Users and rooms whose local presence changed, each once.
    dirty: Mutex<Changed>,
    wake: Notify,
    max_payload: AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
    liveness: Liveness,
    /// Node announcements, presence and disconnects ([`super::control`]).
    control: Control,
}

impl Shared {
    /// Connected, and NATS answered lately.
    fn is_ready(&self) -> bool {
        self.stats.is_connected() && self.liveness.answering(Instant::now())
    }
}

/// The NATS implementation of [`ClusterBus`].
#[derive(Debug)]
pub struct NatsBus {
    tx: Sender<Outgoing>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pending: Mutex<Option<(NatsConfig, Subjects, Receiver<Outgoing>)>>,
}

impl NatsBus {
    /// A bus that starts working once [`NatsBus::start`] gives it the router.
    pub fn new(config: NatsConfig) -> Result<Self, String> {
        let subjects = Subjects::new(&config.prefix)?;
        let (tx, rx) = crossbeam_channel::bounded(config.queue_depth.max(1));
        Ok(NatsBus {
            tx,
            shared: Arc::new(Shared {
                stats: BusStats::default(),
                dirty: Mutex::new(Changed::default()),
                wake: Notify::new(),
                max_payload: AtomicUsize::new(1024 * 1024),
                stop: Default::default(),
                liveness: Liveness::new(config.ping_timeout),
                control: Control::new(
                    &config.prefix,
                    &config.node_id,
                    RandomState::new().hash_one(unix_micros() ^ u64::from(std::process::id())),
                ),
            }),
            thread: Mutex::new(None),
            pending: Mutex::new(Some((config, subjects, rx))),
        })
    }

    /// Starts the bus thread, which connects (retrying with backoff for as long as it
    /// takes) and delivers what arrives to `router`'s reactors.
    pub fn start(&self, router: Arc<Router>) -> std::io::Result<()> {
        let Some((config, subjects, rx)) = self.pending.lock().take() else {
            return Ok(());
        };
        let shared = Arc::clone(&self.shared);
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
                rt.block_on(Worker::new(config, subjects, rx, shared, router).run());
            })?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// Stops the bus thread (pushes are refused from then on).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.stats.connected.store(false, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl ClusterBus for NatsBus {
    fn publish(&self, push: Outgoing) -> Result<(), BusError> {
        let stats = &self.shared.stats;
        let refuse = |e: BusError| {
            stats.refused[e as usize].add(1);
            Err(e)
        };
        if !self.shared.is_ready() {
            return refuse(BusError::Disconnected);
        }
        if push.body.len() + HEADER_ALLOWANCE > self.shared.max_payload.load(Ordering::Relaxed) {
            return refuse(BusError::TooLarge);
        }
        match self.tx.try_send(push) {
            Ok(()) => {
                self.shared.wake.notify_one();
                Ok(())
            }
            Err(TrySendError::Full(_)) => refuse(BusError::QueueFull),
            Err(TrySendError::Disconnected(_)) => refuse(BusError::Disconnected),
        }
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

    fn presence(&self, uids: &[String], deadline: Instant) -> Result<ClusterPresence, BusError> {
        if !self.shared.is_ready() {
            return Err(BusError::Disconnected);
        }
        self.shared
            .control
            .ask_presence(uids, deadline, || self.shared.wake.notify_one())
    }

    fn disconnect(&self, req: &Disconnect) -> Result<(), BusError> {
        if !self.shared.is_ready() {
            return Err(BusError::Disconnected);
        }
        self.shared.control.send_disconnect(req)?;
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

/// What handles messages arriving from the bus (shared by the subscription tasks, all on
/// the bus thread).
struct Inbound {
    router: Arc<Router>,
    shared: Arc<Shared>,
    recent: Mutex<RecentIds>,
}

impl Inbound {
    fn on_message(&self, on: Option<&Key>, msg: &Message) {
        let stats = &self.shared.stats;
        stats.received.add(1);
        let now = Instant::now();
        if let Some(sent) = header(msg, HEADER_SENT).and_then(|v| v.parse::<u64>().ok()) {
            stats
                .latency
                .observe(Duration::from_micros(unix_micros().saturating_sub(sent)));
        }
        if protocol::utf8::validate(&msg.payload).is_err() {
            stats.invalid.add(1);
            return;
        }
        let frame = Router::text_frame(&msg.payload);
        let Some((kind, id)) = on else {
            self.router.broadcast_local(frame, now);
            return;
        };
        match (kind, header(msg, HEADER_TARGETS)) {
            (Kind::User, _) => {
                self.router
                    .deliver_local(&[&**id], &[] as &[&str], &[] as &[&str], frame, now);
            }
            (Kind::Room, None) => {
                self.router
                    .deliver_local(&[] as &[&str], &[&**id], &[] as &[&str], frame, now);
            }
            (Kind::Room, Some(targets)) => {
                // One copy per room of the push arrives; the first delivers to every
                // listed room's members here, except connections of listed users (their
                // user copy reaches them).
                if let Some(push_id) = header(msg, HEADER_ID) {
                    if !self.recent.lock().first_sight(push_id, now) {
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
                self.router
                    .deliver_local(&[] as &[&str], &rooms, &users, frame, now);
            }
        }
    }
}

fn header<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Worker {
    config: NatsConfig,
    subjects: Subjects,
    rx: Receiver<Outgoing>,
    shared: Arc<Shared>,
    router: Arc<Router>,
    inbound: Arc<Inbound>,
    subscribed: HashMap<Key, AbortHandle>,
    /// Changed IDs taken from [`Shared::dirty`] and not reconciled yet (distinct).
    backlog: Vec<Key>,
    /// Subscriptions with no local member left, and when they may go.
    leaving: Lingering,
    /// The most local users and rooms lately.
    peak: RecentPeak,
    trimmer: Trimmer,
    broadcast: Option<AbortHandle>,
    /// The control subscriptions' tasks, once subscribed.
    control_subs: Vec<AbortHandle>,
    /// The inbox answers to liveness probes arrive in (`<inbox>.<seq>`), once subscribed.
    probe_inbox: Option<(String, AbortHandle)>,
    probe_seq: u64,
    next_probe: Instant,
    /// Subscriptions changed since the last probe.
    subs_changed: bool,
    /// The connection (by `connects`) whose subscriptions the last probe confirmed.
    probed_connection: u64,
    /// The subscription count to publish once probe `.0` is answered.
    gauge_pending: Option<(u64, u64)>,
    was_answering: bool,
    boot: u64,
    seq: AtomicU64,
}

impl Worker {
    fn new(
        config: NatsConfig,
        subjects: Subjects,
        rx: Receiver<Outgoing>,
        shared: Arc<Shared>,
        router: Arc<Router>,
    ) -> Self {
        let inbound = Arc::new(Inbound {
            router: Arc::clone(&router),
            shared: Arc::clone(&shared),
            recent: Mutex::new(RecentIds::new(DEDUP_WINDOW, DEDUP_MAX)),
        });
        let delay = config.unsubscribe_delay;
        Worker {
            config,
            subjects,
            rx,
            shared,
            router,
            inbound,
            subscribed: HashMap::new(),
            backlog: Vec::new(),
            leaving: Lingering::default(),
            peak: RecentPeak::new(delay),
            trimmer: Trimmer::new(),
            broadcast: None,
            control_subs: Vec::new(),
            probe_inbox: None,
            probe_seq: 0,
            next_probe: Instant::now(),
            subs_changed: false,
            probed_connection: 0,
            gauge_pending: None,
            was_answering: true,
            boot: RandomState::new().hash_one(unix_micros() ^ u64::from(std::process::id())),
            seq: AtomicU64::new(0),
        }
    }

    async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let options = ConnectOptions::new()
            .no_echo()
            .name(format!("pushgate {}", self.config.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let shared = Arc::clone(&shared);
                async move { on_event(&shared, event) }
            });
        let client = match options.connect(self.config.url.as_str()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, url = %self.config.url, "bad NATS address; the bus stays down");
                return;
            }
        };
        tracing::info!(url = %self.config.url, prefix = %self.config.prefix, "cluster bus: connecting to NATS");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            if connected {
                let max = client.server_info().max_payload;
                if max > 0 {
                    self.shared.max_payload.store(max, Ordering::Relaxed);
                }
            }
            // async-nats restores its subscriptions on reconnect; the bus thread only
            // adds and removes while connected, so its commands never queue up behind a
            // reconnect.
            let mut more = self.publish_batch(&client).await;
            if connected {
                if self.broadcast.is_none() {
                    self.broadcast = self.subscribe(&client, None).await;
                    self.subs_changed = true;
                }
                if self.control_subs.is_empty() {
                    self.subscribe_control(&client).await;
                    self.subs_changed = true;
                }
                more |= self.publish_control(&client).await;
                more |= self.reconcile_batch(&client).await;
                more |= self.expire_leaving();
                self.probe(&client).await;
            }
            self.watch_liveness();
            if more {
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    () = self.shared.wake.notified() => {}
                    _ = tick.tick() => {}
                }
            }
        }
        // Best effort: with NATS gone a flush would wait for a reconnect that may never
        // come, and shutdown must not.
        let _ = tokio::time::timeout(Duration::from_millis(500), client.flush()).await;
        for (_, h) in self.subscribed.drain() {
            h.abort();
        }
        if let Some((_, h)) = self.probe_inbox.take() {
            h.abort();
        }
        for h in self.control_subs.drain(..) {
            h.abort();
        }
    }

    /// Subscribes to the control subjects; their messages are handled on this thread.
    async fn subscribe_control(&mut self, client: &Client) {
        for subject in self.shared.control.subscriptions() {
            let mut sub = match client.subscribe(subject).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to a control subject failed");
                    for h in self.control_subs.drain(..) {
                        h.abort();
                    }
                    return;
                }
            };
            let (shared, router) = (Arc::clone(&self.shared), Arc::clone(&self.router));
            let task = tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let reply = msg.reply.as_ref().map(|r| r.as_str());
                    shared
                        .control
                        .on_message(&router, &msg.subject, reply, &msg.payload);
                    if shared.control.has_outgoing() {
                        shared.wake.notify_one();
                    }
                }
            });
            self.control_subs.push(task.abort_handle());
        }
    }

    /// Publishes queued control messages and a due announcement; true if more wait.
    async fn publish_control(&mut self, client: &Client) -> bool {
        for m in self
            .shared
            .control
            .take_outgoing(Instant::now(), PUBLISH_BATCH)
        {
            let sent = match m.reply {
                Some(reply) => client.publish_with_reply(m.subject, reply, m.payload).await,
                None => client.publish(m.subject, m.payload).await,
            };
            if let Err(e) = sent {
                self.shared.stats.publish_errors.add(1);
                tracing::debug!(error = %e, "control message not sent");
            }
        }
        self.shared.control.has_outgoing()
    }

    /// Sends a liveness probe when one is due, or when the subscriptions changed (its
    /// answer confirms them); publishes the subscription gauge once a probe sent after the
    /// last change is answered.
    async fn probe(&mut self, client: &Client) {
        let now = Instant::now();
        if self.probe_inbox.is_none() {
            let inbox = client.new_inbox();
            match client.subscribe(format!("{inbox}.*")).await {
                Ok(mut sub) => {
                    let shared = Arc::clone(&self.shared);
                    let task = tokio::spawn(async move {
                        while let Some(msg) = sub.next().await {
                            if let Some(seq) = liveness::reply_seq(&msg.subject) {
                                shared.liveness.answered(seq);
                            }
                        }
                    });
                    self.probe_inbox = Some((inbox, task.abort_handle()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to the probe inbox failed");
                    return;
                }
            }
        }
        let connection = self.shared.stats.connects.get();
        if now >= self.next_probe || self.subs_changed || connection != self.probed_connection {
            let Some((inbox, _)) = &self.probe_inbox else {
                return;
            };
            self.probe_seq += 1;
            let reply = format!("{inbox}.{}", self.probe_seq);
            // Before sending: the answer may arrive while the send is still awaited. A
            // probe that cannot even be sent is unanswered too.
            self.shared.liveness.sent(now);
            if let Err(e) = client
                .publish_with_reply(PROBE_SUBJECT, reply, Bytes::new())
                .await
            {
                tracing::debug!(error = %e, "probe not sent");
            }
            self.next_probe = now + self.shared.liveness.interval();
            self.subs_changed = false;
            self.probed_connection = connection;
            let count = self.subscribed.len() as u64 + u64::from(self.broadcast.is_some());
            self.gauge_pending = Some((self.probe_seq, count));
        }
        if let Some((seq, count)) = self.gauge_pending {
            if self.shared.liveness.answered_seq() >= seq {
                self.shared.stats.subscriptions.set(count);
                self.gauge_pending = None;
            }
        }
    }

    /// Counts and logs the moments NATS stops answering and starts again.
    fn watch_liveness(&mut self) {
        let answering = self.shared.liveness.answering(Instant::now());
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

    /// Publishes queued pushes; true if more are waiting.
    async fn publish_batch(&mut self, client: &Client) -> bool {
        for _ in 0..PUBLISH_BATCH {
            let Ok(push) = self.rx.try_recv() else {
                return false;
            };
            self.publish(client, push).await;
        }
        true
    }

    async fn publish(&self, client: &Client, push: Outgoing) {
        let stats = &self.shared.stats;
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_SENT, unix_micros().to_string());
        if push.broadcast {
            self.send(client, self.subjects.broadcast(), headers, push.body)
                .await;
            return;
        }
        // Users' copies need nothing more: a connection belongs to one user. Rooms'
        // copies list every target, so that a connection reached twice gets it once.
        self.send_each(client, Kind::User, &push.users, &headers, &push.body)
            .await;
        if push.rooms.is_empty() {
            return;
        }
        if push.rooms.len() + push.users.len() > 1 {
            let mut targets = String::new();
            for (kind, ids) in [(Kind::User, &push.users), (Kind::Room, &push.rooms)] {
                for id in ids {
                    if !targets.is_empty() {
                        targets.push(' ');
                    }
                    subject::write_target(kind, id, &mut targets);
                }
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            headers.insert(HEADER_ID, format!("{:016x}-{seq:x}", self.boot));
            headers.insert(HEADER_TARGETS, targets);
        }
        if push.body.len() + headers_len(&headers) > self.shared.max_payload.load(Ordering::Relaxed)
        {
            stats.publish_errors.add(1);
            tracing::warn!(
                rooms = push.rooms.len(),
                users = push.users.len(),
                "push too large for the bus with its target list; other nodes' room members miss it"
            );
            return;
        }
        self.send_each(client, Kind::Room, &push.rooms, &headers, &push.body)
            .await;
    }

    /// One copy to the subject of each of `ids`.
    async fn send_each(
        &self,
        client: &Client,
        kind: Kind,
        ids: &[Arc<str>],
        headers: &HeaderMap,
        body: &Bytes,
    ) {
        for id in ids {
            let subject = self.subjects.subject(kind, id);
            self.send(client, subject, headers.clone(), body.clone())
                .await;
        }
    }

    async fn send(&self, client: &Client, subject: String, headers: HeaderMap, body: Bytes) {
        let stats = &self.shared.stats;
        match client.publish_with_headers(subject, headers, body).await {
            Ok(()) => stats.published.add(1),
            Err(e) => {
                stats.publish_errors.add(1);
                tracing::debug!(error = %e, "publish failed");
            }
        }
    }

    /// Brings subscriptions in line with the registry for a batch of changed IDs; true if
    /// more are waiting.
    async fn reconcile_batch(&mut self, client: &Client) -> bool {
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
            let wanted = self.router.registry().contains(key.0, &key.1);
            let have = self.subscribed.contains_key(&key);
            match (wanted, have) {
                (true, true) => {
                    self.leaving.cancel(&key);
                }
                (true, false) => {
                    if let Some(h) = self.subscribe(client, Some(key.clone())).await {
                        self.subscribed.insert(key, h);
                        self.subs_changed = true;
                    }
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
    fn expire_leaving(&mut self) -> bool {
        let now = Instant::now();
        let online = self.subscribed.len().saturating_sub(self.leaving.len());
        let keep = self
            .peak
            .lingering_bound(online, self.config.max_lingering, now);
        let due = self.leaving.take_due(now, EXPIRE_BATCH, keep);
        let more = due.len() == EXPIRE_BATCH;
        let mut released = 0;
        for key in due {
            if self.router.registry().contains(key.0, &key.1) {
                continue;
            }
            if let Some(h) = self.subscribed.remove(&key) {
                // Dropping the subscriber (with its task) unsubscribes.
                h.abort();
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
            if self.subscribed.capacity() > 4 * self.subscribed.len() + 1024 {
                self.subscribed.shrink_to_fit();
            }
        }
        more
    }

    /// Subscribes to a user or room subject (or broadcast, for `None`) and starts the task
    /// that hands its messages on.
    async fn subscribe(&self, client: &Client, key: Option<Key>) -> Option<AbortHandle> {
        let subject = match &key {
            Some((kind, id)) => self.subjects.subject(*kind, id),
            None => self.subjects.broadcast(),
        };
        let mut sub = match client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "subscribe failed");
                return None;
            }
        };
        self.shared.stats.interest_changes.add(1);
        let inbound = Arc::clone(&self.inbound);
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                inbound.on_message(key.as_ref(), &msg);
            }
        });
        Some(task.abort_handle())
    }
}

fn headers_len(h: &HeaderMap) -> usize {
    h.iter()
        .map(|(k, vs)| {
            let name: &str = k.as_ref();
            vs.iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
        + 12
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

fn on_event(shared: &Shared, event: Event) {
    let stats = &shared.stats;
    match event {
        Event::Connected => {
            // Probes sent on the old connection will not be answered.
            shared.liveness.reset();
            shared.control.announce_soon();
            stats.connects.add(1);
            stats.connected.store(true, Ordering::Relaxed);
            tracing::info!("cluster bus: connected to NATS");
            shared.wake.notify_one();
        }
        Event::Disconnected => {
            stats.disconnects.add(1);
            stats.connected.store(false, Ordering::Relaxed);
            // NATS has none of ours until the next connection restores them.
            stats.subscriptions.set(0);
            // Unready already; probes lost with the connection are not a frozen server.
            shared.liveness.reset();
            tracing::warn!("cluster bus: lost NATS; reconnecting");
        }
        Event::SlowConsumer(_) => stats.slow_consumer_drops.add(1),
        Event::Closed => stats.connected.store(false, Ordering::Relaxed),
        other => tracing::warn!(event = %other, "cluster bus"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(queue_depth: usize) -> NatsBus {
        NatsBus::new(NatsConfig {
            url: "nats://127.0.0.1:1".into(),
            prefix: "t".into(),
            node_id: "n".into(),
            queue_depth,
            unsubscribe_delay: Duration::ZERO,
            max_lingering: 1024,
            ping_timeout: Duration::from_secs(3),
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
    fn refuses_rather_than_waits() {
        let b = bus(2);
        assert_eq!(b.publish(push(10)), Err(BusError::Disconnected));
        assert!(!b.is_ready());
        b.shared.stats.connected.store(true, Ordering::Relaxed);
        assert_eq!(b.publish(push(10)), Ok(()));
        assert_eq!(b.publish(push(10)), Ok(()));
        // No bus thread drains the queue: the third waits for nobody.
        assert_eq!(b.publish(push(10)), Err(BusError::QueueFull));
        assert_eq!(b.publish(push(1 << 20)), Err(BusError::TooLarge));
        let refused: Vec<u64> = b.shared.stats.refused.iter().map(|c| c.get()).collect();
        assert_eq!(refused, [1, 1, 1]);
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
    fn bad_prefix_is_refused() {
        let mut c = bus(1).pending.lock().take().unwrap().0;
        c.prefix = "a.*".into();
        assert!(NatsBus::new(c).is_err());
    }

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
