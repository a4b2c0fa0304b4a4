//! The host paths every sandbox sees read-only: the top-level `/bin`, `/sbin` and `/lib*`
//! entries, the host files a runtime needs, and the name-resolution files of a sandbox
//! granted the network.

use std::path::{Path, PathBuf};

/// Host files bound read-only into every sandbox when present.
pub const HOST_FILES: [&str; 4] = [
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
];

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
