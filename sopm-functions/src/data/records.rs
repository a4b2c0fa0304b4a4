//! Built-ins over arrays of objects and documents: group_by, filter, pluck,
//! count_by, merge and json_pointer.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};
use sopm_core::types::truncate_for_message;
use sopm_core::{Error, Result};

use super::value::{check_depth, key_text, same, too_deep, Exact, MAX_DEPTH};
use crate::schema::Args;

/// The operators of `data.filter`.
pub(super) const FILTER_OPS: &[&str] = &["eq", "ne", "lt", "le", "gt", "ge", "contains"];

/// Items grouped by [`key_text`] of their key: groups in first-seen order (the
/// output object may still sort its keys), each group's items in input order.
fn groups<'a>(args: &Args<'a>) -> Result<Vec<(Cow<'a, str>, Vec<&'a Value>)>> {
    let items = args.array("items")?;
    let key = args.str("key")?;
    let mut index: HashMap<Cow<str>, usize> = HashMap::new();
    let mut groups: Vec<(Cow<str>, Vec<&Value>)> = Vec::new();
    for item in items {
        let k = key_text(item.get(key));
        let i = *index.entry(k.clone()).or_insert_with(|| {
            groups.push((k, Vec::new()));
            groups.len() - 1
        });
        if let Some((_, members)) = groups.get_mut(i) {
            members.push(item);
        }
    }
    Ok(groups)
}

pub(super) fn group_by(args: &Args<'_>) -> Result<Value> {
    Ok(Value::Object(
        groups(args)?
            .into_iter()
            .map(|(k, items)| {
                let items = items.into_iter().cloned().collect();
                (k.into_owned(), Value::Array(items))
            })
            .collect(),
    ))
}

pub(super) fn count_by(args: &Args<'_>) -> Result<Value> {
    Ok(Value::Object(
        groups(args)?
            .into_iter()
            .map(|(k, items)| (k.into_owned(), Value::from(items.len())))
            .collect(),
    ))
}

/// A missing field counts as null. `eq`/`ne` compare JSON values (numbers by value);
/// `lt`..`ge` compare numbers with numbers and strings with strings (code point
/// order), and an item of another kind does not match; `contains` matches a string
/// field holding the value as a substring, or an array field holding an element
/// equal to the value.
pub(super) fn filter(args: &Args<'_>) -> Result<Value> {
    let items = args.array("items")?;
    let field = args.str("field")?;
    let op = args.str("op")?;
    let value = args.value("value")?;
    let wanted: Option<&[Ordering]> = match op {
        "lt" => Some(&[Ordering::Less]),
        "le" => Some(&[Ordering::Less, Ordering::Equal]),
        "gt" => Some(&[Ordering::Greater]),
        "ge" => Some(&[Ordering::Greater, Ordering::Equal]),
        _ => None,
    };
    if wanted.is_some() && !(value.is_number() || value.is_string()) {
        return Err(Error::invalid(format!(
            "field 'value': op '{op}' needs a number or a string"
        )));
    }
    // Bounds the recursion of `same`, which goes no deeper than `value` does.
    check_depth(value, "value")?;
    let mut out = Vec::new();
    for item in items {
        let got = item.get(field).unwrap_or(&Value::Null);
        let keep = match (op, wanted) {
            (_, Some(orderings)) => order(got, value).is_some_and(|o| orderings.contains(&o)),
            ("eq", None) => same(got, value),
            ("ne", None) => !same(got, value),
            ("contains", None) => contains(got, value),
            _ => return Err(Error::invalid(format!("field 'op': unknown op '{op}'"))),
        };
        if keep {
            out.push(item.clone());
        }
    }
    Ok(Value::Array(out))
}

/// The order of two numbers or of two strings; `None` for any other pair.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some(Exact::of(x).cmp(Exact::of(y))),
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        _ => None,
    }
}

fn contains(got: &Value, value: &Value) -> bool {
    match (got, value) {
        (Value::String(s), Value::String(part)) => s.contains(part.as_str()),
        (Value::Array(elements), _) => elements.iter().any(|e| same(e, value)),
        _ => false,
    }
}

pub(super) fn pluck(args: &Args<'_>) -> Result<Value> {
    let items = args.array("items")?;
    let field = args.str("field")?;
    Ok(Value::Array(
        items
            .iter()
            .map(|item| item.get(field).cloned().unwrap_or(Value::Null))
            .collect(),
    ))
}

pub(super) fn merge(args: &Args<'_>) -> Result<Value> {
    let mut merged = Map::new();
    for (i, object) in args.array("objects")?.iter().enumerate() {
        let Value::Object(object) = object else {
            return Err(Error::invalid(format!(
                "field 'objects[{i}]': expected an object"
            )));
        };
        merge_into(&mut merged, object, 0)?;
    }
    Ok(Value::Object(merged))
}

/// Merges `source` into `target`: objects meeting objects merge key by key, anything
/// else (arrays included) replaces what was there. Recursion is bounded by
/// [`MAX_DEPTH`].
fn merge_into(
    target: &mut Map<String, Value>,
    source: &Map<String, Value>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep("objects"));
    }
    for (k, v) in source {
        match (target.get_mut(k), v) {
            (Some(Value::Object(t)), Value::Object(s)) => merge_into(t, s, depth + 1)?,
            _ => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

/// RFC 6901: "" is the whole document; otherwise "/"-separated tokens where "~1" is
/// "/" and "~0" is "~", and array indexes are decimal without leading zeros ("-",
/// the end of an array, never holds a value).
pub(super) fn json_pointer(args: &Args<'_>) -> Result<Value> {
    let document = args.value("document")?;
    let pointer = args.str("pointer")?;
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(Error::invalid(
            "field 'pointer': must be empty or start with '/'",
        ));
    }
    if !pointer
        .split('~')
        .skip(1)
        .all(|after| after.starts_with(['0', '1']))
    {
        return Err(Error::invalid(
            "field 'pointer': '~' must be followed by '0' or '1'",
        ));
    }
    // serde_json's lookup implements the rest of RFC 6901 (unescaping, indexes).
    document
        .pointer(pointer)
        .cloned()
        .ok_or_else(|| Error::not_found(format!("no value at '{}'", truncate_for_message(pointer))))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::testing::{call, code};

    async fn ok(name: &str, input: Value) -> Value {
        call(name, input).await.unwrap()
    }

    #[tokio::test]
    async fn group_by_stringifies_keys() {
        let items = json!([
            {"k": 1, "i": 0}, {"k": "1", "i": 1}, {"i": 2}, {"k": null, "i": 3},
            {"k": true, "i": 4}, {"k": "é", "i": 5}, {"k": 1.5, "i": 6}, {"k": 1, "i": 7}
        ]);
        let out = ok("data.group_by", json!({"items": items, "key": "k"})).await;
        assert_eq!(
            out,
            json!({
                "1": [{"k": 1, "i": 0}, {"k": "1", "i": 1}, {"k": 1, "i": 7}],
                "null": [{"i": 2}, {"k": null, "i": 3}],
                "true": [{"k": true, "i": 4}],
                "é": [{"k": "é", "i": 5}],
                "1.5": [{"k": 1.5, "i": 6}],
            })
        );
        assert_eq!(
            ok("data.group_by", json!({"items": [], "key": "k"})).await,
            json!({})
        );
        assert_eq!(
            ok(
                "data.group_by",
                json!({"items": [{"k": [1, 2]}], "key": "k"})
            )
            .await,
            json!({"[1,2]": [{"k": [1, 2]}]})
        );
        assert_eq!(
            code("data.group_by", json!({"items": [1], "key": "k"})).await,
            "invalid_input"
        );
        assert_eq!(
            code("data.group_by", json!({"items": [], "key": 1})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn count_by_counts() {
        let items = json!([{"k": "a"}, {"k": "b"}, {}, {"k": "a"}, {"k": false}]);
        assert_eq!(
            ok("data.count_by", json!({"items": items, "key": "k"})).await,
            json!({"a": 2, "b": 1, "null": 1, "false": 1})
        );
        assert_eq!(
            ok("data.count_by", json!({"items": [], "key": ""})).await,
            json!({})
        );
        assert_eq!(
            code("data.count_by", json!({"items": [[]], "key": "k"})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn group_and_count_at_the_cap() {
        let items: Vec<Value> = (0..100_000).map(|i| json!({"k": i % 7})).collect();
        let out = ok("data.count_by", json!({"items": items, "key": "k"})).await;
        assert_eq!(out["0"], json!(14286));
        assert_eq!(out["6"], json!(14285));
        // group_by has a lower cap (25,000): it copies every item.
        let groups = ok(
            "data.group_by",
            json!({"items": items[..25_000], "key": "k"}),
        )
        .await;
        assert_eq!(groups["3"].as_array().unwrap().len(), 3571);
        assert_eq!(groups["3"][1], json!({"k": 3}));
        let err = call(
            "data.group_by",
            json!({"items": items[..25_001], "key": "k"}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.to_string().contains("at most 25000 items"), "{err}");
    }

    #[tokio::test]
    async fn csv_rows_are_capped() {
        let at_cap = format!("a\n{}", "x\n".repeat(100_000));
        let rows = ok("data.csv_to_json", json!({"csv": at_cap})).await;
        assert_eq!(rows.as_array().unwrap().len(), 100_000);
        let over = format!("a\n{}", "x\n".repeat(100_001));
        assert_eq!(
            code("data.csv_to_json", json!({"csv": over})).await,
            "invalid_input"
        );
    }

    async fn filter(items: &Value, field: &str, op: &str, value: Value) -> Value {
        ok(
            "data.filter",
            json!({"items": items, "field": field, "op": op, "value": value}),
        )
        .await
    }

    #[tokio::test]
    async fn filter_ops() {
        let items = json!([
            {"id": 0, "n": 5, "s": "apple", "tags": ["a", 1]},
            {"id": 1, "n": 10.0, "s": "Banana"},
            {"id": 2, "n": "7", "s": "cherry pie"},
            {"id": 3}
        ]);
        let ids = |v: Value| -> Vec<i64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(ids(filter(&items, "n", "eq", json!(10)).await), [1]);
        assert_eq!(ids(filter(&items, "n", "ne", json!(10)).await), [0, 2, 3]);
        assert_eq!(ids(filter(&items, "n", "lt", json!(10)).await), [0]);
        assert_eq!(ids(filter(&items, "n", "le", json!(10)).await), [0, 1]);
        assert_eq!(ids(filter(&items, "n", "gt", json!(5)).await), [1]);
        assert_eq!(ids(filter(&items, "n", "ge", json!(5)).await), [0, 1]);
        // Strings order by code point: "B" < "a".
        assert_eq!(ids(filter(&items, "s", "lt", json!("apple")).await), [1]);
        assert_eq!(ids(filter(&items, "s", "ge", json!("apple")).await), [0, 2]);
        assert_eq!(ids(filter(&items, "n", "gt", json!("6")).await), [2]);
        assert_eq!(ids(filter(&items, "s", "contains", json!("an")).await), [1]);
        assert_eq!(
            ids(filter(&items, "s", "contains", json!("")).await),
            [0, 1, 2]
        );
        assert_eq!(
            ids(filter(&items, "tags", "contains", json!(1.0)).await),
            [0]
        );
        assert_eq!(
            ids(filter(&items, "tags", "contains", json!("a")).await),
            [0]
        );
        // A missing field is null.
        assert_eq!(ids(filter(&items, "n", "eq", json!(null)).await), [3]);
        assert_eq!(
            ids(filter(&items, "tags", "eq", json!(["a", 1])).await),
            [0]
        );
        assert_eq!(filter(&json!([]), "n", "eq", json!(1)).await, json!([]));
    }

    #[tokio::test]
    async fn filter_rejects_bad_input() {
        let items = json!([{"n": 1}]);
        for input in [
            json!({"items": items, "field": "n", "op": "lt", "value": null}),
            json!({"items": items, "field": "n", "op": "ge", "value": [1]}),
            json!({"items": items, "field": "n", "op": "like", "value": 1}),
            json!({"items": items, "field": "n", "op": "eq"}),
            json!({"items": [1], "field": "n", "op": "eq", "value": 1}),
        ] {
            assert_eq!(code("data.filter", input).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn filter_at_the_cap() {
        let items: Vec<Value> = (0..100_000).map(|i| json!({"n": i})).collect();
        let out = filter(&json!(items), "n", "ge", json!(99_990)).await;
        assert_eq!(out.as_array().unwrap().len(), 10);
        assert_eq!(out[0], json!({"n": 99_990}));
    }

    #[tokio::test]
    async fn pluck_fields() {
        assert_eq!(
            ok(
                "data.pluck",
                json!({"items": [{"a": 1}, {"a": [2]}, {"b": 3}, {"a": null}], "field": "a"})
            )
            .await,
            json!([1, [2], null, null])
        );
        assert_eq!(
            ok("data.pluck", json!({"items": [], "field": "a"})).await,
            json!([])
        );
        assert_eq!(
            code("data.pluck", json!({"items": [{"a": 1}]})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn merge_deeply() {
        assert_eq!(
            ok(
                "data.merge",
                json!({"objects": [
                    {"a": {"x": 1, "y": {"z": [1, 2]}}, "b": 1, "c": {"k": 1}},
                    {"a": {"y": {"z": [3], "w": "é"}}, "b": {"now": "object"}, "c": 2},
                    {"d": null}
                ]})
            )
            .await,
            json!({"a": {"x": 1, "y": {"z": [3], "w": "é"}}, "b": {"now": "object"}, "c": 2, "d": null})
        );
        assert_eq!(ok("data.merge", json!({"objects": []})).await, json!({}));
        assert_eq!(
            ok("data.merge", json!({"objects": [{}, {"a": 1}, {}]})).await,
            json!({"a": 1})
        );
        assert_eq!(
            code("data.merge", json!({"objects": [{"a": 1}, [1]]})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn merge_refuses_excessive_depth() {
        let nest = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({"a": v});
            }
            v
        };
        let deep = nest(super::MAX_DEPTH + 2);
        assert_eq!(
            code("data.merge", json!({"objects": [deep, deep]})).await,
            "invalid_input"
        );
        let fine = nest(100);
        assert_eq!(
            ok("data.merge", json!({"objects": [fine, fine]})).await,
            fine
        );
    }

    async fn pointer(document: &Value, pointer: &str) -> Result<Value, &'static str> {
        call(
            "data.json_pointer",
            json!({"document": document, "pointer": pointer}),
        )
        .await
        .map_err(|e| e.code())
    }

    #[tokio::test]
    async fn json_pointer_rfc_6901() {
        // The examples of RFC 6901, section 5.
        let doc = json!({
            "foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4,
            "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8
        });
        assert_eq!(pointer(&doc, "").await, Ok(doc.clone()));
        assert_eq!(pointer(&doc, "/foo").await, Ok(json!(["bar", "baz"])));
        assert_eq!(pointer(&doc, "/foo/0").await, Ok(json!("bar")));
        assert_eq!(pointer(&doc, "/").await, Ok(json!(0)));
        assert_eq!(pointer(&doc, "/a~1b").await, Ok(json!(1)));
        assert_eq!(pointer(&doc, "/c%d").await, Ok(json!(2)));
        assert_eq!(pointer(&doc, "/i\\j").await, Ok(json!(5)));
        assert_eq!(pointer(&doc, "/ ").await, Ok(json!(7)));
        assert_eq!(pointer(&doc, "/m~0n").await, Ok(json!(8)));
        assert_eq!(
            pointer(&json!({"é": {"~1": null}}), "/é/~01").await,
            Ok(json!(null))
        );
        assert_eq!(pointer(&json!(null), "").await, Ok(json!(null)));
    }

    #[tokio::test]
    async fn json_pointer_missing_and_malformed() {
        let doc = json!({"a": [10, 20], "b": {"c": 1}});
        for missing in [
            "/x", "/a/2", "/a/-", "/a/01", "/a/+1", "/a/x", "/b/c/d", "/b/c/0",
        ] {
            assert_eq!(pointer(&doc, missing).await, Err("not_found"), "{missing}");
        }
        for bad in ["a", "a/b", "/~", "/~2", "/a~"] {
            assert_eq!(pointer(&doc, bad).await, Err("invalid_input"), "{bad}");
        }
        assert_eq!(
            code("data.json_pointer", json!({"pointer": ""})).await,
            "invalid_input"
        );
    }
}
