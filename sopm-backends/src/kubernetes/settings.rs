//! [`KubernetesSettings`]: how the `kubernetes` and `kubernetes-job` executors reach the
//! cluster and shape their pods (namespace, runtime class, runner images by digest, the
//! instance label, the runner port, lifetimes, CPU and memory), read from `SOPM_*`
//! environment variables like every sandbox backend's settings, and checked without I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sopm_core::{Error, Result};

use crate::host::vars::parse_var;
use crate::host::PoolSettings;
use crate::sandbox::RunnerKind;

/// The namespace function pods run in unless the settings say otherwise.
pub const DEFAULT_NAMESPACE: &str = "sopm-functions";

/// The RuntimeClass of function pods unless the settings say otherwise.
pub const DEFAULT_RUNTIME_CLASS: &str = "gvisor";

/// The port a pod's runner listens on unless the settings say otherwise.
pub const DEFAULT_RUNNER_PORT: u16 = 7070;

/// The largest init or invoke frame a Job carries in one environment variable: under
/// Linux's 128 KiB limit on one environment string, and far under the API server's
/// 1.5 MiB object limit for the Job and its pod together.
pub const MAX_JOB_FRAME_BYTES: usize = 96 * 1024;

/// Gives each pod its own runner port (for pods that share one address, as the test
/// API's local "pods" do).
pub type PortPerPod = Arc<dyn Fn() -> u16 + Send + Sync>;

/// Settings of the Kubernetes executors. `new()` gives the defaults; `from_env()` reads
/// the variables listed there.
#[derive(Clone)]
pub struct KubernetesSettings {
    pub(crate) name: String,
    pub(crate) job_name: String,
    pub(crate) namespace: String,
    pub(crate) runtime_class: Option<String>,
    pub(crate) images: BTreeMap<RunnerKind, String>,
    pub(crate) instance: String,
    pub(crate) runner_port: u16,
    pub(crate) port_per_pod: Option<PortPerPod>,
    pub(crate) listen_host: String,
    pub(crate) pod_ttl: Duration,
    pub(crate) cpu_millis: u64,
    pub(crate) cpu_request_millis: u64,
    pub(crate) memory_overhead_mb: u64,
    pub(crate) job_grace: Duration,
    pub(crate) job_ttl: Duration,
    pub(crate) pool: PoolSettings,
    pub(crate) client: Option<kube::Client>,
}

impl fmt::Debug for KubernetesSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesSettings")
            .field("name", &self.name)
            .field("job_name", &self.job_name)
            .field("namespace", &self.namespace)
            .field("runtime_class", &self.runtime_class)
            .field("images", &self.images)
            .field("instance", &self.instance)
            .field("runner_port", &self.runner_port)
            .field("port_per_pod", &self.port_per_pod.is_some())
            .field("pod_ttl", &self.pod_ttl)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self::new()
    }
}

impl KubernetesSettings {
    /// Defaults: executors `kubernetes` and `kubernetes-job`, namespace `sopm-functions`,
    /// RuntimeClass `gvisor`, no runner images (each runner needs one, by digest), the
    /// instance id from `SOPM_NODE_ID` or the host name, runner port 7070, pods ended by
    /// Kubernetes after one hour whatever happens, one CPU per pod (0.1 requested), 64 MiB
    /// of memory on top of the function's for the runner itself, 30 s for a Job's pod to
    /// start, finished Jobs kept 5 minutes, one stem cell per runner that has an image,
    /// 60 s per pod start.
    pub fn new() -> Self {
        KubernetesSettings {
            name: "kubernetes".into(),
            job_name: "kubernetes-job".into(),
            namespace: DEFAULT_NAMESPACE.into(),
            runtime_class: Some(DEFAULT_RUNTIME_CLASS.into()),
            images: BTreeMap::new(),
            instance: default_instance(),
            runner_port: DEFAULT_RUNNER_PORT,
            port_per_pod: None,
            listen_host: "0.0.0.0".into(),
            pod_ttl: Duration::from_secs(3600),
            cpu_millis: 1000,
            cpu_request_millis: 100,
            memory_overhead_mb: 64,
            job_grace: Duration::from_secs(30),
            job_ttl: Duration::from_secs(300),
            pool: PoolSettings::new(RunnerKind::ALL)
                .with_stem_cells(1)
                .with_boot_timeout(Duration::from_secs(60)),
            client: None,
        }
    }

    /// Defaults overridden by environment variables: `SOPM_KUBERNETES_NAMESPACE`,
    /// `SOPM_KUBERNETES_RUNTIME_CLASS` (empty: no `runtimeClassName`, the cluster's default
    /// runtime), `SOPM_KUBERNETES_IMAGE_PYTHON`, `SOPM_KUBERNETES_IMAGE_NODE`,
    /// `SOPM_KUBERNETES_IMAGE_STATIC` (each `repository@sha256:<64 hex>`),
    /// `SOPM_KUBERNETES_INSTANCE`, `SOPM_KUBERNETES_RUNNER_PORT`,
    /// `SOPM_KUBERNETES_RUNNER_LISTEN_HOST` (`0.0.0.0`; `::` on an IPv6-only cluster),
    /// `SOPM_KUBERNETES_POD_TTL_SECS`, `SOPM_KUBERNETES_CPU_MILLIS`,
    /// `SOPM_KUBERNETES_CPU_REQUEST_MILLIS`, `SOPM_KUBERNETES_MEMORY_OVERHEAD_MB`,
    /// `SOPM_KUBERNETES_JOB_GRACE_SECS`, `SOPM_KUBERNETES_JOB_TTL_SECS`,
    /// `SOPM_KUBERNETES_BOOT_TIMEOUT_SECS`, and the pool variables of
    /// [`PoolSettings::with_vars`]. The cluster is found by `kube::Config::infer`
    /// (`KUBECONFIG` or `~/.kube/config`, else the in-cluster service account). An
    /// unparsable value is `invalid_input`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) with the variables of `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut s = Self::new();
        let set = |k: &str| var(k).map(|v| v.trim().to_string());
        if let Some(ns) = set("SOPM_KUBERNETES_NAMESPACE").filter(|v| !v.is_empty()) {
            s.namespace = ns;
        }
        if let Some(rc) = set("SOPM_KUBERNETES_RUNTIME_CLASS") {
            s.runtime_class = (!rc.is_empty()).then_some(rc);
        }
        for (key, kind) in [
            ("SOPM_KUBERNETES_IMAGE_PYTHON", RunnerKind::Python),
            ("SOPM_KUBERNETES_IMAGE_NODE", RunnerKind::Node),
            ("SOPM_KUBERNETES_IMAGE_STATIC", RunnerKind::Static),
        ] {
            if let Some(image) = set(key).filter(|v| !v.is_empty()) {
                s.images.insert(kind, image);
            }
        }
        if let Some(id) = set("SOPM_KUBERNETES_INSTANCE").filter(|v| !v.is_empty()) {
            s.instance = id;
        }
        if let Some(port) = parse_var(&var, "SOPM_KUBERNETES_RUNNER_PORT")? {
            s.runner_port = port;
        }
        if let Some(host) = set("SOPM_KUBERNETES_RUNNER_LISTEN_HOST").filter(|v| !v.is_empty()) {
            s.listen_host = host;
        }
        if let Some(secs) = parse_var(&var, "SOPM_KUBERNETES_POD_TTL_SECS")? {
            s.pod_ttl = Duration::from_secs(secs);
        }
        if let Some(m) = parse_var(&var, "SOPM_KUBERNETES_CPU_MILLIS")? {
            s.cpu_millis = m;
        }
        if let Some(m) = parse_var(&var, "SOPM_KUBERNETES_CPU_REQUEST_MILLIS")? {
            s.cpu_request_millis = m;
        }
        if let Some(mb) = parse_var(&var, "SOPM_KUBERNETES_MEMORY_OVERHEAD_MB")? {
            s.memory_overhead_mb = mb;
        }
        if let Some(secs) = parse_var(&var, "SOPM_KUBERNETES_JOB_GRACE_SECS")? {
            s.job_grace = Duration::from_secs(secs);
        }
        if let Some(secs) = parse_var(&var, "SOPM_KUBERNETES_JOB_TTL_SECS")? {
            s.job_ttl = Duration::from_secs(secs);
        }
        if let Some(secs) = parse_var(&var, "SOPM_KUBERNETES_BOOT_TIMEOUT_SECS")? {
            s.pool = s.pool.with_boot_timeout(Duration::from_secs(secs));
        }
        s.pool = s.pool.with_vars(var)?;
        Ok(s)
    }

    /// The warm executor's name (default `kubernetes`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The Job executor's name (default `kubernetes-job`).
    pub fn with_job_name(mut self, name: impl Into<String>) -> Self {
        self.job_name = name.into();
        self
    }

    /// The namespace of function pods and Jobs.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The RuntimeClass of function pods (`None`: the cluster's default runtime, without
    /// gVisor's kernel between the function and the node).
    pub fn with_runtime_class(mut self, class: Option<String>) -> Self {
        self.runtime_class = class;
        self
    }

    /// The image of a runner's pods, `repository@sha256:<64 hex>`.
    pub fn with_image(mut self, runner: RunnerKind, image: impl Into<String>) -> Self {
        self.images.insert(runner, image.into());
        self
    }

    /// The id of this SOPM instance in the `sopm.dev/instance` label of its pods.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// The port every pod's runner listens on.
    pub fn with_runner_port(mut self, port: u16) -> Self {
        self.runner_port = port;
        self
    }

    /// A port per pod instead of one for all, from `next` (for pods that share one
    /// address: the test API runs its "pods" as local processes on 127.0.0.1).
    pub fn with_port_per_pod(mut self, next: PortPerPod) -> Self {
        self.port_per_pod = Some(next);
        self
    }

    /// The address the runner binds inside its pod (default `0.0.0.0`).
    pub fn with_listen_host(mut self, host: impl Into<String>) -> Self {
        self.listen_host = host.into();
        self
    }

    /// How long a warm pod may live at most (its `activeDeadlineSeconds`); the pool stops
    /// reusing it past nine tenths of that.
    pub fn with_pod_ttl(mut self, ttl: Duration) -> Self {
        self.pod_ttl = ttl;
        self
    }

    /// The CPU limit of each pod, in thousandths of a core.
    pub fn with_cpu_millis(mut self, millis: u64) -> Self {
        self.cpu_millis = millis;
        self
    }

    /// Memory on top of the function's own limit, for the runner itself.
    pub fn with_memory_overhead_mb(mut self, mb: u64) -> Self {
        self.memory_overhead_mb = mb;
        self
    }

    /// Time a Job gets beyond its function's timeout (for its pod to start).
    pub fn with_job_grace(mut self, grace: Duration) -> Self {
        self.job_grace = grace;
        self
    }

    /// How long a finished Job is kept (`ttlSecondsAfterFinished`).
    pub fn with_job_ttl(mut self, ttl: Duration) -> Self {
        self.job_ttl = ttl;
        self
    }

    /// The warm-pool settings.
    pub fn with_pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }

    /// The warm-pool settings, to adjust.
    pub fn pool_mut(&mut self) -> &mut PoolSettings {
        &mut self.pool
    }

    /// The API client to use instead of `kube::Config::infer` (tests: a mock service, or
    /// a client of a test API server).
    pub fn with_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The `sopm.dev/instance` label value of this instance's pods.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The namespace of function pods and Jobs.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Why these settings cannot work, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let dns_label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        let label_value = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
        };
        for name in [&self.name, &self.job_name] {
            if !dns_label(name) {
                return Some(format!(
                    "executor name '{name}' must be lower-case letters, digits and '-'"
                ));
            }
        }
        if !dns_label(&self.namespace) {
            return Some(format!("namespace '{}' is not a DNS label", self.namespace));
        }
        if let Some(rc) = &self.runtime_class {
            if !label_value(rc) {
                return Some(format!("runtime class '{rc}' is not a valid name"));
            }
        }
        if !label_value(&self.instance) {
            return Some(format!(
                "instance '{}' must be a label value (letters, digits, '-', '_', '.'; 63 at most)",
                self.instance
            ));
        }
        for (runner, image) in &self.images {
            if !is_pinned(image) {
                return Some(format!(
                    "the {} runner image '{image}' must be referenced by digest (repository@sha256:<64 hex>)",
                    runner.as_str()
                ));
            }
        }
        if self.listen_host.parse::<std::net::IpAddr>().is_err() {
            return Some(format!(
                "runner listen host '{}' must be an IP address",
                self.listen_host
            ));
        }
        if self.runner_port == 0 {
            return Some("runner port must not be 0".into());
        }
        if self.pod_ttl < Duration::from_secs(60) {
            return Some("pod TTL must be at least 60 s".into());
        }
        if !(10..=1_024_000).contains(&self.cpu_millis) || self.cpu_request_millis > self.cpu_millis
        {
            return Some(
                "cpu_millis must be between 10 and 1024000, and the request not above it".into(),
            );
        }
        self.pool.problem().map(String::from)
    }

    pub(crate) fn check(&self, executor: &str) -> Result<()> {
        match self.problem() {
            Some(p) => Err(Error::invalid(format!("{executor} executor: {p}"))),
            None => Ok(()),
        }
    }
}

/// Whether `image` names its content by digest: `repository@sha256:<64 lower-case hex>`.
pub fn is_pinned(image: &str) -> bool {
    let Some((repo, digest)) = image.rsplit_once("@sha256:") else {
        return false;
    };
    !repo.is_empty()
        && digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `SOPM_NODE_ID`, else the host name (a pod's name in a cluster), else a random id; made
/// into a label value.
fn default_instance() -> String {
    let raw = std::env::var("SOPM_NODE_ID")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let mut id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    id = id
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if id.is_empty() {
        id = format!("sopm-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn images_must_be_pinned_by_digest() {
        assert!(is_pinned(&format!(
            "registry.example/sopm/python@sha256:{DIGEST}"
        )));
        assert!(!is_pinned("registry.example/sopm/python:3.12"));
        assert!(!is_pinned("python@sha256:abc"));
        assert!(!is_pinned(&format!("@sha256:{DIGEST}")));
        let s = KubernetesSettings::new().with_image(RunnerKind::Python, "python:3.12");
        assert!(s.problem().unwrap().contains("by digest"));
    }

    #[test]
    fn from_vars_reads_overrides_and_refuses_bad_values() {
        let image = format!("r.example/node@sha256:{DIGEST}");
        let vars = |k: &str| match k {
            "SOPM_KUBERNETES_NAMESPACE" => Some("fns".to_string()),
            "SOPM_KUBERNETES_RUNTIME_CLASS" => Some(String::new()),
            "SOPM_KUBERNETES_IMAGE_NODE" => Some(image.clone()),
            "SOPM_KUBERNETES_INSTANCE" => Some("worker-1".to_string()),
            "SOPM_KUBERNETES_POD_TTL_SECS" => Some("600".to_string()),
            "SOPM_STEM_CELLS" => Some("3".to_string()),
            _ => None,
        };
        let s = KubernetesSettings::from_vars(vars).unwrap();
        assert_eq!(s.namespace, "fns");
        assert_eq!(s.runtime_class, None);
        assert_eq!(s.images[&RunnerKind::Node], image);
        assert_eq!(s.instance, "worker-1");
        assert_eq!(s.pod_ttl, Duration::from_secs(600));
        assert_eq!(s.pool.stem_cells, 3);
        assert_eq!(s.problem(), None);
        let defaults = KubernetesSettings::from_vars(|_| None).unwrap();
        assert_eq!(defaults.namespace, DEFAULT_NAMESPACE);
        assert_eq!(
            defaults.runtime_class.as_deref(),
            Some(DEFAULT_RUNTIME_CLASS)
        );
        let e = KubernetesSettings::from_vars(|k| {
            (k == "SOPM_KUBERNETES_RUNNER_PORT").then(|| "seventy".to_string())
        })
        .unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        for bad in [
            KubernetesSettings::new().with_namespace("Has_Caps"),
            KubernetesSettings::new().with_instance("-x"),
            KubernetesSettings::new().with_runner_port(0),
            KubernetesSettings::new().with_pod_ttl(Duration::from_secs(5)),
            KubernetesSettings::new().with_cpu_millis(1),
        ] {
            assert!(bad.problem().is_some(), "{bad:?}");
        }
    }
}
