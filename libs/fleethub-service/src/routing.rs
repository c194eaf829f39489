//! Message routing (a fleethub extension; Azure configures it in the hub's Azure Resource Manager resource,
//! whose `properties.routing` shape the configuration keeps): read and replace the configuration, test
//! route conditions, read endpoint health and dead letters.

use fleethub_protocol::ids::ETag;
use fleethub_protocol::routing::{
    DeadLetterPage, RoutingHealth, RoutingProperties, TestAllRoutesInput, TestAllRoutesResult,
    TestRouteInput, TestRouteResult,
};
use reqwest::Method;
use reqwest::header::{self, HeaderMap};

use crate::client::{Call, RawResponse, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

const ROUTING_PATH: &str = "/routing";

/// The routing configuration in force and its etag (for [`ServiceClient::set_routing`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfiguration {
    pub routing: RoutingProperties,
    pub etag: ETag,
}

/// Which dead letters [`ServiceClient::dead_letters`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// One endpoint's only.
    pub endpoint: Option<String>,
    /// From this id on (the page's `nextId` continues).
    pub from: Option<u64>,
    /// At most this many (the hub's default is 100, its maximum 1000).
    pub top: Option<u32>,
}

impl ServiceClient {
    /// The routing configuration in force (`GET /routing`). A hub never configured answers its default:
    /// device messages to `events` (no routes, no fallback route) and one route per kind of hub event to
    /// `events`.
    pub async fn get_routing(&self) -> Result<RoutingConfiguration, ServiceError> {
        let path = wire::with_query(ROUTING_PATH, &[]);
        let response = self
            .execute(Method::GET, &path, HeaderMap::new(), None, None)
            .await?
            .error_for_status()?;
        routing_configuration(&response)
    }

    /// Replaces the routing configuration as a whole (`PUT /routing`): only if its etag is still `etag`, or
    /// unconditionally when `None`. It applies to the next message. 400 `ArgumentInvalid` says what is wrong
    /// (a condition's syntax error and its position, an unknown endpoint, ...); 412 `PreconditionFailed` for
    /// a stale etag (read it again, apply the change again).
    pub async fn set_routing(
        &self,
        routing: &RoutingProperties,
        etag: Option<&ETag>,
    ) -> Result<RoutingConfiguration, ServiceError> {
        let path = wire::with_query(ROUTING_PATH, &[]);
        let mut headers = HeaderMap::new();
        if let Some(etag) = etag {
            headers.insert(
                header::IF_MATCH,
                wire::if_match(Some(etag))
                    .map_err(|reason| ServiceError::InvalidRequest { reason })?,
            );
        }
        let body = serde_json::to_vec(routing).map_err(|error| ServiceError::InvalidRequest {
            reason: format!("the routing configuration does not serialise to json: {error}"),
        })?;
        let response = self
            .execute(Method::PUT, &path, headers, Some(body), None)
            .await?
            .error_for_status()?;
        routing_configuration(&response)
    }

    /// Evaluates one route's condition on a sample message and twin (`POST /routing/routes/$testnew`, Azure's
    /// "test new route"). A condition that does not compile comes back `undefined` with its compilation
    /// errors.
    pub async fn test_route(
        &self,
        input: &TestRouteInput,
    ) -> Result<TestRouteResult, ServiceError> {
        let call = Call::new(
            Method::POST,
            wire::with_query("/routing/routes/$testnew", &[]),
            "a route test result",
        );
        self.call_json(call.json_body(input)?).await
    }

    /// The configured routes a sample message takes (`POST /routing/routes/$testall`).
    pub async fn test_all_routes(
        &self,
        input: &TestAllRoutesInput,
    ) -> Result<TestAllRoutesResult, ServiceError> {
        let call = Call::new(
            Method::POST,
            wire::with_query("/routing/routes/$testall", &[]),
            "the routes a message takes",
        );
        self.call_json(call.json_body(input)?).await
    }

    /// Each custom endpoint's health and each route's match counts (`GET /routing/health`).
    pub async fn routing_health(&self) -> Result<RoutingHealth, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query("/routing/health", &[]),
            "the routing health",
        ))
        .await
    }

    /// One page of dead letters, oldest first (`GET /routing/deadLetters`): the messages custom endpoints
    /// gave up on, with the attempts made and the last error.
    pub async fn dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage, ServiceError> {
        let from = query.from.map(|from| from.to_string());
        let top = query.top.map(|top| top.to_string());
        let mut parameters: Vec<(&str, &str)> = Vec::new();
        if let Some(endpoint) = &query.endpoint {
            parameters.push(("endpoint", endpoint));
        }
        if let Some(from) = &from {
            parameters.push(("from", from));
        }
        if let Some(top) = &top {
            parameters.push(("top", top));
        }
        self.call_json(Call::new(
            Method::GET,
            wire::with_query("/routing/deadLetters", &parameters),
            "a page of dead letters",
        ))
        .await
    }
}

fn routing_configuration(response: &RawResponse) -> Result<RoutingConfiguration, ServiceError> {
    let routing: RoutingProperties = response.decode("a routing configuration")?;
    let etag = response
        .header(header::ETAG)
        .map(ETag::parse_if_match)
        .and_then(|if_match| match if_match {
            fleethub_protocol::ids::IfMatch::Tag(etag) => Some(etag),
            fleethub_protocol::ids::IfMatch::Any => None,
        })
        .ok_or_else(|| ServiceError::InvalidRequest {
            reason: "the hub's routing answer has no ETag header".to_owned(),
        })?;
    Ok(RoutingConfiguration { routing, etag })
}
