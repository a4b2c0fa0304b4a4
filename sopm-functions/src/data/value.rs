//! Helpers on JSON values shared by the data built-ins: equality by value (also as a
//! hash key), an exact order on numbers, and the text of a grouping key.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

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
    /// the order is total and agrees with the equality of [`same`].
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

/// Checks that `v` nests at most [`MAX_DEPTH`] levels, so that the recursive
/// [`ByValue`] and [`same`] cannot exhaust the stack. Its own recursion stops at
/// [`MAX_DEPTH`].
pub(super) fn check_depth(v: &Value, field: &str) -> Result<()> {
    fn within(v: &Value, depth: usize) -> bool {
        match v {
            Value::Array(items) if !items.is_empty() => {
                depth < MAX_DEPTH && items.iter().all(|c| within(c, depth + 1))
            }
            Value::Object(map) if !map.is_empty() => {
                depth < MAX_DEPTH && map.values().all(|c| within(c, depth + 1))
            }
            _ => true,
        }
    }
    if within(v, 0) {
        Ok(())
    } else {
        Err(too_deep(field))
    }
}

/// Whether two JSON values are equal as JSON values: numbers by value (see
/// [`Exact`]), objects regardless of key order. Recurses only as deep as both values
/// go, so one [`check_depth`]-checked side bounds it.
pub(super) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Exact::of(x) == Exact::of(y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same(p, q)))
        }
        _ => a == b,
    }
}

/// A JSON value that hashes and compares by [`same`], for hash sets of values. Only
/// for values that passed [`check_depth`].
#[derive(Debug, Clone, Copy)]
pub(super) struct ByValue<'a>(pub(super) &'a Value);

impl PartialEq for ByValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        same(self.0, other.0)
    }
}

impl Eq for ByValue<'_> {}

impl Hash for ByValue<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_value(self.0, state);
    }
}

fn hash_value<H: Hasher>(v: &Value, state: &mut H) {
    match v {
        Value::Null => state.write_u8(0),
        Value::Bool(b) => {
            state.write_u8(1);
            b.hash(state);
        }
        Value::Number(n) => match Exact::of(n) {
            Exact::Int(i) => {
                state.write_u8(2);
                i.hash(state);
            }
            // Never -0.0 or NaN: -0.0 is `Int(0)` and JSON has no NaN.
            Exact::Float(x) => {
                state.write_u8(3);
                x.to_bits().hash(state);
            }
        },
        Value::String(s) => {
            state.write_u8(4);
            s.hash(state);
        }
        Value::Array(items) => {
            state.write_u8(5);
            state.write_usize(items.len());
            for item in items {
                hash_value(item, state);
            }
        }
        Value::Object(map) => {
            state.write_u8(6);
            state.write_usize(map.len());
            // serde_json keeps keys sorted unless its `preserve_order` feature is on;
            // equal objects must hash alike either way.
            if map.keys().is_sorted() {
                for (k, v) in map {
                    k.hash(state);
                    hash_value(v, state);
                }
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, v) in entries {
                    k.hash(state);
                    hash_value(v, state);
                }
            }
        }
    }
}

/// The text of a grouping key: strings as themselves, missing or null as "null", any
/// other value as its JSON text ("1", "true", "[1,2]").
pub(super) fn key_text(v: Option<&Value>) -> Cow<'_, str> {
    match v {
        None | Some(Value::Null) => Cow::Borrowed("null"),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

/// The distinct values of an array (by [`same`]).
pub(super) struct Distinct<'a> {
    /// The first occurrence of each, in order.
    pub(super) firsts: Vec<ByValue<'a>>,
    /// The same values, for lookups.
    pub(super) set: HashSet<ByValue<'a>>,
}

impl<'a> Distinct<'a> {
    pub(super) fn of(values: &'a [Value], field: &str) -> Result<Self> {
        let mut set = HashSet::with_capacity(values.len());
        let mut firsts = Vec::new();
        for v in values {
            check_depth(v, field)?;
            if set.insert(ByValue(v)) {
                firsts.push(ByValue(v));
            }
        }
        Ok(Distinct { firsts, set })
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_are_same_and_hash_alike() {
        let pairs = [
            (json!(1), json!(1.0)),
            (json!(0), json!(-0.0)),
            (json!({"a": 1, "b": [true]}), json!({"b": [true], "a": 1.0})),
            (json!(u64::MAX), json!(u64::MAX)),
            (json!(1e300), json!(1e300)),
            (json!("é"), json!("é")),
        ];
        for (a, b) in pairs {
            assert!(same(&a, &b), "{a} {b}");
            let state = std::collections::hash_map::RandomState::new();
            assert_eq!(
                state.hash_one(ByValue(&a)),
                state.hash_one(ByValue(&b)),
                "{a} {b}"
            );
        }
    }

    #[test]
    fn different_values_differ() {
        for (a, b) in [
            (json!(1), json!("1")),
            (json!(1), json!(1.5)),
            (json!(["ab", "c"]), json!(["a", "bc"])),
            (json!({"a": "b"}), json!({"ab": ""})),
            (json!({"a": 1}), json!({"a": 1, "b": 1})),
            (json!(null), json!("null")),
            (json!([]), json!({})),
            (json!(false), json!(0)),
            (
                json!(9_007_199_254_740_993_i64),
                json!(9_007_199_254_740_992.0),
            ),
        ] {
            assert!(!same(&a, &b), "{a} {b}");
        }
    }

    #[test]
    fn too_deep_is_invalid_input() {
        let mut v = json!(1);
        for _ in 0..MAX_DEPTH {
            v = json!([v]);
        }
        assert!(check_depth(&v, "values").is_ok());
        let v = json!({"k": v});
        let err = check_depth(&v, "values").unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.to_string().contains("'values'"));
        assert!(check_depth(&json!("scalar"), "values").is_ok());
    }

    #[test]
    fn distinct_keeps_first_occurrences() {
        let values = [json!(1), json!(1.0), json!("1"), json!(2), json!(1)];
        let firsts: Vec<&Value> = Distinct::of(&values, "v")
            .unwrap()
            .firsts
            .into_iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(firsts, [&json!(1), &json!("1"), &json!(2)]);
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
