//! The docker builder: an upload becomes a container image.

use std::sync::Arc;

use async_trait::async_trait;
use sopm_core::{Artifact, BuildLog, Builder, Error, FunctionVersion, Result, Source};

use super::daemon::{Context, Daemon, LABEL_FILES};
use super::docker_runner;
use crate::LocalBuilder;

/// Builds function images for a [`DockerExecutor`](super::DockerExecutor): the local
/// builder installs dependencies (sandboxed, the package index as the only way out) into
/// an artifact directory, then a generated Dockerfile layers it over the runtime's runner
/// image through the Docker API:
///
/// ```text
/// FROM sopm-runner-python:<digest>
/// COPY code/ /fn/
/// LABEL sopm.files=<artifact dir> sopm.function=<id> sopm.version=<n>
/// ```
///
/// The build output is streamed into the build log. The artifact is the image
/// (`sopm-fn-<function id>:v<version>`, the id without its `fn_`); the directory is kept beside it, so stem cells
/// can take the code in an init frame, and both go when the function is deleted.
#[derive(Debug, Clone)]
pub struct DockerBuilder {
    local: Arc<LocalBuilder>,
    daemon: Arc<Daemon>,
}

impl DockerBuilder {
    pub(crate) fn new(local: Arc<LocalBuilder>, daemon: Arc<Daemon>) -> Self {
        DockerBuilder { local, daemon }
    }
}

/// The image tag of a function version (lowercase, as image names must be).
fn image_tag(function_id: &str, version: u32) -> String {
    let id: String = function_id
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
        .collect();
    format!("sopm-fn-{id}:v{version}")
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
        let result = async {
            let base = self.daemon.runner_image(runner).await?;
            let tag = image_tag(&version.function_id, version.version);
            log.append(&format!("building image {tag} from {base}\n"))
                .await;
            let dockerfile = format!(
                "FROM {base}\nCOPY code/ /fn/\nLABEL {LABEL_FILES}=\"{path}\" sopm.function=\"{}\" sopm.version=\"{}\"\n",
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
            log.append(&format!("image {tag} ready\n")).await;
            Ok(Artifact::Image { reference: tag })
        }
        .await;
        if result.is_err() {
            let _ = self.local.remove(&artifact).await;
        }
        result
    }

    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        match artifact {
            Artifact::Image { reference } => {
                let files = self.daemon.image_files(reference).await.ok().flatten();
                self.daemon.remove_image(reference).await?;
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
    }
}
