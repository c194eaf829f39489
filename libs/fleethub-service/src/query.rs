//! Twin queries (`POST /devices/query`): one page at a time, or every result as a stream that follows the
//! continuation tokens.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use fleethub_protocol::rest::QuerySpecification;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::Value;

use crate::{ServiceClient, ServiceError};

/// One page of query results.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    pub items: Vec<Value>,
    /// `x-ms-item-type`: `twin`, `deviceJob`, `raw`, ...
    pub item_type: Option<String>,
    /// Pass it back to get the next page; `None` on the last page.
    pub continuation: Option<String>,
}

impl ServiceClient {
    /// One page of a query: at most `max_items` (1-1000; the hub's default is 100) results after
    /// `continuation`.
    pub async fn query_page(
        &self,
        query: &str,
        continuation: Option<&str>,
        max_items: Option<u32>,
    ) -> Result<QueryPage, ServiceError> {
        let mut headers = Vec::new();
        let max_items = max_items.map(|count| count.to_string());
        if let Some(count) = &max_items {
            headers.push(("x-ms-max-item-count", count.as_str()));
        }
        if let Some(token) = continuation {
            headers.push(("x-ms-continuation", token));
        }
        let body = serde_json::to_vec(&QuerySpecification {
            query: query.to_owned(),
        })
        .map_err(|error| ServiceError::InvalidRequest {
            reason: format!("the query does not serialise: {error}"),
        })?;
        let path = crate::wire::with_query("/devices/query", &[]);
        let response = self
            .raw(Method::POST, &path, &headers, Some(body))
            .await?
            .error_for_status()?;
        let header = |name: &str| {
            response
                .headers
                .get(name)
                .and_then(|value: &HeaderValue| value.to_str().ok())
                .map(str::to_owned)
        };
        let items: Vec<Value> =
            serde_json::from_slice(&response.body).map_err(|source| ServiceError::Decode {
                what: "query results",
                body: String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(512)
                    .collect(),
                source,
            })?;
        Ok(QueryPage {
            items,
            item_type: header("x-ms-item-type"),
            continuation: header("x-ms-continuation").filter(|token| !token.is_empty()),
        })
    }

    /// Every result of a query, fetching pages of `page_size` as the stream is read.
    pub fn query(&self, query: &str, page_size: Option<u32>) -> QueryStream {
        let state = State {
            client: self.clone(),
            query: query.to_owned(),
            page_size,
            continuation: None,
            buffer: VecDeque::new(),
            done: false,
        };
        QueryStream {
            inner: Box::pin(futures_util::stream::unfold(state, next_item)),
        }
    }
}

/// The results of [`ServiceClient::query`], in order. An error ends the stream.
pub struct QueryStream {
    inner: Pin<Box<dyn Stream<Item = Result<Value, ServiceError>> + Send>>,
}

impl QueryStream {
    pub async fn next(&mut self) -> Option<Result<Value, ServiceError>> {
        self.inner.next().await
    }

    /// Reads the whole stream.
    pub async fn collect_all(mut self) -> Result<Vec<Value>, ServiceError> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await {
            items.push(item?);
        }
        Ok(items)
    }
}

impl Stream for QueryStream {
    type Item = Result<Value, ServiceError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(context)
    }
}

struct State {
    client: ServiceClient,
    query: String,
    page_size: Option<u32>,
    continuation: Option<String>,
    buffer: VecDeque<Value>,
    done: bool,
}

async fn next_item(mut state: State) -> Option<(Result<Value, ServiceError>, State)> {
    loop {
        if let Some(item) = state.buffer.pop_front() {
            return Some((Ok(item), state));
        }
        if state.done {
            return None;
        }
        match state
            .client
            .query_page(&state.query, state.continuation.as_deref(), state.page_size)
            .await
        {
            Ok(page) => {
                state.buffer.extend(page.items);
                state.done = page.continuation.is_none();
                state.continuation = page.continuation;
            }
            Err(error) => {
                state.done = true;
                return Some((Err(error), state));
            }
        }
    }
}
