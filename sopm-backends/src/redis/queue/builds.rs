//! The build loop of a worker: takes queued builds for this node's backends from the
//! [`BuildQueue`](super::build_queue::BuildQueue), runs each with `Builds::run` while
//! renewing its lease, and acknowledges it; a build whose worker stops renewing is
//! taken over like a job. At-least-once: a build taken over may run twice, and the
//! registry keeps the first finish (a version leaves `building` once).

use std::sync::Arc;
use std::time::Duration;

use super::build_queue::BuildLease;
use super::conn;
use super::shared::{pause, Backoff, Shared};

/// Most builds one node runs at once from the queue (each also waits for one of the
/// node's build slots).
const BUILDS_AT_ONCE: usize = 4;

/// Takes builds this node can run and runs them, until the node stops.
pub(crate) async fn run_loop(s: Arc<Shared>, backends: Vec<Arc<str>>) {
    let q = s.builds_queue.clone();
    let streams = q.streams(&backends);
    let slots = Arc::new(tokio::sync::Semaphore::new(BUILDS_AT_ONCE));
    let mut conn = match conn::blocking(&s.conn, q.config.block) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the build loop cannot start");
            return;
        }
    };
    let mut backoff = Backoff::new();
    let mut ready = false;
    loop {
        if s.stopping() {
            return;
        }
        if !ready {
            match q.ensure_groups(&streams).await {
                Ok(()) => ready = true,
                Err(e) => {
                    tracing::warn!(error = %e, "build streams not ready; retrying");
                    if !pause(&s, backoff.next()).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        let free = 1 + slots.available_permits();
        let found = match q.read(&mut conn, &streams, free).await {
            Ok(f) => {
                backoff.reset();
                f
            }
            Err(e) => {
                if e.to_string().contains("NOGROUP") {
                    ready = false;
                }
                tracing::warn!(error = %e, "reading builds failed; retrying");
                drop(first);
                if !pause(&s, backoff.next()).await {
                    return;
                }
                continue;
            }
        };
        let mut first = Some(first);
        for (stream, entry, fid, v) in found {
            let permit = match first.take() {
                Some(p) => p,
                None => match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        // No room now: the entry stays pending and is reclaimed later.
                        continue;
                    }
                },
            };
            let lease = match q.lease(stream, entry, fid, v).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "leasing a build failed");
                    continue;
                }
            };
            let s = s.clone();
            tokio::spawn(async move {
                run_build(&s, lease).await;
                drop(permit);
            });
        }
    }
}

async fn run_build(s: &Shared, lease: BuildLease) {
    let q = &s.builds_queue;
    let request = match q.request(&lease.function_id, lease.version).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            // Built already (its source is gone): drop the entry.
            let _ = q.drop_entry(&lease.stream, &lease.entry).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading a build request failed");
            return;
        }
    };
    let Some(builds) = &s.builds else {
        let _ = q.release(&lease).await;
        return;
    };
    if !builds.can_build(&request.version) {
        // Another worker has the builder: give it back at once.
        let _ = q.release(&lease).await;
        return;
    }
    let renew_every = q.config.lease / 3;
    let keep = async {
        loop {
            tokio::time::sleep(renew_every).await;
            match q.renew(&lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "build lease renewal failed"),
            }
        }
    };
    let mut interrupt = s.interrupt.subscribe();
    tokio::select! {
        status = builds.run(request) => {
            tracing::debug!(status = status.as_str(), "queued build finished");
            for _ in 0..20 {
                match q.finish(&lease).await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        _ = keep => {}
        _ = async { let _ = interrupt.wait_for(|v| *v).await; } => {
            let _ = q.release(&lease).await;
        }
    }
}
