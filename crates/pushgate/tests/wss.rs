//! `wss://` end to end: pushes to a Python (OpenSSL) client, a certificate reload on
//! SIGHUP in the middle of that traffic, both TLS versions, ALPN and ticket resumption,
//! and the inputs that must cost a counter and nothing else: plain HTTP on the TLS port,
//! a handshake cut short, a silent socket, a flood of garbage hellos, bad files at start.
//! The conformance suites (tests/conformance.rs) also run whole over `wss://`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::TestPki;
use common::{post, Gateway};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/wss.py")
}

fn probe(addr: SocketAddr, pki: &TestPki) -> String {
    let out = Command::new("python3")
        .arg(script())
        .args(["probe", &addr.to_string()])
        .arg(&pki.ca)
        .output()
        .expect("python3 (run scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "probe failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn hup(gw: &Gateway) {
    let ok = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

#[test]
fn pushes_reach_a_wss_client_through_a_certificate_reload() {
    let pki = TestPki::new("reload", "pushgate-first");
    let gw = pki.gateway(&["--history-size", "0"]);
    const PUSHES: usize = 300;
    let mut sub = Command::new("python3")
        .arg(script())
        .args(["subscribe", &gw.client_addr.to_string()])
        .arg(&pki.ca)
        .args(["wss-user", &PUSHES.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (run scripts/install-test-deps.sh)");
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert_eq!(ready, "ready pushgate-first");
    for i in 0..PUSHES {
        if i == PUSHES / 2 {
            // A new pair mid-traffic: the open connection keeps its session.
            pki.issue(&pki.cert, &pki.key, "pushgate-second", false);
            hup(&gw);
        }
        let body = serde_json::json!({"to": ["wss-user"], "data": {"i": i}}).to_string();
        let (status, resp) = post(gw.control_addr, "/v1/push", &body, None);
        assert_eq!(status, 200, "{resp}");
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = lines.next().unwrap().unwrap();
    assert_eq!(got, format!("got {PUSHES}"), "the wss client lost pushes");
    assert!(sub.wait().unwrap().success());
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric(r#"pushgate_tls_reloads_total{result="ok"}"#)
        == 1.0));
    // New connections get the new certificate.
    let out = probe(gw.client_addr, &pki);
    assert!(out.contains("cn pushgate-second"), "{out}");
    // A pair that does not load leaves the last good one in service.
    std::fs::write(&pki.key, "not a key").unwrap();
    hup(&gw);
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric(r#"pushgate_tls_reloads_total{result="failed"}"#)
        == 1.0));
    let out = probe(gw.client_addr, &pki);
    assert!(out.contains("cn pushgate-second"), "{out}");
}

#[test]
fn both_versions_alpn_and_ticket_resumption() {
    let pki = TestPki::new("versions", "pushgate-test");
    let gw = pki.gateway(&[]);
    let out = probe(gw.client_addr, &pki);
    assert!(out.contains("v12 ok TLSv1.2"), "{out}");
    assert!(out.contains("v13 ok TLSv1.3"), "{out}");
    assert!(out.contains("alpn http/1.1"), "{out}");
    assert!(out.contains("resumed True"), "{out}");
    assert!(gw.metric(r#"pushgate_tls_handshakes_total{kind="resumed"}"#) >= 1.0);
    assert!(gw.metric(r#"pushgate_tls_handshakes_total{kind="full"}"#) >= 3.0);
    let not_after = gw.metric("pushgate_tls_cert_not_after_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(not_after > now, "{not_after} {now}");
}

/// Reads until the server closes the connection (EOF or reset), within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn plain_http_truncated_and_silent_handshakes_cost_a_counter_each() {
    let pki = TestPki::new("bad", "pushgate-test");
    let gw = pki.gateway(&["--handshake-timeout", "1"]);
    // Plain HTTP on the TLS port: an alert, then the connection is closed.
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    s.write_all(b"GET /ws?uid=a HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric(r#"pushgate_tls_failures_total{cause="not_tls"}"#)
        == 1.0));
    // The first bytes of a client hello, then the client hangs up.
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .unwrap();
    drop(s);
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric(r#"pushgate_tls_failures_total{cause="truncated"}"#)
        == 1.0));
    // A client that never says anything is closed by the handshake timeout.
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric(r#"pushgate_timeouts_total{kind="handshake"}"#)
        >= 1.0));
    // Each cause is logged once.
    let logged = gw
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("TLS connection failed"))
        .count();
    assert_eq!(logged, 2, "one line per cause");
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric_sum("pushgate_connections")
        == 0.0));
}

#[test]
fn a_flood_of_garbage_hellos_leaves_real_clients_served() {
    let pki = TestPki::new("flood", "pushgate-test");
    let gw = pki.gateway(&[]);
    const FLOOD: usize = 300;
    let addr = gw.client_addr;
    let flood = std::thread::spawn(move || {
        let mut socks = Vec::new();
        for i in 0..FLOOD {
            let Ok(mut s) = TcpStream::connect(addr) else {
                continue;
            };
            // A record header claiming a handshake, then junk.
            let junk: Vec<u8> = (0..200u32).map(|j| (i as u32 * 31 + j) as u8).collect();
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8]);
            let _ = s.write_all(&junk);
            socks.push(s);
        }
        socks
    });
    // Meanwhile a real client completes handshakes and upgrades.
    let out = probe(gw.client_addr, &pki);
    assert!(out.contains("resumed True"), "{out}");
    let socks = flood.join().unwrap();
    assert_eq!(socks.len(), FLOOD);
    // Junk that names a long handshake message waits for the rest; the rest failed.
    drop(socks);
    // Each connection counted once: failed at once, or hung up mid-handshake.
    assert!(gw.eventually(Duration::from_secs(5), |g| g
        .metric_sum("pushgate_tls_failures_total")
        == FLOOD as f64));
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric_sum("pushgate_connections")
        == 0.0));
    let (status, _) = gw.control_get("/healthz");
    assert_eq!(status, 200);
}

fn start_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let reason: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pushgate:"))
        .collect();
    assert_eq!(reason.len(), 1, "one line of reason: {stderr}");
    reason[0].to_owned()
}

#[test]
fn bad_files_at_start_stop_the_node_with_a_reason_and_an_expired_one_warns() {
    let pki = TestPki::new("start", "pushgate-test");
    let cert = pki.cert.display().to_string();
    let missing = pki.dir.join("missing.pem").display().to_string();
    let reason = start_fails(&["--tls-cert", &cert, "--tls-key", &missing]);
    assert!(reason.contains("missing.pem"), "{reason}");
    let reason = start_fails(&["--tls-cert", &cert]);
    assert!(reason.contains("tls_key"), "{reason}");
    // A key that is not the certificate's.
    let other = pki.dir.join("other");
    pki.issue(
        &other.with_extension("crt"),
        &other.with_extension("key"),
        "x",
        false,
    );
    let other_key = other.with_extension("key").display().to_string();
    let reason = start_fails(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert!(reason.contains("TLS"), "{reason}");
    // An expired certificate starts (clients decide), with a warning and the gauge.
    pki.issue(&pki.cert, &pki.key, "pushgate-expired", true);
    let gw = pki.gateway(&[]);
    assert!(gw
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("the TLS certificate is expired")));
    assert!(gw.metric("pushgate_tls_cert_not_after_seconds") < 1_700_000_000.0);
}

fn python(args: &[&str]) -> std::process::Child {
    Command::new("python3")
        .arg(script())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (run scripts/install-test-deps.sh)")
}

#[test]
fn a_protocol_error_closes_with_its_code_then_close_notify_before_the_fin() {
    let pki = TestPki::new("protoerr", "pushgate-test");
    let gw = pki.gateway(&[]);
    let ca = pki.ca.display().to_string();
    let out = python(&["protoerr", &gw.client_addr.to_string(), &ca])
        .wait_with_output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("close 1002"), "{out}");
    assert!(
        out.contains("tls close_notify"),
        "the stream was truncated: {out}"
    );
}

#[test]
fn a_slow_wss_reader_is_closed_with_1013_and_counted() {
    let pki = TestPki::new("slow", "pushgate-test");
    let gw = pki.gateway(&[
        "--history-size",
        "0",
        "--max-outbound-bytes",
        "65536",
        "--close-timeout",
        "10",
    ]);
    let ca = pki.ca.display().to_string();
    let mut reader = python(&["stall", &gw.client_addr.to_string(), &ca, "slow-user", "2"]);
    let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // More than the kernel's socket buffers take (loopback autotunes them to megabytes).
    let big = "x".repeat(60_000);
    for i in 0..400 {
        let body = serde_json::json!({"to": ["slow-user"], "data": {"i": i, "pad": big}});
        let (status, resp) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
        assert_eq!(status, 200, "{resp}");
        if gw.metric("pushgate_slow_consumer_closes_total") > 0.0 {
            break;
        }
    }
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric("pushgate_slow_consumer_closes_total")
        == 1.0));
    let verdict = lines.next().unwrap().unwrap();
    assert_eq!(verdict, "closed 1013", "the reader saw {verdict}");
    assert!(reader.wait().unwrap().success());
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric_sum("pushgate_connections")
        == 0.0));
}
