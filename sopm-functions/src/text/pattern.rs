//! `text.regex_match` and `text.regex_replace` on the `regex` crate: finite automata,
//! never backtracking (hence no backreferences or look-around), so the time is linear
//! in the text. The factor is small while its lazy DFA copes; for patterns whose DFA
//! explodes (such as `a[ab]{1000}c`) it falls back to a simulation whose cost per
//! byte grows with the pattern, which the compiled-size cap below bounds.

use regex::{Regex, RegexBuilder};
use serde_json::{json, Value};
use sopm_core::{Error, Result};

/// Longest pattern, in bytes.
pub(super) const MAX_PATTERN_BYTES: usize = 4096;
/// Largest compiled regex (the `regex` crate's own measure of its NFA): a pattern
/// such as `\w{1000}{1000}` is a clean `invalid_input` instead of a huge build.
const MAX_REGEX_SIZE: usize = 1 << 20;
/// Most matches `text.regex_match` returns. An empty pattern matches at every one of
/// the 2^20 positions of a 1 MiB text, and each `{match, start, end}` object costs a
/// B-tree node of some 600 bytes: 100,000 of them took 35-140 ms to build, 10,000 a
/// tenth of that.
pub(super) const MAX_MATCHES: usize = 10_000;

/// Compiles `pattern`, its compiled size capped; any error names the field.
fn compile(pattern: &str) -> Result<Regex> {
    RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| Error::invalid(format!("field 'pattern': {e}")))
}

/// The first [`MAX_MATCHES`] non-overlapping matches as `{match, start, end}`, with
/// byte offsets.
pub(super) fn find_all(text: &str, pattern: &str) -> Result<Value> {
    let re = compile(pattern)?;
    let matches: Vec<Value> = re
        .find_iter(text)
        .take(MAX_MATCHES)
        .map(|m| json!({"match": m.as_str(), "start": m.start(), "end": m.end()}))
        .collect();
    Ok(matches.into())
}

/// One piece of a parsed replacement.
#[derive(Debug, PartialEq)]
enum Piece {
    Literal(String),
    Group(usize),
}

/// A replacement parsed once, with the syntax of `regex::Captures::expand`: `$n` or
/// `${n}` is group n, `$name` / `${name}` a named group (a bare name is the longest run
/// of `[0-9A-Za-z_]`, so `$1a` is the group named "1a"), `$$` is a `$`, a reference to
/// a group that does not exist is empty, and a `$` that starts no reference is itself.
#[derive(Debug, PartialEq)]
struct Template {
    pieces: Vec<Piece>,
    /// Whether some piece is a group other than the whole match.
    uses_groups: bool,
}

impl Template {
    fn parse(replacement: &str, re: &Regex) -> Template {
        let groups = re.captures_len();
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = replacement;
        while let Some(dollar) = rest.find('$') {
            literal.push_str(&rest[..dollar]);
            rest = &rest[dollar + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                literal.push('$');
                rest = after;
                continue;
            }
            let (name, after) = match rest.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(close) => (&braced[..close], &braced[close + 1..]),
                    None => ("", rest),
                },
                None => {
                    let len = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    (&rest[..len], &rest[len..])
                }
            };
            // "$" then no name (or an unclosed brace) stays a literal "$"; "${}" names
            // the empty string, which no group has.
            if after.len() == rest.len() {
                literal.push('$');
                continue;
            }
            rest = after;
            let index = name
                .parse::<usize>()
                .ok()
                .or_else(|| re.capture_names().position(|n| n == Some(name)));
            if let Some(i) = index.filter(|&i| i < groups) {
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Group(i));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let uses_groups = pieces
            .iter()
            .any(|p| matches!(p, Piece::Group(i) if *i > 0));
        Template {
            pieces,
            uses_groups,
        }
    }
}

/// Every match replaced, with the iteration rules of `Regex::replace_all` (an empty
/// match right where the previous match ended is skipped). Groups are only computed
/// when the replacement uses them, in one reused buffer.
///
/// The result is capped at `max_bytes`, checked before each write. Each match is
/// charged its expansion plus one per template piece, so that the work stays bounded
/// too when a long list of references expands to nothing on a million empty matches.
pub(super) fn replace_all(
    text: &str,
    pattern: &str,
    replacement: &str,
    max_bytes: usize,
) -> Result<String> {
    let re = compile(pattern)?;
    let template = Template::parse(replacement, &re);
    let mut locations = re.capture_locations();
    let mut out = String::new();
    let mut charged = 0usize;
    let (mut pos, mut last_end) = (0, None);
    loop {
        let found = if template.uses_groups {
            re.captures_read_at(&mut locations, text, pos)
        } else {
            re.find_at(text, pos)
        };
        let Some(m) = found else { break };
        if m.is_empty() && last_end == Some(m.end()) {
            match text[pos..].chars().next() {
                Some(c) => pos += c.len_utf8(),
                None => break,
            }
            continue;
        }
        let group = |i: usize| match i {
            0 => m.as_str(),
            _ => locations.get(i).map_or("", |(s, e)| &text[s..e]),
        };
        let gap = &text[last_end.unwrap_or(0)..m.start()];
        let expansion = template.pieces.iter().fold(0usize, |sum, p| {
            sum.saturating_add(match p {
                Piece::Literal(s) => s.len() + 1,
                Piece::Group(i) => group(*i).len() + 1,
            })
        });
        charged = charged.saturating_add(gap.len()).saturating_add(expansion);
        if charged > max_bytes {
            return Err(Error::invalid(format!(
                "field 'replacement': the result would be longer than {} MiB",
                max_bytes >> 20
            )));
        }
        out.push_str(gap);
        for piece in &template.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Group(i) => out.push_str(group(*i)),
            }
        }
        last_end = Some(m.end());
        pos = m.end();
    }
    out.push_str(&text[last_end.unwrap_or(0)..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn templates_parse_like_regex_expand() {
        let re = Regex::new(r"(?P<first>\w+) (\w+)").unwrap();
        let lit = |s: &str| Piece::Literal(s.to_string());
        let parse = |s: &str| Template::parse(s, &re).pieces;
        assert_eq!(parse(""), vec![]);
        assert_eq!(
            parse("$2, $first!"),
            vec![Piece::Group(2), lit(", "), Piece::Group(1), lit("!")]
        );
        assert_eq!(parse("$$1 $"), vec![lit("$1 $")]);
        assert_eq!(
            parse("${2}x $2x $9 ${nope} ${}"),
            vec![Piece::Group(2), lit("x    ")]
        );
        assert_eq!(
            parse("${unclosed $0"),
            vec![lit("${unclosed "), Piece::Group(0)]
        );
        assert_eq!(parse("$01 $ $-"), vec![Piece::Group(1), lit(" $ $-")]);
        assert!(!Template::parse("$0$$", &re).uses_groups);
        assert!(Template::parse("${first}", &re).uses_groups);
    }

    proptest! {
        /// Same output as `Regex::replace_all` (which uses `Captures::expand`) for
        /// random texts, patterns and replacements full of `$`, braces and names.
        #[test]
        fn agrees_with_regex_replace_all(
            text in "[ab é1_]{0,30}",
            pattern in prop::sample::select(vec![
                "", "a", "a*", "b?", r"(?P<x>a)(b)?", r"(a|)(?P<y>é*)", r"\b", r"(\d)|(_)", "é|$",
            ]),
            replacement in r"[$ab{}x_yé0-3]{0,12}",
        ) {
            let re = Regex::new(pattern).unwrap();
            let expected = re.replace_all(&text, replacement.as_str()).into_owned();
            prop_assert_eq!(replace_all(&text, pattern, &replacement, 1 << 20).unwrap(), expected);
        }
    }
}
