//! `/metrics` in the Prometheus text format. Counters live per reactor (each written by one
//! thread only) and are summed here, at scrape time; connection gauges keep a bounded
//! `reactor` label so imbalance between reactors is visible.

use std::fmt::Write;

use reactor::stats::{
    Histogram, DROP_REASONS, LATENCY_BUCKETS_US, PROTOCOL_CLOSE_CODES, REJECT_STATUSES,
    SERVICE_EVICT_REASONS,
};
use reactor::{ReactorHandle, ReactorStats, INBOX_DROP_REASONS};
use router::bus::stats::REFUSE_REASONS;
use router::bus::BusStats;

use crate::control::{ControlState, API_ENDPOINTS, API_STATUSES};

/// Metric names, one place to grep.
pub mod names {
    /// Gauge: open client sockets, per reactor.
    pub const CONNECTIONS: &str = "pushgate_connections";
    /// Gauge: upgraded connections, per reactor.
    pub const CONNECTIONS_UPGRADED: &str = "pushgate_connections_upgraded";
    /// Gauge: handshakes in progress, per reactor.
    pub const HANDSHAKES_IN_PROGRESS: &str = "pushgate_handshakes_in_progress";
    /// Gauge: the connection cap.
    pub const CONNECTION_CAPACITY: &str = "pushgate_connection_capacity";
    /// Counter: sockets accepted.
    pub const ACCEPTED: &str = "pushgate_connections_accepted_total";
    /// Counter: upgrades by result.
    pub const HANDSHAKES: &str = "pushgate_handshakes_total";
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
    /// Gauge: users with a connection on this node.
    pub const USERS_ONLINE: &str = "pushgate_users_online";
    /// Gauge: rooms with a member on this node.
    pub const ROOMS: &str = "pushgate_rooms";
    /// Gauge: bytes held by retained messages (history), bounded by `history_max_bytes`.
    pub const HISTORY_BYTES: &str = "pushgate_history_bytes";
    /// Counter: push frames queued to connections.
    pub const MESSAGES_DELIVERED: &str = "pushgate_messages_delivered_total";
    /// Counter: messages not delivered, by reason.
    pub const MESSAGES_DROPPED: &str = "pushgate_messages_dropped_total";
    /// Counter: server API requests by endpoint and status.
    pub const PUSH_REQUESTS: &str = "pushgate_push_requests_total";
    /// Histogram: push receipt to frame handed to the kernel.
    pub const PUSH_LATENCY: &str = "pushgate_push_latency_seconds";
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
    /// Histogram: publish on any node to delivery handed to the reactors here.
    pub const BUS_LATENCY: &str = "pushgate_bus_latency_seconds";
}

/// Reads one value from a reactor's counters.
type Read = fn(&ReactorStats) -> u64;

fn sum(reactors: &[ReactorHandle], f: impl Fn(&ReactorStats) -> u64) -> u64 {
    reactors.iter().map(|r| f(r.stats())).sum()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One metric with no labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// One metric family: a sample per value of a single bounded label.
fn family<L: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) {
    header(out, name, kind, help);
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Renders every metric.
pub fn render(state: &ControlState) -> String {
    use names::*;
    let reactors = state.reactors.as_slice();
    let mut out = String::with_capacity(8192);
    let node = state.node_id.replace(['"', '\\', '\n'], "_");
    family(
        &mut out,
        NODE_INFO,
        "gauge",
        "This node.",
        "node",
        [(node, 1)],
    );
    if let Some(r) = reactors.first() {
        family(
            &mut out,
            IO_BACKEND,
            "gauge",
            "The I/O backend the reactors use.",
            "backend",
            [(r.io_backend(), 1)],
        );
    }

    let gauges: [(&str, &str, Read); 3] = [
        (CONNECTIONS, "Open client sockets.", |s| s.connections.get()),
        (
            CONNECTIONS_UPGRADED,
            "Upgraded WebSocket connections.",
            |s| s.upgraded.get(),
        ),
        (
            HANDSHAKES_IN_PROGRESS,
            "Connections still in the HTTP upgrade.",
            |s| s.handshaking.get(),
        ),
    ];
    for (name, help, f) in gauges {
        family(
            &mut out,
            name,
            "gauge",
            help,
            "reactor",
            reactors.iter().map(|r| (r.id(), f(r.stats()))),
        );
    }
    single(
        &mut out,
        CONNECTION_CAPACITY,
        "gauge",
        "Connections held before upgrades get 503.",
        state.admission.max_connections(),
    );

    let counters: [(&str, &str, Read); 11] = [
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
    ];
    for (name, help, f) in counters {
        single(&mut out, name, "counter", help, sum(reactors, f));
    }
    single(
        &mut out,
        POLICY_CLOSES,
        "counter",
        "Connections closed with 1008 (token expiry, repeated bad requests).",
        sum(reactors, |s| s.policy_closes.get()),
    );

    let rejected = REJECT_STATUSES
        .iter()
        .enumerate()
        .map(|(i, status)| (status.to_string(), sum(reactors, |s| s.rejected[i].get())));
    family(
        &mut out,
        HANDSHAKES,
        "counter",
        "WebSocket upgrades by result (ok, or the HTTP status refused with).",
        "result",
        std::iter::once(("ok".to_owned(), sum(reactors, |s| s.handshakes_ok.get())))
            .chain(rejected),
    );
    let timeouts: [(&str, Read); 3] = [
        ("handshake", |s| s.handshake_timeouts.get()),
        ("idle", |s| s.idle_timeouts.get()),
        ("close", |s| s.close_timeouts.get()),
    ];
    family(
        &mut out,
        TIMEOUTS,
        "counter",
        "Timeouts by kind.",
        "kind",
        timeouts.map(|(k, f)| (k, sum(reactors, f))),
    );

    single(
        &mut out,
        USERS_ONLINE,
        "gauge",
        "Users with at least one connection on this node.",
        state.router.registry().users_online(),
    );
    single(
        &mut out,
        ROOMS,
        "gauge",
        "Rooms with at least one member on this node.",
        state.router.registry().rooms(),
    );
    single(
        &mut out,
        HISTORY_BYTES,
        "gauge",
        "Bytes held by retained messages (users' and rooms' history).",
        state.router.history_bytes(),
    );
    family(
        &mut out,
        MESSAGES_DROPPED,
        "counter",
        "Messages not delivered, by reason.",
        "reason",
        DROP_REASONS.iter().enumerate().map(|(i, reason)| {
            let api_offline = if *reason == "offline" {
                state.api_stats.offline.get()
            } else {
                0
            };
            (reason, sum(reactors, |s| s.dropped[i].get()) + api_offline)
        }),
    );
    header(
        &mut out,
        PUSH_REQUESTS,
        "counter",
        "Server API requests by endpoint and status.",
    );
    for (e, endpoint) in API_ENDPOINTS.iter().enumerate() {
        for (i, status) in API_STATUSES.iter().enumerate() {
            let n = state.api_stats.requests[e][i].get();
            let _ = writeln!(
                out,
                "{PUSH_REQUESTS}{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
    }
    render_histogram(
        &mut out,
        names::PUSH_LATENCY,
        "Push receipt to frame handed to the kernel, per reactor batch.",
        reactors.iter().map(|r| &r.stats().push_latency),
    );
    let requests: [(&str, Read); 6] = [
        ("send", |s| s.client_sends.get()),
        ("room", |s| s.client_room_ops.get()),
        ("ping", |s| s.app_pings.get()),
        ("bad", |s| s.bad_requests.get()),
        ("rate_limited", |s| s.rate_limited.get()),
        ("forbidden", |s| s.forbidden.get()),
    ];
    family(
        &mut out,
        CLIENT_REQUESTS,
        "counter",
        "Client requests by type (malformed ones as \"bad\", refused by the rate limit as \"rate_limited\", joins the token does not grant as \"forbidden\").",
        "type",
        requests.map(|(k, f)| (k, sum(reactors, f))),
    );
    family(
        &mut out,
        PROTOCOL_ERRORS,
        "counter",
        "Connections failed for protocol violations, by close code.",
        "code",
        PROTOCOL_CLOSE_CODES
            .iter()
            .enumerate()
            .map(|(i, code)| (code, sum(reactors, |s| s.protocol_errors[i].get()))),
    );
    render_inbox(&mut out, reactors);
    single(
        &mut out,
        CONTROL_CONNECTIONS,
        "gauge",
        "Open control listener connections.",
        sum(reactors, |s| s.service_connections.get()),
    );
    single(
        &mut out,
        CONTROL_ACCEPTED,
        "counter",
        "Control listener (server API, health, metrics) connections accepted.",
        sum(reactors, |s| s.service_accepted.get()),
    );
    family(
        &mut out,
        CONTROL_EVICTED,
        "counter",
        "Control connections closed by the server before the client was done: full (evicted for a new one), fd_limit (evicted to retry accept), first_request_timeout, idle_timeout.",
        "reason",
        SERVICE_EVICT_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| (r, sum(reactors, |s| s.service_evicted[i].get()))),
    );
    render_bus(&mut out, state);
    out
}

/// The reactors' inboxes: what waits, and what was refused.
fn render_inbox(out: &mut String, reactors: &[ReactorHandle]) {
    use names::*;
    family(
        out,
        INBOX_DROPPED,
        "counter",
        "Commands (pushes, broadcasts, closes) a reactor's inbox refused, by reason.",
        "reason",
        INBOX_DROP_REASONS
            .iter()
            .enumerate()
            .map(|(i, reason)| (reason, reactors.iter().map(|r| r.dropped()[i]).sum())),
    );
    let backlog: Vec<(usize, usize)> = reactors.iter().map(ReactorHandle::backlog).collect();
    family(
        out,
        INBOX_DEPTH,
        "gauge",
        "Commands waiting in the reactor's inbox.",
        "reactor",
        backlog.iter().enumerate().map(|(i, b)| (i, b.0 as u64)),
    );
    family(
        out,
        INBOX_BYTES,
        "gauge",
        "Bytes held by commands waiting in the reactor's inbox.",
        "reactor",
        backlog.iter().enumerate().map(|(i, b)| (i, b.1 as u64)),
    );
}

/// The bus metrics; present on a single node too (zeros, connected), so dashboards and
/// alerts work unchanged when a node joins a cluster.
fn render_bus(out: &mut String, state: &ControlState) {
    use names::*;
    let bus = state.router.bus();
    let none = BusStats::default();
    let (kind, stats) = match bus.stats() {
        Some(s) => ("nats", s),
        None => ("in-process", &none),
    };
    family(
        out,
        BUS_INFO,
        "gauge",
        "The cluster bus.",
        "kind",
        [(kind, 1)],
    );
    single(
        out,
        BUS_CONNECTED,
        "gauge",
        "1 while pushes reach the other nodes.",
        u8::from(bus.is_ready()),
    );
    single(
        out,
        BUS_SUBSCRIPTIONS,
        "gauge",
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
    ];
    for (name, help, c) in counters {
        single(out, name, "counter", help, c.get());
    }
    family(
        out,
        BUS_REFUSED,
        "counter",
        "Pushes the bus could not take (delivered on this node only), by reason.",
        "reason",
        REFUSE_REASONS
            .iter()
            .zip(&stats.refused)
            .map(|(r, c)| (r, c.get())),
    );
    render_histogram(
        out,
        BUS_LATENCY,
        "Publish on any node (by its clock) to delivery handed to the reactors here.",
        std::iter::once(&stats.latency),
    );
}

/// A latency histogram, buckets summed over its parts and made cumulative.
fn render_histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    parts: impl Iterator<Item = &'a Histogram> + Clone,
) {
    header(out, name, "histogram", help);
    let total = |f: &dyn Fn(&Histogram) -> u64| parts.clone().map(f).sum::<u64>();
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += total(&|h| h.buckets[i].get());
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += total(&|h| h.buckets[LATENCY_BUCKETS_US.len()].get());
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        total(&|h| h.sum_us.get()) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {}", total(&|h| h.count.get()));
}
