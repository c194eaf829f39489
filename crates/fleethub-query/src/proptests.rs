//! Property tests: any query prints as text that parses back to the same tree, and evaluating
//! it never panics (the fuzzing oracle, on generated trees).

use proptest::prelude::*;

use crate::ast::{
    AggregateFunction, ArithmeticOp, CompareOp, Direction, Expr, Function, Literal, Number,
    OrderKey, OrderTarget, Path, Query, Segment, Select, SelectItem, Source,
};

/// Names users give properties: identifiers, keywords, and text that needs `[[...]]`.
pub(crate) fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
        Just("group".to_owned()),
        Just("order".to_owned()),
        Just("select".to_owned()),
        Just("devices".to_owned()),
        Just("température".to_owned()),
        // Anything but `]]` and a trailing `]` (which `[[...]]` cannot hold), no `$` at the start
        // (those are system names).
        "[^\\]$][^\\]]{0,6}",
        "[a-z]{1,3}\\][a-z]{1,3}",
    ]
}

fn twin_path() -> impl Strategy<Value = Path> {
    let root = prop_oneof![
        Just(vec!["deviceId"]),
        Just(vec!["moduleId"]),
        Just(vec!["status"]),
        Just(vec!["version"]),
        Just(vec!["lastActivityTime"]),
        Just(vec!["capabilities", "iotEdge"]),
        Just(vec!["x509Thumbprint", "primaryThumbprint"]),
        Just(vec!["tags"]),
        Just(vec!["properties", "desired"]),
        Just(vec!["properties", "reported"]),
        Just(vec!["properties", "reported", "$metadata"]),
        Just(vec!["properties", "desired", "$version"]),
        Just(vec!["configurations"]),
        Just(vec!["foo"]),
        Just(vec!["$body"]),
    ];
    let tail = prop::collection::vec(
        prop_oneof![
            4 => user_name().prop_map(Segment::Name),
            1 => Just(Segment::Name("$lastUpdated".to_owned())),
            1 => (0u64..5).prop_map(Segment::Index),
        ],
        0..3,
    );
    (root, tail).prop_map(|(root, tail)| {
        let mut segments: Vec<Segment> = root
            .into_iter()
            .map(|name| Segment::Name(name.to_owned()))
            .collect();
        // Under `configurations`, the next name is an id and the one after it `status`.
        if segments.len() == 1 && segments[0] == Segment::Name("configurations".to_owned()) {
            segments.push(Segment::Name("cfg-1".to_owned()));
            segments.push(Segment::Name("status".to_owned()));
        } else {
            segments.extend(tail);
        }
        Path { segments }
    })
}

fn job_path() -> impl Strategy<Value = Path> {
    prop_oneof![
        Just(vec!["deviceId".to_owned()]),
        Just(vec!["jobId".to_owned()]),
        Just(vec!["status".to_owned()]),
        Just(vec!["createdDateTimeUtc".to_owned()]),
        Just(vec!["error".to_owned(), "code".to_owned()]),
        Just(vec![
            "outcome".to_owned(),
            "deviceMethodResponse".to_owned(),
            "status".to_owned()
        ]),
        user_name().prop_map(|name| vec![
            "outcome".to_owned(),
            "deviceMethodResponse".to_owned(),
            "payload".to_owned(),
            name
        ]),
    ]
    .prop_map(|names| Path {
        segments: names.into_iter().map(Segment::Name).collect(),
    })
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::Int),
        (-5i64..5).prop_map(Number::Int),
        any::<f64>()
            .prop_filter("finite", |value| value.is_finite())
            .prop_map(Number::Float),
        Just(Number::Float(-0.0)),
    ]
}

fn constant() -> impl Strategy<Value = Literal> {
    let scalar = prop_oneof![
        Just(Literal::Null),
        any::<bool>().prop_map(Literal::Bool),
        number().prop_map(Literal::Number),
        any::<String>().prop_map(Literal::String),
        "[a-z'\"\\\\]{0,4}".prop_map(Literal::String),
    ];
    scalar.prop_recursive(2, 8, 3, |inner| {
        prop::collection::vec(inner, 0..3).prop_map(Literal::Array)
    })
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![8 => constant(), 1 => Just(Literal::Undefined)]
}

fn compare_op() -> impl Strategy<Value = CompareOp> {
    prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Less),
        Just(CompareOp::LessOrEqual),
        Just(CompareOp::Greater),
        Just(CompareOp::GreaterOrEqual),
    ]
}

fn arithmetic_op() -> impl Strategy<Value = ArithmeticOp> {
    prop_oneof![
        Just(ArithmeticOp::Add),
        Just(ArithmeticOp::Subtract),
        Just(ArithmeticOp::Multiply),
        Just(ArithmeticOp::Divide),
        Just(ArithmeticOp::Remainder),
    ]
}

/// Expressions without aggregates, over `paths`, in canonical form (what the parser builds).
pub(crate) fn expression(paths: BoxedStrategy<Path>) -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        literal().prop_map(Expr::Literal),
        paths.prop_map(Expr::Path),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            inner
                .clone()
                .prop_map(|operand| Expr::Not(Box::new(operand))),
            inner
                .clone()
                .prop_filter("the parser folds -<number>", |operand| {
                    !matches!(operand, Expr::Literal(Literal::Number(_)))
                })
                .prop_map(|operand| Expr::Negate(Box::new(operand))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            (compare_op(), inner.clone(), inner.clone()).prop_map(|(op, left, right)| {
                Expr::Compare {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                }
            }),
            (arithmetic_op(), inner.clone(), inner.clone()).prop_map(|(op, left, right)| {
                Expr::Arithmetic {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                }
            }),
            (
                inner.clone(),
                prop::collection::vec(constant(), 0..4),
                any::<bool>()
            )
                .prop_map(|(operand, values, negated)| Expr::In {
                    operand: Box::new(operand),
                    values,
                    negated,
                }),
            (
                prop::sample::select(Function::ALL.to_vec()),
                prop::collection::vec(inner, 1..4)
            )
                .prop_map(|(function, mut arguments)| {
                    let (least, most) = function.arity();
                    while arguments.len() < least {
                        arguments.push(Expr::Literal(Literal::Null));
                    }
                    arguments.truncate(most.unwrap_or(usize::MAX));
                    Expr::Call {
                        function,
                        arguments,
                    }
                }),
        ]
    })
}

fn aggregate(paths: BoxedStrategy<Path>) -> impl Strategy<Value = Expr> {
    let function = prop_oneof![
        Just(AggregateFunction::Count),
        Just(AggregateFunction::Sum),
        Just(AggregateFunction::Avg),
        Just(AggregateFunction::Min),
        Just(AggregateFunction::Max),
    ];
    (function, expression(paths)).prop_map(|(function, argument)| Expr::Aggregate {
        function,
        argument: (function != AggregateFunction::Count).then(|| Box::new(argument)),
    })
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Ascending), Just(Direction::Descending)]
}

fn with_aliases(exprs: Vec<Expr>) -> Vec<SelectItem> {
    exprs
        .into_iter()
        .enumerate()
        .map(|(index, expr)| SelectItem {
            expr,
            alias: Some(format!("c{index}")),
        })
        .collect()
}

/// Twin queries without aggregates.
fn plain_query() -> impl Strategy<Value = Query> {
    let paths = twin_path().boxed();
    (
        prop_oneof![Just(Source::Devices), Just(Source::Modules)],
        prop::option::of(prop::collection::vec(expression(paths.clone()), 1..4)),
        prop::option::of(expression(paths.clone())),
        prop::collection::vec((expression(paths), direction(), any::<bool>()), 0..3),
        prop::option::of(0u64..20),
    )
        .prop_map(|(source, items, condition, keys, top)| {
            let select = match items {
                None => Select::All,
                Some(items) => Select::Items(with_aliases(items)),
            };
            let aliases = match &select {
                Select::All => 0,
                Select::Items(items) => items.len(),
            };
            let order_by = keys
                .into_iter()
                .enumerate()
                .map(|(index, (expr, direction, by_alias))| OrderKey {
                    target: if by_alias && index < aliases {
                        OrderTarget::Column(format!("c{index}"))
                    } else {
                        OrderTarget::Expr(expr)
                    },
                    direction,
                })
                .collect();
            Query {
                source,
                select,
                condition,
                group_by: Vec::new(),
                order_by,
                top,
            }
        })
}

/// Twin queries with GROUP BY and aggregates.
fn aggregate_query() -> impl Strategy<Value = Query> {
    let paths = twin_path().boxed();
    (
        prop::collection::vec(paths.clone(), 0..3),
        prop::collection::vec(aggregate(paths.clone()), 1..3),
        prop::option::of(expression(paths)),
        prop::collection::vec((any::<prop::sample::Index>(), direction()), 0..3),
        prop::option::of(0u64..5),
    )
        .prop_map(|(group_paths, aggregates, condition, keys, top)| {
            let mut group_by: Vec<Expr> = Vec::new();
            for path in group_paths {
                let path = Expr::Path(path);
                if !group_by.contains(&path) {
                    group_by.push(path);
                }
            }
            let items = with_aliases(group_by.iter().cloned().chain(aggregates).collect());
            let order_by = keys
                .into_iter()
                .map(|(index, direction)| {
                    let item = index.index(items.len());
                    OrderKey {
                        target: if item % 2 == 0 {
                            OrderTarget::Column(format!("c{item}"))
                        } else {
                            OrderTarget::Expr(items[item].expr.clone())
                        },
                        direction,
                    }
                })
                .collect();
            Query {
                source: Source::Devices,
                select: Select::Items(items),
                condition,
                group_by,
                order_by,
                top,
            }
        })
}

fn job_query() -> impl Strategy<Value = Query> {
    let paths = job_path().boxed();
    (
        prop::option::of(expression(paths.clone())),
        prop::collection::vec((expression(paths), direction()), 0..2),
        prop::option::of(0u64..5),
    )
        .prop_map(|(condition, keys, top)| Query {
            source: Source::Jobs,
            select: Select::All,
            condition,
            group_by: Vec::new(),
            order_by: keys
                .into_iter()
                .map(|(expr, direction)| OrderKey {
                    target: OrderTarget::Expr(expr),
                    direction,
                })
                .collect(),
            top,
        })
}

fn query() -> impl Strategy<Value = Query> {
    prop_oneof![3 => plain_query(), 2 => aggregate_query(), 1 => job_query()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_queries_parse_back_to_the_same_tree(query in query()) {
        let printed = query.to_string();
        let reparsed = crate::parser::parse_query(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(&query), "printed as {}", printed);
    }

    #[test]
    fn generated_queries_keep_every_promise_of_the_oracle(query in query()) {
        crate::fuzzing::check_parsed_query(&query);
    }

    #[test]
    fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,60}") {
        crate::fuzzing::check_query(&text);
    }

    #[test]
    fn query_like_text_parses_or_fails_without_panicking(
        words in prop::collection::vec(
            prop::sample::select(vec![
                "SELECT", "*", "FROM", "devices", ".", "modules", "jobs", "WHERE", "GROUP", "BY",
                "ORDER", "TOP", "3", "AS", "x", "tags", "deviceId", "=", "<>", "<", "(", ")", "[",
                "]", ",", "'a'", "1.5", "-", "+", "AND", "OR", "NOT", "IN", "NIN", "COUNT", "SUM",
                "IS_DEFINED", "[[q]]", "null", "true", "undefined", "DESC", "0x1F",
            ]),
            0..16,
        )
    ) {
        crate::fuzzing::check_query(&words.join(" "));
    }
}
