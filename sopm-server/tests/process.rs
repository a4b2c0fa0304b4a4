//! The real `sopm` binary: the CLI walk-through, durability across a kill -9, and a
//! graceful SIGTERM. Each test runs its own server on a free loopback port with
//! SQLite in a temporary directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_sopm");

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            .env("SOPM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sopm serve");
        let s = Server { child, port };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok((200, _)) = s.try_http("GET", "/readyz", None) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become ready");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_http(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let payload = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        Ok((status, serde_json::from_str(payload).unwrap_or(Value::Null)))
    }

    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_http(method, path, body).expect("http request")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SOPM_URL", self.url())
            .output()
            .expect("run sopm")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < until, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_terminal(&self, id: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let (st, v) = self.http("GET", &format!("/api/status/{id}"), None);
            assert_eq!(st, 200, "status of {id}: {v}");
            if !matches!(v["status"].as_str(), Some("queued" | "running")) {
                return v;
            }
            assert!(Instant::now() < until, "job {id} did not finish: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cli_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    let out = server.cli(&["functions"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("math.add"));
    assert!(stdout(&out).trim_end().ends_with("100 functions"));

    let out = server.cli(&["exec", "math.add", r#"{"a":2,"b":3}"#]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "5");

    let out = server.cli(&["exec", "text.uppercase", r#"{"text":"héllo"}"#, "--async"]);
    assert!(out.status.success(), "{out:?}");
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = answer["id"].as_str().unwrap().to_string();
    server.wait_terminal(&id);
    let out = server.cli(&["status", &id]);
    let job: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(job["output"], "HÉLLO");

    let out = server.cli(&["exec", "math.divide", r#"{"a":1,"b":0}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain_error"));

    let out = server.cli(&["exec", "math.add", "{oops"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = server.cli(&["stats"]);
    let stats: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(stats["jobs"]["succeeded"].as_u64().unwrap() >= 2);
}

#[test]
fn accepted_jobs_survive_kill_9_and_reach_a_terminal_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--max-concurrency", "2"]);
    let mut ids = Vec::new();
    // Two long jobs take both slots; everything after them waits in the queue.
    for _ in 0..2 {
        let (st, v) = server.http(
            "POST",
            "/api/execute",
            Some(&json!({"function": "util.sleep", "input": {"ms": 10000}, "async": true})),
        );
        assert_eq!(st, 202, "{v}");
        ids.push((v["id"].as_str().unwrap().to_string(), "sleep"));
    }
    for i in 0..20 {
        let (st, v) = server.http(
            "POST",
            "/api/execute",
            Some(&json!({"function": "math.add", "input": {"a": i, "b": 1}, "async": true})),
        );
        assert_eq!(st, 202, "{v}");
        ids.push((v["id"].as_str().unwrap().to_string(), "add"));
    }
    server.signal("-KILL");
    server.wait_exit();

    let server = Server::start(dir.path(), &[]);
    for (i, (id, kind)) in ids.iter().enumerate() {
        let job = server.wait_terminal(id);
        match *kind {
            "sleep" => {
                assert_eq!(job["status"], "interrupted", "{job}");
                assert_eq!(job["error"]["code"], "interrupted");
            }
            _ => {
                assert_eq!(job["status"], "succeeded", "{job}");
                assert_eq!(job["output"], json!(i as i64 - 2 + 1));
                assert_eq!(job["attempts"], 1);
            }
        }
    }
}

#[test]
fn sigterm_lets_running_jobs_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let (st, v) = server.http(
        "POST",
        "/api/execute",
        Some(&json!({"function": "util.sleep", "input": {"ms": 700}, "async": true})),
    );
    assert_eq!(st, 202);
    let id = v["id"].as_str().unwrap().to_string();
    server.signal("-TERM");
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status:?}");

    let server = Server::start(dir.path(), &[]);
    let job = server.wait_terminal(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["output"]["slept_ms"], 700);
}
