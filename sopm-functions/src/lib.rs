//! The 100 built-in functions of SOPM (catalog in `docs/functions.md`), pure Rust,
//! run in-process by [`BuiltinExecutor`] with no cold start.
//!
//! Each function declares its parameters once ([`schema::Params`]); that one
//! declaration gives the published JSON Schema and the validation that runs before
//! the function, so a missing field, a wrong type, a value out of range or an unknown
//! field is `invalid_input` naming the field.
//!
//! Where a call runs is decided per call (see [`Handler`]): a cheap body runs inline on
//! the caller's task; a body whose work grows with its input runs inline when the
//! input is at most [`INLINE_INPUT_BYTES`] and on the blocking pool above that; a body
//! whose work a small input can still make large (big numbers, quadratic distances,
//! regular expressions) always runs on the blocking pool. So no call holds an async
//! worker for long (the bound is measured in docs/performance.md), and a small call
//! pays no thread hop.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use rustc_hash::FxHashMap;
use serde_json::Value;
use sopm_core::{Error, Example, Executor, FunctionInfo, Invocation, Output, Result, Target};

mod data;
mod math;
pub mod schema;
#[cfg(test)]
mod testing;
mod text;
mod util;

use schema::{Args, Param, Params, Ty};

/// A synchronous function body.
pub type SyncFn = fn(&Args<'_>) -> Result<Value>;
/// The waiting part of an asynchronous function body.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<Value>> + Send>>;
/// An asynchronous function body (for the few that wait, such as `util.sleep`): it
/// reads its validated arguments, then returns the future that waits.
pub type AsyncFn = fn(&Args<'_>) -> Result<BoxFuture>;

/// Largest input, in bytes as [`input_size`] counts them, with which a
/// [`Handler::Linear`] body runs inline on the caller's task; a larger one goes to the
/// blocking pool. At this size the slowest such body takes tens of microseconds
/// (docs/performance.md), about what a hop to the pool and back costs.
pub const INLINE_INPUT_BYTES: usize = 8 * 1024;

/// How a function's body runs.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Runs inline on the caller's task: cheap work whatever the input (bounded by the
    /// schema).
    Inline(SyncFn),
    /// Work that grows about linearly with the input: inline up to
    /// [`INLINE_INPUT_BYTES`] of input, on the blocking pool above.
    Linear(SyncFn),
    /// Runs on the blocking thread pool whatever the input: work a small input can
    /// still make large, which could stall the runtime.
    Blocking(SyncFn),
    /// Awaits; never holds a worker thread.
    Async(AsyncFn),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handler::Inline(_) => "Inline",
            Handler::Linear(_) => "Linear",
            Handler::Blocking(_) => "Blocking",
            Handler::Async(_) => "Async",
        })
    }
}

/// One built-in function: its name, description, parameters, example and body.
#[derive(Debug, Clone)]
pub struct Builtin {
    /// Public name, `category.name`.
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Its parameters (shared, so a call on the blocking pool takes them without a copy).
    pub params: Arc<Params>,
    /// Example input.
    pub example_input: Value,
    /// The output of the example input (for a non-deterministic function, a sample).
    pub example_output: Value,
    /// Whether equal inputs give equal outputs.
    pub deterministic: bool,
    /// Its body.
    pub handler: Handler,
}

impl Builtin {
    /// Starts describing a function; finish with [`inline`](BuiltinSpec::inline),
    /// [`linear`](BuiltinSpec::linear), [`blocking`](BuiltinSpec::blocking) or [`asynchronous`](BuiltinSpec::asynchronous).
    pub fn describe(name: &'static str, description: &'static str) -> BuiltinSpec {
        BuiltinSpec {
            name,
            description,
            params: Vec::new(),
            example: None,
            deterministic: true,
        }
    }

    /// The category (`math`, `text`, `data`, `util`).
    pub fn category(&self) -> &'static str {
        self.name.split('.').next().unwrap_or("")
    }

    /// How the catalog lists it.
    pub fn info(&self) -> FunctionInfo {
        FunctionInfo {
            name: self.name.to_string(),
            category: self.category().to_string(),
            description: self.description.to_string(),
            input_schema: self.params.schema(),
            example: Example {
                input: self.example_input.clone(),
                output: self.example_output.clone(),
            },
            deterministic: self.deterministic,
        }
    }

    /// Whether a call with `input` runs inline on the caller's task (else on the
    /// blocking pool, or, for an asynchronous body, awaiting).
    pub fn runs_inline(&self, input: &Value) -> bool {
        match self.handler {
            Handler::Inline(_) => true,
            Handler::Linear(_) => input_fits(input, INLINE_INPUT_BYTES),
            Handler::Blocking(_) | Handler::Async(_) => false,
        }
    }

    /// Validates `input` and runs the function.
    pub async fn call(&self, input: &Value) -> Result<Value> {
        match self.handler {
            Handler::Inline(f) => self.run_inline(f, input),
            Handler::Linear(f) if input_fits(input, INLINE_INPUT_BYTES) => {
                self.run_inline(f, input)
            }
            Handler::Async(f) => f(&self.params.validate(input)?)?.await,
            // The blocking pool needs an owned input; `call_shared` avoids this copy.
            Handler::Linear(_) | Handler::Blocking(_) => {
                self.call_shared(Arc::new(input.clone())).await
            }
        }
    }

    /// Validates `input` and runs the function, sharing the input with the blocking
    /// pool instead of copying it (inputs can be megabytes).
    pub async fn call_shared(&self, input: Arc<Value>) -> Result<Value> {
        match self.handler {
            Handler::Inline(f) => self.run_inline(f, &input),
            Handler::Linear(f) if input_fits(&input, INLINE_INPUT_BYTES) => {
                self.run_inline(f, &input)
            }
            Handler::Linear(f) | Handler::Blocking(f) => {
                let params = Arc::clone(&self.params);
                let name = self.name;
                tokio::task::spawn_blocking(move || {
                    let args = params.validate(&input)?;
                    guarded(name, || f(&args))
                })
                .await
                .map_err(|e| Error::Internal(format!("{name} did not finish: {e}")))?
            }
            Handler::Async(f) => f(&self.params.validate(&input)?)?.await,
        }
    }
}

impl Builtin {
    fn run_inline(&self, f: SyncFn, input: &Value) -> Result<Value> {
        let args = self.params.validate(input)?;
        guarded(self.name, || f(&args))
    }
}

/// The size of a JSON value for deciding where a call runs: the bytes of its strings
/// and keys, 8 per number, boolean or null, and 2 per array element or object field,
/// counted only until the total passes `limit` (so a large input costs no more to
/// size than a small one). Returns at most `limit + 1` once past it.
pub fn input_size(value: &Value, limit: usize) -> usize {
    fn walk(v: &Value, total: &mut usize, limit: usize) {
        match v {
            Value::String(s) => *total += s.len(),
            Value::Array(items) => {
                *total += 2 * items.len();
                for item in items {
                    if *total > limit {
                        return;
                    }
                    walk(item, total, limit);
                }
            }
            Value::Object(fields) => {
                *total += 2 * fields.len();
                for (key, item) in fields {
                    if *total > limit {
                        return;
                    }
                    *total += key.len();
                    walk(item, total, limit);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => *total += 8,
        }
    }
    let mut total = 0;
    walk(value, &mut total, limit);
    total.min(limit + 1)
}

fn input_fits(value: &Value, limit: usize) -> bool {
    input_size(value, limit) <= limit
}

/// Runs a body, turning a panic (a bug) into `internal_error` instead of unwinding
/// through the scheduler.
fn guarded(name: &str, f: impl FnOnce() -> Result<Value>) -> Result<Value> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::Internal(format!("{name} panicked"))))
}

/// A function being described; see [`Builtin::describe`].
#[derive(Debug)]
pub struct BuiltinSpec {
    name: &'static str,
    description: &'static str,
    params: Vec<Param>,
    example: Option<(Value, Value)>,
    deterministic: bool,
}

impl BuiltinSpec {
    /// A required parameter.
    pub fn param(mut self, name: &'static str, ty: Ty) -> Self {
        self.params.push(Param {
            name,
            ty,
            required: true,
        });
        self
    }

    /// An optional parameter (absent or null means the default).
    pub fn optional(mut self, name: &'static str, ty: Ty) -> Self {
        self.params.push(Param {
            name,
            ty,
            required: false,
        });
        self
    }

    /// The example input and its output.
    pub fn example(mut self, input: Value, output: Value) -> Self {
        self.example = Some((input, output));
        self
    }

    /// Marks the function as not deterministic.
    pub fn nondeterministic(mut self) -> Self {
        self.deterministic = false;
        self
    }

    fn finish(self, handler: Handler) -> Builtin {
        let (example_input, example_output) = self
            .example
            .unwrap_or_else(|| panic!("{} has no example", self.name));
        Builtin {
            name: self.name,
            description: self.description,
            params: Arc::new(Params(self.params)),
            example_input,
            example_output,
            deterministic: self.deterministic,
            handler,
        }
    }

    /// Finishes with a cheap body run inline.
    pub fn inline(self, f: SyncFn) -> Builtin {
        self.finish(Handler::Inline(f))
    }

    /// Finishes with a body whose work grows about linearly with its input: inline
    /// for an input up to [`INLINE_INPUT_BYTES`], on the blocking pool above.
    pub fn linear(self, f: SyncFn) -> Builtin {
        self.finish(Handler::Linear(f))
    }

    /// Finishes with a CPU-heavy body run on the blocking pool whatever its input.
    pub fn blocking(self, f: SyncFn) -> Builtin {
        self.finish(Handler::Blocking(f))
    }

    /// Finishes with an asynchronous body.
    pub fn asynchronous(self, f: AsyncFn) -> Builtin {
        self.finish(Handler::Async(f))
    }
}

/// All 100 built-ins, in catalog order.
pub fn catalog() -> Vec<Builtin> {
    let mut all = Vec::with_capacity(100);
    math::register(&mut all);
    text::register(&mut all);
    data::register(&mut all);
    util::register(&mut all);
    all
}

/// Runs built-ins in-process. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct BuiltinExecutor {
    builtins: Vec<Builtin>,
    index: FxHashMap<&'static str, usize>,
    infos: Vec<FunctionInfo>,
}

impl BuiltinExecutor {
    /// An executor of the whole catalog.
    pub fn new() -> Self {
        Self::from_builtins(catalog())
    }

    /// An executor of the given functions.
    pub fn from_builtins(builtins: Vec<Builtin>) -> Self {
        let index = builtins
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name, i))
            .collect();
        let infos = builtins.iter().map(Builtin::info).collect();
        BuiltinExecutor {
            builtins,
            index,
            infos,
        }
    }

    /// The executor behind an `Arc<dyn Executor>`, ready for
    /// [`PlatformBuilder::with_builtins`](sopm_core::PlatformBuilder::with_builtins).
    pub fn shared() -> Arc<dyn Executor> {
        Arc::new(Self::new())
    }

    /// One built-in by name.
    pub fn get(&self, name: &str) -> Option<&Builtin> {
        self.index.get(name).map(|&i| &self.builtins[i])
    }

    /// Validates and runs one built-in directly (no scheduler, no job record).
    pub async fn call(&self, name: &str, input: &Value) -> Result<Value> {
        match self.get(name) {
            Some(b) => b.call(input).await,
            None => Err(Error::not_found(format!(
                "no built-in function named '{name}'"
            ))),
        }
    }
}

impl Default for BuiltinExecutor {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Executor for BuiltinExecutor {
    fn name(&self) -> &str {
        "builtin"
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        match &invocation.target {
            Target::Builtin(name) => match self.get(name) {
                Some(b) => b.call_shared(invocation.input).await.map(Output::from),
                None => Err(Error::not_found(format!(
                    "no built-in function named '{name}'"
                ))),
            },
            Target::User(v) => Err(Error::Internal(format!(
                "the builtin executor cannot run user function '{}'",
                v.function_id
            ))),
        }
    }

    fn catalog(&self) -> &[FunctionInfo] {
        &self.infos
    }
}
