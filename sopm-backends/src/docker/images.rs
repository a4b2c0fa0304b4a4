//! Function images beyond one daemon: pushed to the configured registry after a build
//! (the version records the pushed manifest's digest), pulled by digest on a node whose
//! daemon lacks them (once per node however many calls ask at once), read for their
//! code, and removed from the daemon and, by digest, from the registry.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::auth::DockerCredentials;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions, PushImageOptions,
    RemoveImageOptions,
};
use bollard::Docker;
use futures::StreamExt;
use sopm_core::{Error, Result};
use tokio::sync::OnceCell;

use super::containers::remove_container;
use crate::host::ImageRegistry;
use crate::sandbox::{load_directory, FunctionCode, CODE_DIR};

/// The function images of one daemon, and the registry they go to.
#[derive(Debug)]
pub(crate) struct FunctionImages {
    registry: Option<ImageRegistry>,
    http: OnceCell<reqwest::Client>,
    /// The daemon's address (`None`: the local default), which keys the pulls.
    daemon: Option<String>,
    /// References known to be in the daemon (checked once, forgotten when a container
    /// of one cannot be made).
    present: parking_lot::Mutex<HashSet<String>>,
}

/// One lock per (daemon, reference) being pulled in this process: concurrent first calls,
/// of one executor or of several on one daemon (`docker` and `docker-runsc`), wait for
/// one pull.
type Pulls = tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;
static PULLS: std::sync::LazyLock<Pulls> = std::sync::LazyLock::new(Default::default);

/// `name@sha256:<64 hex>` split into the name and the digest, if `reference` is pinned.
pub(crate) fn pinned(reference: &str) -> Option<(&str, &str)> {
    let (name, digest) = reference.rsplit_once('@')?;
    let hex = digest.strip_prefix("sha256:")?;
    let ok = !name.is_empty()
        && hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some((name, digest))
}

/// The registry part of an image name (`host:port` of `host:port/repo`), if it has one.
fn registry_of(name: &str) -> Option<&str> {
    let (first, _) = name.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

impl FunctionImages {
    pub(crate) fn new(registry: Option<ImageRegistry>, daemon: Option<String>) -> Self {
        FunctionImages {
            registry,
            http: OnceCell::new(),
            daemon,
            present: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// The registry function images are pushed to, if one is configured.
    pub(crate) fn registry(&self) -> Option<&ImageRegistry> {
        self.registry.as_ref()
    }

    /// The credentials for `reference`'s registry, when it is the configured one and
    /// credentials are set.
    fn credentials(&self, reference: &str) -> Option<DockerCredentials> {
        let registry = self.registry.as_ref()?;
        let host = registry_of(reference)?;
        (host == registry.host() && registry.username().is_some()).then(|| DockerCredentials {
            username: registry.username().map(str::to_string),
            password: registry.password().map(str::to_string),
            serveraddress: Some(registry.host().to_string()),
            ..Default::default()
        })
    }

    /// Forgets that `reference` is in the daemon (a container of it could not be made).
    pub(crate) fn forget(&self, reference: &str) {
        self.present.lock().remove(reference);
    }

    /// Makes sure `reference` is in the daemon: a pinned reference missing there is
    /// pulled by digest (one pull per daemon and reference at a time in this process;
    /// callers that arrive during it wait for it), the daemon checking the content against the digest. A reference
    /// without a digest that is missing is an error: it was built on another node
    /// without a registry.
    pub(crate) async fn ensure(&self, docker: &Docker, reference: &str) -> Result<()> {
        if self.present.lock().contains(reference) {
            return Ok(());
        }
        if is_in_daemon(docker, reference).await? {
            self.present.lock().insert(reference.to_string());
            return Ok(());
        }
        let Some((name, _)) = pinned(reference) else {
            return Err(Error::Unavailable(format!(
                "the function image '{reference}' is not in this node's Docker daemon and names no digest to pull it by (built on another node without a registry: set SOPM_DOCKER_REGISTRY)"
            )));
        };
        let key = format!("{}|{reference}", self.daemon.as_deref().unwrap_or_default());
        let lock = PULLS.lock().await.entry(key.clone()).or_default().clone();
        let _one = lock.lock().await;
        // A pull that finished while this call waited (here or in another executor).
        if self.present.lock().contains(reference) || is_in_daemon(docker, reference).await? {
            self.present.lock().insert(reference.to_string());
            PULLS.lock().await.remove(&key);
            return Ok(());
        }
        let pulled = self.pull(docker, reference, name).await;
        if pulled.is_ok() {
            self.present.lock().insert(reference.to_string());
        }
        PULLS.lock().await.remove(&key);
        pulled
    }

    async fn pull(&self, docker: &Docker, reference: &str, name: &str) -> Result<()> {
        let registry = registry_of(name).unwrap_or("docker.io");
        tracing::info!(image = %reference, "pulling a function image by digest");
        let options = CreateImageOptions {
            from_image: Some(reference.to_string()),
            ..Default::default()
        };
        let mut stream = docker.create_image(Some(options), None, self.credentials(reference));
        let failed = |message: String| {
            Error::Unavailable(format!(
                "cannot pull the function image '{reference}' from the registry at {registry}: {message}"
            ))
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        return Err(failed(
                            detail.message.unwrap_or_else(|| "pull failed".into()),
                        ));
                    }
                }
                Err(e) => return Err(failed(daemon_message(e))),
            }
        }
        Ok(())
    }

    /// Pushes the local image `tag` (`host/repository:tag` of the configured registry)
    /// and returns it pinned: `host/repository@sha256:<digest of the pushed manifest>`.
    pub(crate) async fn push(
        &self,
        docker: &Docker,
        tag: &str,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String> {
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| Error::Internal("no image registry is configured".into()))?;
        let name = registry.image_name();
        let (_, version_tag) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
        let options = PushImageOptions {
            tag: Some(version_tag.to_string()),
            ..Default::default()
        };
        let failed = |message: String| {
            Error::Unavailable(format!(
                "cannot push the function image '{tag}' to the registry at {}: {message}",
                registry.url()
            ))
        };
        let mut stream = docker.push_image(&name, Some(options), self.credentials(tag));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        return Err(failed(
                            detail.message.unwrap_or_else(|| "push failed".into()),
                        ));
                    }
                    if let Some(status) = info.status.as_deref() {
                        if info.progress_detail.is_none() || status.contains("digest") {
                            log(&format!("{status}\n"));
                        }
                    }
                }
                Err(e) => return Err(failed(daemon_message(e))),
            }
        }
        // The daemon records the digest of the manifest it pushed as a repo digest.
        let info = docker
            .inspect_image(tag)
            .await
            .map_err(|e| failed(format!("the pushed image cannot be inspected: {e}")))?;
        let prefix = format!("{name}@");
        let pinned = info
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.starts_with(&prefix))
            .ok_or_else(|| failed("the daemon recorded no digest for the push".into()))?;
        self.present.lock().insert(pinned.clone());
        Ok(pinned)
    }

    /// Reads the code of a function image (the files at the code dir) for an init frame:
    /// inline when it fits `max_inline_bytes`, else the image itself, booted as it is.
    pub(crate) async fn code(
        &self,
        docker: &Docker,
        reference: &str,
        labels: HashMap<String, String>,
        max_inline_bytes: u64,
    ) -> Result<FunctionCode> {
        self.ensure(docker, reference).await?;
        let body = ContainerCreateBody {
            image: Some(reference.to_string()),
            cmd: Some(vec!["/bin/true".into()]),
            entrypoint: Some(Vec::new()),
            network_disabled: Some(true),
            labels: Some(labels),
            ..Default::default()
        };
        let name = format!("sopm-code-{}", uuid::Uuid::new_v4().simple());
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| {
                self.forget(reference);
                Error::Unavailable(format!(
                    "cannot read the code of the function image '{reference}': {e}"
                ))
            })?;
        let archive = read_archive(docker, &created.id, max_inline_bytes).await;
        remove_container(docker, &created.id).await;
        let Some(archive) = archive? else {
            return Ok(FunctionCode::Image(reference.to_string()));
        };
        let dir =
            std::env::temp_dir().join(format!("sopm-image-code-{}", uuid::Uuid::new_v4().simple()));
        let unpacked = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || unpack(&archive, &dir))
                .await
                .map_err(|e| Error::Internal(format!("image code task failed: {e}")))?
        };
        let code = match unpacked {
            Ok(code_dir) => load_directory(code_dir, max_inline_bytes).await,
            Err(e) => Err(Error::Internal(format!(
                "cannot unpack the code of the function image '{reference}': {e}"
            ))),
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        match code? {
            inline @ FunctionCode::Inline(_) => Ok(inline),
            _ => Ok(FunctionCode::Image(reference.to_string())),
        }
    }

    /// Removes a function image from the daemon and, when it is pinned in the configured
    /// registry, its manifest from the registry (by digest: only this version's manifest,
    /// see the builder). A registry that does not allow deletes keeps it (logged).
    pub(crate) async fn remove(&self, docker: &Docker, reference: &str) -> Result<()> {
        self.forget(reference);
        let target = match docker.inspect_image(reference).await {
            Ok(info) => info.id.unwrap_or_else(|| reference.to_string()),
            Err(_) => reference.to_string(),
        };
        match docker
            .remove_image(
                &target,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await
        {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot remove the image '{reference}': {e}"
                )))
            }
        }
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        match pinned(reference) {
            Some((name, digest)) if name == registry.image_name() => {
                self.delete_manifest(registry, digest).await
            }
            _ => Ok(()),
        }
    }

    async fn delete_manifest(&self, registry: &ImageRegistry, digest: &str) -> Result<()> {
        let http = self
            .http
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(30))
                    .build()
                    .map_err(|e| Error::Internal(format!("cannot make an HTTP client: {e}")))
            })
            .await?;
        let url = format!(
            "{}/v2/{}/manifests/{digest}",
            registry.url(),
            registry.repository()
        );
        let mut request = http.delete(&url);
        if let Some(user) = registry.username() {
            request = request.basic_auth(user, registry.password());
        }
        let response = request.send().await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot delete {digest} from the registry at {}: {e}",
                registry.url()
            ))
        })?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            405 => {
                tracing::info!(registry = %registry.url(), %digest,
                    "the registry does not allow deletes; the function image's manifest stays");
                Ok(())
            }
            status => Err(Error::Unavailable(format!(
                "the registry at {} refused to delete {digest}: HTTP {status}",
                registry.url()
            ))),
        }
    }
}

/// Whether the daemon has `reference`.
async fn is_in_daemon(docker: &Docker, reference: &str) -> Result<bool> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(Error::Unavailable(format!(
            "the Docker daemon cannot look up the function image '{reference}': {e}"
        ))),
    }
}

/// The daemon's own message of an error, without the status wrapping.
fn daemon_message(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}

/// The tar of the code dir of container `id`; `None` when it is bigger than twice
/// `max_inline_bytes` (it cannot fit a frame, so the image itself boots).
async fn read_archive(docker: &Docker, id: &str, max_inline_bytes: u64) -> Result<Option<Vec<u8>>> {
    let cap = max_inline_bytes.saturating_mul(2).saturating_add(1 << 20);
    let options = DownloadFromContainerOptions {
        path: format!("{CODE_DIR}/"),
    };
    let mut stream = docker.download_from_container(id, Some(options));
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::Unavailable(format!("cannot read the code dir of a function image: {e}"))
        })?;
        archive.extend_from_slice(&chunk);
        if archive.len() as u64 > cap {
            return Ok(None);
        }
    }
    Ok(Some(archive))
}

/// Unpacks the code dir's archive (one top directory) under `dir`; returns the code
/// directory.
fn unpack(archive: &[u8], dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut tar = tar::Archive::new(archive);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(false);
    tar.unpack(dir)?;
    let top = CODE_DIR.trim_start_matches('/');
    let code = dir.join(top);
    if code.is_dir() {
        Ok(code)
    } else {
        Ok(dir.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_references_and_their_registry() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = format!("127.0.0.1:5000/sopm/functions@{digest}");
        assert_eq!(
            pinned(&r),
            Some(("127.0.0.1:5000/sopm/functions", digest.as_str()))
        );
        assert_eq!(
            registry_of("127.0.0.1:5000/sopm/functions"),
            Some("127.0.0.1:5000")
        );
        assert_eq!(registry_of("sopm/functions"), None);
        assert_eq!(pinned("sopm-fn-x:v1"), None);
        assert_eq!(pinned(&format!("x@sha256:{}", "AB".repeat(32))), None);
        assert_eq!(pinned("x@sha256:abc"), None);
    }
}
