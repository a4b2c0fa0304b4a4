//! A small HTTP/1.1 client: one request a connection (`Connection: close`), the answer
//! read whole, a chunked body joined, and the body parsed as JSON (`Null` if it is not).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// A request as it goes on the wire, after the `Host` line the client adds.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Headers, sent in this order.
    pub headers: Vec<(String, String)>,
    /// The body; `Content-Length` is sent only with one.
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// `method path` with no headers and no body.
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// `GET path`, no headers.
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    /// `method path` as the API's clients send it: `Content-Type: application/json`
    /// and `body` (an empty one, `Content-Length: 0`, when `None`).
    pub fn json(method: &str, path: &str, body: Option<&Value>) -> Request {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        Request::new(method, path).body("application/json", body)
    }

    /// Adds the header `name: value`.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body and its `Content-Type`.
    pub fn body(self, content_type: &str, body: impl Into<Vec<u8>>) -> Request {
        let mut req = self.header("Content-Type", content_type);
        req.body = Some(body.into());
        req
    }
}

/// Sends `req` to `127.0.0.1:port` and reads the status and the JSON body, waiting at
/// most `timeout` for each read.
pub fn send(port: u16, req: &Request, timeout: Duration) -> std::io::Result<(u16, Value)> {
    send_to(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &format!("localhost:{port}"),
        req,
        timeout,
    )
}

/// Sends `req` to `addr` with the `Host` header `host`, and reads the status and the
/// JSON body, waiting at most `timeout` to connect and for each read.
pub fn send_to(
    addr: SocketAddr,
    host: &str,
    req: &Request,
    timeout: Duration,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", req.method, req.path);
    for (name, value) in &req.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = &req.body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(body) = &req.body {
        s.write_all(body)?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, payload) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(payload)
    } else {
        payload.to_string()
    };
    Ok((
        status,
        serde_json::from_str(&payload).unwrap_or(Value::Null),
    ))
}

/// The body of a `Transfer-Encoding: chunked` answer, its chunks joined.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
