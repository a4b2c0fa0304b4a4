//! The CLI's HTTP client: talks to a running server at `--url`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    api_key: Option<String>,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An answer: the status and the JSON body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Parsed body (a string value if it was not JSON).
    pub body: Value,
}

impl Client {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Result<Self, String> {
        if !base.starts_with("http://") {
            return Err(format!("--url must start with http://, got '{base}'"));
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            api_key: None,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// Sends a request and reads the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default()))
            .unwrap_or_default();
        self.send(method, path, "application/json", bytes).await
    }

    /// Sends a body of any content type and reads the JSON answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        bytes: Bytes,
    ) -> Result<Answer, String> {
        let uri = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", content_type);
        if let Some(key) = &self.api_key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| format!("bad request to {uri}: {e}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(600), self.http.request(req))
            .await
            .map_err(|_| format!("{uri}: no answer within 600 s"))?
            .map_err(|e| {
                format!(
                    "cannot reach the server at {}: {e} (is `sopm serve` running?)",
                    self.base
                )
            })?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer from {uri}: {e}"))?
            .to_bytes();
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(Answer { status, body })
    }
}
