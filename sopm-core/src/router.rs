//! The `StandardRouter`: resolves a function reference from the catalog and the
//! registry alone into a route naming the backend that runs it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rustc_hash::FxHashSet;

use crate::error::{Error, Result};
use crate::executor::Target;
use crate::registry::{BuildStatus, Registry};
use crate::sandboxes::Sandboxes;
use crate::scheduler::{Route, Router};
use crate::types::{FunctionRef, TenantId};

/// Resolves built-ins by name (backend [`BUILTIN_BACKEND`](crate::BUILTIN_BACKEND))
/// and user functions through the registry: a version runs in the backend recorded on
/// it (else its runtime's default). It needs no executor: the route names the backend,
/// and whichever node runs that backend runs the job.
#[derive(Debug)]
pub struct StandardRouter {
    /// The built-ins' backend name, when there are built-ins.
    builtin: Option<Arc<str>>,
    /// The catalog's names; a hit is the shared name the route carries.
    builtin_names: FxHashSet<Arc<str>>,
    builtin_timeout: Duration,
    registry: Arc<dyn Registry>,
    sandboxes: Arc<Sandboxes>,
}

impl StandardRouter {
    pub(crate) fn new(
        builtin: Option<Arc<str>>,
        builtin_names: FxHashSet<Arc<str>>,
        builtin_timeout: Duration,
        registry: Arc<dyn Registry>,
        sandboxes: Arc<Sandboxes>,
    ) -> Self {
        StandardRouter {
            builtin,
            builtin_names,
            builtin_timeout,
            registry,
            sandboxes,
        }
    }
}

#[async_trait]
impl Router for StandardRouter {
    async fn route(&self, tenant: &TenantId, function: &FunctionRef) -> Result<Route> {
        match function {
            FunctionRef::Builtin { name } => {
                let (Some(backend), Some(canonical)) =
                    (&self.builtin, self.builtin_names.get(name.as_ref()))
                else {
                    return Err(Error::not_found(format!(
                        "no built-in function named '{}' (GET /api/functions lists them)",
                        crate::types::truncate_for_message(name)
                    )));
                };
                Ok(Route {
                    backend: backend.clone(),
                    target: Target::Builtin(canonical.clone()),
                    timeout: self.builtin_timeout,
                    function: FunctionRef::Builtin {
                        name: canonical.clone(),
                    },
                })
            }
            FunctionRef::User { id, version } => {
                // One registry read, of one version, without its build log.
                let v = self.registry.resolve_version(tenant, id, *version).await?;
                match (v.status, version) {
                    (BuildStatus::Ready, _) => {}
                    (BuildStatus::Building, Some(_)) => {
                        return Err(Error::NotReady(format!(
                            "version {} of '{}' is still building",
                            v.version, v.function_id
                        )))
                    }
                    (BuildStatus::Failed, Some(_)) => {
                        return Err(Error::NotReady(format!(
                            "version {} of '{}' failed to build; see its build log",
                            v.version, v.function_id
                        )))
                    }
                    (BuildStatus::Building, None) => {
                        return Err(Error::NotReady(format!(
                            "function '{}' is still building",
                            v.function_id
                        )))
                    }
                    (BuildStatus::Failed, None) => {
                        return Err(Error::NotReady(format!(
                            "function '{}' has no version that built",
                            v.function_id
                        )))
                    }
                }
                let backend = self.sandboxes.backend_of(&v)?.clone();
                Ok(Route {
                    backend,
                    timeout: Duration::from_millis(v.limits.timeout_ms),
                    function: FunctionRef::User {
                        id: if id.as_ref() == v.function_id {
                            id.clone()
                        } else {
                            Arc::from(v.function_id.as_str())
                        },
                        version: Some(v.version),
                    },
                    target: Target::User(Arc::new(v)),
                })
            }
        }
    }
}
