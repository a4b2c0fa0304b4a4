//! The backend table: every backend this node knows by name (with its executor and
//! builder when it runs here, or neither when it only routes there), the operator's
//! rules that pick one for an upload, and the policy on what a tenant may ask for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::builder::Builder;
use crate::dispatch::BUILTIN_BACKEND;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::policy::{ExecutorPolicy, Isolation};
use crate::registry::{validate_function_name, FunctionVersion};
use crate::types::{truncate_for_message, Runtime, TenantId};
use crate::upload::UploadSpec;

/// A named sandbox backend: the executor that runs user functions in it (`None` for
/// a remote backend, which other nodes run) and the builder of the artifacts it runs
/// (`None` for a backend registered through
/// [`PlatformBuilder::with_executor`](crate::PlatformBuilder::with_executor), whose
/// runtime's builder builds for it).
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    pub(crate) executor: Option<Arc<dyn Executor>>,
    pub(crate) builder: Option<Arc<dyn Builder>>,
}

/// The sandbox backends by name, and the rules that pick one for a version.
#[derive(Debug)]
pub(crate) struct Sandboxes {
    pub(crate) named: BTreeMap<String, Sandbox>,
    /// Each name once as a shared string, for routes.
    names: BTreeMap<String, Arc<str>>,
    pub(crate) by_runtime: HashMap<Runtime, String>,
    by_function: BTreeMap<String, String>,
    runtime_builders: HashMap<Runtime, Arc<dyn Builder>>,
    /// Which backends tenants may ask for.
    pub(crate) policy: ExecutorPolicy,
    /// Declared isolation of backends, by name (else assumed from the name).
    pub(crate) isolation: BTreeMap<String, Isolation>,
}

/// Longest backend name accepted, in bytes.
const MAX_SANDBOX_NAME_BYTES: usize = 64;

impl Sandboxes {
    /// Checks that every name is well formed (and not `builtin`) and every rule names a
    /// registered backend.
    pub(crate) fn new(
        named: BTreeMap<String, Sandbox>,
        by_runtime: HashMap<Runtime, String>,
        by_function: BTreeMap<String, String>,
        runtime_builders: HashMap<Runtime, Arc<dyn Builder>>,
        clashes: &[String],
    ) -> Result<Self> {
        if let Some(name) = clashes.first() {
            return Err(Error::invalid(format!(
                "two different executors are registered as '{name}'; register each under its own name (with_sandbox)"
            )));
        }
        for name in named.keys() {
            if name == BUILTIN_BACKEND {
                return Err(Error::invalid(format!(
                    "executor name '{BUILTIN_BACKEND}' is the built-in functions' own; register the backend under another name"
                )));
            }
            let ok = !name.is_empty()
                && name.len() <= MAX_SANDBOX_NAME_BYTES
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(Error::invalid(format!(
                    "executor name '{}': expected 1 to {MAX_SANDBOX_NAME_BYTES} characters of letters, digits, '_', '-', '.'",
                    truncate_for_message(name)
                )));
            }
        }
        let names = named
            .keys()
            .map(|n| (n.clone(), Arc::from(n.as_str())))
            .collect();
        let sandboxes = Sandboxes {
            names,
            named,
            by_runtime,
            by_function,
            runtime_builders,
            policy: ExecutorPolicy::default(),
            isolation: BTreeMap::new(),
        };
        let mut runtimes: Vec<_> = sandboxes.by_runtime.iter().collect();
        runtimes.sort_by_key(|(r, _)| r.as_str());
        for (runtime, name) in runtimes {
            if !sandboxes.named.contains_key(name) {
                return Err(Error::invalid(format!(
                    "the {} runtime's executor '{}' is not registered; {}",
                    runtime.as_str(),
                    truncate_for_message(name),
                    sandboxes.available()
                )));
            }
        }
        for (function, name) in &sandboxes.by_function {
            validate_function_name(function).map_err(|e| {
                Error::invalid(format!(
                    "executor rule for '{}': {e}",
                    truncate_for_message(function)
                ))
            })?;
            if !sandboxes.named.contains_key(name) {
                return Err(Error::invalid(format!(
                    "the executor '{}' of functions named '{function}' is not registered; {}",
                    truncate_for_message(name),
                    sandboxes.available()
                )));
            }
        }
        Ok(sandboxes)
    }

    /// "available: a, b" (or "none is available"), for error messages.
    fn available(&self) -> String {
        if self.named.is_empty() {
            "no executor is available".to_string()
        } else {
            let names: Vec<&str> = self.named.keys().map(String::as_str).collect();
            format!("available: {}", names.join(", "))
        }
    }

    /// The backend an upload goes to: the client's ask if the operator's policy allows
    /// it to this tenant, else the operator's rule for the function's name, else the
    /// runtime's default; `None` when none applies. An ask for a backend that is not
    /// registered is `invalid_input`; one the policy does not allow is `forbidden`
    /// (`executor_not_allowed`), naming the backends that are.
    pub(crate) fn choose(&self, tenant: &TenantId, spec: &UploadSpec) -> Result<Option<&str>> {
        let routed = self
            .by_function
            .get(&spec.name)
            .or_else(|| self.by_runtime.get(&spec.runtime))
            .map(String::as_str);
        let Some(ask) = &spec.executor else {
            return Ok(routed);
        };
        let Some((name, _)) = self.named.get_key_value(ask.as_str()) else {
            return Err(Error::invalid(format!(
                "executor: '{}' is not available on this server; {}",
                truncate_for_message(ask),
                self.available()
            )));
        };
        let allowed = self.allowed_asks(tenant, routed);
        if Some(name.as_str()) == routed || allowed.contains(&name.as_str()) {
            return Ok(Some(name.as_str()));
        }
        let why = match (self.policy.list_for(tenant), routed) {
            (Some(_), _) => "the operator's policy lists the executors this tenant may ask for".to_string(),
            (None, Some(r)) => format!(
                "this function is routed to '{r}' ({}), and an upload may not ask for an executor that isolates less ('{name}' is {})",
                self.isolation_of(r).as_str(),
                self.isolation_of(name).as_str()
            ),
            (None, None) => "the operator's policy does not allow it".to_string(),
        };
        Err(Error::forbidden(
            "executor_not_allowed",
            format!(
                "executor: '{name}' is not allowed for this tenant: {why}; allowed: {}",
                if allowed.is_empty() {
                    "none (leave executor out to use the operator's choice)".to_string()
                } else {
                    allowed.join(", ")
                }
            ),
        ))
    }

    /// How strongly the backend `name` isolates: as declared, else as assumed from its
    /// name.
    fn isolation_of(&self, name: &str) -> Isolation {
        self.isolation
            .get(name)
            .copied()
            .unwrap_or_else(|| Isolation::assumed_for(name))
    }

    /// The registered backends `tenant` may ask for when the operator routes the upload
    /// to `routed` (see [`ExecutorPolicy`]), sorted; the route itself is always allowed.
    fn allowed_asks<'a>(&'a self, tenant: &TenantId, routed: Option<&'a str>) -> Vec<&'a str> {
        let floor = routed.map(|r| self.isolation_of(r));
        let list = self.policy.list_for(tenant);
        self.named
            .keys()
            .map(String::as_str)
            .filter(|n| {
                Some(*n) == routed
                    || match list {
                        Some(list) => list.contains(*n),
                        None => floor.is_none_or(|f| self.isolation_of(n) >= f),
                    }
            })
            .collect()
    }

    /// The name of the backend a version runs in: the one recorded on it, else its
    /// runtime's default.
    pub(crate) fn name_of<'a>(&'a self, v: &'a FunctionVersion) -> Option<&'a str> {
        v.executor
            .as_deref()
            .or_else(|| self.by_runtime.get(&v.runtime).map(String::as_str))
    }

    /// The backend a version runs in (see [`name_of`](Self::name_of)), as the shared
    /// name a route carries; `unavailable` when no backend of that name is known here.
    pub(crate) fn backend_of(&self, v: &FunctionVersion) -> Result<&Arc<str>> {
        match self.name_of(v) {
            Some(name) => self.names.get(name).ok_or_else(|| {
                Error::Unavailable(format!(
                    "version {} of '{}' runs in the '{}' executor, which is not configured on this server",
                    v.version,
                    v.function_id,
                    truncate_for_message(name)
                ))
            }),
            None => Err(Error::Unavailable(format!(
                "no executor is configured for the {} runtime",
                v.runtime.as_str()
            ))),
        }
    }

    /// The backends that run on this node, with their executors.
    pub(crate) fn local_executors(&self) -> impl Iterator<Item = (&str, &Arc<dyn Executor>)> {
        self.named
            .iter()
            .filter_map(|(n, s)| s.executor.as_ref().map(|e| (n.as_str(), e)))
    }

    /// The builder for a version of `runtime` that runs in the backend `name`: that
    /// backend's own, else the runtime's.
    pub(crate) fn builder(
        &self,
        runtime: Runtime,
        name: Option<&str>,
    ) -> Option<&Arc<dyn Builder>> {
        name.and_then(|n| self.named.get(n))
            .and_then(|s| s.builder.as_ref())
            .or_else(|| self.runtime_builders.get(&runtime))
    }
}
