//! `fleethub route`: message routing through the service SDK, in the spirit of `az iot hub message-route`:
//! routes (list, show, add, remove, enable, disable, test), custom endpoints (webhooks, file sinks) with
//! their health, enrichments, the fallback route, dead letters, and the whole configuration as JSON
//! (export, import).
//!
//! Every change reads the configuration, edits it and writes it back with its etag, so a change made
//! meanwhile by someone else is never overwritten (the command then says to run it again).

use anyhow::{anyhow, bail};
use fleethub_service::protocol::rest::format_time;
use fleethub_service::protocol::routing::{
    BUILT_IN_ENDPOINT, DeadLetter, EndpointHealthData, EnrichmentProperties, FALLBACK_ROUTE_NAME,
    FallbackRouteProperties, FileSinkEndpoint, RouteProperties, RoutingMessage, RoutingProperties,
    RoutingSource, TestAllRoutesInput, TestResultStatus, TestRouteInput, WebhookEndpoint,
};
use fleethub_service::{DeadLetterQuery, RoutingConfiguration};
use serde_json::Value;

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, Hub, HubArgs};
use crate::json_input::{read_json_argument, require_object};
use crate::output::{Cell, OutputFormat, Palette, Table, human_time, print_json, write_stdout};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct RouteCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: RouteAction,
}

#[derive(clap::Subcommand)]
enum RouteAction {
    /// List the routes (and the fallback route) in the order the hub evaluates them
    List,
    /// Show a route, with how often it matched since the hub started
    Show {
        /// The route's name
        name: String,
    },
    /// Add a route: messages of a source whose condition is true go to the endpoints
    ///
    /// A message goes to every endpoint of every route that takes it. Device messages no route takes go to
    /// the fallback route (or to `events` when there is none); the hub's events only follow their routes.
    Add {
        /// The route's name (letters, digits, '.', '_' and '-', up to 64)
        name: String,
        /// Which messages: DeviceMessages, TwinChangeEvents, DeviceLifecycleEvents or
        /// DeviceConnectionStateEvents
        #[arg(long, value_name = "SOURCE", value_parser = parse_source, default_value = "DeviceMessages")]
        source: RoutingSource,
        /// The routing query, e.g. "level = 'critical'" or "$body.temperature > 40" (default: true)
        #[arg(long, value_name = "CONDITION")]
        condition: Option<String>,
        /// Where to send them: `events` or a custom endpoint's name (repeatable)
        #[arg(long = "endpoint", value_name = "ENDPOINT", required = true)]
        endpoints: Vec<String>,
        /// Add it disabled
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a route
    Remove {
        /// The route's name
        name: String,
    },
    /// Enable a disabled route
    Enable {
        /// The route's name
        name: String,
    },
    /// Disable a route (it stays configured)
    Disable {
        /// The route's name
        name: String,
    },
    /// Test a condition on a sample message, or (without --condition) which configured routes take it
    ///
    /// A --body that is JSON is sent with contentType application/json and contentEncoding utf-8 (which
    /// `$body` queries need) unless --system-property says otherwise.
    Test {
        /// The condition to test; without it, every enabled route of --source is tried
        #[arg(long, value_name = "CONDITION")]
        condition: Option<String>,
        /// The message's source
        #[arg(long, value_name = "SOURCE", value_parser = parse_source, default_value = "DeviceMessages")]
        source: RoutingSource,
        /// The message body
        #[arg(long, value_name = "TEXT", default_value = "")]
        body: String,
        /// An application property, KEY=VALUE (repeatable)
        #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_pair)]
        properties: Vec<(String, String)>,
        /// A system property by its routing keyword, e.g. contentType=application/json (repeatable)
        #[arg(long = "system-property", value_name = "KEY=VALUE", value_parser = parse_pair)]
        system_properties: Vec<(String, String)>,
        /// The twin `$twin` refers to, e.g. '{"tags": {"site": "lab"}}'; JSON, @FILE or - (stdin)
        #[arg(long, value_name = "JSON")]
        twin: Option<String>,
    },
    /// Custom endpoints: webhooks and file sinks, with their health
    #[command(subcommand)]
    Endpoint(EndpointAction),
    /// Enrichments: application properties stamped on the messages sent to some endpoints
    #[command(subcommand)]
    Enrichment(EnrichmentAction),
    /// The fallback route: where device messages no route takes go
    #[command(subcommand)]
    Fallback(FallbackAction),
    /// Messages custom endpoints gave up on, oldest first
    DeadLetters {
        /// Only this endpoint's
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<String>,
        /// From this dead letter id on
        #[arg(long, value_name = "ID")]
        from: Option<u64>,
        /// At most this many (1 to 1000)
        #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u32).range(1..=1000))]
        top: Option<u32>,
    },
    /// Print the whole routing configuration as JSON (what `route import` takes)
    Export,
    /// Replace the whole routing configuration with JSON (Azure's `properties.routing` shape)
    Import {
        /// The configuration: JSON, @FILE or - (stdin)
        #[arg(value_name = "JSON")]
        configuration: String,
    },
}

#[derive(clap::Subcommand)]
enum EndpointAction {
    /// List custom endpoints with their health, deliveries and backlog
    List,
    /// Add a webhook: each message is POSTed to URL as JSON
    AddWebhook {
        /// The endpoint's name
        name: String,
        /// http:// or https:// URL
        #[arg(long, value_name = "URL")]
        url: String,
        /// A header sent with every request, NAME=VALUE (repeatable), e.g. "Authorization=Bearer ..."
        #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_pair)]
        headers: Vec<(String, String)>,
    },
    /// Add a file sink: messages are appended as JSON lines to DATA_DIR/routes/NAME/PATH
    AddFile {
        /// The endpoint's name
        name: String,
        /// The file, relative to the endpoint's directory, e.g. telemetry.jsonl
        #[arg(long, value_name = "PATH")]
        path: String,
    },
    /// Remove a custom endpoint (no route, fallback route or enrichment may still name it)
    Remove {
        /// The endpoint's name
        name: String,
    },
}

#[derive(clap::Subcommand)]
enum EnrichmentAction {
    /// List enrichments
    List,
    /// Add an enrichment: KEY stamped on the messages sent to the endpoints
    Add {
        /// The application property to stamp (letters, digits, '-', '_' and '.')
        key: String,
        /// A static string, $iothubname, or a twin path ($twin.tags.x, $twin.properties.desired.x, ...)
        #[arg(long, value_name = "VALUE")]
        value: String,
        /// `events` or a custom endpoint (repeatable)
        #[arg(long = "endpoint", value_name = "ENDPOINT", required = true)]
        endpoints: Vec<String>,
    },
    /// Remove an enrichment
    Remove {
        /// Its key
        key: String,
    },
}

#[derive(clap::Subcommand)]
enum FallbackAction {
    /// Show where unmatched device messages go
    Show,
    /// Send device messages no route takes to the fallback route's endpoints
    Enable {
        /// Its endpoints (repeatable; default: the current ones, else `events`)
        #[arg(long = "endpoint", value_name = "ENDPOINT")]
        endpoints: Vec<String>,
        /// Its condition (default: the current one, else true)
        #[arg(long, value_name = "CONDITION")]
        condition: Option<String>,
    },
    /// Drop device messages no route takes
    Disable,
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

const SOURCES: [RoutingSource; 4] = [
    RoutingSource::DeviceMessages,
    RoutingSource::TwinChangeEvents,
    RoutingSource::DeviceLifecycleEvents,
    RoutingSource::DeviceConnectionStateEvents,
];

fn source_name(source: RoutingSource) -> String {
    serde_json::to_value(source)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{source:?}"))
}

/// A source by its Azure name, in any case.
fn parse_source(text: &str) -> Result<RoutingSource, String> {
    SOURCES
        .into_iter()
        .find(|source| source_name(*source).eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            let names: Vec<String> = SOURCES.into_iter().map(source_name).collect();
            format!("expected one of {}", names.join(", "))
        })
}

pub(crate) async fn run(command: RouteCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    let view = View {
        hub: &hub,
        format,
        palette,
    };
    match command.action {
        RouteAction::List => {
            let current = view.read().await?;
            match format {
                OutputFormat::Json => print_json(&current.routing.routes),
                OutputFormat::Table => {
                    let mut text = routes_table(&palette, &current.routing).render(&palette);
                    text.push_str(&fallback_text(&current.routing));
                    write_stdout(&text)
                }
            }
        }
        RouteAction::Show { name } => {
            let current = view.read().await?;
            let route = find_route(&current.routing, &name)?.clone();
            match format {
                OutputFormat::Json => print_json(&route),
                OutputFormat::Table => {
                    let health = hub
                        .client
                        .routing_health()
                        .await
                        .or_explain(&hub, &Operation::new(Kind::ReadRouting, "read routing health"))
                        .await?;
                    let statistics = health
                        .routes
                        .iter()
                        .find(|statistics| statistics.name == route.name);
                    route_table(&palette, &route, statistics).print(&palette)
                }
            }
        }
        RouteAction::Add {
            name,
            source,
            condition,
            endpoints,
            disabled,
        } => {
            view.change(&format!("add route {name}"), |routing| {
                if routing
                    .routes
                    .iter()
                    .any(|route| route.name.eq_ignore_ascii_case(&name))
                {
                    bail!(
                        "route {name} already exists: see it with `fleethub route show {name}`, or remove it first with `fleethub route remove {name}`"
                    );
                }
                let summary = format!(
                    "added route {name}: {} where {} -> {}",
                    source_name(source),
                    condition.as_deref().unwrap_or("true"),
                    endpoints.join(", ")
                );
                routing.routes.push(RouteProperties {
                    name: name.clone(),
                    source,
                    condition: condition.clone(),
                    endpoint_names: endpoints.clone(),
                    is_enabled: !disabled,
                });
                Ok(summary)
            })
            .await
        }
        RouteAction::Remove { name } => {
            view.change(&format!("remove route {name}"), |routing| {
                let index = route_index(routing, &name)?;
                routing.routes.remove(index);
                Ok(format!("removed route {name}"))
            })
            .await
        }
        RouteAction::Enable { name } => {
            view.change(&format!("enable route {name}"), |routing| {
                let index = route_index(routing, &name)?;
                routing.routes[index].is_enabled = true;
                Ok(format!("enabled route {name}"))
            })
            .await
        }
        RouteAction::Disable { name } => {
            view.change(&format!("disable route {name}"), |routing| {
                let index = route_index(routing, &name)?;
                routing.routes[index].is_enabled = false;
                Ok(format!("disabled route {name}"))
            })
            .await
        }
        RouteAction::Test {
            condition,
            source,
            body,
            properties,
            system_properties,
            twin,
        } => {
            let message = sample_message(body, properties, system_properties);
            let twin = twin
                .map(|twin| {
                    let value = read_json_argument("--twin", &twin)?;
                    require_object("--twin", &value)?;
                    Ok::<Value, anyhow::Error>(value)
                })
                .transpose()?;
            let operation = Operation::new(Kind::ReadRouting, "test a route");
            match condition {
                Some(condition) => {
                    let input = TestRouteInput {
                        message,
                        route: RouteProperties {
                            name: "test".to_owned(),
                            source,
                            condition: Some(condition),
                            endpoint_names: vec![BUILT_IN_ENDPOINT.to_owned()],
                            is_enabled: true,
                        },
                        twin,
                    };
                    let result = hub
                        .client
                        .test_route(&input)
                        .await
                        .or_explain(&hub, &operation)
                        .await?;
                    match format {
                        OutputFormat::Json => print_json(&result),
                        OutputFormat::Table => {
                            if let Some(error) = result.details.compilation_errors.first() {
                                bail!("the condition does not compile: {}", error.message);
                            }
                            let (text, style) = match result.result {
                                TestResultStatus::True => ("true: the message takes the route", palette.good),
                                TestResultStatus::False => ("false: the message does not take the route", palette.bad),
                                TestResultStatus::Undefined => (
                                    "undefined (not a Boolean, e.g. a missing property or a body that is not JSON): the message does not take the route",
                                    palette.change,
                                ),
                            };
                            write_stdout(&format!("{}\n", crate::output::paint(style, text)))
                        }
                    }
                }
                None => {
                    let input = TestAllRoutesInput {
                        routing_source: Some(source),
                        message,
                        twin,
                    };
                    let result = hub
                        .client
                        .test_all_routes(&input)
                        .await
                        .or_explain(&hub, &operation)
                        .await?;
                    match format {
                        OutputFormat::Json => print_json(&result),
                        OutputFormat::Table if result.routes.is_empty() => write_stdout(
                            "no route takes the message (device messages then go to the fallback route)\n",
                        ),
                        OutputFormat::Table => {
                            let routing = RoutingProperties {
                                routes: result
                                    .routes
                                    .into_iter()
                                    .map(|matched| matched.properties)
                                    .collect(),
                                ..RoutingProperties::default()
                            };
                            routes_table(&palette, &routing).print(&palette)
                        }
                    }
                }
            }
        }
        RouteAction::Endpoint(action) => run_endpoint(&view, action).await,
        RouteAction::Enrichment(action) => run_enrichment(&view, action).await,
        RouteAction::Fallback(action) => run_fallback(&view, action).await,
        RouteAction::DeadLetters {
            endpoint,
            from,
            top,
        } => {
            let query = DeadLetterQuery {
                endpoint,
                from,
                top,
            };
            let page = hub
                .client
                .dead_letters(&query)
                .await
                .or_explain(&hub, &Operation::new(Kind::ReadRouting, "read dead letters"))
                .await?;
            match format {
                OutputFormat::Json => print_json(&page),
                OutputFormat::Table if page.dead_letters.is_empty() => {
                    write_stdout("no dead letters\n")
                }
                OutputFormat::Table => {
                    let mut text = dead_letters_table(&palette, &page.dead_letters).render(&palette);
                    if let Some(next) = page.next_id {
                        text.push_str(&format!("more: --from {next}\n"));
                    }
                    write_stdout(&text)
                }
            }
        }
        RouteAction::Export => print_json(&view.read().await?.routing),
        RouteAction::Import { configuration } => {
            let value = read_json_argument("the routing configuration", &configuration)?;
            require_object("the routing configuration", &value)?;
            let routing: RoutingProperties = serde_json::from_value(value).map_err(|error| {
                anyhow!(
                    "the routing configuration is not Azure's properties.routing shape ({error}): see `fleethub route export`"
                )
            })?;
            let operation = Operation::new(Kind::WriteRouting, "replace the routing configuration");
            let updated = hub
                .client
                .set_routing(&routing, None)
                .await
                .or_explain(&hub, &operation)
                .await?;
            match format {
                OutputFormat::Json => print_json(&updated.routing),
                OutputFormat::Table => write_stdout(&format!(
                    "routing configuration replaced: {} routes, {} custom endpoints, {} enrichments\n",
                    updated.routing.routes.len(),
                    updated.routing.endpoints.webhooks.len()
                        + updated.routing.endpoints.file_sinks.len(),
                    updated.routing.enrichments.len()
                )),
            }
        }
    }
}

/// What every subcommand needs: the hub and how to print.
struct View<'a> {
    hub: &'a Hub,
    format: OutputFormat,
    palette: Palette,
}

impl View<'_> {
    async fn read(&self) -> anyhow::Result<RoutingConfiguration> {
        let operation = Operation::new(Kind::ReadRouting, "read the routing configuration");
        self.hub
            .client
            .get_routing()
            .await
            .or_explain(self.hub, &operation)
            .await
    }

    /// Reads the configuration, applies `edit` (which says what it did, or why it cannot), writes it back
    /// if nobody changed it meanwhile, and prints the result.
    async fn change(
        &self,
        action: &str,
        edit: impl FnOnce(&mut RoutingProperties) -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let current = self.read().await?;
        let mut routing = current.routing.clone();
        let summary = edit(&mut routing)?;
        let operation = Operation::new(Kind::WriteRouting, action);
        let updated = self
            .hub
            .client
            .set_routing(&routing, Some(&current.etag))
            .await
            .or_explain(self.hub, &operation)
            .await?;
        match self.format {
            OutputFormat::Json => print_json(&updated.routing),
            OutputFormat::Table => write_stdout(&format!("{summary}\n")),
        }
    }
}

fn route_index(routing: &RoutingProperties, name: &str) -> anyhow::Result<usize> {
    routing
        .routes
        .iter()
        .position(|route| route.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| no_route(routing, name))
}

fn find_route<'a>(
    routing: &'a RoutingProperties,
    name: &str,
) -> anyhow::Result<&'a RouteProperties> {
    route_index(routing, name).map(|index| &routing.routes[index])
}

fn no_route(routing: &RoutingProperties, name: &str) -> anyhow::Error {
    let names: Vec<&str> = routing
        .routes
        .iter()
        .map(|route| route.name.as_str())
        .collect();
    if names.is_empty() {
        anyhow!(
            "there is no route {name}: the hub has no routes; add one with `fleethub route add`"
        )
    } else {
        anyhow!(
            "there is no route {name}: the routes are {} (`fleethub route list`)",
            names.join(", ")
        )
    }
}

fn sample_message(
    body: String,
    properties: Vec<(String, String)>,
    system_properties: Vec<(String, String)>,
) -> RoutingMessage {
    let mut system: std::collections::BTreeMap<String, String> =
        system_properties.into_iter().collect();
    let says = |system: &std::collections::BTreeMap<String, String>, names: &[&str]| {
        system
            .keys()
            .any(|key| names.iter().any(|name| key.eq_ignore_ascii_case(name)))
    };
    if !body.is_empty()
        && serde_json::from_str::<Value>(&body).is_ok()
        && !says(&system, &["contentType", "content-type", "$contentType"])
    {
        system.insert("contentType".to_owned(), "application/json".to_owned());
        if !says(
            &system,
            &["contentEncoding", "content-encoding", "$contentEncoding"],
        ) {
            system.insert("contentEncoding".to_owned(), "utf-8".to_owned());
        }
    }
    RoutingMessage {
        body,
        app_properties: properties
            .into_iter()
            .map(|(key, value)| (key, Some(value)))
            .collect(),
        system_properties: system,
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn routes_table(palette: &Palette, routing: &RoutingProperties) -> Table {
    let mut table = Table::new(&["NAME", "SOURCE", "ENABLED", "ENDPOINTS", "CONDITION"]);
    for route in &routing.routes {
        let enabled = if route.is_enabled {
            Cell::styled("yes", palette.good)
        } else {
            Cell::styled("no", palette.muted)
        };
        table.row(vec![
            route.name.as_str().into(),
            source_name(route.source).into(),
            enabled,
            route.endpoint_names.join(", ").into(),
            route.condition.as_deref().unwrap_or("true").into(),
        ]);
    }
    table
}

/// The line under the routes table saying where unmatched device messages go.
fn fallback_text(routing: &RoutingProperties) -> String {
    match &routing.fallback_route {
        None => "unmatched device messages go to events (no fallback route)\n".to_owned(),
        Some(fallback) if !fallback.is_enabled => {
            "unmatched device messages are dropped (the fallback route is disabled)\n".to_owned()
        }
        Some(fallback) => format!(
            "unmatched device messages go to {} (fallback route, where {})\n",
            fallback.endpoint_names.join(", "),
            fallback.condition.as_deref().unwrap_or("true")
        ),
    }
}

fn route_table(
    palette: &Palette,
    route: &RouteProperties,
    statistics: Option<&fleethub_service::protocol::routing::RouteStatistics>,
) -> Table {
    let label = |text: &str| Cell::styled(text, palette.label);
    let mut table = Table::unheaded();
    table.row(vec![label("name"), route.name.as_str().into()]);
    table.row(vec![label("source"), source_name(route.source).into()]);
    table.row(vec![label("enabled"), yes_no(route.is_enabled).into()]);
    table.row(vec![
        label("endpoints"),
        route.endpoint_names.join(", ").into(),
    ]);
    table.row(vec![
        label("condition"),
        route.condition.as_deref().unwrap_or("true").into(),
    ]);
    let count =
        |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |value| value.to_string());
    table.row(vec![
        label("matched"),
        Cell::styled(count(statistics.map(|s| s.matched)), palette.good),
    ]);
    table.row(vec![
        label("not boolean"),
        Cell::styled(count(statistics.map(|s| s.not_boolean)), palette.change),
    ]);
    table
}

async fn run_endpoint(view: &View<'_>, action: EndpointAction) -> anyhow::Result<()> {
    match action {
        EndpointAction::List => {
            let current = view.read().await?;
            let health = view
                .hub
                .client
                .routing_health()
                .await
                .or_explain(view.hub, &Operation::new(Kind::ReadRouting, "read routing health"))
                .await?;
            match view.format {
                OutputFormat::Json => print_json(&serde_json::json!({
                    "endpoints": current.routing.endpoints,
                    "health": health.endpoints,
                })),
                OutputFormat::Table
                    if current.routing.endpoints.webhooks.is_empty()
                        && current.routing.endpoints.file_sinks.is_empty() =>
                {
                    write_stdout(
                        "no custom endpoints (only `events`): add one with `fleethub route endpoint add-webhook` or `add-file`\n",
                    )
                }
                OutputFormat::Table => {
                    endpoints_table(&view.palette, &current.routing, &health.endpoints)
                        .print(&view.palette)
                }
            }
        }
        EndpointAction::AddWebhook { name, url, headers } => {
            view.change(&format!("add webhook {name}"), |routing| {
                refuse_taken_endpoint(routing, &name)?;
                routing.endpoints.webhooks.push(WebhookEndpoint {
                    name: name.clone(),
                    url: url.clone(),
                    headers: headers.into_iter().collect(),
                });
                Ok(format!(
                    "added webhook {name} ({url}); route messages to it with `fleethub route add NAME --endpoint {name}`"
                ))
            })
            .await
        }
        EndpointAction::AddFile { name, path } => {
            view.change(&format!("add file sink {name}"), |routing| {
                refuse_taken_endpoint(routing, &name)?;
                routing.endpoints.file_sinks.push(FileSinkEndpoint {
                    name: name.clone(),
                    path: path.clone(),
                });
                Ok(format!(
                    "added file sink {name} (DATA_DIR/routes/{name}/{path}); route messages to it with `fleethub route add NAME --endpoint {name}`"
                ))
            })
            .await
        }
        EndpointAction::Remove { name } => {
            view.change(&format!("remove endpoint {name}"), |routing| {
                let users = endpoint_users(routing, &name);
                if !users.is_empty() {
                    bail!(
                        "endpoint {name} is still used by {}: remove or change those first",
                        users.join(", ")
                    );
                }
                let before = routing.endpoints.webhooks.len() + routing.endpoints.file_sinks.len();
                routing
                    .endpoints
                    .webhooks
                    .retain(|webhook| !webhook.name.eq_ignore_ascii_case(&name));
                routing
                    .endpoints
                    .file_sinks
                    .retain(|sink| !sink.name.eq_ignore_ascii_case(&name));
                if before == routing.endpoints.webhooks.len() + routing.endpoints.file_sinks.len() {
                    bail!(
                        "there is no custom endpoint {name}: see them with `fleethub route endpoint list`"
                    );
                }
                Ok(format!("removed endpoint {name}"))
            })
            .await
        }
    }
}

fn refuse_taken_endpoint(routing: &RoutingProperties, name: &str) -> anyhow::Result<()> {
    let taken = routing
        .endpoints
        .webhooks
        .iter()
        .map(|webhook| &webhook.name)
        .chain(routing.endpoints.file_sinks.iter().map(|sink| &sink.name))
        .any(|existing| existing.eq_ignore_ascii_case(name));
    if taken {
        bail!(
            "endpoint {name} already exists: see it with `fleethub route endpoint list`, or remove it first with `fleethub route endpoint remove {name}`"
        );
    }
    Ok(())
}

/// What names endpoint `name`: "route r1", "the fallback route", "enrichment k".
fn endpoint_users(routing: &RoutingProperties, name: &str) -> Vec<String> {
    let names = |endpoints: &[String]| {
        endpoints
            .iter()
            .any(|endpoint| endpoint.eq_ignore_ascii_case(name))
    };
    let mut users: Vec<String> = routing
        .routes
        .iter()
        .filter(|route| names(&route.endpoint_names))
        .map(|route| format!("route {}", route.name))
        .collect();
    if routing
        .fallback_route
        .as_ref()
        .is_some_and(|fallback| names(&fallback.endpoint_names))
    {
        users.push("the fallback route".to_owned());
    }
    users.extend(
        routing
            .enrichments
            .iter()
            .filter(|enrichment| names(&enrichment.endpoint_names))
            .map(|enrichment| format!("enrichment {}", enrichment.key)),
    );
    users
}

fn endpoints_table(
    palette: &Palette,
    routing: &RoutingProperties,
    health: &[EndpointHealthData],
) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "TYPE",
        "TARGET",
        "STATUS",
        "DELIVERED",
        "DEAD-LETTERED",
        "UNREAD",
        "LAST ERROR",
    ]);
    let endpoints = routing
        .endpoints
        .webhooks
        .iter()
        .map(|webhook| (webhook.name.as_str(), "webhook", webhook.url.clone()))
        .chain(routing.endpoints.file_sinks.iter().map(|sink| {
            (
                sink.name.as_str(),
                "file",
                format!("routes/{}/{}", sink.name, sink.path),
            )
        }));
    for (name, kind, target) in endpoints {
        let data = health
            .iter()
            .find(|data| data.endpoint_id.eq_ignore_ascii_case(name));
        let status = data.map_or_else(
            || Cell::plain("-"),
            |data| {
                let text = serde_json::to_value(data.health_status)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let style = match text.as_str() {
                    "healthy" => palette.good,
                    "unhealthy" | "dead" => palette.bad,
                    _ => palette.muted,
                };
                Cell::styled(text, style)
            },
        );
        let number = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
        table.row(vec![
            name.into(),
            kind.into(),
            target.into(),
            status,
            number(data.map(|data| data.delivered)).into(),
            number(data.map(|data| data.dead_lettered)).into(),
            number(data.map(|data| data.unread_events)).into(),
            data.and_then(|data| data.last_known_error.clone())
                .unwrap_or_else(|| "-".to_owned())
                .into(),
        ]);
    }
    table
}

async fn run_enrichment(view: &View<'_>, action: EnrichmentAction) -> anyhow::Result<()> {
    match action {
        EnrichmentAction::List => {
            let current = view.read().await?;
            match view.format {
                OutputFormat::Json => print_json(&current.routing.enrichments),
                OutputFormat::Table if current.routing.enrichments.is_empty() => write_stdout(
                    "no enrichments: add one with `fleethub route enrichment add KEY --value VALUE --endpoint ENDPOINT`\n",
                ),
                OutputFormat::Table => {
                    let mut table = Table::new(&["KEY", "VALUE", "ENDPOINTS"]);
                    for enrichment in &current.routing.enrichments {
                        table.row(vec![
                            enrichment.key.as_str().into(),
                            enrichment.value.as_str().into(),
                            enrichment.endpoint_names.join(", ").into(),
                        ]);
                    }
                    table.print(&view.palette)
                }
            }
        }
        EnrichmentAction::Add {
            key,
            value,
            endpoints,
        } => {
            view.change(&format!("add enrichment {key}"), |routing| {
                if routing
                    .enrichments
                    .iter()
                    .any(|enrichment| enrichment.key.eq_ignore_ascii_case(&key))
                {
                    bail!(
                        "enrichment {key} already exists: remove it first with `fleethub route enrichment remove {key}`"
                    );
                }
                routing.enrichments.push(EnrichmentProperties {
                    key: key.clone(),
                    value: value.clone(),
                    endpoint_names: endpoints.clone(),
                });
                Ok(format!(
                    "added enrichment {key} = {value} for {}",
                    endpoints.join(", ")
                ))
            })
            .await
        }
        EnrichmentAction::Remove { key } => {
            view.change(&format!("remove enrichment {key}"), |routing| {
                let before = routing.enrichments.len();
                routing
                    .enrichments
                    .retain(|enrichment| !enrichment.key.eq_ignore_ascii_case(&key));
                if routing.enrichments.len() == before {
                    bail!(
                        "there is no enrichment {key}: see them with `fleethub route enrichment list`"
                    );
                }
                Ok(format!("removed enrichment {key}"))
            })
            .await
        }
    }
}

async fn run_fallback(view: &View<'_>, action: FallbackAction) -> anyhow::Result<()> {
    match action {
        FallbackAction::Show => {
            let current = view.read().await?;
            match view.format {
                OutputFormat::Json => print_json(&current.routing.fallback_route),
                OutputFormat::Table => write_stdout(&fallback_text(&current.routing)),
            }
        }
        FallbackAction::Enable {
            endpoints,
            condition,
        } => {
            view.change("enable the fallback route", |routing| {
                let current = routing.fallback_route.take();
                let endpoint_names = if !endpoints.is_empty() {
                    endpoints.clone()
                } else {
                    current
                        .as_ref()
                        .map(|fallback| fallback.endpoint_names.clone())
                        .unwrap_or_else(|| vec![BUILT_IN_ENDPOINT.to_owned()])
                };
                let condition = condition
                    .clone()
                    .or_else(|| current.and_then(|fallback| fallback.condition));
                routing.fallback_route = Some(FallbackRouteProperties {
                    name: Some(FALLBACK_ROUTE_NAME.to_owned()),
                    source: RoutingSource::DeviceMessages,
                    condition,
                    endpoint_names,
                    is_enabled: true,
                });
                Ok(fallback_text(routing).trim_end().to_owned())
            })
            .await
        }
        FallbackAction::Disable => {
            view.change("disable the fallback route", |routing| {
                let endpoint_names = routing
                    .fallback_route
                    .as_ref()
                    .map(|fallback| fallback.endpoint_names.clone())
                    .unwrap_or_else(|| vec![BUILT_IN_ENDPOINT.to_owned()]);
                let condition = routing
                    .fallback_route
                    .as_ref()
                    .and_then(|fallback| fallback.condition.clone());
                routing.fallback_route = Some(FallbackRouteProperties {
                    name: Some(FALLBACK_ROUTE_NAME.to_owned()),
                    source: RoutingSource::DeviceMessages,
                    condition,
                    endpoint_names,
                    is_enabled: false,
                });
                Ok(fallback_text(routing).trim_end().to_owned())
            })
            .await
        }
    }
}

fn dead_letters_table(palette: &Palette, letters: &[DeadLetter]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "ENDPOINT",
        "DEAD-LETTERED",
        "ATTEMPTS",
        "DEVICE",
        "PARTITION:SEQ",
        "LAST ERROR",
        "BODY",
    ]);
    for letter in letters {
        let body: String = letter.message.body.chars().take(40).collect();
        table.row(vec![
            letter.id.to_string().into(),
            letter.endpoint_name.as_str().into(),
            human_time(Some(&format_time(letter.dead_lettered_time))).into(),
            letter.attempts.to_string().into(),
            letter.message.device_id().unwrap_or("-").into(),
            format!(
                "{}:{}",
                letter.message.partition, letter.message.sequence_number
            )
            .into(),
            Cell::styled(letter.last_error.as_str(), palette.bad),
            body.into(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routing(value: Value) -> RoutingProperties {
        serde_json::from_value(value).expect("a routing shape")
    }

    #[test]
    fn sources_parse_in_any_case_and_bad_ones_list_the_choices() {
        assert_eq!(
            parse_source("twinchangeevents"),
            Ok(RoutingSource::TwinChangeEvents)
        );
        assert_eq!(
            parse_source("DeviceMessages"),
            Ok(RoutingSource::DeviceMessages)
        );
        assert_eq!(
            parse_source("telemetry"),
            Err("expected one of DeviceMessages, TwinChangeEvents, DeviceLifecycleEvents, DeviceConnectionStateEvents".to_owned())
        );
    }

    #[test]
    fn json_sample_bodies_get_the_content_type_body_queries_need() {
        let message = sample_message(
            r#"{"t": 1}"#.to_owned(),
            vec![("k".into(), "v".into())],
            vec![],
        );
        assert_eq!(
            message
                .system_properties
                .get("contentType")
                .map(String::as_str),
            Some("application/json")
        );
        assert_eq!(
            message
                .system_properties
                .get("contentEncoding")
                .map(String::as_str),
            Some("utf-8")
        );
        assert_eq!(message.app_properties.get("k"), Some(&Some("v".to_owned())));
        let text = sample_message("plain".to_owned(), vec![], vec![]);
        assert!(text.system_properties.is_empty());
        let explicit = sample_message(
            "{}".to_owned(),
            vec![],
            vec![("contentType".into(), "text/plain".into())],
        );
        assert_eq!(
            explicit
                .system_properties
                .get("contentType")
                .map(String::as_str),
            Some("text/plain")
        );
    }

    #[test]
    fn tables_show_routes_the_fallback_and_who_uses_an_endpoint() {
        let palette = Palette::new(false);
        let config = routing(json!({
            "endpoints": {"webhooks": [{"name": "alerts", "url": "https://example.com/hook"}]},
            "routes": [
                {"name": "hot", "source": "DeviceMessages", "condition": "$body.t > 40", "endpointNames": ["alerts", "events"]},
                {"name": "twins", "source": "TwinChangeEvents", "endpointNames": ["events"], "isEnabled": false}
            ],
            "fallbackRoute": {"source": "DeviceMessages", "endpointNames": ["alerts"], "isEnabled": true},
            "enrichments": [{"key": "region", "value": "$twin.tags.region", "endpointNames": ["alerts"]}]
        }));
        assert_eq!(
            routes_table(&palette, &config).render(&palette),
            "NAME   SOURCE            ENABLED  ENDPOINTS       CONDITION\n\
             hot    DeviceMessages    yes      alerts, events  $body.t > 40\n\
             twins  TwinChangeEvents  no       events          true\n"
        );
        assert_eq!(
            fallback_text(&config),
            "unmatched device messages go to alerts (fallback route, where true)\n"
        );
        assert_eq!(
            endpoint_users(&config, "ALERTS"),
            ["route hot", "the fallback route", "enrichment region"]
        );
        assert_eq!(
            fallback_text(&RoutingProperties::default()),
            "unmatched device messages go to events (no fallback route)\n"
        );
    }
}
