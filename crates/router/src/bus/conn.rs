//! Opening a connection to one NATS server: TCP, the server's `INFO`, TLS when asked for
//! (a `tls://` URL, a CA file, or a server that requires it), `CONNECT` with our options
//! and credentials, and a `PING` whose `PONG` says the server accepted them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::servers::{Auth, Server};
use super::wire::{self, Op};

/// What a server says about itself (the fields the bus uses).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Info {
    pub(super) server_id: String,
    pub(super) max_payload: usize,
    pub(super) headers: bool,
    pub(super) tls_required: bool,
    pub(super) connect_urls: Vec<String>,
}

impl Info {
    pub(super) fn parse(json: &[u8]) -> Result<Info, String> {
        serde_json::from_slice(json).map_err(|e| format!("bad INFO from NATS: {e}"))
    }
}

/// A connection to a server, plain or TLS.
#[derive(Debug)]
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What every connection is opened with.
#[derive(Debug, Clone)]
pub(super) struct Options {
    /// The connection name the server shows (`pushgate <node>`).
    pub(super) name: String,
    /// Trust for TLS connections: the CA file given, or the system's roots.
    pub(super) tls: Arc<rustls::ClientConfig>,
    /// TLS to every server, even `nats://` ones (a CA file was given).
    pub(super) tls_always: bool,
}

impl Options {
    /// `ca_file`: PEM certificates to trust instead of the system's.
    pub(super) fn new(name: String, ca_file: Option<&str>) -> Result<Options, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("reading the NATS CA file {path}: {e}"))?;
                let mut added = 0;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| format!("NATS CA file {path}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("NATS CA file {path}: {e}"))?;
                    added += 1;
                }
                if added == 0 {
                    return Err(format!("NATS CA file {path}: no certificate in it"));
                }
            }
            None => {
                // Unreadable system certificates only matter once a server asks for TLS,
                // and then the handshake fails with a clear error.
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Options {
            name,
            tls: Arc::new(config),
            tls_always: ca_file.is_some(),
        })
    }
}

/// How long a connection may take to be opened and accepted.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `server`: the stream, the server's INFO, and any bytes the server sent
/// after the `PONG` (already read, not yet parsed).
pub(super) async fn open(
    server: &Server,
    opts: &Options,
) -> Result<(Stream, Info, Vec<u8>), String> {
    tokio::time::timeout(CONNECT_TIMEOUT, open_inner(server, opts))
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn open_inner(server: &Server, opts: &Options) -> Result<(Stream, Info, Vec<u8>), String> {
    let mut tcp = TcpStream::connect((server.host.as_str(), server.port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let info = loop {
        match wire::parse(&buf, 0).map_err(|e| e.0.to_string())? {
            Some((Op::Info(json), n)) => {
                let info = Info::parse(json)?;
                buf.drain(..n);
                break info;
            }
            Some(_) => return Err("the server did not start with INFO".into()),
            None => read_more(&mut tcp, &mut buf).await?,
        }
    };
    if !info.headers {
        return Err("the server does not support headers (NATS 2.2 or later needed)".into());
    }
    let tls = server.tls || opts.tls_always || info.tls_required;
    let mut stream = if tls {
        if !buf.is_empty() {
            return Err("the server sent data before the TLS handshake".into());
        }
        let name = rustls::pki_types::ServerName::try_from(server.host.clone())
            .map_err(|e| format!("TLS server name {}: {e}", server.host))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&opts.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Stream::Tls(Box::new(tls))
    } else {
        Stream::Plain(tcp)
    };
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": tls,
        "name": opts.name,
        "lang": "rust-pushgate",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": false,
        "headers": true,
        "no_responders": true,
    });
    match &server.auth {
        Some(Auth::Token(t)) => connect["auth_token"] = t.as_str().into(),
        Some(Auth::UserPass(u, p)) => {
            connect["user"] = u.as_str().into();
            connect["pass"] = p.as_str().into();
        }
        None => {}
    }
    let hello = format!("CONNECT {connect}\r\nPING\r\n");
    stream
        .write_all(hello.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match wire::parse(&buf, 0).map_err(|e| e.0.to_string())? {
            Some((Op::Pong, n)) => {
                buf.drain(..n);
                return Ok((stream, info, buf));
            }
            Some((Op::Err(e), _)) => return Err(format!("NATS refused the connection: {e}")),
            Some((Op::Ping, n)) => {
                buf.drain(..n);
                stream
                    .write_all(b"PONG\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some((_, n)) => {
                buf.drain(..n);
            }
            None => read_more(&mut stream, &mut buf).await?,
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the server closed the connection".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}
