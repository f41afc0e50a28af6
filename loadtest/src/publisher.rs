//! The publishing side of a scenario: requests to the server's API over keep-alive HTTP
//! connections. By default several connections, each waiting for a response before its
//! next request, as backends do; optionally one pipelined connection (the old default,
//! which measures how fast one socket can be fed rather than how backends call).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// What to publish: request `i` as (path, body). Called from every publisher thread.
pub(crate) type MakeRequest = Arc<dyn Fn(u64) -> (String, String) + Send + Sync>;

/// How requests reach the server, shared by `fanout` and `broadcast`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Publishers {
    /// Concurrent API connections, each sending its share of the requests and waiting for
    /// each response before the next.
    #[arg(long, default_value_t = 16)]
    pub(crate) publishers: usize,
    /// One API connection with up to `--window` requests in flight instead.
    #[arg(long)]
    pub(crate) pipelined: bool,
    /// Requests in flight on the pipelined connection when flat out.
    #[arg(long, default_value_t = 256)]
    pub(crate) window: usize,
}

/// What a run of requests came to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// From the first request to the last one written.
    pub(crate) secs: f64,
    /// Non-2xx responses, and requests that got none.
    pub(crate) failed: u64,
}

/// Sends `count` requests made by `make` (`i` = 0, 1, …, in order of due time) at `rate`
/// per second in all (0: flat out). `sent` counts requests written.
pub(crate) fn run(
    api: SocketAddr,
    how: &Publishers,
    count: u64,
    rate: f64,
    key: Option<&str>,
    make: &MakeRequest,
    sent: &AtomicU64,
) -> anyhow::Result<Outcome> {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    if how.pipelined {
        return pipelined(api, count, rate, how.window.max(1), &auth, make, sent);
    }
    let n = how.publishers.max(1) as u64;
    let start = Instant::now();
    let failed = std::thread::scope(|scope| -> anyhow::Result<u64> {
        let threads: Vec<_> = (0..n)
            .map(|p| {
                let auth = auth.as_str();
                scope.spawn(move || closed_loop(api, p, n, count, rate, start, auth, make, sent))
            })
            .collect();
        let mut failed = 0;
        for t in threads {
            failed += t
                .join()
                .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
        }
        Ok(failed)
    })?;
    Ok(Outcome {
        secs: start.elapsed().as_secs_f64(),
        failed,
    })
}

/// Publisher `p` of `n`: requests p, p+n, p+2n, … on one connection, each written once the
/// previous response is in and its due time has come. Returns its failures; a connection
/// that breaks mid-run fails the rest of its share rather than the whole run.
#[allow(clippy::too_many_arguments)]
fn closed_loop(
    api: SocketAddr,
    p: u64,
    n: u64,
    count: u64,
    rate: f64,
    start: Instant,
    auth: &str,
    make: &MakeRequest,
    sent: &AtomicU64,
) -> anyhow::Result<u64> {
    let mut s = connect(api)?;
    let mut responses = Responses::default();
    let mut request = Vec::with_capacity(256);
    let mut failed = 0u64;
    let mut i = p;
    while i < count {
        pace(start, i, rate);
        let (path, body) = make(i);
        request.clear();
        write_request(&mut request, &path, auth, &body);
        let answered = s
            .write_all(&request)
            .and_then(|()| {
                sent.fetch_add(1, Ordering::Relaxed);
                responses.next(&mut s)
            })
            .map(|ok| failed += u64::from(!ok));
        if let Err(e) = answered {
            let rest = (count - i).div_ceil(n);
            eprintln!("  publisher {p}: {e}; {rest} requests count as failed");
            return Ok(failed + rest);
        }
        i += n;
    }
    Ok(failed)
}

/// One connection, up to `window` requests in flight when flat out; responses are read on
/// another thread.
fn pipelined(
    api: SocketAddr,
    count: u64,
    rate: f64,
    window: usize,
    auth: &str,
    make: &MakeRequest,
    sent: &AtomicU64,
) -> anyhow::Result<Outcome> {
    let mut s = connect(api)?;
    let mut reader = s.try_clone()?;
    let responses = std::thread::spawn(move || -> (u64, u64) {
        let mut r = Responses::default();
        let (mut ok, mut bad) = (0u64, 0u64);
        while ok + bad < count {
            match r.next(&mut reader) {
                Ok(true) => ok += 1,
                Ok(false) => bad += 1,
                Err(_) => break,
            }
        }
        (ok, bad)
    });
    let start = Instant::now();
    let mut batch = Vec::with_capacity(window * 160);
    let mut i = 0u64;
    while i < count {
        pace(start, i, rate);
        let burst = if rate > 0.0 { 1 } else { window as u64 }.min(count - i);
        batch.clear();
        for _ in 0..burst {
            let (path, body) = make(i);
            write_request(&mut batch, &path, auth, &body);
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
    Ok(Outcome {
        secs,
        failed: bad + count.saturating_sub(ok + bad),
    })
}

fn connect(api: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(api).with_context(|| format!("connecting to the API at {api}"))?;
    s.set_nodelay(true)?;
    // A response that never comes ends the run instead of hanging it.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Sleeps until request `i` is due at `rate` per second from `start` (never at rate 0).
fn pace(start: Instant, i: u64, rate: f64) {
    if rate > 0.0 {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

fn write_request(out: &mut Vec<u8>, path: &str, auth: &str, body: &str) {
    // Content-Type because frameworks (axum's `Json`) insist on it, as backends send it.
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// HTTP/1.1 responses read off a stream, one at a time; bodies are skipped by
/// `Content-Length` (every server under test sends one).
#[derive(Debug, Default)]
struct Responses {
    carry: Vec<u8>,
}

impl Responses {
    /// Reads until one whole response is in; `true` for a 2xx status.
    fn next(&mut self, s: &mut impl Read) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(ok) = self.take_one() {
                return Ok(ok);
            }
            match s.read(&mut buf)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.carry.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn take_one(&mut self) -> Option<bool> {
        let p = self.carry.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.carry[..p]);
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        if self.carry.len() < p + 4 + len {
            return None;
        }
        let ok = head.starts_with("HTTP/1.1 2");
        self.carry.drain(..p + 4 + len);
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_split_anywhere() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}HTTP/1.1 400 Bad\r\nContent-Length: 2\r\n\r\n{}";
        for cut in 1..two.len() {
            let mut r = Responses::default();
            r.carry.extend_from_slice(&two[..cut]);
            let mut rest = io::Cursor::new(&two[cut..]);
            assert!(r.next(&mut rest).is_ok_and(|ok| ok));
            assert!(r.next(&mut rest).is_ok_and(|ok| !ok));
        }
    }
}
