//! Concurrency slots shared fairly between tenants: a global slot count, per-tenant
//! caps on running and queued jobs, and a queue per tenant served round-robin.
//!
//! The hot path (nobody queued, a slot free, the tenant under its running cap) takes no
//! lock shared by every tenant and allocates nothing: a compare-and-swap on the free
//! count and, when a running cap is set, a per-tenant count in one of [`SHARDS`]
//! small maps (one short lock of the tenant's shard). Only queueing and handing a
//! freed slot to a waiting job take the queue's lock.
//!
//! Invariant: after every hand-off round, either no slot is free or every waiting
//! job's tenant is at its running cap. So a job that finds others waiting queues
//! behind them unless its own tenant is eligible and a slot is free anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHasher};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::types::TenantId;

/// Shards of the per-tenant running counts.
const SHARDS: usize = 16;

/// Entries a shard of running counts keeps before it drops the idle ones.
const IDLE_ENTRIES: usize = 64;

/// What one tenant may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TenantCaps {
    /// Most jobs of one tenant running at once.
    pub max_running: usize,
    /// Most jobs of one tenant waiting for a slot.
    pub max_queued: usize,
}

/// The slots of one scheduler.
#[derive(Debug)]
pub(crate) struct Slots {
    free: AtomicUsize,
    waiting: AtomicUsize,
    queue_capacity: usize,
    caps: TenantCaps,
    /// Whether the running cap can bind (it is below the slot count); if not, running
    /// jobs are not counted per tenant at all.
    count_running: bool,
    retry_after: Duration,
    running: Vec<Mutex<FxHashMap<TenantId, usize>>>,
    queue: Mutex<FairQueue>,
}

#[derive(Debug, Default)]
struct FairQueue {
    /// Each tenant with jobs waiting, with them in arrival order.
    tenants: FxHashMap<TenantId, VecDeque<Entry>>,
    /// The tenants with jobs waiting, in the order they are served.
    rotation: VecDeque<TenantId>,
    next_entry: u64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    grant: oneshot::Sender<Slot>,
}

/// A running job's slot; dropping it frees the slot (and hands it to a waiting job).
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    tenant: TenantId,
    armed: bool,
}

/// A job's place in the queue. Dropping it before its slot came leaves the queue (a
/// slot granted in the meantime is freed again), so a caller that goes away while
/// queued holds no place.
#[derive(Debug)]
pub(crate) struct Ticket {
    slots: Arc<Slots>,
    tenant: TenantId,
    entry: u64,
    grant: oneshot::Receiver<Slot>,
    /// The grant was received (or can no longer come): nothing left to withdraw.
    settled: bool,
}

/// How a job was admitted.
#[derive(Debug)]
pub(crate) enum Admission {
    /// It may start now.
    Started(Slot),
    /// It waits for a slot.
    Queued(Ticket),
}

fn shard_of(tenant: &TenantId) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = FxHasher::default();
    tenant.as_str().hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl Slots {
    /// `capacity` slots, a queue of `queue_capacity`, and `caps` per tenant.
    pub(crate) fn new(
        capacity: usize,
        queue_capacity: usize,
        caps: TenantCaps,
        retry_after: Duration,
    ) -> Arc<Self> {
        let capacity = capacity.max(1);
        let caps = TenantCaps {
            max_running: caps.max_running.max(1),
            max_queued: caps.max_queued,
        };
        Arc::new(Slots {
            free: AtomicUsize::new(capacity),
            waiting: AtomicUsize::new(0),
            queue_capacity,
            caps,
            count_running: caps.max_running < capacity,
            retry_after,
            running: (0..SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            queue: Mutex::new(FairQueue::default()),
        })
    }

    /// Jobs waiting for a slot.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(SeqCst) as u64
    }

    /// Admits a job of `tenant`: a slot now, else a place in its tenant's queue, else
    /// `overloaded` (the whole queue is full) or `quota_exceeded` (the tenant's share
    /// is). `force` skips both refusals (jobs recovered at start-up).
    pub(crate) fn admit(self: &Arc<Self>, tenant: &TenantId, force: bool) -> Result<Admission> {
        if self.waiting.load(SeqCst) == 0 {
            if let Some(slot) = self.try_start(tenant) {
                return Ok(Admission::Started(slot));
            }
        }
        self.enqueue(tenant, force)
    }

    fn try_start(self: &Arc<Self>, tenant: &TenantId) -> Option<Slot> {
        if !self.reserve_running(tenant) {
            return None;
        }
        if !self.take_free() {
            self.unreserve_running(tenant);
            return None;
        }
        Some(self.slot(tenant.clone()))
    }

    fn slot(self: &Arc<Self>, tenant: TenantId) -> Slot {
        Slot {
            slots: self.clone(),
            tenant,
            armed: true,
        }
    }

    fn take_free(&self) -> bool {
        self.free
            .fetch_update(SeqCst, SeqCst, |f| f.checked_sub(1))
            .is_ok()
    }

    /// Counts one more running job of `tenant` unless it is at its cap.
    fn reserve_running(&self, tenant: &TenantId) -> bool {
        if !self.count_running {
            return true;
        }
        let mut shard = self.running[shard_of(tenant)].lock();
        if let Some(n) = shard.get_mut(tenant) {
            if *n >= self.caps.max_running {
                return false;
            }
            *n += 1;
        } else {
            shard.insert(tenant.clone(), 1);
        }
        true
    }

    fn unreserve_running(&self, tenant: &TenantId) {
        if !self.count_running {
            return;
        }
        let mut shard = self.running[shard_of(tenant)].lock();
        if let Some(n) = shard.get_mut(tenant) {
            *n = n.saturating_sub(1);
            // Idle tenants keep their entry (a busy tenant's next call then finds it
            // without inserting) until the shard holds many; then the idle ones go, so
            // tenants that come and go cannot grow the map.
            if *n == 0 && shard.len() > IDLE_ENTRIES {
                shard.retain(|_, n| *n > 0);
            }
        }
    }

    fn running_of(&self, tenant: &TenantId) -> Option<usize> {
        self.count_running.then(|| {
            self.running[shard_of(tenant)]
                .lock()
                .get(tenant)
                .copied()
                .unwrap_or(0)
        })
    }

    fn enqueue(self: &Arc<Self>, tenant: &TenantId, force: bool) -> Result<Admission> {
        let mut q = self.queue.lock();
        let mine = q.tenants.get(tenant).map_or(0, VecDeque::len);
        // Every waiting job's tenant is at its cap if a slot is free (the invariant):
        // a tenant with nothing waiting and room under its cap starts now, whatever
        // others have queued.
        if mine == 0 && self.free.load(SeqCst) > 0 {
            if let Some(slot) = self.try_start(tenant) {
                return Ok(Admission::Started(slot));
            }
        }
        if !force {
            let waiting = self.waiting.load(SeqCst);
            if waiting >= self.queue_capacity {
                return Err(Error::Overloaded {
                    message: format!(
                        "the job queue is full ({} jobs waiting); retry later",
                        self.queue_capacity
                    ),
                    retry_after: self.retry_after,
                });
            }
            if mine >= self.caps.max_queued {
                let running = self.running_of(tenant);
                let at_running_cap = running.is_some_and(|n| n >= self.caps.max_running);
                return Err(Error::QuotaExceeded {
                    quota: if at_running_cap {
                        "running_jobs"
                    } else {
                        "queued_jobs"
                    },
                    message: if at_running_cap {
                        format!(
                            "this tenant has {} jobs running (running_jobs = {}) and {mine} waiting (queued_jobs = {}); retry when some have finished",
                            running.unwrap_or(0),
                            self.caps.max_running,
                            self.caps.max_queued
                        )
                    } else {
                        format!(
                            "this tenant has {mine} jobs waiting for a slot (queued_jobs = {}); retry when some have started",
                            self.caps.max_queued
                        )
                    },
                    retry_after: Some(self.retry_after),
                });
            }
        }
        let (tx, rx) = oneshot::channel();
        let entry = q.next_entry;
        q.next_entry += 1;
        let q = &mut *q;
        match q.tenants.get_mut(tenant) {
            Some(entries) => entries.push_back(Entry {
                id: entry,
                grant: tx,
            }),
            None => {
                q.tenants.insert(
                    tenant.clone(),
                    VecDeque::from([Entry {
                        id: entry,
                        grant: tx,
                    }]),
                );
                q.rotation.push_back(tenant.clone());
            }
        }
        self.waiting.fetch_add(1, SeqCst);
        self.pump(q);
        Ok(Admission::Queued(Ticket {
            slots: self.clone(),
            tenant: tenant.clone(),
            entry,
            grant: rx,
            settled: false,
        }))
    }

    /// Hands free slots to waiting jobs, one tenant after another, skipping tenants at
    /// their running cap. Called with the queue locked.
    fn pump(self: &Arc<Self>, q: &mut FairQueue) {
        let mut skipped = 0;
        while skipped < q.rotation.len() && self.free.load(SeqCst) > 0 {
            let Some(tenant) = q.rotation.pop_front() else {
                break;
            };
            if !self.reserve_running(&tenant) {
                q.rotation.push_back(tenant);
                skipped += 1;
                continue;
            }
            if !self.take_free() {
                self.unreserve_running(&tenant);
                q.rotation.push_front(tenant);
                break;
            }
            skipped = 0;
            let entries = q
                .tenants
                .get_mut(&tenant)
                .expect("a rotating tenant has a queue");
            let entry = entries
                .pop_front()
                .expect("a rotating tenant has a job waiting");
            if entries.is_empty() {
                q.tenants.remove(&tenant);
            } else {
                q.rotation.push_back(tenant.clone());
            }
            self.waiting.fetch_sub(1, SeqCst);
            if let Err(mut slot) = entry.grant.send(self.slot(tenant)) {
                // The job is gone: the slot is free again (released here, not by its
                // drop, which would take the queue's lock).
                slot.armed = false;
                self.unreserve_running(&slot.tenant);
                self.free.fetch_add(1, SeqCst);
            }
        }
    }

    fn release(self: &Arc<Self>, tenant: &TenantId) {
        self.unreserve_running(tenant);
        self.free.fetch_add(1, SeqCst);
        if self.waiting.load(SeqCst) > 0 {
            let mut q = self.queue.lock();
            self.pump(&mut q);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.slots.release(&self.tenant);
        }
    }
}

impl Ticket {
    /// Waits for the slot.
    pub(crate) async fn granted(&mut self) -> Option<Slot> {
        let slot = (&mut self.grant).await.ok();
        self.settled = true;
        slot
    }

    /// Leaves the queue without a slot (cancelled, shutting down): what dropping it
    /// does, said where it is meant.
    pub(crate) fn withdraw(self) {}
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let removed = {
            let mut q = self.slots.queue.lock();
            let q = &mut *q;
            let mut removed = false;
            if let Some(entries) = q.tenants.get_mut(&self.tenant) {
                if let Some(at) = entries.iter().position(|e| e.id == self.entry) {
                    entries.remove(at);
                    removed = true;
                    if entries.is_empty() {
                        q.tenants.remove(&self.tenant);
                        q.rotation.retain(|t| t != &self.tenant);
                    }
                }
            }
            if removed {
                self.slots.waiting.fetch_sub(1, SeqCst);
            }
            removed
        };
        if !removed {
            // Granted under the lock before we took it: the slot is in the channel.
            drop(self.grant.try_recv());
        }
    }
}
