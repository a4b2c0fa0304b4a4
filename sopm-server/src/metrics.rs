//! Prometheus text exposition of the platform's figures.

use std::fmt::Write;

use sopm_core::PlatformStats;

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every figure in the Prometheus text format (version 0.0.4).
pub fn render(stats: &PlatformStats) -> String {
    let j = &stats.jobs;
    let mut o = String::with_capacity(4096);

    family(
        &mut o,
        "sopm_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    let _ = writeln!(o, "sopm_uptime_seconds {:.3}", stats.uptime_s);

    family(
        &mut o,
        "sopm_jobs_submitted_total",
        "counter",
        "Jobs accepted.",
    );
    let _ = writeln!(o, "sopm_jobs_submitted_total {}", j.submitted);
    family(
        &mut o,
        "sopm_jobs_rejected_total",
        "counter",
        "Jobs refused because the queue was full.",
    );
    let _ = writeln!(o, "sopm_jobs_rejected_total {}", j.rejected);

    family(
        &mut o,
        "sopm_jobs_finished_total",
        "counter",
        "Jobs finished, by outcome.",
    );
    for (status, n) in [
        ("succeeded", j.succeeded),
        ("failed", j.failed),
        ("timed_out", j.timed_out),
        ("cancelled", j.cancelled),
    ] {
        let _ = writeln!(o, "sopm_jobs_finished_total{{status=\"{status}\"}} {n}");
    }

    family(
        &mut o,
        "sopm_queue_depth",
        "gauge",
        "Jobs waiting for a slot.",
    );
    let _ = writeln!(o, "sopm_queue_depth {}", j.queue_depth);
    family(
        &mut o,
        "sopm_queue_capacity",
        "gauge",
        "Most jobs that may wait.",
    );
    let _ = writeln!(o, "sopm_queue_capacity {}", j.queue_capacity);
    family(&mut o, "sopm_jobs_running", "gauge", "Jobs running now.");
    let _ = writeln!(o, "sopm_jobs_running {}", j.running);

    family(
        &mut o,
        "sopm_job_latency_seconds",
        "summary",
        "Job latency from acceptance to finish.",
    );
    for (q, us) in [
        ("0.5", j.latency.p50_us),
        ("0.9", j.latency.p90_us),
        ("0.99", j.latency.p99_us),
        ("0.999", j.latency.p999_us),
    ] {
        let _ = writeln!(
            o,
            "sopm_job_latency_seconds{{quantile=\"{q}\"}} {:.6}",
            us as f64 / 1e6
        );
    }
    let _ = writeln!(
        o,
        "sopm_job_latency_seconds_sum {:.6}",
        j.latency.mean_us * j.latency.count as f64 / 1e6
    );
    let _ = writeln!(o, "sopm_job_latency_seconds_count {}", j.latency.count);

    family(
        &mut o,
        "sopm_function_calls_total",
        "counter",
        "Finished calls per function.",
    );
    for f in &j.functions {
        let _ = writeln!(
            o,
            "sopm_function_calls_total{{function=\"{}\"}} {}",
            label(&f.function),
            f.calls
        );
    }
    family(
        &mut o,
        "sopm_function_errors_total",
        "counter",
        "Calls per function that did not succeed.",
    );
    for f in &j.functions {
        let _ = writeln!(
            o,
            "sopm_function_errors_total{{function=\"{}\"}} {}",
            label(&f.function),
            f.errors
        );
    }
    family(
        &mut o,
        "sopm_function_latency_p99_seconds",
        "gauge",
        "99th percentile latency per function.",
    );
    for f in &j.functions {
        let _ = writeln!(
            o,
            "sopm_function_latency_p99_seconds{{function=\"{}\"}} {:.6}",
            label(&f.function),
            f.latency.p99_us as f64 / 1e6
        );
    }

    family(
        &mut o,
        "sopm_pool_instances",
        "gauge",
        "Sandbox instances per pool and state.",
    );
    for p in &stats.pools {
        for (state, n) in [
            ("stem_cell", p.stem_cells),
            ("idle", p.idle),
            ("busy", p.busy),
        ] {
            let _ = writeln!(
                o,
                "sopm_pool_instances{{pool=\"{}\",state=\"{state}\"}} {n}",
                label(&p.pool)
            );
        }
    }
    family(
        &mut o,
        "sopm_pool_events_total",
        "counter",
        "Sandbox instances started, replaced and reaped.",
    );
    for p in &stats.pools {
        for (event, n) in [
            ("started", p.started_total),
            ("replaced", p.replaced_total),
            ("reaped", p.reaped_total),
        ] {
            let _ = writeln!(
                o,
                "sopm_pool_events_total{{pool=\"{}\",event=\"{event}\"}} {n}",
                label(&p.pool)
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use sopm_core::{PoolStats, SchedulerStats};

    #[test]
    fn renders_counters_and_escapes_labels() {
        let stats = PlatformStats {
            uptime_s: 1.5,
            jobs: SchedulerStats {
                submitted: 3,
                succeeded: 2,
                failed: 1,
                functions: vec![sopm_core::stats::FunctionStats {
                    function: "we\"ird".into(),
                    calls: 3,
                    errors: 1,
                    latency: Default::default(),
                }],
                ..Default::default()
            },
            pools: vec![PoolStats {
                pool: "process".into(),
                idle: 2,
                ..Default::default()
            }],
        };
        let text = render(&stats);
        assert!(text.contains("sopm_jobs_submitted_total 3\n"));
        assert!(text.contains("sopm_jobs_finished_total{status=\"failed\"} 1\n"));
        assert!(text.contains("sopm_function_calls_total{function=\"we\\\"ird\"} 3\n"));
        assert!(text.contains("sopm_pool_instances{pool=\"process\",state=\"idle\"} 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
        }
    }
}
