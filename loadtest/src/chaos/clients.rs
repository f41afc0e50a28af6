//! `pushgate-load chaos-clients`: the devices of a chaos run, one mio loop. Each device
//! connects to a random node (as a load balancer would send it), acks what it receives,
//! checks its connection with pings, and on losing it reconnects to a random node after
//! the backoff its last `welcome` advised, resuming with `since`. Every delivery, drop
//! and welcome goes to the event log for the checker.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use protocol::{Message, OpCode};

use super::check::Event;
use super::log::EventLog;
use crate::wsclient::{Phase, WsConn};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The nodes' client addresses (ip:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) nodes: Vec<SocketAddr>,
    /// Users (c<first>.. c<first+users-1>), each with `--devices` devices.
    #[arg(long)]
    pub(crate) users: usize,
    #[arg(long, default_value_t = 0)]
    pub(crate) first: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) devices: usize,
    /// New connections per second at the start.
    #[arg(long, default_value_t = 2000)]
    pub(crate) connect_rate: u64,
    /// A connection silent this long (no pong to the pings sent every second, no
    /// message) is counted dead; also the longest wait for `welcome`.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) dead_ms: u64,
    /// The run's epoch (Unix ms) every process's event times count from.
    #[arg(long)]
    pub(crate) epoch_ms: u64,
    /// Stop at this many ms after the epoch.
    #[arg(long)]
    pub(crate) until_ms: u64,
    /// Stop once this file exists (the driver's end of the run).
    #[arg(long)]
    pub(crate) stop_file: Option<std::path::PathBuf>,
    /// Event log (JSON lines).
    #[arg(long)]
    pub(crate) log: std::path::PathBuf,
}

/// The reconnect advice of a `welcome`.
#[derive(Debug, Clone, Copy)]
struct Advice {
    base_ms: f64,
    factor: f64,
    jitter: f64,
    cap_ms: f64,
}

impl Default for Advice {
    fn default() -> Self {
        Advice {
            base_ms: 250.0,
            factor: 2.0,
            jitter: 0.5,
            cap_ms: 5000.0,
        }
    }
}

impl Advice {
    fn delay(&self, attempt: u32) -> Duration {
        let raw = (self.base_ms * self.factor.powi(attempt.min(16) as i32)).min(self.cap_ms);
        let j = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_millis((raw * j).max(0.0) as u64)
    }
}

struct Device {
    user: String,
    device: String,
    conn: Option<WsConn>,
    node: usize,
    welcomed: bool,
    /// Highest seq received: `since` on the next connection.
    last: u64,
    acked: u64,
    /// The replay was incomplete: close and resume again.
    gap_pending: bool,
    advice: Advice,
    attempt: u32,
    next_try: Instant,
    opened_at: Instant,
    last_heard: Instant,
    last_ping: Instant,
}

/// Runs the devices until `until_ms`; returns (deliveries, drops).
pub(crate) fn run(args: &Args) -> anyhow::Result<(u64, u64)> {
    let log = EventLog::create(&args.log, args.epoch_ms)?;
    let now = Instant::now();
    let total = args.users * args.devices.max(1);
    let gap = Duration::from_secs_f64(1.0 / args.connect_rate.max(1) as f64);
    let mut devices: Vec<Device> = (0..total)
        .map(|i| Device {
            user: format!("c{}", args.first + i / args.devices.max(1)),
            device: format!("d{}", i % args.devices.max(1)),
            conn: None,
            // The first pick moves on from here: a uniform start.
            node: fastrand::usize(..args.nodes.len().max(1)),
            welcomed: false,
            last: 0,
            acked: 0,
            gap_pending: false,
            advice: Advice::default(),
            attempt: 0,
            next_try: now + gap * i as u32,
            opened_at: now,
            last_heard: now,
            last_ping: now,
        })
        .collect();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut msgs = Vec::new();
    let mut delivered = 0u64;
    let mut drops = 0u64;
    let mut resumes_again = 0u64;
    let source: SocketAddr = "0.0.0.0:0".parse()?;
    let dead = Duration::from_millis(args.dead_ms);
    let mut last_scan = Instant::now() - Duration::from_secs(1);
    while log.now() < args.until_ms {
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(d) = devices.get_mut(i) else {
                continue;
            };
            let Some(conn) = d.conn.as_mut() else {
                continue;
            };
            msgs.clear();
            conn.drive(&mut msgs);
            let failed = conn.phase == Phase::Failed;
            for m in msgs.drain(..) {
                d.last_heard = Instant::now();
                match m {
                    Message::Text(t) => delivered += on_text(d, &t, &log),
                    Message::Ping(p) => {
                        if let Some(c) = d.conn.as_mut() {
                            c.send_frame(OpCode::Pong, &p);
                        }
                    }
                    Message::Close(_) => {
                        if let Some(c) = d.conn.as_mut() {
                            c.phase = Phase::Failed;
                        }
                    }
                    _ => {}
                }
            }
            if d.gap_pending {
                d.gap_pending = false;
                d.attempt += 1;
                if let Some(c) = d.conn.as_mut() {
                    c.phase = Phase::Failed;
                }
                resumes_again += 1;
            }
            if failed || d.conn.as_ref().is_some_and(|c| c.phase == Phase::Failed) {
                drops += u64::from(lose(d, &mut poll, &log));
            }
        }
        let now = Instant::now();
        if now - last_scan < Duration::from_millis(100) {
            continue;
        }
        last_scan = now;
        if args.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        for (i, d) in devices.iter_mut().enumerate() {
            match d.conn.as_mut() {
                None if now >= d.next_try => {
                    // A load balancer's passive health check: not the node that just
                    // failed this device, if there is another.
                    let n = args.nodes.len();
                    d.node = if n > 1 {
                        (d.node + 1 + fastrand::usize(..n - 1)) % n
                    } else {
                        0
                    };
                    let mut path = format!("/ws?uid={}&device={}", d.user, d.device);
                    if d.last > 0 {
                        path.push_str(&format!("&since={}", d.last));
                    }
                    let node = args.nodes[d.node];
                    match WsConn::connect(source, node, &node.to_string(), &path) {
                        Ok(mut c) => {
                            let ok = poll.registry().register(
                                &mut c.stream,
                                Token(i),
                                Interest::READABLE | Interest::WRITABLE,
                            );
                            if ok.is_ok() {
                                d.conn = Some(c);
                                d.opened_at = now;
                                d.last_heard = now;
                                d.last_ping = now;
                            } else {
                                d.attempt += 1;
                                d.next_try = now + d.advice.delay(d.attempt);
                            }
                        }
                        Err(_) => {
                            d.attempt += 1;
                            d.next_try = now + d.advice.delay(d.attempt);
                        }
                    }
                }
                None => {}
                Some(c) => {
                    let silent = now - d.last_heard;
                    let stuck = !d.welcomed && now - d.opened_at > dead;
                    if silent > dead || stuck {
                        c.phase = Phase::Failed;
                        drops += u64::from(lose(d, &mut poll, &log));
                        continue;
                    }
                    if c.phase == Phase::Open && now - d.last_ping >= Duration::from_secs(1) {
                        d.last_ping = now;
                        c.send_frame(OpCode::Ping, b"");
                    }
                    // Acks at most once a second per device: they are stored in the stream.
                    if d.welcomed
                        && d.last > d.acked
                        && now - d.last_ping < Duration::from_millis(150)
                    {
                        d.acked = d.last;
                        let ack = format!("{{\"type\":\"ack\",\"seq\":{}}}", d.last);
                        c.send_text(ack.as_bytes());
                    }
                }
            }
        }
    }
    log.flush()?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{{\"scenario\":\"chaos-clients\",\"devices\":{total},\"delivered\":{delivered},\"drops\":{drops},\"incomplete_replays\":{resumes_again},\"connected\":{}}}",
        devices.iter().filter(|d| d.welcomed).count()
    )?;
    Ok((delivered, drops))
}

/// Handles one text message; returns 1 for a delivery with a seq.
fn on_text(d: &mut Device, text: &[u8], log: &EventLog) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
        return 0;
    };
    match v["type"].as_str() {
        Some("welcome") => {
            d.welcomed = true;
            // An incomplete replay (`recovered: false` and `unavailable` behind it) is a
            // failed attempt: the next one backs off further, as after a refused connect.
            if v["recovered"].as_bool() != Some(false) {
                d.attempt = 0;
            }
            let r = &v["reconnect"];
            let def = Advice::default();
            d.advice = Advice {
                base_ms: r["base_ms"].as_f64().unwrap_or(def.base_ms),
                factor: r["factor"].as_f64().unwrap_or(def.factor),
                jitter: r["jitter"].as_f64().unwrap_or(def.jitter),
                cap_ms: r["cap_ms"].as_f64().unwrap_or(def.cap_ms),
            };
            log.write(&Event::Welcomed {
                t: log.now(),
                user: d.user.clone(),
                device: d.device.clone(),
                node: d.node + 1,
                recovered: v["recovered"].as_bool(),
            });
            0
        }
        // The replay after `welcome` could not be read (history unreachable in time): what
        // came of it is a prefix, so resume later, from there, elsewhere.
        Some("error") => {
            let code = v["code"].as_str().unwrap_or_default().to_owned();
            d.gap_pending |= code == "unavailable";
            log.write(&Event::Refused {
                t: log.now(),
                user: d.user.clone(),
                device: d.device.clone(),
                code,
            });
            0
        }
        // Behind an incomplete replay: not taken, it comes again with the resume.
        _ if d.gap_pending => 0,
        Some("msg") => {
            // Delivered during a NATS outage without a seq: not one the API accepted.
            let Some(seq) = v["seq"].as_u64() else {
                return 0;
            };
            d.last = d.last.max(seq);
            log.write(&Event::Delivered {
                t: log.now(),
                user: d.user.clone(),
                device: d.device.clone(),
                seq,
                id: v["id"].as_str().unwrap_or_default().to_owned(),
            });
            1
        }
        _ => 0,
    }
}

/// Closes a device's connection and schedules the next try; true when a session (a
/// welcomed connection) was lost.
fn lose(d: &mut Device, poll: &mut Poll, log: &EventLog) -> bool {
    let Some(mut c) = d.conn.take() else {
        return false;
    };
    let _ = poll.registry().deregister(&mut c.stream);
    drop(c);
    let was = d.welcomed;
    d.welcomed = false;
    if was {
        log.write(&Event::Dropped {
            t: log.now(),
            user: d.user.clone(),
            device: d.device.clone(),
        });
    } else {
        d.attempt += 1;
    }
    d.next_try = Instant::now() + d.advice.delay(d.attempt);
    was
}
