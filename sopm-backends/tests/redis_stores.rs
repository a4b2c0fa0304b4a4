//! The Redis registry and key store against a real `redis-server` (one per test, AOF
//! with `appendfsync always`): the conformance checks, two nodes on one Redis, a
//! `kill -9` and restart of Redis, Redis down and back, concurrent uploads.
//! Run with: SOPM_REQUIRE_INTEGRATION=1 cargo test -p sopm-backends --features redis --test redis_stores
#![cfg(feature = "redis")]

#[path = "support/programs.rs"]
mod programs;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use sopm_backends::redis::{RedisConfig, RedisConnection, RedisKeyStore, RedisRegistry};
use sopm_core::conformance;
use sopm_core::{Artifact, BuildStatus, Error, KeyStore, NewVersion, Registry, Runtime, TenantId};

/// How long a test waits for a restarted Redis to be usable again through an old handle.
const RECOVERY: Duration = Duration::from_secs(30);

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::new(server.url())
        .with_connect_timeout(Duration::from_millis(500))
        .with_response_timeout(Duration::from_secs(2))
}

async fn connect(server: &RedisServer) -> RedisConnection {
    config(server).connect().await.expect("connect to redis")
}

async fn registry(server: &RedisServer) -> RedisRegistry {
    RedisRegistry::new(connect(server).await)
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn new_version(tenant: &TenantId, name: &str, digest: &str) -> NewVersion {
    NewVersion {
        tenant: tenant.clone(),
        name: name.into(),
        runtime: Runtime::Python,
        handler: "main.handle".into(),
        limits: Default::default(),
        env: [("K".to_string(), "v".to_string())].into(),
        source_digest: digest.into(),
        executor: Some("process".into()),
    }
}

fn directory(path: &str) -> Artifact {
    Artifact::Directory {
        path: path.into(),
        digest: None,
    }
}

/// Calls `op` until it succeeds, for at most [`RECOVERY`]; panics with the last error.
async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sopm_core::Result<T>>,
{
    let until = Instant::now() + RECOVERY;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match op().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < until && tries < 10_000 => {
                assert_eq!(e.code(), "unavailable", "{what}: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: still failing after {tries} tries: {e:?}"),
        }
    }
}

// --- conformance ------------------------------------------------------------------------

macro_rules! registry_check {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(server) = RedisServer::start(stringify!($name)) else {
                return;
            };
            conformance::$name(&registry(&server).await).await;
        }
    };
}

registry_check!(registry_versions_and_tenants);
registry_check!(registry_builds);
registry_check!(registry_delete);
registry_check!(registry_usage_and_version_delete);
registry_check!(registry_resolve_version);
registry_check!(registry_unfinished_builds);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store() {
    let Some(server) = RedisServer::start("key_store") else {
        return;
    };
    conformance::key_store_suite(&RedisKeyStore::new(connect(&server).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_on_one_redis_under_two_prefixes() {
    let Some(server) = RedisServer::start("every_check_on_one_redis") else {
        return;
    };
    for prefix in ["sopm:", "other-install:"] {
        let conn = config(&server).with_prefix(prefix).connect().await.unwrap();
        let reg = RedisRegistry::new(conn.clone());
        conformance::registry_versions_and_tenants(&reg).await;
        conformance::registry_builds(&reg).await;
        conformance::registry_delete(&reg).await;
        conformance::registry_usage_and_version_delete(&reg).await;
        conformance::registry_resolve_version(&reg).await;
        conformance::registry_unfinished_builds(&reg).await;
        conformance::key_store_suite(&RedisKeyStore::new(conn)).await;
    }
    // Each prefix is its own installation: a function made under one is not under
    // the other.
    let t = tenant("prefixed");
    let a = RedisRegistry::new(config(&server).with_prefix("a:").connect().await.unwrap());
    let b = RedisRegistry::new(config(&server).with_prefix("b:").connect().await.unwrap());
    let v = a.create_version(new_version(&t, "f", "d")).await.unwrap();
    assert_eq!(
        b.get(&t, &v.function_id).await.unwrap_err().code(),
        "not_found"
    );
    assert!(b.list(&t).await.unwrap().is_empty());
    assert_eq!(a.list(&t).await.unwrap().len(), 1);
}

// --- many nodes ---------------------------------------------------------------------------

/// Two nodes (two connections) on one Redis see each other's writes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_others_writes() {
    let Some(server) = RedisServer::start("two_nodes_see_each_others_writes") else {
        return;
    };
    let (conn_a, conn_b) = (connect(&server).await, connect(&server).await);
    let (a, b) = (
        RedisRegistry::new(conn_a.clone()),
        RedisRegistry::new(conn_b.clone()),
    );
    let t = tenant("nodes");
    let v1 = a
        .create_version(new_version(&t, "resize", "d1"))
        .await
        .unwrap();
    assert_eq!(
        b.get(&t, &v1.function_id).await.unwrap().versions,
        vec![v1.clone()]
    );
    b.append_build_log(&v1.function_id, 1, "built on b\n")
        .await
        .unwrap();
    b.finish_build(
        &v1.function_id,
        1,
        BuildStatus::Ready,
        Some(directory("/b/1")),
    )
    .await
    .unwrap();
    let seen = a.resolve_version(&t, "resize", None).await.unwrap();
    assert_eq!(
        (seen.version, seen.status, seen.artifact),
        (1, BuildStatus::Ready, Some(directory("/b/1")))
    );
    assert_eq!(
        a.get(&t, &v1.function_id).await.unwrap().versions[0].build_log,
        "built on b\n"
    );
    let v2 = b
        .create_version(new_version(&t, "resize", "d2"))
        .await
        .unwrap();
    assert_eq!(
        (v2.function_id.as_str(), v2.version),
        (v1.function_id.as_str(), 2)
    );
    assert_eq!(
        a.unfinished_builds()
            .await
            .unwrap()
            .iter()
            .filter(|v| v.tenant == t)
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [2]
    );

    let (keys_a, keys_b) = (RedisKeyStore::new(conn_a), RedisKeyStore::new(conn_b));
    let (info, secret) = keys_a.create(&t, "ci").await.unwrap();
    assert_eq!(
        keys_b.resolve(secret.expose()).await.unwrap(),
        Some(t.clone())
    );
    let (by_a, by_b) = tokio::join!(keys_a.revoke(&t, &info.id), keys_b.revoke(&t, &info.id));
    let (by_a, by_b) = (by_a.unwrap(), by_b.unwrap());
    assert!(by_a.revoked_ms.is_some());
    assert_eq!(
        by_a.revoked_ms, by_b.revoked_ms,
        "two nodes revoking at once record one time"
    );
    assert_eq!(keys_a.resolve(secret.expose()).await.unwrap(), None);
    assert_eq!(keys_b.list(&t).await.unwrap(), [by_a]);

    let removed = b.delete(&t, &v1.function_id).await.unwrap();
    assert_eq!(removed.versions.len(), 2);
    assert_eq!(
        a.resolve_version(&t, "resize", None)
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
}

/// Two handles creating versions of one name at the same time: one function, every
/// version number given out once, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_one_name_get_distinct_versions_of_one_function() {
    let Some(server) = RedisServer::start("concurrent_uploads") else {
        return;
    };
    const PER_NODE: usize = 25;
    let nodes = [
        Arc::new(registry(&server).await),
        Arc::new(registry(&server).await),
    ];
    let t = tenant("racers");
    let mut tasks = Vec::new();
    for (n, reg) in nodes.iter().enumerate() {
        for i in 0..PER_NODE {
            let (reg, t) = (reg.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                reg.create_version(new_version(&t, "contended", &format!("{n}-{i}")))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut ids = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for task in tasks {
        let v = task.await.unwrap();
        ids.insert(v.function_id);
        assert!(
            versions.insert(v.version),
            "version {} given out twice",
            v.version
        );
    }
    assert_eq!(ids.len(), 1, "one function for one name: {ids:?}");
    let total = u32::try_from(2 * PER_NODE).unwrap();
    assert_eq!(versions, (1..=total).collect::<BTreeSet<_>>());
    let record = nodes[1].get_by_name(&t, "contended").await.unwrap();
    assert_eq!(record.versions.len(), 2 * PER_NODE);
    assert_eq!(nodes[0].tenant_usage(&t).await.unwrap().functions, 1);
}

// --- Redis failures -------------------------------------------------------------------------

/// What was acknowledged survives `kill -9` of Redis (AOF, `appendfsync always`): a new
/// connection after the restart reads exactly what was there, and the old handles work
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_kill_9_and_restart() {
    let Some(mut server) = RedisServer::start("survives_kill_9") else {
        return;
    };
    let conn = connect(&server).await;
    let (reg, keys) = (RedisRegistry::new(conn.clone()), RedisKeyStore::new(conn));
    let t = tenant("durable");
    let v1 = reg
        .create_version(new_version(&t, "kept", "d1"))
        .await
        .unwrap();
    let id = v1.function_id.clone();
    reg.append_build_log(&id, 1, "step 1\n").await.unwrap();
    reg.finish_build(&id, 1, BuildStatus::Ready, Some(directory("/a/1")))
        .await
        .unwrap();
    reg.record_artifact_bytes(&id, 1, 4096).await.unwrap();
    reg.create_version(new_version(&t, "kept", "d2"))
        .await
        .unwrap();
    reg.create_version(new_version(&t, "kept", "d3"))
        .await
        .unwrap();
    reg.delete_version(&t, &id, 2).await.unwrap();
    let gone = reg
        .create_version(new_version(&t, "gone", "g"))
        .await
        .unwrap();
    reg.delete(&t, &gone.function_id).await.unwrap();
    let (info, secret) = keys.create(&t, "laptop").await.unwrap();
    let (revoked, revoked_secret) = keys.create(&t, "old").await.unwrap();
    keys.revoke(&t, &revoked.id).await.unwrap();
    let before_list = reg.list(&t).await.unwrap();
    let before_usage = reg.tenant_usage(&t).await.unwrap();
    let before_keys = keys.list(&t).await.unwrap();

    server.kill();
    server.restart();

    let fresh = connect(&server).await;
    let (reg2, keys2) = (RedisRegistry::new(fresh.clone()), RedisKeyStore::new(fresh));
    assert_eq!(reg2.list(&t).await.unwrap(), before_list);
    assert_eq!(reg2.tenant_usage(&t).await.unwrap(), before_usage);
    assert_eq!(before_usage.artifact_bytes, 4096);
    assert_eq!(
        reg2.get(&t, &id)
            .await
            .unwrap()
            .versions
            .iter()
            .map(|v| (v.version, v.status))
            .collect::<Vec<_>>(),
        [(1, BuildStatus::Ready), (3, BuildStatus::Building)]
    );
    assert_eq!(
        reg2.get(&t, &gone.function_id).await.unwrap_err().code(),
        "not_found"
    );
    assert_eq!(keys2.list(&t).await.unwrap(), before_keys);
    assert_eq!(
        keys2.resolve(secret.expose()).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(keys2.resolve(revoked_secret.expose()).await.unwrap(), None);
    assert!(before_keys.iter().any(|k| k.id == info.id));

    // The handles from before the crash reconnect by themselves.
    let listed = until_ok("list through the old handle", || reg.list(&t)).await;
    assert_eq!(listed, before_list);
    let v4 = reg
        .create_version(new_version(&t, "kept", "d4"))
        .await
        .unwrap();
    assert_eq!(v4.version, 4, "numbering survives the restart");
    assert_eq!(
        keys.resolve(secret.expose()).await.unwrap(),
        Some(t.clone())
    );
}

/// Redis down: every call fails soon with `unavailable` naming Redis (never the
/// password), none hangs; once Redis is back the same handle works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_and_the_same_handle_recovers() {
    let Some(mut server) = RedisServer::start("redis_down") else {
        return;
    };
    let conn = connect(&server).await;
    let (reg, keys) = (RedisRegistry::new(conn.clone()), RedisKeyStore::new(conn));
    let t = tenant("outage");
    let v1 = reg.create_version(new_version(&t, "f", "d")).await.unwrap();

    server.kill();
    // A guard against a hang, far above the configured timeouts; not a speed check.
    let guard = Duration::from_secs(60);
    for round in 0..3 {
        let started = Instant::now();
        let got = tokio::time::timeout(guard, reg.get(&t, &v1.function_id))
            .await
            .unwrap_or_else(|_| panic!("round {round}: a call with Redis down hung"));
        eprintln!(
            "round {round}: get with Redis down answered in {:?}",
            started.elapsed()
        );
        let err = got.expect_err("Redis is down");
        assert_eq!(err.code(), "unavailable", "round {round}: {err:?}");
        assert!(
            err.to_string().contains(&server.addr.to_string()),
            "the error names Redis: {err}"
        );
        let created = tokio::time::timeout(guard, reg.create_version(new_version(&t, "g", "d")))
            .await
            .expect("create_version with Redis down hung");
        assert_eq!(created.unwrap_err().code(), "unavailable");
        let resolved =
            tokio::time::timeout(guard, keys.resolve(&format!("sopm_{}", "a".repeat(64))))
                .await
                .expect("resolve with Redis down hung");
        assert_eq!(resolved.unwrap_err().code(), "unavailable");
    }

    // Connecting anew to a Redis that is not there: unavailable, with the URL but not
    // its password.
    let with_password = format!("redis://sopm:hunter2@{}/", server.addr);
    let err = tokio::time::timeout(
        guard,
        RedisConfig::new(&with_password)
            .with_connect_timeout(Duration::from_millis(500))
            .connect(),
    )
    .await
    .expect("connect to a dead Redis hung")
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&server.addr.to_string()), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    server.restart();
    let back = until_ok("get after Redis came back", || reg.get(&t, &v1.function_id)).await;
    assert_eq!(back.versions, vec![v1.clone()]);
    let v2 = reg
        .create_version(new_version(&t, "f", "d2"))
        .await
        .unwrap();
    assert_eq!((v2.function_id, v2.version), (v1.function_id, 2));
}

/// A restart (clean) under the same handle: it reconnects and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_reconnects_after_a_restart() {
    let Some(mut server) = RedisServer::start("reconnects") else {
        return;
    };
    let reg = registry(&server).await;
    let t = tenant("restart");
    let mut made = Vec::new();
    for round in 0..3 {
        made.push(
            until_ok("create_version", || {
                reg.create_version(new_version(&t, "f", &format!("d{round}")))
            })
            .await,
        );
        server.restart();
    }
    let rec = until_ok("get", || reg.get_by_name(&t, "f")).await;
    assert_eq!(rec.versions, made);
}

/// Data Redis holds in a shape SOPM did not write is `storage_error`, not a panic and
/// not `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_is_a_storage_error() {
    let Some(server) = RedisServer::start("wrong_type") else {
        return;
    };
    let reg = registry(&server).await;
    let reply = server.command("SET sopm:fn:fn_broken just-a-string");
    assert!(reply.starts_with("+OK"), "{reply}");
    let err = reg.get(&tenant("t"), "fn_broken").await.unwrap_err();
    assert_eq!(err.code(), "storage_error", "{err:?}");
    let reply = server.command("SET sopm:fn-name:t:name-taken fn_broken");
    assert!(reply.starts_with("+OK"), "{reply}");
    let err = reg
        .create_version(new_version(&tenant("t"), "name-taken", "d"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_error", "{err:?}");
}

/// A Redis that stops answering (frozen with SIGSTOP, its connections still open): a
/// call gives up with `unavailable` after the response timeout instead of hanging, and
/// the same handle works once Redis answers again (SIGCONT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_unavailable_not_a_hang() {
    let Some(server) = RedisServer::start("frozen") else {
        return;
    };
    let reg = registry(&server).await;
    let t = tenant("frozen");
    let v1 = reg.create_version(new_version(&t, "f", "d")).await.unwrap();
    let info = server.command("INFO server");
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("INFO server names the process id")
        .trim()
        .to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid}");
    };

    signal("-STOP");
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(60), reg.get(&t, &v1.function_id)).await;
    eprintln!(
        "get from a frozen Redis answered in {:?}",
        started.elapsed()
    );
    signal("-CONT");
    let err = got
        .expect("a call to a frozen Redis hung")
        .expect_err("Redis is frozen");
    assert_eq!(err.code(), "unavailable", "{err:?}");

    let back = until_ok("get after SIGCONT", || reg.get(&t, &v1.function_id)).await;
    assert_eq!(back.versions, vec![v1]);
}
