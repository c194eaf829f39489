//! `fleethub twin`: read, patch and replace device and module twins, and watch their changes.

use anyhow::{anyhow, bail};
use fleethub_service::protocol::ids::{DeviceId, ETag, ModuleId};
use fleethub_service::protocol::rest::{ConnectionState, DeviceStatus, Twin};
use serde_json::{Map, Value, json};

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, HubArgs};
use crate::json_input::{read_json_argument, require_object};
use crate::output::{
    Cell, OutputFormat, Palette, Table, compact, human_time, print_json, write_stdout,
};
use crate::watch::{self, WatchArgs};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct TwinCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: TwinAction,
}

#[derive(clap::Subcommand)]
enum TwinAction {
    /// Show a device's or module's twin: tags, desired and reported properties, versions, etag
    Show {
        /// The device's id
        device_id: DeviceId,
        /// Act on this module of the device instead of the device itself
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
    },
    /// Merge a patch into the twin's tags and desired properties (null deletes a key)
    ///
    /// PATCH is the REST body, e.g. '{"properties":{"desired":{"fw":"2.0"}},"tags":{"site":"lab"}}', given
    /// inline, as @FILE, or - for stdin. --desired and --tags build it for you. Prints the twin after the change.
    Patch {
        /// The device's id
        device_id: DeviceId,
        /// The patch: JSON, @FILE or - (stdin)
        #[arg(
            conflicts_with_all = ["desired", "tags"],
            required_unless_present_any = ["desired", "tags"]
        )]
        patch: Option<String>,
        /// Shorthand for '{"properties":{"desired":JSON}}' (JSON, @FILE or -)
        #[arg(long, value_name = "JSON")]
        desired: Option<String>,
        /// Shorthand for '{"tags":JSON}' (JSON, @FILE or -)
        #[arg(long, value_name = "JSON")]
        tags: Option<String>,
        /// Act on this module of the device instead of the device itself
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
        /// Apply only if the twin's etag is still this one (from `twin show`)
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Replace the twin's tags and desired properties (reported properties are the device's and stay)
    ///
    /// TWIN is the REST body, e.g. '{"tags":{"site":"lab"},"properties":{"desired":{"fw":"2.0"}}}': tags and
    /// desired properties it leaves out are removed. Prints the twin after the change.
    Replace {
        /// The device's id
        device_id: DeviceId,
        /// The new twin: JSON, @FILE or - (stdin)
        twin: String,
        /// Act on this module of the device instead of the device itself
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
        /// Apply only if the twin's etag is still this one (from `twin show`)
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Print each twin, identity, connection and job change as it happens (all devices, or one)
    Watch(WatchArgs),
}

pub(crate) async fn run(command: TwinCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    match command.action {
        TwinAction::Show { device_id, module } => {
            let operation = Operation::new(
                Kind::ReadTwin,
                format!("read the twin of {}", subject(&device_id, module.as_ref())),
            )
            .on(&device_id, module.as_ref());
            let twin = match &module {
                Some(module_id) => hub.client.get_module_twin(&device_id, module_id).await,
                None => hub.client.get_twin(&device_id).await,
            }
            .or_explain(&hub, &operation)
            .await?;
            print_twin(format, &palette, &twin)
        }
        TwinAction::Patch {
            device_id,
            patch,
            desired,
            tags,
            module,
            etag,
        } => {
            let body = patch_body(patch.as_deref(), desired.as_deref(), tags.as_deref())?;
            let operation = Operation::new(
                Kind::WriteTwin,
                format!("patch the twin of {}", subject(&device_id, module.as_ref())),
            )
            .on(&device_id, module.as_ref())
            .with_etag(etag.as_deref());
            let etag = etag.map(ETag::new);
            let twin = match &module {
                Some(module_id) => {
                    hub.client
                        .update_module_twin(&device_id, module_id, &body, etag.as_ref())
                        .await
                }
                None => {
                    hub.client
                        .update_twin(&device_id, &body, etag.as_ref())
                        .await
                }
            }
            .or_explain(&hub, &operation)
            .await?;
            print_twin(format, &palette, &twin)
        }
        TwinAction::Replace {
            device_id,
            twin,
            module,
            etag,
        } => {
            let body = read_json_argument("the twin", &twin)?;
            require_object("the twin", &body)?;
            let operation = Operation::new(
                Kind::WriteTwin,
                format!(
                    "replace the twin of {}",
                    subject(&device_id, module.as_ref())
                ),
            )
            .on(&device_id, module.as_ref())
            .with_etag(etag.as_deref());
            let etag = etag.map(ETag::new);
            let twin = match &module {
                Some(module_id) => {
                    hub.client
                        .replace_module_twin(&device_id, module_id, &body, etag.as_ref())
                        .await
                }
                None => {
                    hub.client
                        .replace_twin(&device_id, &body, etag.as_ref())
                        .await
                }
            }
            .or_explain(&hub, &operation)
            .await?;
            print_twin(format, &palette, &twin)
        }
        TwinAction::Watch(args) => watch::run(&hub, format, &palette, args).await,
    }
}

fn subject(device_id: &DeviceId, module: Option<&ModuleId>) -> String {
    match module {
        Some(module_id) => format!("module {module_id} of device {device_id}"),
        None => format!("device {device_id}"),
    }
}

/// The PATCH body from the positional patch or the `--desired` / `--tags` shorthands (clap guarantees one
/// of the two forms). Catches the usual mistake, a bare property map meant as desired properties.
fn patch_body(
    patch: Option<&str>,
    desired: Option<&str>,
    tags: Option<&str>,
) -> anyhow::Result<Value> {
    if let Some(patch) = patch {
        let body = read_json_argument("the patch", patch)?;
        let object = require_object("the patch", &body)?;
        if !object.contains_key("tags") && !object.contains_key("properties") {
            bail!(
                "the patch has neither \"tags\" nor \"properties\": a twin patch looks like {{\"properties\":{{\"desired\":{{...}}}},\"tags\":{{...}}}}; to patch desired properties only, pass --desired '{}'",
                compact(&body)
            );
        }
        if let Some(properties) = object.get("properties") {
            let properties = require_object("\"properties\" in the patch", properties)?;
            if properties.contains_key("reported") {
                bail!(
                    "the patch changes reported properties, which only the device can write: patch \"tags\" and \"properties\".\"desired\""
                );
            }
        }
        return Ok(body);
    }
    let mut body = Map::new();
    if let Some(desired) = desired {
        let desired = read_json_argument("--desired", desired)?;
        require_object("--desired", &desired)?;
        body.insert("properties".to_owned(), json!({ "desired": desired }));
    }
    if let Some(tags) = tags {
        let tags = read_json_argument("--tags", tags)?;
        require_object("--tags", &tags)?;
        body.insert("tags".to_owned(), tags);
    }
    if body.is_empty() {
        return Err(anyhow!(
            "nothing to patch: pass a patch, --desired or --tags"
        ));
    }
    Ok(Value::Object(body))
}

fn print_twin(format: OutputFormat, palette: &Palette, twin: &Twin) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(twin),
        OutputFormat::Table => {
            let mut text = twin_summary(palette, twin).render(palette);
            text.push('\n');
            let properties = twin_properties(palette, twin);
            if properties.is_empty() {
                text.push_str("no tags, desired or reported properties\n");
            } else {
                text.push_str(&properties.render(palette));
            }
            write_stdout(&text)
        }
    }
}

fn twin_summary(palette: &Palette, twin: &Twin) -> Table {
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    if let Some(device_id) = &twin.device_id {
        table.row(vec![label("device id"), device_id.as_str().into()]);
    }
    if let Some(module_id) = &twin.module_id {
        table.row(vec![label("module id"), module_id.as_str().into()]);
    }
    if let Some(status) = twin.status {
        let cell = match status {
            DeviceStatus::Enabled => Cell::styled("enabled", palette.good),
            DeviceStatus::Disabled => Cell::styled("disabled", palette.bad),
        };
        table.row(vec![label("status"), cell]);
    }
    if let Some(state) = twin.connection_state {
        let cell = match state {
            ConnectionState::Connected => Cell::styled("Connected", palette.good),
            ConnectionState::Disconnected => Cell::styled("Disconnected", palette.muted),
        };
        table.row(vec![label("connection"), cell]);
    }
    if let Some(version) = twin.version {
        table.row(vec![label("version"), version.to_string().into()]);
    }
    if let Some(configurations) = twin.configurations.as_ref().filter(|map| !map.is_empty()) {
        let text: Vec<String> = configurations
            .iter()
            .map(|(id, info)| {
                let status = info["status"].as_str().unwrap_or("?");
                format!("{id} ({status})")
            })
            .collect();
        table.row(vec![label("configurations"), text.join(", ").into()]);
    }
    if let Some(etag) = &twin.etag {
        table.row(vec![label("etag"), etag.as_str().into()]);
    }
    if let Some(properties) = &twin.properties {
        for (name, section) in [
            ("desired", &properties.desired),
            ("reported", &properties.reported),
        ] {
            if let Some(version) = section.get("$version") {
                table.row(vec![
                    label(&format!("{name} version")),
                    compact(version).into(),
                ]);
            }
        }
    }
    table
}

/// One row per leaf of tags, desired and reported (`desired.config.interval`), with its `$lastUpdated`.
fn twin_properties(palette: &Palette, twin: &Twin) -> Table {
    let mut table = Table::new(&["PROPERTY", "VALUE", "LAST UPDATED"]);
    let empty = Map::new();
    let sections = [
        ("tags", twin.tags.as_ref().unwrap_or(&empty)),
        (
            "desired",
            twin.properties
                .as_ref()
                .map_or(&empty, |properties| &properties.desired),
        ),
        (
            "reported",
            twin.properties
                .as_ref()
                .map_or(&empty, |properties| &properties.reported),
        ),
    ];
    for (name, section) in sections {
        let metadata = section.get("$metadata");
        let mut leaves = Vec::new();
        flatten(name, section, metadata, &mut leaves);
        for (path, value, last_updated) in leaves {
            table.row(vec![
                Cell::styled(path, palette.label),
                compact(value).into(),
                Cell::styled(human_time(last_updated), palette.muted),
            ]);
        }
    }
    table
}

type Leaf<'a> = (String, &'a Value, Option<&'a str>);

/// Collects the leaves of `object` under `prefix`, skipping `$`-keys (`$metadata`, `$version`), with the
/// `$lastUpdated` that the parallel `$metadata` tree holds for each.
fn flatten<'a>(
    prefix: &str,
    object: &'a Map<String, Value>,
    metadata: Option<&'a Value>,
    leaves: &mut Vec<Leaf<'a>>,
) {
    for (key, value) in object {
        if key.starts_with('$') {
            continue;
        }
        let path = format!("{prefix}.{key}");
        let key_metadata = metadata.and_then(|metadata| metadata.get(key));
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                flatten(&path, inner, key_metadata, leaves)
            }
            _ => {
                let last_updated = key_metadata
                    .and_then(|metadata| metadata.get("$lastUpdated"))
                    .and_then(Value::as_str);
                leaves.push((path, value, last_updated));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_build_the_rest_body() {
        assert_eq!(
            patch_body(None, Some("{\"fw\":\"2.0\"}"), Some("{\"site\":\"lab\"}")).unwrap(),
            json!({"properties": {"desired": {"fw": "2.0"}}, "tags": {"site": "lab"}})
        );
        assert_eq!(
            patch_body(None, None, Some("{\"site\":null}")).unwrap(),
            json!({"tags": {"site": null}})
        );
        let body = "{\"properties\":{\"desired\":{\"fw\":null}}}";
        assert_eq!(
            patch_body(Some(body), None, None).unwrap(),
            json!({"properties": {"desired": {"fw": null}}})
        );
    }

    /// patch -> what the message must say.
    #[test]
    fn mistaken_patches_are_explained() {
        let cases = [
            ("{\"fw\":\"2.0\"}", "neither \"tags\" nor \"properties\""),
            ("[1]", "the patch must be a JSON object, not an array"),
            (
                "{\"properties\":{\"reported\":{\"a\":1}}}",
                "only the device can write",
            ),
            (
                "{\"properties\": 3}",
                "\"properties\" in the patch must be a JSON object",
            ),
            ("{\"tags\": {", "the patch is not valid JSON"),
        ];
        for (patch, needle) in cases {
            let message = patch_body(Some(patch), None, None).unwrap_err().to_string();
            assert!(message.contains(needle), "{patch}: {message}");
        }
        let message = patch_body(None, Some("[]"), None).unwrap_err().to_string();
        assert_eq!(message, "--desired must be a JSON object, not an array");
    }

    #[test]
    fn twin_tables_flatten_sections_with_their_last_update() {
        let twin: Twin = serde_json::from_value(json!({
            "deviceId": "dev1",
            "etag": "AAAAAAAAAAE=",
            "version": 3,
            "status": "enabled",
            "connectionState": "Disconnected",
            "tags": {"site": {"room": "lab"}},
            "properties": {
                "desired": {
                    "fw": "2.0",
                    "empty": {},
                    "$version": 2,
                    "$metadata": {
                        "$lastUpdated": "2026-11-26T05:00:00.0000000Z",
                        "fw": {"$lastUpdated": "2026-11-26T05:00:01.0000000Z"},
                        "empty": {"$lastUpdated": "2026-11-26T05:00:02.0000000Z"}
                    }
                },
                "reported": {"$version": 1}
            }
        }))
        .unwrap();
        let palette = Palette::new(false);
        assert_eq!(
            twin_properties(&palette, &twin).render(&palette),
            "PROPERTY        VALUE  LAST UPDATED\n\
             tags.site.room  \"lab\"  -\n\
             desired.fw      \"2.0\"  2026-11-26 05:00:01Z\n\
             desired.empty   {}     2026-11-26 05:00:02Z\n"
        );
        assert_eq!(
            twin_summary(&palette, &twin).render(&palette),
            "device id         dev1\n\
             status            enabled\n\
             connection        Disconnected\n\
             version           3\n\
             etag              AAAAAAAAAAE=\n\
             desired version   2\n\
             reported version  1\n"
        );
    }
}
