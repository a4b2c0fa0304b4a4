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
/// unknown function, a call that waits for a slot and runs once it frees, `overloaded`
/// with a retry delay when the queue is full, `unavailable` after shutdown; each
/// counted in the stats like the job it stands for.
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

    // One slot: a call made while a job runs waits for it, and runs once it ends.
    let slow = rig.detached(&tenant, "slow", json!({})).await;
    rig.wait_running(&tenant, &slow).await;
    let before = s.stats().submitted;
    let queued = tokio::spawn({
        let s = s.clone();
        let r = request(&tenant, "echo", json!("queued"));
        async move { s.call(r).await }
    });
    wait_until(s.as_ref(), "the waiting call to be accepted", |st| {
        st.submitted > before
    })
    .await;
    expect_ok(s.cancel(&tenant, &slow).await, "cancel the running job");
    let out = expect_ok(queued.await.expect("task"), "the call that waited");
    assert_eq!(
        out.value,
        json!("queued"),
        "a call that waited for a slot runs once it frees"
    );

    // The slot and the queue's one place taken: a call is refused.
    let running = rig.detached(&tenant, "slow", json!({})).await;
    rig.wait_running(&tenant, &running).await;
    let waiting = rig.detached(&tenant, "slow", json!({})).await;
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
    expect_ok(s.cancel(&tenant, &running).await, "cancel");
    rig.wait_running(&tenant, &waiting).await;
    expect_ok(s.cancel(&tenant, &waiting).await, "cancel");

    let st = wait_until(s.as_ref(), "the jobs to settle", |st| {
        (st.running, st.queue_depth) == (0, 0) && st.latency.count == 7
    })
    .await;
    assert_eq!(
        (st.submitted, st.rejected),
        (7, 1),
        "accepted calls and jobs and the refusal are counted (an unknown function is neither)"
    );
    assert_eq!(
        (st.succeeded, st.failed, st.timed_out, st.cancelled),
        (2, 1, 1, 3),
        "each call's outcome is counted like a job's"
    );
    assert_eq!(
        st.latency.count, 7,
        "one latency sample per finished call or job"
    );
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
