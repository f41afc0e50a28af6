//! The publishing side of a scenario: requests over one keep-alive HTTP connection to the
//! server's API, pipelined when flat out or paced at a set rate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What to publish: request `i` as (path, body).
pub(crate) type MakeRequest = Box<dyn FnMut(u64) -> (String, String) + Send>;

/// Sends `count` requests over one keep-alive connection, pipelining up to `window` when
/// `rate` is 0; returns (seconds, non-2xx responses). `sent` counts requests written.
pub(crate) fn run(
    api: SocketAddr,
    count: u64,
    rate: f64,
    window: usize,
    key: Option<&str>,
    mut make: MakeRequest,
    sent: &AtomicU64,
) -> anyhow::Result<(f64, u64)> {
    let mut s = TcpStream::connect(api).context("connecting to the API")?;
    s.set_nodelay(true)?;
    let mut reader = s.try_clone()?;
    // A response that never comes ends the run instead of hanging it.
    reader.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    // Responses are read on another thread; only their status lines are counted.
    let responses = std::thread::spawn(move || -> (u64, u64) {
        let mut buf = vec![0u8; 64 * 1024];
        let (mut ok, mut bad) = (0u64, 0u64);
        let mut carry = Vec::new();
        while ok + bad < count {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            carry.extend_from_slice(&buf[..n]);
            while let Some(p) = carry.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&carry[..p]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if carry.len() < p + 4 + len {
                    break;
                }
                if head.starts_with("HTTP/1.1 2") {
                    ok += 1;
                } else {
                    bad += 1;
                }
                carry.drain(..p + 4 + len);
            }
        }
        (ok, bad)
    });
    let start = Instant::now();
    let mut batch = Vec::with_capacity(window * 160);
    let mut i = 0u64;
    while i < count {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let burst = if rate > 0.0 { 1 } else { window as u64 }.min(count - i);
        batch.clear();
        for _ in 0..burst {
            let (path, body) = make(i);
            let _ = write!(
                batch,
                "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            i += 1;
        }
        s.write_all(&batch)?;
        sent.fetch_add(burst, Ordering::Relaxed);
    }
    let secs = start.elapsed().as_secs_f64();
    let (ok, bad) = responses
        .join()
        .map_err(|_| anyhow::anyhow!("response reader panicked"))?;
    // Responses that never came count as failures too.
    Ok((secs, bad + count.saturating_sub(ok + bad)))
}
