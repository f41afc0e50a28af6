//! `deploy/local-cluster.sh`: three NATS JetStream servers and three gateways, each in its
//! own network namespace on a bridge. A push through node 1 reaches a client on node 3;
//! with node 3 and a NATS server killed, a push waits in the replicated history and the
//! client, back on node 2 with `since`, gets exactly what it missed. Then `stop` leaves
//! nothing behind. Needs root and network namespaces (skipped, saying why, without them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{post, Client, Read_};
use protocol::Message;
use serde_json::json;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local-cluster.sh")
}

/// Why network namespaces cannot be made here, if they cannot.
fn namespaces_unavailable() -> Option<String> {
    let probe = format!("pgcprobe{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(e) => Some(format!("no ip command: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            None
        }
    }
}

/// The running `up`, torn down with `stop` however the test ends.
struct Cluster {
    up: Child,
    dir: PathBuf,
    state: HashMap<String, String>,
}

impl Cluster {
    fn up() -> Cluster {
        let dir =
            std::env::temp_dir().join(format!("pushgate-local-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::fs::File::create(dir.join("up.out")).unwrap();
        let up = Command::new(script())
            .args(["up", "--dir", dir.to_str().unwrap()])
            .args(["--bin", env!("CARGO_BIN_EXE_pushgate")])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut cluster = Cluster {
            up,
            dir,
            state: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            cluster.read_state();
            if cluster.state.get("READY").is_some_and(|r| r == "1") {
                return cluster;
            }
            let output = std::fs::read_to_string(cluster.dir.join("up.out")).unwrap_or_default();
            if let Some(status) = cluster.up.try_wait().unwrap() {
                panic!("local-cluster.sh up exited ({status}):\n{output}");
            }
            assert!(Instant::now() < deadline, "not up in 45 s:\n{output}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn read_state(&mut self) {
        let text = std::fs::read_to_string(self.dir.join("state")).unwrap_or_default();
        self.state = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    }

    fn get(&self, key: &str) -> &str {
        self.state
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the state file"))
    }

    fn addr(&self, key: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.get(key).parse().unwrap(), port)
    }

    fn script(&self, args: &[&str]) {
        let out = Command::new(script())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "local-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&mut self) {
        self.script(&["stop", self.dir.to_str().unwrap()]);
        let _ = self.up.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The nodes' own words, before the directory goes.
            let mut logs: Vec<_> = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log" || x == "out"))
                .collect();
            logs.sort();
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last {} lines)", log.display(), tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if self.up.try_wait().ok().flatten().is_none() {
            let _ = Command::new(script())
                .args(["stop", self.dir.to_str().unwrap()])
                .status();
            let _ = self.up.kill();
            let _ = self.up.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn msg(c: &mut Client) -> serde_json::Value {
    match c.read(Duration::from_secs(5)) {
        Read_::Msg(Message::Text(t)) => serde_json::from_slice(&t).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A push answered 200, retried with the same `id` (so delivered once) while JetStream
/// elects a new leader for the stream.
fn push(control: SocketAddr, key: &str, body: &serde_json::Value) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, resp) = post(control, "/v1/push", &body.to_string(), Some(key));
        if status == 200 {
            return serde_json::from_str(&resp).unwrap();
        }
        assert!(Instant::now() < deadline, "{status} {resp}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn push_across_hosts_and_resume_after_losing_a_node() {
    if let Some(why) = namespaces_unavailable() {
        println!("SKIPPED: network namespaces are unavailable here ({why})");
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::up();
    let run = cluster.get("RUN").to_owned();
    let key = cluster.get("API_KEY").to_owned();
    let g1 = cluster.addr("GATEWAY_1_ADDR", 8081);
    let mut bob = Client::connect(cluster.addr("GATEWAY_3_ADDR", 8080), "/ws?uid=bob");
    let welcome = msg(&mut bob);
    assert_eq!(
        (welcome["type"].as_str(), welcome["seq"].as_u64()),
        (Some("welcome"), Some(0))
    );

    // Node 1 to a client on node 3, over the bus between namespaces.
    let first = push(g1, &key, &json!({"to": ["bob"], "data": "one", "id": "p1"}));
    assert_eq!(first["seq"]["bob"], 1, "{first}");
    let m = msg(&mut bob);
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str()),
        (Some(1), Some("one")),
        "{m}"
    );

    // Node 3 crashes, and so does one NATS server: the history stream keeps 2 of its 3
    // copies and takes the next push.
    cluster.script(&["kill", cluster.dir.to_str().unwrap(), "g3"]);
    assert_eq!(bob.read(Duration::from_secs(5)), Read_::Eof);
    cluster.script(&["kill", cluster.dir.to_str().unwrap(), "n3"]);
    let second = push(g1, &key, &json!({"to": ["bob"], "data": "two", "id": "p2"}));
    assert_eq!(second["seq"]["bob"], 2, "{second}");

    // Bob comes back on node 2 with what he has seen: the one he missed, once.
    let mut bob = Client::connect(cluster.addr("GATEWAY_2_ADDR", 8080), "/ws?uid=bob&since=1");
    let welcome = msg(&mut bob);
    assert_eq!(welcome["seq"].as_u64(), Some(2), "{welcome}");
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let m = msg(&mut bob);
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str()),
        (Some(2), Some("two")),
        "{m}"
    );
    assert_eq!(
        bob.read(Duration::from_millis(500)),
        Read_::Timeout,
        "nothing else"
    );
    drop(bob);

    // Node 3 started again (as a drill would) serves the whole history.
    cluster.script(&["start", cluster.dir.to_str().unwrap(), "g3"]);
    let g3 = cluster.addr("GATEWAY_3_ADDR", 8081);
    // Generous: a loaded CI machine has been seen to take over 20 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready, and with the history stream found (or its welcome would carry no seq).
    let metrics = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    while std::net::TcpStream::connect(g3).is_err()
        || !common::http(g3, metrics)
            .1
            .contains("\npushgate_history_cluster_ready 1")
    {
        assert!(Instant::now() < deadline, "g3 did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut bob = Client::connect(cluster.addr("GATEWAY_3_ADDR", 8080), "/ws?uid=bob&since=0");
    let welcome = msg(&mut bob);
    assert_eq!(welcome["seq"].as_u64(), Some(2), "{welcome}");
    let replay: Vec<_> = (0..2).map(|_| msg(&mut bob)["data"].clone()).collect();
    assert_eq!(replay, [json!("one"), json!("two")]);
    drop(bob);

    // stop removes every namespace, link and process it made.
    cluster.stop();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&run));
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&run));
    println!("local cluster test took {:?}", started.elapsed());
}
