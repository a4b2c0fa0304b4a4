//! Calling built-ins from the unit tests: through validation and the body, as
//! [`BuiltinExecutor::call`] runs them.

use std::sync::OnceLock;

use serde_json::Value;
use sopm_core::Result;

use crate::BuiltinExecutor;

/// The whole catalog, built once for all tests.
fn executor() -> &'static BuiltinExecutor {
    static EXECUTOR: OnceLock<BuiltinExecutor> = OnceLock::new();
    EXECUTOR.get_or_init(BuiltinExecutor::new)
}

/// Runs one built-in.
pub(crate) async fn call(name: &str, input: Value) -> Result<Value> {
    executor().call(name, &input).await
}

/// The output of a call that must succeed.
pub(crate) async fn ok(name: &str, input: Value) -> Value {
    executor()
        .call(name, &input)
        .await
        .unwrap_or_else(|e| panic!("{name} {input}: {e}"))
}

/// The error code of a call that must fail.
pub(crate) async fn code(name: &str, input: Value) -> &'static str {
    match executor().call(name, &input).await {
        Ok(v) => panic!("{name} {input}: expected an error, got {v}"),
        Err(e) => e.code(),
    }
}
