//! `/metrics` in the Prometheus text format. Counters live per reactor (each written by one
//! thread only) and are summed here, at scrape time; connection gauges keep a bounded
//! `reactor` label so imbalance between reactors is visible.

use std::fmt::Write;

use reactor::stats::{DROP_REASONS, LATENCY_BUCKETS_US, PROTOCOL_CLOSE_CODES, REJECT_STATUSES};
use reactor::{ReactorHandle, ReactorStats};

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
    /// Counter: accept pauses (pending-handshake high watermark reached).
    pub const ACCEPT_PAUSES: &str = "pushgate_accept_pauses_total";
    /// Counter: failed `accept` calls.
    pub const ACCEPT_ERRORS: &str = "pushgate_accept_errors_total";
    /// Gauge: 1, labelled with the node ID.
    pub const NODE_INFO: &str = "pushgate_node_info";
    /// Gauge: users with a connection on this node.
    pub const USERS_ONLINE: &str = "pushgate_users_online";
    /// Gauge: rooms with a member on this node.
    pub const ROOMS: &str = "pushgate_rooms";
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
}

/// Reads one value from a reactor's counters.
type Read = fn(&ReactorStats) -> u64;

fn sum(reactors: &[ReactorHandle], f: impl Fn(&ReactorStats) -> u64) -> u64 {
    reactors.iter().map(|r| f(r.stats())).sum()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders every metric.
pub fn render(state: &ControlState) -> String {
    use names::*;
    let reactors = state.reactors.as_slice();
    let admission = &state.admission;
    let node_id = &state.node_id;
    let mut out = String::with_capacity(4096);
    header(&mut out, NODE_INFO, "gauge", "This node.");
    let _ = writeln!(
        out,
        "{NODE_INFO}{{node=\"{}\"}} 1",
        node_id.replace(['"', '\\', '\n'], "_")
    );
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
        header(&mut out, name, "gauge", help);
        for r in reactors {
            let _ = writeln!(out, "{name}{{reactor=\"{}\"}} {}", r.id(), f(r.stats()));
        }
    }
    header(
        &mut out,
        CONNECTION_CAPACITY,
        "gauge",
        "Connections held before upgrades get 503.",
    );
    let _ = writeln!(out, "{CONNECTION_CAPACITY} {}", admission.max_connections());

    let counters: [(&str, &str, Read); 9] = [
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
            ACCEPT_PAUSES,
            "Times accepting paused at the pending-handshake limit.",
            |s| s.accept_pauses.get(),
        ),
        (ACCEPT_ERRORS, "Failed accept calls.", |s| {
            s.accept_errors.get()
        }),
    ];
    for (name, help, f) in counters {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", sum(reactors, f));
    }

    header(
        &mut out,
        HANDSHAKES,
        "counter",
        "WebSocket upgrades by result (ok, or the HTTP status refused with).",
    );
    let _ = writeln!(
        out,
        "{HANDSHAKES}{{result=\"ok\"}} {}",
        sum(reactors, |s| s.handshakes_ok.get())
    );
    for (i, status) in REJECT_STATUSES.iter().enumerate() {
        let _ = writeln!(
            out,
            "{HANDSHAKES}{{result=\"{status}\"}} {}",
            sum(reactors, |s| s.rejected[i].get())
        );
    }

    header(&mut out, TIMEOUTS, "counter", "Timeouts by kind.");
    let kinds: [(&str, Read); 3] = [
        ("handshake", |s| s.handshake_timeouts.get()),
        ("idle", |s| s.idle_timeouts.get()),
        ("close", |s| s.close_timeouts.get()),
    ];
    for (kind, f) in kinds {
        let _ = writeln!(out, "{TIMEOUTS}{{kind=\"{kind}\"}} {}", sum(reactors, f));
    }

    header(
        &mut out,
        USERS_ONLINE,
        "gauge",
        "Users with at least one connection on this node.",
    );
    let _ = writeln!(
        out,
        "{USERS_ONLINE} {}",
        state.router.registry().users_online()
    );
    header(
        &mut out,
        ROOMS,
        "gauge",
        "Rooms with at least one member on this node.",
    );
    let _ = writeln!(out, "{ROOMS} {}", state.router.registry().rooms());
    header(
        &mut out,
        MESSAGES_DELIVERED,
        "counter",
        "Push frames queued to connections.",
    );
    let _ = writeln!(
        out,
        "{MESSAGES_DELIVERED} {}",
        sum(reactors, |s| s.delivered.get())
    );
    header(
        &mut out,
        MESSAGES_DROPPED,
        "counter",
        "Messages not delivered, by reason.",
    );
    for (i, reason) in DROP_REASONS.iter().enumerate() {
        let mut n = sum(reactors, |s| s.dropped[i].get());
        if *reason == "offline" {
            n += state.api_stats.offline.get();
        }
        let _ = writeln!(out, "{MESSAGES_DROPPED}{{reason=\"{reason}\"}} {n}");
    }
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
    header(
        &mut out,
        PUSH_LATENCY,
        "histogram",
        "Push receipt to frame handed to the kernel, per reactor batch.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += sum(reactors, |s| s.push_latency.buckets[i].get());
        let _ = writeln!(
            out,
            "{PUSH_LATENCY}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += sum(reactors, |s| {
        s.push_latency.buckets[LATENCY_BUCKETS_US.len()].get()
    });
    let _ = writeln!(out, "{PUSH_LATENCY}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(
        out,
        "{PUSH_LATENCY}_sum {}",
        sum(reactors, |s| s.push_latency.sum_us.get()) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "{PUSH_LATENCY}_count {}",
        sum(reactors, |s| s.push_latency.count.get())
    );
    header(
        &mut out,
        CLIENT_REQUESTS,
        "counter",
        "Client requests by type (malformed ones as \"bad\").",
    );
    let kinds: [(&str, Read); 4] = [
        ("send", |s| s.client_sends.get()),
        ("room", |s| s.client_room_ops.get()),
        ("ping", |s| s.app_pings.get()),
        ("bad", |s| s.bad_requests.get()),
    ];
    for (kind, f) in kinds {
        let _ = writeln!(
            out,
            "{CLIENT_REQUESTS}{{type=\"{kind}\"}} {}",
            sum(reactors, f)
        );
    }
    header(
        &mut out,
        POLICY_CLOSES,
        "counter",
        "Connections closed with 1008 (token expiry, repeated bad requests).",
    );
    let _ = writeln!(
        out,
        "{POLICY_CLOSES} {}",
        sum(reactors, |s| s.policy_closes.get())
    );

    header(
        &mut out,
        PROTOCOL_ERRORS,
        "counter",
        "Connections failed for protocol violations, by close code.",
    );
    for (i, code) in PROTOCOL_CLOSE_CODES.iter().enumerate() {
        let _ = writeln!(
            out,
            "{PROTOCOL_ERRORS}{{code=\"{code}\"}} {}",
            sum(reactors, |s| s.protocol_errors[i].get())
        );
    }
    out
}
