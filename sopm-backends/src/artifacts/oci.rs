//! `OciArtifactStore`: artifact directories pushed to an OCI registry as one-layer OCI
//! artifacts and pulled by digest into a size-bounded cache on every node that runs them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sopm_core::{Artifact, ArtifactStore, Digest, Error, Result};

use super::cache::ArtifactCache;
use super::canonical::{canonical_tar, unpack_verified};
use super::local::{blocking, storage, store_directory};

/// The media type of the one layer: the canonical tar of the artifact's directory.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.sopm.function.layer.v1.tar";
/// The `artifactType` of the manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.sopm.function.v1";
/// The repository artifacts go to unless configured otherwise.
pub const DEFAULT_REPOSITORY: &str = "sopm/artifacts";
/// The cache bound unless configured otherwise (10 GiB).
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 10 << 30;

const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_DATA: &[u8] = b"{}";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Where the registry is and how this node caches what it pulls.
#[derive(Clone)]
pub struct OciConfig {
    /// The registry: `host[:port]` or a URL. `https://` (or no scheme) speaks TLS;
    /// `http://` speaks plain HTTP to that host (a registry on a trusted network; the
    /// content is still checked against its digest).
    pub registry: String,
    /// The repository artifacts are pushed to (default [`DEFAULT_REPOSITORY`]).
    pub repository: String,
    /// Basic auth user name, if the registry wants one.
    pub username: Option<String>,
    /// Basic auth password (never shown by `Debug`).
    pub password: Option<String>,
    /// This node's cache of pulled artifacts.
    pub cache_dir: PathBuf,
    /// The cache's bound in bytes (the files of its trees); default
    /// [`DEFAULT_CACHE_MAX_BYTES`].
    pub cache_max_bytes: u64,
}

impl OciConfig {
    /// The registry at `registry`, caching under `cache_dir`, with the defaults.
    pub fn new(registry: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        OciConfig {
            registry: registry.into(),
            repository: DEFAULT_REPOSITORY.to_string(),
            username: None,
            password: None,
            cache_dir: cache_dir.into(),
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
    }

    /// Sets the repository.
    pub fn with_repository(mut self, repository: impl Into<String>) -> Self {
        self.repository = repository.into();
        self
    }

    /// Sets basic auth credentials.
    pub fn with_basic_auth(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the cache bound.
    pub fn with_cache_max_bytes(mut self, max_bytes: u64) -> Self {
        self.cache_max_bytes = max_bytes;
        self
    }
}

impl fmt::Debug for OciConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciConfig")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .field("cache_max_bytes", &self.cache_max_bytes)
            .finish()
    }
}

/// Keeps artifact directories in an OCI registry (see the module docs of
/// [`artifacts`](super)). Cheap to clone; clones share the client and the cache.
#[derive(Clone)]
pub struct OciArtifactStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    auth: RegistryAuth,
    /// `host[:port]`, as references name it.
    host: String,
    /// `http` or `https`.
    scheme: &'static str,
    repository: String,
    cache: Arc<ArtifactCache>,
    downloads: AtomicU64,
    http: reqwest::Client,
    username: Option<String>,
    password: Option<String>,
}

impl fmt::Debug for OciArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciArtifactStore")
            .field(
                "registry",
                &format!("{}://{}", self.inner.scheme, self.inner.host),
            )
            .field("repository", &self.inner.repository)
            .field("cache", &self.inner.cache)
            .finish()
    }
}

impl OciArtifactStore {
    /// Checks `config` and makes the store; no I/O (the registry is first reached by a
    /// put or a fetch).
    pub fn new(config: OciConfig) -> Result<Self> {
        let (scheme, host) = match config.registry.split_once("://") {
            Some(("http", rest)) => ("http", rest),
            Some(("https", rest)) => ("https", rest),
            Some((other, _)) => {
                return Err(Error::invalid(format!(
                    "registry URL scheme '{other}' is not supported (use http:// or https://)"
                )));
            }
            None => ("https", config.registry.as_str()),
        };
        let host = host.trim_end_matches('/').to_string();
        if host.is_empty() || host.contains('/') {
            return Err(Error::invalid(format!(
                "registry '{}' must be a host[:port] or a URL without a path",
                config.registry
            )));
        }
        let probe = format!("{host}/{}:probe", config.repository);
        probe.parse::<Reference>().map_err(|e| {
            Error::invalid(format!(
                "'{}' is not a valid registry repository: {e}",
                config.repository
            ))
        })?;
        if config.username.is_some() != config.password.is_some() {
            return Err(Error::invalid(
                "registry basic auth needs both a user name and a password",
            ));
        }
        let protocol = if scheme == "http" {
            ClientProtocol::HttpsExcept(vec![host.clone()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        let auth = match (&config.username, &config.password) {
            (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            _ => RegistryAuth::Anonymous,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Internal(format!("could not make an HTTP client: {e}")))?;
        Ok(OciArtifactStore {
            inner: Arc::new(Inner {
                client,
                auth,
                host,
                scheme,
                repository: config.repository,
                cache: Arc::new(ArtifactCache::new(config.cache_dir, config.cache_max_bytes)),
                downloads: AtomicU64::new(0),
                http,
                username: config.username,
                password: config.password,
            }),
        })
    }

    /// How many layer downloads this store has started (for tests and stats).
    pub fn downloads(&self) -> u64 {
        self.inner.downloads.load(Ordering::Relaxed)
    }

    /// Bytes in this node's cache.
    pub fn cache_bytes(&self) -> u64 {
        self.inner.cache.total_bytes()
    }

    /// The reference an artifact is tagged with: `REGISTRY/REPO:sha256-<hex>`.
    pub fn reference(&self, digest: &Digest) -> String {
        format!(
            "{}/{}:sha256-{}",
            self.inner.host,
            self.inner.repository,
            digest.hex()
        )
    }

    fn tag_ref(&self, digest: &Digest) -> Reference {
        Reference::with_tag(
            self.inner.host.clone(),
            self.inner.repository.clone(),
            format!("sha256-{}", digest.hex()),
        )
    }

    fn unreachable(&self, what: &str, detail: impl fmt::Display) -> Error {
        Error::Unavailable(format!(
            "the OCI registry at {}://{} is unreachable ({what}): {detail}",
            self.inner.scheme, self.inner.host
        ))
    }

    fn registry_error(&self, what: &str, e: OciDistributionError) -> Error {
        let registry = format!("{}://{}", self.inner.scheme, self.inner.host);
        match e {
            OciDistributionError::RequestError(ref inner) => self.unreachable(what, inner),
            OciDistributionError::DigestError(ref inner) => Error::Storage(format!(
                "{what}: the content the OCI registry at {registry} sent does not match its digest: {inner}"
            )),
            OciDistributionError::ImageManifestNotFoundError(_)
            | OciDistributionError::ServerError { code: 404, .. } => {
                Error::not_found(format!("{what}: not in the OCI registry at {registry}: {e}"))
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope
                    .errors
                    .iter()
                    .any(|err| matches!(err.code, OciErrorCode::BlobUnknown | OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)) =>
            {
                Error::not_found(format!("{what}: not in the OCI registry at {registry}: {e}"))
            }
            other => Error::Storage(format!(
                "{what}: the OCI registry at {registry} answered: {other}"
            )),
        }
    }

    async fn blob_exists(&self, reference: &Reference, digest: &str) -> Result<bool> {
        self.inner
            .client
            .blob_exists(reference, digest)
            .await
            .map_err(|e| self.registry_error("check a blob", e))
    }

    /// Pushes the artifact whose canonical tar is in the file `tar` (streamed, never
    /// held in memory whole), unless the registry has the blob, then its manifest.
    async fn push(&self, tar: &Path, digest: &Digest, size: u64) -> Result<()> {
        let reference = self.tag_ref(digest);
        let client = &self.inner.client;
        client
            .store_auth_if_needed(reference.resolve_registry(), &self.inner.auth)
            .await;
        if !self.blob_exists(&reference, digest.as_str()).await? {
            let file = tokio::fs::File::open(tar)
                .await
                .map_err(|e| storage("open", tar, e))?;
            client
                .push_blob_stream(&reference, file_chunks(file), digest.as_str(), Some(size))
                .await
                .map_err(|e| self.registry_error("push the artifact's layer", e))?;
        }
        let empty = Digest::of(EMPTY_DATA);
        if !self.blob_exists(&reference, empty.as_str()).await? {
            client
                .push_blob(&reference, EMPTY_DATA, empty.as_str())
                .await
                .map_err(|e| self.registry_error("push the empty config", e))?;
        }
        let size = i64::try_from(size)
            .map_err(|_| Error::invalid(format!("artifact {digest} is too large")))?;
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            config: OciDescriptor {
                media_type: EMPTY_MEDIA_TYPE.to_string(),
                digest: empty.to_string(),
                size: EMPTY_DATA.len() as i64,
                ..OciDescriptor::default()
            },
            layers: vec![OciDescriptor {
                media_type: LAYER_MEDIA_TYPE.to_string(),
                digest: digest.to_string(),
                size,
                ..OciDescriptor::default()
            }],
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            ..OciImageManifest::default()
        };
        client
            .push_manifest(&reference, &OciManifest::Image(manifest))
            .await
            .map_err(|e| self.registry_error("push the artifact manifest", e))?;
        Ok(())
    }

    /// Downloads the layer of `digest` into the cache, verified and unpacked.
    async fn download(&self, digest: &Digest) -> Result<PathBuf> {
        let cache = &self.inner.cache;
        let tar = TempFile(cache.tmp_dir().join(format!(
            "{}-{}.tar",
            digest.hex(),
            uuid::Uuid::new_v4().simple()
        )));
        self.inner.downloads.fetch_add(1, Ordering::Relaxed);
        self.download_to(digest, &tar.0).await?;
        let cache = Arc::clone(cache);
        let digest = digest.clone();
        blocking(move || {
            let dest = cache.path_of(&digest);
            unpack_verified(&tar.0, &digest, &dest)?;
            cache.insert(&digest)?;
            Ok(dest)
        })
        .await
    }

    async fn download_to(&self, digest: &Digest, tar_path: &Path) -> Result<()> {
        let reference = Reference::with_digest(
            self.inner.host.clone(),
            self.inner.repository.clone(),
            digest.to_string(),
        );
        self.inner
            .client
            .store_auth_if_needed(reference.resolve_registry(), &self.inner.auth)
            .await;
        let file = tokio::fs::File::create(tar_path)
            .await
            .map_err(|e| storage("create", tar_path, e))?;
        let layer = OciDescriptor {
            media_type: LAYER_MEDIA_TYPE.to_string(),
            digest: digest.to_string(),
            ..OciDescriptor::default()
        };
        self.inner
            .client
            .pull_blob(&reference, &layer, file)
            .await
            .map_err(|e| self.registry_error(&format!("pull artifact {digest}"), e))
    }

    /// Deletes the registry's manifest of the content `digest` (its blob then goes at the
    /// registry's next garbage collection). [`remove`](ArtifactStore::remove) never does
    /// this: artifacts are named by content, so two versions — of one tenant or of two —
    /// with the same files share one manifest, and deleting it for one would break the
    /// other on every node without a cached copy. This is for an operator's tool that
    /// knows no version names the content any more.
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let reference = self.tag_ref(digest);
        let manifest = match self
            .inner
            .client
            .fetch_manifest_digest(&reference, &self.inner.auth)
            .await
        {
            Ok(manifest) => manifest,
            Err(e) => {
                return match self.registry_error("find the artifact manifest", e) {
                    Error::NotFound(_) => Ok(()),
                    other => Err(other),
                };
            }
        };
        let url = format!(
            "{}://{}/v2/{}/manifests/{manifest}",
            self.inner.scheme, self.inner.host, self.inner.repository
        );
        let mut request = self.inner.http.delete(&url);
        if let Some(user) = &self.inner.username {
            request = request.basic_auth(user, self.inner.password.as_ref());
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable("delete an artifact", e))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            405 => {
                tracing::warn!(
                    %digest,
                    registry = %self.inner.host,
                    "the registry does not allow deletes (REGISTRY_STORAGE_DELETE_ENABLED); the artifact stays there"
                );
                Ok(())
            }
            status => Err(Error::Storage(format!(
                "the OCI registry at {}://{} refused to delete artifact {digest}: HTTP {status}",
                self.inner.scheme, self.inner.host
            ))),
        }
    }

    async fn load_cache(&self) -> Result<()> {
        if self.inner.cache.is_loaded() {
            return Ok(());
        }
        let cache = Arc::clone(&self.inner.cache);
        blocking(move || cache.load()).await
    }
}

#[async_trait]
impl ArtifactStore for OciArtifactStore {
    fn name(&self) -> &str {
        "oci"
    }

    async fn put_directory(&self, dir: &Path) -> Result<Artifact> {
        self.load_cache().await?;
        let tar = Arc::new(TempFile(
            self.inner
                .cache
                .tmp_dir()
                .join(format!("put-{}.tar", uuid::Uuid::new_v4().simple())),
        ));
        let (source, file_path) = (dir.to_path_buf(), Arc::clone(&tar));
        let (digest, size) = blocking(move || {
            let path = &file_path.0;
            let file = std::fs::File::create(path).map_err(|e| storage("create", path, e))?;
            let mut out = std::io::BufWriter::new(file);
            let digest = canonical_tar(&source, &mut out)?;
            let file = out
                .into_inner()
                .map_err(|e| storage("write", path, e.into_error()))?;
            let size = file.metadata().map_err(|e| storage("read", path, e))?.len();
            Ok((digest, size))
        })
        .await?;
        self.push(&tar.0, &digest, size).await?;
        drop(tar);
        let cache = Arc::clone(&self.inner.cache);
        let _pin = cache.pin(&digest);
        let source = dir.to_path_buf();
        let kept = digest.clone();
        let path = blocking(move || {
            let dest = cache.path_of(&kept);
            store_directory(&source, &dest, &kept)?;
            cache.insert(&kept)?;
            Ok(dest)
        })
        .await?;
        Ok(Artifact::Directory {
            path: path.to_string_lossy().into_owned(),
            digest: Some(digest),
        })
    }

    async fn fetch(&self, artifact: &Artifact) -> Result<Artifact> {
        let Artifact::Directory { path, digest } = artifact else {
            return Ok(artifact.clone());
        };
        let Some(digest) = digest else {
            return if Path::new(path).is_dir() {
                Ok(artifact.clone())
            } else {
                Err(Error::not_found(format!(
                    "the artifact directory '{path}' is not on this node (it has no digest to fetch it by)"
                )))
            };
        };
        self.load_cache().await?;
        let cache = &self.inner.cache;
        let found = match cache.lookup(digest) {
            Some(found) => found,
            None => {
                let _pin = cache.pin(digest);
                let flight = cache.flight(digest);
                let result = {
                    let _guard = flight.lock().await;
                    match cache.lookup(digest) {
                        Some(found) => Ok(found),
                        None => self.download(digest).await,
                    }
                };
                cache.land(digest, flight);
                result?
            }
        };
        Ok(Artifact::Directory {
            path: found.to_string_lossy().into_owned(),
            digest: Some(digest.clone()),
        })
    }

    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        let Artifact::Directory {
            digest: Some(digest),
            ..
        } = artifact
        else {
            return Ok(());
        };
        // This node's copy only. The registry keeps the manifest: artifacts are named
        // by content, and another version (another tenant's, even) with the same files
        // shares it (see `delete_manifest`).
        self.load_cache().await?;
        let cache = Arc::clone(&self.inner.cache);
        let local = digest.clone();
        blocking(move || cache.remove(&local)).await
    }
}

/// A file in the cache's `tmp/` that is deleted when this is dropped (also when a fetch
/// or a put is cancelled halfway).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The file as a stream of chunks of up to 4 MiB (what a blob push sends).
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>> + Send + 'static
{
    use tokio::io::AsyncReadExt;
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(4 << 20);
        while buf.len() < buf.capacity() {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok(if buf.is_empty() {
            None
        } else {
            Some((buf.freeze(), file))
        })
    })
}
