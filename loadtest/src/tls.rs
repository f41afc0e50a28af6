//! `wss://` for the load tool: one rustls client configuration for the process, set from
//! `--tls` before a scenario starts. The server's certificate is not verified: the tool
//! measures a server's cost of TLS, not a PKI, and runs on loopback only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
static RESUME: OnceLock<()> = OnceLock::new();
static NEXT_NAME: AtomicUsize = AtomicUsize::new(0);

/// Server names connections cycle through when resuming: rustls keeps a few tickets per
/// name, so many connections at once need many names to each find a ticket (the server
/// has one certificate, and certificates are not checked).
pub(crate) const RESUME_NAMES: usize = 2048;

/// How connections use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Plain `ws://`.
    Off,
    /// `wss://`, a full handshake every time.
    Full,
    /// `wss://`, resuming with the tickets earlier connections received.
    Resume,
}

/// Sets the process's TLS mode; call once, before any connection.
pub(crate) fn init(mode: Mode) -> anyhow::Result<()> {
    if mode == Mode::Off {
        return Ok(());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = match mode {
        Mode::Resume => {
            let _ = RESUME.set(());
            rustls::client::Resumption::in_memory_sessions(2 * RESUME_NAMES)
        }
        _ => rustls::client::Resumption::disabled(),
    };
    let _ = CONFIG.set(Arc::new(config));
    Ok(())
}

/// A client state for one new connection, when TLS is on.
pub(crate) fn client() -> std::io::Result<Option<rustls::ClientConnection>> {
    let Some(config) = CONFIG.get() else {
        return Ok(None);
    };
    let name = if resuming() {
        let i = NEXT_NAME.fetch_add(1, Ordering::Relaxed) % RESUME_NAMES;
        format!("c{i}.localhost")
    } else {
        "localhost".to_owned()
    };
    let name = ServerName::try_from(name).map_err(std::io::Error::other)?;
    rustls::ClientConnection::new(Arc::clone(config), name)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Whether connections resume with tickets (`--tls resume`).
pub(crate) fn resuming() -> bool {
    RESUME.get().is_some()
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
