//! The scheduler check of [`Scheduler::call`]: a call that wants only an output is
//! accepted, refused, limited and counted exactly like a job.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{expect_code, expect_ok, unique_tenant, SchedulerHarness, PATIENCE};
use crate::error::Error;
use crate::scheduler::{JobRequest, Scheduler};
use crate::types::{FunctionRef, TenantId};

fn request(tenant: &TenantId, function: &str, input: serde_json::Value) -> JobRequest {
    JobRequest::new(tenant.clone(), FunctionRef::builtin(function), input)
}

/// `call`: the output (with the function's logs), the error of a failing function
/// (message and traceback kept), `timeout` at the time limit, `not_found` for an
/// unknown function, `overloaded` with a retry delay when the queue is full, a queued
/// call that runs once a slot frees, `unavailable` after shutdown; each counted in the
/// stats like the job it stands for.
pub async fn scheduler_call(harness: &SchedulerHarness) {
    let rig = harness.start(1, 1);
    let tenant = unique_tenant("call");
    let s = &rig.scheduler;

    let input = json!({"hello": "wörld", "n": [1, 2, 3]});
    let out = expect_ok(
        s.call(request(&tenant, "echo", input.clone())).await,
        "call",
    );
    assert_eq!(out.value, input, "a call answers the function's output");
    assert_eq!(out.logs.as_deref(), Some("echo\n"), "and its logs");

    let err = expect_code(
        s.call(request(&tenant, "fail", json!({"message": "no such file"})))
            .await,
        "function_error",
        "a failing function's call",
    );
    let info = crate::error::ErrorInfo::from(&err);
    assert_eq!(
        info.message, "no such file",
        "the function's message is kept"
    );
    assert_eq!(
        info.traceback.as_deref(),
        Some(super::FAIL_TRACEBACK),
        "the traceback is kept"
    );

    let mut late = request(&tenant, "sleep_ms", json!({"ms": 10_000}));
    late.timeout = Some(Duration::from_millis(50));
    expect_code(s.call(late).await, "timeout", "a call past its limit");
    expect_code(
        s.call(request(&tenant, "no-such-function", json!({})))
            .await,
        "not_found",
        "a call of an unknown function",
    );

    // One slot, one queue place: a running call and a queued one fill both.
    let running = tokio::spawn({
        let s = s.clone();
        let r = request(&tenant, "sleep_ms", json!({"ms": 3_000}));
        async move { s.call(r).await }
    });
    wait_until(s.as_ref(), "the first call to run", |st| st.running == 1).await;
    let queued = tokio::spawn({
        let s = s.clone();
        let r = request(&tenant, "echo", json!("queued"));
        async move { s.call(r).await }
    });
    wait_until(s.as_ref(), "the second call to queue", |st| {
        st.queue_depth == 1
    })
    .await;
    match expect_code(
        s.call(request(&tenant, "echo", json!(1))).await,
        "overloaded",
        "a call with a full queue",
    ) {
        Error::Overloaded { retry_after, .. } => assert!(
            retry_after > Duration::ZERO,
            "overloaded carries a retry delay"
        ),
        other => panic!("expected Error::Overloaded, got {other:?}"),
    }
    let first = expect_ok(running.await.expect("task"), "the running call");
    assert_eq!(first.value, json!({"slept_ms": 3_000}));
    let second = expect_ok(queued.await.expect("task"), "the queued call");
    assert_eq!(
        second.value,
        json!("queued"),
        "a queued call runs once a slot frees"
    );

    let st = wait_until(s.as_ref(), "the calls to settle", |st| {
        (st.running, st.queue_depth) == (0, 0)
    })
    .await;
    assert_eq!(
        (st.submitted, st.rejected),
        (5, 1),
        "accepted calls and the refusal are counted (an unknown function is neither)"
    );
    assert_eq!(
        (st.succeeded, st.failed, st.timed_out, st.cancelled),
        (3, 1, 1, 0),
        "each call's outcome is counted"
    );
    assert_eq!(st.latency.count, 5, "one latency sample per finished call");
    let echo = st.functions.iter().find(|f| f.function == "echo");
    assert_eq!(
        echo.map(|f| (f.calls, f.errors)),
        Some((2, 0)),
        "per-function calls"
    );

    rig.shut_down().await;
    expect_code(
        s.call(request(&tenant, "echo", json!(1))).await,
        "unavailable",
        "a call after shutdown",
    );
}

/// Polls the stats until `done` holds (at most [`PATIENCE`]); returns them.
async fn wait_until(
    s: &dyn Scheduler,
    what: &str,
    done: impl Fn(&crate::SchedulerStats) -> bool,
) -> crate::SchedulerStats {
    let until = Instant::now() + PATIENCE;
    loop {
        let st = s.stats();
        if done(&st) {
            return st;
        }
        assert!(
            Instant::now() < until,
            "waiting for {what}: stats are still {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
