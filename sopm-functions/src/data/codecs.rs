//! Encodings: CSV to and from JSON, base64, hex and percent-encoding.

use std::borrow::Cow;
use std::collections::HashSet;

use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};
use sopm_core::types::truncate_for_message;
use sopm_core::{Error, Result};

use crate::schema::Args;

/// Most cells (rows x columns) of `data.json_to_csv`: items with many distinct keys
/// would otherwise make rows x columns explode.
const MAX_CSV_CELLS: usize = 1_000_000;

/// RFC 4180 parsing (quotes, doubled quotes, embedded commas and line breaks); every
/// row must have as many fields as the first. Values stay text: no type guessing.
/// With a header, a repeated column name is `invalid_input`.
pub(super) fn csv_to_json(args: &Args<'_>) -> Result<Value> {
    let text = args.str("csv")?;
    let header = args.opt_bool("header")?.unwrap_or(true);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut records = reader
        .records()
        .map(|r| r.map_err(|e| Error::invalid(format!("field 'csv': {e}"))));
    if !header {
        return records
            .map(|r| r.map(|record| Value::Array(record.iter().map(Value::from).collect())))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array);
    }
    let Some(first) = records.next() else {
        return Ok(Value::Array(Vec::new()));
    };
    let names: Vec<String> = first?.iter().map(str::to_string).collect();
    let mut seen = HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(Error::invalid(format!(
            "field 'csv': the header repeats the column '{}'",
            truncate_for_message(dup)
        )));
    }
    records
        .map(|r| {
            r.map(|record| {
                let row: Map<String, Value> = names
                    .iter()
                    .zip(record.iter())
                    .map(|(name, field)| (name.clone(), Value::from(field)))
                    .collect();
                Value::Object(row)
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

/// Values must be scalars: strings as they are, numbers and booleans as their JSON
/// text, null and missing fields as empty. Fields are quoted only when they need it
/// (RFC 4180); lines end with "\n". No items, or no keys at all, give "".
pub(super) fn json_to_csv(args: &Args<'_>) -> Result<Value> {
    let items = args.array("items")?;
    let mut columns: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(object) = item else {
            return Err(Error::invalid(format!(
                "field 'items[{i}]': expected an object"
            )));
        };
        for (k, v) in object {
            if v.is_array() || v.is_object() {
                return Err(Error::invalid(format!(
                    "field 'items[{i}].{}': expected a string, number, boolean or null",
                    truncate_for_message(k)
                )));
            }
            if seen.insert(k.as_str()) {
                columns.push(k);
            }
        }
    }
    if columns.is_empty() {
        return Ok(Value::String(String::new()));
    }
    if items.len().saturating_mul(columns.len()) > MAX_CSV_CELLS {
        return Err(Error::invalid(format!(
            "field 'items': {} rows x {} columns is more than {MAX_CSV_CELLS} cells",
            items.len(),
            columns.len()
        )));
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| Error::Internal(format!("writing CSV: {e}"));
    writer.write_record(&columns).map_err(failed)?;
    for item in items {
        writer
            .write_record(columns.iter().map(|c| cell(item.get(*c))))
            .map_err(failed)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| Error::Internal(format!("writing CSV: {e}")))?;
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|e| Error::Internal(format!("writing CSV: {e}")))
}

/// The bytes of one CSV field.
fn cell(v: Option<&Value>) -> Cow<'_, [u8]> {
    match v {
        None | Some(Value::Null) => Cow::Borrowed(b""),
        Some(Value::String(s)) => Cow::Borrowed(s.as_bytes()),
        Some(other) => Cow::Owned(other.to_string().into_bytes()),
    }
}

pub(super) fn base64_encode(args: &Args<'_>) -> Result<Value> {
    let text = args.str("text")?;
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(text),
    ))
}

/// Strict: the standard alphabet with canonical padding, no whitespace.
pub(super) fn base64_decode(args: &Args<'_>) -> Result<Value> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(args.str("data")?)
        .map_err(|e| Error::invalid(format!("field 'data': invalid base64: {e}")))?;
    utf8("data", bytes)
}

pub(super) fn hex_encode(args: &Args<'_>) -> Result<Value> {
    Ok(Value::String(hex::encode(args.str("text")?)))
}

/// Accepts upper- and lowercase digits; an odd length or a non-hex character is
/// `invalid_input`, and so are bytes that are not UTF-8.
pub(super) fn hex_decode(args: &Args<'_>) -> Result<Value> {
    let bytes = hex::decode(args.str("data")?)
        .map_err(|e| Error::invalid(format!("field 'data': invalid hex: {e}")))?;
    utf8("data", bytes)
}

/// Decoded bytes as text; bytes that are not UTF-8 are `invalid_input`.
fn utf8(field: &str, bytes: Vec<u8>) -> Result<Value> {
    String::from_utf8(bytes).map(Value::String).map_err(|e| {
        Error::invalid(format!(
            "field '{field}': the decoded bytes are not UTF-8 ({})",
            e.utf8_error()
        ))
    })
}

/// Everything but the RFC 3986 unreserved characters: ALPHA / DIGIT / "-" / "." /
/// "_" / "~".
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Uppercase hex digits in the escapes, as RFC 3986 recommends; a space is "%20".
pub(super) fn url_encode(args: &Args<'_>) -> Result<Value> {
    Ok(Value::String(
        utf8_percent_encode(args.str("text")?, NOT_UNRESERVED).to_string(),
    ))
}

/// Strict: a "%" not followed by two hex digits is `invalid_input`, as are escapes
/// that do not decode to UTF-8. "+" stays "+" (this is not form decoding).
pub(super) fn url_decode(args: &Args<'_>) -> Result<Value> {
    let text = args.str("text")?;
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3);
        if !escape.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(Error::invalid(format!(
                "field 'text': '%' at byte {i} is not followed by two hex digits"
            )));
        }
    }
    utf8("text", percent_decode_str(text).collect())
}
