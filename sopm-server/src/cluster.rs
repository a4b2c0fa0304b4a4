//! A cluster node (`sopm serve --redis URL --registry URL --role …`): its plan (role,
//! id, address, where Redis and the registry are) and how its platform is assembled —
//! registry, job store and keys in Redis, artifacts in the OCI registry, the Redis
//! scheduler, and the backends its role runs (a gateway only routes to them).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{default_node_id, RegistryLocation, Role, ServerConfig};
use crate::server::Services;

/// What a cluster node is, decided from the settings and the bound address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Its part.
    pub role: Role,
    /// Its id (`--node-id`, else `HOSTNAME-PORT`).
    pub node_id: String,
    /// The `HOST:PORT` it is reached at (`--advertise`, else the bound address).
    pub address: String,
    /// The Redis URL (may hold a password; never logged as is).
    pub redis_url: String,
    /// The registry and repository of artifacts.
    pub registry: RegistryLocation,
    /// This node's cache of artifacts pulled from the registry.
    pub artifact_cache: PathBuf,
}

impl NodePlan {
    /// The plan of a node listening on `bound`, or `None` when the settings name no
    /// Redis (the embedded default). Settings that fail [`ServerConfig::validate`] are
    /// refused here too.
    pub fn new(c: &ServerConfig, bound: SocketAddr) -> Result<Option<NodePlan>, String> {
        let cluster = &c.cluster;
        let Some(redis_url) = cluster.redis_url.clone() else {
            return Ok(None);
        };
        cluster.validate()?;
        let registry = cluster
            .registry()?
            .ok_or("--redis needs --registry URL too")?;
        Ok(Some(NodePlan {
            role: cluster.role(),
            node_id: cluster
                .node_id
                .clone()
                .unwrap_or_else(|| default_node_id(bound.port())),
            address: cluster
                .advertise
                .clone()
                .unwrap_or_else(|| bound.to_string()),
            redis_url,
            registry,
            artifact_cache: c.data_dir.join("artifact-cache"),
        }))
    }

    /// The backends of the table a gateway routes to without running them: every one
    /// SOPM knows; a job for a backend no live worker runs waits in its stream until
    /// one does.
    pub fn remote_backends(&self) -> &'static [&'static str] {
        if self.role == Role::Gateway {
            sopm_backends::backends::BACKEND_NAMES
        } else {
            &[]
        }
    }
}

/// Builds a cluster node's services. Connects to Redis first, retrying while it is
/// unreachable (a node may start before Redis); a setting Redis refuses is an error.
/// Registry, job store and keys are in Redis, artifacts in the OCI registry (pulled
/// into `<data_dir>/artifact-cache`), the scheduler is the Redis one; a gateway
/// routes to every backend without running any, a worker runs the backends this host
/// offers, `all` both.
#[cfg(feature = "cluster")]
pub async fn build_node(c: &ServerConfig, plan: &NodePlan) -> Result<Services, String> {
    use std::sync::Arc;
    use std::time::Duration;

    use sopm_backends::artifacts::{OciArtifactStore, OciConfig};
    use sopm_backends::redis::queue::{NodeRole, RedisSchedulerConfig};
    use sopm_backends::redis::{
        RedisConfig, RedisJobStore, RedisKeyStore, RedisRegistry, RedisScheduler,
    };
    use sopm_core::policy::Isolation;
    use sopm_core::{CachedKeyStore, KeyStore};

    crate::data_dir::make_private(&c.data_dir)?;
    let redis = connect(&RedisConfig::new(plan.redis_url.clone())).await?;
    let registry_addr = if plan.registry.plain_http {
        format!("http://{}", plan.registry.registry)
    } else {
        plan.registry.registry.clone()
    };
    let mut oci = OciConfig::new(registry_addr, plan.artifact_cache.clone())
        .with_repository(plan.registry.repository.clone());
    if let (Ok(user), Ok(password)) = (
        std::env::var("SOPM_REGISTRY_USERNAME"),
        std::env::var("SOPM_REGISTRY_PASSWORD"),
    ) {
        oci = oci.with_basic_auth(user, password);
    }
    let artifacts = OciArtifactStore::new(oci).map_err(|e| format!("--registry: {e}"))?;
    let mut builder = crate::server::base_builder(c)?
        .with_registry(Arc::new(RedisRegistry::new(redis.clone())))
        .with_job_store(Arc::new(RedisJobStore::new(redis.clone())))
        .with_artifact_store(Arc::new(artifacts));

    #[cfg(feature = "process")]
    let (mut local_builder, mut early) = (None, Vec::new());
    if plan.role.runs_sandboxes() {
        #[cfg(feature = "process")]
        {
            let local = Arc::new(
                sopm_backends::LocalBuilderConfig::from_env(c.data_dir.join("artifacts"))
                    .and_then(|config| config.build())
                    .map_err(|e| format!("local builder: {e}"))?,
            );
            let (with_sandboxes, started) = crate::server::add_sandboxes(c, builder, &local)?;
            builder = with_sandboxes;
            local_builder = Some(local);
            early = started;
        }
        #[cfg(not(feature = "process"))]
        return Err(format!(
            "--role {}: this sopm was built without sandbox backends (feature `process`)",
            plan.role.as_str()
        ));
    } else {
        for name in plan.remote_backends() {
            builder = builder.with_remote_backend(*name, Isolation::assumed_for(name));
        }
        builder = crate::server::add_routing_rules(c, builder, plan.remote_backends())?;
    }

    let mut scheduler = RedisSchedulerConfig::new(plan.node_id.clone());
    scheduler.role = match plan.role {
        Role::All => NodeRole::All,
        Role::Gateway => NodeRole::Gateway,
        Role::Worker => NodeRole::Worker,
    };
    scheduler.address = plan.address.clone();
    scheduler.max_concurrency = c.max_concurrency;
    scheduler.queue_capacity = c.queue_capacity;
    scheduler.max_timeout = Duration::from_millis(c.max_timeout_ms);
    if let Some(ms) = c.cluster.lease_ms {
        scheduler.queue.lease = Duration::from_millis(ms);
    }
    if let Some(n) = c.cluster.max_deliveries {
        scheduler.queue.max_deliveries = n;
    }
    let queue = redis.clone();
    builder = builder.with_scheduler(move |parts| {
        Arc::new(RedisScheduler::new(queue, scheduler, parts)) as Arc<dyn sopm_core::Scheduler>
    });
    let platform = builder.build().map_err(|e| e.to_string())?;
    let keys: Arc<dyn KeyStore> = Arc::new(CachedKeyStore::new(
        Arc::new(RedisKeyStore::new(redis.clone())),
        Duration::from_millis(c.key_cache_ms),
    ));
    let probe = redis.clone();
    let readiness = crate::readiness::ReadinessCheck::new("Redis", move || {
        let probe = probe.clone();
        async move { probe.ping().await }
    });
    Ok(Services {
        platform,
        keys,
        #[cfg(feature = "process")]
        local_builder,
        #[cfg(feature = "process")]
        early,
        readiness: Some(readiness),
    })
}

/// The key store of the cluster whose Redis is at `redis_url` (for `sopm keys`).
#[cfg(feature = "cluster")]
pub async fn open_key_store(
    redis_url: &str,
) -> Result<std::sync::Arc<dyn sopm_core::KeyStore>, String> {
    let config = sopm_backends::redis::RedisConfig::new(redis_url);
    let conn = config
        .connect()
        .await
        .map_err(|e| format!("--redis {}: {e}", config.redacted_url()))?;
    Ok(std::sync::Arc::new(
        sopm_backends::redis::RedisKeyStore::new(conn),
    ))
}

/// Without the `cluster` feature there is no Redis key store: says how to get one.
#[cfg(not(feature = "cluster"))]
pub async fn open_key_store(_: &str) -> Result<std::sync::Arc<dyn sopm_core::KeyStore>, String> {
    Err(
        "--redis: this sopm was built without cluster support; build it with \
         `cargo build --release -p sopm-server --features cluster`"
            .into(),
    )
}

/// Connects to Redis, retrying every second or so while it is unreachable.
#[cfg(feature = "cluster")]
async fn connect(
    config: &sopm_backends::redis::RedisConfig,
) -> Result<sopm_backends::redis::RedisConnection, String> {
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        match config.connect().await {
            Ok(conn) => return Ok(conn),
            Err(sopm_core::Error::Unavailable(why)) => {
                tracing::warn!(redis = %config.redacted_url(), error = %why,
                    "Redis is unreachable; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(format!("--redis {}: {e}", config.redacted_url())),
        }
    }
}

/// Without the `cluster` feature a node cannot be built: says how to get one.
#[cfg(not(feature = "cluster"))]
pub async fn build_node(_: &ServerConfig, plan: &NodePlan) -> Result<Services, String> {
    Err(format!(
        "--redis (role {}): this sopm was built without cluster support; build it with \
         `cargo build --release -p sopm-server --features cluster`",
        plan.role.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterSettings;

    fn config(cluster: ClusterSettings) -> ServerConfig {
        ServerConfig {
            cluster,
            data_dir: "/var/lib/sopm".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_is_named_and_placed_from_the_settings_or_its_host_and_port() {
        let bound: SocketAddr = "10.0.0.7:8081".parse().unwrap();
        assert_eq!(
            NodePlan::new(&config(ClusterSettings::default()), bound).unwrap(),
            None,
            "no Redis: one process"
        );
        let cluster = ClusterSettings {
            role: Some(Role::Gateway),
            redis_url: Some("redis://:pw@10.0.0.5/0".into()),
            registry_url: Some("http://10.0.0.5:5000".into()),
            ..Default::default()
        };
        let plan = NodePlan::new(&config(cluster.clone()), bound)
            .unwrap()
            .unwrap();
        assert_eq!(plan.role, Role::Gateway);
        assert_eq!(plan.node_id, default_node_id(8081));
        assert_eq!(plan.address, "10.0.0.7:8081");
        assert_eq!(plan.registry.repository, crate::config::DEFAULT_REPOSITORY);
        assert_eq!(
            plan.artifact_cache,
            std::path::Path::new("/var/lib/sopm/artifact-cache")
        );
        assert_eq!(
            plan.remote_backends(),
            sopm_backends::backends::BACKEND_NAMES
        );
        let named = ClusterSettings {
            role: Some(Role::Worker),
            node_id: Some("w1".into()),
            advertise: Some("w1.internal:8080".into()),
            ..cluster.clone()
        };
        let plan = NodePlan::new(&config(named), bound).unwrap().unwrap();
        assert_eq!(
            (plan.node_id.as_str(), plan.address.as_str()),
            ("w1", "w1.internal:8080")
        );
        assert!(plan.remote_backends().is_empty(), "a worker runs its own");
        let unchecked = ClusterSettings {
            registry_url: None,
            ..cluster
        };
        let e = NodePlan::new(&config(unchecked), bound).unwrap_err();
        assert!(e.contains("--registry"), "{e}");
    }
}
