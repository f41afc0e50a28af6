//! The node's events for the backend (docs/API.md, "Undelivered hook"): undelivered
//! notices POSTed to `--webhook-url`, and every event (connect, disconnect, undelivered)
//! published on the bus's `<prefix>.events` subject.
//!
//! The webhook sender is a thread of its own with a plain blocking HTTP/1.1 client over
//! `std::net::TcpStream` (`http://` only): events wait in a bounded queue (past it they
//! are dropped and counted), go out in batches of up to `batch` per request, signed with
//! HMAC-SHA256 of the body, and a request answered with anything but 2xx, or not at all
//! within `timeout`, is retried with exponential backoff up to `retries` times before its
//! events are counted as failed. Nothing here runs on a reactor.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use router::bus::stats::Counter;
use router::undelivered::{EventSink, Unacked};
use router::Router;
use serde_json::{json, Value};

/// The signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Pushgate-Signature";
/// First retry delay; doubled each retry, at most [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How long the sender waits for more events to fill a batch.
const LINGER: Duration = Duration::from_millis(50);
/// Largest webhook answer head read (the body is not needed).
const MAX_ANSWER: usize = 16 * 1024;

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http://host:port/path`.
    pub url: String,
    /// HMAC-SHA256 key of the signature.
    pub secret: String,
    /// Events waiting to be sent, at most.
    pub queue: usize,
    /// Events per request, at most.
    pub batch: usize,
    /// Per attempt: connect, send and answer.
    pub timeout: Duration,
    /// Retries of a failed request before its events are given up.
    pub retries: u32,
}

/// Webhook counters (`pushgate_webhook_events_total{result}`).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events delivered (answered 2xx).
    pub sent: Counter,
    /// Events given up after every retry failed.
    pub failed: Counter,
    /// Events dropped: the queue was full.
    pub dropped: Counter,
    /// Attempts that failed and were retried.
    pub retries: Counter,
}

/// Where `http://host:port/path` points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("webhook_url must start with http:// (https is not supported; put a TLS proxy in front)");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        bail!("webhook_url needs a host (and no user info): {url}");
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        path: path.to_owned(),
    })
}

/// The hex HMAC-SHA256 of `body` under `secret` (aws-lc-rs: the one crypto provider the
/// binary links, as its TLS does).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The webhook's queue, and its thread.
#[derive(Debug)]
pub struct Webhook {
    tx: Sender<Value>,
    stats: Arc<WebhookStats>,
}

impl Webhook {
    /// Starts the sender thread for `config`, posting as node `node`.
    pub fn start(config: WebhookConfig, node: String) -> anyhow::Result<Webhook> {
        let target = parse_url(&config.url)?;
        let (tx, rx) = crossbeam_channel::bounded(config.queue.max(1));
        let stats = Arc::new(WebhookStats::default());
        let s = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("pushgate-webhook".into())
            .spawn(move || {
                Poster {
                    config,
                    target,
                    node,
                    rx,
                    stats: s,
                }
                .run()
            })
            .context("starting the webhook thread")?;
        Ok(Webhook { tx, stats })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }

    /// Queues an event; never blocks (a full queue drops it, counted).
    pub fn send(&self, event: Value) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.stats.dropped.add(1),
        }
    }
}

struct Poster {
    config: WebhookConfig,
    target: Target,
    node: String,
    rx: Receiver<Value>,
    stats: Arc<WebhookStats>,
}

impl Poster {
    fn run(self) {
        while let Ok(first) = self.rx.recv() {
            let mut events = vec![first];
            let until = Instant::now() + LINGER;
            while events.len() < self.config.batch.max(1) {
                match self.rx.recv_deadline(until) {
                    Ok(e) => events.push(e),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            let body = json!({"node": self.node, "events": events}).to_string();
            let n = events.len() as u64;
            let mut delay = BACKOFF_BASE;
            let mut attempt = 0;
            loop {
                match self.post(body.as_bytes()) {
                    Ok(()) => {
                        self.stats.sent.add(n);
                        break;
                    }
                    Err(e) if attempt < self.config.retries => {
                        tracing::debug!(error = %e, attempt, "webhook attempt failed; retrying");
                        self.stats.retries.add(1);
                        attempt += 1;
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(BACKOFF_CAP);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, events = n, "webhook gave up on a batch");
                        self.stats.failed.add(n);
                        break;
                    }
                }
            }
        }
    }

    /// One attempt: Ok on a 2xx answer.
    fn post(&self, body: &[u8]) -> anyhow::Result<()> {
        let timeout = self.config.timeout;
        let addr = self
            .target
            .authority
            .to_socket_addrs()?
            .next()
            .context("webhook host has no address")?;
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let sig = signature(self.config.secret.as_bytes(), body);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{SIGNATURE_HEADER}: sha256={sig}\r\nX-Pushgate-Timestamp: {stamp}\r\nUser-Agent: pushgate\r\nConnection: close\r\n\r\n",
            self.target.path,
            self.target.authority,
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let deadline = Instant::now() + timeout;
        let mut answer = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        // The status line is all that is needed.
        while !answer.windows(2).any(|w| w == b"\r\n") {
            if Instant::now() >= deadline || answer.len() > MAX_ANSWER {
                bail!("no status line in time");
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("closed before answering");
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&answer);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("malformed status line")?;
        if !(200..300).contains(&status) {
            bail!("answered {status}");
        }
        Ok(())
    }
}

/// The node's events: undelivered notices to the webhook and the bus, connect and
/// disconnect events to the bus.
#[derive(Debug)]
pub struct Events {
    /// The webhook, when configured.
    pub webhook: Option<Webhook>,
    /// The router, for its bus (when `bus_events`).
    pub router: std::sync::Weak<Router>,
    /// Publish on `<prefix>.events`.
    pub bus_events: bool,
    /// This node's name.
    pub node: String,
    /// Events the bus did not take (down, queue full).
    pub bus_dropped: Counter,
}

impl Events {
    fn publish(&self, event: &Value) {
        if !self.bus_events {
            return;
        }
        let Some(router) = self.router.upgrade() else {
            return;
        };
        let payload = Bytes::from(event.to_string());
        if router.bus().publish_event(payload).is_err() {
            self.bus_dropped.add(1);
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventSink for Events {
    fn undelivered(&self, uid: &str, messages: Vec<Unacked>) {
        let event = json!({
            "type": "undelivered",
            "uid": uid,
            "node": self.node,
            "messages": messages,
            "at": unix_millis(),
        });
        self.publish(&event);
        if let Some(w) = &self.webhook {
            w.send(event);
        }
    }

    fn connection(&self, uid: &str, device: Option<&str>, conn: &str, opened: bool) {
        self.publish(&json!({
            "type": if opened { "connect" } else { "disconnect" },
            "uid": uid,
            "device": device.unwrap_or(router::router::DEFAULT_DEVICE),
            "node": self.node,
            "conn": conn,
            "at": unix_millis(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/hook").unwrap(),
            Target {
                authority: "127.0.0.1:9000".into(),
                path: "/hook".into()
            }
        );
        assert_eq!(
            parse_url("http://example.com").unwrap().authority,
            "example.com:80"
        );
        for bad in ["https://x/", "ftp://x", "http://", "http://u@x/"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
