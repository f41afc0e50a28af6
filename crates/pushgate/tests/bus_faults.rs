//! The bus's own NATS client against a real `nats-server` under fault injection: TLS,
//! credentials, server discovery, a connection cut in the middle of a frame, a server
//! frozen past the point of giving up on it, and a node cut off as a slow consumer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::nats::{free_port, node, start_node, CuttingProxy, NatsServer};
use common::{push_ok, received, Client, Gateway};
use serde_json::{json, Value};

fn ws(gw: &Gateway, uid: &str) -> Client {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?uid={uid}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

fn subscribed(gw: &Gateway, n: usize) {
    assert!(
        gw.eventually(Duration::from_secs(10), |g| {
            g.metric("pushgate_bus_subscriptions") == n as f64
        }),
        "expected {n} subscriptions, have {}",
        gw.metric("pushgate_bus_subscriptions")
    );
}

fn ready_again(gw: &Gateway, within: Duration) {
    assert!(
        gw.eventually(within, |g| g.control_get("/readyz").0 == 200),
        "readyz never recovered"
    );
}

/// A directory of its own under the target directory, for generated files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bus_faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is not installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate it signed for 127.0.0.1: `ca.pem`, `server.pem`, `server.key`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pushgate test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[test]
fn tls_to_nats_with_a_private_ca() {
    let dir = scratch("tls");
    certificates(&dir);
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let port = free_port();
    let _nats = NatsServer::start_with(
        port,
        &[
            "--tls",
            "--tlscert",
            &path("server.pem"),
            "--tlskey",
            &path("server.key"),
        ],
    );
    let url = format!("tls://127.0.0.1:{port}");
    let ca = path("ca.pem");
    let a = node(&url, "a", &["--nats-tls-ca", &ca]);
    // A nats:// URL to a server that requires TLS gets TLS too.
    let b = node(
        &format!("nats://127.0.0.1:{port}"),
        "b",
        &["--nats-tls-ca", &ca],
    );
    // Not trusting the CA (the system's roots): never connected, never ready.
    let untrusting = start_node(&url, "c", &[]);
    let mut bob = ws(&b, "bob");
    subscribed(&b, 2);
    subscribed(&a, 1);
    push_ok(&a, json!({"to": ["bob"], "data": 1}));
    assert_eq!(received(&mut bob, 400), [json!(1)]);
    assert_eq!(untrusting.metric("pushgate_bus_connects_total"), 0.0);
    assert_eq!(untrusting.control_get("/readyz").0, 503);
    // A CA file that is not one is refused at start.
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--nats", &url, "--nats-tls-ca", &path("junk.pem")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn credentials_in_the_url() {
    let port = free_port();
    let _nats = NatsServer::start_with(port, &["--auth", "s3cret"]);
    let a = node(&format!("nats://s3cret@127.0.0.1:{port}"), "a", &[]);
    let wrong = start_node(&format!("nats://guess@127.0.0.1:{port}"), "w", &[]);
    let mut alice = ws(&a, "alice");
    subscribed(&a, 2);
    let upport = free_port();
    let _userpass = NatsServer::start_with(upport, &["--user", "gw", "--pass", "p@ss"]);
    let b = node(&format!("nats://gw:p%40ss@127.0.0.1:{upport}"), "b", &[]);
    assert_eq!(wrong.metric("pushgate_bus_connects_total"), 0.0);
    assert_eq!(wrong.control_get("/readyz").0, 503);
    push_ok(&a, json!({"to": ["alice"], "data": 1}));
    assert_eq!(received(&mut alice, 200), [json!(1)]);
    assert_eq!(b.metric("pushgate_bus_connects_total"), 1.0);
}

/// Given one server of a two-server NATS cluster, a node learns the other from the
/// server's INFO and moves to it when the first dies; a dead address first in `--nats`
/// is skipped.
#[test]
fn discovers_the_rest_of_the_nats_cluster() {
    let (p1, p2, c1, c2) = (free_port(), free_port(), free_port(), free_port());
    let route = |port: u16| format!("nats://127.0.0.1:{port}");
    let mut s1 = NatsServer::start_with(
        p1,
        &[
            "--cluster",
            &route(c1),
            "--routes",
            &route(c2),
            "--cluster_name",
            "t",
        ],
    );
    let s2 = NatsServer::start_with(
        p2,
        &[
            "--cluster",
            &route(c2),
            "--routes",
            &route(c1),
            "--cluster_name",
            "t",
        ],
    );
    let a = node(&route(p1), "a", &[]);
    let b = node(&format!("{},{}", route(free_port()), route(p2)), "b", &[]);
    let mut alice = ws(&a, "alice");
    subscribed(&a, 2);
    // The route is up once a publish on the other server reaches alice.
    let mut backend = s2.client();
    let mut n = 0;
    assert!(
        a.eventually(Duration::from_secs(10), |_| {
            n += 1;
            backend.publish(
                "pushgate.user.alice",
                format!("{{\"type\":\"msg\",\"data\":{n}}}").as_bytes(),
            );
            !received(&mut alice, 100).is_empty()
        }),
        "the NATS cluster never formed"
    );
    s1.kill();
    assert!(a.eventually(Duration::from_secs(10), |g| {
        g.metric("pushgate_bus_connects_total") >= 2.0 && g.control_get("/readyz").0 == 200
    }));
    subscribed(&a, 2);
    push_ok(&b, json!({"to": ["alice"], "data": "moved"}));
    assert_eq!(received(&mut alice, 400), [json!("moved")]);
}

/// A connection cut in the middle of a frame from the server: the half frame is never
/// delivered, the node reconnects and subscribes again, and later pushes arrive once.
#[test]
fn connection_cut_mid_frame() {
    let nats = NatsServer::start();
    let proxy = CuttingProxy::start(nats.port);
    let a = node(&proxy.url(), "a", &[]);
    let mut alice = ws(&a, "alice");
    subscribed(&a, 2);
    let mut backend = nats.client();
    let big = format!("{{\"type\":\"msg\",\"data\":\"{}\"}}", "x".repeat(8000));
    for round in 1..=3 {
        proxy.cut_next_frame();
        backend.publish("pushgate.user.alice", big.as_bytes());
        assert!(
            a.eventually(Duration::from_secs(10), |g| {
                g.metric("pushgate_bus_connects_total") > round as f64
            }),
            "no reconnect after cut {round}"
        );
        ready_again(&a, Duration::from_secs(10));
        subscribed(&a, 2);
        backend.publish(
            "pushgate.user.alice",
            format!("{{\"type\":\"msg\",\"data\":{round}}}").as_bytes(),
        );
        // The cut message never arrives, in part or whole; the next one arrives once.
        assert_eq!(received(&mut alice, 400), [json!(round)]);
    }
    assert_eq!(proxy.cuts(), 3);
    assert_eq!(a.metric("pushgate_bus_invalid_total"), 0.0);
}

/// Frozen for longer than the node waits for an answer: it gives the connection up,
/// keeps trying, and is back once the server runs again.
#[test]
fn frozen_past_giving_up_then_back() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), "a", &["--bus-ping-timeout", "0.5"]);
    let mut alice = ws(&a, "alice");
    subscribed(&a, 2);
    nats.pause();
    // 4 ping timeouts without an answer drop the connection.
    assert!(a.eventually(Duration::from_secs(10), |g| {
        g.metric("pushgate_bus_disconnects_total") >= 1.0
    }));
    assert_eq!(a.control_get("/readyz").0, 503);
    nats.resume();
    ready_again(&a, Duration::from_secs(15));
    subscribed(&a, 2);
    let mut backend = nats.client();
    backend.publish("pushgate.user.alice", br#"{"type":"msg","data":1}"#);
    assert_eq!(received(&mut alice, 400), [json!(1)]);
}

/// A node that stops reading (here: the whole process stopped) while messages pour in is
/// cut off by nats-server as a slow consumer; once it runs again it reconnects,
/// subscribes again and gets what is published from then on.
#[test]
fn cut_off_as_a_slow_consumer_then_back() {
    let dir = scratch("slow");
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, "max_pending: 2097152\nwrite_deadline: \"500ms\"\n").unwrap();
    let nats = NatsServer::start_with(free_port(), &["-c", conf.to_str().unwrap()]);
    let a = node(&nats.url(), "a", &[]);
    let mut alice = ws(&a, "alice");
    // The flood goes to a user of its own, whose client never reads (the node may well
    // close it as a slow client).
    let _sink = ws(&a, "sink");
    subscribed(&a, 3);
    let stop = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &a.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    stop("-STOP");
    let mut backend = nats.client();
    // Far more than the socket buffers and the server's pending limit hold.
    let payload = format!("{{\"type\":\"msg\",\"data\":\"{}\"}}", "f".repeat(4000));
    backend.publish_burst("pushgate.user.sink", payload.as_bytes(), 5_000);
    std::thread::sleep(Duration::from_secs(1));
    stop("-CONT");
    assert!(
        a.eventually(Duration::from_secs(15), |g| {
            g.metric("pushgate_bus_disconnects_total") >= 1.0
                && g.metric("pushgate_bus_connects_total") >= 2.0
        }),
        "nats-server never cut the stopped node off"
    );
    ready_again(&a, Duration::from_secs(10));
    assert!(a.eventually(Duration::from_secs(10), |g| {
        g.metric("pushgate_bus_subscriptions") >= 2.0
    }));
    assert_eq!(received(&mut alice, 300), Vec::<Value>::new());
    backend.publish("pushgate.user.alice", br#"{"type":"msg","data":"after"}"#);
    assert_eq!(received(&mut alice, 400), [json!("after")]);
}
