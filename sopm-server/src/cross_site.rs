//! Defences against a web page using a browser to reach the server: POST bodies must
//! say `Content-Type: application/json` (a page can send `text/plain` anywhere without
//! asking), and a server without auth answers only requests addressed to its own name
//! (`Host`, against DNS rebinding) from no page or its own (`Origin`, against
//! cross-site requests).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sopm_core::types::truncate_for_message;
use sopm_core::Error;

use crate::body::{json_bytes, json_response, media_type};
use crate::config::AuthMode;
use crate::error::ApiError;
use crate::state::AppState;

/// Checks every request before its handler: with auth off, `Host` then `Origin`.
pub(crate) async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let config = &s.inner().config;
    if config.auth == AuthMode::Off {
        if let Err(e) = check_host(req.headers(), config.listen) {
            return ApiError(e).into_response();
        }
        if let Err(e) = check_origin(req.headers()) {
            return ApiError(e).into_response();
        }
    }
    next.run(req).await
}

/// The `Content-Type` check of a POST handler, taken as its first argument so it runs
/// before any other extractor (a 415 comes before a 401). `ARCHIVE` also takes
/// `multipart/form-data` (the upload route). An extractor rather than a route layer: a
/// layer's per-request service clone and boxed future were a sixteenth of a small
/// execute call's instructions. A POST to a path without a POST handler stays 405.
pub(crate) struct PostContentType<const ARCHIVE: bool>;

/// A POST whose body must be `application/json`.
pub(crate) type JsonPost = PostContentType<false>;

/// A POST whose body is `application/json` or a multipart archive.
pub(crate) type JsonOrArchivePost = PostContentType<true>;

impl<S: Send + Sync, const ARCHIVE: bool> FromRequestParts<S> for PostContentType<ARCHIVE> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        match check_content_type(&parts.headers, ARCHIVE) {
            Ok(()) => Ok(PostContentType),
            Err(message) => Err(unsupported_media_type(&message)),
        }
    }
}

/// 415 `unsupported_media_type`, the one answer without a core error code: it says
/// nothing about the work, only how the request was sent.
fn unsupported_media_type(message: &str) -> Response {
    json_response(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        json_bytes(&json!({"error": {"code": "unsupported_media_type", "message": message}})),
    )
}

fn check_content_type(headers: &HeaderMap, archive_ok: bool) -> Result<(), String> {
    match media_type(headers) {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        Some(t) if archive_ok && t.eq_ignore_ascii_case("multipart/form-data") => Ok(()),
        other => {
            let expected = if archive_ok {
                "'Content-Type: application/json' (or multipart/form-data with an archive)"
            } else {
                "'Content-Type: application/json'"
            };
            Err(match other {
                None => format!("a POST body needs {expected}; none was given"),
                Some(t) => format!(
                    "a POST body needs {expected}, not '{}'",
                    truncate_for_message(&t.to_ascii_lowercase())
                ),
            })
        }
    }
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`) and its
/// port, or `None` if it is not shaped like one.
fn split_host(value: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse().ok()?),
    };
    (!host.is_empty()).then_some((host, port))
}

/// Whether a `Host` value names this server: its listen address, or a loopback name
/// (`localhost`, `127.0.0.1`, `[::1]`) with any port. A server listening on every
/// address (`0.0.0.0`, `[::]`) also answers any IP address with its port. A name
/// that only DNS maps here (`attacker.example`) is refused: that is DNS rebinding.
pub(crate) fn host_allowed(value: &str, listen: SocketAddr) -> bool {
    let Some((host, port)) = split_host(value) else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = host.parse::<IpAddr>() else {
        return false;
    };
    if ip.is_loopback() {
        return true;
    }
    let port_matches = port.unwrap_or(80) == listen.port();
    port_matches && (ip == listen.ip() || listen.ip().is_unspecified())
}

fn check_host(headers: &HeaderMap, listen: SocketAddr) -> Result<(), Error> {
    // A request without `Host` (HTTP/1.0, in-process tests) names no other site.
    let Some(value) = headers.get(HOST) else {
        return Ok(());
    };
    let value = value.to_str().unwrap_or("");
    if host_allowed(value, listen) {
        return Ok(());
    }
    Err(Error::forbidden(
        "host_not_allowed",
        format!(
            "this server runs without auth and answers only requests addressed to {listen}, localhost, \
             127.0.0.1 or [::1], not to '{}' (a browser sends that after DNS rebinding); \
             use one of those names, or turn auth on",
            truncate_for_message(value)
        ),
    ))
}

fn check_origin(headers: &HeaderMap) -> Result<(), Error> {
    // Browsers send `Origin` on cross-site requests; curl and the CLI send none.
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let own = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"));
    if own.is_some_and(|own| own.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    Err(Error::forbidden(
        "origin_not_allowed",
        format!(
            "this server runs without auth and refuses requests from web pages of other sites \
             (Origin '{}'); call it from curl or the sopm CLI, or turn auth on",
            truncate_for_message(origin)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::CONTENT_TYPE;

    #[test]
    fn hosts() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:9000",
            "127.0.0.1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(host_allowed(ok, listen), "{ok}");
        }
        for bad in [
            "attacker.example:8080",
            "attacker.example",
            "localhost.attacker.example",
            "10.0.0.5:8080",
            "[::1",
            "127.0.0.1:x",
            "",
        ] {
            assert!(!host_allowed(bad, listen), "{bad}");
        }
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        assert!(host_allowed("10.0.0.5:9000", any));
        assert!(!host_allowed("10.0.0.5:9001", any));
        assert!(!host_allowed("sopm.internal:9000", any));
    }

    #[test]
    fn content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().unwrap());
            h
        };
        assert!(check_content_type(&with("application/json"), false).is_ok());
        assert!(check_content_type(&with("Application/JSON; charset=utf-8"), false).is_ok());
        assert!(check_content_type(&with("text/plain"), false).is_err());
        assert!(check_content_type(&with("multipart/form-data; boundary=x"), false).is_err());
        assert!(check_content_type(&with("multipart/form-data; boundary=x"), true).is_ok());
        assert!(check_content_type(&HeaderMap::new(), false).is_err());
    }
}
