//! The self-signed CA (made once, kept in the data dir) and the server
//! certificate it signs at every start.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::store::write_atomic;

pub(crate) const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

pub struct Ca {
    /// PEM as generated (ends with a newline).
    pub cert_pem: String,
    key: KeyPair,
}

/// The CA's parameters. They are fixed, so that the issuer can be rebuilt from
/// the saved key after a restart (the subject and key identifier match).
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dynamiclistener-ca");
    dn.push(DnType::OrganizationName, "dynamiclistener-org");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2120, 1, 1);
    p
}

impl Ca {
    /// Load the CA from `dir`, or make and save a new one.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Ca> {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if cert.exists() && key.exists() {
            let cert_pem =
                fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("decoding {}", key.display()))?;
            return Ok(Ca { cert_pem, key });
        }
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = ca_params()
            .self_signed(&key)
            .context("self-signing the CA")?;
        // key first: a crash in between leaves no cert, so both are made again
        write_atomic(dir, CA_KEY, key.serialize_pem().as_bytes())?;
        write_atomic(dir, CA_CERT, cert.pem().as_bytes())?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A rustls config (ring provider) serving a fresh certificate for
    /// `sans` (IPs become IP SANs), signed by this CA.
    pub fn server_config(&self, sans: &[String]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let issuer = ca_params()
            .self_signed(&self.key)
            .context("rebuilding the CA issuer")?;
        let mut params =
            CertificateParams::new(sans.to_vec()).context("server certificate SANs")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "dynamic");
        dn.push(DnType::OrganizationName, "dynamic");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2120, 1, 1);
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params
            .signed_by(&key, &issuer, &self.key)
            .context("signing the server certificate")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .context("TLS server config")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
