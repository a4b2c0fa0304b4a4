//! A fixed number of calls of one execute path, for counting instructions under
//! `valgrind --tool=callgrind` (scripts/bench-instructions.sh runs it twice with
//! different counts and divides the difference, so start-up and warm-up cancel out).
//!
//! Paths: `math_add` and `text_uppercase_1k` are `Platform::execute` of a built-in
//! (in-memory stores, one current-thread runtime); `user_warm` is the server-side part
//! of a warm user-function call: `Platform::execute` of a ready user function (routing
//! through the in-memory registry, scheduler, `Dispatcher`, job record, stats) whose
//! executor answers after one yield to the runtime, like a sandbox answering over a
//! pipe, with no sandbox behind it.
//!
//! Run with: cargo bench -p benches --bench instructions -- PATH CALLS

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use sopm_core::{
    Artifact, BuildLog, BuildStatus, Builder, Executor, FunctionRef, FunctionVersion, Invocation,
    Limits, Output, Platform, Result, Runtime, Source, TenantId, UploadSpec,
};
use sopm_functions::BuiltinExecutor;

// The allocator the `sopm` server binary uses, so library and server figures compare.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Warm-up calls before the counted ones (pools, maps and allocator caches filled).
const WARM_UP: usize = 2_000;

/// Answers `{"sum": a + b}` after one yield, without any sandbox.
#[derive(Debug)]
struct YieldingExecutor;

#[async_trait]
impl Executor for YieldingExecutor {
    fn name(&self) -> &str {
        "fake"
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        tokio::task::yield_now().await;
        let a = invocation.input["a"].as_i64().unwrap_or(0);
        let b = invocation.input["b"].as_i64().unwrap_or(0);
        Ok(Output::from(json!({ "sum": a + b })))
    }
}

/// Builds nothing: the artifact is a path nobody reads.
#[derive(Debug)]
struct NoBuilder;

#[async_trait]
impl Builder for NoBuilder {
    fn name(&self) -> &str {
        "fake"
    }

    async fn build(&self, _: &FunctionVersion, _: &Source, _: &dyn BuildLog) -> Result<Artifact> {
        Ok(Artifact::Directory {
            path: "/nonexistent".into(),
            digest: None,
        })
    }
}

fn platform() -> Platform {
    Platform::builder()
        .with_builtins(BuiltinExecutor::shared())
        .with_executor(Runtime::Python, Arc::new(YieldingExecutor))
        .with_builder(Runtime::Python, Arc::new(NoBuilder))
        .build()
        .expect("platform")
}

/// Uploads the fake user function and waits until it is ready; returns its id.
async fn user_function(platform: &Platform, tenant: &TenantId) -> Arc<str> {
    let mut source = Source::default();
    source
        .files
        .insert("main.py".into(), b"def handle(e): return e".to_vec());
    let spec = UploadSpec {
        name: "sum".into(),
        runtime: Runtime::Python,
        handler: "main.handle".into(),
        limits: Limits::default(),
        env: Default::default(),
        executor: None,
    };
    let v = platform.upload(tenant, spec, source).await.expect("upload");
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let f = platform
            .function(tenant, &v.function_id)
            .await
            .expect("function");
        if f.versions.iter().any(|x| x.status == BuildStatus::Ready) {
            return Arc::from(v.function_id.as_str());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the fake user function did not become ready");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; skip flags.
    let args: Vec<&str> = args[1..]
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (path, calls) = match args.as_slice() {
        [path, calls] => (*path, calls.parse::<usize>().expect("CALLS is a number")),
        [path] => (*path, 10_000),
        _ => {
            eprintln!("usage: instructions math_add|text_uppercase_1k|user_warm [CALLS]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let platform = platform();
    let tenant = TenantId::default();
    let text = "héllo wörld ".repeat(85);
    rt.block_on(async {
        let (function, input): (FunctionRef, Value) = match path {
            "math_add" => (FunctionRef::builtin("math.add"), json!({"a": 2, "b": 3})),
            "text_uppercase_1k" => (
                FunctionRef::builtin("text.uppercase"),
                json!({"text": text}),
            ),
            "user_warm" => (
                FunctionRef::User {
                    id: user_function(&platform, &tenant).await,
                    version: None,
                },
                json!({"a": 2, "b": 3}),
            ),
            other => {
                eprintln!("unknown path '{other}'");
                std::process::exit(2);
            }
        };
        let start = Instant::now();
        for i in 0..WARM_UP + calls {
            if i == WARM_UP {
                // Not counted by the script (it divides a difference), but handy.
                eprintln!("warm-up took {:?}", start.elapsed());
            }
            let out = platform
                .execute(&tenant, function.clone(), black_box(input.clone()))
                .await
                .expect("call");
            black_box(out);
        }
    });
    println!("{path}: {calls} calls after {WARM_UP} warm-up calls");
}
