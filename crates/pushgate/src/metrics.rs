//! `/metrics` through the `prometheus` crate. Counters live per reactor (each written by
//! one thread only) and are summed by custom collectors at scrape time, so the hot path
//! never touches a shared cell; connection gauges keep a bounded `reactor` label so
//! imbalance between reactors is visible. One collector per part of the node: the
//! reactors, their inboxes, the control listener and API, the router, the bus.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as HistogramProto, LabelPair, Metric, MetricFamily,
    MetricType,
};
use prometheus::{Encoder, Registry, TextEncoder};
use reactor::admission::Admission;
use reactor::stats::{
    Histogram, DROP_REASONS, LATENCY_BUCKETS_US, POLL_RESULTS, PROTOCOL_CLOSE_CODES,
    REJECT_STATUSES, SERVICE_EVICT_REASONS, STAGES, STAGE_BUCKETS_US, TLS_FAILURE_CAUSES,
    TRANSPORTS,
};
use reactor::{ReactorHandle, ReactorStats, INBOX_DROP_REASONS};
use router::bus::stats::REFUSE_REASONS;
use router::bus::BusStats;
use router::Router;
use session::fallback::SEND_STATUSES;

use crate::control::{ApiStats, OperatorStats, API_ENDPOINTS, API_STATUSES};

/// Metric names, one place to grep.
pub mod names {
    /// Gauge: open client sockets, per reactor.
    pub const CONNECTIONS: &str = "pushgate_connections";
    /// Gauge: upgraded connections, per reactor.
    pub const CONNECTIONS_UPGRADED: &str = "pushgate_connections_upgraded";
    pub const OPENINGS_PENDING: &str = "pushgate_openings_pending";
    /// Gauge: handshakes in progress, per reactor.
    pub const HANDSHAKES_IN_PROGRESS: &str = "pushgate_handshakes_in_progress";
    /// Gauge: the connection cap.
    pub const CONNECTION_CAPACITY: &str = "pushgate_connection_capacity";
    /// Counter: sockets accepted.
    pub const ACCEPTED: &str = "pushgate_connections_accepted_total";
    /// Counter: upgrades by result.
    pub const HANDSHAKES: &str = "pushgate_handshakes_total";
    /// Gauge: open connections of users, by transport (`ws`, `sse`, `poll`).
    pub const TRANSPORT_CONNECTIONS: &str = "pushgate_transport_connections";
    /// Counter: connections of users opened, by transport.
    pub const TRANSPORT_OPENED: &str = "pushgate_transport_opened_total";
    /// Counter: messages queued to connections, by transport.
    pub const TRANSPORT_DELIVERED: &str = "pushgate_transport_messages_delivered_total";
    /// Counter: `POST /send` answers, by HTTP status.
    pub const HTTP_SEND: &str = "pushgate_http_send_total";
    /// Counter: long polls answered, by result (`messages`, `timeout`).
    pub const POLL_ANSWERS: &str = "pushgate_poll_answers_total";
    /// Counter: bytes read from clients.
    pub const BYTES_RECEIVED: &str = "pushgate_bytes_received_total";
    /// Counter: bytes written to clients.
    pub const BYTES_SENT: &str = "pushgate_bytes_sent_total";
    /// Counter: data messages received from clients.
    pub const MESSAGES_RECEIVED: &str = "pushgate_messages_received_total";
    /// Counter: frames queued to clients.
    pub const FRAMES_SENT: &str = "pushgate_frames_sent_total";
    /// Counter: timeouts by kind.
    pub const TIMEOUTS: &str = "pushgate_timeouts_total";
    /// Counter: pings sent to silent connections.
    pub const HEARTBEATS: &str = "pushgate_heartbeats_sent_total";
    /// Counter: connections closed with 1013 for overflowing their queue.
    pub const SLOW_CONSUMER_CLOSES: &str = "pushgate_slow_consumer_closes_total";
    /// Counter: connections failed for protocol violations, by close code.
    pub const PROTOCOL_ERRORS: &str = "pushgate_protocol_errors_total";
    /// Counter: handshakes reset to make room at the pending-handshake bound.
    pub const HANDSHAKES_EVICTED: &str = "pushgate_handshakes_evicted_total";
    /// Counter: commands a reactor's inbox refused, by reason.
    pub const INBOX_DROPPED: &str = "pushgate_inbox_dropped_total";
    /// Gauge: open control connections.
    pub const CONTROL_CONNECTIONS: &str = "pushgate_control_connections";
    /// Counter: control (server API) connections accepted.
    pub const CONTROL_ACCEPTED: &str = "pushgate_control_connections_accepted_total";
    /// Counter: control connections the server closed, by reason.
    pub const CONTROL_EVICTED: &str = "pushgate_control_evicted_total";
    pub const CONTROL_PARKED: &str = "pushgate_control_parked";
    pub const CONTROL_UNANSWERED: &str = "pushgate_control_parked_unanswered_total";
    pub const CONTROL_LATE_ANSWERS: &str = "pushgate_control_late_answers_total";
    /// Gauge: commands waiting in a reactor's inbox, per reactor.
    pub const INBOX_DEPTH: &str = "pushgate_inbox_depth";
    /// Gauge: bytes held by commands waiting in a reactor's inbox, per reactor.
    pub const INBOX_BYTES: &str = "pushgate_inbox_bytes";
    /// Counter: failed `accept` calls.
    pub const ACCEPT_ERRORS: &str = "pushgate_accept_errors_total";
    /// Gauge: 1, labelled with the node ID.
    pub const NODE_INFO: &str = "pushgate_node_info";
    /// Gauge: 1, labelled with the I/O backend in use (`epoll` or `io_uring`).
    pub const IO_BACKEND: &str = "pushgate_io_backend";
    /// Counter: io_uring receives that found every receive buffer taken (`ENOBUFS`).
    pub const IO_URING_RECV_BUFFERS_EXHAUSTED: &str =
        "pushgate_io_uring_recv_buffers_exhausted_total";
    /// Counter: TLS handshakes completed, by kind.
    pub const TLS_HANDSHAKES: &str = "pushgate_tls_handshakes_total";
    /// Counter: push IDs forgotten before the TTL for lack of memory.
    pub const IDEMPOTENCY_EVICTED: &str = "pushgate_idempotency_evicted_total";
    /// Gauge: bytes held by remembered push IDs and answers.
    pub const IDEMPOTENCY_BYTES: &str = "pushgate_idempotency_bytes";
    /// Counter: TLS connections failed, by cause.
    pub const TLS_FAILURES: &str = "pushgate_tls_failures_total";
    /// Counter: certificate reloads, by result.
    pub const TLS_RELOADS: &str = "pushgate_tls_reloads_total";
    /// Gauge: the served certificate's notAfter.
    pub const TLS_CERT_NOT_AFTER: &str = "pushgate_tls_cert_not_after_seconds";
    /// Gauge: users with a connection on this node.
    pub const USERS_ONLINE: &str = "pushgate_users_online";
    /// Gauge: rooms with a member on this node.
    pub const ROOMS: &str = "pushgate_rooms";
    /// Gauge: bytes held by retained messages (history), bounded by `history_max_bytes`.
    pub const HISTORY_BYTES: &str = "pushgate_history_bytes";
    /// Gauge: 1 while a clustered node keeps history (the JetStream stream is there).
    pub const HISTORY_CLUSTER_READY: &str = "pushgate_history_cluster_ready";
    /// Counter: events of the clustered history, by kind.
    pub const HISTORY_CLUSTER_EVENTS: &str = "pushgate_history_cluster_events_total";
    /// Counter: push frames queued to connections.
    pub const MESSAGES_DELIVERED: &str = "pushgate_messages_delivered_total";
    /// Counter: messages not delivered, by reason.
    pub const MESSAGES_DROPPED: &str = "pushgate_messages_dropped_total";
    /// Counter: server API requests by endpoint and status.
    pub const PUSH_REQUESTS: &str = "pushgate_push_requests_total";
    /// Counter: pushes carried in /v1/batch requests, by their own status.
    pub const BATCH_ITEMS: &str = "pushgate_batch_items_total";
    /// Counter: /v1/batch requests refused whole (413), by the limit they broke.
    pub const BATCH_REFUSED: &str = "pushgate_batch_refused_total";
    /// Counter: /v1/history reads by result.
    pub const HISTORY_READS: &str = "pushgate_history_reads_total";
    /// Histogram: push receipt to frame handed to the kernel.
    pub const PUSH_LATENCY: &str = "pushgate_push_latency_seconds";
    /// Histogram: a push's time in each stage inside the node, by stage.
    pub const PUSH_STAGE: &str = "pushgate_push_stage_seconds";
    /// Histogram: how long each reactor loop turn works before it waits again.
    pub const REACTOR_TURN: &str = "pushgate_reactor_turn_seconds";
    /// Counter: client requests by type.
    pub const CLIENT_REQUESTS: &str = "pushgate_client_requests_total";
    /// Counter: connections closed with 1008.
    pub const POLICY_CLOSES: &str = "pushgate_policy_closes_total";
    /// Gauge: 1, labelled with the bus kind (`nats` or `in-process`).
    pub const BUS_INFO: &str = "pushgate_bus_info";
    /// Gauge: 1 while pushes reach the other nodes (always 1 in-process).
    pub const BUS_CONNECTED: &str = "pushgate_bus_connected";
    /// Counter: connections made to NATS.
    pub const BUS_CONNECTS: &str = "pushgate_bus_connects_total";
    /// Counter: connections to NATS lost.
    pub const BUS_DISCONNECTS: &str = "pushgate_bus_disconnects_total";
    /// Counter: messages published on the bus.
    pub const BUS_PUBLISHED: &str = "pushgate_bus_published_total";
    /// Counter: pushes the bus could not take, by reason.
    pub const BUS_REFUSED: &str = "pushgate_bus_refused_total";
    /// Counter: publishes NATS failed after they were queued.
    pub const BUS_PUBLISH_ERRORS: &str = "pushgate_bus_publish_errors_total";
    /// Counter: messages received from the bus.
    pub const BUS_RECEIVED: &str = "pushgate_bus_received_total";
    /// Counter: copies of multi-recipient pushes already delivered.
    pub const BUS_DUPLICATES: &str = "pushgate_bus_duplicates_total";
    /// Counter: malformed messages from the bus.
    pub const BUS_INVALID: &str = "pushgate_bus_invalid_total";
    /// Gauge: subjects subscribed to.
    pub const BUS_SUBSCRIPTIONS: &str = "pushgate_bus_subscriptions";
    /// Counter: subscribe and unsubscribe operations.
    pub const BUS_INTEREST_CHANGES: &str = "pushgate_bus_interest_changes_total";
    /// Counter: messages dropped by NATS for a slow subscription.
    pub const BUS_SLOW_CONSUMER: &str = "pushgate_bus_slow_consumer_total";
    /// Counter: NATS left a round trip unanswered past `--bus-ping-timeout`.
    pub const BUS_PING_TIMEOUTS: &str = "pushgate_bus_ping_timeouts_total";
    /// Counter: history stream setups asked again after JetStream did not answer.
    pub const BUS_STREAM_SETUP_RETRIES: &str = "pushgate_bus_stream_setup_retries_total";
    /// Histogram: publish on any node to delivery handed to the reactors here.
    pub const BUS_LATENCY: &str = "pushgate_bus_latency_seconds";
    /// Counter: `/v1/presence` queries by result.
    pub const PRESENCE_QUERIES: &str = "pushgate_presence_queries_total";
    /// Counter: `/v1/rooms/presence` queries by result.
    pub const ROOM_PRESENCE_QUERIES: &str = "pushgate_room_presence_queries_total";
    /// Counter: `/v1/disconnect` requests by result.
    pub const DISCONNECT_REQUESTS: &str = "pushgate_disconnect_requests_total";
    /// Counter: connections the router closed, by reason.
    pub const ROUTER_CLOSES: &str = "pushgate_router_closes_total";
    /// Gauge: other nodes heard from lately on the bus.
    pub const CLUSTER_PEERS: &str = "pushgate_cluster_peers";
    /// Counter: control messages from other nodes by kind.
    pub const BUS_CONTROL_RECEIVED: &str = "pushgate_bus_control_received_total";
    /// Counter: `/v1/rooms/join` and `/v1/rooms/leave` requests by result.
    pub const ROOM_REQUESTS: &str = "pushgate_room_requests_total";
    /// Counter: server-side joins of this node's connections by result.
    pub const SERVER_ROOM_JOINS: &str = "pushgate_server_room_joins_total";
    /// Counter: server-side leaves of this node's connections by result.
    pub const SERVER_ROOM_LEAVES: &str = "pushgate_server_room_leaves_total";
    /// Counter: messages given an undelivered deadline, and how each ended.
    pub const UNDELIVERED: &str = "pushgate_undelivered_total";
    /// Gauge: messages waiting for their undelivered deadline.
    pub const UNDELIVERED_PENDING: &str = "pushgate_undelivered_pending";
    /// Counter: webhook events by result.
    pub const WEBHOOK_EVENTS: &str = "pushgate_webhook_events_total";
    /// Counter: webhook attempts that failed and were retried.
    pub const WEBHOOK_RETRIES: &str = "pushgate_webhook_retries_total";
}

/// Reads one value from a reactor's counters.
type Read = fn(&ReactorStats) -> u64;
/// Reads one cell of a per-label array of counters.
type ReadAt = fn(&ReactorStats, usize) -> u64;

fn sum(reactors: &[ReactorHandle], f: impl Fn(&ReactorStats) -> u64) -> u64 {
    reactors.iter().map(|r| f(r.stats())).sum()
}

/// What the collectors read, each part shared with the node that writes it.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The reactors, for their counters.
    pub reactors: Vec<ReactorHandle>,
    /// Connection caps.
    pub admission: Arc<Admission>,
    /// Registry gauges, history, the bus.
    pub router: Arc<Router>,
    /// Server API counters.
    pub api: Arc<ApiStats>,
    /// Presence and disconnect counters.
    pub operator: Arc<OperatorStats>,
    /// The client listener's TLS, when it serves `wss://`.
    pub tls: Option<reactor::tls::TlsAcceptor>,
    /// This node's name.
    pub node_id: String,
    /// The webhook's counters, when it is on.
    pub webhook: Option<Arc<crate::webhook::WebhookStats>>,
}

/// The node's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry holding one collector per part of the node.
    pub fn new(sources: Sources) -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        let parts: [(&'static str, Build); 9] = [
            ("reactors", reactors),
            ("inboxes", inboxes),
            ("control", control),
            ("router", router_part),
            ("bus", bus),
            ("operator", operator_part),
            ("rooms", rooms_part),
            ("events", events_part),
            ("tls", tls_part),
        ];
        for (name, build) in parts {
            let collector = SumAtScrape::new(name, sources.clone(), build)?;
            registry.register(Box::new(collector))?;
        }
        Ok(Metrics { registry })
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding to a Vec fails only for families the collectors cannot produce (no
        // type, no samples' values): nothing is lost by answering what was encoded.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Fills in one part's families from the current counters.
type Build = fn(&Sources, &mut Families);

/// A collector that reads the sources at scrape time. Its descriptors are taken from one
/// collection at start, so each family's name, help and labels are written once.
struct SumAtScrape {
    part: &'static str,
    sources: Sources,
    build: Build,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for SumAtScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SumAtScrape")
            .field("part", &self.part)
            .finish()
    }
}

impl SumAtScrape {
    fn new(part: &'static str, sources: Sources, build: Build) -> anyhow::Result<SumAtScrape> {
        let mut families = Families::default();
        build(&sources, &mut families);
        let descs = families
            .0
            .iter()
            .map(|f| {
                let labels = f
                    .get_metric()
                    .first()
                    .map(|m| m.get_label().iter().map(|l| l.name().to_owned()).collect())
                    .unwrap_or_default();
                Desc::new(
                    f.name().to_owned(),
                    f.help().to_owned(),
                    labels,
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(SumAtScrape {
            part,
            sources,
            build,
            descs,
        })
    }
}

impl Collector for SumAtScrape {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = Families::default();
        (self.build)(&self.sources, &mut families);
        families.0
    }
}

/// Metric families under construction.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

fn label(name: &str, value: String) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value);
    l
}

fn sample(kind: MetricType, labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels);
    match kind {
        MetricType::COUNTER => {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    m
}

impl Families {
    fn start(&mut self, name: &str, kind: MetricType, help: &str) -> &mut MetricFamily {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(kind);
        self.0.push(f);
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    /// One metric with no labels.
    fn single(&mut self, name: &str, kind: MetricType, help: &str, value: u64) {
        self.start(name, kind, help)
            .mut_metric()
            .push(sample(kind, Vec::new(), value as f64));
    }

    /// A sample per value of a single bounded label.
    fn family<L: ToString>(
        &mut self,
        name: &str,
        kind: MetricType,
        help: &str,
        key: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) {
        let f = self.start(name, kind, help);
        for (value, n) in samples {
            f.mut_metric()
                .push(sample(kind, vec![label(key, value.to_string())], n as f64));
        }
    }

    /// A latency histogram, buckets summed over its parts and made cumulative.
    fn histogram<'a>(
        &mut self,
        name: &str,
        help: &str,
        parts: impl Iterator<Item = &'a Histogram> + Clone,
    ) {
        let m = histogram_metric(&LATENCY_BUCKETS_US, parts, Vec::new());
        self.start(name, MetricType::HISTOGRAM, help)
            .mut_metric()
            .push(m);
    }

    /// A histogram per value of a single bounded label, each summed over its parts.
    fn histogram_family<'a, P>(
        &mut self,
        name: &str,
        help: &str,
        key: &str,
        bounds: &[u64; 14],
        samples: impl IntoIterator<Item = (String, P)>,
    ) where
        P: Iterator<Item = &'a Histogram> + Clone,
    {
        let f = self.start(name, MetricType::HISTOGRAM, help);
        for (value, parts) in samples {
            f.mut_metric()
                .push(histogram_metric(bounds, parts, vec![label(key, value)]));
        }
    }
}

/// One histogram sample: buckets `bounds` (microseconds) summed over `parts` and made
/// cumulative.
fn histogram_metric<'a>(
    bounds: &[u64; 14],
    parts: impl Iterator<Item = &'a Histogram> + Clone,
    labels: Vec<LabelPair>,
) -> Metric {
    let total = |f: &dyn Fn(&Histogram) -> u64| parts.clone().map(f).sum::<u64>();
    let mut h = HistogramProto::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (i, bound) in bounds.iter().enumerate() {
        cumulative += total(&|h| h.buckets[i].get());
        let mut b = Bucket::default();
        b.set_upper_bound(*bound as f64 / 1e6);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    h.set_bucket(buckets);
    // The +Inf bucket is the count, which the encoder writes from it.
    h.set_sample_count(cumulative + total(&|h| h.buckets[bounds.len()].get()));
    h.set_sample_sum(total(&|h| h.sum_us.get()) as f64 / 1e6);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_histogram(h);
    m
}

use MetricType::{COUNTER, GAUGE};

/// Connections, upgrades, traffic and client requests, summed over the reactors.
fn reactors(src: &Sources, out: &mut Families) {
    use names::*;
    let reactors = src.reactors.as_slice();
    out.family(NODE_INFO, GAUGE, "This node.", "node", [(&src.node_id, 1)]);
    if let Some(r) = reactors.first() {
        out.family(
            IO_BACKEND,
            GAUGE,
            "The I/O backend the reactors use.",
            "backend",
            [(r.io_backend(), 1)],
        );
    }
    let gauges: [(&str, &str, Read); 4] = [
        (CONNECTIONS, "Open client sockets.", |s| s.connections.get()),
        (
            CONNECTIONS_UPGRADED,
            "Upgraded WebSocket connections, open /sse streams and parked polls.",
            |s| s.upgraded.get(),
        ),
        (
            HANDSHAKES_IN_PROGRESS,
            "Connections still in the HTTP upgrade.",
            |s| s.handshaking.get(),
        ),
        (
            OPENINGS_PENDING,
            "Connections whose welcome and replay are being read from JetStream (a clustered node's openings); what they are delivered meanwhile waits behind the welcome.",
            |s| s.openings_pending.get(),
        ),
    ];
    for (name, help, f) in gauges {
        out.family(
            name,
            GAUGE,
            help,
            "reactor",
            reactors.iter().map(|r| (r.id(), f(r.stats()))),
        );
    }
    out.single(
        CONNECTION_CAPACITY,
        GAUGE,
        "Connections held before upgrades get 503.",
        src.admission.max_connections() as u64,
    );
    let counters: [(&str, &str, Read); 12] = [
        (ACCEPTED, "Client sockets accepted.", |s| s.accepted.get()),
        (BYTES_RECEIVED, "Bytes read from clients.", |s| {
            s.bytes_in.get()
        }),
        (BYTES_SENT, "Bytes written to clients.", |s| {
            s.bytes_out.get()
        }),
        (
            MESSAGES_RECEIVED,
            "Data messages received from clients.",
            |s| s.messages_in.get(),
        ),
        (FRAMES_SENT, "Frames queued to clients.", |s| {
            s.frames_out.get()
        }),
        (HEARTBEATS, "Pings sent to silent connections.", |s| {
            s.heartbeats.get()
        }),
        (
            SLOW_CONSUMER_CLOSES,
            "Connections closed with 1013 because their queue overflowed.",
            |s| s.slow_consumer_closes.get(),
        ),
        (
            HANDSHAKES_EVICTED,
            "Handshakes in progress reset to make room for a new connection at the pending-handshake limit.",
            |s| s.handshakes_evicted.get(),
        ),
        (ACCEPT_ERRORS, "Failed accept calls.", |s| {
            s.accept_errors.get()
        }),
        (
            IO_URING_RECV_BUFFERS_EXHAUSTED,
            "io_uring receives that found every receive buffer taken and were re-armed.",
            |s| s.recv_buffers_exhausted.get(),
        ),
        (
            MESSAGES_DELIVERED,
            "Push frames queued to connections.",
            |s| s.delivered.get(),
        ),
        (
            POLICY_CLOSES,
            "Connections closed with 1008 (token expiry, repeated bad requests).",
            |s| s.policy_closes.get(),
        ),
    ];
    for (name, help, f) in counters {
        out.single(name, COUNTER, help, sum(reactors, f));
    }
    let rejected = REJECT_STATUSES
        .iter()
        .enumerate()
        .map(|(i, status)| (status.to_string(), sum(reactors, |s| s.rejected[i].get())));
    out.family(
        HANDSHAKES,
        COUNTER,
        "WebSocket upgrades and /sse, /poll, /send requests by result (ok, or the HTTP status refused with).",
        "result",
        std::iter::once(("ok".to_owned(), sum(reactors, |s| s.handshakes_ok.get())))
            .chain(rejected),
    );
    let by_transport: [(&str, &str, MetricType, ReadAt); 3] = [
        (
            TRANSPORT_CONNECTIONS,
            "Open connections of users by transport (ws, sse, poll).",
            GAUGE,
            |s, i| s.transport_connections[i].get(),
        ),
        (
            TRANSPORT_OPENED,
            "Connections of users opened by transport (upgraded, streaming, parked).",
            COUNTER,
            |s, i| s.transport_opened[i].get(),
        ),
        (
            TRANSPORT_DELIVERED,
            "Messages queued to connections by transport.",
            COUNTER,
            |s, i| s.transport_delivered[i].get(),
        ),
    ];
    for (name, help, kind, f) in by_transport {
        out.family(
            name,
            kind,
            help,
            "transport",
            TRANSPORTS
                .iter()
                .enumerate()
                .map(|(i, t)| (*t, reactors.iter().map(|r| f(r.stats(), i)).sum())),
        );
    }
    out.family(
        HTTP_SEND,
        COUNTER,
        "POST /send requests read and answered, by HTTP status.",
        "status",
        SEND_STATUSES.iter().enumerate().map(|(i, status)| {
            (
                status.to_string(),
                sum(reactors, |s| s.send_answers[i].get()),
            )
        }),
    );
    out.family(
        POLL_ANSWERS,
        COUNTER,
        "Long polls answered: with messages, or empty at the poll timeout or a close.",
        "result",
        POLL_RESULTS.iter().enumerate().map(|(i, r)| {
            (
                *r,
                reactors
                    .iter()
                    .map(|x| x.stats().poll_answers[i].get())
                    .sum(),
            )
        }),
    );
    let timeouts: [(&str, Read); 3] = [
        ("handshake", |s| s.handshake_timeouts.get()),
        ("idle", |s| s.idle_timeouts.get()),
        ("close", |s| s.close_timeouts.get()),
    ];
    out.family(
        TIMEOUTS,
        COUNTER,
        "Timeouts by kind.",
        "kind",
        timeouts.map(|(k, f)| (k, sum(reactors, f))),
    );
    out.histogram(
        PUSH_LATENCY,
        "Push receipt to frame handed to the kernel, per reactor batch.",
        reactors.iter().map(|r| &r.stats().push_latency),
    );
    out.histogram_family(
        PUSH_STAGE,
        "A push's time in each stage inside the node: read (reactor woke with the request ready -> request served), route (served -> delivery queued on the recipient's reactor), handoff_local / handoff_cross (queued by the same reactor / another thread -> taken off the inbox), write (taken -> frame handed to the kernel).",
        "stage",
        &STAGE_BUCKETS_US,
        STAGES
            .iter()
            .enumerate()
            .map(|(i, &stage)| {
                let parts = reactors.iter().map(move |r| &r.stats().stages[i]);
                (stage.to_owned(), parts)
            }),
    );
    out.histogram_family(
        REACTOR_TURN,
        "How long a reactor loop turn works, from waking to waiting again, per reactor: what a turn does before it writes waits at most this.",
        "reactor",
        &STAGE_BUCKETS_US,
        reactors
            .iter()
            .map(|r| (r.id().to_string(), std::iter::once(&r.stats().turn))),
    );
    let requests: [(&str, Read); 6] = [
        ("send", |s| s.client_sends.get()),
        ("room", |s| s.client_room_ops.get()),
        ("ping", |s| s.app_pings.get()),
        ("bad", |s| s.bad_requests.get()),
        ("rate_limited", |s| s.rate_limited.get()),
        ("forbidden", |s| s.forbidden.get()),
    ];
    out.family(
        CLIENT_REQUESTS,
        COUNTER,
        "Client requests by type (malformed ones as \"bad\", refused by the rate limit as \"rate_limited\", joins the token does not grant as \"forbidden\").",
        "type",
        requests.map(|(k, f)| (k, sum(reactors, f))),
    );
    out.family(
        PROTOCOL_ERRORS,
        COUNTER,
        "Connections failed for protocol violations, by close code.",
        "code",
        PROTOCOL_CLOSE_CODES
            .iter()
            .enumerate()
            .map(|(i, code)| (code, sum(reactors, |s| s.protocol_errors[i].get()))),
    );
}

/// The reactors' inboxes: what waits, and what was refused.
fn inboxes(src: &Sources, out: &mut Families) {
    use names::*;
    let reactors = src.reactors.as_slice();
    out.family(
        INBOX_DROPPED,
        COUNTER,
        "Commands (pushes, broadcasts, closes) a reactor's inbox refused, by reason.",
        "reason",
        INBOX_DROP_REASONS
            .iter()
            .enumerate()
            .map(|(i, reason)| (reason, reactors.iter().map(|r| r.dropped()[i]).sum())),
    );
    let backlog: Vec<(usize, usize)> = reactors.iter().map(ReactorHandle::backlog).collect();
    out.family(
        INBOX_DEPTH,
        GAUGE,
        "Commands waiting in the reactor's inbox.",
        "reactor",
        backlog.iter().enumerate().map(|(i, b)| (i, b.0 as u64)),
    );
    out.family(
        INBOX_BYTES,
        GAUGE,
        "Bytes held by commands waiting in the reactor's inbox.",
        "reactor",
        backlog.iter().enumerate().map(|(i, b)| (i, b.1 as u64)),
    );
}

/// The client listener's TLS. The counters are there, at 0, on a node that does not serve
/// `wss://` (yet): dashboards and alerts written for them see a value, not a gap. Only the
/// certificate's expiry is absent without a certificate (0 would read as long expired).
fn tls_part(src: &Sources, out: &mut Families) {
    use names::*;
    let reactors = src.reactors.as_slice();
    out.family(
        TLS_HANDSHAKES,
        COUNTER,
        "TLS handshakes completed, by kind: full, or resumed with a session ticket.",
        "kind",
        ["full", "resumed"]
            .iter()
            .enumerate()
            .map(|(i, k)| (k, sum(reactors, |s| s.tls_handshakes[i].get()))),
    );
    out.family(
        TLS_FAILURES,
        COUNTER,
        "TLS connections failed, by cause: not_tls (first bytes not TLS), handshake, truncated (hung up mid-handshake), record (bad record after the handshake).",
        "cause",
        TLS_FAILURE_CAUSES
            .iter()
            .enumerate()
            .map(|(i, c)| (c, sum(reactors, |s| s.tls_failures[i].get()))),
    );
    let (ok, failed) = src.tls.as_ref().map_or((0, 0), |tls| tls.reloads());
    out.family(
        TLS_RELOADS,
        COUNTER,
        "Certificate reloads on SIGHUP, by result; a failed one keeps the previous pair.",
        "result",
        [("ok", ok), ("failed", failed)],
    );
    if let Some(tls) = &src.tls {
        // Absent (rather than 0, which would read as long expired) when unreadable.
        if let Some(not_after) = tls.not_after() {
            out.single(
                TLS_CERT_NOT_AFTER,
                GAUGE,
                "When the certificate served expires, in seconds since the Unix epoch.",
                not_after.max(0) as u64,
            );
        }
    }
}

/// The control listener and the server API.
fn control(src: &Sources, out: &mut Families) {
    use names::*;
    let reactors = src.reactors.as_slice();
    out.single(
        CONTROL_CONNECTIONS,
        GAUGE,
        "Open control listener connections.",
        sum(reactors, |s| s.service_connections.get()),
    );
    out.single(
        CONTROL_ACCEPTED,
        COUNTER,
        "Control listener (server API, health, metrics) connections accepted.",
        sum(reactors, |s| s.service_accepted.get()),
    );
    out.family(
        CONTROL_EVICTED,
        COUNTER,
        "Control connections closed by the server before the client was done: full (evicted for a new one), fd_limit (evicted to retry accept), first_request_timeout, idle_timeout.",
        "reason",
        SERVICE_EVICT_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| (r, sum(reactors, |s| s.service_evicted[i].get()))),
    );
    out.single(
        CONTROL_PARKED,
        GAUGE,
        "Control requests parked: waiting for JetStream or the other nodes, their reactor serving the rest meanwhile.",
        sum(reactors, |s| s.service_parked.get()),
    );
    out.family(
        CONTROL_UNANSWERED,
        COUNTER,
        "Parked control requests answered by the reactor itself: timeout (504, past their deadline), dropped (503, their answer was given up).",
        "reason",
        [
            ("timeout", sum(reactors, |s| s.service_parked_timeouts.get())),
            ("dropped", sum(reactors, |s| s.service_parked_dropped.get())),
        ],
    );
    out.single(
        CONTROL_LATE_ANSWERS,
        COUNTER,
        "Answers of parked control requests that came after their connection closed or their deadline answered them.",
        sum(reactors, |s| s.service_answers_late.get()),
    );
    let f = out.start(
        PUSH_REQUESTS,
        COUNTER,
        "Server API requests by endpoint and status.",
    );
    for (e, endpoint) in API_ENDPOINTS.iter().enumerate() {
        for (i, status) in API_STATUSES.iter().enumerate() {
            let labels = vec![
                label("endpoint", (*endpoint).to_owned()),
                label("status", status.to_string()),
            ];
            let n = src.api.requests[e][i].get();
            f.mut_metric().push(sample(COUNTER, labels, n as f64));
        }
    }
    out.family(
        BATCH_ITEMS,
        COUNTER,
        "Pushes carried in /v1/batch requests, by the status of their own result.",
        "status",
        API_STATUSES
            .iter()
            .zip(&src.api.batch_items)
            .map(|(s, c)| (s, c.get())),
    );
    out.family(
        BATCH_REFUSED,
        COUNTER,
        "/v1/batch requests refused whole with 413: items (--batch-max-items), bytes (--batch-max-bytes).",
        "limit",
        crate::control::BATCH_LIMITS
            .iter()
            .zip(&src.api.batch_refused)
            .map(|(l, c)| (l, c.get())),
    );
    out.family(
        HISTORY_READS,
        COUNTER,
        "/v1/history reads: ok, bad_request, off (no history kept), unavailable (JetStream did not answer, or too many reads waiting).",
        "result",
        crate::control::HISTORY_READ_RESULTS
            .iter()
            .zip(&src.api.history_reads)
            .map(|(r, c)| (r, c.get())),
    );
}

/// Who is online, the history, and what was not delivered.
fn router_part(src: &Sources, out: &mut Families) {
    use names::*;
    let reactors = src.reactors.as_slice();
    out.single(
        USERS_ONLINE,
        GAUGE,
        "Users with at least one connection on this node.",
        src.router.registry().users_online() as u64,
    );
    out.single(
        ROOMS,
        GAUGE,
        "Rooms with at least one member on this node.",
        src.router.registry().rooms() as u64,
    );
    out.single(
        HISTORY_BYTES,
        GAUGE,
        "Bytes held by retained messages (users' and rooms' history).",
        src.router.history_bytes() as u64,
    );
    out.single(
        HISTORY_CLUSTER_READY,
        GAUGE,
        "1 while this clustered node keeps history in JetStream (seqs, resume).",
        u64::from(src.router.bus().stats().is_some() && src.router.keeps_history()),
    );
    let (evicted, held) = src.router.idempotency_stats();
    out.single(
        IDEMPOTENCY_EVICTED,
        COUNTER,
        "Push IDs forgotten before --history-ttl because --idempotency-max-bytes was full: a retry of one would be delivered again.",
        evicted,
    );
    out.single(
        IDEMPOTENCY_BYTES,
        GAUGE,
        "Bytes held by the IDs and answers of idempotent pushes (single node).",
        held as u64,
    );
    // Zeros on a single node, like the bus's: dashboards work unchanged in a cluster.
    let none = router::cluster_history::ClusterHistoryStats::default();
    let h = src.router.cluster_history_stats().unwrap_or(&none);
    {
        out.family(
            HISTORY_CLUSTER_EVENTS,
            COUNTER,
            "Clustered history: live copies dropped as duplicates, gaps fetched from the stream (fill), gaps it could not fill in time (fill_failure), replays that failed (replay_failure), held messages dropped past the bound (overflow), live copies whose seq cannot stand in the stream's chain (unplaceable, dropped), catch-ups after a subscription took effect (catch_up).",
            "event",
            [
                ("duplicate", h.duplicates.get()),
                ("fill", h.fills.get()),
                ("fill_failure", h.fill_failures.get()),
                ("replay_failure", h.replay_failures.get()),
                ("overflow", h.overflow.get()),
                ("unplaceable", h.unplaceable.get()),
                ("catch_up", h.catch_ups.get()),
            ],
        );
    }
    out.family(
        MESSAGES_DROPPED,
        COUNTER,
        "Messages not delivered, by reason.",
        "reason",
        DROP_REASONS.iter().enumerate().map(|(i, reason)| {
            let api_offline = if *reason == "offline" {
                src.api.offline.get()
            } else {
                0
            };
            (reason, sum(reactors, |s| s.dropped[i].get()) + api_offline)
        }),
    );
}

/// The bus metrics; present on a single node too (zeros, connected), so dashboards and
/// alerts work unchanged when a node joins a cluster.
fn bus(src: &Sources, out: &mut Families) {
    use names::*;
    let bus = src.router.bus();
    let none = BusStats::default();
    let (kind, stats) = match bus.stats() {
        Some(s) => ("nats", s),
        None => ("in-process", &none),
    };
    out.family(BUS_INFO, GAUGE, "The cluster bus.", "kind", [(kind, 1)]);
    out.single(
        BUS_CONNECTED,
        GAUGE,
        "1 while pushes reach the other nodes.",
        u64::from(bus.is_ready()),
    );
    out.single(
        BUS_SUBSCRIPTIONS,
        GAUGE,
        "Bus subjects subscribed to (users, rooms, broadcast).",
        stats.subscriptions.get(),
    );
    let counters = [
        (BUS_CONNECTS, "Connections made to NATS.", &stats.connects),
        (
            BUS_DISCONNECTS,
            "Connections to NATS lost.",
            &stats.disconnects,
        ),
        (
            BUS_PUBLISHED,
            "Messages published on the bus (one per recipient subject).",
            &stats.published,
        ),
        (
            BUS_PUBLISH_ERRORS,
            "Publishes that failed after they were queued.",
            &stats.publish_errors,
        ),
        (
            BUS_RECEIVED,
            "Messages received from the bus.",
            &stats.received,
        ),
        (
            BUS_DUPLICATES,
            "Copies of multi-recipient pushes already delivered here.",
            &stats.duplicates,
        ),
        (
            BUS_INVALID,
            "Malformed messages from the bus, dropped.",
            &stats.invalid,
        ),
        (
            BUS_INTEREST_CHANGES,
            "Subscribe and unsubscribe operations sent to NATS.",
            &stats.interest_changes,
        ),
        (
            BUS_SLOW_CONSUMER,
            "Slow-consumer events on bus subscriptions (messages dropped by the client).",
            &stats.slow_consumer_drops,
        ),
        (
            BUS_PING_TIMEOUTS,
            "Round trips to NATS unanswered past the ping timeout (node unready meanwhile).",
            &stats.ping_timeouts,
        ),
        (
            BUS_STREAM_SETUP_RETRIES,
            "History stream setups asked again after JetStream did not answer (live-only meanwhile).",
            &stats.stream_setup_retries,
        ),
    ];
    for (name, help, c) in counters {
        out.single(name, COUNTER, help, c.get());
    }
    out.family(
        BUS_REFUSED,
        COUNTER,
        "Pushes the bus could not take (delivered on this node only), by reason.",
        "reason",
        REFUSE_REASONS
            .iter()
            .zip(&stats.refused)
            .map(|(r, c)| (r, c.get())),
    );
    out.histogram(
        BUS_LATENCY,
        "Publish on any node (by its clock) to delivery handed to the reactors here.",
        std::iter::once(&stats.latency),
    );
}

/// The undelivered hook and its webhook.
fn events_part(src: &Sources, out: &mut Families) {
    use names::*;
    use router::undelivered::UNDELIVERED_RESULTS;
    let none = router::undelivered::UndeliveredStats::default();
    let d = src.router.undelivered();
    let u = d.map_or(&none, |d| d.stats());
    out.family(
        UNDELIVERED,
        COUNTER,
        "User messages accepted here given an undelivered deadline (tracked), and how each ended: acked in time, notified (no device acked: a notice went out), dropped (--undelivered-max-pending deadlines were pending).",
        "result",
        UNDELIVERED_RESULTS.iter().zip([
            u.tracked.get(),
            u.acked.get(),
            u.notified.get(),
            u.dropped.get(),
        ]),
    );
    out.single(
        UNDELIVERED_PENDING,
        GAUGE,
        "Messages waiting for their undelivered deadline.",
        d.map_or(0, |d| d.pending() as u64),
    );
    let none = crate::webhook::WebhookStats::default();
    let w = src.webhook.as_deref().unwrap_or(&none);
    out.family(
        WEBHOOK_EVENTS,
        COUNTER,
        "Webhook events: sent (answered 2xx), failed (every retry failed), dropped (the queue was full).",
        "result",
        [
            ("sent", w.sent.get()),
            ("failed", w.failed.get()),
            ("dropped", w.dropped.get()),
        ],
    );
    out.single(
        WEBHOOK_RETRIES,
        COUNTER,
        "Webhook attempts that failed and were retried (exponential backoff).",
        w.retries.get(),
    );
}

/// Server-side room membership: the API's requests and what the connections did.
fn rooms_part(src: &Sources, out: &mut Families) {
    use names::*;
    use router::rooms::{ROOM_REQUEST_RESULTS, ROOM_RESULTS};
    let rooms = src.router.room_stats();
    out.family(
        ROOM_REQUESTS,
        COUNTER,
        "/v1/rooms/join and /v1/rooms/leave requests: ok, bad_request, unavailable (bus down: changed on this node only).",
        "result",
        ROOM_REQUEST_RESULTS
            .iter()
            .zip(&rooms.requests)
            .map(|(r, c)| (r, c.get())),
    );
    for (name, counters, what) in [
        (
            SERVER_ROOM_JOINS,
            &rooms.join,
            "joins (API and the subs claim)",
        ),
        (SERVER_ROOM_LEAVES, &rooms.leave, "leaves"),
    ] {
        out.family(
            name,
            COUNTER,
            &format!("Server-side {what} of this node's connections: changed, unchanged (already so), refused (past the rooms one connection may be in), unreached (reactor inbox full)."),
            "result",
            ROOM_RESULTS.iter().zip(counters).map(|(r, c)| (r, c.get())),
        );
    }
}

/// Presence, disconnects, the per-user cap and the other nodes.
fn operator_part(src: &Sources, out: &mut Families) {
    use crate::control::operator::{DISCONNECT_RESULTS, PRESENCE_RESULTS};
    use names::*;
    let ops = &src.operator;
    out.family(
        PRESENCE_QUERIES,
        COUNTER,
        "/v1/presence queries: complete, partial (a live node did not answer in time), bad_request, unavailable (bus down).",
        "result",
        PRESENCE_RESULTS
            .iter()
            .zip(&ops.presence)
            .map(|(r, c)| (r, c.get())),
    );
    out.family(
        ROOM_PRESENCE_QUERIES,
        COUNTER,
        "/v1/rooms/presence queries: complete, partial (a live node did not answer in time), bad_request, unavailable (bus down).",
        "result",
        PRESENCE_RESULTS
            .iter()
            .zip(&ops.room_presence)
            .map(|(r, c)| (r, c.get())),
    );
    out.family(
        DISCONNECT_REQUESTS,
        COUNTER,
        "/v1/disconnect requests: ok, bad_request, unavailable (closed on this node only).",
        "result",
        DISCONNECT_RESULTS
            .iter()
            .zip(&ops.disconnects)
            .map(|(r, c)| (r, c.get())),
    );
    let closes = src.router.close_stats();
    out.family(
        ROUTER_CLOSES,
        COUNTER,
        "Connections closed by the router: replaced (a new one on the same device, 4008), over_cap (the oldest past --max-conns-per-user, 4008), disconnect (a disconnect request), refused (the reactor's inbox was full).",
        "reason",
        [
            ("replaced", closes.replaced.get()),
            ("over_cap", closes.over_cap.get()),
            ("disconnect", closes.disconnected.get()),
            ("refused", closes.refused.get()),
        ],
    );
    let bus = src.router.bus();
    out.single(
        CLUSTER_PEERS,
        GAUGE,
        "Other nodes heard from on the bus within the last 3.5 s.",
        bus.live_nodes().len() as u64,
    );
    let none = router::bus::ControlStats::default();
    let ctl = bus.control_stats().unwrap_or(&none);
    out.family(
        BUS_CONTROL_RECEIVED,
        COUNTER,
        "Control messages from other nodes: presence (presence and room presence queries answered), disconnect (requests carried out), rooms (server-side room changes carried out), invalid (dropped), bad_reply (presence queries whose reply subject was not a control inbox: not answered).",
        "kind",
        [
            ("presence", ctl.queries_answered.get()),
            ("disconnect", ctl.disconnects_received.get()),
            ("rooms", ctl.room_changes_received.get()),
            ("invalid", ctl.invalid.get()),
            ("bad_reply", ctl.bad_reply.get()),
        ],
    );
}
