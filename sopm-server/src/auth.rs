//! Who is calling: with auth off, the tenant a request names (`user_id`); with
//! `auth = "api_key"`, the tenant of its `Authorization: Bearer` key.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::Deserialize;
use sopm_core::{Error, TenantId};

use crate::config::AuthMode;
use crate::error::ApiError;
use crate::state::AppState;

/// `?user_id=` names the tenant while auth is off.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct TenantQuery {
    pub(crate) user_id: Option<String>,
}

/// The tenant `user_id` names; none is the `default` tenant.
fn tenant_of(user_id: Option<&str>) -> Result<TenantId, ApiError> {
    match user_id {
        None => Ok(TenantId::default()),
        Some(u) => TenantId::new(u).map_err(ApiError),
    }
}

/// The caller of a request, as its handler's first extractor. With auth on, a request
/// without a valid key is answered 401 before its body is read.
#[derive(Debug, Clone)]
pub struct Caller {
    key_tenant: Option<TenantId>,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError(Error::Unauthorized(message.to_string()))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let inner = state.inner();
        if inner.config.auth == AuthMode::Off {
            return Ok(Caller { key_tenant: None });
        }
        let Some(secret) = bearer_token(&parts.headers)? else {
            return Err(unauthorized(
                "this server needs an API key: send 'Authorization: Bearer <key>' (keys come from `sopm keys create`)",
            ));
        };
        let keys = inner
            .keys
            .as_ref()
            .ok_or_else(|| unauthorized("this server has no key store; no key is valid"))?;
        match keys.resolve(secret).await? {
            Some(tenant) => Ok(Caller {
                key_tenant: Some(tenant),
            }),
            None => Err(unauthorized("the API key is unknown or revoked")),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; none without the header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(header) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = header
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(rest.trim())),
        _ => Err(unauthorized("expected 'Authorization: Bearer <key>'")),
    }
}

impl Caller {
    /// The tenant the request acts for. With auth off, `user_id` names it (default:
    /// `default`). With auth on it is the key's; a `user_id` naming the same tenant is
    /// accepted, one naming another is 403 `tenant_mismatch` (a key acts for its own
    /// tenant only).
    pub fn tenant(&self, user_id: Option<&str>) -> Result<TenantId, ApiError> {
        match &self.key_tenant {
            None => tenant_of(user_id),
            Some(t) => match user_id {
                None => Ok(t.clone()),
                Some(u) if u == t.as_str() => Ok(t.clone()),
                Some(_) => Err(ApiError(Error::forbidden(
                    "tenant_mismatch",
                    "user_id names another tenant: with auth on, the tenant comes from the API key (leave user_id out)",
                ))),
            },
        }
    }

    /// The tenant of a request that may name it in its body and in its query string:
    /// each one given is checked as [`tenant`](Self::tenant) checks it, and two that
    /// name different tenants are `invalid_input`, so neither is silently ignored.
    pub fn tenant_of(&self, body: Option<&str>, query: Option<&str>) -> Result<TenantId, ApiError> {
        let from_query = self.tenant(query)?;
        match body {
            None => Ok(from_query),
            Some(b) => {
                let from_body = self.tenant(Some(b))?;
                if query.is_some() && from_body != from_query {
                    return Err(ApiError(Error::invalid(
                        "user_id is given in the body and in the query string with different values; give it once",
                    )));
                }
                Ok(from_body)
            }
        }
    }

    /// Whether the tenant came from an API key.
    pub fn authenticated(&self) -> bool {
        self.key_tenant.is_some()
    }
}
