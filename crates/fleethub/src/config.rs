//! `fleethub config`: automatic device management through the service SDK: create configurations (content
//! for the desired properties of the twins a condition targets, the highest priority winning on each twin),
//! show, list, update and delete them.

use std::collections::BTreeMap;

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, HubArgs};
use crate::json_input::{read_json_argument, require_object};
use crate::output::{
    Cell, OutputFormat, Palette, Table, compact, human_time, print_json, write_stdout,
};
use anyhow::bail;
use clap::ArgGroup;
use fleethub_service::protocol::configurations::{
    APPLIED_COUNT, Configuration, ConfigurationContent, ConfigurationRequest, MetricQueries,
    TARGETED_COUNT,
};
use fleethub_service::protocol::ids::ETag;
use fleethub_service::protocol::rest::format_time;

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct ConfigCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(clap::Subcommand)]
enum ConfigAction {
    /// Create a configuration: desired properties for every twin a condition targets
    ///
    /// The hub writes the content into each targeted twin's desired properties (pushed to connected
    /// devices) within a second, and keeps doing so for twins that come to match. Of several configurations
    /// targeting a twin, the highest priority is applied. The content cannot change later.
    Create {
        /// The configuration's id (lowercase letters, digits and -+%_*!' up to 128 characters)
        id: String,
        /// Which twins: the WHERE of a devices query, e.g. "tags.site = 'lab'" (or * for every device)
        #[arg(long, value_name = "CONDITION")]
        target: String,
        /// Priority among the configurations targeting a twin: the highest is applied (0 or more)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
        priority: i64,
        /// What to write: twin paths mapped to values, e.g. '{"properties.desired.fw": {"version": "2.0"}}',
        /// or the whole content object ('{"deviceContent": {...}}' or '{"moduleContent": {...}}'); JSON,
        /// @FILE or - (stdin)
        #[arg(long, value_name = "JSON")]
        content: String,
        /// A label, KEY=VALUE (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
        /// A custom metric, NAME=QUERY: the hub counts the rows QUERY returns (repeatable, at most 5), e.g.
        /// "updated=SELECT deviceId FROM devices WHERE properties.reported.fw.version = '2.0'"
        #[arg(long = "metric", value_name = "NAME=QUERY", value_parser = parse_pair)]
        metrics: Vec<(String, String)>,
    },
    /// Show a configuration: target, priority, content, labels, and its metrics
    Show {
        /// The configuration's id
        id: String,
    },
    /// List configurations by id, with how many twins each targets and is applied to
    List {
        /// At most this many
        #[arg(long, value_name = "COUNT")]
        top: Option<u32>,
    },
    /// Change a configuration's target, priority, labels or metrics (its content cannot change)
    ///
    /// Reads the configuration, applies the changes and writes it back only if nobody changed it meanwhile
    /// (or if its etag is still --etag). --label and --metric set one entry each and keep the others;
    /// KEY= (nothing after =) removes one.
    #[command(group(
        ArgGroup::new("changes")
            .required(true)
            .multiple(true)
            .args(["target", "priority", "labels", "metrics"])
    ))]
    Update {
        /// The configuration's id
        id: String,
        /// The new target condition
        #[arg(long, value_name = "CONDITION")]
        target: Option<String>,
        /// The new priority (0 or more)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
        priority: Option<i64>,
        /// Set a label, KEY=VALUE; KEY= removes it (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
        /// Set a custom metric, NAME=QUERY; NAME= removes it (repeatable)
        #[arg(long = "metric", value_name = "NAME=QUERY", value_parser = parse_pair)]
        metrics: Vec<(String, String)>,
        /// Apply only if the configuration's etag is still this one (from `config show`)
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Delete a configuration; the twins it was applied to get the next one that targets them
    Delete {
        /// The configuration's id
        id: String,
        /// Delete only if the configuration's etag is still this one (from `config show`)
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
}

/// `KEY=VALUE` (the value may contain `=` and may be empty).
fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

pub(crate) async fn run(command: ConfigCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    match command.action {
        ConfigAction::Create {
            id,
            target,
            priority,
            content,
            labels,
            metrics,
        } => {
            let request = ConfigurationRequest {
                id: Some(id.clone()),
                labels: Some(labels.into_iter().collect()),
                content: Some(parse_content(&content)?),
                target_condition: Some(target),
                priority: Some(priority),
                metrics: Some(MetricQueries {
                    queries: Some(metrics.into_iter().collect()),
                }),
                ..ConfigurationRequest::default()
            };
            let operation = Operation::new(
                Kind::WriteConfiguration,
                format!("create configuration {id}"),
            )
            .on_configuration(&id);
            let configuration = hub
                .client
                .create_configuration(&request)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_configuration(format, &palette, &configuration)
        }
        ConfigAction::Show { id } => {
            let operation =
                Operation::new(Kind::ReadConfiguration, format!("read configuration {id}"))
                    .on_configuration(&id);
            let configuration = hub
                .client
                .get_configuration(&id)
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_configuration(format, &palette, &configuration)
        }
        ConfigAction::List { top } => {
            let operation = Operation::new(Kind::ReadConfiguration, "list configurations");
            let configurations = hub
                .client
                .list_configurations(top)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&configurations),
                OutputFormat::Table if configurations.is_empty() => write_stdout(
                    "no configurations: create one with `fleethub config create ID --target CONDITION --priority N --content JSON`\n",
                ),
                OutputFormat::Table => {
                    configurations_table(&palette, &configurations).print(&palette)
                }
            }
        }
        ConfigAction::Update {
            id,
            target,
            priority,
            labels,
            metrics,
            etag,
        } => {
            let read = Operation::new(Kind::ReadConfiguration, format!("read configuration {id}"))
                .on_configuration(&id);
            let current = hub
                .client
                .get_configuration(&id)
                .await
                .or_explain(&hub, &read)
                .await?;
            let mut request = current.to_request();
            if let Some(target) = target {
                request.target_condition = Some(target);
            }
            if let Some(priority) = priority {
                request.priority = Some(priority);
            }
            request.labels = Some(merge(current.labels.clone(), labels));
            request.metrics = Some(MetricQueries {
                queries: Some(merge(current.metrics.queries.clone(), metrics)),
            });
            let operation = Operation::new(
                Kind::WriteConfiguration,
                format!("update configuration {id}"),
            )
            .on_configuration(&id)
            .with_etag(etag.as_deref());
            // Without --etag, the one just read: a change made meanwhile is not overwritten.
            let etag = etag.map(ETag::new).unwrap_or(current.etag);
            let configuration = hub
                .client
                .update_configuration(&request, Some(&etag))
                .await
                .or_explain(&hub, &operation)
                .await?;
            print_configuration(format, &palette, &configuration)
        }
        ConfigAction::Delete { id, etag } => {
            let operation = Operation::new(
                Kind::WriteConfiguration,
                format!("delete configuration {id}"),
            )
            .on_configuration(&id)
            .with_etag(etag.as_deref());
            let etag = etag.map(ETag::new);
            hub.client
                .delete_configuration(&id, etag.as_ref())
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                // The REST answer is 204 without a body: nothing to print.
                OutputFormat::Json => Ok(()),
                OutputFormat::Table => write_stdout(&format!("deleted configuration {id}\n")),
            }
        }
    }
}

/// `--content`: a content object (`deviceContent`, `moduleContent`, ...) or, for short, a device content
/// map of twin paths to values.
fn parse_content(argument: &str) -> anyhow::Result<ConfigurationContent> {
    let value = read_json_argument("--content", argument)?;
    let object = require_object("--content", &value)?;
    if object.is_empty() {
        bail!(
            "--content is empty: map twin paths to values, e.g. '{{\"properties.desired.fw\": {{\"version\": \"2.0\"}}}}'"
        );
    }
    let is_content_object = object.keys().any(|key| {
        matches!(
            key.as_str(),
            "deviceContent" | "moduleContent" | "modulesContent"
        )
    });
    if !is_content_object {
        return Ok(ConfigurationContent {
            device_content: Some(object.clone()),
            ..ConfigurationContent::default()
        });
    }
    serde_json::from_value(value.clone()).map_err(|error| {
        anyhow::anyhow!(
            "--content is not a configuration content ({error}): each of deviceContent and moduleContent maps twin paths to values"
        )
    })
}

/// `entries` set (or, with an empty value, remove) keys of `map`.
fn merge(
    mut map: BTreeMap<String, String>,
    entries: Vec<(String, String)>,
) -> BTreeMap<String, String> {
    for (key, value) in entries {
        if value.is_empty() {
            map.remove(&key);
        } else {
            map.insert(key, value);
        }
    }
    map
}

fn print_configuration(
    format: OutputFormat,
    palette: &Palette,
    configuration: &Configuration,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(configuration),
        OutputFormat::Table => configuration_table(palette, configuration).print(palette),
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(results: &BTreeMap<String, u64>, name: &str) -> String {
    results
        .get(name)
        .map_or_else(|| "-".to_owned(), u64::to_string)
}

fn configuration_table(palette: &Palette, configuration: &Configuration) -> Table {
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    table.row(vec![label("id"), configuration.id.as_str().into()]);
    table.row(vec![
        label("priority"),
        configuration.priority.to_string().into(),
    ]);
    table.row(vec![
        label("target"),
        configuration.target_condition.as_str().into(),
    ]);
    table.row(vec![
        label("labels"),
        labels_text(&configuration.labels).into(),
    ]);
    let content = &configuration.content;
    let sections = [
        ("device content", &content.device_content),
        ("module content", &content.module_content),
        ("modules content", &content.modules_content),
    ];
    for (name, section) in sections {
        let Some(section) = section else { continue };
        for (index, (path, value)) in section.iter().enumerate() {
            let first = if index == 0 { label(name) } else { "".into() };
            table.row(vec![first, format!("{path} = {}", compact(value)).into()]);
        }
    }
    let system = &configuration.system_metrics.results;
    table.row(vec![
        label("targeted"),
        Cell::styled(count(system, TARGETED_COUNT), palette.change),
    ]);
    table.row(vec![
        label("applied"),
        Cell::styled(count(system, APPLIED_COUNT), palette.good),
    ]);
    for (name, query) in &configuration.metrics.queries {
        table.row(vec![
            label(&format!("metric {name}")),
            format!("{}  ({query})", count(&configuration.metrics.results, name)).into(),
        ]);
    }
    table.row(vec![
        label("created"),
        Cell::styled(
            human_time(Some(&format_time(configuration.created_time_utc))),
            palette.muted,
        ),
    ]);
    table.row(vec![
        label("last updated"),
        Cell::styled(
            human_time(Some(&format_time(configuration.last_updated_time_utc))),
            palette.muted,
        ),
    ]);
    table.row(vec![label("etag"), configuration.etag.as_str().into()]);
    table
}

fn configurations_table(palette: &Palette, configurations: &[Configuration]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "PRIORITY",
        "TARGETED",
        "APPLIED",
        "TARGET",
        "LABELS",
        "LAST UPDATED",
    ]);
    for configuration in configurations {
        let system = &configuration.system_metrics.results;
        table.row(vec![
            configuration.id.as_str().into(),
            configuration.priority.to_string().into(),
            count(system, TARGETED_COUNT).into(),
            Cell::styled(count(system, APPLIED_COUNT), palette.good),
            configuration.target_condition.as_str().into(),
            labels_text(&configuration.labels).into(),
            human_time(Some(&format_time(configuration.last_updated_time_utc))).into(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn configuration(value: Value) -> Configuration {
        serde_json::from_value(value).expect("a configuration")
    }

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_pair("q=SELECT * FROM devices WHERE a = 1"),
            Ok((
                "q".to_owned(),
                "SELECT * FROM devices WHERE a = 1".to_owned()
            ))
        );
        assert_eq!(parse_pair("k="), Ok(("k".to_owned(), String::new())));
        assert!(parse_pair("=v").is_err());
        assert!(parse_pair("novalue").is_err());
        let merged = merge(
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
            vec![("a".into(), String::new()), ("c".into(), "3".into())],
        );
        assert_eq!(
            merged,
            BTreeMap::from([("b".into(), "2".into()), ("c".into(), "3".into())])
        );
    }

    #[test]
    fn content_is_a_path_map_or_a_content_object() {
        let short = parse_content(r#"{"properties.desired.fw": {"v": 2}}"#).unwrap();
        assert_eq!(
            short.device_content,
            Some(
                json!({"properties.desired.fw": {"v": 2}})
                    .as_object()
                    .unwrap()
                    .clone()
            )
        );
        let module = parse_content(r#"{"moduleContent": {"properties.desired.x": 1}}"#).unwrap();
        assert!(module.device_content.is_none() && module.module_content.is_some());
        for (bad, needle) in [
            ("{}", "--content is empty"),
            ("[1]", "--content must be a JSON object, not an array"),
            (
                r#"{"deviceContent": 3}"#,
                "--content is not a configuration content",
            ),
        ] {
            let message = parse_content(bad).unwrap_err().to_string();
            assert!(message.contains(needle), "{bad}: {message}");
        }
    }

    #[test]
    fn configuration_tables_show_content_metrics_and_counts() {
        let palette = Palette::new(false);
        let fw = configuration(json!({
            "id": "fw-2", "schemaVersion": "1.0", "labels": {"team": "ops"},
            "content": {"deviceContent": {"properties.desired.fw": {"version": "2.0"}, "properties.desired.x": 1}},
            "targetCondition": "tags.site = 'lab'",
            "createdTimeUtc": "2026-05-01T10:00:00Z", "lastUpdatedTimeUtc": "2026-05-01T10:00:01Z",
            "priority": 10,
            "systemMetrics": {"results": {"targetedCount": 3, "appliedCount": 2}, "queries": {}},
            "metrics": {"results": {"done": 1}, "queries": {"done": "SELECT deviceId FROM devices"}},
            "etag": "MQ=="
        }));
        assert_eq!(
            configuration_table(&palette, &fw).render(&palette),
            "id              fw-2\n\
             priority        10\n\
             target          tags.site = 'lab'\n\
             labels          team=ops\n\
             device content  properties.desired.fw = {\"version\":\"2.0\"}\n\
             \x20               properties.desired.x = 1\n\
             targeted        3\n\
             applied         2\n\
             metric done     1  (SELECT deviceId FROM devices)\n\
             created         2026-05-01 10:00:00Z\n\
             last updated    2026-05-01 10:00:01Z\n\
             etag            MQ==\n"
        );
        assert_eq!(
            configurations_table(&palette, &[fw]).render(&palette),
            "ID    PRIORITY  TARGETED  APPLIED  TARGET             LABELS    LAST UPDATED\n\
             fw-2  10        3         2        tags.site = 'lab'  team=ops  2026-05-01 10:00:01Z\n"
        );
    }
}
