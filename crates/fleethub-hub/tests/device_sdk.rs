//! Our device SDK (`fleethub-device`) against a real hub on loopback: every SDK operation, connections the hub
//! drops or the network cuts, a hub restart, token renewal, and the failures a device owner meets first
//! (wrong CA, wrong key, malformed connection strings, a disabled device).
//!
//! Network outages are made with [`Gate`], a TCP relay between device and hub that the test cuts (closing the
//! relayed connections and refusing new ones) and restores, so "the device is offline while the service
//! changes its desired properties" is a step of the test rather than a race.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleethub_core::identity::IdentityKey;
use fleethub_device::{
    ConnectError, ConnectReturnCode, ConnectionState, DesiredPatchStream, DeviceClient,
    DeviceClientOptions, DisconnectReason, MethodRequest, MethodResponse, ReconnectPolicy,
    Transport,
};
use fleethub_hub::services::MethodInvocation;
use fleethub_hub::sessions::{CloseReason, DeviceRouter};
use fleethub_protocol::ids::IfMatch;
use fleethub_protocol::rest::{ConnectionState as HubConnectionState, DeviceStatus};
use fleethub_store::{DeviceRecord, TwinChange};
use fleethub_testkit::{TestHub, WAIT};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// An identity of a hub, and how to connect as it with the SDK.
struct Device {
    record: DeviceRecord,
    ca_pem: String,
    port: u16,
}

impl Device {
    async fn create(hub: &TestHub, device_id: &str) -> Self {
        Self {
            record: hub.create_device(device_id).await,
            ca_pem: hub.hub.ca_pem.clone(),
            port: hub.hub.mqtt_address.port(),
        }
    }

    fn key(&self) -> &IdentityKey {
        &self.record.key
    }

    fn connection_string(&self) -> String {
        let key = self
            .record
            .identity
            .authentication
            .primary_key
            .as_deref()
            .expect("SAS identity");
        let module = match &self.record.key.module_id {
            Some(module) => format!(";ModuleId={module}"),
            None => String::new(),
        };
        format!(
            "HostName=localhost;DeviceId={}{module};SharedAccessKey={key}",
            self.record.key.device_id
        )
    }

    /// Trusts the hub's CA, dials its MQTT port, reconnects within milliseconds.
    fn options(&self) -> DeviceClientOptions {
        DeviceClientOptions::default()
            .with_ca_pem(self.ca_pem.clone())
            .with_port(self.port)
            .with_reconnect(
                ReconnectPolicy::default()
                    .with_initial_delay(Duration::from_millis(20))
                    .with_max_delay(Duration::from_millis(200)),
            )
    }

    async fn connect(&self) -> DeviceClient {
        self.connect_with(|options| options).await
    }

    async fn connect_with(
        &self,
        adjust: impl FnOnce(DeviceClientOptions) -> DeviceClientOptions,
    ) -> DeviceClient {
        let connecting = DeviceClient::connect(&self.connection_string(), adjust(self.options()));
        tokio::time::timeout(WAIT, connecting)
            .await
            .expect("connected within the wait")
            .expect("the hub accepts the device")
    }
}

/// Answers every method with its name and payload.
async fn answer_methods(client: &DeviceClient) {
    client
        .on_method(|request: MethodRequest| async move {
            MethodResponse::ok(json!({"method": request.method_name, "payload": request.payload}))
        })
        .await
        .expect("subscribed to methods");
}

/// Invokes `method` as a service would, giving the device up to 5 s to be (re)connected and subscribed, and
/// expects the handler of `answer_methods` to answer.
async fn expect_method_answered(hub: &TestHub, key: &IdentityKey, method: &str) {
    let invocation = MethodInvocation {
        method_name: method.into(),
        payload: json!({"n": 1}),
        response_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
    };
    let result = hub
        .hub
        .services
        .invoke_method(key, invocation)
        .await
        .unwrap_or_else(|error| panic!("method {method}: {error}"));
    assert_eq!(result.status, 200);
    assert_eq!(
        result.payload,
        json!({"method": method, "payload": {"n": 1}})
    );
}

/// Patches the desired properties as a service would; returns the new desired `$version`.
async fn set_desired(hub: &TestHub, key: &IdentityKey, desired: Value) -> u64 {
    let updated = hub
        .hub
        .services
        .update_twin(
            key,
            TwinChange::ServicePatch(json!({"properties": {"desired": desired}})),
            IfMatch::Any,
        )
        .await
        .expect("desired properties updated");
    updated.record.twin.desired_version()
}

async fn next_item(patches: &mut DesiredPatchStream) -> Value {
    tokio::time::timeout(WAIT, patches.next())
        .await
        .expect("a desired item within the wait")
        .expect("the stream is open")
}

async fn wait_for_state(
    client: &DeviceClient,
    what: &str,
    mut predicate: impl FnMut(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut state = client.connection_state();
    tokio::time::timeout(WAIT, state.wait_for(|state| predicate(state)))
        .await
        .unwrap_or_else(|_| panic!("{what} within the wait"))
        .expect("watch open")
        .clone()
}

async fn wait_for_reconnecting(client: &DeviceClient) -> ConnectionState {
    wait_for_state(client, "reconnecting", |state| {
        matches!(state, ConnectionState::Reconnecting { .. })
    })
    .await
}

/// Every state the client passes through, as events (a watch may coalesce a change that lasts less than a
/// scheduling round; the transitions here last at least a TLS handshake).
fn state_changes(client: &DeviceClient) -> mpsc::Receiver<ConnectionState> {
    let (sender, changes) = mpsc::channel(64);
    let mut state = client.connection_state();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let current = state.borrow_and_update().clone();
            if sender.send(current).await.is_err() {
                return;
            }
        }
    });
    changes
}

/// A TCP relay in front of the hub's MQTT port that the test can cut and restore.
struct Gate {
    address: SocketAddr,
    open: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Gate {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let open = Arc::new(AtomicBool::new(true));
        let relays: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (accepting_open, accepting_relays) = (Arc::clone(&open), Arc::clone(&relays));
        tokio::spawn(async move {
            while let Ok((mut device, _)) = listener.accept().await {
                if !accepting_open.load(Ordering::Acquire) {
                    // Cut: the device sees the connection close during its TLS handshake.
                    continue;
                }
                let relay = tokio::spawn(async move {
                    let Ok(mut hub) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut device, &mut hub).await;
                });
                accepting_relays
                    .lock()
                    .expect("not poisoned")
                    .push(relay.abort_handle());
            }
        });
        Self {
            address,
            open,
            relays,
        }
    }

    /// Drops every relayed connection (both ends see it closed) and refuses new ones until `restore`.
    fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for relay in self.relays.lock().expect("not poisoned").drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

#[tokio::test]
async fn every_sdk_operation_works_against_a_real_hub() {
    let hub = TestHub::start().await;
    let device = Device::create(&hub, "thermostat").await;
    let client = device.connect().await;
    assert!(client.is_connected());
    assert_eq!(client.client_id().to_string(), "thermostat");
    let stored = hub.hub.services.get_identity(device.key()).await.unwrap();
    assert_eq!(
        stored.identity.connection_state,
        HubConnectionState::Connected
    );

    // Twin: read, report, read back.
    let twin = client.get_twin().await.expect("twin");
    assert_eq!(twin["desired"]["$version"], json!(1));
    let reported_version = client
        .patch_reported(&json!({"firmwareStatus": "standBy", "temp": 21}))
        .await
        .expect("reported patch");
    let twin = client.get_twin().await.expect("twin");
    assert_eq!(twin["reported"]["firmwareStatus"], json!("standBy"));
    assert_eq!(twin["reported"]["$version"], json!(reported_version));

    // Desired: the stream opens with the twin's desired section, then follows the service's changes.
    let mut patches = client.desired_patches().await.expect("desired stream");
    let first = next_item(&mut patches).await;
    assert_eq!(first["$version"], json!(1));
    let version = set_desired(&hub, device.key(), json!({"setpoint": 19})).await;
    assert_eq!(
        next_item(&mut patches).await,
        json!({"setpoint": 19, "$version": version})
    );

    // Methods.
    answer_methods(&client).await;
    expect_method_answered(&hub, device.key(), "reboot").await;

    // A module client, over the WebSocket transport on the HTTPS port.
    let module = Device {
        record: hub.create_module("thermostat", "sensor").await,
        ca_pem: hub.hub.ca_pem.clone(),
        port: hub.hub.https_address.port(),
    };
    let module_client = module
        .connect_with(|options| options.with_transport(Transport::WebSocket))
        .await;
    assert_eq!(module_client.client_id().to_string(), "thermostat/sensor");
    module_client
        .patch_reported(&json!({"sensor": "ok"}))
        .await
        .expect("module reported patch");
    answer_methods(&module_client).await;
    expect_method_answered(&hub, module.key(), "calibrate").await;
    module_client.disconnect().await.expect("clean disconnect");

    // Disconnecting stops every clone and ends the stream.
    let observer = client.clone();
    client.disconnect().await.expect("clean disconnect");
    assert_eq!(
        *observer.connection_state().borrow(),
        ConnectionState::Disconnected(DisconnectReason::ClientRequested)
    );
    let end = tokio::time::timeout(WAIT, patches.next())
        .await
        .expect("the stream ends");
    assert_eq!(end, None);
}

#[tokio::test]
async fn method_is_delivered_after_the_hub_drops_the_connection() {
    let hub = TestHub::start().await;
    let device = Device::create(&hub, "pump").await;
    let client = device.connect().await;
    answer_methods(&client).await;
    expect_method_answered(&hub, device.key(), "before").await;

    hub.hub
        .services
        .sessions
        .disconnect(device.key(), CloseReason::TakenOver);
    let state = wait_for_reconnecting(&client).await;
    assert!(
        matches!(
            state,
            ConnectionState::Reconnecting {
                reason: DisconnectReason::HubClosed,
                ..
            }
        ),
        "{state:?}"
    );
    wait_for_state(&client, "connected again", |state| {
        *state == ConnectionState::Connected
    })
    .await;
    expect_method_answered(&hub, device.key(), "after").await;
}

#[tokio::test]
async fn desired_change_made_while_offline_is_applied_exactly_once_after_reconnecting() {
    let hub = TestHub::start().await;
    let mut device = Device::create(&hub, "valve").await;
    let gate = Gate::start(hub.hub.mqtt_address).await;
    device.port = gate.address.port();
    let client = device.connect().await;
    answer_methods(&client).await;
    let mut patches = client.desired_patches().await.expect("desired stream");
    assert_eq!(next_item(&mut patches).await["$version"], json!(1));
    let online = set_desired(&hub, device.key(), json!({"mode": "auto"})).await;
    assert_eq!(
        next_item(&mut patches).await,
        json!({"mode": "auto", "$version": online})
    );

    // Offline: the network goes away, and the service changes the desired properties twice.
    gate.cut();
    wait_for_reconnecting(&client).await;
    set_desired(&hub, device.key(), json!({"mode": "eco"})).await;
    let offline = set_desired(&hub, device.key(), json!({"level": 3})).await;

    // Back online: both changes arrive once, in the desired section fetched after reconnecting.
    gate.restore();
    let caught_up = next_item(&mut patches).await;
    assert_eq!(caught_up["$version"], json!(offline));
    assert_eq!(caught_up["mode"], json!("eco"));
    assert_eq!(caught_up["level"], json!(3));
    assert!(
        caught_up.get("$metadata").is_some(),
        "the full desired section, not a patch: {caught_up}"
    );
    // The next item is the next change: nothing from before is delivered twice.
    let later = set_desired(&hub, device.key(), json!({"level": 4})).await;
    assert_eq!(
        next_item(&mut patches).await,
        json!({"level": 4, "$version": later})
    );
    // And methods reach the handler over the new connection.
    expect_method_answered(&hub, device.key(), "afterOutage").await;
}

#[tokio::test]
async fn device_reconnects_after_the_hub_restarts_on_the_same_data_directory() {
    let first = TestHub::start().await;
    let device = Device::create(&first, "meter").await;
    let client = device.connect().await;
    answer_methods(&client).await;
    let mut patches = client.desired_patches().await.expect("desired stream");
    assert_eq!(next_item(&mut patches).await["$version"], json!(1));

    let TestHub { hub, directory } = first;
    let (mqtt_address, https_address) = (hub.mqtt_address, hub.https_address);
    hub.shutdown(Duration::from_secs(1)).await;
    wait_for_reconnecting(&client).await;
    let mut config = fleethub_hub::HubConfig::for_loopback(directory.path().join("data"));
    config.mqtt_listen = mqtt_address;
    config.https_listen = https_address;
    let second = TestHub {
        hub: fleethub_hub::start(config).await.expect("the hub restarts"),
        directory,
    };
    assert_eq!(second.hub.ca_pem, device.ca_pem, "the CA survives restarts");
    // Changed while the device may still be reconnecting: it arrives once either way.
    let version = set_desired(&second, device.key(), json!({"tariff": "night"})).await;
    let caught_up = next_item(&mut patches).await;
    assert_eq!(caught_up["$version"], json!(version));
    assert_eq!(caught_up["tariff"], json!("night"));
    expect_method_answered(&second, device.key(), "afterRestart").await;
}

#[tokio::test]
async fn sas_token_is_renewed_during_a_session_without_losing_methods() {
    let hub = TestHub::start().await;
    let device = Device::create(&hub, "renewing").await;
    // The hub closes a connection when its token expires; a 3 s token is renewed after 1.1 to 2.4 s.
    let client = device
        .connect_with(|options| options.with_sas_ttl(Duration::from_secs(3)))
        .await;
    let mut changes = state_changes(&client);
    answer_methods(&client).await;

    // Two renewals take the session past the first token's expiry.
    let mut seen = Vec::new();
    let mut renewals = 0;
    while renewals < 2 {
        let state = tokio::time::timeout(WAIT, changes.recv())
            .await
            .unwrap_or_else(|_| panic!("two renewals within the wait; seen {seen:?}"))
            .expect("the client runs");
        if state == ConnectionState::Connected && seen.last() == Some(&ConnectionState::Connecting)
        {
            renewals += 1;
        }
        seen.push(state);
    }
    expect_method_answered(&hub, device.key(), "afterRenewal").await;
    assert!(
        seen.iter().all(|state| matches!(
            state,
            ConnectionState::Connecting | ConnectionState::Connected
        )),
        "renewed each time before the hub closed an expired connection: {seen:?}"
    );
    assert!(client.is_connected());
}

#[tokio::test]
async fn disabled_device_is_closed_by_the_hub_and_refused_for_good() {
    let hub = TestHub::start().await;
    let device = Device::create(&hub, "stolen").await;
    let client = device.connect().await;
    hub.set_status(&device.record, DeviceStatus::Disabled).await;
    let state = wait_for_state(&client, "stopped", |state| {
        matches!(state, ConnectionState::Disconnected(_))
    })
    .await;
    match state {
        ConnectionState::Disconnected(DisconnectReason::ReconnectFailed { error, .. }) => {
            assert!(
                matches!(
                    *error,
                    ConnectError::Refused {
                        return_code: ConnectReturnCode::NotAuthorized
                    }
                ),
                "{error}"
            );
        }
        other => panic!("expected CONNACK 5 to stop the client, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_ca_and_wrong_key_are_refused_for_what_they_are() {
    let hub = TestHub::start().await;
    let device = Device::create(&hub, "careful").await;

    let other_ca = {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["other".to_owned()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("CA").pem()
    };
    let options = device.options().with_ca_pem(other_ca);
    match DeviceClient::connect(&device.connection_string(), options).await {
        Err(error @ ConnectError::ServerCertificateRejected { .. }) => {
            assert!(error.is_permanent());
            assert!(error.to_string().contains("localhost"), "{error}");
        }
        other => panic!("expected the certificate to be rejected, got {other:?}"),
    }

    let wrong_key = format!(
        "HostName=localhost;DeviceId=careful;SharedAccessKey={}",
        fleethub_hub::services::random_key()
    );
    let result = DeviceClient::connect(&wrong_key, device.options()).await;
    assert!(
        matches!(
            result,
            Err(ConnectError::Refused {
                return_code: ConnectReturnCode::NotAuthorized
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn malformed_connection_strings_are_rejected_with_a_message_naming_the_problem() {
    let hub = TestHub::start().await;
    let device = Device::create(&hub, "strict").await;
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let expired = "SharedAccessSignature sr=localhost%2Fdevices%2Fstrict&sig=e6S%2BETCWXU62jbeBg713p%2FhE4ML0WVBfjuydqACS%2B%2FY%3D&se=1";
    let cases = [
        (String::new(), "connection string is empty"),
        ("HostName=localhost".into(), "no DeviceId"),
        (
            format!("DeviceId=strict;SharedAccessKey={key}"),
            "no HostName",
        ),
        ("HostName=localhost;DeviceId=strict".into(), "no credential"),
        (
            format!("HostName=localhost;DeviceId=strict;SharedAccessKey={key};Color=blue"),
            "\"Color\" is unknown",
        ),
        (
            format!("HostName;DeviceId=strict;SharedAccessKey={key}"),
            "\"HostName\" has no '='",
        ),
        (
            format!("HostName=localhost;DeviceId=;SharedAccessKey={key}"),
            "DeviceId is empty",
        ),
        (
            format!("HostName=localhost;DeviceId=a;DeviceId=b;SharedAccessKey={key}"),
            "DeviceId appears more than once",
        ),
        (
            "HostName=localhost;DeviceId=strict;SharedAccessKey=not base64!".into(),
            "SharedAccessKey is invalid",
        ),
        (
            format!(
                "HostName=localhost;DeviceId=strict;SharedAccessKey={key};SharedAccessSignature={expired}"
            ),
            "both SharedAccessKey and SharedAccessSignature",
        ),
        (
            // X.509 without a client certificate in the options.
            "HostName=localhost;DeviceId=strict;x509=true".into(),
            "set DeviceClientOptions::client_certificate",
        ),
        (
            format!("HostName=localhost;DeviceId=strict;SharedAccessSignature={expired}"),
            "SharedAccessSignature expired",
        ),
    ];
    for (text, expected) in cases {
        let error = DeviceClient::connect(&text, device.options())
            .await
            .expect_err(&text);
        assert!(error.is_permanent(), "{text}: {error}");
        let message = error.to_string();
        assert!(
            message.contains(expected),
            "{text:?} gave {message:?}, which does not name {expected:?}"
        );
    }
}
