//! Helpers on JSON values shared by the data built-ins: equality by value (as a
//! hashable key), an exact order on numbers, and the text of a grouping key.

use std::cmp::Ordering;
use std::fmt::Write;

use serde_json::{Number, Value};
use sopm_core::{Error, Result};

/// Deepest nesting the recursive helpers walk. The JSON parser already stops at 128;
/// this also bounds values built in-process.
pub(super) const MAX_DEPTH: usize = 256;

/// The error for a value nested deeper than [`MAX_DEPTH`].
pub(super) fn too_deep(field: &str) -> Error {
    Error::invalid(format!(
        "field '{field}': nested deeper than {MAX_DEPTH} levels"
    ))
}

/// A number, exactly: JSON integers (and floats with no fraction below 2^64) as
/// integers, other floats as floats. Two numbers are equal exactly when their values
/// are, whatever their JSON spelling (`1`, `1.0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Exact {
    Int(i128),
    Float(f64),
}

/// 2^64: every JSON integer is below it in magnitude.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

impl Exact {
    pub(super) fn of(n: &Number) -> Exact {
        if let Some(i) = n.as_i64() {
            Exact::Int(i.into())
        } else if let Some(u) = n.as_u64() {
            Exact::Int(u.into())
        } else {
            let x = n.as_f64().unwrap_or(0.0);
            if x.fract() == 0.0 && x.abs() < TWO_POW_64 {
                // Exact: an integral float below 2^64 fits in i128 without rounding.
                Exact::Int(x as i128)
            } else {
                Exact::Float(x)
            }
        }
    }

    /// Compares by value, exactly (no rounding of large integers to floats), so that
    /// the order is total and agrees with the equality of [`equality_key`].
    pub(super) fn cmp(self, other: Exact) -> Ordering {
        match (self, other) {
            (Exact::Int(a), Exact::Int(b)) => a.cmp(&b),
            (Exact::Float(a), Exact::Float(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Exact::Int(a), Exact::Float(b)) => cmp_int_float(a, b),
            (Exact::Float(a), Exact::Int(b)) => cmp_int_float(b, a).reverse(),
        }
    }
}

/// Compares an integer below 2^64 in magnitude with a finite float.
fn cmp_int_float(n: i128, x: f64) -> Ordering {
    if x >= TWO_POW_64 {
        Ordering::Less
    } else if x <= -TWO_POW_64 {
        Ordering::Greater
    } else {
        let floor = x.floor();
        match n.cmp(&(floor as i128)) {
            Ordering::Equal if x > floor => Ordering::Less,
            other => other,
        }
    }
}

/// A text that two JSON values share exactly when they are equal as JSON values:
/// objects regardless of key order, numbers by value (see [`Exact`]). Used to hash
/// values for `unique` and the set operations. Every value's encoding is
/// self-delimiting (strings are length-prefixed), so concatenations cannot collide.
pub(super) fn equality_key(v: &Value, field: &str) -> Result<String> {
    let mut out = String::new();
    write_key(v, &mut out, 0, field)?;
    Ok(out)
}

fn write_key(v: &Value, out: &mut String, depth: usize, field: &str) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep(field));
    }
    // Writing to a String cannot fail, hence the ignored fmt results.
    match v {
        Value::Null => out.push('n'),
        Value::Bool(true) => out.push('t'),
        Value::Bool(false) => out.push('f'),
        Value::Number(n) => match Exact::of(n) {
            Exact::Int(i) => {
                let _ = write!(out, "i{i};");
            }
            Exact::Float(x) => {
                let _ = write!(out, "d{x:?};");
            }
        },
        Value::String(s) => write_text(s, out),
        Value::Array(items) => {
            out.push('[');
            for item in items {
                write_key(item, out, depth + 1, field)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (k, v) in entries {
                write_text(k, out);
                write_key(v, out, depth + 1, field)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_text(s: &str, out: &mut String) {
    let _ = write!(out, "s{}:", s.len());
    out.push_str(s);
}

/// The text of a grouping key: strings as themselves, missing or null as "null", any
/// other value as its JSON text ("1", "true", "[1,2]").
pub(super) fn key_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "null".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The first occurrence of each distinct value (by [`equality_key`]), in order, with
/// its key.
pub(super) fn distinct<'a>(values: &'a [Value], field: &str) -> Result<Vec<(String, &'a Value)>> {
    let mut seen = std::collections::HashSet::with_capacity(values.len());
    let mut out = Vec::new();
    for v in values {
        let key = equality_key(v, field)?;
        if seen.insert(key.clone()) {
            out.push((key, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(v: Value) -> String {
        equality_key(&v, "x").unwrap()
    }

    #[test]
    fn equal_values_share_a_key() {
        assert_eq!(key(json!(1)), key(json!(1.0)));
        assert_eq!(key(json!(0)), key(json!(-0.0)));
        assert_eq!(
            key(json!({"a": 1, "b": [true]})),
            key(json!({"b": [true], "a": 1.0}))
        );
        assert_ne!(key(json!(1)), key(json!("1")));
        assert_ne!(key(json!(1)), key(json!(1.5)));
        assert_ne!(key(json!(["ab", "c"])), key(json!(["a", "bc"])));
        assert_ne!(key(json!({"a": "b"})), key(json!({"ab": ""})));
        assert_ne!(key(json!(null)), key(json!("null")));
        assert_ne!(key(json!([])), key(json!({})));
        assert_eq!(key(json!(u64::MAX)), key(json!(u64::MAX)));
    }

    #[test]
    fn too_deep_is_invalid_input() {
        let mut v = json!(1);
        for _ in 0..=MAX_DEPTH {
            v = json!([v]);
        }
        let err = equality_key(&v, "values").unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.to_string().contains("'values'"));
    }

    fn exact(v: Value) -> Exact {
        match v {
            Value::Number(n) => Exact::of(&n),
            _ => unreachable!(),
        }
    }

    #[test]
    fn numbers_compare_exactly() {
        let cmp = |a: Value, b: Value| exact(a).cmp(exact(b));
        assert_eq!(cmp(json!(1), json!(1.0)), Ordering::Equal);
        assert_eq!(cmp(json!(1), json!(1.5)), Ordering::Less);
        assert_eq!(cmp(json!(-1), json!(-1.5)), Ordering::Greater);
        assert_eq!(cmp(json!(-0.0), json!(0)), Ordering::Equal);
        assert_eq!(cmp(json!(i64::MAX), json!(i64::MAX - 1)), Ordering::Greater);
        assert_eq!(cmp(json!(u64::MAX), json!(1e300)), Ordering::Less);
        assert_eq!(cmp(json!(i64::MIN), json!(-1e300)), Ordering::Greater);
        // 2^53 + 1 is not a double; comparing through f64 would call them equal.
        assert_eq!(
            cmp(
                json!(9_007_199_254_740_993_i64),
                json!(9_007_199_254_740_992.0)
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn key_texts() {
        assert_eq!(key_text(None), "null");
        assert_eq!(key_text(Some(&json!(null))), "null");
        assert_eq!(key_text(Some(&json!("é"))), "é");
        assert_eq!(key_text(Some(&json!(1))), "1");
        assert_eq!(key_text(Some(&json!(1.5))), "1.5");
        assert_eq!(key_text(Some(&json!(true))), "true");
        assert_eq!(key_text(Some(&json!([1, "a"]))), "[1,\"a\"]");
    }
}
