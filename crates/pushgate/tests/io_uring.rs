//! The I/O backend: `--io` picks it and `/metrics` names it; and the io_uring paths that
//! the shared suite (run on both backends by CI) does not reach on purpose: receive
//! buffers running out, and an idle connection holding no read buffer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::{Duration, Instant};

use common::{connect_from, Client, Gateway};
use protocol::{Message, OpCode};

#[test]
fn metrics_name_the_backend_chosen_with_io() {
    for (flag, name) in [("epoll", "epoll"), ("io-uring", "io_uring")] {
        let gw = Gateway::dev(&["--io", flag]);
        assert_eq!(
            gw.metric(&format!("pushgate_io_backend{{backend=\"{name}\"}}")),
            1.0
        );
        let mut c = Client::connect(gw.client_addr, "/echo");
        c.send_text("hello");
        assert_eq!(c.recv(), Message::Text(bytes::Bytes::from_static(b"hello")));
    }
}

#[test]
fn an_unknown_backend_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "--dev",
            "--io",
            "kqueue",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("io must be"));
}

/// Two 64-byte receive buffers per reactor for 40 clients sending at once: receives find
/// the ring empty (`ENOBUFS`), are re-armed, and every byte still arrives in order.
#[test]
fn receives_recover_when_every_buffer_is_taken() {
    let gw = Gateway::dev(&[
        "--io",
        "io-uring",
        "--io-uring-buffers",
        "2",
        "--io-uring-buffer-size",
        "64",
    ]);
    let mut clients: Vec<Client> = (0..40)
        .map(|i| {
            let s = connect_from([127, 0, 0, 2 + (i % 8) as u8], gw.client_addr);
            Client::connect_with(s, "/echo", "")
        })
        .collect();
    for round in 0..5u8 {
        let payloads: Vec<Vec<u8>> = (0..clients.len())
            .map(|i| (0..4096).map(|j| (i + j) as u8 ^ round).collect())
            .collect();
        for (c, p) in clients.iter_mut().zip(&payloads) {
            c.send(OpCode::Binary, p);
        }
        for (c, p) in clients.iter_mut().zip(&payloads) {
            assert_eq!(c.recv(), Message::Binary(bytes::Bytes::from(p.clone())));
        }
    }
    assert!(
        gw.metric_sum("pushgate_io_uring_recv_buffers_exhausted_total") >= 1.0,
        "the test must exhaust the buffer ring to mean anything"
    );
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Resident memory per idle upgraded connection on one backend.
fn idle_rss_per_connection(backend: &str, n: usize) -> f64 {
    let gw = Gateway::dev(&["--io", backend, "--reactors", "2"]);
    // Warm up: touch the reactors' shared memory first (slabs; on io_uring every buffer of
    // the receive ring, which the kernel takes in turn), so what follows is per connection.
    let mut warm: Vec<Client> = (0..64)
        .map(|i| {
            let s = connect_from([127, 0, 1, 2 + (i % 50) as u8], gw.client_addr);
            Client::connect_with(s, "/echo", "")
        })
        .collect();
    for _ in 0..40 {
        for c in warm.iter_mut() {
            c.send(OpCode::Binary, &[7; 100]);
        }
        for c in warm.iter_mut() {
            let _ = c.recv();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_bytes(gw.pid());
    let start = Instant::now();
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "connecting took too long"
        );
        let s = connect_from([127, 0, 2, 2 + (i % 200) as u8], gw.client_addr);
        idle.push(Client::connect_with(s, &format!("/ws?uid=u{i}"), ""));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_bytes(gw.pid());
    drop(warm);
    (after.saturating_sub(before)) as f64 / n as f64
}

/// An idle connection owns no read buffer on io_uring (receives draw from the reactor's
/// ring): it costs no more resident memory than on epoll.
#[test]
fn an_idle_io_uring_connection_costs_no_more_than_on_epoll() {
    let n = 2000;
    let epoll = idle_rss_per_connection("epoll", n);
    let uring = idle_rss_per_connection("io-uring", n);
    eprintln!("idle RSS per connection: epoll {epoll:.0} B, io_uring {uring:.0} B");
    // A per-connection 4 KiB read buffer would show as +4096; allocator noise is far less.
    assert!(
        uring <= epoll + 512.0,
        "io_uring {uring:.0} B per idle connection vs epoll {epoll:.0} B"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metric_sum(control: std::net::SocketAddr, name: &str) -> Option<f64> {
    let raw = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut s = std::net::TcpStream::connect(control).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    use std::io::{Read, Write};
    s.write_all(raw.as_bytes()).ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let lines: Vec<&str> = body.lines().filter(|l| l.starts_with(name)).collect();
    if lines.is_empty() {
        return None;
    }
    Some(
        lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Out of descriptors, `accept` fails (`EMFILE`): counted, retried after a back-off, and
/// once clients leave, new ones are served again — on both backends (on io_uring the
/// multishot accept ends with the error and is re-armed after the back-off).
#[test]
fn out_of_descriptors_accepting_backs_off_and_recovers() {
    for backend in ["epoll", "io-uring"] {
        let (port, control_port) = (free_port(), free_port());
        let client: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let control: std::net::SocketAddr = ([127, 0, 0, 1], control_port).into();
        let mut child = std::process::Command::new("prlimit")
            .arg("--nofile=96:96")
            .arg(env!("CARGO_BIN_EXE_pushgate"))
            .args([
                "--dev",
                "--listen",
                &client.to_string(),
                "--control",
                &control.to_string(),
            ])
            .args([
                "--io",
                backend,
                "--reactors",
                "2",
                "--max-connections",
                "1000",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prlimit (util-linux) runs the gateway");
        let start = Instant::now();
        while metric_sum(control, "pushgate_accept_errors_total").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{backend}: no start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // More sockets than the gateway has descriptors left: the rest wait in the backlog.
        let mut held: Vec<std::net::TcpStream> = (0..100)
            .map(|i| connect_from([127, 0, 3, 2 + (i % 50) as u8], client))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        // Leaving frees descriptors (the gateway closes handshakes whose client hung up).
        held.truncate(10);
        let start = Instant::now();
        let errors = loop {
            if let Some(n) = metric_sum(control, "pushgate_accept_errors_total") {
                break n;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{backend}: no scrape"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(errors >= 1.0, "{backend}: the descriptors never ran out");
        // Accepting resumed: a new client is served.
        let start = Instant::now();
        loop {
            let s = connect_from([127, 0, 4, 2], client);
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let (mut c, status) = Client::try_connect(s, "/echo", "");
            if status == 101 {
                c.send_text("back");
                assert_eq!(c.recv(), Message::Text(bytes::Bytes::from_static(b"back")));
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{backend}: never served again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(held);
        let _ = child.kill();
        let _ = child.wait();
    }
}
