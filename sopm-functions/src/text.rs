//! The `text.*` built-ins.
//!
//! "Character" means a Unicode scalar value throughout (as `text.length` counts),
//! except in `text.reverse`, which keeps grapheme clusters whole. Every text input is
//! at most 1 MiB; results that could multiply their inputs (join, replace,
//! regex_replace) are capped at [`MAX_RESULT_BYTES`].

mod case;
mod distance;
mod pattern;

use serde_json::{json, Map, Value};
use sopm_core::{Error, Result};
use unicode_segmentation::UnicodeSegmentation;

use crate::schema::{Args, Ty};
use crate::{Builtin, BuiltinSpec};
use pattern::MAX_PATTERN_BYTES;

/// Largest text that join, replace and regex_replace may build: their inputs are
/// capped, but a short `from` with a long `to` would otherwise multiply them.
const MAX_RESULT_BYTES: usize = 16 << 20;
/// Most characters of each `text.levenshtein` input.
const MAX_DISTANCE_CHARS: usize = 10_000;
/// Most parts `text.join` takes.
const MAX_PARTS: usize = 100_000;

pub(crate) fn register(out: &mut Vec<Builtin>) {
    out.push(
        unary("text.uppercase", "Returns the text in Unicode uppercase")
            .example(json!({"text": "Héllo wörld"}), json!("HÉLLO WÖRLD"))
            .linear(uppercase),
    );
    out.push(
        unary("text.lowercase", "Returns the text in Unicode lowercase")
            .example(json!({"text": "Héllo WÖRLD"}), json!("héllo wörld"))
            .linear(lowercase),
    );
    out.push(
        unary(
            "text.reverse",
            "Returns the text reversed by grapheme cluster (accents and emoji kept whole)",
        )
        .example(json!({"text": "héllo"}), json!("olléh"))
        .linear(reverse),
    );
    out.push(
        unary(
            "text.length",
            "Returns the number of characters (Unicode scalar values) in the text",
        )
        .example(json!({"text": "héllo"}), json!(5))
        .inline(length),
    );
    out.push(
        unary(
            "text.word_count",
            "Returns the number of words (Unicode word boundaries, words with a letter or digit)",
        )
        .example(json!({"text": "Hello, world! It's 2024."}), json!(4))
        .linear(word_count),
    );
    out.push(
        unary(
            "text.char_frequency",
            "Returns an object mapping each character of the text to its number of occurrences",
        )
        .example(
            json!({"text": "hello"}),
            json!({"e": 1, "h": 1, "l": 2, "o": 1}),
        )
        .linear(char_frequency),
    );
    out.push(
        unary(
            "text.is_palindrome",
            "Returns whether the text reads the same both ways, ignoring case and non-alphanumerics",
        )
        .example(json!({"text": "A man, a plan, a canal: Panama"}), json!(true))
        .linear(is_palindrome),
    );
    out.push(
        unary(
            "text.capitalize",
            "Returns the text with the first letter of each word uppercased, the rest unchanged",
        )
        .example(
            json!({"text": "hello wORLD, it's me"}),
            json!("Hello WORLD, It's Me"),
        )
        .linear(capitalize),
    );
    out.push(
        unary(
            "text.snake_case",
            "Returns the text's words lowercased and joined by '_' (\"helloWorld\" -> \"hello_world\")",
        )
        .example(json!({"text": "Hello World"}), json!("hello_world"))
        .linear(snake_case),
    );
    out.push(
        unary(
            "text.camel_case",
            "Returns the text's words in lowerCamelCase (\"hello_world\" -> \"helloWorld\")",
        )
        .example(json!({"text": "hello world"}), json!("helloWorld"))
        .linear(camel_case),
    );
    out.push(
        unary(
            "text.kebab_case",
            "Returns the text's words lowercased and joined by '-' (\"Hello World\" -> \"hello-world\")",
        )
        .example(json!({"text": "Hello World"}), json!("hello-world"))
        .linear(kebab_case),
    );
    out.push(
        unary(
            "text.slugify",
            "Returns a lowercase ASCII slug: accents folded, runs of anything else as one '-'",
        )
        .example(json!({"text": "Héllo, Wörld!"}), json!("hello-world"))
        .linear(slugify),
    );
    out.push(
        unary(
            "text.trim",
            "Returns the text without its leading and trailing white space",
        )
        .example(json!({"text": "  hello world \n"}), json!("hello world"))
        .inline(trim),
    );
    out.push(
        Builtin::describe(
            "text.replace",
            "Returns the text with every occurrence of `from` replaced by `to` (result <= 16 MiB)",
        )
        .param("text", Ty::text())
        .param("from", Ty::non_empty_text())
        .param("to", Ty::text())
        .example(
            json!({"text": "a-b-c", "from": "-", "to": " + "}),
            json!("a + b + c"),
        )
        .blocking(replace),
    );
    out.push(
        Builtin::describe(
            "text.split",
            "Returns the parts of the text between separators (empty separator: its characters)",
        )
        .param("text", Ty::text())
        .param("separator", Ty::text())
        .example(
            json!({"text": "a,b,,c", "separator": ","}),
            json!(["a", "b", "", "c"]),
        )
        .linear(split),
    );
    out.push(
        Builtin::describe(
            "text.join",
            "Returns the parts joined by the separator (at most 100,000 parts, result <= 16 MiB)",
        )
        .param("parts", Ty::array(Ty::text(), MAX_PARTS))
        .param("separator", Ty::text())
        .example(
            json!({"parts": ["a", "b", "c"], "separator": ", "}),
            json!("a, b, c"),
        )
        .blocking(join),
    );
    out.push(
        Builtin::describe(
            "text.regex_match",
            "Returns the first 10,000 non-overlapping regex matches as {match, start, end} (byte offsets), in linear time",
        )
        .param("text", Ty::text())
        .param("pattern", Ty::short_text(MAX_PATTERN_BYTES))
        .example(
            json!({"text": "a1b22", "pattern": "\\d+"}),
            json!([
                {"match": "1", "start": 1, "end": 2},
                {"match": "22", "start": 3, "end": 5}
            ]),
        )
        .blocking(regex_match),
    );
    out.push(
        Builtin::describe(
            "text.regex_replace",
            "Returns the text with every regex match replaced ($1 or ${name} for groups, result <= 16 MiB)",
        )
        .param("text", Ty::text())
        .param("pattern", Ty::short_text(MAX_PATTERN_BYTES))
        .param("replacement", Ty::text())
        .example(
            json!({"text": "2024-01-31", "pattern": "(\\d+)-(\\d+)-(\\d+)", "replacement": "$3/$2/$1"}),
            json!("31/01/2024"),
        )
        .blocking(regex_replace),
    );
    out.push(
        Builtin::describe(
            "text.levenshtein",
            "Returns the edit distance between two texts of at most 10,000 characters each",
        )
        // 4 bytes per character at most; the character count is checked in the body.
        .param("a", Ty::short_text(4 * MAX_DISTANCE_CHARS))
        .param("b", Ty::short_text(4 * MAX_DISTANCE_CHARS))
        .example(json!({"a": "kitten", "b": "sitting"}), json!(3))
        .blocking(levenshtein),
    );
    out.push(
        Builtin::describe(
            "text.similarity",
            "Returns the Jaro-Winkler similarity of two texts, from 0 (nothing alike) to 1 (equal)",
        )
        .param("a", Ty::text())
        .param("b", Ty::text())
        .example(
            json!({"a": "martha", "b": "marhta"}),
            json!(0.9611111111111111),
        )
        .blocking(similarity),
    );
    out.push(
        Builtin::describe(
            "text.caesar",
            "Returns the text with its ASCII letters shifted by `shift` places (negative allowed)",
        )
        .param("text", Ty::text())
        .param("shift", Ty::integer())
        .example(
            json!({"text": "Hello, World!", "shift": 3}),
            json!("Khoor, Zruog!"),
        )
        .linear(caesar),
    );
    out.push(
        unary(
            "text.rot13",
            "Returns the text with its ASCII letters rotated by 13 places",
        )
        .example(json!({"text": "Hello, World!"}), json!("Uryyb, Jbeyq!"))
        .linear(rot13),
    );
    out.push(
        Builtin::describe(
            "text.count_substring",
            "Returns the number of non-overlapping occurrences of `sub` in the text",
        )
        .param("text", Ty::text())
        .param("sub", Ty::non_empty_text())
        .example(json!({"text": "banana", "sub": "an"}), json!(2))
        .linear(count_substring),
    );
    out.push(
        Builtin::describe(
            "text.truncate",
            "Returns the text cut to at most `max` characters, the ellipsis (default \"...\") included",
        )
        .param("text", Ty::text())
        .param("max", Ty::int_range(0, i64::MAX))
        .optional("ellipsis", Ty::text())
        .example(json!({"text": "Hello, world", "max": 8}), json!("Hello..."))
        .linear(truncate),
    );
    out.push(
        Builtin::describe(
            "text.wrap",
            "Returns the text as lines of at most `width` characters, breaking only words longer than that",
        )
        .param("text", Ty::text())
        .param("width", Ty::int_range(1, 1000))
        .example(
            json!({"text": "The quick brown fox jumps over the lazy dog", "width": 10}),
            json!(["The quick", "brown fox", "jumps over", "the lazy", "dog"]),
        )
        .linear(wrap),
    );
}

/// A function of one `text` parameter.
fn unary(name: &'static str, description: &'static str) -> BuiltinSpec {
    Builtin::describe(name, description).param("text", Ty::text())
}

fn uppercase(args: &Args<'_>) -> Result<Value> {
    Ok(to_uppercase(args.str("text")?).into())
}

/// `str::to_uppercase`, faster on the common letters. ASCII letters and Latin-1's
/// lowercase letters (`à`..`þ` but `÷`, U+00E0..U+00FE, `C3 A0..BE`) both uppercase by
/// subtracting 0x20 from one byte (the Latin-1 capital is `C3 80..9E`), so most text is
/// mapped a byte at a time with the byte before it as the only context (see
/// [`map_byte`]): runs of such characters are found sixteen bytes per step and mapped in
/// one pass, both of which the compiler turns into vector instructions. Every other
/// character goes through Unicode's tables one at a time.
/// Uppercasing has no context rules, so mapping each character alone gives the same
/// text. The bytes are checked as UTF-8 once at the end (SIMD), which cannot fail since
/// each character is mapped to whole characters; if it ever did, the standard library's
/// answer is returned instead.
fn to_uppercase(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    loop {
        at = map_simple(bytes, at, &mut out);
        let Some(c) = text.get(at..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        let mut buf = [0; 4];
        for upper in c.to_uppercase() {
            out.extend_from_slice(upper.encode_utf8(&mut buf).as_bytes());
        }
        at += c.len_utf8();
    }
    // simdutf8 lends the checked text, so it is copied once into the answer's String:
    // cheaper than `String::from_utf8`'s own check, a byte at a time on mixed text.
    match simdutf8::basic::from_utf8(&out) {
        Ok(upper) => upper.to_owned(),
        Err(_) => text.to_uppercase(),
    }
}

/// Bytes looked at per step of [`simple_len`].
const STEP: usize = 16;

/// Appends the uppercase of `bytes[at..]` up to the first character that needs
/// Unicode's tables (or the end), and returns where it stopped: always the start of a
/// character.
fn map_simple(bytes: &[u8], at: usize, out: &mut Vec<u8>) -> usize {
    let end = at + simple_len(bytes, at);
    if end > at {
        let first = if at == 0 {
            out.push(map_byte(bytes[0], 0).0);
            1
        } else {
            at
        };
        out.extend(
            bytes[first..end]
                .iter()
                .zip(&bytes[first - 1..end - 1])
                .map(|(&b, &before)| map_byte(b, before).0),
        );
    }
    end
}

/// How many bytes from `at` on belong to characters [`map_byte`] maps, looked at
/// sixteen at a time.
fn simple_len(bytes: &[u8], at: usize) -> usize {
    let mut n = at;
    if n == 0 {
        match bytes.first() {
            Some(&b) if !map_byte(b, 0).1 => n = 1,
            _ => return 0,
        }
    }
    // From here on, every byte has one before it: `bytes[n - 1]`.
    for (chunk, before) in bytes[n..]
        .chunks_exact(STEP)
        .zip(bytes[n - 1..].chunks_exact(STEP))
    {
        let mut table = false;
        for (&b, &p) in chunk.iter().zip(before) {
            table |= map_byte(b, p).1;
        }
        if table {
            break;
        }
        n += STEP;
    }
    while let Some(&b) = bytes.get(n) {
        let before = bytes[n - 1];
        if map_byte(b, before).1 {
            // A character that began with a C3 starts one back.
            n -= usize::from(before == 0xC3 && n > at);
            break;
        }
        n += 1;
    }
    n - at
}

/// Maps one byte of UTF-8 text given the byte before it: its uppercase byte, and
/// whether the character it belongs to needs Unicode's tables instead (any non-ASCII
/// character other than U+00C0..U+00FE, and `ß` U+00DF, whose capital is two letters).
/// A byte after `C3` is that character's second byte, since `C3` is only ever a lead
/// byte. Written without branches so that a step of these vectorizes.
#[inline(always)]
fn map_byte(byte: u8, before: u8) -> (u8, bool) {
    let second = before == 0xC3;
    let lower = (byte.wrapping_sub(b'a') < 26)
        | (second & (byte.wrapping_sub(0xA0) < 0x1F) & (byte != 0xB7));
    let table =
        (byte >= 0x80) & (byte != 0xC3) & !second | second & ((byte == 0x9F) | (byte == 0xBF));
    (byte - 0x20 * u8::from(lower), table)
}

fn lowercase(args: &Args<'_>) -> Result<Value> {
    Ok(args.str("text")?.to_lowercase().into())
}

fn reverse(args: &Args<'_>) -> Result<Value> {
    let text = args.str("text")?;
    Ok(text.graphemes(true).rev().collect::<String>().into())
}

fn length(args: &Args<'_>) -> Result<Value> {
    Ok(args.str("text")?.chars().count().into())
}

/// `unicode_words` keeps exactly the UAX #29 word segments that contain a character
/// that is Alphabetic or a Number.
fn word_count(args: &Args<'_>) -> Result<Value> {
    Ok(args.str("text")?.unicode_words().count().into())
}

/// Counts ASCII in a flat array and sorts the rest, which beats a map when a 1 MiB
/// text holds hundreds of thousands of distinct characters. Keys come out in code
/// point order.
fn char_frequency(args: &Args<'_>) -> Result<Value> {
    let text = args.str("text")?;
    let mut ascii = [0u64; 128];
    let mut others: Vec<char> = Vec::new();
    for c in text.chars() {
        match ascii.get_mut(c as usize) {
            Some(n) => *n += 1,
            None => others.push(c),
        }
    }
    others.sort_unstable();
    let mut out: Vec<(char, u64)> = (0u8..128)
        .zip(ascii)
        .filter(|&(_, n)| n > 0)
        .map(|(c, n)| (char::from(c), n))
        .collect();
    for c in others {
        match out.last_mut() {
            Some((last, n)) if *last == c => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    let map: Map<String, Value> = out
        .into_iter()
        .map(|(c, n)| (c.to_string(), n.into()))
        .collect();
    Ok(Value::Object(map))
}

/// Lowercases first (one character may lowercase to several) and then keeps only
/// letters and digits.
fn is_palindrome(args: &Args<'_>) -> Result<Value> {
    let folded: Vec<char> = args
        .str("text")?
        .chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect();
    Ok(folded.iter().eq(folded.iter().rev()).into())
}

fn capitalize(args: &Args<'_>) -> Result<Value> {
    Ok(case::capitalize(args.str("text")?).into())
}

fn snake_case(args: &Args<'_>) -> Result<Value> {
    Ok(case::lower_joined(args.str("text")?, "_").into())
}

fn camel_case(args: &Args<'_>) -> Result<Value> {
    Ok(case::camel(args.str("text")?).into())
}

fn kebab_case(args: &Args<'_>) -> Result<Value> {
    Ok(case::lower_joined(args.str("text")?, "-").into())
}

fn slugify(args: &Args<'_>) -> Result<Value> {
    Ok(case::slugify(args.str("text")?).into())
}

fn trim(args: &Args<'_>) -> Result<Value> {
    Ok(args.str("text")?.trim().into())
}

/// `invalid_input` naming `field` when a result of `len` bytes would be too large.
fn check_result_size(len: usize, field: &str) -> Result<()> {
    if len > MAX_RESULT_BYTES {
        return Err(Error::invalid(format!(
            "field '{field}': the result would be longer than {} MiB",
            MAX_RESULT_BYTES >> 20
        )));
    }
    Ok(())
}

fn replace(args: &Args<'_>) -> Result<Value> {
    let (text, from, to) = (args.str("text")?, args.str("from")?, args.str("to")?);
    if to.len() > from.len() {
        let growth = text
            .matches(from)
            .count()
            .saturating_mul(to.len() - from.len());
        check_result_size(text.len().saturating_add(growth), "to")?;
    }
    Ok(text.replace(from, to).into())
}

fn split(args: &Args<'_>) -> Result<Value> {
    let (text, separator) = (args.str("text")?, args.str("separator")?);
    let parts: Vec<Value> = if separator.is_empty() {
        text.chars().map(|c| c.to_string().into()).collect()
    } else {
        text.split(separator).map(Value::from).collect()
    };
    Ok(parts.into())
}

fn join(args: &Args<'_>) -> Result<Value> {
    let (parts, separator) = (args.str_array("parts")?, args.str("separator")?);
    let separators = parts
        .len()
        .saturating_sub(1)
        .saturating_mul(separator.len());
    let total = parts
        .iter()
        .fold(separators, |sum, p| sum.saturating_add(p.len()));
    check_result_size(total, "parts")?;
    Ok(parts.join(separator).into())
}

fn regex_match(args: &Args<'_>) -> Result<Value> {
    pattern::find_all(args.str("text")?, args.str("pattern")?)
}

fn regex_replace(args: &Args<'_>) -> Result<Value> {
    let (text, pattern) = (args.str("text")?, args.str("pattern")?);
    let replacement = args.str("replacement")?;
    Ok(pattern::replace_all(text, pattern, replacement, MAX_RESULT_BYTES)?.into())
}

/// The text of `field`, refused past `max` characters.
fn text_of_at_most<'a>(args: &Args<'a>, field: &str, max: usize) -> Result<&'a str> {
    let text = args.str(field)?;
    let chars = text.chars().count();
    if chars > max {
        return Err(Error::invalid(format!(
            "field '{field}': must be at most {max} characters, got {chars}"
        )));
    }
    Ok(text)
}

fn levenshtein(args: &Args<'_>) -> Result<Value> {
    let a = text_of_at_most(args, "a", MAX_DISTANCE_CHARS)?;
    let b = text_of_at_most(args, "b", MAX_DISTANCE_CHARS)?;
    Ok(distance::levenshtein(a, b).into())
}

fn similarity(args: &Args<'_>) -> Result<Value> {
    let score = distance::jaro_winkler(args.str("a")?, args.str("b")?);
    crate::schema::float(score)
}

/// Shifts ASCII letters by `shift` places (mod 26); everything else is kept.
fn shift_letters(text: &str, shift: i64) -> String {
    let shift = shift.rem_euclid(26) as u8;
    let rotate = |c: char, base: u8| char::from(base + (c as u8 - base + shift) % 26);
    text.chars()
        .map(|c| match c {
            'a'..='z' => rotate(c, b'a'),
            'A'..='Z' => rotate(c, b'A'),
            _ => c,
        })
        .collect()
}

fn caesar(args: &Args<'_>) -> Result<Value> {
    Ok(shift_letters(args.str("text")?, args.i64("shift")?).into())
}

fn rot13(args: &Args<'_>) -> Result<Value> {
    Ok(shift_letters(args.str("text")?, 13).into())
}

fn count_substring(args: &Args<'_>) -> Result<Value> {
    let (text, sub) = (args.str("text")?, args.str("sub")?);
    Ok(text.matches(sub).count().into())
}

/// The first `n` characters of `s` (all of it when it is shorter).
fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(end, _)| &s[..end])
}

/// A text longer than `max` keeps `max - |ellipsis|` characters and gets the
/// ellipsis; when the ellipsis alone is `max` characters or more, the result is the
/// ellipsis cut to `max`.
fn truncate(args: &Args<'_>) -> Result<Value> {
    let text = args.str("text")?;
    let max = usize::try_from(args.i64("max")?).unwrap_or(usize::MAX);
    let ellipsis = args.opt_str("ellipsis")?.unwrap_or("...");
    if text.char_indices().nth(max).is_none() {
        return Ok(text.into());
    }
    let keep = max.saturating_sub(ellipsis.chars().count());
    let mut out = first_chars(text, keep).to_string();
    out.push_str(first_chars(ellipsis, max - keep));
    Ok(out.into())
}

/// Greedy wrapping, line by line of the input (an empty input line stays an empty
/// output line). Words are runs of non-white-space joined by one space; a word longer
/// than `width` starts a new line and is cut every `width` characters.
fn wrap(args: &Args<'_>) -> Result<Value> {
    let text = args.str("text")?;
    let width = args.usize("width")?;
    let mut lines: Vec<Value> = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        let mut line_chars = 0;
        for word in paragraph.split_whitespace() {
            let mut word_chars = word.chars().count();
            if line_chars > 0 && line_chars + 1 + word_chars <= width {
                line.push(' ');
                line.push_str(word);
                line_chars += 1 + word_chars;
                continue;
            }
            if line_chars > 0 {
                lines.push(std::mem::take(&mut line).into());
            }
            let mut rest = word;
            while word_chars > width {
                let head = first_chars(rest, width);
                lines.push(head.into());
                rest = &rest[head.len()..];
                word_chars -= width;
            }
            line.push_str(rest);
            line_chars = word_chars;
        }
        lines.push(line.into());
    }
    Ok(lines.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{call, code, ok};
    use proptest::prelude::*;

    /// The message of an error that must be `invalid_input`.
    async fn invalid(name: &str, input: Value) -> String {
        let err = call(name, input.clone()).await.unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{name} {input}: {err}");
        err.to_string()
    }

    /// A text of exactly 1 MiB.
    fn mib(unit: &str) -> String {
        unit.repeat(crate::schema::MAX_TEXT_BYTES / unit.len())
    }

    #[test]
    fn uppercase_by_bytes_matches_the_standard_library() {
        for text in [
            "",
            "hello",
            "héllo wörld, ß and ﬁ; ΣΑΣ σας ǆ İı 🎉 x",
            "ÉÉÉ",
            "a\u{0345}b",
            "straße",
            "ÿ",
            "àáâãäåæçèéêëìíîïðñòóôõö÷øùúûüýþ ÀÞ×µ",
        ] {
            assert_eq!(to_uppercase(text), text.to_uppercase(), "{text:?}");
        }
    }

    #[test]
    fn uppercase_stops_and_resumes_at_every_offset_of_a_step() {
        for i in 0..40 {
            for odd in ["ÿ", "ß", "µ", "ǆ", "🎉", "÷", "×"] {
                for fill in ["a", "é", "aé"] {
                    let text = format!("{}{odd}{}", fill.repeat(i), fill.repeat(20));
                    assert_eq!(to_uppercase(&text), text.to_uppercase(), "{text:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn every_text_input_is_capped_at_one_mib() {
        let big = "a".repeat(crate::schema::MAX_TEXT_BYTES + 1);
        let msg = invalid("text.uppercase", json!({"text": big})).await;
        assert!(
            msg.contains("field 'text'") && msg.contains("at most"),
            "{msg}"
        );
        let msg = invalid("text.join", json!({"parts": ["a", big], "separator": ""})).await;
        assert!(msg.contains("field 'parts[1]'"), "{msg}");
        assert!(invalid("text.length", json!({}))
            .await
            .contains("missing field 'text'"));
        assert!(invalid("text.length", json!({"text": 5}))
            .await
            .contains("expected a string"));
    }

    #[tokio::test]
    async fn upper_and_lower_case() {
        assert_eq!(
            ok("text.uppercase", json!({"text": "straße ǆ 1!"})).await,
            "STRASSE Ǆ 1!"
        );
        assert_eq!(ok("text.uppercase", json!({"text": ""})).await, "");
        assert_eq!(
            ok("text.lowercase", json!({"text": "ΣΊΣΥΦΟΣ İ"})).await,
            "σίσυφος i̇"
        );
        assert_eq!(
            ok("text.lowercase", json!({"text": "ABC123"})).await,
            "abc123"
        );
    }

    #[tokio::test]
    async fn reverse_keeps_grapheme_clusters() {
        assert_eq!(ok("text.reverse", json!({"text": "héllo"})).await, "olléh");
        // "e" + combining acute stays one cluster.
        assert_eq!(
            ok("text.reverse", json!({"text": "he\u{301}y"})).await,
            "ye\u{301}h"
        );
        let family = "👨‍👩‍👧";
        let flag = "🇫🇷";
        assert_eq!(
            ok("text.reverse", json!({"text": format!("a{family}b{flag}")})).await,
            format!("{flag}b{family}a")
        );
        assert_eq!(ok("text.reverse", json!({"text": ""})).await, "");
        let big = ok("text.reverse", json!({"text": mib("ab")})).await;
        assert_eq!(big, mib("ba"));
    }

    #[tokio::test]
    async fn length_counts_scalar_values() {
        assert_eq!(ok("text.length", json!({"text": ""})).await, 0);
        assert_eq!(ok("text.length", json!({"text": "日本語"})).await, 3);
        assert_eq!(ok("text.length", json!({"text": "e\u{301}😀"})).await, 3);
        assert_eq!(ok("text.length", json!({"text": mib("é")})).await, 1 << 19);
    }

    #[tokio::test]
    async fn word_count_uses_word_boundaries() {
        assert_eq!(ok("text.word_count", json!({"text": ""})).await, 0);
        assert_eq!(
            ok("text.word_count", json!({"text": "  ... !!! -- "})).await,
            0
        );
        assert_eq!(
            ok(
                "text.word_count",
                json!({"text": "don't stop-me now, 3.14"})
            )
            .await,
            5
        );
        assert_eq!(
            ok("text.word_count", json!({"text": "naïve café"})).await,
            2
        );
        assert_eq!(
            ok("text.word_count", json!({"text": mib("ab cd ")})).await,
            (1 << 20) / 6 * 2
        );
    }

    #[tokio::test]
    async fn char_frequency_counts_each_character() {
        assert_eq!(
            ok("text.char_frequency", json!({"text": ""})).await,
            json!({})
        );
        assert_eq!(
            ok("text.char_frequency", json!({"text": "aé a😀é"})).await,
            json!({"a": 2, " ": 1, "é": 2, "😀": 1})
        );
        // Every distinct 3-byte character of a 1 MiB text, each seen once.
        let many: String = (0x4e00u32..0xa000)
            .chain(0xac00..0xd7a4)
            .filter_map(char::from_u32)
            .collect();
        let out = ok("text.char_frequency", json!({"text": many})).await;
        let map = out.as_object().unwrap();
        assert_eq!(map.len(), many.chars().count());
        assert!(map.values().all(|v| v == 1));
        let out = ok("text.char_frequency", json!({"text": mib("abc")})).await;
        assert_eq!(out["a"], (1 << 20) / 3);
        assert_eq!(out["c"], (1 << 20) / 3);
    }

    #[tokio::test]
    async fn palindromes_ignore_case_and_punctuation() {
        for (text, expected) in [
            ("", true),
            ("!!", true),
            ("x", true),
            ("Was it a car or a cat I saw?", true),
            ("No 'x' in Nixon", true),
            ("Ésope reste ici et se repose", false),
            ("été", true),
            ("abc", false),
            ("12321", true),
            ("ab😀ba", true),
        ] {
            assert_eq!(
                ok("text.is_palindrome", json!({"text": text})).await,
                expected,
                "{text}"
            );
        }
        let half = mib("ab");
        let big: String = half[..half.len() / 2].to_string()
            + &half[..half.len() / 2].chars().rev().collect::<String>();
        assert_eq!(ok("text.is_palindrome", json!({"text": big})).await, true);
    }

    #[tokio::test]
    async fn capitalize_uppercases_first_letters_only() {
        for (text, expected) in [
            ("", ""),
            ("hello world", "Hello World"),
            ("hello-world foo_bar", "Hello-World Foo_bar"),
            ("it's ÉTÉ, élan", "It's ÉTÉ, Élan"),
            ("  spaced   out  ", "  Spaced   Out  "),
            ("3rd place", "3rd Place"),
        ] {
            assert_eq!(
                ok("text.capitalize", json!({"text": text})).await,
                expected,
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn case_conversions_split_identifiers() {
        for (text, snake, camel, kebab) in [
            ("", "", "", ""),
            ("Hello World", "hello_world", "helloWorld", "hello-world"),
            ("helloWorld", "hello_world", "helloWorld", "hello-world"),
            ("hello_world", "hello_world", "helloWorld", "hello-world"),
            (
                "  --Hello__big   WORLD-- ",
                "hello_big_world",
                "helloBigWorld",
                "hello-big-world",
            ),
            (
                "XMLHttpRequest",
                "xml_http_request",
                "xmlHttpRequest",
                "xml-http-request",
            ),
            (
                "utf8String v2Beta",
                "utf8_string_v2_beta",
                "utf8StringV2Beta",
                "utf8-string-v2-beta",
            ),
            ("Élan vital", "élan_vital", "élanVital", "élan-vital"),
            ("!!!", "", "", ""),
        ] {
            assert_eq!(
                ok("text.snake_case", json!({"text": text})).await,
                snake,
                "{text}"
            );
            assert_eq!(
                ok("text.camel_case", json!({"text": text})).await,
                camel,
                "{text}"
            );
            assert_eq!(
                ok("text.kebab_case", json!({"text": text})).await,
                kebab,
                "{text}"
            );
        }
        // "aBaB...aB" -> a_ba_ba_..._b: one '_' per "aB".
        let big = ok("text.snake_case", json!({"text": mib("aB")})).await;
        assert_eq!(big.as_str().map(str::len), Some((1 << 20) + (1 << 19)));
    }

    #[tokio::test]
    async fn slugify_folds_to_ascii() {
        for (text, expected) in [
            ("", ""),
            ("Héllo, Wörld!", "hello-world"),
            ("  --Already-a-slug--  ", "already-a-slug"),
            ("Ｆｕｌｌｗｉｄｔｈ ﬁne ½", "fullwidth-fine-1-2"),
            ("Crème brûlée 2024", "creme-brulee-2024"),
            ("straße 中文 ok", "stra-e-ok"),
            ("e\u{301}t\u{E9}", "ete"),
            ("!!!", ""),
        ] {
            assert_eq!(
                ok("text.slugify", json!({"text": text})).await,
                expected,
                "{text}"
            );
        }
        let big = ok("text.slugify", json!({"text": mib("é ")})).await;
        assert_eq!(big.as_str().map(str::len), Some((1 << 20) / 3 * 2 - 1));
    }

    #[tokio::test]
    async fn trim_removes_unicode_white_space() {
        assert_eq!(
            ok("text.trim", json!({"text": "\u{3000}\t a b \n\u{a0}"})).await,
            "a b"
        );
        assert_eq!(ok("text.trim", json!({"text": "   "})).await, "");
        assert_eq!(ok("text.trim", json!({"text": ""})).await, "");
    }

    #[tokio::test]
    async fn replace_every_occurrence() {
        let r = |text: &str, from: &str, to: &str| json!({"text": text, "from": from, "to": to});
        assert_eq!(ok("text.replace", r("aaaa", "aa", "b")).await, "bb");
        assert_eq!(ok("text.replace", r("héllo", "é", "e")).await, "hello");
        assert_eq!(ok("text.replace", r("abc", "x", "y")).await, "abc");
        assert_eq!(ok("text.replace", r("", "x", "y")).await, "");
        assert_eq!(ok("text.replace", r("a.b.c", ".", "")).await, "abc");
        let msg = invalid("text.replace", r("abc", "", "y")).await;
        assert!(msg.contains("field 'from'"), "{msg}");
        // 1 MiB of "a" with each "a" becoming 17 bytes is past the 16 MiB result cap.
        let msg = invalid("text.replace", r(&mib("a"), "a", &"b".repeat(17))).await;
        assert!(
            msg.contains("field 'to'") && msg.contains("16 MiB"),
            "{msg}"
        );
        let out = ok("text.replace", r(&mib("a"), "a", &"b".repeat(16))).await;
        assert_eq!(out.as_str().map(str::len), Some(16 << 20));
    }

    #[tokio::test]
    async fn split_by_separator_or_into_characters() {
        let s = |text: &str, sep: &str| json!({"text": text, "separator": sep});
        assert_eq!(
            ok("text.split", s("a, b, c", ", ")).await,
            json!(["a", "b", "c"])
        );
        assert_eq!(ok("text.split", s(",a,", ",")).await, json!(["", "a", ""]));
        assert_eq!(ok("text.split", s("abc", "x")).await, json!(["abc"]));
        assert_eq!(ok("text.split", s("", ",")).await, json!([""]));
        assert_eq!(
            ok("text.split", s("hé😀", "")).await,
            json!(["h", "é", "😀"])
        );
        assert_eq!(ok("text.split", s("", "")).await, json!([]));
        let out = ok("text.split", s(&mib("a"), "")).await;
        assert_eq!(out.as_array().map(Vec::len), Some(1 << 20));
    }

    #[tokio::test]
    async fn join_parts() {
        let j = |parts: Value, sep: &str| json!({"parts": parts, "separator": sep});
        assert_eq!(ok("text.join", j(json!([]), ",")).await, "");
        assert_eq!(ok("text.join", j(json!(["x"]), ",")).await, "x");
        assert_eq!(
            ok("text.join", j(json!(["a", "", "é"]), "--")).await,
            "a----é"
        );
        let msg = invalid("text.join", j(json!(["a", 1]), ",")).await;
        assert!(msg.contains("field 'parts[1]'"), "{msg}");
        let too_many = vec![json!("a"); MAX_PARTS + 1];
        assert!(invalid("text.join", j(json!(too_many), ""))
            .await
            .contains("at most 100000 items"));
        // 17 parts of 1 MiB are more than the 16 MiB result cap.
        let msg = invalid("text.join", j(json!(vec![mib("a"); 17]), "")).await;
        assert!(msg.contains("16 MiB"), "{msg}");
        let many = vec![json!("ab"); MAX_PARTS];
        let out = ok("text.join", j(json!(many), "-")).await;
        assert_eq!(out.as_str().map(str::len), Some(3 * MAX_PARTS - 1));
    }

    #[tokio::test]
    async fn regex_match_reports_byte_offsets() {
        let m = |text: &str, pattern: &str| json!({"text": text, "pattern": pattern});
        assert_eq!(
            ok("text.regex_match", m("é1 ab22", r"\d+")).await,
            json!([{"match": "1", "start": 2, "end": 3}, {"match": "22", "start": 6, "end": 8}])
        );
        assert_eq!(ok("text.regex_match", m("abc", "x")).await, json!([]));
        assert_eq!(
            ok("text.regex_match", m("ab", "")).await,
            json!([
                {"match": "", "start": 0, "end": 0},
                {"match": "", "start": 1, "end": 1},
                {"match": "", "start": 2, "end": 2}
            ])
        );
        assert_eq!(
            ok("text.regex_match", m("Hello HELLO", "(?i)hello"))
                .await
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        let msg = invalid("text.regex_match", m("a", "(unclosed")).await;
        assert!(msg.contains("field 'pattern'"), "{msg}");
        // Backreferences and lookaround need backtracking: not supported, so invalid.
        assert_eq!(
            code("text.regex_match", m("aa", r"(a)\1")).await,
            "invalid_input"
        );
        assert_eq!(
            code("text.regex_match", m("a", "a(?=b)")).await,
            "invalid_input"
        );
        let msg = invalid(
            "text.regex_match",
            m("a", &"a".repeat(MAX_PATTERN_BYTES + 1)),
        )
        .await;
        assert!(msg.contains("field 'pattern'"), "{msg}");
        let msg = invalid("text.regex_match", m("a", r"\w{1000}{1000}")).await;
        assert!(msg.contains("field 'pattern'"), "{msg}");
    }

    #[tokio::test]
    async fn regex_match_is_linear_and_capped() {
        // The classic catastrophic pattern for backtracking engines, on 1 MiB.
        let out = ok(
            "text.regex_match",
            json!({"text": mib("a"), "pattern": "(a+)+$"}),
        )
        .await;
        assert_eq!(
            out,
            json!([{"match": mib("a"), "start": 0, "end": 1 << 20}])
        );
        let out = ok(
            "text.regex_match",
            json!({"text": mib("a"), "pattern": "a"}),
        )
        .await;
        let matches = out.as_array().unwrap();
        assert_eq!(matches.len(), pattern::MAX_MATCHES);
        assert_eq!(
            matches.last(),
            Some(&json!({"match": "a", "start": 9_999, "end": 10_000}))
        );
    }

    #[tokio::test]
    async fn regex_replace_expands_groups() {
        let r = |text: &str, pattern: &str, rep: &str| json!({"text": text, "pattern": pattern, "replacement": rep});
        assert_eq!(
            ok("text.regex_replace", r("a1b22c", r"\d+", "#")).await,
            "a#b#c"
        );
        assert_eq!(
            ok(
                "text.regex_replace",
                r(
                    "John Smith",
                    r"(?P<first>\w+) (?P<last>\w+)",
                    "${last}, $first"
                )
            )
            .await,
            "Smith, John"
        );
        assert_eq!(ok("text.regex_replace", r("a.b", r"\.", "$$")).await, "a$b");
        assert_eq!(ok("text.regex_replace", r("abc", "x", "y")).await, "abc");
        assert_eq!(ok("text.regex_replace", r("", "", "-")).await, "-");
        assert_eq!(ok("text.regex_replace", r("héé", "é", "e")).await, "hee");
        assert_eq!(ok("text.regex_replace", r("ab", "", "-")).await, "-a-b-");
        assert_eq!(
            code("text.regex_replace", r("a", "[", "b")).await,
            "invalid_input"
        );
        // Each of 2^20 "a"s doubled by `$0$0...` would make far more than 16 MiB.
        let msg = invalid("text.regex_replace", r(&mib("a"), "a+", &"$0".repeat(20))).await;
        assert!(
            msg.contains("field 'replacement'") && msg.contains("16 MiB"),
            "{msg}"
        );
        // A million empty matches, each expanding 20 references to nothing: the work,
        // not just the output, is bounded.
        let msg = invalid("text.regex_replace", r(&mib("a"), "", &"$0".repeat(20))).await;
        assert!(msg.contains("field 'replacement'"), "{msg}");
        let out = ok("text.regex_replace", r(&mib("a"), "", "[$0]")).await;
        assert_eq!(out.as_str().map(str::len), Some(3 * (1 << 20) + 2));
        let out = ok("text.regex_replace", r(&mib("ab"), "(a)(b)", "$2$1")).await;
        assert_eq!(out, mib("ba"));
    }

    /// The textbook O(nm) table, to check the bit-parallel version against.
    fn levenshtein_table(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, &cb) in b.iter().enumerate() {
                let next = (diagonal + usize::from(ca != cb))
                    .min(row[j] + 1)
                    .min(row[j + 1] + 1);
                diagonal = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    }

    proptest! {
        #[test]
        fn uppercase_agrees_with_the_standard_library(text in "\\PC{0,80}") {
            prop_assert_eq!(to_uppercase(&text), text.to_uppercase());
        }

        #[test]
        fn uppercase_of_latin_text_agrees_with_the_standard_library(text in "[a-zA-Z0-9 ,.\u{a0}-\u{ff}]{0,80}") {
            prop_assert_eq!(to_uppercase(&text), text.to_uppercase());
        }

        // Long enough for many steps, with the simple path stopping and resuming at
        // every offset within a step.
        #[test]
        fn uppercase_of_long_mixed_text_agrees_with_the_standard_library(text in "([a-z ]{0,20}[\u{c0}-\u{ff}]{0,3}[\u{100}-\u{2000}ß🎉]?){0,40}") {
            prop_assert_eq!(to_uppercase(&text), text.to_uppercase());
        }

        #[test]
        fn levenshtein_agrees_with_the_table(a in "[abcé😀]{0,200}", b in "[abcé😀]{0,200}") {
            prop_assert_eq!(distance::levenshtein(&a, &b), levenshtein_table(&a, &b));
        }

        #[test]
        fn levenshtein_agrees_on_similar_texts(a in "[ab]{60,140}", edits in prop::collection::vec((0usize..140, "[abc]?"), 0..8)) {
            let mut b: Vec<char> = a.chars().collect();
            for (at, with) in edits {
                let at = at.min(b.len());
                match with.chars().next() {
                    Some(c) if at < b.len() => b[at] = c,
                    Some(c) => b.push(c),
                    None if at < b.len() => { b.remove(at); }
                    None => {}
                }
            }
            let b: String = b.into_iter().collect();
            prop_assert_eq!(distance::levenshtein(&a, &b), levenshtein_table(&a, &b));
        }

        #[test]
        fn jaro_winkler_agrees_with_strsim(a in "[abcdé😀]{0,60}", b in "[abcdé😀]{0,60}") {
            let ours = distance::jaro_winkler(&a, &b);
            prop_assert_eq!(ours.to_bits(), strsim::jaro_winkler(&a, &b).to_bits(), "{} vs {}", a, b);
        }
    }

    #[tokio::test]
    async fn levenshtein_distances() {
        let l = |a: &str, b: &str| json!({"a": a, "b": b});
        assert_eq!(ok("text.levenshtein", l("", "")).await, 0);
        assert_eq!(ok("text.levenshtein", l("", "abc")).await, 3);
        assert_eq!(ok("text.levenshtein", l("abc", "")).await, 3);
        assert_eq!(ok("text.levenshtein", l("flaw", "lawn")).await, 2);
        assert_eq!(ok("text.levenshtein", l("café", "cafe")).await, 1);
        assert_eq!(ok("text.levenshtein", l("😀😀", "😀")).await, 1);
        let msg = invalid("text.levenshtein", l(&"a".repeat(10_001), "b")).await;
        assert!(
            msg.contains("field 'a'") && msg.contains("10000 characters"),
            "{msg}"
        );
        let msg = invalid("text.levenshtein", l("a", &"é".repeat(10_001))).await;
        assert!(msg.contains("field 'b'"), "{msg}");
        assert_eq!(
            code("text.levenshtein", l("a", &"a".repeat(40_001))).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn levenshtein_at_the_largest_inputs() {
        let l = |a: &str, b: &str| json!({"a": a, "b": b});
        let a = "ab".repeat(5_000);
        let b = "ba".repeat(5_000);
        // Drop the leading "a" and append one: two edits.
        assert_eq!(ok("text.levenshtein", l(&a, &b)).await, 2);
        assert_eq!(ok("text.levenshtein", l(&a, &a)).await, 0);
        // No character in common: every position is a substitution.
        assert_eq!(
            ok(
                "text.levenshtein",
                l(&"é".repeat(10_000), &"😀".repeat(10_000))
            )
            .await,
            10_000
        );
        // All distinct characters on one side, shifted by one on the other.
        let distinct: String = (0x4e00u32..0x4e00 + 10_000)
            .filter_map(char::from_u32)
            .collect();
        let shifted: String = distinct.chars().skip(1).chain(['x']).collect();
        assert_eq!(ok("text.levenshtein", l(&distinct, &shifted)).await, 2);
        assert_eq!(ok("text.levenshtein", l(&distinct, "")).await, 10_000);
    }

    #[tokio::test]
    async fn similarity_scores() {
        let s = |a: &str, b: &str| json!({"a": a, "b": b});
        assert_eq!(ok("text.similarity", s("", "")).await, 1.0);
        assert_eq!(ok("text.similarity", s("abc", "")).await, 0.0);
        assert_eq!(ok("text.similarity", s("abc", "xyz")).await, 0.0);
        assert_eq!(ok("text.similarity", s("héllo", "héllo")).await, 1.0);
        let dixon = ok("text.similarity", s("dixon", "dicksonx"))
            .await
            .as_f64()
            .unwrap();
        assert!((dixon - 0.8133).abs() < 1e-4, "{dixon}");
        // Linear time: 1 MiB against 1 MiB.
        let a = mib("abcd");
        let mut b = mib("abcd");
        b.replace_range(..4, "dcba");
        let score = ok("text.similarity", s(&a, &b)).await.as_f64().unwrap();
        assert!(score > 0.99 && score < 1.0, "{score}");
        assert_eq!(ok("text.similarity", s(&mib("a"), &mib("a"))).await, 1.0);
    }

    #[tokio::test]
    async fn caesar_and_rot13() {
        let c = |text: &str, shift: i64| json!({"text": text, "shift": shift});
        assert_eq!(ok("text.caesar", c("xyz XYZ", 3)).await, "abc ABC");
        assert_eq!(ok("text.caesar", c("abc", -1)).await, "zab");
        assert_eq!(ok("text.caesar", c("abc", 26 * 1000 + 1)).await, "bcd");
        assert_eq!(ok("text.caesar", c("Zé!", 0)).await, "Zé!");
        // -2^63 = 18 (mod 26).
        assert_eq!(ok("text.caesar", c("a", i64::MIN)).await, "s");
        assert_eq!(ok("text.caesar", c("a", i64::MAX)).await, "h");
        assert_eq!(
            code("text.caesar", json!({"text": "a", "shift": 1.5})).await,
            "invalid_input"
        );
        assert_eq!(
            code("text.caesar", json!({"text": "a"})).await,
            "invalid_input"
        );
        assert_eq!(
            ok("text.rot13", json!({"text": "Uryyb, ñ!"})).await,
            "Hello, ñ!"
        );
        assert_eq!(ok("text.rot13", json!({"text": ""})).await, "");
    }

    #[tokio::test]
    async fn count_substring_non_overlapping() {
        let c = |text: &str, sub: &str| json!({"text": text, "sub": sub});
        assert_eq!(ok("text.count_substring", c("aaaa", "aa")).await, 2);
        assert_eq!(ok("text.count_substring", c("", "a")).await, 0);
        assert_eq!(ok("text.count_substring", c("ééé", "é")).await, 3);
        assert_eq!(
            ok("text.count_substring", c(&mib("ab"), "ab")).await,
            1 << 19
        );
        let msg = invalid("text.count_substring", c("abc", "")).await;
        assert!(msg.contains("field 'sub'"), "{msg}");
    }

    #[tokio::test]
    async fn truncate_counts_the_ellipsis() {
        let t = |text: &str, max: i64| json!({"text": text, "max": max});
        assert_eq!(ok("text.truncate", t("Hello", 5)).await, "Hello");
        assert_eq!(ok("text.truncate", t("Hello", 100)).await, "Hello");
        assert_eq!(ok("text.truncate", t("Hello!", 5)).await, "He...");
        assert_eq!(ok("text.truncate", t("Hello!", 3)).await, "...");
        assert_eq!(ok("text.truncate", t("Hello!", 2)).await, "..");
        assert_eq!(ok("text.truncate", t("Hello!", 0)).await, "");
        assert_eq!(ok("text.truncate", t("", 0)).await, "");
        assert_eq!(ok("text.truncate", t("héllo wörld", 6)).await, "hél...");
        assert_eq!(
            ok(
                "text.truncate",
                json!({"text": "héllo wörld", "max": 6, "ellipsis": "…"})
            )
            .await,
            "héllo…"
        );
        assert_eq!(
            ok(
                "text.truncate",
                json!({"text": "Hello", "max": 3, "ellipsis": ""})
            )
            .await,
            "Hel"
        );
        assert_eq!(
            ok(
                "text.truncate",
                json!({"text": "Hello", "max": 4, "ellipsis": null})
            )
            .await,
            "H..."
        );
        assert_eq!(ok("text.truncate", t(&mib("a"), i64::MAX)).await, mib("a"));
        let msg = invalid("text.truncate", t("Hello", -1)).await;
        assert!(msg.contains("field 'max'"), "{msg}");
    }

    #[tokio::test]
    async fn wrap_greedily() {
        let w = |text: &str, width: i64| json!({"text": text, "width": width});
        assert_eq!(ok("text.wrap", w("", 10)).await, json!([]));
        assert_eq!(ok("text.wrap", w("one two", 7)).await, json!(["one two"]));
        assert_eq!(
            ok("text.wrap", w("one two", 6)).await,
            json!(["one", "two"])
        );
        assert_eq!(
            ok("text.wrap", w("ab abcdefghijk c", 4)).await,
            json!(["ab", "abcd", "efgh", "ijk", "c"])
        );
        assert_eq!(
            ok("text.wrap", w("abcdefgh", 4)).await,
            json!(["abcd", "efgh"])
        );
        assert_eq!(
            ok("text.wrap", w("first line\n\n  second\tline  ", 20)).await,
            json!(["first line", "", "second line"])
        );
        assert_eq!(
            ok("text.wrap", w("héllo wörld", 5)).await,
            json!(["héllo", "wörld"])
        );
        assert_eq!(ok("text.wrap", w("a b", 1)).await, json!(["a", "b"]));
        assert!(invalid("text.wrap", w("a", 0))
            .await
            .contains("field 'width'"));
        assert!(invalid("text.wrap", w("a", 1001))
            .await
            .contains("field 'width'"));
        let out = ok("text.wrap", w(&mib("abc "), 1000)).await;
        let lines = out.as_array().unwrap();
        assert!(lines
            .iter()
            .all(|l| l.as_str().is_some_and(|l| l.chars().count() <= 1000)));
        // 250 three-letter words fill 999 characters.
        assert_eq!(lines.len(), ((1 << 20) / 4usize).div_ceil(250));
        let out = ok("text.wrap", w(&mib("é"), 1)).await;
        assert_eq!(out.as_array().map(Vec::len), Some(1 << 19));
    }
}
