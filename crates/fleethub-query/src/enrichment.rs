//! Message enrichments: an application property the hub stamps on messages sent to an endpoint,
//! whose value is a static string, the hub's name or a value of the device twin.
//!
//! Reference: Azure's "Message enrichments for device-to-cloud IoT Hub messages"
//! (`iot-hub-message-enrichments-overview.md`):
//! - "The **key** is a string. A key can only contain alphanumeric characters or these special
//!   characters: hyphen (`-`), underscore (`_`), and period (`.`)."
//! - "The **value** can be [...] Any static string. Dynamic values such as conditions, logic,
//!   operations, and functions are not allowed. [...] The name of the IoT hub sending the message.
//!   This value is *$iothubname*. [...] Information from the device twin, such as its path." and
//!   "only $iothubname, $twin.tags, $twin.properties.desired, and $twin.properties.reported are
//!   supported variables". So a value starting with `$` must be one of them (a static string
//!   cannot start with `$` here: it would be an unsupported variable); `$iothubname`, `$twin`,
//!   `tags`, `properties`, `desired` and `reported` are matched ignoring ASCII case.
//! - "if an enrichment value is set to $twin.tags.field, the messages will be stamped with the
//!   string "$twin.tags.field" rather than the value of that field from the twin. This happens
//!   [...] the device sending the message has no device twin [...] the device twin path used for
//!   the value of the enrichment does not exist": [`Enrichment::resolve`] does the same.
//!
//! Twin names match exactly first, else ignoring ASCII case (as in route conditions). A twin
//! value that is not a string is stamped as its compact JSON (`55`, `true`, `{"a":1}`).

use serde_json::Value;

use crate::ast::Segment;
use crate::eval::{Val, lookup_segments};

/// A parsed enrichment: its key and where its value comes from.
///
/// ```
/// use fleethub_query::Enrichment;
/// use serde_json::json;
///
/// let enrichment = Enrichment::parse("region", "$twin.tags.location.region")?;
/// let twin = json!({"tags": {"location": {"region": "EU"}}});
/// assert_eq!(enrichment.resolve(Some(&twin), "hub1"), "EU");
/// assert_eq!(enrichment.resolve(None, "hub1"), "$twin.tags.location.region");
/// # Ok::<(), fleethub_query::EnrichmentError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrichment {
    key: String,
    value: EnrichmentValue,
}

/// Where an enrichment's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrichmentValue {
    /// Stamped as is.
    Static(String),
    /// `$iothubname`: the hub's name.
    HubName,
    /// `$twin.tags...`, `$twin.properties.desired...` or `$twin.properties.reported...`.
    Twin {
        /// Keys from the twin's root, canonical: `["tags", "location", "region"]`.
        path: Vec<String>,
        /// The value as written, stamped when the twin or the path is missing.
        text: String,
    },
}

/// Why an enrichment was refused; the message is for a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrichmentError {
    #[error("enrichment key is empty")]
    EmptyKey,
    #[error(
        "enrichment key '{key}' holds {character:?}; a key can only contain alphanumeric characters, '-', '_' and '.'"
    )]
    InvalidKey { key: String, character: char },
    #[error("enrichment value is empty")]
    EmptyValue,
    #[error(
        "enrichment value '{value}' is not a supported variable; the variables are $iothubname, $twin.tags, $twin.properties.desired and $twin.properties.reported"
    )]
    UnsupportedVariable { value: String },
    #[error("enrichment value '{value}' has an empty name in its twin path")]
    EmptyTwinName { value: String },
}

impl Enrichment {
    pub fn parse(key: &str, value: &str) -> Result<Enrichment, EnrichmentError> {
        if key.is_empty() {
            return Err(EnrichmentError::EmptyKey);
        }
        if let Some(character) = key
            .chars()
            .find(|character| !(character.is_ascii_alphanumeric() || "-_.".contains(*character)))
        {
            return Err(EnrichmentError::InvalidKey {
                key: key.to_owned(),
                character,
            });
        }
        Ok(Enrichment {
            key: key.to_owned(),
            value: EnrichmentValue::parse(value)?,
        })
    }

    /// The application property the value is stamped as.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> &EnrichmentValue {
        &self.value
    }

    /// The value to stamp, given the message's twin (the module twin for a module's message) and
    /// the hub's name. Never fails: a missing twin or twin path stamps the value as written, as
    /// Azure does.
    pub fn resolve(&self, twin: Option<&Value>, hub_name: &str) -> String {
        self.value.resolve(twin, hub_name)
    }
}

impl EnrichmentValue {
    pub fn parse(value: &str) -> Result<EnrichmentValue, EnrichmentError> {
        if value.is_empty() {
            return Err(EnrichmentError::EmptyValue);
        }
        if !value.starts_with('$') {
            return Ok(EnrichmentValue::Static(value.to_owned()));
        }
        if value.eq_ignore_ascii_case("$iothubname") {
            return Ok(EnrichmentValue::HubName);
        }
        let unsupported = || EnrichmentError::UnsupportedVariable {
            value: value.to_owned(),
        };
        let names: Vec<&str> = value.split('.').collect();
        let (prefix_length, prefix): (usize, &[&str]) = match names.as_slice() {
            [twin, tags, ..] if is(twin, "$twin") && is(tags, "tags") => (2, &["tags"]),
            [twin, properties, section, ..]
                if is(twin, "$twin")
                    && is(properties, "properties")
                    && (is(section, "desired") || is(section, "reported")) =>
            {
                let section: &[&str] = if is(section, "desired") {
                    &["properties", "desired"]
                } else {
                    &["properties", "reported"]
                };
                (3, section)
            }
            _ => return Err(unsupported()),
        };
        let rest = &names[prefix_length..];
        if rest.iter().any(|name| name.is_empty()) {
            return Err(EnrichmentError::EmptyTwinName {
                value: value.to_owned(),
            });
        }
        let path = prefix
            .iter()
            .chain(rest)
            .map(|name| (*name).to_owned())
            .collect();
        Ok(EnrichmentValue::Twin {
            path,
            text: value.to_owned(),
        })
    }

    /// See [`Enrichment::resolve`].
    pub fn resolve(&self, twin: Option<&Value>, hub_name: &str) -> String {
        match self {
            EnrichmentValue::Static(value) => value.clone(),
            EnrichmentValue::HubName => hub_name.to_owned(),
            EnrichmentValue::Twin { path, text } => {
                let Some(twin) = twin else {
                    return text.clone();
                };
                let segments: Vec<Segment> = path.iter().cloned().map(Segment::Name).collect();
                match lookup_segments(twin, &segments, true) {
                    Val::Undefined => text.clone(),
                    Val::Str(value) => value.into_owned(),
                    other => other
                        .to_json()
                        .map_or_else(|| text.clone(), |json| json.to_string()),
                }
            }
        }
    }
}

fn is(name: &str, expected: &str) -> bool {
    name.eq_ignore_ascii_case(expected)
}
