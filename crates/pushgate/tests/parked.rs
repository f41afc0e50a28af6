//! Deferred answers of the control listener, driven by a toy line service on a real
//! reactor: a parked request waits without holding the reactor, keeps its connection's
//! pipelining order, and is answered by its completion from another thread, by the
//! reactor's timer past its deadline (the service's "timed out" answer), or when its
//! completion is dropped (the service's "dropped" answer).
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reactor::service::{ServiceConfig, ServiceLimits};
use reactor::{
    Completion, ConnRef, Flow, Hooks, Parking, ReactorConfig, Server, Service, Unanswered,
};

struct NoHooks;

impl Hooks for NoHooks {
    fn open(
        &mut self,
        _: ConnRef,
        _: &str,
        _: Option<&str>,
        _: Option<u64>,
    ) -> Option<session::Welcome> {
        Some(session::Welcome::default())
    }
    fn on_session_event(&mut self, _: ConnRef, _: session::Event) {}
    fn on_close(&mut self, _: ConnRef) {}
    fn send(
        &mut self,
        _: &str,
        _: &[String],
        _: &bytes::Bytes,
    ) -> Result<(), session::client_protocol::RequestError> {
        Ok(())
    }
}

/// One request per line: `now X` answers `X`; `park` parks (for 10 s) and hands the
/// completion to the test; `drop` parks and drops the completion; `slow` parks for
/// 100 ms and keeps the completion unanswered; `late` parks for 100 ms and hands the
/// completion to the test; anything else closes.
struct Lines(mpsc::Sender<Completion>, Vec<Completion>);

impl Service for Lines {
    fn serve(
        &mut self,
        _state: &mut reactor::ConnState,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        _room: usize,
        _eof: bool,
        parking: &mut Parking<'_>,
    ) -> Flow {
        while let Some(end) = input.iter().position(|&b| b == b'\n') {
            let line = input.split_to(end + 1);
            let line = std::str::from_utf8(&line[..end]).unwrap();
            match line.split_once(' ').map_or((line, ""), |(a, b)| (a, b)) {
                ("now", x) => {
                    out.extend_from_slice(x.as_bytes());
                    out.push(b'\n');
                }
                ("park", _) => {
                    let c = parking.park(Duration::from_secs(10), true).unwrap();
                    self.0.send(c).unwrap();
                    return Flow::KeepAlive;
                }
                ("drop", _) => {
                    drop(parking.park(Duration::from_secs(10), true).unwrap());
                    return Flow::KeepAlive;
                }
                ("late", _) => {
                    let c = parking.park(Duration::from_millis(100), true).unwrap();
                    self.0.send(c).unwrap();
                    return Flow::KeepAlive;
                }
                ("slow", _) => {
                    let c = parking.park(Duration::from_millis(100), true).unwrap();
                    self.1.push(c);
                    return Flow::KeepAlive;
                }
                _ => return Flow::Close,
            }
        }
        Flow::KeepAlive
    }

    fn unanswered(&mut self, why: Unanswered, _keep_alive: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(match why {
            Unanswered::TimedOut => b"504\n",
            Unanswered::Dropped => b"503\n",
        });
    }
}

fn start() -> (Server, SocketAddr, mpsc::Receiver<Completion>) {
    let (tx, rx) = mpsc::channel();
    let config = ReactorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors: 1,
        service: Some(ServiceConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            limits: ServiceLimits::default(),
        }),
        // CI runs the suite once per backend.
        io: std::env::var("PUSHGATE_IO")
            .ok()
            .and_then(|v| reactor::IoBackend::parse(&v))
            .unwrap_or_default(),
        ..ReactorConfig::default()
    };
    let server = Server::bind_with_service(
        config,
        |_, _| Box::new(NoHooks),
        move |_| Some(Box::new(Lines(tx.clone(), Vec::new())) as Box<dyn Service>),
    )
    .unwrap();
    let mut server = server;
    server.run().unwrap();
    let addr = server.service_addr().unwrap();
    (server, addr, rx)
}

/// What arrives on `s` within `limit` (until that many bytes came, if `want` is given).
fn read_for(s: &mut TcpStream, limit: Duration, want: usize) -> String {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            // A signal is not the server closing the connection.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8(got).unwrap()
}

fn ask(addr: SocketAddr, what: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(what.as_bytes()).unwrap();
    s
}

#[test]
fn a_parked_request_keeps_its_order_and_not_the_reactor() {
    let (_server, addr, parked) = start();
    // A parked request with another pipelined behind it: neither is answered yet.
    let mut a = ask(addr, "park\nnow after\n");
    let completion = parked.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(read_for(&mut a, Duration::from_millis(200), 1), "");
    // The reactor (the only one) serves another connection meanwhile, at once.
    let t = Instant::now();
    let mut b = ask(addr, "now other\n");
    assert_eq!(read_for(&mut b, Duration::from_secs(5), 6), "other\n");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Answered from another thread: the answer, then the request behind it.
    std::thread::spawn(move || completion.complete(b"first\n".to_vec()))
        .join()
        .unwrap();
    assert_eq!(
        read_for(&mut a, Duration::from_secs(5), 12),
        "first\nafter\n"
    );
    // The connection goes on as before.
    a.write_all(b"now again\n").unwrap();
    assert_eq!(read_for(&mut a, Duration::from_secs(5), 6), "again\n");
}

#[test]
fn past_its_deadline_the_reactor_answers_it() {
    let (_server, addr, _parked) = start();
    let mut a = ask(addr, "slow\nnow after\n");
    let t = Instant::now();
    assert_eq!(read_for(&mut a, Duration::from_secs(5), 10), "504\nafter\n");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn a_dropped_completion_answers_and_a_late_one_is_ignored() {
    let (server, addr, parked) = start();
    let mut a = ask(addr, "drop\nnow after\n");
    assert_eq!(read_for(&mut a, Duration::from_secs(5), 10), "503\nafter\n");
    // A completion whose request its deadline answered: its answer finds nobody, and
    // nothing breaks.
    let mut b = ask(addr, "late\n");
    let completion = parked.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(read_for(&mut b, Duration::from_secs(5), 4), "504\n");
    completion.complete(b"nobody\n".to_vec());
    let stats = &server.reactors()[0].stats();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.service_answers_late.get() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stats.service_answers_late.get(), 1);
    assert_eq!(stats.service_parked.get(), 0);
    b.write_all(b"now still\n").unwrap();
    assert_eq!(read_for(&mut b, Duration::from_secs(5), 6), "still\n");
}
