//! The warm pool: stem cells per runner, specialised instances per function version,
//! growth under concurrent demand up to caps, idle reaping, replacement of broken
//! instances. Generic over [`SandboxLauncher`], so every sandbox backend shares it.
//!
//! - A *stem cell* is a booted runner with no code. The first call of a function takes
//!   one and sends the function's code in an `init` frame: milliseconds, not a boot. A
//!   background task keeps `stem_cells` of each runner ready. Stem cells boot with the
//!   pool's stem limits; a function with other limits gets them applied at
//!   specialisation ([`Sandbox::set_limits`]), or a dedicated sandbox if that cannot be
//!   done (a different tmpfs size, network access).
//! - A function whose artifact is too big for an init frame (see
//!   [`PoolConfig::max_inline_bytes`]) gets dedicated sandboxes booted with its artifact
//!   mounted read-only at [`CODE_DIR`] instead of stem cells.
//! - A specialised instance serves one function version only, one invocation at a time,
//!   and goes back to the idle list after each call. Past `max_per_function` instances of
//!   one function, or `max_instances` in all (stem cells not counted), a call waits for a
//!   free instance until its deadline (then `overloaded`); at the global cap an idle
//!   instance of another function is evicted first.
//! - One tenant holds at most `max_per_tenant` instances (idle or busy, all its functions
//!   together), so it cannot take every slot while others wait. A tenant at its cap makes
//!   room by evicting its own longest-idle instance of another function; when all of its
//!   instances are busy its call waits for one of them until its deadline, then fails
//!   with `quota_exceeded` (`warm_instances`, retry after 1 s).
//! - Instances idle past `idle_ttl` are stopped (scale to zero). An instance that
//!   crashed, broke a limit, timed out or left processes behind is killed; the next call
//!   specialises a replacement.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use sopm_core::{Error, FunctionVersion, Invocation, Limits, Output, PoolStats, Result, Target};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::artifact::{self, FunctionCode};
use super::protocol::{ChannelError, InitFrame, InitReply};
use super::{Death, LaunchSpec, RunnerKind, Sandbox, SandboxLauncher, CODE_DIR};

/// How a [`WarmPool`] behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name in stats (the executor's name).
    pub name: String,
    /// Stem cells kept ready per runner.
    pub stem_cells: BTreeMap<RunnerKind, usize>,
    /// Most instances of one function version.
    pub max_per_function: usize,
    /// Most specialised instances in all.
    pub max_instances: usize,
    /// Most specialised instances of one tenant (all its functions together).
    pub max_per_tenant: usize,
    /// Idle instances older than this are stopped.
    pub idle_ttl: Duration,
    /// Largest artifact sent in an init frame; bigger ones are mounted.
    pub max_inline_bytes: u64,
    /// The limits stem cells boot with.
    pub stem_limits: Limits,
    /// Whether functions that ask for network get it.
    pub allow_network: bool,
    /// How long one boot may take.
    pub boot_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: "sandbox".into(),
            stem_cells: RunnerKind::SCRIPTS.iter().map(|k| (*k, 2)).collect(),
            max_per_function: 8,
            max_instances: 64,
            max_per_tenant: 32,
            idle_ttl: Duration::from_secs(300),
            max_inline_bytes: artifact::DEFAULT_MAX_INLINE_BYTES,
            stem_limits: Limits::default(),
            allow_network: false,
            boot_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a pool's life, beyond [`PoolStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Stem cells booted.
    pub stem_cells_booted: u64,
    /// Stem cells specialised into a function instance.
    pub stem_cells_used: u64,
    /// Instances booted on the call path (no usable stem cell).
    pub cold_starts: u64,
    /// Of those, dedicated sandboxes with the artifact mounted.
    pub mounted_starts: u64,
    /// Instances killed after a crash, a broken limit, a timeout or leftover processes.
    pub replaced: u64,
    /// Idle instances stopped after the TTL.
    pub reaped: u64,
    /// Idle instances stopped to make room for another function.
    pub evicted: u64,
}

type FnKey = (Arc<str>, u32);

struct Idle<S> {
    sandbox: S,
    since: Instant,
}

#[derive(Default)]
struct StemPool<S> {
    ready: VecDeque<S>,
    booting: usize,
    failing_until: Option<Instant>,
    backoff: Duration,
    booted: u64,
}

struct FunctionPool<S> {
    slot: u64,
    /// The owner of the function: instances count against its `max_per_tenant`.
    tenant: Arc<str>,
    idle: Vec<Idle<S>>,
    busy: usize,
    code: Option<Arc<FunctionCode>>,
    started: u64,
    replaced: u64,
    reaped: u64,
}

impl<S> FunctionPool<S> {
    fn new(slot: u64, tenant: Arc<str>) -> Self {
        FunctionPool {
            slot,
            tenant,
            idle: Vec::new(),
            busy: 0,
            code: None,
            started: 0,
            replaced: 0,
            reaped: 0,
        }
    }
}

struct State<S> {
    shutdown: bool,
    stems: BTreeMap<RunnerKind, StemPool<S>>,
    functions: HashMap<FnKey, FunctionPool<S>>,
    total: usize,
    next_slot: u64,
}

#[derive(Default)]
struct Counters {
    stem_used: AtomicU64,
    cold: AtomicU64,
    mounted: AtomicU64,
    replaced: AtomicU64,
    reaped: AtomicU64,
    evicted: AtomicU64,
}

struct Inner<L: SandboxLauncher> {
    launcher: L,
    config: PoolConfig,
    state: Mutex<State<L::Sandbox>>,
    freed: Notify,
    refill: Notify,
    counters: Counters,
    background: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A pool of warm sandboxes for one backend. Cheap to clone (shared).
pub struct WarmPool<L: SandboxLauncher> {
    inner: Arc<Inner<L>>,
}

impl<L: SandboxLauncher> Clone for WarmPool<L> {
    fn clone(&self) -> Self {
        WarmPool {
            inner: self.inner.clone(),
        }
    }
}

impl<L: SandboxLauncher> fmt::Debug for WarmPool<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmPool")
            .field("config", &self.inner.config)
            .field("launcher", &self.inner.launcher)
            .finish_non_exhaustive()
    }
}

impl<L: SandboxLauncher> WarmPool<L> {
    /// A pool over `launcher`. Nothing boots until first use (or [`start`](Self::start)).
    pub fn new(launcher: L, config: PoolConfig) -> Self {
        let stems = config
            .stem_cells
            .keys()
            .map(|k| {
                (
                    *k,
                    StemPool {
                        ready: VecDeque::new(),
                        booting: 0,
                        failing_until: None,
                        backoff: Duration::ZERO,
                        booted: 0,
                    },
                )
            })
            .collect();
        WarmPool {
            inner: Arc::new(Inner {
                launcher,
                config,
                state: Mutex::new(State {
                    shutdown: false,
                    stems,
                    functions: HashMap::new(),
                    total: 0,
                    next_slot: 1,
                }),
                freed: Notify::new(),
                refill: Notify::new(),
                counters: Counters::default(),
                background: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The launcher.
    pub fn launcher(&self) -> &L {
        &self.inner.launcher
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Starts the background work (stem cell refill, idle reaping). Called by every
    /// public operation; call it early to have stem cells ready for the first request.
    /// Needs a tokio runtime.
    pub fn start(&self) {
        if self.inner.background.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let refill = tokio::spawn(refill_loop(weak.clone()));
        let reap = tokio::spawn(reap_loop(weak, self.inner.config.idle_ttl));
        self.inner.tasks.lock().extend([refill, reap]);
    }

    /// Runs one executor call: refuses built-ins (`invalid_input`; sandbox executors run
    /// user functions only) and runs the function version on an instance of it, stopping
    /// at the invocation's deadline or after the function's `timeout_ms`, whichever comes
    /// first.
    pub async fn run(&self, invocation: Invocation) -> Result<Output> {
        let version = match &invocation.target {
            Target::User(v) => v,
            Target::Builtin(name) => {
                return Err(Error::invalid(format!(
                    "the {} executor runs user functions, not the built-in '{name}'",
                    self.inner.config.name
                )))
            }
        };
        let limit = Instant::now() + Duration::from_millis(version.limits.timeout_ms);
        let deadline = Instant::from_std(invocation.deadline).min(limit);
        self.invoke(
            version,
            invocation.job_id.as_str(),
            &invocation.input,
            deadline,
        )
        .await
    }

    /// Runs one invocation of `version` on an instance of it.
    pub async fn invoke(
        &self,
        version: &FunctionVersion,
        job_id: &str,
        input: &Value,
        deadline: Instant,
    ) -> Result<Output> {
        let lease = self.acquire(version, deadline).await?;
        lease.invoke(job_id, input, deadline).await
    }

    /// Makes sure one instance of `version` is ready (specialised and idle).
    pub async fn prepare(&self, version: &FunctionVersion) -> Result<()> {
        {
            let st = self.inner.state.lock();
            if let Some(fp) = st.functions.get(&key_of(version)) {
                if !fp.idle.is_empty() || fp.busy > 0 {
                    return Ok(());
                }
            }
        }
        let deadline = Instant::now() + self.inner.config.boot_timeout * 2;
        let lease = self.acquire(version, deadline).await?;
        lease.release().await;
        Ok(())
    }

    /// Stops every instance of a function (all versions). Busy instances are killed when
    /// their invocation ends.
    pub async fn retire(&self, function_id: &str) {
        let doomed: Vec<L::Sandbox> = {
            let mut st = self.inner.state.lock();
            let keys: Vec<FnKey> = st
                .functions
                .keys()
                .filter(|k| &*k.0 == function_id)
                .cloned()
                .collect();
            let mut doomed = Vec::new();
            for k in keys {
                if let Some(fp) = st.functions.remove(&k) {
                    st.total -= fp.idle.len();
                    // Busy instances keep their share of `total` until they come back.
                    doomed.extend(fp.idle.into_iter().map(|i| i.sandbox));
                }
            }
            doomed
        };
        kill_all(doomed).await;
        self.inner.freed.notify_waiters();
    }

    /// Stops every instance of one version of a function (it was pruned); the function's
    /// other versions keep theirs. Busy instances are killed when their invocation ends.
    pub async fn retire_version(&self, function_id: &str, version: u32) {
        let doomed: Vec<L::Sandbox> = {
            let mut st = self.inner.state.lock();
            let key: FnKey = (Arc::from(function_id), version);
            match st.functions.remove(&key) {
                Some(fp) => {
                    st.total -= fp.idle.len();
                    fp.idle.into_iter().map(|i| i.sandbox).collect()
                }
                None => Vec::new(),
            }
        };
        kill_all(doomed).await;
        self.inner.freed.notify_waiters();
    }

    /// Stops everything: stem cells, idle instances, background tasks. Busy instances are
    /// killed when their invocation ends; no new invocation starts.
    pub async fn shutdown(&self) {
        let doomed: Vec<L::Sandbox> = {
            let mut st = self.inner.state.lock();
            st.shutdown = true;
            let mut doomed = Vec::new();
            for sp in st.stems.values_mut() {
                doomed.extend(sp.ready.drain(..));
            }
            let mut freed = 0;
            for fp in st.functions.values_mut() {
                freed += fp.idle.len();
                doomed.extend(fp.idle.drain(..).map(|i| i.sandbox));
            }
            st.total -= freed;
            doomed
        };
        kill_all(doomed).await;
        // The refill task finishes a boot in progress and kills what it booted; the
        // reaper has nothing left to do.
        self.inner.refill.notify_one();
        let tasks: Vec<JoinHandle<()>> = self.inner.tasks.lock().drain(..).collect();
        let mut tasks = tasks.into_iter();
        if let Some(mut refill) = tasks.next() {
            if tokio::time::timeout(self.inner.config.boot_timeout, &mut refill)
                .await
                .is_err()
            {
                refill.abort();
            }
        }
        for reaper in tasks {
            reaper.abort();
        }
        self.inner.freed.notify_waiters();
    }

    /// Pool figures: one line for the whole pool, one per runner's stem cells, one per
    /// function version.
    pub fn stats(&self) -> Vec<PoolStats> {
        let name = &self.inner.config.name;
        let c = self.counters();
        let st = self.inner.state.lock();
        let mut out = Vec::with_capacity(1 + st.stems.len() + st.functions.len());
        let mut total = PoolStats {
            pool: name.clone(),
            started_total: c.stem_cells_booted + c.cold_starts,
            replaced_total: c.replaced,
            reaped_total: c.reaped,
            ..PoolStats::default()
        };
        for (kind, sp) in &st.stems {
            total.stem_cells += sp.ready.len() as u64;
            out.push(PoolStats {
                pool: format!("{name}/stem/{}", kind.as_str()),
                stem_cells: sp.ready.len() as u64,
                started_total: sp.booted,
                ..PoolStats::default()
            });
        }
        let mut fns: Vec<_> = st.functions.iter().collect();
        fns.sort_by(|a, b| a.0.cmp(b.0));
        for ((id, v), fp) in fns {
            total.idle += fp.idle.len() as u64;
            total.busy += fp.busy as u64;
            out.push(PoolStats {
                pool: format!("{name}/fn/{id}@{v}"),
                stem_cells: 0,
                idle: fp.idle.len() as u64,
                busy: fp.busy as u64,
                started_total: fp.started,
                replaced_total: fp.replaced,
                reaped_total: fp.reaped,
            });
        }
        out.insert(0, total);
        out
    }

    /// Life counters (stem cells used, cold starts, ...).
    pub fn counters(&self) -> PoolCounters {
        let c = &self.inner.counters;
        let booted = self
            .inner
            .state
            .lock()
            .stems
            .values()
            .map(|s| s.booted)
            .sum();
        PoolCounters {
            stem_cells_booted: booted,
            stem_cells_used: c.stem_used.load(Ordering::Relaxed),
            cold_starts: c.cold.load(Ordering::Relaxed),
            mounted_starts: c.mounted.load(Ordering::Relaxed),
            replaced: c.replaced.load(Ordering::Relaxed),
            reaped: c.reaped.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        }
    }

    /// Takes an instance of `version`: an idle one, else a new one (from a stem cell or
    /// booted), else waits for one until `deadline`.
    pub async fn acquire(&self, version: &FunctionVersion, deadline: Instant) -> Result<Lease<L>> {
        self.start();
        let key = key_of(version);
        let mut tenant_capped;
        loop {
            let notified = self.inner.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (slot, evicted) = {
                let mut st = self.inner.state.lock();
                if st.shutdown {
                    return Err(Error::Unavailable("the sandbox pool is shut down".into()));
                }
                if !st.functions.contains_key(&key) {
                    let slot = st.next_slot;
                    st.next_slot += 1;
                    let tenant = Arc::from(version.tenant.as_str());
                    st.functions
                        .insert(key.clone(), FunctionPool::new(slot, tenant));
                }
                let fp = st.functions.get_mut(&key).expect("just inserted");
                let mut dead = Vec::new();
                let mut found = None;
                while let Some(mut idle) = fp.idle.pop() {
                    if idle.sandbox.is_alive() {
                        found = Some(idle);
                        break;
                    }
                    fp.replaced += 1;
                    dead.push(idle.sandbox);
                }
                if !dead.is_empty() {
                    st.total -= dead.len();
                    self.inner
                        .counters
                        .replaced
                        .fetch_add(dead.len() as u64, Ordering::Relaxed);
                    tokio::spawn(kill_all(dead));
                }
                let fp = st.functions.get_mut(&key).expect("just inserted");
                if let Some(idle) = found {
                    fp.busy += 1;
                    return Ok(Lease {
                        pool: self.inner.clone(),
                        key,
                        slot: fp.slot,
                        limits: version.limits.clone(),
                        sandbox: Some(idle.sandbox),
                        settled: false,
                    });
                }
                let slot = fp.slot;
                let room_here = fp.busy + fp.idle.len() < self.inner.config.max_per_function;
                let tenant = fp.tenant.clone();
                let room_for_tenant =
                    tenant_instances(&st, &tenant) < self.inner.config.max_per_tenant;
                tenant_capped = room_here && !room_for_tenant;
                if !room_here {
                    (None, None)
                } else if !room_for_tenant {
                    // The tenant's own idle instance of another function makes room;
                    // another tenant's never does.
                    match evict_one(&mut st, &key, Some(&tenant)) {
                        Some(victim) => {
                            self.inner.counters.evicted.fetch_add(1, Ordering::Relaxed);
                            reserve(&mut st, &key);
                            (Some(slot), Some(victim))
                        }
                        None => (None, None),
                    }
                } else if st.total < self.inner.config.max_instances {
                    reserve(&mut st, &key);
                    (Some(slot), None)
                } else if let Some(victim) = evict_one(&mut st, &key, None) {
                    self.inner.counters.evicted.fetch_add(1, Ordering::Relaxed);
                    reserve(&mut st, &key);
                    (Some(slot), Some(victim))
                } else {
                    (None, None)
                }
            };
            if let Some(slot) = slot {
                // The reservation is undone by the lease's drop if provisioning fails or
                // the call is cancelled.
                let mut lease = Lease {
                    pool: self.inner.clone(),
                    key: key.clone(),
                    slot,
                    limits: version.limits.clone(),
                    sandbox: None,
                    settled: false,
                };
                if let Some(victim) = evicted {
                    kill_all(vec![victim]).await;
                }
                let sandbox = self.provision(version, &key, deadline).await?;
                lease.sandbox = Some(sandbox);
                if let Some(fp) = self.inner.state.lock().functions.get_mut(&key) {
                    fp.started += 1;
                }
                return Ok(lease);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if tenant_capped {
                    let cap = self.inner.config.max_per_tenant;
                    return Err(Error::QuotaExceeded {
                        quota: "warm_instances",
                        message: format!(
                            "warm_instances: tenant '{}' has {cap} of {cap} instances busy in the {} executor; no free one before the deadline of '{}'",
                            version.tenant, self.inner.config.name, version.name
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                return Err(Error::Overloaded {
                    message: format!(
                        "no free instance of function '{}' before its deadline",
                        version.name
                    ),
                    retry_after: Duration::from_secs(1),
                });
            }
        }
    }

    async fn code_of(&self, version: &FunctionVersion, key: &FnKey) -> Result<Arc<FunctionCode>> {
        if let Some(code) = self
            .inner
            .state
            .lock()
            .functions
            .get(key)
            .and_then(|fp| fp.code.clone())
        {
            return Ok(code);
        }
        let Some(artifact) = &version.artifact else {
            return Err(Error::NotReady(format!(
                "function '{}' version {} has no artifact",
                version.name, version.version
            )));
        };
        let max = self.inner.config.max_inline_bytes;
        let code = self.inner.launcher.load_code(artifact, max).await?;
        let code = Arc::new(code);
        if let Some(fp) = self.inner.state.lock().functions.get_mut(key) {
            fp.code = Some(code.clone());
        }
        Ok(code)
    }

    async fn provision(
        &self,
        version: &FunctionVersion,
        key: &FnKey,
        deadline: Instant,
    ) -> Result<L::Sandbox> {
        let runner = self
            .inner
            .launcher
            .runner_for(version.runtime)
            .ok_or_else(|| {
                Error::invalid("built-in functions do not run in sandboxes".to_string())
            })?;
        let code = self.code_of(version, key).await?;
        let config = &self.inner.config;
        let network = version.limits.network && config.allow_network;
        if version.limits.network && !config.allow_network {
            tracing::debug!(function = %version.name, "network requested but not allowed by the operator");
        }
        let (files, mount, image) = match &*code {
            FunctionCode::Inline(files) => (files.clone(), None, None),
            FunctionCode::Mounted(dir) => (Default::default(), Some(dir.clone()), None),
            FunctionCode::Image(image) => (Default::default(), None, Some(image.clone())),
        };
        let stem_ok = mount.is_none()
            && image.is_none()
            && !network
            && version.limits.tmpfs_mb == config.stem_limits.tmpfs_mb;
        if stem_ok {
            if let Some(mut stem) = self.take_stem(runner) {
                let from = config.stem_limits.clone();
                if stem.set_limits(&from, &version.limits).await.is_ok() {
                    self.inner
                        .counters
                        .stem_used
                        .fetch_add(1, Ordering::Relaxed);
                    match self.init(&mut stem, version, files.clone(), deadline).await {
                        Ok(()) => return Ok(stem),
                        Err(e @ Error::Function { .. }) | Err(e @ Error::Timeout(_)) => {
                            stem.terminate().await;
                            return Err(e);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a stem cell failed to take a function; booting one");
                            stem.terminate().await;
                        }
                    }
                } else {
                    stem.terminate().await;
                }
            }
        }
        let spec = LaunchSpec {
            runner,
            limits: version.limits.clone(),
            network,
            mount: mount.clone(),
            image: image.clone(),
        };
        self.inner.counters.cold.fetch_add(1, Ordering::Relaxed);
        if mount.is_some() {
            self.inner.counters.mounted.fetch_add(1, Ordering::Relaxed);
        }
        let boot_deadline = deadline.min(Instant::now() + config.boot_timeout);
        let mut sandbox =
            match tokio::time::timeout_at(boot_deadline, self.inner.launcher.launch(&spec)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "a sandbox for function '{}' did not boot in time",
                        version.name
                    )))
                }
            };
        match self.init(&mut sandbox, version, files, deadline).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.terminate().await;
                Err(e)
            }
        }
    }

    async fn init(
        &self,
        sandbox: &mut L::Sandbox,
        version: &FunctionVersion,
        code: super::protocol::CodeFiles,
        deadline: Instant,
    ) -> Result<()> {
        let marker = sandbox.channel().marker().to_owned();
        let frame = InitFrame {
            runtime: version.runtime,
            handler: version.handler.clone(),
            env: version.env.clone(),
            code,
            code_dir: CODE_DIR.into(),
            max_output_bytes: version.limits.max_output_bytes,
            log_marker: marker,
        };
        let cap = usize::try_from(version.limits.max_output_bytes).unwrap_or(usize::MAX);
        let reply =
            match tokio::time::timeout_at(deadline, sandbox.channel().init(&frame, cap)).await {
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "function '{}' did not finish loading before its deadline",
                        version.name
                    )))
                }
                Ok(Err(e)) => {
                    let death = sandbox.post_mortem().await;
                    return Err(death_error(death, &e, &version.limits, "while loading"));
                }
                Ok(Ok(r)) => r,
            };
        match reply {
            InitReply::Ready { logs } => {
                if !logs.is_empty() {
                    tracing::debug!(function = %version.name, %logs, "function printed while loading");
                }
                sandbox.mark_clean();
                Ok(())
            }
            InitReply::Failed {
                message, traceback, ..
            } => Err(Error::Function {
                message: format!("the function failed to load: {message}"),
                traceback,
                logs: None,
            }),
        }
    }

    fn take_stem(&self, runner: RunnerKind) -> Option<L::Sandbox> {
        let mut dead = Vec::new();
        let stem = {
            let mut st = self.inner.state.lock();
            let sp = st.stems.get_mut(&runner)?;
            loop {
                let Some(mut s) = sp.ready.pop_front() else {
                    break None;
                };
                if s.is_alive() {
                    break Some(s);
                }
                dead.push(s);
            }
        };
        if !dead.is_empty() {
            tokio::spawn(kill_all(dead));
        }
        self.inner.refill.notify_one();
        stem
    }
}

fn key_of(version: &FunctionVersion) -> FnKey {
    (Arc::from(version.function_id.as_str()), version.version)
}

fn reserve<S>(st: &mut State<S>, key: &FnKey) {
    st.total += 1;
    if let Some(fp) = st.functions.get_mut(key) {
        fp.busy += 1;
    }
}

/// How many instances (idle or reserved/busy) the functions of `tenant` hold.
fn tenant_instances<S>(st: &State<S>, tenant: &str) -> usize {
    st.functions
        .values()
        .filter(|fp| &*fp.tenant == tenant)
        .map(|fp| fp.busy + fp.idle.len())
        .sum()
}

/// Removes the longest-idle instance of another function (of `tenant` only, if given),
/// to make room.
fn evict_one<S>(st: &mut State<S>, except: &FnKey, tenant: Option<&str>) -> Option<S> {
    let victim_key = st
        .functions
        .iter()
        .filter(|(k, fp)| *k != except && !fp.idle.is_empty())
        .filter(|(_, fp)| tenant.is_none_or(|t| &*fp.tenant == t))
        .min_by_key(|(_, fp)| fp.idle.iter().map(|i| i.since).min())
        .map(|(k, _)| k.clone())?;
    let fp = st.functions.get_mut(&victim_key)?;
    let idx = fp
        .idle
        .iter()
        .enumerate()
        .min_by_key(|(_, i)| i.since)
        .map(|(i, _)| i)?;
    st.total -= 1;
    Some(fp.idle.swap_remove(idx).sandbox)
}

async fn kill_all<S: Sandbox>(sandboxes: Vec<S>) {
    for mut s in sandboxes {
        s.terminate().await;
    }
}

/// One instance lent to one invocation. Dropping it without [`invoke`](Lease::invoke)
/// or [`release`](Lease::release) (a cancelled call) kills the instance.
pub struct Lease<L: SandboxLauncher> {
    pool: Arc<Inner<L>>,
    key: FnKey,
    slot: u64,
    limits: Limits,
    sandbox: Option<L::Sandbox>,
    settled: bool,
}

impl<L: SandboxLauncher> fmt::Debug for Lease<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("function", &self.key)
            .field("sandbox", &self.sandbox)
            .finish()
    }
}

enum Fate {
    Idle,
    Replaced,
}

impl<L: SandboxLauncher> Lease<L> {
    /// Runs one invocation, then returns the instance to the pool or kills it.
    pub async fn invoke(
        mut self,
        job_id: &str,
        input: &Value,
        deadline: Instant,
    ) -> Result<Output> {
        let mut sandbox = self.sandbox.take().expect("a lease holds a sandbox");
        let max_out = usize::try_from(self.limits.max_output_bytes).unwrap_or(usize::MAX);
        let outcome = tokio::time::timeout_at(
            deadline,
            sandbox.channel().invoke(job_id, input, deadline, max_out),
        )
        .await;
        let reply = match outcome {
            Err(_) => {
                sandbox.terminate().await;
                self.settle(None, Fate::Replaced);
                return Err(Error::Timeout(
                    "the function ran past its deadline and its sandbox was stopped".into(),
                ));
            }
            Ok(Err(ChannelError::FrameTooLong { limit })) => {
                sandbox.terminate().await;
                self.settle(None, Fate::Replaced);
                return Err(Error::OutputTooLarge(format!(
                    "the function's answer went past {limit} bytes"
                )));
            }
            Ok(Err(e)) => {
                let death = sandbox.post_mortem().await;
                self.settle(None, Fate::Replaced);
                return Err(death_error(death, &e, &self.limits, "during the call"));
            }
            Ok(Ok(reply)) => reply,
        };
        let result = reply.result;
        let outcome = if result.ok {
            Ok(Output {
                value: result.output,
                logs: Some(reply.logs),
            })
        } else {
            let mut e = result
                .error
                .map(|e| e.into_error())
                .unwrap_or_else(|| Error::Function {
                    message: "the function failed without saying why".into(),
                    traceback: None,
                    logs: None,
                });
            // What it printed before failing belongs to the job, as for a success.
            if let Error::Function { logs, .. } = &mut e {
                *logs = Some(reply.logs);
            }
            Err(e)
        };
        let outcome = if sandbox.memory_exceeded() {
            Err(Error::OutOfMemory(format!(
                "a process of the function went past the memory limit of {} MiB and was killed",
                self.limits.memory_mb
            )))
        } else {
            outcome
        };
        let broke_limit = matches!(
            &outcome,
            Err(Error::OutOfMemory(_)) | Err(Error::Timeout(_))
        );
        if broke_limit || !reply.logs_complete || !sandbox.is_clean() {
            sandbox.terminate().await;
            self.settle(None, Fate::Replaced);
        } else if let Some(mut rejected) = self.settle(Some(sandbox), Fate::Idle) {
            rejected.terminate().await;
        }
        outcome
    }

    /// Returns the instance to the idle list (or kills it if its function was retired or
    /// the pool shut down).
    pub async fn release(mut self) {
        let sandbox = self.sandbox.take();
        if let Some(mut rejected) = self.settle(sandbox, Fate::Idle) {
            rejected.terminate().await;
        }
    }

    /// Books the end of the lease; returns a sandbox the pool would not take back.
    fn settle(&mut self, sandbox: Option<L::Sandbox>, fate: Fate) -> Option<L::Sandbox> {
        self.settled = true;
        let rejected = {
            let mut st = self.pool.state.lock();
            let shutdown = st.shutdown;
            let fp = st
                .functions
                .get_mut(&self.key)
                .filter(|fp| fp.slot == self.slot);
            match (fate, fp, sandbox) {
                (Fate::Idle, Some(fp), Some(sandbox)) if !shutdown => {
                    fp.busy -= 1;
                    fp.idle.push(Idle {
                        sandbox,
                        since: Instant::now(),
                    });
                    None
                }
                (fate, fp, sandbox) => {
                    if let Some(fp) = fp {
                        fp.busy -= 1;
                        if matches!(fate, Fate::Replaced) {
                            fp.replaced += 1;
                        }
                    }
                    if matches!(fate, Fate::Replaced) {
                        self.pool.counters.replaced.fetch_add(1, Ordering::Relaxed);
                    }
                    st.total -= 1;
                    sandbox
                }
            }
        };
        self.pool.freed.notify_waiters();
        rejected
    }
}

impl<L: SandboxLauncher> Drop for Lease<L> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // A cancelled call, or a failed provisioning: the instance (if any) is in an
        // unknown state, so it goes. Dropping a sandbox kills it.
        let sandbox = self.sandbox.take();
        {
            let mut st = self.pool.state.lock();
            if let Some(fp) = st
                .functions
                .get_mut(&self.key)
                .filter(|fp| fp.slot == self.slot)
            {
                fp.busy -= 1;
            }
            st.total -= 1;
        }
        self.pool.freed.notify_waiters();
        drop(sandbox);
    }
}

fn death_error(death: Death, cause: &ChannelError, limits: &Limits, when: &str) -> Error {
    match death {
        Death::OutOfMemory => Error::OutOfMemory(format!(
            "the function went past its memory limit of {} MiB and was killed",
            limits.memory_mb
        )),
        Death::CpuLimit => {
            Error::Timeout("the function used up its CPU time and was killed".into())
        }
        Death::Exited(how) => Error::SandboxCrashed(format!("the sandbox died {when} ({how})")),
        Death::Killed => {
            Error::SandboxCrashed(format!("the sandbox broke the protocol {when}: {cause}"))
        }
    }
}

async fn refill_loop<L: SandboxLauncher>(pool: Weak<Inner<L>>) {
    loop {
        let Some(inner) = pool.upgrade() else { return };
        let mut next: Option<RunnerKind> = None;
        {
            let mut st = inner.state.lock();
            if st.shutdown {
                return;
            }
            let now = Instant::now();
            for (kind, want) in &inner.config.stem_cells {
                let Some(sp) = st.stems.get_mut(kind) else {
                    continue;
                };
                if sp.failing_until.is_some_and(|t| t > now) {
                    continue;
                }
                if sp.ready.len() + sp.booting < *want {
                    sp.booting += 1;
                    next = Some(*kind);
                    break;
                }
            }
        }
        let Some(kind) = next else {
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.refill.notified()).await;
            continue;
        };
        let spec = LaunchSpec {
            runner: kind,
            limits: inner.config.stem_limits.clone(),
            network: false,
            mount: None,
            image: None,
        };
        let booted =
            tokio::time::timeout(inner.config.boot_timeout, inner.launcher.launch(&spec)).await;
        let mut doomed = None;
        {
            let mut st = inner.state.lock();
            let shutdown = st.shutdown;
            let sp = st.stems.get_mut(&kind).expect("stem pools are fixed");
            sp.booting -= 1;
            match booted {
                Ok(Ok(sandbox)) => {
                    sp.booted += 1;
                    sp.backoff = Duration::ZERO;
                    sp.failing_until = None;
                    if shutdown {
                        doomed = Some(sandbox);
                    } else {
                        sp.ready.push_back(sandbox);
                    }
                }
                Ok(Err(e)) => {
                    stem_failed(sp, kind, &e.to_string());
                }
                Err(_) => stem_failed(sp, kind, "boot timed out"),
            }
        }
        if let Some(mut s) = doomed {
            s.terminate().await;
        }
    }
}

fn stem_failed<S>(sp: &mut StemPool<S>, kind: RunnerKind, why: &str) {
    sp.backoff = (sp.backoff * 2).clamp(Duration::from_secs(2), Duration::from_secs(60));
    sp.failing_until = Some(Instant::now() + sp.backoff);
    tracing::warn!(runner = kind.as_str(), retry_in = ?sp.backoff, "cannot boot a stem cell: {why}");
}

async fn reap_loop<L: SandboxLauncher>(pool: Weak<Inner<L>>, ttl: Duration) {
    let every = (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = pool.upgrade() else { return };
        let doomed: Vec<L::Sandbox> = {
            let mut st = inner.state.lock();
            if st.shutdown {
                return;
            }
            let now = Instant::now();
            let mut doomed = Vec::new();
            for fp in st.functions.values_mut() {
                let mut i = 0;
                while i < fp.idle.len() {
                    if now.duration_since(fp.idle[i].since) >= ttl {
                        doomed.push(fp.idle.swap_remove(i).sandbox);
                        fp.reaped += 1;
                    } else {
                        i += 1;
                    }
                }
            }
            st.total -= doomed.len();
            doomed
        };
        if !doomed.is_empty() {
            inner
                .counters
                .reaped
                .fetch_add(doomed.len() as u64, Ordering::Relaxed);
            inner.freed.notify_waiters();
            kill_all(doomed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pool's bookkeeping against an in-process fake runner (no sandbox needed).

    use super::*;
    use crate::sandbox::protocol::{BoxRead, BoxWrite, RunnerChannel};
    use async_trait::async_trait;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[derive(Debug)]
    struct FakeSandbox {
        channel: RunnerChannel,
        runner: Option<JoinHandle<()>>,
        alive: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Sandbox for FakeSandbox {
        fn channel(&mut self) -> &mut RunnerChannel {
            &mut self.channel
        }
        async fn set_limits(&mut self, _: &Limits, _: &Limits) -> Result<()> {
            Ok(())
        }
        fn is_alive(&mut self) -> bool {
            self.runner.as_ref().is_some_and(|r| !r.is_finished())
        }
        fn mark_clean(&mut self) {}
        fn memory_exceeded(&mut self) -> bool {
            false
        }
        fn is_clean(&mut self) -> bool {
            true
        }
        async fn post_mortem(&mut self) -> Death {
            self.terminate().await;
            Death::Killed
        }
        async fn terminate(&mut self) {
            if let Some(r) = self.runner.take() {
                r.abort();
                self.alive.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    impl Drop for FakeSandbox {
        fn drop(&mut self) {
            if let Some(r) = self.runner.take() {
                r.abort();
                self.alive.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Answers every invoke with its input after `input.sleep_ms`.
    #[derive(Debug, Default)]
    struct FakeLauncher {
        alive: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl SandboxLauncher for FakeLauncher {
        type Sandbox = FakeSandbox;
        async fn launch(&self, _spec: &LaunchSpec) -> Result<FakeSandbox> {
            let (host_in, runner_in) = tokio::io::duplex(1 << 16);
            let (runner_out, host_out) = tokio::io::duplex(1 << 16);
            let (mut runner_log, host_log) = tokio::io::duplex(1 << 16);
            let runner = tokio::spawn(async move {
                let mut out = runner_out;
                let mut lines = BufReader::new(runner_in).lines();
                out.write_all(b"{\"type\":\"hello\",\"runner\":\"fake\"}\n")
                    .await
                    .unwrap();
                let mut marker = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let reply = if v["type"] == "init" {
                        marker = v["log_marker"].as_str().unwrap().to_owned();
                        serde_json::json!({"type": "ready"})
                    } else {
                        let ms = v["input"]["sleep_ms"].as_u64().unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        serde_json::json!({"type": "result", "id": v["id"], "ok": true, "output": v["input"]})
                    };
                    runner_log
                        .write_all(format!("log\n{marker}\n").as_bytes())
                        .await
                        .unwrap();
                    out.write_all(format!("{reply}\n").as_bytes())
                        .await
                        .unwrap();
                }
            });
            self.alive.fetch_add(1, Ordering::SeqCst);
            let mut channel = RunnerChannel::new(
                Box::new(host_in) as BoxWrite,
                Box::new(host_out) as BoxRead,
                Box::new(host_log) as BoxRead,
                "fake-marker".into(),
            );
            channel.hello().await.unwrap();
            Ok(FakeSandbox {
                channel,
                runner: Some(runner),
                alive: self.alive.clone(),
            })
        }
    }

    /// A function with an empty `main.py`, in a directory kept alive by the second value.
    fn function(id: &str) -> (FunctionVersion, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.py"), "").unwrap();
        let version = FunctionVersion {
            function_id: id.into(),
            tenant: sopm_core::TenantId::default(),
            name: id.into(),
            version: 1,
            runtime: sopm_core::Runtime::Python,
            handler: "main.handle".into(),
            limits: Limits::default(),
            env: Default::default(),
            source_digest: String::new(),
            executor: None,
            status: sopm_core::BuildStatus::Ready,
            build_log: String::new(),
            artifact: Some(sopm_core::Artifact::Directory {
                path: dir.path().to_string_lossy().into(),
                digest: None,
            }),
            created_ms: 0,
        };
        (version, dir)
    }

    fn fake_pool(max_total: usize, per_fn: usize) -> WarmPool<FakeLauncher> {
        let config = PoolConfig {
            name: "fake".into(),
            stem_cells: BTreeMap::new(),
            max_per_function: per_fn,
            max_instances: max_total,
            ..PoolConfig::default()
        };
        WarmPool::new(FakeLauncher::default(), config)
    }

    fn invocation(target: Target, input: Value, deadline: Duration) -> Invocation {
        Invocation {
            job_id: sopm_core::JobId::random(),
            tenant: sopm_core::TenantId::default(),
            target,
            input: Arc::new(input),
            deadline: std::time::Instant::now() + deadline,
        }
    }

    #[tokio::test]
    async fn run_refuses_built_ins_and_stops_at_the_function_timeout() {
        let pool = fake_pool(2, 2);
        let builtin = invocation(
            Target::Builtin("echo".into()),
            serde_json::json!({}),
            Duration::from_secs(5),
        );
        let e = pool.run(builtin).await.unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        assert!(e.to_string().contains("the fake executor"), "{e}");
        assert!(e.to_string().contains("'echo'"), "{e}");

        let (mut version, _dir) = function("run-timeout");
        let quick = invocation(
            Target::User(Arc::new(version.clone())),
            serde_json::json!({"x": 1}),
            Duration::from_secs(5),
        );
        assert_eq!(
            pool.run(quick).await.unwrap().value,
            serde_json::json!({"x": 1})
        );
        // The invocation could wait 30 s; the function's own 100 ms timeout stops it.
        version.limits.timeout_ms = 100;
        let slow = invocation(
            Target::User(Arc::new(version.clone())),
            serde_json::json!({"sleep_ms": 1_000}),
            Duration::from_secs(30),
        );
        assert_eq!(pool.run(slow).await.unwrap_err().code(), "timeout");
        // And the invocation's 100 ms deadline stops it under a 30 s timeout.
        version.limits.timeout_ms = 30_000;
        let late = invocation(
            Target::User(Arc::new(version)),
            serde_json::json!({"sleep_ms": 1_000}),
            Duration::from_millis(100),
        );
        assert_eq!(pool.run(late).await.unwrap_err().code(), "timeout");
        assert_eq!(pool.counters().replaced, 2);
        pool.shutdown().await;
    }

    #[tokio::test]
    async fn at_the_global_cap_an_idle_instance_of_another_function_is_evicted() {
        let pool = fake_pool(1, 1);
        let (a, _a) = function("evict-a");
        let (b, _b) = function("evict-b");
        let soon = || Instant::now() + Duration::from_secs(5);
        let out = pool
            .invoke(&a, "j1", &serde_json::json!({"x": 1}), soon())
            .await
            .unwrap();
        assert_eq!(out.value, serde_json::json!({"x": 1}));
        assert_eq!(out.logs.as_deref(), Some("log"));
        pool.invoke(&b, "j2", &serde_json::json!({}), soon())
            .await
            .unwrap();
        let c = pool.counters();
        assert_eq!((c.evicted, c.cold_starts), (1, 2));
        assert_eq!(pool.launcher().alive.load(Ordering::SeqCst), 1);
        pool.shutdown().await;
        assert_eq!(pool.launcher().alive.load(Ordering::SeqCst), 0);
    }

    /// `function(id)` owned by `tenant`.
    fn function_of(id: &str, tenant: &str) -> (FunctionVersion, tempfile::TempDir) {
        let (mut v, dir) = function(id);
        v.tenant = sopm_core::TenantId::new(tenant).unwrap();
        (v, dir)
    }

    fn tenant_capped_pool(max_total: usize, per_tenant: usize) -> WarmPool<FakeLauncher> {
        let config = PoolConfig {
            name: "fake".into(),
            stem_cells: BTreeMap::new(),
            max_per_function: 2,
            max_instances: max_total,
            max_per_tenant: per_tenant,
            ..PoolConfig::default()
        };
        WarmPool::new(FakeLauncher::default(), config)
    }

    /// Idle plus busy instances of each function, by `id@version`.
    fn held(pool: &WarmPool<FakeLauncher>) -> BTreeMap<String, u64> {
        pool.stats()
            .into_iter()
            .filter_map(|s| {
                let f = s.pool.strip_prefix("fake/fn/")?.to_string();
                Some((f, s.idle + s.busy))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_tenant_at_its_cap_evicts_its_own_idle_instance_never_another_tenants() {
        let pool = tenant_capped_pool(8, 2);
        let (a1, _a1) = function_of("cap-a1", "alice");
        let (a2, _a2) = function_of("cap-a2", "alice");
        let (a3, _a3) = function_of("cap-a3", "alice");
        let (b1, _b1) = function_of("cap-b1", "bob");
        let soon = || Instant::now() + Duration::from_secs(5);
        for v in [&a1, &b1, &a2] {
            pool.invoke(v, "j", &serde_json::json!({}), soon())
                .await
                .unwrap();
        }
        // The global cap (8) has room; alice's own cap (2) does not.
        pool.invoke(&a3, "j", &serde_json::json!({}), soon())
            .await
            .unwrap();
        let held = held(&pool);
        assert_eq!(
            held.get("cap-b1@1"),
            Some(&1),
            "bob's idle instance stays: {held:?}"
        );
        assert_eq!(
            held.get("cap-a1@1").copied().unwrap_or(0),
            0,
            "alice's longest-idle instance made room: {held:?}"
        );
        let alice: u64 = held
            .iter()
            .filter(|(k, _)| k.starts_with("cap-a"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(alice, 2, "alice holds her cap, no more: {held:?}");
        assert_eq!(pool.counters().evicted, 1);
        assert_eq!(pool.launcher().alive.load(Ordering::SeqCst), 3);
        pool.shutdown().await;
    }

    #[tokio::test]
    async fn a_tenant_with_every_instance_busy_waits_then_quota_exceeded_while_others_run() {
        let pool = tenant_capped_pool(8, 1);
        let (a1, _a1) = function_of("busy-cap-a1", "alice");
        let (a2, _a2) = function_of("busy-cap-a2", "alice");
        let (b1, _b1) = function_of("busy-cap-b1", "bob");
        let input = serde_json::json!({"sleep_ms": 400});
        let slow = pool.invoke(&a1, "j1", &input, Instant::now() + Duration::from_secs(5));
        let others = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let alice = pool
                .invoke(
                    &a2,
                    "j2",
                    &serde_json::json!({}),
                    Instant::now() + Duration::from_millis(100),
                )
                .await;
            let bob = pool
                .invoke(
                    &b1,
                    "j3",
                    &serde_json::json!({}),
                    Instant::now() + Duration::from_secs(5),
                )
                .await;
            (alice, bob)
        };
        let (slow, (alice, bob)) = tokio::join!(slow, others);
        slow.unwrap();
        bob.expect("another tenant is not held back by alice's cap");
        match alice.unwrap_err() {
            Error::QuotaExceeded {
                quota,
                message,
                retry_after,
            } => {
                assert_eq!(quota, "warm_instances");
                assert!(retry_after.is_some());
                assert!(
                    message.contains("alice") && message.contains('1'),
                    "{message}"
                );
            }
            e => panic!("expected quota_exceeded, got {e:?}"),
        }
        pool.shutdown().await;
    }

    #[tokio::test]
    async fn retire_version_stops_one_version_and_keeps_the_others() {
        let pool = tenant_capped_pool(8, 8);
        let (v1, _d1) = function("retire-v");
        let mut v2 = v1.clone();
        v2.version = 2;
        let soon = || Instant::now() + Duration::from_secs(5);
        for v in [&v1, &v2] {
            pool.invoke(v, "j", &serde_json::json!({}), soon())
                .await
                .unwrap();
        }
        pool.retire_version("retire-v", 1).await;
        let held = held(&pool);
        assert_eq!(held.get("retire-v@1"), None, "{held:?}");
        assert_eq!(held.get("retire-v@2"), Some(&1), "{held:?}");
        assert_eq!(pool.launcher().alive.load(Ordering::SeqCst), 1);
        pool.shutdown().await;
    }

    #[tokio::test]
    async fn a_busy_global_cap_makes_callers_wait_then_overloaded() {
        let pool = fake_pool(1, 1);
        let (a, _a) = function("busy-a");
        let (b, _b) = function("busy-b");
        let input = serde_json::json!({"sleep_ms": 300});
        let slow = pool.invoke(&a, "j1", &input, Instant::now() + Duration::from_secs(5));
        let blocked = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pool.invoke(
                &b,
                "j2",
                &serde_json::json!({}),
                Instant::now() + Duration::from_millis(100),
            )
            .await
        };
        let (slow, blocked) = tokio::join!(slow, blocked);
        slow.unwrap();
        assert_eq!(blocked.unwrap_err().code(), "overloaded");
        let total = pool.stats().remove(0);
        assert_eq!((total.busy, total.idle), (0, 1));
        pool.shutdown().await;
    }
}
