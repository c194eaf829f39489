//! What can go wrong: building a client ([`ConfigError`]) and calling the hub ([`ServiceError`]), and the one
//! place where an HTTP error response becomes a [`ServiceError::Api`].

use std::fmt;
use std::time::Duration;

use fleethub_protocol::connection_string::ConnectionStringError;
use fleethub_protocol::errors::{
    ERROR_CODE_HEADER, ErrorCode, ReportedErrorCode, parse_error_response,
};
use reqwest::header::HeaderMap;

/// Why a [`ServiceClient`](crate::ServiceClient) could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid service connection string")]
    ConnectionString(#[source] ConnectionStringError),
    #[error(
        "HostName {host_name:?} does not make a valid https url (expected a host name, optionally with :port)"
    )]
    HostName { host_name: String },
    #[error("ca_pem is not usable: {reason}")]
    CaPem { reason: String },
    #[error("could not load the system's root certificates (pass the hub's CA in ca_pem instead)")]
    SystemRoots(#[source] rustls::Error),
    #[error("could not set up tls")]
    Tls(#[source] rustls::Error),
    #[error("could not build the http client")]
    HttpClient(#[source] reqwest::Error),
}

/// Why a call to the hub failed.
///
/// Match on the variant to tell "the hub said no" ([`ServiceError::Api`]) from "the hub could not be reached"
/// ([`ServiceError::Transport`], [`ServiceError::Tls`], [`ServiceError::Timeout`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The hub answered with a non-success status. `code` comes from the `iothub-errorcode` header and either
    /// of Azure's error body shapes (see [`fleethub_protocol::errors::parse_error_response`]).
    #[error(
        "the hub answered {status}{}{}",
        DisplayCode(code),
        DisplayMessage(message)
    )]
    Api {
        status: u16,
        code: ReportedErrorCode,
        /// The hub's message (the raw body if it had no recognised shape); may be empty.
        message: String,
        tracking_id: Option<String>,
    },
    /// The TLS handshake failed: most often the hub's certificate is not signed by the CA the client trusts
    /// (wrong or missing `ca_pem`), or it does not name the host in `HostName`.
    #[error("tls handshake with {host} failed")]
    Tls {
        host: String,
        #[source]
        source: rustls::Error,
    },
    /// The request could not be sent or its answer not read (connection refused, reset, DNS, ...).
    #[error("http request to {host} failed")]
    Transport {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer arrived within the request timeout.
    #[error("the hub did not answer within {after:?}")]
    Timeout { after: Duration },
    /// The hub answered with success but the body is not the JSON this call expects.
    #[error("could not read the hub's answer as {what}")]
    Decode {
        what: &'static str,
        /// The start of the body (at most 1 KiB), for debugging.
        body: String,
        #[source]
        source: serde_json::Error,
    },
    /// A local file the call sends (a firmware image) could not be read.
    #[error("cannot read {}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The request could not be built from the arguments (a header value with line breaks, a body that does not
    /// serialise, a path that is not a path).
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
}

impl ServiceError {
    /// The HTTP status of an [`ServiceError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ServiceError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The IoT Hub error code of an [`ServiceError::Api`] error, if the hub reported a known one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            ServiceError::Api {
                code: ReportedErrorCode::Known(code),
                ..
            } => Some(*code),
            _ => None,
        }
    }

    /// Whether the hub could not be reached at all (transport, TLS or timeout), as opposed to having refused
    /// the request. Worth retrying with backoff; an API error mostly is not.
    pub fn is_connectivity(&self) -> bool {
        matches!(
            self,
            ServiceError::Transport { .. }
                | ServiceError::Tls { .. }
                | ServiceError::Timeout { .. }
        )
    }

    /// Builds the [`ServiceError::Api`] for an error response. The one place where HTTP errors are read.
    pub(crate) fn from_error_response(
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ServiceError {
        let header = headers
            .get(ERROR_CODE_HEADER)
            .and_then(|value| value.to_str().ok());
        let parsed = parse_error_response(header, &String::from_utf8_lossy(body));
        ServiceError::Api {
            status,
            code: parsed.code,
            message: parsed.message,
            tracking_id: parsed.tracking_id,
        }
    }

    /// Classifies a reqwest failure: timeout, TLS (a rustls error anywhere in the chain), or other transport.
    pub(crate) fn from_reqwest(
        host: &str,
        timeout: Duration,
        error: reqwest::Error,
    ) -> ServiceError {
        if error.is_timeout() {
            return ServiceError::Timeout { after: timeout };
        }
        if let Some(tls) = find_rustls_error(&error) {
            return ServiceError::Tls {
                host: host.to_owned(),
                source: tls.clone(),
            };
        }
        ServiceError::Transport {
            host: host.to_owned(),
            source: error,
        }
    }
}

/// Walks an error chain looking for a rustls error. `io::Error::source` skips the error it wraps (it returns
/// the *inner* error's source), and tokio-rustls reports handshake failures as an `io::Error` wrapping the
/// `rustls::Error`, so wrapped io errors are opened explicitly.
fn find_rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(tls) = find_rustls_error(inner) {
                return Some(tls);
            }
        }
        current = error.source();
    }
    None
}

struct DisplayCode<'a>(&'a ReportedErrorCode);

impl fmt::Display for DisplayCode<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ReportedErrorCode::Known(code) => {
                write!(formatter, " {} ({})", code.name(), code.numeric())
            }
            ReportedErrorCode::UnknownName(name) => write!(formatter, " {name}"),
            ReportedErrorCode::UnknownNumber(number) => write!(formatter, " {number}"),
            ReportedErrorCode::Missing => Ok(()),
        }
    }
}

struct DisplayMessage<'a>(&'a str);

impl fmt::Display for DisplayMessage<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(formatter, ": {}", self.0)
        }
    }
}

/// The first KiB of a body, as text, for [`ServiceError::Decode`].
pub(crate) fn body_excerpt(body: &[u8]) -> String {
    const LIMIT: usize = 1024;
    let text = String::from_utf8_lossy(&body[..body.len().min(LIMIT)]).into_owned();
    if body.len() > LIMIT {
        format!("{text}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(errorcode: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(name) = errorcode {
            headers.insert(
                ERROR_CODE_HEADER,
                HeaderValue::from_str(name).expect("test header is valid"),
            );
        }
        headers
    }

    /// Both Azure body shapes (and the nested one, and none at all), with and without the header, read into the
    /// fields and the message users see.
    #[test]
    fn error_responses_become_api_errors_table() {
        /// status, `iothub-errorcode` header, body -> code, message, tracking id, what users read.
        type Case = (
            u16,
            Option<&'static str>,
            &'static str,
            ReportedErrorCode,
            &'static str,
            Option<&'static str>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                404,
                Some("DeviceNotFound"),
                r#"{"Message":"ErrorCode:DeviceNotFound;Device dev1 not registered","ExceptionMessage":"Tracking ID:abc-G:0-TimeStamp:12/14/2016 03:15:17"}"#,
                ReportedErrorCode::Known(ErrorCode::DeviceNotFound),
                "Device dev1 not registered",
                Some("abc-G:0"),
                "the hub answered 404 DeviceNotFound (404001): Device dev1 not registered",
            ),
            (
                412,
                None,
                r#"{"Message":"ErrorCode:PreconditionFailed;Precondition failed: etag mismatch","ExceptionMessage":""}"#,
                ReportedErrorCode::Known(ErrorCode::PreconditionFailed),
                "Precondition failed: etag mismatch",
                None,
                "the hub answered 412 PreconditionFailed (412001): Precondition failed: etag mismatch",
            ),
            (
                404,
                Some("DeviceNotOnline"),
                r#"{"errorCode":404103,"trackingId":"t1","message":"Timed out waiting for device to connect.","info":{"timeout":"00:00:10"},"timestampUtc":"2024-05-01T10:00:00.0000000Z"}"#,
                ReportedErrorCode::Known(ErrorCode::DeviceNotOnline),
                "Timed out waiting for device to connect.",
                Some("t1"),
                "the hub answered 404 DeviceNotOnline (404103): Timed out waiting for device to connect.",
            ),
            (
                504,
                None,
                r#"{"Message":"{\"errorCode\":504101,\"trackingId\":\"t2\",\"message\":\"Timed out waiting for the response from device.\"}","ExceptionMessage":""}"#,
                ReportedErrorCode::Known(ErrorCode::GatewayTimeout),
                "Timed out waiting for the response from device.",
                Some("t2"),
                "the hub answered 504 GatewayTimeout (504101): Timed out waiting for the response from device.",
            ),
            (
                409,
                Some("SomethingNew"),
                "",
                ReportedErrorCode::UnknownName("SomethingNew".to_owned()),
                "",
                None,
                "the hub answered 409 SomethingNew",
            ),
            (
                400,
                None,
                r#"{"errorCode":400999,"message":"new code"}"#,
                ReportedErrorCode::UnknownNumber(400999),
                "new code",
                None,
                "the hub answered 400 400999: new code",
            ),
            (
                502,
                None,
                "<html>bad gateway</html>",
                ReportedErrorCode::Missing,
                "<html>bad gateway</html>",
                None,
                "the hub answered 502: <html>bad gateway</html>",
            ),
            (
                401,
                None,
                "",
                ReportedErrorCode::Missing,
                "",
                None,
                "the hub answered 401",
            ),
        ];
        for (status, header, body, code, message, tracking_id, display) in cases {
            let error =
                ServiceError::from_error_response(status, &headers(header), body.as_bytes());
            assert_eq!(error.to_string(), display, "{body}");
            assert_eq!(error.status(), Some(status));
            match error {
                ServiceError::Api {
                    status: actual_status,
                    code: actual_code,
                    message: actual_message,
                    tracking_id: actual_tracking_id,
                } => {
                    assert_eq!(actual_status, status);
                    assert_eq!(actual_code, code, "{body}");
                    assert_eq!(actual_message, message, "{body}");
                    assert_eq!(actual_tracking_id.as_deref(), tracking_id, "{body}");
                }
                other => panic!("expected an api error, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_code_is_only_reported_when_known() {
        let known = ServiceError::from_error_response(404, &headers(Some("ModuleNotFound")), b"");
        assert_eq!(known.error_code(), Some(ErrorCode::ModuleNotFound));
        let unknown = ServiceError::from_error_response(404, &headers(Some("Nope")), b"");
        assert_eq!(unknown.error_code(), None);
        assert!(!unknown.is_connectivity());
        assert!(
            ServiceError::Timeout {
                after: Duration::from_secs(1)
            }
            .is_connectivity()
        );
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(find_rustls_error(&io), Some(&tls));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(find_rustls_error(&plain), None);
    }

    #[test]
    fn body_excerpt_is_bounded() {
        assert_eq!(body_excerpt(b"short"), "short");
        let long = vec![b'x'; 2000];
        assert_eq!(body_excerpt(&long).len(), 1024 + 3);
    }
}
