//! The docker builder: an upload becomes a container image, pushed to the registry when
//! one is configured.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use sopm_core::{Artifact, BuildLog, Builder, Error, FunctionVersion, Result, Source};

use super::daemon::{Context, Daemon};
use super::docker_runner;
use crate::host::{ImageRegistry, SandboxSettings};
use crate::sandbox::{load_directory, FunctionCode, RunnerKind};
use crate::LocalBuilder;

/// Builds function images for a [`DockerExecutor`](super::DockerExecutor): the local
/// builder installs dependencies (sandboxed, the package index as the only way out) into
/// an artifact directory, then a generated Dockerfile layers it over the runtime's runner
/// image through the Docker API:
///
/// ```text
/// FROM sopm-runner-python:<digest>
/// COPY code/ /fn/
/// LABEL sopm.function=<id> sopm.version=<n>
/// ```
///
/// The image carries the code; the directory is removed once the image is built. The
/// build output is streamed into the build log.
///
/// - Without a registry the artifact is the local image `sopm-fn-<function id>:v<version>`
///   (the id without its `fn_`): it runs on this node only.
/// - With a registry ([`ImageRegistry`], `SOPM_DOCKER_REGISTRY`) the image is tagged
///   `HOST/REPOSITORY:<function id>-v<version>`, pushed, and the artifact is
///   `HOST/REPOSITORY@sha256:<digest of the pushed manifest>`: every node's docker
///   executor pulls it by that digest, and the daemon checks the content against it.
///
/// Removing the artifact removes the local image and, in a registry that allows deletes,
/// the manifest by digest. No other version can share that manifest: the image config
/// carries the `sopm.function` and `sopm.version` labels, so two versions' images differ
/// in their config blob, hence in their manifest digest, even with the same code.
///
/// For the Kubernetes backend ([`for_pods`](Self::for_pods)) it makes an image only of
/// code too big for an init frame, over the pods' own runner images (pinned by digest),
/// and leaves smaller code as the local builder's directory.
#[derive(Debug, Clone)]
pub struct DockerBuilder {
    local: Arc<LocalBuilder>,
    daemon: Arc<Daemon>,
    /// Images only of code bigger than this (inline code stays a directory).
    images_above: Option<u64>,
    /// The runner images to build over instead of this daemon's own.
    runner_images: BTreeMap<RunnerKind, String>,
}

impl DockerBuilder {
    pub(crate) fn new(local: Arc<LocalBuilder>, daemon: Arc<Daemon>) -> Self {
        DockerBuilder {
            local,
            daemon,
            images_above: None,
            runner_images: BTreeMap::new(),
        }
    }

    /// A builder through the daemon and registry of `settings` (no I/O until a build).
    pub fn from_settings(settings: &SandboxSettings, local: Arc<LocalBuilder>) -> Self {
        DockerBuilder::new(local, Arc::new(Daemon::new(settings)))
    }

    /// Builds images for pods that boot from `runner_images` (`repository@sha256:…` per
    /// runner, pulled by digest when missing): code that fits an init frame of
    /// `max_inline_bytes` stays the local builder's directory (a stem cell takes it);
    /// bigger code becomes an image over the runner's image. Needs a registry.
    pub fn for_pods(
        mut self,
        runner_images: BTreeMap<RunnerKind, String>,
        max_inline_bytes: u64,
    ) -> Self {
        self.runner_images = runner_images;
        self.images_above = Some(max_inline_bytes);
        self
    }

    /// The image a function of `runner` is built over.
    async fn base_image(&self, runner: RunnerKind) -> Result<String> {
        if self.runner_images.is_empty() {
            return self.daemon.runner_image(runner).await;
        }
        let image = self.runner_images.get(&runner).ok_or_else(|| {
            Error::Unavailable(format!(
                "no runner image is configured for the {} runner",
                runner.as_str()
            ))
        })?;
        let docker = self.daemon.client().await?;
        self.daemon.images().ensure(&docker, image).await?;
        Ok(image.clone())
    }
}

/// The local image tag of a function version (lowercase, as image names must be).
fn image_tag(function_id: &str, version: u32) -> String {
    format!("sopm-fn-{}:v{version}", image_id(function_id))
}

/// The tag of a function version in a registry's repository.
fn registry_tag(registry: &ImageRegistry, function_id: &str, version: u32) -> String {
    format!(
        "{}:{}-v{version}",
        registry.image_name(),
        image_id(function_id)
    )
}

/// A function id as part of an image name: lower case, without its `fn_`.
fn image_id(function_id: &str) -> String {
    function_id
        .strip_prefix("fn_")
        .unwrap_or(function_id)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[async_trait]
impl Builder for DockerBuilder {
    fn name(&self) -> &str {
        "docker"
    }

    async fn build(
        &self,
        version: &FunctionVersion,
        source: &Source,
        log: &dyn BuildLog,
    ) -> Result<Artifact> {
        let runner = docker_runner(version.runtime)
            .ok_or_else(|| Error::invalid("built-in functions are not built".to_string()))?;
        let artifact = self.local.build(version, source, log).await?;
        let Artifact::Directory { path, .. } = &artifact else {
            return Err(Error::Internal(
                "the local builder made something other than a directory".into(),
            ));
        };
        if let Some(max) = self.images_above {
            let code = load_directory(std::path::PathBuf::from(path), max).await;
            if matches!(code, Ok(FunctionCode::Inline(_))) {
                return Ok(artifact);
            }
            if self.daemon.images().registry().is_none() {
                let _ = self.local.remove(&artifact).await;
                return Err(Error::BuildFailed(format!(
                    "function '{}' is too big for an init frame ({max} bytes) and no image registry is configured to build it into an image (SOPM_DOCKER_REGISTRY)",
                    version.name
                )));
            }
            log.append("the code is too big for an init frame: building an image\n")
                .await;
        }
        let result = async {
            let base = self.base_image(runner).await?;
            let registry = self.daemon.images().registry().cloned();
            let tag = match &registry {
                Some(r) => registry_tag(r, &version.function_id, version.version),
                None => image_tag(&version.function_id, version.version),
            };
            log.append(&format!("building image {tag} from {base}\n"))
                .await;
            let dockerfile = format!(
                "FROM {base}\nCOPY code/ /fn/\nLABEL sopm.function=\"{}\" sopm.version=\"{}\"\n",
                version.function_id, version.version
            );
            let mut context = Context::new();
            context.file("Dockerfile", dockerfile.as_bytes(), 0o644)?;
            let dir = std::path::PathBuf::from(path);
            let context = tokio::task::spawn_blocking(move || {
                context.tree("code", &dir)?;
                context.finish()
            })
            .await
            .map_err(|e| Error::Internal(format!("build context task failed: {e}")))??;
            let docker = self.daemon.client().await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let build = {
                let daemon = self.daemon.clone();
                let tag = tag.clone();
                let docker = docker.clone();
                async move {
                    let mut send = |line: &str| {
                        let _ = tx.send(line.to_string());
                    };
                    daemon.build(&docker, context, &tag, &mut send).await
                }
            };
            let forward = async {
                while let Some(line) = rx.recv().await {
                    log.append(&line).await;
                }
            };
            let (built, ()) = tokio::join!(build, forward);
            built.map_err(|e| Error::BuildFailed(format!("the image build failed: {e}")))?;
            let Some(registry) = registry else {
                log.append(&format!("image {tag} ready\n")).await;
                return Ok(Artifact::Image { reference: tag });
            };
            log.append(&format!("pushing {tag} to {}\n", registry.url()))
                .await;
            let mut lines = Vec::new();
            let pushed = self
                .daemon
                .images()
                .push(&docker, &tag, &mut |line| lines.push(line.to_string()))
                .await;
            for line in lines {
                log.append(&line).await;
            }
            match pushed {
                Ok(reference) => {
                    log.append(&format!("image {reference} ready\n")).await;
                    Ok(Artifact::Image { reference })
                }
                Err(e) => {
                    let _ = self.daemon.images().remove(&docker, &tag).await;
                    Err(e)
                }
            }
        }
        .await;
        // The image carries the code (or there is no image): the directory goes.
        if let Err(e) = self.local.remove(&artifact).await {
            tracing::warn!(error = %e, "cannot remove a docker build's directory");
        }
        result
    }

    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        match artifact {
            Artifact::Image { reference } => {
                // Images built before they carried their code alone name the directory
                // they were built from, which goes with them.
                let files = self.daemon.image_files(reference).await.ok().flatten();
                let docker = self.daemon.client().await?;
                self.daemon.images().remove(&docker, reference).await?;
                if let Some(dir) = files {
                    let dir = Artifact::Directory {
                        path: dir.to_string_lossy().into_owned(),
                        digest: None,
                    };
                    self.local.remove(&dir).await?;
                }
                Ok(())
            }
            dir @ Artifact::Directory { .. } => self.local.remove(dir).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_are_valid_docker_names() {
        assert_eq!(image_tag("fn_0192ABC", 3), "sopm-fn-0192abc:v3");
        assert_eq!(image_tag("My.Func", 1), "sopm-fn-my-func:v1");
        let r = ImageRegistry::new("http://127.0.0.1:5000", "sopm/functions").unwrap();
        assert_eq!(
            registry_tag(&r, "fn_0192ABC", 3),
            "127.0.0.1:5000/sopm/functions:0192abc-v3"
        );
    }
}
