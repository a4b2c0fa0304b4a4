//! Swaps the in-memory stores for SQLite: jobs and functions survive a restart.
//! Runs a job, drops the platform, opens the same database again and reads the job.
//!
//! Run with: cargo run -p examples --example sqlite_store

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use sopm_backends::sqlite::SqliteConfig;
use sopm_core::{FunctionRef, JobRequest, Platform, SubmitMode, Submitted, TenantId};
use sopm_functions::BuiltinExecutor;

/// A platform with the built-ins whose registry and job store are the SQLite database
/// at `path`.
fn open(path: &Path) -> Result<Platform, Box<dyn std::error::Error>> {
    let store = Arc::new(SqliteConfig::new(path).open()?);
    Ok(Platform::builder()
        .with_builtins(BuiltinExecutor::shared())
        .with_registry(store.clone())
        .with_job_store(store)
        .build()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sopm.db");
    let me = TenantId::default();

    let id = {
        let platform = open(&path)?;
        let request = JobRequest::new(
            me.clone(),
            FunctionRef::builtin("math.fibonacci"),
            json!({"n": 90}),
        );
        let Submitted::Finished(job) = platform.submit(request, SubmitMode::Wait(None)).await?
        else {
            return Err("the job did not finish".into());
        };
        platform.shutdown(std::time::Duration::from_secs(1)).await?;
        job.id
    };

    let platform = open(&path)?;
    let job = platform.status(&me, &id).await?;
    println!(
        "after reopening {}: job {id} is {} with output {}",
        path.display(),
        job.status.as_str(),
        job.output.unwrap_or_default()
    );
    Ok(())
}
