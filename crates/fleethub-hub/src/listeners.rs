//! Accept loops: the MQTT/TLS port and the HTTPS port (REST API and MQTT over WebSocket).
//!
//! Each accepted socket gets its own task at once; the TLS handshake runs there under the connect timeout,
//! never in the accept loop, so a slow or hostile client cannot stall others. A cap on live connections
//! refuses extra sockets at accept time. TLS is `tls_stream` (buffers freed while idle) on both ports.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::mqtt::serve_connection;
use crate::services::Services;
use crate::tls_stream;

/// Most bytes hyper buffers per HTTPS connection, each way (it also bounds a request head).
const HTTP_WRITE_BUFFER: usize = 64 * 1024;

/// Counts live connections against the configured cap; the guard gives the slot back when dropped.
pub struct ConnectionLimiter {
    live: AtomicUsize,
    max: usize,
}

pub struct ConnectionSlot(Arc<ConnectionLimiter>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionLimiter {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            live: AtomicUsize::new(0),
            max,
        })
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let previous = self.live.fetch_add(1, Ordering::Relaxed);
        if previous >= self.max {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot(Arc::clone(self)))
    }
}

/// Counts an HTTPS connection in `Services::https_connections` while it lives.
struct HttpsConnection(Arc<Services>);

impl HttpsConnection {
    fn count(services: &Arc<Services>) -> Self {
        services.https_connections.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(services))
    }
}

impl Drop for HttpsConnection {
    fn drop(&mut self) {
        self.0.https_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn tune(stream: &TcpStream) {
    // MQTT traffic is many small packets; Nagle would add up to 40 ms to every method round trip.
    let _ = stream.set_nodelay(true);
}

pub async fn run_mqtt_listener(
    listener: TcpListener,
    tls_config: Arc<ServerConfig>,
    services: Arc<Services>,
    limiter: Arc<ConnectionLimiter>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            () = services.draining.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "mqtt accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = limiter.try_acquire() else {
            tracing::warn!(%peer, "connection refused: the connection cap is reached");
            services.throttle.refused_at_connection_cap();
            continue;
        };
        tune(&stream);
        let tls_config = Arc::clone(&tls_config);
        let services = Arc::clone(&services);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let timeout = services.config.limits.connect_timeout;
            // Both boxes keep this task, which lives as long as the connection, small. The handshake future
            // holds a stream and would size the task if inline, and `serve_connection` keeps its stream
            // argument twice (as the argument and inside its `Connection`): a pointer there saves a stream.
            let tls = match Box::pin(tls_stream::accept(stream, tls_config, timeout)).await {
                Ok(tls) => tls,
                Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                    return tracing::debug!(%peer, "mqtt tls handshake timed out");
                }
                Err(error) => return tracing::debug!(%peer, %error, "mqtt tls handshake failed"),
            };
            let client_certificates = tls.peer_certificates();
            serve_connection(Box::new(tls), services, peer, client_certificates, shutdown).await;
        });
    }
}

pub async fn run_https_listener(
    listener: TcpListener,
    tls_config: Arc<ServerConfig>,
    router: Router,
    services: Arc<Services>,
    limiter: Arc<ConnectionLimiter>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = tokio::select! {
            () = shutdown.cancelled() => return,
            () = services.draining.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "https accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = limiter.try_acquire() else {
            tracing::warn!(%peer, "connection refused: the connection cap is reached");
            services.throttle.refused_at_connection_cap();
            continue;
        };
        tune(&stream);
        let tls_config = Arc::clone(&tls_config);
        let router = router.clone();
        let timeout = services.config.limits.connect_timeout;
        let services = Arc::clone(&services);
        tracker.spawn(async move {
            let _slot = slot;
            let _counted = HttpsConnection::count(&services);
            let tls = match tls_stream::accept(stream, tls_config, timeout).await {
                Ok(tls) => tls,
                Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                    return tracing::debug!(%peer, "https tls handshake timed out");
                }
                Err(error) => return tracing::debug!(%peer, %error, "https tls handshake failed"),
            };
            // The peer address rides along in each request's extensions (the WebSocket gateway logs it), and
            // so does the client's certificate chain (MQTT over WebSocket authenticates devices with it).
            let client_certificates = crate::x509::ClientCertificates(tls.peer_certificates());
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(crate::rest::Peer(peer));
                    request.extensions_mut().insert(client_certificates.clone());
                    router.clone().oneshot(request)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                // hyper queues up to ~400 KB of response body per connection by default before it waits for
                // the socket; a rollout with thousands of downloads at once paid that per download (1 GB
                // at 3,000). One download chunk is enough to keep the socket busy.
                .max_buf_size(HTTP_WRITE_BUFFER)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "https connection ended with an error");
                    }
                }
                // Draining: the request in progress (a method call waiting for its device, say) finishes,
                // then the connection closes.
                () = services.draining.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
