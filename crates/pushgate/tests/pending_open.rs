//! A pending opening driven in-process (issue 24): `Hooks::open` answers "pending", what
//! the connection is delivered meanwhile waits, and the welcome that comes later through
//! `ReactorHandle::welcome` goes out first, then its replay, then what waited; past the
//! outbound limits the waiting connection is a slow consumer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, Read_};
use protocol::frame::server_frame;
use protocol::{Message, OpCode};
use reactor::{Command, ConnRef, Hooks, OutboundLimits, ReactorConfig, Server};

/// Every opening pending; reports the connection and what `welcomed` was told.
struct Pending(mpsc::Sender<(ConnRef, Option<u64>)>);

impl Hooks for Pending {
    fn open(
        &mut self,
        conn: ConnRef,
        _uid: &str,
        _device: Option<&str>,
        _since: Option<u64>,
    ) -> Option<session::Welcome> {
        let _ = self.0.send((conn, None));
        None
    }
    fn welcomed(&mut self, conn: ConnRef, opened: u64) {
        let _ = self.0.send((conn, Some(opened)));
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

fn start(outbound: OutboundLimits) -> (Server, mpsc::Receiver<(ConnRef, Option<u64>)>) {
    let (tx, rx) = mpsc::channel();
    let config = ReactorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors: 1,
        outbound,
        // CI runs the suite once per backend.
        io: std::env::var("PUSHGATE_IO")
            .ok()
            .and_then(|v| reactor::IoBackend::parse(&v))
            .unwrap_or_default(),
        ..ReactorConfig::default()
    };
    let server = Server::start(config, move |_, _| Box::new(Pending(tx.clone()))).unwrap();
    (server, rx)
}

fn deliver(server: &Server, to: ConnRef, text: &'static str) {
    server.reactors()[0]
        .send(Command::Deliver {
            frame: server_frame(OpCode::Text, text.as_bytes()),
            targets: vec![to],
            received: None,
        })
        .unwrap();
}

#[test]
fn what_waits_for_a_pending_welcome_comes_right_behind_it() {
    let (server, rx) = start(ReactorConfig::default().outbound);
    let mut c = Client::connect(server.local_addr(), "/ws?uid=a");
    let (conn, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    deliver(&server, conn, "live 1");
    deliver(&server, conn, "live 2");
    // Nothing before the welcome.
    assert!(matches!(c.read(Duration::from_millis(200)), Read_::Timeout));
    assert_eq!(
        server.reactors()[0].stats().openings_pending.get(),
        1,
        "counted while pending"
    );
    let welcome = session::Welcome {
        seq: Some(7),
        recovered: Some(true),
        replay: vec![server_frame(OpCode::Text, b"replayed")],
        error: None,
    };
    server.reactors()[0].welcome(conn, welcome, 5);
    let w = c.recv_json();
    assert_eq!(
        (w["type"].as_str(), w["seq"].as_u64()),
        (Some("welcome"), Some(7))
    );
    for want in ["replayed", "live 1", "live 2"] {
        assert_eq!(c.recv(), Message::Text(Bytes::from_static(want.as_bytes())));
    }
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        (conn, Some(5))
    );
    // From here on deliveries go straight out.
    deliver(&server, conn, "live 3");
    assert_eq!(c.recv(), Message::Text(Bytes::from_static(b"live 3")));
    assert_eq!(server.reactors()[0].stats().openings_pending.get(), 0);
    // A welcome for a connection that is gone, or a second one, is ignored.
    server.reactors()[0].welcome(conn, session::Welcome::default(), 0);
    deliver(&server, conn, "live 4");
    assert_eq!(c.recv(), Message::Text(Bytes::from_static(b"live 4")));
}

#[test]
fn waiting_past_the_outbound_limits_is_a_slow_consumer() {
    let limits = OutboundLimits {
        max_messages: 4,
        ..ReactorConfig::default().outbound
    };
    let (server, rx) = start(limits);
    let mut c = Client::connect(server.local_addr(), "/ws?uid=a");
    let (conn, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    for _ in 0..5 {
        deliver(&server, conn, "x");
    }
    let (code, reason) = c.close_frame(Duration::from_secs(5));
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    assert_eq!(server.reactors()[0].stats().openings_pending.get(), 0);
}
