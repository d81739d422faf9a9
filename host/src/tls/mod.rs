//! TLS for listeners (server side, certificates reloaded on change: see
//! [`reload`]) and for upstream connections (client side). rustls only: TLS 1.2
//! and 1.3, and only ring's default suites — all AEAD (AES-GCM,
//! ChaCha20-Poly1305) with ephemeral (EC)DHE key exchange; no CBC, no RSA key
//! transport, no renegotiation, no compression.

pub mod reload;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{TlsSource, UpstreamTls};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |message: String| TlsError::File { path: path.display().to_string(), message };
    let data = std::fs::read(path).map_err(|e| file(format!("cannot read: {e}")))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<_, _>>()
        .map_err(|e| file(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file("no certificate in file (expected -----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = |message: String| TlsError::File { path: path.display().to_string(), message };
    // The key's bytes are wiped once parsed (rustls keeps its own copy).
    let data = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| file(format!("cannot read: {e}")))?);
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| file(format!("not a PEM key: {e}")))?
        .ok_or_else(|| file("no private key in file (expected -----BEGIN PRIVATE KEY-----)".into()))
}

/// A listener's TLS configuration.
pub struct ServerTls {
    /// rustls configuration.
    pub config: Arc<ServerConfig>,
    /// PEM of a generated self-signed certificate (so the demo can tell clients what to trust).
    pub self_signed_pem: Option<String>,
    /// The certificate in service (watch it to reload on change).
    pub certs: Arc<reload::CertStore>,
}

/// Build a listener's TLS configuration (`None` for plaintext). `alpn`: the
/// protocols offered (e.g. `http/1.1`), empty for PostgreSQL.
pub fn server_config(source: &TlsSource, alpn: &[&[u8]]) -> Result<Option<ServerTls>, TlsError> {
    let (certs, pem) = match source {
        TlsSource::None => return Ok(None),
        TlsSource::SelfSigned => {
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
            let pem = ck.cert.pem();
            let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            (reload::CertStore::fixed(vec![ck.cert.der().clone()], key)?, Some(pem))
        }
        TlsSource::Files { cert, key } => (reload::CertStore::from_files(cert, key)?, None),
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(ServerTls { config: Arc::new(cfg), self_signed_pem: pem, certs }))
}

/// Build the client configuration for an upstream, or `None` for plain TCP.
pub fn upstream_config(mode: &UpstreamTls) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let cfg = match mode {
        UpstreamTls::Disable => return Ok(None),
        UpstreamTls::Require => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider()))).with_no_client_auth()
        }
        UpstreamTls::VerifyFull(ca) => {
            let mut roots = RootCertStore::empty();
            match ca {
                Some(path) => {
                    for c in read_certs(path)? {
                        roots.add(c)?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(cfg)))
}

/// Server name for an upstream host.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::File { path: host.into(), message: "not a valid TLS server name".into() })
}

/// `sslmode = "require"`: encrypt, do not verify (libpq semantics). Documented
/// as weaker than verify-full; the config reference says so.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
