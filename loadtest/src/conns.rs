//! `conns`: open N idle connections at a set rate, hold them, and report the connect rate
//! and the server's memory per connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mio::{Events, Interest, Poll, Token};

use crate::procfs;
use crate::wsclient::{Phase, WsConn};

/// Arguments of the `conns` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Server-specific paths (`--subscribe`, with users u0, u1, …).
    #[command(flatten)]
    templates: crate::adapter::Templates,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Connections started per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Give up on connecting after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Source addresses used, 127.0.0.2 onwards, round robin.
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Server process(es) to read memory from (`/proc/<pid>`); repeat for a server with
    /// several processes (nginx's master and workers): their proportional set sizes are
    /// summed so shared memory counts once.
    #[arg(long)]
    server_pid: Vec<u32>,
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    if args.count as u64 + 32 > fd_limit {
        bail!(
            "{} connections need more descriptors than the open-files limit ({fd_limit}) allows",
            args.count
        );
    }
    if crate::tls::resuming() {
        // Tickets for every server name first, so the connections measured resume.
        warm_up(args, crate::tls::RESUME_NAMES.min(args.count))?;
    }
    let rss_before = procfs::memory_bytes(&args.server_pid);
    let tcp_before = procfs::tcp_mem_bytes();
    let slab_before = procfs::slab_bytes();
    let cpu = procfs::CpuMeter::start(&args.server_pid);
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<WsConn> = Vec::with_capacity(args.count);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.timeout);
    let mut started = 0usize;
    let mut open = 0usize;
    let mut failed = 0usize;
    let mut last_progress = Instant::now();
    let mut scratch = Vec::new();
    let host = args.server.to_string();
    while open + failed < args.count && Instant::now() < deadline {
        // Start connections up to the pace.
        let allowed = if args.rate == 0 {
            args.count
        } else {
            ((start.elapsed().as_secs_f64() * f64::from(args.rate)) as usize + 1).min(args.count)
        };
        while started < allowed && started - (open + failed) < 2048 {
            let source = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    2 + (started % usize::from(args.sources.max(1))) as u8,
                )),
                0,
            );
            let path = crate::adapter::fill(&args.templates.subscribe, &format!("u{started}"), "");
            let mut c = WsConn::connect(source, args.server, &host, &path).context("connect")?;
            poll.registry().register(
                &mut c.stream,
                Token(conns.len()),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            conns.push(c);
            started += 1;
        }
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            let before = c.phase;
            c.drive(&mut scratch);
            scratch.clear();
            match (before, c.phase) {
                (Phase::Open, _) | (Phase::Failed, _) => {}
                (_, Phase::Open) => open += 1,
                (_, Phase::Failed) => failed += 1,
                _ => {}
            }
        }
        if last_progress.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  … {open} open, {failed} failed, {started} started after {:.1}s",
                start.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let connect_cpu = cpu.seconds();
    // Let the server settle, then read its memory while everything is held.
    std::thread::sleep(Duration::from_secs_f64(args.hold.max(0.0)));
    let rss_after = procfs::memory_bytes(&args.server_pid);
    let tcp_after = procfs::tcp_mem_bytes();
    let slab_after = procfs::slab_bytes();
    let fds: Option<usize> = args.server_pid.iter().map(|&p| procfs::open_fds(p)).sum();
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if open > 0 => Some(a.saturating_sub(b) as f64 / open as f64),
        _ => None,
    };
    let kernel_per_conn = match (tcp_before, tcp_after) {
        (Some(b), Some(a)) if open > 0 => Some(a.saturating_sub(b) as f64 / open as f64 / 2.0),
        _ => None,
    };
    // Both ends live on this host; half the growth is the server's share (an estimate:
    // the server end also has an epoll entry, the client end a bound source port).
    let slab_per_conn = match (slab_before, slab_after) {
        (Some(b), Some(a)) if open > 0 => Some(a.saturating_sub(b) as f64 / open as f64 / 2.0),
        _ => None,
    };
    let rate = open as f64 / connect_secs.max(1e-9);
    // Upgrades (TLS handshakes included, with --tls) per second of server CPU: per core.
    let per_cpu_sec = connect_cpu.filter(|&c| c > 0.0).map(|c| open as f64 / c);
    println!(
        "conns: {open}/{} open, {failed} failed, in {connect_secs:.2}s ({rate:.0} upgrades/s, {:.0} per second of server CPU)",
        args.count,
        per_cpu_sec.unwrap_or(0.0)
    );
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        println!(
            "server memory (PSS): {:.1} MiB -> {:.1} MiB, {:.0} bytes per connection",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            per_conn.unwrap_or(0.0)
        );
    }
    if let (Some(k), Some(s)) = (kernel_per_conn, slab_per_conn) {
        println!(
            "kernel, per connection end (both ends on this host, halved): {k:.0} bytes of TCP buffers, {s:.0} bytes of slab"
        );
    }
    let json = serde_json::json!({
        "scenario": "conns",
        "count": args.count,
        "open": open,
        "failed": failed,
        "connect_secs": connect_secs,
        "upgrades_per_sec": rate,
        "server_connect_cpu_secs": connect_cpu,
        "upgrades_per_server_cpu_sec": per_cpu_sec,
        "server_rss_before": rss_before,
        "server_rss_after": rss_after,
        "server_rss_per_conn": per_conn,
        "kernel_tcp_mem_per_conn": kernel_per_conn,
        "kernel_slab_per_conn": slab_per_conn,
        "server_fds": fds,
        "client_fd_limit": fd_limit,
    });
    println!("{json}");
    drop(conns);
    if failed > 0 || open < args.count {
        bail!(
            "{} of {} connections did not open",
            args.count - open,
            args.count
        );
    }
    Ok(())
}

/// Opens `n` connections, waits (at most 30 s) until they are open and have read what
/// the server sent after the handshake (TLS tickets among it), and closes them.
fn warm_up(args: &Args, n: usize) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let host = args.server.to_string();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let source = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (i % usize::from(args.sources.max(1))) as u8,
            )),
            0,
        );
        let path = crate::adapter::fill(&args.templates.subscribe, &format!("w{i}"), "");
        let mut c = WsConn::connect(source, args.server, &host, &path).context("connect")?;
        poll.registry().register(
            &mut c.stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut scratch = Vec::new();
    while Instant::now() < deadline
        && conns
            .iter()
            .any(|c| !matches!(c.phase, Phase::Open | Phase::Failed))
    {
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for ev in events.iter() {
            if let Some(c) = conns.get_mut(ev.token().0) {
                c.drive(&mut scratch);
                scratch.clear();
            }
        }
    }
    // The welcome follows the tickets: one more moment for the last reads.
    std::thread::sleep(Duration::from_millis(200));
    poll.poll(&mut events, Some(Duration::ZERO))?;
    for ev in events.iter() {
        if let Some(c) = conns.get_mut(ev.token().0) {
            c.drive(&mut scratch);
            scratch.clear();
        }
    }
    let open = conns.iter().filter(|c| c.phase == Phase::Open).count();
    eprintln!("  warm-up: {open}/{n} connections opened for their TLS tickets");
    Ok(())
}
