//! The REST edge's one table from failures to HTTP: status code, `iothub-errorcode` header and the JSON
//! body Azure returns for that endpoint family (see docs/azure-errors.md).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleethub_core::configuration::ConfigurationError;
use fleethub_protocol::errors::{ErrorBody, ErrorCode, NumericErrorBody};
use fleethub_store::StoreError;
use time::OffsetDateTime;

use crate::auth::ServiceAuthError;
use crate::configurations::ConfigurationRequestError;
use crate::services::InvokeMethodError;

/// Which body shape an endpoint family uses for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyShape {
    /// Registry and twin endpoints: `{"Message": "ErrorCode:Name;text", "ExceptionMessage": "Tracking ID:..."}`.
    Registry,
    /// Direct methods: the numeric body (`{"errorCode": 404103, "trackingId": ..., "message": ...}`) encoded as
    /// JSON text inside `Message` of the registry envelope, as Azure answers them.
    Numeric,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub shape: BodyShape,
    /// The HTTP status when it is not the code's own (Azure's table has no code for 416, which the
    /// firmware download answers).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            shape: BodyShape::Registry,
            status: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn numeric(mut self) -> Self {
        self.shape = BodyShape::Numeric;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let tracking_id = tracking_id();
        let now = OffsetDateTime::now_utc();
        let body = match self.shape {
            BodyShape::Registry => {
                ErrorBody::registry_style(self.code, &self.message, &tracking_id, now)
            }
            BodyShape::Numeric => ErrorBody::nested_numeric_style(&NumericErrorBody::new(
                self.code,
                &self.message,
                &tracking_id,
                now,
            )),
        };
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        if status.is_server_error() {
            tracing::error!(code = self.code.name(), message = %self.message, %tracking_id, "request failed");
        }
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            "iothub-errorcode",
            HeaderValue::from_static(self.code.name()),
        );
        response
    }
}

/// Azure's tracking ids are opaque hex; ours are random so they can be matched against the log.
fn tracking_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::NotFound(key) if key.module_id.is_some() => {
                ApiError::new(ErrorCode::ModuleNotFound, message)
            }
            StoreError::NotFound(_) | StoreError::ParentNotFound(_) => {
                ApiError::new(ErrorCode::DeviceNotFound, message)
            }
            StoreError::AlreadyExists(key) if key.module_id.is_some() => {
                ApiError::new(ErrorCode::ModuleAlreadyExistsOnDevice, message)
            }
            StoreError::AlreadyExists(_) => ApiError::new(ErrorCode::DeviceAlreadyExists, message),
            StoreError::PreconditionFailed { .. } => {
                ApiError::new(ErrorCode::PreconditionFailed, message)
            }
            StoreError::JobNotFound(_) => ApiError::new(ErrorCode::JobNotFound, message),
            StoreError::JobAlreadyExists(_) => ApiError::new(ErrorCode::JobAlreadyExists, message),
            StoreError::ConfigurationNotFound(_) => {
                ApiError::new(ErrorCode::ConfigurationNotFound, message)
            }
            StoreError::ConfigurationAlreadyExists(_) => {
                ApiError::new(ErrorCode::ConfigurationAlreadyExists, message)
            }
            StoreError::TooManyConfigurations { .. } => {
                ApiError::new(ErrorCode::ConfigurationCountLimitExceeded, message)
            }
            StoreError::Configuration(error) => ApiError::from(error),
            StoreError::ArtifactNotFound { .. } => {
                ApiError::new(ErrorCode::GenericNotFound, message)
            }
            StoreError::ArtifactAlreadyExists { .. } => {
                ApiError::new(ErrorCode::GenericConflict, message)
            }
            StoreError::ArtifactInUse { .. } | StoreError::RolloutAlreadyExists(_) => {
                ApiError::new(ErrorCode::GenericConflict, message)
            }
            StoreError::RolloutNotFound(_) => ApiError::new(ErrorCode::GenericNotFound, message),
            StoreError::C2dQueueFull { .. } => {
                ApiError::new(ErrorCode::DeviceMaximumQueueDepthExceeded, message)
            }
            StoreError::C2dMessageLockLost { .. } | StoreError::FeedbackLockLost(_) => {
                ApiError::new(ErrorCode::DeviceMessageLockLost, message)
            }
            StoreError::Twin(_) | StoreError::IdentitySpec(_) => {
                ApiError::new(ErrorCode::ArgumentInvalid, message)
            }
            StoreError::Incompatible(_) | StoreError::Backend(_) => {
                ApiError::new(ErrorCode::ServerError, message)
            }
        }
    }
}

impl From<ConfigurationRequestError> for ApiError {
    fn from(error: ConfigurationRequestError) -> Self {
        let message = error.to_string();
        match error {
            ConfigurationRequestError::InvalidId(_)
            | ConfigurationRequestError::IdMismatch { .. } => {
                ApiError::new(ErrorCode::ArgumentInvalid, message)
            }
            ConfigurationRequestError::NotFound(_) => {
                ApiError::new(ErrorCode::ConfigurationNotFound, message)
            }
            ConfigurationRequestError::InvalidTargetCondition { .. } => {
                ApiError::new(ErrorCode::InvalidConfigurationTargetCondition, message)
            }
            ConfigurationRequestError::InvalidMetricQuery { .. } => {
                ApiError::new(ErrorCode::InvalidConfigurationCustomMetricsQuery, message)
            }
            ConfigurationRequestError::Rules(error) => ApiError::from(error),
            ConfigurationRequestError::Store(error) => ApiError::from(error),
        }
    }
}

impl From<ConfigurationError> for ApiError {
    fn from(error: ConfigurationError) -> Self {
        let message = error.to_string();
        let code = match error {
            ConfigurationError::InvalidContent(_) => ErrorCode::InvalidConfigurationContent,
            ConfigurationError::ImmutableContent => {
                ErrorCode::CannotModifyImmutableConfigurationContent
            }
            ConfigurationError::TooManyMetrics { .. }
            | ConfigurationError::InvalidMetricName(_) => {
                ErrorCode::InvalidConfigurationCustomMetricsQuery
            }
            ConfigurationError::InvalidId(_)
            | ConfigurationError::InvalidPriority(_)
            | ConfigurationError::InvalidLabel(_) => ErrorCode::ArgumentInvalid,
        };
        ApiError::new(code, message)
    }
}

impl From<crate::throttle::Throttled> for ApiError {
    fn from(error: crate::throttle::Throttled) -> Self {
        ApiError::new(ErrorCode::ThrottlingException, error.to_string())
    }
}

impl From<ServiceAuthError> for ApiError {
    fn from(error: ServiceAuthError) -> Self {
        let message = error.to_string();
        match error {
            ServiceAuthError::Unauthenticated(_) => {
                ApiError::new(ErrorCode::IotHubUnauthorizedAccess, message)
            }
            // 403 for "authenticated but not allowed" (Azure answers 401 for both; see docs/compat.md).
            ServiceAuthError::Forbidden { .. } => {
                ApiError::new(ErrorCode::GenericForbidden, message)
            }
        }
    }
}

impl From<crate::services::RegeneratePolicyKeyError> for ApiError {
    fn from(error: crate::services::RegeneratePolicyKeyError) -> Self {
        use crate::services::RegeneratePolicyKeyError;
        match error {
            RegeneratePolicyKeyError::NotFound(_) => {
                ApiError::new(ErrorCode::GenericNotFound, error.to_string())
            }
            RegeneratePolicyKeyError::Store(error) => error.into(),
        }
    }
}

impl From<InvokeMethodError> for ApiError {
    fn from(error: InvokeMethodError) -> Self {
        let message = error.to_string();
        let code = match error {
            InvokeMethodError::NotFound(key) if key.module_id.is_some() => {
                ErrorCode::ModuleNotFound
            }
            InvokeMethodError::NotFound(_) => ErrorCode::DeviceNotFound,
            InvokeMethodError::NotOnline(_) => ErrorCode::DeviceNotOnline,
            InvokeMethodError::Timeout { .. } => ErrorCode::GatewayTimeout,
            InvokeMethodError::Busy(_) => ErrorCode::ThrottlingException,
            InvokeMethodError::PayloadTooLarge { .. } => ErrorCode::MessageTooLarge,
            InvokeMethodError::InvalidResponse(_) => ErrorCode::GenericBadRequest,
            InvokeMethodError::Store(store) => return ApiError::from(store).numeric(),
        };
        ApiError::new(code, message).numeric()
    }
}

impl From<crate::jobs::CreateJobError> for ApiError {
    fn from(error: crate::jobs::CreateJobError) -> Self {
        match error {
            crate::jobs::CreateJobError::Invalid(message) => ApiError::bad_request(message),
            crate::jobs::CreateJobError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::jobs::ListJobsError> for ApiError {
    fn from(error: crate::jobs::ListJobsError) -> Self {
        let message = error.to_string();
        match error {
            crate::jobs::ListJobsError::BadContinuation(_) => ApiError::bad_request(message),
            crate::jobs::ListJobsError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::artifacts::UploadError> for ApiError {
    fn from(error: crate::artifacts::UploadError) -> Self {
        use crate::artifacts::UploadError;
        let message = error.to_string();
        match error {
            UploadError::Invalid(_) | UploadError::Mismatch(_) | UploadError::Incomplete(_) => {
                ApiError::bad_request(message)
            }
            UploadError::TooLarge { .. } => {
                ApiError::new(ErrorCode::GenericRequestEntityTooLarge, message)
            }
            UploadError::Io(_) => ApiError::new(ErrorCode::ServerError, message),
            UploadError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::artifacts::DeleteArtifactError> for ApiError {
    fn from(error: crate::artifacts::DeleteArtifactError) -> Self {
        use crate::artifacts::DeleteArtifactError;
        let message = error.to_string();
        match error {
            DeleteArtifactError::Invalid(_) => ApiError::bad_request(message),
            DeleteArtifactError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::artifacts::GrantError> for ApiError {
    fn from(error: crate::artifacts::GrantError) -> Self {
        use crate::artifacts::GrantError;
        let message = error.to_string();
        match error {
            GrantError::Invalid(_) => ApiError::bad_request(message),
            GrantError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::artifacts::DownloadError> for ApiError {
    fn from(error: crate::artifacts::DownloadError) -> Self {
        use crate::artifacts::DownloadError;
        let message = error.to_string();
        match error {
            DownloadError::Unauthenticated(_) => {
                ApiError::new(ErrorCode::IotHubUnauthorizedAccess, message)
            }
            DownloadError::NotEntitled(_) => ApiError::new(ErrorCode::GenericForbidden, message),
            DownloadError::DeviceDisabled(_) => ApiError::new(ErrorCode::DeviceDisabled, message),
            DownloadError::Invalid(_) => ApiError::bad_request(message),
            DownloadError::Damaged { .. } => ApiError::new(ErrorCode::ServerError, message),
            DownloadError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::rollouts::CreateRolloutError> for ApiError {
    fn from(error: crate::rollouts::CreateRolloutError) -> Self {
        use crate::rollouts::CreateRolloutError;
        match error {
            CreateRolloutError::Invalid(message) => ApiError::bad_request(message),
            CreateRolloutError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::rollouts::RolloutActionError> for ApiError {
    fn from(error: crate::rollouts::RolloutActionError) -> Self {
        use crate::rollouts::RolloutActionError;
        let message = error.to_string();
        match error {
            RolloutActionError::Conflict { .. } => {
                ApiError::new(ErrorCode::GenericConflict, message)
            }
            RolloutActionError::Stopping { .. } => {
                ApiError::new(ErrorCode::ServiceUnavailable, message)
            }
            RolloutActionError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::c2d::SendC2dError> for ApiError {
    fn from(error: crate::c2d::SendC2dError) -> Self {
        use fleethub_protocol::c2d::C2dRequestError;
        let message = error.to_string();
        match error {
            crate::c2d::SendC2dError::Invalid(invalid) => match invalid {
                C2dRequestError::TooLarge { .. } => {
                    ApiError::new(ErrorCode::MessageTooLarge, message)
                }
                C2dRequestError::ExpiryNotInFuture { .. }
                | C2dRequestError::ExpiryTooFar { .. } => {
                    ApiError::new(ErrorCode::InvalidMessageExpiryTime, message)
                }
                C2dRequestError::BodyTwice
                | C2dRequestError::InvalidBase64 { .. }
                | C2dRequestError::InvalidSystemProperty { .. }
                | C2dRequestError::InvalidPropertyName { .. }
                | C2dRequestError::InvalidPropertyValue { .. }
                | C2dRequestError::ExpiryTwice => ApiError::bad_request(message),
            },
            crate::c2d::SendC2dError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::c2d::DeviceAccessError> for ApiError {
    fn from(error: crate::c2d::DeviceAccessError) -> Self {
        use crate::c2d::DeviceAccessError;
        let message = error.to_string();
        match error {
            DeviceAccessError::Unauthenticated(_) | DeviceAccessError::OtherDevice { .. } => {
                ApiError::new(ErrorCode::IotHubUnauthorizedAccess, message)
            }
            DeviceAccessError::Disabled(_) => ApiError::new(ErrorCode::DeviceDisabled, message),
        }
    }
}

impl From<fleethub_eventlog::ReadError> for ApiError {
    fn from(error: fleethub_eventlog::ReadError) -> Self {
        use fleethub_eventlog::ReadError;
        let message = error.to_string();
        match error {
            ReadError::NoSuchPartition { .. } => ApiError::bad_request(message),
            ReadError::Corrupt { .. } | ReadError::Io(_) => {
                ApiError::new(ErrorCode::ServerError, message)
            }
        }
    }
}

impl From<fleethub_eventlog::CheckpointError> for ApiError {
    fn from(error: fleethub_eventlog::CheckpointError) -> Self {
        use fleethub_eventlog::CheckpointError;
        let message = error.to_string();
        match error {
            CheckpointError::NoSuchPartition { .. } | CheckpointError::BeyondEnd { .. } => {
                ApiError::bad_request(message)
            }
            CheckpointError::Io(_) => ApiError::new(ErrorCode::ServerError, message),
        }
    }
}

impl From<crate::routing::UpdateRoutingError> for ApiError {
    fn from(error: crate::routing::UpdateRoutingError) -> Self {
        use crate::routing::UpdateRoutingError;
        let message = error.to_string();
        match error {
            UpdateRoutingError::Invalid(_) => ApiError::bad_request(message),
            UpdateRoutingError::PreconditionFailed { .. } => {
                ApiError::new(ErrorCode::PreconditionFailed, message)
            }
            UpdateRoutingError::Store(store) => ApiError::from(store),
        }
    }
}

impl From<crate::certificates::CertificateRequestError> for ApiError {
    fn from(error: crate::certificates::CertificateRequestError) -> Self {
        use crate::certificates::CertificateRequestError;
        let message = error.to_string();
        match error {
            CertificateRequestError::Invalid(_) => ApiError::bad_request(message),
            CertificateRequestError::NotFound(_) => {
                ApiError::new(ErrorCode::CertificateNotFound, message)
            }
            CertificateRequestError::PreconditionFailed(_) => {
                ApiError::new(ErrorCode::PreconditionFailed, message)
            }
            CertificateRequestError::Store(error) => ApiError::from(error),
        }
    }
}
