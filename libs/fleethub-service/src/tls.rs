//! The client's TLS configuration, built explicitly: rustls with the *ring* provider passed in (nothing is
//! installed process-wide, so the SDK cannot clash with another rustls user in the same program), trusting
//! either exactly the given CA (a fleethub hub) or the operating system's roots (Azure IoT Hub).

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::ConfigError;

/// `ca_pem`: every certificate in it becomes a trust anchor, and nothing else is trusted. `None`: the
/// system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured on Linux).
pub(crate) fn client_config(ca_pem: Option<&str>) -> Result<ClientConfig, ConfigError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    // TLS 1.2 and 1.3: Azure IoT Hub and fleethub both speak 1.2, and the official SDKs insist on it.
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Tls)?;
    let builder = match ca_pem {
        Some(pem) => builder.with_root_certificates(root_store(pem)?),
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(ConfigError::SystemRoots)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    let mut config = builder.with_no_client_auth();
    // reqwest leaves ALPN to a preconfigured config; this client speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn root_store(pem: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for (index, certificate) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let certificate = certificate.map_err(|error| ConfigError::CaPem {
            reason: format!("pem section {} is malformed: {error}", index + 1),
        })?;
        roots.add(certificate).map_err(|error| ConfigError::CaPem {
            reason: format!(
                "certificate {} cannot be a trust anchor: {error}",
                index + 1
            ),
        })?;
    }
    if roots.is_empty() {
        return Err(ConfigError::CaPem {
            reason: "it holds no \"BEGIN CERTIFICATE\" section".to_owned(),
        });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generates")
            .cert
            .pem()
    }

    #[test]
    fn ca_pem_must_hold_a_usable_certificate() {
        let reason = |pem: &str| match client_config(Some(pem)) {
            Err(ConfigError::CaPem { reason }) => reason,
            other => panic!("expected a ca_pem error, got {:?}", other.map(|_| ())),
        };
        assert_eq!(reason(""), "it holds no \"BEGIN CERTIFICATE\" section");
        assert_eq!(
            reason("not a pem file"),
            "it holds no \"BEGIN CERTIFICATE\" section"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            reason(garbage).starts_with("certificate 1 cannot be a trust anchor"),
            "{}",
            reason(garbage)
        );
        let truncated = "-----BEGIN CERTIFICATE-----\nMIIB";
        assert!(
            reason(truncated).starts_with("pem section 1 is malformed"),
            "{}",
            reason(truncated)
        );
    }

    #[test]
    fn a_real_ca_and_the_system_roots_both_work() {
        let with_ca =
            client_config(Some(&ca_pem())).expect("a generated certificate is a valid anchor");
        assert_eq!(with_ca.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let two = format!("{}{}", ca_pem(), ca_pem());
        assert!(client_config(Some(&two)).is_ok());
        // The build machine has system roots; without them this is ConfigError::SystemRoots, also fine.
        match client_config(None) {
            Ok(_) | Err(ConfigError::SystemRoots(_)) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}
