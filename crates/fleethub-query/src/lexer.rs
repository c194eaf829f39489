//! Query text to tokens. Every token carries its character offset for error messages.
//!
//! Lexical rules, quoted from "IoT Hub query language for device and module twins, jobs, and
//! message routing" (MicrosoftDocs/azure-docs `articles/iot-hub/iot-hub-devguide-query-language.md`):
//! - "decimal_literal: A float expressed in decimal notation." We read `12`, `1.5`, `1e3`,
//!   `2.5E-4`; a leading `-` is the unary minus of the parser (`-5` is folded into a literal there).
//! - "hexadecimal_literal: A number expressed by the string '0x' followed by a string of
//!   hexadecimal digits." (`0X` too; at most 64 bits.)
//! - "string_literal: Unicode strings represented by a sequence of zero or more Unicode characters or
//!   escape sequences. String literals are enclosed in single quotes or double quotes. Allowed
//!   escapes: `\'`, `\"`, `\\`, `\uXXXX` for Unicode characters defined by four hexadecimal digits."
//!   fleethub also accepts JSON's `\/ \b \f \n \r \t` (an extension) and joins a `\uD83D\uDE00`
//!   surrogate pair into one character; a lone surrogate is an error.
//! - "The term `group` is currently treated as a special keyword in queries. In case, you use
//!   `group` as your property name, consider surrounding it with double brackets to avoid errors,
//!   e.g., `SELECT * FROM devices WHERE tags.[[group]].name = 'some_value'`." `[[` always opens a
//!   quoted name that runs to the first `]]`; so an array literal whose first element is an array
//!   needs a space: `[ [1, 2], 3]`.

use crate::error::QueryError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// An identifier or a keyword; the parser decides (keywords are case-insensitive).
    Word(String),
    /// `[[any text]]`: a property name that is never a keyword and may hold any character.
    QuotedName(String),
    String(String),
    Number(NumberToken),
    Star,
    Comma,
    Dot,
    LeftParen,
    RightParen,
    LeftBracket,
    RightBracket,
    Plus,
    Minus,
    Slash,
    Percent,
    Equal,
    /// `!=` or `<>`; the text is kept for messages.
    NotEqual(&'static str),
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    End,
}

/// A number as written, before the parser applies a sign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NumberToken {
    /// A decimal or hexadecimal whole number that fits in 64 bits.
    Integer(u64),
    /// A number with a fraction or an exponent, or a decimal whole number above `u64::MAX`.
    Float(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    /// Character offset of the first character.
    pub position: usize,
}

impl Token {
    /// How a message names this token after "found".
    pub fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Word(word) => match crate::parser::Keyword::from_word(word) {
                Some(keyword) => format!("'{}'", keyword.text()),
                None => format!("'{word}'"),
            },
            TokenKind::QuotedName(name) => format!("'[[{name}]]'"),
            TokenKind::String(_) => "a string".to_owned(),
            TokenKind::Number(NumberToken::Integer(value)) => format!("number {value}"),
            TokenKind::Number(NumberToken::Float(value)) => format!("number {value}"),
            TokenKind::End => "end of query".to_owned(),
            other => format!("'{}'", punctuation_text(other)),
        }
    }

    /// How a message names this token after "after", e.g. `after 'AND'`.
    pub fn quoted_text(&self) -> String {
        match &self.kind {
            TokenKind::Word(word) => match crate::parser::Keyword::from_word(word) {
                Some(keyword) => format!("'{}'", keyword.text()),
                None => format!("'{word}'"),
            },
            TokenKind::QuotedName(name) => format!("'[[{name}]]'"),
            TokenKind::String(_) => "the string".to_owned(),
            TokenKind::Number(_) => "the number".to_owned(),
            TokenKind::End => "the end of the query".to_owned(),
            other => format!("'{}'", punctuation_text(other)),
        }
    }
}

fn punctuation_text(kind: &TokenKind) -> &'static str {
    match kind {
        TokenKind::Star => "*",
        TokenKind::Comma => ",",
        TokenKind::Dot => ".",
        TokenKind::LeftParen => "(",
        TokenKind::RightParen => ")",
        TokenKind::LeftBracket => "[",
        TokenKind::RightBracket => "]",
        TokenKind::Plus => "+",
        TokenKind::Minus => "-",
        TokenKind::Slash => "/",
        TokenKind::Percent => "%",
        TokenKind::Equal => "=",
        TokenKind::NotEqual(text) => text,
        TokenKind::Less => "<",
        TokenKind::LessOrEqual => "<=",
        TokenKind::Greater => ">",
        TokenKind::GreaterOrEqual => ">=",
        TokenKind::Word(_)
        | TokenKind::QuotedName(_)
        | TokenKind::String(_)
        | TokenKind::Number(_)
        | TokenKind::End => "",
    }
}

/// Characters that may start an identifier. Twin property names may be any Unicode text, so
/// letters of every script count; `$` starts the system names `$metadata`, `$version`, ...
pub(crate) fn is_identifier_start(character: char) -> bool {
    character.is_alphabetic() || character == '_' || character == '$'
}

pub(crate) fn is_identifier_continue(character: char) -> bool {
    character.is_alphanumeric() || character == '_' || character == '$'
}

/// Splits `text` into tokens, ending with [`TokenKind::End`] at the character count.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, QueryError> {
    let characters: Vec<char> = text.chars().collect();
    let mut lexer = Lexer {
        text,
        characters: &characters,
        index: 0,
    };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let end = token.kind == TokenKind::End;
        tokens.push(token);
        if end {
            return Ok(tokens);
        }
    }
}

struct Lexer<'t> {
    text: &'t str,
    characters: &'t [char],
    index: usize,
}

impl Lexer<'_> {
    fn peek(&self, offset: usize) -> Option<char> {
        self.characters.get(self.index + offset).copied()
    }

    fn error(&self, position: usize, message: impl Into<String>) -> QueryError {
        QueryError::syntax(self.text, position, message)
    }

    fn next_token(&mut self) -> Result<Token, QueryError> {
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.index += 1;
        }
        let position = self.index;
        let Some(character) = self.peek(0) else {
            return Ok(Token {
                kind: TokenKind::End,
                position,
            });
        };
        let single = |kind| (kind, 1);
        let (kind, length) = match character {
            '*' => single(TokenKind::Star),
            ',' => single(TokenKind::Comma),
            '.' => single(TokenKind::Dot),
            '(' => single(TokenKind::LeftParen),
            ')' => single(TokenKind::RightParen),
            '[' if self.peek(1) == Some('[') => return self.quoted_name(),
            '[' => single(TokenKind::LeftBracket),
            ']' => single(TokenKind::RightBracket),
            '+' => single(TokenKind::Plus),
            '-' => single(TokenKind::Minus),
            '/' => single(TokenKind::Slash),
            '%' => single(TokenKind::Percent),
            '=' => single(TokenKind::Equal),
            '!' if self.peek(1) == Some('=') => (TokenKind::NotEqual("!="), 2),
            '!' => {
                return Err(self.error(position, "unexpected character '!'; did you mean '!='?"));
            }
            '<' if self.peek(1) == Some('>') => (TokenKind::NotEqual("<>"), 2),
            '<' if self.peek(1) == Some('=') => (TokenKind::LessOrEqual, 2),
            '<' => single(TokenKind::Less),
            '>' if self.peek(1) == Some('=') => (TokenKind::GreaterOrEqual, 2),
            '>' => single(TokenKind::Greater),
            '\'' | '"' => return self.string(character),
            '0'..='9' => return self.number(),
            _ if is_identifier_start(character) => {
                let start = self.index;
                while self.peek(0).is_some_and(is_identifier_continue) {
                    self.index += 1;
                }
                let word: String = self.characters[start..self.index].iter().collect();
                return Ok(Token {
                    kind: TokenKind::Word(word),
                    position,
                });
            }
            _ => {
                return Err(self.error(
                    position,
                    format!("unexpected character {}", describe_character(character)),
                ));
            }
        };
        self.index += length;
        Ok(Token { kind, position })
    }

    fn quoted_name(&mut self) -> Result<Token, QueryError> {
        let position = self.index;
        self.index += 2;
        let start = self.index;
        loop {
            match self.peek(0) {
                None => {
                    return Err(self.error(position, "unterminated quoted name: '[[' without ']]'"));
                }
                Some(']') if self.peek(1) == Some(']') => break,
                Some(_) => self.index += 1,
            }
        }
        let name: String = self.characters[start..self.index].iter().collect();
        self.index += 2;
        if name.is_empty() {
            return Err(self.error(position, "empty quoted name '[[]]'"));
        }
        Ok(Token {
            kind: TokenKind::QuotedName(name),
            position,
        })
    }

    fn string(&mut self, quote: char) -> Result<Token, QueryError> {
        let position = self.index;
        self.index += 1;
        let mut value = String::new();
        loop {
            let Some(character) = self.peek(0) else {
                return Err(
                    self.error(position, format!("unterminated string: no closing {quote}"))
                );
            };
            if character == quote {
                self.index += 1;
                return Ok(Token {
                    kind: TokenKind::String(value),
                    position,
                });
            }
            if character != '\\' {
                value.push(character);
                self.index += 1;
                continue;
            }
            let escape_position = self.index;
            let escaped = match self.peek(1) {
                Some(character @ ('\'' | '"' | '\\' | '/')) => character,
                Some('b') => '\u{8}',
                Some('f') => '\u{c}',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('t') => '\t',
                Some('u') => {
                    let character = self.unicode_escape(escape_position)?;
                    value.push(character);
                    continue;
                }
                Some(other) => {
                    return Err(self.error(
                        escape_position,
                        format!(
                            "invalid escape sequence '\\{other}'; the escapes are \\' \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX"
                        ),
                    ));
                }
                None => {
                    return Err(
                        self.error(position, format!("unterminated string: no closing {quote}"))
                    );
                }
            };
            value.push(escaped);
            self.index += 2;
        }
    }

    /// Reads `\uXXXX` (and a following low surrogate escape) at `self.index`.
    fn unicode_escape(&mut self, escape_position: usize) -> Result<char, QueryError> {
        let first = self.hex4(escape_position)?;
        if (0xD800..0xDC00).contains(&first) {
            if self.peek(0) == Some('\\') && self.peek(1) == Some('u') {
                let second_position = self.index;
                let second = self.hex4(second_position)?;
                if (0xDC00..0xE000).contains(&second) {
                    let combined = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                    return char::from_u32(combined)
                        .ok_or_else(|| self.error(escape_position, "invalid \\u escape"));
                }
            }
            return Err(self.error(
                escape_position,
                "invalid \\u escape: a high surrogate must be followed by a \\u escape of a low surrogate",
            ));
        }
        char::from_u32(first).ok_or_else(|| {
            self.error(
                escape_position,
                "invalid \\u escape: a low surrogate without a high surrogate before it",
            )
        })
    }

    /// Reads `\uXXXX` at `self.index` and returns the code unit.
    fn hex4(&mut self, escape_position: usize) -> Result<u32, QueryError> {
        let mut value = 0;
        for offset in 2..6 {
            let digit = self
                .peek(offset)
                .and_then(|character| character.to_digit(16));
            let Some(digit) = digit else {
                return Err(self.error(
                    escape_position,
                    "invalid \\u escape: expected four hexadecimal digits after \\u",
                ));
            };
            value = value * 16 + digit;
        }
        self.index += 6;
        Ok(value)
    }

    fn number(&mut self) -> Result<Token, QueryError> {
        let position = self.index;
        if self.peek(0) == Some('0') && matches!(self.peek(1), Some('x' | 'X')) {
            self.index += 2;
            let start = self.index;
            while self
                .peek(0)
                .is_some_and(|character| character.is_ascii_hexdigit())
            {
                self.index += 1;
            }
            let digits: String = self.characters[start..self.index].iter().collect();
            if digits.is_empty() {
                return Err(self.error(position, "expected hexadecimal digits after '0x'"));
            }
            self.reject_glued_identifier(position)?;
            let value = u64::from_str_radix(&digits, 16).map_err(|_| {
                self.error(
                    position,
                    format!("hexadecimal number 0x{digits} does not fit in 64 bits"),
                )
            })?;
            return Ok(Token {
                kind: TokenKind::Number(NumberToken::Integer(value)),
                position,
            });
        }
        let start = self.index;
        self.skip_digits();
        let mut is_float = false;
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            is_float = true;
            self.index += 1;
            self.skip_digits();
        }
        if matches!(self.peek(0), Some('e' | 'E')) {
            let digits_at = if matches!(self.peek(1), Some('+' | '-')) {
                2
            } else {
                1
            };
            if self.peek(digits_at).is_some_and(|c| c.is_ascii_digit()) {
                is_float = true;
                self.index += digits_at;
                self.skip_digits();
            }
        }
        self.reject_glued_identifier(position)?;
        let literal: String = self.characters[start..self.index].iter().collect();
        let kind = match (is_float, literal.parse::<u64>()) {
            (false, Ok(value)) => NumberToken::Integer(value),
            _ => {
                let value: f64 = literal
                    .parse()
                    .map_err(|_| self.error(position, format!("invalid number '{literal}'")))?;
                if !value.is_finite() {
                    return Err(self.error(position, format!("number {literal} is too large")));
                }
                NumberToken::Float(value)
            }
        };
        Ok(Token {
            kind: TokenKind::Number(kind),
            position,
        })
    }

    fn skip_digits(&mut self) {
        while self
            .peek(0)
            .is_some_and(|character| character.is_ascii_digit())
        {
            self.index += 1;
        }
    }

    /// `12abc` or `0x1Fg` is one malformed number, not a number followed by a name.
    fn reject_glued_identifier(&mut self, position: usize) -> Result<(), QueryError> {
        if self.peek(0).is_some_and(is_identifier_continue) {
            let mut end = self.index;
            while self
                .characters
                .get(end)
                .is_some_and(|c| is_identifier_continue(*c))
            {
                end += 1;
            }
            let literal: String = self.characters[position..end].iter().collect();
            return Err(self.error(position, format!("invalid number '{literal}'")));
        }
        Ok(())
    }
}

fn describe_character(character: char) -> String {
    if character.is_control() {
        format!("U+{:04X}", u32::from(character))
    } else {
        format!("'{character}'")
    }
}
