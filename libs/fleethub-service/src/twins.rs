//! Device and module twins: read, patch (JSON merge patch of tags and desired properties), replace.

use fleethub_protocol::ids::{DeviceId, ETag, ModuleId};
use fleethub_protocol::rest::Twin;
use reqwest::Method;
use serde::Serialize;

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

impl ServiceClient {
    pub async fn get_twin(&self, device_id: &DeviceId) -> Result<Twin, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query(&wire::twin(device_id), &[]),
            "a twin",
        ))
        .await
    }

    /// Merges `patch` into the twin (`PATCH /twins/{id}`): `tags` and `properties.desired` are JSON merge
    /// patches, `null` deletes a key. Only if the twin's etag is still `etag`, or unconditionally when `None`.
    /// Returns the whole twin after the change.
    ///
    /// `patch` is usually a [`Twin`] with only `tags` and/or `properties.desired` set, but any serialisable value
    /// works, e.g. `serde_json::json!({"properties": {"desired": {"interval": 5, "old": null}}})`.
    pub async fn update_twin<P: Serialize + ?Sized>(
        &self,
        device_id: &DeviceId,
        patch: &P,
        etag: Option<&ETag>,
    ) -> Result<Twin, ServiceError> {
        let call = Call::new(
            Method::PATCH,
            wire::with_query(&wire::twin(device_id), &[]),
            "a twin",
        );
        self.call_json(call.json_body(patch)?.if_match(etag)?).await
    }

    /// Replaces the twin's tags and desired properties with those of `twin` (`PUT /twins/{id}`), conditionally on
    /// `etag` as for [`ServiceClient::update_twin`]. Reported properties are the device's and are not replaced.
    pub async fn replace_twin<T: Serialize + ?Sized>(
        &self,
        device_id: &DeviceId,
        twin: &T,
        etag: Option<&ETag>,
    ) -> Result<Twin, ServiceError> {
        let call = Call::new(
            Method::PUT,
            wire::with_query(&wire::twin(device_id), &[]),
            "a twin",
        );
        self.call_json(call.json_body(twin)?.if_match(etag)?).await
    }

    pub async fn get_module_twin(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
    ) -> Result<Twin, ServiceError> {
        let path = wire::with_query(&wire::module_twin(device_id, module_id), &[]);
        self.call_json(Call::new(Method::GET, path, "a module twin"))
            .await
    }

    /// [`ServiceClient::update_twin`] for a module twin (`PATCH /twins/{id}/modules/{mid}`).
    pub async fn update_module_twin<P: Serialize + ?Sized>(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
        patch: &P,
        etag: Option<&ETag>,
    ) -> Result<Twin, ServiceError> {
        let path = wire::with_query(&wire::module_twin(device_id, module_id), &[]);
        self.call_json(
            Call::new(Method::PATCH, path, "a module twin")
                .json_body(patch)?
                .if_match(etag)?,
        )
        .await
    }

    /// [`ServiceClient::replace_twin`] for a module twin (`PUT /twins/{id}/modules/{mid}`).
    pub async fn replace_module_twin<T: Serialize + ?Sized>(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
        twin: &T,
        etag: Option<&ETag>,
    ) -> Result<Twin, ServiceError> {
        let path = wire::with_query(&wire::module_twin(device_id, module_id), &[]);
        self.call_json(
            Call::new(Method::PUT, path, "a module twin")
                .json_body(twin)?
                .if_match(etag)?,
        )
        .await
    }
}
