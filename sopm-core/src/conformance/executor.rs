//! Executor conformance: the behaviours every sandbox [`Executor`] must show, run against
//! real functions (python, node, shell, static binaries) written to temporary directories
//! and handed to the executor as [`Artifact::Directory`] artifacts.
//!
//! Each behaviour is an async function over a [`Subject`] (the executor plus what the
//! suite reads of its pool) that panics naming the rule that was broken. A backend runs
//! the whole suite, one `#[test]` per behaviour, with
//! [`executor_conformance!`](crate::executor_conformance) and a factory that builds a
//! subject for the [`Needs`] of each behaviour, or returns `None` (after [`skip`]) when
//! the host lacks what the backend needs:
//!
//! ```no_run
//! use sopm_core::conformance::executor::{skip, Needs, SandboxCounters, Subject};
//! use sopm_core::Executor;
//!
//! struct Mine(Box<dyn Executor>);
//!
//! impl Subject for Mine {
//!     fn executor(&self) -> &dyn Executor {
//!         &*self.0
//!     }
//!     fn start(&self) {}
//!     fn counters(&self) -> SandboxCounters {
//!         SandboxCounters::default()
//!     }
//! }
//!
//! async fn mine(needs: Needs) -> Option<Mine> {
//!     // Build an executor with `needs.stem_cells` stem cells for `needs.runtimes`, the
//!     // per-function cap and idle TTL asked for, ...
//!     skip(needs.test, "this example has no executor");
//!     None
//! }
//!
//! sopm_core::executor_conformance!(mine);
//! # fn main() {}
//! ```
//!
//! What the suite uses besides [`Executor::invoke`] and [`Executor::retire_version`]:
//! [`Executor::pool_stats`] has one entry per function version whose `pool` contains the
//! function id and ends with `@{version}`, and one per stem-cell pool
//! named `{executor name}/stem/{runner}` (`python` for python, shell and binary
//! functions, `node` for node functions); [`Subject::counters`] counts stem cells used,
//! cold starts and replaced instances since the executor was built.
//!
//! The generic helpers ([`function`], [`python`], [`call`], [`wait_for_stem_cells`], ...)
//! are public so a backend's own tests can use them too.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::executor::{Executor, PoolStats};
use crate::executor::{Invocation, Target};
use crate::registry::{Artifact, BuildStatus, FunctionVersion};
use crate::types::{JobId, Limits, Output, Runtime, TenantId};

/// Every runtime a sandbox executor may run.
pub const ALL_RUNTIMES: &[Runtime] = &[
    Runtime::Python,
    Runtime::Node,
    Runtime::Shell,
    Runtime::Binary,
];

/// Host paths whose files a sandbox may show, whatever the backend: the system's
/// programs and libraries, the dynamic linker cache, the time zone, the CA certificates,
/// and paths that exist only inside a sandbox (the runners, the code, its private `/tmp`).
/// A backend adds its own with [`Subject::allowed_host_paths`].
pub const HOST_ALLOW_LIST: &[&str] = &[
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
    "/run/sopm",
    "/fn",
    "/tmp",
];

/// A privileged operation that [`no_nested_namespaces_or_privileged_syscalls`] expects a
/// sandbox to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Privileged {
    /// `unshare(CLONE_NEWUSER)`, `clone3(CLONE_NEWUSER)` (and `unshare -U`): a user
    /// namespace inside the sandbox.
    NestedUserNamespace,
    /// `mount(2)`.
    Mount,
    /// `ptrace(PTRACE_ATTACH)` of another process of the sandbox.
    Ptrace,
    /// `bpf(BPF_MAP_CREATE)`.
    Bpf,
}

impl Privileged {
    /// The key of the operation in the probe's answer.
    pub fn key(self) -> &'static str {
        match self {
            Privileged::NestedUserNamespace => "unshare",
            Privileged::Mount => "mount",
            Privileged::Ptrace => "ptrace",
            Privileged::Bpf => "bpf",
        }
    }
}

/// What one behaviour needs of the executor it runs against; the factory given to
/// [`executor_conformance!`](crate::executor_conformance) builds the executor to match.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Needs {
    /// The behaviour's name (the name of its test), for skip and failure messages.
    pub test: &'static str,
    /// The runtimes of the functions it runs: the executor keeps stem cells for them,
    /// and needs their tools (a factory returns `None` when `node` is missing, say).
    pub runtimes: &'static [Runtime],
    /// Stem cells to keep ready per runner.
    pub stem_cells: usize,
    /// Limits to boot stem cells with, when every function of the behaviour runs with
    /// these (timeouts aside), so that a backend which fixes limits when a sandbox boots
    /// can still serve them from stem cells; `None`: the backend's default.
    pub stem_limits: Option<Limits>,
    /// Most instances of one function, when the behaviour depends on it.
    pub max_instances_per_function: Option<usize>,
    /// Most instances of one tenant (all its functions together), when the behaviour
    /// depends on it.
    pub max_instances_per_tenant: Option<usize>,
    /// How long an instance may stay idle before it is stopped, when the behaviour
    /// depends on it.
    pub idle_ttl: Option<Duration>,
}

impl Needs {
    fn new(test: &'static str, runtimes: &'static [Runtime]) -> Self {
        Needs {
            test,
            runtimes,
            stem_cells: 1,
            stem_limits: None,
            max_instances_per_function: None,
            max_instances_per_tenant: None,
            idle_ttl: None,
        }
    }

    fn python(test: &'static str) -> Self {
        Needs::new(test, &[Runtime::Python])
    }

    /// Stem cells booted with [`tight`] limits, for a behaviour whose functions all run
    /// with them: hostile code gets its short deadline for itself, not for a boot.
    fn tight_stems(runtimes: &'static [Runtime], test: &'static str) -> Self {
        Needs {
            stem_limits: Some(tight()),
            ..Needs::new(test, runtimes)
        }
    }
}

/// The [`Needs`] of each behaviour, by the behaviour's name.
pub mod needs {
    use std::time::Duration;

    use super::{tight, Needs};
    use crate::types::Runtime;

    /// Needs of [`python_hello_world_uses_a_stem_cell`](super::python_hello_world_uses_a_stem_cell).
    pub fn python_hello_world_uses_a_stem_cell() -> Needs {
        Needs::python("python_hello_world_uses_a_stem_cell")
    }

    /// Needs of [`node_hello_world_with_async_handler_and_logs`](super::node_hello_world_with_async_handler_and_logs).
    pub fn node_hello_world_with_async_handler_and_logs() -> Needs {
        Needs::new(
            "node_hello_world_with_async_handler_and_logs",
            &[Runtime::Node],
        )
    }

    /// Needs of [`shell_hello_world_and_failure`](super::shell_hello_world_and_failure).
    pub fn shell_hello_world_and_failure() -> Needs {
        Needs::new("shell_hello_world_and_failure", &[Runtime::Shell])
    }

    /// Needs of [`binary_hello_world`](super::binary_hello_world).
    pub fn binary_hello_world() -> Needs {
        Needs::new("binary_hello_world", &[Runtime::Binary])
    }

    /// Needs of [`large_and_unicode_payloads_round_trip`](super::large_and_unicode_payloads_round_trip).
    pub fn large_and_unicode_payloads_round_trip() -> Needs {
        Needs::python("large_and_unicode_payloads_round_trip")
    }

    /// Needs of [`function_errors_carry_tracebacks_and_keep_the_instance`](super::function_errors_carry_tracebacks_and_keep_the_instance).
    pub fn function_errors_carry_tracebacks_and_keep_the_instance() -> Needs {
        Needs::python("function_errors_carry_tracebacks_and_keep_the_instance")
    }

    /// Needs of [`logs_are_captured_and_kept_out_of_the_output`](super::logs_are_captured_and_kept_out_of_the_output).
    pub fn logs_are_captured_and_kept_out_of_the_output() -> Needs {
        Needs::python("logs_are_captured_and_kept_out_of_the_output")
    }

    /// Needs of [`spinning_and_sleeping_past_the_deadline_time_out`](super::spinning_and_sleeping_past_the_deadline_time_out):
    /// two stem cells booted with [`tight`] limits, so the 1 s deadline is spent in the
    /// function and not in booting a sandbox.
    pub fn spinning_and_sleeping_past_the_deadline_time_out() -> Needs {
        Needs {
            stem_cells: 2,
            stem_limits: Some(tight()),
            ..Needs::python("spinning_and_sleeping_past_the_deadline_time_out")
        }
    }

    /// Needs of [`unbounded_allocation_is_out_of_memory`](super::unbounded_allocation_is_out_of_memory):
    /// python and shell functions.
    pub fn unbounded_allocation_is_out_of_memory() -> Needs {
        Needs::new(
            "unbounded_allocation_is_out_of_memory",
            &[Runtime::Python, Runtime::Shell],
        )
    }

    /// Needs of [`output_too_large_is_reported_and_the_instance_kept`](super::output_too_large_is_reported_and_the_instance_kept).
    pub fn output_too_large_is_reported_and_the_instance_kept() -> Needs {
        Needs::python("output_too_large_is_reported_and_the_instance_kept")
    }

    /// Needs of [`a_forged_result_past_the_output_cap_is_refused`](super::a_forged_result_past_the_output_cap_is_refused).
    pub fn a_forged_result_past_the_output_cap_is_refused() -> Needs {
        Needs::python("a_forged_result_past_the_output_cap_is_refused")
    }

    /// Needs of [`each_call_has_a_cpu_time_limit`](super::each_call_has_a_cpu_time_limit):
    /// python and node functions.
    pub fn each_call_has_a_cpu_time_limit() -> Needs {
        Needs::new(
            "each_call_has_a_cpu_time_limit",
            &[Runtime::Python, Runtime::Node],
        )
    }

    /// Needs of [`no_network_to_the_host`](super::no_network_to_the_host).
    pub fn no_network_to_the_host() -> Needs {
        Needs::python("no_network_to_the_host")
    }

    /// Needs of [`secrets_of_the_host_are_not_visible`](super::secrets_of_the_host_are_not_visible):
    /// stem cells booted with [`tight`] limits.
    pub fn secrets_of_the_host_are_not_visible() -> Needs {
        Needs::tight_stems(&[Runtime::Python], "secrets_of_the_host_are_not_visible")
    }

    /// Needs of [`writes_outside_tmp_fail`](super::writes_outside_tmp_fail): stem cells
    /// booted with [`tight`] limits.
    pub fn writes_outside_tmp_fail() -> Needs {
        Needs::tight_stems(&[Runtime::Python], "writes_outside_tmp_fail")
    }

    /// Needs of [`a_fork_bomb_is_contained`](super::a_fork_bomb_is_contained): stem
    /// cells booted with [`tight`] limits.
    pub fn a_fork_bomb_is_contained() -> Needs {
        Needs::tight_stems(&[Runtime::Python], "a_fork_bomb_is_contained")
    }

    /// Needs of [`printing_100_mb_is_capped`](super::printing_100_mb_is_capped): stem
    /// cells booted with [`tight`] limits.
    pub fn printing_100_mb_is_capped() -> Needs {
        Needs::tight_stems(&[Runtime::Python], "printing_100_mb_is_capped")
    }

    /// Needs of [`closing_the_frame_pipes`](super::closing_the_frame_pipes): stem cells
    /// booted with [`tight`] limits.
    pub fn closing_the_frame_pipes() -> Needs {
        Needs::tight_stems(&[Runtime::Python], "closing_the_frame_pipes")
    }

    /// Needs of [`killing_the_parent_and_everything`](super::killing_the_parent_and_everything):
    /// python and shell functions, stem cells booted with [`tight`] limits.
    pub fn killing_the_parent_and_everything() -> Needs {
        Needs::tight_stems(
            &[Runtime::Python, Runtime::Shell],
            "killing_the_parent_and_everything",
        )
    }

    /// Needs of [`concurrent_calls_grow_the_pool_up_to_the_cap`](super::concurrent_calls_grow_the_pool_up_to_the_cap):
    /// at most 3 instances per function.
    pub fn concurrent_calls_grow_the_pool_up_to_the_cap() -> Needs {
        Needs {
            max_instances_per_function: Some(3),
            ..Needs::python("concurrent_calls_grow_the_pool_up_to_the_cap")
        }
    }

    /// Needs of [`two_functions_never_share_an_instance`](super::two_functions_never_share_an_instance).
    pub fn two_functions_never_share_an_instance() -> Needs {
        Needs::python("two_functions_never_share_an_instance")
    }

    /// Needs of [`a_crashed_instance_is_replaced`](super::a_crashed_instance_is_replaced).
    pub fn a_crashed_instance_is_replaced() -> Needs {
        Needs::python("a_crashed_instance_is_replaced")
    }

    /// Needs of [`no_host_file_outside_the_allow_list_is_readable`](super::no_host_file_outside_the_allow_list_is_readable).
    pub fn no_host_file_outside_the_allow_list_is_readable() -> Needs {
        Needs::python("no_host_file_outside_the_allow_list_is_readable")
    }

    /// Needs of [`no_nested_namespaces_or_privileged_syscalls`](super::no_nested_namespaces_or_privileged_syscalls).
    pub fn no_nested_namespaces_or_privileged_syscalls() -> Needs {
        Needs::python("no_nested_namespaces_or_privileged_syscalls")
    }

    /// Needs of [`idle_instances_are_reaped`](super::idle_instances_are_reaped): an idle
    /// TTL of 200 ms.
    pub fn idle_instances_are_reaped() -> Needs {
        Needs {
            idle_ttl: Some(Duration::from_millis(200)),
            ..Needs::python("idle_instances_are_reaped")
        }
    }

    /// Needs of [`retiring_a_version_stops_only_its_instances`](super::retiring_a_version_stops_only_its_instances):
    /// no stem cells (each version boots its one instance).
    pub fn retiring_a_version_stops_only_its_instances() -> Needs {
        Needs {
            stem_cells: 0,
            ..Needs::python("retiring_a_version_stops_only_its_instances")
        }
    }

    /// Needs of [`a_tenant_at_its_cap_evicts_its_own_idle_instances_then_is_refused`](super::a_tenant_at_its_cap_evicts_its_own_idle_instances_then_is_refused):
    /// at most 1 instance per tenant, no stem cells.
    pub fn a_tenant_at_its_cap_evicts_its_own_idle_instances_then_is_refused() -> Needs {
        Needs {
            stem_cells: 0,
            max_instances_per_tenant: Some(1),
            ..Needs::python("a_tenant_at_its_cap_evicts_its_own_idle_instances_then_is_refused")
        }
    }
}

/// Pool counters the suite asserts on, since the executor was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxCounters {
    /// Stem cells specialised into a function instance.
    pub stem_cells_used: u64,
    /// Instances booted on the call path because no stem cell could serve it.
    pub cold_starts: u64,
    /// Instances killed and replaced after a crash, a broken limit or a timeout.
    pub replaced: u64,
}

/// A sandbox executor under test: the executor, and what the suite needs beyond the
/// [`Executor`] trait.
#[async_trait]
pub trait Subject: Send + Sync {
    /// The executor under test.
    fn executor(&self) -> &dyn Executor;

    /// Starts booting stem cells in the background (the suite waits for them with
    /// [`wait_for_stem_cells`]).
    fn start(&self);

    /// The executor's pool counters now.
    fn counters(&self) -> SandboxCounters;

    /// The runtimes the executor runs; a behaviour needing another one is skipped with
    /// a printed reason. All four by default.
    fn runtimes(&self) -> &[Runtime] {
        ALL_RUNTIMES
    }

    /// A static executable for the [`Runtime::Binary`] behaviour that prints
    /// `binary log` to stderr and `{"binary":true,"input_bytes":N}` to stdout, `N`
    /// being the number of bytes it read from stdin. By default [`static_hello`] builds
    /// one with the host's `cc -static`.
    fn hello_binary(&self) -> Option<Vec<u8>> {
        static_hello()
    }

    /// Host paths, beyond [`HOST_ALLOW_LIST`], whose files a sandbox of this executor may
    /// show (the interpreter's prefix where it lies outside `/usr`, an image's own `/etc`).
    /// None by default.
    fn allowed_host_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Host directories of the executor (its scratch directory) where
    /// [`no_host_file_outside_the_allow_list_is_readable`] plants a secret. None by default.
    fn host_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// The privileged operations a sandbox of this executor does not refuse, each for a
    /// reason its backend documents (a guest kernel that implements user namespaces
    /// itself, say). None by default: every one is refused.
    fn privileged_allowed(&self) -> &[Privileged] {
        &[]
    }

    /// Called after a behaviour passed: shuts the executor down (and may check that
    /// nothing of it is left).
    async fn finish(&self) {
        self.executor().shutdown().await;
    }
}

/// Reports that `test` cannot run on this host: prints the reason and returns, or panics
/// with it when `SOPM_REQUIRE_INTEGRATION=1`, so a run that must be complete cannot pass
/// by skipping.
pub fn skip(test: &str, why: &str) {
    if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
        panic!("{test}: {why} (SOPM_REQUIRE_INTEGRATION=1)");
    }
    eprintln!("skipping {test}: {why}");
}

/// A function made of files in a fresh artifact directory (removed when the value is
/// dropped).
pub struct TestFunction {
    /// The ready version, with an [`Artifact::Directory`] pointing at `dir`.
    pub version: Arc<FunctionVersion>,
    /// The artifact directory.
    pub dir: tempfile::TempDir,
}

/// A function of `runtime` made of `files` (paths relative to the artifact root), with
/// default limits.
pub fn function(runtime: Runtime, handler: &str, files: &[(&str, &[u8])]) -> TestFunction {
    function_with(runtime, handler, files, Limits::default())
}

/// A function of `runtime` made of `files`, with `limits`.
pub fn function_with(
    runtime: Runtime,
    handler: &str,
    files: &[(&str, &[u8])],
    limits: Limits,
) -> TestFunction {
    let dir = tempfile::tempdir().expect("tempdir");
    // Readable by all, as a built artifact is: functions run as an unprivileged uid.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the artifact dir");
    }
    for (name, body) in files {
        write_file(dir.path(), name, body);
    }
    let id = format!("fn_{}", uuid::Uuid::new_v4().simple());
    let version = FunctionVersion {
        function_id: id,
        tenant: TenantId::default(),
        name: format!("test-{}", handler.replace(['.', '/'], "-")),
        version: 1,
        runtime,
        handler: handler.into(),
        limits,
        env: BTreeMap::new(),
        source_digest: String::new(),
        executor: None,
        status: BuildStatus::Ready,
        build_log: String::new(),
        artifact: Some(Artifact::Directory {
            path: dir.path().to_string_lossy().into_owned(),
            digest: None,
        }),
        created_ms: 0,
    };
    TestFunction {
        version: Arc::new(version),
        dir,
    }
}

/// `f` owned by `tenant` (a valid tenant id): its instances count against that
/// tenant's cap, and [`call`] invokes it as that tenant.
pub fn owned_by(mut f: TestFunction, tenant: &str) -> TestFunction {
    let mut v = (*f.version).clone();
    v.tenant = TenantId::new(tenant).expect("a valid tenant id");
    f.version = Arc::new(v);
    f
}

/// `f` as version `version` of the function `of` (same id, tenant and name; `f`'s own
/// code and limits).
pub fn as_version_of(mut f: TestFunction, of: &TestFunction, version: u32) -> TestFunction {
    let mut v = (*f.version).clone();
    v.function_id = of.version.function_id.clone();
    v.tenant = of.version.tenant.clone();
    v.name = of.version.name.clone();
    v.version = version;
    f.version = Arc::new(v);
    f
}

/// Writes `body` to `root/name`, creating parent directories.
pub fn write_file(root: &Path, name: &str, body: &[u8]) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().expect("a file path has a parent")).expect("mkdir");
    std::fs::write(&p, body).expect("write a function file");
}

/// A python function `main.handle` whose `main.py` is `source`, with default limits.
pub fn python(source: &str) -> TestFunction {
    function(
        Runtime::Python,
        "main.handle",
        &[("main.py", source.as_bytes())],
    )
}

/// A python function `main.handle` whose `main.py` is `source`, with `limits`.
pub fn python_limited(source: &str, limits: Limits) -> TestFunction {
    function_with(
        Runtime::Python,
        "main.handle",
        &[("main.py", source.as_bytes())],
        limits,
    )
}

/// Short limits for hostile code: 2 s, 128 MiB, 32 processes.
pub fn tight() -> Limits {
    Limits {
        timeout_ms: 2_000,
        memory_mb: 128,
        max_processes: 32,
        ..Limits::default()
    }
}

/// Invokes `f` with `input`, with the function's own timeout as the deadline.
pub async fn call(exec: &dyn Executor, f: &TestFunction, input: Value) -> Result<Output> {
    call_within(
        exec,
        f,
        input,
        Duration::from_millis(f.version.limits.timeout_ms),
    )
    .await
}

/// Invokes `f` with `input` and a deadline `within` from now.
pub async fn call_within(
    exec: &dyn Executor,
    f: &TestFunction,
    input: Value,
    within: Duration,
) -> Result<Output> {
    exec.invoke(Invocation {
        job_id: JobId::random(),
        tenant: f.version.tenant.clone(),
        target: Target::User(f.version.clone()),
        input: Arc::new(input),
        deadline: Instant::now() + within,
    })
    .await
}

/// Waits (up to 10 s) until the pool `{executor}/stem/{runner}` has `n` stem cells ready;
/// panics otherwise.
pub async fn wait_for_stem_cells(exec: &dyn Executor, runner: &str, n: u64) {
    let pool = format!("{}/stem/{runner}", exec.name());
    for _ in 0..400 {
        let ready = exec
            .pool_stats()
            .iter()
            .find(|s| s.pool == pool)
            .map(|s| s.stem_cells)
            .unwrap_or(0);
        if ready >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {runner} stem cell became ready");
}

/// A python hello world: `{"hello": event.get("name", "world")}`.
pub const HELLO_PY: &str =
    "def handle(event, context):\n    return {'hello': event.get('name', 'world')}\n";

/// Checks that the executor still runs a normal function.
pub async fn still_serves(exec: &dyn Executor) {
    let f = python(HELLO_PY);
    let out = call(exec, &f, json!({"name": "after"}))
        .await
        .expect("a normal function still runs");
    assert_eq!(out.value, json!({"hello": "after"}));
}

/// A static hello-world binary (see [`Subject::hello_binary`]) built with the host's
/// `cc -static`, or `None` (with the reason printed) if that cannot make one here.
pub fn static_hello() -> Option<Vec<u8>> {
    let src = tempfile::tempdir().expect("tempdir");
    let c = src.path().join("hello.c");
    std::fs::write(
        &c,
        b"#include <stdio.h>\nint main(void){size_t n=0;int ch;while((ch=getchar())!=EOF)n++;\nfprintf(stderr,\"binary log\\n\");printf(\"{\\\"binary\\\":true,\\\"input_bytes\\\":%zu}\\n\",n);return 0;}\n",
    )
    .expect("write hello.c");
    let exe = src.path().join("hello");
    let built = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&exe)
        .arg(&c)
        .output();
    match built {
        Ok(b) if b.status.success() => Some(std::fs::read(&exe).expect("read the binary")),
        Ok(b) => {
            eprintln!(
                "no static binary: {}",
                String::from_utf8_lossy(&b.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("no static binary: cannot run cc: {e}");
            None
        }
    }
}

fn fn_stats(exec: &dyn Executor, f: &TestFunction) -> PoolStats {
    exec.pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id))
        .expect("the function has a pool")
}

/// A python hello world runs, on a stem cell (no cold start), and its second call reuses
/// the same instance.
pub async fn python_hello_world_uses_a_stem_cell(s: &dyn Subject) {
    let exec = s.executor();
    s.start();
    wait_for_stem_cells(exec, "python", 1).await;
    let f = python(HELLO_PY);
    let out = call(exec, &f, json!({"name": "sopm"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "sopm"}));
    let c = s.counters();
    assert_eq!((c.stem_cells_used, c.cold_starts), (1, 0), "{c:?}");
    call(exec, &f, json!({})).await.unwrap();
    let c = s.counters();
    assert_eq!((c.stem_cells_used, c.cold_starts), (1, 0), "{c:?}");
    let st = fn_stats(exec, &f);
    assert_eq!((st.started_total, st.idle), (1, 1));
}

/// A node function with an async handler returns its value and sees its context; its
/// `console.log` and raw stdout writes are logs; a thrown error is a `function_error`
/// with a traceback naming the file, and keeps the logs written before it.
pub async fn node_hello_world_with_async_handler_and_logs(s: &dyn Subject) {
    let exec = s.executor();
    let f = function(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = async (event, context) => {\n  console.log('hi from node');\n  process.stdout.write('raw write\\n');\n  await new Promise(r => setTimeout(r, 5));\n  return { hello: event.name, remaining: context.getRemainingTimeInMillis() > 0 };\n};\n",
        )],
    );
    let out = call(exec, &f, json!({"name": "node"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "node", "remaining": true}));
    let logs = out.logs.unwrap();
    assert!(logs.contains("hi from node"), "{logs}");
    assert!(logs.contains("raw write"), "{logs}");
    let out = call(exec, &f, json!({"name": "again"})).await.unwrap();
    assert_eq!(out.value["hello"], json!("again"));

    let err = function(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = () => { console.log('about to fail'); throw new TypeError('bad thing'); };\n",
        )],
    );
    let e = call(exec, &err, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("TypeError: bad thing"), "{e}");
    let Error::Function {
        traceback, logs, ..
    } = e
    else {
        unreachable!()
    };
    assert!(traceback.unwrap().contains("index.js"));
    let logs = logs.unwrap_or_default();
    assert!(
        logs.contains("about to fail"),
        "a failed call keeps its logs: {logs}"
    );
}

/// A shell function reads its input as JSON on stdin and answers on stdout, its stderr
/// is logs; a non-zero exit is a `function_error` naming the status and the last stderr.
pub async fn shell_hello_world_and_failure(s: &dyn Subject) {
    let exec = s.executor();
    let f = function(
        Runtime::Shell,
        "run.sh",
        &[(
            "run.sh",
            b"#!/bin/sh\nread -r input\necho \"shell says hi\" >&2\nprintf '{\"got\": %s, \"shell\": true}\\n' \"$input\"\n",
        )],
    );
    let out = call(exec, &f, json!({"n": 7})).await.unwrap();
    assert_eq!(out.value, json!({"got": {"n": 7}, "shell": true}));
    assert!(out.logs.unwrap().contains("shell says hi"));

    let failing = function(
        Runtime::Shell,
        "run.sh",
        &[(
            "run.sh",
            b"echo 'first line' >&2\necho 'it broke here' >&2\nexit 3\n",
        )],
    );
    let e = call(exec, &failing, json!(null)).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("exit status 3"), "{e}");
    assert!(e.to_string().contains("it broke here"), "{e}");
}

/// A static binary ([`Subject::hello_binary`]) reads its input on stdin and answers on
/// stdout; its stderr is logs.
pub async fn binary_hello_world(s: &dyn Subject) {
    let Some(body) = s.hello_binary() else {
        skip("binary_hello_world", "no static binary can be built here");
        return;
    };
    let f = function(Runtime::Binary, "bin/hello", &[("bin/hello", &body)]);
    let out = call(s.executor(), &f, json!({"k": "v"})).await.unwrap();
    assert_eq!(out.value, json!({"binary": true, "input_bytes": 9}));
    assert!(out.logs.unwrap().contains("binary log"));
}

/// Megabytes of input with every kind of Unicode (NUL, quotes, emoji sequences) come
/// back unchanged, and the warm instance then serves a small call.
pub async fn large_and_unicode_payloads_round_trip(s: &dyn Subject) {
    let exec = s.executor();
    let limits = Limits {
        max_output_bytes: 16 << 20,
        ..Limits::default()
    };
    let f = python_limited("def handle(event, context):\n    return event\n", limits);
    let text: String = "héllo wörld ✓ 日本語 🦀 \u{0} \"quoted\" \\ \n".repeat(40_000);
    let input = json!({
        "text": text,
        "numbers": (0..20_000).collect::<Vec<u32>>(),
        "nested": {"a": [{"b": [1.5, -2, null, true]}]},
        "emoji": "👩‍👩‍👧‍👦",
    });
    let out = call(exec, &f, input.clone()).await.unwrap();
    assert_eq!(out.value, input);
    // And again on the same warm instance.
    let out = call(exec, &f, json!("ünïcödé")).await.unwrap();
    assert_eq!(out.value, json!("ünïcödé"));
}

/// A raised exception is a `function_error` with the exception as message and a
/// traceback, and the instance is kept; a syntax error and an output that is not JSON
/// are `function_error`s too.
pub async fn function_errors_carry_tracebacks_and_keep_the_instance(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(
        "def helper(x):\n    raise ValueError('no good: %s' % x)\n\ndef handle(event, context):\n    if event.get('fail'):\n        helper(event['fail'])\n    return 'fine'\n",
    );
    let e = call(exec, &f, json!({"fail": "abc"})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert_eq!(e.to_string(), "ValueError: no good: abc");
    let Error::Function { traceback, .. } = e else {
        unreachable!()
    };
    let tb = traceback.unwrap();
    assert!(tb.contains("main.py") && tb.contains("helper"), "{tb}");
    assert_eq!(
        call(exec, &f, json!({})).await.unwrap().value,
        json!("fine")
    );
    assert_eq!(s.counters().replaced, 0);

    let broken = python("def handle(event, context)\n    return 1\n");
    let e = call(exec, &broken, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("failed to load"), "{e}");
    assert!(e.to_string().contains("SyntaxError"), "{e}");

    let not_json = python("def handle(event, context):\n    return {1, 2}\n");
    let e = call(exec, &not_json, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("not JSON"), "{e}");
}

/// Everything a function writes (print, stderr, raw fds 1 and 2, child processes, a last
/// line without newline) is captured as that call's logs, never in the output, and never
/// leaks into the next call's logs.
pub async fn logs_are_captured_and_kept_out_of_the_output(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(concat!(
        "import os, sys, subprocess\n",
        "def handle(event, context):\n",
        "    print('via print')\n",
        "    print('via stderr', file=sys.stderr)\n",
        "    os.write(1, b'via fd 1\\n')\n",
        "    os.write(2, b'via fd 2\\n')\n",
        "    subprocess.run(['/bin/sh', '-c', 'echo from a child; echo child err >&2'])\n",
        "    sys.stdout.write('no newline at the end')\n",
        "    return {'n': event['n']}\n",
    ));
    for n in 0..3 {
        let out = call(exec, &f, json!({"n": n})).await.unwrap();
        assert_eq!(out.value, json!({"n": n}));
        let logs = out.logs.unwrap();
        for part in [
            "via print",
            "via stderr",
            "via fd 1",
            "via fd 2",
            "from a child",
            "child err",
        ] {
            assert!(logs.contains(part), "missing {part:?} in {logs:?}");
        }
        assert!(logs.ends_with("no newline at the end"), "{logs:?}");
        assert_eq!(
            logs.matches("via print").count(),
            1,
            "logs leak across calls"
        );
    }
}

/// A function spinning or sleeping past its 1 s timeout is a `timeout`, its instance is
/// replaced, and the executor still serves.
pub async fn spinning_and_sleeping_past_the_deadline_time_out(s: &dyn Subject) {
    let exec = s.executor();
    s.start();
    wait_for_stem_cells(exec, "python", 1).await;
    let limits = Limits {
        timeout_ms: 1_000,
        ..tight()
    };
    let spin = python_limited(
        "def handle(event, context):\n    while True:\n        pass\n",
        limits.clone(),
    );
    let e = call(exec, &spin, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "timeout", "{e:?}");
    let sleep = python_limited(
        "import time\ndef handle(event, context):\n    time.sleep(30)\n    return 'woke'\n",
        limits,
    );
    let e = call(exec, &sleep, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "timeout", "{e:?}");
    assert!(s.counters().replaced >= 2);
    still_serves(exec).await;
}

/// Allocating without bound under a 64 MiB limit is `out_of_memory`, in python (the
/// runner itself) and in a shell script (a child of the runner, which the kernel may have
/// to kill: `out_of_memory`, or a `function_error` where only rlimits bound it), well
/// before a 10 s timeout that leaves room to boot a sandbox for these limits; the executor
/// still serves.
pub async fn unbounded_allocation_is_out_of_memory(s: &dyn Subject) {
    let exec = s.executor();
    let limits = Limits {
        memory_mb: 64,
        timeout_ms: 10_000,
        ..tight()
    };
    let f = python_limited(
        "def handle(event, context):\n    hoard = []\n    while True:\n        hoard.append(b'x' * (8 << 20))\n",
        limits.clone(),
    );
    let e = call(exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "out_of_memory", "{e:?}");
    let g = function_with(
        Runtime::Shell,
        "run.sh",
        &[("run.sh", b"x=a; while :; do x=$x$x; done\n")],
        limits,
    );
    let e = call(exec, &g, json!({})).await.unwrap_err();
    eprintln!("shell memory hog: {e:?}");
    assert!(
        ["out_of_memory", "function_error"].contains(&e.code()),
        "{e:?}"
    );
    still_serves(exec).await;
}

/// An output past `max_output_bytes` is `output_too_large`, and the instance is kept for
/// the next call.
pub async fn output_too_large_is_reported_and_the_instance_kept(s: &dyn Subject) {
    let exec = s.executor();
    let limits = Limits {
        max_output_bytes: 1000,
        ..Limits::default()
    };
    let f = python_limited(
        "def handle(event, context):\n    return 'x' * event['n']\n",
        limits,
    );
    let e = call(exec, &f, json!({"n": 5000})).await.unwrap_err();
    assert_eq!(e.code(), "output_too_large");
    assert_eq!(
        call(exec, &f, json!({"n": 3})).await.unwrap().value,
        json!("xxx")
    );
    assert_eq!(s.counters().replaced, 0);
}

/// A result frame written by the function itself straight onto the runner's frame
/// channel (fd 4), well-formed and answering the call but with an output 100 times
/// `max_output_bytes` (1000), is `output_too_large`: the host measures the output itself,
/// whatever the runner checked; the executor still serves.
pub async fn a_forged_result_past_the_output_cap_is_refused(s: &dyn Subject) {
    let exec = s.executor();
    let f = python_limited(
        concat!(
            "import json, os\n",
            "def handle(event, context):\n",
            "    frame = {'type': 'result', 'id': context.job_id, 'ok': True, 'output': 'x' * event['n']}\n",
            "    data = json.dumps(frame).encode() + b'\\n'\n",
            "    while data:\n",
            "        data = data[os.write(4, data):]\n",
            "    return 'small'\n",
        ),
        Limits {
            max_output_bytes: 1000,
            ..Limits::default()
        },
    );
    let r = call(exec, &f, json!({"n": 100_000})).await;
    assert!(
        r.as_ref().is_err_and(|e| e.code() == "output_too_large"),
        "{:?}",
        r.map(|o| o.value.to_string().len())
    );
    still_serves(exec).await;
}

/// Each call of a python or node function runs under a CPU-time rlimit (`RLIMIT_CPU`,
/// read with `getrlimit` and `prlimit`) of at most the CPU its instance used so far plus
/// about twice its 5 s budget, so a spinning call dies even where no cgroup bounds it; a
/// second call is bounded too. (Node's is checked where the sandbox has `prlimit`, which
/// its runner needs to set it.)
pub async fn each_call_has_a_cpu_time_limit(s: &dyn Subject) {
    let exec = s.executor();
    let limits = Limits {
        timeout_ms: 5_000,
        ..Limits::default()
    };
    let py = python_limited(
        concat!(
            "import resource\n",
            "def handle(event, context):\n",
            "    soft = resource.getrlimit(resource.RLIMIT_CPU)[0]\n",
            "    u = resource.getrusage(resource.RUSAGE_SELF)\n",
            "    return {'soft': str(soft) if soft >= 0 else 'unlimited', 'used': u.ru_utime + u.ru_stime}\n",
        ),
        limits.clone(),
    );
    let node = function_with(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"const { execFileSync } = require('child_process');\nexports.handle = () => {\n  let soft = null;\n  try {\n    soft = execFileSync('prlimit', ['--pid', String(process.pid), '--cpu', '--raw', '--noheadings', '--output', 'SOFT']).toString().trim();\n  } catch (e) {}\n  const u = process.cpuUsage();\n  return { soft, used: (u.user + u.system) / 1e6 };\n};\n",
        )],
        limits,
    );
    for f in [&py, &node, &py, &node] {
        let out = call(exec, f, json!({})).await.unwrap().value;
        if out["soft"].is_null() {
            // The node runner sets the limit with `prlimit`; an image without it (Docker's
            // busybox images) relies on the container's CPU quota and the timeout.
            eprintln!("no prlimit in this sandbox: node's CPU-time limit not checked");
            continue;
        }
        let soft = out["soft"].as_str().unwrap_or_default();
        let soft: f64 = soft
            .parse()
            .unwrap_or_else(|_| panic!("no CPU-time limit in a call: {out}"));
        let used = out["used"].as_f64().expect("the CPU used");
        assert!(soft <= used + 2.0 * (5.0 + 2.0) + 1.0, "{out}");
    }
}

/// A function asking for network, on an executor that does not allow it, cannot reach
/// a port listening on the host's loopback, and the executor still serves.
pub async fn no_network_to_the_host(s: &dyn Subject) {
    let exec = s.executor();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = python_limited(
        "import socket\ndef handle(event, context):\n    try:\n        s = socket.create_connection(('127.0.0.1', event['port']), timeout=1)\n        s.sendall(b'escaped')\n        return 'connected'\n    except OSError as e:\n        return 'refused: ' + type(e).__name__\n",
        Limits {
            network: true,
            ..tight()
        },
    );
    let out = call(exec, &f, json!({"port": port})).await.unwrap().value;
    assert!(out.as_str().unwrap().starts_with("refused"), "{out}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(listener.accept().is_err(), "the sandbox reached the host");
    still_serves(exec).await;
}

/// Nothing of the host is visible to a function: it cannot read `/etc/shadow` or root's
/// files, the host's `/etc/passwd` is not its `/etc/passwd`, a directory of the host
/// outside `/tmp` (a stand-in for the server's data directory, made under the current
/// directory) does not exist for it, and no process it can see is a host process (none
/// runs this test's program, none has this test's directory in its environment); the
/// executor still serves.
pub async fn secrets_of_the_host_are_not_visible(s: &dyn Subject) {
    let exec = s.executor();
    let here = std::env::current_dir().expect("current dir");
    let data = tempfile::tempdir_in(&here).unwrap();
    std::fs::write(data.path().join("secret.db"), b"TOP SECRET").unwrap();
    let secret = data.path().join("secret.db");
    let f = python_limited(
        concat!(
            "import os\n",
            "def attempt(path):\n",
            "    try:\n",
            "        with open(path, 'rb') as fh:\n",
            "            return fh.read(1 << 16).decode('latin-1')\n",
            "    except Exception as e:\n",
            "        return 'denied: ' + type(e).__name__\n",
            "def processes():\n",
            "    out = []\n",
            "    for pid in os.listdir('/proc'):\n",
            "        if pid.isdigit():\n",
            "            seen = {'pid': pid}\n",
            "            for part in ('cmdline', 'environ'):\n",
            "                seen[part] = attempt('/proc/%s/%s' % (pid, part)).replace('\\0', ' ')\n",
            "            out.append(seen)\n",
            "    return out\n",
            "def handle(event, context):\n",
            "    return {\n",
            "        'read': {p: attempt(p) for p in event['paths']},\n",
            "        'exists': {p: os.path.exists(p) for p in event['dirs']},\n",
            "        'processes': processes(),\n",
            "    }\n",
        ),
        tight(),
    );
    let secret = secret.to_string_lossy().into_owned();
    let paths = [
        "/etc/shadow".to_string(),
        "/root/.bash_history".to_string(),
        secret.clone(),
        "/etc/passwd".to_string(),
    ];
    let dirs = [
        data.path().to_string_lossy().into_owned(),
        here.to_string_lossy().into_owned(),
    ];
    let out = call(exec, &f, json!({"paths": paths, "dirs": dirs}))
        .await
        .unwrap()
        .value;
    let read = &out["read"];
    for p in &paths[..3] {
        assert!(
            read[p].as_str().unwrap().starts_with("denied"),
            "{p}: {read}"
        );
    }
    assert!(!out.to_string().contains("TOP SECRET"), "{out}");
    if let Ok(host_passwd) = std::fs::read_to_string("/etc/passwd") {
        assert_ne!(
            read["/etc/passwd"].as_str(),
            Some(host_passwd.as_str()),
            "the host's /etc/passwd is visible"
        );
    }
    for d in &dirs {
        assert_eq!(out["exists"][d], json!(false), "{d} is visible: {out}");
    }
    let program = std::env::current_exe().expect("the test program");
    let program = program.to_string_lossy();
    let here = here.to_string_lossy();
    let processes = out["processes"].as_array().expect("a process list");
    assert!(
        !processes.is_empty(),
        "the function sees not even itself in /proc: {out}"
    );
    for p in processes {
        for part in ["cmdline", "environ"] {
            let text = p[part].as_str().unwrap_or_default();
            assert!(
                !text.contains(&*program) && !text.contains(&*here),
                "a host process is visible: {p}"
            );
        }
    }
    still_serves(exec).await;
}

/// Writes outside `/tmp` fail (the root, `/usr`, `/etc`, the runner's own file) and
/// leave nothing on the host; `/tmp` is writable but capped at the function's `tmpfs_mb`:
/// filling it fails inside the sandbox (or ends the call as a `function_error` or
/// `sandbox_crashed`); the executor still serves.
pub async fn writes_outside_tmp_fail(s: &dyn Subject) {
    let exec = s.executor();
    let f = python_limited(
        concat!(
            "import __main__\n",
            "def handle(event, context):\n",
            "    out = {}\n",
            "    for p in event['paths'] + [__main__.__file__]:\n",
            "        try:\n",
            "            open(p, 'w').write('x')\n",
            "            out[p] = 'written'\n",
            "        except Exception as e:\n",
            "            out[p] = type(e).__name__\n",
            "    return {'runner': __main__.__file__, 'writes': out}\n",
        ),
        tight(),
    );
    let name = format!("sopm-write-{}", uuid::Uuid::new_v4().simple());
    let outside = [
        format!("/{name}"),
        format!("/usr/{name}"),
        format!("/etc/{name}"),
    ];
    let mut paths = outside.to_vec();
    paths.push("/tmp/ok".into());
    let out = call(exec, &f, json!({ "paths": paths }))
        .await
        .unwrap()
        .value;
    let writes = &out["writes"];
    assert_eq!(writes["/tmp/ok"], json!("written"), "{out}");
    let runner = out["runner"].as_str().expect("the runner's file");
    for p in outside.iter().map(String::as_str).chain([runner]) {
        assert!(
            writes[p].is_string() && writes[p] != json!("written"),
            "{p}: {out}"
        );
    }
    for p in &outside {
        assert!(!Path::new(p).exists(), "{p} was written on the host");
    }
    let fill = python_limited(
        "def handle(event, context):\n    try:\n        with open('/tmp/big', 'wb') as f:\n            for _ in range(200):\n                f.write(b'x' * (1 << 20))\n        return 'filled'\n    except OSError as e:\n        return 'stopped: ' + type(e).__name__\n",
        Limits {
            tmpfs_mb: 8,
            timeout_ms: 10_000,
            ..tight()
        },
    );
    match call(exec, &fill, json!({})).await {
        Ok(v) => assert!(
            v.value.as_str().is_some_and(|v| v.starts_with("stopped")),
            "{v:?}"
        ),
        Err(e) => assert!(
            ["function_error", "sandbox_crashed"].contains(&e.code()),
            "{e:?}"
        ),
    }
    still_serves(exec).await;
}

/// A fork bomb is contained: it ends as a `timeout`, `sandbox_crashed` or
/// `function_error`, or as `out_of_memory` where its processes share the sandbox's memory
/// limit and use it up before any process limit stops them (gVisor under Docker, whose
/// pids limit has room for gVisor's own threads); the executor still serves.
pub async fn a_fork_bomb_is_contained(s: &dyn Subject) {
    let exec = s.executor();
    let f = python_limited(
        "import os\ndef handle(event, context):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        tight(),
    );
    let e = call(exec, &f, json!({})).await.unwrap_err();
    eprintln!("fork bomb: {e:?}");
    assert!(
        [
            "timeout",
            "sandbox_crashed",
            "function_error",
            "out_of_memory"
        ]
        .contains(&e.code()),
        "{e:?}"
    );
    still_serves(exec).await;
}

/// 100 MB printed to stdout leave the call's logs capped at `max_output_bytes` (64 KiB)
/// with a truncation marker, and the call succeeds; 100 MB without a newline written
/// straight onto the runner's frame channel (fd 4) is `output_too_large`; the executor
/// still serves.
pub async fn printing_100_mb_is_capped(s: &dyn Subject) {
    let exec = s.executor();
    let limits = Limits {
        timeout_ms: 20_000,
        max_output_bytes: 64 * 1024,
        ..tight()
    };
    let f = python_limited(
        "import sys\ndef handle(event, context):\n    chunk = 'y' * (1 << 20)\n    for _ in range(100):\n        sys.stdout.write(chunk)\n    return 'printed'\n",
        limits.clone(),
    );
    let out = call(exec, &f, json!({})).await.unwrap();
    assert_eq!(out.value, json!("printed"));
    let logs = out.logs.unwrap_or_default();
    assert!(
        logs.len() < 64 * 1024 + 200,
        "{} bytes of logs kept",
        logs.len()
    );
    assert!(
        logs.contains("[sopm: logs truncated"),
        "no truncation marker"
    );
    let g = python_limited(
        "import os\ndef handle(event, context):\n    chunk = b'z' * (1 << 20)\n    for _ in range(100):\n        os.write(4, chunk)\n    return 'done'\n",
        limits,
    );
    let e = call(exec, &g, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "output_too_large", "{e:?}");
    still_serves(exec).await;
}

/// A function closing the runner's frame output (fd 4) is `sandbox_crashed`; closing its
/// own `sys.stdout` only loses its prints; closing the frame input (fd 3) answers, or is
/// `sandbox_crashed`, and the next call gets an instance that answers too; the executor
/// still serves.
pub async fn closing_the_frame_pipes(s: &dyn Subject) {
    let exec = s.executor();
    let f = python_limited(
        "import os\ndef handle(event, context):\n    os.close(4)\n    return 'closed'\n",
        tight(),
    );
    let e = call(exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_crashed", "{e:?}");
    let g = python_limited(
        "import sys\ndef handle(event, context):\n    sys.stdout.close()\n    return 'fine'\n",
        tight(),
    );
    assert_eq!(
        call(exec, &g, json!({})).await.unwrap().value,
        json!("fine")
    );
    let h = python_limited(
        "import os\ndef handle(event, context):\n    os.close(3)\n    return 'half'\n",
        tight(),
    );
    for attempt in ["first", "second"] {
        let r = call(exec, &h, json!({})).await;
        eprintln!("closed frame input, {attempt} call: {r:?}");
        assert!(
            matches!(&r, Ok(o) if o.value == json!("half"))
                || r.as_ref().is_err_and(|e| e.code() == "sandbox_crashed"),
            "{attempt} call: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_serves(exec).await;
}

/// A function killing its parent process answers or is `sandbox_crashed`; a shell script
/// running `kill -9 -1` kills at most what its sandbox holds: the call is
/// `sandbox_crashed` (the runner was killed), or the script goes on (where the runner is
/// the sandbox's init, which `kill -1` spares) and answers; a process of the host (started
/// by the test) lives on, and the executor still serves.
pub async fn killing_the_parent_and_everything(s: &dyn Subject) {
    let exec = s.executor();
    let mut bystander = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("start a host process");
    let f = python_limited(
        "import os\ndef handle(event, context):\n    os.kill(os.getppid(), 9)\n    return 'still here'\n",
        tight(),
    );
    let r = call(exec, &f, json!({})).await;
    eprintln!("kill parent: {r:?}");
    assert!(
        matches!(&r, Ok(o) if o.value == json!("still here"))
            || r.as_ref().is_err_and(|e| e.code() == "sandbox_crashed"),
        "{r:?}"
    );
    let g = function_with(
        Runtime::Shell,
        "run.sh",
        &[("run.sh", b"kill -9 -1\necho '\"survived\"'\n")],
        tight(),
    );
    let r = call(exec, &g, json!({})).await;
    eprintln!("kill -9 -1: {r:?}");
    let alive = bystander
        .try_wait()
        .expect("check the host process")
        .is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(
        matches!(&r, Ok(o) if o.value == json!("survived"))
            || r.as_ref().is_err_and(|e| e.code() == "sandbox_crashed"),
        "{r:?}"
    );
    assert!(
        alive,
        "kill -9 -1 in a sandbox killed a process of the host"
    );
    still_serves(exec).await;
}

/// Eight concurrent calls of one function all succeed, on 2 or 3 instances (the cap is 3),
/// which are all idle afterwards.
pub async fn concurrent_calls_grow_the_pool_up_to_the_cap(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(
        "import os, time\ndef handle(event, context):\n    time.sleep(0.2)\n    return {'i': event['i']}\n",
    );
    let calls = (0..8).map(|i| {
        let f = &f;
        async move { call_within(exec, f, json!({"i": i}), Duration::from_secs(30)).await }
    });
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().value["i"], json!(i));
    }
    let st = fn_stats(exec, &f);
    assert!((2..=3).contains(&st.started_total), "{st:?}");
    assert_eq!(st.busy, 0);
    assert_eq!(st.idle, st.started_total);
}

/// Two functions called in turn never see each other's memory, `/tmp` or code.
pub async fn two_functions_never_share_an_instance(s: &dyn Subject) {
    let exec = s.executor();
    let body = |name: &str| {
        format!(
            "import os\nSEEN = []\ndef handle(event, context):\n    SEEN.append('{name}')\n    prev = open('/tmp/owner').read() if os.path.exists('/tmp/owner') else None\n    open('/tmp/owner', 'w').write('{name}')\n    return {{'seen': sorted(set(SEEN)), 'prev': prev, 'files': sorted(os.listdir('/fn'))}}\n"
        )
    };
    let a = function(
        Runtime::Python,
        "main.handle",
        &[("main.py", body("a").as_bytes()), ("a.txt", b"a")],
    );
    let b = function(
        Runtime::Python,
        "main.handle",
        &[("main.py", body("b").as_bytes()), ("b.txt", b"b")],
    );
    for _ in 0..3 {
        for (f, name, file) in [(&a, "a", "a.txt"), (&b, "b", "b.txt")] {
            let out = call(exec, f, json!({})).await.unwrap().value;
            assert_eq!(out["seen"], json!([name]));
            assert!(out["prev"].is_null() || out["prev"] == json!(name), "{out}");
            assert_eq!(out["files"], json!([file, "main.py"]), "{out}");
        }
    }
}

/// An instance that exits mid-call is `sandbox_crashed`, and the next call gets a new
/// instance.
pub async fn a_crashed_instance_is_replaced(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(
        "import os\ndef handle(event, context):\n    if event.get('crash'):\n        os._exit(3)\n    return os.getpid()\n",
    );
    call(exec, &f, json!({})).await.unwrap();
    let e = call(exec, &f, json!({"crash": true})).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_crashed", "{e}");
    call(exec, &f, json!({})).await.unwrap();
    let st = fn_stats(exec, &f);
    assert_eq!((st.replaced_total, st.started_total), (1, 2), "{st:?}");
}

/// An instance idle past the TTL (200 ms) is stopped, and the function still runs after.
pub async fn idle_instances_are_reaped(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(HELLO_PY);
    call(exec, &f, json!({})).await.unwrap();
    let mut reaped = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let st = fn_stats(exec, &f);
        if st.reaped_total == 1 && st.idle == 0 {
            reaped = true;
            break;
        }
    }
    assert!(reaped, "the idle instance was not reaped");
    let out = call(exec, &f, json!({"name": "back"})).await.unwrap();
    assert_eq!(out.value["hello"], json!("back"));
}

/// The pool of version `version` of `f`'s function (`…@{version}`), if it has one.
fn version_stats(exec: &dyn Executor, f: &TestFunction, version: u32) -> Option<PoolStats> {
    let suffix = format!("@{version}");
    exec.pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id) && s.pool.ends_with(&suffix))
}

/// Instances (idle or busy) of version `version` of `f`'s function.
fn version_instances(exec: &dyn Executor, f: &TestFunction, version: u32) -> u64 {
    version_stats(exec, f, version).map_or(0, |s| s.idle + s.busy)
}

/// Two versions of one function each keep a warm instance; retiring version 1 (it was
/// pruned) stops its instance, and version 2 keeps its own and serves from it.
pub async fn retiring_a_version_stops_only_its_instances(s: &dyn Subject) {
    let exec = s.executor();
    let src = |tag: &str| format!("def handle(event, context):\n    return '{tag}'\n");
    let v1 = python(&src("v1"));
    let v2 = as_version_of(python(&src("v2")), &v1, 2);
    assert_eq!(call(exec, &v1, json!({})).await.unwrap().value, json!("v1"));
    assert_eq!(call(exec, &v2, json!({})).await.unwrap().value, json!("v2"));
    assert_eq!(
        version_instances(exec, &v1, 1),
        1,
        "{:?}",
        exec.pool_stats()
    );
    assert_eq!(
        version_instances(exec, &v1, 2),
        1,
        "{:?}",
        exec.pool_stats()
    );
    let id = v1.version.function_id.clone();
    exec.retire_version(&id, 1).await.unwrap();
    assert_eq!(
        version_instances(exec, &v1, 1),
        0,
        "version 1 kept an instance: {:?}",
        exec.pool_stats()
    );
    assert_eq!(
        version_instances(exec, &v1, 2),
        1,
        "version 2 lost its instance: {:?}",
        exec.pool_stats()
    );
    assert_eq!(call(exec, &v2, json!({})).await.unwrap().value, json!("v2"));
    let st = version_stats(exec, &v1, 2).expect("version 2 has a pool");
    assert_eq!(st.started_total, 1, "version 2 was not served warm: {st:?}");
}

/// With one instance per tenant: bob's idle instance stays while alice, at her cap, makes
/// room for her second function by evicting her own idle instance (not bob's, idle
/// longer); while her only instance is busy her other function's call ends
/// `quota_exceeded` (`warm_instances`, with a retry delay), bob's call still runs on his
/// instance, and once hers is idle again the refused function takes its place.
pub async fn a_tenant_at_its_cap_evicts_its_own_idle_instances_then_is_refused(s: &dyn Subject) {
    let exec = s.executor();
    let sleepy = "import time\ndef handle(event, context):\n    time.sleep(event.get('s', 0))\n    return event.get('s', 0)\n";
    let b1 = owned_by(python(sleepy), "bob");
    let a1 = owned_by(python(sleepy), "alice");
    let a2 = owned_by(python(sleepy), "alice");
    let within = Duration::from_secs(30);
    for f in [&b1, &a1, &a2] {
        assert_eq!(
            call_within(exec, f, json!({}), within).await.unwrap().value,
            json!(0)
        );
    }
    let idle = |f: &TestFunction| fn_stats(exec, f).idle;
    assert_eq!(
        (idle(&b1), idle(&a1), idle(&a2)),
        (1, 0, 1),
        "alice at her cap evicts her own idle instance, never bob's: {:?}",
        exec.pool_stats()
    );
    // a2's instance busy for 2 s: alice holds her cap, all of it busy.
    let slow = call_within(exec, &a2, json!({"s": 2}), within);
    let others = async {
        let mut busy = false;
        for _ in 0..1000 {
            if fn_stats(exec, &a2).busy == 1 {
                busy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(busy, "the slow call never took alice's instance");
        let alice = call_within(exec, &a1, json!({}), Duration::from_millis(300)).await;
        let bob = call_within(exec, &b1, json!({}), within).await;
        (alice, bob)
    };
    let (slow, (alice, bob)) = tokio::join!(slow, others);
    assert_eq!(slow.unwrap().value, json!(2));
    match alice {
        Err(Error::QuotaExceeded {
            quota, retry_after, ..
        }) => {
            assert_eq!(quota, "warm_instances");
            assert!(retry_after.is_some(), "no retry delay");
        }
        other => panic!("alice at her cap, all busy: expected quota_exceeded, got {other:?}"),
    }
    assert_eq!(
        bob.expect("bob is not held back by alice's cap").value,
        json!(0)
    );
    assert_eq!(
        fn_stats(exec, &b1).started_total,
        1,
        "{:?}",
        exec.pool_stats()
    );
    // Her instance idle again, her refused function takes its place.
    assert_eq!(
        call_within(exec, &a1, json!({}), within)
            .await
            .unwrap()
            .value,
        json!(0)
    );
    assert_eq!((idle(&b1), idle(&a1), idle(&a2)), (1, 1, 0));
}

/// Python source of a function that walks every readable regular file from `/` (not
/// descending into `event['pruned']`), and answers its uid, gid and the SHA-256 of the
/// first 64 KiB of each file, by path.
const FILE_WALKER_PY: &str = concat!(
    "import hashlib, os, stat\n",
    "def handle(event, context):\n",
    "    pruned = set(event['pruned'])\n",
    "    files = {}\n",
    "    for root, dirs, names in os.walk('/'):\n",
    "        dirs[:] = [d for d in dirs if os.path.join(root, d) not in pruned]\n",
    "        for name in names:\n",
    "            p = os.path.join(root, name)\n",
    "            try:\n",
    "                if not stat.S_ISREG(os.lstat(p).st_mode):\n",
    "                    continue\n",
    "                with open(p, 'rb') as fh:\n",
    "                    files[p] = hashlib.sha256(fh.read(65536)).hexdigest()\n",
    "            except OSError:\n",
    "                pass\n",
    "    return {'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'files': files}\n",
);

/// The SHA-256 (hex) of nothing.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The SHA-256 (hex) of the first 64 KiB of a host file, if it is a readable regular file.
fn host_file_digest(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    if !std::fs::symlink_metadata(path).ok()?.is_file() {
        return None;
    }
    let mut head = Vec::with_capacity(1 << 16);
    std::fs::File::open(path)
        .ok()?
        .take(1 << 16)
        .read_to_end(&mut head)
        .ok()?;
    Some(format!("{:x}", Sha256::digest(&head)))
}

/// Secret files planted on the host for one test, removed (with the directories made for
/// them) when dropped.
#[derive(Default)]
struct PlantedSecrets {
    files: Vec<(PathBuf, String)>,
    dirs: Vec<PathBuf>,
}

impl PlantedSecrets {
    /// Writes a world-readable secret at `path` (so only the sandbox's mounts keep it
    /// out), making its directory if `make_dir`; prints and skips a place this host does
    /// not let the test write.
    fn plant(&mut self, path: PathBuf, make_dir: bool) {
        use std::os::unix::fs::PermissionsExt;
        let body = format!("SOPM-SECRET-{}\n", uuid::Uuid::new_v4().simple());
        if make_dir {
            let dir = path
                .parent()
                .expect("a secret has a directory")
                .to_path_buf();
            if let Err(e) = std::fs::create_dir(&dir) {
                eprintln!("not planting {}: {e}", path.display());
                return;
            }
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
            self.dirs.push(dir);
        }
        match std::fs::write(&path, &body) {
            Ok(()) => {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
                self.files.push((path, body));
            }
            Err(e) => eprintln!("not planting {}: {e}", path.display()),
        }
    }
}

impl Drop for PlantedSecrets {
    fn drop(&mut self) {
        for (f, _) in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn under(path: &str, prefix: &Path) -> bool {
    Path::new(path).starts_with(prefix)
}

/// No host file outside the runtime's allow-list is readable, and the function does not
/// run as root. The test plants world-readable secrets on the host (under
/// `/etc/ssl/private`, `/root`, `/home`, a data directory under the current directory,
/// the executor's own directories, and in another function's code, which it calls
/// first), then a function walks every readable regular file of its sandbox (not `/proc`,
/// `/sys`, `/dev`; nor the large system directories of the allow-list, which hold no
/// secret) and answers a digest of each. It fails if a secret's content is readable
/// anywhere, or if a file that is also on the host (same path, same content) lies outside
/// [`HOST_ALLOW_LIST`] and the backend's [`Subject::allowed_host_paths`]; and if the
/// function's uid, effective uid or gid is 0. The executor still serves.
pub async fn no_host_file_outside_the_allow_list_is_readable(s: &dyn Subject) {
    let exec = s.executor();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let other_secret = format!("SOPM-SECRET-{}\n", uuid::Uuid::new_v4().simple());
    let other = function(
        Runtime::Python,
        "main.handle",
        &[
            ("main.py", HELLO_PY.as_bytes()),
            ("secret.txt", other_secret.as_bytes()),
        ],
    );
    call(exec, &other, json!({}))
        .await
        .expect("another function runs");

    let here = std::env::current_dir().expect("current dir");
    let data = tempfile::tempdir_in(&here).unwrap();
    let mut planted = PlantedSecrets::default();
    planted.plant(format!("/etc/ssl/private/sopm-{tag}.key").into(), false);
    planted.plant(format!("/root/sopm-{tag}.secret").into(), false);
    planted.plant(format!("/home/sopm-{tag}/secret").into(), true);
    planted.plant(data.path().join("sopm.db"), false);
    for dir in s.host_dirs() {
        planted.plant(dir.join(format!("sopm-{tag}.secret")), false);
    }
    let mut secrets: Vec<(String, String)> = planted
        .files
        .iter()
        .map(|(p, body)| (p.to_string_lossy().into_owned(), body.clone()))
        .collect();
    secrets.push((
        other
            .dir
            .path()
            .join("secret.txt")
            .to_string_lossy()
            .into_owned(),
        other_secret,
    ));

    let mut allowed: Vec<PathBuf> = HOST_ALLOW_LIST.iter().map(PathBuf::from).collect();
    allowed.extend(s.allowed_host_paths());
    // Not descended into: the allowed directories that hold no planted secret (the walk
    // of `/usr` alone would take minutes), but always `/tmp`, where a bound host `/tmp`
    // would show secrets, and the function's own code, which the walk must find.
    let mut pruned: Vec<String> = ["/proc", "/sys", "/dev"].map(String::from).to_vec();
    pruned.extend(
        allowed
            .iter()
            .filter(|a| !["/tmp", "/fn"].map(Path::new).contains(&a.as_path()))
            .filter(|a| !secrets.iter().any(|(p, _)| under(p, a)))
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let walker = python_limited(
        FILE_WALKER_PY,
        Limits {
            timeout_ms: 120_000,
            max_output_bytes: 32 << 20,
            ..Limits::default()
        },
    );
    let out = call(exec, &walker, json!({ "pruned": pruned }))
        .await
        .expect("the file walk runs")
        .value;

    let files = out["files"].as_object().expect("the files seen");
    assert!(
        files.keys().any(|p| p.starts_with("/fn/")),
        "the walk did not see the function's own code: {:?}",
        files.keys().take(20).collect::<Vec<_>>()
    );
    let secret_digests: BTreeMap<String, &str> = secrets
        .iter()
        .map(|(p, body)| {
            use sha2::{Digest, Sha256};
            (format!("{:x}", Sha256::digest(body.as_bytes())), p.as_str())
        })
        .collect();
    let mut leaks = Vec::new();
    for (path, digest) in files {
        let digest = digest.as_str().unwrap_or_default();
        if let Some(secret) = secret_digests.get(digest) {
            leaks.push(format!("{path} holds the secret planted at {secret}"));
            continue;
        }
        // An empty file (`/.dockerenv` of a host that is itself a container) tells nothing.
        if allowed.iter().any(|a| under(path, a)) || digest == EMPTY_SHA256 {
            continue;
        }
        if host_file_digest(Path::new(path)).as_deref() == Some(digest) {
            leaks.push(format!("{path} is the host's file, outside the allow-list"));
        }
    }
    assert!(
        leaks.is_empty(),
        "host files readable in the sandbox: {leaks:#?}"
    );
    drop(planted);
    still_serves(exec).await;
}

/// Python source of a function that tries, each in a child process, to make a user
/// namespace (`unshare(CLONE_NEWUSER)`, `clone3(CLONE_NEWUSER)`, and `unshare -U` where
/// the binary exists), to
/// mount a tmpfs, to `ptrace(PTRACE_ATTACH)` a sibling process, and to make a BPF map,
/// and answers `allowed` or the errno of each.
const PRIVILEGED_PROBE_PY: &str = concat!(
    "import ctypes, os, platform, shutil, subprocess\n",
    "libc = ctypes.CDLL(None, use_errno=True)\n",
    "BPF = {'x86_64': 321, 'aarch64': 280}\n",
    "def in_child(attempt):\n",
    "    pid = os.fork()\n",
    "    if pid == 0:\n",
    "        try:\n",
    "            rc = attempt()\n",
    "            code = 0 if rc != -1 else min(ctypes.get_errno(), 250) or 251\n",
    "        except BaseException:\n",
    "            code = 252\n",
    "        os._exit(code)\n",
    "    _, status = os.waitpid(pid, 0)\n",
    "    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:\n",
    "        return 'allowed'\n",
    "    return 'refused (%s)' % (os.WEXITSTATUS(status) if os.WIFEXITED(status) else 'signal')\n",
    "def bpf():\n",
    "    attr = (ctypes.c_uint32 * 5)(2, 4, 4, 1, 0)\n",
    "    return libc.syscall(BPF.get(platform.machine(), -1), 0, ctypes.byref(attr), ctypes.sizeof(attr))\n",
    "def handle(event, context):\n",
    "    out = {}\n",
    "    out['unshare'] = in_child(lambda: libc.unshare(0x10000000))\n",
    "    args = (ctypes.c_uint64 * 8)(0x10000000, 0, 0, 0, 17, 0, 0, 0)\n",
    "    out['clone3'] = in_child(lambda: libc.syscall(435, ctypes.byref(args), 64))\n",
    "    tool = shutil.which('unshare')\n",
    "    if tool:\n",
    "        r = subprocess.run([tool, '-U', 'true'], capture_output=True)\n",
    "        out['unshare_tool'] = 'allowed' if r.returncode == 0 else 'refused (%d)' % r.returncode\n",
    "    out['mount'] = in_child(lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n",
    "    sibling = subprocess.Popen(['sleep', '30'])\n",
    "    try:\n",
    "        out['ptrace'] = in_child(lambda: libc.ptrace(16, sibling.pid, None, None))\n",
    "    finally:\n",
    "        sibling.kill()\n",
    "        sibling.wait()\n",
    "    out['bpf'] = in_child(bpf)\n",
    "    return out\n",
);

/// From inside the sandbox, `unshare(CLONE_NEWUSER)` (and `unshare -U`), `mount`,
/// `ptrace(PTRACE_ATTACH)` of another process and `bpf` all fail, but for the operations
/// the backend names in [`Subject::privileged_allowed`]; the executor still serves.
pub async fn no_nested_namespaces_or_privileged_syscalls(s: &dyn Subject) {
    let exec = s.executor();
    let f = python_limited(
        PRIVILEGED_PROBE_PY,
        Limits {
            timeout_ms: 20_000,
            ..tight()
        },
    );
    let out = call(exec, &f, json!({}))
        .await
        .expect("the probe runs")
        .value;
    eprintln!("privileged operations: {out}");
    let tolerated = s.privileged_allowed();
    for op in [
        Privileged::NestedUserNamespace,
        Privileged::Mount,
        Privileged::Ptrace,
        Privileged::Bpf,
    ] {
        if tolerated.contains(&op) {
            continue;
        }
        let mut keys = vec![op.key()];
        if op == Privileged::NestedUserNamespace {
            keys.push("clone3");
            if out.get("unshare_tool").is_some() {
                keys.push("unshare_tool");
            }
        }
        for key in keys {
            let seen = out[key].as_str().expect("an answer per operation");
            assert!(
                seen.starts_with("refused"),
                "{key} is allowed inside the sandbox: {out}"
            );
        }
    }
    still_serves(exec).await;
}

/// Runs `future` to completion on a fresh multi-threaded runtime with two workers (what
/// each test of [`executor_conformance!`](crate::executor_conformance) runs on).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Builds the subject of one behaviour with `factory`; `None` when the factory gave none
/// or the subject does not run a runtime the behaviour needs (the test is skipped).
pub async fn subject<S, F, Fut>(needs: Needs, factory: F) -> Option<S>
where
    S: Subject,
    F: FnOnce(Needs) -> Fut,
    Fut: std::future::Future<Output = Option<S>>,
{
    let test = needs.test;
    let runtimes = needs.runtimes;
    let subject = factory(needs).await?;
    if let Some(r) = runtimes.iter().find(|r| !subject.runtimes().contains(r)) {
        eprintln!(
            "skipping {test}: the {} executor does not run {r:?} functions",
            subject.executor().name()
        );
        subject.finish().await;
        return None;
    }
    Some(subject)
}

/// Expands to a module `executor_conformance` with one `#[test]` per behaviour of
/// [`sopm_core::conformance::executor`](crate::conformance::executor), each running on
/// its own runtime ([`block_on`]).
///
/// `$factory` is an async function (or closure) from [`Needs`] to `Option<S>` where
/// `S: Subject`, in scope where the macro is called. It returns `None`, after calling
/// [`skip`] with the reason, when the host lacks what the backend needs. After a
/// behaviour passes, the test calls [`Subject::finish`].
#[macro_export]
macro_rules! executor_conformance {
    ($factory:expr $(,)?) => {
        /// The executor conformance suite (`sopm_core::conformance::executor`).
        mod executor_conformance {
            #[allow(unused_imports)]
            use super::*;

            $crate::__executor_behaviours!($crate::__executor_conformance_tests!(($factory)));
        }
    };
}

/// Calls `callback!(prefix.. behaviour_names..)` with every behaviour of the suite, in
/// order: the one list of them.
#[doc(hidden)]
#[macro_export]
macro_rules! __executor_behaviours {
    ($($callback:tt)::+ ! ($($prefix:tt)*)) => {
        $($callback)::+!(
            $($prefix)*
            python_hello_world_uses_a_stem_cell
            node_hello_world_with_async_handler_and_logs
            shell_hello_world_and_failure
            binary_hello_world
            large_and_unicode_payloads_round_trip
            function_errors_carry_tracebacks_and_keep_the_instance
            logs_are_captured_and_kept_out_of_the_output
            spinning_and_sleeping_past_the_deadline_time_out
            unbounded_allocation_is_out_of_memory
            output_too_large_is_reported_and_the_instance_kept
            a_forged_result_past_the_output_cap_is_refused
            each_call_has_a_cpu_time_limit
            no_network_to_the_host
            secrets_of_the_host_are_not_visible
            writes_outside_tmp_fail
            a_fork_bomb_is_contained
            printing_100_mb_is_capped
            closing_the_frame_pipes
            killing_the_parent_and_everything
            concurrent_calls_grow_the_pool_up_to_the_cap
            two_functions_never_share_an_instance
            a_crashed_instance_is_replaced
            idle_instances_are_reaped
            retiring_a_version_stops_only_its_instances
            a_tenant_at_its_cap_evicts_its_own_idle_instances_then_is_refused
            no_host_file_outside_the_allow_list_is_readable
            no_nested_namespaces_or_privileged_syscalls
        );
    };
}

/// One `#[test]` per behaviour name; the implementation of
/// [`executor_conformance!`](crate::executor_conformance).
#[doc(hidden)]
#[macro_export]
macro_rules! __executor_conformance_tests {
    (($factory:expr) $($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                use $crate::conformance::executor as suite;
                suite::block_on(async {
                    let Some(subject) =
                        suite::subject(suite::needs::$name(), $factory).await
                    else {
                        return;
                    };
                    suite::$name(&subject).await;
                    suite::Subject::finish(&subject).await;
                });
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Output;

    /// An executor that answers every call with its input and the files of the
    /// function's artifact, and reports one stem cell per call made.
    #[derive(Debug, Default)]
    struct Echo {
        calls: std::sync::atomic::AtomicU64,
    }

    #[async_trait]
    impl Executor for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        async fn invoke(&self, inv: Invocation) -> Result<Output> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Target::User(v) = &inv.target else {
                return Err(Error::invalid("a user function only"));
            };
            let Some(Artifact::Directory { path, .. }) = &v.artifact else {
                return Err(Error::invalid("a directory artifact only"));
            };
            let mut files: Vec<String> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let left = inv.deadline.saturating_duration_since(Instant::now());
            Ok(Output {
                value: json!({"input": *inv.input, "files": files, "left_ms": left.as_millis() as u64}),
                logs: None,
            })
        }
        fn pool_stats(&self) -> Vec<PoolStats> {
            vec![PoolStats {
                pool: "echo/stem/python".into(),
                stem_cells: self.calls.load(std::sync::atomic::Ordering::Relaxed),
                ..PoolStats::default()
            }]
        }
    }

    struct EchoSubject(Echo, &'static [Runtime]);

    impl Subject for EchoSubject {
        fn executor(&self) -> &dyn Executor {
            &self.0
        }
        fn start(&self) {}
        fn counters(&self) -> SandboxCounters {
            SandboxCounters::default()
        }
        fn runtimes(&self) -> &[Runtime] {
            self.1
        }
    }

    #[tokio::test]
    async fn a_test_function_is_a_ready_directory_artifact_of_its_files() {
        let f = function_with(
            Runtime::Shell,
            "bin/run.sh",
            &[("bin/run.sh", b"echo hi"), ("data/x.json", b"{}")],
            tight(),
        );
        assert_eq!(f.version.status, BuildStatus::Ready);
        assert_eq!(f.version.runtime, Runtime::Shell);
        assert_eq!(f.version.limits, tight());
        assert_eq!(
            std::fs::read(f.dir.path().join("bin/run.sh")).unwrap(),
            b"echo hi"
        );
        let Some(Artifact::Directory { path, .. }) = &f.version.artifact else {
            panic!("not a directory artifact: {:?}", f.version.artifact);
        };
        assert_eq!(Path::new(path), f.dir.path());
        assert_ne!(python(HELLO_PY).version.function_id, f.version.function_id);
    }

    #[tokio::test]
    async fn call_sends_the_input_with_the_functions_timeout_as_deadline() {
        let exec = Echo::default();
        let f = python_limited(HELLO_PY, tight());
        let out = call(&exec, &f, json!({"x": 1})).await.unwrap().value;
        assert_eq!(out["input"], json!({"x": 1}));
        assert_eq!(out["files"], json!(["main.py"]));
        let left = out["left_ms"].as_u64().unwrap();
        assert!(left <= tight().timeout_ms && left > 0, "{out}");
    }

    #[tokio::test]
    async fn waiting_for_stem_cells_reads_the_stem_pool_of_the_runner() {
        let exec = Echo::default();
        call(&exec, &python(HELLO_PY), json!({})).await.unwrap();
        wait_for_stem_cells(&exec, "python", 1).await;
    }

    #[tokio::test]
    async fn a_subject_without_a_needed_runtime_is_skipped() {
        let needs = needs::node_hello_world_with_async_handler_and_logs();
        let python_only = subject(needs.clone(), |_| async {
            Some(EchoSubject(Echo::default(), &[Runtime::Python]))
        })
        .await;
        assert!(python_only.is_none());
        let all = subject(needs, |n| async move {
            assert_eq!(n.test, "node_hello_world_with_async_handler_and_logs");
            Some(EchoSubject(Echo::default(), ALL_RUNTIMES))
        })
        .await;
        assert!(all.is_some());
    }

    #[test]
    fn each_behaviour_names_its_own_needs() {
        macro_rules! named {
            ($($name:ident)*) => {
                $(assert_eq!(needs::$name().test, stringify!($name));)*
            };
        }
        crate::__executor_behaviours!(named!());
        assert_eq!(
            needs::idle_instances_are_reaped().idle_ttl,
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            needs::concurrent_calls_grow_the_pool_up_to_the_cap().max_instances_per_function,
            Some(3)
        );
        assert_eq!(needs::binary_hello_world().runtimes, &[Runtime::Binary]);
        assert_eq!(
            needs::a_tenant_at_its_cap_evicts_its_own_idle_instances_then_is_refused()
                .max_instances_per_tenant,
            Some(1)
        );
    }
}
