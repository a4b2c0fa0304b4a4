//! The platform's figures as one tenant may see them: server-wide totals (load, not
//! who caused it), the built-ins' counts, and only the caller's own user functions
//! and their warm pools — on this node and, on a cluster, on every node.

use std::collections::HashSet;

use serde::Serialize;
use sopm_core::{ClusterStats, FunctionRecord, PlatformStats, PoolStats, SchedulerStats};

/// The answer of `GET /api/stats`: this node's figures, and on a cluster node every
/// node's (absent on one process, whose answer is as it always was).
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// This node's figures.
    #[serde(flatten)]
    pub node: PlatformStats,
    /// Every node of the cluster, as each last reported, and their totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// What the caller may see of the figures: the built-ins and the shared pools, and of
/// the user functions only the caller's own (`own`).
pub struct TenantFilter<'a> {
    builtins: &'a HashSet<&'a str>,
    own: HashSet<&'a str>,
}

impl<'a> TenantFilter<'a> {
    /// The filter of the owner of `own`.
    pub fn new(builtins: &'a HashSet<&'a str>, own: &'a [FunctionRecord]) -> Self {
        TenantFilter {
            builtins,
            own: own.iter().map(|r| r.id.as_str()).collect(),
        }
    }

    /// A user function is counted as `id` or `id@version`.
    fn owned(&self, function: &str) -> bool {
        self.own
            .contains(function.split('@').next().unwrap_or(function))
    }

    fn jobs(&self, jobs: &mut SchedulerStats) {
        jobs.functions
            .retain(|f| self.builtins.contains(f.function.as_str()) || self.owned(&f.function));
    }

    /// A function's pool is `executor/fn/id@version`; the others hold no tenant's code.
    fn pools(&self, pools: &mut Vec<PoolStats>) {
        pools.retain(|p| match p.pool.split_once("/fn/") {
            Some((_, function)) => self.owned(function),
            None => true,
        });
    }

    /// Keeps, of one node's figures, what the caller may see.
    pub fn node(&self, mut stats: PlatformStats) -> PlatformStats {
        self.jobs(&mut stats.jobs);
        self.pools(&mut stats.pools);
        stats
    }

    /// Keeps, of every node's figures and the totals, what the caller may see.
    pub fn cluster(&self, mut cluster: ClusterStats) -> ClusterStats {
        for node in &mut cluster.nodes {
            self.jobs(&mut node.stats);
            self.pools(&mut node.pools);
        }
        self.jobs(&mut cluster.totals);
        cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sopm_core::stats::FunctionStats;
    use sopm_core::NodeStats;

    fn jobs(functions: &[&str]) -> SchedulerStats {
        SchedulerStats {
            functions: functions
                .iter()
                .map(|f| FunctionStats {
                    function: f.to_string(),
                    calls: 1,
                    errors: 0,
                    latency: Default::default(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn pool(name: &str) -> PoolStats {
        PoolStats {
            pool: name.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn every_nodes_figures_keep_only_builtins_shared_pools_and_own_functions() {
        let builtins: HashSet<&str> = ["math.add"].into_iter().collect();
        let filter = TenantFilter::new(&builtins, &[]);
        let node = NodeStats {
            node_id: "w1".into(),
            pools: vec![pool("process"), pool("process/fn/theirs@1")],
            stats: jobs(&["math.add", "theirs@1"]),
            ..Default::default()
        };
        let seen = filter.cluster(ClusterStats {
            nodes: vec![node],
            totals: jobs(&["math.add", "theirs"]),
        });
        let names = |s: &SchedulerStats| {
            s.functions
                .iter()
                .map(|f| f.function.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&seen.totals), ["math.add"]);
        assert_eq!(names(&seen.nodes[0].stats), ["math.add"]);
        let pools: Vec<&str> = seen.nodes[0]
            .pools
            .iter()
            .map(|p| p.pool.as_str())
            .collect();
        assert_eq!(pools, ["process"]);
    }
}
