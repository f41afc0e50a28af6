//! Test harness: the real `pushgate` binary started on free ports and stopped by PID, and
//! a small blocking WebSocket client built on the protocol crate's client side.
#![allow(dead_code, unreachable_pub)] // Each test file uses a different part of the harness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod nats;
pub mod tls;

use bytes::BytesMut;
use protocol::frame::{client_frame, client_message};
use protocol::{CloseCode, Decoder, DecoderConfig, FrameHeader, Message, OpCode};

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub client_addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// A development node (`--dev`: `?uid=` trusted, `/echo` open, no API key needed):
    /// [`Gateway::start`] with `--dev` before `args`.
    pub fn dev(args: &[&str]) -> Gateway {
        Gateway::start(&[&["--dev"], args].concat())
    }

    /// Starts the binary with JSON logs on free ports, plus `args`. Without `--dev` the
    /// node needs a JWT key among them.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_env(args, &[])
    }

    /// [`Gateway::start`] with environment variables set for the process.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        // Free loopback ports, unless `args` name the listeners.
        let mut own = vec!["--log-json", "true"];
        for flag in ["--listen", "--control"] {
            if !args.contains(&flag) {
                own.extend([flag, "127.0.0.1:0"]);
            }
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .envs(env.iter().copied())
            .args(own)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pushgate");
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("pushgate started") {
                    let _ = tx.send(line.clone());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("pushgate did not start");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        let field = |k: &str| {
            v["fields"][k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .parse()
                .unwrap()
        };
        Gateway {
            client_addr: field("listen"),
            control_addr: field("control"),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET on the control listener: (status, body).
    pub fn control_get(&self, path: &str) -> (u16, String) {
        http(
            self.control_addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    }

    /// The value of one metric sample, e.g. `pushgate_timeouts_total{kind="idle"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (status, body) = self.control_get("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("no sample {sample} in\n{body}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Sum of a metric over all its label sets.
    pub fn metric_sum(&self, name: &str) -> f64 {
        let (_, body) = self.control_get("/metrics");
        body.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `f` until it is true or `limit` passes.
    pub fn eventually(&self, limit: Duration, mut f: impl FnMut(&Gateway) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        f(self)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A delivered message without its place in the user's stream (`id`, `seq`), for
/// suites that check routing; delivery.rs checks those fields.
pub fn without_seq(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("seq");
    }
    v
}

/// A push through `/v1/push` that must be answered `{"ok":true}` (history off).
pub fn push_ok(gw: &Gateway, body: serde_json::Value) {
    let (status, resp) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
    assert_eq!((status, resp.as_str()), (200, "{\"ok\":true}"));
}

/// The `data` of every message `c` receives until it has been quiet for `quiet_ms`.
pub fn received(c: &mut Client, quiet_ms: u64) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        match c.read(Duration::from_millis(quiet_ms)) {
            Read_::Timeout => return out,
            Read_::Msg(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
                assert_eq!(v["type"], "msg", "{v}");
                out.push(v["data"].clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// POSTs a JSON body to the control listener; (status, body).
pub fn post(addr: SocketAddr, path: &str, body: &str, auth: Option<&str>) -> (u16, String) {
    let auth = auth
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// One HTTP request over a fresh connection; (status, body).
pub fn http(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A TCP connection from a chosen loopback source address (127.0.0.2, ...), so tests
/// with many connections never run out of ephemeral ports and per-IP limits can be told
/// apart.
pub fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A connection with a 4 KiB receive buffer, for a client that stops reading: what the
/// server sends piles up in the server's queue, not in the kernel.
pub fn slow_socket(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// A blocking WebSocket client.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    pub response: String,
}

/// What a read ended with.
#[derive(Debug, PartialEq)]
pub enum Read_ {
    Msg(Message),
    /// The server closed the TCP connection (FIN or RST).
    Eof,
    Timeout,
}

impl Client {
    /// Upgrades on `path`; panics unless the answer is 101.
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::connect_with(TcpStream::connect(addr).unwrap(), path, "")
    }

    pub fn connect_with(stream: TcpStream, path: &str, extra_headers: &str) -> Client {
        let (c, status) = Self::try_connect(stream, path, extra_headers);
        assert_eq!(status, 101, "upgrade refused: {}", c.response);
        c
    }

    /// Sends the upgrade and reads the response head: (client, status).
    pub fn try_connect(stream: TcpStream, path: &str, extra_headers: &str) -> (Client, u16) {
        Self::try_connect_raw(stream, upgrade_request(path, extra_headers).as_bytes())
    }

    /// Sends `request` (possibly with frames behind it) and reads the response head.
    pub fn try_connect_raw(mut stream: TcpStream, request: &[u8]) -> (Client, u16) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break buf.len();
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = buf.split_to(head_end);
        let response = String::from_utf8_lossy(&head).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            Client {
                stream,
                buf,
                decoder: Decoder::new(),
                response,
            },
            status,
        )
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let f = client_message(opcode, payload, [0x11, 0x22, 0x33, 0x44]);
        self.send_raw(&f);
    }

    pub fn send_text(&mut self, s: &str) {
        self.send(OpCode::Text, s.as_bytes());
    }

    pub fn send_fragment(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let h = FrameHeader {
            fin,
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::server(opcode, 0)
        };
        self.send_raw(&client_frame(h, payload));
    }

    pub fn send_close(&mut self, code: u16) {
        self.send(OpCode::Close, &code.to_be_bytes());
    }

    /// The next message or control frame, within `limit`.
    pub fn read(&mut self, limit: Duration) -> Read_ {
        let deadline = Instant::now() + limit;
        let cfg = DecoderConfig {
            max_frame_size: 1 << 24,
            max_message_size: 1 << 24,
            ..DecoderConfig::client()
        };
        loop {
            match self.decoder.decode(&mut self.buf, &cfg, None) {
                Ok(Some(m)) => return Read_::Msg(m),
                Ok(None) => {}
                Err(e) => panic!("server sent bad frames: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read_::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Read_::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Read_::Timeout
                }
                // A signal is not the server closing the connection.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Read_::Eof,
            }
        }
    }

    /// The next frame as sent, undecoded (to inspect RSV1 and compressed payloads).
    pub fn read_raw_frame(&mut self) -> (FrameHeader, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some((h, n))) = FrameHeader::parse(&self.buf) {
                let end = n + h.payload_len as usize;
                if self.buf.len() >= end {
                    let frame = self.buf.split_to(end);
                    return (h, frame[n..].to_vec());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no frame within 5 s");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).unwrap_or(0);
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message, which must arrive within 5 s.
    pub fn recv(&mut self) -> Message {
        match self.read(Duration::from_secs(5)) {
            Read_::Msg(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub fn recv_json(&mut self) -> serde_json::Value {
        match self.recv() {
            Message::Text(t) => serde_json::from_slice(&t).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Reads until a close frame; returns its code.
    /// Reads until a close frame arrives within `limit`: its code and reason.
    pub fn close_frame(&mut self, limit: Duration) -> (u16, String) {
        loop {
            match self.read(limit) {
                Read_::Msg(Message::Close(Some(f))) => {
                    return (f.code.0, f.reason_str().to_owned())
                }
                Read_::Msg(Message::Close(None)) => return (1005, String::new()),
                Read_::Msg(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    pub fn expect_close(&mut self, limit: Duration) -> CloseCode {
        let deadline = Instant::now() + limit;
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Read_::Msg(Message::Close(Some(f))) => return f.code,
                Read_::Msg(Message::Close(None)) => return CloseCode(1005),
                Read_::Msg(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// After the close handshake: the server must end the TCP connection.
    pub fn expect_eof(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Read_::Eof => return,
                Read_::Msg(_) => continue,
                Read_::Timeout => panic!("server kept the connection open"),
            }
        }
    }
}

/// Asserts that `c` receives nothing for `ms` milliseconds.
pub fn nothing_for(c: &mut Client, ms: u64) {
    match c.read(Duration::from_millis(ms)) {
        Read_::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// Waits until the registry shows `n` users online (registration happens on the reactor
/// right after the upgrade).
pub fn users_online(gw: &Gateway, n: f64) {
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric("pushgate_users_online")
        == n));
}
