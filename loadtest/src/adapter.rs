//! What differs between servers under test, as templates: where a user subscribes, where
//! and how a push or broadcast is published, where a client echoes. `{user}` is replaced by
//! the user name, `{data}` by the JSON object carrying the send timestamp. The defaults are
//! pushgate's; `bench/compare.sh` passes nchan's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use mio::{Events, Interest, Poll, Token};

use crate::wsclient::{Phase, WsConn};

/// The templates, shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Templates {
    /// Subscribe path on the client listener.
    #[arg(long, default_value = "/ws?uid={user}")]
    pub(crate) subscribe: String,
    /// Publish-to-one-user path on the API listener.
    #[arg(long, default_value = "/v1/push")]
    pub(crate) publish: String,
    /// Publish body.
    #[arg(long, default_value = r#"{"to":["{user}"],"data":{data}}"#)]
    pub(crate) publish_body: String,
    /// Broadcast path on the API listener.
    #[arg(long, default_value = "/v1/broadcast")]
    pub(crate) broadcast: String,
    /// Broadcast body.
    #[arg(long, default_value = r#"{"data":{data}}"#)]
    pub(crate) broadcast_body: String,
    /// Echo path on the client listener: what a client sends comes back to it.
    #[arg(long, default_value = "/echo?uid={user}")]
    pub(crate) echo: String,
}

/// The server under test and its subscribers, shared by `fanout` and `broadcast`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Subscribers {
    /// Client listener of the server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) server: SocketAddr,
    /// API listener of the server.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub(crate) api: SocketAddr,
    /// Subscribers (users u0…), one connection each.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) subscribers: usize,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) drain: f64,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) timeout: f64,
    /// Source addresses for subscribers, 127.0.0.2 onwards.
    #[arg(long, default_value_t = 16)]
    pub(crate) sources: u8,
    /// Bearer key for the server API.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// Server process(es) whose CPU time is measured over the publishing (repeat for a
    /// server with several processes).
    #[arg(long)]
    pub(crate) server_pid: Vec<u32>,
    /// Server-specific paths and bodies.
    #[command(flatten)]
    pub(crate) templates: Templates,
}

/// Prints the usual latency line for a histogram of microseconds.
pub(crate) fn print_latency(h: &hdrhistogram::Histogram<u64>) {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    );
}

/// The same percentiles, in milliseconds, for the JSON line.
pub(crate) fn latency_json(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    serde_json::json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": h.max() as f64 / 1000.0})
}

/// `template` with `{user}` and `{data}` filled in.
pub(crate) fn fill(template: &str, user: &str, data: &str) -> String {
    template.replace("{user}", user).replace("{data}", data)
}

/// Microseconds since the Unix epoch: the clock both ends of a loopback run share.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The unsigned integer after `"key":` in `text`, wherever the server put the data object
/// (pushgate wraps it in `{"type":"msg",...}`, nchan delivers it bare).
pub(crate) fn field_u64(text: &[u8], key: &str) -> Option<u64> {
    let needle = format!("\"{key}\":");
    let at = text
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let digits = &text[at + needle.len()..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// The source address for connection `i`: 127.0.0.2 onwards (or 127.0.<net>.2 onwards),
/// round robin over `sources`, so ephemeral ports never run out.
pub(crate) fn source(net: u8, i: usize, sources: u8) -> SocketAddr {
    let host = 2 + (i % usize::from(sources.max(1))) as u8;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, net, host)), 0)
}

/// Fails unless `connections` (plus a margin for the API and the process itself) fit in
/// the open-files limit.
pub(crate) fn check_fds(connections: usize, fd_limit: u64) -> anyhow::Result<()> {
    if connections as u64 + 64 > fd_limit {
        bail!("{connections} connections need more descriptors than the open-files limit ({fd_limit})");
    }
    Ok(())
}

/// Upgrades in flight at once while subscribers connect. All 10 000 at once overflow the
/// listen backlog (SYN retries stall connects for seconds) and a server's bound on pending
/// handshakes (pushgate evicts the oldest past `--max-pending-handshakes`): that measures
/// a reconnect storm, which is `--storm-users`' job, not the steady state.
const CONNECTING_AT_ONCE: usize = 1024;

/// Opens `n` connections to `server` at `path_template` (users `{prefix}0`…), at most
/// [`CONNECTING_AT_ONCE`] upgrading at a time, registered with a new poll, and drives them
/// until all are upgraded; fails if any is refused or `deadline` passes.
pub(crate) fn connect_all(
    server: SocketAddr,
    path_template: &str,
    prefix: &str,
    n: usize,
    sources: u8,
    deadline: Instant,
) -> anyhow::Result<(Poll, Vec<WsConn>)> {
    let mut poll = Poll::new()?;
    let host = server.to_string();
    let mut conns = Vec::with_capacity(n);
    let mut events = Events::with_capacity(4096);
    let mut open = 0;
    let mut scratch = Vec::new();
    let mut last_progress = Instant::now();
    while open < n {
        while conns.len() < n && conns.len() - open < CONNECTING_AT_ONCE {
            let i = conns.len();
            let path = fill(path_template, &format!("{prefix}{i}"), "");
            let mut c = WsConn::connect(source(0, i, sources), server, &host, &path)?;
            poll.registry().register(
                &mut c.stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            conns.push(c);
        }
        if Instant::now() > deadline {
            bail!("only {open} of {n} connections upgraded");
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            let before = c.phase;
            c.drive(&mut scratch);
            if before != Phase::Open && c.phase == Phase::Open {
                open += 1;
            }
            if c.phase == Phase::Failed {
                bail!("connection {} was refused or closed", ev.token().0);
            }
        }
        scratch.clear();
        if last_progress.elapsed() > Duration::from_secs(5) {
            eprintln!("  {open}/{n} connections upgraded");
            last_progress = Instant::now();
        }
    }
    Ok((poll, conns))
}

/// A progress line on stderr every few seconds of a long run.
#[derive(Debug)]
pub(crate) struct Progress {
    what: &'static str,
    start: Instant,
    last: Instant,
}

impl Progress {
    pub(crate) fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Progress {
            what,
            start: now,
            last: now,
        }
    }

    /// Prints `count` if five seconds passed since the last line.
    pub(crate) fn tick(&mut self, count: u64) {
        if self.last.elapsed() >= Duration::from_secs(5) {
            self.last = Instant::now();
            eprintln!(
                "  {:.0}s: {count} {}",
                self.start.elapsed().as_secs_f64(),
                self.what
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_fields() {
        assert_eq!(
            fill(r#"{"to":["{user}"],"data":{data}}"#, "u7", r#"{"ts":1}"#),
            r#"{"to":["u7"],"data":{"ts":1}}"#
        );
        let wrapped = br#"{"type":"msg","from":"server","data":{"ts":1234,"seq":5}}"#;
        assert_eq!(field_u64(wrapped, "ts"), Some(1234));
        assert_eq!(field_u64(wrapped, "seq"), Some(5));
        assert_eq!(field_u64(br#"{"ts":99}"#, "ts"), Some(99));
        assert_eq!(field_u64(br#"{"type":"welcome"}"#, "ts"), None);
        assert_eq!(source(1, 3, 2).to_string(), "127.0.1.3:0");
    }
}
