//! The only way out of an install sandbox: an allow-listed HTTPS proxy.
//!
//! The install sandbox has a network namespace of its own (`--unshare-net`): nothing
//! but its own loopback. The host runs this proxy on a Unix socket bound into the
//! sandbox; a small forwarder inside (in the install's own interpreter, Python for pip
//! and Node for npm) listens on the sandbox's loopback, hands each connection to the
//! socket, and runs the installer with `HTTPS_PROXY` pointing at it. The proxy accepts
//! only `CONNECT host:port` to the package index's hosts, so an install reaches the
//! registry and nothing else: not the host's loopback services, not other hosts.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Where the proxy's socket directory appears inside the sandbox.
pub(crate) const SANDBOX_EGRESS_DIR: &str = "/run/sopm-egress";
/// The socket's path inside the sandbox.
pub(crate) const SANDBOX_EGRESS_SOCKET: &str = "/run/sopm-egress/proxy.sock";

/// Longest CONNECT request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Python forwarder: `python -c FORWARDER_PY installer args...`.
pub(crate) const FORWARDER_PY: &str = r#"
import os, socket, subprocess, sys, threading
SOCK = os.environ["SOPM_EGRESS_SOCKET"]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
def serve():
    while True:
        c, _ = srv.accept()
        u = socket.socket(socket.AF_UNIX)
        try:
            u.connect(SOCK)
        except OSError:
            c.close()
            continue
        threading.Thread(target=pipe, args=(c, u), daemon=True).start()
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
p = "http://127.0.0.1:%d" % srv.getsockname()[1]
env = dict(os.environ, HTTPS_PROXY=p, https_proxy=p, HTTP_PROXY=p, http_proxy=p)
sys.exit(subprocess.call(sys.argv[1:], env=env))
"#;

/// Node forwarder: `node -e FORWARDER_JS installer args...`.
pub(crate) const FORWARDER_JS: &str = r#"
const net = require('net'), cp = require('child_process');
const sock = process.env.SOPM_EGRESS_SOCKET;
const srv = net.createServer((c) => {
  const u = net.connect(sock);
  const end = () => { c.destroy(); u.destroy(); };
  c.on('error', end); u.on('error', end); c.on('close', end); u.on('close', end);
  c.pipe(u); u.pipe(c);
});
srv.listen(0, '127.0.0.1', () => {
  const p = 'http://127.0.0.1:' + srv.address().port;
  const env = Object.assign({}, process.env, {
    HTTPS_PROXY: p, https_proxy: p, HTTP_PROXY: p, http_proxy: p,
    npm_config_https_proxy: p, npm_config_proxy: p,
  });
  const [cmd, ...args] = process.argv.slice(1);
  const child = cp.spawn(cmd, args, { stdio: 'inherit', env });
  child.on('exit', (code) => process.exit(code === null ? 1 : code));
});
"#;

/// A running proxy; stops and removes its socket when dropped.
#[derive(Debug)]
pub(crate) struct EgressProxy {
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EgressProxy {
    /// Starts a proxy that lets through `CONNECT` to `allowed` (`host:port`) only.
    pub(crate) fn start(scratch: &Path, allowed: Vec<String>) -> std::io::Result<Self> {
        let dir = scratch.join(format!(".egress-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("proxy.sock");
        let listener = UnixListener::bind(&socket)?;
        // The sandbox runs as another user; it must be able to connect.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let allowed = std::sync::Arc::new(allowed);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(tunnel(conn, allowed.clone()));
            }
        });
        Ok(EgressProxy { dir, task })
    }

    /// The host directory holding the socket (bound at [`SANDBOX_EGRESS_DIR`]).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `host:port` of an `https://` URL, for the allow list.
pub(crate) fn host_port(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

/// Serves one connection: a `CONNECT` to an allowed host becomes a tunnel; anything
/// else gets 403.
async fn tunnel(mut conn: UnixStream, allowed: std::sync::Arc<Vec<String>>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            let _ = conn
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                .await;
            return;
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        let _ = conn
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    };
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(target)) {
        tracing::warn!(
            target,
            "an install tried to reach a host outside the package index"
        );
        let _ = conn.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        return;
    }
    let mut upstream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        }
    };
    if conn
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    // Bytes after the head (a client may send its TLS hello at once) go first.
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    if end < head.len() && upstream.write_all(&head[end..]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
}
