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
        let gw = Gateway::start(&["--io", flag]);
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
    let gw = Gateway::start(&[
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
    let gw = Gateway::start(&["--io", backend, "--reactors", "2"]);
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
