//! Evaluates expressions on one JSON document, with Azure's rules for undefined values.
//!
//! Rules, quoted from "IoT Hub query language for device and module twins, jobs, and message
//! routing" unless noted:
//! - A missing property is *undefined*, which is not `null`: "IS_DEFINED(property): Returns a
//!   Boolean indicating if the property has been assigned a value (including `null`)."
//! - "Currently, comparisons are supported only between primitive types (no objects)"
//!   (query-twins.md). fleethub: comparing values of two different types, or anything with
//!   undefined, an object or an array, gives undefined (neither true nor false). Within one type:
//!   `null = null`; `false < true`; numbers numerically (`1 = 1.0`); strings by Unicode code point,
//!   case-sensitively. One exception, `configurations.[[id]].status`: twins hold `targeted` and
//!   `applied` (as the Java SDK reads them) while Azure's docs and its own `appliedCount` system
//!   query compare with `'Applied'`, so strings there compare ignoring ASCII case.
//! - Conditions: "Any constant different than Boolean true is considered as false. This rule
//!   includes null, undefined, any object or array instance, any string, and the Boolean false."
//! - AND, OR and NOT use three-valued logic with undefined as the unknown value (as Cosmos DB's
//!   SQL does, which this language closely resembles): `false AND undefined` is false, `true OR undefined`
//!   is true, `NOT undefined` is undefined; an operand that is not a Boolean counts as undefined.
//!   So `NOT (x = 1)` does not match a twin without `x`.
//! - `x IN [a, b]` is `x = a OR x = b` and `x NIN [a, b]` is `NOT (x IN [a, b])`, with the rules
//!   above: a twin without `x` matches neither.
//! - Arithmetic ("Arithmetic: +, -, *, /, %") applies to numbers only; anything else, a division by
//!   zero, or a result that is not a finite number gives undefined. Integers stay exact while they
//!   fit in 64 bits.
//! - The functions' rules are on [`crate::ast::Function`]'s variants in the crate documentation;
//!   a function given an argument of the wrong type returns undefined (the `IS_*` functions
//!   return false).
//!
//! Evaluation allocates only for the values it builds (`LOWER`, `CONCAT`, ...): paths were
//! resolved at parse time, document values and constants are borrowed.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::ast::{ArithmeticOp, Expr, Function, Literal, Number, Path, Segment};
use crate::parser::negate;

/// A value during evaluation. `Undefined` is Azure's undefined; arrays and objects are borrowed
/// from the document or from the query's constants.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Undefined,
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(ArrayRef<'a>),
    Object(&'a Map<String, Value>),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ArrayRef<'a> {
    Json(&'a [Value]),
    Literal(&'a [Literal]),
}

impl<'a> Val<'a> {
    pub(crate) fn from_json(value: &'a Value) -> Val<'a> {
        match value {
            Value::Null => Val::Null,
            Value::Bool(value) => Val::Bool(*value),
            Value::Number(number) => Val::Number(number_from_json(number)),
            Value::String(value) => Val::Str(Cow::Borrowed(value)),
            Value::Array(items) => Val::Array(ArrayRef::Json(items)),
            Value::Object(map) => Val::Object(map),
        }
    }

    pub(crate) fn from_literal(literal: &'a Literal) -> Val<'a> {
        match literal {
            Literal::Undefined => Val::Undefined,
            Literal::Null => Val::Null,
            Literal::Bool(value) => Val::Bool(*value),
            Literal::Number(number) => Val::Number(*number),
            Literal::String(value) => Val::Str(Cow::Borrowed(value)),
            Literal::Array(items) => Val::Array(ArrayRef::Literal(items)),
        }
    }

    /// The JSON of this value; `None` for undefined (a projected undefined is left out).
    pub(crate) fn to_json(&self) -> Option<Value> {
        match self {
            Val::Undefined => None,
            Val::Null => Some(Value::Null),
            Val::Bool(value) => Some(Value::Bool(*value)),
            Val::Number(number) => number_to_json(*number),
            Val::Str(value) => Some(Value::String(value.clone().into_owned())),
            Val::Array(ArrayRef::Json(items)) => Some(Value::Array(items.to_vec())),
            Val::Array(ArrayRef::Literal(items)) => Some(Value::Array(
                items.iter().filter_map(literal_to_json).collect(),
            )),
            Val::Object(map) => Some(Value::Object((*map).clone())),
        }
    }

    /// The rank of the type in fleethub's ORDER BY order: undefined, null, Booleans, numbers,
    /// strings, arrays, objects.
    pub(crate) fn type_rank(&self) -> u8 {
        match self {
            Val::Undefined => 0,
            Val::Null => 1,
            Val::Bool(_) => 2,
            Val::Number(_) => 3,
            Val::Str(_) => 4,
            Val::Array(_) => 5,
            Val::Object(_) => 6,
        }
    }

    pub(crate) fn is_primitive(&self) -> bool {
        matches!(
            self,
            Val::Null | Val::Bool(_) | Val::Number(_) | Val::Str(_)
        )
    }
}

pub(crate) fn literal_to_json(literal: &Literal) -> Option<Value> {
    Val::from_literal(literal).to_json()
}

pub(crate) fn number_from_json(number: &serde_json::Number) -> Number {
    if let Some(value) = number.as_i64() {
        Number::Int(value)
    } else {
        // A u64 above i64::MAX or a float; serde_json numbers are always finite.
        Number::Float(number.as_f64().unwrap_or(0.0))
    }
}

/// Whole floats within ±2^53 are written as integers (`AVG` of `[2, 4]` is `3`, not `3.0`).
pub(crate) fn number_to_json(number: Number) -> Option<Value> {
    match number {
        Number::Int(value) => Some(Value::from(value)),
        Number::Float(value) => {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if value.fract() == 0.0 && value.abs() <= EXACT {
                Some(Value::from(value as i64))
            } else {
                serde_json::Number::from_f64(value).map(Value::Number)
            }
        }
    }
}

/// Numeric order; an integer and a float are compared exactly (no rounding of the integer).
pub(crate) fn compare_numbers(left: Number, right: Number) -> Ordering {
    match (left, right) {
        (Number::Int(left), Number::Int(right)) => left.cmp(&right),
        (Number::Int(left), Number::Float(right)) => compare_int_float(left, right),
        (Number::Float(left), Number::Int(right)) => compare_int_float(right, left).reverse(),
        (Number::Float(left), Number::Float(right)) => {
            left.partial_cmp(&right).unwrap_or(Ordering::Equal)
        }
    }
}

fn compare_int_float(int: i64, float: f64) -> Ordering {
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if float >= TWO_63 {
        return Ordering::Less;
    }
    if float < -TWO_63 {
        return Ordering::Greater;
    }
    let whole = float.trunc();
    match int.cmp(&(whole as i64)) {
        Ordering::Equal => 0.0f64
            .partial_cmp(&(float - whole))
            .unwrap_or(Ordering::Equal),
        other => other,
    }
}

/// Comparison of two values of the same primitive type; `None` (undefined) otherwise.
pub(crate) fn compare_values(left: &Val<'_>, right: &Val<'_>) -> Option<Ordering> {
    match (left, right) {
        (Val::Null, Val::Null) => Some(Ordering::Equal),
        (Val::Bool(left), Val::Bool(right)) => Some(left.cmp(right)),
        (Val::Number(left), Val::Number(right)) => Some(compare_numbers(*left, *right)),
        (Val::Str(left), Val::Str(right)) => Some(left.as_ref().cmp(right.as_ref())),
        _ => None,
    }
}

/// Whether `expr` is `configurations.[[id]].status` (see the module docs).
fn is_configuration_status(expr: &Expr) -> bool {
    matches!(expr, Expr::Path(path) if matches!(
        path.segments.as_slice(),
        [Segment::Name(root), Segment::Name(_), Segment::Name(status)]
            if root == "configurations" && status == "status"
    ))
}

/// [`compare_values`], with strings compared ignoring ASCII case when `ignore_case`.
fn compare_status_aware(left: &Val<'_>, right: &Val<'_>, ignore_case: bool) -> Option<Ordering> {
    match (left, right) {
        (Val::Str(left), Val::Str(right)) if ignore_case => {
            Some(left.to_ascii_lowercase().cmp(&right.to_ascii_lowercase()))
        }
        _ => compare_values(left, right),
    }
}

/// fleethub's total order over all values, for ORDER BY, MIN and MAX: by type first
/// ([`Val::type_rank`]), then within the type as [`compare_values`]; arrays and objects are
/// equal to each other.
pub(crate) fn total_order(left: &Val<'_>, right: &Val<'_>) -> Ordering {
    left.type_rank()
        .cmp(&right.type_rank())
        .then_with(|| compare_values(left, right).unwrap_or(Ordering::Equal))
}

/// What paths are evaluated against: a JSON document (a twin, a job record), or a routed message
/// (`crate::routing`), whose paths have roots of their own.
pub(crate) trait Document {
    /// The value at `path`, or undefined.
    fn value_at<'a>(&'a self, path: &'a Path) -> Val<'a>;
}

impl Document for Value {
    fn value_at<'a>(&'a self, path: &'a Path) -> Val<'a> {
        lookup(self, path)
    }
}

/// The value at `path` in `document`, or undefined.
pub(crate) fn lookup<'a>(document: &'a Value, path: &Path) -> Val<'a> {
    lookup_segments(document, &path.segments, false)
}

/// The value at `segments` in `document`, or undefined. With `ignore_case`, a name without an
/// exact match matches the first key equal to it ignoring ASCII case.
pub(crate) fn lookup_segments<'a>(
    document: &'a Value,
    segments: &[Segment],
    ignore_case: bool,
) -> Val<'a> {
    let mut current = document;
    for segment in segments {
        let next = match (segment, current) {
            (Segment::Name(name), Value::Object(map)) => map.get(name).or_else(|| {
                if ignore_case {
                    map.iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(name))
                        .map(|(_, value)| value)
                } else {
                    None
                }
            }),
            (Segment::Index(index), Value::Array(items)) => usize::try_from(*index)
                .ok()
                .and_then(|index| items.get(index)),
            _ => None,
        };
        match next {
            Some(value) => current = value,
            None => return Val::Undefined,
        }
    }
    Val::from_json(current)
}

/// Evaluates `expr` on `document`. Aggregates evaluate to undefined here; the aggregator computes
/// them.
pub(crate) fn evaluate<'a, D: Document + ?Sized>(expr: &'a Expr, document: &'a D) -> Val<'a> {
    match expr {
        Expr::Literal(literal) => Val::from_literal(literal),
        Expr::Path(path) => document.value_at(path),
        Expr::Not(operand) => match evaluate(operand, document) {
            Val::Bool(value) => Val::Bool(!value),
            _ => Val::Undefined,
        },
        Expr::Negate(operand) => match evaluate(operand, document) {
            Val::Number(number) => Val::Number(negate(number)),
            _ => Val::Undefined,
        },
        Expr::And(operands) => {
            let mut unknown = false;
            for operand in operands {
                match evaluate(operand, document) {
                    Val::Bool(false) => return Val::Bool(false),
                    Val::Bool(true) => {}
                    _ => unknown = true,
                }
            }
            if unknown {
                Val::Undefined
            } else {
                Val::Bool(true)
            }
        }
        Expr::Or(operands) => {
            let mut unknown = false;
            for operand in operands {
                match evaluate(operand, document) {
                    Val::Bool(true) => return Val::Bool(true),
                    Val::Bool(false) => {}
                    _ => unknown = true,
                }
            }
            if unknown {
                Val::Undefined
            } else {
                Val::Bool(false)
            }
        }
        Expr::Compare { op, left, right } => {
            let ignore_case = is_configuration_status(left) || is_configuration_status(right);
            let left = evaluate(left, document);
            let right = evaluate(right, document);
            match compare_status_aware(&left, &right, ignore_case) {
                Some(ordering) => Val::Bool(op.holds(ordering)),
                None => Val::Undefined,
            }
        }
        Expr::Arithmetic { op, left, right } => {
            match (evaluate(left, document), evaluate(right, document)) {
                (Val::Number(left), Val::Number(right)) => {
                    arithmetic(*op, left, right).map_or(Val::Undefined, Val::Number)
                }
                _ => Val::Undefined,
            }
        }
        Expr::In {
            operand,
            values,
            negated,
        } => {
            let ignore_case = is_configuration_status(operand);
            let operand = evaluate(operand, document);
            let mut unknown = false;
            let mut found = false;
            for value in values {
                match compare_status_aware(&operand, &Val::from_literal(value), ignore_case) {
                    Some(Ordering::Equal) => {
                        found = true;
                        break;
                    }
                    Some(_) => {}
                    None => unknown = true,
                }
            }
            if found {
                Val::Bool(!negated)
            } else if unknown {
                Val::Undefined
            } else {
                Val::Bool(*negated)
            }
        }
        Expr::Call {
            function,
            arguments,
        } => call(*function, arguments, document),
        Expr::Aggregate { .. } => Val::Undefined,
    }
}

/// Whether `condition` holds: only a Boolean `true` does.
pub(crate) fn is_true<D: Document + ?Sized>(condition: &Expr, document: &D) -> bool {
    matches!(evaluate(condition, document), Val::Bool(true))
}

pub(crate) fn arithmetic(op: ArithmeticOp, left: Number, right: Number) -> Option<Number> {
    if let (Number::Int(left), Number::Int(right)) = (left, right) {
        let exact = match op {
            ArithmeticOp::Add => left.checked_add(right),
            ArithmeticOp::Subtract => left.checked_sub(right),
            ArithmeticOp::Multiply => left.checked_mul(right),
            ArithmeticOp::Divide if right == 0 => return None,
            ArithmeticOp::Divide => match left.checked_rem(right) {
                Some(0) => left.checked_div(right),
                _ => None,
            },
            ArithmeticOp::Remainder if right == 0 => return None,
            // `i64::MIN % -1` overflows in the machine; mathematically it is 0.
            ArithmeticOp::Remainder => Some(left.checked_rem(right).unwrap_or(0)),
        };
        if let Some(value) = exact {
            return Some(Number::Int(value));
        }
    }
    let (left, right) = (left.as_f64(), right.as_f64());
    let result = match op {
        ArithmeticOp::Add => left + right,
        ArithmeticOp::Subtract => left - right,
        ArithmeticOp::Multiply => left * right,
        ArithmeticOp::Divide | ArithmeticOp::Remainder if right == 0.0 => return None,
        ArithmeticOp::Divide => left / right,
        ArithmeticOp::Remainder => left % right,
    };
    float(result)
}

fn float(value: f64) -> Option<Number> {
    value.is_finite().then_some(Number::Float(value))
}

/// A whole float as an integer when it fits (results of CEILING, FLOOR, ...).
fn whole(value: f64) -> Option<Number> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if value.is_finite() && value.fract() == 0.0 && (-TWO_63..TWO_63).contains(&value) {
        Some(Number::Int(value as i64))
    } else {
        float(value)
    }
}

fn number_val(number: Option<Number>) -> Val<'static> {
    number.map_or(Val::Undefined, Val::Number)
}

/// A character count or index as a number.
fn count_val(count: usize) -> Val<'static> {
    Val::Number(Number::Int(i64::try_from(count).unwrap_or(i64::MAX)))
}

/// Functions, one rule each (Azure's descriptions are quoted in the crate documentation).
/// Strings are measured in Unicode scalar values (Rust `char`s).
fn call<'a, D: Document + ?Sized>(
    function: Function,
    arguments: &'a [Expr],
    document: &'a D,
) -> Val<'a> {
    let argument = |index: usize| {
        arguments
            .get(index)
            .map_or(Val::Undefined, |expr| evaluate(expr, document))
    };
    let number_argument = |index: usize| match argument(index) {
        Val::Number(number) => Some(number),
        _ => None,
    };
    match function {
        Function::IsDefined => Val::Bool(!matches!(argument(0), Val::Undefined)),
        Function::IsNull => Val::Bool(matches!(argument(0), Val::Null)),
        Function::IsBool => Val::Bool(matches!(argument(0), Val::Bool(_))),
        Function::IsNumber => Val::Bool(matches!(argument(0), Val::Number(_))),
        Function::IsString => Val::Bool(matches!(argument(0), Val::Str(_))),
        Function::IsObject => Val::Bool(matches!(argument(0), Val::Object(_))),
        Function::IsArray => Val::Bool(matches!(argument(0), Val::Array(_))),
        Function::IsPrimitive => Val::Bool(argument(0).is_primitive()),
        Function::StartsWith | Function::EndsWith | Function::Contains => {
            match (argument(0), argument(1)) {
                (Val::Str(text), Val::Str(fragment)) => Val::Bool(match function {
                    Function::StartsWith => text.starts_with(fragment.as_ref()),
                    Function::EndsWith => text.ends_with(fragment.as_ref()),
                    _ => text.contains(fragment.as_ref()),
                }),
                _ => Val::Undefined,
            }
        }
        Function::Lower => match argument(0) {
            Val::Str(text) => Val::Str(Cow::Owned(text.to_lowercase())),
            _ => Val::Undefined,
        },
        Function::Upper => match argument(0) {
            Val::Str(text) => Val::Str(Cow::Owned(text.to_uppercase())),
            _ => Val::Undefined,
        },
        Function::Length => match argument(0) {
            Val::Str(text) => count_val(text.chars().count()),
            _ => Val::Undefined,
        },
        Function::Substring => substring(
            argument(0),
            number_argument(1),
            (arguments.len() > 2).then(|| number_argument(2)),
        ),
        Function::IndexOf => match (argument(0), argument(1)) {
            (Val::Str(text), Val::Str(fragment)) => match text.find(fragment.as_ref()) {
                Some(byte) => count_val(text[..byte].chars().count()),
                None => Val::Number(Number::Int(-1)),
            },
            _ => Val::Undefined,
        },
        Function::Concat => {
            let mut result = String::new();
            for index in 0..arguments.len() {
                match argument(index) {
                    Val::Str(text) => result.push_str(&text),
                    _ => return Val::Undefined,
                }
            }
            Val::Str(Cow::Owned(result))
        }
        Function::Abs => number_val(number_argument(0).and_then(|number| {
            match number {
                Number::Int(value) => value
                    .checked_abs()
                    .map(Number::Int)
                    .or_else(|| float((value as f64).abs())),
                Number::Float(value) => float(value.abs()),
            }
        })),
        Function::Ceiling => number_val(number_argument(0).and_then(|number| match number {
            Number::Int(_) => Some(number),
            Number::Float(value) => whole(value.ceil()),
        })),
        Function::Floor => number_val(number_argument(0).and_then(|number| match number {
            Number::Int(_) => Some(number),
            Number::Float(value) => whole(value.floor()),
        })),
        Function::Sign => number_val(number_argument(0).map(|number| {
            Number::Int(match compare_numbers(number, Number::Int(0)) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            })
        })),
        Function::Square => number_val(
            number_argument(0)
                .and_then(|number| arithmetic(ArithmeticOp::Multiply, number, number)),
        ),
        Function::Power => number_val(match (number_argument(0), number_argument(1)) {
            (Some(Number::Int(base)), Some(Number::Int(exponent)))
                if (0..=i64::from(u32::MAX)).contains(&exponent) =>
            {
                u32::try_from(exponent)
                    .ok()
                    .and_then(|exponent| base.checked_pow(exponent))
                    .map(Number::Int)
                    .or_else(|| float((base as f64).powf(exponent as f64)))
            }
            (Some(base), Some(exponent)) => float(base.as_f64().powf(exponent.as_f64())),
            _ => None,
        }),
        Function::Sqrt => number_val(number_argument(0).and_then(|number| {
            let value = number.as_f64();
            if value < 0.0 {
                None
            } else {
                float(value.sqrt())
            }
        })),
        Function::Exp => {
            number_val(number_argument(0).and_then(|number| float(number.as_f64().exp())))
        }
        Function::AsNumber => match argument(0) {
            Val::Number(number) => Val::Number(number),
            Val::Str(text) => match serde_json::from_str::<serde_json::Number>(text.trim()) {
                Ok(number) => Val::Number(number_from_json(&number)),
                Err(_) => Val::Undefined,
            },
            _ => Val::Undefined,
        },
    }
}

/// `SUBSTRING(string, start [, length])`: "Returns part of a string expression starting at the
/// specified character zero-based position and continues to the specified length, or to the end
/// of the string." A start before 0 counts from 0, a negative length gives the empty string,
/// fractions are cut toward zero.
fn substring<'a>(text: Val<'a>, start: Option<Number>, length: Option<Option<Number>>) -> Val<'a> {
    let Val::Str(text) = text else {
        return Val::Undefined;
    };
    let Some(start) = start else {
        return Val::Undefined;
    };
    let to_count = |number: Number| -> usize {
        let value = number.as_f64().trunc();
        if value <= 0.0 {
            0
        } else if value >= usize::MAX as f64 {
            usize::MAX
        } else {
            value as usize
        }
    };
    let length = match length {
        None => usize::MAX,
        Some(None) => return Val::Undefined,
        Some(Some(length)) => to_count(length),
    };
    let result: String = text.chars().skip(to_count(start)).take(length).collect();
    Val::Str(Cow::Owned(result))
}
