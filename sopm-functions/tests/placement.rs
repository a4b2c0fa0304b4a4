//! Where a built-in call runs: a small call of a linear body runs inline, a large one
//! goes to the blocking pool and leaves the async worker free, so other calls keep
//! answering while it is in flight; known-heavy bodies always go to the pool.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sopm_core::{Executor, Invocation, Target, TenantId};
use sopm_functions::{input_size, BuiltinExecutor, INLINE_INPUT_BYTES};

#[test]
fn size_decides_inline_or_pool_and_heavy_bodies_always_use_the_pool() {
    let exec = BuiltinExecutor::new();
    let upper = exec.get("text.uppercase").expect("text.uppercase");
    let small = json!({"text": "a".repeat(1024)});
    let big = json!({"text": "a".repeat(INLINE_INPUT_BYTES + 1)});
    assert!(upper.runs_inline(&small));
    assert!(!upper.runs_inline(&big));
    // Always inline: cheap whatever the input.
    assert!(exec
        .get("math.add")
        .unwrap()
        .runs_inline(&json!({"a": 1, "b": 2})));
    // A tiny input can still mean a lot of work.
    assert!(!exec
        .get("math.nth_prime")
        .unwrap()
        .runs_inline(&json!({"n": 1_000_000})));
    assert!(!exec
        .get("text.levenshtein")
        .unwrap()
        .runs_inline(&json!({"a": "kitten", "b": "sitting"})));
}

#[test]
fn input_size_counts_strings_keys_and_items_and_stops_past_the_limit() {
    assert_eq!(input_size(&json!("abc"), 100), 3);
    // 2 per field + key "text" (4) + value (5).
    assert_eq!(input_size(&json!({"text": "hello"}), 100), 11);
    // 2 per element + 8 per number.
    assert_eq!(input_size(&json!([1, 2, 3]), 100), 30);
    let huge = Value::Array(vec![json!("x".repeat(100)); 1_000_000]);
    assert_eq!(input_size(&huge, 1000), 1001);
}

/// The one blocking thread of the runtime is held until `release` is sent, so a call
/// sent to the pool cannot finish before then; calls that run inline must.
#[test]
fn a_huge_input_on_the_pool_leaves_small_calls_answering() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let exec = Arc::new(BuiltinExecutor::new());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || held.recv());

        let text = "é".repeat(500_000); // 1,000,000 bytes, under the 1 MiB cap
        let huge = {
            let exec = exec.clone();
            let input = Arc::new(json!({"text": text}));
            tokio::spawn(async move {
                exec.invoke(Invocation {
                    job_id: sopm_core::JobId::random(),
                    tenant: TenantId::default(),
                    target: Target::Builtin(Arc::from("text.uppercase")),
                    input,
                    deadline: std::time::Instant::now() + Duration::from_secs(60),
                })
                .await
            })
        };
        let hash = {
            let exec = exec.clone();
            tokio::spawn(async move {
                exec.call(
                    "util.hash",
                    &json!({"text": "x".repeat(900_000), "algorithm": "sha256"}),
                )
                .await
            })
        };
        tokio::task::yield_now().await;

        // Small calls complete (each on this one thread) while the huge ones wait for
        // the held pool thread. Bounded: if a small call went to the pool it would wait
        // behind the blocker, and the timeout turns that into a failure, not a hang.
        let small = async {
            for i in 0..200i64 {
                let s = exec
                    .call(
                        "text.uppercase",
                        &json!({"text": "héllo wörld ".repeat(85)}),
                    )
                    .await
                    .expect("small uppercase");
                assert!(s.as_str().unwrap().starts_with("HÉLLO WÖRLD"));
                let sum = exec
                    .call("math.add", &json!({"a": i, "b": 1}))
                    .await
                    .expect("math.add");
                assert_eq!(sum, json!(i + 1));
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), small)
            .await
            .expect("small calls ran inline while the pool was held");
        assert!(
            !huge.is_finished() && !hash.is_finished(),
            "the huge calls finished while the only pool thread was held: they ran inline"
        );

        release.send(()).expect("release the pool thread");
        blocker.await.expect("blocker").expect("blocker released");
        let out = huge.await.expect("huge task").expect("huge uppercase");
        let upper = out.value.as_str().expect("text");
        assert_eq!(upper.len(), 1_000_000);
        assert!(upper.chars().all(|c| c == 'É'));
        let digest = hash.await.expect("hash task").expect("hash");
        assert!(digest.to_string().len() > 64, "{digest}");
    });
}
