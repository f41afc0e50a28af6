//! pushgate-load: load scenarios against pushgate (and, through URL templates, other
//! servers). Every scenario is bounded in count and time, prints a human summary and one
//! JSON line.
//!
//! Scenarios: `conns` (open and hold N idle connections; connect rate; the server's memory
//! per connection), `fanout` (pushes to random users through the API; throughput and
//! latency; optionally a reconnect storm beside it), `broadcast` (time for each broadcast to
//! reach every connection), `echo` (closed-loop round trips), `floor` (the CPU cost of one
//! loopback `send()`, the floor under any server's cost per delivered message), `scale` (a
//! cluster-sized run over several load processes and nodes, see [`scale`]), `recover` (the time
//! to get back missed messages with `since`), `chaos` (gateways, NATS servers and links
//! failing under load on a multi-host rig; nothing accepted may be lost, see [`chaos`]),
//! `relay` (the fault-injecting TCP relay it uses). Server differences are
//! templates ([`adapter`]), so the same scenarios run against other servers.

mod adapter;
mod broadcast;
mod chaos;
mod conns;
mod echo;
mod fanout;
mod floor;
mod procfs;
mod publisher;
mod recover;
mod relay;
mod scale;
mod stages;
mod storm;
mod tls;
mod wsclient;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TLS for every WebSocket connection: off (ws://), full (wss://, a full handshake
    /// each time) or resume (wss://, resuming with tickets). Certificates are not checked.
    #[arg(long, value_enum, default_value = "off", global = true)]
    tls: tls::Mode,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N WebSocket connections at a set rate, hold them, report success, connect rate
    /// and the server's memory per connection.
    Conns(conns::Args),
    /// N subscribers, M pushes to random single users through the server API; delivered
    /// messages per second, latency percentiles, losses.
    Fanout(fanout::Args),
    /// N subscribers, K broadcasts; time until every connection received each one.
    Broadcast(broadcast::Args),
    /// C clients sending S-byte messages to an echo endpoint; round trips per second and
    /// latency.
    Echo(echo::Args),
    /// The CPU cost of one `send()` of a small frame on loopback TCP (sender and reader):
    /// the floor under any server's CPU per delivered message.
    Floor(floor::Args),
    /// A cluster-sized run spread over several load processes and gateway nodes:
    /// connect (and each node's and the bus's memory), pushes at a fixed rate half
    /// crossing nodes, broadcasts to all, a reconnect storm; merged reports.
    Scale(scale::Args),
    /// U users one after another: connect, miss M pushes, reconnect with `since`; time to
    /// the last replayed message, beside the time to `welcome` with nothing to recover.
    Recover(recover::Args),
    /// A chaos run on deploy/local-cluster.sh's multi-host rig: devices resuming on any
    /// node, publishers retrying with idempotent ids, gateways, NATS servers and links
    /// failing one after another; checks that every push answered 200 reached every
    /// device exactly once and in order, per fault (see bench/chaos.sh).
    Chaos(chaos::Args),
    /// The devices of a chaos run (started by `chaos` in the load namespace).
    ChaosClients(chaos::clients::Args),
    /// A fault-injecting TCP relay (latency, jitter, stalls, resets, one-way blackholes)
    /// controlled through a socket at run time.
    Relay(relay::Args),
}

fn main() -> anyhow::Result<()> {
    let fd_limit = raise_nofile();
    let cli = Cli::parse();
    tls::init(cli.tls)?;
    match cli.scenario {
        Scenario::Conns(args) => conns::run(&args, fd_limit),
        Scenario::Fanout(args) => fanout::run(&args, fd_limit),
        Scenario::Broadcast(args) => broadcast::run(&args, fd_limit),
        Scenario::Echo(args) => echo::run(&args, fd_limit),
        Scenario::Floor(args) => floor::run(&args, fd_limit),
        Scenario::Scale(args) => scale::run(&args, fd_limit),
        Scenario::Recover(args) => recover::run(&args, fd_limit),
        Scenario::Chaos(args) => chaos::run(&args, fd_limit),
        Scenario::ChaosClients(args) => chaos::clients::run(&args).map(|_| ()),
        Scenario::Relay(args) => relay::run(&args),
    }
}

/// Raises the soft open-files limit to the hard limit; returns the limit in force.
fn raise_nofile() -> u64 {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft)
}
