//! The identity registry: devices and modules (create, update, get, list, delete), registry and service
//! statistics, and connection strings for the identities it holds.

use fleethub_protocol::connection_string::DeviceConnectionString;
use fleethub_protocol::ids::{DeviceId, ETag, ModuleId};
use fleethub_protocol::rest::{
    AuthenticationMechanism, AuthenticationType, Device, Module, RegistryStatistics,
    ServiceStatistics,
};
use reqwest::Method;

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

impl ServiceClient {
    /// Creates a device (`PUT /devices/{id}` without `If-Match`; the hub answers 409 `DeviceAlreadyExists` if it
    /// exists). Leave the keys out (`symmetricKey: {}` or no `authentication`) to have the hub generate them;
    /// the answer carries them.
    pub async fn create_device(&self, device: &Device) -> Result<Device, ServiceError> {
        let call = Call::new(
            Method::PUT,
            wire::with_query(&wire::device(&device.device_id), &[]),
            "a device",
        );
        self.call_json(call.json_body(device)?).await
    }

    /// Replaces a device's identity (`PUT /devices/{id}` with `If-Match`): only if its etag is still `etag`, or
    /// unconditionally when `etag` is `None` (`If-Match: "*"`). A stale etag fails with 412 `PreconditionFailed`.
    pub async fn update_device(
        &self,
        device: &Device,
        etag: Option<&ETag>,
    ) -> Result<Device, ServiceError> {
        let call = Call::new(
            Method::PUT,
            wire::with_query(&wire::device(&device.device_id), &[]),
            "a device",
        );
        self.call_json(call.json_body(device)?.if_match(etag)?)
            .await
    }

    pub async fn get_device(&self, device_id: &DeviceId) -> Result<Device, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query(&wire::device(device_id), &[]),
            "a device",
        ))
        .await
    }

    /// Lists devices (`GET /devices[?top=n]`). Azure returns at most 1000 whatever `top` says; use a query to page
    /// through more.
    pub async fn list_devices(&self, top: Option<u32>) -> Result<Vec<Device>, ServiceError> {
        let top = top.map(|top| top.to_string());
        let parameters: Vec<(&str, &str)> = top.iter().map(|top| ("top", top.as_str())).collect();
        self.call_json(Call::new(
            Method::GET,
            wire::with_query("/devices", &parameters),
            "a list of devices",
        ))
        .await
    }

    /// Deletes a device, its modules and its twin; only if its etag is `etag`, or unconditionally when `None`.
    pub async fn delete_device(
        &self,
        device_id: &DeviceId,
        etag: Option<&ETag>,
    ) -> Result<(), ServiceError> {
        let call = Call::new(
            Method::DELETE,
            wire::with_query(&wire::device(device_id), &[]),
            "nothing",
        );
        self.call_no_content(call.if_match(etag)?).await
    }

    /// Creates a module on an existing device (`PUT /devices/{id}/modules/{mid}` without `If-Match`).
    pub async fn create_module(&self, module: &Module) -> Result<Module, ServiceError> {
        let path = wire::with_query(&wire::module(&module.device_id, &module.module_id), &[]);
        self.call_json(Call::new(Method::PUT, path, "a module").json_body(module)?)
            .await
    }

    /// Replaces a module's identity, conditionally on `etag` as for [`ServiceClient::update_device`].
    pub async fn update_module(
        &self,
        module: &Module,
        etag: Option<&ETag>,
    ) -> Result<Module, ServiceError> {
        let path = wire::with_query(&wire::module(&module.device_id, &module.module_id), &[]);
        self.call_json(
            Call::new(Method::PUT, path, "a module")
                .json_body(module)?
                .if_match(etag)?,
        )
        .await
    }

    pub async fn get_module(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
    ) -> Result<Module, ServiceError> {
        let path = wire::with_query(&wire::module(device_id, module_id), &[]);
        self.call_json(Call::new(Method::GET, path, "a module"))
            .await
    }

    /// The modules of one device.
    pub async fn list_modules(&self, device_id: &DeviceId) -> Result<Vec<Module>, ServiceError> {
        let path = wire::with_query(&wire::modules(device_id), &[]);
        self.call_json(Call::new(Method::GET, path, "a list of modules"))
            .await
    }

    pub async fn delete_module(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
        etag: Option<&ETag>,
    ) -> Result<(), ServiceError> {
        let path = wire::with_query(&wire::module(device_id, module_id), &[]);
        self.call_no_content(Call::new(Method::DELETE, path, "nothing").if_match(etag)?)
            .await
    }

    /// Device counts: total, enabled, disabled (`GET /statistics/devices`).
    pub async fn registry_statistics(&self) -> Result<RegistryStatistics, ServiceError> {
        let path = wire::with_query("/statistics/devices", &[]);
        self.call_json(Call::new(Method::GET, path, "registry statistics"))
            .await
    }

    /// Connected device count (`GET /statistics/service`).
    pub async fn service_statistics(&self) -> Result<ServiceStatistics, ServiceError> {
        let path = wire::with_query("/statistics/service", &[]);
        self.call_json(Call::new(Method::GET, path, "service statistics"))
            .await
    }

    /// `HostName=...;DeviceId=...;SharedAccessKey=<primary key>` for a device of this hub; for an X.509 device
    /// (`selfSigned` or `certificateAuthority`) `HostName=...;DeviceId=...;x509=true`, as Azure prints it (the
    /// app adds its certificate); `None` if a SAS device as given has no primary key (read without its keys).
    ///
    /// `HostName` is this client's host name **without its port**: the port of the REST endpoint says nothing
    /// about where devices connect, and the official device SDKs dial MQTT on 8883 (or 443 for WebSockets) and
    /// fail on a `HostName` with a port. A fleethub hub with a non-default MQTT port needs a `GatewayHostName` or
    /// a port-aware device SDK; add it to the string yourself.
    pub fn device_connection_string(&self, device: &Device) -> Option<String> {
        let key = credential(device.authentication.as_ref())?;
        Some(self.identity_connection_string(device.device_id.clone(), None, key))
    }

    /// The same for a module: `HostName=...;DeviceId=...;ModuleId=...;SharedAccessKey=<primary key>`.
    pub fn module_connection_string(&self, module: &Module) -> Option<String> {
        let key = credential(module.authentication.as_ref())?;
        Some(self.identity_connection_string(
            module.device_id.clone(),
            Some(module.module_id.clone()),
            key,
        ))
    }

    fn identity_connection_string(
        &self,
        device_id: DeviceId,
        module_id: Option<ModuleId>,
        key: Option<String>,
    ) -> String {
        DeviceConnectionString {
            host_name: host_without_port(self.host_name()).to_owned(),
            device_id,
            module_id,
            x509: key.is_none(),
            shared_access_key: key,
            gateway_host_name: None,
            shared_access_signature: None,
        }
        .to_string()
    }
}

/// `Some(Some(primary key))` for a SAS identity with its keys, `Some(None)` for an X.509 identity, `None`
/// otherwise.
fn credential(authentication: Option<&AuthenticationMechanism>) -> Option<Option<String>> {
    let authentication = authentication?;
    if matches!(
        authentication.type_,
        AuthenticationType::SelfSigned | AuthenticationType::CertificateAuthority
    ) {
        return Some(None);
    }
    authentication
        .symmetric_key
        .primary_key
        .clone()
        .filter(|key| !key.is_empty())
        .map(Some)
}

/// `host:port` → `host`, `[::1]:8443` → `[::1]`; anything else unchanged.
fn host_without_port(host_name: &str) -> &str {
    let port_start = if host_name.starts_with('[') {
        host_name.find("]:").map(|bracket| bracket + 1)
    } else {
        host_name.rfind(':')
    };
    match port_start {
        Some(colon)
            if !host_name[colon + 1..].is_empty()
                && host_name[colon + 1..]
                    .bytes()
                    .all(|byte| byte.is_ascii_digit()) =>
        {
            &host_name[..colon]
        }
        _ => host_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceClientOptions;
    use fleethub_protocol::rest::SymmetricKey;

    fn client(host_name: &str) -> ServiceClient {
        ServiceClient::from_connection_string(
            &format!(
                "HostName={host_name};SharedAccessKeyName=iothubowner;SharedAccessKey=cHJpbWFyeQ=="
            ),
            ServiceClientOptions::default(),
        )
        .expect("valid connection string")
    }

    fn with_keys(primary: Option<&str>) -> AuthenticationMechanism {
        AuthenticationMechanism {
            symmetric_key: SymmetricKey {
                primary_key: primary.map(str::to_owned),
                secondary_key: Some("c2Vjb25kYXJ5".to_owned()),
            },
            ..AuthenticationMechanism::default()
        }
    }

    #[test]
    fn identity_connection_strings_use_the_primary_key_and_drop_the_port() {
        let device_id = DeviceId::new("dev:1").expect("valid");
        let mut device = Device::new(device_id.clone());
        assert_eq!(
            client("localhost:8443").device_connection_string(&device),
            None,
            "no authentication"
        );
        device.authentication = Some(with_keys(None));
        assert_eq!(
            client("localhost:8443").device_connection_string(&device),
            None,
            "no primary key"
        );
        device.authentication = Some(with_keys(Some("cHJpbWFyeQ==")));
        assert_eq!(
            client("localhost:8443")
                .device_connection_string(&device)
                .as_deref(),
            Some("HostName=localhost;DeviceId=dev:1;SharedAccessKey=cHJpbWFyeQ==")
        );
        assert_eq!(
            client("myhub.azure-devices.net")
                .device_connection_string(&device)
                .as_deref(),
            Some("HostName=myhub.azure-devices.net;DeviceId=dev:1;SharedAccessKey=cHJpbWFyeQ==")
        );
        let mut module = Module::new(device_id, ModuleId::new("$edgeAgent").expect("valid"));
        module.authentication = Some(with_keys(Some("bW9kdWxl")));
        let text = client("[::1]:8443")
            .module_connection_string(&module)
            .expect("has a key");
        assert_eq!(
            text,
            "HostName=[::1];DeviceId=dev:1;ModuleId=$edgeAgent;SharedAccessKey=bW9kdWxl"
        );
        let parsed: DeviceConnectionString = text.parse().expect("our connection strings parse");
        assert_eq!(
            parsed.module_id.as_ref().map(ModuleId::as_str),
            Some("$edgeAgent")
        );
    }

    #[test]
    fn x509_identities_get_an_x509_connection_string() {
        let mut device = Device::new(DeviceId::new("cert-device").expect("valid"));
        for type_ in [
            AuthenticationType::SelfSigned,
            AuthenticationType::CertificateAuthority,
        ] {
            device.authentication = Some(AuthenticationMechanism {
                type_,
                ..AuthenticationMechanism::default()
            });
            let text = client("localhost:8443")
                .device_connection_string(&device)
                .expect("an x509 string");
            assert_eq!(text, "HostName=localhost;DeviceId=cert-device;x509=true");
            let parsed: DeviceConnectionString = text.parse().expect("it parses");
            assert!(parsed.x509);
        }
    }

    #[test]
    fn ports_are_stripped_only_when_they_are_ports() {
        let cases = [
            ("localhost:8443", "localhost"),
            ("localhost", "localhost"),
            ("hub.example:", "hub.example:"),
            ("[::1]:8443", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:443", "127.0.0.1"),
        ];
        for (input, expected) in cases {
            assert_eq!(host_without_port(input), expected, "{input}");
        }
    }
}
