//! The hub's own certificate authority and server certificate, kept in the data directory, and the rustls
//! configuration built from them.
//!
//! Files: `ca.pem` (what clients trust), `ca-key.pem`, `server.pem`, `server-key.pem`, and `server.json`
//! (the names and expiry the server certificate was issued for). The CA is made once; the server
//! certificate is reissued from it whenever the set of names changes or expiry is near, so clients that
//! trust `ca.pem` keep working.
//!
//! Or the operator's own certificate chain and key (`fleethub serve --tls-cert --tls-key`): then no CA is
//! made and clients trust whatever CA issued that certificate. Either way the listeners ask
//! [`ServerCertificate`] for the pair at each handshake, and [`run_reloader`] swaps in a changed pair from
//! the files without a restart (a pair that does not load is refused and the old one stays).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ServerCertificateFiles;

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
    #[error("the private key in {key} does not belong to the certificate in {certificate}")]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the listeners need: the TLS server configuration and the CA certificate clients must trust.
pub struct HubCertificates {
    /// The hub's `ca.pem`; with the operator's own certificate, the last certificate of their chain.
    pub ca_pem: String,
    pub server_config: Arc<ServerConfig>,
    /// The pair the server configuration presents, and the files it is reloaded from.
    pub server_certificate: Arc<ServerCertificate>,
    pub files: ServerCertificateFiles,
    /// Whether this start created the CA or reissued the server certificate (for the log).
    pub issued: Option<&'static str>,
}

/// The certificate chain and key presented to new TLS connections; swapped whole when the files change.
/// A connection keeps the pair it shook hands with.
#[derive(Debug)]
pub struct ServerCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    /// The bytes `current` was loaded from, or the last bytes refused, so each change is tried once.
    last_seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
    reloads: AtomicU64,
    rejected: AtomicU64,
}

impl ServerCertificate {
    fn new(key: Arc<CertifiedKey>, certificate_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        Self {
            current: RwLock::new(key),
            last_seen: std::sync::Mutex::new((certificate_pem, key_pem)),
            reloads: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The pair new connections get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .expect("the lock is never poisoned: no code panics holding it"),
        )
    }

    /// Pairs swapped in since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changed pairs refused (unparsable, key not matching) since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Reads the files and swaps in their pair if they changed since last looked at. A pair that does not
    /// load is refused with an error log, and the one in service stays.
    pub async fn reload_if_changed(&self, files: &ServerCertificateFiles) {
        let (certificate_pem, key_pem) = match tokio::join!(
            tokio::fs::read(&files.certificate),
            tokio::fs::read(&files.key)
        ) {
            (Ok(certificate), Ok(key)) => (certificate, key),
            (Err(error), _) | (_, Err(error)) => {
                // A file being replaced by a non-atomic writer may be briefly missing: try again next time.
                return tracing::debug!(%error, "cannot read the server certificate files");
            }
        };
        {
            let mut last_seen = self
                .last_seen
                .lock()
                .expect("never poisoned: no code panics holding it");
            if last_seen.0 == certificate_pem && last_seen.1 == key_pem {
                return;
            }
            *last_seen = (certificate_pem.clone(), key_pem.clone());
        }
        match certified_key(&certificate_pem, &key_pem, files) {
            Ok(key) => {
                *self
                    .current
                    .write()
                    .expect("never poisoned: no code panics holding it") = key;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    certificate = %files.certificate.display(),
                    "loaded the changed server certificate; new connections get it"
                );
            }
            Err(error) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    %error,
                    "refused the changed server certificate; still serving the previous one"
                );
            }
        }
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// How often [`run_reloader`] looks at the files: reading two small files is cheap.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads the server certificate from `files` every [`RELOAD_INTERVAL`] and whenever `now` is notified
/// (SIGHUP in `fleethub serve`), until `shutdown`.
pub async fn run_reloader(
    certificate: Arc<ServerCertificate>,
    files: ServerCertificateFiles,
    now: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(RELOAD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
            _ = now.notified() => {}
        }
        certificate.reload_if_changed(&files).await;
    }
}

/// Loads the operator's certificate chain and key (`--tls-cert`, `--tls-key`), checking that they belong
/// together. Nothing is written to the data directory.
pub fn load_provided(files: &ServerCertificateFiles) -> Result<HubCertificates, TlsSetupError> {
    let certificate_pem = read(&files.certificate)?.into_bytes();
    let key_pem = read(&files.key)?.into_bytes();
    let key = certified_key(&certificate_pem, &key_pem, files)?;
    let text = String::from_utf8_lossy(&certificate_pem);
    let ca_pem = match text.rfind("-----BEGIN CERTIFICATE-----") {
        Some(start) => text[start..].trim_end().to_owned() + "\n",
        None => text.into_owned(),
    };
    let server_certificate = Arc::new(ServerCertificate::new(key, certificate_pem, key_pem));
    Ok(HubCertificates {
        ca_pem,
        server_config: server_config(Arc::clone(&server_certificate))?,
        server_certificate,
        files: files.clone(),
        issued: None,
    })
}

/// Parses a PEM chain (leaf first) and its PEM private key, and checks that the key is the leaf's.
fn certified_key(
    certificate_pem: &[u8],
    key_pem: &[u8],
    files: &ServerCertificateFiles,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let invalid = |path: &Path, what, detail: String| TlsSetupError::Invalid {
        path: path.to_owned(),
        what,
        detail,
    };
    let chain = CertificateDer::pem_slice_iter(certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(&files.certificate, "certificate chain", error.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            &files.certificate,
            "certificate chain",
            "it holds no PEM certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| invalid(&files.key, "private key", error.to_string()))?;
    let key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| invalid(&files.key, "private key", error.to_string()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsSetupError::KeyMismatch {
                certificate: files.certificate.clone(),
                key: files.key.clone(),
            })
        }
        Err(error) => Err(invalid(
            &files.certificate,
            "certificate",
            error.to_string(),
        )),
    }
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

    let files = ServerCertificateFiles {
        certificate: server_path,
        key: server_key_path,
    };
    let certificate_pem = read(&files.certificate)?.into_bytes();
    let key_pem = read(&files.key)?.into_bytes();
    let key = certified_key(&certificate_pem, &key_pem, &files)?;
    let server_certificate = Arc::new(ServerCertificate::new(key, certificate_pem, key_pem));
    Ok(HubCertificates {
        ca_pem,
        server_config: server_config(Arc::clone(&server_certificate))?,
        server_certificate,
        files,
        issued,
    })
}

/// TLS 1.3 and 1.2 (the Python device SDK insists on 1.2), ring as the crypto provider. Clients are asked
/// for a certificate but need not send one (X.509 device authentication is decided at MQTT CONNECT,
/// `x509.rs`).
fn server_config(certificate: Arc<ServerCertificate>) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_certificates = Arc::new(crate::x509::OptionalClientCertificate::new(&provider));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_certificates)
        .with_cert_resolver(certificate);
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
