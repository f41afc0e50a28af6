//! The server side of TLS: what every new connection is handed, and its reload.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ProducesTickets;
use rustls::ServerConfig;

use super::stream::TlsStream;

/// Where the certificate chain and its key are read from, at start and on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate and key cannot be served; one line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file is missing or unreadable.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind needed, or a malformed one.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, an
    /// unsupported key type).
    #[error("certificate {cert} with key {key}: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The error.
        source: rustls::Error,
    },
}

/// Hands each new connection the current server configuration; [`TlsAcceptor::reload`]
/// swaps it for one read from the files again. A connection keeps the configuration it
/// started with, so a reload never drops or disturbs one.
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    /// Kept across reloads, so tickets issued before a reload still resume after it.
    ticketer: Arc<dyn ProducesTickets>,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    status: Arc<Status>,
}

/// What `/metrics` shows of the certificate served and of reloads.
#[derive(Debug, Default)]
struct Status {
    /// The served leaf certificate's validity, in seconds since the Unix epoch (0, 0 when
    /// it could not be read).
    not_before: AtomicI64,
    not_after: AtomicI64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

/// The crypto provider: aws-lc-rs, chosen by measurement against ring (bench/tls/,
/// bench/RESULTS.md): a third less memory per idle connection, faster TLS 1.2 handshakes,
/// TLS 1.3 level.
pub fn default_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsAcceptor {
    /// Reads the files and builds the configuration; fails with a one-line reason.
    pub fn new(files: TlsFiles) -> Result<TlsAcceptor, TlsConfigError> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|source| {
            TlsConfigError::Rustls {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            }
        })?;
        TlsAcceptor::with_provider(files, default_provider(), ticketer)
    }

    /// The same with another crypto provider and its ticketer (bench/tls compares them).
    pub fn with_provider(
        files: TlsFiles,
        provider: Arc<CryptoProvider>,
        ticketer: Arc<dyn ProducesTickets>,
    ) -> Result<TlsAcceptor, TlsConfigError> {
        let (config, validity) = build(&files, &provider, &ticketer)?;
        let status = Status::default();
        status.set_validity(validity);
        Ok(TlsAcceptor {
            files,
            provider,
            ticketer,
            current: Arc::new(RwLock::new(config)),
            status: Arc::new(status),
        })
    }

    /// Reads the files again; on success new connections get the new pair, on failure
    /// the old one stays in service and the reason is returned. Counted either way.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        match build(&self.files, &self.provider, &self.ticketer) {
            Ok((config, validity)) => {
                *self.current.write() = config;
                self.status.set_validity(validity);
                self.status.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.status.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// When the certificate served stops being valid, in seconds since the Unix epoch;
    /// `None` when its validity could not be read.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.status.not_after.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// Reloads that succeeded and that failed.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.status.reloads_ok.load(Ordering::Relaxed),
            self.status.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Why the certificate served is not valid now (expired, not yet valid), if it is not:
    /// rustls does not check its own certificate, and clients will refuse it.
    pub fn validity_problem(&self) -> Option<String> {
        let not_before = self.status.not_before.load(Ordering::Relaxed);
        let not_after = self.not_after()?;
        let now = unix_now();
        if now > not_after {
            Some(format!("expired {} s ago", now - not_after))
        } else if now < not_before {
            Some(format!("not valid for another {} s", not_before - now))
        } else {
            None
        }
    }

    /// The files served.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A TLS server state for one new connection.
    pub fn accept(&self) -> Result<TlsStream, rustls::Error> {
        let config = Arc::clone(&self.current.read());
        TlsStream::new(config)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The leaf's validity period, in seconds since the Unix epoch.
fn validity(leaf: &CertificateDer<'_>) -> Option<Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// A certificate's notBefore and notAfter, in seconds since the Unix epoch.
type Validity = (i64, i64);

impl Status {
    fn set_validity(&self, validity: Option<Validity>) {
        let (not_before, not_after) = validity.unwrap_or((0, 0));
        self.not_before.store(not_before, Ordering::Relaxed);
        self.not_after.store(not_after, Ordering::Relaxed);
    }
}

/// The configuration, and the leaf certificate's validity (if it can be read).
fn build(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<(Arc<ServerConfig>, Option<Validity>), TlsConfigError> {
    let certs = read_certs(&files.cert)?;
    let validity = validity(&certs[0]);
    let key = read_key(&files.key)?;
    let rustls_error = |source| TlsConfigError::Rustls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless resumption: a ticket costs the server nothing per client, where a session
    // cache would cost memory per client for as long as it is kept.
    config.ticketer = Arc::clone(ticketer);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok((Arc::new(config), validity))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.clone(),
        source,
    })
}

fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            path: path.clone(),
            what: format!("malformed certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            path: path.clone(),
            what: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &PathBuf) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsConfigError::Pem {
        path: path.clone(),
        what: format!("no usable private key: {e}"),
    })
}
