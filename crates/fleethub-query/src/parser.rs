//! Tokens to a checked [`Query`]: recursive descent, then the language's rules.
//!
//! Grammar (Azure's, from "IoT Hub query language for device and module twins, jobs, and message
//! routing"; fleethub's extensions marked *ext*):
//!
//! ```text
//! query       := SELECT [TOP n] select_list FROM collection [WHERE expr]
//!                [GROUP BY path {, path}*ext*] [ORDER BY key [ASC|DESC] {, key}]*ext*
//! select_list := '*' | item {, item}          item := expr [AS name]
//! collection  := devices | devices.modules | devices.jobs
//! expr        := or;  or := and {OR and};  and := not {AND not};  not := NOT not | comparison
//! comparison  := additive [cmp additive | (IN | NIN | NOT IN*ext*) array]
//! additive    := term {(+|-) term};  term := unary {(*|/|%) unary};  unary := - unary | primary
//! primary     := constant | path | function '(' [expr {, expr}] ')' | '(' expr ')' | array
//! path        := name {'.' name | '[' integer ']'*ext*}     name := identifier | [[any text]]
//! ```
//!
//! Azure writes the SELECT list as `<projection_element> AS alias [, <projection_element> AS
//! alias]+` with `<projection_element> := attribute_name | <projection_element> '.'
//! attribute_name | <aggregate>`, yet its own examples omit AS (`SELECT DeviceId,
//! LastActivityTime FROM devices`); AS is optional here. A SELECT item may also be any expression
//! (*ext*). The FROM clause is found before the SELECT list is parsed, so that paths are resolved
//! (and checked against the collection) as they are read.
//!
//! A route condition is an `expr` alone, its paths resolved by `crate::routing`; in it, words
//! joined by `-` without spaces are one name (`$dt-subject`).

use crate::ast::{
    AggregateFunction, ArithmeticOp, CompareOp, Direction, Expr, Function, Literal, Number,
    OrderKey, OrderTarget, Query, Select, SelectItem, Source,
};
use crate::error::QueryError;
use crate::lexer::{NumberToken, Token, TokenKind, tokenize};
use crate::schema::{RawSegment, resolve_path};

/// How many levels an expression tree may have (operators, function calls, arrays; parentheses
/// add none). Keeps the recursive evaluator far from the stack limit of a 2 MiB thread.
pub const MAX_EXPRESSION_DEPTH: u32 = 64;

/// How deeply the parser may recurse (each parenthesis, NOT, unary minus, argument list and array
/// is one level). Printing a tree of the maximum height parenthesises every node, which takes up
/// to two levels per node; the limit leaves room for that, so that printed queries always parse.
const MAX_RECURSION: u32 = 2 * MAX_EXPRESSION_DEPTH + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    Select,
    Top,
    As,
    From,
    Where,
    Group,
    By,
    Order,
    Asc,
    Desc,
    And,
    Or,
    Not,
    In,
    Nin,
    Null,
    True,
    False,
    Undefined,
}

impl Keyword {
    const ALL: [Keyword; 19] = [
        Keyword::Select,
        Keyword::Top,
        Keyword::As,
        Keyword::From,
        Keyword::Where,
        Keyword::Group,
        Keyword::By,
        Keyword::Order,
        Keyword::Asc,
        Keyword::Desc,
        Keyword::And,
        Keyword::Or,
        Keyword::Not,
        Keyword::In,
        Keyword::Nin,
        Keyword::Null,
        Keyword::True,
        Keyword::False,
        Keyword::Undefined,
    ];

    pub(crate) fn text(self) -> &'static str {
        match self {
            Keyword::Select => "SELECT",
            Keyword::Top => "TOP",
            Keyword::As => "AS",
            Keyword::From => "FROM",
            Keyword::Where => "WHERE",
            Keyword::Group => "GROUP",
            Keyword::By => "BY",
            Keyword::Order => "ORDER",
            Keyword::Asc => "ASC",
            Keyword::Desc => "DESC",
            Keyword::And => "AND",
            Keyword::Or => "OR",
            Keyword::Not => "NOT",
            Keyword::In => "IN",
            Keyword::Nin => "NIN",
            Keyword::Null => "NULL",
            Keyword::True => "TRUE",
            Keyword::False => "FALSE",
            Keyword::Undefined => "UNDEFINED",
        }
    }

    /// Keywords are case-insensitive (`select`, `Select`, `SELECT`).
    pub(crate) fn from_word(word: &str) -> Option<Keyword> {
        Keyword::ALL
            .into_iter()
            .find(|keyword| keyword.text().eq_ignore_ascii_case(word))
    }
}

/// The clause being parsed: decides where aggregates may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clause {
    Select,
    Where,
    GroupBy,
    OrderBy,
    Condition,
}

impl Clause {
    fn name(self) -> &'static str {
        match self {
            Clause::Select => "SELECT",
            Clause::Where => "WHERE",
            Clause::GroupBy => "GROUP BY",
            Clause::OrderBy => "ORDER BY",
            Clause::Condition => "a condition",
        }
    }
}

type Parsed = (Expr, u32);

/// Parses a whole query (the caller has checked the length).
pub(crate) fn parse_query(text: &str) -> Result<Query, QueryError> {
    let tokens = tokenize(text)?;
    let source = find_source(&tokens).unwrap_or(Source::Devices);
    let mut parser = Parser::new(text, tokens, source, Clause::Select);
    parser.query()
}

/// Parses a bare condition (a job's `queryCondition`, a configuration's target condition, a route
/// condition) as the WHERE of `SELECT * FROM <source>`.
pub(crate) fn parse_condition(text: &str, source: Source) -> Result<Query, QueryError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser::new(text, tokens, source, Clause::Condition);
    let (condition, _) = parser.expression()?;
    if parser.current().kind != TokenKind::End {
        return Err(parser.unexpected("AND, OR or end of condition"));
    }
    Ok(Query {
        source,
        select: Select::All,
        condition: Some(condition),
        group_by: Vec::new(),
        order_by: Vec::new(),
        top: None,
    })
}

/// Parses a route condition: the grammar of a WHERE, with paths resolved as routing reads them
/// (`crate::routing`) and hyphenated names (`$dt-subject`, `iothub-message-schema`) read whole.
pub(crate) fn parse_route_condition(text: &str) -> Result<Expr, QueryError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser::new(text, tokens, Source::Devices, Clause::Condition);
    parser.route = true;
    let (condition, _) = parser.expression()?;
    if parser.current().kind != TokenKind::End {
        return Err(parser.unexpected("AND, OR or end of condition"));
    }
    Ok(condition)
}

/// The collection named after the first FROM keyword (one not after a `.`, where it would be a
/// property name). `None` when it is missing or malformed: the parse reports that in its place.
fn find_source(tokens: &[Token]) -> Option<Source> {
    let from = tokens.iter().enumerate().position(|(index, token)| {
        is_keyword(token, Keyword::From) && (index == 0 || tokens[index - 1].kind != TokenKind::Dot)
    })?;
    let word = |offset: usize, expected: &str| matches!(tokens.get(from + offset), Some(Token { kind: TokenKind::Word(word), .. }) if word.eq_ignore_ascii_case(expected));
    if !word(1, "devices") {
        return None;
    }
    if tokens.get(from + 2).map(|token| &token.kind) == Some(&TokenKind::Dot) {
        if word(3, "modules") {
            return Some(Source::Modules);
        }
        if word(3, "jobs") {
            return Some(Source::Jobs);
        }
        return None;
    }
    Some(Source::Devices)
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(&token.kind, TokenKind::Word(word) if Keyword::from_word(word) == Some(keyword))
}

/// Where things were written, for the checks that run after the whole query is read.
#[derive(Default)]
struct Positions {
    star: Option<usize>,
    items: Vec<usize>,
    group: Option<usize>,
    order_keys: Vec<usize>,
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    index: usize,
    source: Source,
    /// Paths are a route condition's (`$body`, `$twin`, system and application properties) rather
    /// than the collection's.
    route: bool,
    clause: Clause,
    depth: u32,
    /// Aggregates met in the current SELECT item or ORDER BY key: (position, function).
    aggregates: Vec<(usize, AggregateFunction)>,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str, tokens: Vec<Token>, source: Source, clause: Clause) -> Self {
        Parser {
            text,
            tokens,
            index: 0,
            source,
            route: false,
            clause,
            depth: 0,
            aggregates: Vec::new(),
        }
    }

    fn current(&self) -> &Token {
        // `tokenize` always ends with `End`, and `advance` never moves past it.
        &self.tokens[self.index.min(self.tokens.len() - 1)]
    }

    fn peek(&self, offset: usize) -> &Token {
        &self.tokens[(self.index + offset).min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.current().clone();
        if token.kind != TokenKind::End {
            self.index += 1;
        }
        token
    }

    fn at_keyword(&self, keyword: Keyword) -> bool {
        is_keyword(self.current(), keyword)
    }

    fn eat_keyword(&mut self, keyword: Keyword) -> bool {
        if self.at_keyword(keyword) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn syntax_error(&self, position: usize, message: impl Into<String>) -> QueryError {
        QueryError::syntax(self.text, position, message)
    }

    fn invalid(&self, position: usize, message: impl Into<String>) -> QueryError {
        QueryError::invalid(self.text, position, message)
    }

    /// "expected {what}, found {current token}" at the current token.
    fn unexpected(&self, what: &str) -> QueryError {
        let token = self.current();
        self.syntax_error(
            token.position,
            format!("expected {what}, found {}", token.describe()),
        )
    }

    /// "expected an expression after {previous token}, found {current token}".
    fn expected_expression(&self) -> QueryError {
        match self.index.checked_sub(1).map(|index| &self.tokens[index]) {
            Some(previous) => {
                self.unexpected(&format!("an expression after {}", previous.quoted_text()))
            }
            None => self.unexpected("an expression"),
        }
    }

    fn too_deep(&self) -> QueryError {
        self.invalid(
            self.current().position,
            format!("expression is nested too deeply (more than {MAX_EXPRESSION_DEPTH} levels)"),
        )
    }

    fn enter(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_RECURSION {
            return Err(self.too_deep());
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn check_height(&self, height: u32, position: usize) -> Result<u32, QueryError> {
        if height > MAX_EXPRESSION_DEPTH {
            return Err(self.invalid(
                position,
                format!(
                    "expression is nested too deeply (more than {MAX_EXPRESSION_DEPTH} levels)"
                ),
            ));
        }
        Ok(height)
    }

    // -----------------------------------------------------------------------------------------
    // Clauses

    fn query(&mut self) -> Result<Query, QueryError> {
        if !self.eat_keyword(Keyword::Select) {
            return Err(self.unexpected("SELECT"));
        }
        let mut positions = Positions::default();
        let top = if self.eat_keyword(Keyword::Top) {
            match self.current().kind {
                TokenKind::Number(NumberToken::Integer(value)) => {
                    self.advance();
                    Some(value)
                }
                _ => return Err(self.unexpected("a whole number after TOP")),
            }
        } else {
            None
        };
        let select = self.select_list(&mut positions)?;
        if !self.eat_keyword(Keyword::From) {
            return Err(match select {
                Select::All => self.unexpected("FROM after SELECT *"),
                Select::Items(_) => self.unexpected("',' or FROM after a SELECT item"),
            });
        }
        let source = self.collection()?;
        if source != self.source {
            // `find_source` reads the same tokens; it cannot disagree with a successful parse.
            return Err(self.invalid(
                self.current().position,
                "the collection after FROM could not be determined",
            ));
        }
        let mut expected_next = "WHERE, GROUP BY, ORDER BY or end of query";
        let condition = if self.eat_keyword(Keyword::Where) {
            self.clause = Clause::Where;
            expected_next = "GROUP BY, ORDER BY or end of query";
            Some(self.expression()?.0)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.at_keyword(Keyword::Group) {
            positions.group = Some(self.current().position);
            self.advance();
            if !self.eat_keyword(Keyword::By) {
                return Err(self.unexpected("BY after GROUP"));
            }
            self.clause = Clause::GroupBy;
            loop {
                let position = self.current().position;
                let (expr, _) = self.expression()?;
                if !matches!(expr, Expr::Path(_)) {
                    return Err(self.invalid(
                        position,
                        format!("GROUP BY accepts only property paths, found '{expr}'"),
                    ));
                }
                group_by.push(expr);
                if !matches!(self.current().kind, TokenKind::Comma) {
                    break;
                }
                self.advance();
            }
            expected_next = "',', ORDER BY or end of query";
        }
        let mut order_by = Vec::new();
        if self.at_keyword(Keyword::Order) {
            self.advance();
            if !self.eat_keyword(Keyword::By) {
                return Err(self.unexpected("BY after ORDER"));
            }
            self.clause = Clause::OrderBy;
            loop {
                positions.order_keys.push(self.current().position);
                order_by.push(self.order_key(&select)?);
                if !matches!(self.current().kind, TokenKind::Comma) {
                    break;
                }
                self.advance();
            }
            expected_next = "',' or end of query";
        }
        if self.current().kind != TokenKind::End {
            return Err(self.unexpected(expected_next));
        }
        let query = Query {
            source,
            select,
            condition,
            group_by,
            order_by,
            top,
        };
        self.check_rules(&query, &positions)?;
        Ok(query)
    }

    fn select_list(&mut self, positions: &mut Positions) -> Result<Select, QueryError> {
        if self.current().kind == TokenKind::Star {
            positions.star = Some(self.current().position);
            self.advance();
            return Ok(Select::All);
        }
        if self.at_keyword(Keyword::From) || self.current().kind == TokenKind::End {
            return Err(self.unexpected("'*' or a list of properties to select"));
        }
        self.clause = Clause::Select;
        let mut items = Vec::new();
        loop {
            positions.items.push(self.current().position);
            self.aggregates.clear();
            let (expr, _) = self.expression()?;
            self.check_whole_aggregate(&expr)?;
            let alias = if self.eat_keyword(Keyword::As) {
                Some(self.alias_name()?)
            } else {
                None
            };
            items.push(SelectItem { expr, alias });
            if self.current().kind != TokenKind::Comma {
                break;
            }
            self.advance();
        }
        Ok(Select::Items(items))
    }

    /// An aggregate may only be a whole SELECT item (or ORDER BY key), never nested.
    fn check_whole_aggregate(&self, expr: &Expr) -> Result<(), QueryError> {
        let whole = matches!(expr, Expr::Aggregate { .. });
        let misplaced = if whole {
            self.aggregates.get(1)
        } else {
            self.aggregates.first()
        };
        match misplaced {
            None => Ok(()),
            Some((position, function)) if whole => Err(self.invalid(
                *position,
                format!(
                    "aggregate function {} cannot be nested in another aggregate",
                    function.name()
                ),
            )),
            Some((position, function)) => Err(self.invalid(
                *position,
                format!(
                    "aggregate function {} must be a whole item of the {} list, not part of an expression",
                    function.name(),
                    self.clause.name()
                ),
            )),
        }
    }

    fn alias_name(&mut self) -> Result<String, QueryError> {
        match &self.current().kind {
            TokenKind::Word(word) if Keyword::from_word(word).is_none() => {
                let word = word.clone();
                self.advance();
                Ok(word)
            }
            TokenKind::QuotedName(name) => {
                let name = name.clone();
                self.advance();
                Ok(name)
            }
            _ => Err(self.unexpected("a name after AS")),
        }
    }

    fn collection(&mut self) -> Result<Source, QueryError> {
        match &self.current().kind {
            TokenKind::Word(word) if word.eq_ignore_ascii_case("devices") => {
                self.advance();
            }
            _ => {
                return Err(self.unexpected("devices, devices.modules or devices.jobs after FROM"));
            }
        }
        if self.current().kind != TokenKind::Dot {
            return Ok(Source::Devices);
        }
        self.advance();
        let source = match &self.current().kind {
            TokenKind::Word(word) if word.eq_ignore_ascii_case("modules") => Source::Modules,
            TokenKind::Word(word) if word.eq_ignore_ascii_case("jobs") => Source::Jobs,
            _ => return Err(self.unexpected("'modules' or 'jobs' after 'devices.'")),
        };
        self.advance();
        Ok(source)
    }

    fn order_key(&mut self, select: &Select) -> Result<OrderKey, QueryError> {
        // A bare name that is an alias of the SELECT list names that column. Checked on the text
        // as written: aliases are case-sensitive, while a path would be canonicalised.
        let bare_name = match &self.current().kind {
            TokenKind::Word(word) if Keyword::from_word(word).is_none() => Some(word.clone()),
            TokenKind::QuotedName(name) => Some(name.clone()),
            _ => None,
        };
        let ends_key = {
            let next = self.peek(1);
            matches!(next.kind, TokenKind::Comma | TokenKind::End)
                || is_keyword(next, Keyword::Asc)
                || is_keyword(next, Keyword::Desc)
        };
        let alias_column = match (bare_name, select) {
            (Some(name), Select::Items(items)) if ends_key => items
                .iter()
                .any(|item| item.alias.as_deref() == Some(name.as_str()))
                .then_some(name),
            _ => None,
        };
        let target = match alias_column {
            Some(name) => {
                self.advance();
                OrderTarget::Column(name)
            }
            None => {
                self.aggregates.clear();
                let (expr, _) = self.expression()?;
                self.check_whole_aggregate(&expr)?;
                OrderTarget::Expr(expr)
            }
        };
        let direction = if self.eat_keyword(Keyword::Desc) {
            Direction::Descending
        } else {
            self.eat_keyword(Keyword::Asc);
            Direction::Ascending
        };
        Ok(OrderKey { target, direction })
    }

    /// The rules checked once the whole query is read.
    fn check_rules(&self, query: &Query, positions: &Positions) -> Result<(), QueryError> {
        let first_item = positions.items.first().copied().unwrap_or(0);
        if query.source == Source::Jobs {
            // "Currently, queries on devices.jobs don't support: Projections, therefore only
            // `SELECT *` is possible. [...] Aggregations, such as count, avg, and group by."
            if let Select::Items(_) = query.select {
                return Err(self.invalid(
                    first_item,
                    "queries FROM devices.jobs support only SELECT * (Azure supports no projections or aggregates on devices.jobs)",
                ));
            }
            if let Some(position) = positions.group {
                return Err(self.invalid(position, "GROUP BY is not supported on devices.jobs"));
            }
        }
        let items: &[SelectItem] = match &query.select {
            Select::All => &[],
            Select::Items(items) => items,
        };
        let names = crate::column_names(items);
        for (index, name) in names.iter().enumerate() {
            if names[..index].contains(name) {
                let position = positions.items.get(index).copied().unwrap_or(first_item);
                return Err(self.invalid(
                    position,
                    format!(
                        "duplicate column name '{name}' in the SELECT list; rename one with AS"
                    ),
                ));
            }
        }
        if query.is_aggregate() {
            if let Some(position) = positions.star {
                return Err(self.invalid(
                    position,
                    "SELECT * cannot be used with GROUP BY; select the grouped properties and aggregates",
                ));
            }
            for (index, item) in items.iter().enumerate() {
                if matches!(item.expr, Expr::Aggregate { .. })
                    || query.group_by.contains(&item.expr)
                {
                    continue;
                }
                let position = positions.items.get(index).copied().unwrap_or(first_item);
                let message = if query.group_by.is_empty() {
                    format!(
                        "'{}' must be inside an aggregate function: a query with aggregates and no GROUP BY returns one row",
                        item.expr
                    )
                } else {
                    format!(
                        "'{}' must be a GROUP BY property or inside an aggregate function",
                        item.expr
                    )
                };
                return Err(self.invalid(position, message));
            }
        }
        for (index, key) in query.order_by.iter().enumerate() {
            let OrderTarget::Expr(expr) = &key.target else {
                continue;
            };
            let position = positions.order_keys.get(index).copied().unwrap_or(0);
            if query.is_aggregate() {
                let selected = items.iter().any(|item| &item.expr == expr);
                if !selected && !query.group_by.contains(expr) {
                    return Err(self.invalid(
                        position,
                        format!(
                            "ORDER BY '{expr}': a query with aggregates or GROUP BY can be ordered only by an alias of its SELECT list, a GROUP BY property or an aggregate of its SELECT list"
                        ),
                    ));
                }
            } else if let Some(function) = first_aggregate(expr) {
                return Err(self.invalid(
                    position,
                    format!(
                        "aggregate function {} in ORDER BY needs the same aggregate in the SELECT list",
                        function.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Expressions

    fn expression(&mut self) -> Result<Parsed, QueryError> {
        self.enter()?;
        let result = self.or();
        self.leave();
        result
    }

    fn or(&mut self) -> Result<Parsed, QueryError> {
        self.logical(Keyword::Or)
    }

    /// `a OR b OR c` (or AND) as one n-ary node, so that long lists of conditions stay shallow.
    fn logical(&mut self, keyword: Keyword) -> Result<Parsed, QueryError> {
        let operand = |parser: &mut Self| match keyword {
            Keyword::Or => parser.logical(Keyword::And),
            _ => parser.not(),
        };
        let (first, first_height) = operand(self)?;
        if !self.at_keyword(keyword) {
            return Ok((first, first_height));
        }
        let mut operands = vec![first];
        let mut height = first_height + 1;
        while self.at_keyword(keyword) {
            let position = self.current().position;
            self.advance();
            let (next, next_height) = operand(self)?;
            height = self.check_height(height.max(next_height + 1), position)?;
            operands.push(next);
        }
        let expr = match keyword {
            Keyword::Or => Expr::Or(operands),
            _ => Expr::And(operands),
        };
        Ok((expr, height))
    }

    fn not(&mut self) -> Result<Parsed, QueryError> {
        if !self.at_keyword(Keyword::Not) {
            return self.comparison();
        }
        let position = self.current().position;
        self.advance();
        self.enter()?;
        let operand = self.not();
        self.leave();
        let (operand, height) = operand?;
        let height = self.check_height(height + 1, position)?;
        Ok((Expr::Not(Box::new(operand)), height))
    }

    fn comparison(&mut self) -> Result<Parsed, QueryError> {
        let (left, left_height) = self.additive()?;
        let op = match &self.current().kind {
            TokenKind::Equal => Some(CompareOp::Equal),
            TokenKind::NotEqual(_) => Some(CompareOp::NotEqual),
            TokenKind::Less => Some(CompareOp::Less),
            TokenKind::LessOrEqual => Some(CompareOp::LessOrEqual),
            TokenKind::Greater => Some(CompareOp::Greater),
            TokenKind::GreaterOrEqual => Some(CompareOp::GreaterOrEqual),
            _ => None,
        };
        if let Some(op) = op {
            let position = self.current().position;
            self.advance();
            let (right, right_height) = self.additive()?;
            let height = self.check_height(left_height.max(right_height) + 1, position)?;
            if is_comparison(&self.current().kind) {
                return Err(self.syntax_error(
                    self.current().position,
                    "comparisons cannot be chained; combine them with AND",
                ));
            }
            return Ok((
                Expr::Compare {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                },
                height,
            ));
        }
        let position = self.current().position;
        let negated = if self.eat_keyword(Keyword::In) {
            false
        } else if self.eat_keyword(Keyword::Nin) {
            true
        } else if self.at_keyword(Keyword::Not) && is_keyword(self.peek(1), Keyword::In) {
            self.advance();
            self.advance();
            true
        } else {
            return Ok((left, left_height));
        };
        // "As a convenience, it is also possible to use array constants with the IN and NIN
        // (not in) operators."
        if self.current().kind != TokenKind::LeftBracket {
            let keyword = if negated { "NIN" } else { "IN" };
            let token = self.current();
            let hint = if matches!(token.kind, TokenKind::QuotedName(_)) {
                " ('[[' opens a quoted name; write '[ [' to start an array of arrays)"
            } else {
                ""
            };
            return Err(self.syntax_error(
                token.position,
                format!(
                    "expected an array constant such as ['a', 'b'] after {keyword}, found {}{hint}",
                    token.describe()
                ),
            ));
        }
        let (values, values_height) = self.array()?;
        let height = self.check_height(left_height.max(values_height) + 1, position)?;
        Ok((
            Expr::In {
                operand: Box::new(left),
                values,
                negated,
            },
            height,
        ))
    }

    fn additive(&mut self) -> Result<Parsed, QueryError> {
        let (mut left, mut height) = self.multiplicative()?;
        loop {
            let op = match self.current().kind {
                TokenKind::Plus => ArithmeticOp::Add,
                TokenKind::Minus => ArithmeticOp::Subtract,
                _ => return Ok((left, height)),
            };
            let position = self.current().position;
            self.advance();
            let (right, right_height) = self.multiplicative()?;
            height = self.check_height(height.max(right_height) + 1, position)?;
            left = Expr::Arithmetic {
                op,
                left: Box::new(left),
                right: Box::new(right),
            };
        }
    }

    fn multiplicative(&mut self) -> Result<Parsed, QueryError> {
        let (mut left, mut height) = self.unary()?;
        loop {
            let op = match self.current().kind {
                TokenKind::Star => ArithmeticOp::Multiply,
                TokenKind::Slash => ArithmeticOp::Divide,
                TokenKind::Percent => ArithmeticOp::Remainder,
                _ => return Ok((left, height)),
            };
            let position = self.current().position;
            self.advance();
            let (right, right_height) = self.unary()?;
            height = self.check_height(height.max(right_height) + 1, position)?;
            left = Expr::Arithmetic {
                op,
                left: Box::new(left),
                right: Box::new(right),
            };
        }
    }

    fn unary(&mut self) -> Result<Parsed, QueryError> {
        if self.current().kind != TokenKind::Minus {
            return self.primary();
        }
        let position = self.current().position;
        self.advance();
        if let TokenKind::Number(number) = self.current().kind {
            self.advance();
            return Ok((Expr::Literal(Literal::Number(negative_number(number))), 1));
        }
        self.enter()?;
        let operand = self.unary();
        self.leave();
        let (operand, height) = operand?;
        if let Expr::Literal(Literal::Number(number)) = operand {
            return Ok((Expr::Literal(Literal::Number(negate(number))), height));
        }
        let height = self.check_height(height + 1, position)?;
        Ok((Expr::Negate(Box::new(operand)), height))
    }

    fn primary(&mut self) -> Result<Parsed, QueryError> {
        let token = self.current().clone();
        match token.kind {
            TokenKind::Number(number) => {
                self.advance();
                Ok((Expr::Literal(Literal::Number(positive_number(number))), 1))
            }
            TokenKind::String(value) => {
                self.advance();
                Ok((Expr::Literal(Literal::String(value)), 1))
            }
            TokenKind::LeftBracket => {
                let (values, height) = self.array()?;
                Ok((Expr::Literal(Literal::Array(values)), height))
            }
            TokenKind::LeftParen => {
                self.advance();
                let (expr, height) = self.expression()?;
                if self.current().kind != TokenKind::RightParen {
                    return Err(self.unexpected(&format!(
                        "')' to close the '(' at position {}",
                        token.position
                    )));
                }
                self.advance();
                Ok((expr, height))
            }
            TokenKind::QuotedName(_) => self.path(),
            TokenKind::Word(word) => match Keyword::from_word(&word) {
                Some(Keyword::Null) => self.literal(Literal::Null),
                Some(Keyword::True) => self.literal(Literal::Bool(true)),
                Some(Keyword::False) => self.literal(Literal::Bool(false)),
                Some(Keyword::Undefined) => self.literal(Literal::Undefined),
                Some(_) => Err(self.expected_expression()),
                None if self.peek(1).kind == TokenKind::LeftParen => self.call(&word),
                None => self.path(),
            },
            _ => Err(self.expected_expression()),
        }
    }

    fn literal(&mut self, literal: Literal) -> Result<Parsed, QueryError> {
        self.advance();
        Ok((Expr::Literal(literal), 1))
    }

    fn path(&mut self) -> Result<Parsed, QueryError> {
        let start = self.current().position;
        let mut raw = Vec::new();
        let first = self.advance();
        match first.kind {
            TokenKind::Word(text) => {
                let text = self.hyphenated(text, first.position);
                raw.push(RawSegment::Name {
                    text,
                    quoted: false,
                });
            }
            TokenKind::QuotedName(text) => raw.push(RawSegment::Name { text, quoted: true }),
            _ => return Err(self.expected_expression()),
        }
        loop {
            match self.current().kind {
                TokenKind::Dot => {
                    self.advance();
                    // After a dot every word is a name, keywords included (`tags.order`); Azure
                    // itself rejects `tags.group` and asks for `tags.[[group]]`.
                    let token = self.current().clone();
                    match token.kind {
                        TokenKind::Word(text) => {
                            self.advance();
                            let text = self.hyphenated(text, token.position);
                            raw.push(RawSegment::Name {
                                text,
                                quoted: false,
                            });
                        }
                        TokenKind::QuotedName(text) => {
                            self.advance();
                            raw.push(RawSegment::Name { text, quoted: true });
                        }
                        _ => return Err(self.unexpected("a property name after '.'")),
                    }
                }
                TokenKind::LeftBracket => {
                    self.advance();
                    let TokenKind::Number(NumberToken::Integer(index)) = self.current().kind else {
                        return Err(self.unexpected("an array index (a whole number) after '['"));
                    };
                    self.advance();
                    if self.current().kind != TokenKind::RightBracket {
                        return Err(self.unexpected("']' after the array index"));
                    }
                    self.advance();
                    raw.push(RawSegment::Index(index));
                }
                _ => break,
            }
        }
        let path = if self.route {
            crate::routing::resolve_route_path(&raw)
        } else {
            resolve_path(self.source, &raw)
        };
        let path = path.map_err(|message| self.invalid(start, message))?;
        Ok((Expr::Path(path), 1))
    }

    /// In a route condition, `word-word` without spaces is one name: Azure's system and
    /// application property names hold hyphens (`$dt-subject`, `iothub-message-schema`). A word
    /// starting with `$` after the hyphen is not joined (`$body.max-$body.min` subtracts), nor is a
    /// number (`$body.x-1` subtracts). `word` is the word just read, at character `position`.
    fn hyphenated(&mut self, mut word: String, position: usize) -> String {
        if !self.route {
            return word;
        }
        let mut end = position + word.chars().count();
        loop {
            let minus = self.current();
            let next = self.peek(1);
            let joined = match &next.kind {
                TokenKind::Word(next_word)
                    if minus.kind == TokenKind::Minus
                        && minus.position == end
                        && next.position == end + 1
                        && !next_word.starts_with('$') =>
                {
                    next_word.clone()
                }
                _ => return word,
            };
            end += 1 + joined.chars().count();
            word.push('-');
            word.push_str(&joined);
            self.advance();
            self.advance();
        }
    }

    fn call(&mut self, name: &str) -> Result<Parsed, QueryError> {
        let position = self.current().position;
        if let Some(function) = AggregateFunction::from_name(name) {
            return self.aggregate(function, position);
        }
        let Some(function) = Function::from_name(name) else {
            return Err(self.invalid(position, format!("unknown function '{name}'")));
        };
        self.advance(); // name
        self.advance(); // (
        let mut arguments = Vec::new();
        let mut height = 1;
        if self.current().kind != TokenKind::RightParen {
            loop {
                let (argument, argument_height) = self.expression()?;
                height = height.max(argument_height + 1);
                arguments.push(argument);
                if self.current().kind != TokenKind::Comma {
                    break;
                }
                self.advance();
            }
        }
        if self.current().kind != TokenKind::RightParen {
            return Err(self.unexpected(&format!(
                "',' or ')' in the arguments of {}",
                function.name()
            )));
        }
        self.advance();
        let (least, most) = function.arity();
        let count = arguments.len();
        if count < least || most.is_some_and(|most| count > most) {
            let expected = match (least, most) {
                (1, Some(1)) => "1 argument".to_owned(),
                (least, Some(most)) if least == most => format!("{least} arguments"),
                (least, Some(most)) => format!("{least} or {most} arguments"),
                (least, None) => format!("at least {least} arguments"),
            };
            return Err(self.invalid(
                position,
                format!("{} takes {expected}, found {count}", function.name()),
            ));
        }
        let height = self.check_height(height, position)?;
        Ok((
            Expr::Call {
                function,
                arguments,
            },
            height,
        ))
    }

    fn aggregate(
        &mut self,
        function: AggregateFunction,
        position: usize,
    ) -> Result<Parsed, QueryError> {
        if !matches!(self.clause, Clause::Select | Clause::OrderBy) {
            return Err(self.invalid(
                position,
                format!(
                    "aggregate function {} is not allowed in {}",
                    function.name(),
                    self.clause.name()
                ),
            ));
        }
        self.aggregates.push((position, function));
        self.advance(); // name
        self.advance(); // (
        if function == AggregateFunction::Count {
            if self.current().kind != TokenKind::RightParen {
                return Err(self.invalid(
                    self.current().position,
                    "COUNT takes no arguments; write COUNT()",
                ));
            }
            self.advance();
            return Ok((
                Expr::Aggregate {
                    function,
                    argument: None,
                },
                1,
            ));
        }
        if self.current().kind == TokenKind::RightParen {
            return Err(self.invalid(
                position,
                format!("{} takes 1 argument, found 0", function.name()),
            ));
        }
        let (argument, height) = self.expression()?;
        let mut count = 1;
        while self.current().kind == TokenKind::Comma {
            self.advance();
            self.expression()?;
            count += 1;
        }
        if count > 1 {
            return Err(self.invalid(
                position,
                format!("{} takes 1 argument, found {count}", function.name()),
            ));
        }
        if self.current().kind != TokenKind::RightParen {
            return Err(self.unexpected(&format!("')' after the argument of {}", function.name())));
        }
        self.advance();
        let height = self.check_height(height + 1, position)?;
        Ok((
            Expr::Aggregate {
                function,
                argument: Some(Box::new(argument)),
            },
            height,
        ))
    }

    /// An array constant at `[`: "`<array_constant> ::= '[' <constant> [, <constant>]+ ']'`".
    /// Azure's grammar asks for two or more elements, but its jobs accept
    /// `deviceId IN ['dev1']`; fleethub accepts any number, `[]` included.
    fn array(&mut self) -> Result<(Vec<Literal>, u32), QueryError> {
        self.enter()?;
        let result = self.array_elements();
        self.leave();
        result
    }

    fn array_elements(&mut self) -> Result<(Vec<Literal>, u32), QueryError> {
        self.advance(); // [
        let mut values = Vec::new();
        let mut height = 1;
        if self.current().kind == TokenKind::RightBracket {
            self.advance();
            return Ok((values, height));
        }
        loop {
            let (value, value_height) = self.constant()?;
            height = height.max(value_height + 1);
            values.push(value);
            match self.current().kind {
                TokenKind::Comma => {
                    self.advance();
                }
                TokenKind::RightBracket => {
                    self.advance();
                    return Ok((values, height));
                }
                _ => return Err(self.unexpected("',' or ']' in the array")),
            }
        }
    }

    fn constant(&mut self) -> Result<(Literal, u32), QueryError> {
        let token = self.current().clone();
        let literal = match token.kind {
            TokenKind::String(value) => Literal::String(value),
            TokenKind::Number(number) => Literal::Number(positive_number(number)),
            TokenKind::Minus => {
                if let TokenKind::Number(number) = self.peek(1).kind {
                    self.advance();
                    Literal::Number(negative_number(number))
                } else {
                    self.advance();
                    return Err(self.unexpected("a number after '-'"));
                }
            }
            TokenKind::LeftBracket => {
                let (values, height) = self.array()?;
                return Ok((Literal::Array(values), height));
            }
            TokenKind::Word(word) => match Keyword::from_word(&word) {
                Some(Keyword::Null) => Literal::Null,
                Some(Keyword::True) => Literal::Bool(true),
                Some(Keyword::False) => Literal::Bool(false),
                Some(Keyword::Undefined) => {
                    return Err(
                        self.invalid(token.position, "undefined cannot be an element of an array")
                    );
                }
                _ => return Err(self.expected_constant()),
            },
            TokenKind::QuotedName(_) => {
                return Err(self.syntax_error(
                    token.position,
                    format!(
                        "expected a constant in the array, found {} ('[[' opens a quoted name; write '[ [' to start an array of arrays)",
                        token.describe()
                    ),
                ));
            }
            _ => return Err(self.expected_constant()),
        };
        self.advance();
        Ok((literal, 1))
    }

    fn expected_constant(&self) -> QueryError {
        self.unexpected(
            "a constant (a string, a number, true, false, null or an array) in the array",
        )
    }
}

fn is_comparison(kind: &TokenKind) -> bool {
    matches!(
        kind,
        TokenKind::Equal
            | TokenKind::NotEqual(_)
            | TokenKind::Less
            | TokenKind::LessOrEqual
            | TokenKind::Greater
            | TokenKind::GreaterOrEqual
    )
}

fn first_aggregate(expr: &Expr) -> Option<AggregateFunction> {
    match expr {
        Expr::Aggregate { function, .. } => Some(*function),
        Expr::Literal(_) | Expr::Path(_) => None,
        Expr::Not(operand) | Expr::Negate(operand) => first_aggregate(operand),
        Expr::And(operands) | Expr::Or(operands) => operands.iter().find_map(first_aggregate),
        Expr::Compare { left, right, .. } | Expr::Arithmetic { left, right, .. } => {
            first_aggregate(left).or_else(|| first_aggregate(right))
        }
        Expr::In { operand, .. } => first_aggregate(operand),
        Expr::Call { arguments, .. } => arguments.iter().find_map(first_aggregate),
    }
}

fn positive_number(number: NumberToken) -> Number {
    match number {
        NumberToken::Integer(value) => match i64::try_from(value) {
            Ok(value) => Number::Int(value),
            Err(_) => Number::Float(value as f64),
        },
        NumberToken::Float(value) => Number::Float(value),
    }
}

/// `-` applied to a number as written: `-9223372036854775808` is `i64::MIN`, not a float.
fn negative_number(number: NumberToken) -> Number {
    match number {
        NumberToken::Integer(value) => match 0i64.checked_sub_unsigned(value) {
            Some(value) => Number::Int(value),
            None => Number::Float(-(value as f64)),
        },
        NumberToken::Float(value) => Number::Float(-value),
    }
}

pub(crate) fn negate(number: Number) -> Number {
    match number {
        Number::Int(value) => match value.checked_neg() {
            Some(value) => Number::Int(value),
            None => Number::Float(-(value as f64)),
        },
        Number::Float(value) => Number::Float(-value),
    }
}
