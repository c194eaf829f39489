//! Firmware artifacts on the wire: the manifest that describes an image, signed as a compact JWS with
//! EdDSA over Ed25519 (RFC 7515, RFC 8037), and the key formats around it.
//!
//! The private key stays with whoever publishes firmware (`fleethub firmware keygen` writes it as a PKCS#8
//! PEM file, which OpenSSL reads); the hub only stores the signed manifest and the image; a device agent
//! verifies the signature with the public key it was configured with (SPKI PEM or a JWK
//! `{"kty":"OKP","crv":"Ed25519","x":...}`), then the image's SHA-256 and size against the manifest, before
//! anything touches a boot slot. Any JOSE library verifies the same JWS with the same public key.
//!
//! Pure: no I/O and no randomness (a key is made from a seed the caller draws).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// The JWS `typ` header of a manifest.
pub const MANIFEST_TYPE: &str = "fleethub-firmware-manifest+jwt";
/// Longest model or version string.
pub const MAX_NAME_LEN: usize = 128;
/// Longest compact JWS accepted (a manifest is a few hundred bytes).
pub const MAX_JWS_LEN: usize = 16 * 1024;

/// What an image is and how to check it: the JWS payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareManifest {
    /// Which hardware it is for: must equal the device's reported model.
    pub model: String,
    pub version: String,
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
    /// Image size in bytes.
    pub size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// A command the agent runs after booting the image to decide whether to commit it (exit status 0),
    /// instead of its configured one. Signed with the rest, so only the publisher can set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl FirmwareManifest {
    /// Checks the fields a manifest must have right, whoever made it.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_name("model", &self.model)?;
        check_name("version", &self.version)?;
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        {
            return Err(ManifestError::Invalid(format!(
                "sha256 must be 64 lowercase hex digits, got {:?}",
                self.sha256
            )));
        }
        Ok(())
    }
}

/// A model or version: 1-128 characters from letters, digits and `. _ - + ~`, so it is safe in a URL path
/// and a file name.
pub fn check_name(what: &str, name: &str) -> Result<(), ManifestError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ManifestError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters, got {} characters",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '~')))
    {
        return Err(ManifestError::Invalid(format!(
            "{what} {name:?} contains {bad:?}: use letters, digits and . _ - + ~"
        )));
    }
    if name == "." || name == ".." {
        return Err(ManifestError::Invalid(format!("{what} cannot be {name:?}")));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not a compact JWS: {0}")]
    Malformed(String),
    #[error("the manifest's signature algorithm is {0:?}; only EdDSA (Ed25519) is accepted")]
    Algorithm(String),
    #[error("the manifest's signature does not verify with the configured public key")]
    BadSignature,
    #[error("invalid manifest: {0}")]
    Invalid(String),
    #[error("invalid key: {0}")]
    Key(String),
}

/// An Ed25519 private key.
pub struct SigningKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// PKCS#8 v1 (RFC 8410) prefix of an Ed25519 private key: the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// SubjectPublicKeyInfo (RFC 8410) prefix of an Ed25519 public key: the 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl SigningKey {
    /// The key whose seed is `seed` (draw it from the operating system's random source).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are a seed");
        Self { seed, pair }
    }

    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as written by [`SigningKey::to_pkcs8_pem`] or
    /// `openssl genpkey -algorithm ed25519`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, ManifestError> {
        let der = pem_decode(pem, "PRIVATE KEY")?;
        // v1 (seed only) is what OpenSSL writes; v2 also carries the public key, which ring checks.
        if der.len() == PKCS8_PREFIX.len() + 32 && der.starts_with(&PKCS8_PREFIX) {
            let mut seed = [0; 32];
            seed.copy_from_slice(&der[PKCS8_PREFIX.len()..]);
            return Ok(Self::from_seed(seed));
        }
        Err(ManifestError::Key(
            "not an Ed25519 private key in PKCS#8 form".into(),
        ))
    }

    pub fn to_pkcs8_pem(&self) -> String {
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        pem_encode("PRIVATE KEY", &der)
    }

    pub fn public_key(&self) -> PublicKey {
        let mut key = [0; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// Signs `manifest` as a compact JWS (`header.payload.signature`, base64url without padding).
    pub fn sign(&self, manifest: &FirmwareManifest) -> Result<String, ManifestError> {
        manifest.validate()?;
        let header = serde_json::json!({
            "alg": "EdDSA",
            "typ": MANIFEST_TYPE,
            "kid": self.public_key().key_id(),
        });
        let payload = serde_json::to_vec(manifest).expect("a manifest always serialises");
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short name for the key: the first 16 hex digits of the SHA-256 of its 32 bytes. The JWS header
    /// carries it as `kid`, so a mismatch can say which key signed.
    pub fn key_id(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(self.0);
        digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), as `openssl pkey -pubout` writes it.
    pub fn to_spki_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem_encode("PUBLIC KEY", &der)
    }

    /// The JWK (RFC 8037): `{"kty":"OKP","crv":"Ed25519","x":"<base64url>"}`.
    pub fn to_jwk(&self) -> Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.0),
            "kid": self.key_id(),
        })
    }

    /// Reads an SPKI PEM or a JWK (JSON), whichever `text` is.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            let jwk: Map<String, Value> = serde_json::from_str(trimmed)
                .map_err(|error| ManifestError::Key(format!("the JWK is not JSON: {error}")))?;
            let field = |name: &str| jwk.get(name).and_then(Value::as_str);
            if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
                return Err(ManifestError::Key(
                    "the JWK is not an Ed25519 key (kty OKP, crv Ed25519)".into(),
                ));
            }
            let x = field("x").ok_or_else(|| ManifestError::Key("the JWK has no \"x\"".into()))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|_| ManifestError::Key("the JWK's \"x\" is not base64url".into()))?;
            return key_bytes(&bytes).map(Self);
        }
        let der = pem_decode(trimmed, "PUBLIC KEY")?;
        match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(bytes) => key_bytes(bytes).map(Self),
            None => Err(ManifestError::Key(
                "not an Ed25519 public key (SubjectPublicKeyInfo)".into(),
            )),
        }
    }

    /// Verifies a compact JWS made by [`SigningKey::sign`] (or any JOSE library with `alg` EdDSA) and
    /// returns the manifest it carries, checked with [`FirmwareManifest::validate`].
    pub fn verify(&self, jws: &str) -> Result<FirmwareManifest, ManifestError> {
        let parts = split_jws(jws)?;
        let signature = URL_SAFE_NO_PAD
            .decode(parts.signature)
            .map_err(|_| ManifestError::Malformed("the signature is not base64url".into()))?;
        let signing_input = &jws[..parts.header.len() + 1 + parts.payload.len()];
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| ManifestError::BadSignature)?;
        decode_payload(parts.payload)
    }
}

fn key_bytes(bytes: &[u8]) -> Result<[u8; 32], ManifestError> {
    bytes.try_into().map_err(|_| {
        ManifestError::Key(format!(
            "an Ed25519 key is 32 bytes, this one is {}",
            bytes.len()
        ))
    })
}

struct JwsParts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split_jws(jws: &str) -> Result<JwsParts<'_>, ManifestError> {
    if jws.len() > MAX_JWS_LEN {
        return Err(ManifestError::Malformed(format!(
            "{} bytes, more than {MAX_JWS_LEN}",
            jws.len()
        )));
    }
    let mut parts = jws.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ManifestError::Malformed(
            "expected three base64url parts separated by dots".into(),
        ));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| ManifestError::Malformed("the header is not base64url".into()))?;
    let header_json: Map<String, Value> = serde_json::from_slice(&header_json)
        .map_err(|error| ManifestError::Malformed(format!("the header is not JSON: {error}")))?;
    match header_json.get("alg").and_then(Value::as_str) {
        Some("EdDSA") => {}
        Some(other) => return Err(ManifestError::Algorithm(other.to_owned())),
        None => return Err(ManifestError::Malformed("the header has no \"alg\"".into())),
    }
    // RFC 7515 4.1.11: a critical extension we do not understand must fail verification.
    if header_json.contains_key("crit") {
        return Err(ManifestError::Malformed(
            "the header names critical extensions (\"crit\"), which are not supported".into(),
        ));
    }
    Ok(JwsParts {
        header,
        payload,
        signature,
    })
}

fn decode_payload(payload: &str) -> Result<FirmwareManifest, ManifestError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| ManifestError::Malformed("the payload is not base64url".into()))?;
    let manifest: FirmwareManifest = serde_json::from_slice(&bytes)
        .map_err(|error| ManifestError::Invalid(format!("the payload: {error}")))?;
    manifest.validate()?;
    Ok(manifest)
}

/// The manifest a JWS carries, without checking the signature: for the hub, which stores what the
/// publisher signed and checks the upload against it, but is not who decides whether to trust it.
pub fn read_unverified(jws: &str) -> Result<FirmwareManifest, ManifestError> {
    let parts = split_jws(jws)?;
    decode_payload(parts.payload)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn pem_decode(pem: &str, label: &str) -> Result<Vec<u8>, ManifestError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| ManifestError::Key(format!("no \"{begin}\" line")))?
        + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| ManifestError::Key(format!("no \"{end}\" line")))?
        + start;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(body)
        .map_err(|_| ManifestError::Key(format!("the {label} block is not base64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> FirmwareManifest {
        FirmwareManifest {
            model: "thermostat-x".into(),
            version: "2.0.0".into(),
            sha256: "ab".repeat(32),
            size: 1024,
            created: time::macros::datetime!(2026-11-26 10:00 UTC),
            health_check: None,
            description: Some("test".into()),
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_reads_back() {
        let key = SigningKey::from_seed([7; 32]);
        let jws = key.sign(&manifest()).expect("signs");
        assert_eq!(key.public_key().verify(&jws), Ok(manifest()));
        assert_eq!(read_unverified(&jws), Ok(manifest()));
    }

    #[test]
    fn another_key_or_a_changed_byte_fails() {
        let key = SigningKey::from_seed([7; 32]);
        let other = SigningKey::from_seed([8; 32]);
        let jws = key.sign(&manifest()).expect("signs");
        assert_eq!(
            other.public_key().verify(&jws),
            Err(ManifestError::BadSignature)
        );
        // Re-sign a different payload under the original header and signature: the signature no longer fits.
        let mut tampered = manifest();
        tampered.size = 1025;
        let forged = other.sign(&tampered).expect("signs");
        let forged_payload = forged.split('.').nth(1).expect("payload");
        let mut parts: Vec<&str> = jws.split('.').collect();
        parts[1] = forged_payload;
        assert_eq!(
            key.public_key().verify(&parts.join(".")),
            Err(ManifestError::BadSignature)
        );
    }

    #[test]
    fn keys_round_trip_through_pem_and_jwk() {
        let key = SigningKey::from_seed([42; 32]);
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = SigningKey::from_pkcs8_pem(&pem).expect("reads");
        assert_eq!(back.public_key(), key.public_key());
        let spki = key.public_key().to_spki_pem();
        assert_eq!(PublicKey::parse(&spki), Ok(key.public_key()));
        let jwk = key.public_key().to_jwk().to_string();
        assert_eq!(PublicKey::parse(&jwk), Ok(key.public_key()));
    }

    #[test]
    fn openssl_keys_are_read_and_written_alike() {
        // Test fixture, not a secret: `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
        let private = "-----BEGIN PRIVATE KEY-----\n\
                       MC4CAQAwBQYDK2VwBCIEIBGHFl3aZZQO7gVb6sASMFPiSbxAfkfxNhc2gMuON4jr\n\
                       -----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\n\
                      MCowBQYDK2VwAyEA9CS//MUGvkQH0Zsazlx2ezDXi3c2fiZRlzcPS0nyKqc=\n\
                      -----END PUBLIC KEY-----\n";
        let key = SigningKey::from_pkcs8_pem(private).expect("reads OpenSSL's key");
        assert_eq!(key.to_pkcs8_pem(), private);
        assert_eq!(key.public_key().to_spki_pem(), public);
    }

    #[test]
    fn rfc8037_test_vector_verifies() {
        // RFC 8037 appendix A.1, A.4: the key and the JWS over "Example of Ed25519 signing".
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("base64url");
        let key = SigningKey::from_seed(seed.try_into().expect("32 bytes"));
        let jwk = key.public_key().to_jwk();
        assert_eq!(jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let signing_input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let signature = key.pair.sign(signing_input.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.encode(signature.as_ref()),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn malformed_manifests_say_what_is_wrong() {
        let key = SigningKey::from_seed([1; 32]).public_key();
        let cases: &[(&str, &str)] = &[
            ("", "expected three base64url parts"),
            ("a.b", "expected three base64url parts"),
            ("a.b.c.d", "expected three base64url parts"),
            ("!!.b.c", "the header is not base64url"),
            ("e30.b.c", "the header has no \"alg\""),
            // {"alg":"none"}
            ("eyJhbGciOiJub25lIn0.e30.", "only EdDSA"),
            // {"alg":"HS256"}
            ("eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "only EdDSA"),
            // {"alg":"EdDSA","crit":["x"]}
            (
                "eyJhbGciOiJFZERTQSIsImNyaXQiOlsieCJdfQ.e30.c2ln",
                "critical extensions",
            ),
        ];
        for (jws, expected) in cases {
            let error = key.verify(jws).expect_err(jws).to_string();
            assert!(error.contains(expected), "{jws}: {error}");
        }
        let long = "a".repeat(MAX_JWS_LEN + 1);
        assert!(key.verify(&long).is_err());
        let payload_not_manifest = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"model":"m"}"#)
        );
        let error = read_unverified(&format!("{payload_not_manifest}.c2ln"))
            .expect_err("not a manifest")
            .to_string();
        assert!(error.contains("invalid manifest"), "{error}");
    }

    #[test]
    fn names_and_hashes_are_checked() {
        let mut bad = manifest();
        bad.version = "../etc".into();
        assert!(bad.validate().is_err());
        bad = manifest();
        bad.model = String::new();
        assert!(bad.validate().is_err());
        bad = manifest();
        bad.sha256 = "AB".repeat(32);
        assert!(bad.validate().is_err());
        assert!(check_name("version", "2.0.0-rc1+build.5").is_ok());
        assert!(check_name("version", "..").is_err());
        assert!(check_name("version", "a/b").is_err());
        assert!(SigningKey::from_pkcs8_pem("nonsense").is_err());
        assert!(PublicKey::parse(r#"{"kty":"EC"}"#).is_err());
        assert!(PublicKey::parse(r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#).is_err());
    }
}
