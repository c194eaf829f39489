//! The one table from IoT Hub error kind to wire: numeric code, `iothub-errorcode` name, HTTP status, and
//! the JSON error bodies Azure returns, plus a parser for those bodies (used by our service SDK).
//!
//! Sources (details and examples in `docs/azure-errors.md`):
//! - the code table: Azure docs "Troubleshoot Azure IoT Hub error codes"
//!   (articles/iot-hub/troubleshoot-error-codes.md, ms.date 01/06/2026), cross-checked with the C# service
//!   SDK (`iothub/service/src/Exceptions/ErrorCode.cs`, `IotHubServiceErrorCode.cs`);
//! - body shapes: C# `ExceptionHandlingHelper.cs` (reads `Message`, then a JSON `errorCode` inside it, then
//!   the `iothub-errorcode` header), Node `azure-iothub/dist/common-http/http.js` `parseErrorBody` (splits
//!   `Message` as `ErrorCode:<Name>;<message>`), Java `IotHubExceptionManager` and its tests, and the
//!   Java SDK's documented direct-method failure body.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::rest::format_time;

/// The response header that carries [`ErrorCode::name`].
pub const ERROR_CODE_HEADER: &str = "iothub-errorcode";

macro_rules! error_codes {
    ($($variant:ident = $numeric:literal,)*) => {
        /// IoT Hub error codes. The variant name is the `iothub-errorcode` header value; the numeric code is
        /// six digits whose first three are the HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The six-digit code (`404001`).
            pub fn numeric(self) -> u32 {
                match self {
                    $(ErrorCode::$variant => $numeric,)*
                }
            }

            /// The name sent in the `iothub-errorcode` header and in `ErrorCode:<Name>;` messages.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

error_codes! {
    GenericBadRequest = 400000,
    InvalidProtocolVersion = 400001,
    DeviceInvalidResultCount = 400002,
    InvalidOperation = 400003,
    ArgumentInvalid = 400004,
    ArgumentNull = 400005,
    IotHubFormatError = 400006,
    DeviceStorageEntitySerializationError = 400007,
    BlobContainerValidationError = 400008,
    ImportWarningExistsError = 400009,
    InvalidSchemaVersion = 400010,
    DeviceDefinedMultipleTimes = 400011,
    DeserializationError = 400012,
    BulkRegistryOperationFailure = 400013,
    DefaultStorageEndpointNotConfigured = 400014,
    InvalidFileUploadCorrelationId = 400015,
    ExpiredFileUploadCorrelationId = 400016,
    InvalidStorageEndpoint = 400017,
    InvalidMessagingEndpoint = 400018,
    InvalidFileUploadCompletionStatus = 400019,
    InvalidStorageEndpointOrBlob = 400020,
    RequestCanceled = 400021,
    InvalidStorageEndpointProperty = 400022,
    EtagDoesNotMatch = 400023,
    RequestTimedOut = 400024,
    UnsupportedOperationOnReplica = 400025,
    NullMessage = 400026,
    ConnectionForcefullyClosedOnNewConnection = 400027,
    InvalidDeviceScope = 400028,
    ConnectionForcefullyClosedOnFaultInjection = 400029,
    ConnectionRejectedOnFaultInjection = 400030,
    InvalidEndpointAuthenticationType = 400031,
    ManagedIdentityNotEnabled = 400032,
    InvalidPolicyKey = 400035,
    BulkRegenerateDeviceKeyOperationFailure = 400036,
    InvalidRouteTestInput = 400100,
    InvalidSourceOnRoute = 400101,
    RoutingNotEnabled = 400102,
    InvalidContentEncodingOrType = 400103,
    CannotRegisterModuleToModule = 400301,
    TenantHubRoutingNotEnabled = 400302,
    InvalidConfigurationTargetCondition = 400401,
    InvalidConfigurationContent = 400402,
    CannotModifyImmutableConfigurationContent = 400403,
    InvalidConfigurationCustomMetricsQuery = 400404,
    InvalidPnPInterfaceDefinition = 400501,
    InvalidPnPDesiredProperties = 400502,
    InvalidPnPReportedProperties = 400503,
    InvalidPnPWritableReportedProperties = 400504,
    InvalidDigitalTwinJsonPatch = 400505,
    InvalidDigitalTwinPayload = 400506,
    InvalidDigitalTwinPatch = 400507,
    InvalidDigitalTwinPatchPath = 400508,
    GenericUnauthorized = 401000,
    IotHubNotFound = 401001,
    IotHubUnauthorizedAccess = 401002,
    IotHubUnauthorized = 401003,
    ElasticPoolNotFound = 401004,
    SystemModuleModifyUnauthorizedAccess = 401100,
    GenericForbidden = 403000,
    IotHubSuspended = 403001,
    IotHubQuotaExceeded = 403002,
    JobQuotaExceeded = 403003,
    DeviceMaximumQueueDepthExceeded = 403004,
    IotHubMaxCbsTokenExceeded = 403005,
    DeviceMaximumActiveFileUploadLimitExceeded = 403006,
    DeviceMaximumQueueSizeExceeded = 403007,
    RoutingEndpointResponseForbidden = 403008,
    InvalidMessageExpiryTime = 403009,
    OperationNotAvailableInCurrentTier = 403010,
    KeyEncryptionKeyRevoked = 403011,
    DeviceDisabled = 403012,
    DeviceModelMaxPropertiesExceeded = 403100,
    DeviceModelMaxIndexablePropertiesExceeded = 403101,
    DeviceMaximumInflightMethodExceeded = 403800,
    GenericNotFound = 404000,
    DeviceNotFound = 404001,
    JobNotFound = 404002,
    QuotaMetricNotFound = 404004,
    SystemPropertyNotFound = 404005,
    AmqpAddressNotFound = 404006,
    RoutingEndpointResponseNotFound = 404007,
    CertificateNotFound = 404008,
    ElasticPoolTenantHubNotFound = 404009,
    ModuleNotFound = 404010,
    AzureTableStoreNotFound = 404011,
    IotHubFailingOver = 404012,
    FeatureNotSupported = 404013,
    DigitalTwinInterfaceNotFound = 404014,
    QueryStoreClusterNotFound = 404101,
    DeviceNotOnline = 404103,
    DeviceConnectionClosedRemotely = 404104,
    ConfigurationNotFound = 404301,
    GroupNotFound = 404302,
    DigitalTwinModelNotFound = 404401,
    InterfaceNameModelNotFound = 404402,
    GenericMethodNotAllowed = 405000,
    OperationNotAllowedInCurrentState = 405102,
    ImportDevicesNotSupported = 405103,
    BulkAddDevicesNotSupported = 405104,
    GenericConflict = 409000,
    DeviceAlreadyExists = 409001,
    LinkCreationConflict = 409002,
    CallbackSubscriptionConflict = 409003,
    ModelAlreadyExists = 409101,
    DeviceLocked = 409102,
    DeviceJobAlreadyExists = 409103,
    JobAlreadyExists = 409104,
    ModuleAlreadyExistsOnDevice = 409301,
    ConfigurationAlreadyExists = 409401,
    ApplyConfigurationAlreadyInProgressOnDevice = 409402,
    DigitalTwinModelAlreadyExists = 409501,
    DigitalTwinModelExistsWithOtherModelType = 409502,
    InterfaceNameModelAlreadyExists = 409503,
    GenericPreconditionFailed = 412000,
    PreconditionFailed = 412001,
    DeviceMessageLockLost = 412002,
    JobRunPreconditionFailed = 412003,
    InflightMessagesInLink = 412004,
    GenericRequestEntityTooLarge = 413000,
    MessageTooLarge = 413001,
    TooManyDevices = 413002,
    TooManyModulesOnDevice = 413003,
    ConfigurationCountLimitExceeded = 413101,
    DigitalTwinModelCountLimitExceeded = 413201,
    InterfaceNameCompressionModelCountLimitExceeded = 413202,
    GenericUnsupportedMediaType = 415000,
    IncompatibleDataType = 415101,
    GenericTooManyRequests = 429000,
    ThrottlingException = 429001,
    ThrottleBacklogLimitExceeded = 429002,
    ThrottlingBacklogTimeout = 429003,
    ThrottlingMaxActiveJobCountExceeded = 429004,
    DeviceThrottlingLimitExceeded = 429005,
    ClientClosedRequest = 499000,
    ServerError = 500001,
    JobCancelled = 500002,
    GenericTimeout = 500008,
    ModelRepoEndpointError = 500301,
    ResolutionError = 500302,
    UnableToFetchCredentials = 500401,
    UnableToFetchTenantInfo = 500402,
    UnableToShareIdentity = 500403,
    UnableToExpandDiscoveryInfo = 500501,
    UnableToExpandComponentInfo = 500502,
    UnableToCompressComponentInfo = 500503,
    UnableToCompressDiscoveryInfo = 500504,
    OrphanDiscoveryDocument = 500505,
    GenericBadGateway = 502000,
    GenericServiceUnavailable = 503000,
    ServiceUnavailable = 503001,
    PartitionNotFound = 503003,
    IotHubActivationFailed = 503004,
    ServerBusy = 503005,
    IotHubRestoring = 503006,
    ReceiveLinkOpensThrottled = 503008,
    ConnectionUnavailable = 503101,
    DeviceUnavailable = 503102,
    ConfigurationNotAvailable = 503201,
    GroupNotAvailable = 503202,
    HostingServiceNotAvailable = 503301,
    GenericGatewayTimeout = 504000,
    GatewayTimeout = 504101,
}

impl ErrorCode {
    /// The HTTP status that goes with the code: its first three digits.
    pub fn http_status(self) -> u16 {
        // Every numeric code in the table is six digits, so the quotient is 400..=504.
        u16::try_from(self.numeric() / 1000).expect("six-digit codes have a three-digit status")
    }

    pub fn from_numeric(numeric: u32) -> Option<ErrorCode> {
        Self::ALL
            .iter()
            .copied()
            .find(|code| code.numeric() == numeric)
    }

    /// Exact, case-sensitive lookup of an `iothub-errorcode` name.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|code| code.name() == name)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}", self.numeric(), self.name())
    }
}

/// Azure's older registry envelope: `{"Message":"ErrorCode:DeviceNotFound;...","ExceptionMessage":"Tracking ID:...-TimeStamp:..."}`.
/// Also the outer envelope of direct-method errors, whose `Message` is a JSON-encoded [`NumericErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryErrorBody {
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "ExceptionMessage", default)]
    pub exception_message: String,
}

/// Azure's newer envelope: `{"errorCode":404103,"trackingId":"...","message":"...","info":{},"timestampUtc":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NumericErrorBody {
    pub error_code: u32,
    #[serde(default)]
    pub tracking_id: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub info: Value,
    #[serde(default)]
    pub timestamp_utc: String,
}

impl NumericErrorBody {
    pub fn new(
        code: ErrorCode,
        message: &str,
        tracking_id: &str,
        timestamp: OffsetDateTime,
    ) -> Self {
        NumericErrorBody {
            error_code: code.numeric(),
            tracking_id: tracking_id.to_owned(),
            message: message.to_owned(),
            info: Value::Object(Map::new()),
            timestamp_utc: format_timestamp_utc(timestamp),
        }
    }

    /// Sets `info` (Azure puts details there, e.g. `{"timeout":"00:00:10"}` for 404103).
    pub fn with_info(mut self, info: Value) -> Self {
        self.info = info;
        self
    }
}

/// `timestampUtc` as Azure writes it: .NET's round-trip form with trailing fractional zeros dropped
/// (`2022-09-12T21:59:47.99936Z` in a response quoted by the C# SDK's tests, `...46.5615872Z` in the Java
/// SDK's sample, `...:19Z` for a whole second).
fn format_timestamp_utc(timestamp: OffsetDateTime) -> String {
    let seven_digits = format_time(timestamp);
    match seven_digits
        .strip_suffix('Z')
        .and_then(|without_zone| without_zone.split_once('.'))
    {
        Some((seconds, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                format!("{seconds}Z")
            } else {
                format!("{seconds}.{fraction}Z")
            }
        }
        None => seven_digits,
    }
}

/// An error body in one of the shapes Azure uses. Serialises to exactly Azure's JSON (field order
/// included); deserialises either shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorBody {
    Registry(RegistryErrorBody),
    Numeric(NumericErrorBody),
}

impl ErrorBody {
    /// The registry/twin/configuration/job shape. `timestamp` is written like .NET's invariant short
    /// form, `MM/dd/yyyy HH:mm:ss`, as in Azure's `Tracking ID:...-TimeStamp:12/14/2016 03:15:17`.
    pub fn registry_style(
        code: ErrorCode,
        message: &str,
        tracking_id: &str,
        timestamp: OffsetDateTime,
    ) -> ErrorBody {
        let utc = timestamp.to_offset(time::UtcOffset::UTC);
        ErrorBody::Registry(RegistryErrorBody {
            message: format!("ErrorCode:{};{message}", code.name()),
            exception_message: format!(
                "Tracking ID:{tracking_id}-TimeStamp:{:02}/{:02}/{:04} {:02}:{:02}:{:02}",
                u8::from(utc.month()),
                utc.day(),
                utc.year(),
                utc.hour(),
                utc.minute(),
                utc.second()
            ),
        })
    }

    /// The flat numeric shape. Use it for the body of MQTT twin error responses (the Node device SDK fails
    /// a twin request only when the body has an `errorCode`), **not** as a REST response body: the C# service
    /// SDK reads `Message` first and does not survive a body without it; REST errors from "newer" endpoints
    /// use [`ErrorBody::nested_numeric_style`].
    pub fn numeric_style(
        code: ErrorCode,
        message: &str,
        tracking_id: &str,
        timestamp: OffsetDateTime,
    ) -> ErrorBody {
        ErrorBody::Numeric(NumericErrorBody::new(code, message, tracking_id, timestamp))
    }

    /// The direct-method shape: the numeric body JSON-encoded into `Message` of the registry envelope,
    /// with an empty `ExceptionMessage` (the C# SDK's tests quote such a 404103 as a real response; the
    /// Java SDK's sample shows the same).
    pub fn nested_numeric_style(numeric: &NumericErrorBody) -> ErrorBody {
        ErrorBody::Registry(RegistryErrorBody {
            message: serde_json::to_string(numeric)
                .expect("a struct of strings and json values always serialises"),
            exception_message: String::new(),
        })
    }

    /// The JSON text to send.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings and json values always serialises")
    }
}

/// The error code a service response reported, as far as it could be recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedErrorCode {
    Known(ErrorCode),
    UnknownName(String),
    UnknownNumber(u32),
    Missing,
}

/// What [`parse_error_response`] could read from an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedErrorResponse {
    pub code: ReportedErrorCode,
    /// The human-readable message (the raw body when it has no recognised shape).
    pub message: String,
    pub tracking_id: Option<String>,
}

/// Reads an IoT Hub error response: the `iothub-errorcode` header (if any) and the body in any of the
/// three shapes (registry, numeric, numeric nested in registry), or something else entirely (plain text,
/// empty). Never fails. A numeric code from the body wins over the header name, which wins over a name in
/// the body; unrecognised codes are kept as [`ReportedErrorCode::UnknownNumber`] / `UnknownName`.
pub fn parse_error_response(
    iothub_errorcode_header: Option<&str>,
    body: &str,
) -> ParsedErrorResponse {
    let mut body_number = None;
    let mut body_name = None;
    let mut message = body.trim().to_owned();
    let mut tracking_id = None;

    if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(body) {
        if let Some(numeric) = read_numeric(&object) {
            body_number = Some(numeric.number);
            message = numeric.message;
            tracking_id = numeric.tracking_id;
        } else if let Some(outer) = object.get("Message").and_then(Value::as_str) {
            let nested = match serde_json::from_str::<Value>(outer) {
                Ok(Value::Object(inner)) => read_numeric(&inner),
                _ => None,
            };
            if let Some(numeric) = nested {
                body_number = Some(numeric.number);
                message = numeric.message;
                tracking_id = numeric.tracking_id;
            } else {
                match outer.strip_prefix("ErrorCode:") {
                    Some(rest) => {
                        let (name, text) = rest.split_once(';').unwrap_or((rest, ""));
                        body_name = Some(name.trim().to_owned());
                        message = text.to_owned();
                    }
                    None => message = outer.to_owned(),
                }
                tracking_id = object
                    .get("ExceptionMessage")
                    .and_then(Value::as_str)
                    .and_then(tracking_id_from_exception_message);
            }
        }
    }

    let header_name = iothub_errorcode_header
        .map(str::trim)
        .filter(|name| !name.is_empty());
    let known_number = body_number.and_then(ErrorCode::from_numeric);
    let known_header = header_name.and_then(ErrorCode::from_name);
    let known_body_name = body_name.as_deref().and_then(ErrorCode::from_name);
    let code = if let Some(code) = known_number.or(known_header).or(known_body_name) {
        ReportedErrorCode::Known(code)
    } else if let Some(number) = body_number {
        ReportedErrorCode::UnknownNumber(number)
    } else if let Some(name) = header_name
        .map(str::to_owned)
        .or(body_name)
        .filter(|name| !name.is_empty())
    {
        ReportedErrorCode::UnknownName(name)
    } else {
        ReportedErrorCode::Missing
    };
    ParsedErrorResponse {
        code,
        message,
        tracking_id,
    }
}

struct NumericFields {
    number: u32,
    message: String,
    tracking_id: Option<String>,
}

/// `errorCode` as a number or numeric string, with `message` (or `Message`) and `trackingId`.
fn read_numeric(object: &Map<String, Value>) -> Option<NumericFields> {
    let number = match object.get("errorCode")? {
        Value::Number(number) => number
            .as_u64()
            .and_then(|number| u32::try_from(number).ok())?,
        Value::String(text) => text.trim().parse().ok()?,
        _ => return None,
    };
    let message = object
        .get("message")
        .or_else(|| object.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let tracking_id = object
        .get("trackingId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(NumericFields {
        number,
        message,
        tracking_id,
    })
}

/// `Tracking ID:<id>-TimeStamp:<time>` → `<id>`.
fn tracking_id_from_exception_message(exception_message: &str) -> Option<String> {
    let rest = exception_message.strip_prefix("Tracking ID:")?;
    let id = rest.rfind("-TimeStamp:").map_or(rest, |end| &rest[..end]);
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn code_table_spot_checks() {
        let cases = [
            (ErrorCode::ArgumentInvalid, 400004, 400, "ArgumentInvalid"),
            (
                ErrorCode::InvalidProtocolVersion,
                400001,
                400,
                "InvalidProtocolVersion",
            ),
            (
                ErrorCode::IotHubUnauthorizedAccess,
                401002,
                401,
                "IotHubUnauthorizedAccess",
            ),
            (
                ErrorCode::IotHubUnauthorized,
                401003,
                401,
                "IotHubUnauthorized",
            ),
            (ErrorCode::DeviceNotFound, 404001, 404, "DeviceNotFound"),
            (ErrorCode::ModuleNotFound, 404010, 404, "ModuleNotFound"),
            (ErrorCode::DeviceNotOnline, 404103, 404, "DeviceNotOnline"),
            (
                ErrorCode::DeviceAlreadyExists,
                409001,
                409,
                "DeviceAlreadyExists",
            ),
            (
                ErrorCode::ModuleAlreadyExistsOnDevice,
                409301,
                409,
                "ModuleAlreadyExistsOnDevice",
            ),
            (
                ErrorCode::PreconditionFailed,
                412001,
                412,
                "PreconditionFailed",
            ),
            (
                ErrorCode::DeviceMessageLockLost,
                412002,
                412,
                "DeviceMessageLockLost",
            ),
            (ErrorCode::MessageTooLarge, 413001, 413, "MessageTooLarge"),
            (
                ErrorCode::GenericRequestEntityTooLarge,
                413000,
                413,
                "GenericRequestEntityTooLarge",
            ),
            (
                ErrorCode::ThrottlingException,
                429001,
                429,
                "ThrottlingException",
            ),
            (
                ErrorCode::ClientClosedRequest,
                499000,
                499,
                "ClientClosedRequest",
            ),
            (ErrorCode::ServerError, 500001, 500, "ServerError"),
            (
                ErrorCode::ServiceUnavailable,
                503001,
                503,
                "ServiceUnavailable",
            ),
            (ErrorCode::GatewayTimeout, 504101, 504, "GatewayTimeout"),
        ];
        for (code, numeric, status, name) in cases {
            assert_eq!(
                (code.numeric(), code.http_status(), code.name()),
                (numeric, status, name),
                "{code:?}"
            );
            assert_eq!(ErrorCode::from_numeric(numeric), Some(code));
            assert_eq!(ErrorCode::from_name(name), Some(code));
        }
        assert_eq!(ErrorCode::from_numeric(404102), None);
        assert_eq!(ErrorCode::from_name("devicenotfound"), None);
    }

    #[test]
    fn code_table_is_consistent() {
        let mut previous = 0;
        for code in ErrorCode::ALL {
            let numeric = code.numeric();
            assert!(numeric > previous, "{code:?} is out of order or duplicated");
            previous = numeric;
            assert!(
                (100_000..1_000_000).contains(&numeric),
                "{code:?} is not six digits"
            );
            assert_eq!(
                ErrorCode::from_name(code.name()),
                Some(*code),
                "names are unique"
            );
            assert!(matches!(
                code.http_status(),
                400 | 401
                    | 403
                    | 404
                    | 405
                    | 409
                    | 412
                    | 413
                    | 415
                    | 429
                    | 499
                    | 500
                    | 502
                    | 503
                    | 504
            ));
        }
    }

    #[test]
    fn timestamp_utc_drops_trailing_zeros() {
        let cases = [
            (
                datetime!(2022-09-12 21:59:47.99936 UTC),
                "2022-09-12T21:59:47.99936Z",
            ),
            (
                datetime!(2019-11-12 22:27:46.5615872 UTC),
                "2019-11-12T22:27:46.5615872Z",
            ),
            (datetime!(2026-08-15 09:09:19 UTC), "2026-08-15T09:09:19Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(format_timestamp_utc(input), expected);
        }
    }

    #[test]
    fn registry_style_serialises_like_azure() {
        let body = ErrorBody::registry_style(
            ErrorCode::DeviceNotFound,
            "Device dev1 not registered",
            "a6ee0e8a1cc44ea1b6d4b25c5a5e2a8b-G:0",
            datetime!(2016-12-14 03:15:17.25 UTC),
        );
        assert_eq!(
            body.to_json(),
            r#"{"Message":"ErrorCode:DeviceNotFound;Device dev1 not registered","ExceptionMessage":"Tracking ID:a6ee0e8a1cc44ea1b6d4b25c5a5e2a8b-G:0-TimeStamp:12/14/2016 03:15:17"}"#
        );
    }

    #[test]
    fn numeric_styles_serialise_like_azure() {
        let numeric = NumericErrorBody::new(
            ErrorCode::DeviceNotOnline,
            "Timed out waiting for device to connect.",
            "t1",
            datetime!(2019-11-12 22:27:46.5615872 UTC),
        )
        .with_info(json!({"timeout": "00:00:00"}));
        assert_eq!(
            ErrorBody::Numeric(numeric.clone()).to_json(),
            r#"{"errorCode":404103,"trackingId":"t1","message":"Timed out waiting for device to connect.","info":{"timeout":"00:00:00"},"timestampUtc":"2019-11-12T22:27:46.5615872Z"}"#
        );
        // The Java SDK's sample shows this nesting for a direct method to an offline device.
        assert_eq!(
            ErrorBody::nested_numeric_style(&numeric).to_json(),
            r#"{"Message":"{\"errorCode\":404103,\"trackingId\":\"t1\",\"message\":\"Timed out waiting for device to connect.\",\"info\":{\"timeout\":\"00:00:00\"},\"timestampUtc\":\"2019-11-12T22:27:46.5615872Z\"}","ExceptionMessage":""}"#
        );
        assert_eq!(
            ErrorBody::numeric_style(
                ErrorCode::ArgumentInvalid,
                "bad",
                "t2",
                datetime!(2024-05-01 10:00 UTC)
            )
            .to_json(),
            r#"{"errorCode":400004,"trackingId":"t2","message":"bad","info":{},"timestampUtc":"2024-05-01T10:00:00Z"}"#
        );
    }

    #[test]
    fn error_bodies_deserialise_into_the_right_shape() {
        let registry: ErrorBody =
            serde_json::from_str(r#"{"Message":"ErrorCode:X;y"}"#).expect("parses");
        assert_eq!(
            registry,
            ErrorBody::Registry(RegistryErrorBody {
                message: "ErrorCode:X;y".to_owned(),
                exception_message: String::new()
            })
        );
        let numeric: ErrorBody =
            serde_json::from_str(r#"{"errorCode":409301,"message":"m"}"#).expect("parses");
        assert!(matches!(
            numeric,
            ErrorBody::Numeric(NumericErrorBody {
                error_code: 409301,
                ..
            })
        ));
    }

    #[test]
    fn parse_error_response_table() {
        let known = ReportedErrorCode::Known;
        let parsed = |code, message: &str, tracking_id: Option<&str>| ParsedErrorResponse {
            code,
            message: message.to_owned(),
            tracking_id: tracking_id.map(str::to_owned),
        };
        let cases: Vec<(Option<&str>, &str, ParsedErrorResponse)> = vec![
            // Java SDK tests: registry envelope.
            (
                None,
                r#"{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":"Tracking ID:(tracking id)-TimeStamp:12/14/2016 03:15:17"}"#,
                parsed(
                    known(ErrorCode::IotHubUnauthorizedAccess),
                    "Unauthorized",
                    Some("(tracking id)"),
                ),
            ),
            (
                Some("DeviceAlreadyExists"),
                r#"{"Message":"ErrorCode:DeviceAlreadyExists;A device with ID 'd' is already registered.","ExceptionMessage":"Tracking ID:28F7-G2:-TimeStamp:2026-08-15T09:07:36Z"}"#,
                parsed(
                    known(ErrorCode::DeviceAlreadyExists),
                    "A device with ID 'd' is already registered.",
                    Some("28F7-G2:"),
                ),
            ),
            // Java SDK sample: direct method to an offline device (numeric nested in the registry envelope).
            (
                Some("DeviceNotOnline"),
                r#"{"Message":"{\"errorCode\":404103,\"trackingId\":\"XXXX-TimeStamp:1/1/1019 23:27:46\",\"message\":\"Timed out waiting for device to connect.\",\"info\":{\"timeout\":\"00:00:00\"},\"timestampUtc\":\"2019-11-12T22:27:46.5615872Z\"}","ExceptionMessage":""}"#,
                parsed(
                    known(ErrorCode::DeviceNotOnline),
                    "Timed out waiting for device to connect.",
                    Some("XXXX-TimeStamp:1/1/1019 23:27:46"),
                ),
            ),
            // The C# SDK's tests quote these as real responses (ExceptionHandlingHelperTests.cs).
            (
                Some("DeviceNotOnline"),
                r#"{"Message":"{\"errorCode\":404103,\"trackingId\":\"b575211ff5194d56b18721941e82c3d5\",\"message\":\"The operation failed because the requested device isn't online or hasn't registered the direct method callback.\",\"info\":{},\"timestampUtc\":\"2022-09-12T21:59:47.99936Z\"}"}"#,
                parsed(
                    known(ErrorCode::DeviceNotOnline),
                    "The operation failed because the requested device isn't online or hasn't registered the direct method callback.",
                    Some("b575211ff5194d56b18721941e82c3d5"),
                ),
            ),
            (
                Some("PreconditionFailed"),
                r#"{"Message":"ErrorCode:PreconditionFailed;Precondition failed: Device version did not match, existingVersion:957482805 newVersion:957482804"}"#,
                parsed(
                    known(ErrorCode::PreconditionFailed),
                    "Precondition failed: Device version did not match, existingVersion:957482805 newVersion:957482804",
                    None,
                ),
            ),
            // Flat numeric envelope.
            (
                Some("ModuleAlreadyExistsOnDevice"),
                r#"{"errorCode":409301,"message":"Device d already contains Module m.","trackingId":"985A","timestampUtc":"2026-08-15T09:09:19Z"}"#,
                parsed(
                    known(ErrorCode::ModuleAlreadyExistsOnDevice),
                    "Device d already contains Module m.",
                    Some("985A"),
                ),
            ),
            // MQTT twin error body as the PROTOCOL.md capture used it.
            (
                None,
                r#"{"errorCode": 400004, "message": "bad"}"#,
                parsed(known(ErrorCode::ArgumentInvalid), "bad", None),
            ),
            (
                None,
                r#"{"errorCode": "404001", "Message": "gone"}"#,
                parsed(known(ErrorCode::DeviceNotFound), "gone", None),
            ),
            // Unknown codes are kept.
            (
                None,
                r#"{"errorCode": 404999, "message": "new"}"#,
                parsed(ReportedErrorCode::UnknownNumber(404999), "new", None),
            ),
            (
                None,
                r#"{"Message":"ErrorCode:BrandNewThing;details"}"#,
                parsed(
                    ReportedErrorCode::UnknownName("BrandNewThing".to_owned()),
                    "details",
                    None,
                ),
            ),
            (
                Some("BrandNewThing"),
                "",
                parsed(
                    ReportedErrorCode::UnknownName("BrandNewThing".to_owned()),
                    "",
                    None,
                ),
            ),
            // Header only / body only / nothing.
            (
                Some("PreconditionFailed"),
                "plain text failure",
                parsed(
                    known(ErrorCode::PreconditionFailed),
                    "plain text failure",
                    None,
                ),
            ),
            (
                None,
                r#"{"Message":"no code here"}"#,
                parsed(ReportedErrorCode::Missing, "no code here", None),
            ),
            (None, "", parsed(ReportedErrorCode::Missing, "", None)),
            (
                None,
                "[1,2]",
                parsed(ReportedErrorCode::Missing, "[1,2]", None),
            ),
            // The body's number wins over a disagreeing header.
            (
                Some("DeviceNotFound"),
                r#"{"errorCode":404103,"message":"m"}"#,
                parsed(known(ErrorCode::DeviceNotOnline), "m", None),
            ),
        ];
        for (header, body, expected) in cases {
            assert_eq!(
                parse_error_response(header, body),
                expected,
                "header {header:?}, body {body:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn our_bodies_parse_back_to_their_code(index in 0..ErrorCode::ALL.len(), message in "[^;]{0,40}", tracking_id in "[A-Za-z0-9:-]{1,20}") {
            let code = ErrorCode::ALL[index];
            let now = datetime!(2024-05-01 10:00 UTC);
            let numeric = NumericErrorBody::new(code, &message, &tracking_id, now);
            for body in [
                ErrorBody::registry_style(code, &message, &tracking_id, now),
                ErrorBody::numeric_style(code, &message, &tracking_id, now),
                ErrorBody::nested_numeric_style(&numeric),
            ] {
                let parsed = parse_error_response(None, &body.to_json());
                proptest::prop_assert_eq!(parsed.code, ReportedErrorCode::Known(code));
                proptest::prop_assert_eq!(&parsed.message, &message);
                proptest::prop_assert_eq!(parsed.tracking_id.as_deref(), Some(tracking_id.as_str()));
            }
        }

        #[test]
        fn parsing_arbitrary_bodies_never_panics(header in proptest::option::of("\\PC{0,20}"), body in "\\PC{0,120}") {
            let _ = parse_error_response(header.as_deref(), &body);
        }
    }
}
