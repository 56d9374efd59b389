//! `tls_server_config` turned into a rustls server configuration.
//!
//! rustls with the *ring* provider, the same rustls and the same provider
//! reqwest already brings in, so the program carries one TLS stack. The
//! exporter-toolkit's `client_auth_type` values are Go's policies; rustls
//! has no "ask for a certificate and accept any", so `RequestClientCert`
//! and `RequireAnyClientCert` get [`AnyClientCert`], which checks only that
//! the client holds the certificate's key (as Go does for these two, which
//! the toolkit's own documentation calls insecure).
//!
//! Verifying policies need `client_ca_file`: Go would fall back on the
//! system's roots, which for a scrape endpoint would let any publicly
//! certified client in; here that is an error instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use serde::Deserialize;

use super::key_error::KeyError;

/// `tls_server_config` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// The server's certificate chain (PEM), leaf first.
    pub(crate) cert_file: Option<String>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub(crate) key_file: Option<String>,
    /// One of Go's client-authentication policies; default `NoClientCert`.
    pub(crate) client_auth_type: Option<String>,
    /// CA certificates (PEM) that client certificates must chain to.
    pub(crate) client_ca_file: Option<String>,
    /// `TLS12` (default) or `TLS13`.
    pub(crate) min_version: Option<String>,
    /// `TLS12` or `TLS13` (default).
    pub(crate) max_version: Option<String>,
}

/// Go's client-authentication policies, by the names the toolkit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No client certificate is asked for (the default).
    NoClientCert,
    /// One is asked for; none, or any, is accepted.
    RequestClientCert,
    /// One is required; any is accepted.
    RequireAnyClientCert,
    /// One is asked for; if given, it must chain to `client_ca_file`.
    VerifyClientCertIfGiven,
    /// One is required and must chain to `client_ca_file`.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    const ALL: [(&'static str, ClientAuth); 5] = [
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        ("VerifyClientCertIfGiven", ClientAuth::VerifyClientCertIfGiven),
        ("RequireAndVerifyClientCert", ClientAuth::RequireAndVerifyClientCert),
    ];

    fn parse(written: &str) -> Option<ClientAuth> {
        match written {
            // The toolkit's older spelling of RequireAnyClientCert.
            "RequireClientCert" => Some(ClientAuth::RequireAnyClientCert),
            _ => Self::ALL.iter().find(|(name, _)| *name == written).map(|(_, auth)| *auth),
        }
    }
}

/// A TLS version as the toolkit writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    fn parse(key: &str, written: &str) -> Result<TlsVersion, KeyError> {
        match written {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(KeyError::invalid(
                key,
                format!("{written} is not supported (TLS 1.0 and 1.1 are obsolete): write TLS12 or TLS13"),
            )),
            _ => Err(KeyError::invalid(key, format!("unknown TLS version {written:?}: write TLS12 or TLS13"))),
        }
    }
}

/// The *ring* provider, the one reqwest's rustls uses in this program.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration `tls` describes, reading the files it
/// names (relative to `dir`).
pub(crate) fn server_config(
    tls: &RawTls,
    dir: &Path,
) -> Result<(Arc<ServerConfig>, ClientAuth), KeyError> {
    let cert_key = "tls_server_config.cert_file";
    let key_key = "tls_server_config.key_file";
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        let missing = if tls.cert_file.is_none() { cert_key } else { key_key };
        return Err(KeyError::invalid(missing, "missing: TLS needs both cert_file and key_file"));
    };
    let client_auth = match tls.client_auth_type.as_deref() {
        None => ClientAuth::NoClientCert,
        Some(written) => ClientAuth::parse(written).ok_or_else(|| {
            let names: Vec<&str> = ClientAuth::ALL.iter().map(|(name, _)| *name).collect();
            KeyError::invalid(
                "tls_server_config.client_auth_type",
                format!("unknown policy {written:?}: expected one of {}", names.join(", ")),
            )
        })?,
    };
    let versions = versions(tls)?;

    let certs = certificates(cert_key, &resolve(dir, cert_file))?;
    let key = private_key(key_key, &resolve(dir, key_file))?;
    let provider = provider();
    let verifier = client_verifier(tls, dir, client_auth, &provider)?;

    let builder =
        ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|err| KeyError::invalid("tls_server_config.min_version", err.to_string()))?;
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|err| {
        KeyError::invalid(
            key_key,
            format!("does not go with cert_file (the key must be the certificate's): {err}"),
        )
    })?;
    // The server speaks HTTP/1.1 only; saying so lets clients that offer h2
    // settle at once.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), client_auth))
}

/// A file name from the web configuration, taken from its directory when
/// relative.
fn resolve(dir: &Path, written: &str) -> PathBuf {
    dir.join(written)
}

fn read(key: &str, file: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(file).map_err(|source| KeyError::File {
        key: key.to_string(),
        file: file.to_path_buf(),
        source,
    })
}

/// The PEM certificates in `file`, at least one.
fn certificates(key: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let pem = read(key, file)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|err| {
            KeyError::invalid(key, format!("{}: not valid PEM: {err}", file.display()))
        })?;
    if certs.is_empty() {
        return Err(KeyError::invalid(
            key,
            format!("{}: no certificate in it (expected PEM, BEGIN CERTIFICATE)", file.display()),
        ));
    }
    Ok(certs)
}

/// The PEM private key in `file`. Its errors never quote the file.
fn private_key(key: &str, file: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
    let pem = read(key, file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        KeyError::invalid(
            key,
            format!(
                "{}: no private key in it (expected PEM: PKCS#8, PKCS#1 or SEC1)",
                file.display()
            ),
        )
    })
}

/// `min_version` to `max_version`, as rustls wants them.
fn versions(tls: &RawTls) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, KeyError> {
    let min_key = "tls_server_config.min_version";
    let max_key = "tls_server_config.max_version";
    let min = tls
        .min_version
        .as_deref()
        .map_or(Ok(TlsVersion::Tls12), |v| TlsVersion::parse(min_key, v))?;
    let max = tls
        .max_version
        .as_deref()
        .map_or(Ok(TlsVersion::Tls13), |v| TlsVersion::parse(max_key, v))?;
    if min > max {
        return Err(KeyError::invalid(max_key, "is older than min_version"));
    }
    let mut versions = Vec::new();
    if min == TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if max == TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    Ok(versions)
}

/// The verifier `client_auth` needs, or `None` for no client certificates.
fn client_verifier(
    tls: &RawTls,
    dir: &Path,
    client_auth: ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, KeyError> {
    let ca_key = "tls_server_config.client_ca_file";
    let auth_key = "tls_server_config.client_auth_type";
    let roots = match &tls.client_ca_file {
        None => None,
        Some(written) => {
            let file = resolve(dir, written);
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certificates(ca_key, &file)?);
            if added == 0 {
                return Err(KeyError::invalid(
                    ca_key,
                    format!("{}: no usable CA certificate in it", file.display()),
                ));
            }
            Some(Arc::new(roots))
        }
    };
    let any = |mandatory| {
        Ok(Some(Arc::new(AnyClientCert { provider: provider.clone(), mandatory })
            as Arc<dyn ClientCertVerifier>))
    };
    let verifying = |roots: Option<Arc<RootCertStore>>, optional: bool| {
        let Some(roots) = roots else {
            return Err(KeyError::invalid(
                ca_key,
                format!("missing: client_auth_type {client_auth:?} verifies client certificates against it"),
            ));
        };
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let builder = if optional { builder.allow_unauthenticated() } else { builder };
        builder
            .build()
            .map(Some)
            .map_err(|err| KeyError::invalid(ca_key, format!("cannot verify with it: {err}")))
    };
    match client_auth {
        ClientAuth::NoClientCert if roots.is_some() => Err(KeyError::invalid(
            auth_key,
            "client_ca_file is set but client_auth_type is NoClientCert: set RequireAndVerifyClientCert to check client certificates",
        )),
        ClientAuth::NoClientCert => Ok(None),
        ClientAuth::RequestClientCert => any(false),
        ClientAuth::RequireAnyClientCert => any(true),
        ClientAuth::VerifyClientCertIfGiven => verifying(roots, true),
        ClientAuth::RequireAndVerifyClientCert => verifying(roots, false),
    }
}

/// Asks for a client certificate and accepts any, once the client proved it
/// holds the certificate's key: Go's `RequestClientCert` and
/// `RequireAnyClientCert`.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
