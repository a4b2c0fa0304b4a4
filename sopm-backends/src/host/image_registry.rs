//! [`ImageRegistry`]: where an image builder pushes function images (a registry's
//! address, the repository, optional credentials), checked without I/O.

use sopm_core::{Error, Result};

/// The repository function images go to when none is configured.
pub const DEFAULT_REPOSITORY: &str = "sopm/functions";

/// A container registry that function images are pushed to and pulled from by digest:
/// `http://127.0.0.1:5000` (plain HTTP, which the Docker daemon allows for loopback
/// registries only, unless configured as `insecure-registries`) or `https://host[:port]`
/// (a bare `host[:port]` means HTTPS), plus a repository such as `sopm/functions`. The
/// password never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageRegistry {
    secure: bool,
    host: String,
    repository: String,
    username: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for ImageRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRegistry")
            .field("url", &self.url())
            .field("repository", &self.repository)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ImageRegistry {
    /// The registry at `url` (`http://host:port`, `https://host[:port]` or `host[:port]`)
    /// and `repository` (lower-case path components of letters, digits and `._-`,
    /// separated by `/`). Anything else is `invalid_input`.
    pub fn new(url: &str, repository: &str) -> Result<Self> {
        let url = url.trim();
        let (secure, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            (true, url)
        };
        let host = rest.trim_end_matches('/');
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if !valid_host {
            return Err(Error::invalid(format!(
                "the image registry '{url}' must be http://HOST:PORT or https://HOST[:PORT], without a path"
            )));
        }
        let valid_repository = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            });
        if !valid_repository {
            return Err(Error::invalid(format!(
                "the image repository '{repository}' must be lower-case path components (letters, digits, '.', '_', '-') separated by '/'"
            )));
        }
        Ok(ImageRegistry {
            secure,
            host: host.to_ascii_lowercase(),
            repository: repository.to_string(),
            username: None,
            password: None,
        })
    }

    /// Credentials for pushes, pulls and deletes (basic auth, or a token the registry's
    /// auth server takes).
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// `http://host:port` or `https://host[:port]`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.secure { "https" } else { "http" },
            self.host
        )
    }

    /// `host[:port]`, as image references name the registry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository (`sopm/functions`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The user name, if credentials are set.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, if credentials are set.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `host/repository`, the name of every function image in this registry.
    pub fn image_name(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }

    /// `SOPM_DOCKER_REGISTRY` (unset or empty: none), `SOPM_DOCKER_REPOSITORY` (default
    /// [`DEFAULT_REPOSITORY`]), `SOPM_DOCKER_REGISTRY_USER` and
    /// `SOPM_DOCKER_REGISTRY_PASSWORD`, read through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let Some(url) = set("SOPM_DOCKER_REGISTRY") else {
            return Ok(None);
        };
        let repository = set("SOPM_DOCKER_REPOSITORY").unwrap_or_else(|| DEFAULT_REPOSITORY.into());
        let mut registry = ImageRegistry::new(&url, repository.trim())?;
        match (
            set("SOPM_DOCKER_REGISTRY_USER"),
            set("SOPM_DOCKER_REGISTRY_PASSWORD"),
        ) {
            (Some(user), Some(password)) => registry = registry.with_credentials(user, password),
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    "SOPM_DOCKER_REGISTRY_USER and SOPM_DOCKER_REGISTRY_PASSWORD go together",
                ))
            }
        }
        Ok(Some(registry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_repositories_are_checked() {
        let r = ImageRegistry::new("http://127.0.0.1:5000/", "sopm/functions").unwrap();
        assert_eq!(r.url(), "http://127.0.0.1:5000");
        assert_eq!(r.image_name(), "127.0.0.1:5000/sopm/functions");
        let r = ImageRegistry::new("Registry.Example", "fns").unwrap();
        assert_eq!(r.url(), "https://registry.example");
        for (url, repo) in [
            ("http://h:1/v2", "a"),
            ("", "a"),
            ("h:1", "Upper"),
            ("h:1", "a//b"),
            ("h:1", "-a"),
        ] {
            let e = ImageRegistry::new(url, repo).unwrap_err();
            assert_eq!(e.code(), "invalid_input", "{url} {repo}");
        }
    }

    #[test]
    fn variables_and_a_redacted_password() {
        let vars = |k: &str| match k {
            "SOPM_DOCKER_REGISTRY" => Some("http://127.0.0.1:5000".to_string()),
            "SOPM_DOCKER_REGISTRY_USER" => Some("sopm".to_string()),
            "SOPM_DOCKER_REGISTRY_PASSWORD" => Some("hunter2".to_string()),
            _ => None,
        };
        let r = ImageRegistry::from_vars(vars).unwrap().unwrap();
        assert_eq!(r.repository(), DEFAULT_REPOSITORY);
        assert_eq!(r.password(), Some("hunter2"));
        assert!(!format!("{r:?}").contains("hunter2"));
        assert!(ImageRegistry::from_vars(|_| None).unwrap().is_none());
        let half = |k: &str| match k {
            "SOPM_DOCKER_REGISTRY" => Some("h:1".to_string()),
            "SOPM_DOCKER_REGISTRY_USER" => Some("sopm".to_string()),
            _ => None,
        };
        assert_eq!(
            ImageRegistry::from_vars(half).unwrap_err().code(),
            "invalid_input"
        );
    }
}
