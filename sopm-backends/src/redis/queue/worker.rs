//! The worker side of the `RedisScheduler`: a claim loop over the streams of this
//! node's backends (bounded by its slots), a reclaimer that takes over expired leases,
//! and the run of one leased job (renewing its lease, stopping when cancelled or taken
//! over, completing through the fenced script).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sopm_core::types::now_ms;
use sopm_core::{Error, Invocation, Job, Output, Result};
use tokio::sync::OwnedSemaphorePermit;

use super::config::AtShutdown;
use super::counters::account;
use super::shared::{pause, Backoff, LiveGuard, Shared};
use super::stream::{Claimed, JobQueue, Lease};

/// Takes free slots: waits for one, then takes up to `most` more that are free.
async fn free_slots(s: &Arc<Shared>, most: usize) -> Option<Vec<OwnedSemaphorePermit>> {
    let mut stop = s.stop.subscribe();
    let first = tokio::select! {
        p = s.slots.clone().acquire_owned() => p.ok()?,
        _ = stop.wait_for(|v| *v) => return None,
    };
    let mut permits = vec![first];
    while permits.len() < most {
        match s.slots.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    Some(permits)
}

/// Claims new entries of `backends` whenever a slot is free and runs them.
pub(crate) async fn claim_loop(s: Arc<Shared>, backends: Vec<Arc<str>>) {
    let mut conn = match s.queue.claim_connection() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the claim loop cannot start");
            return;
        }
    };
    let mut backoff = Backoff::new();
    loop {
        let Some(mut permits) = free_slots(&s, 64).await else {
            return;
        };
        let claimed = s.queue.claim(&mut conn, &backends, permits.len()).await;
        match claimed {
            Ok(claimed) => {
                backoff.reset();
                start_all(&s, claimed, &mut permits).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming jobs failed; retrying");
                drop(permits);
                if !pause(&s, backoff.next()).await {
                    return;
                }
            }
        }
    }
}

/// Takes over entries whose lease expired, every quarter lease.
pub(crate) async fn reclaim_loop(s: Arc<Shared>, backends: Vec<Arc<str>>) {
    let every = (s.config.queue.lease / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut backoff = Backoff::new();
    loop {
        if !pause(&s, every).await {
            return;
        }
        let Some(mut permits) = free_slots(&s, 64).await else {
            return;
        };
        match s.queue.reclaim(&backends, permits.len()).await {
            Ok(claimed) => {
                backoff.reset();
                start_all(&s, claimed, &mut permits).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reclaiming jobs failed; retrying");
                drop(permits);
                if !pause(&s, backoff.next()).await {
                    return;
                }
            }
        }
    }
}

/// Starts a task per claimed job, each with one of `permits`; if this node is
/// stopping, gives them back instead.
async fn start_all(
    s: &Arc<Shared>,
    claimed: Vec<Claimed>,
    permits: &mut Vec<OwnedSemaphorePermit>,
) {
    for c in claimed {
        if s.stopping() {
            let (Claimed::Run(lease) | Claimed::Dead(lease)) = &c;
            let _ = s.queue.release(lease).await;
            continue;
        }
        let Some(permit) = permits.pop() else {
            // Cannot happen (a claim takes at most one job per slot); be safe.
            let (Claimed::Run(lease) | Claimed::Dead(lease)) = &c;
            let _ = s.queue.release(lease).await;
            continue;
        };
        let task = s.clone();
        let mut tasks = s.job_tasks.lock();
        tasks.0 += 1;
        let n = tasks.0;
        let handle = tokio::spawn(async move {
            match c {
                Claimed::Run(lease) => run_leased(&task, lease).await,
                Claimed::Dead(lease) => dead_letter(&task, lease).await,
            }
            drop(permit);
            task.job_tasks.lock().1.remove(&n);
        });
        tasks.1.insert(n, handle.abort_handle());
    }
}

/// Retries `f` while Redis is unreachable, for up to `patience`.
async fn retrying<T, F, Fut>(patience: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let until = Instant::now() + patience;
    let mut backoff = Backoff::new();
    loop {
        match f().await {
            Err(Error::Unavailable(m)) if Instant::now() < until => {
                tracing::warn!(error = %m, "redis unreachable; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
            other => return other,
        }
    }
}

/// How long a worker keeps trying to record a result while Redis is away.
fn patience(s: &Shared) -> Duration {
    (s.config.queue.lease * 3).max(Duration::from_secs(30))
}

async fn dead_letter(s: &Shared, lease: Lease) {
    match retrying(patience(s), || s.queue.dead_letter(&lease)).await {
        Ok(true) => {
            if let Ok(Some(job)) = s.store.get(&lease.job.id).await {
                account(&s.counters, &job);
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!(job = %lease.job.id, error = %e, "could not dead-letter a job"),
    }
}

/// What ended a run.
enum Ending {
    /// The function returned (or failed, or ran out of time).
    Finished(Result<Output>),
    /// The lease is no longer ours (cancelled or taken over): record nothing.
    Lost,
    /// The node's grace period ended.
    Interrupted,
}

/// Runs one leased job to its end.
async fn run_leased(s: &Shared, lease: Lease) {
    let running = JobQueue::running_record(&lease);
    let _running = s.counters.run();
    let live = LiveGuard::new(s, &running.id);
    let started = Instant::now();
    let mut interrupt = s.interrupt.subscribe();
    let ending = match s.router.route(&running.tenant, &running.function).await {
        Err(e) => Ending::Finished(Err(e)),
        Ok(route) => {
            let deadline = started + Duration::from_millis(running.timeout_ms);
            let invocation = Invocation {
                job_id: running.id.clone(),
                tenant: running.tenant.clone(),
                target: route.target,
                input: running.input.clone(),
                deadline,
            };
            let timeout_ms = running.timeout_ms;
            let past_deadline = |r: std::result::Result<Result<Output>, _>| {
                r.unwrap_or_else(|_| {
                    Err(Error::Timeout(format!(
                        "the job ran past its {timeout_ms} ms time limit and was stopped"
                    )))
                })
            };
            let mut call = std::pin::pin!(tokio::time::timeout_at(
                deadline.into(),
                s.dispatcher.invoke(&route.backend, invocation),
            ));
            // A job that ends on its first poll (most built-ins) needs no running
            // record: its final record follows at once. Otherwise the running record
            // is written while the call runs, not before it: a waiting caller does not
            // pay for that write. A running record that arrives after the final one is
            // refused by its fence (the lease is gone by then), so it never moves a
            // record back.
            match futures::poll!(call.as_mut()) {
                std::task::Poll::Ready(r) => Ending::Finished(past_deadline(r)),
                std::task::Poll::Pending => {
                    let record = retrying(patience(s), || s.queue.record_running(&lease, &running));
                    tokio::pin!(record);
                    let renewals = keep_lease(s, &lease);
                    tokio::pin!(renewals);
                    let mut recorded = false;
                    loop {
                        tokio::select! {
                            r = &mut call => break Ending::Finished(past_deadline(r)),
                            done = &mut record, if !recorded => match done {
                                Ok(true) => recorded = true,
                                Ok(false) => return,
                                Err(e) => {
                                    tracing::warn!(job = %running.id, error = %e, "could not record a job running; its lease will expire");
                                    return;
                                }
                            },
                            _ = &mut renewals => break Ending::Lost,
                            _ = live.cancel.notified() => break Ending::Lost,
                            _ = interrupt.wait_for(|v| *v) => break Ending::Interrupted,
                        }
                    }
                }
            }
        }
    };
    let last = match ending {
        Ending::Lost => return,
        Ending::Finished(outcome) => finished_record(running, outcome, started),
        Ending::Interrupted => match s.config.at_shutdown {
            AtShutdown::Release => {
                let _ = s.queue.release(&lease).await;
                return;
            }
            AtShutdown::Interrupt => finished_record(
                running,
                Err(Error::Interrupted(
                    "the node shut down while this job was running; it was not re-run".into(),
                )),
                started,
            ),
        },
    };
    match retrying(patience(s), || s.queue.complete(&lease, &last)).await {
        Ok(true) => account(&s.counters, &last),
        Ok(false) => {}
        Err(e) => tracing::error!(
            job = %last.id,
            error = %e,
            "could not record a finished job; another node will run it again"
        ),
    }
}

/// Renews the lease every third of its length; returns when it is lost.
async fn keep_lease(s: &Shared, lease: &Lease) {
    let every = s.config.queue.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match s.queue.renew(lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(job = %lease.job.id, error = %e, "lease renewal failed"),
        }
    }
}

/// The final record of `job` from how its run ended.
pub(crate) fn finished_record(mut job: Job, outcome: Result<Output>, started: Instant) -> Job {
    let duration_us = started.elapsed().as_micros() as u64;
    job.finish(outcome, now_ms(), Some(duration_us));
    job
}

/// Takes builds from the build streams of this node's backends and runs them.
pub(crate) async fn build_loop(s: Arc<Shared>, backends: Vec<Arc<str>>) {
    super::builds::run_loop(s, backends).await
}
