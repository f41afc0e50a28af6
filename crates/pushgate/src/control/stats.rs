//! The control listener's own counters and their `/metrics` lines. The control thread is
//! their only writer and also renders them (scrapes are served on that thread).

use std::fmt::Write;

use reactor::stats::Cell;

/// Metric names, one place to grep.
pub mod names {
    /// Gauge: open control connections.
    pub const CONNECTIONS: &str = "pushgate_control_connections";
    /// Counter: control connections closed by the server before the client asked, by reason.
    pub const EVICTED: &str = "pushgate_control_evicted_total";
}

/// Why the listener closed a connection the client had not finished with; the `reason`
/// label of [`names::EVICTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The table was full and a new connection needed the slot.
    Full,
    /// `accept` ran out of file descriptors and a slot was freed to retry it.
    FdLimit,
    /// Sent no complete request within the first-request timeout.
    FirstRequestTimeout,
    /// Silent past the idle timeout between requests.
    IdleTimeout,
}

impl Eviction {
    /// Every reason, in label order.
    pub const ALL: [Eviction; 4] = [
        Eviction::Full,
        Eviction::FdLimit,
        Eviction::FirstRequestTimeout,
        Eviction::IdleTimeout,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Eviction::Full => "full",
            Eviction::FdLimit => "fd_limit",
            Eviction::FirstRequestTimeout => "first_request_timeout",
            Eviction::IdleTimeout => "idle_timeout",
        }
    }
}

/// Counters of the control listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open connections.
    pub connections: Cell,
    /// Evictions, indexed like [`Eviction::ALL`].
    pub evicted: [Cell; 4],
}

impl ListenerStats {
    /// Counts one eviction.
    pub fn evicted(&self, why: Eviction) {
        self.evicted[why as usize].add(1);
    }

    /// Appends the listener's metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use names::*;
        let _ = writeln!(
            out,
            "# HELP {CONNECTIONS} Open control listener connections.\n\
             # TYPE {CONNECTIONS} gauge\n{CONNECTIONS} {}",
            self.connections.get()
        );
        let _ = writeln!(
            out,
            "# HELP {EVICTED} Control connections closed by the server before the client \
             was done, by reason.\n# TYPE {EVICTED} counter"
        );
        for why in Eviction::ALL {
            let _ = writeln!(
                out,
                "{EVICTED}{{reason=\"{}\"}} {}",
                why.label(),
                self.evicted[why as usize].get()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_rendered_with_its_count() {
        let s = ListenerStats::default();
        s.evicted(Eviction::Full);
        s.evicted(Eviction::Full);
        s.evicted(Eviction::IdleTimeout);
        s.connections.add(3);
        let mut out = String::new();
        s.render(&mut out);
        for line in [
            "pushgate_control_connections 3",
            "pushgate_control_evicted_total{reason=\"full\"} 2",
            "pushgate_control_evicted_total{reason=\"fd_limit\"} 0",
            "pushgate_control_evicted_total{reason=\"first_request_timeout\"} 0",
            "pushgate_control_evicted_total{reason=\"idle_timeout\"} 1",
            "# TYPE pushgate_control_evicted_total counter",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }
}
