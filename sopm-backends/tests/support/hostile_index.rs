//! A private HTTPS package index serving hostile source packages, for the build limit
//! tests (included with `#[path]` by the builder and the server tests).
//!
//! The builder installs only named packages from its index (paths and URLs are refused
//! at upload), so a hostile package reaches a build the way a tenant's own package
//! would: from an index. Each package is a source distribution whose build code (an
//! in-tree PEP 517 backend, pip's equivalent of `setup.py`) misbehaves as soon as pip
//! runs it. The index is `python3 -m http.server`'s handler behind TLS with a
//! certificate made here by `openssl`; builds trust it through their CA bundle setting.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A hostile package: its name on the index, the process name (`comm`) its processes
/// take so a test can look for survivors, and its build code.
#[derive(Debug, Clone, Copy)]
pub struct Hostile {
    pub name: &'static str,
    pub comm: &'static str,
    pub code: &'static str,
}

/// Forks sleeping children until it cannot, then sleeps.
pub const FORK_BOMB: Hostile = Hostile {
    name: "sopm-hostile-forkbomb",
    comm: "sopm-forkbomb",
    code: "for i in range(400):\n    try:\n        if os.fork() == 0:\n            time.sleep(300)\n            os._exit(0)\n    except OSError:\n        pass\ntime.sleep(300)\n",
};

/// Touches 768 MiB of memory, then sleeps.
pub const MEMORY_HOG: Hostile = Hostile {
    name: "sopm-hostile-memhog",
    comm: "sopm-memhog",
    code:
        "chunks = []\nfor i in range(48):\n    chunks.append(b'x' * (16 << 20))\ntime.sleep(300)\n",
};

/// Writes 256 MiB into the install's directory (where `--target deps` lands), then
/// lets the install go on as if nothing happened.
pub const DISK_FILLER: Hostile = Hostile {
    name: "sopm-hostile-diskfill",
    comm: "sopm-diskfill",
    code: "os.makedirs('/build/deps', exist_ok=True)\nwith open('/build/deps/filler.bin', 'wb') as f:\n    for i in range(256):\n        f.write(b'x' * (1 << 20))\n",
};

/// Spins on the CPU.
pub const CPU_SPINNER: Hostile = Hostile {
    name: "sopm-hostile-cpuspin",
    comm: "sopm-cpuspin",
    code: "while True:\n    pass\n",
};

/// The packages every index serves.
pub const ALL: [Hostile; 4] = [FORK_BOMB, MEMORY_HOG, DISK_FILLER, CPU_SPINNER];

/// Writes the sdists and index pages and serves them.
const SERVE_PY: &str = r#"
import functools, http.server, io, os, ssl, sys, tarfile
root, cert, key = sys.argv[1:4]
packages = sys.argv[4:]
for i in range(0, len(packages), 3):
    name, comm, code = packages[i:i + 3]
    dist = name.replace('-', '_')
    base = '%s-1.0' % dist
    backend = (
        "import ctypes, os, sys, time\n"
        "ctypes.CDLL(None).prctl(15, %r, 0, 0, 0)\n" % comm.encode()
        + code
        + "def build_wheel(*a, **k):\n    raise RuntimeError('not reached')\n"
        + "def build_sdist(*a, **k):\n    raise RuntimeError('not reached')\n"
    )
    files = {
        'pyproject.toml': '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        'backend.py': backend,
        'PKG-INFO': 'Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n' % name,
    }
    os.makedirs(os.path.join(root, 'files'), exist_ok=True)
    with tarfile.open(os.path.join(root, 'files', base + '.tar.gz'), 'w:gz') as tar:
        for fname, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo('%s/%s' % (base, fname))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    page = os.path.join(root, 'simple', name)
    os.makedirs(page, exist_ok=True)
    with open(os.path.join(page, 'index.html'), 'w') as f:
        f.write('<!DOCTYPE html><html><body><a href="../../files/%s.tar.gz">%s.tar.gz</a></body></html>\n' % (base, base))

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=root))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A running index; stops when dropped.
pub struct HostileIndex {
    child: Child,
    _dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT/simple`.
    pub url: String,
    /// The PEM certificate builds must trust.
    pub ca_bundle: PathBuf,
}

impl HostileIndex {
    /// Whether `openssl` and `python3` are here (the index needs them).
    pub fn tools_present() -> bool {
        ["openssl", "python3"].iter().all(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
    }

    /// Makes a certificate for 127.0.0.1 and serves [`ALL`].
    pub fn start() -> HostileIndex {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(made.success(), "openssl could not make a certificate");
        let root = dir.path().join("www");
        std::fs::create_dir(&root).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SERVE_PY]).arg(&root).arg(&cert).arg(&key);
        for p in ALL {
            cmd.args([p.name, p.comm, p.code]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the index");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the index's port");
        HostileIndex {
            child,
            url: format!("https://127.0.0.1:{port}/simple"),
            ca_bundle: cert,
            _dir: dir,
        }
    }
}

impl Drop for HostileIndex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes on this host whose name is `comm`.
pub fn survivors(comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == comm) {
            found.push(pid);
        }
    }
    found
}

/// Bytes of regular files under `dir` (0 if it is gone).
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
