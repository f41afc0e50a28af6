//! `recover`: how long a client that missed M messages takes to get them back (issue 15).
//!
//! For each of U users: connect once with `?uid=` (the time to `welcome` is the baseline:
//! a connection with nothing to recover, same run, same server), close; push M messages
//! to the user through the API while it is away (keep-alive, one connection); reconnect
//! with `since=<the seq its first welcome carried>` and time the upgrade request to the
//! M-th replayed message. Every replayed message is checked: M of them, seqs consecutive,
//! `recovered:true`; anything else fails the run. Users go one after another, so the
//! figure is the latency of one recovery on an otherwise idle server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use protocol::Message;

use crate::adapter;
use crate::wsclient::{Phase, WsConn};

/// Arguments of the `recover` scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Client listener of the server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Control listener (server API) of the server.
    #[arg(long, default_value = "127.0.0.1:8081")]
    api: SocketAddr,
    /// Users, one after another (users rc0…).
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Messages each user misses while away.
    #[arg(long, default_value_t = 100)]
    missed: usize,
    /// Bearer key for the server API.
    #[arg(long)]
    api_key: Option<String>,
}

/// One connection until `want` text messages arrived; returns them and the time taken.
fn session(
    server: SocketAddr,
    path: &str,
    want: usize,
    deadline: Instant,
) -> anyhow::Result<(Vec<Vec<u8>>, Duration)> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(16);
    let start = Instant::now();
    let mut conn = WsConn::connect(adapter::source(0, 0, 1), server, "localhost", path)?;
    poll.registry().register(
        &mut conn.stream,
        Token(0),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    let mut got = Vec::new();
    let mut msgs = Vec::new();
    while got.len() < want {
        if Instant::now() > deadline {
            bail!("{path}: {} of {want} messages by the deadline", got.len());
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        conn.drive(&mut msgs);
        if conn.phase == Phase::Failed {
            bail!("{path}: connection failed after {} messages", got.len());
        }
        for m in msgs.drain(..) {
            if let Message::Text(t) = m {
                got.push(t.to_vec());
            }
        }
    }
    Ok((got, start.elapsed()))
}

/// Pushes `data` to `user` over a keep-alive API connection; fails unless 200.
fn push(api: &mut TcpStream, auth: &str, user: &str, i: usize) -> anyhow::Result<()> {
    let body = format!(r#"{{"to":["{user}"],"data":{{"i":{i}}}}}"#);
    write!(
        api,
        "POST /v1/push HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if api.read(&mut byte)? == 0 {
            bail!("the API closed the connection");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    api.read_exact(&mut body)?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("push answered {}", head.lines().next().unwrap_or_default());
    }
    Ok(())
}

pub(crate) fn run(args: &Args, fd_limit: u64) -> anyhow::Result<()> {
    adapter::check_fds(4, fd_limit)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let auth = args
        .api_key
        .as_ref()
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let mut api = TcpStream::connect(args.api).context("connecting to the API")?;
    api.set_nodelay(true)?;
    api.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut baseline = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut recovery = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let run_id = adapter::now_micros();
    for u in 0..args.users {
        let user = format!("rc{run_id}x{u}");
        let (welcome, took) = session(args.server, &format!("/ws?uid={user}"), 1, deadline)?;
        let since = adapter::field_u64(&welcome[0], "seq").unwrap_or(0);
        let _ = baseline.record(took.as_micros().max(1) as u64);
        for i in 0..args.missed {
            push(&mut api, &auth, &user, i)?;
        }
        // welcome, then the missed messages
        let path = format!("/ws?uid={user}&since={since}");
        let (got, took) = session(args.server, &path, 1 + args.missed, deadline)?;
        let welcome = &got[0];
        if !welcome.windows(16).any(|w| w == b"\"recovered\":true") {
            bail!(
                "{user}: welcome without recovered:true: {}",
                String::from_utf8_lossy(welcome)
            );
        }
        for (k, m) in got[1..].iter().enumerate() {
            if adapter::field_u64(m, "seq") != Some(since + 1 + k as u64) {
                bail!(
                    "{user}: message {k} out of order: {}",
                    String::from_utf8_lossy(m)
                );
            }
        }
        let _ = recovery.record(took.as_micros().max(1) as u64);
    }
    println!(
        "recover: {} users, {} missed messages each, one user at a time",
        args.users, args.missed
    );
    println!("connect with nothing to recover (to welcome):");
    adapter::print_latency(&baseline);
    println!(
        "connect and recover {} messages (to the last one):",
        args.missed
    );
    adapter::print_latency(&recovery);
    let json = serde_json::json!({
        "scenario": "recover",
        "users": args.users,
        "missed": args.missed,
        "connect_ms": adapter::latency_json(&baseline),
        "recover_ms": adapter::latency_json(&recovery),
    });
    println!("{json}");
    Ok(())
}
