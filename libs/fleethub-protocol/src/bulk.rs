//! The bulk registry API (`POST /devices`): Azure's `ExportImportDevice` items with an `importMode`, and the
//! `BulkRegistryOperationResult` answer (PROTOCOL.md §3.4; `azure-iot-hub` 2.7.0
//! `protocol/models/export_import_device_py3.py`, `bulk_registry_operation_result_py3.py`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::ModuleId;
use crate::rest::{AuthenticationMechanism, DeviceCapabilities, DeviceStatus};

/// What to do with one item of a bulk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImportMode {
    /// Create; an existing id is an error.
    Create,
    /// Create, or overwrite an existing identity whatever its etag.
    Update,
    /// Create, or overwrite an existing identity only if `eTag` matches.
    UpdateIfMatchETag,
    /// Delete; a missing id is an error.
    Delete,
    /// Delete only if `eTag` matches.
    DeleteIfMatchETag,
    /// Patch the existing twin (tags, desired properties) whatever its etag.
    UpdateTwin,
    /// Patch the existing twin only if `twinETag` matches.
    UpdateTwinIfMatchETag,
}

impl ImportMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::UpdateIfMatchETag => "updateIfMatchETag",
            Self::Delete => "delete",
            Self::DeleteIfMatchETag => "deleteIfMatchETag",
            Self::UpdateTwin => "updateTwin",
            Self::UpdateTwinIfMatchETag => "updateTwinIfMatchETag",
        }
    }
}

/// The twin properties an import item may carry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImportTwinProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
}

/// One item of `POST /devices`. The id is kept as text: an invalid one is a per-item error, not a refusal of
/// the whole request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImportDevice {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    #[serde(rename = "eTag", default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    pub import_mode: ImportMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    #[serde(rename = "twinETag", default, skip_serializing_if = "Option::is_none")]
    pub twin_e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<ImportTwinProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
}

impl ExportImportDevice {
    /// A minimal item: id and mode.
    pub fn new(id: impl Into<String>, import_mode: ImportMode) -> Self {
        Self {
            id: id.into(),
            module_id: None,
            e_tag: None,
            import_mode,
            status: None,
            status_reason: None,
            authentication: None,
            twin_e_tag: None,
            tags: None,
            properties: None,
            capabilities: None,
            device_scope: None,
            parent_scopes: None,
        }
    }
}

/// One failed item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationError {
    pub device_id: String,
    /// The error name, e.g. `DeviceAlreadyExists`.
    pub error_code: String,
    pub error_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<ModuleId>,
    /// The import mode of the item.
    pub operation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationWarning {
    pub device_id: String,
    pub warning_code: String,
    pub warning_status: String,
}

/// The answer of `POST /devices`: 200 when every item succeeded, 400 otherwise, with one error per failed item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkRegistryOperationResult {
    pub is_successful: bool,
    pub errors: Vec<DeviceRegistryOperationError>,
    pub warnings: Vec<DeviceRegistryOperationWarning>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_read_the_sdk_spelling() {
        let item: ExportImportDevice = serde_json::from_value(json!({
            "id": "dev1", "importMode": "updateTwinIfMatchETag", "twinETag": "AAAAAAAAAAE=",
            "tags": {"site": "a"}, "properties": {"desired": {"fw": "2.0"}}
        }))
        .unwrap();
        assert_eq!(item.import_mode, ImportMode::UpdateTwinIfMatchETag);
        assert_eq!(item.twin_e_tag.as_deref(), Some("AAAAAAAAAAE="));
        assert_eq!(
            item.properties.unwrap().desired.unwrap()["fw"],
            json!("2.0")
        );
        let back = serde_json::to_value(ExportImportDevice::new("d", ImportMode::Create)).unwrap();
        assert_eq!(back, json!({"id": "d", "importMode": "create"}));
    }
}
