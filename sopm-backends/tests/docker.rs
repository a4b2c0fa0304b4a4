//! The docker executor against a real Docker daemon, under runc and under runsc.
#![cfg(feature = "docker")]

#[path = "common/sandbox_behaviour.rs"]
mod behaviour;
#[path = "process_support.rs"]
mod support;

use std::time::Duration;

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

fn ready(runtime: &str, tune: impl FnOnce(PoolSettings) -> PoolSettings) -> Docker {
    let pool = tune(PoolSettings::new(RunnerKind::ALL).with_stem_cells(1));
    let config = DockerExecutorConfig::new()
        .with_name(format!("test-{runtime}"))
        .with_runtime(runtime)
        .with_static_runner(std::env::var("SOPM_STATIC_RUNNER").unwrap_or("/nonexistent".into()))
        .with_pool(pool);
    Docker { exec: config.build().unwrap() }
}

macro_rules! suite {
    ($rt:ident) => {
        mod $rt {
            use super::*;
            macro_rules! t {
                ($name:ident) => { t!($name, |p| p); };
                ($name:ident, $tune:expr) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let d = ready(stringify!($rt), $tune);
                        behaviour::$name(&d).await;
                        d.exec.shutdown().await;
                    }
                };
            }
            t!(python_hello_world_uses_a_stem_cell);
            t!(node_hello_world_with_async_handler_and_logs);
            t!(shell_hello_world_and_failure);
            t!(large_and_unicode_payloads_round_trip);
            t!(function_errors_carry_tracebacks_and_keep_the_instance);
            t!(logs_are_captured_and_kept_out_of_the_output);
            t!(spinning_and_sleeping_past_the_deadline_time_out, |p| p.with_stem_cells(2).with_stem_limits(support::tight()));
            t!(unbounded_allocation_is_out_of_memory);
            t!(output_too_large_is_reported_and_the_instance_kept);
            t!(no_network_to_the_host);
            t!(secrets_of_the_host_are_not_visible);
            t!(concurrent_calls_grow_the_pool_up_to_the_cap, |p| p.with_max_instances_per_function(3));
            t!(two_functions_never_share_an_instance);
            t!(a_crashed_instance_is_replaced);
            t!(idle_instances_are_reaped, |p| p.with_idle_ttl(Duration::from_millis(200)));
        }
    };
}

suite!(runc);
suite!(runsc);
