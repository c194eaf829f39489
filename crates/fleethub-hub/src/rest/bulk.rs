//! `POST /devices`: the bulk registry API (Azure's `bulk_create_or_update_devices`): up to
//! [`MAX_BULK_ITEMS`] `ExportImportDevice` items with an `importMode`, each succeeding or failing on its own,
//! all in one durable transaction. 200 when every item succeeded, 400 with the per-item errors otherwise.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::bulk::{
    BulkRegistryOperationResult, DeviceRegistryOperationError, ExportImportDevice, ImportMode,
};
use fleethub_protocol::ids::IfMatch;
use serde_json::{Map, Value};

use super::{ApiError, ApiResult, ApiState, authorize, convert, json_body};
use crate::auth::required;
use crate::services::{BulkItem, BulkMode};

/// Items per request. Azure allows 100; more is accepted here (simulators register fleets in bulk).
pub const MAX_BULK_ITEMS: usize = 1000;

pub(super) async fn bulk_devices(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &uri, required::REGISTRY_WRITE)?;
    let items: Vec<ExportImportDevice> = json_body(body)?;
    if items.is_empty() || items.len() > MAX_BULK_ITEMS {
        return Err(ApiError::bad_request(format!(
            "a bulk request holds 1 to {MAX_BULK_ITEMS} devices, got {}",
            items.len()
        )));
    }
    let mut errors = Vec::new();
    let mut accepted = Vec::new();
    for item in &items {
        match bulk_item(item) {
            Ok(bulk) => accepted.push((item, bulk)),
            Err(error) => errors.push(item_error(item, &error)),
        }
    }
    let (originals, bulk): (Vec<&ExportImportDevice>, Vec<BulkItem>) = accepted.into_iter().unzip();
    let results = state.services.bulk_registry(bulk).await?;
    for (item, result) in originals.into_iter().zip(results) {
        if let Err(error) = result {
            errors.push(item_error(item, &ApiError::from(error)));
        }
    }
    let result = BulkRegistryOperationResult {
        is_successful: errors.is_empty(),
        errors,
        warnings: Vec::new(),
    };
    let status = if result.is_successful {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, Json(result)).into_response())
}

fn item_error(item: &ExportImportDevice, error: &ApiError) -> DeviceRegistryOperationError {
    DeviceRegistryOperationError {
        device_id: item.id.clone(),
        error_code: error.code.name().to_owned(),
        error_status: error.message.clone(),
        module_id: item
            .module_id
            .as_deref()
            .and_then(|module| module.parse().ok()),
        operation: item.import_mode.as_str().to_owned(),
    }
}

fn bulk_item(item: &ExportImportDevice) -> Result<BulkItem, ApiError> {
    let device_id = item
        .id
        .parse()
        .map_err(|error| ApiError::bad_request(format!("device id {:?}: {error}", item.id)))?;
    let key = match &item.module_id {
        Some(module) => IdentityKey::module(
            device_id,
            module
                .parse()
                .map_err(|error| ApiError::bad_request(format!("module id {module:?}: {error}")))?,
        ),
        None => IdentityKey::device(device_id),
    };
    let etag = |tag: &Option<String>, name: &str| match tag {
        Some(tag) => Ok(fleethub_protocol::ids::parse_if_match(tag)),
        None => Err(ApiError::bad_request(format!(
            "importMode {} needs {name}",
            item.import_mode.as_str()
        ))),
    };
    let mode = match item.import_mode {
        ImportMode::Create => BulkMode::Create,
        ImportMode::Update => BulkMode::Upsert(IfMatch::Any),
        ImportMode::UpdateIfMatchETag => BulkMode::Upsert(etag(&item.e_tag, "eTag")?),
        ImportMode::Delete => BulkMode::Delete(IfMatch::Any),
        ImportMode::DeleteIfMatchETag => BulkMode::Delete(etag(&item.e_tag, "eTag")?),
        ImportMode::UpdateTwin => BulkMode::UpdateTwin(IfMatch::Any),
        ImportMode::UpdateTwinIfMatchETag => {
            BulkMode::UpdateTwin(etag(&item.twin_e_tag, "twinETag")?)
        }
    };
    let spec = match item.import_mode {
        ImportMode::Create | ImportMode::Update | ImportMode::UpdateIfMatchETag => {
            let body = serde_json::to_value(item).expect("an import item always serialises");
            Some(convert::identity_spec(&key, &rename_id(body))?)
        }
        _ => None,
    };
    let mut patch = Map::new();
    if let Some(tags) = &item.tags {
        patch.insert("tags".into(), Value::Object(tags.clone()));
    }
    if let Some(desired) = item
        .properties
        .as_ref()
        .and_then(|properties| properties.desired.as_ref())
    {
        patch.insert(
            "properties".into(),
            serde_json::json!({ "desired": desired }),
        );
    }
    let twin_patch = (!patch.is_empty()).then_some(Value::Object(patch));
    let reported = item
        .properties
        .as_ref()
        .and_then(|properties| properties.reported.clone())
        .map(Value::Object);
    Ok(BulkItem {
        key,
        mode,
        spec,
        twin_patch,
        reported,
    })
}

/// The import item's `id` is the device body's `deviceId`.
fn rename_id(mut body: Value) -> Value {
    if let Some(object) = body.as_object_mut()
        && let Some(id) = object.remove("id")
    {
        object.insert("deviceId".into(), id);
    }
    body
}
