//! Reading twin responses (`$iothub/twin/res/{status}/?$rid=..[&$version=..]`, PROTOCOL.md §2.6) into
//! results: the twin document for a GET, the new reported `$version` for a reported patch.

use bytes::Bytes;
use fleethub_protocol::errors::parse_error_response;
use serde_json::Value;

use crate::error::TwinError;

/// Twin requests of one client in flight at once; more wait for a free slot (within their timeout).
pub(crate) const MAX_CONCURRENT_TWIN_REQUESTS: usize = 16;

/// A twin request the SDK sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TwinRequest {
    Get,
    PatchReported(Bytes),
}

/// A twin response as it arrived, before interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TwinResponse {
    pub status: u16,
    pub version: Option<u64>,
    pub body: Bytes,
}

/// The properties document `{"desired": {...}, "reported": {...}}` of a GET response.
pub(crate) fn twin_from_response(response: TwinResponse) -> Result<Value, TwinError> {
    check_status(&response)?;
    match serde_json::from_slice(&response.body) {
        Ok(twin @ Value::Object(_)) => Ok(twin),
        Ok(_) => Err(TwinError::InvalidResponse(
            "the twin document is not a JSON object".into(),
        )),
        Err(error) => Err(TwinError::InvalidResponse(format!(
            "the twin document is not JSON: {error}"
        ))),
    }
}

/// The new reported-properties `$version` of a reported-patch response (Azure answers 204 with it in the
/// topic).
pub(crate) fn reported_version_from_response(response: TwinResponse) -> Result<u64, TwinError> {
    check_status(&response)?;
    response
        .version
        .ok_or_else(|| TwinError::InvalidResponse("the response topic carries no $version".into()))
}

/// Any status of 300 or more fails the request, as in Azure's SDKs; the body's message is kept.
fn check_status(response: &TwinResponse) -> Result<(), TwinError> {
    if response.status < 300 {
        return Ok(());
    }
    let parsed = parse_error_response(None, &String::from_utf8_lossy(&response.body));
    Err(TwinError::Status {
        status: response.status,
        code: parsed.code,
        message: parsed.message,
    })
}

#[cfg(test)]
mod tests {
    use fleethub_protocol::errors::{ErrorCode, ReportedErrorCode};
    use serde_json::json;

    use super::*;

    fn response(status: u16, version: Option<u64>, body: &'static str) -> TwinResponse {
        TwinResponse {
            status,
            version,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn get_response_yields_the_properties_document() {
        let body = r#"{"desired":{"foo":1,"$version":2},"reported":{"$version":1}}"#;
        let twin = twin_from_response(response(200, None, body)).expect("success");
        assert_eq!(
            twin,
            json!({"desired": {"foo": 1, "$version": 2}, "reported": {"$version": 1}})
        );
    }

    #[test]
    fn get_response_that_is_not_a_json_object_is_invalid() {
        for body in ["", "[1]", "{oops"] {
            let result = twin_from_response(response(200, None, body));
            assert!(
                matches!(result, Err(TwinError::InvalidResponse(_))),
                "{body:?}: {result:?}"
            );
        }
    }

    #[test]
    fn patch_response_yields_the_version_from_the_topic() {
        assert_eq!(
            reported_version_from_response(response(204, Some(5), "")).expect("success"),
            5
        );
        assert!(matches!(
            reported_version_from_response(response(204, None, "")),
            Err(TwinError::InvalidResponse(_))
        ));
    }

    #[test]
    fn status_of_300_or_more_carries_code_and_message() {
        let error = reported_version_from_response(response(
            400,
            None,
            r#"{"errorCode":400004,"message":"bad"}"#,
        ))
        .expect_err("400 fails");
        match error {
            TwinError::Status {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 400);
                assert_eq!(code, ReportedErrorCode::Known(ErrorCode::ArgumentInvalid));
                assert_eq!(message, "bad");
            }
            other => panic!("unexpected {other:?}"),
        }
        let error = twin_from_response(response(429, None, "throttled")).expect_err("429 fails");
        assert!(
            matches!(&error, TwinError::Status { status: 429, message, .. } if message == "throttled"),
            "{error:?}"
        );
        assert!(twin_from_response(response(300, None, "")).is_err());
        assert!(twin_from_response(response(299, None, "{}")).is_ok());
    }
}
