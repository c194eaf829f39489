//! Running IoT Hub queries (`POST /devices/query`): parse with `fleethub-query`, filter through the store's
//! index (pushdown), evaluate the exact WHERE on what comes back, and page.
//!
//! Paging: queries answered row by row page by key (the last `(deviceId, moduleId)` returned), so a twin is
//! never skipped or repeated however the fleet changes between pages; the continuation token carries that
//! key. Queries that need every row first (aggregates, GROUP BY, ORDER BY) compute their full answer on each
//! request and page by offset into it. Tokens are opaque base64 JSON, bound to the query text.
//!
//! Read-your-writes: the store answers from committed data, and a write is acknowledged only once
//! committed, so a query issued after a write's acknowledgement sees it (Azure can lag up to 30 minutes).

use base64::Engine as _;
use fleethub_core::identity::IdentityKey;
use fleethub_query::{Pushdown, Query, QueryError, Source};
use fleethub_store::{StoreError, TwinQuery};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::services::Services;

/// `x-ms-max-item-count` bounds (Azure: 1-1000, default 100).
pub const MAX_ITEM_COUNT: usize = 1000;
pub const DEFAULT_ITEM_COUNT: usize = 100;
/// Twins read from the store per round while filling a page.
const STORE_PAGE: usize = 500;

#[derive(Debug)]
pub struct QueryPage {
    pub items: Vec<Value>,
    pub continuation: Option<String>,
    /// The `x-ms-item-type` response header.
    pub item_type: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum RunQueryError {
    #[error(transparent)]
    Invalid(#[from] QueryError),
    #[error("the continuation token {0}")]
    BadContinuation(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a continuation token holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Continuation {
    /// First 8 bytes of SHA-256 of the query text, hex: a token only continues the query it came from.
    q: String,
    /// Row-by-row queries: the key of the last row returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<(String, String)>,
    /// Rows returned so far (TOP) or, for whole-answer queries, the offset of the next page.
    #[serde(default)]
    n: usize,
}

pub(crate) fn fingerprint(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn encode(continuation: &Continuation) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(continuation).expect("a continuation always serialises"))
}

fn decode(token: &str, text: &str) -> Result<Continuation, RunQueryError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| RunQueryError::BadContinuation("is not one this hub issued"))?;
    let continuation: Continuation = serde_json::from_slice(&bytes)
        .map_err(|_| RunQueryError::BadContinuation("is not one this hub issued"))?;
    if continuation.q != fingerprint(text) {
        return Err(RunQueryError::BadContinuation("belongs to another query"));
    }
    Ok(continuation)
}

impl Services {
    /// Runs one page of a query.
    pub async fn query(
        &self,
        text: &str,
        continuation: Option<&str>,
        max_items: usize,
    ) -> Result<QueryPage, RunQueryError> {
        let query = fleethub_query::parse(text)?;
        if query.source == Source::Jobs {
            // Job records have their own order and tokens (`jobs/device_jobs.rs`).
            return self
                .query_device_jobs(&query, text, continuation, max_items)
                .await;
        }
        let continuation = continuation
            .filter(|token| !token.is_empty())
            .map(|token| decode(token, text))
            .transpose()?;
        let item_type = query.result_item_type();
        let modules = match query.source {
            Source::Devices => false,
            Source::Modules => true,
            Source::Jobs => unreachable!("devices.jobs queries are answered above"),
        };
        let (items, next) = if query.needs_all_rows() {
            let all = self.whole_answer(&query, modules).await?;
            let offset = continuation.map_or(0, |continuation| continuation.n);
            let page: Vec<Value> = all.iter().skip(offset).take(max_items).cloned().collect();
            let next_offset = offset + page.len();
            let next = (next_offset < all.len()).then(|| Continuation {
                q: fingerprint(text),
                after: None,
                n: next_offset,
            });
            (page, next)
        } else {
            self.row_page(&query, text, modules, continuation, max_items)
                .await?
        };
        Ok(QueryPage {
            items,
            continuation: next.as_ref().map(encode),
            item_type,
        })
    }

    /// The query's WHERE as the twin keys that match it (jobs and configurations target these), in key order.
    pub async fn matching_keys(
        &self,
        condition: &str,
        source: Source,
    ) -> Result<Vec<IdentityKey>, RunQueryError> {
        let query = fleethub_query::parse_condition(condition, source)?;
        let pushdown = query.pushdown();
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let records = self
                .candidates(
                    &pushdown,
                    source == Source::Modules,
                    after.take(),
                    STORE_PAGE,
                )
                .await?;
            let exhausted = records.len() < STORE_PAGE;
            after = records.last().map(|record| record.key.clone());
            for record in records {
                if query.matches(&record.twin_json()) {
                    keys.push(record.key);
                }
            }
            if exhausted {
                return Ok(keys);
            }
        }
    }

    async fn candidates(
        &self,
        pushdown: &Pushdown,
        modules: bool,
        after: Option<IdentityKey>,
        limit: usize,
    ) -> Result<Vec<fleethub_store::DeviceRecord>, StoreError> {
        self.store
            .query_twins(TwinQuery {
                modules,
                filter: pushdown.predicate.clone(),
                after,
                limit,
            })
            .await
    }

    /// A page of a query answered row by row, in key order.
    async fn row_page(
        &self,
        query: &Query,
        text: &str,
        modules: bool,
        continuation: Option<Continuation>,
        max_items: usize,
    ) -> Result<(Vec<Value>, Option<Continuation>), RunQueryError> {
        let returned_before = continuation
            .as_ref()
            .map_or(0, |continuation| continuation.n);
        let mut after = match continuation.and_then(|continuation| continuation.after) {
            Some((device, module)) => Some(key_from_parts(&device, &module)?),
            None => None,
        };
        let wanted = match query.top {
            Some(top) => max_items.min((top as usize).saturating_sub(returned_before)),
            None => max_items,
        };
        let pushdown = query.pushdown();
        let mut items = Vec::with_capacity(wanted.min(MAX_ITEM_COUNT));
        let mut last_key = None;
        let mut exhausted = wanted == 0;
        while items.len() < wanted && !exhausted {
            // An exact pushdown returns only matches: read no more than the page still needs.
            let batch = if pushdown.exact {
                (wanted - items.len()).max(16)
            } else {
                STORE_PAGE
            };
            let records = self
                .candidates(&pushdown, modules, after.clone(), batch)
                .await?;
            exhausted = records.len() < batch;
            after = records.last().map(|record| record.key.clone());
            for record in records {
                let document = record.twin_json();
                if query.matches(&document) {
                    items.push(query.project(&document));
                    last_key = Some(record.key);
                    if items.len() == wanted {
                        // Rows after this one in the page were not consumed: the next page starts here.
                        exhausted = false;
                        break;
                    }
                }
            }
        }
        let returned = returned_before + items.len();
        let top_reached = query.top.is_some_and(|top| returned as u64 >= top);
        let more = items.len() == wanted && wanted > 0 && !top_reached;
        let next = match (more, last_key) {
            (true, Some(key)) => Some(Continuation {
                q: fingerprint(text),
                after: Some((
                    key.device_id.as_ref().to_owned(),
                    key.module_id
                        .as_ref()
                        .map_or(String::new(), |m| m.as_ref().to_owned()),
                )),
                n: returned,
            }),
            _ => None,
        };
        Ok((items, next))
    }

    /// Every row of a query that needs them all (aggregates, GROUP BY, ORDER BY), streaming the twins through
    /// the aggregator page by page, never all in memory.
    async fn whole_answer(
        &self,
        query: &Query,
        modules: bool,
    ) -> Result<Vec<Value>, RunQueryError> {
        let pushdown = query.pushdown();
        let mut aggregator = query.aggregator();
        if self
            .count_from_index(query, modules, &pushdown, &mut aggregator)
            .await?
        {
            return Ok(aggregator.finish());
        }
        let mut after = None;
        loop {
            let records = self
                .candidates(&pushdown, modules, after.take(), STORE_PAGE)
                .await?;
            let exhausted = records.len() < STORE_PAGE;
            after = records.last().map(|record| record.key.clone());
            for record in records {
                let document = record.twin_json();
                if query.matches(&document) {
                    aggregator.push(&document);
                }
            }
            if exhausted {
                return Ok(aggregator.finish());
            }
        }
    }
}

impl Services {
    /// Answers `COUNT()`-only aggregates (with at most one GROUP BY path) from the store's index without reading
    /// a twin, when the WHERE is exactly its pushdown and the path is indexed: how `SELECT COUNT()` and
    /// "devices per firmwareStatus" stay fast on a million twins. Returns false (aggregator untouched) when it
    /// does not apply, and the caller evaluates twin by twin.
    async fn count_from_index(
        &self,
        query: &Query,
        modules: bool,
        pushdown: &Pushdown,
        aggregator: &mut fleethub_query::Aggregator<'_>,
    ) -> Result<bool, RunQueryError> {
        if !pushdown.exact || !aggregator.counts_only() || !query.order_by.is_empty() {
            return Ok(false);
        }
        match query.group_by.as_slice() {
            [] => {
                let Some(total) = self.store.count_twins(modules, pushdown.clone()).await? else {
                    return Ok(false);
                };
                aggregator.push_counted(&Value::Object(Default::default()), total);
                Ok(true)
            }
            [fleethub_query::ast::Expr::Path(path)] => {
                let Some(names) = path.names() else {
                    return Ok(false);
                };
                let Some(counts) = self
                    .store
                    .group_count(modules, pushdown.clone(), names.clone())
                    .await?
                else {
                    return Ok(false);
                };
                let fleethub_store::GroupCounts {
                    groups,
                    defined,
                    total,
                } = counts;
                // Objects and arrays at the path are their own groups, which the index cannot tell apart.
                let scalars: u64 = groups.iter().map(|(_, count)| count).sum();
                if scalars != defined {
                    return Ok(false);
                }
                for (value, count) in groups {
                    aggregator.push_counted(&document_with(&names, value), count);
                }
                aggregator.push_counted(&Value::Object(Default::default()), total - defined);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// `{"a": {"b": value}}` for the path `a.b`: just enough document for the GROUP BY key to evaluate.
fn document_with(names: &[String], value: Value) -> Value {
    names.iter().rev().fold(value, |inner, name| {
        let mut object = serde_json::Map::new();
        object.insert(name.clone(), inner);
        Value::Object(object)
    })
}

fn key_from_parts(device: &str, module: &str) -> Result<IdentityKey, RunQueryError> {
    let bad = |_| RunQueryError::BadContinuation("is damaged");
    let device_id = device.parse().map_err(bad)?;
    Ok(if module.is_empty() {
        IdentityKey::device(device_id)
    } else {
        IdentityKey::module(device_id, module.parse().map_err(bad)?)
    })
}
