//! How the client commands print: aligned tables for people (coloured only on a terminal without
//! `NO_COLOR`), or JSON for scripts (the hub's REST shapes, pretty-printed).

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use clap::builder::styling::{AnsiColor, Style};
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    /// Aligned columns with a header
    Table,
    /// The hub's JSON, pretty-printed (one compact object per line for `twin watch` and `--watch`)
    Json,
}

/// The few styles the tables use; all plain when colour is off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Palette {
    pub(crate) header: Style,
    pub(crate) label: Style,
    pub(crate) good: Style,
    pub(crate) bad: Style,
    pub(crate) change: Style,
    pub(crate) muted: Style,
}

impl Palette {
    /// Colours when stdout is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>).
    pub(crate) fn for_stdout() -> Palette {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Palette::new(std::io::stdout().is_terminal() && !no_color)
    }

    /// The same for what goes to stderr (progress bars).
    pub(crate) fn for_stderr() -> Palette {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Palette::new(std::io::stderr().is_terminal() && !no_color)
    }

    pub(crate) fn new(colour: bool) -> Palette {
        if !colour {
            let plain = Style::new();
            return Palette {
                header: plain,
                label: plain,
                good: plain,
                bad: plain,
                change: plain,
                muted: plain,
            };
        }
        Palette {
            header: Style::new().bold().underline(),
            label: Style::new().bold(),
            good: AnsiColor::Green.on_default(),
            bad: AnsiColor::Red.on_default(),
            change: AnsiColor::Yellow.on_default(),
            muted: Style::new().dimmed(),
        }
    }
}

/// One cell: its text and style. Widths are counted on the text, so styles never break alignment.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    text: String,
    style: Style,
}

impl Cell {
    pub(crate) fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            style: Style::new(),
        }
    }

    pub(crate) fn styled(text: impl Into<String>, style: Style) -> Cell {
        Cell {
            text: text.into(),
            style,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell::plain(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::plain(text)
    }
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart. A table without a header
/// (`Table::unheaded`) is a list of `label  value` pairs.
#[derive(Debug)]
pub(crate) struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            header: Some(header.iter().map(|title| (*title).to_owned()).collect()),
            rows: Vec::new(),
        }
    }

    pub(crate) fn unheaded() -> Table {
        Table {
            header: None,
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, every line ending in `\n`, trailing spaces trimmed.
    pub(crate) fn render(&self, palette: &Palette) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain(self.header.as_ref().map(Vec::len))
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        let header_texts = self.header.iter().flatten().map(String::as_str);
        for (index, text) in header_texts.enumerate() {
            widths[index] = widths[index].max(text.chars().count());
        }
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate() {
                widths[index] = widths[index].max(cell.text.chars().count());
            }
        }
        let mut text = String::new();
        if let Some(header) = &self.header {
            let cells: Vec<Cell> = header
                .iter()
                .map(|title| Cell::styled(title.clone(), palette.header))
                .collect();
            render_line(&mut text, &cells, &widths);
        }
        for row in &self.rows {
            render_line(&mut text, row, &widths);
        }
        text
    }

    pub(crate) fn print(&self, palette: &Palette) -> anyhow::Result<()> {
        write_stdout(&self.render(palette))
    }
}

fn render_line(text: &mut String, cells: &[Cell], widths: &[usize]) {
    let mut line = String::new();
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            line.push_str("  ");
        }
        let last = index + 1 == cells.len();
        let padding = widths[index].saturating_sub(cell.text.chars().count());
        // Styling wraps the text only, never the padding, so underlines stop at the word.
        let _ = write!(
            line,
            "{}{}{}",
            cell.style.render(),
            cell.text,
            cell.style.render_reset()
        );
        if !last {
            line.extend(std::iter::repeat_n(' ', padding));
        }
    }
    text.push_str(line.trim_end());
    text.push('\n');
}

/// Prints `value` as pretty JSON and a newline.
/// `text` in `style` (plain when the palette is).
pub(crate) fn paint(style: Style, text: impl std::fmt::Display) -> String {
    format!("{}{text}{}", style.render(), style.render_reset())
}

pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encode the result as json")?;
    text.push('\n');
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`fleethub ... | head`) is an error like any other, reported once.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("write to stdout")
}

/// A JSON value in one line, for table cells: strings keep their quotes so that `"1"` and `1` differ.
pub(crate) fn compact(value: &Value) -> String {
    serde_json::to_string(value).expect("a json value always serialises")
}

/// `-` for a missing value, as tables show it.
pub(crate) fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

/// A timestamp as tables show it: `2026-11-26 05:00:00Z` (seconds are enough for people), `never` for
/// Azure's "never" (`0001-01-01T00:00:00Z`), `-` when absent; anything unexpected unchanged.
pub(crate) fn human_time(azure_time: Option<&str>) -> String {
    let Some(text) = azure_time else {
        return "-".to_owned();
    };
    if text.starts_with("0001-01-01T00:00:00") {
        return "never".to_owned();
    }
    match (text.get(..10), text.get(10..11), text.get(11..19)) {
        (Some(date), Some("T"), Some(clock)) if text.ends_with('Z') => format!("{date} {clock}Z"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_on_the_widest_cell_and_trim_line_ends() {
        let mut table = Table::new(&["DEVICE ID", "STATUS", "LAST ACTIVITY"]);
        table.row(vec!["dev1".into(), "enabled".into(), "-".into()]);
        table.row(vec![
            "a-much-longer-id".into(),
            "disabled".into(),
            "2026-11-26T05:00:00Z".into(),
        ]);
        table.row(vec!["x".into(), "enabled".into(), "".into()]);
        assert_eq!(
            table.render(&Palette::new(false)),
            "DEVICE ID         STATUS    LAST ACTIVITY\n\
             dev1              enabled   -\n\
             a-much-longer-id  disabled  2026-11-26T05:00:00Z\n\
             x                 enabled\n"
        );
    }

    #[test]
    fn colour_does_not_change_alignment() {
        let palette = Palette::new(true);
        let mut table = Table::unheaded();
        table.row(vec![
            Cell::styled("status", palette.label),
            Cell::styled("enabled", palette.good),
        ]);
        table.row(vec![Cell::styled("etag", palette.label), "AAAA".into()]);
        let rendered = table.render(&palette);
        assert!(rendered.contains("\u{1b}["), "styled: {rendered:?}");
        let stripped: String = strip_ansi(&rendered);
        assert_eq!(stripped, "status  enabled\netag    AAAA\n");
    }

    #[test]
    fn colour_off_writes_no_escape_codes() {
        let palette = Palette::new(false);
        let mut table = Table::new(&["A"]);
        table.row(vec![Cell::styled("x", palette.bad)]);
        assert_eq!(table.render(&palette), "A\nx\n");
    }

    #[test]
    fn compact_keeps_json_types_apart() {
        assert_eq!(compact(&json!("1")), "\"1\"");
        assert_eq!(compact(&json!(1)), "1");
        assert_eq!(compact(&json!({"a": [1, null]})), "{\"a\":[1,null]}");
    }

    #[test]
    fn times_are_shortened_for_people() {
        assert_eq!(
            human_time(Some("2026-11-26T05:00:01.1234567Z")),
            "2026-11-26 05:00:01Z"
        );
        assert_eq!(
            human_time(Some("2026-11-26T05:00:01Z")),
            "2026-11-26 05:00:01Z"
        );
        assert_eq!(human_time(Some("0001-01-01T00:00:00Z")), "never");
        assert_eq!(human_time(Some("yesterday")), "yesterday");
        assert_eq!(human_time(None), "-");
    }

    fn strip_ansi(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(character) = chars.next() {
            if character == '\u{1b}' {
                for next in chars.by_ref() {
                    if next == 'm' {
                        break;
                    }
                }
            } else {
                out.push(character);
            }
        }
        out
    }
}
