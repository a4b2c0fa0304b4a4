//! The runners shipped inside SOPM: one per language runtime, copied into each sandbox.
//! On the host backends (process, gVisor) shell scripts and static binaries are supervised
//! by the python runner, so a host running them needs `python3` too; container images
//! without python use the static runner (`sopm-runner`, its own crate) instead.

use sopm_core::Runtime;

/// The python runner: python functions in-process; shell and binary functions as a child
/// per invocation.
pub const PYTHON_RUNNER: &str = include_str!("runners/runner.py");

/// The node runner: `exports.handle`, sync or async.
pub const NODE_RUNNER: &str = include_str!("runners/runner.js");

/// Which runner program boots a sandbox. Stem cells are kept per runner kind: a python
/// stem cell can become a python, shell or binary function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunnerKind {
    /// `runner.py` under `python3`.
    Python,
    /// `runner.js` under `node`.
    Node,
    /// `sopm-runner`, a static executable for shell and binary functions (images that
    /// hold no interpreter, such as busybox). Built separately (`scripts/build-runner.sh`).
    Static,
}

impl RunnerKind {
    /// Every runner kind.
    pub const ALL: [RunnerKind; 3] = [RunnerKind::Python, RunnerKind::Node, RunnerKind::Static];

    /// The runners shipped as scripts inside SOPM (the host backends' runners).
    pub const SCRIPTS: [RunnerKind; 2] = [RunnerKind::Python, RunnerKind::Node];

    /// The runner that runs functions of `runtime` on a host backend (shell and binary
    /// under the python runner); `None` for built-ins.
    pub fn for_runtime(runtime: Runtime) -> Option<Self> {
        match runtime {
            Runtime::Python | Runtime::Shell | Runtime::Binary => Some(RunnerKind::Python),
            Runtime::Node => Some(RunnerKind::Node),
            Runtime::Builtin => None,
        }
    }

    /// A short name (`python`, `node`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::Python => "python",
            RunnerKind::Node => "node",
            RunnerKind::Static => "static",
        }
    }

    /// The runner's source (`None` for the static runner, a compiled program).
    pub fn source(self) -> Option<&'static str> {
        match self {
            RunnerKind::Python => Some(PYTHON_RUNNER),
            RunnerKind::Node => Some(NODE_RUNNER),
            RunnerKind::Static => None,
        }
    }

    /// The runner's file name inside the sandbox.
    pub fn file_name(self) -> &'static str {
        match self {
            RunnerKind::Python => "runner.py",
            RunnerKind::Node => "runner.js",
            RunnerKind::Static => "sopm-runner",
        }
    }
}
