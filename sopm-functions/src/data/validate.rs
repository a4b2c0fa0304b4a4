//! `data.json_schema_validate`: JSON Schema draft 2020-12 with the `jsonschema` crate.

use std::io::Write;

use jsonschema::{PatternOptions, ValidationError};
use serde_json::{json, Value};
use sopm_core::{Error, Result};

use crate::schema::Args;

/// Most errors reported; `valid` still reflects the whole document.
const MAX_ERRORS: usize = 100;
/// Longest instance preview in an error message, in bytes.
const MAX_PREVIEW: usize = 64;

/// Only local `$ref`s resolve: the validator is offline, so a remote reference is an
/// invalid schema. `pattern`s run on the `regex` engine, which is linear-time (no
/// catastrophic backtracking) but has no look-around or back-references: a schema
/// using them is invalid. `format` is an annotation, as draft 2020-12 says by default.
/// At most [`MAX_ERRORS`] errors are listed, each `{path, message}` with `path` the
/// JSON Pointer of the failing part of the document.
pub(super) fn json_schema_validate(args: &Args<'_>) -> Result<Value> {
    let document = args.value("document")?;
    let schema = args.value("schema")?;
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(Error::invalid(
            "field 'schema': expected an object or a boolean",
        ));
    }
    let validator = jsonschema::draft202012::options()
        .offline()
        .with_pattern_options(PatternOptions::regex())
        .build(schema)
        .map_err(|e| {
            Error::invalid(format!(
                "field 'schema': not a valid schema: {}",
                message(&e)
            ))
        })?;
    let errors: Vec<Value> = validator
        .iter_errors(document)
        .take(MAX_ERRORS)
        .map(|e| json!({"path": e.instance_path().as_str(), "message": message(&e)}))
        .collect();
    Ok(json!({"valid": errors.is_empty(), "errors": errors}))
}

/// The error's message with the offending value shown as at most [`MAX_PREVIEW`]
/// bytes of its JSON text, so that a failing large document does not make a huge
/// message.
fn message(e: &ValidationError<'_>) -> String {
    e.masked_with(preview(e.instance())).to_string()
}

/// The first [`MAX_PREVIEW`] bytes of a value's JSON text (cut at a character
/// boundary, with "…" when cut). Serializing stops as soon as the limit is reached.
fn preview(v: &Value) -> String {
    let mut out = Capped(Vec::with_capacity(MAX_PREVIEW));
    let complete = serde_json::to_writer(&mut out, v).is_ok();
    let bytes = out.0;
    let text = match std::str::from_utf8(&bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or_default())
            .unwrap_or_default(),
    };
    if complete {
        text.to_string()
    } else {
        format!("{text}…")
    }
}

/// A writer that keeps [`MAX_PREVIEW`] bytes and then refuses more.
struct Capped(Vec<u8>);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_PREVIEW - self.0.len();
        if room == 0 {
            return Err(std::io::Error::other("preview is full"));
        }
        let n = buf.len().min(room);
        self.0.extend_from_slice(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
