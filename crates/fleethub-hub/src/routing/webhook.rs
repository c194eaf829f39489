//! The webhook endpoint: one HTTP `POST` per message, and the retry schedule.
//!
//! The request: `Content-Type: application/json`, the body the message as the event stream shows it
//! ([`EventMessage`](fleethub_protocol::events::EventMessage) JSON: system properties, application
//! properties with the endpoint's enrichments, the body as text or base64); headers
//! `x-fleethub-endpoint`, `x-fleethub-partition`, `x-fleethub-sequence-number` (the pair identifies the
//! message: delivery is at least once, so a receiver dedupes on it) and `x-fleethub-delivery-attempt`
//! (1, 2, ...), plus the endpoint's configured headers. Any 2xx answer is success; anything else, a
//! timeout or a connection failure is retried. `https://` URLs are verified against the operating
//! system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured).

use std::sync::Arc;
use std::time::Duration;

use fleethub_protocol::routing::WebhookEndpoint;

/// What identifies a delivery to the receiver.
pub struct Delivery<'a> {
    pub endpoint: &'a str,
    pub partition: u32,
    pub sequence_number: u64,
    pub attempt: u32,
}

/// An HTTP client for webhooks: rustls with the *ring* provider and the system's roots.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
        .map_err(|error| format!("cannot load the system's root certificates: {error}"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .user_agent(concat!("fleethub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| format!("cannot build the webhook client: {error}"))
}

/// One attempt. The error says what went wrong, for the endpoint's health and the dead letter.
pub async fn post(
    client: &reqwest::Client,
    webhook: &WebhookEndpoint,
    delivery: &Delivery<'_>,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut request = client
        .post(&webhook.url)
        .header("content-type", "application/json")
        .header("x-fleethub-endpoint", delivery.endpoint)
        .header("x-fleethub-partition", delivery.partition)
        .header("x-fleethub-sequence-number", delivery.sequence_number)
        .header("x-fleethub-delivery-attempt", delivery.attempt);
    for (name, value) in &webhook.headers {
        request = request.header(name, value);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|error| describe(&error))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let excerpt: String = text.chars().take(200).collect();
    Err(if excerpt.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", excerpt.trim())
    })
}

/// reqwest's error with its causes (a refused connection is only named in the innermost one).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The wait after failed attempt `attempt` (1-based): `initial`, doubling each attempt, at most `max`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let waits: Vec<u128> = (1..=6)
            .map(|attempt| backoff(attempt, initial, max).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    proptest! {
        #[test]
        fn backoff_starts_at_initial_never_shrinks_and_never_exceeds_the_cap(
            initial_ms in 1u64..10_000,
            max_ms in 1u64..1_000_000,
            attempt in 1u32..200,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = Duration::from_millis(max_ms);
            let wait = backoff(attempt, initial, max);
            prop_assert!(wait <= max);
            prop_assert!(wait >= initial.min(max));
            prop_assert!(backoff(attempt + 1, initial, max) >= wait);
            prop_assert_eq!(backoff(1, initial, max), initial.min(max));
        }
    }
}
