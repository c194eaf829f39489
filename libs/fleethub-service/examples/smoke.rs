//! Drives every call of the client against a running hub and prints what happened: a manual smoke test.
//!
//! ```text
//! fleethub serve --data-dir /tmp/hub --https-listen 127.0.0.1:8443 --mqtt-listen 127.0.0.1:8883 &
//! cargo run -p fleethub-service --example smoke -- "$(fleethub connection-string --data-dir /tmp/hub)" /tmp/hub/ca.pem
//! ```
//!
//! Against Azure IoT Hub, pass `-` instead of a CA file (system roots). It creates and deletes a device named
//! `fleethub-smoke:1` and a module under it.

use std::error::Error;
use std::time::Instant;

use fleethub_service::protocol::errors::ErrorCode;
use fleethub_service::protocol::ids::{DeviceId, ETag, ModuleId};
use fleethub_service::protocol::rest::{CloudToDeviceMethod, Device, DeviceStatus, Module};
use fleethub_service::{Method, ServiceClient, ServiceClientOptions, ServiceError};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let mut arguments = std::env::args().skip(1);
    let (Some(connection_string), Some(ca_path)) = (arguments.next(), arguments.next()) else {
        return Err("usage: smoke <service connection string> <ca.pem | ->".into());
    };
    let ca_pem = if ca_path == "-" {
        None
    } else {
        Some(std::fs::read_to_string(&ca_path)?)
    };
    let client = ServiceClient::from_connection_string(
        &connection_string,
        ServiceClientOptions {
            ca_pem,
            ..Default::default()
        },
    )?;
    println!("client: {client:?}");

    let before = client.registry_statistics().await?;
    println!(
        "registry statistics before: {before:?}; service: {:?}",
        client.service_statistics().await?
    );

    let device_id = DeviceId::new("fleethub-smoke:1")?;
    // A leftover from an earlier run would make create fail; ignore "not found".
    match client.delete_device(&device_id, None).await {
        Ok(()) | Err(ServiceError::Api { status: 404, .. }) => {}
        Err(error) => return Err(error.into()),
    }

    let created = client
        .create_device(&Device::new(device_id.clone()))
        .await?;
    println!(
        "created: etag {:?}, status {:?}, auth {:?}",
        created.etag, created.status, created.authentication
    );
    println!(
        "device connection string: {:?}",
        client.device_connection_string(&created)
    );
    expect_api_error(
        "create twice",
        client.create_device(&Device::new(device_id.clone())).await,
        409,
        Some(ErrorCode::DeviceAlreadyExists),
    );

    let fetched = client.get_device(&device_id).await?;
    assert_eq!(fetched.device_id, device_id);
    let listed = client.list_devices(Some(1000)).await?;
    println!(
        "list_devices: {} device(s), ours included: {}",
        listed.len(),
        listed.iter().any(|device| device.device_id == device_id)
    );

    let stale = ETag::new("c3RhbGU=");
    let mut disabled = fetched.clone();
    disabled.status = Some(DeviceStatus::Disabled);
    expect_api_error(
        "update with stale etag",
        client.update_device(&disabled, Some(&stale)).await,
        412,
        Some(ErrorCode::PreconditionFailed),
    );
    let updated = client
        .update_device(&disabled, fetched.etag.as_ref())
        .await?;
    println!(
        "updated with etag: status {:?}, etag {:?} -> {:?}",
        updated.status, fetched.etag, updated.etag
    );
    let mut enabled = updated.clone();
    enabled.status = Some(DeviceStatus::Enabled);
    let enabled = client.update_device(&enabled, None).await?;
    println!("updated with *: status {:?}", enabled.status);

    let twin = client.get_twin(&device_id).await?;
    println!(
        "twin: version {:?}, etag {:?}, connection {:?}",
        twin.version, twin.etag, twin.connection_state
    );
    let patched = client
        .update_twin(&device_id, &json!({"tags": {"site": "a"}, "properties": {"desired": {"interval": 5, "mode": "eco"}}}), twin.etag.as_ref())
        .await?;
    println!(
        "patched: version {:?}, tags {:?}, desired {:?}",
        patched.version,
        patched.tags,
        patched
            .properties
            .as_ref()
            .map(|properties| &properties.desired)
    );
    expect_api_error(
        "patch with stale etag",
        client
            .update_twin(&device_id, &json!({"tags": {"x": 1}}), twin.etag.as_ref())
            .await,
        412,
        None,
    );
    let deleted_key = client
        .update_twin(
            &device_id,
            &json!({"properties": {"desired": {"mode": null}}}),
            None,
        )
        .await?;
    println!(
        "null deletes: desired {:?}",
        deleted_key
            .properties
            .as_ref()
            .map(|properties| &properties.desired)
    );
    let replaced = client
        .replace_twin(
            &device_id,
            &json!({"tags": {"site": "b"}, "properties": {"desired": {"only": true}}}),
            None,
        )
        .await?;
    println!(
        "replaced: tags {:?}, desired {:?}",
        replaced.tags,
        replaced
            .properties
            .as_ref()
            .map(|properties| &properties.desired)
    );

    let module_id = ModuleId::new("$smoke-module")?;
    let module = client
        .create_module(&Module::new(device_id.clone(), module_id.clone()))
        .await?;
    println!(
        "module created: etag {:?}; connection string {:?}",
        module.etag,
        client.module_connection_string(&module)
    );
    let module = client.update_module(&module, module.etag.as_ref()).await?;
    println!("module updated: etag {:?}", module.etag);
    client.get_module(&device_id, &module_id).await?;
    println!("modules: {}", client.list_modules(&device_id).await?.len());
    let module_twin = client
        .update_module_twin(
            &device_id,
            &module_id,
            &json!({"properties": {"desired": {"m": 1}}}),
            None,
        )
        .await?;
    println!(
        "module twin: moduleId {:?}, version {:?}",
        module_twin.module_id, module_twin.version
    );
    let module_twin = client.get_module_twin(&device_id, &module_id).await?;
    client
        .replace_module_twin(
            &device_id,
            &module_id,
            &json!({"tags": {"t": 1}}),
            module_twin.etag.as_ref(),
        )
        .await?;

    let request = CloudToDeviceMethod {
        method_name: "reboot".to_owned(),
        payload: json!({"delay": 1}),
        response_timeout_in_seconds: Some(5),
        connect_timeout_in_seconds: Some(0),
    };
    expect_api_error(
        "method on an offline device",
        client.invoke_method(&device_id, &request).await,
        404,
        Some(ErrorCode::DeviceNotOnline),
    );
    expect_api_error(
        "method on an offline module",
        client
            .invoke_module_method(&device_id, &module_id, &request)
            .await,
        404,
        Some(ErrorCode::DeviceNotOnline),
    );
    let nobody = DeviceId::new("fleethub-smoke-nobody")?;
    expect_api_error(
        "method on an unknown device",
        client.invoke_method(&nobody, &request).await,
        404,
        Some(ErrorCode::DeviceNotFound),
    );
    expect_api_error(
        "get unknown device",
        client.get_device(&nobody).await,
        404,
        Some(ErrorCode::DeviceNotFound),
    );
    expect_api_error(
        "get unknown twin",
        client.get_twin(&nobody).await,
        404,
        Some(ErrorCode::DeviceNotFound),
    );

    let raw = client
        .raw(Method::GET, "/devices/fleethub-smoke-nobody", &[], None)
        .await?;
    println!(
        "raw 404: status {}, iothub-errorcode {:?}, body {}",
        raw.status,
        raw.headers.get("iothub-errorcode"),
        raw.text()
    );
    let unauthorized = client
        .raw(
            Method::GET,
            "/statistics/devices",
            &[(
                "Authorization",
                "SharedAccessSignature sr=localhost&sig=AAAA&se=1&skn=iothubowner",
            )],
            None,
        )
        .await?;
    println!(
        "raw with a bad token: {} {}",
        unauthorized.status,
        unauthorized.text()
    );

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let client = client.clone();
        let device_id = device_id.clone();
        tasks.spawn(async move { client.get_twin(&device_id).await });
    }
    let mut failures = 0;
    while let Some(result) = tasks.join_next().await {
        if !matches!(result, Ok(Ok(_))) {
            failures += 1;
        }
    }
    println!(
        "500 concurrent get_twin: {failures} failed, {:?}",
        started.elapsed()
    );

    let untrusting =
        ServiceClient::from_connection_string(&connection_string, ServiceClientOptions::default())?;
    match untrusting.get_device(&device_id).await {
        Err(error @ ServiceError::Tls { .. }) => println!(
            "system roots only: {} ({:?})",
            error,
            std::error::Error::source(&error)
        ),
        other => println!("UNEXPECTED with system roots only: {other:?}"),
    }

    client.delete_module(&device_id, &module_id, None).await?;
    expect_api_error(
        "delete device with stale etag",
        client.delete_device(&device_id, Some(&stale)).await,
        412,
        Some(ErrorCode::PreconditionFailed),
    );
    client.delete_device(&device_id, None).await?;
    expect_api_error(
        "get deleted device",
        client.get_device(&device_id).await,
        404,
        Some(ErrorCode::DeviceNotFound),
    );
    println!(
        "registry statistics after: {:?}",
        client.registry_statistics().await?
    );
    println!("smoke test done");
    Ok(())
}

fn expect_api_error<T: std::fmt::Debug>(
    what: &str,
    result: std::result::Result<T, ServiceError>,
    status: u16,
    code: Option<ErrorCode>,
) {
    match result {
        Err(error)
            if error.status() == Some(status) && (code.is_none() || error.error_code() == code) =>
        {
            println!("{what}: ok, {error}");
        }
        other => println!("{what}: UNEXPECTED {other:?} (wanted {status} {code:?})"),
    }
}
