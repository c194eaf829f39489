//! The oracles of the parsers that read what devices and services send (topics and property bags, SAS
//! tokens, connection strings), shared by the fuzz targets (`fuzz/`) and the corpus replay tests.
//!
//! Compiled only for tests and with the `fuzzing` feature, so that the fuzzer and CI check the same
//! properties with the same code.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::connection_string::{ConnectionString, DeviceConnectionString, ServiceConnectionString};
use crate::ids::ClientId;
use crate::percent::unquote_strict;
use crate::property_bag::{PropertyBag, PropertyBagError};
use crate::sas::{DeviceResource, SasToken, TokenResource, decode_key, generate_sas_token};
use crate::topics::{self, DeviceTopic, HubTopic, Subscription};

/// The clients every topic is tried against: a device, a module of it, and another device.
fn clients() -> [ClientId; 3] {
    [
        ClientId::parse("dev1").expect("valid client id"),
        ClientId::parse("dev1/mod1").expect("valid client id"),
        ClientId::parse("dev2").expect("valid client id"),
    ]
}

/// The builders escape control characters in request ids, and `percent_encoding` escapes every non-ASCII
/// byte too, so only printable ASCII ids come back verbatim (the SDKs send UUIDs or integers).
fn echoes_verbatim(request_id: &str) -> bool {
    request_id
        .chars()
        .all(|character| character.is_ascii() && !character.is_ascii_control())
}

/// Parses `text` as a device PUBLISH topic and SUBSCRIBE filter for each client, as a hub PUBLISH topic
/// and as a property bag, and panics if the grammar breaks one of its promises:
/// - nothing panics;
/// - a telemetry topic or a device-queue or module filter is accepted only for the client it names (the
///   per-device isolation the hub relies on): `devices/{id}[/modules/{mid}]/...` is exactly the client,
///   and no other client may use the same text;
/// - whatever parses, rebuilt with the crate's builders, parses back to the same thing (request ids
///   verbatim, property bags in their canonical order);
/// - a property bag decodes to entries whose canonical form is stable, and a malformed escape points at
///   a `%` in the text.
pub fn check_topic(text: &str) {
    let clients = clients();
    for client in &clients {
        check_device_publish(text, client, &clients);
        check_device_subscription(text, client, &clients);
    }
    check_hub_publish(text);
    check_property_bag(text);
}

fn own_prefix(client: &ClientId) -> String {
    match &client.module {
        None => format!("devices/{}/messages/", client.device),
        Some(module) => format!("devices/{}/modules/{module}/", client.device),
    }
}

fn check_device_publish(text: &str, client: &ClientId, clients: &[ClientId]) {
    let Ok(topic) = topics::parse_device_publish(text, client) else {
        return;
    };
    match topic {
        DeviceTopic::Telemetry {
            module_id,
            properties,
        } => {
            assert_eq!(module_id, client.module, "telemetry names another module");
            assert!(
                text.starts_with(&own_prefix(client)),
                "{text:?} accepted as telemetry of {client}"
            );
            for other in clients.iter().filter(|other| *other != client) {
                assert!(
                    topics::parse_device_publish(text, other).is_err(),
                    "{text:?} accepted as telemetry of both {client} and {other}"
                );
            }
            let rebuilt = topics::telemetry_topic(client, &properties);
            assert_eq!(
                topics::parse_device_publish(&rebuilt, client),
                Ok(DeviceTopic::Telemetry {
                    module_id: client.module.clone(),
                    properties: properties.normalized(),
                }),
                "{rebuilt:?}, rebuilt from {text:?}"
            );
        }
        DeviceTopic::TwinGet { request_id } if echoes_verbatim(&request_id) => {
            let rebuilt = topics::twin_get_topic(&request_id);
            assert_eq!(
                topics::parse_device_publish(&rebuilt, client),
                Ok(DeviceTopic::TwinGet { request_id })
            );
        }
        DeviceTopic::TwinPatchReported { request_id } if echoes_verbatim(&request_id) => {
            let rebuilt = topics::twin_patch_reported_topic(&request_id);
            assert_eq!(
                topics::parse_device_publish(&rebuilt, client),
                Ok(DeviceTopic::TwinPatchReported { request_id })
            );
        }
        DeviceTopic::MethodResponse { status, request_id } if echoes_verbatim(&request_id) => {
            let rebuilt = topics::method_response_topic(status, &request_id);
            assert_eq!(
                topics::parse_device_publish(&rebuilt, client),
                Ok(DeviceTopic::MethodResponse { status, request_id })
            );
        }
        DeviceTopic::TwinGet { .. }
        | DeviceTopic::TwinPatchReported { .. }
        | DeviceTopic::MethodResponse { .. } => {}
    }
}

fn check_device_subscription(text: &str, client: &ClientId, clients: &[ClientId]) {
    let Ok(subscription) = topics::parse_device_subscription(text, client) else {
        return;
    };
    if matches!(
        subscription,
        Subscription::CloudToDevice | Subscription::ModuleInputs
    ) {
        let named_device = text
            .strip_prefix("devices/")
            .and_then(|rest| rest.split('/').next())
            .expect("a device filter starts with devices/{id}/");
        assert!(
            named_device == client.device.as_str() || named_device == "+",
            "{text:?} accepted as a filter of {client}"
        );
        let segments: Vec<&str> = text.split('/').collect();
        let named_module = (segments.get(2) == Some(&"modules")).then(|| segments[3]);
        assert_eq!(
            named_module,
            client.module.as_ref().map(|module| module.as_str()),
            "{text:?} accepted as a filter of {client}"
        );
        // Another client may share only the embedded C SDK's wildcard form, which means "mine".
        for other in clients.iter().filter(|other| *other != client) {
            if topics::parse_device_subscription(text, other).is_ok() {
                assert_eq!(
                    named_device, "+",
                    "{text:?} accepted for {client} and {other}"
                );
                assert_eq!(other.module, None);
            }
        }
    }
    let filter = subscription
        .filter_for(client)
        .expect("a subscription the client made has a filter for it");
    assert_eq!(
        topics::parse_device_subscription(&filter, client),
        Ok(subscription),
        "{filter:?}, the filter of {text:?}"
    );
}

fn check_hub_publish(text: &str) {
    let Ok(topic) = topics::parse_hub_publish(text) else {
        return;
    };
    let device = "dev1".parse().expect("valid device id");
    let module = "mod1".parse().expect("valid module id");
    let (rebuilt, expected) = match topic {
        HubTopic::TwinResponse {
            status,
            request_id,
            version,
        } if echoes_verbatim(&request_id) => (
            topics::twin_response_topic(status, &request_id, version),
            HubTopic::TwinResponse {
                status,
                request_id,
                version,
            },
        ),
        HubTopic::DesiredPatch {
            version: Some(version),
        } => (
            topics::desired_patch_topic(version),
            HubTopic::DesiredPatch {
                version: Some(version),
            },
        ),
        HubTopic::MethodRequest {
            method_name,
            request_id,
        } if echoes_verbatim(&request_id) => (
            topics::method_request_topic(&method_name, &request_id),
            HubTopic::MethodRequest {
                method_name,
                request_id,
            },
        ),
        HubTopic::CloudToDevice { properties } => (
            topics::cloud_to_device_topic(&device, &properties),
            HubTopic::CloudToDevice {
                properties: properties.normalized(),
            },
        ),
        HubTopic::ModuleInput { input, properties } => (
            topics::module_input_topic(&device, &module, &input, &properties),
            HubTopic::ModuleInput {
                input,
                properties: properties.normalized(),
            },
        ),
        HubTopic::TwinResponse { .. }
        | HubTopic::DesiredPatch { version: None }
        | HubTopic::MethodRequest { .. } => return,
    };
    assert_eq!(
        topics::parse_hub_publish(&rebuilt),
        Ok(expected),
        "{rebuilt:?}, rebuilt from {text:?}"
    );
}

fn check_property_bag(text: &str) {
    match PropertyBag::decode(text) {
        Ok(bag) => {
            let normalized = bag.normalized();
            assert_eq!(normalized.len(), bag.len(), "normalising lost entries");
            assert_eq!(normalized.encode(), bag.encode());
            assert_eq!(normalized.normalized(), normalized, "normalising is stable");
        }
        Err(PropertyBagError::MalformedEscape { position }) => {
            assert_eq!(
                text.as_bytes().get(position),
                Some(&b'%'),
                "the error position {position} is not at a '%' of {text:?}"
            );
        }
        Err(PropertyBagError::InvalidUtf8 { entry }) => {
            assert!(text.contains(&entry), "{entry:?} is not part of {text:?}");
        }
    }
}

const FUZZ_KEY: &[u8] = b"the fuzzing key, 32 bytes long!!";
const OTHER_KEY: &[u8] = b"another key, also 32 bytes long!";

/// Parses `text` as a SAS token, a resource and a key, and panics if a promise breaks:
/// - nothing panics;
/// - a parsed token's `sr` decodes to its resource, its `sig` is 32 bytes of base64, its expiry is the
///   canonical text it was signed with;
/// - a token generated for the same resource, expiry and policy parses back to them and verifies under
///   its key only: not under another key, not with its expiry moved, not with its `sr` changed;
/// - a device resource names a device that appears in the resource; host names come out lower-case.
pub fn check_sas_token(text: &str) {
    if let Ok(token) = text.parse::<SasToken>() {
        assert_eq!(unquote_strict(&token.sr_raw).as_ref(), Ok(&token.resource));
        let signature = STANDARD
            .decode(&token.signature)
            .expect("a parsed signature is base64");
        assert_eq!(signature.len(), 32);
        check_generated_token(&token);
        let _ = token.signature_matches(FUZZ_KEY);
        assert!(
            !token.is_expired(token.expiry),
            "valid up to its `se` second"
        );
    }
    check_resource(text);
    if let Ok(key) = decode_key(text) {
        assert!(!key.is_empty());
    }
}

fn check_generated_token(token: &SasToken) {
    let generated = generate_sas_token(
        &token.resource,
        FUZZ_KEY,
        token.expiry,
        token.key_name.as_deref(),
    );
    let parsed: SasToken = generated
        .parse()
        .unwrap_or_else(|error| panic!("generated {generated:?} does not parse: {error}"));
    assert_eq!(parsed.resource, token.resource);
    assert_eq!(parsed.expiry, token.expiry);
    assert_eq!(parsed.key_name, token.key_name);
    assert!(parsed.signature_matches(FUZZ_KEY), "{generated:?}");
    assert!(!parsed.signature_matches(OTHER_KEY), "{generated:?}");
    if let Some(later) = parsed.expiry.checked_add(1) {
        let moved = SasToken {
            expiry: later,
            ..parsed.clone()
        };
        assert!(!moved.signature_matches(FUZZ_KEY), "expiry is not signed");
    }
    let widened = SasToken {
        sr_raw: format!("{}%2F", parsed.sr_raw),
        ..parsed
    };
    assert!(!widened.signature_matches(FUZZ_KEY), "sr is not signed");
}

fn check_resource(text: &str) {
    let resource = TokenResource::parse(text);
    assert_eq!(resource.host, resource.host.to_ascii_lowercase());
    assert!(resource.path.is_empty() || resource.path.starts_with('/'));
    if let Ok(device) = DeviceResource::parse(text) {
        assert!(!device.host.is_empty());
        let path = match &device.module_id {
            None => format!("/devices/{}", device.device_id),
            Some(module) => format!("/devices/{}/modules/{module}", device.device_id),
        };
        assert!(
            text.ends_with(&path),
            "{text:?} parsed as {path:?} on {:?}",
            device.host
        );
    }
}

/// Parses `text` as a connection string of each kind and panics if a promise breaks:
/// - nothing panics;
/// - a parsed string prints as text that parses back to an equal one;
/// - a device or service connection string prints as text that parses back to the same identity, hosts
///   and credential (keys compared as the bytes they decode to), and a device one has exactly one
///   credential.
pub fn check_connection_string(text: &str) {
    if let Ok(parsed) = text.parse::<ConnectionString>() {
        let printed = parsed.to_string();
        assert_eq!(
            printed.parse::<ConnectionString>(),
            Ok(parsed),
            "{printed:?}"
        );
    }
    if let Ok(device) = text.parse::<DeviceConnectionString>() {
        let credentials = [
            device.shared_access_key.is_some(),
            device.shared_access_signature.is_some(),
            device.x509,
        ];
        assert_eq!(credentials.iter().filter(|present| **present).count(), 1);
        let printed = device.to_string();
        let reparsed: DeviceConnectionString = printed
            .parse()
            .unwrap_or_else(|error| panic!("{printed:?} does not parse: {error}"));
        assert_eq!(reparsed.host_name, device.host_name);
        assert_eq!(reparsed.device_id, device.device_id);
        assert_eq!(reparsed.module_id, device.module_id);
        assert_eq!(reparsed.gateway_host_name, device.gateway_host_name);
        assert_eq!(reparsed.x509, device.x509);
        assert_eq!(
            reparsed.shared_access_signature.is_some(),
            device.shared_access_signature.is_some()
        );
        let key_bytes = |key: &Option<String>| key.as_deref().map(decode_key);
        assert_eq!(
            key_bytes(&reparsed.shared_access_key),
            key_bytes(&device.shared_access_key)
        );
    }
    if let Ok(service) = text.parse::<ServiceConnectionString>() {
        let printed = service.to_string();
        let reparsed: ServiceConnectionString = printed
            .parse()
            .unwrap_or_else(|error| panic!("{printed:?} does not parse: {error}"));
        assert_eq!(reparsed.host_name, service.host_name);
        assert_eq!(
            reparsed.shared_access_key_name,
            service.shared_access_key_name
        );
        assert_eq!(
            decode_key(&reparsed.shared_access_key),
            decode_key(&service.shared_access_key)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// CI runs on stable without libFuzzer, so it replays the committed corpora instead.
    fn replay(target: &str, minimum: usize, check: fn(&str)) {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut replayed = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is committed") {
            let path = entry.expect("corpus entries are readable").path();
            let data = std::fs::read(&path).expect("corpus files are readable");
            // Shown only when the check panics, to name the offending file.
            eprintln!("replaying {}", path.display());
            // The fuzz targets skip input that is not UTF-8, as the parsers only ever see text.
            if let Ok(text) = std::str::from_utf8(&data) {
                check(text);
            }
            replayed += 1;
        }
        assert!(replayed >= minimum, "only {replayed} corpus files found");
    }

    #[test]
    fn topic_corpus_replays_without_breaking_a_promise() {
        replay("topic_parse", 20, super::check_topic);
    }

    #[test]
    fn sas_token_corpus_replays_without_breaking_a_promise() {
        replay("sas_token", 15, super::check_sas_token);
    }

    #[test]
    fn connection_string_corpus_replays_without_breaking_a_promise() {
        replay("connection_string", 12, super::check_connection_string);
    }
}
