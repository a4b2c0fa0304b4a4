//! A SOPM cluster made of real processes for the fault tests: Redis and the registry in
//! the root namespace on the bridge's address, and each node (`sopm serve --role …`) in
//! its own network namespace at its own address (see [`netns`](super::netns)).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::http::{send_to, Request};
use super::netns::Net;
use super::{poll, BIN};

/// The port every node serves HTTP on, inside its own namespace.
pub const NODE_PORT: u16 = 8080;

/// How one node is started.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `gateway`, `worker` or `all`.
    pub role: &'static str,
    /// Its node id.
    pub id: String,
    /// More `sopm serve` arguments.
    pub args: Vec<String>,
}

/// A running node, killed when dropped.
pub struct Node {
    child: Option<Child>,
    /// Where it serves, from the root namespace.
    pub addr: SocketAddr,
    spec: NodeSpec,
    /// Its namespace's index in the [`Net`].
    pub index: usize,
    data_dir: PathBuf,
    redis: String,
    registry: String,
}

impl Node {
    /// Starts node `index` of `net` as `spec` says and waits until it is ready.
    pub fn start(
        net: &Net,
        index: usize,
        spec: NodeSpec,
        redis: &str,
        registry: &str,
        data_root: &std::path::Path,
    ) -> Node {
        let addr = SocketAddr::from((net.node(index).addr, NODE_PORT));
        let data_dir = data_root.join(&spec.id);
        let mut node = Node {
            child: None,
            addr,
            spec,
            index,
            data_dir,
            redis: redis.to_string(),
            registry: registry.to_string(),
        };
        node.spawn(net);
        node
    }

    fn spawn(&mut self, net: &Net) {
        let mut c = net.command(self.index, BIN);
        c.arg("serve")
            .args(["--role", self.spec.role])
            .args(["--listen", &self.addr.to_string()])
            .args(["--advertise", &self.addr.to_string()])
            .args(["--node-id", &self.spec.id])
            .args(["--redis", &self.redis])
            .args(["--registry", &self.registry])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.spec.args)
            .env(
                "SOPM_LOG",
                std::env::var("SOPM_CLUSTER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(c.spawn().expect("start sopm serve in its namespace"));
        let limit = Duration::from_secs(90);
        poll(limit, Duration::from_millis(100), || {
            if let Ok((200, _)) = self.send(&Request::get("/readyz")) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node {} exited before it was ready: {status}", self.spec.id);
            }
            Err(format!(
                "node {} was not ready within {limit:?}",
                self.spec.id
            ))
        });
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same settings and data directory.
    pub fn restart(&mut self, net: &Net) {
        self.kill9();
        self.spawn(net);
    }

    /// Sends `req`; an I/O error is returned.
    pub fn send(&self, req: &Request) -> std::io::Result<(u16, Value)> {
        send_to(
            self.addr,
            &self.addr.to_string(),
            req,
            Duration::from_secs(30),
        )
    }

    /// A JSON request; panics on an I/O error.
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.send(&Request::json(method, path, body))
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.spec.id))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.json("GET", path, None)
    }

    /// `POST path` with `body`.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json("POST", path, Some(body))
    }

    /// Submits `function` with `input` fire-and-forget; the job id once acknowledged
    /// (202), or the refusal's status and body.
    pub fn submit_async(&self, function: &str, input: Value) -> Result<String, (u16, Value)> {
        let req = Request::json(
            "POST",
            "/api/execute",
            Some(&json!({"function": function, "input": input, "async": true})),
        );
        match self.send(&req) {
            Ok((202, body)) => Ok(body["id"].as_str().expect("a job id").to_string()),
            Ok(other) => Err(other),
            Err(e) => Err((0, json!({"io_error": e.to_string()}))),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `node` until every job of `ids` has a terminal record, and returns the
/// records; panics naming the jobs still unfinished after `limit`.
pub fn wait_all_finished(node: &Node, ids: &[String], limit: Duration) -> Vec<Value> {
    let mut done: Vec<Option<Value>> = vec![None; ids.len()];
    poll(limit, Duration::from_millis(200), || {
        for (i, id) in ids.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if let Ok((200, job)) = node.send(&Request::get(&format!("/api/jobs/{id}"))) {
                let status = job["status"].as_str().unwrap_or_default();
                if !matches!(status, "queued" | "running") {
                    done[i] = Some(job);
                }
            }
        }
        let left: Vec<&String> = ids
            .iter()
            .zip(&done)
            .filter(|(_, d)| d.is_none())
            .map(|(id, _)| id)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} acknowledged jobs never finished, e.g. {:?}",
                left.len(),
                ids.len(),
                &left[..left.len().min(5)]
            ))
        }
    });
    done.into_iter().map(Option::unwrap).collect()
}

/// Address helper: `redis://HOST:PORT/`.
pub fn redis_url(host: Ipv4Addr, port: u16) -> String {
    format!("redis://{host}:{port}/")
}
