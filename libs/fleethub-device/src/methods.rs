//! Direct methods (PROTOCOL.md §2.7): the request and response types, and running the application's
//! handler for one request in its own task.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::session::{Command, Request};

/// At most this many method handlers of one client run at once; further requests are answered 429 at once
/// so that a flood of invocations cannot pile up tasks.
pub(crate) const MAX_CONCURRENT_METHOD_CALLS: usize = 32;

/// A direct method invocation from the hub. Constructible, so applications can unit-test their handlers.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRequest {
    pub method_name: String,
    /// The hub's `$rid`, echoed in the response topic by the SDK; for logs.
    pub request_id: String,
    /// The invocation payload; `null` when the hub sent none.
    pub payload: Value,
}

/// What the device answers: a status (any integer; the service sees it as `status`) and a JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodResponse {
    pub status: i32,
    pub payload: Value,
}

impl MethodResponse {
    pub fn new(status: i32, payload: Value) -> Self {
        Self { status, payload }
    }

    /// Status 200 with `payload`.
    pub fn ok(payload: Value) -> Self {
        Self::new(200, payload)
    }
}

/// The application's handler, type-erased.
pub(crate) type MethodHandler =
    Arc<dyn Fn(MethodRequest) -> BoxFuture<'static, MethodResponse> + Send + Sync>;

pub(crate) fn erase_handler<F, Fut>(handler: F) -> MethodHandler
where
    F: Fn(MethodRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = MethodResponse> + Send + 'static,
{
    Arc::new(move |request| handler(request).boxed())
}

/// One request ready to run: everything the task needs, plus the permit that counts it.
pub(crate) struct MethodCall {
    pub handler: MethodHandler,
    pub method_name: String,
    pub request_id: String,
    pub payload: Bytes,
    pub permit: OwnedSemaphorePermit,
}

/// The response on its way back to the connection task.
#[derive(Debug)]
pub(crate) struct MethodResponseMessage {
    pub status: i32,
    pub request_id: String,
    pub payload: Bytes,
    /// The call's concurrency permit, released by the session once the response is queued: until then the
    /// call counts as in progress (a token renewal waits for it).
    pub permit: Option<OwnedSemaphorePermit>,
}

impl MethodResponseMessage {
    pub fn new(
        request_id: String,
        response: &MethodResponse,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let payload =
            serde_json::to_vec(&response.payload).expect("a JSON value always serialises");
        Self {
            status: response.status,
            request_id,
            payload: Bytes::from(payload),
            permit,
        }
    }
}

/// Runs the handler and sends its response to the connection task. A payload that is not JSON is answered
/// 400 without calling the handler; a handler that panics is answered 500. The hub never waits in vain.
pub(crate) async fn run_method_call(call: MethodCall, commands: mpsc::Sender<Command>) {
    let MethodCall {
        handler,
        method_name,
        request_id,
        payload,
        permit,
    } = call;
    let response = match parse_payload(&payload) {
        Ok(payload) => {
            let request = MethodRequest {
                method_name: method_name.clone(),
                request_id: request_id.clone(),
                payload,
            };
            invoke(&handler, request).await
        }
        Err(reason) => {
            tracing::warn!(method = %method_name, %reason, "answering a method request with an invalid payload with 400");
            MethodResponse::new(400, json!({ "message": reason }))
        }
    };
    let message = MethodResponseMessage::new(request_id, &response, Some(permit));
    // A closed channel means the client has stopped; the hub times the call out.
    let _ = commands
        .send(Command::Request(Request::MethodResponse(Box::new(message))))
        .await;
}

async fn invoke(handler: &MethodHandler, request: MethodRequest) -> MethodResponse {
    let method_name = request.method_name.clone();
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(request))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    outcome.unwrap_or_else(|_| {
        tracing::error!(method = %method_name, "method handler panicked; answering 500");
        MethodResponse::new(
            500,
            json!({ "message": "the device's method handler failed" }),
        )
    })
}

/// The payload as JSON; empty (or only whitespace) means `null`, as the Python SDK reads it.
pub(crate) fn parse_payload(payload: &[u8]) -> Result<Value, String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(payload)
        .map_err(|error| format!("the method payload is not JSON: {error}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    #[test]
    fn payload_parsing_treats_empty_as_null_and_rejects_non_json() {
        assert_eq!(parse_payload(b""), Ok(Value::Null));
        assert_eq!(parse_payload(b" "), Ok(Value::Null));
        assert_eq!(parse_payload(br#"{"delay": 5}"#), Ok(json!({"delay": 5})));
        assert_eq!(parse_payload(b"null"), Ok(Value::Null));
        assert!(parse_payload(b"not json").is_err());
    }

    async fn run(handler: MethodHandler, payload: &'static [u8]) -> MethodResponseMessage {
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("one permit");
        let call = MethodCall {
            handler,
            method_name: "reboot".into(),
            request_id: "7".into(),
            payload: Bytes::from_static(payload),
            permit,
        };
        let (commands, mut receiver) = mpsc::channel(1);
        run_method_call(call, commands).await;
        let received = tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await;
        match received.expect("response within 5 s") {
            Some(Command::Request(Request::MethodResponse(message))) => *message,
            _ => panic!("expected a method response"),
        }
    }

    #[tokio::test]
    async fn handler_response_is_sent_with_the_request_id() {
        let handler = erase_handler(|request: MethodRequest| async move {
            MethodResponse::ok(json!({ "echo": request.payload, "name": request.method_name }))
        });
        let message = run(handler, br#"{"delay":5}"#).await;
        assert_eq!(message.status, 200);
        assert_eq!(message.request_id, "7");
        let payload: Value = serde_json::from_slice(&message.payload).expect("JSON");
        assert_eq!(payload, json!({"echo": {"delay": 5}, "name": "reboot"}));
    }

    #[tokio::test]
    async fn invalid_payload_is_answered_400_without_calling_the_handler() {
        let handler = erase_handler(panics);
        let message = run(handler, b"{not json").await;
        assert_eq!(message.status, 400);
    }

    #[tokio::test]
    async fn panicking_handler_is_answered_500() {
        let handler: MethodHandler = Arc::new(|_request| panic!("synchronous panic"));
        assert_eq!(run(handler, b"").await.status, 500);
        assert_eq!(run(erase_handler(panics), b"").await.status, 500);
    }

    async fn panics(_request: MethodRequest) -> MethodResponse {
        panic!("asynchronous panic")
    }
}
