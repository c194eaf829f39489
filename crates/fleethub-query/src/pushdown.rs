//! A backend-neutral filter derived from WHERE, for the store to run in SQL before the evaluator.
//!
//! # What a backend must implement
//!
//! [`Query::pushdown`](crate::Query::pushdown) returns a [`Pushdown`]: a [`Predicate`] that every
//! document matched by the query satisfies (a *superset* filter), and `exact`, true when the
//! predicate is satisfied by exactly the documents the query matches (the store may then skip
//! [`Query::matches`](crate::Query::matches)). A translation is correct when it implements these
//! rules exactly; `fleethub_query::fuzzing::predicate_holds` is the reference implementation.
//!
//! **Paths** are `Vec<String>`: object keys from the document root (the twin JSON, or the job
//! record for `FROM devices.jobs`), canonical case, never an array index. `["tags", "site"]` is
//! SQLite's `$.tags.site`. Keys may hold any character (`.`, space, quote, `$`): quote each one
//! (`$."a.b"`, `$."$metadata"`). A path *exists* when every key is present in an object along
//! the way; a key whose value is JSON `null` exists. A path through a string, number or array
//! (`tags.a.b` when `tags.a` is `"x"`) does not exist.
//!
//! A document satisfies:
//! - `True`: always.
//! - `Compare { path, op, value }`: the path exists, its value has the *same JSON type* as
//!   `value`, and `stored op value` holds in that type's order. Types: number (integer and float
//!   are one type: `1 = 1.0`, and `tags.x = 5` does **not** match the string `"5"`), string,
//!   Boolean, null. Orders: numbers numerically; strings by Unicode code point, case-sensitively
//!   (the byte order of UTF-8: SQLite's default BINARY collation, PostgreSQL `COLLATE "C"`);
//!   `false < true`; null only equals null (`null <= null` and `null >= null` hold, `null < null`
//!   and `null != null` do not). An object or array value never satisfies `Compare`, whatever
//!   `op` is; nor does a missing path: `NotEqual` is "present, same type, different", not SQL's
//!   `<>` over NULLs.
//! - `In { path, values }`: `Compare { path, Equal, v }` holds for some `v` of `values` (never,
//!   for an empty list).
//! - `IsDefined(path)`: the path exists (any type, null included). `IsUndefined(path)`: it does
//!   not.
//! - `StartsWith { path, prefix }`: the value is a string that begins with `prefix`
//!   (case-sensitive; `""` is a prefix of every string).
//! - `And(list)`: every element holds (an empty list holds). `Or(list)`: some element holds (an
//!   empty list never holds: `Or(vec![])` is *false*).
//!
//! For SQLite with the twin in a `doc` column, `Compare(["tags","n"], Less, Number(5))` is
//! `json_type(doc, '$.tags.n') IN ('integer', 'real') AND json_extract(doc, '$.tags.n') < 5`,
//! `Compare(.., Equal, Bool(true))` is `json_type(doc, p) = 'true'`, `Compare(.., Equal, Null)`
//! is `json_type(doc, p) = 'null'`, and `IsDefined(p)` is `json_type(doc, p) IS NOT NULL`. The
//! numbers fleethub stores are integers within ±2^52 or doubles, so SQLite's comparison of an
//! INTEGER with a REAL agrees with ours.
//!
//! # How the predicate is derived
//!
//! Each WHERE expression gives two approximations: of the documents where it is `true`, and of
//! those where it is `false` (neither covers *undefined*). `NOT e` swaps them, `AND`/`OR` combine
//! them with De Morgan's laws, which hold in the three-valued logic. `path op constant` is exact
//! both ways (`NOT (x < 5)` is `x >= 5` over numbers: a twin without `x` satisfies neither), as
//! are `IN`/`NIN`, `IS_DEFINED` and comparisons with constants that can never compare (objects,
//! arrays, `undefined`: nothing matches). `STARTSWITH(path, 'p')` and `IS_NULL(path)` are exact
//! when true only. Anything else (arithmetic, two paths, other functions, array indices) weakens
//! to `True` and makes the result inexact.

use serde_json::Value;

use crate::ast::{CompareOp, Expr, Function, Literal, Number};
use crate::eval::{Val, evaluate};

/// The result of [`Query::pushdown`](crate::Query::pushdown).
#[derive(Debug, Clone, PartialEq)]
pub struct Pushdown {
    pub predicate: Predicate,
    /// The predicate holds for exactly the documents the query's WHERE matches.
    pub exact: bool,
}

/// A filter over one JSON document; the semantics a backend implements are in the
/// [module documentation](self).
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    True,
    Compare {
        path: Vec<String>,
        op: CompareOp,
        value: Scalar,
    },
    In {
        path: Vec<String>,
        values: Vec<Scalar>,
    },
    IsDefined(Vec<String>),
    IsUndefined(Vec<String>),
    StartsWith {
        path: Vec<String>,
        prefix: String,
    },
    And(Vec<Predicate>),
    /// `Or(vec![])` is false.
    Or(Vec<Predicate>),
}

impl Predicate {
    /// The predicate no document satisfies.
    pub fn never() -> Predicate {
        Predicate::Or(Vec::new())
    }
}

/// A primitive JSON value to compare with.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
}

impl Scalar {
    fn from_val(value: &Val<'_>) -> Option<Scalar> {
        match value {
            Val::Null => Some(Scalar::Null),
            Val::Bool(value) => Some(Scalar::Bool(*value)),
            Val::Number(number) => Some(Scalar::Number(*number)),
            Val::Str(value) => Some(Scalar::String(value.clone().into_owned())),
            Val::Undefined | Val::Array(_) | Val::Object(_) => None,
        }
    }

    fn from_literal(literal: &Literal) -> Option<Scalar> {
        Scalar::from_val(&Val::from_literal(literal))
    }
}

/// The approximation of the documents where `condition` evaluates to true.
pub(crate) fn pushdown(condition: Option<&Expr>) -> Pushdown {
    match condition {
        None => Pushdown {
            predicate: Predicate::True,
            exact: true,
        },
        Some(condition) => {
            let approximation = approximate(condition, true);
            Pushdown {
                predicate: approximation.predicate,
                exact: approximation.exact,
            }
        }
    }
}

struct Approximation {
    predicate: Predicate,
    exact: bool,
}

impl Approximation {
    fn exact(predicate: Predicate) -> Approximation {
        Approximation {
            predicate,
            exact: true,
        }
    }

    fn unknown() -> Approximation {
        Approximation {
            predicate: Predicate::True,
            exact: false,
        }
    }

    fn never() -> Approximation {
        Approximation::exact(Predicate::never())
    }

    fn is_never(&self) -> bool {
        matches!(&self.predicate, Predicate::Or(list) if list.is_empty())
    }
}

/// A superset of the documents where `expr` evaluates to `Bool(wanted)`.
fn approximate(expr: &Expr, wanted: bool) -> Approximation {
    if !mentions_document(expr) {
        // A constant: decide it now.
        return match evaluate(expr, &Value::Null) {
            Val::Bool(value) if value == wanted => Approximation::exact(Predicate::True),
            _ => Approximation::never(),
        };
    }
    match expr {
        Expr::Path(path) => match path.names() {
            Some(path) => Approximation::exact(Predicate::Compare {
                path,
                op: CompareOp::Equal,
                value: Scalar::Bool(wanted),
            }),
            None => Approximation::unknown(),
        },
        Expr::Not(operand) => approximate(operand, !wanted),
        // `a AND b` is true when both are, false when either is; `OR` the other way round.
        Expr::And(operands) | Expr::Or(operands) => {
            let parts = operands.iter().map(|operand| approximate(operand, wanted));
            if matches!(expr, Expr::And(_)) == wanted {
                conjunction(parts)
            } else {
                disjunction(parts)
            }
        }
        Expr::Compare { op, left, right } => compare(*op, left, right, wanted),
        Expr::In {
            operand,
            values,
            negated,
        } => membership(operand, values, wanted != *negated),
        Expr::Call {
            function,
            arguments,
        } => call(*function, arguments, wanted),
        // Numbers, strings or undefined: never a Boolean.
        Expr::Negate(_) | Expr::Arithmetic { .. } | Expr::Aggregate { .. } => {
            Approximation::never()
        }
        Expr::Literal(_) => Approximation::unknown(),
    }
}

/// `configurations.[[id]].status`, which the evaluator compares ignoring ASCII case (`eval.rs`): a
/// predicate's case-sensitive comparison would reject twins the query matches, so nothing is pushed down
/// for it. (Found by the `query_parse` fuzz target.)
fn compares_ignoring_case(path: &[String]) -> bool {
    matches!(path, [root, _, status] if root == "configurations" && status == "status")
}

fn compare(op: CompareOp, left: &Expr, right: &Expr, wanted: bool) -> Approximation {
    let (path, constant, op) = match (left, right) {
        (Expr::Path(path), constant) if !mentions_document(constant) => (path, constant, op),
        (constant, Expr::Path(path)) if !mentions_document(constant) => {
            (path, constant, op.mirrored())
        }
        _ => return Approximation::unknown(),
    };
    let Some(path) = path.names() else {
        return Approximation::unknown();
    };
    if compares_ignoring_case(&path) {
        return Approximation::unknown();
    }
    // An object, an array or undefined never compares: neither true nor false.
    let Some(value) = Scalar::from_val(&evaluate(constant, &Value::Null)) else {
        return Approximation::never();
    };
    // Two comparable values are ordered, so "not op" is "the negated op".
    let op = if wanted { op } else { op.negated() };
    Approximation::exact(Predicate::Compare { path, op, value })
}

/// `operand IN values` evaluating to `Bool(wanted)`.
fn membership(operand: &Expr, values: &[Literal], wanted: bool) -> Approximation {
    let Expr::Path(path) = operand else {
        return Approximation::unknown();
    };
    let Some(path) = path.names() else {
        return Approximation::unknown();
    };
    if compares_ignoring_case(&path) {
        return Approximation::unknown();
    }
    let scalars: Option<Vec<Scalar>> = values.iter().map(Scalar::from_literal).collect();
    if wanted {
        // Elements that are arrays never equal anything.
        let values: Vec<Scalar> = values.iter().filter_map(Scalar::from_literal).collect();
        return if values.is_empty() {
            Approximation::never()
        } else {
            Approximation::exact(Predicate::In { path, values })
        };
    }
    // False needs every element comparable and unequal; an array element makes that impossible.
    match scalars {
        None => Approximation::never(),
        Some(scalars) if scalars.is_empty() => Approximation::exact(Predicate::True),
        Some(scalars) => conjunction(scalars.into_iter().map(|value| {
            Approximation::exact(Predicate::Compare {
                path: path.clone(),
                op: CompareOp::NotEqual,
                value,
            })
        })),
    }
}

fn call(function: Function, arguments: &[Expr], wanted: bool) -> Approximation {
    let path = match arguments.first() {
        Some(Expr::Path(path)) => path.names(),
        _ => None,
    };
    match (function, path) {
        (Function::IsDefined, Some(path)) => Approximation::exact(if wanted {
            Predicate::IsDefined(path)
        } else {
            Predicate::IsUndefined(path)
        }),
        (Function::IsNull, Some(path)) if wanted => Approximation::exact(Predicate::Compare {
            path,
            op: CompareOp::Equal,
            value: Scalar::Null,
        }),
        (Function::StartsWith, Some(path)) if wanted => match arguments.get(1) {
            Some(prefix) if !mentions_document(prefix) => match evaluate(prefix, &Value::Null) {
                Val::Str(prefix) => Approximation::exact(Predicate::StartsWith {
                    path,
                    prefix: prefix.into_owned(),
                }),
                _ => Approximation::never(),
            },
            _ => Approximation::unknown(),
        },
        // These return a string, a number or undefined: never a Boolean.
        (
            Function::Lower
            | Function::Upper
            | Function::Length
            | Function::Substring
            | Function::IndexOf
            | Function::Concat
            | Function::Abs
            | Function::Ceiling
            | Function::Floor
            | Function::Sign
            | Function::Square
            | Function::Power
            | Function::Sqrt
            | Function::Exp
            | Function::AsNumber,
            _,
        ) => Approximation::never(),
        _ => Approximation::unknown(),
    }
}

/// All of `parts` (exact when each is, or when one is exactly "never").
fn conjunction(parts: impl Iterator<Item = Approximation>) -> Approximation {
    let mut predicates = Vec::new();
    let mut exact = true;
    for part in parts {
        if part.is_never() {
            return Approximation::never();
        }
        exact &= part.exact;
        match part.predicate {
            Predicate::True => {}
            Predicate::And(inner) => predicates.extend(inner),
            other => predicates.push(other),
        }
    }
    let predicate = match predicates.len() {
        0 => Predicate::True,
        1 => predicates.pop().unwrap_or(Predicate::True),
        _ => Predicate::And(predicates),
    };
    Approximation { predicate, exact }
}

/// Any of `parts` (exact when each is, or when one is exactly "always").
fn disjunction(parts: impl Iterator<Item = Approximation>) -> Approximation {
    let mut predicates = Vec::new();
    let mut exact = true;
    let mut always = None;
    for part in parts {
        if part.is_never() {
            continue;
        }
        if part.predicate == Predicate::True {
            // A superset that is everything: the disjunction is everything.
            always = Some(always.unwrap_or(false) || part.exact);
            exact &= part.exact;
            continue;
        }
        exact &= part.exact;
        match part.predicate {
            Predicate::Or(inner) => predicates.extend(inner),
            other => predicates.push(other),
        }
    }
    if let Some(exactly_always) = always {
        return Approximation {
            predicate: Predicate::True,
            exact: exactly_always || exact,
        };
    }
    let predicate = match predicates.len() {
        0 => Predicate::never(),
        1 => predicates.pop().unwrap_or_else(Predicate::never),
        _ => Predicate::Or(predicates),
    };
    Approximation { predicate, exact }
}

/// Whether the value of `expr` depends on the document.
fn mentions_document(expr: &Expr) -> bool {
    match expr {
        Expr::Path(_) | Expr::Aggregate { .. } => true,
        Expr::Literal(_) => false,
        Expr::Not(operand) | Expr::Negate(operand) => mentions_document(operand),
        Expr::And(operands) | Expr::Or(operands) => operands.iter().any(mentions_document),
        Expr::Compare { left, right, .. } | Expr::Arithmetic { left, right, .. } => {
            mentions_document(left) || mentions_document(right)
        }
        Expr::In { operand, .. } => mentions_document(operand),
        Expr::Call { arguments, .. } => arguments.iter().any(mentions_document),
    }
}
