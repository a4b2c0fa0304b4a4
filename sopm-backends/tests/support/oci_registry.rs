//! A real OCI registry for one test: Debian's `docker-registry` (the CNCF distribution
//! registry) serving plain HTTP on a free loopback port, filesystem storage in its own
//! temp dir, deletes enabled, killed when dropped (included with `#[path]` by the
//! artifact tests of every crate).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `docker-registry serve CONFIG.yml`.
pub struct OciRegistry {
    child: Option<Child>,
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
        let Some(binary) = find("docker-registry") else {
            skip(
                test,
                "docker-registry is not installed (apt-get install docker-registry)",
            );
            return None;
        };
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
            child: Some(child),
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if TcpStream::connect(self.addr).is_ok() && self.status("GET", "/v2/") == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry on {} did not answer within 20 s",
            self.addr
        );
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port(bind: &str) -> u16 {
    TcpListener::bind((bind, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn skip(test: &str, why: &str) {
    if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
        panic!("{test}: {why} (SOPM_REQUIRE_INTEGRATION=1)");
    }
    eprintln!("skipping {test}: {why}");
}
