//! The hub's own certificate authority and server certificate, kept in the data directory, and the rustls
//! configuration built from them.
//!
//! Files: `ca.pem` (what clients trust), `ca-key.pem`, `server.pem`, `server-key.pem`, and `server.json`
//! (the names and expiry the server certificate was issued for). The CA is made once; the server
//! certificate is reissued from it whenever the set of names changes or expiry is near, so clients that
//! trust `ca.pem` keep working.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

pub const CA_CERTIFICATE_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_CERTIFICATE_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";
const SERVER_RECORD_FILE: &str = "server.json";

const CA_LIFETIME: Duration = Duration::days(3650);
const SERVER_LIFETIME: Duration = Duration::days(397);
/// Reissue the server certificate when less than this is left.
const RENEW_BEFORE: Duration = Duration::days(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not a usable {what}: {detail}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the listeners need: the TLS server configuration and the CA certificate clients must trust.
pub struct HubCertificates {
    pub ca_pem: String,
    pub server_config: Arc<ServerConfig>,
    /// Whether this start created the CA or reissued the server certificate (for the log).
    pub issued: Option<&'static str>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct ServerRecord {
    names: BTreeSet<String>,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
}

/// Loads the CA and server certificate from `data_dir`, creating or reissuing what is missing or stale.
pub fn load_or_create(
    data_dir: &Path,
    names: &BTreeSet<String>,
) -> Result<HubCertificates, TlsSetupError> {
    let now = OffsetDateTime::now_utc();
    let ca_key_path = data_dir.join(CA_KEY_FILE);
    let ca_path = data_dir.join(CA_CERTIFICATE_FILE);
    let mut issued = None;

    let ca_key = if ca_key_path.exists() && ca_path.exists() {
        let pem = read(&ca_key_path)?;
        KeyPair::from_pem(&pem).map_err(|error| TlsSetupError::Invalid {
            path: ca_key_path.clone(),
            what: "CA key",
            detail: error.to_string(),
        })?
    } else {
        let key = KeyPair::generate()?;
        let certificate = ca_params(&key, Some(now)).self_signed(&key)?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        write(&ca_path, &certificate.pem())?;
        issued = Some("created a new certificate authority and server certificate");
        key
    };
    let ca_pem = read(&ca_path)?;

    let record_path = data_dir.join(SERVER_RECORD_FILE);
    let server_path = data_dir.join(SERVER_CERTIFICATE_FILE);
    let server_key_path = data_dir.join(SERVER_KEY_FILE);
    let record: Option<ServerRecord> = fs::read_to_string(&record_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let current = record
        .as_ref()
        .is_some_and(|record| &record.names == names && record.not_after - now > RENEW_BEFORE)
        && server_path.exists()
        && server_key_path.exists();
    if !current {
        let issuer = Issuer::new(ca_params(&ca_key, None), &ca_key);
        let server_key = KeyPair::generate()?;
        let not_after = now + SERVER_LIFETIME;
        let certificate = server_params(names, now, not_after)?.signed_by(&server_key, &issuer)?;
        write_private(&server_key_path, &server_key.serialize_pem())?;
        write(&server_path, &certificate.pem())?;
        let record = ServerRecord {
            names: names.clone(),
            not_after,
        };
        write(
            &record_path,
            &serde_json::to_string_pretty(&record).expect("the record always serialises"),
        )?;
        issued.get_or_insert("reissued the server certificate for the current names");
    }

    let chain = CertificateDer::pem_file_iter(&server_path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsSetupError::Invalid {
            path: server_path.clone(),
            what: "certificate",
            detail: error.to_string(),
        })?;
    let key =
        PrivateKeyDer::from_pem_file(&server_key_path).map_err(|error| TlsSetupError::Invalid {
            path: server_key_path.clone(),
            what: "private key",
            detail: error.to_string(),
        })?;
    let server_config = server_config(chain, key)?;
    Ok(HubCertificates {
        ca_pem,
        server_config,
        issued,
    })
}

/// TLS 1.3 and 1.2 (the Python device SDK insists on 1.2), ring as the crypto provider.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Offer ALPN but never insist: MQTT clients send none, and rustls then proceeds without it.
    config.ignore_client_order = false;
    Ok(Arc::new(config))
}

/// The CA's parameters. They are rebuilt from the key on every start (rcgen needs them to sign), so every
/// field must be a pure function of the key: the subject names the key's fingerprint, which also keeps
/// two hubs' CAs apart when a client trusts both.
fn ca_params(key: &KeyPair, validity_from: Option<OffsetDateTime>) -> CertificateParams {
    let fingerprint = Sha256::digest(key.public_key_raw());
    let short: String = fingerprint
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "fleethub");
    name.push(DnType::CommonName, format!("fleethub local CA {short}"));
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Some(from) = validity_from {
        params.not_before = from - Duration::days(1);
        params.not_after = from + CA_LIFETIME;
    }
    params
}

fn server_params(
    names: &BTreeSet<String>,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, TlsSetupError> {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "fleethub");
    subject.push(
        DnType::CommonName,
        names
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| "localhost".into()),
    );
    params.distinguished_name = subject;
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::hours(1);
    params.not_after = not_after;
    Ok(params)
}

fn read(path: &Path) -> Result<String, TlsSetupError> {
    fs::read_to_string(path).map_err(|source| TlsSetupError::File {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str) -> Result<(), TlsSetupError> {
    write_atomically(path, contents, 0o644)
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsSetupError> {
    write_atomically(path, contents, 0o600)
}

/// Write to a temporary file, fsync, rename: a crash never leaves a half-written key or certificate.
fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), TlsSetupError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let error = |action, source| TlsSetupError::File {
        action,
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|source| error("create", source))?;
    file.write_all(contents.as_bytes())
        .map_err(|source| error("write", source))?;
    file.sync_all().map_err(|source| error("sync", source))?;
    fs::rename(&temporary, path).map_err(|source| error("rename into", source))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn first_start_creates_and_later_starts_reuse() {
        let directory = tempfile::tempdir().unwrap();
        let first = load_or_create(directory.path(), &names(&["localhost", "127.0.0.1"])).unwrap();
        assert!(first.issued.is_some());
        let server_pem =
            fs::read_to_string(directory.path().join(SERVER_CERTIFICATE_FILE)).unwrap();
        let again = load_or_create(directory.path(), &names(&["localhost", "127.0.0.1"])).unwrap();
        assert!(again.issued.is_none());
        assert_eq!(again.ca_pem, first.ca_pem);
        assert_eq!(
            fs::read_to_string(directory.path().join(SERVER_CERTIFICATE_FILE)).unwrap(),
            server_pem
        );
    }

    #[test]
    fn changed_names_reissue_the_server_certificate_from_the_same_ca() {
        let directory = tempfile::tempdir().unwrap();
        let first = load_or_create(directory.path(), &names(&["localhost"])).unwrap();
        let server_pem =
            fs::read_to_string(directory.path().join(SERVER_CERTIFICATE_FILE)).unwrap();
        let second =
            load_or_create(directory.path(), &names(&["localhost", "hub.example"])).unwrap();
        assert_eq!(second.ca_pem, first.ca_pem, "the CA never changes");
        assert_ne!(
            fs::read_to_string(directory.path().join(SERVER_CERTIFICATE_FILE)).unwrap(),
            server_pem
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        load_or_create(directory.path(), &names(&["localhost"])).unwrap();
        for file in [CA_KEY_FILE, SERVER_KEY_FILE] {
            let mode = fs::metadata(directory.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
