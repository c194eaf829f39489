//! `SELECT * FROM devices.jobs WHERE ...` over the stored per-device job records, each rendered as Azure's
//! device job (`fleethub_core::jobs::device_job`) and filtered by the query's WHERE.
//!
//! Records are visited in `(jobId, deviceId, moduleId)` order, so pages continue by key (the token holds the
//! last key returned) and a record is never skipped or repeated however jobs progress between pages. A
//! condition on `jobId` (`=` or `IN`) reads only those jobs' records; one on `deviceId` reads only that
//! device's records; anything else reads every job's. ORDER BY needs every matching record first, and then
//! pages by offset, as twin queries do.

use std::collections::HashMap;
use std::ops::ControlFlow;

use base64::Engine as _;
use fleethub_core::executor::TargetRecord;
use fleethub_core::identity::IdentityKey;
use fleethub_core::jobs::device_job;
use fleethub_protocol::ids::{DeviceId, JobId, ModuleId};
use fleethub_protocol::jobs::JobType;
use fleethub_query::{CompareOp, Predicate, Query, Scalar};
use fleethub_store::{JobFilter, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::query::{QueryPage, RunQueryError, fingerprint};
use crate::services::Services;

/// Records read from the store per call.
const STORE_PAGE: usize = 500;

/// Where to look for the records a query can match.
#[derive(Debug, PartialEq)]
enum Scope {
    /// These jobs only (sorted, no duplicates).
    Jobs(Vec<JobId>),
    /// This device's records in every job.
    Device(DeviceId),
    Everything,
}

/// The position of a record in `(jobId, deviceId, moduleId)` order.
type Cursor = (JobId, IdentityKey);

/// What a `devices.jobs` continuation token holds.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct DeviceJobsContinuation {
    /// The query's fingerprint: a token continues only the query it came from.
    q: String,
    /// The last record returned: job id, device id, module id (`""` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<(String, String, String)>,
    /// Rows returned so far (TOP), or the offset of the next page of an ORDER BY answer.
    #[serde(default)]
    n: usize,
}

impl Services {
    /// One page of a query `FROM devices.jobs` (items of type `deviceJob`).
    pub(crate) async fn query_device_jobs(
        &self,
        query: &Query,
        text: &str,
        continuation: Option<&str>,
        max_items: usize,
    ) -> Result<QueryPage, RunQueryError> {
        let continuation = continuation
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .map(|token| decode(token, text))
            .transpose()?;
        let scope = scope(&query.pushdown().predicate);
        let returned_before = continuation.as_ref().map_or(0, |token| token.n);
        let (items, next) = if query.needs_all_rows() {
            let mut aggregator = query.aggregator();
            self.visit_device_jobs(&scope, None, |job_id, job_type, record| {
                let document = render(job_id, job_type, record);
                if query.matches(&document) {
                    aggregator.push(&document);
                }
                ControlFlow::Continue(())
            })
            .await?;
            let all = aggregator.finish();
            let page: Vec<Value> = all
                .iter()
                .skip(returned_before)
                .take(max_items)
                .cloned()
                .collect();
            let next_offset = returned_before + page.len();
            let next = (next_offset < all.len()).then(|| DeviceJobsContinuation {
                q: fingerprint(text),
                after: None,
                n: next_offset,
            });
            (page, next)
        } else {
            let after = match continuation.and_then(|token| token.after) {
                Some(parts) => Some(cursor_from_parts(parts)?),
                None => None,
            };
            let wanted = match query.top {
                Some(top) => max_items.min(
                    usize::try_from(top)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(returned_before),
                ),
                None => max_items,
            };
            let mut items = Vec::new();
            let mut last: Option<Cursor> = None;
            // One matching record beyond the page says whether there is a next one, so the last page
            // carries no token (clients loop while there is one).
            let mut more = false;
            if wanted > 0 {
                self.visit_device_jobs(&scope, after, |job_id, job_type, record| {
                    let document = render(job_id, job_type, record);
                    if query.matches(&document) {
                        if items.len() == wanted {
                            more = true;
                            return ControlFlow::Break(());
                        }
                        items.push(query.project(&document));
                        last = Some((job_id.clone(), record.target.clone()));
                    }
                    ControlFlow::Continue(())
                })
                .await?;
            }
            let returned = returned_before + items.len();
            let top_reached = query.top.is_some_and(|top| returned as u64 >= top);
            let more = more && !top_reached;
            let next = match (more, last) {
                (true, Some((job_id, key))) => Some(DeviceJobsContinuation {
                    q: fingerprint(text),
                    after: Some((
                        job_id.as_str().to_owned(),
                        key.device_id.as_str().to_owned(),
                        key.module_id
                            .as_ref()
                            .map_or(String::new(), |module| module.as_str().to_owned()),
                    )),
                    n: returned,
                }),
                _ => None,
            };
            (items, next)
        };
        Ok(QueryPage {
            items,
            continuation: next.as_ref().map(encode),
            item_type: query.result_item_type(),
        })
    }

    /// Calls `visit` on the records of `scope` strictly after `after`, in `(jobId, deviceId, moduleId)`
    /// order, until it breaks.
    async fn visit_device_jobs(
        &self,
        scope: &Scope,
        after: Option<Cursor>,
        mut visit: impl FnMut(&JobId, JobType, &TargetRecord) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let store = &self.store;
        match scope {
            Scope::Device(device_id) => {
                let mut job_types: HashMap<JobId, Option<JobType>> = HashMap::new();
                for (job_id, record) in store.list_device_job_targets(device_id).await? {
                    if let Some(after) = &after
                        && (&job_id, &record.target) <= (&after.0, &after.1)
                    {
                        continue;
                    }
                    let job_type = match job_types.get(&job_id) {
                        Some(job_type) => *job_type,
                        None => {
                            let job_type = store.get_job(&job_id).await?.map(|job| job.job_type);
                            job_types.insert(job_id.clone(), job_type);
                            job_type
                        }
                    };
                    // A job deleted meanwhile has no type to show; its records are going too.
                    if let Some(job_type) = job_type
                        && visit(&job_id, job_type, &record).is_break()
                    {
                        return Ok(());
                    }
                }
                Ok(())
            }
            Scope::Jobs(job_ids) => {
                for job_id in job_ids {
                    let start = match &after {
                        Some((after_job, _)) if job_id < after_job => continue,
                        Some((after_job, key)) if job_id == after_job => Some(key.clone()),
                        _ => None,
                    };
                    if let Some(job) = store.get_job(job_id).await?
                        && self
                            .visit_job(&job.job_id, job.job_type, start, &mut visit)
                            .await?
                            .is_break()
                    {
                        return Ok(());
                    }
                }
                Ok(())
            }
            Scope::Everything => {
                let mut next_after = None;
                if let Some((job_id, key)) = &after {
                    if let Some(job) = store.get_job(job_id).await?
                        && self
                            .visit_job(job_id, job.job_type, Some(key.clone()), &mut visit)
                            .await?
                            .is_break()
                    {
                        return Ok(());
                    }
                    next_after = Some(job_id.clone());
                }
                loop {
                    let jobs = store
                        .list_jobs(JobFilter {
                            after: next_after.take(),
                            limit: STORE_PAGE,
                            ..JobFilter::default()
                        })
                        .await?;
                    let exhausted = jobs.len() < STORE_PAGE;
                    for job in &jobs {
                        if self
                            .visit_job(&job.job_id, job.job_type, None, &mut visit)
                            .await?
                            .is_break()
                        {
                            return Ok(());
                        }
                    }
                    next_after = jobs.last().map(|job| job.job_id.clone());
                    if exhausted {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Visits one job's records after `after`.
    async fn visit_job(
        &self,
        job_id: &JobId,
        job_type: JobType,
        mut after: Option<IdentityKey>,
        visit: &mut impl FnMut(&JobId, JobType, &TargetRecord) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, StoreError> {
        loop {
            let records = self
                .store
                .list_job_targets(job_id, after.take(), STORE_PAGE)
                .await?;
            for record in &records {
                if visit(job_id, job_type, record).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            if records.len() < STORE_PAGE {
                return Ok(ControlFlow::Continue(()));
            }
            after = records.last().map(|record| record.target.clone());
        }
    }
}

fn render(job_id: &JobId, job_type: JobType, record: &TargetRecord) -> Value {
    serde_json::to_value(device_job(job_id, job_type, record))
        .expect("a device job always serialises")
}

/// Narrows the records to read from the query's pushdown filter: a `jobId` equality or IN list, else a
/// `deviceId` equality, found at the top level or in a top-level AND.
fn scope(predicate: &Predicate) -> Scope {
    let conjuncts: &[Predicate] = match predicate {
        Predicate::And(list) => list,
        other => std::slice::from_ref(other),
    };
    let mut device = None;
    for conjunct in conjuncts {
        match conjunct {
            Predicate::Compare {
                path,
                op: CompareOp::Equal,
                value,
            } if is_field(path, "jobId") => return Scope::Jobs(job_ids([value])),
            Predicate::In { path, values } if is_field(path, "jobId") => {
                return Scope::Jobs(job_ids(values));
            }
            Predicate::Compare {
                path,
                op: CompareOp::Equal,
                value,
            } if is_field(path, "deviceId") && device.is_none() => {
                device = Some(match value {
                    Scalar::String(text) => text.parse::<DeviceId>().ok(),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    match device {
        Some(Some(device_id)) => Scope::Device(device_id),
        // `deviceId` equals something no device id can be: nothing matches.
        Some(None) => Scope::Jobs(Vec::new()),
        None => Scope::Everything,
    }
}

fn is_field(path: &[String], name: &str) -> bool {
    path.len() == 1 && path[0] == name
}

/// The valid job ids among `values`, sorted and without duplicates (others can match nothing).
fn job_ids<'a>(values: impl IntoIterator<Item = &'a Scalar>) -> Vec<JobId> {
    let mut ids: Vec<JobId> = values
        .into_iter()
        .filter_map(|value| match value {
            Scalar::String(text) => text.parse().ok(),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn encode(continuation: &DeviceJobsContinuation) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(continuation).expect("a continuation always serialises"))
}

fn decode(token: &str, text: &str) -> Result<DeviceJobsContinuation, RunQueryError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| RunQueryError::BadContinuation("is not one this hub issued"))?;
    let continuation: DeviceJobsContinuation = serde_json::from_slice(&bytes)
        .map_err(|_| RunQueryError::BadContinuation("is not one this hub issued"))?;
    if continuation.q != fingerprint(text) {
        return Err(RunQueryError::BadContinuation("belongs to another query"));
    }
    Ok(continuation)
}

fn cursor_from_parts(
    (job, device, module): (String, String, String),
) -> Result<Cursor, RunQueryError> {
    let damaged = |_| RunQueryError::BadContinuation("is damaged");
    let job_id: JobId = job.parse().map_err(damaged)?;
    let device_id: DeviceId = device.parse().map_err(damaged)?;
    let key = if module.is_empty() {
        IdentityKey::device(device_id)
    } else {
        IdentityKey::module(device_id, module.parse::<ModuleId>().map_err(damaged)?)
    };
    Ok((job_id, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope_of(text: &str) -> Scope {
        let query = fleethub_query::parse(text).expect("valid query");
        scope(&query.pushdown().predicate)
    }

    fn id(text: &str) -> JobId {
        text.parse().expect("valid job id")
    }

    #[test]
    fn conditions_on_job_ids_and_device_ids_narrow_what_is_read() {
        let cases = [
            (
                "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'j1'",
                Scope::Jobs(vec![id("j1")]),
            ),
            (
                "SELECT * FROM devices.jobs WHERE jobId IN ['b', 'a', 'b'] AND status = 'failed'",
                Scope::Jobs(vec![id("a"), id("b")]),
            ),
            (
                "SELECT * FROM devices.jobs WHERE status = 'completed' AND devices.jobs.deviceId = 'dev1'",
                Scope::Device("dev1".parse().expect("valid")),
            ),
            (
                "SELECT * FROM devices.jobs WHERE deviceId = 'dev1' AND jobId = 'j2'",
                Scope::Jobs(vec![id("j2")]),
            ),
            (
                "SELECT * FROM devices.jobs WHERE jobId = 5",
                Scope::Jobs(vec![]),
            ),
            (
                "SELECT * FROM devices.jobs WHERE jobId = 'bad id'",
                Scope::Jobs(vec![]),
            ),
            (
                "SELECT * FROM devices.jobs WHERE deviceId = 'a b'",
                Scope::Jobs(vec![]),
            ),
            ("SELECT * FROM devices.jobs", Scope::Everything),
            (
                "SELECT * FROM devices.jobs WHERE jobId = 'a' OR jobId = 'b'",
                Scope::Everything,
            ),
            (
                "SELECT * FROM devices.jobs WHERE NOT (jobId = 'a')",
                Scope::Everything,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(scope_of(text), expected, "{text}");
        }
    }

    #[test]
    fn tokens_continue_only_their_query() {
        let text = "SELECT * FROM devices.jobs";
        let token = encode(&DeviceJobsContinuation {
            q: fingerprint(text),
            after: Some(("j".into(), "d".into(), String::new())),
            n: 3,
        });
        let decoded = decode(&token, text).expect("own token");
        assert_eq!(decoded.n, 3);
        assert_eq!(
            cursor_from_parts(decoded.after.expect("has a key")).ok(),
            Some((id("j"), IdentityKey::device("d".parse().expect("valid"))))
        );
        assert!(matches!(
            decode(&token, "SELECT * FROM devices.jobs WHERE jobId = 'x'"),
            Err(RunQueryError::BadContinuation("belongs to another query"))
        ));
        assert!(decode("not base64!", text).is_err());
        assert!(matches!(
            cursor_from_parts(("bad id".into(), "d".into(), String::new())),
            Err(RunQueryError::BadContinuation("is damaged"))
        ));
    }
}
