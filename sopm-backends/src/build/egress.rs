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

/// Longest socket path `bind` takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Prefix of the proxies' socket directories, `<temp>/sopm-egress-<pid>-<n>`.
const DIR_PREFIX: &str = "sopm-egress-";

/// A running proxy; stops and removes its socket directory when dropped.
///
/// The socket lives in a private directory (mode 0700) of its own, under the system
/// temporary directory (`TMPDIR`, else `/tmp`), or `/tmp` when that path would be too
/// long for a socket: never under the data directory, whose path can be any length.
/// The sandbox reaches it through a bind mount; inside its user namespace the install
/// runs as the owner, so nobody else on the host can use the proxy.
#[derive(Debug)]
pub(crate) struct EgressProxy {
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EgressProxy {
    /// Starts a proxy that lets through `CONNECT` to `allowed` (`host:port`) only.
    pub(crate) fn start(allowed: Vec<String>) -> std::io::Result<Self> {
        let dir = socket_dir(&std::env::temp_dir());
        create_private_dir(&dir)?;
        match Self::listen(&dir, allowed) {
            Ok(task) => Ok(EgressProxy { dir, task }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn listen(dir: &Path, allowed: Vec<String>) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let socket = dir.join("proxy.sock");
        let listener = UnixListener::bind(&socket).map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding {}: {e}", socket.display()))
        })?;
        let allowed = std::sync::Arc::new(allowed);
        Ok(tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(tunnel(conn, allowed.clone()));
            }
        }))
    }

    /// The host directory holding the socket (bound at [`SANDBOX_EGRESS_DIR`]).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes socket directories left by processes that no longer run (a server
    /// killed during a build); returns how many.
    pub(crate) fn remove_stale() -> usize {
        let mut removed = 0;
        for base in socket_bases(&std::env::temp_dir()) {
            let Ok(entries) = std::fs::read_dir(&base) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let owner = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(DIR_PREFIX))
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok());
                let Some(owner) = owner else { continue };
                let mine = entry.metadata().is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.is_dir() && m.uid() == current_uid()
                });
                if mine
                    && owner != std::process::id()
                    && !Path::new(&format!("/proc/{owner}")).exists()
                    && std::fs::remove_dir_all(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The uid owning this process's files (its effective uid, read from `/proc`).
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Where socket directories may go: `temp`, then `/tmp`.
fn socket_bases(temp: &Path) -> Vec<PathBuf> {
    let mut bases = vec![temp.to_path_buf()];
    if temp != Path::new("/tmp") {
        bases.push(PathBuf::from("/tmp"));
    }
    bases
}

/// A new, unique socket directory path: under `temp` when the socket's path fits in
/// `sun_path`, else under `/tmp`.
fn socket_dir(temp: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let name = format!(
        "{DIR_PREFIX}{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let fits =
        |base: &Path| base.join(&name).join("proxy.sock").as_os_str().len() <= MAX_SOCKET_PATH;
    socket_bases(temp)
        .into_iter()
        .find(|b| b.is_absolute() && fits(b))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(name)
}

/// Makes `dir` (which must not exist) with mode 0700.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    // The umask may have narrowed it further; never wider.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_long_temp_dir_falls_back_to_tmp() {
        let long = PathBuf::from(format!("/{}", "d".repeat(150)));
        let dir = socket_dir(&long);
        assert!(dir.starts_with("/tmp"), "{}", dir.display());
        assert!(dir.join("proxy.sock").as_os_str().len() <= MAX_SOCKET_PATH);
        let short = socket_dir(Path::new("/var/tmp"));
        assert!(short.starts_with("/var/tmp"), "{}", short.display());
        assert_ne!(socket_dir(Path::new("/tmp")), socket_dir(Path::new("/tmp")));
    }

    #[tokio::test]
    async fn the_socket_dir_is_private_and_removed_with_the_proxy() {
        let proxy = EgressProxy::start(vec!["example.org:443".into()]).unwrap();
        let dir = proxy.dir().to_path_buf();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(dir.join("proxy.sock").exists());
        // It answers: a CONNECT outside the allow-list is refused.
        let mut conn = UnixStream::connect(dir.join("proxy.sock")).await.unwrap();
        conn.write_all(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        drop(proxy);
        assert!(!dir.exists());
    }

    #[test]
    fn stale_socket_dirs_of_dead_processes_are_removed() {
        // A pid above the kernel's maximum never runs.
        let stale = std::env::temp_dir().join(format!("{DIR_PREFIX}4999999-1-deadbeef"));
        create_private_dir(&stale).unwrap();
        let live = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-0-live", std::process::id()));
        create_private_dir(&live).unwrap();
        assert!(EgressProxy::remove_stale() >= 1);
        assert!(!stale.exists());
        assert!(live.exists());
        std::fs::remove_dir(&live).unwrap();
    }
}
