//! The Kubernetes backends: user functions in pods of a cluster.
//!
//! - `kubernetes` ([`KubernetesExecutor`]): warm function pods on the same
//!   [`WarmPool`](crate::sandbox::WarmPool) as the other sandboxes, pods being its cells.
//!   A stem-cell pod per runner (python, node, static) boots from the runner's image,
//!   referenced by digest, with the runner in TCP mode: it listens on its port and
//!   accepts the control plane only with the pod's own secret token (256 random bits,
//!   made per pod and passed in the pod's environment, see below). The first call of a
//!   function takes a stem cell and sends the code in the runner's `init` frame; the pod
//!   then serves that function version only, one call at a time, until it idles past the
//!   TTL or breaks, and is deleted. Pods are watched with `kube::runtime` watchers, never
//!   polled, for their address, their end and how they ended (`OOMKilled`).
//! - `kubernetes-job` ([`KubernetesJobExecutor`]): one `batch/v1` Job per invocation,
//!   for batch and asynchronous calls (a pod start per call costs seconds).
//!
//! Every pod runs under the RuntimeClass of the settings (default `gvisor`), non-root
//! (uid 65534) with a read-only root, all capabilities dropped, no privilege escalation,
//! seccomp `RuntimeDefault`, no service-account token and no service links, CPU and
//! memory limits from the function's limits, `emptyDir` (memory) volumes for `/tmp` (the
//! function's `tmpfs_mb`) and `/fn` (code sent in an init frame), and an
//! `activeDeadlineSeconds` backstop. Its labels `sopm.dev/function-pod: "true"` (which
//! the functions' NetworkPolicy selects to deny egress) and `sopm.dev/instance: <id>`
//! (this SOPM instance) let cleanup find it: pods are deleted on retire, crash and
//! shutdown, and swept at start-up.
//!
//! The token is in the pod's environment rather than a per-pod Secret: a Secret costs
//! two more API calls per pod start, `secrets` rights in the executor's Role and its own
//! cleanup, and protects the token only from principals that may read pods in the
//! functions namespace but not Secrets; the token guards a port that the NetworkPolicy
//! already opens to SOPM's workers only, and whoever reads pod specs there is an
//! operator. The runner takes it out of the environment user code gets before any user
//! code loads.
//!
//! Nothing here has run against a real cluster: the tests use `tower-test` mock
//! services with the API reference's request and response shapes, and a small fake API
//! whose "pods" are real runner processes on loopback (see `docs/kubernetes.md`).

use sopm_core::Result;

use crate::sandbox::{SandboxExecutor, WarmPool};

pub mod cluster;
pub mod job;
mod job_log;
pub mod launcher;
pub mod settings;
pub mod spec;
pub mod status;
pub mod watch;

pub use job::KubernetesJobExecutor;
pub use launcher::{KubernetesLauncher, KubernetesPod};
pub use settings::KubernetesSettings;

/// Runs user functions in warm Kubernetes pods.
pub type KubernetesExecutor = SandboxExecutor<KubernetesLauncher>;

impl KubernetesSettings {
    /// Checks the settings and makes the warm-pod executor (no I/O: the cluster is
    /// contacted on first use). Stem cells are kept for the runners that have an image.
    pub fn build(self) -> Result<KubernetesExecutor> {
        self.check(&self.name)?;
        let mut pool = self.pool.clone();
        pool.stem_runners.retain(|r| self.images.contains_key(r));
        let config = pool.pool_config(&self.name, false);
        Ok(SandboxExecutor::new(WarmPool::new(
            KubernetesLauncher::new(self),
            config,
        )))
    }

    /// Checks the settings and makes the Job executor (no I/O).
    pub fn build_jobs(self) -> Result<KubernetesJobExecutor> {
        self.check(&self.job_name)?;
        Ok(KubernetesJobExecutor::new(self))
    }
}
