//! The one place where a failed call to the hub becomes the message users read: what was wrong (with
//! the Azure error code) and what to do about it.

use anyhow::anyhow;
use fleethub_service::ServiceError;
use fleethub_service::protocol::errors::{ErrorCode, ReportedErrorCode};
use fleethub_service::protocol::ids::{DeviceId, JobId, ModuleId, RolloutId};

use crate::hub::{Hub, HubOrigin, Trust};

/// What kind of call failed: decides which right a 403 is about and which command shows a fresh etag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    ReadIdentity,
    WriteIdentity,
    ReadTwin,
    WriteTwin,
    InvokeMethod,
    WatchChanges,
    Query,
    ReadJob,
    /// Create or cancel a job.
    WriteJob,
    /// Follow a job's progress (`--watch`): the change feed.
    WatchJob,
    ReadConfiguration,
    /// Create, update or delete a configuration.
    WriteConfiguration,
    /// List or show firmware artifacts.
    ReadFirmware,
    /// Upload or delete a firmware artifact.
    WriteFirmware,
    /// Grant a device a firmware download.
    GrantFirmware,
    /// List or show rollouts.
    ReadRollout,
    /// Create, pause, resume, approve or abort a rollout.
    WriteRollout,
    /// Follow a rollout's progress: the change feed.
    WatchRollout,
    /// Read the event log (`monitor-events`) or save a consumer group's checkpoints.
    ReadEvents,
    /// Read message routing's configuration, test routes, read endpoint health or dead letters.
    ReadRouting,
    /// Change message routing's configuration.
    WriteRouting,
    /// Send a cloud-to-device message, purge a queue, read or settle feedback.
    CloudToDevice,
    /// Regenerate a shared access policy's key (a fleethub extension).
    WritePolicy,
}

/// A direct-method call, for the not-online and timed-out messages.
#[derive(Clone, Debug)]
pub(crate) struct MethodCall {
    pub(crate) name: String,
    pub(crate) response_timeout: u64,
    pub(crate) connect_timeout: Option<u64>,
}

/// The call that failed, as the user asked for it.
#[derive(Clone, Debug)]
pub(crate) struct Operation {
    /// The verb phrase, e.g. "create device dev1", "list devices".
    pub(crate) action: String,
    pub(crate) kind: Kind,
    pub(crate) device: Option<DeviceId>,
    pub(crate) module: Option<ModuleId>,
    pub(crate) etag: Option<String>,
    pub(crate) method: Option<MethodCall>,
    pub(crate) job: Option<String>,
    pub(crate) configuration: Option<String>,
    /// A firmware artifact's model and version.
    pub(crate) artifact: Option<(String, String)>,
    pub(crate) rollout: Option<String>,
}

impl Operation {
    pub(crate) fn new(kind: Kind, action: impl Into<String>) -> Operation {
        Operation {
            action: action.into(),
            kind,
            device: None,
            module: None,
            etag: None,
            method: None,
            job: None,
            configuration: None,
            artifact: None,
            rollout: None,
        }
    }

    pub(crate) fn on_rollout(mut self, rollout_id: &RolloutId) -> Operation {
        self.rollout = Some(rollout_id.to_string());
        self
    }

    fn rollout_text(&self) -> &str {
        self.rollout.as_deref().unwrap_or("ROLLOUT_ID")
    }

    pub(crate) fn on_artifact(mut self, model: &str, version: &str) -> Operation {
        self.artifact = Some((model.to_owned(), version.to_owned()));
        self
    }

    /// "MODEL VERSION" of the artifact, for commands in messages.
    fn artifact_text(&self) -> String {
        match &self.artifact {
            Some((model, version)) => format!("{model} {version}"),
            None => "MODEL VERSION".to_owned(),
        }
    }

    pub(crate) fn on_job(mut self, job_id: &JobId) -> Operation {
        self.job = Some(job_id.to_string());
        self
    }

    pub(crate) fn on_configuration(mut self, id: &str) -> Operation {
        self.configuration = Some(id.to_owned());
        self
    }

    pub(crate) fn on(mut self, device: &DeviceId, module: Option<&ModuleId>) -> Operation {
        self.device = Some(device.clone());
        self.module = module.cloned();
        self
    }

    pub(crate) fn with_etag(mut self, etag: Option<&str>) -> Operation {
        self.etag = etag.map(str::to_owned);
        self
    }

    pub(crate) fn with_method(mut self, method: MethodCall) -> Operation {
        self.method = Some(method);
        self
    }

    /// "device dev1" or "module m1 of device dev1".
    fn subject(&self) -> String {
        match (&self.device, &self.module, &self.job, &self.configuration) {
            (Some(device), Some(module), _, _) => format!("module {module} of device {device}"),
            (Some(device), None, _, _) => format!("device {device}"),
            (None, _, Some(job), _) => format!("job {job}"),
            (None, _, None, Some(configuration)) => format!("configuration {configuration}"),
            (None, _, None, None) => "the hub".to_owned(),
        }
    }

    fn job_text(&self) -> &str {
        self.job.as_deref().unwrap_or("JOB_ID")
    }

    fn configuration_text(&self) -> &str {
        self.configuration.as_deref().unwrap_or("ID")
    }

    /// ` --module m1` when the operation is about a module.
    fn module_flag(&self) -> String {
        self.module
            .as_ref()
            .map(|module| format!(" --module {module}"))
            .unwrap_or_default()
    }

    fn device_text(&self) -> String {
        self.device
            .as_ref()
            .map(|device| device.to_string())
            .unwrap_or_else(|| "DEVICE".to_owned())
    }
}

/// Turns a failed SDK call into the message users read, asking the hub once more where its answer is
/// ambiguous.
pub(crate) trait ExplainResult<T> {
    async fn or_explain(self, hub: &Hub, operation: &Operation) -> anyhow::Result<T>;
}

impl<T> ExplainResult<T> for Result<T, ServiceError> {
    async fn or_explain(self, hub: &Hub, operation: &Operation) -> anyhow::Result<T> {
        let error = match self {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        // The hub answers ModuleNotFound also when the device itself does not exist; tell the two apart.
        if error.error_code() == Some(ErrorCode::ModuleNotFound)
            && let Some(device) = &operation.device
            && let Err(device_error) = hub.client.get_device(device).await
            && device_error.error_code() == Some(ErrorCode::DeviceNotFound)
        {
            return Err(explain(hub, operation, device_error));
        }
        Err(explain(hub, operation, error))
    }
}

/// The message for `error`, which happened while doing `operation` on `hub`.
pub(crate) fn explain(hub: &Hub, operation: &Operation, error: ServiceError) -> anyhow::Error {
    anyhow!(message(hub, operation, &error))
}

fn message(hub: &Hub, operation: &Operation, error: &ServiceError) -> String {
    match error {
        ServiceError::Api {
            status,
            code,
            message,
            ..
        } => api_message(hub, operation, *status, code, message),
        ServiceError::Tls { host, source } => {
            let trusted = match &hub.trust {
                Trust::CaFlag(path) => format!(
                    "the hub's certificate is not accepted with the CA of --ca {}",
                    path.display()
                ),
                Trust::DataDirCa(path) => format!(
                    "the hub's certificate is not accepted with the data directory's CA {}",
                    path.display()
                ),
                Trust::SystemRoots => {
                    "the hub's certificate is not signed by a CA the system trusts (no --ca given and no DIR/ca.pem found)"
                        .to_owned()
                }
            };
            let name_hint = if matches!(
                source,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForNameContext { .. }
                    )
            ) {
                format!(
                    ", or start the hub with `--hostname {}` so that its certificate names it",
                    host_without_port(host)
                )
            } else {
                String::new()
            };
            format!(
                "tls handshake with {host} failed ({source}): {trusted}; pass --ca FILE with the CA that signed the hub's certificate (a fleethub hub's is ca.pem in its data directory){name_hint}"
            )
        }
        ServiceError::Transport { host, source } => {
            let cause = root_cause(source);
            let advice = match &hub.origin {
                HubOrigin::DataDir(path) => format!(
                    "is the hub running? start it with `fleethub serve --data-dir {}`",
                    path.display()
                ),
                HubOrigin::Flag | HubOrigin::Environment => {
                    "check that the hub is running and that HostName in the connection string is right"
                        .to_owned()
                }
            };
            format!("cannot reach the hub at {host} ({cause}): {advice}")
        }
        ServiceError::Timeout { after } => format!(
            "the hub at {} did not answer within {} s while trying to {}: check that it is running and reachable",
            hub.host(),
            after.as_secs(),
            operation.action
        ),
        ServiceError::Decode { what, source, .. } => format!(
            "the answer of {} is not {what} ({source}): is HostName an IoT hub?",
            hub.host()
        ),
        ServiceError::InvalidRequest { reason } => {
            format!("cannot {}: {reason}", operation.action)
        }
        ServiceError::File { path, source } => {
            format!(
                "cannot {}: cannot read {}: {source}",
                operation.action,
                path.display()
            )
        }
        other => format!("cannot {}: {other}", operation.action),
    }
}

fn api_message(
    hub: &Hub,
    operation: &Operation,
    status: u16,
    code: &ReportedErrorCode,
    hub_message: &str,
) -> String {
    let code_text = code_text(status, code);
    let with_message = if hub_message.is_empty() {
        code_text.clone()
    } else {
        format!("{code_text}: {hub_message}")
    };
    let subject = operation.subject();
    let device = operation.device_text();
    let known = match code {
        ReportedErrorCode::Known(code) => Some(*code),
        _ => None,
    };
    match known {
        Some(ErrorCode::DeviceNotFound) => format!(
            "device {device} is not registered ({code_text}): check the id with `fleethub device list`, or create it with `fleethub device create {device}`"
        ),
        Some(ErrorCode::ModuleNotFound) => {
            let module = operation
                .module
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "MODULE".to_owned());
            format!(
                "module {module} of device {device} is not registered ({code_text}): see the device's modules with `fleethub device list {device} --modules`, or create it with `fleethub device create {device} --module {module}`"
            )
        }
        Some(ErrorCode::DeviceAlreadyExists | ErrorCode::ModuleAlreadyExistsOnDevice) => format!(
            "{subject} already exists ({code_text}): see it with `fleethub device show {device}{}`, or delete it first with `fleethub device delete {device}{}`",
            operation.module_flag(),
            operation.module_flag()
        ),
        Some(ErrorCode::DeviceNotOnline) => {
            let connect = if operation
                .method
                .as_ref()
                .is_some_and(|method| method.connect_timeout.is_some())
            {
                "raise --connect-timeout"
            } else {
                "use --connect-timeout"
            };
            format!(
                "{subject} is not online ({code_text}): it is not connected or has not subscribed to methods; check the device app or {connect}"
            )
        }
        Some(ErrorCode::GatewayTimeout) => match &operation.method {
            Some(method) => format!(
                "{subject} did not answer method {} within {} s ({code_text}): check that the device app handles {}, or raise --timeout",
                method.name, method.response_timeout, method.name
            ),
            None => format!("the hub timed out ({with_message})"),
        },
        Some(ErrorCode::ThrottlingException) => format!(
            "{subject} has too many calls in flight ({with_message}): wait for them to finish, then retry"
        ),
        Some(ErrorCode::MessageTooLarge) => {
            format!("the payload is too large ({with_message}): send a smaller one")
        }
        Some(ErrorCode::DeviceMaximumQueueDepthExceeded) => format!(
            "the message queue of device {device} is full ({with_message}): the device must take its messages first (is it connected and subscribed?), or empty the queue with `fleethub c2d purge {device}`"
        ),
        Some(ErrorCode::InvalidMessageExpiryTime) => format!(
            "the hub refused the expiry ({with_message}): give --ttl from 1 to 172800 seconds (two days)"
        ),
        Some(ErrorCode::DeviceMessageLockLost) if operation.kind == Kind::CloudToDevice => format!(
            "the feedback batch's lock ran out before it was marked read ({code_text}): the hub hands it out again; run the command again"
        ),
        Some(ErrorCode::JobNotFound) => {
            let job = operation.job_text();
            format!(
                "job {job} does not exist ({code_text}): see the jobs with `fleethub job list` (a job is kept for 30 days after it ended)"
            )
        }
        Some(ErrorCode::JobAlreadyExists) => {
            let job = operation.job_text();
            format!(
                "job {job} already exists ({code_text}): see it with `fleethub job show {job}`, or give the new job another id"
            )
        }
        Some(ErrorCode::ConfigurationNotFound) => format!(
            "configuration {} does not exist ({code_text}): see the configurations with `fleethub config list`",
            operation.configuration_text()
        ),
        Some(ErrorCode::ConfigurationAlreadyExists) => {
            let id = operation.configuration_text();
            format!(
                "configuration {id} already exists ({code_text}): see it with `fleethub config show {id}`, change it with `fleethub config update {id}`, or delete it first with `fleethub config delete {id}`"
            )
        }
        Some(ErrorCode::InvalidConfigurationTargetCondition) => format!(
            "the hub rejected the target condition ({with_message}): fix --target; it is the WHERE of a devices query, e.g. \"tags.site = 'lab'\" (`fleethub query \"SELECT deviceId FROM devices WHERE ...\"` shows what it selects)"
        ),
        Some(ErrorCode::InvalidConfigurationContent) => format!(
            "the hub rejected the content ({with_message}): --content maps twin paths under properties.desired to the JSON to put there, e.g. '{{\"properties.desired.firmware\": {{\"version\": \"2.0\"}}}}'"
        ),
        Some(ErrorCode::CannotModifyImmutableConfigurationContent) => format!(
            "the content of {subject} cannot change ({with_message}): create a configuration with the new content and a higher --priority, then delete this one"
        ),
        Some(ErrorCode::InvalidConfigurationCustomMetricsQuery) => format!(
            "the hub rejected a metric ({with_message}): fix --metric NAME=QUERY (at most 5, each a query such as \"SELECT deviceId FROM devices WHERE properties.reported.fw = '2.0'\")"
        ),
        Some(ErrorCode::ConfigurationCountLimitExceeded) => format!(
            "the hub holds as many configurations as it can ({with_message}): delete one first (see them with `fleethub config list`)"
        ),
        _ if status == 404
            && matches!(
                operation.kind,
                Kind::ReadRollout | Kind::WriteRollout | Kind::WatchRollout
            ) =>
        {
            if hub_message.contains("firmware artifact") {
                format!(
                    "the rollout's firmware is not on the hub ({with_message}): upload it first with `fleethub firmware upload`, see the artifacts with `fleethub firmware list`"
                )
            } else if hub_message.contains("rollout") {
                format!(
                    "rollout {} does not exist ({code_text}): see the rollouts with `fleethub rollout list`",
                    operation.rollout_text()
                )
            } else {
                format!(
                    "{} has no firmware rollouts ({with_message}): rollouts need a fleethub hub recent enough to serve /firmware/rollouts",
                    hub.host()
                )
            }
        }
        _ if status == 409 && operation.kind == Kind::WriteRollout => {
            let rollout = operation.rollout_text();
            if operation.action.starts_with("create") {
                format!(
                    "rollout {rollout} already exists ({code_text}): see it with `fleethub rollout show {rollout}`, or give the new rollout another id"
                )
            } else {
                format!(
                    "cannot {} ({with_message}): see where it stands with `fleethub rollout show {rollout}`",
                    operation.action
                )
            }
        }
        _ if status == 404
            && matches!(
                operation.kind,
                Kind::ReadFirmware | Kind::WriteFirmware | Kind::GrantFirmware
            )
            && known != Some(ErrorCode::DeviceNotFound) =>
        {
            format!(
                "firmware {} does not exist ({code_text}): see the artifacts with `fleethub firmware list`",
                operation.artifact_text()
            )
        }
        _ if status == 409 && operation.kind == Kind::WriteFirmware => {
            let artifact = operation.artifact_text();
            if operation.action.starts_with("delete") {
                format!(
                    "firmware {artifact} is still in use ({with_message}): let the rollouts that use it finish, or abort them, then delete it"
                )
            } else {
                format!(
                    "firmware {artifact} already exists ({code_text}): an artifact never changes; upload the image under a new --version, or delete the old one first with `fleethub firmware delete {artifact}`"
                )
            }
        }
        _ if status == 413 && operation.kind == Kind::WriteFirmware => format!(
            "the image is too large for the hub ({with_message}): the hub's limit is `fleethub serve --max-artifact-size`"
        ),
        _ if status == 400 && operation.kind == Kind::WriteFirmware => format!(
            "the hub refused the upload of firmware {} ({with_message})",
            operation.artifact_text()
        ),
        _ if status == 412 && operation.kind == Kind::WriteRouting => format!(
            "the routing configuration changed while it was being updated ({code_text}): run the command again (`fleethub route export` shows the current one)"
        ),
        _ if status == 400 && operation.kind == Kind::WriteRouting => format!(
            "the hub refused the routing configuration ({with_message}); nothing was changed"
        ),
        _ if status == 404 && matches!(operation.kind, Kind::ReadRouting | Kind::WriteRouting) => {
            format!(
                "{} has no message routing API ({with_message}): `fleethub route` needs a fleethub hub recent enough to serve /routing (Azure IoT Hub configures routing in its Azure resource: use `az iot hub message-route` there)",
                hub.host()
            )
        }
        _ if status == 412 && operation.kind == Kind::WriteConfiguration => {
            let id = operation.configuration_text();
            match operation.etag.as_deref() {
                Some(etag) => format!(
                    "the etag {etag} is not the current one: configuration {id} changed since that etag was read ({code_text}): read the current etag with `fleethub config show {id}`, or leave out --etag to {} regardless",
                    operation.action.split(' ').next().unwrap_or("write")
                ),
                None => format!(
                    "configuration {id} changed while it was being updated ({code_text}): run the command again"
                ),
            }
        }
        _ if status == 412 => {
            let etag = operation.etag.as_deref().unwrap_or("given");
            let (what, show, verb) = match operation.kind {
                Kind::WriteIdentity => ("identity", "device show", "delete"),
                _ => ("twin", "twin show", "write"),
            };
            format!(
                "the etag {etag} is not the current one: the {what} of {subject} changed since that etag was read ({code_text}): read the current etag with `fleethub {show} {device}{}`, or leave out --etag to {verb} regardless",
                operation.module_flag()
            )
        }
        _ if status == 401 => {
            let advice = match &hub.origin {
                HubOrigin::DataDir(path) => format!(
                    "the data directory {} may belong to another hub than the one at {}",
                    path.display(),
                    hub.host()
                ),
                _ => "check SharedAccessKeyName and SharedAccessKey in the connection string (for a local hub `fleethub connection-string --data-dir DIR` prints a current one)".to_owned(),
            };
            format!(
                "the hub rejected the credentials of policy {} ({with_message}): {advice}",
                hub.policy
            )
        }
        _ if status == 403 => {
            let (right, policies, suggestion) = match operation.kind {
                Kind::ReadIdentity => (
                    "RegistryRead",
                    "registryRead, registryReadWrite or iothubowner",
                    "registryRead",
                ),
                Kind::WriteIdentity => (
                    "RegistryWrite",
                    "registryReadWrite or iothubowner",
                    "registryReadWrite",
                ),
                Kind::ReadTwin
                | Kind::WatchChanges
                | Kind::Query
                | Kind::ReadJob
                | Kind::WatchJob
                | Kind::ReadRollout
                | Kind::WatchRollout => (
                    "ServiceConnect or RegistryRead",
                    "service, registryRead or iothubowner",
                    "service",
                ),
                Kind::WriteTwin | Kind::InvokeMethod => {
                    ("ServiceConnect", "service or iothubowner", "service")
                }
                Kind::WriteJob | Kind::WriteRollout => (
                    "ServiceConnect or RegistryWrite",
                    "service, registryReadWrite or iothubowner",
                    "service",
                ),
                Kind::ReadConfiguration => (
                    "RegistryRead or ServiceConnect",
                    "registryRead, service or iothubowner",
                    "registryRead",
                ),
                Kind::WriteConfiguration | Kind::WriteFirmware => (
                    "RegistryWrite",
                    "registryReadWrite or iothubowner",
                    "registryReadWrite",
                ),
                Kind::ReadFirmware | Kind::ReadRouting => (
                    "RegistryRead",
                    "registryRead, registryReadWrite or iothubowner",
                    "registryRead",
                ),
                Kind::WriteRouting => (
                    "RegistryWrite",
                    "registryReadWrite or iothubowner",
                    "registryReadWrite",
                ),
                Kind::GrantFirmware | Kind::ReadEvents | Kind::CloudToDevice => {
                    ("ServiceConnect", "service or iothubowner", "service")
                }
                Kind::WritePolicy => ("every right", "iothubowner", "iothubowner"),
            };
            format!(
                "policy {} may not {} ({with_message}): use the connection string of a policy with {right} ({policies}), e.g. `fleethub connection-string --policy {suggestion}` for a local hub",
                hub.policy, operation.action
            )
        }
        _ if status == 404 && operation.kind == Kind::WatchChanges => format!(
            "{} has no change stream ({with_message}): `twin watch` needs a fleethub hub recent enough to serve GET /changes",
            hub.host()
        ),
        _ if status == 404 && operation.kind == Kind::ReadEvents => format!(
            "{} has no event stream ({with_message}): `monitor-events` needs a fleethub hub recent enough to serve GET /events (Azure IoT Hub serves events on its Event Hubs-compatible endpoint: use `az iot hub monitor-events` there)",
            hub.host()
        ),
        _ if status == 404 && operation.kind == Kind::WatchJob => format!(
            "{} has no change stream ({with_message}): --watch needs a fleethub hub recent enough to serve GET /changes; leave it out and look with `fleethub job show {}`",
            hub.host(),
            operation.job_text()
        ),
        _ if status == 400 => {
            format!(
                "the hub rejected the request to {} ({with_message})",
                operation.action
            )
        }
        _ => format!("cannot {} ({with_message})", operation.action),
    }
}

/// `404001 DeviceNotFound`, or the status with whatever the hub reported when the code is not a known one.
fn code_text(status: u16, code: &ReportedErrorCode) -> String {
    match code {
        ReportedErrorCode::Known(code) => format!("{} {}", code.numeric(), code.name()),
        ReportedErrorCode::UnknownName(name) => format!("{status} {name}"),
        ReportedErrorCode::UnknownNumber(number) => number.to_string(),
        ReportedErrorCode::Missing => format!("HTTP {status}"),
    }
}

/// The innermost error's message: "Connection refused (os error 111)" rather than reqwest's layers.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// `host` without a `:port` (IPv6 literals keep their colons).
pub(crate) fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|byte| byte.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_as_number_and_name() {
        assert_eq!(
            code_text(404, &ReportedErrorCode::Known(ErrorCode::DeviceNotOnline)),
            "404103 DeviceNotOnline"
        );
        assert_eq!(
            code_text(409, &ReportedErrorCode::UnknownName("New".to_owned())),
            "409 New"
        );
        assert_eq!(
            code_text(400, &ReportedErrorCode::UnknownNumber(400999)),
            "400999"
        );
        assert_eq!(code_text(502, &ReportedErrorCode::Missing), "HTTP 502");
    }

    #[test]
    fn ports_are_dropped_from_host_names() {
        for (input, expected) in [
            ("localhost:8443", "localhost"),
            ("hub.example", "hub.example"),
            ("[::1]:8443", "[::1]"),
            ("127.0.0.1:443", "127.0.0.1"),
            ("::1", "::1"),
        ] {
            assert_eq!(host_without_port(input), expected, "{input}");
        }
    }
}
