//! Uses SOPM as a library: builds a `Platform` with the built-in functions and
//! in-memory stores, calls a few built-ins, follows a fire-and-forget job, and prints
//! the stats. No server is involved.
//!
//! Run with: cargo run -p examples --example embed

use serde_json::json;
use sopm_core::{FunctionRef, JobRequest, Platform, SubmitMode, Submitted, TenantId};
use sopm_functions::BuiltinExecutor;

#[tokio::main]
async fn main() -> sopm_core::Result<()> {
    let platform = Platform::builder()
        .with_builtins(BuiltinExecutor::shared())
        .build()?;
    let me = TenantId::default();
    println!("{} built-in functions", platform.list_functions().len());

    let sum = platform
        .execute(
            &me,
            FunctionRef::builtin("math.add"),
            json!({"a": 2, "b": 3}),
        )
        .await?;
    println!("math.add 2 + 3 = {}", sum.value);

    let slug = platform
        .execute(
            &me,
            FunctionRef::builtin("text.slugify"),
            json!({"text": "Héllo, Wörld!"}),
        )
        .await?;
    println!("text.slugify -> {}", slug.value);

    match platform
        .execute(
            &me,
            FunctionRef::builtin("math.divide"),
            json!({"a": 1, "b": 0}),
        )
        .await
    {
        Err(e) => println!("math.divide 1 / 0 -> error {}: {e}", e.code()),
        Ok(v) => println!("unexpected: {}", v.value),
    }

    let request = JobRequest::new(
        me.clone(),
        FunctionRef::builtin("math.factorial"),
        json!({"n": 30}),
    );
    if let Submitted::Pending { id, .. } = platform.submit(request, SubmitMode::Detach).await? {
        loop {
            let job = platform.status(&me, &id).await?;
            if job.status.is_terminal() {
                println!(
                    "job {id}: {} -> {}",
                    job.status.as_str(),
                    job.output.unwrap_or_default()
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    let stats = platform.stats();
    println!(
        "jobs: {} succeeded, {} failed; p50 {} us",
        stats.jobs.succeeded, stats.jobs.failed, stats.jobs.latency.p50_us
    );
    platform.shutdown(std::time::Duration::from_secs(1)).await
}
