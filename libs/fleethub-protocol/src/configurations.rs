//! JSON shapes of automatic device management: `PUT/GET/DELETE /configurations/{id}`, `GET /configurations`,
//! `POST /configurations/testQueries`, and the `configurations` map of a twin.
//!
//! Sources: PROTOCOL.md §3.2-3.4 and the msrest models of `azure-iot-hub` 2.7.0 (`configuration_py3.py`,
//! `configuration_content_py3.py`, `configuration_metrics_py3.py`, `configuration_queries_test_input_py3.py`,
//! `configuration_queries_test_response_py3.py`); the C# service SDK's `Configuration` (`schemaVersion` "1.0",
//! `contentType` "assignment") and `ConfigurationStatus`; the Java SDK's `ConfigurationInfo` and its twin
//! tests (`"configurations":{"p1":{"status":"targeted"},"p2":{"status":"applied"}}`); and the system metrics
//! Azure answers (`"systemMetrics": {"results": {"targetedCount": 0, "appliedCount": 0}, "queries":
//! {"targetedCount": "...", "appliedCount": "select deviceId from devices where
//! configurations.[[firmware-update]].status = 'Applied'"}}`, from the remote monitoring tutorial).
//!
//! Requests are read leniently ([`ConfigurationRequest`]): the read-only fields SDKs send back (`etag`,
//! `createdTimeUtc` as C#'s `0001-01-01T00:00:00` without an offset, `systemMetrics`, `contentType`) are
//! ignored rather than parsed. Responses ([`Configuration`]) carry every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::ids::ETag;
use crate::rest::azure_time;

/// `systemMetrics.results` key: the twins the target condition selects.
pub const TARGETED_COUNT: &str = "targetedCount";
/// `systemMetrics.results` key: the twins this configuration is applied to.
pub const APPLIED_COUNT: &str = "appliedCount";

/// A configuration as the hub answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    pub id: String,
    pub schema_version: String,
    pub labels: BTreeMap<String, String>,
    pub content: ConfigurationContent,
    pub target_condition: String,
    #[serde(with = "azure_time")]
    pub created_time_utc: OffsetDateTime,
    #[serde(with = "azure_time")]
    pub last_updated_time_utc: OffsetDateTime,
    pub priority: i64,
    pub system_metrics: ConfigurationMetrics,
    pub metrics: ConfigurationMetrics,
    pub etag: ETag,
}

impl Configuration {
    /// The writable part, for an update: everything a `PUT` with `If-Match` takes (the content may stay,
    /// it cannot change).
    pub fn to_request(&self) -> ConfigurationRequest {
        ConfigurationRequest {
            id: Some(self.id.clone()),
            schema_version: Some(self.schema_version.clone()),
            labels: Some(self.labels.clone()),
            content: Some(self.content.clone()),
            target_condition: Some(self.target_condition.clone()),
            priority: Some(self.priority),
            metrics: Some(MetricQueries {
                queries: Some(self.metrics.queries.clone()),
            }),
        }
    }
}

/// `content`: what a configuration writes. `deviceContent` for device configurations, `moduleContent` for
/// module configurations, `modulesContent` for IoT Edge deployments. Keys are twin paths
/// (`properties.desired.x`), values the JSON to put there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_content: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_content: Option<Map<String, Value>>,
}

/// `metrics` and `systemMetrics`: named queries and the row count each last returned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationMetrics {
    #[serde(default)]
    pub results: BTreeMap<String, u64>,
    #[serde(default)]
    pub queries: BTreeMap<String, String>,
}

/// The body of `PUT /configurations/{id}`, read leniently: only what a caller may set. `null` and absent
/// are the same. Written (by the service SDK) with the unset fields left out, as the Python SDK writes its
/// `Configuration` model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ConfigurationContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricQueries>,
}

/// The writable half of `metrics`: `{"queries": {...}}` (`results` is read-only and ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricQueries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<BTreeMap<String, String>>,
}

/// The body of `POST /configurations/testQueries`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationQueriesTestInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric_queries: Option<BTreeMap<String, String>>,
}

/// The answer of `POST /configurations/testQueries`: an empty `targetConditionError` when the condition is
/// valid, and an entry in `customMetricQueryErrors` for each query that is not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationQueriesTestResponse {
    pub target_condition_error: String,
    pub custom_metric_query_errors: BTreeMap<String, String>,
}

/// Where a configuration stands on one twin: `configurations.{id}.status`. Lowercase on the wire, as the
/// Java SDK's `ConfigurationStatus` (`@SerializedName("targeted")`) reads it; the C# SDK reads any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigurationStatus {
    /// The twin matches the target condition, but a configuration of higher priority is applied.
    Targeted,
    /// The twin matches and this configuration's content was written to it.
    Applied,
}

impl ConfigurationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigurationStatus::Targeted => "targeted",
            ConfigurationStatus::Applied => "applied",
        }
    }
}

/// One entry of a twin's `configurations` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinConfigurationInfo {
    pub status: ConfigurationStatus,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn a_configuration_serialises_with_azure_field_names() {
        let configuration = Configuration {
            id: "firmware-update".into(),
            schema_version: "1.0".into(),
            labels: BTreeMap::from([("Version".into(), "1.0.1".into())]),
            content: ConfigurationContent {
                device_content: Some(
                    json!({"properties.desired.firmware": {"fwVersion": "1.0.1"}})
                        .as_object()
                        .cloned()
                        .expect("an object"),
                ),
                ..ConfigurationContent::default()
            },
            target_condition: "tags.environment='test'".into(),
            created_time_utc: datetime!(2026-05-01 10:00 UTC),
            last_updated_time_utc: datetime!(2026-05-01 10:00 UTC),
            priority: 10,
            system_metrics: ConfigurationMetrics {
                results: BTreeMap::from([(TARGETED_COUNT.into(), 2), (APPLIED_COUNT.into(), 1)]),
                queries: BTreeMap::new(),
            },
            metrics: ConfigurationMetrics::default(),
            etag: ETag::new("MQ=="),
        };
        let json = serde_json::to_value(&configuration).expect("serialises");
        assert_eq!(
            json,
            json!({
                "id": "firmware-update",
                "schemaVersion": "1.0",
                "labels": {"Version": "1.0.1"},
                "content": {"deviceContent": {"properties.desired.firmware": {"fwVersion": "1.0.1"}}},
                "targetCondition": "tags.environment='test'",
                "createdTimeUtc": "2026-05-01T10:00:00.0000000Z",
                "lastUpdatedTimeUtc": "2026-05-01T10:00:00.0000000Z",
                "priority": 10,
                "systemMetrics": {"results": {"appliedCount": 1, "targetedCount": 2}, "queries": {}},
                "metrics": {"results": {}, "queries": {}},
                "etag": "MQ=="
            })
        );
        let back: Configuration = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, configuration);
    }

    #[test]
    fn requests_ignore_the_read_only_fields_sdks_send_back() {
        // What the C# SDK's `SetAsync` sends: `createdTimeUtc` without an offset, `contentType`, `systemMetrics`.
        let request: ConfigurationRequest = serde_json::from_value(json!({
            "id": "cfg1",
            "schemaVersion": "1.0",
            "labels": null,
            "content": {"deviceContent": {"properties.desired.a": 1}},
            "contentType": "assignment",
            "targetCondition": null,
            "createdTimeUtc": "0001-01-01T00:00:00",
            "lastUpdatedTimeUtc": "0001-01-01T00:00:00",
            "priority": 3,
            "systemMetrics": {"results": {"targetedCount": 1}, "queries": {"targetedCount": "x"}},
            "metrics": {"results": {"m": 1}, "queries": {"m": "SELECT deviceId FROM devices"}},
            "etag": "MQ=="
        }))
        .expect("lenient");
        assert_eq!(request.id.as_deref(), Some("cfg1"));
        assert_eq!(request.labels, None);
        assert_eq!(request.target_condition, None);
        assert_eq!(request.priority, Some(3));
        assert_eq!(
            request.metrics.and_then(|metrics| metrics.queries),
            Some(BTreeMap::from([(
                "m".into(),
                "SELECT deviceId FROM devices".into()
            )]))
        );
        // The Python SDK drops None fields: an empty body is a valid request.
        let empty: ConfigurationRequest = serde_json::from_value(json!({})).expect("empty");
        assert_eq!(empty, ConfigurationRequest::default());
    }

    #[test]
    fn twin_statuses_are_lowercase() {
        let info = TwinConfigurationInfo {
            status: ConfigurationStatus::Applied,
        };
        assert_eq!(
            serde_json::to_value(info).expect("serialises"),
            json!({"status": "applied"})
        );
        assert_eq!(ConfigurationStatus::Targeted.as_str(), "targeted");
    }

    #[test]
    fn test_queries_shapes_round_trip() {
        let input: ConfigurationQueriesTestInput = serde_json::from_value(json!({
            "targetCondition": "tags.a = 1",
            "customMetricQueries": {"m": "SELECT deviceId FROM devices"}
        }))
        .expect("input");
        assert_eq!(input.target_condition.as_deref(), Some("tags.a = 1"));
        let response = ConfigurationQueriesTestResponse {
            target_condition_error: String::new(),
            custom_metric_query_errors: BTreeMap::from([("m".into(), "bad".into())]),
        };
        assert_eq!(
            serde_json::to_value(response).expect("serialises"),
            json!({"targetConditionError": "", "customMetricQueryErrors": {"m": "bad"}})
        );
    }
}
