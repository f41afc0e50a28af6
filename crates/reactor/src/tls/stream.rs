//! One connection's TLS, driven by bytes: ciphertext the socket gave in, plaintext out for
//! the HTTP and WebSocket code; plaintext in from the outbound queue, ciphertext out for
//! the socket. No I/O here, so the same code serves every I/O backend.
//!
//! Built on rustls's unbuffered connection: rustls keeps only keys and handshake state,
//! and the buffers are ours. The one this type owns holds the tail of a record split by
//! a read, and is freed the moment it empties, so an idle connection holds no buffer at
//! all (the buffered `ServerConnection` keeps at least a 4 KiB read buffer for ever).

use std::sync::Arc;

use bytes::BytesMut;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ServerConfig;

/// Why a TLS connection cannot go on. Any alert rustls had for the peer has already been
/// appended to the output.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the protocol: not TLS at all, a bad handshake, a bad record.
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    /// rustls refused to encrypt (a connection past its record limit, or closed).
    #[error("TLS: cannot encrypt: {0}")]
    Encrypt(String),
    /// The connection failed before: nothing more goes in or out.
    #[error("TLS: the connection failed earlier")]
    Failed,
    /// rustls panicked on this connection's bytes (contained to the connection).
    #[error("TLS: rustls panicked")]
    Panicked,
    /// The peer's handshake would need more buffered bytes than allowed.
    #[error("TLS: handshake larger than {0} bytes")]
    HandshakeTooLarge(usize),
}

/// The TLS state of one connection.
pub struct TlsStream {
    conn: UnbufferedServerConnection,
    /// Ciphertext of records not yet complete.
    incoming: Vec<u8>,
    peer_closed: bool,
    /// An error (or a panic inside rustls) ended the connection.
    failed: bool,
    /// Most ciphertext held while the handshake is under way.
    max_handshake_bytes: usize,
}

/// What a handshake may hold by default: one full record. Real client hellos, even with
/// post-quantum key shares, are a few kilobytes.
pub const DEFAULT_MAX_HANDSHAKE_BYTES: usize = 16 * 1024 + 5;

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.is_handshaking())
            .field("buffered", &self.incoming.len())
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

/// Where a pass over the incoming records stopped.
enum Stop {
    /// More ciphertext is needed.
    NeedInput,
    /// The handshake is done and nothing is pending.
    Idle,
    /// The peer closed (close_notify) or the connection is closed.
    Closed,
}

impl TlsStream {
    /// A server side waiting for a client hello.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsStream, rustls::Error> {
        Ok(TlsStream {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            peer_closed: false,
            failed: false,
            max_handshake_bytes: DEFAULT_MAX_HANDSHAKE_BYTES,
        })
    }

    /// Bounds the ciphertext held until the handshake is done (the part of a handshake
    /// message rustls waits to complete): past it the connection fails.
    pub fn limit_handshake(&mut self, bytes: usize) {
        self.max_handshake_bytes = bytes;
    }

    /// Takes ciphertext read from the socket: appends the plaintext it carried to `plain`
    /// and whatever TLS answers (handshake flights, tickets, alerts) to `out`.
    pub fn read_tls(
        &mut self,
        ciphertext: &[u8],
        plain: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        self.incoming.extend_from_slice(ciphertext);
        let result = self.guarded(|s| {
            let result = s.process(plain, out);
            if result.is_err() {
                s.encode_alert(out);
            }
            result
        });
        let result = match result {
            Ok(_)
                if self.conn.is_handshaking() && self.incoming.len() > self.max_handshake_bytes =>
            {
                Err(TlsError::HandshakeTooLarge(self.max_handshake_bytes))
            }
            other => other,
        };
        if result.is_err() {
            self.failed = true;
            self.incoming = Vec::new();
        } else if self.incoming.is_empty() {
            // Idle connections keep no buffer.
            self.incoming = Vec::new();
        }
        result.map(|_| ())
    }

    /// Runs `f`, turning a panic inside rustls into this connection's failure: one
    /// connection's bytes must never stop the reactor that serves thousands.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, TlsError>,
    ) -> Result<T, TlsError> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(result) => result,
            Err(_) => {
                self.failed = true;
                Err(TlsError::Panicked)
            }
        }
    }

    /// After an error: encodes the alert rustls queued for the peer, and nothing more. A
    /// second pass over the input would deframe the bad bytes again and have rustls
    /// raise a second fatal alert, which it asserts never happens.
    fn encode_alert(&mut self, out: &mut Vec<u8>) {
        let status = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let at = out.len();
            loop {
                match encode.encode(&mut out[at..]) {
                    Ok(n) => {
                        out.truncate(at + n);
                        return;
                    }
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                        if required_size > out.len() - at =>
                    {
                        out.resize(at + required_size, 0)
                    }
                    Err(_) => {
                        out.truncate(at);
                        return;
                    }
                }
            }
        }
    }

    /// Runs the state machine over the buffered ciphertext until it needs more, then
    /// drops what rustls consumed (once: many small records in one read would otherwise
    /// move the rest of the buffer once each).
    fn process(&mut self, plain: &mut BytesMut, out: &mut Vec<u8>) -> Result<Stop, TlsError> {
        let mut consumed = 0;
        let result = self.process_from(&mut consumed, plain, out);
        // rustls's deframer counts on the records it consumed being gone, error or not.
        self.incoming.drain(..consumed.min(self.incoming.len()));
        result
    }

    fn process_from(
        &mut self,
        consumed: &mut usize,
        plain: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<Stop, TlsError> {
        loop {
            let status = self
                .conn
                .process_tls_records(&mut self.incoming[*consumed..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    *consumed += discard;
                    return Err(e.into());
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                plain.extend_from_slice(record.payload);
                                discard += record.discard;
                            }
                            Err(e) => {
                                *consumed += discard;
                                return Err(e.into());
                            }
                        }
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let at = out.len();
                    let written = loop {
                        let room = out.len() - at;
                        match encode.encode(&mut out[at..]) {
                            Ok(n) => break n,
                            Err(EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > room => out.resize(at + required_size, 0),
                            Err(e) => return Err(TlsError::Encrypt(e.to_string())),
                        }
                    };
                    out.truncate(at + written);
                    None
                }
                // What was encoded is in `out`, which the caller sends.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Stop::NeedInput),
                ConnectionState::WriteTraffic(_) => Some(Stop::Idle),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    Some(Stop::Closed)
                }
                ConnectionState::Closed => Some(Stop::Closed),
                // Early data is never enabled in our configuration; anything new in rustls
                // that we do not know how to drive ends the connection rather than spin.
                _ => return Err(TlsError::Encrypt("unexpected TLS state".to_owned())),
            };
            *consumed += discard;
            if let Some(stop) = stop {
                // With a full record left but input still buffered, rustls says so by
                // returning ReadTraffic again; `NeedInput`/`Idle` mean the rest is partial.
                return Ok(stop);
            }
        }
    }

    /// Encrypts `plain` into records appended to `out`. Only after the handshake.
    pub fn write_plain(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.guarded(|s| s.with_write_traffic(out, |traffic, buf| traffic.encrypt(plain, buf)))
    }

    /// Appends a close_notify alert to `out`.
    pub fn close(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.guarded(|s| s.with_write_traffic(out, |traffic, buf| traffic.queue_close_notify(buf)))
    }

    fn with_write_traffic(
        &mut self,
        out: &mut Vec<u8>,
        mut write: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let status = self.conn.process_tls_records(&mut self.incoming);
        // Records are consumed by `read_tls`: what is left here is a record's start.
        if status.discard != 0 {
            return Err(TlsError::Encrypt("unread records".to_owned()));
        }
        let ConnectionState::WriteTraffic(mut traffic) = status.state? else {
            return Err(TlsError::Encrypt("handshake not complete".to_owned()));
        };
        let at = out.len();
        let written =
            loop {
                let room = out.len() - at;
                match write(&mut traffic, &mut out[at..]) {
                    Ok(n) => break n,
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) if required_size > room => out.resize(at + required_size, 0),
                    Err(e) => return Err(TlsError::Encrypt(e.to_string())),
                }
            };
        out.truncate(at + written);
        Ok(())
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

    /// Bytes of ciphertext held waiting for the rest of a record.
    pub fn buffered(&self) -> usize {
        self.incoming.len()
    }
}
