//! The one error type of parsing: what the hub sends back as the message of a 400 answer.

use crate::MAX_QUERY_LENGTH;

/// Why a query text was refused. `Display` is the whole message for the client, e.g.
/// `syntax error at position 23: expected an expression after 'AND', found end of query`.
///
/// Positions are 0-based offsets in characters (Unicode scalar values, not bytes) from the start of
/// the text given to [`crate::parse`] or [`crate::parse_condition`]; `line` and `column` are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// Longer than [`MAX_QUERY_LENGTH`] characters; refused before lexing.
    #[error("query is {length} characters long, more than the maximum of {MAX_QUERY_LENGTH}")]
    TooLong { length: usize },
    /// The text does not follow the grammar (including malformed literals).
    #[error("syntax error at position {position}: {message}")]
    Syntax {
        position: usize,
        line: usize,
        column: usize,
        message: String,
    },
    /// The text parses but breaks a rule of the language: unknown function, wrong number of
    /// arguments, aggregate in WHERE, projection on `devices.jobs`, ...
    #[error("invalid query at position {position}: {message}")]
    Invalid {
        position: usize,
        line: usize,
        column: usize,
        message: String,
    },
}

impl QueryError {
    /// The character offset the error points at; `None` for [`QueryError::TooLong`].
    pub fn position(&self) -> Option<usize> {
        match self {
            QueryError::TooLong { .. } => None,
            QueryError::Syntax { position, .. } | QueryError::Invalid { position, .. } => {
                Some(*position)
            }
        }
    }

    /// 1-based line and column of [`QueryError::position`].
    pub fn line_column(&self) -> Option<(usize, usize)> {
        match self {
            QueryError::TooLong { .. } => None,
            QueryError::Syntax { line, column, .. } | QueryError::Invalid { line, column, .. } => {
                Some((*line, *column))
            }
        }
    }

    /// The explanation without the "syntax error at position N" prefix.
    pub fn message(&self) -> String {
        match self {
            QueryError::TooLong { .. } => self.to_string(),
            QueryError::Syntax { message, .. } | QueryError::Invalid { message, .. } => {
                message.clone()
            }
        }
    }

    pub(crate) fn syntax(text: &str, position: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_and_column(text, position);
        QueryError::Syntax {
            position,
            line,
            column,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(text: &str, position: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_and_column(text, position);
        QueryError::Invalid {
            position,
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column of a character offset; `\n` ends a line (a `\r` before it counts as a
/// character of the line, as editors that show columns in characters do).
fn line_and_column(text: &str, position: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for character in text.chars().take(position) {
        if character == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}
