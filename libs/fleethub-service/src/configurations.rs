//! Automatic device management: configurations (create, update, read, list, delete) and checking their
//! queries, as `IoTHubConfigurationManager` of the official SDKs calls them.

use fleethub_protocol::configurations::{
    Configuration, ConfigurationQueriesTestInput, ConfigurationQueriesTestResponse,
    ConfigurationRequest,
};
use fleethub_protocol::ids::ETag;
use reqwest::Method;

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

impl ServiceClient {
    /// Creates a configuration (`PUT /configurations/{id}` without `If-Match`) from a request that names its
    /// `id`. An id in use fails with 409 `ConfigurationAlreadyExists`; a bad target condition, content or
    /// metric query with 400 and the code naming which (`InvalidConfigurationTargetCondition`, ...).
    pub async fn create_configuration(
        &self,
        configuration: &ConfigurationRequest,
    ) -> Result<Configuration, ServiceError> {
        let id = request_id(configuration)?;
        let call = Call::new(
            Method::PUT,
            wire::with_query(&wire::configuration(id), &[]),
            "a configuration",
        );
        self.call_json(call.json_body(configuration)?).await
    }

    /// Replaces a configuration's target condition, priority, labels and metrics (`PUT` with `If-Match`):
    /// only if its etag is still `etag`, or unconditionally when `None`. What the request leaves out is
    /// cleared (start from [`Configuration::to_request`] to change one field); the content cannot change
    /// (400 `CannotModifyImmutableConfigurationContent`) and may be left out. 404 `ConfigurationNotFound`,
    /// 412 `PreconditionFailed` for a stale etag.
    pub async fn update_configuration(
        &self,
        configuration: &ConfigurationRequest,
        etag: Option<&ETag>,
    ) -> Result<Configuration, ServiceError> {
        let id = request_id(configuration)?;
        let call = Call::new(
            Method::PUT,
            wire::with_query(&wire::configuration(id), &[]),
            "a configuration",
        );
        self.call_json(call.json_body(configuration)?.if_match(etag)?)
            .await
    }

    /// A configuration with its metrics (`GET /configurations/{id}`).
    pub async fn get_configuration(&self, id: &str) -> Result<Configuration, ServiceError> {
        self.call_json(Call::new(
            Method::GET,
            wire::with_query(&wire::configuration(id), &[]),
            "a configuration",
        ))
        .await
    }

    /// Configurations by id (`GET /configurations[?top=n]`); a hub keeps at most 100.
    pub async fn list_configurations(
        &self,
        top: Option<u32>,
    ) -> Result<Vec<Configuration>, ServiceError> {
        let top = top.map(|top| top.to_string());
        let parameters: Vec<(&str, &str)> = top.iter().map(|top| ("top", top.as_str())).collect();
        self.call_json(Call::new(
            Method::GET,
            wire::with_query("/configurations", &parameters),
            "a list of configurations",
        ))
        .await
    }

    /// Deletes a configuration, only if its etag is still `etag`, or unconditionally when `None`. Twins it
    /// was applied to get the next configuration that targets them (or lose its settings).
    pub async fn delete_configuration(
        &self,
        id: &str,
        etag: Option<&ETag>,
    ) -> Result<(), ServiceError> {
        let call = Call::new(
            Method::DELETE,
            wire::with_query(&wire::configuration(id), &[]),
            "nothing",
        );
        self.call_no_content(call.if_match(etag)?).await
    }

    /// Checks a target condition and metric queries without storing anything
    /// (`POST /configurations/testQueries`): an empty `targetConditionError` and no
    /// `customMetricQueryErrors` entry mean they parse.
    pub async fn test_configuration_queries(
        &self,
        input: &ConfigurationQueriesTestInput,
    ) -> Result<ConfigurationQueriesTestResponse, ServiceError> {
        let call = Call::new(
            Method::POST,
            wire::with_query("/configurations/testQueries", &[]),
            "the query test results",
        );
        self.call_json(call.json_body(input)?).await
    }
}

fn request_id(configuration: &ConfigurationRequest) -> Result<&str, ServiceError> {
    configuration
        .id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ServiceError::InvalidRequest {
            reason: "the configuration has no id".to_owned(),
        })
}
