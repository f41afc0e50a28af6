//! The tokio peer for `bench/compare.sh`: the push gateway a competent Rust user writes in
//! a day with axum (WebSockets through tokio-tungstenite), a `DashMap` registry and one
//! bounded channel per connection. It speaks the part of pushgate's contract the
//! benchmark uses:
//!
//! - `GET /ws?uid=U`: WebSocket; `{"type":"welcome",...}` first, then every message pushed
//!   to U or broadcast.
//! - `POST /v1/push {"to":["u1",...],"data":<json>}`: `{"type":"msg","from":"api","data":..}`
//!   to every connection of each user.
//! - `POST /v1/broadcast {"data":<json>}`: the same to every connection.
//! - `GET /echo`: every text or binary message comes back.
//!
//! Every route is served on both `--listen` and `--control`, so the load tool's two-port
//! layout works unchanged.
//!
//! `tokio-peer [--listen ADDR] [--control ADDR] [--threads N] [--queue N]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Every open `/ws` connection, by user: a user may hold several (devices, tabs).
struct Hub {
    users: DashMap<String, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>,
    next_conn: AtomicU64,
    /// Outbound messages a connection may have queued before it counts as a slow consumer
    /// and is dropped (pushgate closes those with 1013).
    queue: usize,
}

impl Hub {
    fn register(&self, uid: &str) -> (u64, mpsc::Receiver<Utf8Bytes>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        self.users.entry(uid.to_owned()).or_default().push((id, tx));
        (id, rx)
    }

    fn unregister(&self, uid: &str, id: u64) {
        // remove_if so a concurrent register for the same user is never lost.
        if let Some(mut conns) = self.users.get_mut(uid) {
            conns.retain(|(c, _)| *c != id);
        }
        self.users.remove_if(uid, |_, conns| conns.is_empty());
    }

    /// Queues `msg` on every connection of `uid`; returns how many took it. A full queue
    /// drops the message for that connection: its writer is behind, and closing it is the
    /// writer's business once the channel is dropped.
    fn deliver(&self, uid: &str, msg: &Utf8Bytes) -> usize {
        let Some(conns) = self.users.get(uid) else {
            return 0;
        };
        conns
            .iter()
            .filter(|(_, tx)| tx.try_send(msg.clone()).is_ok())
            .count()
    }

    fn broadcast(&self, msg: &Utf8Bytes) -> usize {
        let mut n = 0;
        for entry in self.users.iter() {
            n += entry
                .value()
                .iter()
                .filter(|(_, tx)| tx.try_send(msg.clone()).is_ok())
                .count();
        }
        n
    }
}

/// tungstenite's default read buffer is 128 KiB, allocated and touched per connection
/// (140 KB of resident memory each with 15 000 idle clients); anyone who holds many
/// connections and looks at memory shrinks it. Client messages here are small.
const READ_BUFFER: usize = 4096;

#[derive(Deserialize)]
struct WsQuery {
    uid: Option<String>,
}

#[derive(Deserialize)]
struct PushRequest {
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    from: Option<String>,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct BroadcastRequest {
    data: Box<RawValue>,
}

/// What a client receives; `data` is passed through without being re-parsed.
#[derive(Serialize)]
struct Delivered<'a> {
    r#type: &'static str,
    from: &'a str,
    data: &'a RawValue,
}

fn delivered(from: &str, data: &RawValue) -> Utf8Bytes {
    let text = serde_json::to_string(&Delivered {
        r#type: "msg",
        from,
        data,
    })
    .unwrap_or_default();
    Utf8Bytes::from(text)
}

async fn ws(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(uid) = q.uid.filter(|u| !u.is_empty()) else {
        return (StatusCode::UNAUTHORIZED, "uid required").into_response();
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| session(hub, uid, socket))
}

/// One `/ws` connection: a writer draining the connection's queue and a reader waiting
/// for the client to go away (pings are answered by tungstenite itself).
async fn session(hub: Arc<Hub>, uid: String, socket: WebSocket) {
    let (id, mut rx) = hub.register(&uid);
    let (mut sink, mut stream) = socket.split();
    let welcome = format!(
        r#"{{"type":"welcome","conn":"{id}","uid":{},"heartbeat":25}}"#,
        serde_json::to_string(&uid).unwrap_or_default()
    );
    let writer = tokio::spawn(async move {
        if sink.send(Message::Text(welcome.into())).await.is_err() {
            return;
        }
        // Everything already queued goes out in one flush: one write syscall for a
        // burst rather than one per message.
        while let Some(msg) = rx.recv().await {
            if sink.feed(Message::Text(msg)).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if sink.feed(Message::Text(msg)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Close(_) = msg {
            break;
        }
    }
    hub.unregister(&uid, id);
    writer.abort();
}

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(|mut socket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        if socket.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        })
}

async fn push(State(hub): State<Arc<Hub>>, Json(req): Json<PushRequest>) -> impl IntoResponse {
    let msg = delivered(req.from.as_deref().unwrap_or("api"), &req.data);
    let mut delivered = 0;
    for uid in &req.to {
        delivered += hub.deliver(uid, &msg);
    }
    Json(serde_json::json!({"ok": true, "delivered": delivered}))
}

async fn broadcast(
    State(hub): State<Arc<Hub>>,
    Json(req): Json<BroadcastRequest>,
) -> impl IntoResponse {
    let msg = delivered("api", &req.data);
    let delivered = hub.broadcast(&msg);
    Json(serde_json::json!({"ok": true, "delivered": delivered}))
}

struct Config {
    listen: SocketAddr,
    control: SocketAddr,
    threads: usize,
    queue: usize,
}

fn parse_args() -> Config {
    let mut c = Config {
        listen: "0.0.0.0:8080".parse().unwrap(),
        control: "127.0.0.1:8081".parse().unwrap(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        queue: 1024,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => c.listen = value.parse().expect("--listen ADDR"),
            "--control" => c.control = value.parse().expect("--control ADDR"),
            "--threads" => c.threads = value.parse().expect("--threads N"),
            "--queue" => c.queue = value.parse().expect("--queue N"),
            _ => panic!("unknown flag {flag}"),
        }
    }
    c
}

/// A listener with a backlog that absorbs 10 000 clients connecting at once (tokio's
/// `TcpListener::bind` uses 1024).
fn listener(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(4096).unwrap()
}

fn main() {
    let config = parse_args();
    let hub = Arc::new(Hub {
        users: DashMap::new(),
        next_conn: AtomicU64::new(0),
        queue: config.queue,
    });
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/echo", get(echo))
        .route("/v1/push", post(push))
        .route("/v1/broadcast", post(broadcast))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(hub);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let client = listener(config.listen);
            let control = listener(config.control);
            eprintln!(
                "tokio-peer started: {} (client), {} (control), {} worker threads",
                config.listen, config.control, config.threads
            );
            // Small frames and responses must not wait for Nagle.
            let nodelay = |tcp: &mut tokio::net::TcpStream| {
                let _ = tcp.set_nodelay(true);
            };
            let a = axum::serve(client.tap_io(nodelay), app.clone());
            let b = axum::serve(control.tap_io(nodelay), app);
            tokio::select! {
                r = a => r.unwrap(),
                r = b => r.unwrap(),
                _ = tokio::signal::ctrl_c() => {}
            }
        });
}
