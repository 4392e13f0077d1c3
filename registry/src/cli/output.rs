//! Printing shared by the commands: the API's JSON with `--json`, tables
//! and sentences for people otherwise.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

/// Prints `v` as pretty JSON with `json`, else what `human` makes of it.
pub fn print_or(
    json: bool,
    v: &Value,
    human: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("{}", human()?);
    }
    Ok(())
}

/// Prints a sentence for people; nothing with `--json` (the command's
/// answer had no body to print).
pub fn say(json: bool, sentence: impl std::fmt::Display) {
    if !json {
        println!("{sentence}");
    }
}

/// An empty table with the house style and `header`.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

/// A table of a JSON array's objects: one column per `(header, field,
/// what an absent field shows)`.
pub fn rows_table(v: &Value, columns: &[(&str, &str, &str)]) -> String {
    let header: Vec<&str> = columns.iter().map(|(h, _, _)| *h).collect();
    let mut t = table(&header);
    for row in v.as_array().into_iter().flatten() {
        t.add_row(
            columns
                .iter()
                .map(|(_, field, absent)| row[*field].as_str().unwrap_or(absent).to_owned())
                .collect::<Vec<_>>(),
        );
    }
    t.to_string()
}
