//! `scale`: a cluster-sized scenario spread over several load processes. The parent splits
//! the connections, the source addresses 127.0.0.2–127.0.0.254 and the target nodes into
//! one slice per child (each child stays under its open-files limit), starts the children
//! (this same binary with `--child I`), and steps them through the phases together:
//!
//! 1. connect: every child opens its users (`u<global index>`, one connection each) on its
//!    nodes; the parent then reads each node's and the bus's memory;
//! 2. pushes: each child publishes to its own users at its share of `--rate` for
//!    `--push-secs`, half through the API of the node holding the user and half through
//!    another node's (crossing the bus), and measures latency and losses on arrival;
//! 3. broadcast: the parent publishes `--broadcasts` broadcasts (through the nodes in turn)
//!    and every child times them; time-to-all is the latest arrival over all children;
//! 4. storm: `--storm-users` of the users (an equal share of each child's) drop together
//!    and reconnect within a second to another node while pushes to the others go on;
//!    then every storm user gets one push, which must arrive.
//!
//! Children report each phase as one JSON line on stdout; latency histograms travel as
//! their recorded (value, count) pairs and are merged, never averaged. Commands reach the
//! children one line at a time on stdin, so the phases are barriers.

mod child;
mod hist;
mod parent;
mod report;

use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{bail, Context};

/// First and last source address host byte: 127.0.0.2 to 127.0.0.254.
const FIRST_SOURCE: u8 = 2;
const LAST_SOURCE: u8 = 254;

/// Arguments of the `scale` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// A node: `CLIENT_ADDR/API_ADDR[/PID]` (the PID, when given, is where the node's memory
    /// is read). Repeat the flag or separate nodes with commas.
    #[arg(long = "target", value_delimiter = ',', required = true)]
    targets: Vec<Target>,
    /// Connections in all, each a distinct user u0, u1, …
    #[arg(long, default_value_t = 200_000)]
    connections: usize,
    /// Load processes the connections are spread over.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Source addresses used in all, from 127.0.0.2 (at most 253), split between processes.
    #[arg(long, default_value_t = 253)]
    sources: u16,
    /// Pushes per second in all during the push phase (0: no push phase).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Seconds of pushes.
    #[arg(long, default_value_t = 20.0)]
    push_secs: f64,
    /// API connections per publishing group (a child has two groups per node it holds:
    /// pushes through the user's node and pushes crossing from the next node).
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Broadcasts to send (0: no broadcast phase).
    #[arg(long, default_value_t = 10)]
    broadcasts: u64,
    /// Seconds between broadcasts.
    #[arg(long, default_value_t = 3.0)]
    broadcast_interval: f64,
    /// Users that drop and reconnect together in the storm phase (0: no storm).
    #[arg(long, default_value_t = 20_000)]
    storm_users: usize,
    /// Seconds to wait for stragglers at the end of a phase.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds to let the nodes settle after the last upgrade before memory is read.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Seconds each phase may take before the run fails.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Upgrades in flight at once per process.
    #[arg(long, default_value_t = 1024)]
    connecting_at_once: usize,
    /// The bus server's PID, for its memory.
    #[arg(long)]
    bus_pid: Option<u32>,
    /// The bus server's monitoring listener (nats-server `-m`), for its subscription count.
    #[arg(long)]
    bus_monitor: Option<SocketAddr>,
    /// Bearer key for the server API.
    #[arg(long)]
    api_key: Option<String>,
    /// Subscribe path on the client listener.
    #[arg(long, default_value = "/ws?uid={user}")]
    subscribe: String,
    /// Internal: run as child I of --processes (set by the parent).
    #[arg(long, hide = true)]
    child: Option<usize>,
}

/// One gateway node under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) client: SocketAddr,
    pub(crate) api: SocketAddr,
    pub(crate) pid: Option<u32>,
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Target> {
        let mut parts = s.split('/');
        let client = parts.next().unwrap_or_default();
        let Some(api) = parts.next() else {
            bail!("a target is CLIENT_ADDR/API_ADDR[/PID], got {s:?}");
        };
        let pid = parts
            .next()
            .map(|p| p.parse::<u32>().with_context(|| format!("PID in {s:?}")))
            .transpose()?;
        if parts.next().is_some() {
            bail!("a target is CLIENT_ADDR/API_ADDR[/PID], got {s:?}");
        }
        Ok(Target {
            client: client
                .parse()
                .with_context(|| format!("client address in {s:?}"))?,
            api: api
                .parse()
                .with_context(|| format!("API address in {s:?}"))?,
            pid,
        })
    }
}

/// What one child process owns: a contiguous range of users, of source addresses and of
/// target nodes (indexes into the full target list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) users: std::ops::Range<usize>,
    /// Host bytes of 127.0.0.x.
    pub(crate) sources: std::ops::Range<u8>,
    pub(crate) nodes: std::ops::Range<usize>,
    /// This child's share of the storm users (the last of its users).
    pub(crate) storm_users: usize,
}

/// `i`-th of `n` near-equal parts of `0..len`.
fn part(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

/// Child `i`'s slice of a run of `connections` users over `nodes` targets and `sources`
/// addresses, split `processes` ways. Every child gets at least one node and one address:
/// with more children than nodes, neighbouring children share a node.
pub(crate) fn slice(
    i: usize,
    processes: usize,
    connections: usize,
    nodes: usize,
    sources: u16,
    storm_users: usize,
) -> Slice {
    let users = part(connections, i, processes);
    let src = part(usize::from(sources), i, processes);
    let first_node = i * nodes / processes;
    let nodes = first_node..((i + 1) * nodes / processes).max(first_node + 1);
    let storm = part(storm_users, i, processes).len().min(users.len());
    // Host bytes fit a u8: `sources` is at most 253, so the end is at most 255.
    let first = FIRST_SOURCE as usize;
    Slice {
        users,
        sources: (first + src.start) as u8..(first + src.end) as u8,
        nodes,
        storm_users: storm,
    }
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        let most = usize::from(LAST_SOURCE - FIRST_SOURCE + 1);
        if self.sources == 0 || usize::from(self.sources) > most {
            bail!("--sources must be 1..={most}");
        }
        if self.processes == 0 || self.processes > usize::from(self.sources) {
            bail!("--processes must be 1..=--sources (each process needs its own address)");
        }
        if self.storm_users > self.connections {
            bail!("--storm-users cannot exceed --connections");
        }
        if self.targets.is_empty() {
            bail!("at least one --target is needed");
        }
        Ok(())
    }
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    args.check()?;
    match args.child {
        Some(i) => child::run(args, i, fd_limit),
        None => parent::run(args, fd_limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: Target = "127.0.0.1:80/127.0.0.1:81/42"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.client.port(), 80);
        assert_eq!(t.api.port(), 81);
        assert_eq!(t.pid, Some(42));
        let t: Target = "127.0.0.1:80/127.0.0.1:81"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.pid, None);
        for bad in [
            "127.0.0.1:80",
            "127.0.0.1:80/x",
            "127.0.0.1:80/127.0.0.1:81/p",
            "a/b/1/2",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slices_cover_everything_once() {
        for (procs, nodes) in [(15, 15), (16, 15), (4, 15), (1, 3), (7, 2)] {
            let mut users = 0;
            let mut sources = 0;
            let mut storm = 0;
            let mut nodes_seen = vec![0; nodes];
            for i in 0..procs {
                let s = slice(i, procs, 200_000, nodes, 253, 20_000);
                assert_eq!(s.users.start, users, "users contiguous");
                users = s.users.end;
                assert_eq!(usize::from(s.sources.start), 2 + sources);
                sources += s.sources.len();
                assert!(!s.sources.is_empty() && !s.nodes.is_empty());
                assert!(s.nodes.end <= nodes);
                storm += s.storm_users;
                for n in s.nodes {
                    nodes_seen[n] += 1;
                }
            }
            assert_eq!(users, 200_000);
            assert_eq!(sources, 253);
            assert_eq!(storm, 20_000);
            assert!(nodes_seen.iter().all(|&c| c > 0), "{procs}/{nodes}");
        }
        let last = slice(0, 1, 10, 1, 253, 0);
        assert_eq!(last.sources, 2..255);
    }
}
