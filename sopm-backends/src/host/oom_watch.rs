//! Counting a memory cgroup's OOM kills as they happen, for a cgroup someone else removes:
//! a container runtime removes a container's cgroup as soon as the container exits,
//! usually before the server has read its counters, and Docker's own `OOMKilled` is set
//! only when the runtime's OOM event reaches the daemon before the container's exit does.
//!
//! - cgroup v1: an eventfd registered for `memory.oom_control` through
//!   `cgroup.event_control`. The kernel signals it at each OOM in the cgroup (before it
//!   kills) and once more when the cgroup is removed, so a signal while the cgroup is
//!   still there is an OOM, and so is every signal but one read at once after it is gone.
//! - cgroup v2: inotify on `memory.events`, which the kernel marks modified after it
//!   counts a kill; the count is read while the file is there.
//!
//! The watch is a small thread blocked in `poll` until the kernel wakes it (or the watch
//! is dropped). What it cannot tell is a kill it wakes for only after the cgroup is gone
//! (v2), or a lone v1 signal read after the removal; so it is one clue among others (a
//! container's `OOMKilled` too).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::inotify;

use super::cgroup::read_oom_kills;

/// What the watch's thread has seen.
#[derive(Debug, Default)]
struct Seen {
    kills: AtomicU64,
    /// The cgroup is gone (or cannot be read) and the thread has ended.
    ended: AtomicBool,
}

/// The OOM kills of one memory cgroup, kept after the cgroup is removed.
#[derive(Debug)]
pub struct OomWatch {
    shared: Arc<Seen>,
    /// Signalled when the watch is dropped, to end its thread.
    stop: Arc<OwnedFd>,
}

impl OomWatch {
    /// Starts watching the memory cgroup `dir` (v2 or not) on a thread of its own. An
    /// error when its files cannot be opened or registered (not root, not a cgroup).
    pub fn start(dir: &Path, v2: bool) -> io::Result<OomWatch> {
        let events = if v2 { modified(dir)? } else { oom_events(dir)? };
        let kills = read_oom_kills(dir, v2).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the cgroup's counters are gone")
        })?;
        let shared = Arc::new(Seen {
            kills: AtomicU64::new(kills),
            ended: AtomicBool::new(false),
        });
        let stop = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let (dir, seen, thread_stop) = (dir.to_owned(), shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sopm-oom-watch".into())
            .stack_size(64 << 10)
            .spawn(move || {
                watch(&events, &thread_stop, &dir, v2, &seen.kills);
                seen.ended.store(true, Ordering::Release);
            })?;
        Ok(OomWatch { shared, stop })
    }

    /// The cgroup's OOM kills: its count when the watch started and those seen since,
    /// whether or not the cgroup is still there.
    pub fn kills(&self) -> u64 {
        self.shared.kills.load(Ordering::Acquire)
    }

    /// Whether the watch has ended: the cgroup is gone (its last signal counted) or
    /// could not be read, or the watch was dropped.
    pub fn ended(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
    }
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        let _ = rustix::io::write(self.stop.as_fd(), &1u64.to_ne_bytes());
    }
}

/// An eventfd the kernel signals at each OOM of the v1 memory cgroup `dir`.
fn oom_events(dir: &Path) -> io::Result<OwnedFd> {
    let signals = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let control = std::fs::File::open(dir.join("memory.oom_control"))?;
    // The kernel resolves both numbers in this process's table while it registers.
    let line = format!("{} {}", signals.as_raw_fd(), control.as_raw_fd());
    std::fs::write(dir.join("cgroup.event_control"), line)?;
    Ok(signals)
}

/// An inotify descriptor that is readable whenever the v2 `memory.events` of `dir` changes.
fn modified(dir: &Path) -> io::Result<OwnedFd> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    inotify::add_watch(&fd, dir.join("memory.events"), inotify::WatchFlags::MODIFY)?;
    Ok(fd)
}

/// Takes what woke the watch: the number of v1 signals (an eventfd's count), or 1 for
/// any number of inotify events.
fn drain(fd: &OwnedFd, v2: bool) -> io::Result<u64> {
    if !v2 {
        let mut count = [0u8; 8];
        rustix::io::read(fd.as_fd(), &mut count)?;
        return Ok(u64::from_ne_bytes(count));
    }
    let mut events = [0u8; 1024];
    let mut any = false;
    loop {
        match rustix::io::read(fd.as_fd(), &mut events) {
            Ok(0) => return Ok(u64::from(any)),
            Ok(_) => any = true,
            Err(e) if e == rustix::io::Errno::AGAIN && any => return Ok(1),
            Err(e) => return Err(e.into()),
        }
    }
}

fn watch(events: &OwnedFd, stop: &OwnedFd, dir: &Path, v2: bool, seen: &AtomicU64) {
    loop {
        let mut fds = [
            PollFd::new(events, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        let signals = match drain(events, v2) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        if !record(dir, v2, signals, seen) {
            return;
        }
    }
}

/// Counts what woke the watch; whether the cgroup is still there.
fn record(dir: &Path, v2: bool, signals: u64, seen: &AtomicU64) -> bool {
    match read_oom_kills(dir, v2) {
        Some(kills) if v2 => {
            seen.fetch_max(kills, Ordering::AcqRel);
            true
        }
        // v1 signals before the kill is counted: each signal is at least one kill.
        Some(kills) => {
            let at_least = seen.load(Ordering::Acquire) + signals;
            seen.fetch_max(kills.max(at_least), Ordering::AcqRel);
            true
        }
        // Gone: one v1 signal is the removal's; any more came first, from OOMs.
        None => {
            if !v2 && signals > 1 {
                seen.fetch_add(signals - 1, Ordering::AcqRel);
            }
            false
        }
    }
}
