//! Local builds: [`LocalBuilder`] turns an uploaded function into a directory
//! artifact on this machine, for the process and gVisor backends.
//!
//! A build writes the uploaded files into a fresh staging directory
//! `<artifacts>/<function_id>/.v<version>.staging-<random>`, installs the declared
//! dependencies inside a bubblewrap sandbox (what it isolates and what it does not
//! is [below](#the-install-sandbox)), checks the result, and renames it to
//! `<artifacts>/<function_id>/v<version>`. Any failure removes the staging
//! directory, so a version directory is always complete.
//!
//! Artifact layout, per runtime:
//! - python: the files; with a `requirements.txt`, its packages in `deps/`
//!   (`pip install --target deps`), which the runner puts on `sys.path`. The handler
//!   `pkg.module.func` is `pkg/module.py` or `pkg/module/__init__.py`.
//! - node: the files; with a `package.json` that has dependencies, `node_modules/`
//!   from `npm install --omit=dev --ignore-scripts`. The handler `dir/file.func` is
//!   `dir/file.js`.
//! - shell: the files; the handler is the script, made executable.
//! - binary: the files; the handler is the executable, made executable. It must be
//!   an ELF executable for this machine; a dynamically linked one gets a warning in
//!   the log (it runs where the host's libraries are visible, as in the process
//!   backend).
//!
//! Dependency manifests are checked before anything runs: only packages named from
//! the configured index, with version ranges, are accepted; URLs, paths, VCS links,
//! index options, `npm:` aliases and lockfiles that resolve elsewhere are refused
//! with `invalid_input`.
//!
//! # The install sandbox
//!
//! Each install runs under bubblewrap with new user, pid, ipc, uts and (where
//! possible) cgroup namespaces, as an unprivileged id with no capabilities, a cleared
//! environment (`HOME`, `PATH`, `LANG`, `TMPDIR` and the tool's own settings only),
//! read-only views of `/usr`, the library directories, the few files of `/etc` that
//! name resolution and TLS need, and the tools' own installs, a small fresh `/tmp`,
//! and a size-capped tmpfs at `/build` (with `TMPDIR` and home inside it) into which
//! the staging directory (bound at `/out`) is copied. It dies with the builder, and is
//! killed at the build's deadline.
//!
//! Network: the sandbox has a network namespace of its own. Its only way out is the
//! egress proxy (see `egress.rs`): a `CONNECT`-only HTTPS proxy on a Unix socket bound
//! into the sandbox, allowing just the package index's `host:port`, reached through a
//! forwarder that runs the installer. So code that runs during an install cannot reach
//! the host's loopback services, abstract Unix sockets or other hosts. npm runs no
//! install scripts (`--ignore-scripts`); pip runs the build step of source
//! distributions, which [`with_pip_only_binary`](LocalBuilderConfig::with_pip_only_binary)
//! turns off.
//!
//! Limits (see `limits.rs`): the install runs in a cgroup of its own (memory and
//! processes, watched, the sandbox killed on a hit), under `RLIMIT_CPU` and
//! `RLIMIT_FSIZE`, writing into a size-capped tmpfs that is copied to the staging
//! directory only when the install succeeds, and is killed at the build's deadline.
//! The build log lists the limits and names the one that stopped an install.

mod config;
mod deps;
mod egress;
mod elf;
mod limits;
mod local;
mod sandbox;
mod source;
mod toolchain;

pub use config::LocalBuilderConfig;
pub use local::LocalBuilder;
