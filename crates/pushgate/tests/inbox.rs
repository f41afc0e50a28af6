//! The reactor's inbox driven in-process: deliveries by connection reference, broadcast,
//! close, the hooks — and a reference to a closed connection whose slot was reused delivers
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, Read_};
use protocol::frame::server_frame;
use protocol::{CloseCode, Message, OpCode};
use reactor::{Command, ConnRef, Hooks, ReactorConfig, Server};
use session::ClientRequest;

#[derive(Debug, PartialEq)]
enum Seen {
    Open(ConnRef, String),
    Request(ConnRef, ClientRequest),
    Closed(ConnRef),
}

struct Report(mpsc::Sender<Seen>);

impl Hooks for Report {
    fn on_open(&mut self, conn: ConnRef, uid: &str, _device: Option<&str>) {
        let _ = self.0.send(Seen::Open(conn, uid.to_owned()));
    }
    fn on_request(&mut self, conn: ConnRef, request: ClientRequest) {
        let _ = self.0.send(Seen::Request(conn, request));
    }
    fn on_close(&mut self, conn: ConnRef) {
        let _ = self.0.send(Seen::Closed(conn));
    }
}

fn start() -> (Server, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let config = ReactorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors: 1,
        ..ReactorConfig::default()
    };
    let server = Server::start(config, move |_, _| Box::new(Report(tx.clone()))).unwrap();
    (server, rx)
}

fn next(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("no hook call")
}

fn text(s: &'static str) -> Message {
    Message::Text(Bytes::from_static(s.as_bytes()))
}

#[test]
fn deliveries_follow_references_and_stale_references_match_nothing() {
    let (server, rx) = start();
    let reactor = &server.reactors()[0];
    let mut a = Client::connect(server.local_addr(), "/ws?uid=a");
    a.recv_json();
    let Seen::Open(ref_a, uid) = next(&rx) else {
        panic!("expected open")
    };
    assert_eq!(uid, "a");

    a.send_text(r#"{"type":"join","room":"r1"}"#);
    assert_eq!(
        next(&rx),
        Seen::Request(ref_a, ClientRequest::Join { room: "r1".into() })
    );

    assert!(reactor.send(Command::Deliver {
        frame: server_frame(OpCode::Text, b"to a"),
        targets: vec![ref_a],
        received: None,
    }));
    assert_eq!(a.recv(), text("to a"));
    assert!(reactor.send(Command::Broadcast {
        frame: server_frame(OpCode::Text, b"all"),
        received: None
    }));
    assert_eq!(a.recv(), text("all"));

    a.send_close(1000);
    a.expect_close(Duration::from_secs(5));
    assert_eq!(next(&rx), Seen::Closed(ref_a));

    // The next connection takes the freed slot, with a new generation.
    let mut b = Client::connect(server.local_addr(), "/ws?uid=b");
    b.recv_json();
    let Seen::Open(ref_b, _) = next(&rx) else {
        panic!("expected open")
    };
    assert_eq!(ref_b.index, ref_a.index, "slot reused");
    assert_ne!(ref_b.generation, ref_a.generation);

    reactor.send(Command::Deliver {
        frame: server_frame(OpCode::Text, b"stale"),
        targets: vec![ref_a],
        received: None,
    });
    reactor.send(Command::Deliver {
        frame: server_frame(OpCode::Text, b"fresh"),
        targets: vec![ref_b],
        received: None,
    });
    assert_eq!(
        b.recv(),
        text("fresh"),
        "a message for the old connection reached the new one"
    );

    reactor.send(Command::Close {
        target: ref_b,
        code: CloseCode::POLICY,
        reason: "policy",
    });
    assert_eq!(b.expect_close(Duration::from_secs(5)), CloseCode::POLICY);
    b.send_close(1008);
    b.expect_eof(Duration::from_secs(5));
    assert_eq!(next(&rx), Seen::Closed(ref_b));
    assert!(matches!(
        b.read(Duration::from_millis(10)),
        Read_::Eof | Read_::Timeout
    ));
    server.shutdown(Duration::from_millis(100)).unwrap();
}

#[test]
fn shared_frame_reaches_every_target_once() {
    let (server, rx) = start();
    let mut clients: Vec<Client> = (0..5)
        .map(|i| Client::connect(server.local_addr(), &format!("/ws?uid=u{i}")))
        .collect();
    let mut refs = Vec::new();
    for c in &mut clients {
        c.recv_json();
        let Seen::Open(r, _) = next(&rx) else {
            panic!()
        };
        refs.push(r);
    }
    let frame = server_frame(OpCode::Text, b"shared");
    server.reactors()[0].send(Command::Deliver {
        frame,
        targets: refs[1..4].to_vec(),
        received: None,
    });
    for (i, c) in clients.iter_mut().enumerate() {
        let got = c.read(Duration::from_millis(if (1..4).contains(&i) {
            5000
        } else {
            300
        }));
        if (1..4).contains(&i) {
            assert_eq!(got, Read_::Msg(text("shared")), "client {i}");
        } else {
            assert_eq!(got, Read_::Timeout, "client {i} was not a target");
        }
    }
    // Clients that vanish are not waited for (the drain waits the close timeout only for
    // clients that stay connected without answering).
    drop(clients);
    server.shutdown(Duration::from_millis(100)).unwrap();
}

#[test]
fn regression_a_burst_of_commands_is_drained_without_further_wakeups() {
    // Found by the fan-out benchmark: the reactor handled a bounded batch of commands per
    // wakeup and then slept with the rest queued until some unrelated event.
    let (server, rx) = start();
    let mut a = Client::connect(server.local_addr(), "/ws?uid=a");
    a.recv_json();
    let Seen::Open(ref_a, _) = next(&rx) else {
        panic!("expected open")
    };
    let frame = server_frame(OpCode::Text, b"n");
    for _ in 0..100_000 {
        server.reactors()[0].send(Command::Deliver {
            frame: frame.clone(),
            targets: vec![ref_a],
            received: None,
        });
    }
    // Unfixed, the reactor crawls on (each unrelated wakeup drains one more batch); fixed,
    // this takes well under a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for i in 0..100_000 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            matches!(a.read(left), Read_::Msg(_)),
            "message {i} not delivered within 10 s"
        );
    }
    drop(a);
    server.shutdown(Duration::from_millis(100)).unwrap();
}
