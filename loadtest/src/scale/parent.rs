//! The parent of a `scale` run: starts the children, steps them through the phases, reads
//! the servers' memory between phases, publishes the broadcasts, and merges the reports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::report::{PushTotals, Report};
use super::{hist, Args};
use crate::adapter::now_micros;
use crate::procfs;
use crate::publisher::{self, Publishers};

/// The child processes, killed (by their own handles) if the parent stops early.
struct Children {
    procs: Vec<Child>,
    input: Vec<ChildStdin>,
    output: Vec<BufReader<ChildStdout>>,
}

impl Children {
    fn spawn(args: &Args) -> anyhow::Result<Children> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut kids = Children {
            procs: Vec::new(),
            input: Vec::new(),
            output: Vec::new(),
        };
        for i in 0..args.processes {
            let mut child = Command::new(&exe)
                .args(&argv)
                .arg("--child")
                .arg(i.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting load process {i}"))?;
            let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
                bail!("load process {i} has no pipes");
            };
            kids.procs.push(child);
            kids.input.push(input);
            kids.output.push(BufReader::new(output));
        }
        Ok(kids)
    }

    fn command(&mut self, what: &str) -> anyhow::Result<()> {
        for (i, w) in self.input.iter_mut().enumerate() {
            writeln!(w, "{what}").with_context(|| format!("telling load process {i}"))?;
            w.flush()?;
        }
        Ok(())
    }

    /// The next report of every child, in order; fails on a child's error or exit.
    fn reports(&mut self) -> anyhow::Result<Vec<Report>> {
        let mut out = Vec::with_capacity(self.output.len());
        for (i, r) in self.output.iter_mut().enumerate() {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("load process {i} exited without a report");
            }
            match serde_json::from_str::<Report>(&line)
                .with_context(|| format!("report of load process {i}: {line}"))?
            {
                Report::Error { message } => bail!("{message}"),
                r => out.push(r),
            }
        }
        Ok(out)
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.command("quit")?;
        self.input.clear();
        for (i, c) in self.procs.iter_mut().enumerate() {
            let status = c.wait()?;
            if !status.success() {
                bail!("load process {i} exited with {status}");
            }
        }
        self.procs.clear();
        Ok(())
    }
}

/// CPU seconds used so far by the nodes, the bus server and the load processes.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    at: Instant,
    nodes: Option<u64>,
    bus: Option<u64>,
    load: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl Cpu {
    fn read(args: &Args, kids: &Children) -> Cpu {
        let nodes: Vec<u32> = args.targets.iter().filter_map(|t| t.pid).collect();
        let load: Vec<u32> = kids.procs.iter().map(Child::id).collect();
        Cpu {
            at: Instant::now(),
            nodes: procfs::cpu_micros(&nodes),
            bus: args.bus_pid.and_then(|p| procfs::cpu_micros(&[p])),
            load: procfs::cpu_micros(&load),
            machine: procfs::machine_cpu_micros(),
        }
    }

    /// Prints and returns where the CPU went since `self`: on two shared cores the load
    /// processes compete with the nodes, which this shows.
    fn since(&self, args: &Args, kids: &Children) -> serde_json::Value {
        let now = Cpu::read(args, kids);
        let d = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e6),
            _ => None,
        };
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let (n, b, l) = (
            d(self.nodes, now.nodes),
            d(self.bus, now.bus),
            d(self.load, now.load),
        );
        let (busy, softirq) = match (self.machine, now.machine) {
            (Some(a), Some(b)) => (d(Some(a.0), Some(b.0)), d(Some(a.1), Some(b.1))),
            _ => (None, None),
        };
        let s = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.1}"));
        println!(
            "  CPU over {wall:.1}s: nodes {} s, nats-server {} s, load processes {} s; machine busy {} of {:.1} core-seconds ({} in softirq)",
            s(n),
            s(b),
            s(l),
            s(busy),
            wall * std::thread::available_parallelism().map_or(1.0, |p| p.get() as f64),
            s(softirq),
        );
        serde_json::json!({"wall_secs": wall, "nodes_secs": n, "bus_secs": b, "load_secs": l, "machine_busy_secs": busy, "machine_softirq_secs": softirq})
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Memory of the servers at one moment.
#[derive(Debug, Clone)]
struct Memory {
    nodes: Vec<Option<u64>>,
    bus: Option<u64>,
    bus_subscriptions: Option<u64>,
    tcp: Option<u64>,
    slab: Option<u64>,
}

impl Memory {
    fn read(args: &Args) -> Memory {
        Memory {
            nodes: args
                .targets
                .iter()
                .map(|t| t.pid.and_then(|p| procfs::memory_bytes(&[p])))
                .collect(),
            bus: args.bus_pid.and_then(|p| procfs::memory_bytes(&[p])),
            bus_subscriptions: args.bus_monitor.and_then(|m| varz_u64(m, "subscriptions")),
            tcp: procfs::tcp_mem_bytes(),
            slab: procfs::slab_bytes(),
        }
    }
}

/// A number from nats-server's `/varz` monitoring page.
fn varz_u64(monitor: SocketAddr, key: &str) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&monitor, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /varz HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = &text[text.find("\r\n\r\n")? + 4..];
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get(key)?
        .as_u64()
}

fn delta_per(before: Option<u64>, after: Option<u64>, n: usize) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("?".to_owned(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    let nodes = args.targets.len();
    println!(
        "scale: {} connections over {nodes} nodes from {} load processes, sources 127.0.0.2-127.0.0.{}",
        args.connections,
        args.processes,
        1 + args.sources
    );
    let before = Memory::read(args);
    let start = Instant::now();
    let mut kids = Children::spawn(args)?;
    let cpu = Cpu::read(args, &kids);

    // Connect.
    let mut open = 0;
    let mut failed = 0;
    let mut slowest = 0.0f64;
    let mut per_node = vec![0usize; nodes];
    for r in kids.reports()? {
        let Report::Connected(c) = r else {
            bail!("expected a connect report");
        };
        open += c.open;
        failed += c.failed;
        slowest = slowest.max(c.secs);
        for (k, n) in c.per_node.iter().enumerate().take(nodes) {
            per_node[k] += n;
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    println!(
        "connect: {open}/{} open, {failed} failed, in {connect_secs:.1}s ({:.0} upgrades/s; slowest process {slowest:.1}s)",
        args.connections,
        open as f64 / connect_secs.max(1e-9)
    );
    let connect_cpu = cpu.since(args, &kids);
    std::thread::sleep(Duration::from_secs_f64(args.hold.max(0.0)));
    let after = Memory::read(args);
    let mut memory = memory_report(args, &before, &after, &per_node, open);
    let load_pids: Vec<u32> = kids.procs.iter().map(Child::id).collect();
    let load_memory = procfs::memory_bytes(&load_pids);
    println!(
        "  load processes: {} MiB in all, {} B per connection",
        mib(load_memory),
        delta_per(Some(0), load_memory, open).map_or("?".to_owned(), |p| format!("{p:.0}"))
    );
    memory["load_processes"] = load_memory.into();

    let mut out = serde_json::json!({
        "scenario": "scale",
        "client_fd_limit": fd_limit,
        "processes": args.processes,
        "nodes": nodes,
        "sources": args.sources,
        "connections": args.connections,
        "open": open,
        "failed": failed,
        "connect_secs": connect_secs,
        "upgrades_per_sec": open as f64 / connect_secs.max(1e-9),
        "per_node": per_node,
        "memory": memory,
        "connect_cpu": connect_cpu,
    });
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!("{failed} connections failed"));
    }

    if args.rate > 0 && args.push_secs > 0.0 {
        println!(
            "pushes: {}/s for {}s to random users, half through another node",
            args.rate, args.push_secs
        );
        let cpu = Cpu::read(args, &kids);
        kids.command("pushes")?;
        let mut t = PushTotals::default();
        for r in kids.reports()? {
            let Report::Pushes(p) = r else {
                bail!("expected a pushes report");
            };
            t.add(&p);
        }
        t.print("pushes");
        check_pushes(&t, "pushes", &mut problems);
        out["pushes"] = t.json();
        out["pushes"]["cpu"] = cpu.since(args, &kids);
        out["pushes"]["rate_target"] = args.rate.into();
    }

    if args.broadcasts > 0 {
        println!(
            "broadcast: {} broadcasts, one every {}s, through the nodes in turn",
            args.broadcasts, args.broadcast_interval
        );
        let cpu = Cpu::read(args, &kids);
        kids.command("broadcast")?;
        let api_failed = publish_broadcasts(args)?;
        let reports = kids.reports()?;
        let mut b = broadcast_report(args, &reports, api_failed)?;
        b["cpu"] = cpu.since(args, &kids);
        if b["lost"].as_u64().unwrap_or(1) > 0 || api_failed > 0 {
            problems.push(format!(
                "broadcast: {} deliveries lost, {api_failed} API failures",
                b["lost"]
            ));
        }
        out["broadcast"] = b;
    }

    if args.storm_users > 0 {
        println!(
            "storm: {} users drop together and reconnect to another node within a second, pushes to the others going on",
            args.storm_users
        );
        let cpu = Cpu::read(args, &kids);
        kids.command("storm")?;
        let (mut users, mut reopened, mut sfailed, mut secs) = (0, 0, 0, 0.0f64);
        let (mut pushes, mut verify) = (PushTotals::default(), PushTotals::default());
        for r in kids.reports()? {
            let Report::Storm(s) = r else {
                bail!("expected a storm report");
            };
            users += s.users;
            reopened += s.reopened;
            sfailed += s.failed;
            secs = secs.max(s.reconnect_secs);
            pushes.add(&s.pushes);
            verify.add(&s.verify);
        }
        println!("storm: {users} users dropped, {reopened} back in {secs:.2}s, {sfailed} failed");
        pushes.print("storm, pushes to the others");
        verify.print("storm, one push to each returning user");
        check_pushes(&pushes, "storm pushes", &mut problems);
        check_pushes(&verify, "pushes after the storm", &mut problems);
        let storm_cpu = cpu.since(args, &kids);
        if sfailed > 0 {
            problems.push(format!("storm: {sfailed} reconnects failed"));
        }
        out["storm"] = serde_json::json!({
            "users": users,
            "reopened": reopened,
            "failed": sfailed,
            "reconnect_secs": secs,
            "pushes": pushes.json(),
            "verify": verify.json(),
            "cpu": storm_cpu,
        });
    }
    kids.finish()?;
    out["problems"] = problems.clone().into();
    println!("{out}");
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

fn check_pushes(t: &PushTotals, what: &str, problems: &mut Vec<String>) {
    if t.lost() > 0 || t.api_failed > 0 || t.duplicates() > 0 || t.dropped > 0 {
        problems.push(format!(
            "{what}: {} lost, {} API failures, {} duplicates, {} connections dropped",
            t.lost(),
            t.api_failed,
            t.duplicates(),
            t.dropped
        ));
    }
}

/// Prints and returns the memory figures: per node, summed, the bus, the kernel.
fn memory_report(
    args: &Args,
    before: &Memory,
    after: &Memory,
    per_node: &[usize],
    open: usize,
) -> serde_json::Value {
    let mut rows = Vec::new();
    let (mut sum_before, mut sum_after, mut measured) = (0u64, 0u64, 0usize);
    for (k, t) in args.targets.iter().enumerate() {
        let (b, a) = (before.nodes[k], after.nodes[k]);
        let per = delta_per(b, a, per_node[k]);
        if let (Some(b), Some(a)) = (b, a) {
            sum_before += b;
            sum_after += a;
            measured += per_node[k];
        }
        println!(
            "  node {k} (pid {}): {} connections, {} -> {} MiB, {} B per connection",
            t.pid.map_or("?".to_owned(), |p| p.to_string()),
            per_node[k],
            mib(b),
            mib(a),
            per.map_or("?".to_owned(), |p| format!("{p:.0}"))
        );
        rows.push(serde_json::json!({"pid": t.pid, "connections": per_node[k], "before": b, "after": a, "per_conn": per}));
    }
    let nodes_per = delta_per(Some(sum_before), Some(sum_after), measured);
    let bus_per_conn = delta_per(before.bus, after.bus, open);
    let subs = match (before.bus_subscriptions, after.bus_subscriptions) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let bus_per_sub = subs.and_then(|s| delta_per(before.bus, after.bus, s as usize));
    let tcp = delta_per(before.tcp, after.tcp, open);
    let slab = delta_per(before.slab, after.slab, open);
    println!(
        "memory: all nodes {} -> {} MiB, {} B per connection (bus client included); bus server {} -> {} MiB, {} B per connection, {} subscriptions added, {} B per subscription",
        mib(Some(sum_before)),
        mib(Some(sum_after)),
        nodes_per.map_or("?".to_owned(), |p| format!("{p:.0}")),
        mib(before.bus),
        mib(after.bus),
        bus_per_conn.map_or("?".to_owned(), |p| format!("{p:.0}")),
        subs.map_or("?".to_owned(), |s| s.to_string()),
        bus_per_sub.map_or("?".to_owned(), |p| format!("{p:.0}")),
    );
    println!(
        "kernel (system-wide, both ends on this host, other sessions included): {} B of TCP buffers and {} B of slab per connection",
        tcp.map_or("?".to_owned(), |p| format!("{p:.0}")),
        slab.map_or("?".to_owned(), |p| format!("{p:.0}")),
    );
    serde_json::json!({
        "nodes": rows,
        "nodes_before": sum_before,
        "nodes_after": sum_after,
        "nodes_per_conn": nodes_per,
        "bus_before": before.bus,
        "bus_after": after.bus,
        "bus_per_conn": bus_per_conn,
        "bus_subscriptions_before": before.bus_subscriptions,
        "bus_subscriptions_after": after.bus_subscriptions,
        "bus_per_subscription": bus_per_sub,
        "kernel_tcp_per_conn_both_ends": tcp,
        "kernel_slab_per_conn_both_ends": slab,
    })
}

/// Publishes broadcast `b` through node `b mod nodes` every `--broadcast-interval`
/// seconds; returns the API failures.
fn publish_broadcasts(args: &Args) -> anyhow::Result<u64> {
    // The children start reading once they have the command.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let how = Publishers {
        publishers: 1,
        pipelined: false,
        window: 1,
    };
    let sent = AtomicU64::new(0);
    let mut failed = 0;
    for b in 0..args.broadcasts {
        let due = start + Duration::from_secs_f64(b as f64 * args.broadcast_interval);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let api = args.targets[(b as usize) % args.targets.len()].api;
        let make: publisher::MakeRequest = Arc::new(move |_| {
            (
                "/v1/broadcast".to_owned(),
                format!(r#"{{"data":{{"ts":{},"bc":{b}}}}}"#, now_micros()),
            )
        });
        failed += publisher::run(api, &how, 1, 0.0, args.api_key.as_deref(), &make, &sent)?.failed;
    }
    Ok(failed)
}

/// Merges the children's broadcast reports: a broadcast reached all when the children's
/// counts add up to every open connection; its time-to-all is the latest arrival anywhere.
fn broadcast_report(
    args: &Args,
    reports: &[Report],
    api_failed: u64,
) -> anyhow::Result<serde_json::Value> {
    let k = args.broadcasts as usize;
    let mut count = vec![0u64; k];
    let mut last = vec![0u64; k];
    let mut open = 0usize;
    let mut dropped = 0usize;
    let mut deliveries = hist::new();
    for r in reports {
        let Report::Broadcast(b) = r else {
            bail!("expected a broadcast report");
        };
        open += b.open;
        dropped += b.dropped;
        for i in 0..k {
            count[i] += b.count.get(i).copied().unwrap_or(0);
            last[i] = last[i].max(b.last.get(i).copied().unwrap_or(0));
        }
        hist::add_pairs(&mut deliveries, &b.hist);
    }
    let mut to_all = hist::new();
    let mut incomplete = 0;
    for i in 0..k {
        if count[i] >= open as u64 {
            hist::record(&mut to_all, last[i]);
        } else {
            incomplete += 1;
        }
    }
    let expected = (open * k) as u64;
    let delivered: u64 = count.iter().sum();
    let lost = expected.saturating_sub(delivered);
    println!(
        "broadcast: {k} to {open} connections: {delivered} of {expected} deliveries ({lost} lost, {incomplete} broadcasts incomplete, {api_failed} API failures, {dropped} connections dropped)"
    );
    println!("  time to reach all: {}", hist::line(&to_all));
    println!("  each delivery:     {}", hist::line(&deliveries));
    Ok(serde_json::json!({
        "broadcasts": k,
        "connections": open,
        "delivered": delivered,
        "lost": lost,
        "incomplete": incomplete,
        "api_failed": api_failed,
        "dropped_connections": dropped,
        "to_all_ms": hist::summary(&to_all),
        "delivery_ms": hist::summary(&deliveries),
        "to_all_each_ms": last.iter().map(|&l| l as f64 / 1000.0).collect::<Vec<_>>(),
    }))
}
