//! Test support: an HTTPS server on loopback with its own CA, serving an
//! axum router, for tests of the client and of the local agent.

use std::net::SocketAddr;
use std::sync::Arc;

/// A CA and a server certificate for `ip`, signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn pki(ip: &str) -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "rmm test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![ip.to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    TestPki { ca_pem: ca.pem().trim().to_string(), cert_der: cert.der().to_vec(), key_der: key.serialize_der() }
}

/// Serves `router` over HTTPS on `127.0.0.1:<any>`; returns the base URL
/// and the CA's PEM (trimmed, as Rancher stores `cacerts`).
pub async fn serve(router: axum::Router) -> (String, String) {
    let pki = pki("127.0.0.1");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
        )
        .unwrap();
    let handle = axum_server::Handle::new();
    let server = axum_server::bind_rustls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .handle(handle.clone());
    tokio::spawn(server.serve(router.into_make_service()));
    let addr = handle.listening().await.expect("test server listens");
    (format!("https://{addr}"), pki.ca_pem)
}
