//! [`Hub`]: one `kube::runtime::watcher` over this instance's objects of one kind (warm
//! pods, Jobs, Job pods), keeping the last state of each by a key and waking whoever waits
//! on it. Nothing polls: a pod's start, its address and its end arrive as watch events. A
//! watch that breaks is resumed by the watcher (with backoff); after a `410 Gone` it lists
//! again, and an object the new list lacks counts as deleted.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the hub knows of one object.
#[derive(Debug, Clone)]
pub enum Seen<K> {
    /// Not seen yet (just created, or its first event is on the way).
    NotYet,
    /// Its last state.
    Present(Arc<K>),
    /// Deleted (or missing from a fresh list).
    Gone,
}

type Key<K> = fn(&K) -> Option<String>;

struct Shared<K> {
    entries: Mutex<HashMap<String, watch::Sender<Seen<K>>>>,
    key: Key<K>,
}

/// One watcher and the last state of every object it saw, by key.
pub struct Hub<K> {
    shared: Arc<Shared<K>>,
    task: JoinHandle<()>,
}

impl<K> Debug for Hub<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("objects", &self.shared.entries.lock().len())
            .finish()
    }
}

impl<K> Drop for Hub<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K> Hub<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching the objects of `api` with `labels`, keyed by `key`. Needs a tokio
    /// runtime.
    pub fn start(api: Api<K>, labels: &str, key: Key<K>) -> Self {
        let shared = Arc::new(Shared {
            entries: Mutex::new(HashMap::new()),
            key,
        });
        let config = watcher::Config::default().labels(labels);
        let task = tokio::spawn(run(api, config, shared.clone()));
        Hub { shared, task }
    }

    /// The state of the object with `key`, kept up to date.
    pub fn subscribe(&self, key: &str) -> watch::Receiver<Seen<K>> {
        let mut entries = self.shared.entries.lock();
        entries
            .entry(key.to_string())
            .or_insert_with(|| watch::channel(Seen::NotYet).0)
            .subscribe()
    }

    /// Drops what is kept of `key` (its object is deleted, or never came).
    pub fn forget(&self, key: &str) {
        self.shared.entries.lock().remove(key);
    }
}

async fn run<K>(api: Api<K>, config: watcher::Config, shared: Arc<Shared<K>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listing: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing = Some(HashSet::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some(key) = (shared.key)(&obj) {
                    if let Some(seen) = listing.as_mut() {
                        seen.insert(key.clone());
                    }
                    present(&shared, key, obj);
                }
            }
            Ok(Event::InitDone) => {
                let seen = listing.take().unwrap_or_default();
                let mut entries = shared.entries.lock();
                entries.retain(|key, tx| {
                    let listed = seen.contains(key);
                    let was_present = matches!(&*tx.borrow(), Seen::Present(_));
                    if was_present && !listed {
                        tx.send_replace(Seen::Gone);
                        return false;
                    }
                    true
                });
            }
            Ok(Event::Apply(obj)) => {
                if let Some(key) = (shared.key)(&obj) {
                    present(&shared, key, obj);
                }
            }
            Ok(Event::Delete(obj)) => {
                if let Some(key) = (shared.key)(&obj) {
                    if let Some(tx) = shared.entries.lock().remove(&key) {
                        tx.send_replace(Seen::Gone);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "a Kubernetes watch failed; it is resumed"),
        }
    }
}

fn present<K>(shared: &Shared<K>, key: String, obj: K) {
    let mut entries = shared.entries.lock();
    let tx = entries
        .entry(key)
        .or_insert_with(|| watch::channel(Seen::NotYet).0);
    tx.send_replace(Seen::Present(Arc::new(obj)));
}
