//! The real `sopm` binary under the largest requests its settings allow, sent all at
//! once: execute calls with bodies at the limit (a long string and an array of
//! numbers, which parses to the most memory per byte), JSON and multipart uploads at
//! their limits, and log listings of a function whose jobs carry large inputs. The
//! server's peak RSS (`VmHWM`) must stay within the documented bound
//! (docs/operations.md): the RSS after one request of each kind, plus
//! `max_body_memory_bytes`.

#![cfg(target_os = "linux")]

mod support;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{json, Value};
use support::http::Request;
use support::server::{Server, ServerOptions};

const MIB: usize = 1 << 20;
/// The settings under test: every body limit 1 MiB, a 64 MiB budget for bodies.
const BODY_LIMIT: usize = MIB;
const BUDGET: usize = 64 * MIB;
/// What hyper may buffer of a connection's bytes before its handler reads the body.
const CONNECTION_BUFFER: usize = 512 * 1024;
/// Log listings sent at once, of a function with this many jobs of large inputs.
const LISTINGS: usize = 4;
const LISTED_JOBS: usize = 8;

/// A server whose body limits are [`BODY_LIMIT`] and budget [`BUDGET`] (in a config
/// file under `dir`), data in `dir/data`.
fn start(dir: &std::path::Path) -> Server {
    let config = dir.join("sopm.toml");
    std::fs::write(
        &config,
        format!(
            "max_body_bytes = {BODY_LIMIT}\nmax_upload_json_bytes = {BODY_LIMIT}\n\
             max_upload_archive_bytes = {BODY_LIMIT}\nmax_upload_total_bytes = {}\n\
             max_upload_file_bytes = {}\nmax_body_memory_bytes = {BUDGET}\n",
            2 * BODY_LIMIT,
            2 * BODY_LIMIT
        ),
    )
    .unwrap();
    Server::start(
        ServerOptions::new()
            .args([std::ffi::OsStr::new("--config"), config.as_os_str()])
            .data_dir(dir.join("data"))
            .timeout(Duration::from_secs(300)),
    )
}

/// `POST path` with `body` of `content_type`, answered.
fn post(server: &Server, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    server.request(&Request::new("POST", path).body(content_type, body))
}

/// The peak resident set of the server so far, in bytes.
fn peak_rss(server: &Server) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// Bytes that do not compress, so an archive's size is its content's.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b'a' + (seed % 26) as u8
        })
        .collect()
}

/// An execute body of about `len` bytes: a string of that length.
fn long_string_call(len: usize) -> Vec<u8> {
    let text = "x".repeat(len - 64);
    serde_json::to_vec(&json!({"function": "text.length", "input": {"text": text}})).unwrap()
}

/// An execute body of about `len` bytes: `[0,0,…]`, the most `Value`s per byte.
fn number_array_call(len: usize) -> Vec<u8> {
    let n = (len - 64) / 2;
    let mut body = br#"{"function":"math.sum","input":{"values":["#.to_vec();
    for i in 0..n {
        body.extend_from_slice(if i == 0 { b"0" } else { b",0" });
    }
    body.extend_from_slice(b"]}}");
    body
}

const MAIN: &str = "def handle(event, context):\n    return len(str(event))\n";

/// A JSON upload of about `len` bytes.
fn json_upload(name: &str, len: usize) -> Vec<u8> {
    let data = String::from_utf8(noise(len - 512, len as u64 + name.len() as u64)).unwrap();
    serde_json::to_vec(&json!({
        "name": name,
        "runtime": "python",
        "handler": "main.handle",
        "files": {"main.py": MAIN, "data.txt": data},
    }))
    .unwrap()
}

/// A multipart upload of about `len` bytes (an incompressible tar.gz).
fn multipart_upload(name: &str, len: usize) -> (String, Vec<u8>) {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in [
        ("main.py", MAIN.as_bytes().to_vec()),
        ("data.txt", noise(len - 64 * 1024, 7 + name.len() as u64)),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, &data[..]).unwrap();
    }
    let archive = tar.into_inner().unwrap().finish().unwrap();
    let boundary = "sopm-peak-rss-boundary";
    let meta = json!({"name": name, "runtime": "python", "handler": "main.handle"});
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"f.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&archive);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert!(
        body.len() <= len,
        "the multipart body is {} bytes",
        body.len()
    );
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn wait_ready(server: &Server, name: &str) {
    let f = server.built_function(&format!("/api/user-functions/{name}"));
    assert_eq!(f["status"], "ready", "the build of {name} failed: {f}");
}

#[test]
fn peak_rss_stays_within_the_body_budget_under_the_largest_requests() {
    if support::skip::skipped(support::skip::bwrap_missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(start(dir.path()));
    let json = "application/json";

    // One request of each kind first: allocator arenas, thread caches, SQLite pages
    // and a function whose jobs carry large inputs (for the log listings).
    let (st, v) = post(
        &server,
        "/api/user-functions",
        json,
        &json_upload("echo", 4096),
    );
    assert_eq!(st, 202, "{v}");
    wait_ready(&server, "echo");
    let big_input =
        serde_json::to_vec(&json!({"input": {"blob": "y".repeat(BODY_LIMIT - 1024)}})).unwrap();
    for _ in 0..LISTED_JOBS {
        let (st, v) = post(
            &server,
            "/api/user-functions/echo/execute",
            json,
            &big_input,
        );
        assert_eq!(st, 200, "{v}");
    }
    let (st, v) = post(&server, "/api/execute", json, &long_string_call(BODY_LIMIT));
    assert_eq!(st, 200, "{v}");
    // Past math.sum's count of values: parsed whole, then refused.
    let (st, v) = post(
        &server,
        "/api/execute",
        json,
        &number_array_call(BODY_LIMIT),
    );
    assert!(st == 200 || st == 400, "{v}");
    let (st, v) = post(
        &server,
        "/api/user-functions",
        json,
        &json_upload("warm-json", BODY_LIMIT),
    );
    assert_eq!(st, 202, "{v}");
    let (ct, body) = multipart_upload("warm-multipart", BODY_LIMIT);
    let (st, v) = post(&server, "/api/user-functions", &ct, &body);
    assert_eq!(st, 202, "{v}");
    let (st, v) = server.get("/api/user-functions/echo/logs?limit=200");
    assert_eq!(st, 200, "{v}");
    let base = peak_rss(&server);

    // Then all at once.
    // Each request with the statuses it may answer.
    let mut requests: Vec<(Request, &'static [u16])> = Vec::new();
    let execute = |body: Vec<u8>| Request::new("POST", "/api/execute").body(json, body);
    let upload =
        |ct: &str, body: Vec<u8>| Request::new("POST", "/api/user-functions").body(ct, body);
    for _ in 0..48 {
        requests.push((execute(long_string_call(BODY_LIMIT)), &[200]));
    }
    for _ in 0..16 {
        requests.push((execute(number_array_call(BODY_LIMIT)), &[200, 400]));
    }
    for i in 0..6 {
        let name = format!("big-json-{i}");
        requests.push((upload(json, json_upload(&name, BODY_LIMIT)), &[202]));
        let (ct, body) = multipart_upload(&format!("big-multipart-{i}"), BODY_LIMIT);
        requests.push((upload(&ct, body), &[202]));
    }
    for _ in 0..LISTINGS {
        requests.push((
            Request::json("GET", "/api/user-functions/echo/logs?limit=200", None),
            &[200],
        ));
    }
    let connections = requests.len();
    let jobs = requests
        .iter()
        .filter(|(r, _)| r.path == "/api/execute")
        .count();
    let start = Arc::new(Barrier::new(requests.len()));
    let threads: Vec<_> = requests
        .into_iter()
        .map(|(req, ok)| {
            let (server, start) = (server.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let (st, v) = server.request(&req);
                assert!(ok.contains(&st), "{} {}: {st} {v}", req.method, req.path);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a request failed");
    }
    // The server still answers.
    let (st, _) = server.get("/healthz");
    assert_eq!(st, 200);

    let peak = peak_rss(&server);
    // docs/operations.md: base + max_body_memory_bytes + a read buffer per connection
    // + the record (input) of each job finished but not yet committed to the store
    // + the job rows each log listing reads.
    let bound = base
        + BUDGET
        + connections * CONNECTION_BUFFER
        + jobs * BODY_LIMIT
        + LISTINGS * LISTED_JOBS * BODY_LIMIT;
    eprintln!(
        "peak RSS {} MiB; after one request of each kind {} MiB; bound {} MiB \
         (+ budget {} MiB + {connections} connections + {jobs} job records)",
        peak / MIB,
        base / MIB,
        bound / MIB,
        BUDGET / MIB
    );
    assert!(
        peak <= bound,
        "peak RSS {peak} bytes is past the bound {bound} (base {base} + budget {BUDGET} + \
         {connections} connections + {jobs} job records)"
    );
}
