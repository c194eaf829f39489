//! Why a twin write was refused. Every variant names the Azure rule it enforces; the REST and MQTT
//! edges map all of them to 400 (Azure answers these with `ArgumentInvalid`/`400004`).

use super::limits::TwinSectionKind;

/// A twin write (reported patch, desired patch, service PATCH or PUT) that breaks a twin rule.
/// A refused write leaves the twin untouched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TwinPatchError {
    #[error("{section} must be a json object")]
    NotAnObject { section: TwinSectionKind },

    #[error("a twin body must be a json object")]
    BodyNotAnObject,

    #[error("`{field}` in a twin body must be a json object or null")]
    FieldNotAnObject { field: &'static str },

    #[error("invalid key at `{path}`: {reason}")]
    InvalidKey {
        path: String,
        reason: InvalidKeyReason,
    },

    #[error(
        "string at `{path}` is {bytes} bytes of utf-8, more than the {max} a twin string may have"
    )]
    StringTooLong {
        path: String,
        bytes: usize,
        max: usize,
    },

    #[error("`{path}` is nested deeper than the maximum twin depth of {max}")]
    TooDeep { path: String, max: usize },

    #[error(
        "integer at `{path}` is outside the twin integer range -4503599627370496..=4503599627370495"
    )]
    IntegerOutOfRange { path: String },

    #[error("array at `{path}` contains a null, and twins allow no null inside arrays")]
    NullInArray { path: String },

    #[error("{section} would grow to {bytes} bytes, above their limit of {max} bytes")]
    SectionTooLarge {
        section: TwinSectionKind,
        bytes: usize,
        max: usize,
    },
}

/// Which key rule a key breaks ("All keys in JSON objects are UTF-8 encoded, case-sensitive, and
/// up-to 1 KB in length. Allowed characters exclude UNICODE control characters (segments C0 and C1),
/// and `.`, `$`, and SP.").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeyReason {
    #[error("the key is {bytes} bytes of utf-8, more than the {max} allowed")]
    TooLong { bytes: usize, max: usize },

    #[error("`$` is reserved for the hub's own fields such as `$metadata` and `$version`")]
    DollarSign,

    #[error("`.` is not allowed in keys")]
    Dot,

    #[error("spaces are not allowed in keys")]
    Space,

    #[error("control character U+{code_point:04X} is not allowed in keys")]
    ControlCharacter { code_point: u32 },
}
