//! Certificates made at test time: a CA, and server certificates it signs for `localhost`
//! and `127.0.0.1`, written as PEM files; and rustls clients that trust that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A private CA and one server identity it issued, as files in a temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate (PEM), for `localhost` and `127.0.0.1`.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Unique: a verifier finds the issuer by name, so two test CAs must not share one.
        params.distinguished_name.push(DnType::CommonName, format!("chatgate test CA {:08x}", fastrand::u32(..)));
        let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).expect("write CA");
        let issuer = Issuer::new(params, ca_key);
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let pki = TestPki { dir, issuer, ca, cert, key };
        pki.issue("chatgate test server");
        pki
    }

    /// Issues a new server certificate with this common name and writes it and its key over
    /// [`TestPki::cert`] and [`TestPki::key`]; returns the certificate (DER).
    pub fn issue(&self, name: &str) -> Vec<u8> {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("server certificate");
        std::fs::write(&self.cert, cert.pem()).expect("write certificate");
        std::fs::write(&self.key, key.serialize_pem()).expect("write key");
        cert.der().to_vec()
    }

    /// A path in the same temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rustls client that trusts this CA only.
    pub fn client(&self) -> Arc<ClientConfig> {
        client_trusting(&self.ca)
    }

    /// A `wss://` set-up for tungstenite.
    pub fn connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.client())
    }

    /// A TLS connection to `addr` as `localhost`.
    pub async fn connect(&self, addr: SocketAddr) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        TlsConnector::from(self.client()).connect(name, tcp).await.expect("TLS handshake")
    }
}

/// A rustls client whose only root is the CA in `ca` (PEM).
pub fn client_trusting(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA certificate")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
