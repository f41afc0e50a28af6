//! `echo`: C clients, each sending an S-byte text message and waiting for it to come back
//! before sending the next (closed loop); round trips per second and their latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use mio::Events;
use protocol::Message;

use crate::adapter::{self, now_micros, Templates};
use crate::procfs;

/// Arguments of the `echo` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Client listener of the server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Clients (users e0…), one connection each.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Message size in bytes (at least the 40 the timestamp needs).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to run after all clients are connected.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many round trips in all, even before `duration`.
    #[arg(long, default_value_t = 10_000_000)]
    max_round_trips: u64,
    /// Source addresses, 127.0.0.2 onwards.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Server-specific paths.
    #[command(flatten)]
    templates: Templates,
    /// Server process(es) whose CPU time is measured over the round trips.
    #[arg(long)]
    server_pid: Vec<u32>,
}

/// `{"ts":...,"seq":...,"pad":"xxx"}` padded to `size` bytes.
fn message(size: usize, seq: u64) -> Vec<u8> {
    let head = format!(r#"{{"ts":{},"seq":{seq},"pad":""#, now_micros());
    let pad = size.saturating_sub(head.len() + 2);
    let mut m = head.into_bytes();
    m.resize(m.len() + pad, b'x');
    m.extend_from_slice(b"\"}");
    m
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    adapter::check_fds(args.clients, fd_limit)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration + 120.0);
    let mut events = Events::with_capacity(4096);
    let (mut poll, mut conns) = adapter::connect_all(
        args.server,
        &args.templates.echo,
        "e",
        args.clients,
        args.sources,
        deadline,
    )?;
    // Let welcome messages (if the server sends any) arrive and be discarded.
    std::thread::sleep(Duration::from_millis(200));
    let mut msgs = Vec::new();
    for c in &mut conns {
        c.drive(&mut msgs);
    }
    msgs.clear();
    // Each client: the sequence number it waits for.
    let mut waiting: Vec<u64> = vec![0; conns.len()];
    for (c, _) in conns.iter_mut().zip(&waiting) {
        c.send_text(&message(args.size, 0));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut round_trips = 0u64;
    let cpu = procfs::CpuMeter::start(&args.server_pid);
    let start = Instant::now();
    let mut progress = adapter::Progress::new("round trips");
    let run_for = Duration::from_secs_f64(args.duration);
    while start.elapsed() < run_for && round_trips < args.max_round_trips {
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        progress.tick(round_trips);
        for ev in events.iter() {
            let i = ev.token().0;
            conns[i].drive(&mut msgs);
            for m in msgs.drain(..) {
                let Message::Text(t) = m else { continue };
                if adapter::field_u64(&t, "seq") != Some(waiting[i]) {
                    continue;
                }
                if let Some(ts) = adapter::field_u64(&t, "ts") {
                    let _ = hist.record(now_micros().saturating_sub(ts).max(1));
                }
                round_trips += 1;
                waiting[i] += 1;
                let next = message(args.size, waiting[i]);
                conns[i].send_text(&next);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_per_round_trip = procfs::micros_per(cpu.seconds(), round_trips);
    let rate = round_trips as f64 / secs.max(1e-9);
    println!(
        "echo: {} clients, {} B messages: {round_trips} round trips in {secs:.2}s ({rate:.0}/s)",
        conns.len(),
        args.size
    );
    adapter::print_latency(&hist);
    if let Some(c) = cpu_per_round_trip {
        println!("server CPU: {c:.2} µs per round trip");
    }
    let json = serde_json::json!({
        "scenario": "echo",
        "client_fd_limit": fd_limit,
        "clients": conns.len(),
        "size": args.size,
        "round_trips": round_trips,
        "secs": secs,
        "round_trips_per_sec": rate,
        "server_cpu_us_per_round_trip": cpu_per_round_trip,
        "latency_ms": adapter::latency_json(&hist),
    });
    println!("{json}");
    if round_trips == 0 {
        bail!("no message came back");
    }
    Ok(())
}
