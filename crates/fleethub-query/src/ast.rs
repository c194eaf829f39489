//! The syntax tree of a parsed query, and its `Display`: a canonical query text that parses back
//! to an equal tree (`parse(&query.to_string()) == Ok(query)`).
//!
//! Trees come from [`crate::parse`], which resolves every path against the collection (system
//! names in their canonical case, the `devices.` alias removed) and enforces the language's rules.
//! The fields are public for reading; a hand-built tree is evaluated without panicking, but only a
//! parsed one is guaranteed to follow the rules.

use std::fmt::{self, Display, Formatter, Write as _};

use crate::lexer::{is_identifier_continue, is_identifier_start};
use crate::parser::Keyword;

/// A parsed query. See the crate documentation for the evaluation methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub source: Source,
    pub select: Select,
    pub condition: Option<Expr>,
    /// Property paths (`Expr::Path`), in the order written.
    pub group_by: Vec<Expr>,
    pub order_by: Vec<OrderKey>,
    pub top: Option<u64>,
}

/// The collection after FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `FROM devices`: device twins.
    Devices,
    /// `FROM devices.modules`: module twins.
    Modules,
    /// `FROM devices.jobs`: per-device job records.
    Jobs,
}

impl Source {
    /// The collection as written in FROM, which is also the alias paths may start with.
    pub fn collection_name(self) -> &'static str {
        match self {
            Source::Devices => "devices",
            Source::Modules => "devices.modules",
            Source::Jobs => "devices.jobs",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `SELECT *`: the document itself.
    All,
    /// A projection list; aggregates only as whole items.
    Items(Vec<SelectItem>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SelectItem {
    pub expr: Expr,
    /// The name after AS, as written (aliases are case-sensitive).
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderKey {
    pub target: OrderTarget,
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderTarget {
    /// A bare name equal to an alias of the SELECT list (`ORDER BY n DESC`): sorts by that column.
    Column(String),
    /// Anything else: evaluated on each document, or, in an aggregate query, a GROUP BY path or
    /// an aggregate of the SELECT list.
    Expr(Expr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

/// An expression. Comparisons, arithmetic and the logical operators follow Azure's rules for
/// undefined values; see the crate documentation.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Literal),
    Path(Path),
    Not(Box<Expr>),
    /// Unary minus of a non-literal (`-5` is `Literal(Number(Int(-5)))`).
    Negate(Box<Expr>),
    /// Two or more operands: `a AND b AND c` is one node.
    And(Vec<Expr>),
    /// Two or more operands.
    Or(Vec<Expr>),
    Compare {
        op: CompareOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Arithmetic {
        op: ArithmeticOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    /// `operand IN [..]`, or `NIN` when `negated`.
    In {
        operand: Box<Expr>,
        values: Vec<Literal>,
        negated: bool,
    },
    Call {
        function: Function,
        arguments: Vec<Expr>,
    },
    /// Only as a whole SELECT item (or an ORDER BY key naming one).
    Aggregate {
        function: AggregateFunction,
        /// `None` for `COUNT()`.
        argument: Option<Box<Expr>>,
    },
}

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// The `undefined` constant of Azure's grammar.
    Undefined,
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    /// Elements are constants other than `undefined`.
    Array(Vec<Literal>),
}

/// A JSON number. Twin integers are within ±2^52 (Azure's limit), so `Int` covers them exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    /// Always finite.
    Float(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(value) => value as f64,
            Number::Float(value) => value,
        }
    }
}

/// A path into the document, resolved: system names in canonical case, no collection alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A property name (`tags`, `[[my name]]`).
    Name(String),
    /// An array index, `[0]` (as in routing's `$body.list[0]`).
    Index(u64),
}

impl Path {
    /// The names of the path when it has no index segment; what the pushdown predicates use.
    pub fn names(&self) -> Option<Vec<String>> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Name(name) => Some(name.clone()),
                Segment::Index(_) => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Equal,
    /// `!=` or `<>`.
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl CompareOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Equal => "=",
            CompareOp::NotEqual => "!=",
            CompareOp::Less => "<",
            CompareOp::LessOrEqual => "<=",
            CompareOp::Greater => ">",
            CompareOp::GreaterOrEqual => ">=",
        }
    }

    /// Whether `left op right` holds when comparing `left` to `right` gives `ordering`.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            CompareOp::Equal => ordering == Equal,
            CompareOp::NotEqual => ordering != Equal,
            CompareOp::Less => ordering == Less,
            CompareOp::LessOrEqual => ordering != Greater,
            CompareOp::Greater => ordering == Greater,
            CompareOp::GreaterOrEqual => ordering != Less,
        }
    }

    /// The operator that holds exactly when this one does not (for two comparable values).
    pub fn negated(self) -> CompareOp {
        match self {
            CompareOp::Equal => CompareOp::NotEqual,
            CompareOp::NotEqual => CompareOp::Equal,
            CompareOp::Less => CompareOp::GreaterOrEqual,
            CompareOp::LessOrEqual => CompareOp::Greater,
            CompareOp::Greater => CompareOp::LessOrEqual,
            CompareOp::GreaterOrEqual => CompareOp::Less,
        }
    }

    /// The operator with its operands swapped: `a < b` is `b > a`.
    pub fn mirrored(self) -> CompareOp {
        match self {
            CompareOp::Less => CompareOp::Greater,
            CompareOp::LessOrEqual => CompareOp::GreaterOrEqual,
            CompareOp::Greater => CompareOp::Less,
            CompareOp::GreaterOrEqual => CompareOp::LessOrEqual,
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithmeticOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Remainder,
}

impl ArithmeticOp {
    pub fn symbol(self) -> &'static str {
        match self {
            ArithmeticOp::Add => "+",
            ArithmeticOp::Subtract => "-",
            ArithmeticOp::Multiply => "*",
            ArithmeticOp::Divide => "/",
            ArithmeticOp::Remainder => "%",
        }
    }
}

/// Where a function comes from; the compatibility table in `docs/compat.md` is built from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionOrigin {
    /// Listed by Azure for twin and job queries ("When querying twins and jobs the only supported
    /// function is: IS_DEFINED(property)").
    AzureTwinQuery,
    /// Listed by Azure for routing conditions only; fleethub accepts it in twin queries as well.
    AzureRouting,
}

/// The scalar functions. Names are case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    IsDefined,
    IsNull,
    IsBool,
    IsNumber,
    IsString,
    IsObject,
    IsArray,
    IsPrimitive,
    StartsWith,
    EndsWith,
    Contains,
    Lower,
    Upper,
    Length,
    Substring,
    IndexOf,
    Concat,
    Abs,
    Ceiling,
    Floor,
    Sign,
    Square,
    Power,
    Sqrt,
    Exp,
    AsNumber,
}

impl Function {
    pub const ALL: [Function; 26] = [
        Function::IsDefined,
        Function::IsNull,
        Function::IsBool,
        Function::IsNumber,
        Function::IsString,
        Function::IsObject,
        Function::IsArray,
        Function::IsPrimitive,
        Function::StartsWith,
        Function::EndsWith,
        Function::Contains,
        Function::Lower,
        Function::Upper,
        Function::Length,
        Function::Substring,
        Function::IndexOf,
        Function::Concat,
        Function::Abs,
        Function::Ceiling,
        Function::Floor,
        Function::Sign,
        Function::Square,
        Function::Power,
        Function::Sqrt,
        Function::Exp,
        Function::AsNumber,
    ];

    /// The canonical (printed) name.
    pub fn name(self) -> &'static str {
        match self {
            Function::IsDefined => "IS_DEFINED",
            Function::IsNull => "IS_NULL",
            Function::IsBool => "IS_BOOL",
            Function::IsNumber => "IS_NUMBER",
            Function::IsString => "IS_STRING",
            Function::IsObject => "IS_OBJECT",
            Function::IsArray => "IS_ARRAY",
            Function::IsPrimitive => "IS_PRIMITIVE",
            Function::StartsWith => "STARTSWITH",
            Function::EndsWith => "ENDSWITH",
            Function::Contains => "CONTAINS",
            Function::Lower => "LOWER",
            Function::Upper => "UPPER",
            Function::Length => "LENGTH",
            Function::Substring => "SUBSTRING",
            Function::IndexOf => "INDEX_OF",
            Function::Concat => "CONCAT",
            Function::Abs => "ABS",
            Function::Ceiling => "CEILING",
            Function::Floor => "FLOOR",
            Function::Sign => "SIGN",
            Function::Square => "SQUARE",
            Function::Power => "POWER",
            Function::Sqrt => "SQRT",
            Function::Exp => "EXP",
            Function::AsNumber => "AS_NUMBER",
        }
    }

    /// Looks a name up case-insensitively. `STARTS_WITH` and `ENDS_WITH` are the spellings of the
    /// 2018 routing documentation; the current page spells `STARTSWITH` and `ENDSWITH`.
    pub fn from_name(name: &str) -> Option<Function> {
        if name.eq_ignore_ascii_case("STARTS_WITH") {
            return Some(Function::StartsWith);
        }
        if name.eq_ignore_ascii_case("ENDS_WITH") {
            return Some(Function::EndsWith);
        }
        Function::ALL
            .into_iter()
            .find(|function| function.name().eq_ignore_ascii_case(name))
    }

    /// The fewest and the most arguments (`None`: no upper bound).
    pub fn arity(self) -> (usize, Option<usize>) {
        match self {
            Function::StartsWith
            | Function::EndsWith
            | Function::Contains
            | Function::IndexOf
            | Function::Power => (2, Some(2)),
            Function::Substring => (2, Some(3)),
            Function::Concat => (2, None),
            _ => (1, Some(1)),
        }
    }

    pub fn origin(self) -> FunctionOrigin {
        match self {
            Function::IsDefined => FunctionOrigin::AzureTwinQuery,
            _ => FunctionOrigin::AzureRouting,
        }
    }
}

/// The aggregate functions of the SELECT list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateFunction {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl AggregateFunction {
    pub fn name(self) -> &'static str {
        match self {
            AggregateFunction::Count => "COUNT",
            AggregateFunction::Sum => "SUM",
            AggregateFunction::Avg => "AVG",
            AggregateFunction::Min => "MIN",
            AggregateFunction::Max => "MAX",
        }
    }

    pub fn from_name(name: &str) -> Option<AggregateFunction> {
        [
            AggregateFunction::Count,
            AggregateFunction::Sum,
            AggregateFunction::Avg,
            AggregateFunction::Min,
            AggregateFunction::Max,
        ]
        .into_iter()
        .find(|function| function.name().eq_ignore_ascii_case(name))
    }
}

impl Expr {
    /// Whether an aggregate appears anywhere in this expression.
    pub fn contains_aggregate(&self) -> bool {
        match self {
            Expr::Aggregate { .. } => true,
            Expr::Literal(_) | Expr::Path(_) => false,
            Expr::Not(operand) | Expr::Negate(operand) => operand.contains_aggregate(),
            Expr::And(operands) | Expr::Or(operands) => {
                operands.iter().any(Expr::contains_aggregate)
            }
            Expr::Compare { left, right, .. } | Expr::Arithmetic { left, right, .. } => {
                left.contains_aggregate() || right.contains_aggregate()
            }
            Expr::In { operand, .. } => operand.contains_aggregate(),
            Expr::Call { arguments, .. } => arguments.iter().any(Expr::contains_aggregate),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Display: canonical text. Compound expressions are fully parenthesised so that printing never
// has to reason about precedence.

impl Display for Query {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT ")?;
        if let Some(top) = self.top {
            write!(f, "TOP {top} ")?;
        }
        match &self.select {
            Select::All => f.write_str("*")?,
            Select::Items(items) => {
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", item.expr)?;
                    if let Some(alias) = &item.alias {
                        f.write_str(" AS ")?;
                        write_name(f, alias, false)?;
                    }
                }
            }
        }
        write!(f, " FROM {}", self.source.collection_name())?;
        if let Some(condition) = &self.condition {
            write!(f, " WHERE {condition}")?;
        }
        if !self.group_by.is_empty() {
            f.write_str(" GROUP BY ")?;
            write_list(f, &self.group_by)?;
        }
        if !self.order_by.is_empty() {
            f.write_str(" ORDER BY ")?;
            for (index, key) in self.order_by.iter().enumerate() {
                if index > 0 {
                    f.write_str(", ")?;
                }
                match &key.target {
                    OrderTarget::Column(name) => write_name(f, name, true)?,
                    OrderTarget::Expr(expr) => write!(f, "{expr}")?,
                }
                f.write_str(match key.direction {
                    Direction::Ascending => " ASC",
                    Direction::Descending => " DESC",
                })?;
            }
        }
        Ok(())
    }
}

fn write_list(f: &mut Formatter<'_>, exprs: &[Expr]) -> fmt::Result {
    for (index, expr) in exprs.iter().enumerate() {
        if index > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{expr}")?;
    }
    Ok(())
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(literal) => write!(f, "{literal}"),
            Expr::Path(path) => write!(f, "{path}"),
            Expr::Not(operand) => write!(f, "(NOT {operand})"),
            Expr::Negate(operand) => write!(f, "(- {operand})"),
            Expr::And(operands) | Expr::Or(operands) => {
                let keyword = if matches!(self, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                f.write_char('(')?;
                for (index, operand) in operands.iter().enumerate() {
                    if index > 0 {
                        f.write_str(keyword)?;
                    }
                    write!(f, "{operand}")?;
                }
                f.write_char(')')
            }
            Expr::Compare { op, left, right } => {
                write!(f, "({left} {} {right})", op.symbol())
            }
            Expr::Arithmetic { op, left, right } => {
                write!(f, "({left} {} {right})", op.symbol())
            }
            Expr::In {
                operand,
                values,
                negated,
            } => {
                let keyword = if *negated { "NIN" } else { "IN" };
                write!(f, "({operand} {keyword} ")?;
                write_array(f, values)?;
                f.write_char(')')
            }
            Expr::Call {
                function,
                arguments,
            } => {
                write!(f, "{}(", function.name())?;
                write_list(f, arguments)?;
                f.write_char(')')
            }
            Expr::Aggregate { function, argument } => match argument {
                Some(argument) => write!(f, "{}({argument})", function.name()),
                None => write!(f, "{}()", function.name()),
            },
        }
    }
}

impl Display for Path {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Name(name) => {
                    if index > 0 {
                        f.write_char('.')?;
                    }
                    write_name(f, name, index == 0)?;
                }
                Segment::Index(position) => write!(f, "[{position}]")?,
            }
        }
        Ok(())
    }
}

/// Writes a property name or alias, as `[[name]]` when it would not read back as the same name.
/// `first` is for the first segment of a path, where `devices` would be taken for the alias.
fn write_name(f: &mut Formatter<'_>, name: &str, first: bool) -> fmt::Result {
    let mut characters = name.chars();
    let plain = characters.next().is_some_and(is_identifier_start)
        && characters.all(is_identifier_continue)
        && Keyword::from_word(name).is_none()
        && !(first && name.eq_ignore_ascii_case("devices"));
    if plain {
        f.write_str(name)
    } else {
        write!(f, "[[{name}]]")
    }
}

impl Display for Literal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Undefined => f.write_str("undefined"),
            Literal::Null => f.write_str("null"),
            Literal::Bool(value) => write!(f, "{value}"),
            Literal::Number(number) => write!(f, "{number}"),
            Literal::String(value) => write_string(f, value),
            Literal::Array(values) => write_array(f, values),
        }
    }
}

impl Display for Number {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(value) => write!(f, "{value}"),
            // `{:e}` prints the shortest digits that read back to the same f64, and always with an
            // exponent, so that the text is read back as a float (`3e0`), never as an integer.
            Number::Float(value) => write!(f, "{value:e}"),
        }
    }
}

fn write_array(f: &mut Formatter<'_>, values: &[Literal]) -> fmt::Result {
    f.write_char('[')?;
    // `[[` would open a quoted name.
    if matches!(values.first(), Some(Literal::Array(_))) {
        f.write_char(' ')?;
    }
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{value}")?;
    }
    f.write_char(']')
}

fn write_string(f: &mut Formatter<'_>, value: &str) -> fmt::Result {
    f.write_char('\'')?;
    for character in value.chars() {
        match character {
            '\'' => f.write_str("\\'")?,
            '\\' => f.write_str("\\\\")?,
            _ if character.is_control() => write!(f, "\\u{:04X}", u32::from(character))?,
            _ => f.write_char(character)?,
        }
    }
    f.write_char('\'')
}
