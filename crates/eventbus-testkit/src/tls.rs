//! Certificates made at test time for brokers with TLS listeners: a CA, a server certificate it
//! signed for `127.0.0.1` and `localhost`, and a second CA that signed nothing (a client that
//! trusts only it must refuse the server: the "unknown CA" case).
//!
//! Made fresh by every test that needs them (a key pair costs milliseconds), so no key ever
//! sits in the repository or the cache.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files written into a directory: see the accessors for which is which.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    dir: PathBuf,
}

impl TestCertificates {
    /// Makes a CA, a server certificate and key signed by it, and an unrelated CA, and writes
    /// them as PEM files into `dir` (created if missing).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = certificate_authority("eventbus test CA")?;
        let unknown = certificate_authority("eventbus unknown CA")?;
        let server_key = KeyPair::generate().map_err(other)?;
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(other)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "eventbus test broker");
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_cert = server.signed_by(&server_key, &*ca).map_err(other)?;
        let written = TestCertificates {
            dir: dir.to_owned(),
        };
        std::fs::write(written.ca(), ca.pem())?;
        std::fs::write(written.unknown_ca(), unknown.pem())?;
        std::fs::write(written.server_cert(), server_cert.pem())?;
        // PKCS#8, unencrypted: what nats-server, Kafka's PEM key stores and OpenSSL all read.
        std::fs::write(written.server_key(), server_key.serialize_pem())?;
        Ok(written)
    }

    /// The CA that signed the server certificate (clients trust it).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing here: a client trusting only it must refuse the server.
    pub fn unknown_ca(&self) -> PathBuf {
        self.dir.join("unknown-ca.pem")
    }

    /// The server's certificate (for `127.0.0.1` and `localhost`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }

    /// The server certificate's private key (PKCS#8 PEM, unencrypted).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
}

fn certificate_authority(name: &str) -> std::io::Result<CertifiedIssuer<'static, KeyPair>> {
    let key = KeyPair::generate().map_err(other)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, key).map_err(other)
}

fn other(e: rcgen::Error) -> std::io::Error {
    std::io::Error::other(format!("cannot make test certificates: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files() {
        let dir = std::env::temp_dir().join(format!("eventbus-tls-{}", std::process::id()));
        let certs = TestCertificates::create(&dir).expect("certificates");
        for (path, head) in [
            (certs.ca(), "-----BEGIN CERTIFICATE-----"),
            (certs.unknown_ca(), "-----BEGIN CERTIFICATE-----"),
            (certs.server_cert(), "-----BEGIN CERTIFICATE-----"),
            (certs.server_key(), "-----BEGIN PRIVATE KEY-----"),
        ] {
            let text = std::fs::read_to_string(&path).expect("written");
            assert!(text.starts_with(head), "{}: {text}", path.display());
        }
        assert_ne!(
            std::fs::read(certs.ca()).unwrap(),
            std::fs::read(certs.unknown_ca()).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
