//! The host paths every sandbox sees read-only: the top-level `/bin`, `/sbin` and `/lib*`
//! entries, the host files a runtime needs, and the name-resolution files of a sandbox
//! granted the network.

use std::path::{Path, PathBuf};

/// Host files bound read-only into every sandbox when present: the dynamic linker's
/// cache, the time zone and the CA certificates. An allow-list: never all of `/etc/ssl`
/// (`/etc/ssl/private` holds TLS keys), nor `/root`, `/home` or the server's data.
pub const HOST_FILES: [&str; 3] = ["/etc/ld.so.cache", "/etc/localtime", "/etc/ssl/certs"];

/// Where a host file of [`HOST_FILES`] or [`NETWORK_FILES`] may lead once its symlinks
/// are resolved: itself, or somewhere under `/usr` (`/etc/localtime` ->
/// `/usr/share/zoneinfo/..`).
const RESOLVED_UNDER: &str = "/usr";

/// The host files of `files` present here, as `(source, destination)` pairs for
/// read-only binds: each source is the file with its symlinks resolved, kept only if it
/// is still the file itself or lies under `/usr`, so that no bind can smuggle another
/// host path (a link to `/root`, say) into a sandbox.
pub fn host_binds(files: &[&str]) -> Vec<(PathBuf, PathBuf)> {
    files
        .iter()
        .filter_map(|f| {
            let at = Path::new(f);
            let real = std::fs::canonicalize(at).ok()?;
            let allowed = real == at || real.starts_with(RESOLVED_UNDER);
            if !allowed {
                tracing::warn!(
                    file = %at.display(),
                    resolved = %real.display(),
                    "not binding a host file that resolves outside /usr"
                );
            }
            allowed.then(|| (real, at.to_path_buf()))
        })
        .collect()
}

/// Host files bound read-only, when present, into a sandbox that keeps the host's network
/// (name resolution).
pub const NETWORK_FILES: [&str; 4] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
];

/// One of `/lib`, `/lib64`, `/bin`, `/sbin` on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopLevel {
    /// A symlink (merged /usr): recreated as the same symlink.
    Link(PathBuf, PathBuf),
    /// A real directory: bound read-only.
    Dir(PathBuf),
}

impl TopLevel {
    /// The host's `/bin`, `/sbin` and `/lib*` entries, as they are (missing ones left out).
    pub fn of_host() -> Vec<TopLevel> {
        let mut out = Vec::new();
        for d in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let p = Path::new(d);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(p) {
                        out.push(TopLevel::Link(target, p.to_path_buf()));
                    }
                }
                Ok(m) if m.is_dir() => out.push(TopLevel::Dir(p.to_path_buf())),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_listed_files_are_bound_and_links_stay_in_usr() {
        for f in HOST_FILES {
            assert!(!Path::new("/etc/ssl/private").starts_with(f), "{f}");
        }
        let dir = tempfile::tempdir().unwrap();
        let escape = dir.path().join("escape");
        std::os::unix::fs::symlink("/root", &escape).unwrap();
        let escape = escape.to_str().unwrap();
        let binds = host_binds(&[escape, "/etc/localtime", "/no/such/file"]);
        assert!(
            binds.iter().all(|(_, at)| at != Path::new(escape)),
            "{binds:?}"
        );
        assert!(binds.iter().all(|(src, _)| !src.starts_with("/root")));
        if Path::new("/etc/localtime").exists() {
            let (src, at) = &binds[0];
            assert_eq!(at, Path::new("/etc/localtime"));
            assert!(src.starts_with("/usr") || src == at, "{src:?}");
        }
    }
}
