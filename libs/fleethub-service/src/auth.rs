//! The `Authorization` header of every request: a shared access policy SAS token for the hub, generated once
//! and reused until shortly before it expires.
//!
//! Wire format (PROTOCOL.md §3.1, as the Python service SDK sends it): `SharedAccessSignature
//! sr={quote(HostName)}&sig={quote(hmac)}&se={expiry}&skn={policy}`, the string-to-sign being
//! `quote(HostName) + "\n" + expiry` and the key the base64-decoded policy key. The Python SDK uses
//! `quote_plus` for `sr`; on a host name (letters, digits, `.`, `-`, `:`) it is the same as `quote`. The Python
//! SDK makes a token per request; we cache it, because a load test making thousands of calls a second would
//! otherwise spend its time in HMAC and the hub in verifying fresh tokens.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use fleethub_protocol::sas::generate_sas_token;
use reqwest::header::HeaderValue;

/// Lifetime of a generated token, as in the official SDKs.
pub const TOKEN_LIFETIME_SECONDS: u64 = 3600;
/// A cached token is replaced once it has less than this left, so that a request never carries a token that
/// expires while in flight (or on a hub whose clock runs a little ahead).
pub const RENEW_BEFORE_EXPIRY_SECONDS: u64 = 300;

/// Generates and caches the service SAS token. Cheap to call from many tasks at once: the lock is held only to
/// clone a header value, or for one HMAC when the token is renewed.
pub(crate) struct SasTokenCache {
    host_name: String,
    policy_name: String,
    key: Vec<u8>,
    current: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    expiry_unix: u64,
    header: HeaderValue,
}

impl SasTokenCache {
    pub(crate) fn new(host_name: String, policy_name: String, key: Vec<u8>) -> Self {
        SasTokenCache {
            host_name,
            policy_name,
            key,
            current: Mutex::new(None),
        }
    }

    /// The header value to send now.
    pub(crate) fn authorization(&self) -> HeaderValue {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        self.authorization_at(now_unix)
    }

    /// The header value to send at `now_unix`: the cached token while it has more than
    /// [`RENEW_BEFORE_EXPIRY_SECONDS`] left, otherwise a new one valid for [`TOKEN_LIFETIME_SECONDS`].
    pub(crate) fn authorization_at(&self, now_unix: u64) -> HeaderValue {
        // The cached value is replaced whole, so a panic elsewhere while the lock was held cannot leave it
        // half-written; a poisoned lock is still safe to use.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = current.as_ref() {
            // A clock that steps backwards only makes the cached token look younger; it stays valid.
            if now_unix.saturating_add(RENEW_BEFORE_EXPIRY_SECONDS) < cached.expiry_unix {
                return cached.header.clone();
            }
        }
        let expiry_unix = now_unix.saturating_add(TOKEN_LIFETIME_SECONDS);
        let token = generate_sas_token(
            &self.host_name,
            &self.key,
            expiry_unix,
            Some(&self.policy_name),
        );
        let mut header = HeaderValue::from_str(&token).expect(
            "a sas token is printable ascii: every field is percent-encoded, base64 or a number",
        );
        header.set_sensitive(true);
        *current = Some(CachedToken {
            expiry_unix,
            header: header.clone(),
        });
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleethub_protocol::sas::{SasToken, decode_key};

    /// The policy key of fleethub-protocol's SDK vectors (base64 of `policy-key-for-fleethub-tests-32`).
    const POLICY_KEY: &str = "cG9saWN5LWtleS1mb3ItZmxlZXRodWItdGVzdHMtMzI=";
    const VECTOR_EXPIRY: u64 = 1795663402;

    fn cache(host_name: &str, policy_name: &str) -> SasTokenCache {
        SasTokenCache::new(
            host_name.to_owned(),
            policy_name.to_owned(),
            decode_key(POLICY_KEY).expect("valid key"),
        )
    }

    fn text(header: &HeaderValue) -> &str {
        header.to_str().expect("sas tokens are ascii")
    }

    /// Tokens the Python service SDK (`azure.iot.hub.sastoken.SasToken`, ttl 3600) made with the same key and
    /// expiry, copied from fleethub-protocol's vectors: ours must be byte for byte the same.
    #[test]
    fn tokens_equal_the_python_service_sdk_byte_for_byte() {
        let cases = [
            (
                "localhost:8443",
                "iothubowner",
                "SharedAccessSignature sr=localhost%3A8443&sig=Ui5jEvfMtxaqPqE%2B94Ab9kp7mH4kLQpEMlFKHMvqsN0%3D&se=1795663402&skn=iothubowner",
            ),
            (
                "myhub.azure-devices.net",
                "service",
                "SharedAccessSignature sr=myhub.azure-devices.net&sig=rV%2B35%2BuI4UfPMZQOOdokpoGGq4GLJngpcRCj4OeC6oE%3D&se=1795663402&skn=service",
            ),
            (
                "localhost",
                "registryReadWrite",
                "SharedAccessSignature sr=localhost&sig=Erxe0ATw365PfWwbMsxkHt%2BvW419wYjVjTcJvg0euZ4%3D&se=1795663402&skn=registryReadWrite",
            ),
        ];
        for (host_name, policy_name, expected) in cases {
            let header = cache(host_name, policy_name)
                .authorization_at(VECTOR_EXPIRY - TOKEN_LIFETIME_SECONDS);
            assert_eq!(text(&header), expected, "{host_name} {policy_name}");
            assert!(
                header.is_sensitive(),
                "the token must not show up in debug output"
            );
        }
    }

    /// The Python SDK quotes `sig` with `safe="/"`, so its tokens may carry a raw `/` where ours carry `%2F`; the
    /// signature is the same, which is all the hub checks.
    #[test]
    fn signature_with_a_slash_matches_the_python_vector_after_decoding() {
        let header = cache("localhost:8443", "iothubowner")
            .authorization_at(1795663403 - TOKEN_LIFETIME_SECONDS);
        let ours: SasToken = text(&header).parse().expect("our token parses");
        let python: SasToken = "SharedAccessSignature sr=localhost%3A8443&sig=F%2BXCLzxsrm/cvG3JZrOkv1vC5U5yiVF%2BALoqWdPtE/w%3D&se=1795663403&skn=iothubowner"
            .parse()
            .expect("the vector parses");
        assert_eq!(
            ours,
            SasToken {
                signature: python.signature.clone(),
                ..python
            }
        );
        assert!(
            text(&header).contains("sig=F%2BXCLzxsrm%2FcvG3JZrOkv1vC5U5yiVF%2BALoqWdPtE%2Fw%3D")
        );
    }

    #[test]
    fn token_is_reused_until_five_minutes_before_expiry() {
        let cache = cache("localhost:8443", "iothubowner");
        let start = 1_800_000_000;
        let first = cache.authorization_at(start);
        let expiry_of =
            |header: &HeaderValue| text(header).parse::<SasToken>().expect("parses").expiry;
        assert_eq!(expiry_of(&first), start + 3600);
        for later in [start + 1, start + 1800, start + 3299] {
            assert_eq!(
                cache.authorization_at(later),
                first,
                "reused at +{}",
                later - start
            );
        }
        let renewed = cache.authorization_at(start + 3300);
        assert_eq!(expiry_of(&renewed), start + 3300 + 3600);
        assert_eq!(cache.authorization_at(start + 3301), renewed);
    }

    #[test]
    fn generated_tokens_verify_with_the_policy_key() {
        let header = cache("hub.example:8443", "service").authorization();
        let token: SasToken = text(&header).parse().expect("parses");
        assert!(token.signature_matches(&decode_key(POLICY_KEY).expect("valid")));
        assert_eq!(token.resource, "hub.example:8443");
        assert_eq!(token.key_name.as_deref(), Some("service"));
    }
}
