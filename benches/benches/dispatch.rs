//! Built-in dispatch through `Platform` (scheduler, job record, stats) and straight
//! through the executor, on one core (a current-thread runtime), plus a latency
//! distribution of `Platform::execute(math.add)` and the bound on an inline call: each
//! built-in that runs inline for small inputs, called with its example input grown to
//! the largest size that still runs inline, timed.
//!
//! Run with: cargo bench -p benches --bench dispatch

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use serde_json::json;
use serde_json::Value;
use sopm_core::{FunctionRef, Platform, TenantId};
use sopm_functions::{catalog, Builtin, BuiltinExecutor, Handler};

// The allocator the `sopm` server binary uses, so library and server figures compare.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn platform() -> Platform {
    Platform::builder()
        .with_builtins(BuiltinExecutor::shared())
        .build()
        .expect("platform")
}

fn dispatch(c: &mut Criterion) {
    let rt = runtime();
    let platform = platform();
    let tenant = TenantId::default();
    let exec = BuiltinExecutor::new();
    let input = json!({"a": 2, "b": 3});

    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(1));
    g.bench_function("platform_execute_math_add", |b| {
        b.to_async(&rt).iter(|| async {
            let out = platform
                .execute(
                    &tenant,
                    FunctionRef::builtin("math.add"),
                    black_box(json!({"a": 2, "b": 3})),
                )
                .await
                .expect("math.add");
            black_box(out)
        })
    });
    g.bench_function("executor_call_math_add", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                exec.call("math.add", black_box(&input))
                    .await
                    .expect("math.add"),
            )
        })
    });
    g.bench_function("platform_execute_text_uppercase_1k", |b| {
        let text = "héllo wörld ".repeat(85);
        b.to_async(&rt).iter(|| async {
            black_box(
                platform
                    .execute(
                        &tenant,
                        FunctionRef::builtin("text.uppercase"),
                        json!({"text": text}),
                    )
                    .await
                    .expect("text.uppercase"),
            )
        })
    });
    g.finish();
}

/// Times each of many calls and prints calls/s and percentiles: the figures
/// docs/performance.md quotes.
fn latency_distribution() {
    let rt = runtime();
    let platform = platform();
    let tenant = TenantId::default();
    const CALLS: usize = 300_000;
    let mut samples = Vec::with_capacity(CALLS);
    rt.block_on(async {
        for _ in 0..50_000 {
            let _ = platform
                .execute(&tenant, FunctionRef::builtin("math.add"), json!({"a": 2, "b": 3}))
                .await;
        }
        let start = Instant::now();
        for i in 0..CALLS {
            let t = Instant::now();
            let out = platform
                .execute(&tenant, FunctionRef::builtin("math.add"), json!({"a": i, "b": 3}))
                .await
                .expect("math.add");
            samples.push(t.elapsed());
            black_box(out);
        }
        let wall = start.elapsed();
        samples.sort_unstable();
        let at = |q: f64| samples[((q * CALLS as f64) as usize).min(CALLS - 1)];
        println!(
            "platform_execute(math.add), one core, {CALLS} calls: {:.0} calls/s; p50 {:?} p90 {:?} p99 {:?} p99.9 {:?} max {:?}",
            CALLS as f64 / wall.as_secs_f64(),
            at(0.50),
            at(0.90),
            at(0.99),
            at(0.999),
            samples[CALLS - 1]
        );
    });
}

/// The example input with its largest string or array doubled while the call still
/// runs inline; `None` when nothing in it grows.
fn largest_inline_input(b: &Builtin) -> Option<Value> {
    if !matches!(b.handler, Handler::Linear(_)) {
        return None;
    }
    let Value::Object(fields) = &b.example_input else {
        return None;
    };
    let key = fields
        .iter()
        .filter(|(_, v)| v.is_string() || v.is_array())
        .max_by_key(|(_, v)| v.to_string().len())
        .map(|(k, _)| k.clone())?;
    let mut input = b.example_input.clone();
    loop {
        let mut next = input.clone();
        match &mut next[&key] {
            Value::String(s) => *s = s.repeat(2),
            Value::Array(items) => items.extend(items.clone()),
            _ => return None,
        }
        if !b.runs_inline(&next) {
            return (input != b.example_input).then_some(input);
        }
        input = next;
    }
}

/// Prints the slowest inline calls: the bound on how long one call holds an async
/// worker (docs/performance.md).
fn inline_bound() {
    let rt = runtime();
    let mut times: Vec<(Duration, Duration, &'static str, usize, bool)> = Vec::new();
    for b in catalog() {
        let Some(input) = largest_inline_input(&b) else {
            continue;
        };
        let size = sopm_functions::input_size(&input, usize::MAX - 1);
        let mut ok = false;
        let mut each: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                ok = rt.block_on(b.call(&input)).is_ok();
                t.elapsed()
            })
            .collect();
        each.sort_unstable();
        // The median: one call's own time. The slowest of 21 is mostly the shared
        // machine's noise (preemption), printed beside it.
        times.push((each[10], each[20], b.name, size, ok));
    }
    times.sort_by_key(|t| std::cmp::Reverse(t.0));
    println!(
        "inline bound: {} linear built-ins at their largest inline input; median (slowest) of 21 calls:",
        times.len()
    );
    for (t, worst, name, size, ok) in times.iter().take(8) {
        println!(
            "  {name:<24} {size:>6} bytes  {t:?} ({worst:?}){}",
            if *ok { "" } else { " (refused by validation)" }
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = dispatch
}

fn main() {
    inline_bound();
    latency_distribution();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
