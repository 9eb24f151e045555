//! TLS settings ([`TlsOptions`]): which roots to trust, the client certificate (mTLS), the
//! name to verify, and the explanation of a failed handshake.
//!
//! Verification is always on unless [`TlsOptions::danger_accept_invalid_certs`] turns it
//! off: the server's certificate chain must lead to a trusted root (the machine's native
//! roots, as fred's default, or the configured `ca_file`/`ca_pem` instead), be within its
//! validity period, and name the host connected to (or the
//! [`server_name`](TlsOptions::server_name) override).

use crate::config::RedisConfig;
use crate::secret::Secret;
use fredkit_core::{Error, Result};
use std::fmt;
use std::path::PathBuf;

/// PEM text given inline or a file to read it from (at connect).
#[derive(Clone, PartialEq, Eq)]
enum Pem {
    File(PathBuf),
    Text(Secret),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => write!(f, "File({})", p.display()),
            Pem::Text(_) => f.write_str("Pem(..)"),
        }
    }
}

/// TLS settings of a [`RedisConfig`]: the roots to trust, a client certificate for mutual
/// TLS, a server-name override, and (for local development only) turning verification off.
///
/// Setting them with [`RedisConfigBuilder::tls`](crate::RedisConfigBuilder::tls) turns TLS
/// on (as a `rediss://` URL does). The same settings come from URL options (`ca_file`,
/// `client_cert_file`, `client_key_file`, `tls_server_name`) or a config file's `tls`
/// section (see [`RedisConfig`]).
///
/// | setting | default | effect |
/// |---|---|---|
/// | roots | the machine's native roots (as fred) | [`ca_file`](Self::ca_file) / [`ca_pem`](Self::ca_pem) replace them |
/// | client certificate | none | [`client_cert_file`](Self::client_cert_file) / [`client_cert_pem`](Self::client_cert_pem): mTLS (`tls-auth-clients yes`) |
/// | name verified | the host of each node | [`server_name`](Self::server_name) (also sent as SNI) |
/// | verification | on | [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs) |
///
/// Files are read when connections are made ([`Redis::connect`](crate::Redis::connect),
/// `dedicated()`, `subscriber()`): a missing or unreadable file, or one without a
/// certificate or key, is an [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) error
/// naming the setting and the file. The key is never shown by `Debug`.
///
/// ```
/// use fredkit_conn::{RedisConfig, TlsOptions};
///
/// let config = RedisConfig::builder()
///     .url("redis://redis.internal:6380")
///     .tls(
///         TlsOptions::new()
///             .ca_file("/etc/redis/ca.pem") // trust this CA (instead of the native roots)
///             .client_cert_file("/etc/redis/client.pem", "/etc/redis/client.key"), // mTLS
///     )
///     .build()?;
/// assert!(config.tls());
/// assert!(config.to_string().starts_with("rediss://"));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[must_use]
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    ca: Option<Pem>,
    client_cert: Option<Pem>,
    client_key: Option<Pem>,
    server_name: Option<String>,
    danger_accept_invalid_certs: bool,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key.as_ref().map(|_| "***"))
            .field("server_name", &self.server_name)
            .field(
                "danger_accept_invalid_certs",
                &self.danger_accept_invalid_certs,
            )
            .finish()
    }
}

impl TlsOptions {
    /// The defaults: native roots, no client certificate, the host's own name, verification on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in this PEM file (a bundle may hold several) instead of the
    /// machine's native roots. Read at connect.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Pem::File(path.into()));
        self
    }

    /// Trusts the CA certificates in this PEM text instead of the machine's native roots.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca = Some(Pem::Text(Secret::new(pem.into())));
        self
    }

    /// Presents this client certificate (PEM file, leaf first, then any intermediates) with
    /// its private key (PEM file: PKCS#8, PKCS#1 or SEC1) for servers that require client
    /// certificates (`tls-auth-clients yes`). Read at connect.
    pub fn client_cert_file(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(Pem::File(cert.into()));
        self.client_key = Some(Pem::File(key.into()));
        self
    }

    /// Like [`client_cert_file`](Self::client_cert_file), with the certificate and key as PEM
    /// text (the key is kept as a [`Secret`]).
    pub fn client_cert_pem(mut self, cert: impl Into<String>, key: impl Into<Secret>) -> Self {
        self.client_cert = Some(Pem::Text(Secret::new(cert.into())));
        self.client_key = Some(Pem::Text(key.into()));
        self
    }

    /// Verifies the servers' certificates against this name (and sends it as SNI) instead of
    /// the host each connection goes to: for servers reached by IP address or through a
    /// tunnel whose certificate names a DNS name. Applies to a standalone server, every node
    /// of a cluster (also those discovered from `CLUSTER SLOTS`) and the sentinels; the
    /// primary that sentinels report is verified against the address they report.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// **Local development only.** Accepts any server certificate: an unknown issuer, an
    /// expired certificate, another host's certificate. The traffic is still encrypted, but
    /// anyone between this process and Redis can read and change it. fredkit logs a warning
    /// at ERROR level every time a handle is connected with this on. Default off.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.danger_accept_invalid_certs = accept;
        self
    }

    /// Whether [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs) is on.
    pub fn accepts_invalid_certs(&self) -> bool {
        self.danger_accept_invalid_certs
    }

    /// The server-name override, if any.
    pub fn server_name_override(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Whether a client certificate is configured.
    pub fn has_client_cert(&self) -> bool {
        self.client_cert.is_some()
    }

    /// True unless every setting is the default.
    pub(crate) fn is_set(&self) -> bool {
        *self != TlsOptions::default()
    }

    /// Sets one option of a URL (`ca_file`, `client_cert_file`, `client_key_file`,
    /// `tls_server_name`); `Ok(false)` when `key` is not a TLS option.
    pub(crate) fn set_url_option(&mut self, key: &str, value: String) -> bool {
        match key {
            "ca_file" => self.ca = Some(Pem::File(value.into())),
            "client_cert_file" => self.client_cert = Some(Pem::File(value.into())),
            "client_key_file" => self.client_key = Some(Pem::File(value.into())),
            "tls_server_name" => self.server_name = Some(value),
            _ => return false,
        }
        true
    }

    /// The URL options this module knows, for "unknown option" messages.
    pub(crate) const URL_OPTIONS: &'static str =
        "ca_file, client_cert_file, client_key_file, tls_server_name";

    /// Checks what can be checked without reading files: a certificate needs its key and a
    /// key its certificate, and the options need TLS.
    pub(crate) fn validate(&self, tls: bool) -> Result<()> {
        if self.is_set() && !tls {
            return Err(Error::config(
                "TLS options (CA, client certificate, server name) are set but the URL is not \
                 rediss://: use rediss:// (or RedisConfigBuilder::tls) to turn TLS on",
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err(Error::config(
                "a TLS client certificate is set without its key: set client_key_file too",
            )),
            (None, Some(_)) => Err(Error::config(
                "a TLS client key is set without its certificate: set client_cert_file too",
            )),
            _ => Ok(()),
        }
    }
}

/// The `tls` section of a config file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    ca_pem: Option<String>,
    #[serde(default)]
    client_cert_file: Option<PathBuf>,
    #[serde(default)]
    client_key_file: Option<PathBuf>,
    #[serde(default)]
    client_cert_pem: Option<String>,
    #[serde(default)]
    client_key_pem: Option<Secret>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    danger_accept_invalid_certs: bool,
}

impl TlsFile {
    /// The options this section sets, on top of `base` (those of the URL).
    pub(crate) fn apply(self, mut base: TlsOptions) -> std::result::Result<TlsOptions, String> {
        if self.ca_file.is_some() && self.ca_pem.is_some() {
            return Err("tls: set ca_file or ca_pem, not both".into());
        }
        if let Some(p) = self.ca_file {
            base.ca = Some(Pem::File(p));
        }
        if let Some(p) = self.ca_pem {
            base.ca = Some(Pem::Text(Secret::new(p)));
        }
        if let Some(p) = self.client_cert_file {
            base.client_cert = Some(Pem::File(p));
        }
        if let Some(p) = self.client_key_file {
            base.client_key = Some(Pem::File(p));
        }
        if let Some(p) = self.client_cert_pem {
            base.client_cert = Some(Pem::Text(Secret::new(p)));
        }
        if let Some(p) = self.client_key_pem {
            base.client_key = Some(Pem::Text(p));
        }
        if let Some(n) = self.server_name {
            base.server_name = Some(n);
        }
        base.danger_accept_invalid_certs |= self.danger_accept_invalid_certs;
        Ok(base)
    }
}

/// How a certificate explanation is marked inside the rustls error that reaches fred's
/// error details (`General("fredkit-tls: ...")`).
const MARK: &str = "fredkit-tls: ";

/// The explanation of a failed connection attempt when it is a TLS failure we can name:
/// the server's certificate was rejected (unknown issuer, hostname mismatch, expired), or
/// the server rejected us (no or an untrusted client certificate). These are
/// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) errors: retrying does not help.
/// `None` for anything else.
pub(crate) fn explain(details: &str, config: &RedisConfig) -> Option<Error> {
    if let Some(start) = details.find(MARK) {
        let rest = &details[start.saturating_add(MARK.len())..];
        // The message sits in a Debug-quoted string: up to the closing quote, unescaped.
        let end = rest.find("\")").unwrap_or(rest.len());
        let message = rest[..end].replace("\\\"", "\"").replace("\\\\", "\\");
        return Some(Error::config(format!("{message} (at {config})")));
    }
    let alert = details
        .split("AlertReceived(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())?;
    let has_cert = config.tls_options().has_client_cert();
    let message = match alert {
        "CertificateRequired" => "the server requires a client certificate (tls-auth-clients \
             yes): set client_cert_file and client_key_file (TlsOptions::client_cert_file)"
            .to_string(),
        "HandshakeFailure" | "BadCertificate" if !has_cert => format!(
            "the server refused the TLS handshake ({alert}): it probably requires a client \
             certificate (tls-auth-clients yes): set client_cert_file and client_key_file"
        ),
        "UnknownCA" | "BadCertificate" | "CertificateUnknown" | "DecryptError" if has_cert => {
            format!(
                "the server rejected our client certificate ({alert}): check that it is signed \
                 by a CA in the server's tls-ca-cert-file and that it is still valid"
            )
        }
        other => format!("the server ended the TLS handshake with the alert {other}"),
    };
    Some(Error::config(format!("{message} (at {config})")))
}

#[cfg(feature = "tls")]
pub(crate) use rustls_impl::{fred_tls, server_name_for};

#[cfg(feature = "tls")]
mod rustls_impl {
    use super::{Pem, TlsOptions, MARK};
    use fred::rustls;
    use fred::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use fred::rustls::pki_types::pem::PemObject;
    use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use fred::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
    use fred::types::config::{HostMapping, TlsConfig, TlsConnector, TlsHostMapping};
    use fredkit_core::{Error, Result};
    use std::sync::Arc;

    fn read(pem: &Pem, what: &str) -> Result<Vec<u8>> {
        match pem {
            Pem::Text(s) => Ok(s.expose().as_bytes().to_vec()),
            Pem::File(path) => std::fs::read(path).map_err(|e| {
                Error::config(format!(
                    "cannot read the TLS {what} file {}: {e}",
                    path.display()
                ))
            }),
        }
    }

    fn source(pem: &Pem) -> String {
        match pem {
            Pem::File(p) => format!("file {}", p.display()),
            Pem::Text(_) => "PEM text".to_string(),
        }
    }

    fn certs(pem: &Pem, what: &str) -> Result<Vec<CertificateDer<'static>>> {
        let bytes = read(pem, what)?;
        let certs: std::result::Result<Vec<_>, _> =
            CertificateDer::pem_slice_iter(&bytes).collect();
        let certs = certs.map_err(|e| {
            Error::config(format!(
                "the TLS {what} {} is not valid PEM: {e}",
                source(pem)
            ))
        })?;
        if certs.is_empty() {
            return Err(Error::config(format!(
                "the TLS {what} {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
                source(pem)
            )));
        }
        Ok(certs)
    }

    /// fred's TLS configuration for these options: a rustls client with the ring provider.
    pub(crate) fn fred_tls(opts: &TlsOptions, cluster: bool) -> Result<TlsConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS protocol versions: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if opts.danger_accept_invalid_certs {
            Arc::new(AcceptAny(provider.clone()))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &opts.ca {
                Some(ca) => {
                    for cert in certs(ca, "CA")? {
                        roots.add(cert).map_err(|e| {
                            Error::config(format!(
                                "the TLS CA {} holds a certificate rustls rejects: {e}",
                                source(ca)
                            ))
                        })?;
                    }
                }
                None => {
                    let native = rustls_native_certs();
                    for cert in native {
                        // A root rustls cannot parse is skipped (fred's default fails).
                        let _ = roots.add(cert);
                    }
                    if roots.is_empty() {
                        return Err(Error::config(
                            "no TLS root certificates found on this machine (install the \
                             ca-certificates package) and no ca_file is set: set ca_file to \
                             the CA that signed the server's certificate",
                        ));
                    }
                }
            }
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| Error::config(format!("TLS verifier: {e}")))?;
            Arc::new(Explaining { inner })
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&opts.client_cert, &opts.client_key) {
            (Some(cert), Some(key)) => {
                let chain = certs(cert, "client certificate")?;
                let bytes = read(key, "client key")?;
                let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                    Error::config(format!(
                        "the TLS client key {} holds no private key in PEM (PKCS#8, PKCS#1 or \
                         SEC1): {e}",
                        source(key)
                    ))
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::config(format!(
                        "the TLS client certificate {} and key {} do not fit together: {e}",
                        source(cert),
                        source(key)
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        let hostnames = match (&opts.server_name, cluster) {
            (Some(name), true) => TlsHostMapping::Custom(Arc::new(FixedName(name.clone()))),
            _ => TlsHostMapping::None,
        };
        Ok(TlsConfig {
            connector: TlsConnector::from(config),
            hostnames,
        })
    }

    fn rustls_native_certs() -> Vec<CertificateDer<'static>> {
        let found = fred::rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "fredkit: a native TLS root could not be loaded");
        }
        found.certs
    }

    /// The server name of a configured node: the override, if any.
    pub(crate) fn server_name_for(opts: &TlsOptions) -> Option<fred::bytes_utils::Str> {
        opts.server_name
            .as_deref()
            .map(fred::bytes_utils::Str::from)
    }

    /// The server-name override for every node a cluster reports.
    #[derive(Debug)]
    struct FixedName(String);

    impl HostMapping for FixedName {
        fn map(&self, _ip: &std::net::IpAddr, _default_host: &str) -> Option<String> {
            Some(self.0.clone())
        }
    }

    /// rustls's WebPKI verifier whose certificate errors say what failed and what to do.
    #[derive(Debug)]
    struct Explaining {
        inner: Arc<rustls::client::WebPkiServerVerifier>,
    }

    fn name_of(name: &ServerName<'_>) -> String {
        match name {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            other => format!("{other:?}"),
        }
    }

    /// `DnsName("a")` / `IpAddress(127.0.0.1)` as webpki reports presented names -> `a`.
    fn plain(presented: &str) -> String {
        presented
            .trim_start_matches("DnsName(")
            .trim_start_matches("IpAddress(")
            .trim_end_matches(')')
            .trim_matches('"')
            .to_string()
    }

    fn days(from: UnixTime, to: UnixTime) -> u64 {
        to.as_secs().saturating_sub(from.as_secs()) / 86_400
    }

    fn describe(e: &CertificateError, name: &ServerName<'_>) -> String {
        let name = name_of(name);
        match e {
            CertificateError::UnknownIssuer => format!(
                "certificate not trusted: unknown issuer — the certificate of {name} is not \
                 signed by a trusted root: set ca_file (or ca_pem) to the CA that signed it"
            ),
            CertificateError::BadSignature => format!(
                "certificate not trusted: bad signature — the certificate of {name} names a \
                 trusted CA as its issuer but that CA's key did not sign it: set ca_file (or \
                 ca_pem) to the CA that signed it"
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => {
                let names: Vec<String> = presented.iter().map(|p| plain(p)).collect();
                format!(
                    "hostname mismatch: certificate is for {}, connected to {} — connect by a \
                     name the certificate has, or set tls_server_name to one of them",
                    if names.is_empty() {
                        "no name".to_string()
                    } else {
                        names.join(", ")
                    },
                    name_of(expected)
                )
            }
            CertificateError::NotValidForName => format!(
                "hostname mismatch: the certificate does not name {name} — connect by a name \
                 the certificate has, or set tls_server_name"
            ),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "certificate expired: the certificate of {name} expired {} days ago — renew \
                 it on the server (or check this machine's clock)",
                days(*not_after, *time)
            ),
            CertificateError::Expired => format!(
                "certificate expired: the certificate of {name} is past its validity — renew \
                 it on the server (or check this machine's clock)"
            ),
            CertificateError::NotValidYetContext { .. } | CertificateError::NotValidYet => {
                format!(
                    "certificate not valid yet: the certificate of {name} starts in the \
                     future — check this machine's clock and the server's certificate"
                )
            }
            other => format!("certificate of {name} rejected: {other}"),
        }
    }

    impl ServerCertVerifier for Explaining {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| match e {
                    rustls::Error::InvalidCertificate(ce) => {
                        rustls::Error::General(format!("{MARK}{}", describe(&ce, server_name)))
                    }
                    other => other,
                })
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    /// `danger_accept_invalid_certs`: any certificate, but the handshake signatures are
    /// still checked (so the session is at least with the holder of that certificate's key).
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use fredkit_core::ErrorKind;

    #[test]
    fn url_options_set_the_tls_files_and_need_rediss() {
        let c = RedisConfig::from_url(
            "rediss://127.0.0.1:6380?ca_file=%2Ftmp%2Fca.pem&client_cert_file=/c.pem\
             &client_key_file=/c.key&tls_server_name=redis.internal",
        )
        .unwrap();
        let t = c.tls_options();
        assert_eq!(t.ca, Some(Pem::File("/tmp/ca.pem".into())));
        assert_eq!(t.client_cert, Some(Pem::File("/c.pem".into())));
        assert_eq!(t.client_key, Some(Pem::File("/c.key".into())));
        assert_eq!(t.server_name_override(), Some("redis.internal"));

        let err = RedisConfig::from_url("redis://127.0.0.1?ca_file=/ca.pem").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("use rediss://"), "{err}");
        let err = RedisConfig::from_url("rediss://h?client_cert_file=/c.pem").unwrap_err();
        assert!(err.to_string().contains("without its key"), "{err}");
        let err = RedisConfig::from_url("rediss://h?ca=/x").unwrap_err();
        assert!(err.to_string().contains("tls_server_name"), "{err}");
    }

    #[test]
    fn a_config_file_tls_section_turns_tls_on_and_hides_the_key() {
        let c: RedisConfig = serde_json::from_str(
            r#"{
                "url": "redis://redis.internal:6380",
                "tls": {
                    "ca_pem": "-----BEGIN CERTIFICATE-----",
                    "client_cert_pem": "-----BEGIN CERTIFICATE-----",
                    "client_key_pem": "the-private-key",
                    "server_name": "redis.internal"
                }
            }"#,
        )
        .unwrap();
        assert!(c.tls());
        assert!(c.tls_options().has_client_cert());
        assert!(!format!("{c:?}").contains("the-private-key"), "{c:?}");
        assert!(!format!("{:?}", c.tls_options()).contains("the-private-key"));

        let bad = serde_json::from_str::<RedisConfig>(
            r#"{"url": "rediss://h", "tls": {"ca_file": "/a", "verify": false}}"#,
        );
        assert!(bad.is_err(), "unknown tls fields are errors");
        let both = serde_json::from_str::<RedisConfig>(
            r#"{"url": "rediss://h", "tls": {"ca_file": "/a", "ca_pem": "x"}}"#,
        );
        assert!(both.unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn the_builder_turns_tls_on() {
        let c = RedisConfig::builder()
            .standalone("10.0.0.1", 6380)
            .tls(TlsOptions::new().danger_accept_invalid_certs(true))
            .build()
            .unwrap();
        assert!(c.tls());
        assert!(c.tls_options().accepts_invalid_certs());
        assert_eq!(c.to_string(), "rediss://10.0.0.1:6380");
    }

    #[test]
    fn handshake_failures_are_explained_as_config_errors() {
        let c = RedisConfig::from_url("rediss://127.0.0.1:6380").unwrap();
        let details = format!(
            "Custom {{ kind: InvalidData, error: General(\"{MARK}certificate not trusted: \
             unknown issuer\") }}"
        );
        let e = explain(&details, &c).unwrap();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("certificate not trusted: unknown issuer (at rediss://127.0.0.1:6380)"),
            "{e}"
        );
        let e = explain(
            "Custom { kind: InvalidData, error: AlertReceived(CertificateRequired) }",
            &c,
        )
        .unwrap();
        assert!(
            e.to_string()
                .contains("the server requires a client certificate"),
            "{e}"
        );
        assert!(explain("Os { code: 111, message: \"refused\" }", &c).is_none());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn unreadable_or_empty_pem_is_a_config_error_naming_the_file() {
        let e = fred_tls(&TlsOptions::new().ca_file("/nonexistent/ca.pem"), false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = fred_tls(&TlsOptions::new().ca_pem("not a certificate"), false).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }
}
