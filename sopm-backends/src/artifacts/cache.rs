//! `ArtifactCache`: this node's copies of remote artifacts under `<cache>/sha256/<hex>/`,
//! bounded in total size, least recently used evicted first, never one a fetch holds.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use sopm_core::{Digest, Result};

use super::canonical::{remove_tree, sibling};
use super::local::{create_private_dir, storage};

/// A size-bounded directory of unpacked artifacts. Sizes are the bytes of the regular
/// files of each tree. Entries are pinned while a fetch or a put works on them and are
/// never evicted then; after an insert, the least recently used unpinned entries go
/// until the total fits (the newest entry stays even when it alone is over the bound).
pub(crate) struct ArtifactCache {
    root: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Held for the whole of [`load`](Self::load), so it runs once, before any fetch
    /// writes into `tmp/` (which it clears).
    loading: Mutex<()>,
    flights: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct State {
    loaded: bool,
    clock: u64,
    total: u64,
    entries: HashMap<Digest, Entry>,
    pins: HashMap<Digest, u32>,
}

#[derive(Clone, Copy)]
struct Entry {
    size: u64,
    last_use: u64,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("ArtifactCache")
            .field("root", &self.root)
            .field("max_bytes", &self.max_bytes)
            .field("total_bytes", &state.total)
            .field("entries", &state.entries.len())
            .finish()
    }
}

/// Holds a digest pinned (safe from eviction) until dropped.
pub(crate) struct Pin {
    cache: Arc<ArtifactCache>,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut state = self.cache.state.lock();
        if let Some(n) = state.pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                state.pins.remove(&self.digest);
            }
        }
    }
}

impl ArtifactCache {
    /// A cache under `root` holding at most `max_bytes` (no I/O until [`load`](Self::load)).
    pub(crate) fn new(root: PathBuf, max_bytes: u64) -> Self {
        ArtifactCache {
            root,
            max_bytes,
            state: Mutex::new(State::default()),
            loading: Mutex::new(()),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Where the tree of `digest` is kept.
    pub(crate) fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// Where downloads and staging copies go (same file system as the trees).
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Whether [`load`](Self::load) has run.
    pub(crate) fn is_loaded(&self) -> bool {
        self.state.lock().loaded
    }

    /// Creates the directories and indexes what a previous process left (blocking; once).
    pub(crate) fn load(&self) -> Result<()> {
        let _once = self.loading.lock();
        if self.state.lock().loaded {
            return Ok(());
        }
        create_private_dir(&self.root)?;
        let objects = self.root.join("sha256");
        create_private_dir(&objects)?;
        let tmp = self.tmp_dir();
        if tmp.exists() {
            // Downloads and staging copies of a process that stopped halfway.
            remove_tree(&tmp).map_err(|e| storage("clear", &tmp, e))?;
        }
        create_private_dir(&tmp)?;
        let mut found: Vec<(Digest, u64, std::time::SystemTime)> = Vec::new();
        for entry in fs::read_dir(&objects).map_err(|e| storage("list", &objects, e))? {
            let entry = entry.map_err(|e| storage("list", &objects, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            match Digest::parse(&format!("sha256:{name}")) {
                Ok(digest) if path.is_dir() => {
                    let mtime = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    found.push((digest, tree_size(&path), mtime));
                }
                // Half-finished unpacks and removals (hidden siblings) and strays.
                _ => remove_tree(&path).map_err(|e| storage("remove", &path, e))?,
            }
        }
        found.sort_by_key(|(_, _, mtime)| *mtime);
        let mut state = self.state.lock();
        if !state.loaded {
            for (digest, size, _) in found {
                state.clock += 1;
                let last_use = state.clock;
                state.total += size;
                state.entries.insert(digest, Entry { size, last_use });
            }
            state.loaded = true;
        }
        Ok(())
    }

    /// The path of `digest` if the cache has it (marking it used).
    pub(crate) fn lookup(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.path_of(digest);
        let mut state = self.state.lock();
        if !state.entries.contains_key(digest) {
            return None;
        }
        if !path.is_dir() {
            // Deleted behind the cache's back: forget it.
            if let Some(entry) = state.entries.remove(digest) {
                state.total -= entry.size;
            }
            return None;
        }
        state.clock += 1;
        let clock = state.clock;
        if let Some(entry) = state.entries.get_mut(digest) {
            entry.last_use = clock;
        }
        Some(path)
    }

    /// Pins `digest` until the guard drops.
    pub(crate) fn pin(self: &Arc<Self>, digest: &Digest) -> Pin {
        *self.state.lock().pins.entry(digest.clone()).or_insert(0) += 1;
        Pin {
            cache: Arc::clone(self),
            digest: digest.clone(),
        }
    }

    /// The lock that makes concurrent fetches of one digest download once.
    pub(crate) fn flight(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.flights.lock().entry(digest.clone()).or_default())
    }

    /// Drops the flight lock of `digest` when no one else holds it.
    pub(crate) fn land(&self, digest: &Digest, flight: Arc<tokio::sync::Mutex<()>>) {
        let mut flights = self.flights.lock();
        // The map's reference and ours: nobody else is waiting.
        if Arc::strong_count(&flight) == 2 {
            flights.remove(digest);
        }
    }

    /// Records the tree now at `path_of(digest)` as the newest entry, then evicts
    /// (blocking).
    pub(crate) fn insert(&self, digest: &Digest) -> Result<()> {
        let size = tree_size(&self.path_of(digest));
        {
            let mut state = self.state.lock();
            state.clock += 1;
            let last_use = state.clock;
            if let Some(old) = state
                .entries
                .insert(digest.clone(), Entry { size, last_use })
            {
                state.total -= old.size;
            }
            state.total += size;
        }
        self.evict()
    }

    /// Forgets `digest` and deletes its tree (blocking).
    pub(crate) fn remove(&self, digest: &Digest) -> Result<()> {
        {
            let mut state = self.state.lock();
            if let Some(entry) = state.entries.remove(digest) {
                state.total -= entry.size;
            }
        }
        delete(&self.path_of(digest))
    }

    /// Total bytes held.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.state.lock().total
    }

    /// Removes least recently used, unpinned entries until the total fits; the newest
    /// entry is never removed (blocking).
    fn evict(&self) -> Result<()> {
        let victims: Vec<Digest> = {
            let mut state = self.state.lock();
            let mut order: Vec<(u64, Digest)> = state
                .entries
                .iter()
                .map(|(d, e)| (e.last_use, d.clone()))
                .collect();
            order.sort();
            order.pop(); // the newest stays
            let mut victims = Vec::new();
            for (_, digest) in order {
                if state.total <= self.max_bytes {
                    break;
                }
                if state.pins.contains_key(&digest) {
                    continue;
                }
                if let Some(entry) = state.entries.remove(&digest) {
                    state.total -= entry.size;
                    victims.push(digest);
                }
            }
            victims
        };
        for digest in victims {
            tracing::debug!(%digest, "artifact cache: evicted");
            delete(&self.path_of(&digest))?;
        }
        Ok(())
    }
}

/// Renames a tree aside (so it is gone at once for anyone looking) and deletes it.
fn delete(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let doomed = sibling(path, "removed");
    fs::rename(path, &doomed).map_err(|e| storage("remove", path, e))?;
    remove_tree(&doomed).map_err(|e| storage("remove", &doomed, e))
}

/// Total bytes of the regular files under `dir` (symlinks count as nothing).
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(meta) = entry.path().symlink_metadata() {
                if meta.is_dir() {
                    total += tree_size(&entry.path());
                } else if meta.is_file() {
                    total += meta.len();
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &ArtifactCache, name: &str, bytes: usize) -> Digest {
        let digest = Digest::of(name.as_bytes());
        let dir = cache.path_of(&digest);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("data"), vec![0u8; bytes]).unwrap();
        cache.insert(&digest).unwrap();
        digest
    }

    #[test]
    fn a_pinned_entry_is_never_evicted_and_the_rest_go_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Arc::new(ArtifactCache::new(tmp.path().join("c"), 25));
        cache.load().unwrap();
        let first = put(&cache, "first", 10);
        let pin = cache.pin(&first);
        let second = put(&cache, "second", 10);
        assert!(cache.lookup(&second).is_some()); // used after `first`
        let third = put(&cache, "third", 10);
        // Over the bound: `first` is the least recently used but pinned, so `second` goes.
        assert!(cache.path_of(&first).exists());
        assert!(cache.lookup(&second).is_none());
        assert!(!cache.path_of(&second).exists());
        assert_eq!(cache.total_bytes(), 20);
        drop(pin);
        let fourth = put(&cache, "fourth", 10);
        // Unpinned now, and the least recently used: `first` goes; `third` and the newest stay.
        assert!(cache.lookup(&first).is_none());
        assert!(cache.lookup(&third).is_some());
        assert!(cache.lookup(&fourth).is_some());
        assert_eq!(cache.total_bytes(), 20);

        // A new cache over the same directory finds what is there and clears leftovers.
        fs::create_dir(tmp.path().join("c/sha256/.half-unpacked")).unwrap();
        let again = ArtifactCache::new(tmp.path().join("c"), 25);
        again.load().unwrap();
        assert_eq!(again.total_bytes(), 20);
        assert!(again.lookup(&third).is_some());
        assert!(!tmp.path().join("c/sha256/.half-unpacked").exists());
    }
}
