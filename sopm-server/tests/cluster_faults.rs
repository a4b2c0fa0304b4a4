//! Fault tests of a cluster made of real processes: Redis and an OCI registry in the
//! root namespace, a gateway and workers each in its own network namespace at its own
//! address. Each test kills, restarts or cuts off a part while jobs flow, and ends with
//! every acknowledged job finished exactly once as a record.
//!
//! Every load loop is bounded in count and time. Leases are 2 s here so that a lost
//! worker's jobs move within seconds.
#![cfg(feature = "cluster")]

mod support;

#[path = "../../sopm-backends/tests/support/oci_registry.rs"]
mod oci_registry;
#[path = "../../sopm-backends/tests/support/programs.rs"]
mod programs;
#[path = "../../sopm-backends/tests/support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::cluster::{wait_all_finished, Node, NodeSpec};
use support::netns::{self, Net};
use support::poll;
use support::skip::skipped;

/// Lease length of every node in these tests.
const LEASE_MS: &str = "2000";

/// How long any one test waits for its jobs before it fails.
const FINISH_LIMIT: Duration = Duration::from_secs(120);

/// Redis, the registry and the namespaces of `nodes` nodes (none started yet).
struct Fixture {
    net: Net,
    redis: redis_server::RedisServer,
    registry: oci_registry::OciRegistry,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(test: &str, nodes: usize) -> Option<Fixture> {
        if skipped(netns::unavailable().as_deref()) {
            return None;
        }
        let net = Net::create(nodes);
        let host = net.host().to_string();
        let redis = redis_server::RedisServer::start_on(test, &host)?;
        let registry = oci_registry::OciRegistry::start_on(test, &host)?;
        let dir = tempfile::Builder::new()
            .prefix("sopm-cluster-")
            .tempdir()
            .unwrap();
        Some(Fixture {
            net,
            redis,
            registry,
            dir,
        })
    }

    /// Starts node `index` with `role`.
    fn node(&self, index: usize, role: &'static str, id: &str) -> Node {
        let spec = NodeSpec {
            role,
            id: id.to_string(),
            // The nodes' addresses are on a bridge only this test reaches.
            args: vec![
                "--allow-unauthenticated".into(),
                "--lease-ms".into(),
                LEASE_MS.into(),
                "--storage".into(),
                "sqlite".into(),
            ],
        };
        Node::start(
            &self.net,
            index,
            spec,
            &self.redis.url(),
            &self.registry.url(),
            self.dir.path(),
        )
    }
}

/// Submits up to `count` fire-and-forget `math.add` jobs through `node` for at most
/// `limit`, calling `during(i)` before each; returns the ids acknowledged (202) and the
/// number refused.
fn submit_stream(
    node: &Node,
    count: usize,
    limit: Duration,
    mut during: impl FnMut(usize),
) -> (Vec<String>, usize) {
    let until = Instant::now() + limit;
    let (mut acked, mut refused) = (Vec::new(), 0);
    for i in 0..count {
        if Instant::now() > until {
            break;
        }
        during(i);
        match node.submit_async("math.add", json!({"a": i, "b": 1})) {
            Ok(id) => acked.push(id),
            Err(_) => refused += 1,
        }
    }
    (acked, refused)
}

/// Asserts that every record succeeded with the output its input gives, and that each
/// id appears once.
fn assert_all_added(records: &[Value]) {
    let ids: BTreeSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), records.len(), "a job id was acknowledged twice");
    for r in records {
        assert_eq!(r["status"], "succeeded", "{r}");
        let a = r["input"]["a"].as_u64().unwrap();
        assert_eq!(r["output"], json!(a + 1), "{r}");
        assert!(r["attempts"].as_u64().unwrap() >= 1, "{r}");
    }
}

/// Submits `n` async 3 s sleeps through `gateway` and waits until each runs; their ids.
fn running_sleeps(gateway: &Node, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n)
        .map(|_| {
            gateway
                .submit_async("util.sleep", json!({"ms": 3000}))
                .expect("accepted")
        })
        .collect();
    for id in &ids {
        wait_running(gateway, id);
    }
    ids
}

/// Waits until `node` says the job `id` is running.
fn wait_running(node: &Node, id: &str) {
    poll(FINISH_LIMIT, Duration::from_millis(50), || {
        let (_, job) = node.get(&format!("/api/jobs/{id}"));
        if job["status"] == "running" {
            Ok(())
        } else {
            Err(format!("job {id} did not start: {job}"))
        }
    });
}

/// The cluster view of `GET /api/stats` through `node`.
fn cluster_nodes(node: &Node) -> Vec<Value> {
    let (status, stats) = node.get("/api/stats");
    assert_eq!(status, 200, "{stats}");
    stats["cluster"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_worker_killed_with_jobs_running_and_queued_loses_none() {
    let Some(fx) = Fixture::new("a_worker_killed_with_jobs_running_and_queued_loses_none", 3)
    else {
        return;
    };
    let gateway = fx.node(0, "gateway", "gw");
    let mut w1 = fx.node(1, "worker", "w1");
    // Long jobs first, while w1 is the only worker: they run on it.
    let long = running_sleeps(&gateway, 3);
    let w2 = fx.node(2, "worker", "w2");
    let mut killed = false;
    let (acked, _) = submit_stream(&gateway, 400, Duration::from_secs(30), |i| {
        if i == 100 && !killed {
            w1.kill9();
            killed = true;
        }
    });
    assert!(killed);
    let records = wait_all_finished(&gateway, &acked, FINISH_LIMIT);
    assert_all_added(&records);
    let long = wait_all_finished(&gateway, &long, FINISH_LIMIT);
    for r in &long {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["output"], json!({"slept_ms": 3000}), "{r}");
        assert!(
            r["attempts"].as_u64().unwrap() >= 2,
            "a job that was running on the killed worker ran again elsewhere: {r}"
        );
    }
    drop(w2);
}

#[test]
fn the_gateway_killed_after_acknowledging_loses_no_job() {
    let Some(fx) = Fixture::new("the_gateway_killed_after_acknowledging_loses_no_job", 2) else {
        return;
    };
    let mut gateway = fx.node(0, "gateway", "gw");
    let _worker = fx.node(1, "worker", "w1");
    let (acked, refused) = submit_stream(&gateway, 300, Duration::from_secs(20), |_| {});
    assert_eq!(refused, 0, "the gateway refused jobs while all was well");
    gateway.kill9();
    gateway.restart(&fx.net);
    let records = wait_all_finished(&gateway, &acked, FINISH_LIMIT);
    assert_all_added(&records);
}

#[test]
fn redis_restarted_under_load_loses_no_acknowledged_job() {
    let Some(mut fx) = Fixture::new("redis_restarted_under_load_loses_no_acknowledged_job", 2)
    else {
        return;
    };
    let gateway = fx.node(0, "gateway", "gw");
    let _worker = fx.node(1, "worker", "w1");
    let redis = &mut fx.redis;
    let (acked, refused) = submit_stream(&gateway, 600, Duration::from_secs(40), |i| {
        if i == 200 {
            redis.kill();
        }
        if i == 260 {
            redis.restart();
        }
    });
    eprintln!(
        "redis restart: {} acknowledged, {refused} refused while it was down",
        acked.len()
    );
    let records = wait_all_finished(&gateway, &acked, FINISH_LIMIT);
    assert_all_added(&records);
    // And the cluster serves again: a waiting call through the gateway.
    let (status, body) = gateway.post(
        "/api/execute",
        &json!({"function": "math.add", "input": {"a": 1, "b": 2}}),
    );
    assert_eq!((status, &body["output"]), (200, &json!(3)), "{body}");
}

#[test]
fn a_worker_cut_off_loses_its_leases_and_its_late_completions_are_refused() {
    let Some(fx) = Fixture::new(
        "a_worker_cut_off_loses_its_leases_and_its_late_completions_are_refused",
        3,
    ) else {
        return;
    };
    let gateway = fx.node(0, "gateway", "gw");
    let w1 = fx.node(1, "worker", "w1");
    let long = running_sleeps(&gateway, 3);
    fx.net.cut(w1.index);
    let _w2 = fx.node(2, "worker", "w2");
    let records = wait_all_finished(&gateway, &long, FINISH_LIMIT);
    for r in &records {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert!(r["attempts"].as_u64().unwrap() >= 2, "{r}");
    }
    // w1 finished its copies while cut off; once back, its completions are refused
    // and the records stay as w2 wrote them.
    fx.net.restore(w1.index);
    let refused = poll(FINISH_LIMIT, Duration::from_millis(200), || {
        let nodes = cluster_nodes(&gateway);
        let w1 = nodes.iter().find(|n| n["node_id"] == "w1");
        match w1.and_then(|n| n["completions_refused"].as_u64()) {
            Some(n) if n >= 1 => Ok(n),
            _ => Err(format!("w1 reported no refused completion: {nodes:?}")),
        }
    });
    eprintln!("w1's refused completions: {refused}");
    let again = wait_all_finished(&gateway, &long, FINISH_LIMIT);
    assert_eq!(again, records, "a late completion changed a final record");
}

#[test]
fn a_function_uploaded_through_one_node_runs_on_another_and_its_deletion_reaches_it() {
    if skipped(support::skip::bwrap_missing()) {
        return;
    }
    let Some(fx) = Fixture::new(
        "a_function_uploaded_through_one_node_runs_on_another_and_its_deletion_reaches_it",
        2,
    ) else {
        return;
    };
    let a = fx.node(0, "all", "a");
    let upload = json!({
        "name": "where",
        "runtime": "python",
        "handler": "main.handle",
        "files": {"main.py": "def handle(event, context):\n    return {'n': event['n'] * 2}\n"},
    });
    let (status, body) = a.post("/api/user-functions", &upload);
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    poll(FINISH_LIMIT, Duration::from_millis(200), || {
        let (_, f) = a.get(&format!("/api/user-functions/{id}"));
        match f["status"].as_str() {
            Some("ready") => Ok(()),
            Some("failed") => panic!("the build failed: {f}"),
            _ => Err(format!("still building: {f}")),
        }
    });
    // B joins after the build: whatever it runs of the function, it pulls from the
    // registry by digest.
    let b = fx.node(1, "all", "b");
    let warm_on_b = |nodes: &[Value]| {
        nodes
            .iter()
            .filter(|n| n["node_id"] == "b")
            .flat_map(|n| n["pools"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["pool"].as_str().unwrap_or_default().contains(id.as_str()))
            .map(|p| p["idle"].as_u64().unwrap_or(0) + p["busy"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let mut calls = 0;
    poll(FINISH_LIMIT, Duration::from_millis(50), || {
        calls += 1;
        assert!(calls <= 200, "200 calls through b and none ran on b");
        let (status, out) = b.post(
            &format!("/api/user-functions/{id}/execute"),
            &json!({"input": {"n": calls}}),
        );
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["output"], json!({"n": calls * 2}), "{out}");
        if warm_on_b(&cluster_nodes(&b)) > 0 {
            Ok(())
        } else {
            Err("no instance of the function on b yet".into())
        }
    });
    // Deleted through A: B's warm instances go too.
    let (status, body) = a.json("DELETE", &format!("/api/user-functions/{id}"), None);
    assert_eq!(status, 200, "{body}");
    poll(FINISH_LIMIT, Duration::from_millis(200), || {
        let left = warm_on_b(&cluster_nodes(&b));
        if left == 0 {
            Ok(())
        } else {
            Err(format!(
                "b still has {left} instances of the deleted function"
            ))
        }
    });
    let (status, _) = b.post(
        &format!("/api/user-functions/{id}/execute"),
        &json!({"input": {"n": 1}}),
    );
    assert_eq!(status, 404);
}
