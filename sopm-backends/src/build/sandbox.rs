//! The install sandbox: one bubblewrap invocation per dependency install, its output
//! streamed into the build log, with a deadline. What it isolates, and what it does
//! not, is described in the [module documentation](super).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use sopm_core::{BuildLog, Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::toolchain::Bwrap;

/// Where the staging directory appears inside the sandbox.
pub(crate) const SANDBOX_WORKDIR: &str = "/build";

/// The sandbox's home directory (a tmpfs).
const SANDBOX_HOME: &str = "/home/sopm";

/// The unprivileged ids the install runs as inside its user namespace.
const SANDBOX_ID: &str = "1000";

/// Longest line forwarded to the log; longer output is cut into pieces.
const MAX_LINE_BYTES: usize = 4096;

/// Lines of output kept for the error message of a failed install.
const TAIL_LINES: usize = 15;

/// Top-level directories that are symlinks into `/usr` on merged-usr systems and
/// plain directories elsewhere.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Files and directories of `/etc` an install needs (name resolution, TLS, the
/// dynamic loader), bound when present. Not `/etc/ssl` as a whole: it holds
/// `/etc/ssl/private`.
const ETC_ENTRIES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust/extracted",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
];

/// One install to run in the sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Install {
    /// What the log shows as the command (`$ pip install ...`), secrets redacted.
    pub display: String,
    /// A short name for messages (`pip install`).
    pub what: &'static str,
    /// The program and its arguments, as paths inside the sandbox.
    pub argv: Vec<OsString>,
    /// Environment variables besides `HOME`, `PATH`, `LANG` and `TMPDIR`.
    pub env: Vec<(&'static str, OsString)>,
}

/// The host side of an install sandbox.
#[derive(Debug, Clone)]
pub(crate) struct InstallSandbox<'a> {
    pub bwrap: &'a Bwrap,
    /// Host directories of the tools, shown read-only at the same paths.
    pub tool_dirs: Vec<PathBuf>,
    /// Directories put first on the sandbox's `PATH`.
    pub path_dirs: Vec<PathBuf>,
    /// The staging directory, shown read-write at [`SANDBOX_WORKDIR`].
    pub staging: &'a Path,
    /// A CA bundle to show at its own path.
    pub ca_bundle: Option<&'a Path>,
    /// Size of each tmpfs (`/tmp`, home).
    pub tmpfs_bytes: u64,
    /// The egress proxy's socket directory: with one, the sandbox gets a network
    /// namespace of its own and reaches the outside only through the proxy.
    pub egress_dir: Option<&'a Path>,
}

/// Whether `path` is `root` or inside it (lexically).
fn is_within(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// `dirs` without duplicates, without those inside `/usr` or inside another one.
fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.retain(|d| d.is_absolute() && !is_within(d, Path::new("/usr")) && d != Path::new("/"));
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !kept.iter().any(|k| is_within(&d, k)) {
            kept.push(d);
        }
    }
    kept
}

impl InstallSandbox<'_> {
    /// The bwrap arguments up to and including `--`.
    fn arguments(&self, install: &Install) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            a.extend(items.iter().map(|i| i.as_ref().to_os_string()));
        };
        push(&[
            &"--unshare-user",
            &"--uid",
            &SANDBOX_ID,
            &"--gid",
            &SANDBOX_ID,
        ]);
        if self.bwrap.disable_userns {
            push(&[&"--disable-userns"]);
        }
        push(&[
            &"--unshare-pid",
            &"--unshare-ipc",
            &"--unshare-uts",
            &"--unshare-cgroup-try",
            &"--hostname",
            &"sopm-build",
            &"--cap-drop",
            &"ALL",
            &"--die-with-parent",
            &"--new-session",
            &"--clearenv",
            &"--ro-bind",
            &"/usr",
            &"/usr",
        ]);
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        push(&[&"--symlink", &target, &path]);
                    }
                }
                Ok(m) if m.is_dir() => push(&[&"--ro-bind", &path, &path]),
                _ => {}
            }
        }
        for entry in ETC_ENTRIES {
            push(&[&"--ro-bind-try", entry, entry]);
        }
        for dir in outermost(self.tool_dirs.clone()) {
            push(&[&"--ro-bind", &dir, &dir]);
        }
        if let Some(bundle) = self.ca_bundle {
            push(&[&"--ro-bind-try", &bundle, &bundle]);
        }
        push(&[&"--proc", &"/proc", &"--dev", &"/dev"]);
        let size = self.tmpfs_bytes.to_string();
        for dir in ["/tmp", SANDBOX_HOME] {
            if self.bwrap.tmpfs_size {
                push(&[&"--size", &size]);
            }
            push(&[&"--tmpfs", &dir]);
        }
        if let Some(dir) = self.egress_dir {
            push(&[
                &"--unshare-net",
                &"--ro-bind",
                &dir,
                &super::egress::SANDBOX_EGRESS_DIR,
                &"--setenv",
                &"SOPM_EGRESS_SOCKET",
                &super::egress::SANDBOX_EGRESS_SOCKET,
            ]);
        }
        push(&[
            &"--bind",
            &self.staging,
            &SANDBOX_WORKDIR,
            &"--remount-ro",
            &"/",
            &"--chdir",
            &SANDBOX_WORKDIR,
        ]);
        let mut path_var = OsString::new();
        for dir in &self.path_dirs {
            path_var.push(dir);
            path_var.push(":");
        }
        path_var.push("/usr/local/bin:/usr/bin:/bin");
        push(&[
            &"--setenv",
            &"HOME",
            &SANDBOX_HOME,
            &"--setenv",
            &"PATH",
            &path_var,
            &"--setenv",
            &"LANG",
            &"C.UTF-8",
            &"--setenv",
            &"TMPDIR",
            &"/tmp",
        ]);
        for (key, value) in &install.env {
            push(&[&"--setenv", key, value]);
        }
        push(&[&"--"]);
        a
    }

    /// Runs `install`, appending its output to `log` line by line as it comes, until
    /// it exits or `deadline` passes (then the sandbox is killed). `build_failed` on
    /// a non-zero exit (with the last lines of output) or a timeout.
    pub(crate) async fn run(
        &self,
        install: &Install,
        log: &dyn BuildLog,
        deadline: Instant,
        timeout_for_message: std::time::Duration,
    ) -> Result<()> {
        log.append(&format!("$ {}\n", install.display)).await;
        let mut cmd = Command::new(&self.bwrap.path);
        cmd.args(self.arguments(install))
            .args(&install.argv)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Unavailable(format!("cannot start {}: {e}", self.bwrap.path.display()))
        })?;
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let pumps = [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(pump(out, tx.clone()))),
            child.stderr.take().map(|err| tokio::spawn(pump(err, tx))),
        ];
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let outcome = tokio::time::timeout_at(deadline, async {
            while let Some(line) = rx.recv().await {
                let mut chunk = String::new();
                let mut next = Some(line);
                // Whatever else is already waiting goes into the same append.
                while let Some(line) = next {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                    chunk.push_str(&line);
                    chunk.push('\n');
                    next = rx.try_recv().ok();
                }
                log.append(&chunk).await;
            }
            child.wait().await
        })
        .await;
        let status = match outcome {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(Error::Internal(format!(
                    "waiting for the install sandbox: {e}"
                )))
            }
            Err(_) => {
                // bwrap takes the whole sandbox (pid namespace) down with it.
                let _ = child.kill().await;
                for handle in pumps.into_iter().flatten() {
                    handle.abort();
                }
                let secs = timeout_for_message.as_secs();
                log.append(&format!(
                    "==> {} timed out (the build may take {secs} s); stopped\n",
                    install.what
                ))
                .await;
                return Err(Error::BuildFailed(format!(
                    "build timed out after {secs} s during {}",
                    install.what
                )));
            }
        };
        if status.success() {
            return Ok(());
        }
        // The first line says what failed; the log line of the failure shows only it.
        let mut message = format!("{} failed ({})", install.what, describe(status));
        for line in &tail {
            message.push('\n');
            message.push_str(line);
        }
        Err(Error::BuildFailed(message))
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Forwards `reader`'s output line by line (lines cut at [`MAX_LINE_BYTES`]) until
/// EOF or until nobody listens.
async fn pump<R: AsyncRead + Unpin>(mut reader: R, tx: mpsc::Sender<String>) {
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|b| *b == b'\n') {
            if !send_line(&tx, &pending[start..start + i]).await {
                return;
            }
            start += i + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            let cut = pending.len() - pending.len() % MAX_LINE_BYTES;
            if !send_line(&tx, &pending[..cut]).await {
                return;
            }
            pending.drain(..cut);
        }
    }
    if !pending.is_empty() {
        send_line(&tx, &pending).await;
    }
}

/// Sends one line (without its `\r`) in pieces of at most [`MAX_LINE_BYTES`]; `false`
/// when the receiver is gone.
async fn send_line(tx: &mpsc::Sender<String>, line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    for piece in line.chunks(MAX_LINE_BYTES) {
        if tx
            .send(String::from_utf8_lossy(piece).into_owned())
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_dirs_are_reduced_to_the_outermost_outside_usr() {
        let dirs = outermost(vec![
            PathBuf::from("/opt/py/bin"),
            PathBuf::from("/opt/py"),
            PathBuf::from("/usr/bin"),
            PathBuf::from("/root/.pyenv/versions/3.11.7"),
            PathBuf::from("/opt/py"),
            PathBuf::from("/"),
            PathBuf::from("relative"),
        ]);
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/opt/py"),
                PathBuf::from("/root/.pyenv/versions/3.11.7")
            ]
        );
    }

    #[tokio::test]
    async fn output_is_cut_into_lines() {
        let (tx, mut rx) = mpsc::channel(16);
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let input = format!("one\r\ntwo\n{long}\nlast");
        pump(input.as_bytes(), tx).await;
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2].len(), MAX_LINE_BYTES);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "last");
    }

    /// bwrap, when it works here; `None` (printed) when it does not, a panic under
    /// `SOPM_REQUIRE_INTEGRATION=1`.
    async fn bwrap_or_skip() -> Option<Bwrap> {
        let works = std::process::Command::new("bwrap")
            .args(["--unshare-user", "--ro-bind", "/", "/", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
                panic!("SOPM_REQUIRE_INTEGRATION=1 but bwrap is missing or does not work here");
            }
            eprintln!("skipped: bwrap is missing or does not work here");
            return None;
        }
        Some(Bwrap::resolve(None).await.unwrap())
    }

    #[derive(Default)]
    struct Log(std::sync::Mutex<String>);

    #[async_trait::async_trait]
    impl BuildLog for Log {
        async fn append(&self, chunk: &str) {
            self.0.lock().unwrap().push_str(chunk);
        }
    }

    /// A sandbox with no tools, a 16 MiB tmpfs, and the network of `egress_dir`.
    fn sandbox<'a>(
        bwrap: &'a Bwrap,
        staging: &'a Path,
        egress_dir: Option<&'a Path>,
    ) -> InstallSandbox<'a> {
        InstallSandbox {
            bwrap,
            tool_dirs: vec![],
            path_dirs: vec![],
            staging,
            ca_bundle: None,
            tmpfs_bytes: 16 << 20,
            egress_dir,
        }
    }

    /// Runs `script` with `sh -c` in `sandbox` with `timeout` as its deadline; returns
    /// the outcome and the log.
    async fn run_shell(
        sandbox: &InstallSandbox<'_>,
        script: &str,
        timeout: std::time::Duration,
    ) -> (Result<()>, String) {
        let install = Install {
            display: "sh -c ...".into(),
            what: "probe",
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PROBE", "1".into())],
        };
        let log = Log::default();
        let result = sandbox
            .run(&install, &log, Instant::now() + timeout, timeout)
            .await;
        let text = log.0.lock().unwrap().clone();
        (result, text)
    }

    #[tokio::test]
    async fn the_sandbox_hides_the_host_and_keeps_the_system_read_only() {
        let Some(bwrap) = bwrap_or_skip().await else {
            return;
        };
        let secret = tempfile::tempdir().unwrap();
        std::fs::write(secret.path().join("key"), "secret").unwrap();
        let staging = tempfile::tempdir().unwrap();
        let sandbox = sandbox(&bwrap, staging.path(), None);
        let script = format!(
            "set -e; \
             [ \"$(id -u)\" = {SANDBOX_ID} ]; \
             [ ! -e {secret} ]; \
             [ ! -e {me} ]; \
             [ ! -e /etc/ssl/private ]; \
             [ ! -e /etc/shadow ]; \
             [ \"$HOME\" = {SANDBOX_HOME} ] && [ \"$PROBE\" = 1 ]; \
             [ -z \"$CARGO\" ]; \
             ! touch /usr/sopm-probe 2>/dev/null; \
             ! touch /sopm-probe 2>/dev/null; \
             touch /tmp/ok \"$HOME/ok\" {SANDBOX_WORKDIR}/written; \
             echo all good",
            secret = secret.path().display(),
            me = std::env::current_exe().unwrap().display(),
        );
        let (result, text) = run_shell(&sandbox, &script, std::time::Duration::from_secs(30)).await;
        assert!(result.is_ok(), "{result:?}\n{text}");
        assert!(text.contains("all good"), "{text}");
        assert!(staging.path().join("written").is_file());
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_build_failures() {
        let Some(bwrap) = bwrap_or_skip().await else {
            return;
        };
        let staging = tempfile::tempdir().unwrap();
        let sandbox = sandbox(&bwrap, staging.path(), None);
        let (result, _) = run_shell(
            &sandbox,
            "echo first; echo second >&2; exit 3",
            std::time::Duration::from_secs(30),
        )
        .await;
        let e = result.unwrap_err();
        assert_eq!(e.code(), "build_failed");
        let message = e.to_string();
        assert!(
            message.starts_with("probe failed (exit status 3)\n"),
            "{message}"
        );
        assert!(
            message.contains("first") && message.contains("second"),
            "{message}"
        );

        let (result, text) = run_shell(
            &sandbox,
            "echo started; sleep 60",
            std::time::Duration::from_millis(300),
        )
        .await;
        let e = result.unwrap_err();
        assert_eq!(e.code(), "build_failed");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(
            text.contains("started") && text.contains("timed out"),
            "{text}"
        );
    }

    /// With an egress proxy, the install's only way out is the proxy, and the proxy
    /// lets through only the allowed `host:port`: a service on the host's loopback is
    /// out of reach both directly and through the proxy.
    #[tokio::test]
    async fn the_install_network_reaches_only_the_package_index() {
        let Some(bwrap) = bwrap_or_skip().await else {
            return;
        };
        let host_service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = host_service.local_addr().unwrap().port();
        let staging = tempfile::tempdir().unwrap();
        let proxy =
            super::super::egress::EgressProxy::start(vec!["registry.example:443".into()]).unwrap();
        let sandbox = sandbox(&bwrap, staging.path(), Some(proxy.dir()));
        // Python's socket module speaks both to the host port and to the proxy socket.
        let python = [
            "import os, socket".to_string(),
            "try:".into(),
            format!("    socket.create_connection(('127.0.0.1', {port}), timeout=2)"),
            "    print('DIRECT-OPEN')".into(),
            "except OSError as e:".into(),
            "    print('direct refused', type(e).__name__)".into(),
            "u = socket.socket(socket.AF_UNIX)".into(),
            "u.connect(os.environ['SOPM_EGRESS_SOCKET'])".into(),
            format!("u.sendall(b'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n')"),
            "print('proxy said', u.recv(100).split(b'\\r\\n')[0].decode())".into(),
        ]
        .join("\n");
        let script = format!("python3 -c \"$(cat <<'PY'\n{python}\nPY\n)\"");
        let (r, log) = run_shell(&sandbox, &script, std::time::Duration::from_secs(30)).await;
        assert!(r.is_ok(), "{r:?}: {log}");
        assert!(!log.contains("DIRECT-OPEN"), "{log}");
        assert!(log.contains("direct refused"), "{log}");
        assert!(log.contains("proxy said HTTP/1.1 403 Forbidden"), "{log}");
    }
}
