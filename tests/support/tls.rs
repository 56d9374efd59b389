//! Certificates made at test time (no key is ever committed): a server CA
//! with server certificates for `127.0.0.1` and `localhost`, a client CA
//! with client certificates, written as PEM files into a test's directory;
//! and HTTPS clients that trust what a test tells them to.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SerialNumber,
};

/// A certificate authority that signs certificates for the tests.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub(crate) fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// The CA's certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA's certificate to `dir/name` and returns the path.
    pub(crate) fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A server certificate for `127.0.0.1` and `localhost`, with `subject`
    /// as its common name and `serial` as its serial number.
    pub(crate) fn server(&self, subject: &str, serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, subject);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate named `subject`.
    pub(crate) fn client(&self, subject: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, subject);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

/// A certificate and its key.
pub(crate) struct Leaf {
    /// The certificate, PEM.
    pub(crate) cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub(crate) key_pem: String,
    /// The certificate, DER: what a server sends in its handshake.
    pub(crate) der: Vec<u8>,
}

impl Leaf {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key` (mode 0600).
    pub(crate) fn write(&self, dir: &Path, stem: &str) {
        std::fs::write(dir.join(format!("{stem}.crt")), &self.cert_pem).unwrap();
        super::write_secret(&dir.join(format!("{stem}.key")), &self.key_pem);
    }

    /// The certificate and key together, as reqwest's `Identity` wants them.
    pub(crate) fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .unwrap()
    }
}

/// An HTTPS client that trusts only `ca` (or, with `None`, only the
/// system's roots), presents `identity` when given, and keeps the server's
/// certificate in each answer's `TlsInfo`. No connection is reused, so each
/// request makes a handshake of its own.
pub(crate) fn client(ca: Option<&TestCa>, identity: Option<&Leaf>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = ca {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity.identity());
    }
    builder.build().unwrap()
}

/// The certificate the server presented for `response`, DER.
pub(crate) fn served_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(reqwest::tls::TlsInfo::peer_certificate)
        .expect("an HTTPS answer carries the server's certificate")
        .to_vec()
}
