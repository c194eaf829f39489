//! JSON shapes of message routing's configuration: routes, the fallback route, enrichments and endpoints,
//! in the shape of Azure's `properties.routing` of an IoT hub resource, with fleethub's own endpoint types.
//!
//! Sources: the Azure Resource Manager models of `@azure/arm-iothub` and `azure-mgmt-iothub`
//! (`RoutingProperties`, `RouteProperties`, `FallbackRouteProperties`, `EnrichmentProperties`,
//! `RoutingSource`): "The name can only include alphanumeric characters, periods, underscores, hyphens,
//! has a maximum length of 64 characters, and must be unique"; "A maximum of 100 routing rules are allowed
//! for paid hubs"; "A maximum of 10 custom endpoints are allowed across all endpoint types for paid hubs";
//! a condition that "is not provided [...] will evaluate to true by default"; the fallback route's
//! "When this property is not set, the messages which do not meet any of the conditions specified in the
//! 'routes' section get routed to the built-in eventhub endpoint". "You can add up to 10 enrichments per
//! IoT Hub" (`iot-hub-message-enrichments-overview.md`).
//!
//! What the shapes mean (the hub implements it):
//! - A message of a source goes to every endpoint of every enabled route of that source whose condition
//!   matches, each endpoint once. A device message (`DeviceMessages`) that no route takes goes to the
//!   fallback route's endpoints when the fallback route is enabled and its condition matches; without a
//!   `fallbackRoute`, to `events`. Events of the other sources are routed only by their routes.
//! - `events` ([`BUILT_IN_ENDPOINT`]) is the built-in endpoint: the hub's event log.
//! - Enrichments are application properties stamped on the messages sent to their endpoints.
//!
//! fleethub's differences from Azure: the endpoint types are `webhooks` and `fileSinks` (Azure's
//! `eventHubs`, `serviceBusQueues`, `serviceBusTopics`, `storageContainers` and `cosmosDBSqlContainers`
//! are refused unless empty); a route may name several endpoints (Azure: "Currently only 1 endpoint is
//! allowed"); `isEnabled` defaults to true.
//!
//! [`RoutingProperties::validate`] checks the structure. Conditions and enrichment keys and values are
//! checked by the hub with `fleethub_query` (`RouteCondition::parse`, `Enrichment::parse`), which this
//! crate cannot depend on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::sources;

/// The name of the built-in endpoint, the event log.
pub const BUILT_IN_ENDPOINT: &str = "events";
/// Azure's name for the fallback route.
pub const FALLBACK_ROUTE_NAME: &str = "$fallback";
pub const MAX_ROUTES: usize = 100;
/// Across all endpoint types; the built-in endpoint does not count.
pub const MAX_CUSTOM_ENDPOINTS: usize = 10;
pub const MAX_ENRICHMENTS: usize = 10;
/// Route and endpoint names.
pub const MAX_NAME_LENGTH: usize = 64;
/// Names a custom endpoint cannot take: the built-in endpoints of Azure.
const RESERVED_ENDPOINT_NAMES: [&str; 2] = [BUILT_IN_ENDPOINT, "fileNotifications"];

/// `properties.routing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingProperties {
    #[serde(default)]
    pub endpoints: RoutingEndpoints,
    #[serde(default)]
    pub routes: Vec<RouteProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_route: Option<FallbackRouteProperties>,
    #[serde(default)]
    pub enrichments: Vec<EnrichmentProperties>,
}

/// Where messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RoutingSource {
    DeviceMessages,
    TwinChangeEvents,
    DeviceLifecycleEvents,
    DeviceConnectionStateEvents,
}

impl RoutingSource {
    /// The `iothub-message-source` system property of the messages of this source.
    pub fn message_source(self) -> &'static str {
        match self {
            RoutingSource::DeviceMessages => sources::TELEMETRY,
            RoutingSource::TwinChangeEvents => sources::TWIN_CHANGE_EVENTS,
            RoutingSource::DeviceLifecycleEvents => sources::DEVICE_LIFECYCLE_EVENTS,
            RoutingSource::DeviceConnectionStateEvents => sources::DEVICE_CONNECTION_STATE_EVENTS,
        }
    }

    /// The source of a message with this `iothub-message-source`.
    pub fn from_message_source(message_source: &str) -> Option<RoutingSource> {
        [
            RoutingSource::DeviceMessages,
            RoutingSource::TwinChangeEvents,
            RoutingSource::DeviceLifecycleEvents,
            RoutingSource::DeviceConnectionStateEvents,
        ]
        .into_iter()
        .find(|source| source.message_source() == message_source)
    }
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteProperties {
    pub name: String,
    pub source: RoutingSource,
    /// A route condition; `None` is `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    pub endpoint_names: Vec<String>,
    #[serde(default = "enabled")]
    pub is_enabled: bool,
}

/// The route for device messages that no route takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRouteProperties {
    /// Azure answers [`FALLBACK_ROUTE_NAME`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only `DeviceMessages`.
    #[serde(default = "device_messages")]
    pub source: RoutingSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    pub endpoint_names: Vec<String>,
    #[serde(default = "enabled")]
    pub is_enabled: bool,
}

/// An application property stamped on the messages sent to some endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrichmentProperties {
    pub key: String,
    /// A static string, `$iothubname` or a twin path (`$twin.tags.x`).
    pub value: String,
    pub endpoint_names: Vec<String>,
}

/// The custom endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingEndpoints {
    #[serde(default)]
    pub webhooks: Vec<WebhookEndpoint>,
    #[serde(default)]
    pub file_sinks: Vec<FileSinkEndpoint>,
    /// Other endpoint types (Azure's `eventHubs`, ...): kept only to be refused by
    /// [`RoutingProperties::validate`] unless empty.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// Messages are POSTed to `url` (fleethub's endpoint type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// Sent with every request (an `Authorization`, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Messages are appended to a file (fleethub's endpoint type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSinkEndpoint {
    pub name: String,
    /// Relative, `/`-separated, without `.` or `..`: the hub resolves it inside a directory of its own,
    /// so that a REST caller cannot write elsewhere.
    pub path: String,
}

fn enabled() -> bool {
    true
}

fn device_messages() -> RoutingSource {
    RoutingSource::DeviceMessages
}

/// Why a routing configuration is refused; the message is for a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingConfigError {
    #[error("{kind} name {name:?} {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("two {kind}s are named {name:?}; names must be unique")]
    DuplicateName { kind: &'static str, name: String },
    #[error("endpoint name {name:?} is reserved for a built-in endpoint")]
    ReservedEndpointName { name: String },
    #[error("{owner} names no endpoint")]
    NoEndpoint { owner: String },
    #[error(
        "{owner} names endpoint {endpoint:?}, which is neither {BUILT_IN_ENDPOINT:?} nor a custom endpoint"
    )]
    UnknownEndpoint { owner: String, endpoint: String },
    #[error("{owner} names endpoint {endpoint:?} twice")]
    DuplicateEndpoint { owner: String, endpoint: String },
    #[error("{count} {what} configured, more than the maximum of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("the fallback route's source must be DeviceMessages, not {found:?}")]
    FallbackSource { found: RoutingSource },
    #[error("webhook {name:?}: url {reason}")]
    InvalidUrl { name: String, reason: String },
    #[error("webhook {name:?}: header {header:?} {reason}")]
    InvalidHeader {
        name: String,
        header: String,
        reason: String,
    },
    #[error("file sink {name:?}: path {path:?} {reason}")]
    InvalidPath {
        name: String,
        path: String,
        reason: String,
    },
    #[error("endpoint type {kind:?} is not supported by fleethub; use webhooks or fileSinks")]
    UnsupportedEndpointType { kind: String },
    #[error("enrichment key {key:?} is given twice for endpoint {endpoint:?}")]
    DuplicateEnrichment { key: String, endpoint: String },
}

impl RoutingProperties {
    /// Checks names, limits, endpoint references and the endpoints' settings. Conditions and enrichment
    /// keys and values are the hub's to check (module documentation).
    pub fn validate(&self) -> Result<(), RoutingConfigError> {
        if let Some((kind, _)) = self
            .endpoints
            .other
            .iter()
            .find(|(_, value)| !matches!(value, Value::Array(items) if items.is_empty()))
        {
            return Err(RoutingConfigError::UnsupportedEndpointType { kind: kind.clone() });
        }
        let endpoint_count = self.endpoints.webhooks.len() + self.endpoints.file_sinks.len();
        check_count("custom endpoints", endpoint_count, MAX_CUSTOM_ENDPOINTS)?;
        check_count("routes", self.routes.len(), MAX_ROUTES)?;
        check_count("enrichments", self.enrichments.len(), MAX_ENRICHMENTS)?;

        let mut endpoint_names = BTreeSet::new();
        let custom_names = self
            .endpoints
            .webhooks
            .iter()
            .map(|webhook| &webhook.name)
            .chain(self.endpoints.file_sinks.iter().map(|sink| &sink.name));
        for name in custom_names {
            check_name("endpoint", name)?;
            if RESERVED_ENDPOINT_NAMES
                .iter()
                .any(|reserved| reserved.eq_ignore_ascii_case(name))
            {
                return Err(RoutingConfigError::ReservedEndpointName { name: name.clone() });
            }
            if !endpoint_names.insert(name.to_ascii_lowercase()) {
                return Err(RoutingConfigError::DuplicateName {
                    kind: "endpoint",
                    name: name.clone(),
                });
            }
        }
        for webhook in &self.endpoints.webhooks {
            check_webhook(webhook)?;
        }
        for sink in &self.endpoints.file_sinks {
            check_sink_path(sink)?;
        }
        let known = |endpoint: &str| {
            endpoint == BUILT_IN_ENDPOINT || endpoint_names.contains(&endpoint.to_ascii_lowercase())
        };
        let check_endpoints = |owner: String, names: &[String]| {
            if names.is_empty() {
                return Err(RoutingConfigError::NoEndpoint { owner });
            }
            for (index, endpoint) in names.iter().enumerate() {
                if !known(endpoint) {
                    return Err(RoutingConfigError::UnknownEndpoint {
                        owner,
                        endpoint: endpoint.clone(),
                    });
                }
                if names[..index].contains(endpoint) {
                    return Err(RoutingConfigError::DuplicateEndpoint {
                        owner,
                        endpoint: endpoint.clone(),
                    });
                }
            }
            Ok(())
        };

        let mut route_names = BTreeSet::new();
        for route in &self.routes {
            check_name("route", &route.name)?;
            if !route_names.insert(route.name.to_ascii_lowercase()) {
                return Err(RoutingConfigError::DuplicateName {
                    kind: "route",
                    name: route.name.clone(),
                });
            }
            check_endpoints(format!("route {:?}", route.name), &route.endpoint_names)?;
        }
        if let Some(fallback) = &self.fallback_route {
            if fallback.source != RoutingSource::DeviceMessages {
                return Err(RoutingConfigError::FallbackSource {
                    found: fallback.source,
                });
            }
            check_endpoints("the fallback route".to_owned(), &fallback.endpoint_names)?;
        }
        let mut stamped = BTreeSet::new();
        for enrichment in &self.enrichments {
            check_endpoints(
                format!("enrichment {:?}", enrichment.key),
                &enrichment.endpoint_names,
            )?;
            for endpoint in &enrichment.endpoint_names {
                if !stamped.insert((enrichment.key.to_ascii_lowercase(), endpoint.as_str())) {
                    return Err(RoutingConfigError::DuplicateEnrichment {
                        key: enrichment.key.clone(),
                        endpoint: endpoint.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn check_count(what: &'static str, count: usize, limit: usize) -> Result<(), RoutingConfigError> {
    if count > limit {
        return Err(RoutingConfigError::TooMany { what, count, limit });
    }
    Ok(())
}

/// "The name can only include alphanumeric characters, periods, underscores, hyphens, has a maximum length
/// of 64 characters".
fn check_name(kind: &'static str, name: &str) -> Result<(), RoutingConfigError> {
    let invalid = |reason: String| RoutingConfigError::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("is empty".to_owned()));
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(invalid(format!(
            "is longer than {MAX_NAME_LENGTH} characters"
        )));
    }
    if let Some(character) = name
        .chars()
        .find(|character| !(character.is_ascii_alphanumeric() || "._-".contains(*character)))
    {
        return Err(invalid(format!(
            "holds {character:?}; names can only include alphanumeric characters, '.', '_' and '-'"
        )));
    }
    Ok(())
}

fn check_webhook(webhook: &WebhookEndpoint) -> Result<(), RoutingConfigError> {
    let invalid_url = |reason: &str| RoutingConfigError::InvalidUrl {
        name: webhook.name.clone(),
        reason: reason.to_owned(),
    };
    let url = webhook.url.as_str();
    let rest = ["http://", "https://"]
        .into_iter()
        .find_map(|scheme| {
            url.get(..scheme.len())
                .filter(|prefix| prefix.eq_ignore_ascii_case(scheme))
                .map(|_| &url[scheme.len()..])
        })
        .ok_or_else(|| invalid_url("must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid_url("has no host"));
    }
    if url
        .chars()
        .any(|character| character.is_whitespace() || character.is_control())
    {
        return Err(invalid_url("holds a space or a control character"));
    }
    for (header, value) in &webhook.headers {
        let invalid_header = |reason: &str| RoutingConfigError::InvalidHeader {
            name: webhook.name.clone(),
            header: header.clone(),
            reason: reason.to_owned(),
        };
        // RFC 9110 token characters.
        let token = |character: char| {
            character.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(character)
        };
        if header.is_empty() || !header.chars().all(token) {
            return Err(invalid_header("is not a valid header name"));
        }
        if value
            .chars()
            .any(|character| character.is_control() && character != '\t')
        {
            return Err(invalid_header("has a control character in its value"));
        }
    }
    Ok(())
}

fn check_sink_path(sink: &FileSinkEndpoint) -> Result<(), RoutingConfigError> {
    // A file sink's directory is named after it (`DATA_DIR/routes/<name>/`).
    if sink.name == "." || sink.name == ".." {
        return Err(RoutingConfigError::InvalidName {
            kind: "endpoint",
            name: sink.name.clone(),
            reason: "cannot name a file sink: its directory is named after it".to_owned(),
        });
    }
    let invalid = |reason: &str| RoutingConfigError::InvalidPath {
        name: sink.name.clone(),
        path: sink.path.clone(),
        reason: reason.to_owned(),
    };
    let path = sink.path.as_str();
    if path.is_empty() {
        return Err(invalid("is empty"));
    }
    if path.starts_with('/') || path.contains('\\') || path.contains(':') {
        return Err(invalid(
            "must be relative, with '/' between names (it is resolved inside the hub's sink directory)",
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(invalid("holds a control character"));
    }
    if path
        .split('/')
        .any(|name| name.is_empty() || name == "." || name == "..")
    {
        return Err(invalid("has an empty, '.' or '..' name"));
    }
    Ok(())
}

// ---- the REST shapes around the configuration (fleethub's `/routing` API) ----

/// `POST /routing/routes/$testnew`: evaluates one route's condition on a sample message, as Azure's
/// `TestRouteInput` (`az iot hub message-route test`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestRouteInput {
    #[serde(default)]
    pub message: RoutingMessage,
    pub route: RouteProperties,
    /// The twin `$twin` refers to: `{"tags": {...}, "properties": {"desired": {...}, "reported": {...}}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<Value>,
}

/// `POST /routing/routes/$testall`: which routes of a source a sample message takes, as Azure's
/// `TestAllRoutesInput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestAllRoutesInput {
    /// `DeviceMessages` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_source: Option<RoutingSource>,
    #[serde(default)]
    pub message: RoutingMessage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<Value>,
}

/// A sample message (Azure's `RoutingMessage`). System properties are named by their routing keyword
/// (`contentType`, `contentEncoding`, `messageId`, ...) or their Event Hubs name (`content-type`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingMessage {
    #[serde(default)]
    pub body: String,
    /// Application properties; `null` for a property without value.
    #[serde(default)]
    pub app_properties: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub system_properties: BTreeMap<String, String>,
}

/// What a condition evaluated to (Azure's `TestResultStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestResultStatus {
    True,
    False,
    /// Not a Boolean (undefined, null, a string, ...): the message does not take the route.
    Undefined,
}

/// The answer of `$testnew` (Azure's `TestRouteResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestRouteResult {
    pub result: TestResultStatus,
    #[serde(default)]
    pub details: TestRouteResultDetails,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestRouteResultDetails {
    /// Why the condition does not compile; `result` is then `undefined`.
    #[serde(default)]
    pub compilation_errors: Vec<RouteCompilationError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteCompilationError {
    pub message: String,
    /// Always `error`.
    pub severity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<RouteErrorRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteErrorRange {
    pub start: RouteErrorPosition,
    pub end: RouteErrorPosition,
}

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteErrorPosition {
    pub line: usize,
    pub column: usize,
}

/// The answer of `$testall` (Azure's `TestAllRoutesResult`): the enabled routes the message takes, in
/// configuration order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestAllRoutesResult {
    #[serde(default)]
    pub routes: Vec<MatchedRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchedRoute {
    pub properties: RouteProperties,
}

/// A custom endpoint's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointType {
    Webhook,
    FileSink,
}

/// A message an endpoint gave up on (`GET /routing/deadLetters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Increasing, never reused.
    pub id: u64,
    pub endpoint_name: String,
    pub endpoint_type: EndpointType,
    #[serde(with = "time::serde::rfc3339")]
    pub dead_lettered_time: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub first_attempt_time: time::OffsetDateTime,
    pub attempts: u32,
    pub last_error: String,
    /// The message as the endpoint would have received it (enrichments included).
    pub message: crate::events::EventMessage,
}

/// One page of dead letters, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `from` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_id: Option<u64>,
}

/// Azure's `EndpointHealthStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealthStatus {
    /// Nothing sent yet.
    Unknown,
    /// The last attempt succeeded.
    Healthy,
    /// The last attempt failed; the message is being retried.
    Unhealthy,
    /// The last message was dead-lettered; no success since.
    Dead,
}

/// One custom endpoint's health (Azure's `EndpointHealthData`, plus fleethub's counters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealthData {
    pub endpoint_id: String,
    pub endpoint_type: EndpointType,
    pub health_status: EndpointHealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_error: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_known_error_time: Option<time::OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_successful_send_attempt_time: Option<time::OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_send_attempt_time: Option<time::OffsetDateTime>,
    /// Messages delivered since the hub started.
    pub delivered: u64,
    /// Messages dead-lettered since the hub started.
    pub dead_lettered: u64,
    /// Events in the log after the endpoint's cursor (not all of them are routed to it).
    pub unread_events: u64,
}

/// How often a route's condition matched since the hub started or the route last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatistics {
    pub name: String,
    pub matched: u64,
    /// Evaluations that gave no Boolean (a missing property, a non-JSON body): no match, counted here.
    pub not_boolean: u64,
}

/// `GET /routing/health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingHealth {
    pub endpoints: Vec<EndpointHealthData>,
    pub routes: Vec<RouteStatistics>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn azure_shaped() -> Value {
        json!({
            "endpoints": {
                "webhooks": [{"name": "alerts", "url": "https://example.com/hook", "headers": {"Authorization": "Bearer x"}}],
                "fileSinks": [{"name": "archive", "path": "archive/telemetry.jsonl"}],
                "eventHubs": [],
                "serviceBusQueues": []
            },
            "routes": [
                {"name": "hot", "source": "DeviceMessages", "condition": "processingPath = 'hot'", "endpointNames": ["alerts"], "isEnabled": true},
                {"name": "twin-changes", "source": "TwinChangeEvents", "endpointNames": ["archive", "events"], "isEnabled": false},
                {"name": "all", "source": "DeviceMessages", "condition": "true", "endpointNames": ["events"]}
            ],
            "fallbackRoute": {"name": "$fallback", "source": "DeviceMessages", "condition": "true", "endpointNames": ["events"], "isEnabled": true},
            "enrichments": [{"key": "region", "value": "$twin.tags.region", "endpointNames": ["alerts", "events"]}]
        })
    }

    #[test]
    fn an_azure_shaped_configuration_reads_validates_and_writes_back() {
        let routing: RoutingProperties =
            serde_json::from_value(azure_shaped()).expect("Azure's shape");
        routing.validate().expect("valid");
        assert_eq!(routing.routes.len(), 3);
        assert_eq!(
            routing.routes[0].condition.as_deref(),
            Some("processingPath = 'hot'")
        );
        assert_eq!(routing.routes[1].condition, None);
        assert!(!routing.routes[1].is_enabled);
        assert!(routing.routes[2].is_enabled, "isEnabled defaults to true");
        assert_eq!(
            routing.endpoints.webhooks[0]
                .headers
                .get("Authorization")
                .map(String::as_str),
            Some("Bearer x")
        );
        let fallback = routing.fallback_route.as_ref().expect("fallback");
        assert_eq!(fallback.name.as_deref(), Some(FALLBACK_ROUTE_NAME));
        assert_eq!(routing.enrichments[0].value, "$twin.tags.region");
        let written = serde_json::to_value(&routing).expect("serialises");
        assert_eq!(written["routes"][0]["endpointNames"], json!(["alerts"]));
        assert_eq!(
            written["endpoints"]["fileSinks"][0]["path"],
            "archive/telemetry.jsonl"
        );
        assert_eq!(written["endpoints"]["eventHubs"], json!([]));
        let reread: RoutingProperties = serde_json::from_value(written).expect("reads back");
        assert_eq!(reread, routing);
    }

    #[test]
    fn an_empty_configuration_is_valid() {
        let routing: RoutingProperties = serde_json::from_value(json!({})).expect("reads");
        assert_eq!(routing, RoutingProperties::default());
        routing.validate().expect("valid");
    }

    #[test]
    fn sources_map_to_message_sources_and_unknown_sources_are_refused() {
        for source in [
            RoutingSource::DeviceMessages,
            RoutingSource::TwinChangeEvents,
            RoutingSource::DeviceLifecycleEvents,
            RoutingSource::DeviceConnectionStateEvents,
        ] {
            assert_eq!(
                RoutingSource::from_message_source(source.message_source()),
                Some(source)
            );
        }
        assert_eq!(RoutingSource::DeviceMessages.message_source(), "Telemetry");
        assert_eq!(
            RoutingSource::TwinChangeEvents.message_source(),
            "twinChangeEvents"
        );
        assert_eq!(RoutingSource::from_message_source("other"), None);
        let error = serde_json::from_value::<RouteProperties>(json!({
            "name": "r", "source": "DigitalTwinChangeEvents", "endpointNames": ["events"]
        }))
        .expect_err("unsupported source");
        assert!(
            error
                .to_string()
                .contains("unknown variant `DigitalTwinChangeEvents`")
        );
    }

    #[test]
    fn broken_configurations_are_refused_with_a_reason() {
        type Edit = fn(&mut Value);
        let table: Vec<(Edit, &str)> = vec![
            (
                |c| c["routes"][0]["name"] = json!("bad name"),
                "route name \"bad name\" holds ' '; names can only include alphanumeric characters, '.', '_' and '-'",
            ),
            (
                |c| c["routes"][0]["name"] = json!(""),
                "route name \"\" is empty",
            ),
            (
                |c| c["routes"][0]["name"] = json!("x".repeat(65)),
                "is longer than 64 characters",
            ),
            (
                |c| c["routes"][1]["name"] = json!("HOT"),
                "two routes are named \"HOT\"; names must be unique",
            ),
            (
                |c| c["routes"][0]["endpointNames"] = json!([]),
                "route \"hot\" names no endpoint",
            ),
            (
                |c| c["routes"][0]["endpointNames"] = json!(["nowhere"]),
                "route \"hot\" names endpoint \"nowhere\", which is neither \"events\" nor a custom endpoint",
            ),
            (
                |c| c["routes"][0]["endpointNames"] = json!(["alerts", "alerts"]),
                "route \"hot\" names endpoint \"alerts\" twice",
            ),
            (
                |c| c["endpoints"]["webhooks"][0]["name"] = json!("events"),
                "endpoint name \"events\" is reserved for a built-in endpoint",
            ),
            (
                |c| c["endpoints"]["fileSinks"][0]["name"] = json!("Alerts"),
                "two endpoints are named \"Alerts\"; names must be unique",
            ),
            (
                |c| c["endpoints"]["webhooks"][0]["url"] = json!("ftp://example.com"),
                "webhook \"alerts\": url must start with http:// or https://",
            ),
            (
                |c| c["endpoints"]["webhooks"][0]["url"] = json!("https:///path"),
                "webhook \"alerts\": url has no host",
            ),
            (
                |c| c["endpoints"]["webhooks"][0]["url"] = json!("https://a b"),
                "webhook \"alerts\": url holds a space or a control character",
            ),
            (
                |c| c["endpoints"]["webhooks"][0]["headers"] = json!({"Bad Header": "x"}),
                "webhook \"alerts\": header \"Bad Header\" is not a valid header name",
            ),
            (
                |c| c["endpoints"]["webhooks"][0]["headers"] = json!({"X-A": "a\r\nb"}),
                "webhook \"alerts\": header \"X-A\" has a control character in its value",
            ),
            (
                |c| c["endpoints"]["fileSinks"][0]["path"] = json!("/etc/passwd"),
                "must be relative",
            ),
            (
                |c| c["endpoints"]["fileSinks"][0]["path"] = json!("a/../../b"),
                "has an empty, '.' or '..' name",
            ),
            (
                |c| c["endpoints"]["fileSinks"][0]["path"] = json!("C:\\x"),
                "must be relative",
            ),
            (
                |c| c["endpoints"]["fileSinks"][0]["name"] = json!(".."),
                "endpoint name \"..\" cannot name a file sink",
            ),
            (
                |c| c["endpoints"]["fileSinks"][0]["path"] = json!(""),
                "file sink \"archive\": path \"\" is empty",
            ),
            (
                |c| c["endpoints"]["eventHubs"] = json!([{"name": "eh"}]),
                "endpoint type \"eventHubs\" is not supported by fleethub; use webhooks or fileSinks",
            ),
            (
                |c| c["fallbackRoute"]["source"] = json!("TwinChangeEvents"),
                "the fallback route's source must be DeviceMessages, not TwinChangeEvents",
            ),
            (
                |c| c["fallbackRoute"]["endpointNames"] = json!(["gone"]),
                "the fallback route names endpoint \"gone\"",
            ),
            (
                |c| c["enrichments"][0]["endpointNames"] = json!(["gone"]),
                "enrichment \"region\" names endpoint \"gone\"",
            ),
            (
                |c| {
                    let enrichment = c["enrichments"][0].clone();
                    c["enrichments"]
                        .as_array_mut()
                        .expect("array")
                        .push(enrichment);
                },
                "enrichment key \"region\" is given twice for endpoint \"alerts\"",
            ),
            (
                |c| {
                    c["routes"] = json!(vec![
                        json!({"name": "r", "source": "DeviceMessages", "endpointNames": ["events"]});
                        101
                    ])
                },
                "101 routes configured, more than the maximum of 100",
            ),
            (
                |c| {
                    c["enrichments"] = json!((0..11).map(|i| json!({"key": format!("k{i}"), "value": "v", "endpointNames": ["events"]})).collect::<Vec<_>>())
                },
                "11 enrichments configured, more than the maximum of 10",
            ),
            (
                |c| {
                    c["endpoints"]["fileSinks"] = json!(
                        (0..10)
                            .map(|i| json!({"name": format!("s{i}"), "path": "p"}))
                            .collect::<Vec<_>>()
                    )
                },
                "11 custom endpoints configured, more than the maximum of 10",
            ),
        ];
        for (edit, expected) in table {
            let mut configuration = azure_shaped();
            edit(&mut configuration);
            let routing: RoutingProperties =
                serde_json::from_value(configuration).expect("well-formed JSON shape");
            let error = routing.validate().expect_err(expected).to_string();
            assert!(
                error.contains(expected),
                "{error:?} does not contain {expected:?}"
            );
        }
    }
}
