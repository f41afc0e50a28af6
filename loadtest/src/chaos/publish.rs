//! The publishers of a chaos run: pushes at a fixed rate through random nodes' APIs, each
//! with its own `id`, retried with the same `id` on 503, 504, timeouts and failed
//! connections (to a random node again) as docs/API.md tells a backend to. Every push
//! answered 200 is logged, one `Accepted` per recipient with its seq.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::check::Event;
use super::log::EventLog;

/// What the publishers came to.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Published {
    pub(crate) pushes: u64,
    pub(crate) accepted: u64,
    /// Attempts answered 503/504, timed out or refused, then retried.
    pub(crate) retries: u64,
    /// Pushes still failing when their retry time ran out (not checked).
    pub(crate) abandoned: u64,
    /// Answers other than 200/503/504 (a bug in the run or the server).
    pub(crate) refused: u64,
}

pub(crate) struct Plan<'a> {
    pub(crate) apis: &'a [SocketAddr],
    pub(crate) key: &'a str,
    pub(crate) users: usize,
    /// Recipients per push.
    pub(crate) fanout: usize,
    pub(crate) rate: f64,
    pub(crate) threads: usize,
    /// Publish until this many ms after the epoch (set when the faults are over).
    pub(crate) until_ms: &'a AtomicU64,
    /// How long one push is retried.
    pub(crate) retry_for: Duration,
}

/// Publishes per `plan` until its end; every thread sends its share of the rate.
pub(crate) fn run(plan: &Plan<'_>, log: &EventLog) -> Published {
    let counter = AtomicU64::new(0);
    let stats: Vec<Published> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..plan.threads.max(1))
            .map(|_| s.spawn(|| thread(plan, log, &counter)))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut all = Published::default();
    for p in stats {
        all.pushes += p.pushes;
        all.accepted += p.accepted;
        all.retries += p.retries;
        all.abandoned += p.abandoned;
        all.refused += p.refused;
    }
    all
}

fn thread(plan: &Plan<'_>, log: &EventLog, counter: &AtomicU64) -> Published {
    let mut out = Published::default();
    let per_thread = plan.rate / plan.threads.max(1) as f64;
    let gap = Duration::from_secs_f64(1.0 / per_thread.max(0.01));
    // Threads start spread over one gap, not in a burst.
    let mut next = Instant::now() + gap.mul_f64(fastrand::f64());
    while log.now() < plan.until_ms.load(Ordering::SeqCst) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        // A push that took long (retries) does not make the next ones burst.
        next = (next + gap).max(Instant::now() - gap);
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("p{n}");
        let mut to: Vec<String> = Vec::new();
        while to.len() < plan.fanout.min(plan.users) {
            let u = format!("c{}", fastrand::usize(..plan.users));
            if !to.contains(&u) {
                to.push(u);
            }
        }
        let body = serde_json::json!({"to": to, "data": {"n": n}, "id": id}).to_string();
        out.pushes += 1;
        let sent = log.now();
        let give_up = Instant::now() + plan.retry_for;
        loop {
            let api = plan.apis[fastrand::usize(..plan.apis.len())];
            match post(api, plan.key, &body) {
                Some((200, resp)) => {
                    let t = log.now();
                    let v: serde_json::Value = serde_json::from_str(&resp).unwrap_or_default();
                    for u in &to {
                        if let Some(seq) = v["seq"][u].as_u64() {
                            log.write(&Event::Accepted {
                                t,
                                sent,
                                user: u.clone(),
                                seq,
                                id: id.clone(),
                            });
                        }
                    }
                    out.accepted += 1;
                    break;
                }
                Some((503 | 504, _)) | None => {
                    if Instant::now() >= give_up {
                        out.abandoned += 1;
                        break;
                    }
                    out.retries += 1;
                    std::thread::sleep(Duration::from_millis(100 + fastrand::u64(..200)));
                }
                Some((status, resp)) => {
                    out.refused += 1;
                    eprintln!("chaos: push {id} answered {status}: {resp}");
                    break;
                }
            }
        }
    }
    out
}

/// One POST /v1/push on a fresh connection: (status, body), or `None` on a timeout or a
/// failed connection.
fn post(api: SocketAddr, key: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!(
        "POST /v1/push HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    // Read the head, then Content-Length bytes: no waiting for the server to close.
    let mut resp = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if resp.len() >= end + 4 + len {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&resp[end + 4..end + 4 + len]).into_owned();
                return Some((status, body));
            }
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        resp.extend_from_slice(&chunk[..n]);
    }
}
