//! `data.json_schema_validate`: JSON Schema draft 2020-12 with the `jsonschema` crate.

use std::fmt::{self, Display, Write};

use jsonschema::{PatternOptions, ValidationError};
use serde_json::{json, Value};
use sopm_core::{Error, Result};

use crate::schema::Args;

/// Most errors reported; `valid` still reflects the whole document.
const MAX_ERRORS: usize = 100;
/// Longest instance preview in an error message, in bytes.
const MAX_PREVIEW: usize = 64;
/// Longest error message, in bytes.
const MAX_MESSAGE: usize = 512;

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

/// The error's message, at most [`MAX_MESSAGE`] bytes, with the offending value shown
/// as at most [`MAX_PREVIEW`] bytes of its JSON text, so that a large document or
/// schema does not make huge messages.
fn message(e: &ValidationError<'_>) -> String {
    capped(
        e.masked_with(capped(e.instance(), MAX_PREVIEW)),
        MAX_MESSAGE,
    )
}

/// The text of `value`, cut to at most `limit` bytes on a character boundary and
/// marked with "…" when cut. Formatting stops as soon as the limit is reached, so
/// a huge value costs no more than a small one.
fn capped(value: impl Display, limit: usize) -> String {
    let mut out = Capped {
        text: String::new(),
        limit,
        cut: false,
    };
    // An error here only means the limit was reached.
    let _ = write!(out, "{value}");
    if out.cut {
        out.text.push('…');
    }
    out.text
}

/// A text sink that takes `limit` bytes and then fails.
struct Capped {
    text: String,
    limit: usize,
    cut: bool,
}

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.limit.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(s.get(..end).unwrap_or_default());
        self.cut = true;
        Err(fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::testing::{call, code};

    async fn check(document: Value, schema: Value) -> Value {
        call(
            "data.json_schema_validate",
            json!({"document": document, "schema": schema}),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn valid_and_invalid_documents() {
        let schema = json!({
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 1}, "tags": {"type": "array", "items": {"type": "integer"}}},
            "required": ["name"]
        });
        assert_eq!(
            check(json!({"name": "ada", "tags": [1, 2]}), schema.clone()).await,
            json!({"valid": true, "errors": []})
        );
        let out = check(json!({"tags": [1, "two"], "a/b": 1}), schema).await;
        assert_eq!(out["valid"], json!(false));
        let mut paths: Vec<&str> = out["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        paths.sort_unstable();
        assert_eq!(paths, ["", "/tags/1"]);
        let messages = out["errors"].to_string();
        assert!(
            messages.contains("\\\"name\\\" is a required property"),
            "{messages}"
        );
        assert!(
            messages.contains("\\\"two\\\" is not of type \\\"integer\\\""),
            "{messages}"
        );
    }

    #[tokio::test]
    async fn paths_are_json_pointers() {
        let schema = json!({"properties": {"a/b": {"properties": {"m~n": {"type": "null"}}}}});
        let out = check(json!({"a/b": {"m~n": 1}}), schema).await;
        assert_eq!(out["errors"][0]["path"], json!("/a~1b/m~0n"));
    }

    #[tokio::test]
    async fn boolean_schemas_and_local_refs() {
        assert_eq!(check(json!(1), json!(true)).await["valid"], json!(true));
        let out = check(json!(1), json!(false)).await;
        assert_eq!(
            out,
            json!({"valid": false, "errors": [{"path": "", "message": "False schema does not allow 1"}]})
        );
        let schema = json!({
            "$defs": {"pos": {"type": "integer", "minimum": 1}},
            "type": "array",
            "items": {"$ref": "#/$defs/pos"}
        });
        assert_eq!(
            check(json!([1, 2]), schema.clone()).await["valid"],
            json!(true)
        );
        let out = check(json!([1, 0]), schema).await;
        assert_eq!(
            out["errors"],
            json!([{"path": "/1", "message": "0 is less than the minimum of 1"}])
        );
    }

    #[tokio::test]
    async fn known_meta_schemas_need_no_network() {
        for meta in [
            "https://json-schema.org/draft/2020-12/schema",
            "http://json-schema.org/draft-07/schema#",
        ] {
            let schema = json!({"$schema": meta, "type": "integer"});
            assert_eq!(check(json!(1), schema.clone()).await["valid"], json!(true));
            assert_eq!(check(json!("1"), schema).await["valid"], json!(false));
        }
    }

    #[tokio::test]
    async fn format_is_an_annotation() {
        assert_eq!(
            check(json!("not an email"), json!({"format": "email"})).await["valid"],
            json!(true)
        );
    }

    #[tokio::test]
    async fn bad_schemas_are_invalid_input() {
        for schema in [
            json!("string"),
            json!(1),
            json!(null),
            json!({"type": 5}),
            json!({"minimum": "x"}),
            json!({"$ref": "https://example.com/schema.json"}),
            json!({"$ref": "#/$defs/missing"}),
            // Look-ahead is not in the linear-time regex engine.
            json!({"pattern": "^(?=a)"}),
        ] {
            let input = json!({"document": 1, "schema": schema});
            let err = call("data.json_schema_validate", input).await.unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{schema}");
            assert!(err.to_string().contains("field 'schema'"), "{err}");
        }
        assert_eq!(
            code("data.json_schema_validate", json!({"document": 1})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn patterns_cannot_backtrack_catastrophically() {
        let document = format!("{}b", "a".repeat(100_000));
        let out = check(
            json!(vec![document; 10]),
            json!({"items": {"pattern": "^(a+)+$"}}),
        )
        .await;
        assert_eq!(out["valid"], json!(false));
        assert_eq!(out["errors"].as_array().unwrap().len(), 10);
    }

    #[tokio::test]
    async fn errors_are_capped_and_messages_short() {
        let document: Vec<String> = (0..100_000).map(|i| format!("item {i}")).collect();
        let out = check(json!(document), json!({"items": {"type": "integer"}})).await;
        assert_eq!(out["valid"], json!(false));
        let errors = out["errors"].as_array().unwrap();
        assert_eq!(errors.len(), super::MAX_ERRORS);
        assert_eq!(
            errors[0],
            json!({"path": "/0", "message": "\"item 0\" is not of type \"integer\""})
        );
        // The whole document fails at the root: its preview is cut.
        let out = check(json!(document), json!({"type": "object"})).await;
        let message = out["errors"][0]["message"].as_str().unwrap();
        assert!(message.starts_with("[\"item 0\",\"item 1\""), "{message}");
        assert!(message.contains("…"), "{message}");
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn texts_are_cut_at_a_character_boundary() {
        let v = json!("é".repeat(100));
        let p = super::capped(&v, super::MAX_PREVIEW);
        assert_eq!(p, format!("\"{}…", "é".repeat(31)));
        assert_eq!(
            super::capped(json!({"a": [1, null]}), 14),
            "{\"a\":[1,null]}"
        );
        assert_eq!(
            super::capped(json!({"a": [1, null]}), 13),
            "{\"a\":[1,null]…"
        );
        assert_eq!(super::capped("", 0), "");
    }

    #[tokio::test]
    async fn messages_quoting_large_schemas_are_capped() {
        let options: Vec<String> = (0..10_000).map(|i| format!("option {i}")).collect();
        let out = check(json!(vec!["x"; 100]), json!({"items": {"enum": options}})).await;
        let errors = out["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 100);
        for e in errors {
            let message = e["message"].as_str().unwrap();
            assert!(
                message.len() <= super::MAX_MESSAGE + '…'.len_utf8(),
                "{message}"
            );
            assert!(message.starts_with("\"x\" is not one of"), "{message}");
        }
    }
}
