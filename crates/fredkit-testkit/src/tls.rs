//! TLS for test servers: a throwaway CA with a server and a client certificate, made at run
//! time with `rcgen` (never checked in), and the blocking TLS client of the test plumbing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Result, TestkitError};
use crate::guardian;

/// What [`TlsCerts::generate_with`] makes. The default: a server certificate for
/// `127.0.0.1` and `localhost`, valid from 1975 to 4096.
#[derive(Clone, Debug)]
pub struct CertOptions {
    server_names: Vec<String>,
    expired: bool,
}

impl Default for CertOptions {
    fn default() -> Self {
        CertOptions {
            server_names: vec!["127.0.0.1".into(), "localhost".into()],
            expired: false,
        }
    }
}

impl CertOptions {
    /// The server certificate's subject alternative names (IP addresses or DNS names),
    /// instead of `127.0.0.1` and `localhost`: e.g. `["other.example"]` for a certificate
    /// that does not name the address a test connects to.
    pub fn server_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.server_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Makes the server certificate expired: valid only during the year 2000.
    pub fn expired(mut self, expired: bool) -> Self {
        self.expired = expired;
        self
    }
}

/// A throwaway certificate authority, a server certificate and a client certificate (ECDSA
/// P-256, signed by the CA), as PEM files in a temp dir that is removed when the value is
/// dropped (or by the orphan guardian when the test process dies).
///
/// A TLS [`RedisServer`](crate::RedisServer) presents the server certificate, trusts the CA
/// for client certificates (`tls-auth-clients`), and uses the server certificate as its own
/// client certificate on replication, cluster bus and sentinel links. A test points its
/// client at [`TlsCerts::ca_path`] (and, for mTLS, [`TlsCerts::client_cert_path`] and
/// [`TlsCerts::client_key_path`]).
pub struct TlsCerts {
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCerts")
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> TestkitError + '_ {
    move |e| TestkitError::io(what, std::io::Error::other(e.to_string()))
}

impl TlsCerts {
    /// A new CA, a server certificate for `127.0.0.1` and `localhost`, and a client
    /// certificate.
    ///
    /// # Errors
    /// [`TestkitError::Io`] if a key or certificate cannot be made or written.
    pub fn generate() -> Result<Arc<TlsCerts>> {
        Self::generate_with(CertOptions::default())
    }

    /// Like [`TlsCerts::generate`], with the server certificate as `opts` says.
    ///
    /// # Errors
    /// As [`TlsCerts::generate`].
    pub fn generate_with(opts: CertOptions) -> Result<Arc<TlsCerts>> {
        let dir = tempfile::Builder::new()
            .prefix("fredkit-tls-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir for TLS certificates", e))?;
        guardian::ensure_started()?;
        guardian::watch_dir(dir.path())?;

        let ca_key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
        let mut ca =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("the CA parameters"))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a client given another testkit CA finds no issuer of that
        // name (unknown issuer), as with a real wrong CA.
        let ca_name = format!("fredkit testkit CA {:08x}", rand::random::<u32>());
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(rcgen_err("self-signing the CA"))?;

        let server_key = KeyPair::generate().map_err(rcgen_err("generating the server key"))?;
        let mut server = CertificateParams::new(opts.server_names.clone())
            .map_err(rcgen_err("the server certificate's names"))?;
        server
            .distinguished_name
            .push(DnType::CommonName, "fredkit testkit server");
        // Redis uses its server certificate as its client certificate on replication, the
        // cluster bus and sentinel links.
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if opts.expired {
            server.not_before = rcgen::date_time_ymd(2000, 1, 1);
            server.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let server_cert = server
            .signed_by(&server_key, &ca_cert, &ca_key)
            .map_err(rcgen_err("signing the server certificate"))?;

        let client_key = KeyPair::generate().map_err(rcgen_err("generating the client key"))?;
        let mut client = CertificateParams::new(Vec::<String>::new())
            .map_err(rcgen_err("the client certificate parameters"))?;
        client
            .distinguished_name
            .push(DnType::CommonName, "fredkit testkit client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client
            .signed_by(&client_key, &ca_cert, &ca_key)
            .map_err(rcgen_err("signing the client certificate"))?;

        let certs = TlsCerts {
            ca_pem: ca_cert.pem(),
            dir,
        };
        let files = [
            ("ca.pem", certs.ca_pem.clone()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client_cert.pem()),
            ("client.key", client_key.serialize_pem()),
        ];
        for (name, body) in files {
            std::fs::write(certs.dir.path().join(name), body)
                .map_err(|e| TestkitError::io(format!("writing {name}"), e))?;
        }
        Ok(Arc::new(certs))
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The CA certificate (PEM file) that signed the server and client certificates.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// The server certificate (PEM file).
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    /// The server's private key (PEM file).
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    /// The client certificate (PEM file), for servers with `tls-auth-clients yes`.
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }
    /// The client certificate's private key (PEM file).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The query options that point a fredkit-conn URL at these files:
    /// `ca_file=...&client_cert_file=...&client_key_file=...` (percent-encoded).
    pub fn url_options(&self) -> String {
        let enc = |p: PathBuf| crate::server::percent_encode(&p.to_string_lossy());
        format!(
            "ca_file={}&client_cert_file={}&client_key_file={}",
            enc(self.ca_path()),
            enc(self.client_cert_path()),
            enc(self.client_key_path())
        )
    }

    /// The rustls client configuration of the test plumbing: presents the client
    /// certificate and accepts any server certificate (the plumbing talks to a server it
    /// started itself, also one with an expired or misnamed certificate on purpose).
    pub(crate) fn client_config(&self) -> std::io::Result<Arc<rustls::ClientConfig>> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
        };
        let cert = CertificateDer::from_pem_file(self.client_cert_path())
            .map_err(|e| invalid("reading client.pem", &e))?;
        let key = PrivateKeyDer::from_pem_file(self.client_key_path())
            .map_err(|e| invalid("reading client.key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", &e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_client_auth_cert(vec![cert], key)
            .map_err(|e| invalid("the client certificate", &e))?;
        Ok(Arc::new(config))
    }
}

/// Accepts any server certificate (still checking the handshake signatures): the test
/// plumbing only ever talks to servers it started.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a TLS server of the testkit is given: its certificates and whether it requires
/// client certificates.
#[derive(Clone, Debug)]
pub(crate) struct ServerTls {
    pub(crate) certs: Arc<TlsCerts>,
    pub(crate) auth_clients: bool,
}

impl ServerTls {
    /// The `redis-server` arguments (also the lines of a sentinel's config file), after
    /// `port 0` and `tls-port PORT`. Every link is TLS: clients, replication, cluster bus.
    pub(crate) fn args(&self) -> Vec<(String, String)> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        vec![
            ("tls-cert-file".into(), path(self.certs.server_cert_path())),
            ("tls-key-file".into(), path(self.certs.server_key_path())),
            ("tls-ca-cert-file".into(), path(self.certs.ca_path())),
            (
                "tls-auth-clients".into(),
                if self.auth_clients { "yes" } else { "no" }.into(),
            ),
            ("tls-replication".into(), "yes".into()),
        ]
    }
}

/// A blocking TLS stream to `127.0.0.1` (verified against the testkit's CA).
pub(crate) type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// Wraps a connected socket in TLS; the handshake runs on the first read or write.
pub(crate) fn wrap(certs: &TlsCerts, tcp: std::net::TcpStream) -> std::io::Result<TlsStream> {
    let config = certs.client_config()?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

#[cfg(test)]
mod tests {
    use crate::{shared_tls_url, Topology};

    /// Every shared TLS topology starts (TLS-only processes formed over TLS links) and hands
    /// out a `rediss` URL carrying the CA and the client certificate.
    #[test]
    fn shared_tls_topologies_start() {
        for topology in Topology::ALL {
            let url = shared_tls_url(topology).unwrap_or_else(|e| panic!("{topology:?}: {e}"));
            assert!(url.starts_with("rediss"), "{url}");
            assert!(url.contains("ca_file="), "{url}");
        }
    }
}
