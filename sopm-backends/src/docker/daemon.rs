//! The Docker daemon as the backend uses it: one client (version negotiated on first
//! use), the runner images derived from base images, image builds with their output
//! streamed, and the containers this server owns.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bollard::query_parameters::{
    BuildImageOptions, ListContainersOptions, ListImagesOptions, RemoveImageOptions,
};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sopm_core::{Error, Result};
use tokio::sync::{Mutex, OnceCell};

use super::containers::remove_container;
use super::images::FunctionImages;
use crate::host::settings::SandboxSettings;
use crate::sandbox::RunnerKind;

/// Label naming the executor that made a container.
pub(crate) const LABEL_EXECUTOR: &str = "sopm.executor";
/// Label naming the server (host and pid) that made a container.
pub(crate) const LABEL_OWNER: &str = "sopm.owner";
/// Label naming the executor instance (one per executor value) that made a container.
pub(crate) const LABEL_INSTANCE: &str = "sopm.instance";
/// Label of a function image built before images carried their code alone, naming the
/// artifact directory it was built from (removed with the image).
pub(crate) const LABEL_FILES: &str = "sopm.files";
/// Where runners live inside runner images.
pub(crate) const RUNNER_DIR: &str = "/opt/sopm";
/// Most build output kept in an error message.
const BUILD_ERROR_TAIL: usize = 4096;

/// One Docker daemon and what this backend keeps about it.
#[derive(Debug)]
pub(crate) struct Daemon {
    host: Option<String>,
    executor: String,
    owner: String,
    instance: String,
    base_images: BTreeMap<RunnerKind, String>,
    static_runner: Option<PathBuf>,
    client: OnceCell<Docker>,
    runner_images: Mutex<HashMap<RunnerKind, String>>,
    swept: OnceCell<()>,
    images: FunctionImages,
}

impl Daemon {
    pub(crate) fn new(config: &SandboxSettings) -> Self {
        Daemon {
            host: config.docker_host.clone(),
            executor: config.name.clone(),
            owner: owner_label(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            base_images: config.base_images.clone(),
            static_runner: config.static_runner.clone(),
            client: OnceCell::new(),
            runner_images: Mutex::new(HashMap::new()),
            swept: OnceCell::new(),
            images: FunctionImages::new(config.image_registry.clone(), config.docker_host.clone()),
        }
    }

    /// The executor's name.
    pub(crate) fn executor(&self) -> &str {
        &self.executor
    }

    /// Its function images (pushed, pulled by digest, read, removed).
    pub(crate) fn images(&self) -> &FunctionImages {
        &self.images
    }

    /// The labels that tie a container to this executor (swept with it).
    pub(crate) fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_EXECUTOR.to_string(), self.executor.clone()),
            (LABEL_OWNER.to_string(), self.owner.clone()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ])
    }

    /// The client, connected and version-negotiated on first use; containers left by a
    /// server that is gone are removed then.
    pub(crate) async fn client(&self) -> Result<Docker> {
        let docker = self
            .client
            .get_or_try_init(|| async {
                let docker = match &self.host {
                    Some(h) => Docker::connect_with_host(h),
                    None => Docker::connect_with_local_defaults(),
                }
                .map_err(|e| unavailable("cannot reach the Docker daemon", e))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unavailable("the Docker daemon does not answer", e))
            })
            .await?
            .clone();
        self.swept
            .get_or_init(|| async { self.sweep_stale(&docker).await })
            .await;
        Ok(docker)
    }

    /// The runner image of `runner`: its base image plus the runner under
    /// [`RUNNER_DIR`], tagged by a digest of the base image id and the runner, built once.
    pub(crate) async fn runner_image(&self, runner: RunnerKind) -> Result<String> {
        let mut cache = self.runner_images.lock().await;
        if let Some(tag) = cache.get(&runner) {
            return Ok(tag.clone());
        }
        let docker = self.client().await?;
        let base = self.base_images.get(&runner).ok_or_else(|| {
            Error::Unavailable(format!(
                "no docker base image is configured for the {} runner",
                runner.as_str()
            ))
        })?;
        let base_id = docker
            .inspect_image(base)
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "the docker base image '{base}' of the {} runner is missing ({e}); build it with scripts/docker-images.sh or configure another",
                    runner.as_str()
                ))
            })?
            .id
            .unwrap_or_else(|| base.clone());
        let program = self.runner_program(runner).await?;
        let mut h = Sha256::new();
        h.update(base_id.as_bytes());
        h.update(runner.as_str().as_bytes());
        h.update(&program);
        let tag = format!(
            "sopm-runner-{}:{}",
            runner.as_str(),
            &hex::encode(h.finalize())[..16]
        );
        if docker.inspect_image(&tag).await.is_err() {
            let file = runner.file_name();
            let dockerfile = format!(
                "FROM {base}\nCOPY {file} {RUNNER_DIR}/{file}\nLABEL sopm.runner={}\n",
                runner.as_str()
            );
            let mode = if runner == RunnerKind::Static {
                0o755
            } else {
                0o644
            };
            let mut context = Context::new();
            context.file("Dockerfile", dockerfile.as_bytes(), 0o644)?;
            context.file(file, &program, mode)?;
            self.build(&docker, context.finish()?, &tag, &mut |_| {})
                .await
                .map_err(|e| {
                    Error::Unavailable(format!(
                        "cannot build the {} runner image: {e}",
                        runner.as_str()
                    ))
                })?;
            self.prune_runner_images(&docker, runner, &tag).await;
        }
        cache.insert(runner, tag.clone());
        Ok(tag)
    }

    /// Forgets the runner image of `runner`, so the next use checks it again (and builds
    /// it when it is gone).
    pub(crate) async fn forget_runner_image(&self, runner: RunnerKind) {
        self.runner_images.lock().await.remove(&runner);
    }

    /// Removes the runner images of `runner` other than `keep` (an older base image or
    /// runner); one still used by a container or a function image stays.
    async fn prune_runner_images(&self, docker: &Docker, runner: RunnerKind, keep: &str) {
        let filters = HashMap::from([(
            "reference".to_string(),
            vec![format!("sopm-runner-{}", runner.as_str())],
        )]);
        let Ok(images) = docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
        else {
            return;
        };
        for tag in images.into_iter().flat_map(|i| i.repo_tags) {
            if tag != keep {
                let _ = docker
                    .remove_image(&tag, None::<RemoveImageOptions>, None)
                    .await;
            }
        }
    }

    async fn runner_program(&self, runner: RunnerKind) -> Result<Vec<u8>> {
        if let Some(source) = runner.source() {
            return Ok(source.as_bytes().to_vec());
        }
        let path = match &self.static_runner {
            Some(p) => p.clone(),
            None => find_static_runner().ok_or_else(|| {
                Error::Unavailable(
                    "the static runner (sopm-runner) for shell and binary functions was not found next to this program or on PATH; build it with scripts/build-runner.sh and set SOPM_STATIC_RUNNER".into(),
                )
            })?,
        };
        tokio::fs::read(&path).await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot read the static runner {}: {e}",
                path.display()
            ))
        })
    }

    /// Builds `context` (a tar with a `Dockerfile`) as `tag`, passing each line of build
    /// output to `log`. An error carries the tail of the output.
    pub(crate) async fn build(
        &self,
        docker: &Docker,
        context: Vec<u8>,
        tag: &str,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> std::result::Result<(), String> {
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".into(),
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            networkmode: Some("none".into()),
            ..Default::default()
        };
        let mut stream = docker.build_image(
            options,
            None,
            Some(bollard::body_full(bytes::Bytes::from(context))),
        );
        let mut tail = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        log(text);
                        keep_tail(&mut tail, text);
                    }
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_else(|| "build failed".into());
                        return Err(format!("{message}\n{tail}"));
                    }
                }
                Err(e) => return Err(format!("{e}\n{tail}")),
            }
        }
        Ok(())
    }

    /// The artifact directory a function image was built from, if it says so and the
    /// directory is on this machine.
    pub(crate) async fn image_files(&self, image: &str) -> Result<Option<PathBuf>> {
        let docker = self.client().await?;
        let info = docker.inspect_image(image).await.map_err(|e| {
            Error::Unavailable(format!("the function image '{image}' is missing: {e}"))
        })?;
        Ok(info
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(LABEL_FILES).cloned())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir()))
    }

    /// Containers carrying `label` (`key` or `key=value`): (id, owner, instance).
    async fn list(&self, docker: &Docker, label: String) -> Result<Vec<(String, String, String)>> {
        let filters = HashMap::from([("label".to_string(), vec![label])]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| Error::Unavailable(format!("cannot list containers: {e}")))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels?;
                let owner = labels.get(LABEL_OWNER)?.clone();
                let instance = labels.get(LABEL_INSTANCE).cloned().unwrap_or_default();
                Some((c.id?, owner, instance))
            })
            .collect())
    }

    /// The ids of this executor's containers.
    pub(crate) async fn own_containers(&self) -> Result<Vec<String>> {
        let docker = self.client().await?;
        Ok(self
            .list(&docker, format!("{LABEL_INSTANCE}={}", self.instance))
            .await?
            .into_iter()
            .filter(|(_, _, instance)| *instance == self.instance)
            .map(|(id, _, _)| id)
            .collect())
    }

    /// Removes every container of this executor (shutdown).
    pub(crate) async fn remove_own_containers(&self) {
        let Some(docker) = self.client.get().cloned() else {
            return;
        };
        if let Ok(ids) = self.own_containers().await {
            for id in ids {
                remove_container(&docker, &id).await;
            }
        }
    }

    /// Removes the containers of every SOPM server on this host that is gone (whatever
    /// its executors were named).
    async fn sweep_stale(&self, docker: &Docker) {
        let Ok(list) = self.list(docker, LABEL_OWNER.to_string()).await else {
            return;
        };
        for (id, owner, _) in list {
            if owner != self.owner && owner_is_gone(&owner) {
                tracing::info!(container = %id, owner = %owner, "removing a container left by a server that is gone");
                remove_container(docker, &id).await;
            }
        }
    }
}

fn unavailable(what: &str, e: bollard::errors::Error) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

fn keep_tail(tail: &mut String, text: &str) {
    tail.push_str(text);
    if tail.len() > BUILD_ERROR_TAIL {
        let mut cut = tail.len() - BUILD_ERROR_TAIL;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// `host:pid:start` of this process (the start time tells a reused pid apart).
fn owner_label() -> String {
    let pid = std::process::id();
    format!("{}:{pid}:{}", hostname(), process_start(pid).unwrap_or(0))
}

fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the server named in an owner label is gone: same host, and its pid is not
/// running or is another process now. Owners on other hosts are never judged.
fn owner_is_gone(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match process_start(pid) {
        None => true,
        Some(s) => start.parse::<u64>().ok() != Some(s),
    }
}

/// The static runner next to the running program or on `PATH`.
fn find_static_runner() -> Option<PathBuf> {
    let name = RunnerKind::Static.file_name();
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    beside.into_iter().chain(on_path).find(|p| p.is_file())
}

/// A build context: a tar archive made in memory.
pub(crate) struct Context {
    tar: tar::Builder<Vec<u8>>,
}

impl Context {
    pub(crate) fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        Context { tar }
    }

    /// Adds a file.
    pub(crate) fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        self.tar
            .append_data(&mut header, path, data)
            .map_err(|e| Error::Internal(format!("cannot make a build context: {e}")))
    }

    /// Adds a directory tree under `prefix` (symlinks kept as links, never followed).
    pub(crate) fn tree(&mut self, prefix: &str, dir: &std::path::Path) -> Result<()> {
        self.tar
            .append_dir_all(prefix, dir)
            .map_err(|e| Error::Internal(format!("cannot make a build context: {e}")))
    }

    pub(crate) fn finish(self) -> Result<Vec<u8>> {
        self.tar
            .into_inner()
            .map_err(|e| Error::Internal(format!("cannot make a build context: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_server_is_not_gone_and_a_dead_pid_is() {
        assert!(!owner_is_gone(&owner_label()));
        let host = hostname();
        assert!(owner_is_gone(&format!("{host}:4194300:1")));
        // Our own pid with another start time: the pid was reused.
        assert!(owner_is_gone(&format!("{host}:{}:1", std::process::id())));
        assert!(!owner_is_gone("elsewhere.example:1:1"));
        assert!(!owner_is_gone("garbage"));
    }

    #[test]
    fn build_output_tail_is_bounded() {
        let mut tail = String::new();
        for _ in 0..1000 {
            keep_tail(&mut tail, "é step output\n");
        }
        assert!(tail.len() <= BUILD_ERROR_TAIL);
        assert!(tail.ends_with("step output\n"));
    }
}
