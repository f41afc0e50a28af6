//! A real `nats-server` (the release scripts/install-test-deps.sh installs) on a free
//! port, stopped by PID.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// Arguments besides the address and port (TLS, auth, cluster, a config file).
    extra: Vec<String>,
}

/// A JetStream server with its own store directory (removed on drop).
pub struct Js {
    pub nats: NatsServer,
    pub dir: std::path::PathBuf,
}

impl Js {
    pub fn start() -> Js {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pushgate-js-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let nats = NatsServer::start_with(free_port(), &["-js", "-sd", dir.to_str().unwrap()]);
        Js { nats, dir }
    }
}

impl Drop for Js {
    fn drop(&mut self) {
        self.nats.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// Starts a server on a free port. A missing `nats-server` fails the test: the README
    /// test command installs it.
    pub fn start() -> NatsServer {
        NatsServer::start_on(free_port())
    }

    /// Starts a server on `port`.
    pub fn start_on(port: u16) -> NatsServer {
        NatsServer::start_with(port, &[])
    }

    /// Starts a server on `port` with more arguments (`--auth`, `--tls`, `-c file`...).
    pub fn start_with(port: u16, extra: &[&str]) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL ends a stopped process too; SIGCONT only keeps a paused server from
            // lingering if the kill fails.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server with SIGSTOP: its sockets stay open and nothing answers, as with
    /// a wedged server or a black-holed route.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("nats-server is not running")
            .id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Starts the server again on the same port, waiting until it accepts.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed: run scripts/install-test-deps.sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw protocol connection, as a backend publishing straight onto the bus would
    /// have.
    pub fn client(&self) -> RawNats {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut c = RawNats {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        let mut info = String::new();
        c.reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        c.stream
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":false}\r\n")
            .unwrap();
        c.sync();
        c
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The NATS text protocol, by hand: what a backend in any language can do.
pub struct RawNats {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RawNats {
    /// `PUB subject` with `payload`.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        let mut msg = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"\r\n");
        self.stream.write_all(&msg).unwrap();
        self.sync();
    }

    /// `PUB subject reply` with `payload`: a request.
    pub fn request(&mut self, subject: &str, reply: &str, payload: &[u8]) {
        let mut msg = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"\r\n");
        self.stream.write_all(&msg).unwrap();
        self.sync();
    }

    /// `HPUB subject` with `headers` and `payload`.
    pub fn publish_with_headers(
        &mut self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) {
        let mut h = String::from("NATS/1.0\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        let mut msg =
            format!("HPUB {subject} {} {}\r\n", h.len(), h.len() + payload.len()).into_bytes();
        msg.extend_from_slice(h.as_bytes());
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"\r\n");
        self.stream.write_all(&msg).unwrap();
        self.sync();
    }

    /// `count` times `PUB subject` with `payload`, in one write, then one round trip.
    pub fn publish_burst(&mut self, subject: &str, payload: &[u8], count: usize) {
        let mut one = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        one.extend_from_slice(payload);
        one.extend_from_slice(b"\r\n");
        let all: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * count)
            .collect();
        self.stream.write_all(&all).unwrap();
        self.sync();
    }

    /// PING, then wait for PONG: the server has processed everything sent before.
    fn sync(&mut self) {
        self.stream.write_all(b"PING\r\n").unwrap();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line.starts_with("PONG") {
                return;
            }
            assert!(!line.starts_with("-ERR"), "nats-server said {line}");
            if line.starts_with("PING") {
                self.stream.write_all(b"PONG\r\n").unwrap();
            }
        }
    }
}

/// A TCP proxy between a node and NATS that can cut the connection in the middle of a
/// frame the server is sending, as a dying load balancer or network path would.
pub struct CuttingProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    /// Forwards every connection to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, n, s) = (Arc::clone(&cut), Arc::clone(&cuts), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (up2, down2) = (up.try_clone().unwrap(), down.try_clone().unwrap());
                // Node to server: plain forwarding.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &down2, &mut &up2);
                    let _ = up2.shutdown(std::net::Shutdown::Both);
                });
                let (c, n) = (Arc::clone(&c), Arc::clone(&n));
                // Server to node: half of the first chunk after a cut is asked for, then
                // both sides closed.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(k) = (&up).read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        if k > 1 && c.swap(false, Ordering::Relaxed) {
                            let _ = (&down).write_all(&buf[..k / 2]);
                            n.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        if (&down).write_all(&buf[..k]).is_err() {
                            break;
                        }
                    }
                    let _ = down.shutdown(std::net::Shutdown::Both);
                    let _ = up.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy {
            port,
            cut,
            cuts,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts the next frame the server sends through the proxy in half.
    pub fn cut_next_frame(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Frames cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A development gateway node on the bus at `nats` (2 reactors), with `extra` arguments,
/// not waited for.
pub fn start_node(nats: &str, id: &str, extra: &[&str]) -> super::Gateway {
    let mut args = vec!["--nats", nats, "--node-id", id, "--reactors", "2"];
    args.extend_from_slice(extra);
    super::Gateway::dev(&args)
}

/// [`start_node`], once it is ready (`/readyz` 200: connected to the bus).
pub fn node(nats: &str, id: &str, extra: &[&str]) -> super::Gateway {
    let gw = start_node(nats, id, extra);
    assert!(
        gw.eventually(Duration::from_secs(10), |g| g.control_get("/readyz").0
            == 200),
        "node {id} never became ready"
    );
    gw
}
