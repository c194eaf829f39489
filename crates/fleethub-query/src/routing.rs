//! Message routing conditions: the route "condition" of IoT Hub, parsed by the query parser and
//! evaluated on one message (telemetry, or a twin change, connection state or lifecycle event).
//!
//! Reference: Azure's "IoT Hub message routing query syntax"
//! (`articles/iot-hub/iot-hub-devguide-routing-query-syntax.md`) and "Create and read IoT Hub
//! messages" (`iot-hub-devguide-messages-construct.md`); quoted where implemented.
//!
//! # What a condition can refer to
//!
//! - **System properties**, with `$`: "A query on message system properties needs to be prefixed
//!   with the `$` symbol." By their routing keyword (`$contentType`, `$contentEncoding`,
//!   `$messageId`, `$correlationId`, `$userId`, `$connectionDeviceId`, `$connectionModuleId`,
//!   `$connectionDeviceGenerationId`, `$connectionAuthMethod`, `$enqueuedTime`, `$dt-dataschema`,
//!   `$dt-subject`) or by their name on the Event Hubs-compatible endpoint (`$content-type`,
//!   `$iothub-connection-device-id`, `$iothub-message-source`, `$iothub-enqueuedtime`, ...), in
//!   any case. "If an application property name begins with `$`, then IoT Hub will search for it
//!   in the system properties, and it is not found, then it will look in the application
//!   properties."
//! - **Application properties**, by name: "Queries on application properties are accessed with
//!   their name and should not be prefixed with the `$` symbol." Names are case-insensitive ("IoT
//!   Hub device-to-cloud messaging isn't case-sensitive"): an exact match first, else the first
//!   equal ignoring ASCII case. Their values are strings, so `severity = 3` never matches; write
//!   `AS_NUMBER(severity) = 3` or `severity = '3'`. A property sent without a value is `null`.
//!   Property names may hold `.` and `-`: `a.b` names the property `a.b`, and `word-word`
//!   written without spaces is one name (`iothub-message-schema`, `$dt-subject`); to subtract,
//!   write `a - b`.
//! - **The body**, as `$body.<path>` (array indices allowed: `$body.Weather.HistoricalData[0].Month`),
//!   case-sensitive, only when "The `contentType` must be set to `application/JSON` and
//!   `contentEncoding` to one of the supported UTF encodings in the system property. If these
//!   properties are not specified, IoT Hub will not evaluate the query expression on the message
//!   body." The media type is compared ignoring case and parameters; the encoding is `utf-8`,
//!   `utf-16` or `utf-32` in any case, taken from `content-encoding`, else from a `charset`
//!   parameter of the content type (Azure's messages page: "set the content type property of the
//!   message to `application/json;charset=utf-8`"). UTF-16 and UTF-32 are little-endian unless
//!   the body starts with a big-endian byte order mark. A body that is not JSON, or not allowed,
//!   makes every `$body` reference undefined, and so is `$body` itself or `$body[0]` ("You can't
//!   run queries or functions on the entire body reference").
//! - **The twin**, as `$twin.tags.<path>` or `$twin.properties.desired|reported.<path>`, on the
//!   twin the caller passes (the module twin for a module's message: "Twin queries for messages
//!   originating from device modules [...] query against the module twin"). "We recommend using
//!   unique names in tags and properties as the query is not case-sensitive": names match
//!   exactly first, else ignoring ASCII case. Without a twin, `$twin` references are undefined.
//!
//! # Results
//!
//! "If the expression evaluates to a null or undefined value, it's treated as a Boolean false
//! value, and generates an error in the IoT Hub routes resource logs." [`RouteCondition::evaluate`]
//! tells the two apart ([`RouteOutcome::NotBoolean`]); [`RouteCondition::matches`] is true only
//! for a Boolean `true`. Comparisons, functions and undefined values follow the evaluator's rules
//! (crate documentation): a comparison across types or with undefined is undefined, so a
//! condition on a missing property or a non-JSON body never matches, `NOT` included.
//!
//! # Non-telemetry events
//!
//! Twin change notifications, connection state events and lifecycle events are routed as
//! messages too ([`RoutedMessage::with_json_body`]): their system properties are `content-type`
//! `application/json`, `content-encoding` `utf-8`, `correlation-id`, `user-id` (the hub name),
//! `iothub-connection-device-id`, `iothub-connection-module-id` (for a module) and
//! `iothub-message-source` (`twinChangeEvents`, `deviceConnectionStateEvents` or
//! `deviceLifecycleEvents`); their application properties `hubName`, `deviceId`, `moduleId`,
//! `operationTimestamp`, `iothub-message-schema` and `opType`; their body the twin patch, the new
//! twin or the connection's sequence number. So `opType = 'replaceTwin'`,
//! `$iothub-message-source = 'twinChangeEvents'` and, as Azure's page suggests,
//! `$body.properties.desired.telemetryConfig.sendFrequency > 10` all work.

use std::cell::OnceCell;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::ast::{Expr, Literal, Path, Segment};
use crate::error::QueryError;
use crate::eval::{Document, Val, evaluate, lookup_segments};
use crate::schema::{RawSegment, resolve_twin_segments};

/// The first segment of a path into the message body.
const BODY_ROOT: &str = "$body";
/// The first segment of a path into the twin.
const TWIN_ROOT: &str = "$twin";

/// Routing keywords of system properties and their names on the Event Hubs-compatible endpoint
/// (the names fleethub stores), from the messages page's "Keyword for routing query" column.
const SYSTEM_PROPERTY_KEYWORDS: [(&str, &str); 10] = [
    ("messageId", "message-id"),
    ("correlationId", "correlation-id"),
    ("userId", "user-id"),
    ("contentType", "content-type"),
    ("contentEncoding", "content-encoding"),
    ("connectionDeviceId", "iothub-connection-device-id"),
    ("connectionModuleId", "iothub-connection-module-id"),
    (
        "connectionDeviceGenerationId",
        "iothub-connection-auth-generation-id",
    ),
    ("connectionAuthMethod", "iothub-connection-auth-method"),
    ("enqueuedTime", "iothub-enqueuedtime"),
];

/// System property names without a keyword of their own; `$<name>` refers to them.
const OTHER_SYSTEM_PROPERTIES: [&str; 6] = [
    "absolute-expiry-time",
    "dt-dataschema",
    "dt-subject",
    "iothub-interface-id",
    "iothub-message-source",
    "iothub-outputname",
];

const ENQUEUED_TIME: &str = "iothub-enqueuedtime";

/// A parsed route condition.
///
/// ```
/// use fleethub_query::{RouteCondition, RoutedMessage};
///
/// let condition = RouteCondition::parse("$body.Weather.Temperature > 40 AND processingPath = 'hot'")?;
/// let system = [
///     ("content-type".to_owned(), "application/json".to_owned()),
///     ("content-encoding".to_owned(), "utf-8".to_owned()),
/// ];
/// let application = [("ProcessingPath".to_owned(), Some("hot".to_owned()))];
/// let message = RoutedMessage::new(&system, &application, br#"{"Weather":{"Temperature":50}}"#);
/// assert!(condition.matches(&message));
/// # Ok::<(), fleethub_query::QueryError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCondition {
    condition: Expr,
}

/// What a condition evaluated to on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Boolean `true`: the message takes the route.
    True,
    /// Boolean `false`.
    False,
    /// Anything else (undefined, null, a string, ...): the message does not take the route, and
    /// Azure "generates an error in the IoT Hub routes resource logs".
    NotBoolean,
}

impl RouteCondition {
    /// Parses a condition: the expression grammar of a WHERE clause, over the references in the
    /// module documentation. An empty (or blank) text is `true`, the condition of a route
    /// configured without one. Errors say where and what was expected, e.g. `syntax error at
    /// position 12: expected an expression after '=', found end of query`.
    pub fn parse(text: &str) -> Result<RouteCondition, QueryError> {
        crate::check_length(text)?;
        if text.trim().is_empty() {
            return Ok(RouteCondition::always());
        }
        crate::parser::parse_route_condition(text).map(|condition| RouteCondition { condition })
    }

    /// A condition of a tree built by hand, for property tests.
    #[cfg(test)]
    pub(crate) fn from_expr(condition: Expr) -> RouteCondition {
        RouteCondition { condition }
    }

    /// `true`: every message matches.
    pub fn always() -> RouteCondition {
        RouteCondition {
            condition: Expr::Literal(Literal::Bool(true)),
        }
    }

    /// The expression; paths start with `$body`, `$twin`, `$<system property>` (canonical
    /// keyword, else the name as written) or an application property's name.
    pub fn expr(&self) -> &Expr {
        &self.condition
    }

    /// Whether the message takes the route: the condition is Boolean `true`.
    pub fn matches(&self, message: &RoutedMessage<'_>) -> bool {
        self.evaluate(message) == RouteOutcome::True
    }

    pub fn evaluate(&self, message: &RoutedMessage<'_>) -> RouteOutcome {
        match evaluate(&self.condition, message) {
            Val::Bool(true) => RouteOutcome::True,
            Val::Bool(false) => RouteOutcome::False,
            _ => RouteOutcome::NotBoolean,
        }
    }

    /// Whether the condition refers to `$twin`: when none of a message's routes does, the hub
    /// need not load the twin.
    pub fn uses_twin(&self) -> bool {
        any_path(&self.condition, &|path| is_rooted_at(path, TWIN_ROOT))
    }

    /// Whether the condition refers to `$body`: when none does, the body is never decoded.
    pub fn uses_body(&self) -> bool {
        any_path(&self.condition, &|path| is_rooted_at(path, BODY_ROOT))
    }
}

impl Default for RouteCondition {
    fn default() -> Self {
        RouteCondition::always()
    }
}

impl FromStr for RouteCondition {
    type Err = QueryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RouteCondition::parse(text)
    }
}

/// A canonical text that parses back to an equal condition.
impl fmt::Display for RouteCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.condition)
    }
}

fn is_rooted_at(path: &Path, root: &str) -> bool {
    matches!(path.segments.first(), Some(Segment::Name(name)) if name == root)
}

fn any_path(expr: &Expr, test: &dyn Fn(&Path) -> bool) -> bool {
    match expr {
        Expr::Literal(_) => false,
        Expr::Path(path) => test(path),
        Expr::Not(operand) | Expr::Negate(operand) => any_path(operand, test),
        Expr::And(operands) | Expr::Or(operands) => {
            operands.iter().any(|operand| any_path(operand, test))
        }
        Expr::Compare { left, right, .. } | Expr::Arithmetic { left, right, .. } => {
            any_path(left, test) || any_path(right, test)
        }
        Expr::In { operand, .. } => any_path(operand, test),
        Expr::Call { arguments, .. } => arguments.iter().any(|argument| any_path(argument, test)),
        Expr::Aggregate { argument, .. } => argument
            .as_deref()
            .is_some_and(|argument| any_path(argument, test)),
    }
}

/// Resolves a path of a route condition (see the module documentation); the parser calls it.
pub(crate) fn resolve_route_path(raw: &[RawSegment]) -> Result<Path, String> {
    let (root, rest) = match raw.split_first() {
        Some((RawSegment::Name { text, .. }, rest)) => (text.as_str(), rest),
        // The parser starts every path with a name.
        _ => return Err("a path must start with a name".to_owned()),
    };
    if root.eq_ignore_ascii_case(BODY_ROOT) {
        let mut segments = vec![Segment::Name(BODY_ROOT.to_owned())];
        segments.extend(rest.iter().map(|segment| match segment {
            RawSegment::Name { text, .. } => Segment::Name(text.clone()),
            RawSegment::Index(index) => Segment::Index(*index),
        }));
        return Ok(Path { segments });
    }
    if root.eq_ignore_ascii_case(TWIN_ROOT) {
        let mut segments = vec![Segment::Name(TWIN_ROOT.to_owned())];
        segments.extend(resolve_twin_segments(rest)?);
        return Ok(Path { segments });
    }
    // A property is one name: `a.b` is the application property `a.b`.
    if rest
        .iter()
        .all(|segment| matches!(segment, RawSegment::Name { .. }))
    {
        let mut name = root.to_owned();
        for segment in rest {
            if let RawSegment::Name { text, .. } = segment {
                name.push('.');
                name.push_str(text);
            }
        }
        return Ok(Path {
            segments: vec![Segment::Name(canonical_property(name))],
        });
    }
    // An index into a property (a string): undefined, kept as written.
    let mut segments = vec![Segment::Name(canonical_property(root.to_owned()))];
    segments.extend(rest.iter().map(|segment| match segment {
        RawSegment::Name { text, .. } => Segment::Name(text.clone()),
        RawSegment::Index(index) => Segment::Index(*index),
    }));
    Ok(Path { segments })
}

/// `$ContentType` and `$content-type` become `$contentType`; `$IOTHUB-MESSAGE-SOURCE` becomes
/// `$iothub-message-source`; other names stay as written.
fn canonical_property(name: String) -> String {
    let Some(system) = name.strip_prefix('$') else {
        return name;
    };
    for (keyword, wire) in SYSTEM_PROPERTY_KEYWORDS {
        if system.eq_ignore_ascii_case(keyword) || system.eq_ignore_ascii_case(wire) {
            return format!("${keyword}");
        }
    }
    for wire in OTHER_SYSTEM_PROPERTIES {
        if system.eq_ignore_ascii_case(wire) {
            return format!("${wire}");
        }
    }
    name
}

/// The Event Hubs name of a system property given by its routing keyword (`contentType` is
/// `content-type`, in any case); any other name as given. For callers that take system properties
/// by keyword, such as Azure's route test API.
pub fn system_property_name(keyword: &str) -> &str {
    wire_name(keyword)
}

/// The Event Hubs name of a system property written `$<name>` in a condition.
fn wire_name(name: &str) -> &str {
    SYSTEM_PROPERTY_KEYWORDS
        .iter()
        .find(|(keyword, _)| keyword.eq_ignore_ascii_case(name))
        .map_or(name, |(_, wire)| wire)
}

/// One message as a route condition sees it. Borrowed: build one per message and evaluate every
/// route's condition on it; the body is decoded at most once, on the first `$body` reference.
///
/// - `system_properties`: Event Hubs names (`content-type`, `iothub-connection-device-id`,
///   `iothub-message-source`, ...), as `fleethub_protocol::events` builds them. Include
///   `iothub-enqueuedtime`, or give it with [`RoutedMessage::with_enqueued_time`], for
///   `$enqueuedTime`.
/// - `application_properties`: in the device's order; `None` for a property without value.
/// - the body: the bytes as sent ([`RoutedMessage::new`]) or, for the hub's own events, JSON
///   ([`RoutedMessage::with_json_body`]).
/// - the twin ([`RoutedMessage::with_twin`]): the twin document of the device (the module's, for
///   a module's message) as `GET /twins/{id}` answers it, with `tags` and `properties`.
#[derive(Debug, Clone)]
pub struct RoutedMessage<'a> {
    system_properties: &'a [(String, String)],
    application_properties: &'a [(String, Option<String>)],
    body: Body<'a>,
    twin: Option<&'a Value>,
    enqueued_time: Option<&'a str>,
}

#[derive(Debug, Clone)]
enum Body<'a> {
    Bytes {
        bytes: &'a [u8],
        /// `None` inside: not queryable (content type, encoding, or not JSON).
        decoded: OnceCell<Option<Value>>,
    },
    Json(&'a Value),
}

impl<'a> RoutedMessage<'a> {
    /// A message whose body is the bytes the device sent.
    pub fn new(
        system_properties: &'a [(String, String)],
        application_properties: &'a [(String, Option<String>)],
        body: &'a [u8],
    ) -> RoutedMessage<'a> {
        RoutedMessage {
            system_properties,
            application_properties,
            body: Body::Bytes {
                bytes: body,
                decoded: OnceCell::new(),
            },
            twin: None,
            enqueued_time: None,
        }
    }

    /// A message whose body is already JSON (the hub's twin change, connection state and
    /// lifecycle events). `$body` still requires the JSON content type and a UTF encoding among
    /// the system properties, which those events carry.
    pub fn with_json_body(
        system_properties: &'a [(String, String)],
        application_properties: &'a [(String, Option<String>)],
        body: &'a Value,
    ) -> RoutedMessage<'a> {
        RoutedMessage {
            system_properties,
            application_properties,
            body: Body::Json(body),
            twin: None,
            enqueued_time: None,
        }
    }

    /// The twin `$twin` refers to.
    pub fn with_twin(mut self, twin: &'a Value) -> RoutedMessage<'a> {
        self.twin = Some(twin);
        self
    }

    /// `iothub-enqueuedtime` (Azure writes `2017-05-08T18:55:31.8514657Z`), when the system
    /// properties lack it.
    pub fn with_enqueued_time(mut self, enqueued_time: &'a str) -> RoutedMessage<'a> {
        self.enqueued_time = Some(enqueued_time);
        self
    }

    /// The body as `$body` sees it: `None` when the content type and encoding do not allow
    /// queries on it, or it is not JSON in that encoding.
    pub fn body_json(&self) -> Option<&Value> {
        let content_type = self.system_property("content-type");
        let content_encoding = self.system_property("content-encoding");
        match &self.body {
            Body::Json(value) => body_encoding(content_type, content_encoding).map(|_| *value),
            Body::Bytes { bytes, decoded } => decoded
                .get_or_init(|| decode_json_body(content_type, content_encoding, bytes))
                .as_ref(),
        }
    }

    /// A system property by its Event Hubs name or routing keyword, ignoring ASCII case.
    fn system_property(&self, name: &str) -> Option<&'a str> {
        let wire = wire_name(name);
        let found = self
            .system_properties
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(wire))
            .map(|(_, value)| value.as_str());
        match found {
            None if wire == ENQUEUED_TIME => self.enqueued_time,
            found => found,
        }
    }

    /// An application property: the exact name first, else ignoring ASCII case. `Some(None)`
    /// for a property without value.
    fn application_property(&self, name: &str) -> Option<Option<&'a str>> {
        let properties = self.application_properties;
        properties
            .iter()
            .find(|(key, _)| key == name)
            .or_else(|| {
                properties
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
            })
            .map(|(_, value)| value.as_deref())
    }
}

impl Document for RoutedMessage<'_> {
    fn value_at<'a>(&'a self, path: &'a Path) -> Val<'a> {
        let Some((Segment::Name(root), rest)) = path.segments.split_first() else {
            return Val::Undefined;
        };
        match root.as_str() {
            BODY_ROOT => match (rest.first(), self.body_json()) {
                (Some(Segment::Name(_)), Some(body)) => lookup_segments(body, rest, false),
                _ => Val::Undefined,
            },
            TWIN_ROOT => match self.twin {
                Some(twin) => lookup_segments(twin, rest, true),
                None => Val::Undefined,
            },
            _ if !rest.is_empty() => Val::Undefined,
            name => {
                let system = name
                    .strip_prefix('$')
                    .and_then(|system| self.system_property(system));
                if let Some(value) = system {
                    return Val::Str(value.into());
                }
                match self.application_property(name) {
                    Some(Some(value)) => Val::Str(value.into()),
                    Some(None) => Val::Null,
                    None => Val::Undefined,
                }
            }
        }
    }
}

/// The encodings Azure lists: "Allowed values are UTF-8, UTF-16, UTF-32".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Utf {
    Eight,
    Sixteen,
    ThirtyTwo,
}

/// The encoding of a body `$body` may query, from the content type and encoding.
fn body_encoding(content_type: Option<&str>, content_encoding: Option<&str>) -> Option<Utf> {
    let content_type = content_type?;
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return None;
    }
    let encoding = match content_encoding {
        Some(encoding) => encoding.trim(),
        None => parts.find_map(|parameter| {
            let (name, value) = parameter.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"'))
        })?,
    };
    [
        ("utf-8", Utf::Eight),
        ("utf-16", Utf::Sixteen),
        ("utf-32", Utf::ThirtyTwo),
    ]
    .into_iter()
    .find(|(name, _)| encoding.eq_ignore_ascii_case(name))
    .map(|(_, utf)| utf)
}

/// The body as JSON, when the content type and encoding allow it and it parses.
fn decode_json_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    bytes: &[u8],
) -> Option<Value> {
    let text = match body_encoding(content_type, content_encoding)? {
        Utf::Eight => {
            let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            std::str::from_utf8(bytes).ok()?.to_owned()
        }
        Utf::Sixteen => decode_utf16(bytes)?,
        Utf::ThirtyTwo => decode_utf32(bytes)?,
    };
    serde_json::from_str(&text).ok()
}

/// UTF-16, little-endian (.NET's `Encoding.Unicode`) unless a byte order mark says otherwise.
fn decode_utf16(bytes: &[u8]) -> Option<String> {
    let (big_endian, bytes) = if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        (true, rest)
    } else {
        (false, bytes.strip_prefix(b"\xFF\xFE").unwrap_or(bytes))
    };
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| {
            let pair = [pair[0], pair[1]];
            if big_endian {
                u16::from_be_bytes(pair)
            } else {
                u16::from_le_bytes(pair)
            }
        })
        .collect();
    String::from_utf16(&units).ok()
}

/// UTF-32, little-endian unless a byte order mark says otherwise.
fn decode_utf32(bytes: &[u8]) -> Option<String> {
    let (big_endian, bytes) = if let Some(rest) = bytes.strip_prefix(b"\x00\x00\xFE\xFF") {
        (true, rest)
    } else {
        (
            false,
            bytes.strip_prefix(b"\xFF\xFE\x00\x00").unwrap_or(bytes),
        )
    };
    if bytes.len() % 4 != 0 {
        return None;
    }
    bytes
        .chunks_exact(4)
        .map(|quad| {
            let quad = [quad[0], quad[1], quad[2], quad[3]];
            let value = if big_endian {
                u32::from_be_bytes(quad)
            } else {
                u32::from_le_bytes(quad)
            };
            char::from_u32(value)
        })
        .collect()
}
