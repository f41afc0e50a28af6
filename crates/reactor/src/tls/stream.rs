//! One connection's TLS, driven by bytes: ciphertext the socket gave in, plaintext out for
//! the HTTP and WebSocket code; plaintext in from the outbound queue, ciphertext out for
//! the socket. No I/O here, so the same code serves every I/O backend.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::{ServerConfig, ServerConnection};

/// Why a TLS connection cannot go on. Whatever rustls wants to tell the peer (an alert)
/// has been queued: call [`TlsStream::take_tls`] once more before closing.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the protocol: not TLS at all, a bad handshake, a bad record.
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    /// Internal buffering refused bytes (never expected: plaintext is drained each time).
    #[error("TLS buffer: {0}")]
    Buffer(#[from] std::io::Error),
}

/// The TLS state of one connection.
#[derive(Debug)]
pub struct TlsStream {
    conn: ServerConnection,
    peer_closed: bool,
}

impl TlsStream {
    /// A server side waiting for a client hello.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsStream, rustls::Error> {
        Ok(TlsStream {
            conn: ServerConnection::new(config)?,
            peer_closed: false,
        })
    }

    /// Takes ciphertext read from the socket; appends the plaintext it carried (if any) to
    /// `plain`. Handshake replies are then waiting in [`TlsStream::take_tls`].
    pub fn read_tls(
        &mut self,
        mut ciphertext: &[u8],
        plain: &mut BytesMut,
    ) -> Result<(), TlsError> {
        while !ciphertext.is_empty() {
            // rustls takes at most one buffer's worth at a time; the rest on the next turn.
            if self.conn.read_tls(&mut ciphertext)? == 0 {
                break;
            }
            let state = self.conn.process_new_packets()?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let at = plain.len();
                plain.resize(at + ready, 0);
                self.conn.reader().read_exact(&mut plain[at..])?;
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
                break;
            }
        }
        Ok(())
    }

    /// Encrypts `plain` into records appended to `out`, after anything TLS itself has to
    /// send first.
    pub fn write_plain(&mut self, mut plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.take_tls(out)?;
        while !plain.is_empty() {
            // rustls buffers a bounded amount of plaintext; what it takes is encrypted into
            // `out` at once, so that bound is never a limit on a message.
            let n = self.conn.writer().write(plain)?;
            if n == 0 {
                return Err(TlsError::Buffer(std::io::ErrorKind::WriteZero.into()));
            }
            plain = &plain[n..];
            self.take_tls(out)?;
        }
        Ok(())
    }

    /// Appends whatever TLS has to send (handshake messages, tickets, alerts, encrypted
    /// data) to `out`.
    pub fn take_tls(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        while self.conn.wants_write() {
            self.conn.write_tls(out)?;
        }
        Ok(())
    }

    /// Queues a close_notify alert (sent by the next [`TlsStream::take_tls`]).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// The handshake is still under way: no plaintext has been or can be exchanged.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The peer sent close_notify: no more plaintext will come.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The protocol version agreed, once the handshake is done.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Whether the handshake resumed an earlier session (a ticket) instead of a full one.
    pub fn resumed(&self) -> bool {
        matches!(
            self.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        )
    }
}
