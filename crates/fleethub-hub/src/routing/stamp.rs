//! How a routing decision travels with its message in the event log: a reserved system property,
//! [`ROUTING_PROPERTY`], naming the endpoints the message was routed to and the enrichments each gets.
//!
//! A message routed to `events` alone without enrichments carries no stamp (the log then holds it exactly
//! as before routing existed, and a log written before routing reads the same). Devices cannot forge the
//! stamp: the hub makes system properties only from the `$.` keys it knows. Readers take the stamp off
//! before anyone sees the message: the event stream shows only messages routed to `events`, with that
//! endpoint's enrichments; each custom endpoint's worker picks the messages routed to it.

use std::collections::BTreeMap;

use fleethub_protocol::routing::BUILT_IN_ENDPOINT;
use serde::{Deserialize, Serialize};

use super::compiled::Decision;

/// The system property that holds the stamp (JSON, see [`Stamp`]).
pub const ROUTING_PROPERTY: &str = "fleethub-routing";

/// `{"endpoints": ["events", "alerts"], "enrichments": {"alerts": [["region", "EU"]]}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub enrichments: BTreeMap<String, Vec<(String, String)>>,
}

impl Stamp {
    /// What a message without a stamp was routed to: `events`, nothing added.
    fn plain() -> Stamp {
        Stamp {
            endpoints: vec![BUILT_IN_ENDPOINT.to_owned()],
            enrichments: BTreeMap::new(),
        }
    }

    /// Endpoint names compare ignoring ASCII case, as the configuration does: a configuration that only
    /// changes an endpoint name's case keeps the endpoint.
    pub fn routes_to(&self, endpoint: &str) -> bool {
        self.endpoints
            .iter()
            .any(|name| name.eq_ignore_ascii_case(endpoint))
    }

    fn enrichments_for(&self, endpoint: &str) -> &[(String, String)] {
        self.enrichments
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(endpoint))
            .map(|(_, enrichments)| enrichments.as_slice())
            .unwrap_or_default()
    }
}

/// The stamp's text for a decision; `None` for a plain one (no property needed).
pub fn encode(decision: &Decision) -> Option<String> {
    if decision.is_plain() {
        return None;
    }
    let stamp = Stamp {
        endpoints: decision.endpoints.clone(),
        enrichments: decision.enrichments.iter().cloned().collect(),
    };
    Some(serde_json::to_string(&stamp).expect("stamps always serialise"))
}

/// Removes the stamp from a message's system properties and returns it (plain when there was none).
pub fn take(system_properties: &mut Vec<(String, String)>) -> Stamp {
    let Some(index) = system_properties
        .iter()
        .position(|(name, _)| name == ROUTING_PROPERTY)
    else {
        return Stamp::plain();
    };
    let (_, text) = system_properties.remove(index);
    serde_json::from_str(&text).unwrap_or_else(|error| {
        // Only the hub writes stamps; a damaged one is treated as no routing decision at all.
        tracing::warn!(%error, "a routing stamp in the event log does not parse; treating it as `events`");
        Stamp::plain()
    })
}

/// Makes a message what `endpoint` receives: the stamp removed and the endpoint's enrichments stamped as
/// application properties. `false` when the message was not routed there (then only the stamp is gone).
pub fn for_endpoint(
    system_properties: &mut Vec<(String, String)>,
    application_properties: &mut Vec<(String, Option<String>)>,
    endpoint: &str,
) -> bool {
    let stamp = take(system_properties);
    if !stamp.routes_to(endpoint) {
        return false;
    }
    enrich(application_properties, stamp.enrichments_for(endpoint));
    true
}

/// Stamps enrichments as application properties; one with the key of an existing property (compared
/// ignoring ASCII case, as routing compares names) replaces its value.
pub fn enrich(
    application_properties: &mut Vec<(String, Option<String>)>,
    enrichments: &[(String, String)],
) {
    for (key, value) in enrichments {
        match application_properties
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
        {
            Some((_, existing)) => *existing = Some(value.clone()),
            None => application_properties.push((key.clone(), Some(value.clone()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(endpoints: &[&str], enrichments: &[(&str, &[(&str, &str)])]) -> Decision {
        Decision {
            endpoints: endpoints.iter().map(|name| (*name).to_owned()).collect(),
            enrichments: enrichments
                .iter()
                .map(|(endpoint, pairs)| {
                    (
                        (*endpoint).to_owned(),
                        pairs
                            .iter()
                            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn plain_decisions_need_no_stamp_and_others_round_trip() {
        assert_eq!(encode(&decision(&["events"], &[])), None);
        let routed = decision(&["events", "alerts"], &[("alerts", &[("region", "EU")])]);
        let text = encode(&routed).expect("a stamp");
        assert_eq!(
            text,
            r#"{"endpoints":["events","alerts"],"enrichments":{"alerts":[["region","EU"]]}}"#
        );
        let mut system = vec![
            ("message-id".to_owned(), "m".to_owned()),
            (ROUTING_PROPERTY.to_owned(), text),
        ];
        let stamp = take(&mut system);
        assert_eq!(system, vec![("message-id".to_owned(), "m".to_owned())]);
        assert!(stamp.routes_to("alerts") && stamp.routes_to("events"));
        assert_eq!(
            stamp.enrichments_for("alerts"),
            [("region".to_owned(), "EU".to_owned())]
        );
        assert!(take(&mut system).routes_to("events"), "no stamp: events");
        assert!(
            !take(&mut vec![(
                ROUTING_PROPERTY.to_owned(),
                r#"{"endpoints":[]}"#.to_owned()
            )])
            .routes_to("events")
        );
    }

    #[test]
    fn an_endpoint_gets_only_its_enrichments_and_they_replace_same_named_properties() {
        let text = encode(&decision(
            &["events", "alerts"],
            &[
                ("alerts", &[("Level", "from-hub"), ("region", "EU")]),
                ("events", &[("hub", "h")]),
            ],
        ))
        .expect("a stamp");
        let mut system = vec![(ROUTING_PROPERTY.to_owned(), text)];
        let mut application = vec![("level".to_owned(), Some("device".to_owned()))];
        assert!(for_endpoint(&mut system, &mut application, "alerts"));
        assert!(system.is_empty());
        assert_eq!(
            application,
            vec![
                ("level".to_owned(), Some("from-hub".to_owned())),
                ("region".to_owned(), Some("EU".to_owned()))
            ]
        );
        let mut system = vec![(
            ROUTING_PROPERTY.to_owned(),
            r#"{"endpoints":["events"]}"#.to_owned(),
        )];
        assert!(!for_endpoint(&mut system, &mut Vec::new(), "alerts"));
    }
}
