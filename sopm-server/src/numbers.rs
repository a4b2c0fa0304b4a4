//! JSON numbers as JSON Schema reads them: `2.0` is the integer 2. serde's integer
//! types refuse a whole number written as a float, so a body that its own schema
//! admits would be refused; fields that hold integers read through [`whole`].

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

/// Largest magnitude a float spells exactly as an integer.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// Deserialises `T` after turning every whole float in the value (`30000.0`) into
/// the integer it is. For `#[serde(deserialize_with = "whole")]`.
pub fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let mut v = Value::deserialize(d)?;
    integers(&mut v);
    T::deserialize(v).map_err(D::Error::custom)
}

fn integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() <= EXACT {
                *n = if f >= 0.0 {
                    Number::from(f as u64)
                } else {
                    Number::from(f as i64)
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integers),
        Value::Object(fields) => fields.values_mut().for_each(integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "whole")]
        n: Option<u64>,
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        let read = |s: &str| serde_json::from_str::<Body>(s).map(|b| b.n);
        assert_eq!(read(r#"{"n": 3}"#).unwrap(), Some(3));
        assert_eq!(read(r#"{"n": 3.0}"#).unwrap(), Some(3));
        assert_eq!(read(r#"{"n": 3e3}"#).unwrap(), Some(3000));
        assert_eq!(read(r#"{}"#).unwrap(), None);
        assert_eq!(read(r#"{"n": null}"#).unwrap(), None);
        assert!(read(r#"{"n": 3.5}"#).is_err());
        assert!(read(r#"{"n": -1.0}"#).is_err());
        assert!(read(r#"{"n": "3"}"#).is_err());
    }
}
