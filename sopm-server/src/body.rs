//! Request bodies read under a size limit and parsed as JSON, and JSON answers.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sopm_core::{Error, Result};

/// The one route whose body may also be `multipart/form-data` (an upload with an
/// archive).
pub(crate) const MULTIPART_ROUTE: &str = "/api/user-functions";

/// The media type of a request's `Content-Type`, without parameters, as sent (compare
/// it with [`is_media_type`] or `eq_ignore_ascii_case`: media types ignore case).
pub(crate) fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().unwrap_or("");
    Some(value.split(';').next().unwrap_or("").trim())
}

/// Whether the request's `Content-Type` is `ty` (lower case), parameters aside.
pub(crate) fn is_media_type(headers: &HeaderMap, ty: &str) -> bool {
    media_type(headers).is_some_and(|t| t.eq_ignore_ascii_case(ty))
}

/// Serialises to bytes; serialising a `Value` or our own types cannot fail.
pub fn json_bytes<T: Serialize + ?Sized>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()))
}

/// A JSON answer with its status.
pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Reads a body up to the limit; past it, `payload_too_large`.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::PayloadTooLarge(
            format!("request body is larger than {limit} bytes"),
        )),
        Err(e) => Err(Error::invalid(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Parses a JSON body, with messages that say where it went wrong. The body's UTF-8 is
/// checked once, with SIMD, so the parser need not check each string again (parsing
/// from bytes does, a byte at a time: on a body of text, as much work as the rest);
/// a body that is not UTF-8 is parsed from its bytes for the message saying where.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    if bytes.is_empty() {
        return Err(Error::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
    .map_err(|e| Error::invalid(format!("request body is not valid: {e}")))
}

/// `{}`, the input of a call that gives none.
pub(crate) fn empty_object() -> Value {
    Value::Object(Default::default())
}
