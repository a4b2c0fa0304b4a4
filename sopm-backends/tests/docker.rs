//! The docker executor against a real Docker daemon, under runc and under runsc.
#![cfg(feature = "docker")]

#[path = "common/sandbox_behaviour.rs"]
mod behaviour;
#[path = "process_support.rs"]
mod support;

use sopm_backends::docker::{DockerExecutor, DockerExecutorConfig};
use sopm_backends::sandbox::{PoolCounters, PoolSettings, RunnerKind};
use sopm_core::Executor;

struct Docker {
    exec: DockerExecutor,
}

impl behaviour::Subject for Docker {
    fn executor(&self) -> &dyn Executor {
        &self.exec
    }
    fn counters(&self) -> PoolCounters {
        self.exec.counters()
    }
    fn start(&self) {
        self.exec.start()
    }
}

fn ready(runtime: &str, runners: &[RunnerKind]) -> Docker {
    let config = DockerExecutorConfig::new()
        .with_name(format!("test-{runtime}"))
        .with_runtime(runtime)
        .with_pool(PoolSettings::new(runners.iter().copied()).with_stem_cells(1));
    Docker { exec: config.build().unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_python_hello() {
    let d = ready("runc", &[RunnerKind::Python]);
    behaviour::python_hello_world_uses_a_stem_cell(&d).await;
    d.exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_python_hello() {
    let d = ready("runsc", &[RunnerKind::Python]);
    behaviour::python_hello_world_uses_a_stem_cell(&d).await;
    d.exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_node() {
    let d = ready("runc", &[RunnerKind::Node]);
    behaviour::node_hello_world_with_async_handler_and_logs(&d).await;
    d.exec.shutdown().await;
}
