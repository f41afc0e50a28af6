//! `broadcast`: N subscribers, K broadcasts through the API one at a time, each carrying
//! its send time; for each broadcast, the time until the last of the N received it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use mio::Events;
use protocol::Message;

use crate::adapter::{self, fill, now_micros, Subscribers};
use crate::{procfs, publisher};

/// Arguments of the `broadcast` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server and its subscribers.
    #[command(flatten)]
    common: Subscribers,
    /// Broadcasts to send.
    #[arg(long, default_value_t = 50)]
    broadcasts: u64,
    /// Broadcasts per second (spaced so that each normally completes before the next).
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// How broadcasts reach the API (at a few per second, each publisher sends one now
    /// and then, as several backend instances would).
    #[command(flatten)]
    publishers: publisher::Publishers,
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    adapter::check_fds(args.common.subscribers, fd_limit)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.common.timeout);
    let mut events = Events::with_capacity(4096);
    let (mut poll, mut conns) = adapter::connect_all(
        args.common.server,
        &args.common.templates.subscribe,
        "u",
        args.common.subscribers,
        args.common.sources,
        deadline,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    eprintln!(
        "  {} subscribers connected; {} broadcasts at {}/s",
        conns.len(),
        args.broadcasts,
        args.rate
    );

    let sent = Arc::new(AtomicU64::new(0));
    let cpu = procfs::CpuMeter::start(&args.common.server_pid);
    let publisher = {
        let sent = Arc::clone(&sent);
        let (api, n, rate, key, t, how) = (
            args.common.api,
            args.broadcasts,
            args.rate,
            args.common.api_key.clone(),
            args.common.templates.clone(),
            args.publishers.clone(),
        );
        let make: publisher::MakeRequest = Arc::new(move |i| {
            let data = format!(r#"{{"ts":{},"seq":{i}}}"#, now_micros());
            (
                fill(&t.broadcast, "", ""),
                fill(&t.broadcast_body, "", &data),
            )
        });
        std::thread::spawn(move || publisher::run(api, &how, n, rate, key.as_deref(), &make, &sent))
    };

    let k = args.broadcasts as usize;
    let n = args.common.subscribers;
    // Per broadcast: deliveries seen and the latest arrival (µs after its send time).
    let mut count = vec![0usize; k];
    let mut last = vec![0u64; k];
    let mut deliveries = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut total = 0usize;
    let mut publish_done_at: Option<Instant> = None;
    let mut msgs = Vec::new();
    let start = Instant::now();
    let mut progress = adapter::Progress::new("deliveries");
    while total < n * k {
        if publish_done_at.is_none() && publisher.is_finished() {
            publish_done_at = Some(Instant::now());
        }
        if publish_done_at.is_some_and(|t| t.elapsed() > Duration::from_secs_f64(args.common.drain))
            || Instant::now() > deadline
        {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        progress.tick(total as u64);
        for ev in events.iter() {
            conns[ev.token().0].drive(&mut msgs);
            for m in msgs.drain(..) {
                let Message::Text(t) = m else { continue };
                let (Some(ts), Some(seq)) =
                    (adapter::field_u64(&t, "ts"), adapter::field_u64(&t, "seq"))
                else {
                    continue;
                };
                let Some(i) = usize::try_from(seq).ok().filter(|&i| i < k) else {
                    continue;
                };
                let latency = now_micros().saturating_sub(ts).max(1);
                let _ = deliveries.record(latency);
                count[i] += 1;
                last[i] = last[i].max(latency);
                total += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_secs = cpu.seconds();
    let publisher::Outcome {
        secs: publish_secs,
        failed: errors,
    } = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    let mut to_all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut incomplete = 0;
    for i in 0..k {
        if count[i] == n {
            let _ = to_all.record(last[i].max(1));
        } else {
            incomplete += 1;
        }
    }
    let lost = n * k - total;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "broadcast: {k} broadcasts to {n} connections in {publish_secs:.2}s; {total} of {} deliveries ({lost} lost, {incomplete} broadcasts incomplete, {errors} API errors) in {elapsed:.2}s",
        n * k
    );
    println!(
        "time to reach all ms: p50 {:.3}  p99 {:.3}  max {:.3};  per delivery ms: p50 {:.3}  p99 {:.3}",
        ms(&to_all, 0.5),
        ms(&to_all, 0.99),
        to_all.max() as f64 / 1000.0,
        ms(&deliveries, 0.5),
        ms(&deliveries, 0.99),
    );
    let cpu_per_delivered = procfs::micros_per(cpu_secs, total as u64);
    let cpu_per_broadcast = procfs::micros_per(cpu_secs, k as u64);
    if let (Some(c), Some(d)) = (cpu_secs, cpu_per_delivered) {
        println!(
            "server CPU: {c:.2}s, {:.0} µs per broadcast, {d:.3} µs per delivered message",
            cpu_per_broadcast.unwrap_or(0.0)
        );
    }
    let json = serde_json::json!({
        "scenario": "broadcast",
        "client_fd_limit": fd_limit,
        "subscribers": n,
        "broadcasts": k,
        "delivered": total,
        "lost": lost,
        "incomplete": incomplete,
        "api_errors": errors,
        "deliveries_per_sec": total as f64 / elapsed.max(1e-9),
        "to_all_ms": {"p50": ms(&to_all, 0.5), "p99": ms(&to_all, 0.99), "max": to_all.max() as f64 / 1000.0},
        "server_cpu_secs": cpu_secs,
        "server_cpu_us_per_broadcast": cpu_per_broadcast,
        "server_cpu_us_per_delivered": cpu_per_delivered,
        "delivery_ms": {"p50": ms(&deliveries, 0.5), "p99": ms(&deliveries, 0.99), "max": deliveries.max() as f64 / 1000.0},
    });
    println!("{json}");
    if lost > 0 || errors > 0 {
        bail!("{lost} deliveries lost, {errors} API errors");
    }
    Ok(())
}
