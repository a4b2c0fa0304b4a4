//! [`LocalBuilder`]: the [`Builder`] that makes directory artifacts.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use sopm_core::types::truncate_for_message;
use sopm_core::{Artifact, BuildLog, Builder, Error, FunctionVersion, Result, Runtime, Source};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use super::config::{redact_url, LocalBuilderConfig};
use super::sandbox::{Install, InstallHost, InstallSandbox, SANDBOX_WORKDIR};
use super::toolchain::{system_ca_bundle, Npm, Python};
use super::{deps, egress, elf, source};

/// Builds user functions into directories under an artifacts directory, installing
/// their pip or npm dependencies inside a bubblewrap sandbox. Made by
/// [`LocalBuilderConfig::build`]; tools are looked up on the first build that needs
/// them.
///
/// ```no_run
/// # async fn demo(version: sopm_core::FunctionVersion, source: sopm_core::Source,
/// #               log: &dyn sopm_core::BuildLog) -> sopm_core::Result<()> {
/// use sopm_backends::LocalBuilderConfig;
/// use sopm_core::{Artifact, Builder};
///
/// let builder = LocalBuilderConfig::new("/var/lib/sopm/artifacts").build()?;
/// let Artifact::Directory { path, .. } = builder.build(&version, &source, log).await? else {
///     unreachable!("the local builder makes directories")
/// };
/// println!("ready in {path}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LocalBuilder {
    config: LocalBuilderConfig,
    slots: Semaphore,
    root: OnceCell<PathBuf>,
    host: OnceCell<InstallHost>,
    python: OnceCell<Python>,
    npm: OnceCell<Npm>,
}

/// A dependency install, ready to run: its command and what its sandbox shows.
#[derive(Debug)]
struct PreparedInstall {
    /// The progress line logged before it runs.
    progress: String,
    host: InstallHost,
    install: Install,
    tool_dirs: Vec<PathBuf>,
    path_dirs: Vec<PathBuf>,
    ca_bundle: Option<PathBuf>,
    /// `host:port` of the package index: all the install may reach.
    egress: Vec<String>,
}

/// What a build installs besides the uploaded files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dependencies {
    None,
    Pip { requirements: usize },
    Npm { dependencies: usize },
}

impl LocalBuilder {
    pub(crate) fn from_config(config: LocalBuilderConfig) -> Self {
        LocalBuilder {
            slots: Semaphore::new(config.max_concurrent_builds),
            config,
            root: OnceCell::new(),
            host: OnceCell::new(),
            python: OnceCell::new(),
            npm: OnceCell::new(),
        }
    }

    /// The settings this builder was made with.
    pub fn config(&self) -> &LocalBuilderConfig {
        &self.config
    }

    /// The artifacts directory, created if missing, as an absolute canonical path.
    async fn root(&self) -> Result<&Path> {
        let root = self
            .root
            .get_or_try_init(|| async {
                let dir = self.config.artifacts_dir.clone();
                blocking(move || {
                    fs::create_dir_all(&dir)?;
                    fs::canonicalize(&dir)
                })
                .await
                .map_err(|e| {
                    io_error(
                        "creating the artifacts directory",
                        &self.config.artifacts_dir,
                        e,
                    )
                })
            })
            .await?;
        Ok(root)
    }

    /// Removes staging directories left by builds that were running when the process
    /// stopped, and returns how many. Call it at start-up, before any build.
    /// Package-index proxy sockets left by a stopped server go too.
    pub async fn remove_stale_staging(&self) -> Result<usize> {
        let sockets = blocking(|| Ok(egress::EgressProxy::remove_stale()))
            .await
            .unwrap_or(0);
        if sockets > 0 {
            tracing::info!(
                sockets,
                "removed package index proxy sockets of a stopped server"
            );
        }
        let root = self.root().await?.to_path_buf();
        blocking(move || {
            let mut removed = 0;
            for function in fs::read_dir(&root)? {
                let function = function?;
                if !function.file_type()?.is_dir() {
                    continue;
                }
                for entry in fs::read_dir(function.path())? {
                    let entry = entry?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with('.')
                        && (name.contains(".staging-") || name.contains(".replaced-"))
                    {
                        remove_tree(&entry.path())?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| {
            io_error(
                "removing stale staging directories",
                &self.config.artifacts_dir,
                e,
            )
        })
    }

    async fn build_version(
        &self,
        version: &FunctionVersion,
        source: &Source,
        log: &dyn BuildLog,
    ) -> Result<Artifact> {
        if version.runtime == Runtime::Builtin {
            return Err(Error::invalid("built-in functions are not built"));
        }
        check_function_id(&version.function_id)?;
        log.append(&format!(
            "==> building {} v{} ({})\n",
            version.name,
            version.version,
            version.runtime.as_str()
        ))
        .await;
        sopm_core::builder::check_source(source)?;
        let handler = source::handler_file(version.runtime, &version.handler, source)?;
        if version.runtime == Runtime::Binary {
            check_binary(&handler.path, &source.files[&handler.path], log).await?;
        }
        let dependencies = self.plan_dependencies(version.runtime, source, log).await?;
        if dependencies != Dependencies::None && !self.config.allow_network_for_deps {
            return Err(Error::BuildFailed(
                "this server does not install dependencies (allow_network_for_deps is off); \
                 vendor them into the upload instead"
                    .into(),
            ));
        }
        // Tools are found before anything is written, so a missing tool leaves nothing.
        let install = self.prepare_install(dependencies).await?;

        let _slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                log.append("==> waiting for a build slot\n").await;
                self.slots
                    .acquire()
                    .await
                    .map_err(|_| Error::Unavailable("the builder is shutting down".into()))?
            }
        };
        let deadline = Instant::now() + self.config.build_timeout;

        let root = self.root().await?;
        let function_dir = root.join(&version.function_id);
        let target = function_dir.join(format!("v{}", version.version));
        let path = target
            .to_str()
            .ok_or_else(|| {
                Error::Internal(format!("artifact path {} is not UTF-8", target.display()))
            })?
            .to_string();
        let staging = Staging::create(&function_dir, version.version).await?;
        match self
            .fill(&staging.path, source, &handler, install, deadline, log)
            .await
        {
            Ok(size) => {
                staging.commit(&target, log).await?;
                log.append(&format!("==> artifact ready ({})\n", human_size(size)))
                    .await;
                Ok(Artifact::Directory { path, digest: None })
            }
            Err(e) => {
                staging.discard().await;
                Err(e)
            }
        }
    }

    /// Reads the dependency manifest of `runtime`, if there is one, and checks it.
    async fn plan_dependencies(
        &self,
        runtime: Runtime,
        source: &Source,
        log: &dyn BuildLog,
    ) -> Result<Dependencies> {
        match runtime {
            Runtime::Python => {
                let Some(bytes) = source.files.get("requirements.txt") else {
                    return Ok(Dependencies::None);
                };
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| Error::invalid("requirements.txt is not UTF-8"))?;
                match deps::check_requirements(text)? {
                    0 => {
                        log.append("==> requirements.txt lists no requirements\n")
                            .await;
                        Ok(Dependencies::None)
                    }
                    requirements => Ok(Dependencies::Pip { requirements }),
                }
            }
            Runtime::Node => {
                let Some(bytes) = source.files.get("package.json") else {
                    return Ok(Dependencies::None);
                };
                let dependencies = deps::check_package_json(bytes)?;
                if dependencies == 0 {
                    log.append("==> package.json lists no dependencies to install\n")
                        .await;
                    return Ok(Dependencies::None);
                }
                if source.files.contains_key(".npmrc") {
                    return Err(Error::invalid(
                        ".npmrc is not allowed next to package.json: it could point npm at \
                         another registry",
                    ));
                }
                let registry = self.config.effective_npm_registry();
                for lockfile in ["package-lock.json", "npm-shrinkwrap.json"] {
                    if let Some(bytes) = source.files.get(lockfile) {
                        deps::check_lockfile(lockfile, bytes, &registry)?;
                    }
                }
                Ok(Dependencies::Npm { dependencies })
            }
            _ => Ok(Dependencies::None),
        }
    }

    /// The tools and command line of the install, if there is one.
    async fn prepare_install(&self, dependencies: Dependencies) -> Result<Option<PreparedInstall>> {
        if dependencies == Dependencies::None {
            return Ok(None);
        }
        let host = self
            .host
            .get_or_try_init(|| InstallHost::resolve(self.config.bwrap.as_deref()))
            .await?
            .clone();
        let ca_bundle = self.config.ca_bundle.clone().or_else(system_ca_bundle);
        match dependencies {
            Dependencies::None => Ok(None),
            Dependencies::Pip { requirements } => {
                let python = self
                    .python
                    .get_or_try_init(|| Python::resolve(self.config.python3.as_deref()))
                    .await?;
                let target = format!("{SANDBOX_WORKDIR}/deps");
                let mut args: Vec<String> = [
                    "install",
                    "--no-cache-dir",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--progress-bar",
                    "off",
                    "--target",
                    &target,
                    "-r",
                    "requirements.txt",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if self.config.pip_only_binary {
                    args.push("--only-binary=:all:".into());
                }
                let mut shown = args.clone();
                if let Some(url) = &self.config.pip_index_url {
                    args.extend(["--index-url".to_string(), url.clone()]);
                    shown.extend(["--index-url".to_string(), redact_url(url)]);
                }
                // The forwarder to the egress proxy runs pip as its child.
                let mut argv: Vec<OsString> = vec![
                    python.executable.clone().into_os_string(),
                    "-c".into(),
                    egress::FORWARDER_PY.into(),
                    python.executable.clone().into_os_string(),
                    "-m".into(),
                    "pip".into(),
                ];
                argv.extend(args.into_iter().map(OsString::from));
                let mut env: Vec<(&'static str, OsString)> = vec![
                    // No pip.conf of the host or of the upload applies.
                    ("PIP_CONFIG_FILE", "/dev/null".into()),
                    ("PYTHONUNBUFFERED", "1".into()),
                    ("PYTHONNOUSERSITE", "1".into()),
                ];
                if let Some(bundle) = &ca_bundle {
                    env.push(("PIP_CERT", bundle.clone().into_os_string()));
                }
                let install = Install {
                    display: format!("pip {}", shown.join(" ")),
                    what: "pip install",
                    argv,
                    env,
                };
                let progress = format!(
                    "==> installing {requirements} requirement{} with pip {}\n",
                    plural(requirements),
                    python.pip_version
                );
                let index = self
                    .config
                    .pip_index_url
                    .as_deref()
                    .unwrap_or("https://pypi.org/simple");
                let mut egress: Vec<String> = egress::host_port(index).into_iter().collect();
                if self.config.pip_index_url.is_none() {
                    egress.push("files.pythonhosted.org:443".into());
                }
                Ok(Some(PreparedInstall {
                    progress,
                    host,
                    install,
                    egress,
                    tool_dirs: python.dirs.clone(),
                    path_dirs: python
                        .executable
                        .parent()
                        .map(Path::to_path_buf)
                        .into_iter()
                        .collect(),
                    ca_bundle,
                }))
            }
            Dependencies::Npm { dependencies } => {
                let npm = self
                    .npm
                    .get_or_try_init(|| {
                        Npm::resolve(self.config.node.as_deref(), self.config.npm.as_deref())
                    })
                    .await?;
                let args = [
                    "install",
                    "--omit=dev",
                    "--no-audit",
                    "--no-fund",
                    "--ignore-scripts",
                ];
                // The forwarder to the egress proxy runs npm as its child.
                let mut argv: Vec<OsString> = vec![
                    npm.node_dir.join("node").into_os_string(),
                    "-e".into(),
                    egress::FORWARDER_JS.into(),
                ];
                argv.extend(npm.argv.iter().cloned());
                argv.extend(args.iter().map(OsString::from));
                let mut env: Vec<(&'static str, OsString)> = vec![
                    ("npm_config_update_notifier", "false".into()),
                    ("npm_config_progress", "false".into()),
                    ("NO_COLOR", "1".into()),
                ];
                if let Some(url) = &self.config.npm_registry {
                    env.push(("npm_config_registry", url.into()));
                }
                if let Some(bundle) = &ca_bundle {
                    env.push(("npm_config_cafile", bundle.clone().into_os_string()));
                    env.push(("NODE_EXTRA_CA_CERTS", bundle.clone().into_os_string()));
                }
                let mut display = format!("npm {}", args.join(" "));
                if let Some(url) = &self.config.npm_registry {
                    display.push_str(&format!(" (registry {})", redact_url(url)));
                }
                let install = Install {
                    display,
                    what: "npm install",
                    argv,
                    env,
                };
                let progress = format!(
                    "==> installing {dependencies} dependenc{} with npm\n",
                    if dependencies == 1 { "y" } else { "ies" }
                );
                let egress = egress::host_port(&self.config.effective_npm_registry())
                    .into_iter()
                    .collect();
                Ok(Some(PreparedInstall {
                    progress,
                    host,
                    install,
                    egress,
                    tool_dirs: npm.dirs.clone(),
                    path_dirs: vec![npm.node_dir.clone()],
                    ca_bundle,
                }))
            }
        }
    }

    /// Writes the files, runs the install, and checks the result; returns the
    /// artifact's size.
    async fn fill(
        &self,
        staging: &Path,
        source: &Source,
        handler: &source::HandlerFile,
        install: Option<PreparedInstall>,
        deadline: Instant,
        log: &dyn BuildLog,
    ) -> Result<u64> {
        let dir = staging.to_path_buf();
        let files = source.clone();
        let executable = handler.executable.then(|| handler.path.clone());
        let written = blocking(move || source::write_files(&dir, &files, executable.as_deref()))
            .await
            .map_err(|e| io_error("writing the uploaded files", staging, e))?;
        log.append(&format!(
            "==> wrote {} file{} ({})\n",
            source.files.len(),
            plural(source.files.len()),
            human_size(written)
        ))
        .await;

        if let Some(prepared) = install {
            log.append(&prepared.progress).await;
            let proxy = match egress::EgressProxy::start(prepared.egress.clone()) {
                Ok(proxy) => proxy,
                Err(e) => {
                    // The build log says what broke; the message is the host's, not the
                    // tenant's doing.
                    log.append(&format!("==> cannot start the package index proxy: {e}\n"))
                        .await;
                    return Err(Error::Unavailable(format!(
                        "cannot start the package index proxy for the install: {e}"
                    )));
                }
            };
            log.append(&format!(
                "==> network: only {} (through a proxy)\n",
                prepared.egress.join(", ")
            ))
            .await;
            let sandbox = InstallSandbox {
                host: &prepared.host,
                tool_dirs: prepared.tool_dirs,
                path_dirs: prepared.path_dirs,
                staging,
                ca_bundle: prepared.ca_bundle.as_deref(),
                limits: self.config.limits,
                egress_dir: Some(proxy.dir()),
            };
            sandbox
                .run(&prepared.install, log, deadline, self.config.build_timeout)
                .await?;
        }

        let dir = staging.to_path_buf();
        let limit = self.config.max_artifact_bytes;
        let checked = blocking(move || check_tree(&dir, limit))
            .await
            .map_err(|e| io_error("checking the artifact", staging, e))?;
        checked.map_err(Error::BuildFailed)
    }
}

#[async_trait]
impl Builder for LocalBuilder {
    fn name(&self) -> &str {
        "local"
    }

    async fn build(
        &self,
        version: &FunctionVersion,
        source: &Source,
        log: &dyn BuildLog,
    ) -> Result<Artifact> {
        let result = self.build_version(version, source, log).await;
        if let Err(e) = &result {
            let message = e.public_message();
            let first = message.lines().next().unwrap_or_default();
            log.append(&format!("==> build failed: {first}\n")).await;
            if matches!(
                e,
                Error::Internal(_) | Error::Storage(_) | Error::Unavailable(_)
            ) {
                tracing::warn!(
                    function_id = %version.function_id,
                    version = version.version,
                    error = %e,
                    "build failed"
                );
            }
        }
        result
    }

    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        let path = match artifact {
            Artifact::Directory { path, .. } => PathBuf::from(path),
            Artifact::Image { .. } => {
                return Err(Error::invalid(
                    "the local builder makes directory artifacts; it cannot remove an image",
                ))
            }
        };
        let root = self.root().await?.to_path_buf();
        let outside = || {
            Error::invalid(format!(
                "'{}' is not an artifact of this builder",
                truncate_for_message(&path.to_string_lossy())
            ))
        };
        let rel = path.strip_prefix(&root).map_err(|_| outside())?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(outside)?;
        let [function_id, version] = parts[..] else {
            return Err(outside());
        };
        let is_version = |v: &str| {
            v.strip_prefix('v')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if check_function_id(function_id).is_err() || !is_version(version) {
            return Err(outside());
        }
        let function_dir = root.join(function_id);
        let target = path.clone();
        blocking(move || {
            // Only real directories: never follow a symlink out of the artifacts tree.
            match fs::symlink_metadata(&function_dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(io::Error::other(
                        "the function directory is not a directory",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => remove_tree(&target)?,
                Ok(_) => return Err(io::Error::other("the artifact is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // The function's directory goes once its last version has.
            let _ = fs::remove_dir(&function_dir);
            Ok(())
        })
        .await
        .map_err(|e| io_error("removing the artifact", &path, e))
    }
}

/// A staging directory, removed unless committed: explicitly on failure, and in
/// `Drop` when the build is cancelled.
#[derive(Debug)]
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Staging {
    async fn create(function_dir: &Path, version: u32) -> Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let path = function_dir.join(format!(".v{version}.staging-{}", &suffix[..12]));
        let (dir, staging) = (function_dir.to_path_buf(), path.clone());
        blocking(move || {
            fs::create_dir_all(&dir)?;
            fs::create_dir(&staging)?;
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
        })
        .await
        .map_err(|e| io_error("creating the staging directory", &path, e))?;
        Ok(Staging { path, armed: true })
    }

    async fn discard(mut self) {
        self.armed = false;
        let path = self.path.clone();
        if let Err(e) = blocking(move || remove_tree(&path)).await {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a staging directory");
        }
    }

    /// Renames the staging directory to `target`. A directory already there (a
    /// rebuild of the same version) is moved aside first and removed after.
    async fn commit(mut self, target: &Path, log: &dyn BuildLog) -> Result<()> {
        let staging = self.path.clone();
        let target_owned = target.to_path_buf();
        let replaced = blocking(move || {
            let aside = match fs::symlink_metadata(&target_owned) {
                Ok(_) => {
                    let name = target_owned
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy();
                    let suffix = uuid::Uuid::new_v4().simple().to_string();
                    let aside =
                        target_owned.with_file_name(format!(".{name}.replaced-{}", &suffix[..12]));
                    fs::rename(&target_owned, &aside)?;
                    Some(aside)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if let Err(e) = fs::rename(&staging, &target_owned) {
                if let Some(aside) = &aside {
                    let _ = fs::rename(aside, &target_owned);
                }
                return Err(e);
            }
            // Make the rename durable before the version is reported ready; if that
            // fails, the build fails and leaves things as they were.
            let synced = target_owned
                .parent()
                .map_or(Ok(()), |parent| fs::File::open(parent)?.sync_all());
            if let Err(e) = synced {
                let _ = remove_tree(&target_owned);
                if let Some(aside) = &aside {
                    let _ = fs::rename(aside, &target_owned);
                }
                return Err(e);
            }
            if let Some(aside) = &aside {
                // The new artifact is in place; a leftover is swept by
                // `remove_stale_staging`.
                if let Err(e) = remove_tree(aside) {
                    tracing::warn!(path = %aside.display(), error = %e, "cannot remove a replaced artifact");
                }
            }
            Ok(aside.is_some())
        })
        .await;
        match replaced {
            Ok(replaced) => {
                self.armed = false;
                if replaced {
                    log.append("==> replaced an earlier artifact of this version\n")
                        .await;
                }
                Ok(())
            }
            Err(e) => {
                self.discard().await;
                Err(io_error("moving the artifact into place", target, e))
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("blocking task failed: {e}"))))
}

fn io_error(context: &str, path: &Path, e: io::Error) -> Error {
    Error::Internal(format!("{context} ({}): {e}", path.display()))
}

/// Removes a tree, making directories writable first if a plain removal fails (an
/// install can leave read-only directories).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let mut stack = vec![path.to_path_buf()];
            while let Some(dir) = stack.pop() {
                if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                    for entry in fs::read_dir(&dir)? {
                        let entry = entry?;
                        if entry.file_type()?.is_dir() {
                            stack.push(entry.path());
                        }
                    }
                }
            }
            fs::remove_dir_all(path)
        }
    }
}

/// Walks the staging tree (never following symlinks): sums file sizes against
/// `limit`, refuses symlinks that leave the tree and special files, clears setuid,
/// setgid and group/other write bits, and syncs every file and directory to disk.
/// The inner `Err` is why the artifact is refused.
fn check_tree(root: &Path, limit: u64) -> io::Result<std::result::Result<u64, String>> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let shown = || truncate_for_message(&rel.to_string_lossy());
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(&path)?;
                if !symlink_stays_inside(&rel, &target) {
                    return Ok(Err(format!(
                        "the install left a symlink that points outside the artifact: {} -> {}",
                        shown(),
                        truncate_for_message(&target.to_string_lossy())
                    )));
                }
                continue;
            }
            if !kind.is_dir() && !kind.is_file() {
                return Ok(Err(format!(
                    "the install left a special file (device, socket or pipe): {}",
                    shown()
                )));
            }
            let mode = meta.permissions().mode() & 0o7777;
            let wanted = if kind.is_dir() {
                (mode & 0o755) | 0o700
            } else {
                (mode & 0o755) | 0o400
            };
            if wanted != mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(wanted))?;
            }
            if kind.is_dir() {
                stack.push(path);
            } else {
                total += meta.len();
                if total > limit {
                    return Ok(Err(format!(
                        "the artifact is larger than the limit of {}",
                        human_size(limit)
                    )));
                }
                fs::File::open(&path)?.sync_all()?;
            }
        }
        fs::File::open(&dir)?.sync_all()?;
    }
    Ok(Ok(total))
}

/// Whether a symlink at `link` (relative to the artifact root) to `target` resolves,
/// lexically, inside the artifact.
fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.components().count().saturating_sub(1) as isize;
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Checks a binary handler: an ELF executable for this machine; logs whether it is
/// static or dynamic.
async fn check_binary(path: &str, bytes: &[u8], log: &dyn BuildLog) -> Result<()> {
    let info = elf::inspect(bytes).map_err(|why| {
        Error::BuildFailed(format!(
            "handler '{}' {why}; the binary runtime runs Linux executables",
            truncate_for_message(path)
        ))
    })?;
    if let Some(host) = elf::host_machine() {
        if info.machine != host {
            return Err(Error::BuildFailed(format!(
                "handler '{}' is built for {}; this machine runs {} executables",
                truncate_for_message(path),
                elf::machine_name(info.machine),
                elf::machine_name(host)
            )));
        }
    }
    match info.interpreter {
        Some(interpreter) => {
            log.append(&format!(
                "==> warning: {path} is dynamically linked (interpreter {interpreter}); it runs \
                 where the host's libraries are visible, as in the process backend, and fails \
                 where they are not: link it statically to run anywhere\n"
            ))
            .await
        }
        None => {
            log.append(&format!("==> {path} is a statically linked executable\n"))
                .await
        }
    }
    Ok(())
}

/// A function id names a directory: 1 to 128 characters of `[A-Za-z0-9_-]`.
fn check_function_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "function id '{}' cannot name a directory",
            truncate_for_message(id)
        )))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1.2 MiB`, `340 KiB`, `12 B`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(340 * 1024), "340 KiB");
        assert_eq!(human_size(1_258_291), "1.2 MiB");
    }

    #[test]
    fn symlinks_must_stay_inside() {
        let inside = |l: &str, t: &str| symlink_stays_inside(Path::new(l), Path::new(t));
        assert!(inside("node_modules/.bin/x", "../x/bin/x.js"));
        assert!(inside("a", "b"));
        assert!(!inside("a", "../b"));
        assert!(!inside("node_modules/.bin/x", "../../../etc/passwd"));
        assert!(!inside("a", "/etc/passwd"));
    }

    #[test]
    fn function_ids_name_directories() {
        assert!(check_function_id("fn_0123abc").is_ok());
        for bad in ["", "..", "a/b", "a.b", &"x".repeat(129)] {
            assert!(check_function_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trees_are_checked() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), vec![0u8; 100]).unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o4777)).unwrap();
        symlink("f", root.join("d/ok")).unwrap();
        assert_eq!(check_tree(root, 1000).unwrap(), Ok(100));
        let mode = fs::metadata(root.join("d/f")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        assert!(check_tree(root, 99)
            .unwrap()
            .unwrap_err()
            .contains("larger"));
        symlink("/etc/passwd", root.join("d/bad")).unwrap();
        assert!(check_tree(root, 1000)
            .unwrap()
            .unwrap_err()
            .contains("outside"));
    }
}
