//! The bulk registry API (`POST /devices`, Azure's `bulk_create_or_update_devices`): many identity writes
//! (create, update, delete, twin updates) in one request, each succeeding or failing on its own.

use fleethub_protocol::bulk::{BulkRegistryOperationResult, ExportImportDevice};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use crate::client::ServiceClient;
use crate::error::ServiceError;
use crate::wire;

impl ServiceClient {
    /// Applies `items` (Azure's `ExportImportDevice`, each with its `importMode`: `create`, `update` (create
    /// or overwrite), `delete`, `updateTwin`, and their `IfMatchETag` variants) in one request. Azure takes at
    /// most 100 items per request, a fleethub hub up to 1000.
    ///
    /// Returns the outcome per item: `isSuccessful`, and one error per failed item with its Azure error
    /// name (`DeviceAlreadyExists`, `DeviceNotFound`, ...). The hub answers 400 with that body when some item
    /// failed; that is a result here, not an error. A request refused as a whole (400 without that shape, 401,
    /// 403, 429, ...) is an error.
    pub async fn bulk_registry(
        &self,
        items: &[ExportImportDevice],
    ) -> Result<BulkRegistryOperationResult, ServiceError> {
        let body = serde_json::to_vec(items).map_err(|error| ServiceError::InvalidRequest {
            reason: format!("the request body does not serialise to json: {error}"),
        })?;
        let response = self
            .execute(
                Method::POST,
                &wire::with_query("/devices", &[]),
                HeaderMap::new(),
                Some(body),
                None,
            )
            .await?;
        if response.status == StatusCode::BAD_REQUEST
            && let Ok(result) = response.json::<BulkRegistryOperationResult>()
        {
            return Ok(result);
        }
        let response = response.error_for_status()?;
        response.json()
    }
}
