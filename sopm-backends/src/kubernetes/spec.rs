//! The objects the Kubernetes executors create: a warm function pod (a runner listening
//! on its port) and a Job running one invocation, with the labels, security context,
//! resources, volumes and deadlines of the design; pure functions of the settings, so
//! tests can read every field.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, Pod, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sopm_core::Limits;

use super::settings::KubernetesSettings;
use crate::sandbox::{RunnerKind, CODE_DIR};

/// Label on every function pod (warm or a Job's): the functions' NetworkPolicy selects it.
pub const LABEL_FUNCTION_POD: &str = "sopm.dev/function-pod";
/// Label with the id of the SOPM instance that made the pod or Job (cleanup finds them).
pub const LABEL_INSTANCE: &str = "sopm.dev/instance";
/// Label with the executor that made the pod or Job.
pub const LABEL_EXECUTOR: &str = "sopm.dev/executor";
/// Label telling warm pods (`warm`) from Job pods (`job`).
pub const LABEL_KIND: &str = "sopm.dev/kind";
/// Label with the runner the pod runs.
pub const LABEL_RUNNER: &str = "sopm.dev/runner";
/// The label the Job controller puts on a Job's pods (Kubernetes 1.27 and later).
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";

/// Where the runner images keep the runners (the same layout as the Docker backend's
/// runner images): `runner.py`, `runner.js`, `sopm-runner`.
pub const RUNNER_DIR: &str = "/opt/sopm";

/// The environment variable with a warm pod's secret token.
pub const TOKEN_VAR: &str = "SOPM_RUNNER_TOKEN";

/// The container's name in every pod.
pub const CONTAINER: &str = "runner";

/// The unprivileged user and group of every function container (`nobody`).
pub const RUN_AS: i64 = 65534;

/// The `sh` step of a Job's container: the init and invoke frames from the environment
/// become the runner's frame input (fd 3), and its frame output, log channel and the
/// user-visible stdout and stderr all go to the container's stdout, in order, so the
/// pod's log ends with the log marker and the result frame.
pub const JOB_PROLOGUE: &str = "printf '%s\\n%s\\n' \"$SOPM_JOB_INIT\" \"$SOPM_JOB_INVOKE\" | { unset SOPM_JOB_INIT SOPM_JOB_INVOKE; exec 3<&0 4>&1 5>&1 </dev/null 2>&1; exec \"$@\"; }";

/// A label selector for this instance's objects of `kind` (`warm` or `job`).
pub fn selector(settings: &KubernetesSettings, kind: &str) -> String {
    format!(
        "{LABEL_FUNCTION_POD}=true,{LABEL_INSTANCE}={},{LABEL_KIND}={kind}",
        settings.instance
    )
}

fn labels(
    settings: &KubernetesSettings,
    executor: &str,
    kind: &str,
    runner: RunnerKind,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_FUNCTION_POD.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), settings.instance.clone()),
        (LABEL_EXECUTOR.to_string(), executor.to_string()),
        (LABEL_KIND.to_string(), kind.to_string()),
        (LABEL_RUNNER.to_string(), runner.as_str().to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "sopm".to_string(),
        ),
    ])
}

/// The runner's command in pipe mode (frames on fds 3/4, logs on 5).
pub fn runner_command(runner: RunnerKind, limits: &Limits) -> Vec<String> {
    let path = format!("{RUNNER_DIR}/{}", runner.file_name());
    match runner {
        RunnerKind::Python => vec![
            "python3".into(),
            "-I".into(),
            "-S".into(),
            "-B".into(),
            path,
        ],
        RunnerKind::Node => vec![
            "node".into(),
            format!("--max-old-space-size={}", limits.memory_mb.max(16)),
            path,
        ],
        RunnerKind::Static => vec![path],
    }
}

/// The memory limit of a pod for `limits`: the function's, plus the runner's overhead.
pub fn memory_limit(settings: &KubernetesSettings, limits: &Limits) -> Quantity {
    Quantity(format!(
        "{}Mi",
        limits.memory_mb + settings.memory_overhead_mb
    ))
}

fn resources(settings: &KubernetesSettings, limits: &Limits) -> ResourceRequirements {
    let memory = memory_limit(settings, limits);
    ResourceRequirements {
        limits: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                Quantity(format!("{}m", settings.cpu_millis)),
            ),
            ("memory".to_string(), memory.clone()),
        ])),
        requests: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                Quantity(format!("{}m", settings.cpu_request_millis)),
            ),
            ("memory".to_string(), memory),
        ])),
        ..Default::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn memory_dir(name: &str, mib: u64) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(format!("{}Mi", mib.max(1)))),
        }),
        ..Default::default()
    }
}

fn env(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<EnvVar> {
    pairs
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            ..Default::default()
        })
        .collect()
}

/// What one pod runs: its image, command, extra environment, limits, and whether the
/// code comes in an init frame (a writable `/fn`) or with the image. Its `Debug` names the
/// environment variables without their values (a warm pod's token is one).
#[derive(Clone)]
pub struct PodPlan {
    /// The pod's name.
    pub name: String,
    /// The runner.
    pub runner: RunnerKind,
    /// The image (a runner image, or a function's image).
    pub image: String,
    /// The container's command.
    pub command: Vec<String>,
    /// Environment variables beyond the base ones.
    pub env: Vec<(String, String)>,
    /// The limits the pod is sized by.
    pub limits: Limits,
    /// Whether `/fn` is an empty writable directory (code sent in the init frame).
    pub code_volume: bool,
    /// The runner's port, for a warm pod.
    pub port: Option<u16>,
}

impl std::fmt::Debug for PodPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("PodPlan")
            .field("name", &self.name)
            .field("runner", &self.runner)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("env", &env)
            .field("limits", &self.limits)
            .field("code_volume", &self.code_volume)
            .field("port", &self.port)
            .finish()
    }
}

fn pod_spec(
    settings: &KubernetesSettings,
    plan: &PodPlan,
    deadline_secs: i64,
    grace_secs: i64,
) -> PodSpec {
    let mut volumes = vec![memory_dir("tmp", plan.limits.tmpfs_mb)];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if plan.code_volume {
        volumes.push(memory_dir("code", settings.pool.code_tmpfs_bytes() >> 20));
        mounts.push(VolumeMount {
            name: "code".into(),
            mount_path: CODE_DIR.into(),
            ..Default::default()
        });
    }
    let mut vars = vec![
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("HOME".to_string(), "/tmp".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    vars.extend(plan.env.iter().cloned());
    PodSpec {
        runtime_class_name: settings.runtime_class.clone(),
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        active_deadline_seconds: Some(deadline_secs),
        termination_grace_period_seconds: Some(grace_secs),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![Container {
            name: CONTAINER.into(),
            image: Some(plan.image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(plan.command.clone()),
            env: Some(env(vars)),
            ports: plan.port.map(|p| {
                vec![ContainerPort {
                    name: Some("runner".into()),
                    container_port: i32::from(p),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]
            }),
            resources: Some(resources(settings, &plan.limits)),
            security_context: Some(container_security()),
            volume_mounts: Some(mounts),
            working_dir: Some(if plan.code_volume {
                "/tmp".into()
            } else {
                CODE_DIR.into()
            }),
            ..Default::default()
        }],
        volumes: Some(volumes),
        ..Default::default()
    }
}

/// A warm pod: the runner in TCP mode on `port`, its token in the environment, ended by
/// Kubernetes after the pod TTL whatever happens.
pub fn warm_pod(settings: &KubernetesSettings, executor: &str, plan: &PodPlan) -> Pod {
    let deadline = settings.pod_ttl.as_secs().max(1) as i64;
    Pod {
        metadata: ObjectMeta {
            name: Some(plan.name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels(settings, executor, "warm", plan.runner)),
            ..Default::default()
        },
        spec: Some(pod_spec(settings, plan, deadline, 1)),
        ..Default::default()
    }
}

/// A Job of one invocation: no retries (the queue owns them), its pod never restarted,
/// stopped by Kubernetes `deadline_secs` after it started, kept `job_ttl` once finished.
pub fn job(
    settings: &KubernetesSettings,
    executor: &str,
    plan: &PodPlan,
    deadline_secs: i64,
) -> Job {
    let labels = labels(settings, executor, "job", plan.runner);
    Job {
        metadata: ObjectMeta {
            name: Some(plan.name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline_secs),
            ttl_seconds_after_finished: Some(settings.job_ttl.as_secs().min(i32::MAX as u64) as i32),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec(settings, plan, deadline_secs, 2)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A fresh object name: `sopm-<what>-<runner>-<16 hex>`.
pub fn fresh_name(what: &str, runner: RunnerKind) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("sopm-{what}-{}-{}", runner.as_str(), &id[..16])
}
