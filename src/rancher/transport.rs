//! The HTTP client under [`super::HttpRancher`]: TLS trust, headers,
//! timeouts, and the mapping of transport failures to [`ApiError`].
//!
//! TLS is rustls with the ring provider, configured here and handed to
//! reqwest whole (`use_preconfigured_tls`), so no process-wide default
//! provider is needed and reqwest's built-in roots never enter: a
//! [`CaTrust::Pinned`] client trusts exactly that CA and nothing else.
//! [`CaTrust::Unverified`] skips the certificate check (handshake
//! signatures are still verified) and exists only for `ping` and `cacerts`;
//! [`super::HttpRancher`] refuses to send any credential through it.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use reqwest::redirect::Policy;
use rmm_actors::ports::{ApiError, CaTrust};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// `User-Agent` on every request. Not browser-like on purpose: norman
/// checks CSRF on requests whose agent contains `mozilla` (§1.2).
pub const USER_AGENT: &str = concat!("rmm/", env!("CARGO_PKG_VERSION"));

/// The per-request timeout (connect, TLS, request and body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for a trust choice.
fn tls_config(trust: &CaTrust) -> Result<rustls::ClientConfig, ApiError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(format!("TLS setup: {e}")))?;
    let config = match trust {
        CaTrust::Pinned(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ApiError::Tls(format!("the pinned CA is not a valid PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ApiError::Tls(format!("the pinned CA is not a usable certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ApiError::Tls("the pinned CA holds no certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        CaTrust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let (file, pem) = system_roots()?;
            let (added, _) = roots.add_parsable_certificates(CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok));
            if added == 0 {
                return Err(ApiError::Tls(format!("no usable certificate in the system's trust roots ({file})")));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        CaTrust::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// The system's CA bundle: `SSL_CERT_FILE` when set, else the first of the
/// usual distribution paths. (No bundled roots: the system's are what the
/// user's other tools trust.)
fn system_roots() -> Result<(String, String), ApiError> {
    let candidates: Vec<String> = match std::env::var("SSL_CERT_FILE") {
        Ok(f) if !f.is_empty() => vec![f],
        _ => [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/ssl/cert.pem",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        ]
        .map(String::from)
        .to_vec(),
    };
    for f in &candidates {
        if let Ok(pem) = std::fs::read_to_string(f) {
            return Ok((f.clone(), pem));
        }
    }
    Err(ApiError::Tls(format!(
        "cannot read the system's trust roots (tried {}; set SSL_CERT_FILE)",
        candidates.join(", ")
    )))
}

/// A reqwest client for one trust choice. `loopback` turns proxies off (an
/// `https_proxy` in the environment must not capture the local world).
pub fn client(trust: &CaTrust, timeout: Duration, loopback: bool) -> Result<reqwest::Client, ApiError> {
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(trust)?)
        .user_agent(USER_AGENT)
        // A redirect could carry the bearer token elsewhere: never follow.
        .redirect(Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout);
    if loopback {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| ApiError::Tls(format!("HTTP client setup: {}", chain(&e.without_url()))))
}

/// Accepts any server certificate; handshake signatures are still checked,
/// so this is TLS without authentication of the peer, nothing less.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The messages of an error and its sources, joined with `: `, skipping a
/// message already contained in the one before (hyper repeats itself).
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string();
        if !msg.is_empty() && !parts.last().is_some_and(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// The rustls error somewhere in the chain, if any. tokio-rustls wraps it
/// in an `io::Error` (hyper-util wraps that in another), and an
/// `io::Error`'s `source()` skips the error it wraps, so look inside those.
fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        let mut inner: &(dyn StdError + 'static) = e;
        loop {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            match inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        cur = e.source();
    }
    None
}

/// Maps a failure to get an answer at all. `what` is `METHOD /path`.
///
/// * the peer's certificate failed verification → [`ApiError::Tls`]
///   (never retried: the server is not the one whose CA we pinned);
/// * timeouts, refused or reset connections, other TLS trouble
///   → [`ApiError::Unavailable`].
///
/// The URL is dropped from reqwest's message; paths and queries carry no
/// secrets here, but bodies and headers never appear in any case.
pub fn transport_error(what: &str, err: reqwest::Error, timeout: Duration) -> ApiError {
    let err = err.without_url();
    if let Some(tls) = find_rustls_error(&err) {
        use rustls::Error as E;
        if matches!(tls, E::InvalidCertificate(_) | E::NoCertificatesPresented | E::UnsupportedNameType) {
            return ApiError::Tls(format!(
                "{what}: the server's certificate is not trusted (it does not chain to the pinned CA): {tls}"
            ));
        }
    }
    if err.is_timeout() {
        return ApiError::Unavailable(format!("{what}: no answer within {} s", timeout.as_secs_f32()));
    }
    ApiError::Unavailable(format!("{what}: {}", chain(&err)))
}

/// Maps a non-2xx status: 5xx → [`ApiError::Unavailable`] (with norman's
/// code and message when there is one), 4xx → [`ApiError::Status`],
/// anything else (a redirect, which is never followed) → [`ApiError::Decode`].
pub fn status_error(what: &str, status: u16, body: &[u8]) -> ApiError {
    match status {
        400..=499 => super::model::status_error(status, body),
        500..=599 => {
            let (status, code, message) = super::model::parse_error(status, body);
            let code = code.map(|c| format!(" {c}")).unwrap_or_default();
            ApiError::Unavailable(format!("{what}: HTTP {status}{code}: {message}"))
        }
        _ => ApiError::Decode(format!("{what}: unexpected HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_unavailable_with_code_and_message() {
        let e = status_error(
            "POST /v3/cluster",
            500,
            br#"{"type":"error","status":500,"code":"ServerError","message":"Requested kubernetesVersion v9 is not supported currently"}"#,
        );
        assert_eq!(
            e,
            ApiError::Unavailable(
                "POST /v3/cluster: HTTP 500 ServerError: Requested kubernetesVersion v9 is not supported currently"
                    .into()
            )
        );
        assert!(e.is_retryable());
        assert!(
            matches!(status_error("GET /ping", 503, b""), ApiError::Unavailable(m) if m.ends_with("HTTP 503: Service Unavailable"))
        );
    }

    #[test]
    fn client_errors_are_status_and_redirects_are_decode() {
        assert_eq!(status_error("GET /v3/x", 404, b"").status(), Some(404));
        assert!(matches!(status_error("GET /v3/x", 302, b""), ApiError::Decode(_)));
    }

    #[test]
    fn a_pinned_ca_must_hold_a_certificate() {
        assert!(matches!(tls_config(&CaTrust::Pinned(String::new())), Err(ApiError::Tls(_))));
        assert!(matches!(tls_config(&CaTrust::Pinned("not a pem".into())), Err(ApiError::Tls(_))));
        assert!(tls_config(&CaTrust::Unverified).is_ok());
    }

    #[test]
    fn a_generated_ca_can_be_pinned() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        assert!(client(&CaTrust::Pinned(ca.pem()), DEFAULT_TIMEOUT, true).is_ok());
    }

    #[test]
    fn user_agent_is_not_browser_like() {
        assert!(USER_AGENT.starts_with("rmm/"));
        assert!(!USER_AGENT.to_ascii_lowercase().contains("mozilla"));
    }
}
