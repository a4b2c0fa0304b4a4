//! The `util.*` built-ins.
//!
//! Registration (in catalog order) and the small functions live here; the larger
//! groups are submodules: dates (`time`), cron (`cron`), addresses (`net`) and unit and
//! colour conversions (`convert`).

mod convert;
mod cron;
mod net;
mod time;

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use rand::distributions::Slice;
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};
use sopm_core::{Error, Result};

use crate::schema::{Args, Ty};
use crate::{BoxFuture, Builtin};

/// Largest strftime format string, in bytes (a format is short; this keeps the
/// formatted output small too).
const MAX_FORMAT_BYTES: usize = 256;
/// Largest date-time text, in bytes (an RFC 3339 date-time is about 35).
const MAX_DATE_BYTES: usize = 256;
/// Largest URL, in bytes: far above what servers accept (commonly 8 KiB), while
/// keeping the parse and the `params` object of `util.parse_url` cheap.
const MAX_URL_BYTES: usize = 64 * 1024;
/// Largest IP address or CIDR text, in bytes (the longest IPv6 form is 45, plus "/128").
const MAX_IP_BYTES: usize = 64;

pub(crate) fn register(out: &mut Vec<Builtin>) {
    out.push(
        Builtin::describe(
            "util.uuid",
            "Returns a random UUID string: version 4 (the default) or 7 (time-ordered)",
        )
        .optional("version", Ty::IntEnum(&[4, 7]))
        .example(
            json!({"version": 4}),
            json!("6f1c2a8e-3b4d-4e5f-9a0b-1c2d3e4f5a6b"),
        )
        .nondeterministic()
        .inline(uuid),
    );
    out.push(
        Builtin::describe(
            "util.timestamp",
            "Returns the current time as {unix_ms, rfc3339} (UTC, milliseconds)",
        )
        .example(
            json!({}),
            json!({"unix_ms": 1_704_067_200_000_i64, "rfc3339": "2024-01-01T00:00:00.000Z"}),
        )
        .nondeterministic()
        .inline(timestamp),
    );
    out.push(
        Builtin::describe(
            "util.format_date",
            "Returns a Unix timestamp (seconds, years 0 to 9999) formatted in UTC with a strftime format",
        )
        .param("timestamp", Ty::int_range(time::MIN_UNIX, time::MAX_UNIX))
        .param("format", Ty::short_text(MAX_FORMAT_BYTES))
        .example(
            json!({"timestamp": 1_704_067_200, "format": "%Y-%m-%d %H:%M:%S"}),
            json!("2024-01-01 00:00:00"),
        )
        .inline(time::format_date),
    );
    out.push(
        Builtin::describe(
            "util.parse_date",
            "Parses an RFC 3339 date-time, or a text in a strftime format (taken as UTC when it has no offset), into {unix, rfc3339}",
        )
        .param("text", Ty::short_text(MAX_DATE_BYTES))
        .optional("format", Ty::short_text(MAX_FORMAT_BYTES))
        .example(
            json!({"text": "2024-01-01T12:00:00+02:00"}),
            json!({"unix": 1_704_103_200, "rfc3339": "2024-01-01T10:00:00Z"}),
        )
        .inline(time::parse_date),
    );
    out.push(
        Builtin::describe(
            "util.date_diff",
            "Returns to - from (RFC 3339 date-times) as a signed float in seconds, minutes, hours, days or weeks",
        )
        .param("from", Ty::short_text(MAX_DATE_BYTES))
        .param("to", Ty::short_text(MAX_DATE_BYTES))
        .param(
            "unit",
            Ty::Enum(&["seconds", "minutes", "hours", "days", "weeks"]),
        )
        .example(
            json!({"from": "2024-01-01T00:00:00Z", "to": "2024-01-02T12:00:00Z", "unit": "days"}),
            json!(1.5),
        )
        .inline(time::date_diff),
    );
    out.push(
        Builtin::describe(
            "util.hash",
            "Returns the lowercase hex digest of a text's UTF-8 bytes (md5, sha1, sha256, sha512 or blake3)",
        )
        .param("text", Ty::text())
        .param(
            "algorithm",
            Ty::Enum(&["md5", "sha1", "sha256", "sha512", "blake3"]),
        )
        .example(
            json!({"text": "hello", "algorithm": "sha256"}),
            json!("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
        )
        .linear(hash),
    );
    out.push(
        Builtin::describe(
            "util.hmac",
            "Returns the lowercase hex HMAC of a message under a key (sha256 or sha512)",
        )
        .param("key", Ty::text())
        .param("message", Ty::text())
        .param("algorithm", Ty::Enum(&["sha256", "sha512"]))
        .example(
            json!({
                "key": "key",
                "message": "The quick brown fox jumps over the lazy dog",
                "algorithm": "sha256"
            }),
            json!("f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"),
        )
        .linear(hmac),
    );
    out.push(
        Builtin::describe(
            "util.random_int",
            "Returns a uniformly random integer between min and max, both included",
        )
        .param("min", Ty::integer())
        .param("max", Ty::integer())
        .example(json!({"min": 1, "max": 6}), json!(4))
        .nondeterministic()
        .inline(random_int),
    );
    out.push(
        Builtin::describe(
            "util.random_string",
            "Returns a random string of the given length from a charset: alphanumeric (default), alpha, numeric or hex (lowercase)",
        )
        .param("length", Ty::int_range(1, 4096))
        .optional(
            "charset",
            Ty::Enum(&["alphanumeric", "alpha", "numeric", "hex"]),
        )
        .example(json!({"length": 8}), json!("q3ZtR8bK"))
        .nondeterministic()
        .inline(random_string),
    );
    out.push(
        Builtin::describe(
            "util.password_strength",
            "Rates a password by length and character classes: {score 0-4, length, classes, feedback}",
        )
        .param("password", Ty::text())
        .example(
            json!({"password": "Tr0ub4dor&3"}),
            json!({
                "score": 3,
                "length": 11,
                "classes": 4,
                "feedback": ["use 12 or more characters"]
            }),
        )
        .linear(password_strength),
    );
    out.push(
        Builtin::describe(
            "util.validate_email",
            "Checks an email address's syntax (no DNS): {valid, reason when not valid}",
        )
        .param("email", Ty::text())
        .example(json!({"email": "user@example.com"}), json!({"valid": true}))
        .inline(net::validate_email),
    );
    out.push(
        Builtin::describe(
            "util.validate_url",
            "Checks that a text is an absolute URL (WHATWG rules): {valid, reason when not valid}",
        )
        .param("url", Ty::short_text(MAX_URL_BYTES))
        .example(
            json!({"url": "https://example.com/a?b=1"}),
            json!({"valid": true}),
        )
        .linear(net::validate_url),
    );
    out.push(
        Builtin::describe(
            "util.parse_url",
            "Splits an absolute URL into {scheme, host, port (the scheme's default when absent), path, query, fragment, params}",
        )
        .param("url", Ty::short_text(MAX_URL_BYTES))
        .example(
            json!({"url": "https://example.com:8443/search?q=rust&page=2#top"}),
            json!({
                "scheme": "https",
                "host": "example.com",
                "port": 8443,
                "path": "/search",
                "query": "q=rust&page=2",
                "fragment": "top",
                "params": {"q": "rust", "page": "2"}
            }),
        )
        .linear(net::parse_url),
    );
    out.push(
        Builtin::describe(
            "util.ip_info",
            "Describes an IPv4 or IPv6 address: {version, loopback, private, multicast, unspecified}",
        )
        .param("ip", Ty::short_text(MAX_IP_BYTES))
        .example(
            json!({"ip": "192.168.1.10"}),
            json!({
                "version": 4,
                "loopback": false,
                "private": true,
                "multicast": false,
                "unspecified": false
            }),
        )
        .inline(net::ip_info),
    );
    out.push(
        Builtin::describe(
            "util.cidr_contains",
            "Returns whether an IP address lies in a CIDR block such as 10.0.0.0/8 (false across IPv4/IPv6)",
        )
        .param("cidr", Ty::short_text(MAX_IP_BYTES))
        .param("ip", Ty::short_text(MAX_IP_BYTES))
        .example(json!({"cidr": "10.0.0.0/8", "ip": "10.1.2.3"}), json!(true))
        .inline(net::cidr_contains),
    );
    out.push(
        Builtin::describe("util.echo", "Returns the given value unchanged")
            .param("value", Ty::Any)
            .example(
                json!({"value": {"hello": ["world", 1]}}),
                json!({"hello": ["world", 1]}),
            )
            .inline(echo),
    );
    out.push(
        Builtin::describe(
            "util.sleep",
            "Waits ms milliseconds without holding a thread, then returns {slept_ms}",
        )
        .param("ms", Ty::int_range(0, 10_000))
        .example(json!({"ms": 10}), json!({"slept_ms": 10}))
        .nondeterministic()
        .asynchronous(sleep),
    );
    out.push(
        Builtin::describe(
            "util.cron_next",
            "Returns the next fire times (RFC 3339, UTC) of a 5-field cron expression after from (default now)",
        )
        .param("expression", Ty::short_text(cron::MAX_EXPRESSION_BYTES))
        .optional("from", Ty::short_text(MAX_DATE_BYTES))
        .optional("count", Ty::int_range(1, 100))
        .example(
            json!({"expression": "*/15 9-17 * * MON-FRI", "from": "2024-01-05T17:40:00Z", "count": 3}),
            json!(["2024-01-05T17:45:00Z", "2024-01-08T09:00:00Z", "2024-01-08T09:15:00Z"]),
        )
        .blocking(cron::cron_next),
    );
    out.push(
        Builtin::describe(
            "util.convert_units",
            "Converts a value between units of one kind: length (mm cm m km in ft yd mi), mass (mg g kg oz lb) or temperature (c f k)",
        )
        .param("value", Ty::number())
        .param("from", Ty::Enum(convert::UNITS))
        .param("to", Ty::Enum(convert::UNITS))
        .example(json!({"value": 100, "from": "c", "to": "f"}), json!(212.0))
        .inline(convert::convert_units),
    );
    out.push(
        Builtin::describe(
            "util.color_convert",
            "Converts a color (#rrggbb, rgb(r,g,b) or hsl(h,s%,l%)) to \"#rrggbb\", \"rgb(r, g, b)\" or \"hsl(h, s%, l%)\" (to 0.1, which round-trips)",
        )
        .param("color", Ty::short_text(convert::MAX_COLOR_BYTES))
        .param("to", Ty::Enum(&["hex", "rgb", "hsl"]))
        .example(
            json!({"color": "#ff8000", "to": "hsl"}),
            json!("hsl(30.1, 100%, 50%)"),
        )
        .inline(convert::color_convert),
    );
}

/// `invalid_input` for an enum value the schema should already have refused.
fn unexpected(field: &str, got: impl std::fmt::Display) -> Error {
    Error::invalid(format!("field '{field}': unexpected value '{got}'"))
}

fn uuid(args: &Args<'_>) -> Result<Value> {
    let id = match args.opt_i64("version")? {
        None | Some(4) => uuid::Uuid::new_v4(),
        Some(7) => uuid::Uuid::now_v7(),
        Some(other) => return Err(unexpected("version", other)),
    };
    Ok(Value::String(id.to_string()))
}

fn timestamp(_args: &Args<'_>) -> Result<Value> {
    let now = Utc::now();
    Ok(json!({
        "unix_ms": now.timestamp_millis(),
        "rfc3339": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    }))
}

fn hash(args: &Args<'_>) -> Result<Value> {
    let data = args.str("text")?.as_bytes();
    let hex = match args.str("algorithm")? {
        "md5" => digest_hex::<md5::Md5>(data),
        "sha1" => digest_hex::<sha1::Sha1>(data),
        "sha256" => digest_hex::<Sha256>(data),
        "sha512" => digest_hex::<Sha512>(data),
        "blake3" => blake3::hash(data).to_hex().to_string(),
        other => return Err(unexpected("algorithm", other)),
    };
    Ok(Value::String(hex))
}

fn digest_hex<D: Digest>(data: &[u8]) -> String {
    hex::encode(D::digest(data))
}

fn hmac(args: &Args<'_>) -> Result<Value> {
    let key = args.str("key")?.as_bytes();
    let message = args.str("message")?.as_bytes();
    let hex = match args.str("algorithm")? {
        "sha256" => mac_hex::<Hmac<Sha256>>(key, message)?,
        "sha512" => mac_hex::<Hmac<Sha512>>(key, message)?,
        other => return Err(unexpected("algorithm", other)),
    };
    Ok(Value::String(hex))
}

fn mac_hex<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Result<String> {
    // HMAC takes keys of any length, so this error cannot happen in practice.
    let mut mac =
        <M as Mac>::new_from_slice(key).map_err(|e| Error::invalid(format!("field 'key': {e}")))?;
    mac.update(message);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

fn random_int(args: &Args<'_>) -> Result<Value> {
    let (min, max) = (args.i64("min")?, args.i64("max")?);
    if min > max {
        return Err(Error::invalid(format!(
            "field 'min': must be <= max, got min {min} and max {max}"
        )));
    }
    Ok(json!(rand::thread_rng().gen_range(min..=max)))
}

fn random_string(args: &Args<'_>) -> Result<Value> {
    let length = args.usize("length")?;
    let charset: &[u8] = match args.opt_str("charset")?.unwrap_or("alphanumeric") {
        "alphanumeric" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "alpha" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "numeric" => b"0123456789",
        "hex" => b"0123456789abcdef",
        other => return Err(unexpected("charset", other)),
    };
    let chars =
        Slice::new(charset).map_err(|_| Error::Internal("empty random_string charset".into()))?;
    let text: String = rand::thread_rng()
        .sample_iter(chars)
        .take(length)
        .map(|&b| char::from(b))
        .collect();
    Ok(Value::String(text))
}

/// Scores a password with a simple, explainable rule (no dictionary): up to 2 points
/// for length (8+ characters, 12+ characters) and up to 2 for variety (2-3 character
/// classes, all 4), where the classes are lowercase, uppercase, digits and symbols
/// (any other character). A password shorter than 8 characters scores at most 1.
fn password_strength(args: &Args<'_>) -> Result<Value> {
    let password = args.str("password")?;
    let (mut lower, mut upper, mut digit, mut symbol) = (false, false, false, false);
    let mut length = 0usize;
    for c in password.chars() {
        length += 1;
        if c.is_lowercase() {
            lower = true;
        } else if c.is_uppercase() {
            upper = true;
        } else if c.is_numeric() {
            digit = true;
        } else {
            symbol = true;
        }
    }
    let classes = [lower, upper, digit, symbol].iter().filter(|&&b| b).count();
    let variety = match classes {
        0 | 1 => 0,
        2 | 3 => 1,
        _ => 2,
    };
    let score = match length {
        0..=7 => variety.min(1),
        8..=11 => 1 + variety,
        _ => 2 + variety,
    };
    let mut feedback = Vec::new();
    match length {
        0..=7 => feedback.push("use at least 8 characters"),
        8..=11 => feedback.push("use 12 or more characters"),
        _ => {}
    }
    for (present, hint) in [
        (lower, "add lowercase letters"),
        (upper, "add uppercase letters"),
        (digit, "add digits"),
        (symbol, "add symbols"),
    ] {
        if !present {
            feedback.push(hint);
        }
    }
    Ok(json!({"score": score, "length": length, "classes": classes, "feedback": feedback}))
}

fn echo(args: &Args<'_>) -> Result<Value> {
    Ok(args.value("value")?.clone())
}

/// Waits on tokio's timer, so no worker thread is held. Returns the requested time.
fn sleep(args: &Args<'_>) -> Result<BoxFuture> {
    let ms = args.u64("ms")?;
    Ok(Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({ "slept_ms": ms }))
    }))
}

#[cfg(test)]
mod tests {
    use crate::testing::{call, code};
    use serde_json::{json, Value};

    async fn text(name: &str, input: Value) -> String {
        call(name, input)
            .await
            .unwrap()
            .as_str()
            .expect("a string")
            .to_string()
    }

    fn assert_uuid(s: &str, version: char) {
        assert_eq!(s.len(), 36, "{s}");
        for (i, c) in s.chars().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                assert_eq!(c, '-', "{s}");
            } else {
                assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{s}");
            }
        }
        assert_eq!(s.chars().nth(14), Some(version), "{s}");
        // RFC 9562 variant: 10xx.
        assert!(
            matches!(s.chars().nth(19), Some('8' | '9' | 'a' | 'b')),
            "{s}"
        );
    }

    #[tokio::test]
    async fn uuid_versions() {
        let a = text("util.uuid", json!({})).await;
        let b = text("util.uuid", json!({"version": null})).await;
        assert_uuid(&a, '4');
        assert_uuid(&b, '4');
        assert_ne!(a, b);
        assert_uuid(&text("util.uuid", json!({"version": 4})).await, '4');
        let v7 = text("util.uuid", json!({"version": 7})).await;
        assert_uuid(&v7, '7');
        // Version 7 starts with the Unix time in milliseconds (48 bits).
        let ms = i64::from_str_radix(&v7.replace('-', "")[..12], 16).unwrap();
        assert!((ms - chrono::Utc::now().timestamp_millis()).abs() < 60_000);
        for bad in [
            json!({"version": 5}),
            json!({"version": "4"}),
            json!({"version": 4.5}),
        ] {
            assert_eq!(code("util.uuid", bad).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn timestamp_is_now() {
        let before = chrono::Utc::now().timestamp_millis();
        let out = call("util.timestamp", json!({})).await.unwrap();
        let after = chrono::Utc::now().timestamp_millis();
        let ms = out["unix_ms"].as_i64().unwrap();
        assert!(before <= ms && ms <= after);
        let text = out["rfc3339"].as_str().unwrap();
        assert!(text.ends_with('Z') && text.len() == 24, "{text}");
        let parsed = chrono::DateTime::parse_from_rfc3339(text).unwrap();
        assert_eq!(parsed.timestamp_millis(), ms);
        assert_eq!(
            code("util.timestamp", json!({"x": 1})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn hash_known_digests() {
        let cases = [
            ("md5", "", "d41d8cd98f00b204e9800998ecf8427e"),
            ("md5", "hello", "5d41402abc4b2a76b9719d911017c592"),
            ("sha1", "hello", "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"),
            (
                "sha256",
                "",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                "sha512",
                "abc",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
            (
                "blake3",
                "",
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            ),
            // UTF-8 bytes of "é" are c3 a9.
            ("md5", "é", "66ddcd97cfdeabb2f6fb8a999b4bc76f"),
        ];
        for (algorithm, input, digest) in cases {
            assert_eq!(
                text("util.hash", json!({"text": input, "algorithm": algorithm})).await,
                digest,
                "{algorithm}({input:?})"
            );
        }
        for bad in [
            json!({"text": "x", "algorithm": "sha3"}),
            json!({"text": "x", "algorithm": "SHA256"}),
            json!({"text": 1, "algorithm": "md5"}),
            json!({"algorithm": "md5"}),
        ] {
            assert_eq!(code("util.hash", bad).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn hash_at_the_largest_input() {
        let big = "a".repeat(crate::schema::MAX_TEXT_BYTES);
        let out = text("util.hash", json!({"text": big, "algorithm": "blake3"})).await;
        assert_eq!(out, blake3::hash(big.as_bytes()).to_hex().to_string());
        let over = "a".repeat(crate::schema::MAX_TEXT_BYTES + 1);
        assert_eq!(
            code("util.hash", json!({"text": over, "algorithm": "md5"})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn hmac_known_macs() {
        let fox = "The quick brown fox jumps over the lazy dog";
        assert_eq!(
            text(
                "util.hmac",
                json!({"key": "key", "message": fox, "algorithm": "sha512"})
            )
            .await,
            "b42af09057bac1e2d41708e48a902e09b5ff7f12ab428a4fe86653c73dd248fb\
             82f948a549f7b791a5b41915ee4d1ec3935357e4e2317250d0372afa2ebeeb3a"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            text(
                "util.hmac",
                json!({"key": "Jefe", "message": "what do ya want for nothing?", "algorithm": "sha256"})
            )
            .await,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // An empty key and message are allowed.
        assert_eq!(
            text(
                "util.hmac",
                json!({"key": "", "message": "", "algorithm": "sha256"})
            )
            .await,
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"
        );
        assert_eq!(
            code(
                "util.hmac",
                json!({"key": "k", "message": "m", "algorithm": "md5"})
            )
            .await,
            "invalid_input"
        );
        assert_eq!(
            code("util.hmac", json!({"key": "k", "algorithm": "sha256"})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn random_int_stays_in_range() {
        let mut seen = [false; 3];
        for _ in 0..300 {
            let n = call("util.random_int", json!({"min": -1, "max": 1}))
                .await
                .unwrap()
                .as_i64()
                .unwrap();
            assert!((-1..=1).contains(&n));
            seen[(n + 1) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(
            call("util.random_int", json!({"min": 7, "max": 7}))
                .await
                .unwrap(),
            json!(7)
        );
        let full = call("util.random_int", json!({"min": i64::MIN, "max": i64::MAX})).await;
        assert!(full.unwrap().is_i64());
        assert_eq!(
            code("util.random_int", json!({"min": 2, "max": 1})).await,
            "invalid_input"
        );
        assert_eq!(
            code("util.random_int", json!({"min": 0.5, "max": 1})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn random_string_length_and_charset() {
        type Allowed = fn(char) -> bool;
        let cases: [(Value, Allowed); 5] = [
            (json!(null), |c| c.is_ascii_alphanumeric()),
            (json!("alphanumeric"), |c| c.is_ascii_alphanumeric()),
            (json!("alpha"), |c| c.is_ascii_alphabetic()),
            (json!("numeric"), |c| c.is_ascii_digit()),
            (json!("hex"), |c| {
                c.is_ascii_digit() || ('a'..='f').contains(&c)
            }),
        ];
        for (charset, allowed) in cases {
            let s = text(
                "util.random_string",
                json!({"length": 4096, "charset": charset}),
            )
            .await;
            assert_eq!(s.len(), 4096);
            assert!(s.chars().all(allowed), "{charset}: {s}");
        }
        assert_eq!(
            text("util.random_string", json!({"length": 1})).await.len(),
            1
        );
        for bad in [
            json!({"length": 0}),
            json!({"length": 4097}),
            json!({"length": -1}),
            json!({"length": 5, "charset": "binary"}),
        ] {
            assert_eq!(code("util.random_string", bad).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn password_strength_scores() {
        let rate = |p: &str| call("util.password_strength", json!({"password": p}));
        assert_eq!(
            rate("").await.unwrap(),
            json!({
                "score": 0,
                "length": 0,
                "classes": 0,
                "feedback": [
                    "use at least 8 characters",
                    "add lowercase letters",
                    "add uppercase letters",
                    "add digits",
                    "add symbols"
                ]
            })
        );
        let score = |v: Value| (v["score"].as_i64().unwrap(), v["classes"].as_i64().unwrap());
        assert_eq!(score(rate("password").await.unwrap()), (1, 1));
        assert_eq!(score(rate("aB3$").await.unwrap()), (1, 4));
        assert_eq!(score(rate("abcdefghijklmnop").await.unwrap()), (2, 1));
        assert_eq!(score(rate("Password1").await.unwrap()), (2, 3));
        assert_eq!(score(rate("correct horse battery").await.unwrap()), (3, 2));
        let best = rate("Correct-Horse-Battery-9").await.unwrap();
        assert_eq!(best["score"], json!(4));
        assert_eq!(best["feedback"], json!([]));
        // Length counts characters, not bytes; uncased letters count as symbols.
        let unicode = rate("Éé1漢字ÀàÖö").await.unwrap();
        assert_eq!(unicode["length"], json!(9));
        assert_eq!(unicode["classes"], json!(4));
        assert_eq!(
            code("util.password_strength", json!({"password": 12345678})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn password_strength_at_the_largest_input() {
        let big = "aB1!".repeat(crate::schema::MAX_TEXT_BYTES / 4);
        let out = call("util.password_strength", json!({"password": big}))
            .await
            .unwrap();
        assert_eq!(out["length"], json!(crate::schema::MAX_TEXT_BYTES));
        assert_eq!(out["score"], json!(4));
    }

    #[tokio::test]
    async fn echo_returns_any_value() {
        for v in [
            json!(null),
            json!(0),
            json!(-1.5),
            json!("héllo 👋"),
            json!([1, [2, {"a": null}]]),
            json!({"nested": {"deep": [true, false]}}),
        ] {
            assert_eq!(call("util.echo", json!({ "value": v })).await.unwrap(), v);
        }
        assert_eq!(code("util.echo", json!({})).await, "invalid_input");
    }

    #[tokio::test]
    async fn sleep_waits_without_a_thread() {
        let start = std::time::Instant::now();
        let out = call("util.sleep", json!({"ms": 30})).await.unwrap();
        assert_eq!(out, json!({"slept_ms": 30}));
        assert!(start.elapsed() >= std::time::Duration::from_millis(30));
        assert_eq!(
            call("util.sleep", json!({"ms": 0})).await.unwrap(),
            json!({"slept_ms": 0})
        );
        for bad in [
            json!({"ms": -1}),
            json!({"ms": 10_001}),
            json!({"ms": "5"}),
            json!({}),
        ] {
            assert_eq!(code("util.sleep", bad).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn sleep_runs_concurrently_on_one_thread() {
        // On this current-thread runtime, 50 sleeps of 100 ms overlap: none holds the
        // thread (run one after another they would take 5 s).
        let start = std::time::Instant::now();
        let calls = (0..50).map(|_| call("util.sleep", json!({"ms": 100})));
        for out in futures::future::join_all(calls).await {
            assert_eq!(out.unwrap(), json!({"slept_ms": 100}));
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(4));
    }
}
