//! What a child reports after each phase (one JSON line on its stdout), and the parent's
//! sums of them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::hist;

/// One child's report of one phase.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub(crate) enum Report {
    Connected(Connected),
    Pushes(Pushes),
    Broadcast(Broadcast),
    Storm(Storm),
    /// The child gave up; the run fails with this message.
    Error {
        message: String,
    },
}

/// The connect phase.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Connected {
    pub(crate) open: usize,
    pub(crate) failed: usize,
    pub(crate) secs: f64,
    /// Connections open per target node (index into the full target list).
    pub(crate) per_node: Vec<usize>,
}

/// Pushes to single users, split by whether they crossed the bus.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Pushes {
    /// Requests written.
    pub(crate) sent: u64,
    /// Requests answered non-2xx or not at all.
    pub(crate) api_failed: u64,
    /// Messages received, duplicates included.
    pub(crate) received: u64,
    /// Distinct pushes received.
    pub(crate) unique: u64,
    pub(crate) local_sent: u64,
    pub(crate) local_unique: u64,
    pub(crate) crossing_sent: u64,
    pub(crate) crossing_unique: u64,
    /// Seconds from the first request to the last one answered, longest publisher.
    pub(crate) publish_secs: f64,
    /// Connections the server closed during the phase.
    pub(crate) dropped: usize,
    pub(crate) hist: Vec<(u64, u64)>,
    pub(crate) hist_local: Vec<(u64, u64)>,
    pub(crate) hist_crossing: Vec<(u64, u64)>,
}

/// The broadcast phase: per broadcast, deliveries seen and the latest one (µs after send).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Broadcast {
    pub(crate) open: usize,
    pub(crate) count: Vec<u64>,
    pub(crate) last: Vec<u64>,
    pub(crate) dropped: usize,
    pub(crate) hist: Vec<(u64, u64)>,
}

/// The storm phase.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Storm {
    pub(crate) users: usize,
    pub(crate) reopened: usize,
    pub(crate) failed: usize,
    /// From dropping the storm users to the last of them upgraded again.
    pub(crate) reconnect_secs: f64,
    /// Pushes to the other users while the storm went on.
    pub(crate) pushes: Pushes,
    /// One push to every storm user once they were back.
    pub(crate) verify: Pushes,
}

/// Pushes summed over children.
#[derive(Debug)]
pub(crate) struct PushTotals {
    pub(crate) sent: u64,
    pub(crate) api_failed: u64,
    pub(crate) received: u64,
    pub(crate) unique: u64,
    pub(crate) local_sent: u64,
    pub(crate) local_unique: u64,
    pub(crate) crossing_sent: u64,
    pub(crate) crossing_unique: u64,
    pub(crate) publish_secs: f64,
    pub(crate) dropped: usize,
    pub(crate) hist: Histogram<u64>,
    pub(crate) hist_local: Histogram<u64>,
    pub(crate) hist_crossing: Histogram<u64>,
}

impl Default for PushTotals {
    fn default() -> Self {
        PushTotals {
            sent: 0,
            api_failed: 0,
            received: 0,
            unique: 0,
            local_sent: 0,
            local_unique: 0,
            crossing_sent: 0,
            crossing_unique: 0,
            publish_secs: 0.0,
            dropped: 0,
            hist: hist::new(),
            hist_local: hist::new(),
            hist_crossing: hist::new(),
        }
    }
}

impl PushTotals {
    pub(crate) fn add(&mut self, p: &Pushes) {
        self.sent += p.sent;
        self.api_failed += p.api_failed;
        self.received += p.received;
        self.unique += p.unique;
        self.local_sent += p.local_sent;
        self.local_unique += p.local_unique;
        self.crossing_sent += p.crossing_sent;
        self.crossing_unique += p.crossing_unique;
        self.publish_secs = self.publish_secs.max(p.publish_secs);
        self.dropped += p.dropped;
        hist::add_pairs(&mut self.hist, &p.hist);
        hist::add_pairs(&mut self.hist_local, &p.hist_local);
        hist::add_pairs(&mut self.hist_crossing, &p.hist_crossing);
    }

    /// Pushes the API accepted that no connection received.
    pub(crate) fn lost(&self) -> u64 {
        (self.sent.saturating_sub(self.api_failed)).saturating_sub(self.unique)
    }

    pub(crate) fn duplicates(&self) -> u64 {
        self.received.saturating_sub(self.unique)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "api_failed": self.api_failed,
            "delivered": self.unique,
            "duplicates": self.duplicates(),
            "lost": self.lost(),
            "local_sent": self.local_sent,
            "local_delivered": self.local_unique,
            "crossing_sent": self.crossing_sent,
            "crossing_delivered": self.crossing_unique,
            "publish_secs": self.publish_secs,
            "sent_per_sec": self.sent as f64 / self.publish_secs.max(1e-9),
            "dropped_connections": self.dropped,
            "latency_ms": hist::summary(&self.hist),
            "local_latency_ms": hist::summary(&self.hist_local),
            "crossing_latency_ms": hist::summary(&self.hist_crossing),
        })
    }

    pub(crate) fn print(&self, what: &str) {
        println!(
            "{what}: {} sent in {:.1}s ({:.0}/s; {} local, {} crossing nodes), {} delivered, {} lost, {} duplicates, {} API failures, {} connections dropped",
            self.sent,
            self.publish_secs,
            self.sent as f64 / self.publish_secs.max(1e-9),
            self.local_sent,
            self.crossing_sent,
            self.unique,
            self.lost(),
            self.duplicates(),
            self.api_failed,
            self.dropped
        );
        println!("  all:      {}", hist::line(&self.hist));
        println!("  local:    {}", hist::line(&self.hist_local));
        println!("  crossing: {}", hist::line(&self.hist_crossing));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_sum() {
        let p = Pushes {
            sent: 10,
            api_failed: 1,
            received: 9,
            unique: 8,
            hist: vec![(5, 8)],
            ..Pushes::default()
        };
        let line =
            serde_json::to_string(&Report::Pushes(p.clone())).unwrap_or_else(|e| panic!("{e}"));
        assert!(line.contains(r#""phase":"pushes""#));
        let Ok(Report::Pushes(back)) = serde_json::from_str::<Report>(&line) else {
            panic!("{line}");
        };
        let mut t = PushTotals::default();
        t.add(&back);
        t.add(&p);
        assert_eq!((t.sent, t.unique, t.lost(), t.duplicates()), (20, 16, 2, 2));
        assert_eq!(t.hist.len(), 16);
    }
}
