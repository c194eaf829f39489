//! `fleethub query "SELECT ..."`: runs an IoT Hub query and prints every result, following continuation
//! tokens. Twins print as a table of their main fields; projections and aggregates as a table of their
//! columns; `--output json` prints the results as one JSON array.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, HubArgs};
use crate::output::{Cell, OutputFormat, Palette, Table, compact, print_json};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct QueryCommand {
    #[command(flatten)]
    hub: HubArgs,
    /// The query, e.g. "SELECT * FROM devices WHERE tags.site = 'b1'" or
    /// "SELECT properties.reported.firmwareStatus AS status, COUNT() AS n FROM devices GROUP BY properties.reported.firmwareStatus"
    query: String,
    /// Results fetched per request (1 to 1000)
    #[arg(long, value_name = "COUNT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    page_size: u32,
}

pub(crate) async fn run(command: QueryCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let operation = Operation::new(Kind::Query, "run this query".to_owned());
    let items = hub
        .client
        .query(&command.query, Some(command.page_size))
        .collect_all()
        .await
        .or_explain(&hub, &operation)
        .await?;
    match command.hub.output {
        OutputFormat::Json => print_json(&items),
        OutputFormat::Table => {
            let palette = Palette::for_stdout();
            table(&items).print(&palette)
        }
    }
}

/// Twins (`SELECT *`) show their identity and the sections compactly; other rows show their columns.
fn table(items: &[Value]) -> Table {
    let is_twin = |item: &Value| item.get("properties").is_some() && item.get("etag").is_some();
    if !items.is_empty() && items.iter().all(is_twin) {
        let mut table = Table::new(&[
            "DEVICE",
            "MODULE",
            "STATUS",
            "CONNECTION",
            "TAGS",
            "REPORTED",
        ]);
        for item in items {
            let text = |key: &str| {
                item.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned()
            };
            let reported = item["properties"]["reported"]
                .as_object()
                .map(|reported| {
                    let plain: serde_json::Map<String, Value> = reported
                        .iter()
                        .filter(|(key, _)| !key.starts_with('$'))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    compact(&Value::Object(plain))
                })
                .unwrap_or_default();
            table.row(vec![
                text("deviceId").into(),
                text("moduleId").into(),
                text("status").into(),
                text("connectionState").into(),
                compact(item.get("tags").unwrap_or(&Value::Null)).into(),
                Cell::plain(reported),
            ]);
        }
        return table;
    }
    // Columns in first-seen order across rows (aggregates may leave some out).
    let mut columns: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for item in items {
        if let Some(object) = item.as_object() {
            for key in object.keys() {
                if seen.insert(key.clone()) {
                    columns.push(key.clone());
                }
            }
        }
    }
    if columns.is_empty() {
        columns.push("VALUE".into());
    }
    let header: Vec<String> = columns.iter().map(|column| column.to_uppercase()).collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    for item in items {
        let cells = match item.as_object() {
            Some(object) => columns
                .iter()
                .map(|column| match object.get(column) {
                    Some(Value::String(text)) => Cell::plain(text.clone()),
                    Some(value) => Cell::plain(compact(value)),
                    None => Cell::plain("-"),
                })
                .collect(),
            None => vec![Cell::plain(compact(item))],
        };
        table.row(cells);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aggregate_rows_become_columns_in_first_seen_order() {
        let rows = vec![json!({"status": "completed", "n": 3}), json!({"n": 1})];
        let rendered = table(&rows).render(&Palette::new(false));
        let lines: Vec<&str> = rendered.lines().collect();
        assert!(
            lines[0].starts_with("STATUS") && lines[0].contains('N'),
            "{rendered}"
        );
        assert!(
            lines[2].starts_with('-'),
            "a missing column shows a dash: {rendered}"
        );
    }
}
