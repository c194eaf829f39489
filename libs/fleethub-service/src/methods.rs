//! Direct methods: invoke a method on a connected device or module and get its answer.

use fleethub_protocol::ids::{DeviceId, ModuleId};
use fleethub_protocol::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult};
use reqwest::Method;

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

impl ServiceClient {
    /// Calls a direct method (`POST /twins/{id}/methods`) and returns the device's status and payload. The
    /// device's own failure statuses (e.g. 500 from its handler) are in the result, not an error.
    ///
    /// The hub's failures are [`ServiceError::Api`]: 404 `DeviceNotFound` (no such device), 404
    /// `DeviceNotOnline` (not connected, or not subscribed to methods, within `connectTimeoutInSeconds`), 504
    /// `GatewayTimeout` (no answer within `responseTimeoutInSeconds`). The HTTP request is allowed at least
    /// both timeouts plus a margin, whatever [`ServiceClientOptions::timeout`](crate::ServiceClientOptions) says.
    pub async fn invoke_method(
        &self,
        device_id: &DeviceId,
        request: &CloudToDeviceMethod,
    ) -> Result<CloudToDeviceMethodResult, ServiceError> {
        let path = wire::with_query(&wire::device_method(device_id), &[]);
        self.invoke(path, request).await
    }

    /// [`ServiceClient::invoke_method`] for a module (`POST /twins/{id}/modules/{mid}/methods`).
    pub async fn invoke_module_method(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
        request: &CloudToDeviceMethod,
    ) -> Result<CloudToDeviceMethodResult, ServiceError> {
        let path = wire::with_query(&wire::module_method(device_id, module_id), &[]);
        self.invoke(path, request).await
    }

    async fn invoke(
        &self,
        path: String,
        request: &CloudToDeviceMethod,
    ) -> Result<CloudToDeviceMethodResult, ServiceError> {
        let timeout = self.method_call_timeout(
            request.connect_timeout_in_seconds,
            request.response_timeout_in_seconds,
        );
        let call = Call::new(Method::POST, path, "a method result")
            .json_body(request)?
            .timeout(timeout);
        self.call_json(call).await
    }
}
