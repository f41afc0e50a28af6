//! The fault schedule of a chaos run and how each fault is applied to the rig of
//! `deploy/local-cluster.sh` (its state file names every process, namespace, link and the
//! relay's control socket). Faults run one at a time; each is logged with its window.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::check::Event;
use super::log::EventLog;

/// One kind of fault, on node `k` (1-based) where it has a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL a gateway, start it again after `down` seconds.
    KillGateway(usize),
    /// SIGKILL a nats-server, start it again after `down` seconds.
    KillNats(usize),
    /// SIGSTOP a gateway for 5 s, then SIGCONT.
    StopGateway(usize),
    /// A gateway host's link down for 10 s: cut from NATS and from its clients.
    GatewayLinkDown(usize),
    /// The load tool's namespace cannot reach gateway k for 10 s (a blackhole route).
    ClientCut(usize),
    /// The relay between gateway k and every NATS server drops what the gateway sends
    /// for 10 s (a one-way blackhole), then resets those connections.
    NatsBlackhole(usize),
    /// SIGTERM every gateway in turn (drain), start it again once it exited.
    RollingRestart,
}

impl Fault {
    pub(crate) fn name(&self) -> String {
        match self {
            Fault::KillGateway(k) => format!("SIGKILL g{k}"),
            Fault::KillNats(k) => format!("SIGKILL n{k}"),
            Fault::StopGateway(k) => format!("SIGSTOP g{k} 5s"),
            Fault::GatewayLinkDown(k) => format!("link down g{k} 10s"),
            Fault::ClientCut(k) => format!("clients cut from g{k} 10s"),
            Fault::NatsBlackhole(k) => format!("blackhole g{k}->NATS 10s"),
            Fault::RollingRestart => "rolling SIGTERM restart".into(),
        }
    }

    /// The kind, for the report's table (targets vary between rounds).
    pub(crate) fn kind(name: &str) -> String {
        let mut k = name.to_owned();
        for i in 1..=3 {
            k = k
                .replace(&format!("g{i}"), "g*")
                .replace(&format!("n{i}"), "n*");
        }
        k
    }
}

/// Every fault kind once, targets rotated by `round`.
pub(crate) fn round(round: usize) -> Vec<Fault> {
    let k = |o: usize| (round + o) % 3 + 1;
    vec![
        Fault::KillGateway(k(0)),
        Fault::KillNats(k(1)),
        Fault::StopGateway(k(2)),
        Fault::GatewayLinkDown(k(1)),
        Fault::ClientCut(k(0)),
        Fault::NatsBlackhole(k(2)),
        Fault::RollingRestart,
    ]
}

/// The rig, from its state file.
pub(crate) struct Rig {
    pub(crate) script: std::path::PathBuf,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) state: HashMap<String, String>,
}

impl Rig {
    pub(crate) fn read(script: &Path, dir: &Path) -> Rig {
        let text = std::fs::read_to_string(dir.join("state")).unwrap_or_default();
        Rig {
            script: script.to_owned(),
            dir: dir.to_owned(),
            state: text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.state
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("no {key} in the rig's state file"))
    }

    pub(crate) fn addr(&self, key: &str, port: u16) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::new(self.get(key)?.parse()?, port))
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(&self.script).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "local-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn signal(&self, node: &str, sig: &str) -> anyhow::Result<()> {
        self.script(&["kill", &self.dir.to_string_lossy(), node, sig])
    }

    fn start(&self, node: &str) -> anyhow::Result<()> {
        self.script(&["start", &self.dir.to_string_lossy(), node])
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("ip").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn relay(&self, cmd: &str) -> anyhow::Result<()> {
        let addr: SocketAddr = self.get("RELAY_CONTROL")?.parse()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.write_all(cmd.as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        anyhow::ensure!(!answer.contains("error"), "relay {cmd:?}: {answer}");
        Ok(())
    }

    /// Whether any process runs in NODE's namespace.
    fn running(&self, node: &str) -> bool {
        let ns = std::fs::read_to_string(self.dir.join(format!("{node}.ns"))).unwrap_or_default();
        Command::new("ip")
            .args(["netns", "pids", ns.trim()])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    }

    /// Waits (at most `limit`) for gateway k's /readyz to answer 200.
    pub(crate) fn wait_ready(&self, k: usize, limit: Duration) -> bool {
        let Ok(api) = self.addr(&format!("GATEWAY_{k}_ADDR"), 8081) else {
            return false;
        };
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if get_status(api, "/readyz") == Some(200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Applies `fault` and lifts it; logs its window. Errors stop the run (the rig is
    /// not what the schedule thinks it is).
    pub(crate) fn apply(&self, fault: Fault, log: &EventLog) -> anyhow::Result<()> {
        let t = log.now();
        let sleep = |s: u64| std::thread::sleep(Duration::from_secs(s));
        match fault {
            Fault::KillGateway(k) => {
                self.signal(&format!("g{k}"), "KILL")?;
                sleep(5);
                self.start(&format!("g{k}"))?;
                self.wait_ready(k, Duration::from_secs(30));
            }
            Fault::KillNats(k) => {
                self.signal(&format!("n{k}"), "KILL")?;
                sleep(8);
                self.start(&format!("n{k}"))?;
            }
            Fault::StopGateway(k) => {
                self.signal(&format!("g{k}"), "STOP")?;
                sleep(5);
                self.signal(&format!("g{k}"), "CONT")?;
            }
            Fault::GatewayLinkDown(k) => {
                let link = self.get(&format!("GATEWAY_{k}_LINK"))?.to_owned();
                self.ip(&["link", "set", &link, "down"])?;
                sleep(10);
                self.ip(&["link", "set", &link, "up"])?;
            }
            Fault::ClientCut(k) => {
                let ns = self.get("LOAD_NS")?.to_owned();
                let target = format!("{}/32", self.get(&format!("GATEWAY_{k}_ADDR"))?);
                self.ip(&["-n", &ns, "route", "add", "blackhole", &target])?;
                sleep(10);
                self.ip(&["-n", &ns, "route", "del", "blackhole", &target])?;
            }
            Fault::NatsBlackhole(k) => {
                let routes: Vec<usize> = (0..3).map(|j| 3 * (k - 1) + j).collect();
                let on: String = routes
                    .iter()
                    .map(|r| format!("{r} blackhole up\n"))
                    .collect();
                self.relay(&on)?;
                sleep(10);
                // Bytes dropped mid-stream leave no usable connection, as a TCP timeout
                // would end it: reset, then let new connections through.
                let off: String = routes
                    .iter()
                    .map(|r| format!("{r} reset\n{r} blackhole off\n"))
                    .collect();
                self.relay(&off)?;
            }
            Fault::RollingRestart => {
                for k in 1..=3 {
                    let node = format!("g{k}");
                    self.signal(&node, "TERM")?;
                    let end = Instant::now() + Duration::from_secs(30);
                    while self.running(&node) && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    anyhow::ensure!(!self.running(&node), "{node} did not exit on SIGTERM");
                    self.start(&node)?;
                    self.wait_ready(k, Duration::from_secs(30));
                }
            }
        }
        log.write(&Event::Fault {
            t,
            end: log.now(),
            name: fault.name(),
        });
        Ok(())
    }

    /// Lifts whatever a fault interrupted mid-way left (a stopped gateway, a link down,
    /// a route, a blackhole): run on the way out, errors ignored.
    pub(crate) fn heal(&self) {
        for k in 1..=3 {
            let _ = self.signal(&format!("g{k}"), "CONT");
            if let Ok(link) = self.get(&format!("GATEWAY_{k}_LINK")) {
                let _ = self.ip(&["link", "set", link, "up"]);
            }
            if let (Ok(ns), Ok(a)) = (self.get("LOAD_NS"), self.get(&format!("GATEWAY_{k}_ADDR"))) {
                let _ = self.ip(&["-n", ns, "route", "del", "blackhole", &format!("{a}/32")]);
            }
        }
        let _ = self.relay(
            &(0..9)
                .map(|r| format!("{r} blackhole off\n"))
                .collect::<String>(),
        );
    }
}

/// The status of GET `path` on `addr`, `None` on no answer within 2 s.
pub(crate) fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
