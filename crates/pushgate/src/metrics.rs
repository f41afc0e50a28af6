//! `/metrics` in the Prometheus text format. Counters live per reactor (each written by one
//! thread only) and are summed here, at scrape time; connection gauges keep a bounded
//! `reactor` label so imbalance between reactors is visible.

use std::fmt::Write;

use reactor::admission::Admission;
use reactor::stats::{PROTOCOL_CLOSE_CODES, REJECT_STATUSES};
use reactor::{ReactorHandle, ReactorStats};

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
pub fn render(reactors: &[ReactorHandle], admission: &Admission, node_id: &str) -> String {
    use names::*;
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
