//! ring against aws-lc-rs for the client listener's TLS, in one process and one run, and
//! the memory an idle TLS connection keeps:
//!
//! - full and resumed handshakes per second on one core, TLS 1.3 and 1.2, per provider
//!   (client and server both in this thread, so the figure is a pair's cost; the server's
//!   share is timed separately);
//! - bytes held per idle server connection after the handshake and one small exchange
//!   (pushgate's own `TlsStream`, counted by a global allocator).
//!
//! `cargo run --release --manifest-path bench/tls/Cargo.toml [SECONDS_PER_ROW]`

use std::alloc::System;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ProducesTickets;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

#[global_allocator]
static ALLOC: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

struct Pki {
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

fn server_config(
    pki: &Pki,
    provider: &Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::try_from(pki.key_der.clone()).expect("key");
    let mut c = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], key)
        .expect("cert");
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.ticketer = ticketer;
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(c)
}

fn client_config(pki: &Pki, provider: &Arc<CryptoProvider>, resume: bool) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert.clone()).expect("root");
    let mut c = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(c)
}

/// One handshake to completion (and the tickets read); the time the server side spent.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Duration {
    let mut server_time = Duration::ZERO;
    let mut buf = Vec::with_capacity(16 * 1024);
    for _ in 0..20 {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("client write");
        }
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).expect("server read");
            server.process_new_packets().expect("server process");
        }
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).expect("server write");
        }
        server_time += t.elapsed();
        if buf.is_empty() && out.is_empty() {
            return server_time;
        }
        let mut rd = &out[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("client read");
            client.process_new_packets().expect("client process");
        }
    }
    panic!("handshake did not settle");
}

fn row(
    name: &str,
    pki: &Pki,
    provider: &Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    version: &'static rustls::SupportedProtocolVersion,
    resumed: bool,
    budget: Duration,
) {
    let server = server_config(pki, provider, ticketer, version);
    let client = client_config(pki, provider, resumed);
    let name_ = ServerName::try_from("localhost").expect("name");
    if resumed {
        // A first, full handshake stores the ticket in the client's cache.
        let mut c = ClientConnection::new(Arc::clone(&client), name_.clone()).expect("client");
        let mut s = ServerConnection::new(Arc::clone(&server)).expect("server");
        handshake(&mut c, &mut s);
    }
    let start = Instant::now();
    let mut n = 0u32;
    let mut server_time = Duration::ZERO;
    while start.elapsed() < budget {
        let mut c = ClientConnection::new(Arc::clone(&client), name_.clone()).expect("client");
        let mut s = ServerConnection::new(Arc::clone(&server)).expect("server");
        server_time += handshake(&mut c, &mut s);
        let kind = s.handshake_kind();
        assert_eq!(
            kind == Some(rustls::HandshakeKind::Resumed),
            resumed,
            "{name}: {kind:?}"
        );
        n += 1;
    }
    let pair = f64::from(n) / start.elapsed().as_secs_f64();
    let server_only = f64::from(n) / server_time.as_secs_f64();
    println!("| {name} | {n} | {pair:.0} | {server_only:.0} |");
}

/// Bytes held by `count` idle server connections after the handshake, a request in and a
/// response out, each through pushgate's `TlsStream`.
fn idle_bytes(
    pki: &Pki,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    count: usize,
) -> f64 {
    let dir = std::env::temp_dir().join(format!("tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let files = reactor::tls::TlsFiles {
        cert: dir.join("c.pem"),
        key: dir.join("k.pem"),
    };
    std::fs::write(&files.cert, &pki.cert_pem).expect("cert");
    std::fs::write(&files.key, &pki.key_pem).expect("key");
    let client = client_config(pki, &provider, false);
    let acceptor =
        reactor::tls::TlsAcceptor::with_provider(files, provider, ticketer).expect("acceptor");
    let name = ServerName::try_from("localhost").expect("name");
    let mut servers = Vec::with_capacity(count);
    let mut held = 0isize;
    for _ in 0..count {
        let mut c = ClientConnection::new(Arc::clone(&client), name.clone()).expect("client");
        let before = ALLOC.allocated() as isize;
        let mut s = acceptor.accept().expect("server");
        let mut plain = BytesMut::new();
        c.writer()
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        for _ in 0..10 {
            let mut up = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut up).expect("client write");
            }
            let mut down = Vec::new();
            s.read_tls(&up, &mut plain, &mut down).expect("server read");
            if up.is_empty() && down.is_empty() {
                break;
            }
            let mut rd = &down[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("client read");
                c.process_new_packets().expect("client process");
            }
        }
        let mut response = Vec::new();
        s.write_plain(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &mut response)
            .expect("response");
        drop(plain);
        drop(response);
        held += ALLOC.allocated() as isize - before;
        // The client goes; only the server side stays, as on a gateway.
        drop(c);
        servers.push(s);
    }
    std::fs::remove_dir_all(&dir).ok();
    held as f64 / count as f64
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(secs);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let pki = Pki {
        cert: ck.cert.der().clone(),
        key_der: ck.signing_key.serialize_der(),
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    };
    println!("| provider, version, handshake | handshakes | pairs/s (client+server, one core) | server-side handshakes/s |");
    println!("|---|---|---|---|");
    for round in 0..2 {
        // Two interleaved rounds, so drift on a shared machine shows as disagreement.
        for (pname, provider, ticketer) in [
            (
                "ring",
                Arc::new(rustls::crypto::ring::default_provider()),
                rustls::crypto::ring::Ticketer::new().expect("ticketer"),
            ),
            (
                "aws-lc-rs",
                Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
                rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer"),
            ),
        ] {
            for (vname, version) in [
                ("TLS1.3", &rustls::version::TLS13),
                ("TLS1.2", &rustls::version::TLS12),
            ] {
                for resumed in [false, true] {
                    let kind = if resumed { "resumed" } else { "full" };
                    row(
                        &format!("{pname} {vname} {kind} (round {})", round + 1),
                        &pki,
                        &provider,
                        Arc::clone(&ticketer),
                        version,
                        resumed,
                        budget,
                    );
                }
            }
        }
    }
    let count = 2000;
    println!(
        "\nidle server TlsStream after handshake + request + response, bytes each over {count}:"
    );
    println!(
        "ring {:.0}, aws-lc-rs {:.0}",
        idle_bytes(
            &pki,
            Arc::new(rustls::crypto::ring::default_provider()),
            rustls::crypto::ring::Ticketer::new().expect("ticketer"),
            count
        ),
        idle_bytes(
            &pki,
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer"),
            count
        ),
    );
}
