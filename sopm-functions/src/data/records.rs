//! Built-ins over arrays of objects and documents: group_by, filter, pluck,
//! count_by, merge and json_pointer.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sopm_core::types::truncate_for_message;
use sopm_core::{Error, Result};

use super::value::{equality_key, key_text, too_deep, Exact, MAX_DEPTH};
use crate::schema::Args;

/// The operators of `data.filter`.
pub(super) const FILTER_OPS: &[&str] = &["eq", "ne", "lt", "le", "gt", "ge", "contains"];

/// Items grouped by [`key_text`] of their key, each group in input order.
fn groups<'a>(args: &Args<'a>) -> Result<BTreeMap<String, Vec<&'a Value>>> {
    let items = args.array("items")?;
    let key = args.str("key")?;
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for item in items {
        groups
            .entry(key_text(item.get(key)))
            .or_default()
            .push(item);
    }
    Ok(groups)
}

pub(super) fn group_by(args: &Args<'_>) -> Result<Value> {
    Ok(Value::Object(
        groups(args)?
            .into_iter()
            .map(|(k, items)| (k, Value::Array(items.into_iter().cloned().collect())))
            .collect(),
    ))
}

pub(super) fn count_by(args: &Args<'_>) -> Result<Value> {
    Ok(Value::Object(
        groups(args)?
            .into_iter()
            .map(|(k, items)| (k, Value::from(items.len())))
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
    let value_key = equality_key(value, "value")?;
    let mut out = Vec::new();
    for item in items {
        let got = item.get(field).unwrap_or(&Value::Null);
        let keep = match (op, wanted) {
            (_, Some(orderings)) => order(got, value).is_some_and(|o| orderings.contains(&o)),
            ("eq", None) => equality_key(got, "items")? == value_key,
            ("ne", None) => equality_key(got, "items")? != value_key,
            ("contains", None) => contains(got, value, &value_key)?,
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

fn contains(got: &Value, value: &Value, value_key: &str) -> Result<bool> {
    Ok(match (got, value) {
        (Value::String(s), Value::String(part)) => s.contains(part.as_str()),
        (Value::Array(elements), _) => {
            for e in elements {
                if equality_key(e, "items")? == value_key {
                    return Ok(true);
                }
            }
            false
        }
        _ => false,
    })
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
