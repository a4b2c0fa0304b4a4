//! Frame lines in and out: the bounded line reader and the frames this runner sends,
//! laid out byte for byte as the python runner lays them out.

use std::io::{self, BufRead};

use serde::Serialize;
use serde_json::Value;

/// The longest frame line the runner accepts from the host.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The most of a traceback a frame carries (its end is kept).
const TRACEBACK_CAP: usize = 32 * 1024;

/// The next line without its newline, never holding more than `max` bytes of it;
/// `None` at end of stream. A last line without a newline still counts.
pub fn read_frame_line(reader: &mut impl BufRead, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame went past {max} bytes"),
            ));
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Some(line));
        }
    }
}

/// What the runner writes to the log channel to end a step's logs.
pub fn log_marker(token: Option<&str>) -> Vec<u8> {
    format!("\n{}\n", token.unwrap_or("")).into_bytes()
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a Value,
    ok: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceback: Option<&'a str>,
}

/// A failed `result` frame; an empty traceback is left out, a long one cut to its end.
pub fn error_result(id: &Value, kind: &str, message: &str, traceback: Option<&str>) -> Vec<u8> {
    let frame = ErrorFrame {
        kind: "result",
        id,
        ok: false,
        error: ErrorBody {
            kind,
            message,
            traceback: traceback.filter(|t| !t.is_empty()).map(char_tail),
        },
    };
    serde_json::to_vec(&frame).expect("result frames always serialise")
}

/// A successful `result` frame around `output` (already encoded JSON).
pub fn ok_result(id: &Value, output: &[u8]) -> Vec<u8> {
    let id = serde_json::to_vec(id).expect("ids always serialise");
    let mut frame = Vec::with_capacity(output.len() + id.len() + 48);
    frame.extend_from_slice(br#"{"type":"result","id":"#);
    frame.extend_from_slice(&id);
    frame.extend_from_slice(br#","ok":true,"output":"#);
    frame.extend_from_slice(output);
    frame.push(b'}');
    frame
}

/// An `init_error` frame.
pub fn init_error(message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct InitError<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        message: &'a str,
    }
    serde_json::to_vec(&InitError {
        kind: "init_error",
        message,
    })
    .expect("init frames always serialise")
}

/// The last [`TRACEBACK_CAP`] characters of `text`.
fn char_tail(text: &str) -> &str {
    match text.char_indices().rev().nth(TRACEBACK_CAP - 1) {
        Some((at, _)) => &text[at..],
        None => text,
    }
}

/// `text` quoted the way python's `repr` quotes a string, so messages read the same as
/// the python runner's (`'hello'`, `"it's"`, `'a\nb'`).
pub fn py_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let n = u32::from(c);
                if n <= 0xff {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_the_last_one_may_lack_a_newline() {
        let mut r = io::BufReader::with_capacity(4, &b"{\"a\":1}\n\nabc"[..]);
        assert_eq!(read_frame_line(&mut r, 16).unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(read_frame_line(&mut r, 16).unwrap().unwrap(), b"");
        assert_eq!(read_frame_line(&mut r, 16).unwrap().unwrap(), b"abc");
        assert!(read_frame_line(&mut r, 16).unwrap().is_none());

        let mut r = io::BufReader::with_capacity(4, &b"0123456789\n"[..]);
        assert!(read_frame_line(&mut r, 9).is_err());
        let mut r = io::BufReader::with_capacity(4, &b"012345678\n"[..]);
        assert_eq!(read_frame_line(&mut r, 9).unwrap().unwrap(), b"012345678");
    }

    #[test]
    fn frames_are_laid_out_as_the_python_runner_lays_them_out() {
        let id = Value::from("j1");
        assert_eq!(
            String::from_utf8(ok_result(&id, b"{\"b\":2,\"a\":1}")).unwrap(),
            r#"{"type":"result","id":"j1","ok":true,"output":{"b":2,"a":1}}"#
        );
        assert_eq!(
            String::from_utf8(error_result(
                &id,
                "function_error",
                "bad \"x\"",
                Some("tb\n")
            ))
            .unwrap(),
            r#"{"type":"result","id":"j1","ok":false,"error":{"kind":"function_error","message":"bad \"x\"","traceback":"tb\n"}}"#
        );
        assert_eq!(
            String::from_utf8(error_result(&id, "timeout", "m", Some(""))).unwrap(),
            r#"{"type":"result","id":"j1","ok":false,"error":{"kind":"timeout","message":"m"}}"#
        );
        assert_eq!(
            String::from_utf8(init_error("no ünïcode escapes")).unwrap(),
            r#"{"type":"init_error","message":"no ünïcode escapes"}"#
        );
    }

    #[test]
    fn tracebacks_keep_their_end() {
        let long = format!("{}end", "é".repeat(TRACEBACK_CAP));
        let tail = char_tail(&long);
        assert_eq!(tail.chars().count(), TRACEBACK_CAP);
        assert!(tail.ends_with("éend"));
        assert_eq!(char_tail("short"), "short");
    }

    #[test]
    fn repr_quotes_like_python() {
        assert_eq!(py_repr("hello world"), "'hello world'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(py_repr("a\nb\t\\"), "'a\\nb\\t\\\\'");
        assert_eq!(py_repr("\u{1}ü"), "'\\x01ü'");
    }
}
