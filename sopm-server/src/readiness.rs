//! What `/readyz` asks besides "start-up is done": a cluster node is ready only while
//! the Redis it shares state through answers, so a load balancer stops sending it
//! requests that would only get 503 and sends them again once Redis is back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sopm_core::{Error, Result};

/// Longest a readiness check may take before the node is reported not ready.
pub const CHECK_LIMIT: Duration = Duration::from_secs(2);

type Check = dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync;

/// A check `/readyz` runs on every call: `Ok` when the node can serve, else the
/// reason (an [`Error::Unavailable`] saying what is unreachable). Cheap to clone.
#[derive(Clone)]
pub struct ReadinessCheck {
    what: &'static str,
    check: Arc<Check>,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl ReadinessCheck {
    /// A check of `what` (named in the answer when it does not finish in time).
    pub fn new<F, Fut>(what: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        ReadinessCheck {
            what,
            check: Arc::new(move || Box::pin(check())),
        }
    }

    /// Runs the check within [`CHECK_LIMIT`].
    pub async fn run(&self) -> Result<()> {
        match tokio::time::timeout(CHECK_LIMIT, (self.check)()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Unavailable(format!(
                "{} did not answer within {} s",
                self.what,
                CHECK_LIMIT.as_secs()
            ))),
        }
    }
}
