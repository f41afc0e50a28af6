//! A non-blocking WebSocket client connection for the load tool, driven by a mio loop:
//! connect from a chosen source address, send the upgrade, read the 101, then frames —
//! through TLS when the process runs with `--tls` (`crate::tls`).
//!
//! A subscribe path starting with `/sse` makes it a Server-Sent Events client instead
//! (pushgate's fallback transport): a plain `GET`, a `200` head, then each event's `data`
//! handed over as a text message, so every scenario measures either transport. A path
//! starting with `/poll` is a long poll: open (parked) once its request is written; an
//! answer ends it (the idle scenario holds polls parked, nothing more).

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::BytesMut;
use mio::net::TcpStream;
use protocol::frame::client_message;
use protocol::{Decoder, DecoderConfig, Message, OpCode};

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the TCP connect and for room to send the request.
    Connecting,
    /// Request sent; reading the response head.
    Upgrading,
    /// 101 received.
    Open,
    /// Refused, reset or closed.
    Failed,
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct WsConn {
    pub(crate) stream: TcpStream,
    pub(crate) phase: Phase,
    request: Vec<u8>,
    sent: usize,
    buf: BytesMut,
    decoder: Decoder,
    /// Bytes waiting for room in the socket (ciphertext, with TLS).
    out: Vec<u8>,
    tls: Option<Box<rustls::ClientConnection>>,
    /// An event stream rather than a WebSocket.
    sse: bool,
    /// A long poll rather than a WebSocket.
    poll: bool,
}

impl WsConn {
    /// Starts a non-blocking connect from `source` to `server`.
    pub(crate) fn connect(
        source: SocketAddr,
        server: SocketAddr,
        host: &str,
        path: &str,
    ) -> io::Result<WsConn> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&source.into())?;
        match socket.connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(115) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let sse = path.starts_with("/sse");
        let poll = path.starts_with("/poll");
        let request = if sse || poll {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
        } else {
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        }
        .into_bytes();
        let mut conn = WsConn {
            stream: TcpStream::from_std(socket.into()),
            phase: Phase::Connecting,
            request,
            sent: 0,
            buf: BytesMut::new(),
            decoder: Decoder::new(),
            out: Vec::new(),
            tls: crate::tls::client()?.map(Box::new),
            sse,
            poll,
        };
        if conn.tls.is_some() {
            // rustls holds the request until the handshake lets it go.
            let request = std::mem::take(&mut conn.request);
            conn.write_plain(&request);
        }
        Ok(conn)
    }

    /// Hands plaintext to TLS and moves what TLS has to send onto `out`; without TLS,
    /// onto `out` as it is.
    fn write_plain(&mut self, plain: &[u8]) {
        match self.tls.as_deref_mut() {
            Some(tls) => {
                if tls.writer().write_all(plain).is_err() {
                    self.phase = Phase::Failed;
                }
                self.take_tls_output();
            }
            None => self.out.extend_from_slice(plain),
        }
    }

    fn take_tls_output(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            while tls.wants_write() {
                if tls.write_tls(&mut self.out).is_err() {
                    self.phase = Phase::Failed;
                    return;
                }
            }
        }
    }

    /// Received bytes: through TLS into `buf`, or straight into it.
    fn received(&mut self, bytes: &[u8]) {
        let Some(tls) = self.tls.as_deref_mut() else {
            self.buf.extend_from_slice(bytes);
            return;
        };
        let mut rd = bytes;
        while !rd.is_empty() {
            if tls.read_tls(&mut rd).is_err() || tls.process_new_packets().is_err() {
                self.phase = Phase::Failed;
                return;
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
        }
        self.take_tls_output();
    }

    /// Queues a masked text frame and writes as much as the socket takes.
    pub(crate) fn send_text(&mut self, payload: &[u8]) {
        self.send_frame(OpCode::Text, payload);
    }

    /// Queues a masked frame of any kind (pings and pongs for liveness checks).
    pub(crate) fn send_frame(&mut self, op: OpCode, payload: &[u8]) {
        let key = fastrand::u32(..).to_be_bytes();
        self.write_plain(&client_message(op, payload, key));
        self.flush();
    }

    fn flush(&mut self) {
        let ready =
            self.phase == Phase::Open || (self.tls.is_some() && self.phase != Phase::Failed);
        while !self.out.is_empty() && ready {
            match self.stream.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::NotConnected =>
                {
                    return
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.phase = Phase::Failed;
                    return;
                }
            }
        }
    }

    /// Where a connection is once its request is on its way: a poll is parked from then
    /// on, the others wait for the response head.
    fn after_request(&self) -> Phase {
        if self.poll {
            Phase::Open
        } else {
            Phase::Upgrading
        }
    }

    /// Makes progress after a readiness event; returns messages received.
    pub(crate) fn drive(&mut self, out: &mut Vec<Message>) {
        self.flush();
        if self.phase == Phase::Connecting && self.tls.is_some() {
            // The request went to TLS; the handshake under way sends it.
            self.phase = self.after_request();
        }
        if self.phase == Phase::Connecting {
            while self.sent < self.request.len() {
                match self.stream.write(&self.request[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::NotConnected =>
                    {
                        return
                    }
                    Err(_) => {
                        self.phase = Phase::Failed;
                        return;
                    }
                }
            }
            self.phase = self.after_request();
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.phase = Phase::Failed;
                    return;
                }
                Ok(_) if self.poll => {
                    // Answered: the poll is over.
                    self.phase = Phase::Failed;
                    return;
                }
                Ok(n) => {
                    self.received(&chunk[..n]);
                    if self.phase == Phase::Failed {
                        return;
                    }
                    // A short read emptied the socket; data arriving later raises a new
                    // edge, so the read that would only say WouldBlock is skipped: with
                    // 200 000 connections on two cores, that syscall per message shows.
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.phase = Phase::Failed;
                    return;
                }
            }
        }
        self.flush();
        if self.phase == Phase::Upgrading {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = self.buf.split_to(end + 4);
            let ok: &[u8] = if self.sse {
                b"HTTP/1.1 200"
            } else {
                b"HTTP/1.1 101"
            };
            self.phase = if head.starts_with(ok) {
                Phase::Open
            } else {
                Phase::Failed
            };
        }
        if self.phase == Phase::Open && self.sse {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event = self.buf.split_to(end + 2);
                if let Some(data) = sse_data(&event) {
                    out.push(Message::Text(data));
                }
            }
            return;
        }
        if self.phase == Phase::Open {
            let cfg = DecoderConfig::client();
            while let Ok(Some(m)) = self.decoder.decode(&mut self.buf, &cfg, None) {
                out.push(m);
            }
        }
    }
}

/// The `data` of one event (its `data:` lines joined by `\n`); `None` for a comment or a
/// `retry:` block.
fn sse_data(event: &[u8]) -> Option<bytes::Bytes> {
    let mut data = Vec::new();
    let mut any = false;
    for line in event.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"data:") {
            if any {
                data.push(b'\n');
            }
            any = true;
            data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        }
    }
    any.then(|| bytes::Bytes::from(data))
}
