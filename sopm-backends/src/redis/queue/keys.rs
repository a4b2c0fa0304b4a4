//! The names of the queue's keys and channels under one prefix `P`.

/// Key and channel names of the queue (see `CLUSTER.md`'s key layout).
#[derive(Debug, Clone)]
pub(crate) struct QueueKeys {
    prefix: String,
}

// The build, retire and heartbeat names are used by the scheduler.
#[allow(dead_code)]
impl QueueKeys {
    pub(crate) fn new(prefix: &str) -> Self {
        QueueKeys {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix itself (scripts build channel names from it).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P q:{backend}`: the stream of jobs for one backend.
    pub(crate) fn stream(&self, backend: &str) -> String {
        format!("{}q:{backend}", self.prefix)
    }

    /// `P qd:{backend}`: how many jobs of that stream wait for their first delivery.
    pub(crate) fn depth(&self, backend: &str) -> String {
        format!("{}qd:{backend}", self.prefix)
    }

    /// `P lease:{job_id}`: hash {node, token, expires, stream, entry}.
    pub(crate) fn lease(&self, job_id: &str) -> String {
        format!("{}lease:{job_id}", self.prefix)
    }

    /// `P fence`: the fencing token counter.
    pub(crate) fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }

    /// `P dead`: the dead-letter stream.
    pub(crate) fn dead(&self) -> String {
        format!("{}dead", self.prefix)
    }

    /// `P done:{node}`: where results for callers waiting on that node are pushed.
    pub(crate) fn done_channel(&self, node: &str) -> String {
        format!("{}done:{node}", self.prefix)
    }

    /// `P cancel`: job ids cancelled while running, for the node running them.
    pub(crate) fn cancel_channel(&self) -> String {
        format!("{}cancel", self.prefix)
    }

    /// `P retire`: retired functions and versions, for every node.
    pub(crate) fn retire_channel(&self) -> String {
        format!("{}retire", self.prefix)
    }

    /// `P b:{backend}`: the stream of builds for one backend.
    pub(crate) fn build_stream(&self, backend: &str) -> String {
        format!("{}b:{backend}", self.prefix)
    }

    /// `P src:{function_id}:{version}`: a queued build's request.
    pub(crate) fn build_source(&self, function_id: &str, version: u32) -> String {
        format!("{}src:{function_id}:{version}", self.prefix)
    }

    /// `P lease:build:{function_id}:{version}`: a running build's lease.
    pub(crate) fn build_lease(&self, function_id: &str, version: u32) -> String {
        format!("{}lease:build:{function_id}:{version}", self.prefix)
    }

    /// `P node:{id}`: a node's heartbeat hash (with a TTL).
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }

    /// `P nodes`: the ids of nodes that sent a heartbeat.
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
}
