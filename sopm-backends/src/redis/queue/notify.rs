//! The pub/sub side of the `RedisScheduler`: one subscription per node to its result
//! channel (wakes waiting callers), the cancel channel (stops a job running here) and
//! the retire channel (drops warm instances of deleted functions and versions). When
//! the subscription is lost, messages sent meanwhile are lost too, so on every
//! (re)subscription the records of all waiting callers are read once.

use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sopm_core::{Job, JobId, Result};

use super::conn;
use super::shared::{pause, Backoff, Shared};
use crate::redis::jobs::parse_job;

/// A retire broadcast.
#[derive(Debug, Serialize, Deserialize)]
struct Retired {
    /// The node that retired it already.
    from: String,
    function_id: String,
    version: Option<u32>,
}

/// Tells every other node that a function (or one version) was retired.
pub(crate) async fn publish_retired(
    s: &Shared,
    function_id: &str,
    version: Option<u32>,
) -> Result<()> {
    let msg = serde_json::to_string(&Retired {
        from: s.config.node_id.clone(),
        function_id: function_id.to_string(),
        version,
    })
    .map_err(|e| sopm_core::Error::Internal(e.to_string()))?;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(s.conn.keys().retire_channel())
        .arg(msg)
        .query_async(&mut s.conn.manager())
        .await
        .map_err(|e| s.conn.error(e))?;
    Ok(())
}

/// Keeps the node's subscription up until it stops.
pub(crate) async fn subscriber(s: Arc<Shared>) {
    let done = s.queue.done_channel(&s.config.node_id);
    let cancel = s.queue.cancel_channel();
    let retire = s.conn.keys().retire_channel();
    let mut backoff = Backoff::new();
    loop {
        if s.stopping() && s.live.lock().is_empty() {
            return;
        }
        let client = conn::client(&s.conn);
        let opened = match &client {
            Ok(c) => c.get_async_pubsub().await.map_err(|e| s.conn.error(e)),
            Err(e) => Err(e.clone()),
        };
        let mut pubsub = match opened {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "pub/sub connection failed; retrying");
                if !pause(&s, backoff.next()).await {
                    return;
                }
                continue;
            }
        };
        let mut ok = true;
        for ch in [&done, &cancel, &retire] {
            if let Err(e) = pubsub.subscribe(ch).await {
                tracing::warn!(error = %e, "subscribing failed; retrying");
                ok = false;
                break;
            }
        }
        if !ok {
            if !pause(&s, backoff.next()).await {
                return;
            }
            continue;
        }
        backoff.reset();
        let _ = s.subscribed.send(true);
        sweep_waiters(&s).await;
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let channel = msg.get_channel_name();
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            if channel == done {
                if let Ok(job) = parse_job(&payload) {
                    deliver(&s, job);
                }
            } else if channel == cancel {
                if let Ok(id) = JobId::parse(&payload) {
                    if let Some(n) = s.live.lock().get(&id) {
                        n.notify_one();
                    }
                }
            } else if channel == retire {
                retire_here(&s, &payload).await;
            }
        }
        let _ = s.subscribed.send(false);
        tracing::warn!("pub/sub connection lost; resubscribing");
    }
}

/// Wakes the caller waiting for `job`, if it is still waiting here.
fn deliver(s: &Shared, job: Job) {
    if let Some(tx) = s.waiters.lock().remove(&job.id) {
        let _ = tx.send(job);
    }
}

/// Reads the record of every waiting caller's job and wakes those that finished
/// (their pushed result may have been lost with the subscription).
async fn sweep_waiters(s: &Shared) {
    let ids: Vec<JobId> = s.waiters.lock().keys().cloned().collect();
    for id in ids {
        if let Ok(Some(job)) = s.store.get(&id).await {
            if job.status.is_terminal() {
                deliver(s, job);
            }
        }
    }
}

async fn retire_here(s: &Shared, payload: &str) {
    let Ok(r) = serde_json::from_str::<Retired>(payload) else {
        return;
    };
    if r.from == s.config.node_id {
        return;
    }
    let result = match r.version {
        Some(v) => s.dispatcher.retire_version(&r.function_id, v).await,
        None => s.dispatcher.retire(&r.function_id).await,
    };
    if let Err(e) = result {
        tracing::warn!(function_id = %r.function_id, error = %e, "retiring a function here failed");
    }
}
