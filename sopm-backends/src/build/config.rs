//! [`LocalBuilderConfig`]: where artifacts go, which tools install dependencies, and
//! the bounds of a build.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sopm_core::{Error, Result};

use super::limits::BuildLimits;
use super::LocalBuilder;
use crate::host::vars::{parse_var, path_var};

/// The default package index of npm, against which lockfiles are checked.
pub(crate) const NPM_DEFAULT_REGISTRY: &str = "https://registry.npmjs.org/";

/// Settings of a [`LocalBuilder`].
///
/// ```no_run
/// # fn demo() -> sopm_core::Result<()> {
/// use std::time::Duration;
/// use sopm_backends::LocalBuilderConfig;
///
/// let builder = LocalBuilderConfig::new("/var/lib/sopm/artifacts")
///     .with_build_timeout(Duration::from_secs(300))
///     .with_pip_index_url("https://pypi.example.internal/simple")
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalBuilderConfig {
    pub(crate) artifacts_dir: PathBuf,
    pub(crate) bwrap: Option<PathBuf>,
    pub(crate) python3: Option<PathBuf>,
    pub(crate) node: Option<PathBuf>,
    pub(crate) npm: Option<PathBuf>,
    pub(crate) build_timeout: Duration,
    pub(crate) max_artifact_bytes: u64,
    pub(crate) allow_network_for_deps: bool,
    pub(crate) pip_index_url: Option<String>,
    pub(crate) pip_only_binary: bool,
    pub(crate) npm_registry: Option<String>,
    pub(crate) ca_bundle: Option<PathBuf>,
    pub(crate) max_concurrent_builds: usize,
    pub(crate) limits: BuildLimits,
}

impl LocalBuilderConfig {
    /// Artifacts under `artifacts_dir` (created on the first build if missing), with
    /// defaults: `bwrap`, `python3`, `node` and `npm` looked up on `PATH` when a build
    /// first needs them (pip runs as `python3 -m pip`), a 10 minute limit per build,
    /// artifacts of at most 512 MiB, dependency installs allowed to reach the package
    /// indexes, pip's and npm's default indexes, the system CA bundle when one is
    /// found, 2 builds at once, and installs bounded to 1 GiB of memory, 256
    /// processes, 300 s of CPU time per process and 512 MiB written.
    pub fn new(artifacts_dir: impl AsRef<Path>) -> Self {
        LocalBuilderConfig {
            artifacts_dir: artifacts_dir.as_ref().to_path_buf(),
            bwrap: None,
            python3: None,
            node: None,
            npm: None,
            build_timeout: Duration::from_secs(600),
            max_artifact_bytes: 512 << 20,
            allow_network_for_deps: true,
            pip_index_url: None,
            pip_only_binary: false,
            npm_registry: None,
            ca_bundle: None,
            max_concurrent_builds: 2,
            limits: BuildLimits {
                memory_bytes: 1 << 30,
                max_processes: 256,
                cpu_time: Duration::from_secs(300),
                disk_bytes: 512 << 20,
            },
        }
    }

    /// [`new`](Self::new) with defaults overridden by environment variables:
    /// `SOPM_BUILD_TIMEOUT_SECS`, `SOPM_BUILD_MEMORY_MB`, `SOPM_BUILD_MAX_PROCESSES`,
    /// `SOPM_BUILD_CPU_SECS`, `SOPM_BUILD_DISK_MB`, `SOPM_BUILD_MAX_ARTIFACT_MB`,
    /// `SOPM_BUILD_CONCURRENCY`, `SOPM_BUILD_PIP_INDEX_URL`, `SOPM_BUILD_NPM_REGISTRY`,
    /// `SOPM_BUILD_CA_BUNDLE` and `SOPM_BUILD_PIP_ONLY_BINARY` (`true`/`false`). An
    /// unparsable value is `invalid_input` naming the variable.
    pub fn from_env(artifacts_dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_vars(artifacts_dir, |k| std::env::var(k).ok())
    }

    fn from_vars(
        artifacts_dir: impl AsRef<Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut c = Self::new(artifacts_dir);
        if let Some(secs) = parse_var::<u64>(&var, "SOPM_BUILD_TIMEOUT_SECS")? {
            c.build_timeout = Duration::from_secs(secs);
        }
        if let Some(mb) = parse_var::<u64>(&var, "SOPM_BUILD_MEMORY_MB")? {
            c.limits.memory_bytes = mb << 20;
        }
        if let Some(n) = parse_var(&var, "SOPM_BUILD_MAX_PROCESSES")? {
            c.limits.max_processes = n;
        }
        if let Some(secs) = parse_var::<u64>(&var, "SOPM_BUILD_CPU_SECS")? {
            c.limits.cpu_time = Duration::from_secs(secs);
        }
        if let Some(mb) = parse_var::<u64>(&var, "SOPM_BUILD_DISK_MB")? {
            c.limits.disk_bytes = mb << 20;
        }
        if let Some(mb) = parse_var::<u64>(&var, "SOPM_BUILD_MAX_ARTIFACT_MB")? {
            c.max_artifact_bytes = mb << 20;
        }
        if let Some(n) = parse_var(&var, "SOPM_BUILD_CONCURRENCY")? {
            c.max_concurrent_builds = n;
        }
        if let Some(only) = parse_var(&var, "SOPM_BUILD_PIP_ONLY_BINARY")? {
            c.pip_only_binary = only;
        }
        c.pip_index_url = var("SOPM_BUILD_PIP_INDEX_URL")
            .filter(|v| !v.is_empty())
            .or(c.pip_index_url);
        c.npm_registry = var("SOPM_BUILD_NPM_REGISTRY")
            .filter(|v| !v.is_empty())
            .or(c.npm_registry);
        c.ca_bundle = path_var(&var, "SOPM_BUILD_CA_BUNDLE").or(c.ca_bundle);
        Ok(c)
    }

    /// The `bwrap` executable that sandboxes dependency installs.
    pub fn with_bwrap(mut self, path: impl AsRef<Path>) -> Self {
        self.bwrap = Some(path.as_ref().to_path_buf());
        self
    }

    /// The Python interpreter whose pip installs `requirements.txt`. A venv's
    /// interpreter works; so does a version-manager shim (it is resolved to the real
    /// interpreter once, outside the sandbox).
    pub fn with_python3(mut self, path: impl AsRef<Path>) -> Self {
        self.python3 = Some(path.as_ref().to_path_buf());
        self
    }

    /// The `node` executable that runs npm.
    pub fn with_node(mut self, path: impl AsRef<Path>) -> Self {
        self.node = Some(path.as_ref().to_path_buf());
        self
    }

    /// The `npm` executable (or its `npm-cli.js`).
    pub fn with_npm(mut self, path: impl AsRef<Path>) -> Self {
        self.npm = Some(path.as_ref().to_path_buf());
        self
    }

    /// Longest a build may take, dependency installs included (default 10 minutes).
    /// Past it the install sandbox is killed and the build fails.
    pub fn with_build_timeout(mut self, timeout: Duration) -> Self {
        self.build_timeout = timeout;
        self
    }

    /// Largest artifact, in bytes, files and installed dependencies together (default
    /// 512 MiB), checked after the install.
    pub fn with_max_artifact_bytes(mut self, bytes: u64) -> Self {
        self.max_artifact_bytes = bytes;
        self
    }

    /// Whether dependency installs may use the network (default `true`: the package
    /// index must be reachable). With `false`, a function that declares dependencies
    /// fails to build; functions without dependencies still build.
    pub fn with_allow_network_for_deps(mut self, allow: bool) -> Self {
        self.allow_network_for_deps = allow;
        self
    }

    /// The index pip installs from (`--index-url`), instead of PyPI. Credentials in the
    /// URL are kept out of `Debug` output and build logs, but code that runs during
    /// the install (an sdist's build) can read them.
    pub fn with_pip_index_url(mut self, url: impl Into<String>) -> Self {
        self.pip_index_url = Some(url.into());
        self
    }

    /// Whether pip may only install wheels (`--only-binary=:all:`, default `false`).
    /// With `true`, no package's build code runs during an install.
    pub fn with_pip_only_binary(mut self, only_binary: bool) -> Self {
        self.pip_only_binary = only_binary;
        self
    }

    /// The registry npm installs from, instead of `https://registry.npmjs.org/`.
    /// Uploaded lockfiles must resolve every package from it.
    pub fn with_npm_registry(mut self, url: impl Into<String>) -> Self {
        self.npm_registry = Some(url.into());
        self
    }

    /// The CA bundle pip and npm trust (default: the system bundle, when one is found
    /// at a usual place).
    pub fn with_ca_bundle(mut self, path: impl AsRef<Path>) -> Self {
        self.ca_bundle = Some(path.as_ref().to_path_buf());
        self
    }

    /// Most memory a dependency install may use, its tmpfs included (default 1 GiB).
    /// Enforced with a cgroup where the host has a writable one; an install that
    /// reaches it is stopped and the build fails saying so.
    pub fn with_build_memory_bytes(mut self, bytes: u64) -> Self {
        self.limits.memory_bytes = bytes;
        self
    }

    /// Most processes and threads a dependency install may run at once (default 256).
    /// Enforced with a cgroup where the host has a writable one (`RLIMIT_NPROC` does
    /// not bind root); an install that reaches it is stopped.
    pub fn with_build_max_processes(mut self, processes: u64) -> Self {
        self.limits.max_processes = processes;
        self
    }

    /// CPU time each process of a dependency install may use (default 300 s,
    /// `RLIMIT_CPU`); a process past it is killed and the build fails saying so.
    pub fn with_build_cpu_time(mut self, cpu: Duration) -> Self {
        self.limits.cpu_time = cpu;
        self
    }

    /// Bytes a dependency install may write (default 512 MiB): it works in a tmpfs of
    /// this size (its directory, `TMPDIR` and home), copied to the artifact only when
    /// it succeeds, so the host's disk is never filled by an install.
    pub fn with_build_disk_bytes(mut self, bytes: u64) -> Self {
        self.limits.disk_bytes = bytes;
        self
    }

    /// Most builds running at once (default 2); further builds wait for a slot.
    pub fn with_max_concurrent_builds(mut self, builds: usize) -> Self {
        self.max_concurrent_builds = builds;
        self
    }

    /// The directory artifacts are written under.
    pub fn artifacts_dir(&self) -> &Path {
        &self.artifacts_dir
    }

    /// The npm registry in effect, ending with `/`.
    pub(crate) fn effective_npm_registry(&self) -> String {
        let mut url = self
            .npm_registry
            .clone()
            .unwrap_or_else(|| NPM_DEFAULT_REGISTRY.to_string());
        if !url.ends_with('/') {
            url.push('/');
        }
        url
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.artifacts_dir.as_os_str().is_empty() {
            return Err(Error::invalid("local builder: artifacts_dir is empty"));
        }
        if self.build_timeout.is_zero() {
            return Err(Error::invalid(
                "local builder: build_timeout must be above zero",
            ));
        }
        if self.max_artifact_bytes == 0 {
            return Err(Error::invalid(
                "local builder: max_artifact_bytes must be above zero",
            ));
        }
        if self.limits.memory_bytes < 16 << 20 {
            return Err(Error::invalid(
                "local builder: build memory must be at least 16 MiB",
            ));
        }
        if self.limits.max_processes < 4 {
            return Err(Error::invalid(
                "local builder: build max_processes must be at least 4",
            ));
        }
        if self.limits.cpu_time < Duration::from_secs(1) {
            return Err(Error::invalid(
                "local builder: build CPU time must be at least 1 s",
            ));
        }
        if self.limits.disk_bytes < 1 << 20 {
            return Err(Error::invalid(
                "local builder: build disk must be at least 1 MiB",
            ));
        }
        if self.max_concurrent_builds == 0 {
            return Err(Error::invalid(
                "local builder: max_concurrent_builds must be at least 1",
            ));
        }
        for (what, path) in [
            ("bwrap", &self.bwrap),
            ("python3", &self.python3),
            ("node", &self.node),
            ("npm", &self.npm),
            ("ca_bundle", &self.ca_bundle),
        ] {
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(Error::invalid(format!(
                        "local builder: {what} must be an absolute path"
                    )));
                }
            }
        }
        for (what, url) in [
            ("pip_index_url", &self.pip_index_url),
            ("npm_registry", &self.npm_registry),
        ] {
            if let Some(u) = url {
                check_index_url(u)
                    .map_err(|why| Error::invalid(format!("local builder: {what} {why}")))?;
            }
        }
        Ok(())
    }

    /// Checks the settings (no I/O: tools are looked up when a build first needs them)
    /// and makes the builder.
    pub fn build(self) -> Result<LocalBuilder> {
        self.validate()?;
        Ok(LocalBuilder::from_config(self))
    }
}

fn check_index_url(url: &str) -> std::result::Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    if rest.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be an http:// or https:// URL without spaces");
    }
    Ok(())
}

/// `url` with any `user:password@` replaced, for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl fmt::Debug for LocalBuilderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBuilderConfig")
            .field("artifacts_dir", &self.artifacts_dir)
            .field("bwrap", &self.bwrap)
            .field("python3", &self.python3)
            .field("node", &self.node)
            .field("npm", &self.npm)
            .field("build_timeout", &self.build_timeout)
            .field("max_artifact_bytes", &self.max_artifact_bytes)
            .field("allow_network_for_deps", &self.allow_network_for_deps)
            .field(
                "pip_index_url",
                &self.pip_index_url.as_deref().map(redact_url),
            )
            .field("pip_only_binary", &self.pip_only_binary)
            .field(
                "npm_registry",
                &self.npm_registry.as_deref().map(redact_url),
            )
            .field("ca_bundle", &self.ca_bundle)
            .field("max_concurrent_builds", &self.max_concurrent_builds)
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(LocalBuilderConfig::new("/tmp/a").validate().is_ok());
    }

    #[test]
    fn bad_settings_are_refused() {
        let base = || LocalBuilderConfig::new("/tmp/a");
        assert!(LocalBuilderConfig::new("").validate().is_err());
        assert!(base()
            .with_build_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(base().with_max_artifact_bytes(0).validate().is_err());
        assert!(base().with_max_concurrent_builds(0).validate().is_err());
        assert!(base().with_bwrap("bwrap").validate().is_err());
        assert!(base().with_pip_index_url("ftp://x").validate().is_err());
        assert!(base().with_npm_registry("https://").validate().is_err());
        assert!(base()
            .with_pip_index_url("https://u:p@pypi.example/simple")
            .validate()
            .is_ok());
    }

    #[test]
    fn variables_override_the_defaults() {
        let c = LocalBuilderConfig::from_vars("/a", |k| {
            match k {
                "SOPM_BUILD_MEMORY_MB" => Some("256"),
                "SOPM_BUILD_MAX_PROCESSES" => Some("32"),
                "SOPM_BUILD_CPU_SECS" => Some("20"),
                "SOPM_BUILD_DISK_MB" => Some("64"),
                "SOPM_BUILD_TIMEOUT_SECS" => Some("90"),
                "SOPM_BUILD_PIP_INDEX_URL" => Some("https://pypi.example/simple"),
                "SOPM_BUILD_CA_BUNDLE" => Some("/etc/ca.pem"),
                _ => None,
            }
            .map(String::from)
        })
        .unwrap();
        assert_eq!(c.limits.memory_bytes, 256 << 20);
        assert_eq!(c.limits.max_processes, 32);
        assert_eq!(c.limits.cpu_time, Duration::from_secs(20));
        assert_eq!(c.limits.disk_bytes, 64 << 20);
        assert_eq!(c.build_timeout, Duration::from_secs(90));
        assert_eq!(
            c.pip_index_url.as_deref(),
            Some("https://pypi.example/simple")
        );
        assert_eq!(c.ca_bundle.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert!(c.validate().is_ok());
        let e = LocalBuilderConfig::from_vars("/a", |k| {
            (k == "SOPM_BUILD_MEMORY_MB").then(|| "lots".to_string())
        })
        .unwrap_err();
        assert!(e.to_string().contains("SOPM_BUILD_MEMORY_MB"), "{e}");
        assert!(LocalBuilderConfig::new("/a")
            .with_build_max_processes(1)
            .validate()
            .is_err());
    }

    #[test]
    fn credentials_stay_out_of_debug() {
        let c = LocalBuilderConfig::new("/tmp/a")
            .with_pip_index_url("https://user:s3cret@pypi.example/simple")
            .with_npm_registry("https://tok@npm.example/");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("tok@"),
            "{shown}"
        );
        assert!(shown.contains("https://***@pypi.example/simple"));
    }

    #[test]
    fn registry_ends_with_a_slash() {
        let c = LocalBuilderConfig::new("/a").with_npm_registry("https://npm.example/r");
        assert_eq!(c.effective_npm_registry(), "https://npm.example/r/");
        assert_eq!(
            LocalBuilderConfig::new("/a").effective_npm_registry(),
            NPM_DEFAULT_REGISTRY
        );
    }
}
