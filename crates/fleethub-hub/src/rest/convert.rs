//! Between stored records and the REST JSON shapes of `fleethub_protocol::rest`.

use fleethub_core::identity::{Authentication, IdentityKey, IdentitySpec};
use fleethub_protocol::ids::ETag;
use fleethub_protocol::rest::{
    AuthenticationMechanism, AuthenticationType, Device, DeviceCapabilities, DeviceStatus, Module,
    NEVER_TIME, SymmetricKey, X509Thumbprint,
};
use fleethub_store::DeviceRecord;
use serde_json::Value;

use super::ApiError;

/// The identity as `GET /devices/{id}` (or the module endpoint) returns it.
pub fn identity_json(record: &DeviceRecord) -> Value {
    let identity = &record.identity;
    let authentication = Some(authentication_mechanism(&identity.authentication));
    let value = match &record.key.module_id {
        None => serde_json::to_value(Device {
            device_id: record.key.device_id.clone(),
            generation_id: Some(identity.generation_id.clone()),
            etag: Some(ETag::new(identity.etag())),
            connection_state: Some(identity.connection_state),
            status: Some(identity.status),
            status_reason: identity.status_reason.clone(),
            connection_state_updated_time: Some(
                identity.connection_state_updated_time.unwrap_or(NEVER_TIME),
            ),
            status_updated_time: Some(identity.status_updated_time.unwrap_or(NEVER_TIME)),
            last_activity_time: Some(identity.last_activity_time.unwrap_or(NEVER_TIME)),
            cloud_to_device_message_count: Some(identity.cloud_to_device_message_count),
            authentication,
            capabilities: Some(DeviceCapabilities {
                iot_edge: identity.iot_edge,
            }),
            device_scope: identity.device_scope.clone(),
            parent_scopes: identity.parent_scopes.clone(),
        }),
        Some(module_id) => serde_json::to_value(Module {
            module_id: module_id.clone(),
            managed_by: identity.managed_by.clone(),
            device_id: record.key.device_id.clone(),
            generation_id: Some(identity.generation_id.clone()),
            etag: Some(ETag::new(identity.etag())),
            connection_state: Some(identity.connection_state),
            connection_state_updated_time: Some(
                identity.connection_state_updated_time.unwrap_or(NEVER_TIME),
            ),
            last_activity_time: Some(identity.last_activity_time.unwrap_or(NEVER_TIME)),
            cloud_to_device_message_count: Some(identity.cloud_to_device_message_count),
            authentication,
        }),
    };
    value.expect("REST shapes always serialise")
}

fn authentication_mechanism(authentication: &Authentication) -> AuthenticationMechanism {
    AuthenticationMechanism {
        symmetric_key: SymmetricKey {
            primary_key: authentication.primary_key.clone(),
            secondary_key: authentication.secondary_key.clone(),
        },
        x509_thumbprint: X509Thumbprint {
            primary_thumbprint: authentication.primary_thumbprint.clone(),
            secondary_thumbprint: authentication.secondary_thumbprint.clone(),
        },
        type_: authentication.kind,
    }
}

/// The service view of the twin, as `GET /twins/{id}` returns it.
pub fn twin_json(record: &DeviceRecord) -> Value {
    record.twin_json()
}

/// Reads a `PUT /devices/{id}` (or module) body into what the registry needs. Unknown and read-only
/// fields (etag, connection state, times) are ignored, as Azure does; ids in the body must match the path.
pub fn identity_spec(key: &IdentityKey, body: &Value) -> Result<IdentitySpec, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::bad_request("the device must be a JSON object"));
    };
    let text = |field: &str| -> Result<Option<String>, ApiError> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
        }
    };
    if let Some(device_id) = text("deviceId")?
        && device_id != key.device_id.as_str()
    {
        return Err(ApiError::bad_request(format!(
            "deviceId {device_id:?} in the body does not match {:?} in the URL",
            key.device_id.as_str()
        )));
    }
    if let Some(module_id) = &key.module_id
        && let Some(body_module) = text("moduleId")?
        && body_module != module_id.as_str()
    {
        return Err(ApiError::bad_request(format!(
            "moduleId {body_module:?} in the body does not match {:?} in the URL",
            module_id.as_str()
        )));
    }
    let status = match object.get("status") {
        None | Some(Value::Null) => DeviceStatus::Enabled,
        Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
            ApiError::bad_request(format!(
                "status must be \"enabled\" or \"disabled\", got {value}"
            ))
        })?,
    };
    let mechanism: AuthenticationMechanism = match object.get("authentication") {
        None | Some(Value::Null) => AuthenticationMechanism::default(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|error| ApiError::bad_request(format!("authentication: {error}")))?,
    };
    let capabilities: DeviceCapabilities = match object.get("capabilities") {
        None | Some(Value::Null) => DeviceCapabilities::default(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|error| ApiError::bad_request(format!("capabilities: {error}")))?,
    };
    let parent_scopes = match object.get("parentScopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|_| ApiError::bad_request("parentScopes must be an array of strings"))?,
    };
    let kind: AuthenticationType = mechanism.type_;
    Ok(IdentitySpec {
        status,
        status_reason: text("statusReason")?,
        authentication: Authentication {
            kind,
            primary_key: mechanism.symmetric_key.primary_key,
            secondary_key: mechanism.symmetric_key.secondary_key,
            primary_thumbprint: mechanism.x509_thumbprint.primary_thumbprint,
            secondary_thumbprint: mechanism.x509_thumbprint.secondary_thumbprint,
        },
        iot_edge: capabilities.iot_edge,
        managed_by: text("managedBy")?,
        device_scope: text("deviceScope")?,
        parent_scopes,
    })
}
