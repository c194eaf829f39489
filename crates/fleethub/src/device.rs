//! `fleethub device`: the identity registry (devices and their modules) and device connection strings.

use anyhow::anyhow;
use fleethub_service::KeyToRenew;
use fleethub_service::protocol::connection_string::DeviceConnectionString;
use fleethub_service::protocol::ids::{DeviceId, ETag, ModuleId};
use fleethub_service::protocol::rest::{
    AuthenticationMechanism, AuthenticationType, ConnectionState, Device, DeviceStatus, Module,
    SymmetricKey, X509Thumbprint, format_time,
};
use serde_json::json;

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, Hub, HubArgs};
use crate::output::{
    Cell, OutputFormat, Palette, Table, human_time, or_dash, print_json, write_stdout,
};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct DeviceCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: DeviceAction,
}

#[derive(clap::Subcommand)]
enum DeviceAction {
    /// Register a device, or a module of an existing device; the hub generates the keys unless given
    Create {
        /// The device's id
        device_id: DeviceId,
        /// Register this module of the device instead of the device
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
        /// Register the device disabled: it cannot connect until enabled
        #[arg(long, conflicts_with = "module")]
        disabled: bool,
        /// Base64 primary key (16 to 64 bytes); generated when left out
        #[arg(long, value_name = "KEY")]
        primary_key: Option<String>,
        /// Base64 secondary key (16 to 64 bytes); generated when left out
        #[arg(long, value_name = "KEY")]
        secondary_key: Option<String>,
        /// How it authenticates: sas (keys), self-signed (an X.509 certificate matched by thumbprint), or
        /// ca (an X.509 certificate with subject CN = the device id, chaining to a verified CA, see
        /// `fleethub certificate`)
        #[arg(long, value_enum, default_value = "sas")]
        auth: AuthKind,
        /// With --auth self-signed: the certificate's SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint
        #[arg(long, value_name = "HEX")]
        primary_thumbprint: Option<String>,
        /// With --auth self-signed: a second certificate's thumbprint, for rolling certificates over
        #[arg(long, value_name = "HEX")]
        secondary_thumbprint: Option<String>,
    },
    /// Show a device's or module's identity: status, connection state, keys, etag
    Show {
        /// The device's id
        device_id: DeviceId,
        /// Act on this module of the device instead of the device itself
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
    },
    /// List the devices, or with DEVICE_ID --modules the modules of one device
    List {
        /// With --modules: the device whose modules to list
        #[arg(requires = "modules")]
        device_id: Option<DeviceId>,
        /// List DEVICE_ID's modules instead of the devices
        #[arg(long, requires = "device_id")]
        modules: bool,
        /// At most this many devices (Azure caps the list at 1000)
        #[arg(long, value_name = "N", conflicts_with = "modules")]
        top: Option<u32>,
    },
    /// Delete a device (with its modules and twin) or one module
    Delete {
        /// The device's id
        device_id: DeviceId,
        /// Act on this module of the device instead of the device itself
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
        /// Delete only if the identity's etag is still this one (from `device show`)
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Renew a device's or module's primary or secondary key, or swap the two (like `az iot hub
    /// device-identity renew-key`); connections that authenticated with a replaced key are closed at once
    RenewKey {
        /// The device's id
        device_id: DeviceId,
        /// Act on this module of the device instead of the device itself
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
        /// Which key: primary, secondary, or swap the two
        #[arg(long, value_name = "primary|secondary|swap", default_value = "primary")]
        key: KeyToRenew,
    },
    /// Print the connection string a device app uses: HostName=...;DeviceId=...;SharedAccessKey=... (or
    /// ...;x509=true for an X.509 device, whose app also needs its certificate and key)
    ///
    /// HostName carries no port, whatever the hub's HTTPS port is: the official Azure device SDKs dial MQTT on
    /// 8883 (or WebSockets on 443) and reject a HostName with a port. For a hub listening elsewhere, use a
    /// device SDK that takes a port (fleethub's `DeviceClientOptions::with_port`), or put the hub on 8883.
    ConnectionString {
        /// The device's id
        device_id: DeviceId,
        /// Act on this module of the device instead of the device itself
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
        /// Add GatewayHostName=HOST: the device connects to HOST (an edge gateway) instead of HostName
        #[arg(long, value_name = "HOST")]
        gateway: Option<String>,
    },
}

/// `--auth` of `device create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AuthKind {
    Sas,
    SelfSigned,
    Ca,
}

/// The `authentication` a create request carries: `None` lets the hub generate SAS keys.
fn requested_authentication(
    auth: AuthKind,
    primary_key: Option<String>,
    secondary_key: Option<String>,
    primary_thumbprint: Option<String>,
    secondary_thumbprint: Option<String>,
) -> anyhow::Result<Option<AuthenticationMechanism>> {
    let has_keys = primary_key.is_some() || secondary_key.is_some();
    let has_thumbprints = primary_thumbprint.is_some() || secondary_thumbprint.is_some();
    match auth {
        AuthKind::Sas if has_thumbprints => Err(anyhow!(
            "--primary-thumbprint and --secondary-thumbprint need --auth self-signed"
        )),
        AuthKind::Sas => Ok(has_keys.then(|| AuthenticationMechanism {
            symmetric_key: SymmetricKey {
                primary_key,
                secondary_key,
            },
            type_: AuthenticationType::Sas,
            ..AuthenticationMechanism::default()
        })),
        _ if has_keys => Err(anyhow!(
            "--primary-key and --secondary-key are for --auth sas; an X.509 device has no keys"
        )),
        AuthKind::SelfSigned if !has_thumbprints => Err(anyhow!(
            "--auth self-signed needs --primary-thumbprint (the SHA-1 or SHA-256 of the device's certificate; `fleethub certificate create-device` prints both)"
        )),
        AuthKind::SelfSigned => Ok(Some(AuthenticationMechanism {
            x509_thumbprint: X509Thumbprint {
                primary_thumbprint,
                secondary_thumbprint,
            },
            type_: AuthenticationType::SelfSigned,
            ..AuthenticationMechanism::default()
        })),
        AuthKind::Ca if has_thumbprints => Err(anyhow!(
            "--auth ca takes no thumbprints: the device's certificate is checked against the hub's verified CA certificates"
        )),
        AuthKind::Ca => Ok(Some(AuthenticationMechanism {
            type_: AuthenticationType::CertificateAuthority,
            ..AuthenticationMechanism::default()
        })),
    }
}

pub(crate) async fn run(command: DeviceCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    match command.action {
        DeviceAction::Create {
            device_id,
            module,
            disabled,
            primary_key,
            secondary_key,
            auth,
            primary_thumbprint,
            secondary_thumbprint,
        } => {
            let authentication = requested_authentication(
                auth,
                primary_key,
                secondary_key,
                primary_thumbprint,
                secondary_thumbprint,
            )?;
            match module {
                Some(module_id) => {
                    let operation = Operation::new(
                        Kind::WriteIdentity,
                        format!("create module {module_id} of device {device_id}"),
                    )
                    .on(&device_id, Some(&module_id));
                    let mut request = Module::new(device_id, module_id);
                    request.authentication = authentication;
                    let created = hub
                        .client
                        .create_module(&request)
                        .await
                        .or_explain(&hub, &operation)
                        .await?;
                    print_module(format, &palette, &created)
                }
                None => {
                    let operation =
                        Operation::new(Kind::WriteIdentity, format!("create device {device_id}"))
                            .on(&device_id, None);
                    let mut request = Device::new(device_id);
                    request.authentication = authentication;
                    request.status = Some(if disabled {
                        DeviceStatus::Disabled
                    } else {
                        DeviceStatus::Enabled
                    });
                    let created = hub
                        .client
                        .create_device(&request)
                        .await
                        .or_explain(&hub, &operation)
                        .await?;
                    print_device(format, &palette, &created)
                }
            }
        }
        DeviceAction::RenewKey {
            device_id,
            module,
            key,
        } => {
            let subject = match &module {
                Some(module_id) => format!("module {module_id} of device {device_id}"),
                None => format!("device {device_id}"),
            };
            let operation = Operation::new(
                Kind::WriteIdentity,
                format!("renew the {} key of {subject}", key.as_str()),
            )
            .on(&device_id, module.as_ref());
            match module {
                Some(module_id) => {
                    let renewed = hub
                        .client
                        .renew_module_key(&device_id, &module_id, key)
                        .await
                        .or_explain(&hub, &operation)
                        .await?;
                    print_module(format, &palette, &renewed)
                }
                None => {
                    let renewed = hub
                        .client
                        .renew_device_key(&device_id, key)
                        .await
                        .or_explain(&hub, &operation)
                        .await?;
                    print_device(format, &palette, &renewed)
                }
            }
        }
        DeviceAction::Show { device_id, module } => match module {
            Some(module_id) => {
                let module = get_module(&hub, &device_id, &module_id).await?;
                print_module(format, &palette, &module)
            }
            None => {
                let device = get_device(&hub, &device_id).await?;
                print_device(format, &palette, &device)
            }
        },
        DeviceAction::List {
            device_id: Some(device_id),
            ..
        } => {
            let operation = Operation::new(
                Kind::ReadIdentity,
                format!("list the modules of device {device_id}"),
            )
            .on(&device_id, None);
            let modules = hub
                .client
                .list_modules(&device_id)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&modules),
                OutputFormat::Table if modules.is_empty() => write_stdout(&format!(
                    "device {device_id} has no modules: create one with `fleethub device create {device_id} --module MODULE_ID`\n"
                )),
                OutputFormat::Table => modules_table(&palette, &modules).print(&palette),
            }
        }
        DeviceAction::List {
            device_id: None,
            top,
            ..
        } => {
            let operation = Operation::new(Kind::ReadIdentity, "list devices");
            let devices = hub
                .client
                .list_devices(top)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&devices),
                OutputFormat::Table if devices.is_empty() => write_stdout(
                    "no devices yet: create one with `fleethub device create DEVICE_ID`\n",
                ),
                OutputFormat::Table => devices_table(&palette, &devices).print(&palette),
            }
        }
        DeviceAction::Delete {
            device_id,
            module,
            etag,
        } => {
            let subject = match &module {
                Some(module_id) => format!("module {module_id} of device {device_id}"),
                None => format!("device {device_id}"),
            };
            let operation = Operation::new(Kind::WriteIdentity, format!("delete {subject}"))
                .on(&device_id, module.as_ref())
                .with_etag(etag.as_deref());
            let etag = etag.map(ETag::new);
            let result = match &module {
                Some(module_id) => {
                    hub.client
                        .delete_module(&device_id, module_id, etag.as_ref())
                        .await
                }
                None => hub.client.delete_device(&device_id, etag.as_ref()).await,
            };
            result.or_explain(&hub, &operation).await?;
            match format {
                // The REST answer is 204 without a body: nothing to print.
                OutputFormat::Json => Ok(()),
                OutputFormat::Table => write_stdout(&format!("deleted {subject}\n")),
            }
        }
        DeviceAction::ConnectionString {
            device_id,
            module,
            gateway,
        } => {
            let text = match &module {
                Some(module_id) => {
                    let module = get_module(&hub, &device_id, module_id).await?;
                    hub.client.module_connection_string(&module)
                }
                None => {
                    let device = get_device(&hub, &device_id).await?;
                    hub.client.device_connection_string(&device)
                }
            };
            let subject = match &module {
                Some(module_id) => format!("module {module_id} of device {device_id}"),
                None => format!("device {device_id}"),
            };
            let text = text.ok_or_else(|| {
                anyhow!(
                    "{subject} has no shared access key and no X.509 authentication, so it has no connection string"
                )
            })?;
            let text = match gateway {
                Some(gateway) => with_gateway(&text, gateway)?,
                None => text,
            };
            match format {
                OutputFormat::Json => print_json(&json!({ "connectionString": text })),
                OutputFormat::Table => write_stdout(&format!("{text}\n")),
            }
        }
    }
}

async fn get_device(hub: &Hub, device_id: &DeviceId) -> anyhow::Result<Device> {
    let operation =
        Operation::new(Kind::ReadIdentity, format!("read device {device_id}")).on(device_id, None);
    hub.client
        .get_device(device_id)
        .await
        .or_explain(hub, &operation)
        .await
}

async fn get_module(
    hub: &Hub,
    device_id: &DeviceId,
    module_id: &ModuleId,
) -> anyhow::Result<Module> {
    let operation = Operation::new(
        Kind::ReadIdentity,
        format!("read module {module_id} of device {device_id}"),
    )
    .on(device_id, Some(module_id));
    hub.client
        .get_module(device_id, module_id)
        .await
        .or_explain(hub, &operation)
        .await
}

fn with_gateway(connection_string: &str, gateway: String) -> anyhow::Result<String> {
    let mut parsed: DeviceConnectionString = connection_string
        .parse()
        .map_err(|error| anyhow!("the hub's device connection string does not parse: {error}"))?;
    parsed.gateway_host_name = Some(gateway);
    Ok(parsed.to_string())
}

fn print_device(format: OutputFormat, palette: &Palette, device: &Device) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(device),
        OutputFormat::Table => device_view(palette, device).print(palette),
    }
}

fn print_module(format: OutputFormat, palette: &Palette, module: &Module) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(module),
        OutputFormat::Table => module_view(palette, module).print(palette),
    }
}

fn status_cell(palette: &Palette, status: Option<DeviceStatus>) -> Cell {
    match status {
        Some(DeviceStatus::Enabled) => Cell::styled("enabled", palette.good),
        Some(DeviceStatus::Disabled) => Cell::styled("disabled", palette.bad),
        None => Cell::plain("-"),
    }
}

fn connection_cell(palette: &Palette, state: Option<ConnectionState>) -> Cell {
    match state {
        Some(ConnectionState::Connected) => Cell::styled("Connected", palette.good),
        Some(ConnectionState::Disconnected) => Cell::styled("Disconnected", palette.muted),
        None => Cell::plain("-"),
    }
}

fn authentication_text(authentication: Option<&AuthenticationMechanism>) -> String {
    let Some(authentication) = authentication else {
        return "-".to_owned();
    };
    match authentication.type_ {
        AuthenticationType::Sas => "sas",
        AuthenticationType::SelfSigned => "selfSigned",
        AuthenticationType::CertificateAuthority => "certificateAuthority",
        AuthenticationType::None => "none",
    }
    .to_owned()
}

fn key_rows(
    palette: &Palette,
    table: &mut Table,
    authentication: Option<&AuthenticationMechanism>,
) {
    let Some(authentication) = authentication else {
        return;
    };
    let keys = &authentication.symmetric_key;
    let thumbprints = &authentication.x509_thumbprint;
    for (label, value) in [
        ("primary key", &keys.primary_key),
        ("secondary key", &keys.secondary_key),
        ("primary thumbprint", &thumbprints.primary_thumbprint),
        ("secondary thumbprint", &thumbprints.secondary_thumbprint),
    ] {
        if let Some(value) = value.as_ref().filter(|value| !value.is_empty()) {
            table.row(vec![
                Cell::styled(label, palette.label),
                value.as_str().into(),
            ]);
        }
    }
}

fn device_view(palette: &Palette, device: &Device) -> Table {
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    table.row(vec![label("device id"), device.device_id.as_str().into()]);
    let mut status = status_cell(palette, device.status);
    if let Some(reason) = device
        .status_reason
        .as_ref()
        .filter(|reason| !reason.is_empty())
    {
        status = Cell::styled(
            format!("{} ({reason})", status_text(device.status)),
            palette.bad,
        );
    }
    table.row(vec![label("status"), status]);
    table.row(vec![
        label("connection"),
        connection_cell(palette, device.connection_state),
    ]);
    table.row(vec![
        label("last activity"),
        human_time(device.last_activity_time.map(format_time).as_deref()).into(),
    ]);
    table.row(vec![
        label("authentication"),
        authentication_text(device.authentication.as_ref()).into(),
    ]);
    key_rows(palette, &mut table, device.authentication.as_ref());
    table.row(vec![
        label("etag"),
        or_dash(device.etag.as_ref().map(|etag| etag.as_str().to_owned())).into(),
    ]);
    if device
        .capabilities
        .is_some_and(|capabilities| capabilities.iot_edge)
    {
        table.row(vec![label("iot edge"), "yes".into()]);
    }
    table
}

fn status_text(status: Option<DeviceStatus>) -> &'static str {
    match status {
        Some(DeviceStatus::Enabled) => "enabled",
        Some(DeviceStatus::Disabled) => "disabled",
        None => "-",
    }
}

fn module_view(palette: &Palette, module: &Module) -> Table {
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    table.row(vec![label("device id"), module.device_id.as_str().into()]);
    table.row(vec![label("module id"), module.module_id.as_str().into()]);
    table.row(vec![
        label("connection"),
        connection_cell(palette, module.connection_state),
    ]);
    table.row(vec![
        label("last activity"),
        human_time(module.last_activity_time.map(format_time).as_deref()).into(),
    ]);
    if let Some(managed_by) = module.managed_by.as_ref().filter(|text| !text.is_empty()) {
        table.row(vec![label("managed by"), managed_by.as_str().into()]);
    }
    table.row(vec![
        label("authentication"),
        authentication_text(module.authentication.as_ref()).into(),
    ]);
    key_rows(palette, &mut table, module.authentication.as_ref());
    table.row(vec![
        label("etag"),
        or_dash(module.etag.as_ref().map(|etag| etag.as_str().to_owned())).into(),
    ]);
    table
}

fn devices_table(palette: &Palette, devices: &[Device]) -> Table {
    let mut table = Table::new(&["DEVICE ID", "STATUS", "CONNECTION", "LAST ACTIVITY", "AUTH"]);
    for device in devices {
        table.row(vec![
            device.device_id.as_str().into(),
            status_cell(palette, device.status),
            connection_cell(palette, device.connection_state),
            human_time(device.last_activity_time.map(format_time).as_deref()).into(),
            authentication_text(device.authentication.as_ref()).into(),
        ]);
    }
    table
}

fn modules_table(palette: &Palette, modules: &[Module]) -> Table {
    let mut table = Table::new(&[
        "MODULE ID",
        "CONNECTION",
        "LAST ACTIVITY",
        "MANAGED BY",
        "AUTH",
    ]);
    for module in modules {
        table.row(vec![
            module.module_id.as_str().into(),
            connection_cell(palette, module.connection_state),
            human_time(module.last_activity_time.map(format_time).as_deref()).into(),
            or_dash(module.managed_by.clone().filter(|text| !text.is_empty())).into(),
            authentication_text(module.authentication.as_ref()).into(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_added_to_the_connection_string() {
        let text = with_gateway(
            "HostName=localhost;DeviceId=dev1;SharedAccessKey=cHJpbWFyeQ==",
            "edge.local".to_owned(),
        )
        .unwrap();
        let parsed: DeviceConnectionString = text.parse().unwrap();
        assert_eq!(parsed.gateway_host_name.as_deref(), Some("edge.local"));
        assert_eq!(parsed.host_name, "localhost");
        assert!(text.contains("GatewayHostName=edge.local"), "{text}");
    }

    #[test]
    fn device_lists_align() {
        let palette = Palette::new(false);
        let mut first = Device::new(DeviceId::new("dev1").unwrap());
        first.status = Some(DeviceStatus::Enabled);
        first.connection_state = Some(ConnectionState::Connected);
        let mut second = Device::new(DeviceId::new("thermostat-42").unwrap());
        second.status = Some(DeviceStatus::Disabled);
        second.connection_state = Some(ConnectionState::Disconnected);
        second.authentication = Some(AuthenticationMechanism::default());
        let text = devices_table(&palette, &[first, second]).render(&palette);
        assert_eq!(
            text,
            "DEVICE ID      STATUS    CONNECTION    LAST ACTIVITY  AUTH\n\
             dev1           enabled   Connected     -              -\n\
             thermostat-42  disabled  Disconnected  -              sas\n"
        );
    }
}
