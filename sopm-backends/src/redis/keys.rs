//! The key layout of SOPM in Redis: every key name is made here and nowhere else.
//!
//! All keys start with the configured prefix `P` (default `sopm:`), so several SOPM
//! installations can share one Redis and an operator can find SOPM's keys with
//! `SCAN MATCH sopm:*`.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P fn:{id}` | hash | a function: `tenant`, `name`, `created_ms`, `last` (the highest version number given out), and per version `n`: `v:n` (its fixed fields as JSON), `s:n` (build status), `a:n` (artifact as JSON, once built), `b:n` (artifact bytes, once recorded) |
//! | `P fn-name:{tenant}:{name}` | string | the id of the tenant's function with that name |
//! | `P fns:{tenant}` | set | the ids of a tenant's functions |
//! | `P building` | set | `{id}/{n}` of every version still building |
//! | `P log:{id}:{n}` | string | the build log of version `n` (absent while empty) |
//! | `P key:{digest}` | string | JSON [`ApiKeyInfo`](sopm_core::ApiKeyInfo) of the key whose secret has this SHA-256 digest |
//! | `P keys:{tenant}` | list | the digests of a tenant's keys, oldest first |
//! | `P job:{id}` | hash | a job: `s` status, `j` its JSON, `t` tenant, `c` created_ms, `e` its log entry and `f` its function id (user functions); the queue's `q` stream, `x` entry id (or `local` with `n` the node running it in process), `w` waiting for its first delivery, `k` backend, `g` the node whose caller waits, `a` deliveries |
//! | `P jobs:unfinished` | set | ids of queued and running jobs |
//! | `P jobs:finished` | zset | ids of finished jobs by finished_ms (else created_ms) |
//! | `P jobs:fn:{function_id}` | zset | ids of a user function's jobs by created_ms |
//! | `P q:{backend}` | stream | jobs for one backend (`builtin` included), group `workers`, field `job` |
//! | `P qd:{backend}` | string | how many jobs of that stream wait for their first delivery |
//! | `P lease:{job_id}` | hash | the running job's lease: `node`, `token`, `expires` (ms, Redis's clock), `stream`, `entry` |
//! | `P fence` | string | the fencing token counter |
//! | `P dead` | stream | dead letters: `job`, `stream`, `entry`, `attempts` |
//! | `P b:{backend}` | stream | builds for one backend (`b:runtime:{runtime}` when none was recorded), fields `fn`, `v` |
//! | `P src:{id}:{n}` | string | a queued build's request (JSON, the source inside) |
//! | `P lease:build:{id}:{n}` | hash | a running build's lease, as a job's |
//! | `P node:{node_id}` | hash | a node's heartbeat (`role`, `address`, `running`, `last_seen_ms`, `json`), expires after three beats |
//! | `P nodes` | set | node ids that sent a heartbeat |
//!
//! Channels: `P done:{node_id}` (final records for callers waiting on that node),
//! `P cancel` (ids of jobs cancelled while running), `P retire` (retired functions and
//! versions).
//!
//! Tenant ids and function names cannot contain `:` (both are checked where they are
//! made), so these names cannot collide. A caller's function id goes into `P fn:{id}`
//! as given, so no other key may start with `P fn:`.

/// Makes the names of SOPM's keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Key names under `prefix` (`sopm:` by default).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn join(&self, parts: &[&str]) -> String {
        let mut s =
            String::with_capacity(self.prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>());
        s.push_str(&self.prefix);
        for p in parts {
            s.push_str(p);
        }
        s
    }

    // --- registry -------------------------------------------------------------------

    /// `P fn:{id}`: the hash of one function and its versions.
    pub fn function(&self, id: &str) -> String {
        self.join(&[FUNCTION, id])
    }

    /// `P fn-name:{tenant}:{name}`: the id of a tenant's function by name.
    pub fn function_name(&self, tenant: &str, name: &str) -> String {
        self.join(&[FUNCTION_NAME, tenant, ":", name])
    }

    /// `P fns:{tenant}`: the set of a tenant's function ids.
    pub fn functions(&self, tenant: &str) -> String {
        self.join(&[FUNCTIONS, tenant])
    }

    /// `P building`: the set of `{id}/{version}` still building.
    pub fn building(&self) -> String {
        self.join(&[BUILDING])
    }

    /// `P log:{id}:{version}`: one version's build log.
    pub fn build_log(&self, id: &str, version: u32) -> String {
        self.join(&[BUILD_LOG, id, ":", &version.to_string()])
    }

    /// What the registry's Lua scripts get as `ARGV[1..=5]` to make the same names:
    /// the prefixes of `fn:`, `log:`, `fn-name:` and `fns:` keys, then the `building`
    /// key. A script appends `{id}`, `{id}:{n}`, `{tenant}:{name}` and `{tenant}`.
    pub(crate) fn registry_script_layout(&self) -> [String; 5] {
        [
            self.join(&[FUNCTION]),
            self.join(&[BUILD_LOG]),
            self.join(&[FUNCTION_NAME]),
            self.join(&[FUNCTIONS]),
            self.building(),
        ]
    }

    // --- API keys -------------------------------------------------------------------

    /// `P key:{digest}`: one API key's record, by the digest of its secret.
    pub fn api_key(&self, digest: &str) -> String {
        self.join(&[API_KEY, digest])
    }

    /// `P keys:{tenant}`: the digests of a tenant's keys, oldest first.
    pub fn api_keys(&self, tenant: &str) -> String {
        self.join(&[API_KEYS, tenant])
    }
}

impl Keys {
    // --- jobs -----------------------------------------------------------------------

    /// `P job:`: what every job's key starts with.
    pub fn job_prefix(&self) -> String {
        self.join(&[JOB])
    }

    /// `P job:{id}`: one job's hash.
    pub fn job(&self, id: &str) -> String {
        self.join(&[JOB, id])
    }

    /// `P jobs:unfinished`: ids of queued and running jobs.
    pub fn jobs_unfinished(&self) -> String {
        self.join(&[JOBS_UNFINISHED])
    }

    /// `P jobs:finished`: ids of finished jobs by finish time.
    pub fn jobs_finished(&self) -> String {
        self.join(&[JOBS_FINISHED])
    }

    /// `P jobs:fn:`: what every by-function index starts with.
    pub fn jobs_by_function_prefix(&self) -> String {
        self.join(&[JOBS_BY_FUNCTION])
    }

    /// `P jobs:fn:{function_id}`: ids of a user function's jobs by creation time.
    pub fn jobs_by_function(&self, function_id: &str) -> String {
        self.join(&[JOBS_BY_FUNCTION, function_id])
    }

    // --- queue ----------------------------------------------------------------------

    /// `P q:{backend}`: the stream of jobs for one backend.
    pub fn job_stream(&self, backend: &str) -> String {
        self.join(&[JOB_STREAM, backend])
    }

    /// `P qd:{backend}`: how many jobs of that stream wait for their first delivery.
    pub fn queue_depth(&self, backend: &str) -> String {
        self.join(&[QUEUE_DEPTH, backend])
    }

    /// `P lease:{job_id}`: a running job's lease.
    pub fn lease(&self, job_id: &str) -> String {
        self.join(&[LEASE, job_id])
    }

    /// `P fence`: the fencing token counter.
    pub fn fence(&self) -> String {
        self.join(&[FENCE])
    }

    /// `P dead`: the dead-letter stream.
    pub fn dead(&self) -> String {
        self.join(&[DEAD])
    }

    /// `P done:{node}`: final records for callers waiting on that node.
    pub fn done_channel(&self, node: &str) -> String {
        self.join(&[DONE, node])
    }

    /// `P cancel`: ids of jobs cancelled while running.
    pub fn cancel_channel(&self) -> String {
        self.join(&[CANCEL])
    }

    /// `P retire`: retired functions and versions.
    pub fn retire_channel(&self) -> String {
        self.join(&[RETIRE])
    }

    /// `P b:{backend}`: the stream of builds for one backend.
    pub fn build_stream(&self, backend: &str) -> String {
        self.join(&[BUILD_STREAM, backend])
    }

    /// `P src:{id}:{version}`: a queued build's request.
    pub fn build_source(&self, id: &str, version: u32) -> String {
        self.join(&[BUILD_SOURCE, id, ":", &version.to_string()])
    }

    /// `P lease:build:{id}:{version}`: a running build's lease.
    pub fn build_lease(&self, id: &str, version: u32) -> String {
        self.join(&[LEASE, "build:", id, ":", &version.to_string()])
    }

    /// `P node:{id}`: a node's heartbeat.
    pub fn node(&self, id: &str) -> String {
        self.join(&[NODE, id])
    }

    /// `P nodes`: ids of nodes that sent a heartbeat.
    pub fn nodes(&self) -> String {
        self.join(&[NODES])
    }
}

const JOB: &str = "job:";
const JOBS_UNFINISHED: &str = "jobs:unfinished";
const JOBS_FINISHED: &str = "jobs:finished";
const JOBS_BY_FUNCTION: &str = "jobs:fn:";
const JOB_STREAM: &str = "q:";
const QUEUE_DEPTH: &str = "qd:";
const LEASE: &str = "lease:";
const FENCE: &str = "fence";
const DEAD: &str = "dead";
const DONE: &str = "done:";
const CANCEL: &str = "cancel";
const RETIRE: &str = "retire";
const BUILD_STREAM: &str = "b:";
const BUILD_SOURCE: &str = "src:";
const NODE: &str = "node:";
const NODES: &str = "nodes";
const FUNCTION: &str = "fn:";
const FUNCTION_NAME: &str = "fn-name:";
const FUNCTIONS: &str = "fns:";
const BUILDING: &str = "building";
const BUILD_LOG: &str = "log:";
const API_KEY: &str = "key:";
const API_KEYS: &str = "keys:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_layout() {
        let k = Keys::new("sopm:");
        assert_eq!(k.function("fn_1"), "sopm:fn:fn_1");
        assert_eq!(
            k.function_name("alice", "resize"),
            "sopm:fn-name:alice:resize"
        );
        assert_eq!(k.functions("alice"), "sopm:fns:alice");
        assert_eq!(k.building(), "sopm:building");
        assert_eq!(k.build_log("fn_1", 3), "sopm:log:fn_1:3");
        assert_eq!(k.api_key("ab"), "sopm:key:ab");
        assert_eq!(k.api_keys("alice"), "sopm:keys:alice");
        let [f, log, name, fns, building] = k.registry_script_layout();
        assert_eq!(format!("{f}fn_1"), k.function("fn_1"));
        assert_eq!(format!("{log}fn_1:3"), k.build_log("fn_1", 3));
        assert_eq!(
            format!("{name}alice:resize"),
            k.function_name("alice", "resize")
        );
        assert_eq!(format!("{fns}alice"), k.functions("alice"));
        assert_eq!(building, k.building());
    }

    #[test]
    fn job_and_queue_names_follow_the_documented_layout() {
        let k = Keys::new("sopm:");
        assert_eq!(k.job("j1"), "sopm:job:j1");
        assert_eq!(format!("{}j1", k.job_prefix()), k.job("j1"));
        assert_eq!(k.jobs_unfinished(), "sopm:jobs:unfinished");
        assert_eq!(k.jobs_finished(), "sopm:jobs:finished");
        assert_eq!(k.jobs_by_function("fn_1"), "sopm:jobs:fn:fn_1");
        assert_eq!(
            format!("{}fn_1", k.jobs_by_function_prefix()),
            k.jobs_by_function("fn_1")
        );
        assert_eq!(k.job_stream("gvisor"), "sopm:q:gvisor");
        assert_eq!(k.queue_depth("gvisor"), "sopm:qd:gvisor");
        assert_eq!(k.lease("j1"), "sopm:lease:j1");
        assert_eq!(k.fence(), "sopm:fence");
        assert_eq!(k.dead(), "sopm:dead");
        assert_eq!(k.done_channel("gw1"), "sopm:done:gw1");
        assert_eq!(k.cancel_channel(), "sopm:cancel");
        assert_eq!(k.retire_channel(), "sopm:retire");
        assert_eq!(k.build_stream("process"), "sopm:b:process");
        assert_eq!(k.build_source("fn_1", 2), "sopm:src:fn_1:2");
        assert_eq!(k.build_lease("fn_1", 2), "sopm:lease:build:fn_1:2");
        assert_eq!(k.node("w1"), "sopm:node:w1");
        assert_eq!(k.nodes(), "sopm:nodes");
    }
}
