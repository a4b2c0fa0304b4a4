//! [`LocalBuilderConfig`]: where artifacts go, which tools install dependencies, and
//! the bounds of a build.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sopm_core::{Error, Result};

use super::LocalBuilder;

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
}

impl LocalBuilderConfig {
    /// Artifacts under `artifacts_dir` (created on the first build if missing), with
    /// defaults: `bwrap`, `python3`, `node` and `npm` looked up on `PATH` when a build
    /// first needs them (pip runs as `python3 -m pip`), a 10 minute limit per build,
    /// artifacts of at most 512 MiB, dependency installs allowed to reach the package
    /// indexes, pip's and npm's default indexes, the system CA bundle when one is
    /// found, and 2 builds at once.
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
        }
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
    /// 512 MiB). Also the size of the install sandbox's `/tmp` and home tmpfs.
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
