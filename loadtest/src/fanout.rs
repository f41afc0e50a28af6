//! `fanout`: N subscribers, M pushes through `POST /v1/push` to random single users, at a
//! set rate or flat out; with `--batch K`, K pushes per `POST /v1/batch` request instead. Each push carries its send time; latency is measured on arrival
//! (client and server share this host's clock) into an HDR histogram.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use mio::Events;
use protocol::Message;

use crate::adapter::{self, fill, now_micros, Subscribers};
use crate::{procfs, publisher, stages, storm};

/// Arguments of the `fanout` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server and its subscribers.
    #[command(flatten)]
    common: Subscribers,
    /// Pushes to send.
    #[arg(long, default_value_t = 100_000)]
    pushes: u64,
    /// Pushes per second in all (0: flat out).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How pushes reach the API.
    #[command(flatten)]
    publishers: publisher::Publishers,
    /// Pushes per request: above 1, each request is a JSON array of that many pushes
    /// (each as `--publish-body` makes it) POSTed to `--batch-path` (pushgate's batch
    /// API); `--rate` then counts requests.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Where batches go.
    #[arg(long, default_value = "/v1/batch")]
    batch_path: String,
    /// Storm: this many extra users (s0, s1, ...) connect within a second, drop and
    /// reconnect within a second, then leave, while the pushes go on (0: no storm).
    #[arg(long, default_value_t = 0)]
    storm_users: usize,
    /// Storm: the client listener they connect to [default: --server].
    #[arg(long)]
    storm_server: Option<SocketAddr>,
    /// Storm: seconds after the first push.
    #[arg(long, default_value_t = 2.0)]
    storm_after: f64,
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    adapter::check_fds(args.common.subscribers + args.storm_users, fd_limit)?;
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
    let open = conns.len();
    // Give the server a moment to register the last users.
    std::thread::sleep(Duration::from_millis(500));
    eprintln!(
        "  {open} subscribers connected; publishing {} pushes",
        args.pushes
    );

    let sent = Arc::new(AtomicU64::new(0));
    let batch = args.batch.max(1);
    let requests = args.pushes.div_ceil(batch);
    let scraped_before = stages::scrape(args.common.api);
    let cpu = procfs::CpuMeter::start(&args.common.server_pid);
    // On a small machine the tool competes with the server for cores; its own CPU says how
    // much of the machine the server could have had.
    let own_cpu = procfs::CpuMeter::start(&[std::process::id()]);
    let publisher = {
        let sent = Arc::clone(&sent);
        let (api, pushes, rate, subs, how) = (
            args.common.api,
            args.pushes,
            args.rate,
            args.common.subscribers,
            args.publishers.clone(),
        );
        let key = args.common.api_key.clone();
        let t = args.common.templates.clone();
        let batch_path = args.batch_path.clone();
        let one = move |i: u64| {
            let user = format!("u{}", fastrand::usize(..subs));
            let data = format!(r#"{{"ts":{},"seq":{i}}}"#, now_micros());
            (
                fill(&t.publish, &user, ""),
                fill(&t.publish_body, &user, &data),
            )
        };
        let make: publisher::MakeRequest = if batch == 1 {
            Arc::new(one)
        } else {
            Arc::new(move |r| {
                let first = r * batch;
                let mut body = String::from("[");
                for i in first..(first + batch).min(pushes) {
                    if i > first {
                        body.push(',');
                    }
                    body.push_str(&one(i).1);
                }
                body.push(']');
                (batch_path.clone(), body)
            })
        };
        std::thread::spawn(move || {
            publisher::run(
                api,
                &how,
                requests,
                rate as f64,
                key.as_deref(),
                &make,
                &sent,
            )
        })
    };

    let marks = Arc::new(storm::Marks::default());
    let storm = (args.storm_users > 0).then(|| {
        let spec = storm::Spec {
            server: args.storm_server.unwrap_or(args.common.server),
            subscribe: args.common.templates.subscribe.clone(),
            users: args.storm_users,
            start_after: Duration::from_secs_f64(args.storm_after),
            sources: args.common.sources,
        };
        let marks = Arc::clone(&marks);
        std::thread::spawn(move || storm::run(&spec, &marks, deadline))
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    // Deliveries before, during and after the storm.
    let mut phases = [hist.clone(), hist.clone(), hist.clone()];
    let mut received = 0u64;
    let start = Instant::now();
    let mut progress = adapter::Progress::new("delivered");
    let mut publish_done_at: Option<Instant> = None;
    let mut msgs = Vec::new();
    loop {
        if received >= args.pushes {
            break;
        }
        if publish_done_at.is_none() && publisher.is_finished() {
            publish_done_at = Some(Instant::now());
        }
        if publish_done_at.is_some_and(|t| t.elapsed() > Duration::from_secs_f64(args.common.drain))
            || Instant::now() > deadline
        {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        progress.tick(received);
        for ev in events.iter() {
            conns[ev.token().0].drive(&mut msgs);
            for m in msgs.drain(..) {
                if let Message::Text(t) = m {
                    {
                        if let Some(ts) = adapter::field_u64(&t, "ts") {
                            let now = now_micros();
                            let latency = now.saturating_sub(ts).max(1);
                            let _ = hist.record(latency);
                            let (s, e) = (
                                marks.start.load(Ordering::Relaxed),
                                marks.end.load(Ordering::Relaxed),
                            );
                            let phase = match (s, e) {
                                (0, _) => 0,
                                (_, 0) => 1,
                                (_, e) if now <= e => 1,
                                _ => 2,
                            };
                            let _ = phases[phase].record(latency);
                            received += 1;
                        }
                    }
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_secs = cpu.seconds();
    let own_cpu_secs = own_cpu.seconds();
    let storm_report = match storm {
        Some(t) => Some(
            t.join()
                .map_err(|_| anyhow::anyhow!("storm thread panicked"))??,
        ),
        None => None,
    };
    let pub_result = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    let publisher::Outcome {
        secs: publish_secs,
        failed: errors,
    } = pub_result?;
    let requests_sent = sent.load(Ordering::Relaxed);
    let sent = (requests_sent * batch).min(args.pushes);
    let lost = sent.saturating_sub(received);
    let rate = received as f64 / elapsed.max(1e-9);
    println!(
        "fanout: {sent} pushes sent in {publish_secs:.2}s ({:.0}/s), {received} delivered in {elapsed:.2}s ({rate:.0}/s), {lost} lost, {errors} API errors",
        sent as f64 / publish_secs.max(1e-9)
    );
    adapter::print_latency(&hist);
    let cpu_per_push = procfs::micros_per(cpu_secs, sent);
    let cpu_per_delivered = procfs::micros_per(cpu_secs, received);
    if let (Some(c), Some(p)) = (cpu_secs, cpu_per_push) {
        println!(
            "server CPU: {c:.2}s ({:.0}% of one core), {p:.2} µs per push, {:.2} µs per delivered message; load tool {:.2}s",
            100.0 * c / elapsed.max(1e-9),
            cpu_per_delivered.unwrap_or(0.0),
            own_cpu_secs.unwrap_or(0.0)
        );
    }
    let breakdown = scraped_before.and_then(|before| {
        Some(stages::breakdown(
            &before,
            &stages::scrape(args.common.api)?,
        ))
    });
    if let Some(b) = &breakdown {
        stages::print(b);
    }
    let phase_json = |h: &Histogram<u64>| {
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        serde_json::json!({"count": h.len(), "p50": q(0.5), "p99": q(0.99), "max": h.max() as f64 / 1000.0})
    };
    let storm_json = storm_report.map(|r| {
        for (name, h) in ["before", "during", "after"].iter().zip(&phases) {
            println!(
                "storm {name:>6}: {} deliveries, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            );
        }
        println!(
            "storm: {} users connected in {:.2}s, reconnected in {:.2}s, {} failed",
            args.storm_users, r.connect_secs, r.reconnect_secs, r.failed
        );
        serde_json::json!({
            "users": args.storm_users,
            "connect_secs": r.connect_secs,
            "reconnect_secs": r.reconnect_secs,
            "failed": r.failed,
            "before": phase_json(&phases[0]),
            "during": phase_json(&phases[1]),
            "after": phase_json(&phases[2]),
        })
    });
    let json = serde_json::json!({
        "scenario": "fanout",
        "client_fd_limit": fd_limit,
        "subscribers": args.common.subscribers,
        "pushes_sent": sent,
        "requests_sent": requests_sent,
        "batch": batch,
        "delivered": received,
        "lost": lost,
        "api_errors": errors,
        "publish_secs": publish_secs,
        "elapsed_secs": elapsed,
        "delivered_per_sec": rate,
        "rate_target": args.rate,
        "publishers": if args.publishers.pipelined { 1 } else { args.publishers.publishers.max(1) },
        "pipelined": args.publishers.pipelined,
        "server_cpu_secs": cpu_secs,
        "load_tool_cpu_secs": own_cpu_secs,
        "server_cpu_us_per_push": cpu_per_push,
        "server_cpu_us_per_delivered": cpu_per_delivered,
        "latency_ms": adapter::latency_json(&hist),
        "storm": storm_json,
        "server_stages_ms": breakdown,
    });
    println!("{json}");
    if lost > 0 || errors > 0 {
        bail!("{lost} messages lost, {errors} API errors");
    }
    Ok(())
}
