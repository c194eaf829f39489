//! Credential lifecycle on a real hub over real MQTT/TLS: renewing a device's key closes the connections that
//! authenticated with the replaced key within a second and keeps those on a key still in force; the old token
//! no longer connects and the new connection string does; regenerating a policy key turns away service tokens
//! and device connections signed with the old one; a connection is closed when its SAS token expires.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleethub_device::{DeviceClient, DeviceClientOptions};
use fleethub_mqtt::{Connect, ConnectReturnCode, Packet};
use fleethub_protocol::sas::{decode_key, generate_sas_token};
use fleethub_service::protocol::rest::Device;
use fleethub_service::{KeyToRenew, ServiceClient, ServiceClientOptions};
use fleethub_store::DeviceRecord;
use fleethub_testkit::*;

/// How soon a connection on a revoked key must be closed.
const PROMPTLY: Duration = Duration::from_secs(1);

fn service_client(hub: &TestHub, policy: &str, key: &str) -> ServiceClient {
    ServiceClient::from_connection_string(
        &format!(
            "HostName=localhost:{};SharedAccessKeyName={policy};SharedAccessKey={key}",
            hub.hub.https_address.port(),
        ),
        ServiceClientOptions {
            ca_pem: Some(hub.hub.ca_pem.clone()),
            ..ServiceClientOptions::default()
        },
    )
    .expect("service client")
}

fn owner(hub: &TestHub) -> ServiceClient {
    service_client(hub, "iothubowner", &hub.policy("iothubowner").primary_key)
}

fn secondary_key(record: &DeviceRecord) -> String {
    record
        .identity
        .authentication
        .secondary_key
        .clone()
        .expect("SAS identity")
}

fn with_password(connect: Connect, token: &str) -> Connect {
    Connect {
        password: Some(Bytes::copy_from_slice(token.as_bytes())),
        ..connect
    }
}

/// A device CONNECT signed with the `device` policy's primary key.
fn policy_connect(record: &DeviceRecord, policy_key: &str) -> Connect {
    let key = decode_key(policy_key).expect("policy keys are base64");
    let token = generate_sas_token(
        &format!("localhost/devices/{}", record.key.device_id),
        &key,
        unix_now() + 3600,
        Some("device"),
    );
    with_password(connect_for(record, 60), &token)
}

/// Waits for the hub to close `client`; panics if it sends anything else or keeps it open past `within`.
async fn closed_within(client: &mut RawClient, within: Duration, what: &str) {
    match tokio::time::timeout(within, client.receive_or_closed()).await {
        Ok(None) => {}
        Ok(Some(packet)) => panic!("{what}: expected the hub to close, got {packet:?}"),
        Err(_) => panic!("{what}: still open after {within:?}"),
    }
}

/// A PINGREQ is answered: the connection is still served.
async fn still_served(client: &mut RawClient, what: &str) {
    client.send(&Packet::PingReq).await;
    assert_eq!(client.receive().await, Some(Packet::PingResp), "{what}");
}

async fn refused_with(hub: &TestHub, connect: Connect, expected: ConnectReturnCode, what: &str) {
    let mut client = hub.raw().await;
    client.send(&Packet::Connect(connect)).await;
    match client.receive().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, expected, "{what}"),
        other => panic!("{what}: expected CONNACK {expected:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn renewing_a_key_disconnects_connections_on_it_and_keeps_those_on_the_other() {
    let hub = TestHub::start().await;
    let service = owner(&hub);
    let on_primary = hub.create_device("on-primary").await;
    let on_secondary = hub.create_device("on-secondary").await;
    let old_primary_connect = connect_for(&on_primary, 60);
    let mut primary_client = hub.raw().await;
    primary_client
        .connect_accepted(old_primary_connect.clone())
        .await;
    let secondary_connect = connect_with_key("on-secondary", &secondary_key(&on_secondary), 60);
    let mut secondary_client = hub.raw().await;
    secondary_client
        .connect_accepted(secondary_connect.clone())
        .await;

    // Renew the primary key of both: the connection on the replaced key goes, the one on the secondary stays.
    let renewed_at = Instant::now();
    let renewed = service
        .renew_device_key(&on_primary.key.device_id, KeyToRenew::Primary)
        .await
        .expect("renew the primary key");
    closed_within(
        &mut primary_client,
        PROMPTLY.saturating_sub(renewed_at.elapsed()) + Duration::from_millis(1),
        "the connection on the replaced primary key",
    )
    .await;
    let unchanged = service
        .renew_device_key(&on_secondary.key.device_id, KeyToRenew::Primary)
        .await
        .expect("renew the other device's primary key");
    assert_eq!(
        unchanged
            .authentication
            .expect("keys")
            .symmetric_key
            .secondary_key,
        Some(secondary_key(&on_secondary)),
        "renewing the primary keeps the secondary"
    );
    still_served(
        &mut secondary_client,
        "the connection on the unchanged secondary key",
    )
    .await;

    // The old token no longer connects; a connection string with the new key does (our device SDK).
    refused_with(
        &hub,
        old_primary_connect,
        ConnectReturnCode::NotAuthorized,
        "the token signed with the replaced key",
    )
    .await;
    let new_connection_string = service
        .device_connection_string(&renewed)
        .expect("a SAS device has a connection string");
    let device = DeviceClient::connect(
        &new_connection_string,
        DeviceClientOptions::default()
            .with_ca_pem(hub.hub.ca_pem.clone())
            .with_port(hub.hub.mqtt_address.port()),
    )
    .await
    .expect("the new key connects");
    device.get_twin().await.expect("a twin GET on the new key");
    device.disconnect().await.expect("disconnect");

    // Swapping keeps both keys in force: nothing is disconnected.
    service
        .renew_device_key(&on_secondary.key.device_id, KeyToRenew::Swap)
        .await
        .expect("swap the keys");
    still_served(&mut secondary_client, "after a swap").await;
    // Renewing the secondary key closes the connection on it.
    service
        .renew_device_key(&on_secondary.key.device_id, KeyToRenew::Primary)
        .await
        .expect("renew the (swapped) primary, which was the secondary");
    closed_within(
        &mut secondary_client,
        PROMPTLY,
        "the connection on the replaced (swapped) key",
    )
    .await;
    refused_with(
        &hub,
        secondary_connect,
        ConnectReturnCode::NotAuthorized,
        "the replaced secondary key",
    )
    .await;
}

#[tokio::test]
async fn a_module_key_renewal_and_a_bulk_update_close_connections_on_replaced_keys() {
    let hub = TestHub::start().await;
    let service = owner(&hub);
    hub.create_device("carrier").await;
    let module = hub.create_module("carrier", "sensor").await;
    let mut module_client = hub.connected(&module).await;
    service
        .renew_module_key(
            &module.key.device_id,
            module.key.module_id.as_ref().expect("a module"),
            KeyToRenew::Primary,
        )
        .await
        .expect("renew the module's primary key");
    closed_within(&mut module_client, PROMPTLY, "the module on its old key").await;

    // A bulk import that replaces a device's keys (Azure's importMode update) closes its connection too.
    let imported = hub.create_device("imported").await;
    let mut imported_client = hub.connected(&imported).await;
    let mut replacement = Device::new(imported.key.device_id.clone());
    replacement.authentication = Some(fleethub_service::protocol::rest::AuthenticationMechanism {
        symmetric_key: fleethub_service::protocol::rest::SymmetricKey {
            primary_key: Some(secondary_key(&imported)),
            secondary_key: Some(secondary_key(&imported)),
        },
        ..Default::default()
    });
    let reply = service
        .raw(
            fleethub_service::Method::POST,
            "/devices?api-version=2021-04-12",
            &[("content-type", "application/json")],
            Some(
                serde_json::to_vec(&serde_json::json!([{
                    "id": imported.key.device_id.as_str(),
                    "importMode": "update",
                    "authentication": replacement.authentication,
                }]))
                .expect("json"),
            ),
        )
        .await
        .expect("bulk update");
    assert!(reply.status.is_success(), "bulk update: {}", reply.text());
    closed_within(
        &mut imported_client,
        PROMPTLY,
        "the device whose keys a bulk update replaced",
    )
    .await;
}

#[tokio::test]
async fn regenerating_a_policy_key_turns_away_tokens_signed_with_the_old_one() {
    let hub = TestHub::start().await;
    let owner_client = owner(&hub);
    let old_service_key = hub.policy("service").primary_key;
    let old_service = service_client(&hub, "service", &old_service_key);
    old_service
        .service_statistics()
        .await
        .expect("the service policy works before");

    // A device connected with a `device` policy token, and one with its own key.
    let via_policy = hub.create_device("via-policy").await;
    let old_device_policy_key = hub.policy("device").primary_key;
    let mut policy_client = hub.raw().await;
    policy_client
        .connect_accepted(policy_connect(&via_policy, &old_device_policy_key))
        .await;
    let own_key = hub.create_device("own-key").await;
    let mut own_key_client = hub.connected(&own_key).await;

    // Only a policy with every right may regenerate keys; unknown policies and keys are refused.
    let read_write = service_client(
        &hub,
        "registryReadWrite",
        &hub.policy("registryReadWrite").primary_key,
    );
    let refused = read_write
        .regenerate_policy_key("service", KeyToRenew::Primary)
        .await
        .expect_err("registryReadWrite cannot regenerate keys");
    assert_eq!(refused.status(), Some(403));
    let missing = owner_client
        .regenerate_policy_key("nobody", KeyToRenew::Primary)
        .await
        .expect_err("no such policy");
    assert_eq!(missing.status(), Some(404));
    let bad_key = owner_client
        .raw(
            fleethub_service::Method::POST,
            "/policies/service/regenerateKey?key=tertiary&api-version=2021-04-12",
            &[],
            None,
        )
        .await
        .expect("request");
    assert_eq!(bad_key.status.as_u16(), 400);

    let service = owner_client
        .regenerate_policy_key("service", KeyToRenew::Primary)
        .await
        .expect("regenerate the service policy's primary key");
    assert_ne!(service.primary_key, old_service_key);
    assert_eq!(service.secondary_key, hub.policy("service").secondary_key);
    let error = old_service
        .service_statistics()
        .await
        .expect_err("the old service key is refused");
    assert_eq!(error.status(), Some(401));
    service_client(&hub, "service", &service.primary_key)
        .service_statistics()
        .await
        .expect("the new service key works");
    service_client(&hub, "service", &service.secondary_key)
        .service_statistics()
        .await
        .expect("the unchanged secondary key works");
    still_served(
        &mut policy_client,
        "a device policy connection is untouched by another policy's change",
    )
    .await;

    // Regenerating the `device` policy's key closes the device connected with it, not the one on its own key.
    let regenerated_at = Instant::now();
    let device_policy = owner_client
        .regenerate_policy_key("device", KeyToRenew::Primary)
        .await
        .expect("regenerate the device policy's primary key");
    closed_within(
        &mut policy_client,
        PROMPTLY.saturating_sub(regenerated_at.elapsed()) + Duration::from_millis(1),
        "the device on the old policy key",
    )
    .await;
    still_served(&mut own_key_client, "the device on its own key").await;
    refused_with(
        &hub,
        policy_connect(&via_policy, &old_device_policy_key),
        ConnectReturnCode::NotAuthorized,
        "the old device policy key",
    )
    .await;
    hub.raw()
        .await
        .connect_accepted(policy_connect(&via_policy, &device_policy.primary_key))
        .await;

    // The new keys are stored: a restarted hub still has them.
    let stored = hub
        .hub
        .services
        .store
        .policies()
        .await
        .expect("read policies");
    let stored_service = stored
        .iter()
        .find(|policy| policy.key_name == "service")
        .expect("service policy");
    assert_eq!(stored_service.primary_key, service.primary_key);
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    let hub = TestHub::start().await;
    let record = hub.create_device("short-lived").await;
    let key = decode_key(
        record
            .identity
            .authentication
            .primary_key
            .as_deref()
            .expect("SAS identity"),
    )
    .expect("base64 key");
    // `se` two seconds from now: valid through that second, so closed 2 to 3 s from now.
    let expiry = unix_now() + 2;
    let token = generate_sas_token("localhost/devices/short-lived", &key, expiry, None);
    let started = Instant::now();
    let mut client = hub.raw().await;
    client
        .connect_accepted(with_password(connect_for(&record, 60), &token))
        .await;
    still_served(&mut client, "before expiry").await;
    closed_within(&mut client, WAIT, "the connection with an expiring token").await;
    let open_for = started.elapsed();
    assert!(
        open_for >= Duration::from_millis(1500) && open_for <= WAIT,
        "closed after {open_for:?}"
    );
    refused_with(
        &hub,
        with_password(connect_for(&record, 60), &token),
        ConnectReturnCode::NotAuthorized,
        "the expired token",
    )
    .await;
}
