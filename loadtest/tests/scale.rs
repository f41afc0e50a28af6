//! `pushgate-load scale` end to end against a small fake cluster in this process: two
//! "nodes" (a client listener and an API listener each) sharing one user table, as nodes
//! on a bus would. Checks that the processes' reports add up (connections, pushes,
//! broadcasts, storm) and that a push the cluster swallows is reported lost and fails the
//! run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The users' connections, shared by both fake nodes.
#[derive(Default)]
struct Cluster {
    users: Mutex<HashMap<String, Arc<Mutex<TcpStream>>>>,
    pushes: AtomicU64,
    /// Push number (1-based) to answer 200 for and not deliver; 0: none.
    swallow: u64,
}

/// A server text frame (unmasked).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn serve_clients(listener: TcpListener, cluster: Arc<Cluster>) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let cluster = Arc::clone(&cluster);
        std::thread::spawn(move || {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).map_or(true, |n| n == 0) {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let Some(uid) = head
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.split("uid=").nth(1))
                .map(|u| u.split('&').next().unwrap_or(u).to_owned())
            else {
                return;
            };
            if s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .is_ok()
            {
                cluster
                    .users
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(uid, Arc::new(Mutex::new(s)));
            }
        });
    }
}

fn send_to(conn: &Arc<Mutex<TcpStream>>, f: &[u8]) {
    let _ = conn.lock().unwrap_or_else(|e| e.into_inner()).write_all(f);
}

fn serve_api(listener: TcpListener, cluster: Arc<Cluster>) {
    for stream in listener.incoming() {
        let Ok(s) = stream else { continue };
        let cluster = Arc::clone(&cluster);
        std::thread::spawn(move || {
            let mut w = match s.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            let mut r = BufReader::new(s);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).map_or(true, |n| n == 0) {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).map_or(true, |n| n == 0) {
                        return;
                    }
                    if h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let msg = serde_json::json!({"type": "msg", "from": "svc", "data": v["data"]});
                let f = frame(msg.to_string().as_bytes());
                if path == "/v1/push" {
                    let n = cluster.pushes.fetch_add(1, Ordering::Relaxed) + 1;
                    let to = v["to"][0].as_str().unwrap_or("").to_owned();
                    let conn = cluster
                        .users
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&to)
                        .cloned();
                    if let (Some(c), false) = (conn, n == cluster.swallow) {
                        send_to(&c, &f);
                    }
                } else {
                    let all: Vec<_> = cluster
                        .users
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    for c in &all {
                        send_to(c, &f);
                    }
                }
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}");
            }
        });
    }
}

/// Two fake nodes; returns their `--target` values.
fn fake_cluster(swallow: u64) -> String {
    let cluster = Arc::new(Cluster {
        swallow,
        ..Cluster::default()
    });
    let mut targets = Vec::new();
    for _ in 0..2 {
        let client = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let api = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = |l: &TcpListener| l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        targets.push(format!("{}/{}", addr(&client), addr(&api)));
        let c = Arc::clone(&cluster);
        std::thread::spawn(move || serve_clients(client, c));
        let c = Arc::clone(&cluster);
        std::thread::spawn(move || serve_api(api, c));
    }
    targets.join(",")
}

fn run_scale(targets: &str, extra: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate-load"))
        .args([
            "scale",
            "--target",
            targets,
            "--processes",
            "2",
            "--connections",
            "200",
        ])
        .args([
            "--sources",
            "4",
            "--rate",
            "1000",
            "--push-secs",
            "1",
            "--publishers",
            "1",
        ])
        .args(["--drain", "2", "--hold", "0", "--timeout", "60"])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("running pushgate-load: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON line:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    (out.status.success(), v)
}

#[test]
fn reports_of_two_processes_add_up() {
    let targets = fake_cluster(0);
    let (ok, v) = run_scale(
        &targets,
        &[
            "--broadcasts",
            "2",
            "--broadcast-interval",
            "0.3",
            "--storm-users",
            "20",
        ],
    );
    assert!(ok, "{v}");
    assert_eq!(v["open"], 200, "{v}");
    assert_eq!(v["per_node"], serde_json::json!([100, 100]), "{v}");
    let p = &v["pushes"];
    assert_eq!(p["sent"], 1000, "{p}");
    assert_eq!(p["delivered"], 1000, "{p}");
    assert_eq!(p["lost"], 0, "{p}");
    assert_eq!(p["local_sent"], 500, "{p}");
    assert_eq!(p["crossing_sent"], 500, "{p}");
    assert_eq!(p["latency_ms"]["count"], 1000, "merged histogram: {p}");
    let b = &v["broadcast"];
    assert_eq!(b["delivered"], 400, "{b}");
    assert_eq!(b["to_all_ms"]["count"], 2, "{b}");
    let s = &v["storm"];
    assert_eq!(
        (s["users"].as_u64(), s["reopened"].as_u64()),
        (Some(20), Some(20)),
        "{s}"
    );
    assert_eq!(s["verify"]["delivered"], 20, "{s}");
    assert_eq!(s["verify"]["lost"], 0, "{s}");
}

#[test]
fn a_swallowed_push_is_lost_and_fails_the_run() {
    let targets = fake_cluster(7);
    let (ok, v) = run_scale(&targets, &["--broadcasts", "0", "--storm-users", "0"]);
    assert!(!ok, "{v}");
    assert_eq!(v["pushes"]["lost"], 1, "{v}");
    assert_eq!(v["pushes"]["delivered"], 999, "{v}");
    let problems = v["problems"].to_string();
    assert!(problems.contains("1 lost"), "{problems}");
}
