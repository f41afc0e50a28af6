//! The TLS layer against a real rustls client, in memory: both versions, ALPN, data both
//! ways, resumption with tickets, reload, and the inputs that must fail cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use reactor::tls::{TlsAcceptor, TlsConfigError, TlsFiles, TlsStream};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

struct Pki {
    dir: PathBuf,
    files: TlsFiles,
    cert_der: CertificateDer<'static>,
}

fn pki(tag: &str, name: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("pushgate-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
    Pki {
        dir,
        files,
        cert_der: ck.cert.der().clone(),
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn client_config(
    trust: &CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Moves bytes both ways until neither side has anything to say; plaintext the server
/// decrypted is appended to `server_plain`.
fn pump(client: &mut ClientConnection, server: &mut TlsStream, server_plain: &mut BytesMut) {
    for _ in 0..100 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let mut to_client = Vec::new();
        server
            .read_tls(&to_server, server_plain, &mut to_client)
            .unwrap();
        if to_server.is_empty() && to_client.is_empty() {
            return;
        }
        let mut rd = &to_client[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    panic!("the handshake did not settle");
}

fn client_reads(client: &mut ClientConnection, server: &mut TlsStream, plain: &[u8]) -> Vec<u8> {
    let mut records = Vec::new();
    server.write_plain(plain, &mut records).unwrap();
    client_decrypts(client, &records)
}

/// What the client reads from the ciphertext `wire`.
fn client_decrypts(client: &mut ClientConnection, wire: &[u8]) -> Vec<u8> {
    let mut rd = wire;
    let mut got = Vec::new();
    while !rd.is_empty() {
        client.read_tls(&mut rd).unwrap();
        client.process_new_packets().unwrap();
        let mut buf = [0u8; 65536];
        loop {
            match client.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    got
}

#[test]
fn both_versions_negotiate_alpn_and_carry_data_both_ways() {
    let p = pki("versions", "localhost");
    let acceptor = TlsAcceptor::new(p.files.clone()).unwrap();
    for (version, want) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client_config(&p.cert_der, version), name).unwrap();
        let mut server = acceptor.accept().unwrap();
        let mut plain = BytesMut::new();
        assert!(server.is_handshaking());
        client
            .writer()
            .write_all(b"GET /ws HTTP/1.1\r\n\r\n")
            .unwrap();
        pump(&mut client, &mut server, &mut plain);
        assert!(!server.is_handshaking());
        assert_eq!(server.version(), Some(want));
        assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(&plain[..], b"GET /ws HTTP/1.1\r\n\r\n");
        // A message larger than a record and than rustls's own buffers, both ways.
        let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(client_reads(&mut client, &mut server, &big), big);
        plain.clear();
        let mut rest = &big[..];
        while !rest.is_empty() {
            let n = client.writer().write(rest).unwrap();
            rest = &rest[n..];
            pump(&mut client, &mut server, &mut plain);
        }
        assert_eq!(&plain[..], &big[..]);
        // close_notify from the client is seen.
        client.send_close_notify();
        pump(&mut client, &mut server, &mut plain);
        assert!(server.peer_closed());
    }
}

#[test]
fn a_second_connection_resumes_with_a_ticket() {
    let p = pki("resume", "localhost");
    let acceptor = TlsAcceptor::new(p.files.clone()).unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config(&p.cert_der, version);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = ClientConnection::new(Arc::clone(&config), name).unwrap();
            let mut server = acceptor.accept().unwrap();
            let mut plain = BytesMut::new();
            pump(&mut client, &mut server, &mut plain);
            // TLS 1.3 tickets come after the handshake: let the client read them.
            assert_eq!(client_reads(&mut client, &mut server, b"x"), b"x");
            kinds.push(server.resumed());
        }
        assert_eq!(kinds, [false, true], "{version:?}");
    }
}

#[test]
fn reload_serves_the_new_pair_to_new_connections_only() {
    let old = pki("reload", "localhost");
    let acceptor = TlsAcceptor::new(old.files.clone()).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut before = ClientConnection::new(
        client_config(&old.cert_der, &rustls::version::TLS13),
        name.clone(),
    )
    .unwrap();
    let mut before_server = acceptor.accept().unwrap();
    let mut plain = BytesMut::new();
    pump(&mut before, &mut before_server, &mut plain);

    let new = pki("reload-new", "localhost");
    std::fs::copy(&new.files.cert, &old.files.cert).unwrap();
    std::fs::copy(&new.files.key, &old.files.key).unwrap();
    acceptor.reload().unwrap();
    // A client trusting only the new certificate now succeeds...
    let mut after = ClientConnection::new(
        client_config(&new.cert_der, &rustls::version::TLS13),
        name.clone(),
    )
    .unwrap();
    let mut after_server = acceptor.accept().unwrap();
    pump(&mut after, &mut after_server, &mut plain);
    assert!(!after_server.is_handshaking());
    // ...and the connection made before the reload carries on.
    assert_eq!(
        client_reads(&mut before, &mut before_server, b"still here"),
        b"still here"
    );
    // A failed reload keeps the pair in service.
    std::fs::write(&old.files.key, "not a key").unwrap();
    assert!(matches!(acceptor.reload(), Err(TlsConfigError::Pem { .. })));
    let mut again =
        ClientConnection::new(client_config(&new.cert_der, &rustls::version::TLS13), name).unwrap();
    let mut again_server = acceptor.accept().unwrap();
    pump(&mut again, &mut again_server, &mut plain);
    assert!(!again_server.is_handshaking());
}

#[test]
fn plain_http_and_garbage_fail_with_an_alert_and_truncation_waits() {
    let p = pki("bad", "localhost");
    let acceptor = TlsAcceptor::new(p.files.clone()).unwrap();
    for junk in [
        &b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..],
    ] {
        let mut server = acceptor.accept().unwrap();
        let mut plain = BytesMut::new();
        let mut alert = Vec::new();
        assert!(
            server.read_tls(junk, &mut plain, &mut alert).is_err(),
            "{junk:?}"
        );
        assert!(plain.is_empty());
        assert_eq!(alert.first(), Some(&0x15), "an alert record for {junk:?}");
    }
    // Half a client hello: no error, nothing to say yet (the handshake timeout ends it).
    let name = ServerName::try_from("localhost").unwrap();
    let mut client =
        ClientConnection::new(client_config(&p.cert_der, &rustls::version::TLS13), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut server = acceptor.accept().unwrap();
    let mut plain = BytesMut::new();
    let mut out = Vec::new();
    server
        .read_tls(&hello[..hello.len() / 2], &mut plain, &mut out)
        .unwrap();
    assert!(out.is_empty() && server.is_handshaking());
    assert_eq!(server.buffered(), hello.len() / 2);
    // The rest completes the hello, and the server answers it.
    server
        .read_tls(&hello[hello.len() / 2..], &mut plain, &mut out)
        .unwrap();
    assert!(!out.is_empty());
    assert_eq!(server.buffered(), 0);
}

#[test]
fn bad_files_at_start_name_the_file() {
    let p = pki("files", "localhost");
    let missing = TlsFiles {
        cert: p.dir.join("nope.pem"),
        key: p.files.key.clone(),
    };
    let err = TlsAcceptor::new(missing).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    std::fs::write(p.dir.join("empty.pem"), "").unwrap();
    let empty = TlsFiles {
        cert: p.dir.join("empty.pem"),
        key: p.files.key.clone(),
    };
    assert!(matches!(
        TlsAcceptor::new(empty),
        Err(TlsConfigError::Pem { .. })
    ));
    // A key that does not belong to the certificate.
    let other = pki("files-other", "localhost");
    let mismatched = TlsFiles {
        cert: p.files.cert.clone(),
        key: other.files.key.clone(),
    };
    let err = TlsAcceptor::new(mismatched).unwrap_err();
    assert!(matches!(err, TlsConfigError::Rustls { .. }), "{err}");
}

/// A writer that takes at most `budget` bytes, then says `WouldBlock`.
struct Socket {
    wire: Vec<u8>,
    budget: usize,
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.budget == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.budget);
        self.wire.extend_from_slice(&buf[..n]);
        self.budget -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_sealing_queue_never_writes_plaintext_and_keeps_the_order_through_short_writes() {
    use bytes::Bytes;
    use reactor::outbound::Outbound;
    use reactor::OutboundLimits;
    let limits = OutboundLimits {
        max_bytes: 1 << 20,
        max_messages: 1000,
        max_pending_pongs: 16,
    };
    let (_p, mut client, mut server) = handshaken("sealing");
    let mut q = Outbound::sealing();
    q.push_data(Bytes::from_static(b"first;"), &limits).unwrap();
    // Without its TLS state the queue writes nothing at all.
    let mut sock = Socket {
        wire: Vec::new(),
        budget: usize::MAX,
    };
    assert_eq!(q.flush(None, &mut sock).unwrap(), 0);
    assert!(sock.wire.is_empty());
    // Frames queued while the socket takes a few bytes at a time, a control frame among
    // them: the client reads them whole and in flush order.
    let big = Bytes::from(vec![b'x'; 100_000]);
    q.push_data(big.clone(), &limits).unwrap();
    sock.budget = 7;
    q.flush(Some(&mut server), &mut sock).unwrap();
    q.push_control(Bytes::from_static(b"ctl;"));
    q.push_data(Bytes::from_static(b"last"), &limits).unwrap();
    let mut rounds = 0;
    while !q.is_empty() {
        sock.budget = 1000;
        q.flush(Some(&mut server), &mut sock).unwrap();
        rounds += 1;
        assert!(rounds < 10_000, "the queue does not drain");
    }
    let got = client_decrypts(&mut client, &sock.wire);
    // The first batch (first; and the big one) was sealed before the control frame came.
    let want = [&b"first;"[..], &big, b"ctl;", b"last"].concat();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "order or content differs");
    // No plaintext marker ever crossed the wire in the clear.
    assert!(!sock.wire.windows(6).any(|w| w == b"first;"));
    assert_eq!(q.queued_bytes(), 0);
}

/// Handshake records full of junk (what a hello flood sends), whole or split across reads:
/// each fails that connection cleanly — an error, an alert at most, nothing more accepted
/// — and never panics inside rustls (which once took a whole reactor down).
#[test]
fn junk_handshake_records_fail_cleanly_whole_or_split() {
    let p = pki("junk", "localhost");
    let acceptor = TlsAcceptor::new(p.files.clone()).unwrap();
    let mut inputs: Vec<Vec<u8>> = (0..256u32)
        .map(|seed| {
            let mut record = vec![0x16, 0x03, 0x01, 0x00, 0xc8];
            record.extend((0..200u32).map(|j| (seed * 31 + j) as u8));
            record
        })
        .collect();
    inputs.push(b"GET /ws?uid=a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    inputs.push(vec![
        0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28, 0x15, 0x03, 0x03, 0x00, 0x02,
    ]);
    for record in &inputs {
        for split in [record.len(), 5, 9, 100].map(|s| s.min(record.len())) {
            let mut server = acceptor.accept().unwrap();
            let mut plain = BytesMut::new();
            let mut out = Vec::new();
            let first = server.read_tls(&record[..split], &mut plain, &mut out);
            let second = if first.is_ok() && split < record.len() {
                server.read_tls(&record[split..], &mut plain, &mut out)
            } else {
                first
            };
            assert!(plain.is_empty());
            assert!(
                !matches!(second, Err(reactor::tls::TlsError::Panicked)),
                "rustls panicked on {record:?} split at {split}"
            );
            if second.is_err() {
                let mut more = Vec::new();
                assert!(server.write_plain(b"x", &mut more).is_err());
                assert!(server.read_tls(record, &mut plain, &mut more).is_err());
            }
        }
    }
}

fn handshaken(tag: &str) -> (Pki, ClientConnection, TlsStream) {
    let p = pki(tag, "localhost");
    let acceptor = TlsAcceptor::new(p.files.clone()).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client =
        ClientConnection::new(client_config(&p.cert_der, &rustls::version::TLS13), name).unwrap();
    let mut server = acceptor.accept().unwrap();
    pump(&mut client, &mut server, &mut BytesMut::new());
    (p, client, server)
}

/// A frame far larger than a sealing batch is sealed a batch at a time: the ciphertext a
/// slow reader can hold stays near one batch (frames waiting unsealed are shared
/// references, counted by the limits and discardable), and a slow consumer's discard
/// keeps the frame whole on the wire.
#[test]
fn a_large_frame_is_sealed_a_batch_at_a_time_and_a_discard_keeps_it_whole() {
    use bytes::Bytes;
    use reactor::outbound::Outbound;
    use reactor::OutboundLimits;
    let limits = OutboundLimits {
        max_bytes: 4 << 20,
        max_messages: 1000,
        max_pending_pongs: 16,
    };
    let (_p, mut client, mut server) = handshaken("batches");
    let mut q = Outbound::sealing();
    let big = Bytes::from((0..600_000u32).map(|i| i as u8).collect::<Vec<_>>());
    q.push_data(big.clone(), &limits).unwrap();
    q.push_data(Bytes::from_static(b"dropped"), &limits)
        .unwrap();
    let mut sock = Socket {
        wire: Vec::new(),
        budget: 1000,
    };
    q.flush(Some(&mut server), &mut sock).unwrap();
    let most = q.sealed_bytes();
    assert!(most > 0 && most <= 70 * 1024, "{most} bytes sealed at once");
    // A slow consumer: queued data goes, the frame under way does not, the close follows.
    q.discard_data();
    q.push_close(Bytes::from_static(b"CLOSE"));
    let mut rounds = 0;
    while !q.is_empty() {
        sock.budget = 7_000;
        q.flush(Some(&mut server), &mut sock).unwrap();
        assert!(q.sealed_bytes() <= 70 * 1024);
        rounds += 1;
        assert!(rounds < 1_000, "the queue does not drain");
    }
    let got = client_decrypts(&mut client, &sock.wire);
    assert!(
        got == [&big[..], b"CLOSE"].concat(),
        "the frame was cut or reordered"
    );
}

/// The completion-based driver's path: sealed records taken for a send, written short,
/// given back, with frames queued meanwhile.
#[test]
fn sealed_records_survive_short_asynchronous_sends_in_order() {
    use bytes::Bytes;
    use reactor::outbound::Outbound;
    use reactor::OutboundLimits;
    let limits = OutboundLimits {
        max_bytes: 1 << 20,
        max_messages: 1000,
        max_pending_pongs: 16,
    };
    let (_p, mut client, mut server) = handshaken("async");
    let mut q = Outbound::sealing();
    let mut want = Vec::new();
    let mut wire = Vec::new();
    for round in 0..50u32 {
        let frame = Bytes::from(format!("frame {round};").repeat(1 + round as usize * 40));
        want.extend_from_slice(&frame);
        q.push_data(frame, &limits).unwrap();
        if round % 7 == 0 {
            q.push_control(Bytes::from(format!("ctl {round};")));
        }
        q.seal(&mut server).unwrap();
        let mut taken = Vec::new();
        q.take_for_send(&mut taken, 8);
        assert!(
            !taken.is_empty() || !q.has_unsent(),
            "a sealing queue with work gave nothing to send"
        );
        let all: Vec<u8> = taken.iter().flat_map(|f| f.bytes.to_vec()).collect();
        // Write a third of what was taken (a short send).
        let n = all.len() / 3;
        wire.extend_from_slice(&all[..n]);
        q.finish_send(&mut taken, n);
    }
    while !q.is_empty() {
        q.seal(&mut server).unwrap();
        let mut taken = Vec::new();
        q.take_for_send(&mut taken, 8);
        let all: Vec<u8> = taken.iter().flat_map(|f| f.bytes.to_vec()).collect();
        wire.extend_from_slice(&all);
        q.finish_send(&mut taken, all.len());
    }
    let got = String::from_utf8(client_decrypts(&mut client, &wire)).unwrap();
    // Control frames jump ahead at batch boundaries; data keeps its order.
    let data: String = got
        .split(';')
        .filter(|s| s.starts_with("frame"))
        .map(|s| format!("{s};"))
        .collect();
    assert_eq!(data.as_bytes(), &want[..]);
    assert_eq!(got.matches("ctl").count(), 8);
}

/// A handshake message that never completes cannot make a connection buffer more than
/// its limit (it is failed instead).
#[test]
fn a_handshake_past_its_limit_fails_the_connection() {
    let p = pki("hslimit", "localhost");
    let acceptor = TlsAcceptor::new(p.files.clone()).unwrap();
    let mut server = acceptor.accept().unwrap();
    server.limit_handshake(4096);
    // A client hello claiming 60 000 bytes, sent in full records of junk.
    let mut first = vec![0x01, 0x00, 0xea, 0x60];
    first.resize(16 * 1024, 0x41);
    let record = |payload: &[u8]| {
        let mut r = vec![0x16, 0x03, 0x01];
        r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        r.extend_from_slice(payload);
        r
    };
    let mut plain = BytesMut::new();
    let mut out = Vec::new();
    let result = server.read_tls(&record(&first), &mut plain, &mut out);
    assert!(
        matches!(result, Err(reactor::tls::TlsError::HandshakeTooLarge(4096))),
        "{result:?}"
    );
    assert_eq!(server.buffered(), 0, "the buffer is freed");
    // With the default limit a real client hello still gets through.
    let (_p, _client, server) = handshaken("hslimit-ok");
    assert!(!server.is_handshaking());
}
