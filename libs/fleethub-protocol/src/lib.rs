//! Wire facts of Azure IoT Hub shared by the fleethub hub, device SDK and service SDK: ids, SAS tokens,
//! connection strings, MQTT topics and property bags, REST JSON shapes and error bodies.
//!
//! This crate is pure: no I/O, no async runtime, no clock (callers pass `now`), no randomness (callers
//! pass random bytes). Every parser here faces untrusted input and returns an error rather than panicking.
//! Facts are taken from the official SDKs' source and Azure's docs; each module names its sources.

pub mod artifacts;
pub mod audit;
pub mod bulk;
pub mod c2d;
pub mod certificates;
pub mod changes;
pub mod configurations;
pub mod connection_string;
pub mod errors;
pub mod events;
pub mod firmware;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod ids;
pub mod jobs;
pub mod percent;
pub mod property_bag;
pub mod rest;
pub mod rollouts;
pub mod routing;
pub mod sas;
pub mod topics;

pub use connection_string::{
    ConnectionString, ConnectionStringError, ConnectionStringKey, DeviceConnectionString,
    ServiceConnectionString,
};
pub use errors::{
    ErrorBody, ErrorCode, ParsedErrorResponse, ReportedErrorCode, parse_error_response,
};
pub use ids::{
    ClientId, DeviceId, ETag, IdError, IdKind, IfMatch, JobId, ModuleId, RolloutId, parse_if_match,
    validate_method_name,
};
pub use property_bag::{PropertyBag, PropertyBagError};
pub use sas::{
    DeviceResource, DeviceResourceError, KeyError, SasParseError, SasToken, TokenResource,
    decode_key, generate_key_from_bytes, generate_sas_token,
};
pub use topics::{
    DeviceTopic, HubTopic, Subscription, TopicError, parse_device_publish,
    parse_device_subscription, parse_hub_publish,
};
