//! Key regeneration: a device's or module's symmetric keys (as `az iot hub device-identity renew-key`: read
//! the identity, replace one key, write it back under its etag) and a shared access policy's keys (a
//! fleethub extension, `POST /policies/{name}/regenerateKey`).

use fleethub_protocol::ids::{DeviceId, ModuleId};
use fleethub_protocol::percent::quote;
use fleethub_protocol::rest::{AuthenticationMechanism, AuthenticationType, Device, Module};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

/// Which key to renew: the primary, the secondary, or swap the two (`--key-type` of
/// `az iot hub device-identity renew-key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyToRenew {
    Primary,
    Secondary,
    Swap,
}

impl KeyToRenew {
    /// The name the hub's `regenerateKey` endpoint and the CLI take.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
            Self::Swap => "swap",
        }
    }
}

impl std::str::FromStr for KeyToRenew {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "primary" => Ok(Self::Primary),
            "secondary" => Ok(Self::Secondary),
            "swap" => Ok(Self::Swap),
            _ => Err(format!("key {text:?}: expected primary, secondary or swap")),
        }
    }
}

/// A shared access policy with its keys, as `POST /policies/{name}/regenerateKey` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedAccessPolicy {
    pub key_name: String,
    pub primary_key: String,
    pub secondary_key: String,
    #[serde(default)]
    pub rights: Vec<String>,
}

/// Leaves out the key to renew, so the hub generates a fresh one (it fills in omitted keys), or swaps them.
fn renew(
    authentication: Option<&mut AuthenticationMechanism>,
    which: KeyToRenew,
    what: &str,
) -> Result<(), ServiceError> {
    let keys = match authentication {
        Some(authentication) if authentication.type_ == AuthenticationType::Sas => {
            &mut authentication.symmetric_key
        }
        _ => {
            return Err(ServiceError::InvalidRequest {
                reason: format!("{what} does not use symmetric keys"),
            });
        }
    };
    match which {
        KeyToRenew::Primary => keys.primary_key = None,
        KeyToRenew::Secondary => keys.secondary_key = None,
        KeyToRenew::Swap => std::mem::swap(&mut keys.primary_key, &mut keys.secondary_key),
    }
    Ok(())
}

impl ServiceClient {
    /// Renews one of a device's keys (or swaps them): reads the device and writes it back under its etag
    /// with that key left out, which the hub replaces with a fresh one. Connections that authenticated with
    /// the replaced key are disconnected at once; the answer carries the new keys.
    pub async fn renew_device_key(
        &self,
        device_id: &DeviceId,
        which: KeyToRenew,
    ) -> Result<Device, ServiceError> {
        let mut device = self.get_device(device_id).await?;
        renew(
            device.authentication.as_mut(),
            which,
            &format!("device {device_id}"),
        )?;
        let etag = device.etag.clone();
        self.update_device(&device, etag.as_ref()).await
    }

    /// [`renew_device_key`](Self::renew_device_key) for a module.
    pub async fn renew_module_key(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
        which: KeyToRenew,
    ) -> Result<Module, ServiceError> {
        let mut module = self.get_module(device_id, module_id).await?;
        renew(
            module.authentication.as_mut(),
            which,
            &format!("module {device_id}/{module_id}"),
        )?;
        let etag = module.etag.clone();
        self.update_module(&module, etag.as_ref()).await
    }

    /// Regenerates one key of a shared access policy, or swaps them (a fleethub extension; needs a policy with
    /// every right, `iothubowner`). From then on tokens signed with the replaced key get 401, and devices
    /// connected with such a policy token are disconnected. Renewing the key this client signs with makes
    /// its own next calls fail: build a new client from the answer.
    pub async fn regenerate_policy_key(
        &self,
        policy_name: &str,
        which: KeyToRenew,
    ) -> Result<SharedAccessPolicy, ServiceError> {
        let path = wire::with_query(
            &format!("/policies/{}/regenerateKey", quote(policy_name)),
            &[("key", which.as_str())],
        );
        self.call_json(Call::new(Method::POST, path, "a shared access policy"))
            .await
    }
}
