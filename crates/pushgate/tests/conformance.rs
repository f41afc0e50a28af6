//! `/echo` and `/ws` against WebSocket clients nobody here wrote: Python `websockets`
//! (PyPI), Node `ws` (npm) and headless Chromium (Debian). Each covers framing across
//! length classes, fragmentation, pings, UTF-8, compression, limits and the close
//! handshake. The clients are installed by `scripts/install-test-deps.sh`; a missing one
//! fails its test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::tls::TestPki;

const LIMIT_ARGS: [&str; 2] = ["--max-message-size", "100000"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn run_client(program: &str, script: &str, tls: Option<&TestPki>) {
    let gw = common::tls::gateway(tls, &LIMIT_ARGS);
    let mut cmd = Command::new(program);
    if let Some(p) = tls {
        cmd.env("PUSHGATE_WSS_CA", &p.ca);
    }
    let out = cmd
        .arg(script)
        .arg(gw.client_addr.to_string())
        .current_dir(dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/install-test-deps.sh): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{program} {script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
    assert!(stdout.matches("PASS").count() >= 9, "{stdout}");
    if tls.is_some() {
        let full = gw.metric(r#"pushgate_tls_handshakes_total{kind="full"}"#);
        let resumed = gw.metric(r#"pushgate_tls_handshakes_total{kind="resumed"}"#);
        assert!(
            full + resumed >= 9.0,
            "every case went over TLS: {full} + {resumed}"
        );
    }
}

#[test]
fn python_websockets_client() {
    run_client("python3", "client.py", None);
}

#[test]
fn node_ws_client() {
    run_client("node", "client.mjs", None);
}

#[test]
fn python_websockets_client_over_wss() {
    run_client(
        "python3",
        "client.py",
        Some(&TestPki::new("py", "pushgate-test")),
    );
}

#[test]
fn node_ws_client_over_wss() {
    run_client(
        "node",
        "client.mjs",
        Some(&TestPki::new("node", "pushgate-test")),
    );
}

/// Serves the test page and receives its results.
fn page_server() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = std::fs::read(dir().join("page.html")).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            // Read the head, then as much body as Content-Length says.
            let (head_len, body_len) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (0, 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    break (p + 4, len);
                }
            };
            while buf.len() < head_len + body_len {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let request_line = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
            if request_line.starts_with("POST /result") {
                let body = String::from_utf8_lossy(&buf[head_len..]).into_owned();
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                let _ = tx.send(body);
            } else if request_line.starts_with("GET /page") {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    page.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&page);
            } else {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    (port, rx)
}

#[test]
fn headless_chromium() {
    chromium(None);
}

/// The browser is told to accept the test certificate: a test cannot add a CA to the
/// NSS store of the machine it runs on.
#[test]
fn headless_chromium_over_wss() {
    chromium(Some(&TestPki::new("chromium", "pushgate-test")));
}

fn chromium(tls: Option<&TestPki>) {
    let gw = common::tls::gateway(tls, &LIMIT_ARGS);
    let (port, results) = page_server();
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let profile =
        std::env::temp_dir().join(format!("pushgate-chromium-{scheme}-{}", std::process::id()));
    let url = format!(
        "http://127.0.0.1:{port}/page?ws={}&scheme={scheme}",
        gw.client_addr.port()
    );
    let mut browser = Command::new("chromium")
        .args([
            "--ignore-certificate-errors",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run chromium (run scripts/install-test-deps.sh): {e}"));
    let outcome = results.recv_timeout(Duration::from_secs(60));
    let _ = browser.kill();
    let _ = browser.wait();
    let _ = std::fs::remove_dir_all(&profile);
    let body = outcome.expect("the page never reported its results");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    println!("{body}");
    assert_eq!(cases.len(), 7, "{body}");
    let failed: Vec<_> = cases.iter().filter(|c| c["ok"] != true).collect();
    assert!(failed.is_empty(), "failed in Chromium: {failed:?}");
}
