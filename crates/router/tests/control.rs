//! Control traffic between nodes over the bus, against a real `nats-server`: handlers on
//! fixed subjects, requests with replies to the node's inbox, across a NATS restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use router::{BusError, ClusterBus, NatsBus, NatsConfig, Router};

struct Nats {
    child: Child,
    port: u16,
}

impl Nats {
    fn start_on(port: u16) -> Nats {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed: run scripts/install-test-deps.sh");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { child, port }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bus(port: u16, node: &str) -> Arc<NatsBus> {
    Arc::new(
        NatsBus::new(NatsConfig {
            url: format!("nats://127.0.0.1:{port}"),
            tls_ca: None,
            prefix: "t".into(),
            node_id: node.into(),
            queue_depth: 64,
            unsubscribe_delay: Duration::from_secs(1),
            max_lingering: 16,
            ping_timeout: Duration::from_secs(1),
            history: None,
        })
        .unwrap(),
    )
}

fn started(b: &Arc<NatsBus>) {
    NatsBus::start(b, Arc::new(Router::new())).unwrap();
}

fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Asks `subject` through `b`; every reply within `window` (as text), or `None` if the
/// request could not be sent.
fn ask(b: &NatsBus, subject: &str, window: Duration) -> Option<(Vec<String>, Duration)> {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let mut replies = Vec::new();
    let sent = b.request(
        subject,
        Bytes::from_static(b"who"),
        window,
        Box::new(move |m| {
            let _ = tx.send(m.map(|m| String::from_utf8_lossy(m.payload).into_owned()));
        }),
    );
    if sent.is_err() {
        return None;
    }
    loop {
        match rx.recv_timeout(window + Duration::from_secs(5)).unwrap() {
            Some(r) => replies.push(r),
            None => return Some((replies, t0.elapsed())),
        }
    }
}

/// Every node answers a presence-style query; a node's own handler never sees its own
/// request (the connection is `no_echo`); nobody listening ends a request at once.
#[test]
fn requests_reach_handlers_on_other_nodes_and_survive_a_restart() {
    let port = free_port();
    let mut nats = Nats::start_on(port);
    let nodes: Vec<Arc<NatsBus>> = ["a", "b", "c"].iter().map(|n| bus(nats.port, n)).collect();
    for (i, n) in nodes.iter().enumerate() {
        let name = format!("node-{i}");
        // Registered before start for one, after for the others: both work.
        if i > 0 {
            started(n);
        }
        n.handle(
            "t.ctl.presence",
            Box::new(move |bus, m| {
                let reply = m.reply.expect("a request has a reply subject");
                assert_eq!(m.payload, b"who");
                bus.publish_message(reply, None, Bytes::from(name.clone()))
                    .unwrap();
            }),
        )
        .unwrap();
        if i == 0 {
            started(n);
        }
    }
    for n in &nodes {
        assert!(until(Duration::from_secs(10), || n.is_ready()));
    }
    let window = Duration::from_millis(500);
    let want = |mut got: Vec<String>| {
        got.sort();
        got == ["node-1", "node-2"]
    };
    // Handlers subscribe asynchronously: ask until both others answer.
    assert!(until(Duration::from_secs(10), || {
        ask(&nodes[0], "t.ctl.presence", window).is_some_and(|(r, _)| want(r))
    }));
    let (none, took) = ask(&nodes[0], "t.ctl.nobody", Duration::from_secs(5)).unwrap();
    assert!(none.is_empty());
    assert!(took < Duration::from_secs(2), "no-responders took {took:?}");

    // Handlers are subscribed again after a restart of NATS on the same port.
    drop(nats);
    assert!(until(Duration::from_secs(10), || !nodes[0].is_ready()));
    assert_eq!(
        nodes[0].request("t.ctl.presence", Bytes::new(), window, Box::new(|_| {})),
        Err(BusError::Disconnected)
    );
    nats = Nats::start_on(port);
    for n in &nodes {
        assert!(until(Duration::from_secs(15), || n.is_ready()));
    }
    assert!(until(Duration::from_secs(10), || {
        ask(&nodes[0], "t.ctl.presence", window).is_some_and(|(r, _)| want(r))
    }));
    for n in &nodes {
        n.stop();
    }
    drop(nats);
}
