//! How an answer is printed: as a table (docker-like, the default) or as
//! the answer's JSON with `--format json`.

use serde::Serialize;

use crate::cli::Format;
use crate::error::CtlError;

/// `answer` as JSON, or as `table` renders it.
pub fn render<T: Serialize>(
    format: Format,
    answer: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, CtlError> {
    match format {
        Format::Json => json(answer),
        Format::Table => Ok(table(answer)),
    }
}

/// Pretty JSON with a final newline.
pub fn json(answer: &impl Serialize) -> Result<String, CtlError> {
    Ok(format!("{}\n", serde_json::to_string_pretty(answer)?))
}
