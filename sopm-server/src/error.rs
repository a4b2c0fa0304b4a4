//! How errors become HTTP answers: one place maps each stable code to a status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sopm_core::Error;

/// An error answered as `{"error": {"code", "message"}}` with the matching status.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of an error code.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidInput(_) | Error::Domain(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::QuotaExceeded {
            retry_after: Some(_),
            ..
        } => StatusCode::TOO_MANY_REQUESTS,
        Error::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) | Error::NotReady(_) | Error::Cancelled(_) | Error::Interrupted(_) => {
            StatusCode::CONFLICT
        }
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Function { .. }
        | Error::OutOfMemory(_)
        | Error::OutputTooLarge(_)
        | Error::SandboxCrashed(_)
        | Error::BuildFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error.
pub fn error_body(e: &Error) -> serde_json::Value {
    let mut inner = json!({"code": e.code(), "message": e.public_message()});
    if let Error::Function {
        traceback: Some(tb),
        ..
    } = e
    {
        inner["traceback"] = json!(tb);
    }
    json!({ "error": inner })
}

/// Adds `Retry-After` to an overloaded answer and to a quota on work in flight.
pub fn with_retry_after(mut resp: Response, e: &Error) -> Response {
    let retry_after = match e {
        Error::Overloaded { retry_after, .. } => Some(retry_after),
        Error::QuotaExceeded { retry_after, .. } => retry_after.as_ref(),
        _ => None,
    };
    if let Some(retry_after) = retry_after {
        let secs = retry_after.as_secs().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.0.code(), error = %self.0, "request failed");
        }
        let body = crate::body::json_bytes(&error_body(&self.0));
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sopm\""),
            );
        }
        with_retry_after(resp, &self.0)
    }
}
