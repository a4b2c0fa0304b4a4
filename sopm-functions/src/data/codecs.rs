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

/// Most rows `data.csv_to_json` returns: a 1 MiB text of one-character rows would
/// otherwise make half a million output values (~180 ms), far past one cheap call.
const MAX_CSV_ROWS: usize = 100_000;

/// RFC 4180 parsing (quotes, doubled quotes, embedded commas and line breaks); every
/// row must have as many fields as the first. Values stay text: no type guessing.
/// With a header, a repeated column name is `invalid_input`.
fn check_row_count(rows_so_far: usize) -> Result<()> {
    if rows_so_far >= MAX_CSV_ROWS {
        return Err(Error::invalid(format!(
            "field 'csv': more than {MAX_CSV_ROWS} rows"
        )));
    }
    Ok(())
}

pub(super) fn csv_to_json(args: &Args<'_>) -> Result<Value> {
    let text = args.str("csv")?;
    let header = args.opt_bool("header")?.unwrap_or(true);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let bad = |e: csv::Error| Error::invalid(format!("field 'csv': {e}"));
    // One record buffer for all rows: no allocation per row beyond the output.
    let mut record = csv::StringRecord::new();
    let mut rows = Vec::new();
    if !header {
        while reader.read_record(&mut record).map_err(bad)? {
            check_row_count(rows.len())?;
            rows.push(Value::Array(record.iter().map(Value::from).collect()));
        }
        return Ok(Value::Array(rows));
    }
    if !reader.read_record(&mut record).map_err(bad)? {
        return Ok(Value::Array(rows));
    }
    let names: Vec<String> = record.iter().map(str::to_string).collect();
    let mut seen = HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(Error::invalid(format!(
            "field 'csv': the header repeats the column '{}'",
            truncate_for_message(dup)
        )));
    }
    while reader.read_record(&mut record).map_err(bad)? {
        check_row_count(rows.len())?;
        let row: Map<String, Value> = names
            .iter()
            .zip(record.iter())
            .map(|(name, field)| (name.clone(), Value::from(field)))
            .collect();
        rows.push(Value::Object(row));
    }
    Ok(Value::Array(rows))
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
    // Writing to memory cannot fail, and the text stays UTF-8: any error is a bug.
    fn failed(e: impl std::fmt::Display) -> Error {
        Error::Internal(format!("writing CSV: {e}"))
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&columns).map_err(failed)?;
    for item in items {
        writer
            .write_record(columns.iter().map(|c| cell(item.get(*c))))
            .map_err(failed)?;
    }
    let bytes = writer.into_inner().map_err(failed)?;
    String::from_utf8(bytes).map(Value::String).map_err(failed)
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::testing::{call, code};

    async fn ok(name: &str, input: Value) -> Value {
        call(name, input).await.unwrap()
    }

    #[tokio::test]
    async fn csv_to_json_quoting() {
        let csv =
            "name,quote\r\n\"Doe, J\",\"He said \"\"hi\"\"\"\r\nAnn,\"two\nlines\"\r\nÉmile,\r\n";
        assert_eq!(
            ok("data.csv_to_json", json!({"csv": csv})).await,
            json!([
                {"name": "Doe, J", "quote": "He said \"hi\""},
                {"name": "Ann", "quote": "two\nlines"},
                {"name": "Émile", "quote": ""}
            ])
        );
        assert_eq!(
            ok(
                "data.csv_to_json",
                json!({"csv": "a,b\n1,2", "header": false})
            )
            .await,
            json!([["a", "b"], ["1", "2"]])
        );
        assert_eq!(
            ok(
                "data.csv_to_json",
                json!({"csv": "a,b\n1,2", "header": null})
            )
            .await,
            json!([{"a": "1", "b": "2"}])
        );
    }

    #[tokio::test]
    async fn csv_to_json_edges() {
        for header in [true, false] {
            assert_eq!(
                ok("data.csv_to_json", json!({"csv": "", "header": header})).await,
                json!([])
            );
        }
        assert_eq!(
            ok("data.csv_to_json", json!({"csv": "a,b\n"})).await,
            json!([])
        );
        assert_eq!(ok("data.csv_to_json", json!({"csv": "x"})).await, json!([]));
        assert_eq!(
            ok("data.csv_to_json", json!({"csv": "x", "header": false})).await,
            json!([["x"]])
        );
        // A byte-order mark is not part of the first column's name; blank lines are
        // skipped.
        assert_eq!(
            ok("data.csv_to_json", json!({"csv": "\u{feff}a,b\n\n1,2\n\n"})).await,
            json!([{"a": "1", "b": "2"}])
        );
    }

    #[tokio::test]
    async fn csv_to_json_rejects_ragged_rows_and_repeated_columns() {
        for (csv, header) in [
            ("a,b\n1,2,3\n", true),
            ("a\n1,2\n", false),
            ("a,a\n1,2\n", true),
        ] {
            let err = call("data.csv_to_json", json!({"csv": csv, "header": header}))
                .await
                .unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{csv}");
            assert!(err.to_string().contains("field 'csv'"), "{err}");
        }
        assert_eq!(
            code("data.csv_to_json", json!({"csv": ["a"]})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn csv_to_json_at_the_text_cap() {
        // Just under 1 MiB: a header then 87,000 rows of "nnnnn,\"x,y\"\n" (12 bytes).
        let mut csv = String::from("id,pair\n");
        for i in 0..87_000 {
            csv.push_str(&format!("{i:05},\"x,y\"\n"));
        }
        assert!(csv.len() <= crate::schema::MAX_TEXT_BYTES);
        let out = ok("data.csv_to_json", json!({"csv": csv})).await;
        let rows = out.as_array().unwrap();
        assert_eq!(rows.len(), 87_000);
        assert_eq!(rows[86_999], json!({"id": "86999", "pair": "x,y"}));
    }

    #[tokio::test]
    async fn json_to_csv_quotes_and_columns() {
        let items = json!([
            {"b": "plain", "a": 1},
            {"a": "x,y", "c": "say \"hi\""},
            {"a": "two\nlines", "b": null, "c": true},
            {"c": 1.5}
        ]);
        // Columns in first-seen order; keys within one object come in the map's order.
        let out = ok("data.json_to_csv", json!({"items": items})).await;
        assert_eq!(
            out,
            json!("a,b,c\n1,plain,\n\"x,y\",,\"say \"\"hi\"\"\"\n\"two\nlines\",,true\n,,1.5\n")
        );
        assert_eq!(
            ok("data.json_to_csv", json!({"items": []})).await,
            json!("")
        );
        assert_eq!(
            ok("data.json_to_csv", json!({"items": [{}, {}]})).await,
            json!("")
        );
        assert_eq!(
            ok("data.json_to_csv", json!({"items": [{"é": "ü"}]})).await,
            json!("é\nü\n")
        );
    }

    #[tokio::test]
    async fn json_to_csv_rejects_nested_values_and_too_many_cells() {
        let err = call("data.json_to_csv", json!({"items": [{"a": 1}, {"a": [1]}]}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.to_string().contains("items[1].a"), "{err}");
        assert_eq!(
            code("data.json_to_csv", json!({"items": [{"a": {}}]})).await,
            "invalid_input"
        );
        assert_eq!(
            code("data.json_to_csv", json!({"items": [1]})).await,
            "invalid_input"
        );
        // 1001 items each with its own key: 1001 x 1001 cells.
        let items: Vec<Value> = (0..1001).map(|i| json!({ format!("k{i}"): i })).collect();
        assert_eq!(
            code("data.json_to_csv", json!({"items": items})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn csv_round_trip_at_the_cap() {
        let items: Vec<Value> = (0..100_000)
            .map(|i| json!({"id": i.to_string(), "text": format!("a \"{i}\", b")}))
            .collect();
        let csv = ok("data.json_to_csv", json!({"items": items})).await;
        assert!(csv
            .as_str()
            .unwrap()
            .starts_with("id,text\n0,\"a \"\"0\"\", b\"\n"));
        let csv = csv.as_str().unwrap().to_string();
        // Too long for csv_to_json's 1 MiB, so read back the first rows only.
        let head: String = csv.lines().take(1001).map(|l| format!("{l}\n")).collect();
        let back = ok("data.csv_to_json", json!({"csv": head})).await;
        assert_eq!(back, json!(items[..1000]));
    }

    #[tokio::test]
    async fn base64_round_trips() {
        for (text, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("é✓", "w6ninJM="),
        ] {
            assert_eq!(
                ok("data.base64_encode", json!({"text": text})).await,
                json!(encoded)
            );
            assert_eq!(
                ok("data.base64_decode", json!({"data": encoded})).await,
                json!(text)
            );
        }
        // The standard alphabet: + and /.
        assert_eq!(
            ok("data.base64_encode", json!({"text": "\u{3ff}\u{fbff}"})).await,
            json!("z7/vr78=")
        );
    }

    #[tokio::test]
    async fn base64_decode_rejects_bad_input() {
        // Missing padding, bad characters, the URL-safe alphabet, whitespace, and
        // bytes that are not UTF-8 (0xff).
        for data in ["Zg", "Zg=", "Z===", "@@@@", "z7_vr78=", "Zm9v\n", "/w=="] {
            let err = call("data.base64_decode", json!({"data": data}))
                .await
                .unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{data}");
            assert!(err.to_string().contains("field 'data'"), "{err}");
        }
    }

    #[tokio::test]
    async fn base64_at_the_cap() {
        let text = "é".repeat(crate::schema::MAX_TEXT_BYTES / 2);
        let encoded = ok("data.base64_encode", json!({"text": text})).await;
        assert_eq!(
            encoded.as_str().unwrap().len(),
            4 * crate::schema::MAX_TEXT_BYTES.div_ceil(3)
        );
        assert!(encoded.as_str().unwrap().starts_with("w6nDqcOp"));
        // The encoding is longer than 1 MiB, so it cannot come back in one call.
        assert_eq!(
            code("data.base64_decode", json!({"data": encoded})).await,
            "invalid_input"
        );
        let text = "é".repeat(300_000);
        let encoded = ok("data.base64_encode", json!({"text": text})).await;
        assert_eq!(
            ok("data.base64_decode", json!({"data": encoded})).await,
            json!(text)
        );
    }

    #[tokio::test]
    async fn hex_round_trips() {
        assert_eq!(ok("data.hex_encode", json!({"text": ""})).await, json!(""));
        assert_eq!(
            ok("data.hex_encode", json!({"text": "é\n"})).await,
            json!("c3a90a")
        );
        assert_eq!(
            ok("data.hex_decode", json!({"data": "C3A90a"})).await,
            json!("é\n")
        );
        assert_eq!(ok("data.hex_decode", json!({"data": ""})).await, json!(""));
        for data in ["abc", "zz", "0x41", "ff", "c3"] {
            assert_eq!(
                code("data.hex_decode", json!({"data": data})).await,
                "invalid_input",
                "{data}"
            );
        }
        let text = "✓".repeat(100_000);
        let encoded = ok("data.hex_encode", json!({"text": text})).await;
        assert_eq!(
            ok("data.hex_decode", json!({"data": encoded})).await,
            json!(text)
        );
    }

    #[tokio::test]
    async fn url_encoding() {
        assert_eq!(
            ok("data.url_encode", json!({"text": "AZaz09-._~"})).await,
            json!("AZaz09-._~")
        );
        assert_eq!(
            ok("data.url_encode", json!({"text": " +/?#[]@!$&'()*,;=%"})).await,
            json!("%20%2B%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2C%3B%3D%25")
        );
        assert_eq!(
            ok("data.url_encode", json!({"text": "😀"})).await,
            json!("%F0%9F%98%80")
        );
        assert_eq!(ok("data.url_encode", json!({"text": ""})).await, json!(""));
    }

    #[tokio::test]
    async fn url_decoding() {
        assert_eq!(
            ok("data.url_decode", json!({"text": "a+b%20c"})).await,
            json!("a+b c")
        );
        assert_eq!(
            ok("data.url_decode", json!({"text": "%c3%A9%F0%9F%98%80"})).await,
            json!("é😀")
        );
        assert_eq!(
            ok("data.url_decode", json!({"text": "plain é"})).await,
            json!("plain é")
        );
        assert_eq!(
            ok("data.url_decode", json!({"text": "%25zz"})).await,
            json!("%zz")
        );
        for text in ["%zz", "%", "a%4", "%4g", "%FF", "%C3"] {
            assert_eq!(
                code("data.url_decode", json!({"text": text})).await,
                "invalid_input",
                "{text}"
            );
        }
        let text = "a b/é".repeat(70_000);
        let encoded = ok("data.url_encode", json!({"text": text})).await;
        assert_eq!(
            ok("data.url_decode", json!({"text": encoded})).await,
            json!(text)
        );
    }
}
