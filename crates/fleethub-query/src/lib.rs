//! The IoT Hub query language, pure: text to a checked [`Query`], and its evaluation on JSON
//! documents (twins for `FROM devices` and `FROM devices.modules`, device-job records for
//! `FROM devices.jobs`), and message routing: route conditions on messages ([`RouteCondition`],
//! [`RoutedMessage`]) and enrichments ([`Enrichment`]). No I/O, no clock, no async. One parser
//! serves twin queries, job query conditions, configuration target conditions
//! ([`parse_condition`]) and route conditions ([`RouteCondition::parse`]).
//!
//! The reference is Azure's "IoT Hub query language for device and module twins, jobs, and message
//! routing" (`articles/iot-hub/iot-hub-devguide-query-language.md`), "Queries for IoT Hub device
//! and module twins" (`query-twins.md`), "Queries for IoT Hub jobs" (`query-jobs.md`) and "IoT Hub
//! message routing query syntax" (`iot-hub-devguide-routing-query-syntax.md`). Each rule is quoted
//! where it is implemented.
//!
//! # Using it
//!
//! ```
//! use serde_json::json;
//!
//! let query = fleethub_query::parse(
//!     "SELECT * FROM devices WHERE tags.location.region = 'US' AND is_defined(properties.reported.connectivity)",
//! )?;
//! let twin = json!({
//!     "deviceId": "dev1",
//!     "tags": {"location": {"region": "US"}},
//!     "properties": {"desired": {}, "reported": {"connectivity": {"type": "cellular"}}},
//! });
//! assert!(query.matches(&twin));
//! assert_eq!(query.result_item_type(), "twin");
//! # Ok::<(), fleethub_query::QueryError>(())
//! ```
//!
//! A store answers a query in three steps: filter with [`Query::pushdown`] in SQL (skip step 2 when
//! it is exact), keep the documents [`Query::matches`], then either stream [`Query::project`] of
//! each (stopping after [`Query::top`]) or, when [`Query::needs_all_rows`], feed an
//! [`Aggregator`] and page over [`Aggregator::finish`].
//!
//! # Functions
//!
//! | function | Azure lists it for | notes |
//! | --- | --- | --- |
//! | `COUNT()`, `SUM(x)`, `AVG(x)`, `MIN(x)`, `MAX(x)` | twin queries (SELECT list) | see [`Aggregator`] |
//! | `IS_DEFINED(x)` | twin queries and routing | "Returns a Boolean indicating if the property has been assigned a value (including `null`)." |
//! | `IS_NULL`, `IS_BOOL`, `IS_NUMBER`, `IS_STRING`, `IS_OBJECT`, `IS_ARRAY`, `IS_PRIMITIVE` | routing | "Returns a Boolean value indicating if the type of the specified expression is ..."; false for undefined |
//! | `STARTSWITH(x, y)` (`STARTS_WITH`), `ENDSWITH(x, y)` (`ENDS_WITH`), `CONTAINS(x, y)` | routing | case-sensitive; undefined unless both are strings |
//! | `LOWER(x)`, `UPPER(x)` | routing | full Unicode case mapping |
//! | `LENGTH(x)` | routing | "the number of characters": Unicode scalar values |
//! | `SUBSTRING(s, start [, length])`, `INDEX_OF(s, fragment)` | routing | zero-based, in Unicode scalar values; `INDEX_OF` is -1 when absent |
//! | `CONCAT(x, y, ...)` | routing | two or more strings; undefined if one is not a string |
//! | `ABS`, `CEILING`, `FLOOR`, `SIGN`, `SQUARE`, `POWER(x, y)`, `SQRT`, `EXP` | routing | numbers only; undefined when the result is not a finite number (`SQRT(-1)`) |
//! | `AS_NUMBER(x)` | routing | a number stays; a string holding a JSON number becomes it; otherwise undefined |
//!
//! "When querying twins and jobs the only supported function is: IS_DEFINED(property)" — every
//! routing function above is a fleethub extension in twin and job queries. Function names are
//! case-insensitive everywhere.
//!
//! # Beyond Azure (fleethub extensions)
//!
//! `ORDER BY` (Azure has none; order defined in [`Aggregator`]), several GROUP BY paths, GROUP BY
//! and aggregates on `devices.modules`, expressions as SELECT items, aggregate arguments that are
//! expressions, `NOT IN`, `[n]` array indices in paths, the JSON escapes `\/ \b \f \n \r \t`, and
//! keywords after a dot (`tags.group` reads as a name; Azure asks for `tags.[[group]]`).

pub mod aggregate;
pub mod ast;
pub mod enrichment;
pub mod error;
mod eval;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod lexer;
mod parser;
pub mod pushdown;
pub mod routing;
mod schema;

#[cfg(test)]
mod eval_tests;
#[cfg(test)]
mod parser_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod pushdown_tests;
#[cfg(test)]
mod routing_tests;

use serde_json::{Map, Value};

pub use aggregate::Aggregator;
pub use ast::{
    AggregateFunction, ArithmeticOp, CompareOp, Direction, Expr, Function, FunctionOrigin, Literal,
    Number, OrderKey, OrderTarget, Path, Query, Segment, Select, SelectItem, Source,
};
pub use enrichment::{Enrichment, EnrichmentError, EnrichmentValue};
pub use error::QueryError;
pub use parser::MAX_EXPRESSION_DEPTH;
pub use pushdown::{Predicate, Pushdown, Scalar};
pub use routing::{RouteCondition, RouteOutcome, RoutedMessage};

/// "Query expressions can have a maximum length of 8192 characters." (query-twins.md) Counted
/// in Unicode scalar values.
pub const MAX_QUERY_LENGTH: usize = 8192;

/// Parses and checks a query (`SELECT ... FROM ...`).
///
/// ```
/// let error = fleethub_query::parse("SELECT * FROM devices WHERE tags.a = 1 AND").unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "syntax error at position 42: expected an expression after 'AND', found end of query",
/// );
/// assert_eq!(error.position(), Some(42));
/// ```
pub fn parse(text: &str) -> Result<Query, QueryError> {
    check_length(text)?;
    parser::parse_query(text)
}

/// Parses a bare condition, such as a job's `queryCondition` (`deviceId IN ['dev1']`) or a
/// configuration's target condition (`tags.environment='test'`), as the WHERE of
/// `SELECT * FROM <source>`. Positions in errors are offsets in `text`.
pub fn parse_condition(text: &str, source: Source) -> Result<Query, QueryError> {
    check_length(text)?;
    parser::parse_condition(text, source)
}

pub(crate) fn check_length(text: &str) -> Result<(), QueryError> {
    // Bytes bound characters from above; count only when it can matter.
    if text.len() > MAX_QUERY_LENGTH {
        let length = text.chars().count();
        if length > MAX_QUERY_LENGTH {
            return Err(QueryError::TooLong { length });
        }
    }
    Ok(())
}

impl Query {
    /// Whether the SELECT list has aggregates or the query has GROUP BY: it answers with groups,
    /// after all matching documents are seen.
    pub fn is_aggregate(&self) -> bool {
        !self.group_by.is_empty()
            || matches!(&self.select, Select::Items(items) if items.iter().any(|item| item.expr.contains_aggregate()))
    }

    /// Whether the answer needs every matching document first (aggregates or ORDER BY): then feed
    /// an [`Aggregator`]; otherwise stream [`Query::project`] and stop after TOP.
    pub fn needs_all_rows(&self) -> bool {
        self.is_aggregate() || !self.order_by.is_empty()
    }

    /// Whether `document` satisfies WHERE: "Any JSON document must evaluate the specified
    /// conditions to "true" to be included in the result." A query without WHERE matches
    /// everything.
    pub fn matches(&self, document: &Value) -> bool {
        match &self.condition {
            None => true,
            Some(condition) => eval::is_true(condition, document),
        }
    }

    /// The answer row for one matching document: the document itself for `SELECT *`, else an
    /// object with one member per SELECT item, in order, undefined values left out. (For an
    /// aggregate query: the row of a group of this one document.)
    pub fn project(&self, document: &Value) -> Value {
        if self.is_aggregate() {
            let mut aggregator = self.aggregator();
            aggregator.push(document);
            return aggregator
                .finish()
                .into_iter()
                .next()
                .unwrap_or_else(|| Value::Object(Map::new()));
        }
        project_row(self, document)
    }

    /// Collects matching documents for a query that [`Query::needs_all_rows`] (it works for any
    /// query).
    pub fn aggregator(&self) -> Aggregator<'_> {
        Aggregator::new(self)
    }

    /// The `x-ms-item-type` response header. The values are Azure's (`QueryResultType` in the C#
    /// service SDK: `twin`, `deviceJob`, `jobResponse`, `raw`): `twin` for `SELECT *` over twins,
    /// `deviceJob` for `devices.jobs`, `raw` for projections and aggregates.
    pub fn result_item_type(&self) -> &'static str {
        match (&self.source, &self.select) {
            (Source::Jobs, _) => "deviceJob",
            (_, Select::All) => "twin",
            (_, Select::Items(_)) => "raw",
        }
    }

    /// A filter for the store to run first; see [`pushdown`] for its exact semantics.
    pub fn pushdown(&self) -> Pushdown {
        pushdown::pushdown(self.condition.as_ref())
    }

    /// The names of the answer's columns, in SELECT order (empty for `SELECT *`).
    pub fn column_names(&self) -> Vec<String> {
        match &self.select {
            Select::All => Vec::new(),
            Select::Items(items) => column_names(items),
        }
    }
}

/// The projection of a query without aggregates.
pub(crate) fn project_row(query: &Query, document: &Value) -> Value {
    let items = match &query.select {
        Select::All => return document.clone(),
        Select::Items(items) => items,
    };
    let mut row = Map::new();
    for (item, name) in items.iter().zip(column_names(items)) {
        if let Some(value) = eval::evaluate(&item.expr, document).to_json() {
            row.insert(name, value);
        }
    }
    Value::Object(row)
}

/// Column names: the alias; else the last name of a path, in its canonical case (`SELECT DeviceId`
/// answers `deviceId`, as Azure's example shows); else `$1`, `$2`, ... numbered among the unnamed
/// items (Cosmos DB's convention), e.g. `SELECT COUNT() FROM devices` answers `[{"$1": 3}]`.
pub(crate) fn column_names(items: &[SelectItem]) -> Vec<String> {
    let mut unnamed = 0;
    items
        .iter()
        .map(|item| {
            if let Some(alias) = &item.alias {
                return alias.clone();
            }
            if let Expr::Path(path) = &item.expr
                && let Some(Segment::Name(name)) = path.segments.last()
            {
                return name.clone();
            }
            unnamed += 1;
            format!("${unnamed}")
        })
        .collect()
}
