//! The `firmwareUpdate` direct method's payload: the reference `{"fwPackageUri": "<url>"}` or the richer
//! `{"fwPackageUri": "<url>", "version": "2.0.0", "manifest": "<JWS>"}`. Anything else is answered 400 with
//! a message saying what is wrong. Pure.

use fleethub_protocol::firmware::{self, FirmwareManifest};
use serde_json::{Map, Value};

/// The name of the direct method.
pub const METHOD_NAME: &str = "firmwareUpdate";
/// The answer to an accepted update, the reference workflow's.
pub const STARTED_RESPONSE: &str = "Firmware update started";

/// An update asked for by `firmwareUpdate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRequest {
    pub url: reqwest::Url,
    pub version: Option<String>,
    /// The manifest JWS as given, and what it says (read without checking the signature: that happens
    /// before anything touches a slot, not here).
    pub manifest: Option<(String, FirmwareManifest)>,
}

const USAGE: &str = r#"expected {"fwPackageUri": "<url>"} or {"fwPackageUri": "<url>", "version": "<version>", "manifest": "<JWS>"}"#;

/// Reads a `firmwareUpdate` payload, or says (for a 400 answer) why it is not one.
pub fn parse_update_request(payload: &Value) -> Result<UpdateRequest, String> {
    let Some(fields) = payload.as_object() else {
        return Err(format!(
            "the payload is {}, not a JSON object: {USAGE}",
            describe(payload)
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !matches!(key.as_str(), "fwPackageUri" | "version" | "manifest"))
    {
        return Err(format!("unknown field {unknown:?}: {USAGE}"));
    }
    let uri = string_field(fields, "fwPackageUri")?
        .ok_or_else(|| format!("fwPackageUri is missing: {USAGE}"))?;
    let url = reqwest::Url::parse(uri)
        .map_err(|error| format!("fwPackageUri {uri:?} is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "fwPackageUri {uri:?} is not an http or https URL with a host"
        ));
    }
    let version = match string_field(fields, "version")? {
        Some(version) => {
            firmware::check_name("version", version).map_err(|error| error.to_string())?;
            Some(version.to_owned())
        }
        None => None,
    };
    let manifest = match string_field(fields, "manifest")? {
        Some(jws) => {
            let manifest = firmware::read_unverified(jws)
                .map_err(|error| format!("manifest is not a firmware manifest: {error}"))?;
            Some((jws.to_owned(), manifest))
        }
        None => None,
    };
    if let (Some(version), Some((_, manifest))) = (&version, &manifest)
        && *version != manifest.version
    {
        return Err(format!(
            "version is {version:?} but the manifest is for version {:?}",
            manifest.version
        ));
    }
    Ok(UpdateRequest {
        url,
        version,
        manifest,
    })
}

impl UpdateRequest {
    /// The version the update goes to, when the payload says.
    pub fn target_version(&self) -> Option<&str> {
        self.version.as_deref().or(self
            .manifest
            .as_ref()
            .map(|(_, manifest)| manifest.version.as_str()))
    }

    /// Whether the URL is a signed URL (`sig=` in its query), fetched without the device's SAS token.
    pub fn is_signed_url(&self) -> bool {
        is_signed_url(&self.url)
    }
}

pub(crate) fn is_signed_url(url: &reqwest::Url) -> bool {
    url.query_pairs().any(|(name, _)| name == "sig")
}

fn string_field<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Err(format!("{name} is empty")),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!("{name} must be a string, not {}", describe(other))),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use fleethub_protocol::firmware::SigningKey;
    use serde_json::json;

    use super::*;

    fn signed(model: &str, version: &str) -> String {
        SigningKey::from_seed([3; 32])
            .sign(&FirmwareManifest {
                model: model.into(),
                version: version.into(),
                sha256: "ab".repeat(32),
                size: 1,
                created: time::macros::datetime!(2026-11-27 12:00 UTC),
                health_check: None,
                description: None,
            })
            .unwrap()
    }

    #[test]
    fn both_payload_shapes_are_read() {
        let reference = parse_update_request(&json!({"fwPackageUri": "https://h/fw.bin"})).unwrap();
        assert_eq!(reference.url.as_str(), "https://h/fw.bin");
        assert!(!reference.is_signed_url());
        assert_eq!((reference.version, reference.manifest), (None, None));

        let jws = signed("m", "2.0.0");
        let rich = parse_update_request(&json!({
            "fwPackageUri": "https://h/firmware/artifacts/m/2.0.0/image?device=d&expires=1&sig=abc",
            "version": "2.0.0",
            "manifest": jws,
        }))
        .unwrap();
        assert_eq!(rich.target_version(), Some("2.0.0"));
        assert_eq!(
            rich.manifest
                .as_ref()
                .map(|(_, manifest)| manifest.model.as_str()),
            Some("m")
        );
        assert!(rich.is_signed_url());
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        let cases = [
            (json!(null), "the payload is null, not a JSON object"),
            (
                json!("https://h/fw.bin"),
                "the payload is a string, not a JSON object",
            ),
            (json!([1]), "the payload is an array"),
            (json!({}), "fwPackageUri is missing"),
            (
                json!({"fwPackageUri": 5}),
                "fwPackageUri must be a string, not a number",
            ),
            (json!({"fwPackageUri": ""}), "fwPackageUri is empty"),
            (json!({"fwPackageUri": "not a url"}), "is not a URL"),
            (
                json!({"fwPackageUri": "ftp://h/fw.bin"}),
                "not an http or https URL",
            ),
            (
                json!({"fwPackageUri": "https://h/a", "extra": 1}),
                "unknown field \"extra\"",
            ),
            (
                json!({"fwPackageUri": "https://h/a", "version": "../x"}),
                "invalid manifest: version",
            ),
            (
                json!({"fwPackageUri": "https://h/a", "version": 2}),
                "version must be a string",
            ),
            (
                json!({"fwPackageUri": "https://h/a", "manifest": "nope"}),
                "manifest is not a firmware manifest",
            ),
            (
                json!({"fwPackageUri": "https://h/a", "version": "3.0.0", "manifest": signed("m", "2.0.0")}),
                "version is \"3.0.0\" but the manifest is for version \"2.0.0\"",
            ),
        ];
        for (payload, expected) in cases {
            let message = parse_update_request(&payload).expect_err(&payload.to_string());
            assert!(message.contains(expected), "{payload}: {message}");
        }
    }
}
