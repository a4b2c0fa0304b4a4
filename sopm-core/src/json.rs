//! Writes a JSON value as compact text, byte for byte what `serde_json::to_string`
//! writes, with strings scanned for what needs escaping sixteen bytes at a time
//! (serde_json looks each byte up in a table): the records and answers that carry a
//! call's input and output spend most of their serializing in their strings.

use std::fmt::Write as _;

use serde_json::Value;

/// `value` as compact JSON text.
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(64);
    write_value(&mut out, value);
    out
}

/// Appends `value` as compact JSON text.
pub fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // serde_json writes a number as its `Display`: itoa for integers (as here,
        // without the formatting machinery), ryu for the others.
        Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                write_u64(out, i);
            } else if let Some(i) = n.as_i64() {
                out.push_str(itoa::Buffer::new().format(i));
            } else {
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Appends `n` as a JSON number (its decimal digits, as serde_json writes them).
pub fn write_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `text` as a JSON string: quoted, with `"`, `\` and control characters
/// escaped as serde_json escapes them.
pub fn write_str(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut at = 0;
    loop {
        at += clean_len(&bytes[at..]);
        let Some(&b) = bytes.get(at) else { break };
        out.push_str(&text[start..at]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        at += 1;
        start = at;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// Bytes looked at per step of [`clean_len`].
const STEP: usize = 16;

/// How many bytes at the start of `bytes` need no escape (not `"`, `\` or below
/// 0x20), looked at sixteen at a time: a step is written without branches so that the
/// compiler makes it a few vector compares.
fn clean_len(bytes: &[u8]) -> usize {
    let mut n = 0;
    for chunk in bytes.chunks_exact(STEP) {
        let chunk: &[u8; STEP] = chunk.try_into().expect("a whole step");
        let mut special = false;
        for &b in chunk {
            special |= needs_escape(b);
        }
        if special {
            break;
        }
        n += STEP;
    }
    n + bytes[n..].iter().take_while(|&&b| !needs_escape(b)).count()
}

#[inline(always)]
fn needs_escape(b: u8) -> bool {
    (b < 0x20) | (b == b'"') | (b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn writes_what_serde_json_writes() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-17),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(0.1),
            json!(""),
            json!("héllo wörld \"quoted\" back\\slash \n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f} 😀"),
            json!("12345678\"12345678\\1234567\u{1}"),
            json!([]),
            json!({}),
            json!({"b": [1, {"c": "d\n"}], "a": null, "é": "x"}),
        ] {
            assert_eq!(to_string(&v), serde_json::to_string(&v).unwrap(), "{v:?}");
        }
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "\\PC{0,40}".prop_map(Value::String),
            "[\\x00-\\x7f\"\\\\]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,12}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_is_written_as_serde_json_writes_it(v in any_value()) {
            prop_assert_eq!(to_string(&v), serde_json::to_string(&v).unwrap());
        }

        #[test]
        fn clean_len_stops_at_the_first_byte_to_escape(s in "[\\x00-\\x7f\\u{80}-\\u{10ffff}]{0,40}") {
            let b = s.as_bytes();
            let want = b
                .iter()
                .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
                .unwrap_or(b.len());
            prop_assert_eq!(clean_len(b), want);
        }
    }
}
