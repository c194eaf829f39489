//! A routing configuration made ready to evaluate: conditions and enrichments parsed once per configuration
//! version, endpoint names resolved, and what each source needs (the twin or not) worked out; and the pure
//! decision of where one message goes. No I/O: the hub loads the twin and writes the result.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use fleethub_protocol::routing::{
    BUILT_IN_ENDPOINT, FALLBACK_ROUTE_NAME, FileSinkEndpoint, RouteProperties, RouteStatistics,
    RoutingProperties, RoutingSource, WebhookEndpoint,
};
use fleethub_query::{Enrichment, EnrichmentValue, RouteCondition, RouteOutcome, RoutedMessage};
use serde_json::Value;

/// Every routing source, in a fixed order ([`source_index`]).
pub const SOURCES: [RoutingSource; 4] = [
    RoutingSource::DeviceMessages,
    RoutingSource::TwinChangeEvents,
    RoutingSource::DeviceLifecycleEvents,
    RoutingSource::DeviceConnectionStateEvents,
];

pub fn source_index(source: RoutingSource) -> usize {
    match source {
        RoutingSource::DeviceMessages => 0,
        RoutingSource::TwinChangeEvents => 1,
        RoutingSource::DeviceLifecycleEvents => 2,
        RoutingSource::DeviceConnectionStateEvents => 3,
    }
}

/// The configuration of a hub that was never configured: device messages go to `events` (no routes, no
/// fallback route), and so do the hub's twin, lifecycle and connection-state events, each by a route of
/// its own that can be changed or removed like any other. (A new Azure hub has no routes for those events;
/// fleethub keeps them on the event stream out of the box, as before routing existed.)
pub fn default_routing() -> RoutingProperties {
    let route = |name: &str, source| RouteProperties {
        name: name.to_owned(),
        source,
        condition: None,
        endpoint_names: vec![BUILT_IN_ENDPOINT.to_owned()],
        is_enabled: true,
    };
    RoutingProperties {
        routes: vec![
            route("twin-change-events", RoutingSource::TwinChangeEvents),
            route(
                "device-lifecycle-events",
                RoutingSource::DeviceLifecycleEvents,
            ),
            route(
                "device-connection-state-events",
                RoutingSource::DeviceConnectionStateEvents,
            ),
        ],
        ..RoutingProperties::default()
    }
}

/// A custom endpoint and the configuration version it appeared in (its incarnation: removing an endpoint
/// and adding one of the same name later starts a new one, with a new cursor).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomEndpoint {
    pub name: String,
    pub since: u64,
    pub kind: EndpointKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EndpointKind {
    Webhook(WebhookEndpoint),
    FileSink(FileSinkEndpoint),
}

impl EndpointKind {
    pub fn endpoint_type(&self) -> fleethub_protocol::routing::EndpointType {
        match self {
            EndpointKind::Webhook(_) => fleethub_protocol::routing::EndpointType::Webhook,
            EndpointKind::FileSink(_) => fleethub_protocol::routing::EndpointType::FileSink,
        }
    }
}

/// How often a route matched; shared by every message evaluated under one configuration version.
#[derive(Debug, Default)]
struct RouteCounters {
    matched: AtomicU64,
    not_boolean: AtomicU64,
}

#[derive(Debug)]
struct CompiledRoute {
    name: String,
    source: RoutingSource,
    condition: RouteCondition,
    /// Canonical endpoint names (as the endpoint itself is spelled).
    endpoints: Vec<String>,
    counters: RouteCounters,
}

#[derive(Debug)]
enum Fallback {
    /// No `fallbackRoute`: unmatched device messages go to `events`.
    BuiltIn,
    /// A disabled fallback route: unmatched device messages are dropped.
    Disabled,
    Route(CompiledRoute),
}

#[derive(Debug)]
struct CompiledEnrichment {
    enrichment: Enrichment,
    endpoints: Vec<String>,
}

/// Where one message goes: the endpoints (each once, `events` included when routed there) and, per
/// endpoint, the enrichments to stamp. No endpoint: the message is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub endpoints: Vec<String>,
    /// Per endpoint (in `endpoints` order, only those with some), `(key, value)` in configuration order.
    pub enrichments: Vec<(String, Vec<(String, String)>)>,
}

impl Decision {
    /// Routed to `events` only, without enrichments: the message is stored as it came.
    pub fn is_plain(&self) -> bool {
        self.enrichments.is_empty() && self.endpoints == [BUILT_IN_ENDPOINT]
    }
}

/// A configuration ready to route with.
#[derive(Debug)]
pub struct CompiledRouting {
    pub version: u64,
    pub properties: RoutingProperties,
    pub endpoints: Vec<CustomEndpoint>,
    /// Enabled routes in configuration order.
    routes: Vec<CompiledRoute>,
    fallback: Fallback,
    enrichments: Vec<CompiledEnrichment>,
    needs_twin: [bool; 4],
    /// Device messages always go to `events` alone and unchanged: nothing to evaluate.
    plain_device_messages: bool,
}

impl CompiledRouting {
    /// Checks and compiles `properties`: the structure ([`RoutingProperties::validate`]), then every
    /// condition and enrichment. `since` gives each custom endpoint's incarnation (lowercase name to the
    /// version it appeared in); endpoints missing from it get `version`. The error says what is wrong and
    /// where, for a 400 answer.
    pub fn compile(
        version: u64,
        properties: RoutingProperties,
        since: &BTreeMap<String, u64>,
    ) -> Result<CompiledRouting, String> {
        properties.validate().map_err(|error| error.to_string())?;
        let mut canonical: BTreeMap<String, String> = BTreeMap::new();
        let mut endpoints = Vec::new();
        let custom = properties
            .endpoints
            .webhooks
            .iter()
            .map(|webhook| (webhook.name.clone(), EndpointKind::Webhook(webhook.clone())))
            .chain(
                properties
                    .endpoints
                    .file_sinks
                    .iter()
                    .map(|sink| (sink.name.clone(), EndpointKind::FileSink(sink.clone()))),
            );
        for (name, kind) in custom {
            let key = name.to_ascii_lowercase();
            endpoints.push(CustomEndpoint {
                since: since.get(&key).copied().unwrap_or(version),
                name: name.clone(),
                kind,
            });
            canonical.insert(key, name);
        }
        let resolve = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .map(|name| {
                    if name == BUILT_IN_ENDPOINT {
                        name.clone()
                    } else {
                        canonical
                            .get(&name.to_ascii_lowercase())
                            .cloned()
                            // validate() refused unknown endpoints.
                            .unwrap_or_else(|| name.clone())
                    }
                })
                .collect()
        };
        let condition = |owner: &str, text: Option<&str>| {
            RouteCondition::parse(text.unwrap_or_default())
                .map_err(|error| format!("{owner}: condition {:?}: {error}", text.unwrap_or("")))
        };

        let mut routes = Vec::new();
        for route in properties.routes.iter().filter(|route| route.is_enabled) {
            routes.push(CompiledRoute {
                name: route.name.clone(),
                source: route.source,
                condition: condition(
                    &format!("route {:?}", route.name),
                    route.condition.as_deref(),
                )?,
                endpoints: resolve(&route.endpoint_names),
                counters: RouteCounters::default(),
            });
        }
        // Disabled routes' conditions must still be valid: enabling one later must not fail.
        for route in properties.routes.iter().filter(|route| !route.is_enabled) {
            condition(
                &format!("route {:?}", route.name),
                route.condition.as_deref(),
            )?;
        }
        let fallback = match &properties.fallback_route {
            None => Fallback::BuiltIn,
            Some(fallback) => {
                let compiled = condition("the fallback route", fallback.condition.as_deref())?;
                if fallback.is_enabled {
                    Fallback::Route(CompiledRoute {
                        name: FALLBACK_ROUTE_NAME.to_owned(),
                        source: RoutingSource::DeviceMessages,
                        condition: compiled,
                        endpoints: resolve(&fallback.endpoint_names),
                        counters: RouteCounters::default(),
                    })
                } else {
                    Fallback::Disabled
                }
            }
        };
        let mut enrichments = Vec::new();
        for enrichment in &properties.enrichments {
            let parsed = Enrichment::parse(&enrichment.key, &enrichment.value)
                .map_err(|error| format!("enrichment {:?}: {error}", enrichment.key))?;
            enrichments.push(CompiledEnrichment {
                enrichment: parsed,
                endpoints: resolve(&enrichment.endpoint_names),
            });
        }

        let mut compiled = CompiledRouting {
            version,
            properties,
            endpoints,
            routes,
            fallback,
            enrichments,
            needs_twin: [false; 4],
            plain_device_messages: false,
        };
        for source in SOURCES {
            compiled.needs_twin[source_index(source)] = compiled.compute_needs_twin(source);
        }
        compiled.plain_device_messages = !compiled
            .routes
            .iter()
            .any(|route| route.source == RoutingSource::DeviceMessages)
            && matches!(compiled.fallback, Fallback::BuiltIn)
            && !compiled.enrichments.iter().any(|enrichment| {
                enrichment
                    .endpoints
                    .iter()
                    .any(|name| name == BUILT_IN_ENDPOINT)
            });
        Ok(compiled)
    }

    /// The routes (and the fallback route) that can take a message of `source`.
    fn candidates(&self, source: RoutingSource) -> impl Iterator<Item = &CompiledRoute> {
        let fallback = match (&self.fallback, source) {
            (Fallback::Route(route), RoutingSource::DeviceMessages) => Some(route),
            _ => None,
        };
        self.routes
            .iter()
            .filter(move |route| route.source == source)
            .chain(fallback)
    }

    fn compute_needs_twin(&self, source: RoutingSource) -> bool {
        let mut reachable: Vec<&str> = Vec::new();
        for route in self.candidates(source) {
            if route.condition.uses_twin() {
                return true;
            }
            reachable.extend(route.endpoints.iter().map(String::as_str));
        }
        if source == RoutingSource::DeviceMessages && matches!(self.fallback, Fallback::BuiltIn) {
            reachable.push(BUILT_IN_ENDPOINT);
        }
        self.enrichments.iter().any(|enrichment| {
            matches!(enrichment.enrichment.value(), EnrichmentValue::Twin { .. })
                && enrichment
                    .endpoints
                    .iter()
                    .any(|name| reachable.contains(&name.as_str()))
        })
    }

    /// Whether routing a message of `source` needs its twin (a condition or an enrichment refers to it).
    pub fn needs_twin(&self, source: RoutingSource) -> bool {
        self.needs_twin[source_index(source)]
    }

    /// Whether device messages go to `events` alone and unchanged, whatever they hold (no route of that
    /// source, no fallback route, no enrichment for `events`): the hot path then evaluates nothing.
    pub fn plain_device_messages(&self) -> bool {
        self.plain_device_messages
    }

    /// Where a message of `source` goes. `message` carries the twin when [`needs_twin`](Self::needs_twin)
    /// (the module twin for a module's message), and so does `twin`, for enrichments. A condition that is
    /// not Boolean does not match and is counted.
    pub fn decide(
        &self,
        source: RoutingSource,
        message: &RoutedMessage<'_>,
        twin: Option<&Value>,
        hub_name: &str,
    ) -> Decision {
        let mut endpoints: Vec<String> = Vec::new();
        let mut matched_any = false;
        for route in self.routes.iter().filter(|route| route.source == source) {
            if route.take(message) {
                matched_any = true;
                add_endpoints(&mut endpoints, &route.endpoints);
            }
        }
        if source == RoutingSource::DeviceMessages && !matched_any {
            match &self.fallback {
                Fallback::BuiltIn => add_endpoints(&mut endpoints, &[BUILT_IN_ENDPOINT.to_owned()]),
                Fallback::Disabled => {}
                Fallback::Route(route) => {
                    if route.take(message) {
                        add_endpoints(&mut endpoints, &route.endpoints);
                    }
                }
            }
        }
        let mut enrichments = Vec::new();
        for endpoint in &endpoints {
            let stamped: Vec<(String, String)> = self
                .enrichments
                .iter()
                .filter(|enrichment| enrichment.endpoints.contains(endpoint))
                .map(|enrichment| {
                    (
                        enrichment.enrichment.key().to_owned(),
                        enrichment.enrichment.resolve(twin, hub_name),
                    )
                })
                .collect();
            if !stamped.is_empty() {
                enrichments.push((endpoint.clone(), stamped));
            }
        }
        Decision {
            endpoints,
            enrichments,
        }
    }

    /// The enabled routes of `source` a message takes, in configuration order (the fallback route is not
    /// one of them), for `$testall`. Not counted.
    pub fn matching_routes(
        &self,
        source: RoutingSource,
        message: &RoutedMessage<'_>,
    ) -> Vec<&RouteProperties> {
        self.properties
            .routes
            .iter()
            .filter(|route| route.is_enabled && route.source == source)
            .filter(|route| {
                self.routes
                    .iter()
                    .find(|compiled| compiled.name == route.name)
                    .is_some_and(|compiled| compiled.condition.matches(message))
            })
            .collect()
    }

    /// The counters of every enabled route, the fallback route last.
    pub fn statistics(&self) -> Vec<RouteStatistics> {
        let fallback = match &self.fallback {
            Fallback::Route(route) => Some(route),
            _ => None,
        };
        self.routes
            .iter()
            .chain(fallback)
            .map(|route| RouteStatistics {
                name: route.name.clone(),
                matched: route.counters.matched.load(Ordering::Relaxed),
                not_boolean: route.counters.not_boolean.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The custom endpoint named `name` (any case).
    pub fn endpoint(&self, name: &str) -> Option<&CustomEndpoint> {
        self.endpoints
            .iter()
            .find(|endpoint| endpoint.name.eq_ignore_ascii_case(name))
    }
}

impl CompiledRoute {
    /// Evaluates the condition, counting the outcome.
    fn take(&self, message: &RoutedMessage<'_>) -> bool {
        match self.condition.evaluate(message) {
            RouteOutcome::True => {
                self.counters.matched.fetch_add(1, Ordering::Relaxed);
                true
            }
            RouteOutcome::False => false,
            RouteOutcome::NotBoolean => {
                self.counters.not_boolean.fetch_add(1, Ordering::Relaxed);
                // Azure logs this to the routes resource log; it is the sender's data, not our failure.
                tracing::debug!(route = %self.name, "route condition is not Boolean; treated as false");
                false
            }
        }
    }
}

fn add_endpoints(endpoints: &mut Vec<String>, names: &[String]) {
    for name in names {
        if !endpoints.contains(name) {
            endpoints.push(name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(value: Value) -> CompiledRouting {
        let properties: RoutingProperties = serde_json::from_value(value).expect("shape");
        CompiledRouting::compile(1, properties, &BTreeMap::new()).expect("compiles")
    }

    fn system(content_json: bool) -> Vec<(String, String)> {
        let mut system = vec![
            ("iothub-connection-device-id".to_owned(), "dev1".to_owned()),
            ("iothub-message-source".to_owned(), "Telemetry".to_owned()),
        ];
        if content_json {
            system.push(("content-type".to_owned(), "application/json".to_owned()));
            system.push(("content-encoding".to_owned(), "utf-8".to_owned()));
        }
        system
    }

    fn decide(
        routing: &CompiledRouting,
        application: &[(&str, &str)],
        body: &str,
        twin: Option<&Value>,
    ) -> Decision {
        let system = system(true);
        let application: Vec<(String, Option<String>)> = application
            .iter()
            .map(|(key, value)| ((*key).to_owned(), Some((*value).to_owned())))
            .collect();
        let mut message = RoutedMessage::new(&system, &application, body.as_bytes());
        if let Some(twin) = twin {
            message = message.with_twin(twin);
        }
        routing.decide(RoutingSource::DeviceMessages, &message, twin, "hub1")
    }

    fn endpoints() -> Value {
        json!({
            "webhooks": [{"name": "Alerts", "url": "http://127.0.0.1:1/hook"}],
            "fileSinks": [{"name": "archive", "path": "all.jsonl"}]
        })
    }

    #[test]
    fn the_default_configuration_sends_everything_to_events() {
        let routing =
            CompiledRouting::compile(0, default_routing(), &BTreeMap::new()).expect("valid");
        assert!(routing.plain_device_messages());
        assert!(!routing.needs_twin(RoutingSource::DeviceMessages));
        for source in &SOURCES[1..] {
            let system = system(true);
            let body = json!({});
            let message = RoutedMessage::with_json_body(&system, &[], &body);
            let decision = routing.decide(*source, &message, None, "hub1");
            assert!(decision.is_plain(), "{source:?}: {decision:?}");
        }
    }

    #[test]
    fn matching_routes_add_their_endpoints_once_and_unmatched_messages_fall_back() {
        let routing = compile(json!({
            "endpoints": endpoints(),
            "routes": [
                {"name": "hot", "source": "DeviceMessages", "condition": "$body.temperature > 40", "endpointNames": ["alerts", "archive"]},
                {"name": "all-hot", "source": "DeviceMessages", "condition": "level = 'hot'", "endpointNames": ["archive", "events"]},
                {"name": "off", "source": "DeviceMessages", "endpointNames": ["events"], "isEnabled": false},
                {"name": "twins", "source": "TwinChangeEvents", "endpointNames": ["archive"]}
            ]
        }));
        assert!(!routing.plain_device_messages());
        let hot = decide(
            &routing,
            &[("Level", "hot")],
            r#"{"temperature": 50}"#,
            None,
        );
        assert_eq!(hot.endpoints, ["Alerts", "archive", "events"]);
        let cold = decide(&routing, &[], r#"{"temperature": 10}"#, None);
        assert_eq!(cold.endpoints, ["events"], "no fallbackRoute: events");
        let statistics = routing.statistics();
        assert_eq!(statistics[0].name, "hot");
        assert_eq!(statistics[0].matched, 1);
        assert_eq!(statistics[1].matched, 1);
        assert_eq!(statistics[1].not_boolean, 1, "level missing: undefined");
    }

    #[test]
    fn a_fallback_route_decides_for_unmatched_device_messages_only() {
        let base = json!({
            "endpoints": endpoints(),
            "routes": [{"name": "hot", "source": "DeviceMessages", "condition": "level = 'hot'", "endpointNames": ["alerts"]}],
            "fallbackRoute": {"source": "DeviceMessages", "condition": "true", "endpointNames": ["archive"], "isEnabled": true}
        });
        let routing = compile(base.clone());
        assert_eq!(decide(&routing, &[], "x", None).endpoints, ["archive"]);
        assert_eq!(
            decide(&routing, &[("level", "hot")], "x", None).endpoints,
            ["Alerts"],
            "a matched message does not also fall back"
        );
        let mut disabled = base;
        disabled["fallbackRoute"]["isEnabled"] = json!(false);
        let routing = compile(disabled);
        assert!(
            decide(&routing, &[], "x", None).endpoints.is_empty(),
            "dropped"
        );
        // Twin change events never fall back.
        let system = system(true);
        let body = json!({});
        let message = RoutedMessage::with_json_body(&system, &[], &body);
        assert!(
            routing
                .decide(RoutingSource::TwinChangeEvents, &message, None, "hub1")
                .endpoints
                .is_empty()
        );
    }

    #[test]
    fn enrichments_are_resolved_per_endpoint_and_twin_paths_need_the_twin() {
        let routing = compile(json!({
            "endpoints": endpoints(),
            "routes": [{"name": "all", "source": "DeviceMessages", "endpointNames": ["alerts", "events"]}],
            "enrichments": [
                {"key": "region", "value": "$twin.tags.region", "endpointNames": ["Alerts"]},
                {"key": "hub", "value": "$iothubname", "endpointNames": ["alerts", "events"]},
                {"key": "unused", "value": "x", "endpointNames": ["archive"]}
            ]
        }));
        assert!(routing.needs_twin(RoutingSource::DeviceMessages));
        assert!(
            !routing.needs_twin(RoutingSource::TwinChangeEvents),
            "no route of that source"
        );
        let twin = json!({"tags": {"region": "EU"}});
        let decision = decide(&routing, &[], "x", Some(&twin));
        assert_eq!(
            decision.enrichments,
            vec![
                (
                    "Alerts".to_owned(),
                    vec![
                        ("region".to_owned(), "EU".to_owned()),
                        ("hub".to_owned(), "hub1".to_owned())
                    ]
                ),
                (
                    "events".to_owned(),
                    vec![("hub".to_owned(), "hub1".to_owned())]
                ),
            ]
        );
        let without_twin = decide(&routing, &[], "x", None);
        assert_eq!(without_twin.enrichments[0].1[0].1, "$twin.tags.region");
    }

    #[test]
    fn twin_conditions_need_the_twin_and_read_it() {
        let routing = compile(json!({
            "routes": [{"name": "eu", "source": "DeviceMessages", "condition": "$twin.tags.region = 'EU'", "endpointNames": ["events"]}],
            "fallbackRoute": {"source": "DeviceMessages", "endpointNames": ["events"], "isEnabled": false}
        }));
        assert!(routing.needs_twin(RoutingSource::DeviceMessages));
        let eu = json!({"tags": {"region": "EU"}});
        let us = json!({"tags": {"region": "US"}});
        assert_eq!(decide(&routing, &[], "x", Some(&eu)).endpoints, ["events"]);
        assert!(decide(&routing, &[], "x", Some(&us)).endpoints.is_empty());
        assert!(decide(&routing, &[], "x", None).endpoints.is_empty());
    }

    #[test]
    fn bad_conditions_and_enrichments_are_refused_with_where_and_why() {
        let cases = [
            (
                json!({"routes": [{"name": "r1", "source": "DeviceMessages", "condition": "a = ", "endpointNames": ["events"]}]}),
                "route \"r1\": condition \"a = \": syntax error at position 4",
            ),
            (
                json!({"routes": [{"name": "r2", "source": "DeviceMessages", "condition": "NOPE(a)", "endpointNames": ["events"], "isEnabled": false}]}),
                "route \"r2\": condition \"NOPE(a)\"",
            ),
            (
                json!({"fallbackRoute": {"condition": "((", "endpointNames": ["events"]}}),
                "the fallback route: condition \"((\"",
            ),
            (
                json!({"enrichments": [{"key": "k", "value": "$twin.other", "endpointNames": ["events"]}]}),
                "enrichment \"k\": enrichment value '$twin.other' is not a supported variable",
            ),
            (
                json!({"routes": [{"name": "r", "source": "DeviceMessages", "endpointNames": ["nowhere"]}]}),
                "route \"r\" names endpoint \"nowhere\"",
            ),
        ];
        for (value, expected) in cases {
            let properties: RoutingProperties = serde_json::from_value(value).expect("shape");
            let error =
                CompiledRouting::compile(1, properties, &BTreeMap::new()).expect_err(expected);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn endpoints_keep_their_incarnation() {
        let properties: RoutingProperties =
            serde_json::from_value(json!({"endpoints": endpoints()})).expect("shape");
        let since = BTreeMap::from([("alerts".to_owned(), 3)]);
        let routing = CompiledRouting::compile(7, properties, &since).expect("valid");
        assert_eq!(routing.endpoint("ALERTS").map(|e| e.since), Some(3));
        assert_eq!(routing.endpoint("archive").map(|e| e.since), Some(7));
    }
}
