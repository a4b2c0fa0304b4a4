//! Case conversions and slugs: `text.capitalize`, `text.snake_case`,
//! `text.camel_case`, `text.kebab_case`, `text.slugify`.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};
use unicode_segmentation::UnicodeSegmentation;

/// Uppercases the first character of every word (a UAX #29 word segment containing a
/// letter or digit, so "it's" stays one word) and leaves everything else as it is.
pub(super) fn capitalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for segment in text.split_word_bounds() {
        let mut chars = segment.chars();
        match chars.next() {
            Some(first) if segment.chars().any(char::is_alphanumeric) => {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
            _ => out.push_str(segment),
        }
    }
    out
}

/// Splits text into the words of an identifier: runs of letters and digits, cut again
/// where the case changes: "helloWorld" -> hello|World, "HTTPServer" -> HTTP|Server,
/// "v2Beta" -> v2|Beta. Digits stay with the letters around them ("utf8" is one word).
fn identifier_words(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    for run in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|r| !r.is_empty())
    {
        let mut start = 0;
        let mut prev: Option<char> = None;
        let mut chars = run.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            let boundary = c.is_uppercase()
                && prev.is_some_and(|p| {
                    p.is_lowercase()
                        || p.is_numeric()
                        || (p.is_uppercase() && next.is_some_and(char::is_lowercase))
                });
            if boundary {
                words.push(&run[start..i]);
                start = i;
            }
            prev = Some(c);
        }
        words.push(&run[start..]);
    }
    words
}

/// The words lowercased and joined by `separator` (snake_case, kebab-case).
pub(super) fn lower_joined(text: &str, separator: &str) -> String {
    identifier_words(text)
        .iter()
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join(separator)
}

/// lowerCamelCase: the first word lowercased, each later one with its first character
/// uppercased and the rest lowercased.
pub(super) fn camel(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (k, word) in identifier_words(text).into_iter().enumerate() {
        let mut chars = word.chars();
        if k > 0 {
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
            }
        }
        out.push_str(&chars.as_str().to_lowercase());
    }
    out
}

/// A lowercase ASCII slug: each character is decomposed (NFKD, one character at a
/// time, which is equivalent here since only marks get reordered), combining marks are
/// dropped ("é" -> "e", "ﬁ" -> "fi"), ASCII letters and digits are kept lowercased, and
/// every run of anything else (including letters with no ASCII decomposition, such as
/// "ß" or "中") becomes one '-', none at either end.
pub(super) fn slugify(text: &str) -> String {
    let mut slug = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        decompose_compatible(c, |d| {
            if d.is_ascii_alphanumeric() {
                if gap && !slug.is_empty() {
                    slug.push('-');
                }
                gap = false;
                slug.push(d.to_ascii_lowercase());
            } else if !is_combining_mark(d) {
                gap = true;
            }
        });
    }
    slug
}
