//! Identifier newtypes (`DeviceId`, `ModuleId`, `JobId`, `ClientId`, `ETag`) validated on construction, and
//! the direct-method name rule.
//!
//! Sources for the rules:
//! - device and module ids: Azure docs "Understand the identity registry in your IoT hub"
//!   (articles/iot-hub/iot-hub-devguide-identity-registry.md, ms.date 03/28/2025): "A case-sensitive
//!   string (up to 128 characters long) of ASCII 7-bit alphanumeric characters plus certain special
//!   characters: `- . % _ * ? ! ( ) , : = @ $ '`. The special characters `+ #` aren't supported."
//!   The current page says this for *both* `deviceId` and `moduleId`. Older revisions of the page and
//!   the Event Grid schema docs list `+` and `#` as allowed for both; they were withdrawn because they are
//!   MQTT wildcards and cannot appear in the `devices/{id}/modules/{mid}/...` topic names.
//! - job ids: Azure documents no rule for the `jobId` of `PUT /jobs/v2/{id}` (the REST reference says only
//!   "the unique identifier of the job"). fleethub applies the device id rule: it covers the GUIDs and names
//!   the SDK samples use, and keeps job ids safe in URL paths and in `devices.jobs.jobId = '...'` queries.
//! - method names: Azure docs "Understand and invoke direct methods from IoT Hub"
//!   (articles/iot-hub/iot-hub-devguide-direct-methods.md): "property names and values can only contain
//!   US-ASCII printable alphanumeric, except any in the following set:
//!   `$ ( ) < > @ , ; : \ " / [ ] ? = { } SP HT`". That is RFC 7230's `token` without `$`.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// Azure's maximum length for device and module ids.
pub const MAX_ID_LENGTH: usize = 128;

/// Which kind of identifier a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    DeviceId,
    ModuleId,
    JobId,
    RolloutId,
    MethodName,
}

impl fmt::Display for IdKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            IdKind::DeviceId => "device id",
            IdKind::ModuleId => "module id",
            IdKind::JobId => "job id",
            IdKind::RolloutId => "rollout id",
            IdKind::MethodName => "method name",
        })
    }
}

/// Why a string is not a valid identifier. Positions count characters from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: IdKind },
    #[error("{kind} is {length} characters long, the maximum is {maximum}")]
    TooLong {
        kind: IdKind,
        length: usize,
        maximum: usize,
    },
    #[error("{kind} contains {character:?} at position {position}, which is not allowed")]
    InvalidCharacter {
        kind: IdKind,
        character: char,
        position: usize,
    },
}

/// The special characters Azure allows in device and module ids besides ASCII letters and digits.
const ID_SPECIAL_CHARACTERS: &str = "-.%_*?!(),:=@$'";

fn validate_identity_id(kind: IdKind, text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty { kind });
    }
    for (position, character) in text.chars().enumerate() {
        let allowed =
            character.is_ascii_alphanumeric() || ID_SPECIAL_CHARACTERS.contains(character);
        if !allowed {
            return Err(IdError::InvalidCharacter {
                kind,
                character,
                position,
            });
        }
    }
    // Every allowed character is one byte, so the byte length is the character count here.
    if text.len() > MAX_ID_LENGTH {
        return Err(IdError::TooLong {
            kind,
            length: text.len(),
            maximum: MAX_ID_LENGTH,
        });
    }
    Ok(())
}

/// Separators of RFC 7230 `token` plus `$`, as listed by the direct-methods doc.
const METHOD_NAME_FORBIDDEN: &str = "$()<>@,;:\\\"/[]?={}";

/// Checks a direct method name against Azure's rule (see the module docs for the source):
/// non-empty, printable US-ASCII (`!`..=`~`, so no space or tab), none of `$ ( ) < > @ , ; : \ " / [ ] ? = { }`.
/// Azure documents no length limit for method names, so none is enforced here; request size limits apply.
pub fn validate_method_name(method_name: &str) -> Result<(), IdError> {
    let kind = IdKind::MethodName;
    if method_name.is_empty() {
        return Err(IdError::Empty { kind });
    }
    for (position, character) in method_name.chars().enumerate() {
        let printable_ascii = ('!'..='~').contains(&character);
        if !printable_ascii || METHOD_NAME_FORBIDDEN.contains(character) {
            return Err(IdError::InvalidCharacter {
                kind,
                character,
                position,
            });
        }
    }
    Ok(())
}

macro_rules! validated_id {
    ($(#[$attribute:meta])* $name:ident, $kind:expr) => {
        $(#[$attribute])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `text` and wraps it.
            pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                validate_identity_id($kind, &text)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq are derived from the inner String, so borrowing as str is consistent and lets
        // maps keyed by the id be queried with a plain &str.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(text: String) -> Result<Self, IdError> {
                Self::new(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;

            fn try_from(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::new(text).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_id!(
    /// A device id: 1..=128 ASCII letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`. Case-sensitive.
    DeviceId,
    IdKind::DeviceId
);

validated_id!(
    /// A module id. Same rule as [`DeviceId`] (the current Azure docs exclude `+` and `#` for modules
    /// too; see the module docs). Edge system modules such as `$edgeAgent` are valid.
    ModuleId,
    IdKind::ModuleId
);

validated_id!(
    /// A job id (`PUT /jobs/v2/{id}`). Azure documents no rule; fleethub applies the [`DeviceId`] rule (see
    /// the module docs).
    JobId,
    IdKind::JobId
);

validated_id!(
    /// A firmware rollout id (`PUT /firmware/rollouts/{id}`, a fleethub extension). The [`DeviceId`] rule, as
    /// for jobs: safe in URL paths and in a grant's `rollout:<id>` source.
    RolloutId,
    IdKind::RolloutId
);

/// The MQTT client id of a device (`dev`) or module (`dev/mod`) connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId {
    pub device: DeviceId,
    pub module: Option<ModuleId>,
}

impl ClientId {
    pub fn device(device: DeviceId) -> Self {
        Self {
            device,
            module: None,
        }
    }

    pub fn module(device: DeviceId, module: ModuleId) -> Self {
        Self {
            device,
            module: Some(module),
        }
    }

    /// Parses `dev` or `dev/mod`. Ids cannot contain `/`, so the first `/` is the only possible split;
    /// a second `/` is reported as an invalid character of the module id.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        match text.split_once('/') {
            None => Ok(Self::device(DeviceId::new(text)?)),
            Some((device, module)) => {
                Ok(Self::module(DeviceId::new(device)?, ModuleId::new(module)?))
            }
        }
    }

    pub fn is_module(&self) -> bool {
        self.module.is_some()
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.module {
            None => write!(formatter, "{}", self.device),
            Some(module) => write!(formatter, "{}/{}", self.device, module),
        }
    }
}

impl FromStr for ClientId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::parse(text)
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An entity tag as it appears in JSON bodies (`"etag": "AAAAAAAAAAE="`), without HTTP quotes.
/// Azure treats etags as opaque, so any string is accepted; comparison is exact.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ETag(String);

impl ETag {
    pub fn new(tag: impl Into<String>) -> Self {
        Self(tag.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The value for an HTTP `ETag` response header: the tag in double quotes.
    pub fn to_header_value(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// Same as [`parse_if_match`].
    pub fn parse_if_match(header: &str) -> IfMatch {
        parse_if_match(header)
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl AsRef<str> for ETag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for ETag {
    fn from(tag: String) -> Self {
        Self(tag)
    }
}

impl From<&str> for ETag {
    fn from(tag: &str) -> Self {
        Self(tag.to_owned())
    }
}

impl FromStr for ETag {
    type Err = std::convert::Infallible;

    fn from_str(tag: &str) -> Result<Self, Self::Err> {
        Ok(Self(tag.to_owned()))
    }
}

impl serde::Serialize for ETag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ETag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// The meaning of an `If-Match` request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*` or `"*"`: any current version matches.
    Any,
    /// A specific tag; matches only an identical current etag.
    Tag(ETag),
}

impl IfMatch {
    pub fn matches(&self, current: &ETag) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Tag(expected) => expected == current,
        }
    }
}

/// Reads an `If-Match` header value. The Python service SDK quotes registry and twin etags
/// (`"AAAAAAAAAAE="`, `"*"`), its configuration manager sends them raw (`*`), and RFC 7232 allows a weak
/// `W/` prefix; all of these are accepted. Surrounding whitespace is ignored. An empty value yields an
/// empty tag, which matches no real etag (so the request fails with 412 rather than being applied blindly).
pub fn parse_if_match(header: &str) -> IfMatch {
    let trimmed = header.trim();
    let without_weak_prefix = trimmed.strip_prefix("W/").unwrap_or(trimmed);
    let unquoted = without_weak_prefix
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(without_weak_prefix);
    if unquoted == "*" {
        IfMatch::Any
    } else {
        IfMatch::Tag(ETag::new(unquoted))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn device_id_validation_table() {
        let long_valid = "a".repeat(128);
        let too_long = "a".repeat(129);
        let cases: Vec<(&str, Result<(), IdError>)> = vec![
            ("dev1", Ok(())),
            ("a-b.c%d_e*f?g!h(i)j,k:l=m@n$o'p", Ok(())),
            (long_valid.as_str(), Ok(())),
            (
                "",
                Err(IdError::Empty {
                    kind: IdKind::DeviceId,
                }),
            ),
            (
                too_long.as_str(),
                Err(IdError::TooLong {
                    kind: IdKind::DeviceId,
                    length: 129,
                    maximum: 128,
                }),
            ),
            (
                "dev 1",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::DeviceId,
                    character: ' ',
                    position: 3,
                }),
            ),
            (
                "dev/1",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::DeviceId,
                    character: '/',
                    position: 3,
                }),
            ),
            (
                "a+b",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::DeviceId,
                    character: '+',
                    position: 1,
                }),
            ),
            (
                "#",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::DeviceId,
                    character: '#',
                    position: 0,
                }),
            ),
            (
                "dévice",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::DeviceId,
                    character: 'é',
                    position: 1,
                }),
            ),
            (
                "a&b",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::DeviceId,
                    character: '&',
                    position: 1,
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                DeviceId::new(input).map(|_| ()),
                expected,
                "DeviceId::new({input:?})"
            );
        }
    }

    #[test]
    fn module_id_follows_the_same_rule_and_names_itself_in_errors() {
        assert!(ModuleId::new("$edgeAgent").is_ok());
        assert_eq!(
            ModuleId::new("m#1"),
            Err(IdError::InvalidCharacter {
                kind: IdKind::ModuleId,
                character: '#',
                position: 1
            })
        );
        assert_eq!(
            ModuleId::new("m+1"),
            Err(IdError::InvalidCharacter {
                kind: IdKind::ModuleId,
                character: '+',
                position: 1
            })
        );
        assert_eq!(
            ModuleId::new("").map_err(|error| error.to_string()),
            Err("module id is empty".to_owned())
        );
    }

    #[test]
    fn id_error_messages_are_lowercase_and_specific() {
        let too_long = DeviceId::new("x".repeat(130)).map(|_| ());
        assert_eq!(
            too_long.map_err(|error| error.to_string()),
            Err("device id is 130 characters long, the maximum is 128".to_owned())
        );
        let bad_character = DeviceId::new("a b").map(|_| ());
        assert_eq!(
            bad_character.map_err(|error| error.to_string()),
            Err("device id contains ' ' at position 1, which is not allowed".to_owned())
        );
    }

    #[test]
    fn client_id_parse_table() {
        let device = |text: &str| DeviceId::new(text).expect("test device id is valid");
        let module = |text: &str| ModuleId::new(text).expect("test module id is valid");
        let cases: Vec<(&str, Result<ClientId, IdError>)> = vec![
            ("dev1", Ok(ClientId::device(device("dev1")))),
            (
                "dev1/mod1",
                Ok(ClientId::module(device("dev1"), module("mod1"))),
            ),
            (
                "",
                Err(IdError::Empty {
                    kind: IdKind::DeviceId,
                }),
            ),
            (
                "/mod1",
                Err(IdError::Empty {
                    kind: IdKind::DeviceId,
                }),
            ),
            (
                "dev1/",
                Err(IdError::Empty {
                    kind: IdKind::ModuleId,
                }),
            ),
            (
                "dev1/mod1/x",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::ModuleId,
                    character: '/',
                    position: 4,
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                ClientId::parse(input),
                expected,
                "ClientId::parse({input:?})"
            );
        }
        assert_eq!(
            ClientId::parse("dev1/mod1").map(|client| client.to_string()),
            Ok("dev1/mod1".to_owned())
        );
    }

    #[test]
    fn ids_serialize_as_plain_strings_and_validate_on_deserialize() {
        let id = DeviceId::new("dev1").expect("valid");
        assert_eq!(serde_json::to_string(&id).ok(), Some("\"dev1\"".to_owned()));
        assert_eq!(serde_json::from_str::<DeviceId>("\"dev1\"").ok(), Some(id));
        let error =
            serde_json::from_str::<DeviceId>("\"dev 1\"").map_err(|error| error.to_string());
        assert_eq!(
            error,
            Err("device id contains ' ' at position 3, which is not allowed".to_owned())
        );
        let client = ClientId::parse("d/m").expect("valid");
        assert_eq!(
            serde_json::to_string(&client).ok(),
            Some("\"d/m\"".to_owned())
        );
        assert_eq!(
            serde_json::from_str::<ClientId>("\"d/m\"").ok(),
            Some(client)
        );
    }

    #[test]
    fn method_name_validation_table() {
        let cases: Vec<(&str, Result<(), IdError>)> = vec![
            ("reboot", Ok(())),
            ("firmwareUpdate", Ok(())),
            ("thermostat1*getMaxMinReport", Ok(())),
            ("a-b_c.d!e#f%g&h'i*j+k^l`m|n~", Ok(())),
            (
                "",
                Err(IdError::Empty {
                    kind: IdKind::MethodName,
                }),
            ),
            (
                "do it",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::MethodName,
                    character: ' ',
                    position: 2,
                }),
            ),
            (
                "$edge",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::MethodName,
                    character: '$',
                    position: 0,
                }),
            ),
            (
                "a/b",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::MethodName,
                    character: '/',
                    position: 1,
                }),
            ),
            (
                "a?b",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::MethodName,
                    character: '?',
                    position: 1,
                }),
            ),
            (
                "a=b",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::MethodName,
                    character: '=',
                    position: 1,
                }),
            ),
            (
                "tab\t",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::MethodName,
                    character: '\t',
                    position: 3,
                }),
            ),
            (
                "é",
                Err(IdError::InvalidCharacter {
                    kind: IdKind::MethodName,
                    character: 'é',
                    position: 0,
                }),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                validate_method_name(input),
                expected,
                "validate_method_name({input:?})"
            );
        }
    }

    #[test]
    fn if_match_parse_table() {
        let tag = |text: &str| IfMatch::Tag(ETag::new(text));
        let cases = [
            ("*", IfMatch::Any),
            ("\"*\"", IfMatch::Any),
            (" \"*\" ", IfMatch::Any),
            ("\"AAAAAAAAAAE=\"", tag("AAAAAAAAAAE=")),
            ("AAAAAAAAAAE=", tag("AAAAAAAAAAE=")),
            ("W/\"MTIzNDU2Nzg=\"", tag("MTIzNDU2Nzg=")),
            ("\"unbalanced", tag("\"unbalanced")),
            ("", tag("")),
            ("\"\"", tag("")),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_if_match(input), expected, "parse_if_match({input:?})");
        }
        let current = ETag::new("AAAAAAAAAAE=");
        assert!(IfMatch::Any.matches(&current));
        assert!(tag("AAAAAAAAAAE=").matches(&current));
        assert!(!tag("AAAAAAAAAAI=").matches(&current));
        assert!(!tag("").matches(&current));
        assert_eq!(current.to_header_value(), "\"AAAAAAAAAAE=\"");
    }

    pub(crate) fn id_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        "[A-Za-z0-9\\-.%_*?!(),:=@$']{1,128}"
    }

    proptest::proptest! {
        #[test]
        fn device_id_display_parse_round_trip(text in id_strategy()) {
            let id = DeviceId::new(text.clone()).expect("strategy only yields valid ids");
            proptest::prop_assert_eq!(id.to_string(), text.clone());
            proptest::prop_assert_eq!(id.to_string().parse::<DeviceId>().ok(), Some(id));
        }

        #[test]
        fn client_id_display_parse_round_trip(device in id_strategy(), module in proptest::option::of(id_strategy())) {
            let client = ClientId {
                device: DeviceId::new(device).expect("valid"),
                module: module.map(|module| ModuleId::new(module).expect("valid")),
            };
            proptest::prop_assert_eq!(ClientId::parse(&client.to_string()).ok(), Some(client));
        }

        #[test]
        fn device_id_validation_never_panics(text in "\\PC{0,140}") {
            let _ = DeviceId::new(text);
        }
    }
}
