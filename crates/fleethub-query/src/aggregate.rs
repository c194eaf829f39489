//! Queries that need every matching document before they answer: aggregates, GROUP BY, ORDER BY.
//!
//! Rules:
//! - "With aggregations, the results of this step are grouped as specified in the GROUP BY
//!   clause. For each group, a row is generated as specified in the SELECT clause." Without GROUP
//!   BY, the matching documents form one group, so `SELECT COUNT() AS n FROM devices` answers one
//!   row even when nothing matches (`[{"n": 0}]`).
//! - Groups are told apart by type-strict value (`1` and `1.0` are one group, `1` and `'1'` two);
//!   documents without the GROUP BY property form their own group, whose row leaves the property
//!   out. Groups come out in the order their first document was pushed, unless ORDER BY says
//!   otherwise.
//! - `COUNT()` counts the group's documents. `SUM` and `AVG` skip undefined values; a value that is
//!   not a number makes the result undefined (the column is left out), as Cosmos DB does. `SUM` of
//!   no numbers is 0; `AVG`, `MIN` and `MAX` of no values are undefined. `MIN` and `MAX` compare
//!   primitive values in fleethub's ORDER BY order (null < Booleans < numbers < strings) and skip
//!   undefined values, objects and arrays.
//! - ORDER BY (a fleethub extension: Azure has none) sorts by each key in turn, ascending unless
//!   DESC, in the total order: undefined < null < false < true < numbers < strings (by code point)
//!   < arrays < objects; DESC reverses it. Ties keep the order the documents were pushed in.
//! - TOP applies last.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::ast::{
    AggregateFunction, ArithmeticOp, Direction, Expr, Number, OrderTarget, Query, Select,
    SelectItem,
};
use crate::eval::{Val, arithmetic, evaluate, number_to_json, total_order};

/// Collects the matching documents of a query that [`Query::needs_all_rows`], then answers.
///
/// ```
/// let query = fleethub_query::parse(
///     "SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site ORDER BY n DESC",
/// )?;
/// let mut aggregator = query.aggregator();
/// for site in ["a", "b", "b"] {
///     aggregator.push(&serde_json::json!({"deviceId": "d", "tags": {"site": site}}));
/// }
/// assert_eq!(
///     aggregator.finish(),
///     vec![serde_json::json!({"site": "b", "n": 2}), serde_json::json!({"site": "a", "n": 1})],
/// );
/// # Ok::<(), fleethub_query::QueryError>(())
/// ```
///
/// The caller pushes only documents that [`Query::matches`]. Memory: one entry per group, or, for
/// a query without aggregates, one projected row per document (at most about `2 × TOP` rows
/// when TOP is given).
pub struct Aggregator<'q> {
    query: &'q Query,
    columns: Vec<Column<'q>>,
    order: Vec<(SortSource<'q>, Direction)>,
    state: State,
    sequence: u64,
}

struct Column<'q> {
    name: String,
    kind: ColumnKind<'q>,
}

enum ColumnKind<'q> {
    /// An expression evaluated on the document (queries without aggregates; `project_row`
    /// computes these).
    Value,
    Aggregate(AggregateFunction, Option<&'q Expr>),
    /// The value of the n-th GROUP BY path.
    GroupKey(usize),
}

enum SortSource<'q> {
    /// A column of the output row, by index.
    Column(usize),
    GroupKey(usize),
    /// An expression on the document (queries without aggregates).
    Document(&'q Expr),
    /// A key that names nothing (only in a hand-built query): undefined.
    Nothing,
}

enum State {
    Rows(Vec<SortableRow>),
    Groups {
        index: HashMap<Vec<KeyPart>, usize>,
        groups: Vec<Group>,
    },
}

struct SortableRow {
    keys: Vec<Option<Value>>,
    sequence: u64,
    row: Value,
}

struct Group {
    key_values: Vec<Option<Value>>,
    /// One per column; `None` for the columns that are not aggregates.
    accumulators: Vec<Option<Accumulator>>,
}

/// A hashable form of a group key value, equal exactly when the values are (type-strict, numbers
/// by value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyPart {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    String(String),
    /// An array or an object, as JSON text.
    Json(String),
}

impl KeyPart {
    fn of(value: &Val<'_>) -> KeyPart {
        match value {
            Val::Undefined => KeyPart::Undefined,
            Val::Null => KeyPart::Null,
            Val::Bool(value) => KeyPart::Bool(*value),
            Val::Number(Number::Int(value)) => KeyPart::Int(*value),
            Val::Number(Number::Float(value)) => {
                const TWO_63: f64 = 9_223_372_036_854_775_808.0;
                if value.fract() == 0.0 && (-TWO_63..TWO_63).contains(value) {
                    KeyPart::Int(*value as i64)
                } else {
                    KeyPart::Float(value.to_bits())
                }
            }
            Val::Str(value) => KeyPart::String(value.clone().into_owned()),
            Val::Array(_) | Val::Object(_) => KeyPart::Json(
                value
                    .to_json()
                    .map(|json| json.to_string())
                    .unwrap_or_default(),
            ),
        }
    }
}

enum Accumulator {
    Count(u64),
    Sum {
        total: Number,
        poisoned: bool,
    },
    Avg {
        total: f64,
        count: u64,
        poisoned: bool,
    },
    Min(Option<Value>),
    Max(Option<Value>),
}

impl Accumulator {
    fn new(function: AggregateFunction) -> Accumulator {
        match function {
            AggregateFunction::Count => Accumulator::Count(0),
            AggregateFunction::Sum => Accumulator::Sum {
                total: Number::Int(0),
                poisoned: false,
            },
            AggregateFunction::Avg => Accumulator::Avg {
                total: 0.0,
                count: 0,
                poisoned: false,
            },
            AggregateFunction::Min => Accumulator::Min(None),
            AggregateFunction::Max => Accumulator::Max(None),
        }
    }

    fn add(&mut self, value: Val<'_>) {
        match self {
            Accumulator::Count(count) => *count += 1,
            Accumulator::Sum { total, poisoned } => match value {
                Val::Undefined => {}
                Val::Number(number) => match arithmetic(ArithmeticOp::Add, *total, number) {
                    Some(sum) => *total = sum,
                    None => *poisoned = true,
                },
                _ => *poisoned = true,
            },
            Accumulator::Avg {
                total,
                count,
                poisoned,
            } => match value {
                Val::Undefined => {}
                Val::Number(number) => {
                    *total += number.as_f64();
                    *count += 1;
                }
                _ => *poisoned = true,
            },
            Accumulator::Min(best) => replace_if(best, value, Ordering::Less),
            Accumulator::Max(best) => replace_if(best, value, Ordering::Greater),
        }
    }

    fn result(&self) -> Option<Value> {
        match self {
            Accumulator::Count(count) => Some(Value::from(*count)),
            Accumulator::Sum { total, poisoned } => {
                if *poisoned {
                    None
                } else {
                    number_to_json(*total)
                }
            }
            Accumulator::Avg {
                total,
                count,
                poisoned,
            } => {
                if *poisoned || *count == 0 {
                    return None;
                }
                let average = total / *count as f64;
                if average.is_finite() {
                    number_to_json(Number::Float(average))
                } else {
                    None
                }
            }
            Accumulator::Min(best) | Accumulator::Max(best) => best.clone(),
        }
    }
}

impl<'q> Aggregator<'q> {
    pub(crate) fn new(query: &'q Query) -> Aggregator<'q> {
        let aggregate = query.is_aggregate();
        let items: &[SelectItem] = match &query.select {
            Select::All => &[],
            Select::Items(items) => items,
        };
        let names = crate::column_names(items);
        let columns: Vec<Column<'q>> = items
            .iter()
            .zip(names)
            .map(|(item, name)| {
                let kind = match &item.expr {
                    Expr::Aggregate { function, argument } => {
                        ColumnKind::Aggregate(*function, argument.as_deref())
                    }
                    expr if aggregate => match query.group_by.iter().position(|key| key == expr) {
                        Some(index) => ColumnKind::GroupKey(index),
                        // Not a valid query (the parser refuses it); evaluate it per group's
                        // first document would be arbitrary, so the column stays undefined.
                        None => ColumnKind::Aggregate(AggregateFunction::Max, None),
                    },
                    _ => ColumnKind::Value,
                };
                Column { name, kind }
            })
            .collect();
        let order = query
            .order_by
            .iter()
            .map(|key| {
                let source = match &key.target {
                    OrderTarget::Column(name) => items
                        .iter()
                        .position(|item| item.alias.as_deref() == Some(name.as_str()))
                        .map_or(SortSource::Nothing, SortSource::Column),
                    OrderTarget::Expr(expr) if aggregate => {
                        if let Some(index) = items.iter().position(|item| &item.expr == expr) {
                            SortSource::Column(index)
                        } else if let Some(index) =
                            query.group_by.iter().position(|key| key == expr)
                        {
                            SortSource::GroupKey(index)
                        } else {
                            SortSource::Nothing
                        }
                    }
                    OrderTarget::Expr(expr) => SortSource::Document(expr),
                };
                (source, key.direction)
            })
            .collect();
        let state = if aggregate {
            let mut groups = Vec::new();
            let mut index = HashMap::new();
            if query.group_by.is_empty() {
                // Without GROUP BY there is exactly one group, even for no documents.
                groups.push(Group::new(&columns, Vec::new()));
                index.insert(Vec::new(), 0);
            }
            State::Groups { index, groups }
        } else {
            State::Rows(Vec::new())
        };
        Aggregator {
            query,
            columns,
            order,
            state,
            sequence: 0,
        }
    }

    /// Adds one matching document.
    pub fn push(&mut self, document: &Value) {
        let sequence = self.sequence;
        self.sequence += 1;
        let limit = self.limit();
        match &mut self.state {
            State::Rows(rows) => {
                if self.order.is_empty() && limit.is_some_and(|limit| rows.len() >= limit) {
                    return;
                }
                let row = crate::project_row(self.query, document);
                let keys = self
                    .order
                    .iter()
                    .map(|(source, _)| match source {
                        SortSource::Document(expr) => evaluate(expr, document).to_json(),
                        SortSource::Column(index) => self
                            .columns
                            .get(*index)
                            .and_then(|column| row.get(&column.name))
                            .cloned(),
                        SortSource::GroupKey(_) | SortSource::Nothing => None,
                    })
                    .collect();
                rows.push(SortableRow {
                    keys,
                    sequence,
                    row,
                });
                // With ORDER BY and TOP, keep about 2 × TOP rows: sort and cut when it doubles.
                if let Some(limit) = limit
                    && !self.order.is_empty()
                    && rows.len() > limit.saturating_mul(2).saturating_add(64)
                {
                    sort_rows(rows, &self.order);
                    rows.truncate(limit);
                }
            }
            State::Groups { index, groups } => {
                let key_values: Vec<Val<'_>> = self
                    .query
                    .group_by
                    .iter()
                    .map(|key| evaluate(key, document))
                    .collect();
                let key: Vec<KeyPart> = key_values.iter().map(KeyPart::of).collect();
                let group_index = match index.get(&key) {
                    Some(group_index) => *group_index,
                    None => {
                        let owned = key_values.iter().map(Val::to_json).collect();
                        groups.push(Group::new(&self.columns, owned));
                        index.insert(key, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                let Some(group) = groups.get_mut(group_index) else {
                    return;
                };
                for (column, accumulator) in self.columns.iter().zip(&mut group.accumulators) {
                    if let (ColumnKind::Aggregate(_, argument), Some(accumulator)) =
                        (&column.kind, accumulator)
                    {
                        let value =
                            argument.map_or(Val::Undefined, |expr| evaluate(expr, document));
                        accumulator.add(value);
                    }
                }
            }
        }
    }

    /// Whether [`Aggregator::push_counted`] applies: the query groups (or aggregates) and every aggregate in
    /// it is `COUNT()`, so a group's row depends only on its key and how many documents it has. A store that
    /// can count documents per key without reading them answers such queries this way.
    pub fn counts_only(&self) -> bool {
        matches!(self.state, State::Groups { .. })
            && self.columns.iter().all(|column| match &column.kind {
                ColumnKind::Aggregate(function, _) => *function == AggregateFunction::Count,
                _ => true,
            })
    }

    /// Adds `count` documents that all look like `document` for the GROUP BY keys (e.g. a minimal document
    /// holding only the key paths). Only when [`Aggregator::counts_only`]; otherwise it does nothing and
    /// returns false.
    pub fn push_counted(&mut self, document: &Value, count: u64) -> bool {
        if !self.counts_only() || count == 0 {
            return self.counts_only();
        }
        self.push(document);
        if let State::Groups { index, groups } = &mut self.state {
            let key: Vec<KeyPart> = self
                .query
                .group_by
                .iter()
                .map(|key| KeyPart::of(&evaluate(key, document)))
                .collect();
            if let Some(group) = index
                .get(&key)
                .and_then(|group_index| groups.get_mut(*group_index))
            {
                for accumulator in group.accumulators.iter_mut().flatten() {
                    if let Accumulator::Count(total) = accumulator {
                        *total += count - 1;
                    }
                }
            }
        }
        true
    }

    /// The answer: the rows of the groups (or the projected documents), sorted by ORDER BY, cut
    /// to TOP.
    pub fn finish(self) -> Vec<Value> {
        let limit = self.limit();
        let mut rows = match self.state {
            State::Rows(rows) => rows,
            State::Groups { groups, .. } => groups
                .into_iter()
                .enumerate()
                .map(|(sequence, group)| {
                    let mut row = Map::new();
                    for (column, accumulator) in self.columns.iter().zip(&group.accumulators) {
                        let value = match (&column.kind, accumulator) {
                            (ColumnKind::GroupKey(index), _) => {
                                group.key_values.get(*index).cloned().flatten()
                            }
                            (_, Some(accumulator)) => accumulator.result(),
                            (_, None) => None,
                        };
                        if let Some(value) = value {
                            row.insert(column.name.clone(), value);
                        }
                    }
                    let keys = self
                        .order
                        .iter()
                        .map(|(source, _)| match source {
                            SortSource::Column(index) => self
                                .columns
                                .get(*index)
                                .and_then(|column| row.get(&column.name))
                                .cloned(),
                            SortSource::GroupKey(index) => {
                                group.key_values.get(*index).cloned().flatten()
                            }
                            SortSource::Document(_) | SortSource::Nothing => None,
                        })
                        .collect();
                    SortableRow {
                        keys,
                        sequence: sequence as u64,
                        row: Value::Object(row),
                    }
                })
                .collect(),
        };
        if !self.order.is_empty() {
            sort_rows(&mut rows, &self.order);
        }
        if let Some(limit) = limit {
            rows.truncate(limit);
        }
        rows.into_iter().map(|row| row.row).collect()
    }

    fn limit(&self) -> Option<usize> {
        self.query
            .top
            .map(|top| usize::try_from(top).unwrap_or(usize::MAX))
    }
}

impl Group {
    fn new(columns: &[Column<'_>], key_values: Vec<Option<Value>>) -> Group {
        Group {
            key_values,
            accumulators: columns
                .iter()
                .map(|column| match column.kind {
                    ColumnKind::Aggregate(function, _) => Some(Accumulator::new(function)),
                    ColumnKind::Value | ColumnKind::GroupKey(_) => None,
                })
                .collect(),
        }
    }
}

fn sort_value(row: &SortableRow, index: usize) -> Val<'_> {
    row.keys
        .get(index)
        .and_then(Option::as_ref)
        .map_or(Val::Undefined, Val::from_json)
}

/// Keeps the new value when it sorts `wanted` of the current best (MIN: before, MAX: after).
fn replace_if(best: &mut Option<Value>, value: Val<'_>, wanted: Ordering) {
    if !value.is_primitive() {
        return;
    }
    let replace = match best {
        None => true,
        Some(current) => total_order(&value, &Val::from_json(current)) == wanted,
    };
    if replace {
        *best = value.to_json();
    }
}

fn sort_rows(rows: &mut [SortableRow], order: &[(SortSource<'_>, Direction)]) {
    rows.sort_by(|left, right| {
        for (index, (_, direction)) in order.iter().enumerate() {
            let ordering = total_order(&sort_value(left, index), &sort_value(right, index));
            let ordering = match direction {
                Direction::Ascending => ordering,
                Direction::Descending => ordering.reverse(),
            };
            if ordering.is_ne() {
                return ordering;
            }
        }
        left.sequence.cmp(&right.sequence)
    });
}
