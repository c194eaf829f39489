//! Automatic device management: the configuration service (create, update, read, delete, test queries) and
//! the engine that keeps every twin's configurations, desired content and the metrics up to date.
//!
//! # The engine
//! One task ([`run`]) owns the evaluation. Each round it re-evaluates the twins a trigger may have changed:
//! - device triggers, read from the store's change feed: identity created or updated, tags or reported
//!   properties written (`updateTwin` whose body has `tags` or `properties.reported`), twin replaced; a
//!   deleted identity only leaves the engine's books. Desired-only writes (including the engine's own) and
//!   connection events are not triggers;
//! - configuration triggers, signalled by the service after a durable create, update or delete: every twin
//!   the configuration targeted before, plus every twin its target condition selects now (through the
//!   store's index);
//! - a full sweep of every twin at start-up, and whenever the change feed shows a gap (the engine fell
//!   behind its retention), so that nothing missed while stopped stays wrong.
//!
//! For each twin it evaluates every configuration of its kind (device or module) on the twin's JSON, picks
//! the winner (`fleethub_core::configuration::winner`) and, if that differs from what the twin records,
//! writes the assignment through `Store::assign_configurations`: statuses, and on a change of winner one
//! desired patch removing the old settings and writing the new, pushed to the device in commit order like
//! any service write. The bookkeeping lives in the twin, so a restart loses nothing.
//!
//! Coalescing and bound: a round starts [`COALESCE`] after the first trigger that found the engine idle, and
//! takes every trigger pending by then; triggers arriving during a round make the next one. Each twin is
//! evaluated once per round however many triggers it had. So a change is acted on within `COALESCE` plus
//! the length of a round, which grows with the twins it writes ([`CONCURRENCY`] in flight, their writes
//! group-committed). Measured on 2 cores, debug build (`tests/configurations.rs` holds the 1 s bound): a tag
//! change reaches the connected device as a desired patch in ~20 ms; a new configuration over 500 twins is
//! applied to all in ~0.25 s, over 2000 in ~0.65 s. Metrics are recomputed after rounds that had triggers, at
//! most every [`METRICS_INTERVAL`].
//!
//! Cancellation: rounds stop between steps at shutdown; a store write once queued completes, and the next
//! start-up sweep repairs whatever a round left undone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fleethub_core::configuration::{
    Assignment, Candidate, Configuration, ConfigurationError, ConfigurationId,
    ConfigurationIdError, ConfigurationKind, ConfigurationSpec, DesiredContent, MAX_CONFIGURATIONS,
    Winner, parse_content, winner,
};
use fleethub_core::identity::IdentityKey;
use fleethub_protocol::changes::{ChangeOperation, ChangeRecord};
use fleethub_protocol::configurations::{
    APPLIED_COUNT, Configuration as ConfigurationJson, ConfigurationMetrics,
    ConfigurationQueriesTestInput, ConfigurationQueriesTestResponse, ConfigurationRequest,
    TARGETED_COUNT,
};
use fleethub_protocol::ids::{ETag, IfMatch};
use fleethub_query::{Predicate, Query, Source};
use fleethub_store::{
    AssignConfigurations, ChangeFilter, DeviceRecord, StoreError, TwinCommitHook, TwinQuery,
    TwinUpdated,
};
use futures_util::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::query::MAX_ITEM_COUNT;
use crate::services::{Services, push_desired_patch};

/// How long the engine waits after the first trigger before starting a round, to take a burst at once.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Least time between two recomputations of the metrics.
pub const METRICS_INTERVAL: Duration = Duration::from_millis(200);
/// Twins evaluated (read and, if needed, written) at once.
const CONCURRENCY: usize = 64;
/// Change-feed records read per call.
const CHANGES_PAGE: usize = 1000;
/// Twins read per page in a sweep.
const SWEEP_PAGE: usize = 500;

/// Shared between the service (REST) and the engine: pending configuration changes, the latest metrics, and
/// how far the engine got.
pub struct Configurations {
    pending: Mutex<Pending>,
    wake: Notify,
    metrics: RwLock<HashMap<ConfigurationId, Metrics>>,
    progress: watch::Sender<Progress>,
}

#[derive(Default)]
struct Pending {
    ids: BTreeSet<ConfigurationId>,
    /// Counts every configuration change signalled so far.
    generation: u64,
}

/// Where the engine stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Every change-feed record up to this sequence has been acted on.
    changes: u64,
    /// Every configuration change up to this generation has been acted on.
    generation: u64,
    /// Whether metrics still lag the triggers acted on.
    metrics_pending: bool,
    /// The start-up sweep is done.
    started: bool,
}

/// A configuration's metrics as last computed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub targeted: u64,
    pub applied: u64,
    /// Custom metric name -> rows its query returned.
    pub custom: BTreeMap<String, u64>,
}

impl Default for Configurations {
    fn default() -> Self {
        Self::new()
    }
}

impl Configurations {
    pub fn new() -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            metrics: RwLock::new(HashMap::new()),
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Tells the engine a configuration was created, updated or deleted (after the store write).
    fn changed(&self, id: &ConfigurationId) {
        {
            let mut pending = self.pending.lock().expect("pending lock poisoned");
            pending.ids.insert(id.clone());
            pending.generation += 1;
        }
        self.wake.notify_one();
    }

    fn take_pending(&self) -> (BTreeSet<ConfigurationId>, u64) {
        let mut pending = self.pending.lock().expect("pending lock poisoned");
        (std::mem::take(&mut pending.ids), pending.generation)
    }

    pub fn metrics(&self, id: &ConfigurationId) -> Metrics {
        self.metrics
            .read()
            .expect("metrics lock poisoned")
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

impl Services {
    /// Resolves once the engine has acted on every trigger that happened before the call (twin changes
    /// already in the change feed, configuration changes already acknowledged) and the metrics reflect them.
    pub async fn configurations_settled(&self) {
        let changes = *self.store.change_notifier().borrow();
        let generation = self
            .configurations
            .pending
            .lock()
            .expect("pending lock poisoned")
            .generation;
        let mut progress = self.configurations.progress.subscribe();
        // The engine lives as long as the hub; a closed channel means shutdown, when nothing settles.
        let _ = progress
            .wait_for(|progress| {
                progress.started
                    && progress.changes >= changes
                    && progress.generation >= generation
                    && !progress.metrics_pending
            })
            .await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// The service

/// Why a configuration request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationRequestError {
    #[error(transparent)]
    InvalidId(#[from] ConfigurationIdError),
    #[error("the body's id {body:?} is not the id in the path {path:?}")]
    IdMismatch { path: String, body: String },
    /// An id that cannot exist, in a read or a delete.
    #[error("configuration {0} not found")]
    NotFound(String),
    #[error("targetCondition {condition:?}: {message}")]
    InvalidTargetCondition { condition: String, message: String },
    #[error("metric {name:?}: {message}")]
    InvalidMetricQuery { name: String, message: String },
    #[error(transparent)]
    Rules(#[from] ConfigurationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which twins a target condition selects.
#[derive(Debug, Clone)]
enum Target {
    /// An empty condition: no twin.
    Nothing,
    /// `*`: every device.
    Everything,
    Query(Box<Query>),
}

impl Target {
    fn parse(kind: ConfigurationKind, condition: &str) -> Result<Self, String> {
        let trimmed = condition.trim();
        if trimmed.is_empty() {
            return Ok(Target::Nothing);
        }
        match kind {
            ConfigurationKind::Device if trimmed == "*" => Ok(Target::Everything),
            ConfigurationKind::Device => fleethub_query::parse_condition(trimmed, Source::Devices)
                .map(|query| Target::Query(Box::new(query)))
                .map_err(|error| error.to_string()),
            ConfigurationKind::Module if trimmed == "*" => Err(
                "the wildcard can't be used to target all modules; write FROM devices.modules WHERE ..."
                    .into(),
            ),
            ConfigurationKind::Module => {
                let starts_with_from = trimmed
                    .get(..4)
                    .is_some_and(|word| word.eq_ignore_ascii_case("from"));
                if !starts_with_from {
                    return Err(
                        "a module configuration targets FROM devices.modules WHERE <condition>".into(),
                    );
                }
                let query = fleethub_query::parse(&format!("SELECT * {trimmed}"))
                    .map_err(|error| error.to_string())?;
                if query.source != Source::Modules || query.is_aggregate() || query.top.is_some() {
                    return Err(
                        "a module configuration targets FROM devices.modules WHERE <condition>".into(),
                    );
                }
                Ok(Target::Query(Box::new(query)))
            }
        }
    }

    fn matches(&self, twin: &serde_json::Value) -> bool {
        match self {
            Target::Nothing => false,
            Target::Everything => true,
            Target::Query(query) => query.matches(twin),
        }
    }
}

/// Checks a custom metric query: a full query over `devices` or `devices.modules`.
fn check_metric_query(text: &str) -> Result<(), String> {
    let query = fleethub_query::parse(text).map_err(|error| error.to_string())?;
    match query.source {
        Source::Devices | Source::Modules => Ok(()),
        Source::Jobs => {
            Err("metric queries count twins: FROM devices or FROM devices.modules".into())
        }
    }
}

fn check_queries(
    kind: ConfigurationKind,
    spec: &ConfigurationSpec,
) -> Result<(), ConfigurationRequestError> {
    Target::parse(kind, &spec.target_condition).map_err(|message| {
        ConfigurationRequestError::InvalidTargetCondition {
            condition: spec.target_condition.clone(),
            message,
        }
    })?;
    for (name, text) in &spec.metric_queries {
        check_metric_query(text).map_err(|message| {
            ConfigurationRequestError::InvalidMetricQuery {
                name: name.clone(),
                message,
            }
        })?;
    }
    Ok(())
}

/// A target condition's kind as `testQueries` guesses it: module configurations start with `FROM`.
fn kind_of_condition(condition: &str) -> ConfigurationKind {
    let trimmed = condition.trim_start();
    if trimmed
        .get(..4)
        .is_some_and(|word| word.eq_ignore_ascii_case("from"))
    {
        ConfigurationKind::Module
    } else {
        ConfigurationKind::Device
    }
}

impl Services {
    /// `PUT /configurations/{id}`: creates without `If-Match` (`ConfigurationAlreadyExists` if it exists),
    /// updates with it (only targetCondition, priority, labels and metrics may change).
    pub async fn put_configuration(
        &self,
        id: &str,
        request: ConfigurationRequest,
        if_match: Option<IfMatch>,
    ) -> Result<ConfigurationJson, ConfigurationRequestError> {
        let configuration_id = ConfigurationId::new(id)?;
        if let Some(body_id) = request.id.as_deref().filter(|body_id| !body_id.is_empty())
            && body_id != id
        {
            return Err(ConfigurationRequestError::IdMismatch {
                path: id.to_owned(),
                body: body_id.to_owned(),
            });
        }
        let spec = ConfigurationSpec {
            schema_version: request.schema_version,
            labels: request.labels.unwrap_or_default(),
            content: request.content,
            target_condition: request.target_condition.unwrap_or_default(),
            priority: request.priority.unwrap_or(0),
            metric_queries: request
                .metrics
                .and_then(|metrics| metrics.queries)
                .unwrap_or_default(),
        };
        let now = self.now();
        let configuration = match if_match {
            None => {
                let configuration = Configuration::create(configuration_id, spec.clone(), now)?;
                check_queries(configuration.kind, &spec)?;
                self.store
                    .create_configuration(configuration, MAX_CONFIGURATIONS)
                    .await?
            }
            Some(if_match) => {
                let kind = match &spec.content {
                    Some(content) => parse_content(content)?.0,
                    None => {
                        self.store
                            .get_configuration(&configuration_id)
                            .await?
                            .ok_or_else(|| {
                                StoreError::ConfigurationNotFound(configuration_id.clone())
                            })?
                            .kind
                    }
                };
                check_queries(kind, &spec)?;
                self.store
                    .update_configuration(&configuration_id, spec, if_match, now)
                    .await?
            }
        };
        self.configurations.changed(&configuration.id);
        Ok(self.configuration_json(&configuration))
    }

    /// `GET /configurations/{id}`. An id that cannot exist is simply not found.
    pub async fn get_configuration(
        &self,
        id: &str,
    ) -> Result<ConfigurationJson, ConfigurationRequestError> {
        let id = ConfigurationId::new(id)
            .map_err(|_| ConfigurationRequestError::NotFound(id.to_owned()))?;
        let configuration = self
            .store
            .get_configuration(&id)
            .await?
            .ok_or(StoreError::ConfigurationNotFound(id))?;
        Ok(self.configuration_json(&configuration))
    }

    /// `GET /configurations?top=n`: by id.
    pub async fn list_configurations(
        &self,
        top: usize,
    ) -> Result<Vec<ConfigurationJson>, StoreError> {
        Ok(self
            .store
            .list_configurations(top)
            .await?
            .iter()
            .map(|configuration| self.configuration_json(configuration))
            .collect())
    }

    /// `DELETE /configurations/{id}`: the twins it was applied to fall back to their next configuration.
    pub async fn delete_configuration(
        &self,
        id: &str,
        if_match: IfMatch,
    ) -> Result<(), ConfigurationRequestError> {
        let id = ConfigurationId::new(id)
            .map_err(|_| ConfigurationRequestError::NotFound(id.to_owned()))?;
        self.store.delete_configuration(&id, if_match).await?;
        self.configurations.changed(&id);
        Ok(())
    }

    /// `POST /configurations/testQueries`: the errors of a target condition and of custom metric queries.
    pub fn test_configuration_queries(
        &self,
        input: &ConfigurationQueriesTestInput,
    ) -> ConfigurationQueriesTestResponse {
        let condition = input.target_condition.as_deref().unwrap_or_default();
        let target_condition_error = Target::parse(kind_of_condition(condition), condition)
            .err()
            .unwrap_or_default();
        let custom_metric_query_errors = input
            .custom_metric_queries
            .iter()
            .flatten()
            .filter_map(|(name, text)| {
                check_metric_query(text)
                    .err()
                    .map(|message| (name.clone(), message))
            })
            .collect();
        ConfigurationQueriesTestResponse {
            target_condition_error,
            custom_metric_query_errors,
        }
    }

    /// The wire form, with the metrics the engine last computed.
    fn configuration_json(&self, configuration: &Configuration) -> ConfigurationJson {
        let metrics = self.configurations.metrics(&configuration.id);
        let (select, collection) = match configuration.kind {
            ConfigurationKind::Device => ("select deviceId", "devices"),
            ConfigurationKind::Module => ("select deviceId, moduleId", "devices.modules"),
        };
        let condition = configuration.target_condition.trim();
        let targeted_query = match (configuration.kind, condition) {
            (_, "") => String::new(),
            (ConfigurationKind::Device, "*") => format!("{select} from {collection}"),
            (ConfigurationKind::Device, condition) => {
                format!("{select} from {collection} where {condition}")
            }
            (ConfigurationKind::Module, condition) => format!("{select} {condition}"),
        };
        let applied_query = format!(
            "{select} from {collection} where configurations.[[{}]].status = 'Applied'",
            configuration.id
        );
        ConfigurationJson {
            id: configuration.id.to_string(),
            schema_version: configuration.schema_version.clone(),
            labels: configuration.labels.clone(),
            content: configuration.content.clone(),
            target_condition: configuration.target_condition.clone(),
            created_time_utc: configuration.created_time,
            last_updated_time_utc: configuration.last_updated_time,
            priority: configuration.priority,
            system_metrics: ConfigurationMetrics {
                results: BTreeMap::from([
                    (TARGETED_COUNT.to_owned(), metrics.targeted),
                    (APPLIED_COUNT.to_owned(), metrics.applied),
                ]),
                queries: BTreeMap::from([
                    (TARGETED_COUNT.to_owned(), targeted_query),
                    (APPLIED_COUNT.to_owned(), applied_query),
                ]),
            },
            metrics: ConfigurationMetrics {
                results: configuration
                    .metric_queries
                    .keys()
                    .map(|name| (name.clone(), metrics.custom.get(name).copied().unwrap_or(0)))
                    .collect(),
                queries: configuration.metric_queries.clone(),
            },
            etag: ETag::new(configuration.etag()),
        }
    }

    /// Writes an assignment and pushes the resulting desired patch, as `update_twin` does.
    async fn assign(
        &self,
        key: &IdentityKey,
        assignment: Assignment,
    ) -> Result<TwinUpdated, StoreError> {
        let sessions = Arc::clone(&self.sessions);
        let target = key.clone();
        let push: TwinCommitHook = Box::new(move |updated: &TwinUpdated| {
            if let Some(patch) = &updated.desired_patch_for_device {
                push_desired_patch(
                    &sessions,
                    &target,
                    updated.record.twin.desired_version(),
                    patch,
                );
            }
        });
        self.store
            .assign_configurations(AssignConfigurations {
                key: key.clone(),
                assignment,
                now: self.now(),
                on_commit: Some(push),
            })
            .await
    }
}

// ---------------------------------------------------------------------------------------------------------
// The engine

/// A configuration ready for evaluation.
struct Compiled {
    configuration: Configuration,
    target: Target,
    content: DesiredContent,
}

impl Compiled {
    fn new(configuration: Configuration) -> Self {
        // Stored configurations were checked when written; a condition this version cannot parse targets
        // nothing rather than everything.
        let target = Target::parse(configuration.kind, &configuration.target_condition)
            .unwrap_or_else(|message| {
                tracing::warn!(configuration = %configuration.id, %message, "target condition does not parse; it targets nothing");
                Target::Nothing
            });
        let content = configuration.desired_content();
        Self {
            configuration,
            target,
            content,
        }
    }
}

/// The twins a round re-evaluates, with the record when it was already read in this round.
type Dirty = BTreeMap<IdentityKey, Option<DeviceRecord>>;

/// What the engine knows of a twin's configurations (mirrors the twin's own bookkeeping).
#[derive(Clone, Debug, Default, PartialEq)]
struct TwinState {
    targeted: BTreeSet<ConfigurationId>,
    applied: Option<ConfigurationId>,
}

impl TwinState {
    fn of(record: &DeviceRecord) -> Self {
        let configurations = record.twin.configurations();
        Self {
            targeted: configurations.targeted().clone(),
            applied: configurations.applied().map(|applied| applied.id.clone()),
        }
    }

    fn is_empty(&self) -> bool {
        self.targeted.is_empty() && self.applied.is_none()
    }
}

struct Engine {
    services: Arc<Services>,
    configurations: BTreeMap<ConfigurationId, Compiled>,
    /// Twins with any configuration state.
    twins: HashMap<IdentityKey, TwinState>,
    /// The newest change-feed sequence acted on.
    cursor: u64,
    generation: u64,
    metrics_due: bool,
    metrics_computed_at: Option<tokio::time::Instant>,
}

/// What wakes the engine between rounds.
enum Wake {
    Shutdown,
    /// The change feed moved or a configuration changed.
    Triggers,
    /// Metrics are due after a throttled recomputation.
    MetricsDue,
}

/// Runs the engine until `shutdown`.
pub async fn run(services: Arc<Services>, shutdown: CancellationToken) {
    let mut notifier = services.store.change_notifier();
    let mut engine = Engine {
        services: Arc::clone(&services),
        configurations: BTreeMap::new(),
        twins: HashMap::new(),
        cursor: *notifier.borrow_and_update(),
        generation: 0,
        metrics_due: true,
        metrics_computed_at: None,
    };
    // Start-up: every configuration and a full sweep, from a cursor taken before reading anything.
    let (_, generation) = services.configurations.take_pending();
    engine.generation = generation;
    // Without the configurations a sweep would strip every twin of its settings: retry until they load.
    loop {
        match services.store.list_configurations(usize::MAX).await {
            Ok(configurations) => {
                for configuration in configurations {
                    engine
                        .configurations
                        .insert(configuration.id.clone(), Compiled::new(configuration));
                }
                break;
            }
            Err(error) => {
                tracing::error!(%error, "cannot read configurations; retrying in 1 s");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = engine.sweep() => {}
    }
    engine.refresh_metrics().await;
    engine.publish();

    loop {
        let metrics_wait = async {
            match (engine.metrics_due, engine.metrics_computed_at) {
                (true, Some(at)) => tokio::time::sleep_until(at + METRICS_INTERVAL).await,
                (true, None) => {}
                (false, _) => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            () = shutdown.cancelled() => Wake::Shutdown,
            changed = notifier.changed() => match changed {
                Ok(()) => Wake::Triggers,
                // The store is gone: the hub is stopping.
                Err(_) => Wake::Shutdown,
            },
            () = services.configurations.wake.notified() => Wake::Triggers,
            () = metrics_wait => Wake::MetricsDue,
        };
        match wake {
            Wake::Shutdown => return,
            // Let a burst of triggers arrive, then take them all.
            Wake::Triggers => tokio::time::sleep(COALESCE).await,
            Wake::MetricsDue => {}
        }
        let target = *notifier.borrow_and_update();
        let (changed, generation) = services.configurations.take_pending();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = engine.round(changed, target) => {}
        }
        engine.generation = generation;
        let metrics_ready = engine
            .metrics_computed_at
            .is_none_or(|at| at.elapsed() >= METRICS_INTERVAL);
        if engine.metrics_due && metrics_ready {
            engine.refresh_metrics().await;
        }
        engine.publish();
    }
}

impl Engine {
    /// Publishes how far the engine got (after the start-up sweep).
    fn publish(&self) {
        self.services
            .configurations
            .progress
            .send_replace(Progress {
                changes: self.cursor,
                generation: self.generation,
                metrics_pending: self.metrics_due,
                started: true,
            });
    }

    /// One round: configuration changes, then the change feed up to `target`, then the affected twins.
    async fn round(&mut self, changed: BTreeSet<ConfigurationId>, target: u64) {
        let mut dirty = Dirty::new();
        let mut sweep = false;
        for id in changed {
            self.metrics_due = true;
            for (key, state) in &self.twins {
                if state.targeted.contains(&id) || state.applied.as_ref() == Some(&id) {
                    dirty.entry(key.clone()).or_insert(None);
                }
            }
            let stored = match self.services.store.get_configuration(&id).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::error!(configuration = %id, %error, "cannot read a changed configuration; sweeping instead");
                    sweep = true;
                    continue;
                }
            };
            match stored {
                Some(configuration) => {
                    let compiled = Compiled::new(configuration);
                    match self.selected_twins(&compiled).await {
                        Ok(Some(records)) => {
                            for record in records {
                                dirty.insert(record.key.clone(), Some(record));
                            }
                        }
                        Ok(None) => sweep = true,
                        Err(error) => {
                            tracing::error!(configuration = %id, %error, "cannot resolve a target condition; sweeping instead");
                            sweep = true;
                        }
                    }
                    self.configurations.insert(id, compiled);
                }
                None => {
                    self.configurations.remove(&id);
                    self.services
                        .configurations
                        .metrics
                        .write()
                        .expect("metrics lock poisoned")
                        .remove(&id);
                }
            }
        }
        match self.read_triggers(target, &mut dirty).await {
            Ok(gap) => sweep |= gap,
            Err(error) => {
                tracing::error!(%error, "cannot read the change feed; sweeping instead");
                sweep = true;
                self.cursor = target;
            }
        }
        if sweep {
            self.sweep().await;
        } else if !dirty.is_empty() {
            // Custom metrics read reported properties: any trigger may move them.
            self.metrics_due = true;
            self.evaluate_twins(dirty).await;
        }
    }

    /// The twins a configuration's target condition selects now, through the store's index; `None` when it
    /// selects every twin of its kind (a sweep is cheaper than listing them).
    async fn selected_twins(
        &self,
        compiled: &Compiled,
    ) -> Result<Option<Vec<DeviceRecord>>, StoreError> {
        let query = match &compiled.target {
            Target::Nothing => return Ok(Some(Vec::new())),
            Target::Everything => return Ok(None),
            Target::Query(query) => query,
        };
        let pushdown = query.pushdown();
        let modules = compiled.configuration.kind == ConfigurationKind::Module;
        let mut selected = Vec::new();
        let mut after = None;
        loop {
            let records = self
                .services
                .store
                .query_twins(TwinQuery {
                    modules,
                    filter: pushdown.predicate.clone(),
                    after: after.take(),
                    limit: SWEEP_PAGE,
                })
                .await?;
            let exhausted = records.len() < SWEEP_PAGE;
            after = records.last().map(|record| record.key.clone());
            selected.extend(
                records
                    .into_iter()
                    .filter(|record| query.matches(&record.twin_json())),
            );
            if exhausted {
                return Ok(Some(selected));
            }
        }
    }

    /// Reads the change feed from the cursor up to `target`, collecting the twins to re-evaluate. Returns
    /// whether records were lost (trimmed before they were read).
    async fn read_triggers(&mut self, target: u64, dirty: &mut Dirty) -> Result<bool, StoreError> {
        // With no configuration and no twin state there is nothing a trigger could change.
        if self.configurations.is_empty() && self.twins.is_empty() {
            self.cursor = self.cursor.max(target);
            return Ok(false);
        }
        let mut gap = false;
        while self.cursor < target {
            let records = self
                .services
                .store
                .read_changes(self.cursor, CHANGES_PAGE, ChangeFilter::all())
                .await?;
            let Some(last) = records.last() else {
                // Trimmed away entirely.
                self.cursor = target;
                return Ok(true);
            };
            gap |= records[0].sequence > self.cursor + 1;
            self.cursor = last.sequence;
            for record in &records {
                self.note_change(record, dirty);
            }
        }
        Ok(gap)
    }

    fn note_change(&mut self, record: &ChangeRecord, dirty: &mut Dirty) {
        // A job's or a rollout's own record is about no twin.
        let Some(device_id) = &record.device_id else {
            return;
        };
        let key = match &record.module_id {
            Some(module) => IdentityKey::module(device_id.clone(), module.clone()),
            None => IdentityKey::device(device_id.clone()),
        };
        match record.operation {
            ChangeOperation::CreateDeviceIdentity
            | ChangeOperation::UpdateDeviceIdentity
            | ChangeOperation::ReplaceTwin => {
                // A twin read earlier in the round may predate this change: read it again.
                dirty.insert(key, None);
            }
            ChangeOperation::UpdateTwin => {
                let tags = record.body.get("tags").is_some();
                let reported = record.body.pointer("/properties/reported").is_some();
                if tags || reported {
                    dirty.insert(key, None);
                }
            }
            ChangeOperation::DeleteDeviceIdentity => {
                dirty.remove(&key);
                if self.twins.remove(&key).is_some() {
                    self.metrics_due = true;
                }
            }
            ChangeOperation::DeviceConnected
            | ChangeOperation::DeviceDisconnected
            | ChangeOperation::DeviceJobUpdated
            | ChangeOperation::JobUpdated
            | ChangeOperation::DeviceRolloutUpdated
            | ChangeOperation::RolloutUpdated => {}
        }
    }

    /// Re-evaluates some twins, reading those not read yet.
    async fn evaluate_twins(&mut self, twins: Dirty) {
        let outcomes: Vec<(IdentityKey, Option<TwinState>)> = {
            let services = &self.services;
            let configurations = &self.configurations;
            futures_util::stream::iter(twins)
                .map(|(key, record)| async move {
                    let record = match record {
                        Some(record) => Ok(Some(record)),
                        None => services.store.get(&key).await,
                    };
                    let state = match record {
                        Ok(Some(record)) => {
                            evaluate_record(services, configurations, record).await
                        }
                        Ok(None) => Some(TwinState::default()),
                        Err(error) => {
                            tracing::warn!(twin = %key, %error, "cannot read a twin to evaluate configurations");
                            None
                        }
                    };
                    (key, state)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await
        };
        for (key, state) in outcomes {
            if let Some(state) = state {
                self.record_state(key, state);
            }
        }
    }

    fn record_state(&mut self, key: IdentityKey, state: TwinState) {
        let previous = if state.is_empty() {
            self.twins.remove(&key)
        } else {
            self.twins.insert(key, state.clone())
        };
        if previous.unwrap_or_default() != state {
            self.metrics_due = true;
        }
    }

    /// Evaluates every twin, devices then modules, and rebuilds the books from what the twins record.
    async fn sweep(&mut self) {
        let mut twins = HashMap::new();
        for modules in [false, true] {
            let mut after = None;
            loop {
                let page = self
                    .services
                    .store
                    .query_twins(TwinQuery {
                        modules,
                        filter: Predicate::True,
                        after: after.take(),
                        limit: SWEEP_PAGE,
                    })
                    .await;
                let records = match page {
                    Ok(records) => records,
                    Err(error) => {
                        tracing::error!(%error, "configuration sweep stopped: cannot read twins");
                        return;
                    }
                };
                let exhausted = records.len() < SWEEP_PAGE;
                after = records.last().map(|record| record.key.clone());
                let services = &self.services;
                let configurations = &self.configurations;
                let outcomes: Vec<(IdentityKey, Option<TwinState>)> =
                    futures_util::stream::iter(records)
                        .map(|record| async move {
                            let key = record.key.clone();
                            let fallback = TwinState::of(&record);
                            let state = evaluate_record(services, configurations, record)
                                .await
                                .unwrap_or(fallback);
                            (key, Some(state))
                        })
                        .buffer_unordered(CONCURRENCY)
                        .collect()
                        .await;
                for (key, state) in outcomes {
                    if let Some(state) = state.filter(|state| !state.is_empty()) {
                        twins.insert(key, state);
                    }
                }
                if exhausted {
                    break;
                }
            }
        }
        self.twins = twins;
        self.metrics_due = true;
    }

    /// Recomputes every configuration's metrics: system metrics from the books, custom ones by running their
    /// queries.
    async fn refresh_metrics(&mut self) {
        let mut all = HashMap::new();
        for (id, compiled) in &self.configurations {
            let mut metrics = Metrics::default();
            for state in self.twins.values() {
                if state.targeted.contains(id) {
                    metrics.targeted += 1;
                }
                if state.applied.as_ref() == Some(id) {
                    metrics.applied += 1;
                }
            }
            for (name, text) in &compiled.configuration.metric_queries {
                match count_rows(&self.services, text).await {
                    Ok(count) => {
                        metrics.custom.insert(name.clone(), count);
                    }
                    Err(message) => {
                        tracing::warn!(configuration = %id, metric = %name, %message, "custom metric query failed")
                    }
                }
            }
            all.insert(id.clone(), metrics);
        }
        *self
            .services
            .configurations
            .metrics
            .write()
            .expect("metrics lock poisoned") = all;
        self.metrics_due = false;
        self.metrics_computed_at = Some(tokio::time::Instant::now());
    }
}

/// The assignment for one twin from the configurations of its kind; writes it if the twin records another.
/// Returns the twin's state afterwards, or `None` if it could not be evaluated (the books keep their entry).
async fn evaluate_record(
    services: &Services,
    configurations: &BTreeMap<ConfigurationId, Compiled>,
    record: DeviceRecord,
) -> Option<TwinState> {
    let assignment = assignment_for(configurations, &record);
    if !record.twin.configurations().differs_from(&assignment) {
        return Some(TwinState::of(&record));
    }
    match services.assign(&record.key, assignment).await {
        Ok(updated) => Some(TwinState::of(&updated.record)),
        // Deleted meanwhile: its change record removes it from the books.
        Err(StoreError::NotFound(_)) => Some(TwinState::default()),
        Err(error) => {
            tracing::warn!(twin = %record.key, %error, "cannot apply configurations to a twin");
            Some(TwinState::of(&record))
        }
    }
}

/// Which configurations target a twin, and the winner with its content.
fn assignment_for(
    configurations: &BTreeMap<ConfigurationId, Compiled>,
    record: &DeviceRecord,
) -> Assignment {
    let kind = match record.key.module_id {
        Some(_) => ConfigurationKind::Module,
        None => ConfigurationKind::Device,
    };
    if !configurations
        .values()
        .any(|compiled| compiled.configuration.kind == kind)
    {
        return Assignment::default();
    }
    let twin = record.twin_json();
    let matching: Vec<&Compiled> = configurations
        .values()
        .filter(|compiled| compiled.configuration.kind == kind && compiled.target.matches(&twin))
        .collect();
    let candidates: Vec<Candidate<'_>> = matching
        .iter()
        .map(|compiled| Candidate {
            id: &compiled.configuration.id,
            priority: compiled.configuration.priority,
            created_time: compiled.configuration.created_time,
        })
        .collect();
    let winner = winner(&candidates)
        .and_then(|id| configurations.get(id))
        .map(|compiled| Winner {
            id: compiled.configuration.id.clone(),
            created_time: compiled.configuration.created_time,
            content: compiled.content.clone(),
        });
    Assignment {
        targeted: matching
            .iter()
            .map(|compiled| compiled.configuration.id.clone())
            .collect(),
        winner,
    }
}

/// The number of rows a query returns ("The metric represents the number of rows returned by the query").
async fn count_rows(services: &Services, text: &str) -> Result<u64, String> {
    let mut count = 0u64;
    let mut continuation: Option<String> = None;
    loop {
        let page = services
            .query(text, continuation.as_deref(), MAX_ITEM_COUNT)
            .await
            .map_err(|error| error.to_string())?;
        count += page.items.len() as u64;
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn target_conditions_parse_by_kind() {
        assert!(matches!(
            Target::parse(ConfigurationKind::Device, "  "),
            Ok(Target::Nothing)
        ));
        assert!(matches!(
            Target::parse(ConfigurationKind::Device, "*"),
            Ok(Target::Everything)
        ));
        let device = Target::parse(ConfigurationKind::Device, "tags.env = 'prod'").expect("valid");
        assert!(device.matches(&json!({"deviceId": "d", "tags": {"env": "prod"}})));
        assert!(!device.matches(&json!({"deviceId": "d", "tags": {"env": "test"}})));
        assert!(Target::parse(ConfigurationKind::Device, "tags.env = ").is_err());

        let module = Target::parse(
            ConfigurationKind::Module,
            "FROM devices.modules WHERE tags.env = 'prod'",
        )
        .expect("valid");
        assert!(
            module.matches(&json!({"deviceId": "d", "moduleId": "m", "tags": {"env": "prod"}}))
        );
        assert!(Target::parse(ConfigurationKind::Module, "*").is_err());
        assert!(Target::parse(ConfigurationKind::Module, "tags.env = 'prod'").is_err());
        assert!(
            Target::parse(
                ConfigurationKind::Module,
                "FROM devices WHERE tags.env = 'prod'"
            )
            .is_err()
        );
    }

    #[test]
    fn metric_queries_count_twins() {
        assert!(
            check_metric_query("SELECT deviceId FROM devices WHERE properties.reported.ok = true")
                .is_ok()
        );
        assert!(check_metric_query("SELECT deviceId, moduleId FROM devices.modules").is_ok());
        assert!(check_metric_query("SELECT * FROM devices.jobs").is_err());
        assert!(check_metric_query("SELECT deviceId FROM").is_err());
    }

    #[test]
    fn test_queries_guess_the_kind_from_the_condition() {
        assert_eq!(kind_of_condition("tags.a = 1"), ConfigurationKind::Device);
        assert_eq!(
            kind_of_condition(" from devices.modules where tags.a = 1"),
            ConfigurationKind::Module
        );
    }
}
