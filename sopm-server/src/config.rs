//! Server settings: defaults, overridden by a TOML file, then by `SOPM_*`
//! environment variables and command-line flags (clap reads both).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod cluster;

pub use cluster::{
    default_node_id, redacted, ClusterSettings, RegistryLocation, Role, DEFAULT_REPOSITORY,
};

/// Where jobs and functions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// SQLite in the data directory (durable; the default).
    Sqlite,
    /// In memory only (lost at exit; for tests and demos).
    Memory,
}

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No credentials: callers name their tenant with `user_id`. Only on a loopback
    /// address unless `allow_unauthenticated` is set. The default.
    #[default]
    Off,
    /// `Authorization: Bearer <key>` on every /api route but the catalog and the
    /// OpenAPI document; the key names the tenant. Keys: `sopm keys create`.
    #[value(name = "api_key", alias = "api-key")]
    ApiKey,
}

/// The bearer token `/metrics` asks for (`metrics_token`, `SOPM_METRICS_TOKEN`). Its
/// `Debug` form is redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct MetricsToken(String);

impl MetricsToken {
    /// A token; an empty one is no token.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        (!token.is_empty()).then_some(MetricsToken(token))
    }

    /// Whether `given` is the token, compared in time that does not depend on where
    /// they differ.
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        let (a, b) = (
            Sha256::digest(self.0.as_bytes()),
            Sha256::digest(given.as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

impl std::str::FromStr for MetricsToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MetricsToken::new(s).ok_or_else(|| "the metrics token is empty".to_string())
    }
}

/// The sandbox backends user functions may be built for and run in, by name (the
/// backend table of `sopm_backends::backends`).
pub const EXECUTOR_NAMES: &[&str] = sopm_backends::backends::BACKEND_NAMES;

/// The runtimes of user functions, as `[executors]` names them.
const RUNTIME_NAMES: [&str; 4] = ["python", "node", "shell", "binary"];

/// `[executors]`: which sandbox backend each user function is built for and runs in.
/// An upload's own `executor` field comes first, then a rule for its name, then its
/// runtime's default, then `process`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ExecutorSettings {
    /// `[executors.functions]`: backend by function name (of any tenant).
    #[serde(default)]
    pub functions: BTreeMap<String, String>,
    /// Backend by runtime (`python`, `node`, `shell`, `binary`): the keys of
    /// `[executors]` other than `functions`.
    #[serde(flatten)]
    pub runtimes: BTreeMap<String, String>,
}

impl ExecutorSettings {
    /// Adds one `--executors` / `SOPM_EXECUTORS` item: `RUNTIME=EXECUTOR` or
    /// `function.NAME=EXECUTOR`.
    pub fn add(&mut self, item: &str) -> Result<(), String> {
        let (key, executor) = item.split_once('=').ok_or_else(|| {
            format!(
                "--executors: expected RUNTIME=EXECUTOR or function.NAME=EXECUTOR, got '{item}'"
            )
        })?;
        let (key, executor) = (key.trim(), executor.trim().to_string());
        match key.strip_prefix("function.") {
            Some(function) => self.functions.insert(function.to_string(), executor),
            None => self.runtimes.insert(key.to_string(), executor),
        };
        Ok(())
    }

    /// Checks every key and backend name.
    pub fn validate(&self) -> Result<(), String> {
        let known = |key: &str, executor: &str| {
            if EXECUTOR_NAMES.contains(&executor) {
                Ok(())
            } else {
                Err(format!(
                    "executors.{key}: '{executor}' is not an executor ({})",
                    EXECUTOR_NAMES.join(", ")
                ))
            }
        };
        for (runtime, executor) in &self.runtimes {
            if !RUNTIME_NAMES.contains(&runtime.as_str()) {
                return Err(format!(
                    "executors: '{runtime}' is not a runtime ({}) nor the functions table",
                    RUNTIME_NAMES.join(", ")
                ));
            }
            known(runtime, executor)?;
        }
        for (function, executor) in &self.functions {
            sopm_core::registry::validate_function_name(function).map_err(|e| {
                format!("executors.functions: '{function}' is not a function name: {e}")
            })?;
            known(&format!("functions.{function}"), executor)?;
        }
        Ok(())
    }

    /// Whether a runtime default or a function rule names `executor`.
    pub fn names(&self, executor: &str) -> bool {
        self.runtimes
            .values()
            .chain(self.functions.values())
            .any(|e| e == executor)
    }
}

/// The `[jobs]` table: what one tenant may hold in the scheduler, and how long
/// finished job records are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Most jobs of one tenant running at once (default: three quarters of
    /// `max_concurrency`). Past it the tenant's jobs wait, even with slots free.
    pub max_running_per_tenant: Option<usize>,
    /// Most jobs of one tenant waiting for a slot (default: half of `queue_capacity`).
    /// Past it the tenant's submissions answer 429 `quota_exceeded`.
    pub max_queued_per_tenant: Option<usize>,
    /// How long finished job records are kept, in hours; 0 keeps them forever.
    pub retention_hours: u64,
    /// How often the expiry sweep runs, in seconds.
    pub expiry_interval_s: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            max_running_per_tenant: None,
            max_queued_per_tenant: None,
            retention_hours: 24 * 7,
            expiry_interval_s: 60,
        }
    }
}

impl JobSettings {
    /// How long finished job records are kept (zero: forever).
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours.saturating_mul(3600))
    }
}

/// `[policy]`: which sandbox backends tenants may ask for in an upload (its `executor`
/// field). Without a list, a tenant may ask only for a backend at least as isolating as
/// the one `[executors]` routes the upload to (`process` and `docker` share the host
/// kernel; `gvisor` and `docker-runsc` put a user-space kernel between).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Backends any tenant may ask for (an explicit grant, replacing the default rule).
    #[serde(default)]
    pub allowed_executors: Option<Vec<String>>,
    /// `[policy.tenants.NAME]`: one tenant's own list, replacing the server-wide one.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantPolicySettings>,
}

/// `[policy.tenants.NAME]`: what one tenant may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicySettings {
    /// Backends this tenant may ask for.
    pub allowed_executors: Vec<String>,
}

impl PolicySettings {
    /// Checks tenant names and backend names.
    pub fn validate(&self) -> Result<(), String> {
        let known = |key: &str, names: &[String]| {
            for n in names {
                if !EXECUTOR_NAMES.contains(&n.as_str()) {
                    return Err(format!(
                        "{key}: '{n}' is not an executor ({})",
                        EXECUTOR_NAMES.join(", ")
                    ));
                }
            }
            Ok(())
        };
        if let Some(all) = &self.allowed_executors {
            known("policy.allowed_executors", all)?;
        }
        for (tenant, t) in &self.tenants {
            sopm_core::TenantId::new(tenant)
                .map_err(|e| format!("policy.tenants: '{tenant}' is not a tenant name: {e}"))?;
            known(
                &format!("policy.tenants.{tenant}.allowed_executors"),
                &t.allowed_executors,
            )?;
        }
        Ok(())
    }

    /// The platform's policy (call [`validate`](Self::validate) first).
    pub fn executor_policy(&self) -> Result<sopm_core::policy::ExecutorPolicy, String> {
        let mut tenants = BTreeMap::new();
        for (tenant, t) in &self.tenants {
            let id = sopm_core::TenantId::new(tenant)
                .map_err(|e| format!("policy.tenants: '{tenant}': {e}"))?;
            tenants.insert(id, t.allowed_executors.iter().cloned().collect());
        }
        Ok(sopm_core::policy::ExecutorPolicy {
            allowed: self
                .allowed_executors
                .as_ref()
                .map(|v| v.iter().cloned().collect()),
            tenants,
        })
    }
}

/// Every server setting, with its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the database and artifacts.
    pub data_dir: PathBuf,
    /// Storage backend.
    pub storage: Storage,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most jobs running at once.
    pub max_concurrency: usize,
    /// Most jobs waiting; past it, 429.
    pub queue_capacity: usize,
    /// Default wait of a waiting execute call, in ms.
    pub default_wait_ms: u64,
    /// Longest wait a caller may ask for, in ms.
    pub max_wait_ms: u64,
    /// Time limit of a built-in call, in ms.
    pub builtin_timeout_ms: u64,
    /// Longest time limit of any job, in ms.
    pub max_timeout_ms: u64,
    /// How long shutdown lets running jobs finish, in ms.
    pub shutdown_grace_ms: u64,
    /// Per-tenant job quotas and the expiry of job records (`[jobs]`).
    pub jobs: JobSettings,
    /// SQLite `synchronous` mode: `full` (every acknowledged job survives power loss)
    /// or `normal` (survives a process crash; faster).
    pub sqlite_synchronous: String,
    /// Worker threads of the async runtime (0: one per core).
    pub worker_threads: usize,
    /// How callers authenticate.
    pub auth: AuthMode,
    /// Allows `auth = "off"` on an address other than loopback.
    pub allow_unauthenticated: bool,
    /// How long a resolved API key is remembered, in ms (a key revoked by
    /// `sopm keys revoke` on a running server stops working within this).
    pub key_cache_ms: u64,
    /// Largest JSON upload body (`POST /api/user-functions`), in bytes.
    pub max_upload_json_bytes: usize,
    /// Largest multipart upload body (with an archive), in bytes.
    pub max_upload_archive_bytes: usize,
    /// Most files in one upload.
    pub max_upload_files: usize,
    /// Largest total size of an upload's files, uncompressed, in bytes.
    pub max_upload_total_bytes: u64,
    /// Largest single file of an upload, uncompressed, in bytes.
    pub max_upload_file_bytes: u64,
    /// The sandbox executor of each user-function runtime (`python`, `node`,
    /// `shell`, `binary`) and of functions by name (`[executors.functions]`):
    /// `process` (bubblewrap, the default) or `gvisor` (runsc).
    pub executors: ExecutorSettings,
    /// The bearer token `GET /metrics` needs. Unset: `/metrics` is open with auth off
    /// and refused (403 `metrics_token_required`) with auth on.
    pub metrics_token: Option<MetricsToken>,
    /// Memory the bodies of requests in flight may take at once, in bytes: each POST
    /// reserves what its body can cost parsed (32 × its length for JSON; twice its
    /// length plus `max_upload_total_bytes` for a multipart upload) and waits while
    /// the budget is spent.
    pub max_body_memory_bytes: usize,
    /// Which backends tenants may ask for (`[policy]`).
    pub policy: PolicySettings,
    /// Per-tenant upload quotas and version retention (`[uploads]`).
    pub uploads: sopm_core::policy::UploadQuotas,
    /// Whether this process is one node of a cluster, and its part in it (`[cluster]`).
    pub cluster: ClusterSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("sopm-data"),
            storage: Storage::Sqlite,
            max_body_bytes: 4 << 20,
            max_concurrency: 1024,
            queue_capacity: 10_000,
            default_wait_ms: 30_000,
            max_wait_ms: 300_000,
            builtin_timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            shutdown_grace_ms: 10_000,
            jobs: JobSettings::default(),
            sqlite_synchronous: "full".into(),
            worker_threads: 0,
            auth: AuthMode::Off,
            allow_unauthenticated: false,
            key_cache_ms: 10_000,
            max_upload_json_bytes: 8 << 20,
            max_upload_archive_bytes: 64 << 20,
            max_upload_files: 2_000,
            max_upload_total_bytes: 50 << 20,
            max_upload_file_bytes: 20 << 20,
            executors: Default::default(),
            metrics_token: None,
            max_body_memory_bytes: 512 << 20,
            policy: Default::default(),
            uploads: Default::default(),
            cluster: Default::default(),
        }
    }
}

/// Flags of `sopm serve`; each also reads `SOPM_<NAME>`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with settings (flags and env override it).
    #[arg(long, env = "SOPM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SOPM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./sopm-data].
    #[arg(long, env = "SOPM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage backend [default: sqlite].
    #[arg(long, env = "SOPM_STORAGE", value_enum)]
    pub storage: Option<Storage>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long, env = "SOPM_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most jobs running at once [default: 1024].
    #[arg(long, env = "SOPM_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,
    /// Most jobs waiting before 429 [default: 10000].
    #[arg(long, env = "SOPM_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Default wait of an execute call in ms [default: 30000].
    #[arg(long, env = "SOPM_DEFAULT_WAIT_MS")]
    pub default_wait_ms: Option<u64>,
    /// Shutdown grace period in ms [default: 10000].
    #[arg(long, env = "SOPM_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// SQLite synchronous mode, full or normal [default: full].
    #[arg(long, env = "SOPM_SQLITE_SYNCHRONOUS")]
    pub sqlite_synchronous: Option<String>,
    /// Sandbox per runtime and per function name, e.g.
    /// `python=gvisor,node=process,function.resize=gvisor` [default: process for all].
    #[arg(long, env = "SOPM_EXECUTORS", value_delimiter = ',')]
    pub executors: Option<Vec<String>>,
    /// Backends any tenant may ask for in an upload, e.g. `gvisor,docker-runsc`
    /// [default: none weaker than the runtime's or function's executor].
    #[arg(long, env = "SOPM_ALLOWED_EXECUTORS", value_delimiter = ',')]
    pub allowed_executors: Option<Vec<String>>,
    /// Versions kept per user function; older ones are pruned [default: 10].
    #[arg(long, env = "SOPM_VERSIONS_KEPT")]
    pub versions_kept: Option<u32>,
    /// Worker threads (0: one per core) [default: 0].
    #[arg(long, env = "SOPM_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Authentication: off (callers name their tenant with user_id; loopback only) or
    /// api_key (Authorization: Bearer; keys from `sopm keys create`) [default: off].
    #[arg(long, env = "SOPM_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Serve without authentication on an address other than loopback.
    #[arg(long, env = "SOPM_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Largest JSON upload body in bytes [default: 8388608].
    #[arg(long, env = "SOPM_MAX_UPLOAD_JSON_BYTES")]
    pub max_upload_json_bytes: Option<usize>,
    /// Largest multipart (archive) upload body in bytes [default: 67108864].
    #[arg(long, env = "SOPM_MAX_UPLOAD_ARCHIVE_BYTES")]
    pub max_upload_archive_bytes: Option<usize>,
    /// The bearer token `GET /metrics` needs (with auth on, /metrics is refused
    /// without one).
    #[arg(long, env = "SOPM_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<MetricsToken>,
    /// Memory request bodies in flight may take at once, in bytes [default: 536870912].
    #[arg(long, env = "SOPM_MAX_BODY_MEMORY_BYTES")]
    pub max_body_memory_bytes: Option<usize>,
    /// This node's part in a cluster: all (API and workers), gateway (the API; work goes
    /// to the queue) or worker (runs queued jobs and builds) [default: all]. gateway and
    /// worker need --redis.
    #[arg(long, env = "SOPM_ROLE", value_enum)]
    pub role: Option<Role>,
    /// Redis the cluster shares its state through, e.g. `redis://10.0.0.5:6379/0`
    /// [default: none: one process, SQLite, local artifacts].
    #[arg(long = "redis", env = "SOPM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// OCI registry (and repository) the cluster keeps function artifacts in, e.g.
    /// `http://10.0.0.5:5000/sopm/functions`; needed with --redis.
    #[arg(long = "registry", env = "SOPM_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// This node's name in the cluster [default: HOSTNAME-PORT].
    #[arg(long, env = "SOPM_NODE_ID")]
    pub node_id: Option<String>,
    /// The HOST:PORT other people reach this node's HTTP port at, shown in the cluster's
    /// stats [default: the listen address].
    #[arg(long, env = "SOPM_ADVERTISE")]
    pub advertise: Option<String>,
    /// How long a job's lease lasts without renewal, in ms: a node that stops renewing
    /// (killed, cut off) loses its jobs to another this long after its last renewal
    /// [default: 10000].
    #[arg(long, env = "SOPM_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// How many times a job is started at most before it is dead-lettered [default: 3].
    #[arg(long, env = "SOPM_MAX_DELIVERIES")]
    pub max_deliveries: Option<u32>,
}

impl ServerConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Defaults, then the file, then env and flags.
    pub fn resolve(args: &ServeArgs) -> Result<Self, String> {
        let mut c = match &args.config {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
        };
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = args.$f.clone() { c.$f = v; } )* };
        }
        take!(
            listen,
            data_dir,
            storage,
            max_body_bytes,
            max_concurrency,
            queue_capacity,
            default_wait_ms,
            shutdown_grace_ms,
            sqlite_synchronous,
            worker_threads,
            auth,
            max_upload_json_bytes,
            max_upload_archive_bytes
        );
        if let Some(bytes) = args.max_body_memory_bytes {
            c.max_body_memory_bytes = bytes;
        }
        if let Some(token) = &args.metrics_token {
            c.metrics_token = Some(token.clone());
        }
        if args.allow_unauthenticated {
            c.allow_unauthenticated = true;
        }
        for item in args.executors.iter().flatten() {
            c.executors.add(item)?;
        }
        if let Some(list) = &args.allowed_executors {
            c.policy.allowed_executors = Some(list.iter().map(|n| n.trim().to_string()).collect());
        }
        if let Some(n) = args.versions_kept {
            c.uploads.versions_kept = n;
        }
        let cluster = &mut c.cluster;
        if let Some(role) = args.role {
            cluster.role = Some(role);
        }
        macro_rules! take_cluster {
            ($($f:ident),*) => { $( if let Some(v) = args.$f.clone() { cluster.$f = Some(v); } )* };
        }
        take_cluster!(
            redis_url,
            registry_url,
            node_id,
            advertise,
            lease_ms,
            max_deliveries
        );
        c.validate()?;
        Ok(c)
    }

    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), String> {
        self.cluster.validate()?;
        self.executors.validate()?;
        self.policy.validate()?;
        if let Some(problem) = self.uploads.problem() {
            return Err(format!("uploads: {problem}"));
        }
        if self.max_concurrency == 0 {
            return Err("max_concurrency must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".into());
        }
        if self.auth == AuthMode::Off
            && !self.listen.ip().is_loopback()
            && !self.allow_unauthenticated
        {
            return Err(format!(
                "refusing to serve {} without authentication: anyone who can reach it could run \
                 code as any tenant. Use --auth api_key (keys from `sopm keys create`), listen on \
                 127.0.0.1, or pass --allow-unauthenticated if this network is trusted",
                self.listen
            ));
        }
        if self.max_upload_files == 0
            || self.max_upload_file_bytes == 0
            || self.max_upload_total_bytes == 0
        {
            return Err("max_upload_files, max_upload_file_bytes and max_upload_total_bytes must be above zero".into());
        }
        if !matches!(self.sqlite_synchronous.as_str(), "full" | "normal") {
            return Err(format!(
                "sqlite_synchronous must be 'full' or 'normal', not '{}'",
                self.sqlite_synchronous
            ));
        }
        Ok(())
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sopm.toml");
        std::fs::write(&file, "queue_capacity = 7\nmax_concurrency = 3\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            max_concurrency: Some(5),
            ..Default::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.queue_capacity, 7);
        assert_eq!(c.max_concurrency, 5);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sopm.toml");
        std::fs::write(&file, "queue_capacty = 7\n").unwrap();
        let err = ServerConfig::from_file(&file).unwrap_err();
        assert!(err.contains("queue_capacty"), "{err}");
        let args = ServeArgs {
            max_concurrency: Some(0),
            ..Default::default()
        };
        assert!(ServerConfig::resolve(&args).is_err());
    }

    #[test]
    fn executors_come_by_runtime_and_by_function_from_the_file_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sopm.toml");
        std::fs::write(
            &file,
            "[executors]\npython = \"gvisor\"\n\n[executors.functions]\nresize = \"gvisor\"\nthumbs = \"process\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            executors: Some(vec![
                "node=gvisor".into(),
                "function.thumbs=gvisor".into(),
                " function.v1.2 = process ".into(),
            ]),
            ..Default::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&c.executors.runtimes),
            ["node=gvisor", "python=gvisor"]
        );
        assert_eq!(
            pairs(&c.executors.functions),
            ["resize=gvisor", "thumbs=gvisor", "v1.2=process"],
            "the flag overrides the file's rule for thumbs"
        );
        assert!(c.executors.names("gvisor") && c.executors.names("process"));

        for (bad, says) in [
            ("function.resize=vm", "'vm' is not an executor"),
            ("function.../x=gvisor", "not a function name"),
            ("cobol=process", "'cobol' is not a runtime"),
            ("python", "expected RUNTIME=EXECUTOR"),
        ] {
            let args = ServeArgs {
                executors: Some(vec![bad.into()]),
                ..Default::default()
            };
            let e = ServerConfig::resolve(&args).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        std::fs::write(&file, "[executors.functions]\nresize = 3\n").unwrap();
        assert!(ServerConfig::from_file(&file).is_err());
    }

    #[test]
    fn policy_and_upload_quotas_come_from_the_file_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sopm.toml");
        std::fs::write(
            &file,
            "[policy]\nallowed_executors = [\"gvisor\"]\n\n[policy.tenants.ops]\nallowed_executors = [\"process\", \"gvisor\"]\n\n[uploads]\nmax_functions_per_tenant = 5\nversions_kept = 3\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            versions_kept: Some(2),
            ..Default::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.uploads.max_functions_per_tenant, 5);
        assert_eq!(c.uploads.versions_kept, 2, "the flag beats the file");
        assert_eq!(
            c.uploads.max_builds_in_flight_per_tenant,
            sopm_core::policy::UploadQuotas::default().max_builds_in_flight_per_tenant
        );
        let p = c.policy.executor_policy().unwrap();
        let ops = sopm_core::TenantId::new("ops").unwrap();
        assert!(p.list_for(&ops).unwrap().contains("process"));
        assert_eq!(
            p.allowed.unwrap().into_iter().collect::<Vec<_>>(),
            ["gvisor"]
        );
        let flagged = ServeArgs {
            allowed_executors: Some(vec!["docker-runsc".into(), " gvisor".into()]),
            ..Default::default()
        };
        let c = ServerConfig::resolve(&flagged).unwrap();
        assert_eq!(
            c.policy.allowed_executors.unwrap(),
            ["docker-runsc", "gvisor"]
        );

        for (bad, says) in [
            (
                "[policy]\nallowed_executors = [\"vm\"]\n",
                "'vm' is not an executor",
            ),
            (
                "[policy.tenants.\"bad tenant!\"]\nallowed_executors = []\n",
                "not a tenant name",
            ),
            ("[uploads]\nversions_kept = 0\n", "at least 1"),
            ("[uploads]\nversions_kep = 3\n", "versions_kep"),
            ("[policy]\nallowed = []\n", "allowed"),
        ] {
            std::fs::write(&file, bad).unwrap();
            let args = ServeArgs {
                config: Some(file.clone()),
                ..Default::default()
            };
            let e = ServerConfig::resolve(&args).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn no_auth_is_refused_off_loopback_unless_allowed() {
        let args = ServeArgs {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            ..Default::default()
        };
        let err = ServerConfig::resolve(&args).unwrap_err();
        assert!(err.contains("without authentication"), "{err}");
        let allowed = ServeArgs {
            allow_unauthenticated: true,
            ..args.clone()
        };
        assert!(ServerConfig::resolve(&allowed).is_ok());
        let keyed = ServeArgs {
            auth: Some(AuthMode::ApiKey),
            ..args
        };
        assert!(ServerConfig::resolve(&keyed).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sopm.toml");
        std::fs::write(&file, "auth = \"api_key\"\nlisten = \"[::]:9000\"\n").unwrap();
        let c = ServerConfig::from_file(&file).unwrap();
        assert_eq!(c.auth, AuthMode::ApiKey);
        assert!(c.validate().is_ok());
    }

    fn cluster_error(args: ServeArgs) -> String {
        ServerConfig::resolve(&args).unwrap_err()
    }

    #[test]
    fn cluster_settings_come_from_the_file_then_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sopm.toml");
        std::fs::write(
            &file,
            "[cluster]\nrole = \"worker\"\nredis_url = \"redis://:hunter2@10.0.0.5:6379/0\"\nregistry_url = \"http://10.0.0.5:5000\"\nnode_id = \"w1\"\n",
        )
        .unwrap();
        let c = ServerConfig::resolve(&ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.cluster.role(), Role::Worker);
        assert!(c.cluster.is_clustered());
        assert_eq!(
            c.cluster.registry().unwrap().unwrap(),
            RegistryLocation {
                registry: "10.0.0.5:5000".into(),
                repository: DEFAULT_REPOSITORY.into(),
                plain_http: true,
            }
        );
        let shown = format!("{:?}", c.cluster);
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );

        let c = ServerConfig::resolve(&ServeArgs {
            config: Some(file),
            role: Some(Role::Gateway),
            registry_url: Some("https://registry.example.com/team/sopm-fns".into()),
            node_id: Some("gw-1".into()),
            advertise: Some("gw-1.internal:8080".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.cluster.role(), Role::Gateway, "the flag beats the file");
        assert_eq!(c.cluster.node_id.as_deref(), Some("gw-1"));
        let r = c.cluster.registry().unwrap().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.plain_http),
            ("registry.example.com", "team/sopm-fns", false)
        );
    }

    #[test]
    fn without_redis_nothing_is_clustered_and_cluster_settings_are_refused() {
        let c = ServerConfig::resolve(&ServeArgs::default()).unwrap();
        assert!(!c.cluster.is_clustered());
        assert_eq!(c.cluster.role(), Role::All);
        let all = ServerConfig::resolve(&ServeArgs {
            role: Some(Role::All),
            ..Default::default()
        })
        .unwrap();
        assert!(
            !all.cluster.is_clustered(),
            "--role all alone is one process"
        );

        for role in [Role::Gateway, Role::Worker] {
            let e = cluster_error(ServeArgs {
                role: Some(role),
                ..Default::default()
            });
            assert!(
                e.contains(&format!("--role {} needs --redis", role.as_str())),
                "{e}"
            );
        }
        for (args, says) in [
            (
                ServeArgs {
                    registry_url: Some("http://127.0.0.1:5000".into()),
                    ..Default::default()
                },
                "--registry is a cluster setting",
            ),
            (
                ServeArgs {
                    node_id: Some("a".into()),
                    ..Default::default()
                },
                "--node-id is a cluster setting",
            ),
            (
                ServeArgs {
                    advertise: Some("a:1".into()),
                    ..Default::default()
                },
                "--advertise is a cluster setting",
            ),
        ] {
            let e = cluster_error(args);
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn bad_cluster_urls_ids_and_addresses_are_refused_with_what_is_wrong() {
        let good = ServeArgs {
            role: Some(Role::Gateway),
            redis_url: Some("redis://127.0.0.1:6379/0".into()),
            registry_url: Some("http://127.0.0.1:5000/sopm/functions".into()),
            ..Default::default()
        };
        assert!(ServerConfig::resolve(&good).is_ok());
        for url in [
            "redis://user:pw@cache.internal:6380/2",
            "unix:///run/redis.sock",
            "redis://h",
        ] {
            let ok = ServeArgs {
                redis_url: Some(url.into()),
                ..good.clone()
            };
            assert!(ServerConfig::resolve(&ok).is_ok(), "{url}");
        }
        let cases: Vec<(ServeArgs, &str)> = vec![
            (
                ServeArgs {
                    registry_url: None,
                    ..good.clone()
                },
                "--redis needs --registry",
            ),
            (
                ServeArgs {
                    redis_url: Some("127.0.0.1:6379".into()),
                    ..good.clone()
                },
                "not a Redis URL",
            ),
            (
                ServeArgs {
                    redis_url: Some("http://127.0.0.1:6379".into()),
                    ..good.clone()
                },
                "the scheme is 'http'",
            ),
            (
                ServeArgs {
                    redis_url: Some("rediss://127.0.0.1:6379".into()),
                    ..good.clone()
                },
                "TLS to Redis (rediss://) is not in this build",
            ),
            (
                ServeArgs {
                    redis_url: Some("redis://:secret@127.0.0.1:6379/zero".into()),
                    ..good.clone()
                },
                "the database 'zero' is not a number",
            ),
            (
                ServeArgs {
                    registry_url: Some("ftp://127.0.0.1:5000".into()),
                    ..good.clone()
                },
                "the scheme is 'ftp'",
            ),
            (
                ServeArgs {
                    registry_url: Some("http://127.0.0.1:5000/Sopm".into()),
                    ..good.clone()
                },
                "'Sopm' is not a repository name",
            ),
            (
                ServeArgs {
                    registry_url: Some("http://u:p@127.0.0.1:5000".into()),
                    ..good.clone()
                },
                "credentials in the URL",
            ),
            (
                ServeArgs {
                    node_id: Some("a b".into()),
                    ..good.clone()
                },
                "not a node id",
            ),
            (
                ServeArgs {
                    advertise: Some("10.0.0.7".into()),
                    ..good.clone()
                },
                "is not HOST:PORT",
            ),
            (
                ServeArgs {
                    advertise: Some("10.0.0.7:0".into()),
                    ..good.clone()
                },
                "is not HOST:PORT",
            ),
        ];
        for (args, says) in cases {
            let e = cluster_error(args.clone());
            assert!(e.contains(says), "{args:?}: {e}");
            assert!(!e.contains("secret"), "a password is never shown: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sopm.toml");
        std::fs::write(&file, "[cluster]\nrole = \"leader\"\n").unwrap();
        assert!(ServerConfig::from_file(&file)
            .unwrap_err()
            .contains("leader"));
        std::fs::write(&file, "[cluster]\nredis = \"redis://h\"\n").unwrap();
        assert!(ServerConfig::from_file(&file)
            .unwrap_err()
            .contains("redis"));
    }

    #[test]
    fn the_default_node_id_is_a_valid_one() {
        let id = default_node_id(8080);
        assert!(id.ends_with("-8080"), "{id}");
        let args = ServeArgs {
            redis_url: Some("redis://h".into()),
            registry_url: Some("http://h:5000".into()),
            node_id: Some(id.clone()),
            ..Default::default()
        };
        assert!(ServerConfig::resolve(&args).is_ok(), "{id}");
    }
}
