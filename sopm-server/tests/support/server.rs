//! `sopm serve` as a child process on a free loopback port: started from
//! [`ServerOptions`], returned once `/readyz` answers 200, killed when dropped.

use std::ffi::{OsStr, OsString};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::http::{self, Request};
use super::{poll, BIN};

/// How a test's server is started. [`ServerOptions::new`] is `sopm serve --listen
/// 127.0.0.1:PORT` with `SOPM_LOG=warn`, its stderr the test's, no data directory.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    data_dir: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    listen_via_env: bool,
    log: String,
    quiet: bool,
    timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            data_dir: None,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            listen_via_env: false,
            log: "warn".into(),
            quiet: false,
            timeout: Duration::from_secs(60),
        }
    }
}

impl ServerOptions {
    /// The defaults (see [`ServerOptions`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// `--data-dir dir`; without it the server uses its default, `./sopm-data`.
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.data_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// More arguments after `serve`.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// The environment variable `name=value` for the server.
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.env.push((name.into(), value.as_ref().to_os_string()));
        self
    }

    /// Runs the server in `dir` (a relative `--data-dir` is under it).
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Gives the address in `SOPM_LISTEN` instead of `--listen`, so the command line is
    /// only what the test gives.
    pub fn listen_via_env(mut self) -> Self {
        self.listen_via_env = true;
        self
    }

    /// `SOPM_LOG=level` instead of `warn`.
    pub fn log(mut self, level: &str) -> Self {
        self.log = level.into();
        self
    }

    /// Drops the server's stderr instead of showing it with the test's.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// How long to wait for readiness and for each read of an answer (60 s unless set).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }
}

/// A running `sopm serve`, killed when dropped.
pub struct Server {
    child: Child,
    port: u16,
    timeout: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `sopm serve` as `options` say and waits until `/readyz` answers 200;
    /// panics if the server exits first or is not ready within the timeout.
    pub fn start(options: ServerOptions) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(BIN);
        command.arg("serve");
        if options.listen_via_env {
            command.env("SOPM_LISTEN", &listen);
        } else {
            command.args(["--listen", &listen]);
        }
        if let Some(dir) = &options.data_dir {
            command.arg("--data-dir").arg(dir);
        }
        if let Some(dir) = &options.cwd {
            command.current_dir(dir);
        }
        let child = command
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("SOPM_LOG", &options.log)
            .stdout(Stdio::null())
            .stderr(if options.quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("start sopm serve");
        let mut server = Server {
            child,
            port,
            timeout: options.timeout,
        };
        poll(options.timeout, Duration::from_millis(50), || {
            if let Ok((200, _)) = server.send(&Request::get("/readyz")) {
                return Ok(());
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("sopm serve exited before it was ready: {status}");
            }
            Err("the server did not become ready".into())
        });
        server
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `req`; an I/O error is returned, not a panic.
    pub fn send(&self, req: &Request) -> std::io::Result<(u16, Value)> {
        http::send(self.port, req, self.timeout)
    }

    /// Sends `req` and returns the status and JSON body; panics on an I/O error.
    pub fn request(&self, req: &Request) -> (u16, Value) {
        self.send(req)
            .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.path))
    }

    /// A JSON request (see [`Request::json`]).
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.request(&Request::json(method, path, body))
    }

    /// `GET path` as a JSON client sends it.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.json("GET", path, None)
    }

    /// `POST path` with the JSON `body`.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json("POST", path, Some(body))
    }

    /// Runs the `sopm` CLI with `SOPM_URL` set to this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SOPM_URL", self.url())
            .output()
            .expect("run sopm")
    }

    /// Runs the `sopm` CLI against this server with the API key `key`.
    pub fn cli_as(&self, key: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SOPM_URL", self.url())
            .env("SOPM_API_KEY", key)
            .output()
            .expect("run sopm")
    }

    /// Sends the signal `sig` (as `kill` names it: `-TERM`, `-KILL`) to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the server to exit and returns how it did.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        poll(self.timeout, Duration::from_millis(20), || {
            child
                .try_wait()
                .unwrap()
                .ok_or_else(|| "server did not exit".to_string())
        })
    }

    /// The job `id` (with its `?user_id=` if any) once it is neither queued nor running.
    pub fn finished_job(&self, id: &str) -> Value {
        poll(self.timeout, Duration::from_millis(20), || {
            let (st, v) = self.get(&format!("/api/status/{id}"));
            assert_eq!(st, 200, "status of {id}: {v}");
            match v["status"].as_str() {
                Some("queued" | "running") => Err(format!("job {id} did not finish: {v}")),
                _ => Ok(v),
            }
        })
    }

    /// The user function at `path` (`/api/user-functions/NAME?user_id=...`) once its
    /// build has ended, waiting up to 300 s.
    pub fn built_function(&self, path: &str) -> Value {
        poll(Duration::from_secs(300), Duration::from_millis(100), || {
            let (st, f) = self.get(path);
            assert_eq!(st, 200, "{path}: {f}");
            if f["status"] == "building" {
                Err(format!("the build did not end: {f}"))
            } else {
                Ok(f)
            }
        })
    }
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
