//! [`KubernetesLauncher`]: boots warm function pods (the runner in TCP mode under the
//! pod's RuntimeClass), waits for the watcher to report them running at an address,
//! connects to the runner's port with the pod's token, and hands the pool a
//! [`KubernetesPod`] that deletes its pod when it is retired, broken or dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::Api;
use sopm_core::{Artifact, Error, Limits, Result, Runtime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::cluster::{api_error, delete_now, sweep, Cluster};
use super::settings::{is_pinned, KubernetesSettings};
use super::spec::{fresh_name, runner_command, selector, warm_pod, PodPlan, TOKEN_VAR};
use super::status::{stage, Stage};
use super::watch::{Hub, Seen};
use crate::sandbox::protocol::{BoxRead, BoxWrite};
use crate::sandbox::{
    load_directory, Death, FunctionCode, LaunchSpec, RunnerChannel, RunnerKind, Sandbox,
    SandboxLauncher,
};

/// How often a connection to a runner not listening yet is tried again.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// How long a broken pod's end is waited for before it counts as killed.
const POST_MORTEM_WAIT: Duration = Duration::from_secs(2);

/// The runner of each runtime in pods: python and node under their script runners, shell
/// and binary under the static runner (as in the Docker backend's images).
pub fn pod_runner(runtime: Runtime) -> Option<RunnerKind> {
    match runtime {
        Runtime::Python => Some(RunnerKind::Python),
        Runtime::Node => Some(RunnerKind::Node),
        Runtime::Shell | Runtime::Binary => Some(RunnerKind::Static),
        Runtime::Builtin => None,
    }
}

/// A fresh secret for one pod: 256 bits from the system's random source, as hex.
pub fn fresh_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Boots the `kubernetes` executor's warm pods.
#[derive(Debug)]
pub struct KubernetesLauncher {
    settings: Arc<KubernetesSettings>,
    cluster: Cluster,
    pods: tokio::sync::Mutex<Option<Arc<Hub<Pod>>>>,
}

impl KubernetesLauncher {
    pub(crate) fn new(settings: KubernetesSettings) -> Self {
        KubernetesLauncher {
            cluster: Cluster::new(&settings),
            settings: Arc::new(settings),
            pods: tokio::sync::Mutex::new(None),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &KubernetesSettings {
        &self.settings
    }

    async fn api(&self) -> Result<Api<Pod>> {
        let client = self.cluster.client().await?;
        Ok(Api::namespaced(client, &self.settings.namespace))
    }

    /// The pod watcher, started on first use after this instance's leftover warm pods
    /// (of an earlier run with the same instance id) are deleted.
    async fn hub(&self) -> Result<(Api<Pod>, Arc<Hub<Pod>>)> {
        let api = self.api().await?;
        let mut hub = self.pods.lock().await;
        if let Some(h) = &*hub {
            return Ok((api, h.clone()));
        }
        let labels = selector(&self.settings, "warm");
        let swept = sweep(&api, &labels, &self.settings.namespace).await?;
        if swept > 0 {
            tracing::info!(pods = swept, instance = %self.settings.instance, "deleted warm pods left by an earlier run");
        }
        let h = Arc::new(Hub::start(api.clone(), &labels, |p: &Pod| {
            p.metadata.name.clone()
        }));
        *hub = Some(h.clone());
        Ok((api, h))
    }

    fn image_of(&self, spec: &LaunchSpec) -> Result<String> {
        if let Some(image) = &spec.image {
            if !is_pinned(image) {
                return Err(Error::invalid(format!(
                    "the kubernetes backend runs images by digest only, not '{image}'"
                )));
            }
            return Ok(image.clone());
        }
        self.settings
            .images
            .get(&spec.runner)
            .cloned()
            .ok_or_else(|| {
                Error::invalid(format!(
                "the kubernetes backend has no image for the {} runner (SOPM_KUBERNETES_IMAGE_{})",
                spec.runner.as_str(),
                spec.runner.as_str().to_uppercase()
            ))
            })
    }
}

/// A pod created but not yet handed over: deleted if the launch fails or is dropped.
struct Pending {
    api: Api<Pod>,
    hub: Arc<Hub<Pod>>,
    name: String,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            self.hub.forget(&self.name);
            spawn_delete(self.api.clone(), std::mem::take(&mut self.name));
        }
    }
}

fn spawn_delete(api: Api<Pod>, name: String) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            if let Err(e) = delete_now(&api, &name, 0).await {
                tracing::warn!(pod = %name, error = %e, "cannot delete a function pod; the instance sweep or its deadline ends it");
            }
        });
    }
}

/// Waits until the watched pod runs at an address, or cannot.
async fn wait_running(name: &str, seen: &mut watch::Receiver<Seen<Pod>>) -> Result<String> {
    loop {
        let outcome = match &*seen.borrow_and_update() {
            Seen::Present(pod) => match stage(pod) {
                Stage::Running(ip) => Some(Ok(ip)),
                Stage::CannotStart(why) => Some(Err(Error::Unavailable(format!(
                    "pod {name} cannot start: {why}"
                )))),
                Stage::Ended(how) => Some(Err(Error::Unavailable(format!(
                    "pod {name} ended before its runner answered ({how:?})"
                )))),
                Stage::Starting => None,
            },
            Seen::Gone => Some(Err(Error::Unavailable(format!(
                "pod {name} was deleted before it started"
            )))),
            Seen::NotYet => None,
        };
        if let Some(outcome) = outcome {
            return outcome;
        }
        seen.changed()
            .await
            .map_err(|_| Error::Unavailable(format!("the watch of pod {name} stopped")))?;
    }
}

/// Opens one channel to a runner: connects (again while nothing listens yet) and sends
/// the authentication line.
async fn open_channel(addr: SocketAddr, channel: &str, token: &str) -> std::io::Result<TcpStream> {
    loop {
        match TcpStream::connect(addr).await {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                stream
                    .write_all(format!("sopm-runner/1 {channel} {token}\n").as_bytes())
                    .await?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the runner's end of a connection is still open: nothing to read (a runner
/// between calls sends nothing), neither end of stream nor an error.
fn still_open(probe: &std::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(probe.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The runner channel of the runner at `ip:port`, and a handle on its frames connection
/// to check between calls that the runner is still there.
async fn connect(
    name: &str,
    ip: &str,
    port: u16,
    token: &str,
) -> Result<(RunnerChannel, std::net::TcpStream)> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| Error::Unavailable(format!("pod {name} has no usable address ('{ip}')")))?;
    let addr = SocketAddr::new(ip, port);
    let unreachable = |e: std::io::Error| {
        Error::Unavailable(format!(
            "cannot reach the runner of pod {name} at {addr}: {e}"
        ))
    };
    let frames = open_channel(addr, "frames", token)
        .await
        .map_err(unreachable)?;
    let logs = open_channel(addr, "logs", token)
        .await
        .map_err(unreachable)?;
    // A clone of the frames socket (non-blocking, as tokio leaves it) to peek at.
    let std_frames = frames.into_std().map_err(unreachable)?;
    let probe = std_frames.try_clone().map_err(unreachable)?;
    let frames = TcpStream::from_std(std_frames).map_err(unreachable)?;
    let (frames_in, frames_out) = frames.into_split();
    let writer: BoxWrite = Box::new(frames_out);
    let reader: BoxRead = Box::new(frames_in);
    let logs: BoxRead = Box::new(logs);
    let channel = RunnerChannel::new(writer, reader, logs, RunnerChannel::fresh_marker());
    Ok((channel, probe))
}

#[async_trait]
impl SandboxLauncher for KubernetesLauncher {
    type Sandbox = KubernetesPod;

    async fn launch(&self, spec: &LaunchSpec) -> Result<KubernetesPod> {
        if spec.mount.is_some() {
            return Err(Error::invalid(
                "the kubernetes backend cannot mount a host directory: a function too big for an init frame needs an image",
            ));
        }
        let image = self.image_of(spec)?;
        let settings = &self.settings;
        let port = settings
            .port_per_pod
            .as_ref()
            .map(|next| next())
            .unwrap_or(settings.runner_port);
        let token = fresh_token();
        let name = fresh_name("warm", spec.runner);
        let mut command = runner_command(spec.runner, &spec.limits);
        command.push("--listen".into());
        let bind: IpAddr = settings
            .listen_host
            .parse()
            .map_err(|_| Error::invalid("the runner listen host must be an IP address"))?;
        // `[::]:7070` for IPv6, which every runner's parser takes.
        command.push(SocketAddr::new(bind, port).to_string());
        let plan = PodPlan {
            name: name.clone(),
            runner: spec.runner,
            image,
            command,
            env: vec![(TOKEN_VAR.to_string(), token.clone())],
            limits: spec.limits.clone(),
            code_volume: spec.image.is_none(),
            port: Some(port),
        };
        let pod = warm_pod(settings, &settings.name, &plan);
        let (api, hub) = self.hub().await?;
        let mut seen = hub.subscribe(&name);
        let mut pending = Pending {
            api: api.clone(),
            hub: hub.clone(),
            name: name.clone(),
            armed: false,
        };
        api.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| api_error(e, &format!("create pod {name}"), &settings.namespace))?;
        pending.armed = true;
        let ip = wait_running(&name, &mut seen).await?;
        let (channel, probe) = connect(&name, &ip, port, &token).await?;
        pending.armed = false;
        let mut sandbox = KubernetesPod {
            name,
            api,
            hub,
            seen,
            channel,
            probe,
            runner: spec.runner,
            memory_mb: spec.limits.memory_mb,
            retire_at: Instant::now() + settings.pod_ttl.mul_f64(0.9),
            deleted: false,
        };
        if let Err(e) = sandbox.channel.hello().await {
            let death = sandbox.post_mortem().await;
            return Err(Error::Unavailable(format!(
                "the {} runner of pod {} did not say hello ({e}; {death:?})",
                spec.runner.as_str(),
                sandbox.name
            )));
        }
        Ok(sandbox)
    }

    async fn after_shutdown(&self) {
        let hub = self.pods.lock().await.take();
        drop(hub);
        if let Ok(api) = self.api().await {
            let labels = selector(&self.settings, "warm");
            if let Err(e) = sweep(&api, &labels, &self.settings.namespace).await {
                tracing::warn!(error = %e, "cannot sweep warm pods at shutdown");
            }
        }
    }

    fn runner_for(&self, runtime: Runtime) -> Option<RunnerKind> {
        pod_runner(runtime)
    }

    async fn load_code(&self, artifact: &Artifact, max_inline_bytes: u64) -> Result<FunctionCode> {
        match artifact {
            Artifact::Directory { path, .. } => {
                load_directory(std::path::PathBuf::from(path), max_inline_bytes).await
            }
            Artifact::Image { reference } => Ok(FunctionCode::Image(reference.clone())),
        }
    }
}

/// One warm pod with a runner inside, reached over TCP.
pub struct KubernetesPod {
    name: String,
    api: Api<Pod>,
    hub: Arc<Hub<Pod>>,
    seen: watch::Receiver<Seen<Pod>>,
    channel: RunnerChannel,
    probe: std::net::TcpStream,
    runner: RunnerKind,
    memory_mb: u64,
    retire_at: Instant,
    deleted: bool,
}

impl std::fmt::Debug for KubernetesPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesPod")
            .field("name", &self.name)
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl KubernetesPod {
    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl Sandbox for KubernetesPod {
    fn channel(&mut self) -> &mut RunnerChannel {
        &mut self.channel
    }

    async fn set_limits(&mut self, from: &Limits, to: &Limits) -> Result<()> {
        // A pod's resources and volumes are fixed when it starts (the pool already
        // checks the tmpfs size); node's heap flag too.
        if from.memory_mb == to.memory_mb && self.memory_mb == to.memory_mb {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "a pod's memory limit is fixed when it starts".into(),
            ))
        }
    }

    fn is_alive(&mut self) -> bool {
        // The connection tells first when the runner dies; the watch when the pod ends.
        !self.deleted
            && Instant::now() < self.retire_at
            && still_open(&self.probe)
            && matches!(&*self.seen.borrow(), Seen::Present(p) if matches!(stage(p), Stage::Running(_)))
    }

    fn mark_clean(&mut self) {}

    fn memory_exceeded(&mut self) -> bool {
        // A child process killed for memory while the runner lives is not visible through
        // the API; the runner's own memory kill ends the pod (`OOMKilled`).
        false
    }

    fn is_clean(&mut self) -> bool {
        true
    }

    async fn post_mortem(&mut self) -> Death {
        let until = Instant::now() + POST_MORTEM_WAIT;
        let death = loop {
            let known = match &*self.seen.borrow_and_update() {
                Seen::Present(pod) => match stage(pod) {
                    Stage::Ended(d) => Some(d),
                    _ => None,
                },
                Seen::Gone => Some(Death::Exited("the pod was deleted".into())),
                Seen::NotYet => None,
            };
            if let Some(d) = known {
                break d;
            }
            match tokio::time::timeout_at(until, self.seen.changed()).await {
                Ok(Ok(())) => continue,
                _ => break Death::Killed,
            }
        };
        self.terminate().await;
        death
    }

    async fn terminate(&mut self) {
        if self.deleted {
            return;
        }
        self.deleted = true;
        self.hub.forget(&self.name);
        if let Err(e) = delete_now(&self.api, &self.name, 0).await {
            tracing::warn!(pod = %self.name, error = %e, "cannot delete a function pod");
        }
    }
}

impl Drop for KubernetesPod {
    fn drop(&mut self) {
        if !self.deleted {
            self.hub.forget(&self.name);
            spawn_delete(self.api.clone(), std::mem::take(&mut self.name));
        }
    }
}
