//! [`KubernetesJobExecutor`]: the `kubernetes-job` backend, one `batch/v1` Job per
//! invocation. The Job's container gets the init and invoke frames in two environment
//! variables (each at most [`MAX_JOB_FRAME_BYTES`]), runs the runner once in pipe mode
//! behind [`JOB_PROLOGUE`], and its log ends with the log marker and the result frame,
//! which is read back from the pod's log. The Job and its pod are watched, not polled; a
//! Job past its deadline is `timeout`, a container killed for memory `out_of_memory`, a
//! pod that ended without a result `sandbox_crashed`, and the function's own failure
//! `function_error`, as on every backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::Api;
use serde_json::Value;
use sopm_core::{
    Artifact, Error, Executor, FunctionVersion, Invocation, Output, PoolStats, Result, Target,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cluster::{api_error, delete_now, sweep, Cluster};
use super::job_log::{answer, parse_log, read_tail, Answer};
use super::launcher::pod_runner;
use super::settings::{is_pinned, KubernetesSettings, MAX_JOB_FRAME_BYTES};
use super::spec::{
    fresh_name, job, runner_command, selector, PodPlan, JOB_PROLOGUE, LABEL_JOB_NAME,
};
use super::status::{death, stage, Stage};
use super::watch::{Hub, Seen};
use crate::sandbox::protocol::{encode_frame, CodeFiles, HostFrame, InitFrame};
use crate::sandbox::{load_directory, Death, FunctionCode, RunnerChannel, CODE_DIR};

/// What the two watchers of the Job executor keep.
#[derive(Debug)]
struct Watches {
    jobs: Hub<Job>,
    pods: Hub<Pod>,
}

/// Runs each invocation as its own Kubernetes Job.
#[derive(Debug, Clone)]
pub struct KubernetesJobExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The executor's name (the settings' Job executor name).
    name: String,
    settings: KubernetesSettings,
    cluster: Cluster,
    watches: tokio::sync::Mutex<Option<Arc<Watches>>>,
    running: AtomicU64,
    started: AtomicU64,
    shut: std::sync::atomic::AtomicBool,
}

impl KubernetesJobExecutor {
    pub(crate) fn new(settings: KubernetesSettings) -> Self {
        KubernetesJobExecutor {
            inner: Arc::new(Inner {
                name: settings.job_name.clone(),
                cluster: Cluster::new(&settings),
                settings,
                watches: tokio::sync::Mutex::new(None),
                running: AtomicU64::new(0),
                started: AtomicU64::new(0),
                shut: Default::default(),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &KubernetesSettings {
        &self.inner.settings
    }

    async fn apis(&self) -> Result<(Api<Job>, Api<Pod>)> {
        let client = self.inner.cluster.client().await?;
        let ns = &self.inner.settings.namespace;
        Ok((
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ))
    }

    /// The watchers of this instance's Jobs and their pods, started on first use after
    /// the Jobs an earlier run with the same instance id left are deleted.
    async fn watches(&self) -> Result<Arc<Watches>> {
        let (jobs, pods) = self.apis().await?;
        let mut w = self.inner.watches.lock().await;
        if let Some(w) = &*w {
            return Ok(w.clone());
        }
        let labels = selector(&self.inner.settings, "job");
        sweep(&jobs, &labels, &self.inner.settings.namespace).await?;
        let started = Arc::new(Watches {
            jobs: Hub::start(jobs, &labels, |j: &Job| j.metadata.name.clone()),
            pods: Hub::start(pods, &labels, |p: &Pod| {
                p.metadata.labels.as_ref()?.get(LABEL_JOB_NAME).cloned()
            }),
        });
        *w = Some(started.clone());
        Ok(started)
    }

    /// The Job of one invocation and what is needed to read its answer.
    async fn plan(
        &self,
        version: &FunctionVersion,
        job_id: &str,
        input: &Value,
    ) -> Result<(PodPlan, String)> {
        let settings = &self.inner.settings;
        let runner = pod_runner(version.runtime)
            .ok_or_else(|| Error::invalid("built-in functions do not run in Jobs"))?;
        let Some(artifact) = &version.artifact else {
            return Err(Error::NotReady(format!(
                "function '{}' version {} has no artifact",
                version.name, version.version
            )));
        };
        let (code, function_image) = match artifact {
            Artifact::Directory { path, .. } => {
                match load_directory(path.into(), MAX_JOB_FRAME_BYTES as u64).await? {
                    FunctionCode::Inline(files) => (files, None),
                    _ => {
                        return Err(Error::invalid(format!(
                            "function '{}' is too big for a Job's environment ({} KiB); build it into an image",
                            version.name,
                            MAX_JOB_FRAME_BYTES / 1024
                        )))
                    }
                }
            }
            Artifact::Image { reference } if is_pinned(reference) => {
                (CodeFiles::default(), Some(reference.clone()))
            }
            Artifact::Image { reference } => {
                return Err(Error::invalid(format!(
                    "the kubernetes-job backend runs images by digest only, not '{reference}'"
                )))
            }
        };
        let code_volume = function_image.is_none();
        let image = match function_image {
            Some(i) => i,
            None => settings.images.get(&runner).cloned().ok_or_else(|| {
                Error::invalid(format!(
                    "the kubernetes-job backend has no image for the {} runner (SOPM_KUBERNETES_IMAGE_{})",
                    runner.as_str(),
                    runner.as_str().to_uppercase()
                ))
            })?,
        };
        let marker = RunnerChannel::fresh_marker();
        let init = InitFrame {
            runtime: version.runtime,
            handler: version.handler.clone(),
            env: version.env.clone(),
            code,
            code_dir: CODE_DIR.into(),
            max_output_bytes: version.limits.max_output_bytes,
            log_marker: marker.clone(),
        };
        let init = frame_text(&HostFrame::Init(&init));
        if init.len() > MAX_JOB_FRAME_BYTES {
            return Err(Error::invalid(format!(
                "function '{}' is too big for a Job's environment ({} KiB); build it into an image",
                version.name,
                MAX_JOB_FRAME_BYTES / 1024
            )));
        }
        let invoke = frame_text(&HostFrame::Invoke {
            id: job_id,
            input,
            deadline_ms: version.limits.timeout_ms,
        });
        if invoke.len() > MAX_JOB_FRAME_BYTES {
            return Err(Error::PayloadTooLarge(format!(
                "the input is {} bytes; the kubernetes-job backend takes at most {} KiB (use the kubernetes backend for larger inputs)",
                invoke.len(),
                MAX_JOB_FRAME_BYTES / 1024
            )));
        }
        let mut command = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            JOB_PROLOGUE.to_string(),
            "sopm-job".to_string(),
        ];
        command.extend(runner_command(runner, &version.limits));
        Ok((
            PodPlan {
                name: fresh_name("job", runner),
                runner,
                image,
                command,
                env: vec![
                    ("SOPM_JOB_INIT".to_string(), init),
                    ("SOPM_JOB_INVOKE".to_string(), invoke),
                ],
                limits: version.limits.clone(),
                code_volume,
                port: None,
            },
            marker,
        ))
    }

    async fn run(&self, version: &FunctionVersion, invocation: &Invocation) -> Result<Output> {
        let settings = &self.inner.settings;
        let (plan, marker) = self
            .plan(version, invocation.job_id.as_str(), &invocation.input)
            .await?;
        let timeout = Duration::from_millis(version.limits.timeout_ms);
        let deadline_secs =
            timeout.as_secs_f64().ceil() as i64 + settings.job_grace.as_secs() as i64;
        let object = job(settings, &settings.job_name, &plan, deadline_secs);
        let watches = self.watches().await?;
        let (jobs, pods) = self.apis().await?;
        let name = plan.name.clone();
        let mut job_seen = watches.jobs.subscribe(&name);
        let mut pod_seen = watches.pods.subscribe(&name);
        let mut cleanup = JobCleanup {
            api: jobs.clone(),
            watches: watches.clone(),
            name: name.clone(),
            armed: false,
        };
        jobs.create(&PostParams::default(), &object)
            .await
            .map_err(|e| api_error(e, &format!("create job {name}"), &settings.namespace))?;
        cleanup.armed = true;
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        // The Job's own deadline (plus a moment for its verdict), and never past the
        // caller's deadline plus the time a pod needs to start.
        let until = (Instant::now() + Duration::from_secs(deadline_secs as u64 + 2))
            .min(Instant::from_std(invocation.deadline) + settings.job_grace);
        let ended = tokio::time::timeout_at(
            until,
            wait_ended(&name, &mut job_seen, &mut pod_seen, timeout),
        )
        .await;
        let ended = match ended {
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "job {name} did not finish before its deadline and was deleted"
                )))
            }
            Ok(r) => r?,
        };
        let (pod, job_failure) = match ended {
            Ended::DeadlineExceeded => {
                return Err(Error::Timeout(format!(
                    "the function ran past its deadline (job {name}, activeDeadlineSeconds {deadline_secs}) and was stopped"
                )))
            }
            Ended::PastTimeout => {
                return Err(Error::Timeout(format!(
                    "the function ran past its timeout of {} ms (job {name}) and its Job was deleted",
                    version.limits.timeout_ms
                )))
            }
            Ended::Pod(pod, failure) => (pod, failure),
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let max_out = usize::try_from(version.limits.max_output_bytes).unwrap_or(usize::MAX);
        let log = read_tail(&pods, &pod_name, max_out, &settings.namespace).await?;
        match parse_log(&log, &marker, invocation.job_id.as_str()) {
            Some(Answer::Result(result, logs)) => answer(result, logs),
            Some(Answer::InitFailed(message, traceback)) => Err(Error::Function {
                message: format!("the function failed to load: {message}"),
                traceback,
                logs: None,
            }),
            None => {
                // The pod can end before the Job's verdict arrives (at the deadline the
                // Job controller kills the pod, then marks the Job): wait for it briefly.
                let oom = matches!(death(&pod), Death::OutOfMemory);
                let failure = match job_failure {
                    None if !oom => job_verdict(&mut job_seen, JOB_VERDICT_WAIT).await,
                    f => f,
                };
                if failure
                    .as_deref()
                    .is_some_and(|f| f.starts_with("DeadlineExceeded"))
                {
                    return Err(Error::Timeout(format!(
                        "the function ran past its deadline (job {name}, activeDeadlineSeconds {deadline_secs}) and was stopped"
                    )));
                }
                Err(no_result(&name, &pod, failure, version.limits.memory_mb))
            }
        }
    }
}

/// How long the Job's verdict is waited for once its pod ended without a result.
const JOB_VERDICT_WAIT: Duration = Duration::from_secs(3);

/// The Job's failure (`reason: message`) once it has one, or `None` after `wait`.
async fn job_verdict(job_seen: &mut watch::Receiver<Seen<Job>>, wait: Duration) -> Option<String> {
    let until = Instant::now() + wait;
    loop {
        if let Seen::Present(job) = &*job_seen.borrow_and_update() {
            if let Some((reason, message)) = job_failure(job) {
                return Some(format!("{reason}: {message}"));
            }
        }
        match tokio::time::timeout_at(until, job_seen.changed()).await {
            Ok(Ok(())) => continue,
            _ => return None,
        }
    }
}

/// The error of a Job whose pod ended without a result frame.
fn no_result(name: &str, pod: &Pod, failure: Option<String>, memory_mb: u64) -> Error {
    match death(pod) {
        Death::OutOfMemory => Error::OutOfMemory(format!(
            "the function went past its memory limit of {memory_mb} MiB and was killed (OOMKilled)"
        )),
        Death::Exited(how) => Error::SandboxCrashed(format!(
            "the pod of job {name} ended without a result ({how}{})",
            failure.map(|f| format!("; job: {f}")).unwrap_or_default()
        )),
        other => Error::SandboxCrashed(format!(
            "the pod of job {name} ended without a result ({other:?})"
        )),
    }
}

fn frame_text(frame: &HostFrame<'_>) -> String {
    let mut line = encode_frame(frame);
    line.pop();
    String::from_utf8(line).expect("JSON is UTF-8")
}

/// Deletes the Job (and so its pod) when the call is over, however it ended.
struct JobCleanup {
    api: Api<Job>,
    watches: Arc<Watches>,
    name: String,
    armed: bool,
}

impl Drop for JobCleanup {
    fn drop(&mut self) {
        self.watches.jobs.forget(&self.name);
        self.watches.pods.forget(&self.name);
        if !self.armed {
            return;
        }
        let api = self.api.clone();
        let name = std::mem::take(&mut self.name);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = delete_now(&api, &name, 0).await {
                    tracing::warn!(job = %name, error = %e, "cannot delete a finished job; its TTL removes it");
                }
            });
        }
    }
}

enum Ended {
    /// The Job failed for its deadline.
    DeadlineExceeded,
    /// The function ran past its timeout since its pod was seen running.
    PastTimeout,
    /// The pod ended (with the Job's failure reason, if it failed).
    Pod(Arc<Pod>, Option<String>),
}

fn job_failure(job: &Job) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Time a Job's runner gets beyond the function's timeout, counted from when its pod was
/// seen running, to answer before the executor stops waiting.
const RUN_SLACK: Duration = Duration::from_secs(1);

/// Waits until the Job failed for its deadline, or its pod ended (or cannot start, or
/// went away), or the function ran past `timeout` since its pod was seen running.
async fn wait_ended(
    name: &str,
    job_seen: &mut watch::Receiver<Seen<Job>>,
    pod_seen: &mut watch::Receiver<Seen<Pod>>,
    timeout: Duration,
) -> Result<Ended> {
    let mut running_since: Option<Instant> = None;
    loop {
        let failure = match &*job_seen.borrow_and_update() {
            Seen::Present(job) => job_failure(job),
            Seen::Gone => {
                return Err(Error::SandboxCrashed(format!(
                    "job {name} was deleted before it finished"
                )))
            }
            Seen::NotYet => None,
        };
        if let Some((reason, _)) = &failure {
            if reason == "DeadlineExceeded" {
                return Ok(Ended::DeadlineExceeded);
            }
        }
        let pod = match &*pod_seen.borrow_and_update() {
            Seen::Present(pod) => Some(pod.clone()),
            _ => None,
        };
        if let Some(pod) = pod {
            match stage(&pod) {
                Stage::Ended(_) => {
                    return Ok(Ended::Pod(pod, failure.map(|(r, m)| format!("{r}: {m}"))))
                }
                Stage::CannotStart(why) => {
                    return Err(Error::Unavailable(format!(
                        "the pod of job {name} cannot start: {why}"
                    )))
                }
                Stage::Running(_) => {
                    running_since.get_or_insert_with(Instant::now);
                }
                Stage::Starting => {}
            }
        }
        // The Job's deadline also counts the pod's start; the function's own timeout
        // counts from when it runs.
        let past = running_since.map(|t| t + timeout + RUN_SLACK);
        tokio::select! {
            r = job_seen.changed() => r.map_err(|_| Error::Unavailable(format!("the watch of job {name} stopped")))?,
            r = pod_seen.changed() => r.map_err(|_| Error::Unavailable(format!("the watch of the pod of job {name} stopped")))?,
            _ = tokio::time::sleep_until(past.unwrap_or_else(Instant::now)), if past.is_some() => {
                return Ok(Ended::PastTimeout);
            }
        }
    }
}

#[async_trait]
impl Executor for KubernetesJobExecutor {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        let version = match &invocation.target {
            Target::User(v) => v.clone(),
            Target::Builtin(name) => {
                return Err(Error::invalid(format!(
                    "the {} executor runs user functions, not the built-in '{name}'",
                    self.name()
                )))
            }
        };
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(Error::Unavailable(format!(
                "the {} executor is shut down",
                self.name()
            )));
        }
        self.inner.running.fetch_add(1, Ordering::Relaxed);
        let outcome = self.run(&version, &invocation).await;
        self.inner.running.fetch_sub(1, Ordering::Relaxed);
        outcome
    }

    async fn prepare(&self, _version: &FunctionVersion) -> Result<()> {
        Ok(())
    }

    async fn retire(&self, _function_id: &str) -> Result<()> {
        Ok(())
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        vec![PoolStats {
            pool: self.name().to_string(),
            busy: self.inner.running.load(Ordering::Relaxed),
            started_total: self.inner.started.load(Ordering::Relaxed),
            ..PoolStats::default()
        }]
    }

    async fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
        let watches = self.inner.watches.lock().await.take();
        drop(watches);
        if let Ok((jobs, _)) = self.apis().await {
            let labels = selector(&self.inner.settings, "job");
            if let Err(e) = sweep(&jobs, &labels, &self.inner.settings.namespace).await {
                tracing::warn!(error = %e, "cannot sweep jobs at shutdown");
            }
        }
    }
}
