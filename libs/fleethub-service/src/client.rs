//! [`ServiceClient`]: construction from a connection string, the shared HTTP plumbing every call goes through
//! (signing, timeouts, error translation, JSON), and the [`ServiceClient::raw`] escape hatch.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fleethub_protocol::connection_string::{
    ConnectionStringError, ConnectionStringKey, ServiceConnectionString,
};
use fleethub_protocol::sas::decode_key;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::SasTokenCache;
use crate::error::{ConfigError, ServiceError, body_excerpt};
use crate::wire;

/// How a [`ServiceClient`] connects. Build it with `..Default::default()` so that fields added later do not
/// break your code.
#[derive(Clone, Debug)]
pub struct ServiceClientOptions {
    /// PEM text of the CA to trust, and the only one: a fleethub hub's `ca.pem` (from its data directory or
    /// `RunningHub::ca_pem`). `None` trusts the operating system's roots, which is what Azure IoT Hub needs.
    pub ca_pem: Option<String>,
    /// Time allowed for a whole request, connecting included. Direct-method calls get at least their own
    /// connect plus response timeout on top of a margin, whatever this says. Default: 100 s (the Python SDK's).
    pub timeout: Duration,
}

impl Default for ServiceClientOptions {
    fn default() -> Self {
        ServiceClientOptions {
            ca_pem: None,
            timeout: Duration::from_secs(100),
        }
    }
}

/// A client of one hub's service REST API, authenticated with a shared access policy.
///
/// Cloning is cheap and clones share one connection pool and one SAS token: make one client and hand out clones
/// (or `&ServiceClient`) to every task. Every method is safe to call concurrently.
///
/// Dropping the future of a call abandons the request; whether the hub applied a write that was already sent
/// is then unknown (read it back, or retry with the etag you had).
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `https://{HostName}`, no trailing slash.
    base_url: String,
    host_name: String,
    timeout: Duration,
    token: SasTokenCache,
}

impl fmt::Debug for ServiceClient {
    /// Shows where the client points, never its key or token.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ServiceClient")
            .field("base_url", &self.inner.base_url)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// An answer of the hub as received, whatever its status (see [`ServiceClient::raw`]).
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON into `T`, whatever the status.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ServiceError> {
        self.decode(std::any::type_name::<T>())
    }

    /// The body parsed as JSON into `T`; `what` names it in [`ServiceError::Decode`] ("a page of jobs").
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        what: &'static str,
    ) -> Result<T, ServiceError> {
        serde_json::from_slice(&self.body).map_err(|source| ServiceError::Decode {
            what,
            body: body_excerpt(&self.body),
            source,
        })
    }

    /// The value of header `name`, if it is there and is text.
    pub(crate) fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// `self` for a 2xx answer, otherwise the [`ServiceError::Api`] the typed calls would have returned (code read
    /// from the `iothub-errorcode` header and the body).
    pub fn error_for_status(self) -> Result<RawResponse, ServiceError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(ServiceError::from_error_response(
                self.status.as_u16(),
                &self.headers,
                &self.body,
            ))
        }
    }
}

/// Time a direct-method call may take on the hub beyond the device's own timeouts before we give up.
const METHOD_TIMEOUT_MARGIN: Duration = Duration::from_secs(15);
/// Azure's default `responseTimeoutInSeconds` when a call does not give one.
const DEFAULT_METHOD_RESPONSE_TIMEOUT_SECONDS: u64 = 30;

impl ServiceClient {
    /// Builds a client from `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...` (a shared access
    /// policy's connection string; `HostName` may carry `:port`). Nothing is sent until the first call; the
    /// connection pool then grows with concurrency and keeps idle connections for reuse.
    pub fn from_connection_string(
        connection_string: &str,
        options: ServiceClientOptions,
    ) -> Result<Self, ConfigError> {
        let parsed: ServiceConnectionString = connection_string
            .parse()
            .map_err(ConfigError::ConnectionString)?;
        Self::new(parsed, options)
    }

    /// Builds a client from an already parsed connection string.
    pub fn new(
        connection_string: ServiceConnectionString,
        options: ServiceClientOptions,
    ) -> Result<Self, ConfigError> {
        let ServiceConnectionString {
            host_name,
            shared_access_key_name,
            shared_access_key,
        } = connection_string;
        let key = decode_key(&shared_access_key).map_err(|source| {
            ConfigError::ConnectionString(ConnectionStringError::InvalidKey {
                key: ConnectionStringKey::SharedAccessKey,
                source,
            })
        })?;
        let base_url = format!("https://{host_name}");
        check_base_url(&base_url, &host_name)?;

        let tls = crate::tls::client_config(options.ca_pem.as_deref())?;
        let mut default_headers = HeaderMap::new();
        default_headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .timeout(options.timeout)
            .user_agent(concat!("fleethub-service/", env!("CARGO_PKG_VERSION")))
            .default_headers(default_headers)
            .build()
            .map_err(ConfigError::HttpClient)?;

        Ok(ServiceClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                host_name: host_name.clone(),
                timeout: options.timeout,
                token: SasTokenCache::new(host_name, shared_access_key_name, key),
            }),
        })
    }

    /// The `HostName` of the connection string (with its port, if it had one).
    pub fn host_name(&self) -> &str {
        &self.inner.host_name
    }

    /// Escape hatch for tests and endpoints this client does not wrap yet: sends `method` to `path_and_query`
    /// (which must start with `/`; `api-version=2021-04-12` is appended unless the query already names an
    /// `api-version`) with the SAS token and `headers`, and returns the answer whatever its status.
    ///
    /// `headers` override the defaults, so an `Authorization` header here replaces the client's token (to test
    /// bad credentials). A body without a `Content-Type` header is sent as `application/json; charset=utf-8`.
    /// Only transport failures, timeouts and unusable arguments are errors; call
    /// [`RawResponse::error_for_status`] to treat a non-2xx answer as one.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ServiceError> {
        if !path_and_query.starts_with('/') {
            return Err(ServiceError::InvalidRequest {
                reason: format!("path {path_and_query:?} must start with '/'"),
            });
        }
        let mut extra = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ServiceError::InvalidRequest {
                    reason: format!("{name:?} is not a valid http header name"),
                }
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| ServiceError::InvalidRequest {
                reason: format!(
                    "the value of header {name} contains characters not allowed in http headers"
                ),
            })?;
            extra.append(name, value);
        }
        self.execute(
            method,
            &wire::ensure_api_version(path_and_query),
            extra,
            body,
            None,
        )
        .await
    }

    /// Sends one signed request and reads the whole answer.
    pub(crate) async fn execute(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<RawResponse, ServiceError> {
        let inner = &*self.inner;
        let url = Url::parse(&format!("{}{path_and_query}", inner.base_url)).map_err(|error| {
            ServiceError::InvalidRequest {
                reason: format!("{path_and_query:?} does not make a valid url: {error}"),
            }
        })?;
        let mut request = inner
            .http
            .request(method, url)
            .header(header::AUTHORIZATION, inner.token.authorization());
        if let Some(body) = body {
            if !headers.contains_key(header::CONTENT_TYPE) {
                request = request.header(header::CONTENT_TYPE, "application/json; charset=utf-8");
            }
            request = request.body(body);
        }
        // Added last so that a caller's header replaces ours instead of being sent next to it.
        let mut request = request
            .build()
            .map_err(|error| ServiceError::InvalidRequest {
                reason: error.to_string(),
            })?;
        for name in headers.keys() {
            request.headers_mut().remove(name);
        }
        request.headers_mut().extend(headers);
        let timeout = timeout.unwrap_or(inner.timeout);
        *request.timeout_mut() = Some(timeout);

        let failed =
            |error: reqwest::Error| ServiceError::from_reqwest(&inner.host_name, timeout, error);
        let response = inner.http.execute(request).await.map_err(failed)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(failed)?.to_vec();
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// A signed request whose successful answer is consumed as a stream (the change feed). A non-2xx answer
    /// is read whole and returned as the usual error.
    pub(crate) async fn send_streaming(
        &self,
        method: Method,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ServiceError> {
        let inner = &*self.inner;
        let url = Url::parse(&format!("{}{path_and_query}", inner.base_url)).map_err(|error| {
            ServiceError::InvalidRequest {
                reason: format!("{path_and_query:?} does not make a valid url: {error}"),
            }
        })?;
        let failed =
            |error: reqwest::Error| ServiceError::from_reqwest(&inner.host_name, timeout, error);
        let response = inner
            .http
            .request(method, url)
            .header(header::AUTHORIZATION, inner.token.authorization())
            .header(header::ACCEPT, "text/event-stream")
            .timeout(timeout)
            .send()
            .await
            .map_err(failed)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(failed)?.to_vec();
        Err(ServiceError::from_error_response(
            status.as_u16(),
            &headers,
            &body,
        ))
    }

    /// A signed request whose body is streamed (a firmware image), with `headers` and its own `timeout`. The
    /// answer is read whole and returned as the usual error when it is not 2xx.
    pub(crate) async fn execute_streaming_body(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<RawResponse, ServiceError> {
        let inner = &*self.inner;
        let url = Url::parse(&format!("{}{path_and_query}", inner.base_url)).map_err(|error| {
            ServiceError::InvalidRequest {
                reason: format!("{path_and_query:?} does not make a valid url: {error}"),
            }
        })?;
        let failed =
            |error: reqwest::Error| ServiceError::from_reqwest(&inner.host_name, timeout, error);
        let response = inner
            .http
            .request(method, url)
            .header(header::AUTHORIZATION, inner.token.authorization())
            .headers(headers)
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(failed)?.to_vec();
        RawResponse {
            status,
            headers,
            body,
        }
        .error_for_status()
    }

    /// The client's request timeout (the default for every call).
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// A call whose success answer is JSON of type `T`.
    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        call: Call,
    ) -> Result<T, ServiceError> {
        let what = call.what;
        self.call(call).await?.decode(what)
    }

    /// A call whose success answer carries nothing we need (204 on delete).
    pub(crate) async fn call_no_content(&self, call: Call) -> Result<(), ServiceError> {
        self.call(call).await.map(drop)
    }

    async fn call(&self, call: Call) -> Result<RawResponse, ServiceError> {
        let mut headers = HeaderMap::new();
        if let Some(if_match) = call.if_match {
            headers.insert(header::IF_MATCH, if_match);
        }
        self.execute(
            call.method,
            &call.path_and_query,
            headers,
            call.body,
            call.timeout,
        )
        .await?
        .error_for_status()
    }

    /// The request timeout for a direct-method call: the hub may legitimately take the device's connect and
    /// response timeouts before answering, so never less than those plus a margin.
    pub(crate) fn method_call_timeout(
        &self,
        connect_seconds: Option<u64>,
        response_seconds: Option<u64>,
    ) -> Duration {
        let device_time = connect_seconds
            .unwrap_or(0)
            .saturating_add(response_seconds.unwrap_or(DEFAULT_METHOD_RESPONSE_TIMEOUT_SECONDS));
        self.inner
            .timeout
            .max(Duration::from_secs(device_time) + METHOD_TIMEOUT_MARGIN)
    }
}

/// One typed call, described before it is sent.
pub(crate) struct Call {
    pub method: Method,
    pub path_and_query: String,
    pub if_match: Option<HeaderValue>,
    pub body: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// What the success answer is, for [`ServiceError::Decode`]: "a device", "a list of modules".
    pub what: &'static str,
}

impl Call {
    pub(crate) fn new(method: Method, path_and_query: String, what: &'static str) -> Self {
        Call {
            method,
            path_and_query,
            if_match: None,
            body: None,
            timeout: None,
            what,
        }
    }

    pub(crate) fn json_body<B: Serialize + ?Sized>(
        mut self,
        body: &B,
    ) -> Result<Self, ServiceError> {
        let bytes = serde_json::to_vec(body).map_err(|error| ServiceError::InvalidRequest {
            reason: format!("the request body does not serialise to json: {error}"),
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    pub(crate) fn if_match(
        mut self,
        etag: Option<&fleethub_protocol::ids::ETag>,
    ) -> Result<Self, ServiceError> {
        self.if_match =
            Some(wire::if_match(etag).map_err(|reason| ServiceError::InvalidRequest { reason })?);
        Ok(self)
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Rejects host names the url crate would read as something else (`user@host`, `host?x`, `host#x`).
fn check_base_url(base_url: &str, host_name: &str) -> Result<(), ConfigError> {
    let invalid = || ConfigError::HostName {
        host_name: host_name.to_owned(),
    };
    let url = Url::parse(base_url).map_err(|_| invalid())?;
    let plain_host = url.host_str().is_some_and(|host| !host.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if plain_host { Ok(()) } else { Err(invalid()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cG9saWN5LWtleS1mb3ItZmxlZXRodWItdGVzdHMtMzI=";

    fn build(connection_string: &str) -> Result<ServiceClient, ConfigError> {
        ServiceClient::from_connection_string(connection_string, ServiceClientOptions::default())
    }

    #[test]
    fn connection_strings_are_checked_when_the_client_is_built() {
        let client = build(&format!(
            "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ))
        .expect("a valid service connection string");
        assert_eq!(client.host_name(), "localhost:8443");
        assert_eq!(client.inner.base_url, "https://localhost:8443");
        let debug = format!("{client:?}");
        assert!(
            !debug.contains(KEY) && !debug.contains("SharedAccessSignature"),
            "{debug}"
        );

        let message = |connection_string: &str| {
            build(connection_string).map(|_| ()).map_err(|error| {
                let source = std::error::Error::source(&error)
                    .map(|source| format!(": {source}"))
                    .unwrap_or_default();
                format!("{error}{source}")
            })
        };
        let cases = [
            (
                "",
                "invalid service connection string: connection string is empty",
            ),
            (
                &*format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}"),
                "invalid service connection string: DeviceId is not allowed in a service connection string",
            ),
            (
                "HostName=h;SharedAccessKeyName=p",
                "invalid service connection string: connection string has no SharedAccessKey",
            ),
            (
                "HostName=h;SharedAccessKeyName=p;SharedAccessKey=!!",
                "invalid service connection string: SharedAccessKey is invalid: shared access key is not valid base64: Invalid symbol 33, offset 0.",
            ),
            (
                &*format!("HostName=user@hub;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                "HostName \"user@hub\" does not make a valid https url (expected a host name, optionally with :port)",
            ),
            (
                &*format!("HostName=hub?x;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                "HostName \"hub?x\" does not make a valid https url (expected a host name, optionally with :port)",
            ),
            (
                &*format!("HostName=hub:99999;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                "HostName \"hub:99999\" does not make a valid https url (expected a host name, optionally with :port)",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(message(input), Err(expected.to_owned()), "{input}");
        }
    }

    #[test]
    fn method_calls_get_enough_time_for_the_device() {
        let client = ServiceClient::from_connection_string(
            &format!("HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
            ServiceClientOptions {
                timeout: Duration::from_secs(20),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(
            client.method_call_timeout(None, None),
            Duration::from_secs(45)
        );
        assert_eq!(
            client.method_call_timeout(Some(10), Some(200)),
            Duration::from_secs(225)
        );
        let patient = ServiceClient::from_connection_string(
            &format!("HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
            ServiceClientOptions {
                timeout: Duration::from_secs(600),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(
            patient.method_call_timeout(Some(5), Some(5)),
            Duration::from_secs(600)
        );
    }
}
