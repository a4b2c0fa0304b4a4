//! The client half of the `sopm` CLI: the arguments every client command shares, its
//! HTTP client, and how answers are printed.

pub mod client;
pub mod functions;
pub mod keys;
pub mod pack;

use std::process::ExitCode;

use hyper::Method;
use serde_json::Value;

use client::{Answer, Client};

/// Where the server is and who is calling.
#[derive(Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(
        long,
        env = "SOPM_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// The tenant (while the server runs without auth).
    #[arg(long, env = "SOPM_USER_ID", global = true)]
    user_id: Option<String>,
    /// An API key (when the server runs with `--auth api_key`).
    #[arg(long, env = "SOPM_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("url", &self.url)
            .field("user_id", &self.user_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClientArgs {
    /// `path` with the tenant and `extra` as its query.
    pub fn path(&self, path: &str, extra: &[(&str, String)]) -> String {
        let mut q: Vec<String> = extra
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        if let Some(u) = &self.user_id {
            q.push(format!("user_id={}", percent_encode(u)));
        }
        if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", q.join("&"))
        }
    }

    /// A client of the server at `--url`, with the API key if one is given.
    pub fn client(&self) -> Result<Client, String> {
        Ok(Client::new(&self.url)?.with_api_key(self.api_key.clone()))
    }
}

/// Percent-encodes a path segment or query value.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Sends a request without a body and prints the JSON answer.
pub async fn simple(c: &ClientArgs, method: Method, path: &str) -> Result<ExitCode, String> {
    let a = c.client()?.call(method, path, None).await?;
    if a.status >= 400 {
        return Ok(report_error(&a));
    }
    print_json(&a.body);
    Ok(ExitCode::SUCCESS)
}

/// A command's input argument as JSON; none is `{}`.
pub fn parse_input(input: Option<&str>) -> Result<Value, String> {
    match input {
        None => Ok(Value::Object(Default::default())),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| format!("the input is not valid JSON: {e}"))
        }
    }
}

/// Prints JSON, indented.
pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints an error answer and gives the failing exit code.
pub fn report_error(a: &Answer) -> ExitCode {
    let code = a.body["error"]["code"].as_str().unwrap_or("error");
    let msg = a.body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| a.body.to_string());
    eprintln!("sopm: {code} (HTTP {}): {msg}", a.status);
    if let Some(id) = a.body["id"].as_str() {
        eprintln!("job: {id}");
    }
    ExitCode::FAILURE
}
