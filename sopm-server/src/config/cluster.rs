//! `[cluster]`: whether this process is one node of a cluster (Redis for shared state,
//! an OCI registry for artifacts) and its part in it, with the checks that refuse a
//! setting that cannot work before anything starts.

use serde::Deserialize;

/// A node's part in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The API and the workers in one process (the only role that runs without Redis).
    #[default]
    All,
    /// The whole API: waiting built-in calls run here, every other job and every build
    /// goes to the queue. Needs no sandbox tools.
    Gateway,
    /// Runs queued jobs and builds of the backends this machine offers; serves only
    /// `/healthz`, `/readyz` and `/metrics`.
    Worker,
}

impl Role {
    /// Its name in settings, logs and the stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }

    /// Whether this node serves the API.
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }

    /// Whether this node runs sandboxes and builders (needs the sandbox tools).
    pub fn runs_sandboxes(self) -> bool {
        self != Role::Gateway
    }
}

/// `[cluster]` in the TOML file, or `--role`, `--redis`, `--registry`, `--node-id`,
/// `--advertise`. Without `redis_url` SOPM is one process (the embedded default) and
/// the rest must be unset. The `Debug` form hides a password in the Redis URL.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's part (default `all`).
    pub role: Option<Role>,
    /// `redis://[USER][:PASSWORD@]HOST[:PORT][/DB]` or `unix:///PATH` (no TLS in this
    /// build: keep Redis on a private network).
    pub redis_url: Option<String>,
    /// `http[s]://HOST[:PORT][/REPOSITORY]`: the OCI registry and repository of the
    /// cluster's function artifacts (repository default `sopm/functions`).
    pub registry_url: Option<String>,
    /// This node's name: letters, digits, `.`, `_`, `-`, at most 64 (default
    /// `HOSTNAME-PORT`).
    pub node_id: Option<String>,
    /// `HOST:PORT` people reach this node's HTTP port at (default: the listen address).
    pub advertise: Option<String>,
    /// How long a job's lease lasts without renewal, in ms (default 10000): a node that
    /// stops renewing (killed, cut off) loses its jobs to another this long after its
    /// last renewal. Between 500 and 600000.
    pub lease_ms: Option<u64>,
    /// How many times a job is started at most before it is dead-lettered (default 3).
    pub max_deliveries: Option<u32>,
}

/// Shortest and longest lease accepted, in ms.
const LEASE_MS: std::ops::RangeInclusive<u64> = 500..=600_000;

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("role", &self.role)
            .field("redis_url", &self.redis_url.as_deref().map(redacted))
            .field("registry_url", &self.registry_url)
            .field("node_id", &self.node_id)
            .field("advertise", &self.advertise)
            .field("lease_ms", &self.lease_ms)
            .field("max_deliveries", &self.max_deliveries)
            .finish()
    }
}

/// Where a cluster keeps its function artifacts: an OCI registry and a repository in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLocation {
    /// `HOST[:PORT]` as OCI references name a registry.
    pub registry: String,
    /// The repository, e.g. `sopm/functions`.
    pub repository: String,
    /// Whether the registry speaks plain HTTP (`http://`), not HTTPS.
    pub plain_http: bool,
}

/// The repository of artifacts when the registry URL names none.
pub const DEFAULT_REPOSITORY: &str = "sopm/functions";

impl ClusterSettings {
    /// Whether this process is a node of a cluster (a Redis URL is set).
    pub fn is_clustered(&self) -> bool {
        self.redis_url.is_some()
    }

    /// This node's part (`all` unless set).
    pub fn role(&self) -> Role {
        self.role.unwrap_or_default()
    }

    /// Refuses settings that cannot work: a gateway or worker without Redis, Redis
    /// without a registry, cluster-only settings without Redis, malformed URLs, node
    /// ids and addresses.
    pub fn validate(&self) -> Result<(), String> {
        let Some(redis) = &self.redis_url else {
            if let Some(role @ (Role::Gateway | Role::Worker)) = self.role {
                return Err(format!(
                    "--role {} needs --redis URL (SOPM_REDIS_URL, [cluster] redis_url): the \
                     nodes of a cluster share jobs, functions and keys through Redis. Without \
                     Redis, run one process with the default role (all)",
                    role.as_str()
                ));
            }
            for (set, what) in [
                (self.registry_url.is_some(), "--registry"),
                (self.node_id.is_some(), "--node-id"),
                (self.advertise.is_some(), "--advertise"),
                (self.lease_ms.is_some(), "--lease-ms"),
                (self.max_deliveries.is_some(), "--max-deliveries"),
            ] {
                if set {
                    return Err(format!(
                        "{what} is a cluster setting and needs --redis URL too; without Redis \
                         SOPM is one process that keeps its artifacts in its data directory"
                    ));
                }
            }
            return Ok(());
        };
        check_redis_url(redis)?;
        let Some(registry) = &self.registry_url else {
            return Err(format!(
                "--redis needs --registry URL too (SOPM_REGISTRY_URL, [cluster] registry_url), \
                 e.g. http://127.0.0.1:5000/sopm/functions: a function built on one node runs \
                 on others, so every node ({}) must reach its artifacts",
                self.role().as_str()
            ));
        };
        self.registry_location(registry)?;
        if let Some(id) = &self.node_id {
            check_node_id(id)?;
        }
        if let Some(addr) = &self.advertise {
            check_advertise(addr)?;
        }
        if let Some(ms) = self.lease_ms {
            if !LEASE_MS.contains(&ms) {
                return Err(format!(
                    "--lease-ms {ms}: expected {} to {} (ms)",
                    LEASE_MS.start(),
                    LEASE_MS.end()
                ));
            }
        }
        if self.max_deliveries == Some(0) {
            return Err("--max-deliveries 0: a job must be started at least once".into());
        }
        Ok(())
    }

    /// The registry URL, parsed (`None` without one).
    pub fn registry(&self) -> Result<Option<RegistryLocation>, String> {
        self.registry_url
            .as_deref()
            .map(|u| self.registry_location(u))
            .transpose()
    }

    fn registry_location(&self, text: &str) -> Result<RegistryLocation, String> {
        let bad = |why: String| {
            format!(
                "--registry: '{text}' is not a registry URL \
                 (http[s]://HOST[:PORT][/REPOSITORY]): {why}"
            )
        };
        let url = url::Url::parse(text).map_err(|e| bad(e.to_string()))?;
        let plain_http = match url.scheme() {
            "http" => true,
            "https" => false,
            other => return Err(bad(format!("the scheme is '{other}', not http or https"))),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("it names no host".into()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the URL are not supported".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it has a query or fragment".into()));
        }
        let registry = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let path = url.path().trim_matches('/');
        let repository = if path.is_empty() {
            DEFAULT_REPOSITORY.to_string()
        } else {
            path.to_string()
        };
        // The OCI distribution grammar of a repository name.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(format!(
                "'{repository}' is not a repository name (lowercase letters, digits, '.', '_', \
                 '-', components separated by '/')"
            )));
        }
        Ok(RegistryLocation {
            registry,
            repository,
            plain_http,
        })
    }
}

/// The Redis URL with its password, if any, replaced by `***` (for logs and messages).
pub fn redacted(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => text.to_string(),
        Err(_) => "<not a URL>".to_string(),
    }
}

fn check_redis_url(text: &str) -> Result<(), String> {
    let shown = redacted(text);
    let bad = |why: String| {
        format!(
            "--redis: '{shown}' is not a Redis URL this build can use \
             (redis://[:PASSWORD@]HOST[:PORT][/DB] or unix:///PATH): {why}"
        )
    };
    let url = url::Url::parse(text).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "rediss" => {
            return Err(bad(
                "TLS to Redis (rediss://) is not in this build; keep Redis on a private \
                 network and use redis://"
                    .into(),
            ))
        }
        "redis" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(bad("it names no host".into()));
            }
            let db = url.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(bad(format!("the database '{db}' is not a number")));
            }
        }
        "unix" | "redis+unix" => {
            if url.path().is_empty() || url.path() == "/" {
                return Err(bad("it names no socket path".into()));
            }
        }
        other => return Err(bad(format!("the scheme is '{other}', not redis or unix"))),
    }
    Ok(())
}

fn check_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--node-id: '{}' is not a node id (1 to 64 letters, digits, '.', '_' or '-')",
            sopm_core::types::truncate_for_message(id)
        ))
    }
}

fn check_advertise(addr: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "--advertise: '{}' is not HOST:PORT (e.g. 10.0.0.7:8080 or node-a.internal:8080)",
            sopm_core::types::truncate_for_message(addr)
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && !host.contains(['/', ' ', '@', '?', '#'])
        && (host.starts_with('[') == host.ends_with(']'));
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

/// The default node id: this machine's host name and the port it listens on.
pub fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{port}")
}
