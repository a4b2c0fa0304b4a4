//! A real OCI registry for one test: Debian's `docker-registry` (the CNCF distribution
//! registry) serving plain HTTP on a free loopback port, filesystem storage in its own
//! temp dir, deletes enabled, killed when dropped (included with `#[path]` by the
//! artifact tests of every crate).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::programs::{find_or_skip, free_port, wait_until_answering, Program};

/// A running `docker-registry serve CONFIG.yml`.
pub struct OciRegistry {
    child: Program,
    dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl OciRegistry {
    /// Starts one on 127.0.0.1, or says why it cannot (no `docker-registry` on this
    /// machine). `None` means skip; with `SOPM_REQUIRE_INTEGRATION=1` it panics instead.
    pub fn start(test: &str) -> Option<OciRegistry> {
        Self::start_on(test, "127.0.0.1")
    }

    /// Starts one bound to `bind` (an address of this machine or of a namespace the
    /// test made), on a free port.
    pub fn start_on(test: &str, bind: &str) -> Option<OciRegistry> {
        let binary = find_or_skip(test, "docker-registry", "docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("sopm-registry-")
            .tempdir()
            .expect("temp dir");
        let port = free_port(bind);
        let addr: SocketAddr = format!("{bind}:{port}").parse().expect("address");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("storage dir");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .expect("write the registry config");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = OciRegistry {
            child: Program::new(child),
            dir,
            addr,
        };
        registry.wait_ready();
        Some(registry)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The root of its filesystem storage (blobs live under
    /// `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding the blob of `hex` (64 hex digits) on disk.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Its temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one HTTP/1.0 request and returns the status code (for checks that want no
    /// client library).
    pub fn status(&self, method: &str, path: &str) -> u16 {
        let mut s = TcpStream::connect(self.addr).expect("connect to the registry");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n",
            self.addr
        )
        .expect("write");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    fn wait_ready(&self) {
        wait_until_answering("docker-registry", self.addr, || {
            TcpStream::connect(self.addr).is_ok() && self.status("GET", "/v2/") == 200
        });
    }
}
