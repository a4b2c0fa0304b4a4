//! Implements the `Executor` trait for a new kind of function and swaps it in: here an
//! executor that runs "python" functions by upper-casing their input (a stand-in for a
//! real sandbox), registered for the Python runtime beside the built-ins.
//!
//! Run with: cargo run -p examples --example custom_executor

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use sopm_core::{
    Artifact, BuildStatus, Error, Executor, FunctionRef, Invocation, Limits, NewVersion, Output,
    Platform, Result, Runtime, Target, TenantId,
};
use sopm_functions::BuiltinExecutor;

/// An executor that answers every call with the input's `text` upper-cased.
#[derive(Debug, Default)]
struct ShoutingExecutor;

#[async_trait]
impl Executor for ShoutingExecutor {
    fn name(&self) -> &str {
        "shouting"
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        let Target::User(version) = &invocation.target else {
            return Err(Error::Internal("only user functions come here".into()));
        };
        let text = invocation.input["text"]
            .as_str()
            .ok_or_else(|| Error::invalid("field 'text': expected a string"))?;
        Ok(Output {
            value: json!({"function": version.name, "shout": text.to_uppercase()}),
            logs: Some(format!(
                "{} ran version {}\n",
                version.name, version.version
            )),
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let platform = Platform::builder()
        .with_builtins(BuiltinExecutor::shared())
        .with_executor(Runtime::Python, Arc::new(ShoutingExecutor))
        .build()?;
    let me = TenantId::default();

    // Register a function by hand (the upload API and builders do this in the server).
    let v = platform
        .registry()
        .create_version(NewVersion {
            tenant: me.clone(),
            name: "shout".into(),
            runtime: Runtime::Python,
            handler: "main.handle".into(),
            limits: Limits::default(),
            env: BTreeMap::new(),
            source_digest: "example".into(),
            executor: None,
        })
        .await?;
    platform
        .registry()
        .finish_build(
            &v.function_id,
            v.version,
            BuildStatus::Ready,
            Some(Artifact::Directory {
                path: "/nonexistent".into(),
                digest: None,
            }),
        )
        .await?;

    let function = FunctionRef::User {
        id: v.function_id.clone().into(),
        version: None,
    };
    let out = platform
        .execute(&me, function, json!({"text": "hello"}))
        .await?;
    println!("output: {}", out.value);
    println!("logs: {}", out.logs.unwrap_or_default().trim_end());

    let builtin = platform
        .execute(
            &me,
            FunctionRef::builtin("text.reverse"),
            json!({"text": "héllo"}),
        )
        .await?;
    println!("built-ins still work: {}", builtin.value);
    Ok(())
}
