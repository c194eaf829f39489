//! The fleethub server: wires the store, the services, the MQTT gateway and the REST API together and runs
//! them until shutdown. `start` is what `fleethub serve` and the integration tests call.

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod c2d;
pub mod certificates;
pub mod config;
pub mod configurations;
pub mod desired;
pub mod events;
pub mod jobs;
pub mod listeners;
pub mod methods;
pub mod metrics;
pub mod mqtt;
pub mod query;
pub mod rest;
mod retry;
pub mod rollouts;
pub mod routing;
pub mod services;
pub mod sessions;
pub mod throttle;
pub mod tls;
pub mod tls_stream;
mod websocket;
pub mod x509;

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleethub_core::access::{AccessPolicy, BUILT_IN_POLICIES};
use fleethub_store::{SqliteStore, SqliteStoreOptions, Store, StoreError};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{HubConfig, HubLimits, ServerCertificateFiles};
pub use services::Services;

use crate::listeners::ConnectionLimiter;
use crate::sessions::CloseReason;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "fleethub.db";
/// The event log's directory inside the data directory.
pub const EVENTS_DIRECTORY: &str = "events";
/// Held with an exclusive lock while a hub serves the data directory.
const LOCK_FILE: &str = "fleethub.lock";
/// Keys in the store's metadata that `fleethub connection-string` reads.
pub const META_HOSTNAME: &str = "hostname";
pub const META_HTTPS_PORT: &str = "https_port";
pub const META_MQTT_PORT: &str = "mqtt_port";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another fleethub process")]
    DataDirLocked(PathBuf),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot open the event log: {0}")]
    Events(#[from] fleethub_eventlog::OpenError),
    #[error("cannot load message routing: {0}")]
    Routing(#[from] routing::LoadRoutingError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("cannot serve the certificate of --tls-cert with the key of --tls-key: {0}")]
    ProvidedCertificate(tls::TlsSetupError),
    #[error("cannot set up the firmware artifact store: {0}")]
    Artifacts(#[from] artifacts::ArtifactSetupError),
    #[error("cannot listen on {address} for {what}: {source}; choose another address with {flag}")]
    Bind {
        what: &'static str,
        flag: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A started hub. Dropping it does not stop it; call [`RunningHub::shutdown`].
pub struct RunningHub {
    pub mqtt_address: SocketAddr,
    pub https_address: SocketAddr,
    pub ca_pem: String,
    pub services: Arc<Services>,
    pub jobs: Arc<jobs::JobService>,
    pub artifacts: Arc<artifacts::ArtifactService>,
    pub rollouts: Arc<rollouts::RolloutService>,
    /// The server certificate new TLS connections get (reloaded from its files when they change).
    pub server_certificate: Arc<tls::ServerCertificate>,
    reload_certificate: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _lock: fs::File,
}

impl RunningHub {
    /// Stops accepting, lets in-flight work finish while devices stay connected (REST requests such as
    /// method calls waiting for their device, job attempts, rollout writes), then closes device connections
    /// (recording them disconnected); all of it within `grace`. Writes already queued to the store always
    /// complete.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        // No new connections; HTTPS connections finish their requests and close; streams end.
        self.services.draining.cancel();
        // Jobs, while devices are still connected: their running attempts can finish. Rollouts end once
        // their last write is durable (devices go on updating; their updates are followed after a restart).
        self.jobs.stop(grace).await;
        self.rollouts.stop(grace).await;
        while self.services.https_connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.services.sessions.close_all(CloseReason::ShuttingDown);
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over with tasks still running");
        }
        flush_activity(&self.services).await;
        // Appends already queued (the last connections' messages and Will messages) are written first.
        self.services.events.close().await;
    }

    /// Looks at the server certificate files now rather than at the next poll (SIGHUP in `fleethub serve`).
    pub fn reload_server_certificate(&self) {
        self.reload_certificate.notify_one();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when the hub has been asked to shut down.
    pub async fn cancelled(&self) {
        self.shutdown.cancelled().await;
    }
}

/// Opens the data directory, prepares TLS and policies, binds both listeners and starts serving.
pub async fn start(config: HubConfig) -> Result<RunningHub, StartError> {
    let data_dir = config.data_dir.clone();
    fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let lock = lock_data_dir(&data_dir)?;

    let metrics = Arc::new(metrics::Metrics::default());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(
        &data_dir.join(DATABASE_FILE),
        SqliteStoreOptions {
            twin_limits: config.twin_limits,
            commit_observer: Some(metrics.commit_observer()),
            ..SqliteStoreOptions::default()
        },
    )?);
    let policies = ensure_policies(&*store).await?;
    let marked = store
        .mark_all_disconnected(OffsetDateTime::now_utc())
        .await?;
    if marked > 0 {
        tracing::info!(
            identities = marked,
            "recorded identities left connected by the previous run as disconnected"
        );
    }

    let certificates = match &config.server_certificate {
        Some(files) => tls::load_provided(files).map_err(StartError::ProvidedCertificate)?,
        None => tls::load_or_create(&data_dir, &config.certificate_names())?,
    };
    if let Some(what) = certificates.issued {
        tracing::info!(data_dir = %data_dir.display(), "{what}");
    }

    let mqtt_listener = TcpListener::bind(config.mqtt_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "MQTT",
            flag: "--mqtt-listen",
            address: config.mqtt_listen,
            source,
        })?;
    let https_listener = TcpListener::bind(config.https_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "HTTPS",
            flag: "--https-listen",
            address: config.https_listen,
            source,
        })?;
    let mqtt_address = mqtt_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "MQTT",
            flag: "--mqtt-listen",
            address: config.mqtt_listen,
            source,
        })?;
    let https_address = https_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "HTTPS",
            flag: "--https-listen",
            address: config.https_listen,
            source,
        })?;

    let hostname = config
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    store.set_meta(META_HOSTNAME, &hostname).await?;
    store
        .set_meta(META_HTTPS_PORT, &https_address.port().to_string())
        .await?;
    store
        .set_meta(META_MQTT_PORT, &mqtt_address.port().to_string())
        .await?;

    let events = open_event_log(&config, &*store).await?;
    let mut services = Services::new(config, Arc::clone(&store), events, policies);
    services.metrics = metrics;
    let services = Arc::new(services);
    // Before any listener: the first message is routed by the stored configuration.
    services
        .routing
        .load(&*services.store, &*services.events)
        .await?;
    // Before any listener: devices with CA-signed certificates are checked against the stored CAs.
    services.certificates.load(&*services.store).await?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Shutting down without a drain (the token cancelled directly) drains too.
    tracker.spawn({
        let (shutdown, services) = (shutdown.clone(), Arc::clone(&services));
        async move {
            shutdown.cancelled().await;
            services.draining.cancel();
        }
    });
    let limiter = ConnectionLimiter::new(services.config.limits.max_connections);
    let ready = Arc::new(AtomicBool::new(false));
    let jobs = jobs::JobService::start(Arc::clone(&services), &shutdown).await?;
    let artifacts =
        artifacts::ArtifactService::open(Arc::clone(&services), https_address.port()).await?;
    let rollouts =
        rollouts::RolloutService::start(Arc::clone(&services), Arc::clone(&artifacts), &shutdown)
            .await?;
    let router = rest::router(
        Arc::clone(&services),
        Arc::clone(&ready),
        shutdown.clone(),
        tracker.clone(),
    )
    .layer(axum::Extension(Arc::clone(&jobs)))
    .layer(axum::Extension(Arc::clone(&artifacts)))
    .layer(axum::Extension(Arc::clone(&rollouts)));

    tracker.spawn(listeners::run_mqtt_listener(
        mqtt_listener,
        Arc::clone(&certificates.server_config),
        Arc::clone(&services),
        Arc::clone(&limiter),
        tracker.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(listeners::run_https_listener(
        https_listener,
        Arc::clone(&certificates.server_config),
        router,
        Arc::clone(&services),
        limiter,
        tracker.clone(),
        shutdown.clone(),
    ));
    let reload_certificate = Arc::new(tokio::sync::Notify::new());
    tracker.spawn(tls::run_reloader(
        Arc::clone(&certificates.server_certificate),
        certificates.files.clone(),
        Arc::clone(&reload_certificate),
        shutdown.clone(),
    ));
    tracker.spawn(configurations::run(Arc::clone(&services), shutdown.clone()));
    tracker.spawn(events::run_pump(Arc::clone(&services), shutdown.clone()));
    tracker.spawn(routing::run_delivery(
        Arc::clone(&services),
        shutdown.clone(),
    ));
    tracker.spawn(events::run_retention(
        Arc::clone(&services),
        shutdown.clone(),
    ));
    tracker.spawn(Arc::clone(&artifacts).run_grant_purger(shutdown.clone()));
    tracker.spawn(c2d::run_expiry(Arc::clone(&services), shutdown.clone()));
    tracker.spawn(audit::run_retention(
        Arc::clone(&services),
        shutdown.clone(),
    ));
    tracker.spawn(run_activity_flusher(
        Arc::clone(&services),
        shutdown.clone(),
    ));
    ready.store(true, Ordering::Release);
    tracing::info!(mqtt = %mqtt_address, https = %https_address, data_dir = %data_dir.display(), "fleethub is serving");

    Ok(RunningHub {
        mqtt_address,
        https_address,
        ca_pem: certificates.ca_pem,
        services,
        jobs,
        artifacts,
        rollouts,
        server_certificate: certificates.server_certificate,
        reload_certificate,
        shutdown,
        tracker,
        _lock: lock,
    })
}

/// Opens (recovering if needed) the event log in `DATA_DIR/events/`. A new log starts at the change feed's
/// head: it holds what happens from now on, not a replay of an existing hub's history.
async fn open_event_log(
    config: &HubConfig,
    store: &dyn Store,
) -> Result<Arc<dyn fleethub_eventlog::EventLog>, StartError> {
    let root = config.data_dir.join(EVENTS_DIRECTORY);
    let options = fleethub_eventlog::EventLogOptions {
        initial_upstream: *store.change_notifier().borrow(),
        ..config.events.clone()
    };
    let opened = tokio::task::spawn_blocking(move || {
        fleethub_eventlog::EmbeddedEventLog::open(&root, options)
    })
    .await
    .map_err(|error| StartError::DataDir {
        path: config.data_dir.join(EVENTS_DIRECTORY),
        source: std::io::Error::other(error.to_string()),
    })??;
    Ok(Arc::new(opened))
}

fn lock_data_dir(data_dir: &std::path::Path) -> Result<fs::File, StartError> {
    let path = data_dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StartError::DataDirLocked(data_dir.to_owned())),
        Err(fs::TryLockError::Error(source)) => Err(StartError::DataDir { path, source }),
    }
}

/// Creates the built-in shared access policies the first time, each with fresh random keys.
async fn ensure_policies(store: &dyn Store) -> Result<Vec<AccessPolicy>, StoreError> {
    let mut policies = store.policies().await?;
    for (name, rights) in BUILT_IN_POLICIES {
        if policies.iter().all(|policy| policy.key_name != name) {
            let policy = AccessPolicy {
                key_name: name.to_owned(),
                primary_key: services::random_key(),
                secondary_key: services::random_key(),
                rights,
            };
            store.put_policy(policy.clone()).await?;
            policies.push(policy);
        }
    }
    Ok(policies)
}

async fn run_activity_flusher(services: Arc<Services>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(services.config.limits.activity_flush_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => flush_activity(&services).await,
        }
    }
}

async fn flush_activity(services: &Services) {
    let batch: Vec<_> = services
        .sessions
        .collect_activity()
        .into_iter()
        .filter_map(|(key, millis)| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
                .ok()
                .map(|time| (key, time))
        })
        .collect();
    if batch.is_empty() {
        return;
    }
    if let Err(error) = services.store.record_activity(batch).await {
        tracing::warn!(%error, "could not record device activity");
    }
}
