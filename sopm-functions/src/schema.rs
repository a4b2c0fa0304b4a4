//! Declarative input specs: one description of each function's parameters gives both
//! its published JSON Schema and the validation that runs before the function does,
//! so the two cannot drift apart.

use serde_json::{json, Map, Value};
use sopm_core::{Error, Result};

/// Largest text input, in bytes (FUNCTIONS.md: every text input <= 1 MiB).
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// The type of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// Any JSON value.
    Any,
    /// `true` or `false`.
    Bool,
    /// Any finite number, optionally bounded (inclusive).
    Number {
        /// Lower bound.
        min: Option<f64>,
        /// Upper bound.
        max: Option<f64>,
    },
    /// An integer in `min..=max`.
    Integer {
        /// Lower bound.
        min: i64,
        /// Upper bound.
        max: i64,
    },
    /// A string of at most `max_bytes` bytes of UTF-8 and at least `min_chars` characters.
    String {
        /// Upper bound in bytes.
        max_bytes: usize,
        /// Lower bound in characters.
        min_chars: usize,
    },
    /// One of the given strings.
    Enum(&'static [&'static str]),
    /// One of the given integers.
    IntEnum(&'static [i64]),
    /// An array whose items are all of one type.
    Array {
        /// Type of every item.
        items: Box<Ty>,
        /// Fewest items.
        min_items: usize,
        /// Most items.
        max_items: usize,
    },
    /// Any JSON object.
    Object,
}

impl Ty {
    /// A finite number.
    pub fn number() -> Ty {
        Ty::Number {
            min: None,
            max: None,
        }
    }

    /// An integer in the whole `i64` range.
    pub fn integer() -> Ty {
        Ty::Integer {
            min: i64::MIN,
            max: i64::MAX,
        }
    }

    /// An integer in `min..=max`.
    pub fn int_range(min: i64, max: i64) -> Ty {
        Ty::Integer { min, max }
    }

    /// A text of at most 1 MiB.
    pub fn text() -> Ty {
        Ty::String {
            max_bytes: MAX_TEXT_BYTES,
            min_chars: 0,
        }
    }

    /// A text of at most 1 MiB and at least one character.
    pub fn non_empty_text() -> Ty {
        Ty::String {
            max_bytes: MAX_TEXT_BYTES,
            min_chars: 1,
        }
    }

    /// A text of at most `max_bytes` bytes.
    pub fn short_text(max_bytes: usize) -> Ty {
        Ty::String {
            max_bytes,
            min_chars: 0,
        }
    }

    /// An array of `items` with at most `max_items` entries.
    pub fn array(items: Ty, max_items: usize) -> Ty {
        Ty::Array {
            items: Box::new(items),
            min_items: 0,
            max_items,
        }
    }

    /// An array of `items` with `1..=max_items` entries.
    pub fn non_empty_array(items: Ty, max_items: usize) -> Ty {
        Ty::Array {
            items: Box::new(items),
            min_items: 1,
            max_items,
        }
    }

    /// The JSON Schema of this type.
    pub fn schema(&self) -> Value {
        match self {
            Ty::Any => json!({}),
            Ty::Bool => json!({"type": "boolean"}),
            Ty::Number { min, max } => {
                let mut s = json!({"type": "number"});
                if let Some(m) = min {
                    s["minimum"] = json!(m);
                }
                if let Some(m) = max {
                    s["maximum"] = json!(m);
                }
                s
            }
            Ty::Integer { min, max } => {
                let mut s = json!({"type": "integer"});
                if *min != i64::MIN {
                    s["minimum"] = json!(min);
                }
                if *max != i64::MAX {
                    s["maximum"] = json!(max);
                }
                s
            }
            Ty::String {
                max_bytes,
                min_chars,
            } => {
                // maxLength counts characters; bytes >= characters, so this is a
                // looser bound than the byte cap that validation applies.
                let mut s = json!({"type": "string", "maxLength": max_bytes});
                if *min_chars > 0 {
                    s["minLength"] = json!(min_chars);
                }
                s
            }
            Ty::Enum(options) => json!({"type": "string", "enum": options}),
            Ty::IntEnum(options) => json!({"type": "integer", "enum": options}),
            Ty::Array {
                items,
                min_items,
                max_items,
            } => {
                let mut s =
                    json!({"type": "array", "items": items.schema(), "maxItems": max_items});
                if *min_items > 0 {
                    s["minItems"] = json!(min_items);
                }
                s
            }
            Ty::Object => json!({"type": "object"}),
        }
    }

    /// Whether `v` is of this type: the fast path, with no message and no allocation.
    /// [`check`](Self::check) explains a failure.
    pub fn is_valid(&self, v: &Value) -> bool {
        match self {
            Ty::Any => true,
            Ty::Bool => v.is_boolean(),
            Ty::Number { min, max } => v
                .as_f64()
                .is_some_and(|x| min.is_none_or(|m| x >= m) && max.is_none_or(|m| x <= m)),
            Ty::Integer { min, max } => {
                as_integer(v).is_some_and(|n| n >= *min as i128 && n <= *max as i128)
            }
            Ty::String {
                max_bytes,
                min_chars,
            } => v.as_str().is_some_and(|s| {
                s.len() <= *max_bytes && (*min_chars == 0 || s.chars().count() >= *min_chars)
            }),
            Ty::Enum(options) => v.as_str().is_some_and(|s| options.contains(&s)),
            Ty::IntEnum(options) => {
                as_integer(v).is_some_and(|n| options.iter().any(|o| *o as i128 == n))
            }
            Ty::Array {
                items,
                min_items,
                max_items,
            } => v.as_array().is_some_and(|a| {
                a.len() <= *max_items
                    && a.len() >= *min_items
                    && (**items == Ty::Any || a.iter().all(|item| items.is_valid(item)))
            }),
            Ty::Object => v.is_object(),
        }
    }

    /// Checks `v` against this type; `path` names it in the error.
    pub fn check(&self, v: &Value, path: &mut String) -> Result<()> {
        match self {
            Ty::Any => Ok(()),
            Ty::Bool => match v {
                Value::Bool(_) => Ok(()),
                _ => Err(expected(path, "a boolean", v)),
            },
            Ty::Number { min, max } => {
                let Some(x) = v.as_f64() else {
                    return Err(expected(path, "a number", v));
                };
                if let Some(m) = min {
                    if x < *m {
                        return Err(Error::invalid(format!(
                            "field '{path}': must be >= {m}, got {x}"
                        )));
                    }
                }
                if let Some(m) = max {
                    if x > *m {
                        return Err(Error::invalid(format!(
                            "field '{path}': must be <= {m}, got {x}"
                        )));
                    }
                }
                Ok(())
            }
            Ty::Integer { min, max } => {
                let n = as_integer(v).ok_or_else(|| expected(path, "an integer", v))?;
                if n < *min as i128 || n > *max as i128 {
                    return Err(Error::invalid(format!(
                        "field '{path}': must be between {min} and {max}, got {n}"
                    )));
                }
                Ok(())
            }
            Ty::String {
                max_bytes,
                min_chars,
            } => {
                let Value::String(s) = v else {
                    return Err(expected(path, "a string", v));
                };
                if s.len() > *max_bytes {
                    return Err(Error::invalid(format!(
                        "field '{path}': must be at most {max_bytes} bytes, got {}",
                        s.len()
                    )));
                }
                if *min_chars > 0 && s.chars().count() < *min_chars {
                    return Err(Error::invalid(format!("field '{path}': must not be empty")));
                }
                Ok(())
            }
            Ty::Enum(options) => match v {
                Value::String(s) if options.contains(&s.as_str()) => Ok(()),
                _ => Err(Error::invalid(format!(
                    "field '{path}': expected one of {}, got {}",
                    options.join(", "),
                    describe(v)
                ))),
            },
            Ty::IntEnum(options) => match as_integer(v) {
                Some(n) if options.iter().any(|o| *o as i128 == n) => Ok(()),
                _ => Err(Error::invalid(format!(
                    "field '{path}': expected one of {}, got {}",
                    options
                        .iter()
                        .map(|o| o.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    describe(v)
                ))),
            },
            Ty::Array {
                items,
                min_items,
                max_items,
            } => {
                let Value::Array(a) = v else {
                    return Err(expected(path, "an array", v));
                };
                if a.len() > *max_items {
                    return Err(Error::invalid(format!(
                        "field '{path}': must have at most {max_items} items, got {}",
                        a.len()
                    )));
                }
                if a.len() < *min_items {
                    return Err(Error::invalid(if *min_items == 1 {
                        format!("field '{path}': must not be empty")
                    } else {
                        format!("field '{path}': must have at least {min_items} items")
                    }));
                }
                if **items != Ty::Any {
                    let len = path.len();
                    for (i, item) in a.iter().enumerate() {
                        use std::fmt::Write;
                        let _ = write!(path, "[{i}]");
                        items.check(item, path)?;
                        path.truncate(len);
                    }
                }
                Ok(())
            }
            Ty::Object => match v {
                Value::Object(_) => Ok(()),
                _ => Err(expected(path, "an object", v)),
            },
        }
    }
}

/// An integer value of a JSON number: integers, and floats with no fraction.
pub fn as_integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i as i128)
            } else if let Some(u) = n.as_u64() {
                Some(u as i128)
            } else {
                let f = n.as_f64()?;
                (f.fract() == 0.0 && f.abs() < 1.8e19).then_some(f as i128)
            }
        }
        _ => None,
    }
}

/// Describes a JSON value's kind for error messages.
pub fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number with a fraction",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected(path: &str, what: &str, got: &Value) -> Error {
    Error::invalid(format!(
        "field '{path}': expected {what}, got {}",
        describe(got)
    ))
}

/// One named parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Its name in the input object.
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
    /// Whether it must be present.
    pub required: bool,
}

/// The parameters of a function: its input is an object with exactly these fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub Vec<Param>);

impl Params {
    /// The JSON Schema of the input object.
    pub fn schema(&self) -> Value {
        let mut props = Map::new();
        for p in &self.0 {
            props.insert(p.name.to_string(), p.ty.schema());
        }
        let required: Vec<&str> = self
            .0
            .iter()
            .filter(|p| p.required)
            .map(|p| p.name)
            .collect();
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": false,
        })
    }

    /// Checks an input against the parameters and returns typed access to it.
    pub fn validate<'a>(&self, input: &'a Value) -> Result<Args<'a>> {
        let Value::Object(map) = input else {
            return Err(Error::invalid(format!(
                "input: expected an object, got {}",
                describe(input)
            )));
        };
        for key in map.keys() {
            if !self.0.iter().any(|p| p.name == key) {
                let names: Vec<&str> = self.0.iter().map(|p| p.name).collect();
                return Err(Error::invalid(if names.is_empty() {
                    format!(
                        "unknown field '{}': this function takes no fields",
                        sopm_core::types::truncate_for_message(key)
                    )
                } else {
                    format!(
                        "unknown field '{}': expected only {}",
                        sopm_core::types::truncate_for_message(key),
                        names.join(", ")
                    )
                }));
            }
        }
        let mut path = String::new();
        for p in &self.0 {
            match map.get(p.name) {
                None if p.required => {
                    return Err(Error::invalid(format!("missing field '{}'", p.name)));
                }
                // An explicit null for an optional field means "use the default".
                None | Some(Value::Null) if !p.required => {}
                None => unreachable!("required handled above"),
                Some(v) => {
                    if !p.ty.is_valid(v) {
                        path.clear();
                        path.push_str(p.name);
                        p.ty.check(v, &mut path)?;
                    }
                }
            }
        }
        Ok(Args { map })
    }
}

/// A number as given: an integer when it was one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// An integer that fits in `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
}

impl Num {
    /// As a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Validated input: typed getters. A getter for a field the spec does not guarantee
/// returns `invalid_input` rather than panicking.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    map: &'a Map<String, Value>,
}

fn wrong(name: &str, what: &str) -> Error {
    Error::invalid(format!("field '{name}': expected {what}"))
}

impl<'a> Args<'a> {
    /// The raw value of a field, if present and not null.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// The raw value of a required field.
    pub fn value(&self, name: &str) -> Result<&'a Value> {
        self.map
            .get(name)
            .ok_or_else(|| Error::invalid(format!("missing field '{name}'")))
    }

    /// A number field.
    pub fn f64(&self, name: &str) -> Result<f64> {
        self.value(name)?
            .as_f64()
            .ok_or_else(|| wrong(name, "a number"))
    }

    /// An optional number field.
    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        self.get(name)
            .map(|v| v.as_f64().ok_or_else(|| wrong(name, "a number")))
            .transpose()
    }

    /// A number field, keeping whether it was an integer.
    pub fn num(&self, name: &str) -> Result<Num> {
        to_num(self.value(name)?).ok_or_else(|| wrong(name, "a number"))
    }

    /// An integer field.
    pub fn i64(&self, name: &str) -> Result<i64> {
        as_integer(self.value(name)?)
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| wrong(name, "an integer"))
    }

    /// An optional integer field.
    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>> {
        self.get(name)
            .map(|v| {
                as_integer(v)
                    .and_then(|n| i64::try_from(n).ok())
                    .ok_or_else(|| wrong(name, "an integer"))
            })
            .transpose()
    }

    /// A non-negative integer field (a count, a size, a duration), for a spec whose
    /// lower bound is at least 0.
    pub fn u64(&self, name: &str) -> Result<u64> {
        as_integer(self.value(name)?)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| wrong(name, "a non-negative integer"))
    }

    /// A non-negative integer field used as a length or an index.
    pub fn usize(&self, name: &str) -> Result<usize> {
        as_integer(self.value(name)?)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| wrong(name, "a non-negative integer"))
    }

    /// A string field.
    pub fn str(&self, name: &str) -> Result<&'a str> {
        self.value(name)?
            .as_str()
            .ok_or_else(|| wrong(name, "a string"))
    }

    /// An optional string field.
    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>> {
        self.get(name)
            .map(|v| v.as_str().ok_or_else(|| wrong(name, "a string")))
            .transpose()
    }

    /// A boolean field.
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.value(name)?
            .as_bool()
            .ok_or_else(|| wrong(name, "a boolean"))
    }

    /// An optional boolean field.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| v.as_bool().ok_or_else(|| wrong(name, "a boolean")))
            .transpose()
    }

    /// An array field.
    pub fn array(&self, name: &str) -> Result<&'a Vec<Value>> {
        self.value(name)?
            .as_array()
            .ok_or_else(|| wrong(name, "an array"))
    }

    /// An object field.
    pub fn object(&self, name: &str) -> Result<&'a Map<String, Value>> {
        self.value(name)?
            .as_object()
            .ok_or_else(|| wrong(name, "an object"))
    }

    /// An array of numbers, as floats.
    pub fn f64_array(&self, name: &str) -> Result<Vec<f64>> {
        self.array(name)?
            .iter()
            .map(|v| v.as_f64().ok_or_else(|| wrong(name, "an array of numbers")))
            .collect()
    }

    /// An array of numbers, keeping integers as integers.
    pub fn num_array(&self, name: &str) -> Result<Vec<Num>> {
        self.array(name)?
            .iter()
            .map(|v| to_num(v).ok_or_else(|| wrong(name, "an array of numbers")))
            .collect()
    }

    /// An array of strings.
    pub fn str_array(&self, name: &str) -> Result<Vec<&'a str>> {
        self.array(name)?
            .iter()
            .map(|v| v.as_str().ok_or_else(|| wrong(name, "an array of strings")))
            .collect()
    }

    /// A matrix: an array of equal-length rows of numbers.
    pub fn matrix(&self, name: &str) -> Result<Vec<Vec<f64>>> {
        let rows = self.array(name)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let row = row.as_array().ok_or_else(|| {
                Error::invalid(format!("field '{name}[{i}]': expected an array of numbers"))
            })?;
            let row: Vec<f64> = row
                .iter()
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        Error::invalid(format!("field '{name}[{i}]': expected an array of numbers"))
                    })
                })
                .collect::<Result<_>>()?;
            if let Some(first) = out.first() {
                let first: &Vec<f64> = first;
                if first.len() != row.len() {
                    return Err(Error::invalid(format!(
                        "field '{name}': rows must all have the same length (row 0 has {}, row {i} has {})",
                        first.len(),
                        row.len()
                    )));
                }
            }
            out.push(row);
        }
        Ok(out)
    }
}

/// A JSON number as a [`Num`].
pub fn to_num(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(n.as_f64()?),
        }),
        _ => None,
    }
}

/// A float as JSON; NaN and infinities are `domain_error` (JSON cannot carry them).
pub fn float(x: f64) -> Result<Value> {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| Error::domain("the result is not a finite number"))
}

/// A [`Num`] as JSON (integers stay integers).
pub fn num_value(n: Num) -> Result<Value> {
    match n {
        Num::Int(i) => Ok(Value::from(i)),
        Num::Float(f) => float(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params(vec![
            Param {
                name: "a",
                ty: Ty::number(),
                required: true,
            },
            Param {
                name: "n",
                ty: Ty::int_range(0, 10),
                required: false,
            },
            Param {
                name: "xs",
                ty: Ty::array(Ty::number(), 3),
                required: false,
            },
        ])
    }

    #[test]
    fn messages_name_the_field() {
        let p = params();
        let err = |v: Value| p.validate(&v).unwrap_err().to_string();
        assert_eq!(err(json!({})), "missing field 'a'");
        assert!(err(json!({"a": "x"})).contains("field 'a': expected a number, got a string"));
        assert!(err(json!({"a": 1, "n": 11})).contains("field 'n': must be between 0 and 10"));
        assert!(err(json!({"a": 1, "zz": 1})).contains("unknown field 'zz'"));
        assert!(err(json!({"a": 1, "xs": [1, "q"]})).contains("field 'xs[1]'"));
        assert!(err(json!({"a": 1, "xs": [1, 2, 3, 4]})).contains("at most 3 items"));
        assert!(err(json!([1])).contains("expected an object"));
    }

    #[test]
    fn accepts_good_input_and_integral_floats() {
        let p = params();
        let v = json!({"a": 1.5, "n": 3.0});
        let args = p.validate(&v).unwrap();
        assert_eq!(args.f64("a").unwrap(), 1.5);
        assert_eq!(args.opt_i64("n").unwrap(), Some(3));
        assert_eq!(args.opt_i64("xs").unwrap(), None);
        assert_eq!(args.u64("n").unwrap(), 3);
        assert_eq!(args.usize("n").unwrap(), 3);
    }

    #[test]
    fn unsigned_getters_refuse_negatives_and_fractions() {
        let p = params();
        for v in [json!({"a": -2}), json!({"a": 1.5})] {
            let args = p.validate(&v).unwrap();
            assert_eq!(args.u64("a").unwrap_err().code(), "invalid_input");
            assert_eq!(args.usize("a").unwrap_err().code(), "invalid_input");
        }
    }

    #[test]
    fn nan_is_a_domain_error() {
        assert_eq!(float(f64::NAN).unwrap_err().code(), "domain_error");
        assert_eq!(float(1.0).unwrap(), json!(1.0));
    }
}
