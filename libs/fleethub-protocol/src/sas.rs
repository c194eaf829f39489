//! Shared access signature tokens: parsing and verifying what clients send, generating what our SDKs send,
//! and reading the resource a token is scoped to.
//!
//! Wire facts (PROTOCOL.md §2.2, §3.1, and the SDK sources read for this module: Python
//! `azure/iot/device/common/auth/sastoken.py`, `azure/iot/hub/sastoken.py`, Node
//! `azure-iot-common/dist/shared_access_signature.js`, `authorization.js`):
//! - the signature is `base64(HMAC-SHA256(base64decode(key), sr + "\n" + se))` where `sr` is the field
//!   **exactly as it appears in the token**. The SDKs encode `sr` differently (Python device:
//!   `quote(safe="")`; Python service: `quote_plus`; Node device: `encodeURIComponent` plus `!'()*` as
//!   lower-case `%2a`-style escapes; Node service: the raw, unencoded host name, `localhost:8443` included),
//!   so a verifier must never re-encode `sr`.
//! - `sig` is percent-encoded (Python hub SDK uses `quote` with its default `safe="/"`, so a `/` may appear
//!   raw); `skn` is percent-encoded by Node and raw from Python.
//! - field order varies (Node service: `sr, sig, skn, se`).

use std::str::FromStr;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{DeviceId, IdError, ModuleId};
use crate::percent::{quote, unquote_strict};

type HmacSha256 = Hmac<Sha256>;

const TOKEN_PREFIX: &str = "SharedAccessSignature";

/// A parsed SAS token.
///
/// Unknown fields are **ignored**: the signature covers only `sr` and `se`, so extra fields carry no
/// authority, and Node's parser also keeps whatever it finds. (The Python device SDK rejects unknown
/// fields on tokens handed to it, but that is a client-side sanity check, not a wire rule.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// The `sr` field exactly as received (still percent-encoded); this is what was signed.
    pub sr_raw: String,
    /// `sr` percent-decoded: `host[:port][/devices/{id}[/modules/{mid}]]`.
    pub resource: String,
    /// `sig` percent-decoded: the base64 text of the HMAC.
    pub signature: String,
    /// `se`, seconds since the Unix epoch. Always the canonical decimal text of the received field
    /// (leading zeros are rejected), so `expiry.to_string()` reproduces the signed bytes.
    pub expiry: u64,
    /// `skn` percent-decoded, the shared access policy name; absent for device tokens.
    pub key_name: Option<String>,
}

/// Why a SAS token string could not be parsed. Field names are the wire names (`sr`, `sig`, `se`, `skn`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasParseError {
    #[error("token does not start with \"SharedAccessSignature \"")]
    MissingPrefix,
    #[error("token field {field:?} has no '='")]
    FieldWithoutValue { field: String },
    #[error("token field {name} appears more than once")]
    DuplicateField { name: &'static str },
    #[error("token has no {name} field")]
    MissingField { name: &'static str },
    #[error("token field {name} is invalid: {reason}")]
    InvalidField { name: &'static str, reason: String },
}

impl FromStr for SasToken {
    type Err = SasParseError;

    fn from_str(token: &str) -> Result<Self, SasParseError> {
        let fields = token
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .ok_or(SasParseError::MissingPrefix)?
            .trim_start();

        let mut sr_raw = None;
        let mut sig_raw = None;
        let mut se_raw = None;
        let mut skn_raw = None;
        for field in fields.split('&') {
            let (name, value) =
                field
                    .split_once('=')
                    .ok_or_else(|| SasParseError::FieldWithoutValue {
                        field: field.to_owned(),
                    })?;
            let slot = match name.trim() {
                "sr" => (&mut sr_raw, "sr"),
                "sig" => (&mut sig_raw, "sig"),
                "se" => (&mut se_raw, "se"),
                "skn" => (&mut skn_raw, "skn"),
                _ => continue,
            };
            if slot.0.replace(value.trim()).is_some() {
                return Err(SasParseError::DuplicateField { name: slot.1 });
            }
        }

        let sr_raw = sr_raw.ok_or(SasParseError::MissingField { name: "sr" })?;
        let sig_raw = sig_raw.ok_or(SasParseError::MissingField { name: "sig" })?;
        let se_raw = se_raw.ok_or(SasParseError::MissingField { name: "se" })?;

        let invalid =
            |name: &'static str, reason: String| SasParseError::InvalidField { name, reason };
        if sr_raw.is_empty() {
            return Err(invalid("sr", "it is empty".to_owned()));
        }
        let resource = unquote_strict(sr_raw).map_err(|error| invalid("sr", error.to_string()))?;
        let signature =
            unquote_strict(sig_raw).map_err(|error| invalid("sig", error.to_string()))?;
        match STANDARD.decode(&signature) {
            Ok(bytes) if bytes.len() == 32 => {}
            Ok(bytes) => {
                return Err(invalid(
                    "sig",
                    format!("it decodes to {} bytes, an HMAC-SHA256 has 32", bytes.len()),
                ));
            }
            Err(error) => return Err(invalid("sig", format!("it is not base64: {error}"))),
        }
        let expiry = parse_canonical_decimal(se_raw).ok_or_else(|| {
            invalid(
                "se",
                format!("{se_raw:?} is not a whole number of seconds without leading zeros"),
            )
        })?;
        let key_name = skn_raw
            .map(|skn| unquote_strict(skn).map_err(|error| invalid("skn", error.to_string())))
            .transpose()?;

        Ok(SasToken {
            sr_raw: sr_raw.to_owned(),
            resource,
            signature,
            expiry,
            key_name,
        })
    }
}

fn parse_canonical_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

impl SasToken {
    /// Whether `sig` is the HMAC-SHA256 of `sr_raw + "\n" + se` under `key` (the base64-decoded device or
    /// policy key). The comparison is constant-time (`Mac::verify_slice`).
    pub fn signature_matches(&self, key: &[u8]) -> bool {
        let Ok(expected) = STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
            return false;
        };
        mac.update(self.sr_raw.as_bytes());
        mac.update(b"\n");
        mac.update(self.expiry.to_string().as_bytes());
        mac.verify_slice(&expected).is_ok()
    }

    /// Whether the token has expired at `now_unix`. A token is valid up to and including its `se` second.
    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.expiry < now_unix
    }

    /// The resource split into host, port and path.
    pub fn token_resource(&self) -> TokenResource {
        TokenResource::parse(&self.resource)
    }

    /// The resource read as a device or module scope (`host/devices/{id}[/modules/{mid}]`).
    pub fn device_resource(&self) -> Result<DeviceResource, DeviceResourceError> {
        DeviceResource::parse(&self.resource)
    }
}

/// Builds a token the way the Python device SDK does: `sr = quote(resource, safe="")`, the signature is
/// computed over that encoded `sr`, `sig` is `quote(base64, safe="")`, and fields come in the order
/// `sr, sig, se[, skn]`. `resource` is unencoded (`host/devices/dev 1`).
pub fn generate_sas_token(
    resource: &str,
    key: &[u8],
    expiry_unix: u64,
    key_name: Option<&str>,
) -> String {
    let sr = quote(resource);
    let signature = sign(key, &sr, expiry_unix);
    let mut token = format!(
        "{TOKEN_PREFIX} sr={sr}&sig={}&se={expiry_unix}",
        quote(&signature)
    );
    if let Some(key_name) = key_name {
        token.push_str("&skn=");
        token.push_str(&quote(key_name));
    }
    token
}

fn sign(key: &[u8], sr: &str, expiry_unix: u64) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts keys of any length");
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(expiry_unix.to_string().as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Why a shared access key could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("shared access key is empty")]
    Empty,
    #[error("shared access key is not valid base64: {reason}")]
    InvalidBase64 { reason: String },
}

/// Standard alphabet, padding optional: Azure keys are always padded, but hand-typed keys lose their
/// `=` often enough, and the padding carries no information.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a base64 shared access key (device, module or policy key) into the HMAC key bytes.
pub fn decode_key(key_base64: &str) -> Result<Vec<u8>, KeyError> {
    let trimmed = key_base64.trim();
    if trimmed.is_empty() {
        return Err(KeyError::Empty);
    }
    let bytes = KEY_ENGINE
        .decode(trimmed)
        .map_err(|error| KeyError::InvalidBase64 {
            reason: error.to_string(),
        })?;
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(bytes)
}

/// Encodes 32 random bytes as a key in Azure's format (44 base64 characters). The caller supplies the
/// randomness so that this crate stays free of I/O.
pub fn generate_key_from_bytes(random_bytes: &[u8; 32]) -> String {
    STANDARD.encode(random_bytes)
}

/// A token resource split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResource {
    /// Lower-cased host, without port (host names are case-insensitive; ids in the path are not).
    pub host: String,
    pub port: Option<u16>,
    /// Everything from the first `/` after the host, e.g. `/devices/dev1`, or `""`.
    pub path: String,
}

impl TokenResource {
    /// Splits a decoded resource (`host[:port][/path]`). Never fails: a port that is not a valid `u16`
    /// stays part of the host, which then simply does not match the hub's host name.
    /// IPv6 literals are accepted in brackets (`[::1]:8443`).
    pub fn parse(resource: &str) -> TokenResource {
        let (authority, path) = match resource.find('/') {
            Some(slash) => resource.split_at(slash),
            None => (resource, ""),
        };
        let (host, port) = split_host_and_port(authority);
        TokenResource {
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_owned(),
        }
    }
}

fn split_host_and_port(authority: &str) -> (&str, Option<u16>) {
    let port_separator = if authority.starts_with('[') {
        // IPv6: only a colon after the closing bracket separates a port.
        authority
            .find(']')
            .and_then(|close| authority[close..].find(':').map(|offset| close + offset))
    } else {
        authority.rfind(':')
    };
    if let Some(separator) = port_separator {
        let port_text = &authority[separator + 1..];
        let all_digits =
            !port_text.is_empty() && port_text.bytes().all(|byte| byte.is_ascii_digit());
        if let Some(port) = all_digits.then(|| port_text.parse::<u16>().ok()).flatten() {
            return (&authority[..separator], Some(port));
        }
    }
    (authority, None)
}

/// A resource that scopes a token to one device or one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceResource {
    /// Lower-cased host without port.
    pub host: String,
    pub port: Option<u16>,
    pub device_id: DeviceId,
    pub module_id: Option<ModuleId>,
}

/// Why a resource is not `host/devices/{id}[/modules/{mid}]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceResourceError {
    #[error("resource {resource:?} is not of the form host/devices/{{id}}[/modules/{{mid}}]")]
    NotADeviceResource { resource: String },
    #[error("resource {resource:?} names an invalid device: {source}")]
    InvalidDeviceId { resource: String, source: IdError },
    #[error("resource {resource:?} names an invalid module: {source}")]
    InvalidModuleId { resource: String, source: IdError },
}

impl DeviceResource {
    /// Parses a decoded resource such as `myhub.azure-devices.net/devices/dev1/modules/mod1`.
    pub fn parse(resource: &str) -> Result<DeviceResource, DeviceResourceError> {
        let TokenResource { host, port, path } = TokenResource::parse(resource);
        let not_device = || DeviceResourceError::NotADeviceResource {
            resource: resource.to_owned(),
        };
        let segments: Vec<&str> = path
            .strip_prefix('/')
            .ok_or_else(not_device)?
            .split('/')
            .collect();
        let (device, module) = match segments.as_slice() {
            ["devices", device] => (*device, None),
            ["devices", device, "modules", module] => (*device, Some(*module)),
            _ => return Err(not_device()),
        };
        if host.is_empty() {
            return Err(not_device());
        }
        let device_id =
            DeviceId::new(device).map_err(|source| DeviceResourceError::InvalidDeviceId {
                resource: resource.to_owned(),
                source,
            })?;
        let module_id = module.map(ModuleId::new).transpose().map_err(|source| {
            DeviceResourceError::InvalidModuleId {
                resource: resource.to_owned(),
                source,
            }
        })?;
        Ok(DeviceResource {
            host,
            port,
            device_id,
            module_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base64 of `0123456789abcdef0123456789abcdef`, the device key used for every device vector.
    const DEVICE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    /// base64 of `policy-key-for-fleethub-tests-32`, the policy key used for every service vector.
    const POLICY_KEY: &str = "cG9saWN5LWtleS1mb3ItZmxlZXRodWItdGVzdHMtMzI=";

    /// Tokens produced by the official SDKs with the keys above and `se = 1795663402` (one from 1795663403).
    ///
    /// How they were produced (throwaway environments under /tmp, not part of the repo):
    /// - Python: `pip install azure-iot-device==2.14.0 azure-iot-hub==2.7.0 six`; with `time.time` patched
    ///   to `se - 3600`, device tokens from `azure.iot.device.common.auth.sastoken.RenewableSasToken(uri,
    ///   SymmetricKeySigningMechanism(key), ttl=3600)` and service tokens from
    ///   `azure.iot.hub.sastoken.SasToken(host, key, key_name, ttl=3600)`.
    /// - Node 20: `npm install azure-iot-common@1.13.3 azure-iothub@1.16.6 azure-iot-device@1.18.4`;
    ///   device tokens from `azure-iot-device/dist/shared_access_signature.create(host, id, key, se)`, module
    ///   tokens as `sak_authentication_provider` builds them
    ///   (`SharedAccessSignature.create(encodeUriComponentStrict(resource), undefined, key, se)`), service
    ///   tokens from `azure-iothub/dist/shared_access_signature.create(host, policy, key, se)`.
    ///
    /// Columns: producer, token, expected decoded resource, expected key name, which key signs it.
    const SDK_VECTORS: &[(&str, &str, &str, Option<&str>, &str)] = &[
        (
            "python device",
            "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig=e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D&se=1795663402",
            "localhost/devices/dev1",
            None,
            DEVICE_KEY,
        ),
        (
            "python device, host with port, space in id",
            "SharedAccessSignature sr=localhost%3A8443%2Fdevices%2Fdev%201&sig=3x0R7tvkx7MmlGF2xRbUvU1F9btsHQVWlYDhOBAqkqc%3D&se=1795663402",
            "localhost:8443/devices/dev 1",
            None,
            DEVICE_KEY,
        ),
        (
            "python device, quote escapes !'()*",
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fa%28b%29%21%27%2A&sig=VauecuE8c2lK6FtunOjzHgc6wqGTADnetSN2W7FDi88%3D&se=1795663402",
            "myhub.azure-devices.net/devices/a(b)!'*",
            None,
            DEVICE_KEY,
        ),
        (
            "python module",
            "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1%2Fmodules%2Fmod1&sig=Uib1v%2BIzZ8HWMM2HlnaakLTtMPizCJ67WumWcC9kl4M%3D&se=1795663402",
            "localhost/devices/dev1/modules/mod1",
            None,
            DEVICE_KEY,
        ),
        (
            "python module, unreserved characters kept raw",
            "SharedAccessSignature sr=localhost%3A8883%2Fdevices%2Fd~x_y.z-w%2Fmodules%2Fm%24edge%401&sig=GRrA9VI8NdPrDb%2BxIUKqtn0v153FyOoHD0sKcrhjB%2FE%3D&se=1795663402",
            "localhost:8883/devices/d~x_y.z-w/modules/m$edge@1",
            None,
            DEVICE_KEY,
        ),
        (
            "node device",
            "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1&sig=e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D&se=1795663402",
            "localhost/devices/dev1",
            None,
            DEVICE_KEY,
        ),
        (
            "node device, host with port, space in id",
            "SharedAccessSignature sr=localhost%3A8443%2Fdevices%2Fdev%201&sig=3x0R7tvkx7MmlGF2xRbUvU1F9btsHQVWlYDhOBAqkqc%3D&se=1795663402",
            "localhost:8443/devices/dev 1",
            None,
            DEVICE_KEY,
        ),
        (
            // Node escapes * as lower-case %2a, so this signature differs from the Python one above.
            "node device, strict escapes in lower case",
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fa%28b%29%21%27%2a&sig=MFzUk%2BhIi7SsIrJ3Cw6kuXJfiK105VHP0FhXUIjDK%2B8%3D&se=1795663402",
            "myhub.azure-devices.net/devices/a(b)!'*",
            None,
            DEVICE_KEY,
        ),
        (
            "node module",
            "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1%2Fmodules%2Fmod1&sig=Uib1v%2BIzZ8HWMM2HlnaakLTtMPizCJ67WumWcC9kl4M%3D&se=1795663402",
            "localhost/devices/dev1/modules/mod1",
            None,
            DEVICE_KEY,
        ),
        (
            "python service, host with port (quote_plus)",
            "SharedAccessSignature sr=localhost%3A8443&sig=Ui5jEvfMtxaqPqE%2B94Ab9kp7mH4kLQpEMlFKHMvqsN0%3D&se=1795663402&skn=iothubowner",
            "localhost:8443",
            Some("iothubowner"),
            POLICY_KEY,
        ),
        (
            "python service",
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=rV%2B35%2BuI4UfPMZQOOdokpoGGq4GLJngpcRCj4OeC6oE%3D&se=1795663402&skn=service",
            "myhub.azure-devices.net",
            Some("service"),
            POLICY_KEY,
        ),
        (
            "python service",
            "SharedAccessSignature sr=localhost&sig=Erxe0ATw365PfWwbMsxkHt%2BvW419wYjVjTcJvg0euZ4%3D&se=1795663402&skn=registryReadWrite",
            "localhost",
            Some("registryReadWrite"),
            POLICY_KEY,
        ),
        (
            // azure-iot-hub quotes the signature with the default safe="/", so '/' arrives raw.
            "python service, raw '/' in sig",
            "SharedAccessSignature sr=localhost%3A8443&sig=F%2BXCLzxsrm/cvG3JZrOkv1vC5U5yiVF%2BALoqWdPtE/w%3D&se=1795663403&skn=iothubowner",
            "localhost:8443",
            Some("iothubowner"),
            POLICY_KEY,
        ),
        (
            "node service, field order sr sig skn se",
            "SharedAccessSignature sr=localhost&sig=Erxe0ATw365PfWwbMsxkHt%2BvW419wYjVjTcJvg0euZ4%3D&skn=iothubowner&se=1795663402",
            "localhost",
            Some("iothubowner"),
            POLICY_KEY,
        ),
        (
            // Node service tokens carry the host unencoded; the colon is signed raw.
            "node service, raw host with port",
            "SharedAccessSignature sr=localhost:8443&sig=31KM0kxR59AaQMMjyluRByhicYvI9AmHo8bNFqW9%2BnA%3D&skn=iothubowner&se=1795663402",
            "localhost:8443",
            Some("iothubowner"),
            POLICY_KEY,
        ),
        (
            "node service",
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=rV%2B35%2BuI4UfPMZQOOdokpoGGq4GLJngpcRCj4OeC6oE%3D&skn=service&se=1795663402",
            "myhub.azure-devices.net",
            Some("service"),
            POLICY_KEY,
        ),
    ];

    fn key(base64_key: &str) -> Vec<u8> {
        decode_key(base64_key).expect("test keys are valid base64")
    }

    #[test]
    fn sdk_produced_tokens_parse_and_verify() {
        for (producer, token, resource, key_name, signing_key) in SDK_VECTORS {
            let parsed: SasToken = token
                .parse()
                .unwrap_or_else(|error| panic!("{producer}: {error}"));
            assert_eq!(parsed.resource, *resource, "{producer}");
            assert_eq!(parsed.key_name.as_deref(), *key_name, "{producer}");
            assert!(
                parsed.signature_matches(&key(signing_key)),
                "{producer}: signature must verify"
            );
            let other_key = if *signing_key == DEVICE_KEY {
                POLICY_KEY
            } else {
                DEVICE_KEY
            };
            assert!(
                !parsed.signature_matches(&key(other_key)),
                "{producer}: wrong key must not verify"
            );
        }
    }

    #[test]
    fn generated_tokens_equal_the_python_device_sdk_byte_for_byte() {
        let device_key = key(DEVICE_KEY);
        for (producer, token, resource, key_name, signing_key) in SDK_VECTORS {
            if producer.starts_with("python device") || producer.starts_with("python module") {
                assert_eq!(*signing_key, DEVICE_KEY);
                assert_eq!(key_name, &None);
                assert_eq!(
                    generate_sas_token(resource, &device_key, 1795663402, None),
                    *token,
                    "{producer}"
                );
            }
        }
    }

    #[test]
    fn tampering_with_signed_fields_breaks_the_signature() {
        let original: SasToken = SDK_VECTORS[0].1.parse().expect("vector parses");
        let device_key = key(DEVICE_KEY);
        let later = SasToken {
            expiry: original.expiry + 1,
            ..original.clone()
        };
        assert!(!later.signature_matches(&device_key));
        let other_device = SasToken {
            sr_raw: "localhost%2Fdevices%2Fdev2".to_owned(),
            ..original.clone()
        };
        assert!(!other_device.signature_matches(&device_key));
        // Re-encoding sr (here: upper-case vs lower-case escape) changes the signed bytes.
        let reencoded = SasToken {
            sr_raw: "localhost%2fdevices%2fdev1".to_owned(),
            ..original
        };
        assert!(!reencoded.signature_matches(&device_key));
    }

    #[test]
    fn generated_token_with_key_name_round_trips() {
        let policy_key = key(POLICY_KEY);
        let token = generate_sas_token(
            "localhost:8443",
            &policy_key,
            1795663402,
            Some("iothubowner"),
        );
        let parsed: SasToken = token.parse().expect("generated token parses");
        assert_eq!(parsed.resource, "localhost:8443");
        assert_eq!(parsed.sr_raw, "localhost%3A8443");
        assert_eq!(parsed.key_name.as_deref(), Some("iothubowner"));
        assert!(parsed.signature_matches(&policy_key));
        // Same string-to-sign as the Python service SDK, so the same signature.
        assert_eq!(
            parsed.signature,
            "Ui5jEvfMtxaqPqE+94Ab9kp7mH4kLQpEMlFKHMvqsN0="
        );
    }

    #[test]
    fn expiry_is_inclusive() {
        let token: SasToken = SDK_VECTORS[0].1.parse().expect("vector parses");
        assert!(!token.is_expired(1795663401));
        assert!(!token.is_expired(1795663402));
        assert!(token.is_expired(1795663403));
    }

    #[test]
    fn malformed_tokens_name_the_bad_field() {
        const SIG: &str = "e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D";
        let invalid = |name: &'static str, reason: &str| SasParseError::InvalidField {
            name,
            reason: reason.to_owned(),
        };
        let cases: Vec<(String, SasParseError)> = vec![
            ("".to_owned(), SasParseError::MissingPrefix),
            ("sr=a&sig=b&se=1".to_owned(), SasParseError::MissingPrefix),
            (
                "SharedAccessSignaturesr=a&sig=b&se=1".to_owned(),
                SasParseError::MissingPrefix,
            ),
            (
                format!("SharedAccessSignature sig={SIG}&se=1"),
                SasParseError::MissingField { name: "sr" },
            ),
            (
                "SharedAccessSignature sr=h&se=1".to_owned(),
                SasParseError::MissingField { name: "sig" },
            ),
            (
                format!("SharedAccessSignature sr=h&sig={SIG}"),
                SasParseError::MissingField { name: "se" },
            ),
            (
                format!("SharedAccessSignature sr=h&sig={SIG}&se"),
                SasParseError::FieldWithoutValue {
                    field: "se".to_owned(),
                },
            ),
            (
                format!("SharedAccessSignature sr=h&sr=i&sig={SIG}&se=1"),
                SasParseError::DuplicateField { name: "sr" },
            ),
            (
                format!("SharedAccessSignature sr=&sig={SIG}&se=1"),
                invalid("sr", "it is empty"),
            ),
            (
                format!("SharedAccessSignature sr=h%2&sig={SIG}&se=1"),
                invalid("sr", "malformed percent-escape at byte 1"),
            ),
            (
                "SharedAccessSignature sr=h&sig=%%%&se=1".to_owned(),
                invalid("sig", "malformed percent-escape at byte 0"),
            ),
            (
                "SharedAccessSignature sr=h&sig=abc%3D&se=1".to_owned(),
                invalid("sig", "it decodes to 2 bytes, an HMAC-SHA256 has 32"),
            ),
            (
                "SharedAccessSignature sr=h&sig=YW!j&se=1".to_owned(),
                invalid("sig", "it is not base64: Invalid symbol 33, offset 2."),
            ),
            (
                "SharedAccessSignature sr=h&sig=YWJj&se=1".to_owned(),
                invalid("sig", "it decodes to 3 bytes, an HMAC-SHA256 has 32"),
            ),
            (
                format!("SharedAccessSignature sr=h&sig={SIG}&se=soon"),
                invalid(
                    "se",
                    "\"soon\" is not a whole number of seconds without leading zeros",
                ),
            ),
            (
                format!("SharedAccessSignature sr=h&sig={SIG}&se=-1"),
                invalid(
                    "se",
                    "\"-1\" is not a whole number of seconds without leading zeros",
                ),
            ),
            (
                format!("SharedAccessSignature sr=h&sig={SIG}&se=01"),
                invalid(
                    "se",
                    "\"01\" is not a whole number of seconds without leading zeros",
                ),
            ),
            (
                format!("SharedAccessSignature sr=h&sig={SIG}&se=99999999999999999999"),
                invalid(
                    "se",
                    "\"99999999999999999999\" is not a whole number of seconds without leading zeros",
                ),
            ),
            (
                format!("SharedAccessSignature sr=h&sig={SIG}&se=1&skn=%G0"),
                invalid("skn", "malformed percent-escape at byte 0"),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(token.parse::<SasToken>(), Err(expected), "{token:?}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_whitespace_tolerated() {
        let token = format!(
            "  SharedAccessSignature  sr=localhost%2Fdevices%2Fdev1&foo=bar&sig={}&se=1795663402 \n",
            "e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D"
        );
        let parsed: SasToken = token.parse().expect("tolerated");
        assert!(parsed.signature_matches(&key(DEVICE_KEY)));
    }

    #[test]
    fn key_decoding_table() {
        let cases: Vec<(&str, Result<Vec<u8>, KeyError>)> = vec![
            (DEVICE_KEY, Ok(b"0123456789abcdef0123456789abcdef".to_vec())),
            (
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
                Ok(b"0123456789abcdef0123456789abcdef".to_vec()),
            ),
            (" cHJpbWFyeQ== ", Ok(b"primary".to_vec())),
            ("", Err(KeyError::Empty)),
            ("   ", Err(KeyError::Empty)),
            (
                "not base64!",
                Err(KeyError::InvalidBase64 {
                    reason: "Invalid symbol 32, offset 3.".to_owned(),
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_key(input), expected, "decode_key({input:?})");
        }
        assert_eq!(
            generate_key_from_bytes(b"0123456789abcdef0123456789abcdef"),
            DEVICE_KEY
        );
    }

    #[test]
    fn token_resource_parse_table() {
        let resource = |host: &str, port: Option<u16>, path: &str| TokenResource {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        };
        let cases = [
            ("localhost", resource("localhost", None, "")),
            ("LocalHost:8443", resource("localhost", Some(8443), "")),
            (
                "MyHub.azure-devices.net/devices/Dev1",
                resource("myhub.azure-devices.net", None, "/devices/Dev1"),
            ),
            (
                "localhost:8883/devices/dev1/modules/m:1",
                resource("localhost", Some(8883), "/devices/dev1/modules/m:1"),
            ),
            (
                "[::1]:8443/devices/d",
                resource("[::1]", Some(8443), "/devices/d"),
            ),
            ("[::1]", resource("[::1]", None, "")),
            ("host:99999", resource("host:99999", None, "")),
            ("host:", resource("host:", None, "")),
            ("", resource("", None, "")),
        ];
        for (input, expected) in cases {
            assert_eq!(
                TokenResource::parse(input),
                expected,
                "TokenResource::parse({input:?})"
            );
        }
    }

    #[test]
    fn device_resource_parse_table() {
        let device = |text: &str| DeviceId::new(text).expect("valid");
        let module = |text: &str| ModuleId::new(text).expect("valid");
        let ok = |host: &str, port, device_id, module_id| {
            Ok(DeviceResource {
                host: host.to_owned(),
                port,
                device_id,
                module_id,
            })
        };
        let not_device = |resource: &str| {
            Err(DeviceResourceError::NotADeviceResource {
                resource: resource.to_owned(),
            })
        };
        let cases: Vec<(&str, Result<DeviceResource, DeviceResourceError>)> = vec![
            (
                "localhost/devices/dev1",
                ok("localhost", None, device("dev1"), None),
            ),
            (
                "Hub.Example:8883/devices/dev1/modules/$edgeHub",
                ok(
                    "hub.example",
                    Some(8883),
                    device("dev1"),
                    Some(module("$edgeHub")),
                ),
            ),
            ("localhost", not_device("localhost")),
            ("localhost/devices", not_device("localhost/devices")),
            (
                "localhost/devices/dev1/",
                not_device("localhost/devices/dev1/"),
            ),
            (
                "localhost/devices/dev1/modules",
                not_device("localhost/devices/dev1/modules"),
            ),
            ("localhost/twins/dev1", not_device("localhost/twins/dev1")),
            ("/devices/dev1", not_device("/devices/dev1")),
            (
                "localhost/devices/dev 1",
                Err(DeviceResourceError::InvalidDeviceId {
                    resource: "localhost/devices/dev 1".to_owned(),
                    source: IdError::InvalidCharacter {
                        kind: crate::ids::IdKind::DeviceId,
                        character: ' ',
                        position: 3,
                    },
                }),
            ),
            (
                "localhost/devices/d/modules/m#",
                Err(DeviceResourceError::InvalidModuleId {
                    resource: "localhost/devices/d/modules/m#".to_owned(),
                    source: IdError::InvalidCharacter {
                        kind: crate::ids::IdKind::ModuleId,
                        character: '#',
                        position: 1,
                    },
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                DeviceResource::parse(input),
                expected,
                "DeviceResource::parse({input:?})"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn generate_then_parse_then_verify(
            resource in "[ -~]{1,60}",
            key_bytes in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
            expiry in proptest::num::u64::ANY,
            key_name in proptest::option::of("[A-Za-z0-9 &=%]{1,20}"),
        ) {
            let token = generate_sas_token(&resource, &key_bytes, expiry, key_name.as_deref());
            let parsed: SasToken = token.parse().expect("generated tokens parse");
            proptest::prop_assert_eq!(&parsed.resource, &resource);
            proptest::prop_assert_eq!(parsed.expiry, expiry);
            proptest::prop_assert_eq!(&parsed.key_name, &key_name);
            proptest::prop_assert!(parsed.signature_matches(&key_bytes));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = text.parse::<SasToken>();
            let _ = format!("SharedAccessSignature {text}").parse::<SasToken>();
            let _ = DeviceResource::parse(&text);
        }
    }
}
