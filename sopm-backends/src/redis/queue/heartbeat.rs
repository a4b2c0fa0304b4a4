//! Node heartbeats: every node writes `P node:{id}` (a hash with a TTL of three
//! beats: its role, address, backends, pools, running jobs, last seen and figures)
//! and adds itself to `P nodes`; the cluster's figures are read from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sopm_core::stats::FunctionStats;
use sopm_core::types::now_ms;
use sopm_core::{ClusterStats, LatencySummary, NodeStats, Result, SchedulerStats};

use super::shared::{node_stats, pause, Shared};

fn this_node(s: &Shared) -> NodeStats {
    NodeStats {
        node_id: s.config.node_id.clone(),
        role: s.config.role.as_str().to_string(),
        address: s.config.address.clone(),
        backends: s
            .dispatcher
            .names()
            .into_iter()
            .map(str::to_string)
            .collect(),
        pools: s.dispatcher.pool_stats(),
        running: s.counters.running(),
        last_seen_ms: now_ms(),
        stats: node_stats(s),
        completions_refused: s.queue.refused(),
        taken_over: s.queue.taken_over(),
        dead_lettered: s.queue.dead_lettered(),
    }
}

async fn write(s: &Shared) -> Result<()> {
    let node = this_node(s);
    let json =
        serde_json::to_string(&node).map_err(|e| sopm_core::Error::Internal(e.to_string()))?;
    let key = s.conn.keys().node(&node.node_id);
    let ttl = (s.config.heartbeat * 3).max(Duration::from_secs(1));
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(&key)
        .arg("role")
        .arg(&node.role)
        .arg("address")
        .arg(&node.address)
        .arg("running")
        .arg(node.running)
        .arg("last_seen_ms")
        .arg(node.last_seen_ms)
        .arg("json")
        .arg(json)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl.as_millis() as u64)
        .ignore()
        .cmd("SADD")
        .arg(s.conn.keys().nodes())
        .arg(&node.node_id)
        .ignore();
    pipe.query_async::<()>(&mut s.conn.manager())
        .await
        .map_err(|e| s.conn.error(e))
}

/// Writes this node's heartbeat until it stops.
pub(crate) async fn beat(s: Arc<Shared>) {
    loop {
        if let Err(e) = s.queue.refresh_depths().await {
            tracing::debug!(error = %e, "queue depths not read");
        }
        if let Err(e) = write(&s).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
        if !pause(&s, s.config.heartbeat).await {
            return;
        }
    }
}

/// Removes this node's heartbeat (a clean shutdown).
pub(crate) async fn forget(s: &Shared) {
    let key = s.conn.keys().node(&s.config.node_id);
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(key)
        .ignore()
        .cmd("SREM")
        .arg(s.conn.keys().nodes())
        .arg(&s.config.node_id)
        .ignore()
        .query_async(&mut s.conn.manager())
        .await;
}

/// Every live node's last heartbeat and their totals (this node's figures are
/// current, not from its last beat).
pub(crate) async fn cluster(s: &Shared) -> Result<ClusterStats> {
    let mut conn = s.conn.manager();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(s.conn.keys().nodes())
        .query_async(&mut conn)
        .await
        .map_err(|e| s.conn.error(e))?;
    let mut nodes = Vec::new();
    for id in ids {
        if id == s.config.node_id {
            nodes.push(this_node(s));
            continue;
        }
        let json: Option<String> = redis::cmd("HGET")
            .arg(s.conn.keys().node(&id))
            .arg("json")
            .query_async(&mut conn)
            .await
            .map_err(|e| s.conn.error(e))?;
        match json.and_then(|j| serde_json::from_str::<NodeStats>(&j).ok()) {
            Some(n) => nodes.push(n),
            None => {
                // Its heartbeat expired: it is gone.
                let _: redis::RedisResult<i64> = redis::cmd("SREM")
                    .arg(s.conn.keys().nodes())
                    .arg(&id)
                    .query_async(&mut conn)
                    .await;
            }
        }
    }
    if !nodes.iter().any(|n| n.node_id == s.config.node_id) {
        nodes.push(this_node(s));
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let totals = totals(nodes.iter().map(|n| &n.stats));
    Ok(ClusterStats { nodes, totals })
}

/// Adds up counters; latency percentiles cannot be added, so the totals carry the
/// count, the weighted mean and the largest of each percentile (an upper bound).
fn totals<'a>(all: impl Iterator<Item = &'a SchedulerStats>) -> SchedulerStats {
    let mut t = SchedulerStats::default();
    let mut functions: HashMap<String, FunctionStats> = HashMap::new();
    let mut lat: Vec<&LatencySummary> = Vec::new();
    for s in all {
        t.submitted += s.submitted;
        t.rejected += s.rejected;
        t.succeeded += s.succeeded;
        t.failed += s.failed;
        t.timed_out += s.timed_out;
        t.cancelled += s.cancelled;
        t.queue_depth = t.queue_depth.max(s.queue_depth);
        t.queue_capacity = t.queue_capacity.max(s.queue_capacity);
        t.running += s.running;
        t.max_concurrency += s.max_concurrency;
        lat.push(&s.latency);
        for f in &s.functions {
            let e = functions
                .entry(f.function.clone())
                .or_insert_with(|| FunctionStats {
                    function: f.function.clone(),
                    calls: 0,
                    errors: 0,
                    latency: LatencySummary::default(),
                });
            e.latency = merge(&[&e.latency, &f.latency]);
            e.calls += f.calls;
            e.errors += f.errors;
        }
    }
    t.latency = merge(&lat);
    let mut functions: Vec<FunctionStats> = functions.into_values().collect();
    functions.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.function.cmp(&b.function)));
    t.functions = functions;
    t
}

fn merge(all: &[&LatencySummary]) -> LatencySummary {
    let count: u64 = all.iter().map(|l| l.count).sum();
    let mean_us = if count == 0 {
        0.0
    } else {
        all.iter().map(|l| l.mean_us * l.count as f64).sum::<f64>() / count as f64
    };
    let max = |f: fn(&LatencySummary) -> u64| all.iter().map(|l| f(l)).max().unwrap_or(0);
    LatencySummary {
        count,
        mean_us,
        p50_us: max(|l| l.p50_us),
        p90_us: max(|l| l.p90_us),
        p99_us: max(|l| l.p99_us),
        p999_us: max(|l| l.p999_us),
        max_us: max(|l| l.max_us),
    }
}
