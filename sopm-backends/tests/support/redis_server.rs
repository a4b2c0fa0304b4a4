//! A real `redis-server` for one test: its own loopback port and data directory, AOF on
//! with `appendfsync always`, killed when dropped (included with `#[path]` by the Redis
//! tests of every crate).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::programs::{find, find_or_skip, free_port, wait_until_answering, Program};

/// A running `redis-server`.
pub struct RedisServer {
    child: Program,
    dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
    bind: String,
}

impl RedisServer {
    /// Starts one on 127.0.0.1, or says why it cannot (no `redis-server` on this
    /// machine). `None` means skip; with `SOPM_REQUIRE_INTEGRATION=1` it panics instead.
    pub fn start(test: &str) -> Option<RedisServer> {
        Self::start_on(test, "127.0.0.1")
    }

    /// Starts one bound to `bind` (an address of this machine or of a namespace the
    /// test made), on a free port.
    pub fn start_on(test: &str, bind: &str) -> Option<RedisServer> {
        let binary = find_or_skip(test, "redis-server", "redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("sopm-redis-")
            .tempdir()
            .expect("temp dir");
        let port = free_port(bind);
        let addr: SocketAddr = format!("{bind}:{port}").parse().expect("address");
        let mut server = RedisServer {
            child: Program::default(),
            dir,
            addr,
            bind: bind.to_string(),
        };
        server.child = Program::new(server.spawn(&binary));
        server.wait_ready();
        Some(server)
    }

    /// `redis://ADDR/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Its data directory (the AOF lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it with SIGKILL (what it had acknowledged is in the AOF, fsynced).
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts it again on the same address and data directory (it reloads the AOF).
    pub fn restart(&mut self) {
        self.kill();
        let binary = find("redis-server").expect("redis-server was there a moment ago");
        self.child = Program::new(self.spawn(&binary));
        self.wait_ready();
    }

    /// Sends one inline command and returns the raw reply (for test checks that want
    /// no client library, such as `INFO persistence`).
    pub fn command(&self, line: &str) -> String {
        let mut s = TcpStream::connect(self.addr).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        let mut buf = vec![0u8; 1 << 16];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn spawn(&self, binary: &Path) -> Child {
        Command::new(binary)
            .args(["--bind", &self.bind])
            .args(["--port", &self.addr.port().to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn wait_ready(&self) {
        wait_until_answering("redis-server", self.addr, || {
            let Ok(mut s) = TcpStream::connect(self.addr) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_millis(500))).ok();
            let mut buf = [0u8; 16];
            s.write_all(b"PING\r\n").is_ok()
                && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
        });
    }
}
