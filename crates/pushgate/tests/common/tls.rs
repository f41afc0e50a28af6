//! Certificates for the `wss://` tests: a private CA the clients trust and leaves it
//! signs for 127.0.0.1 and localhost, written as PEM files in a directory of their own.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::Gateway;

/// A CA and the files a gateway is started with.
pub struct TestPki {
    pub dir: PathBuf,
    /// The CA's certificate (what clients trust).
    pub ca: PathBuf,
    /// The leaf chain and key the gateway serves.
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl TestPki {
    /// A new CA and a leaf with common name `cn`.
    pub fn new(tag: &str, cn: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("pushgate-wss-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pushgate test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let pki = TestPki {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            ca,
            ca_params,
            ca_key,
        };
        pki.issue(&pki.cert, &pki.key, cn, false);
        pki
    }

    /// Writes a leaf signed by the CA (already expired, if `expired`) to `cert` and `key`.
    pub fn issue(&self, cert: &Path, key: &Path, cn: &str, expired: bool) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let leaf_key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
        // Written beside and renamed, so a reload never reads half a file.
        let tmp = cert.with_extension("tmp");
        std::fs::write(&tmp, leaf.pem()).unwrap();
        std::fs::rename(&tmp, cert).unwrap();
        std::fs::write(&tmp, leaf_key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, key).unwrap();
    }

    /// A gateway serving this leaf (wss:// only), with `extra` arguments.
    pub fn gateway(&self, extra: &[&str]) -> Gateway {
        let cert = self.cert.display().to_string();
        let key = self.key.display().to_string();
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        Gateway::dev(&args)
    }
}

/// A gateway with `extra` arguments, serving `tls`'s leaf when given.
pub fn gateway(tls: Option<&TestPki>, extra: &[&str]) -> Gateway {
    match tls {
        Some(p) => p.gateway(extra),
        None => Gateway::dev(extra),
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
