//! The server's data directory is private to the user it runs as: created `0700`,
//! and narrowed to `0700` at start if an older server (or someone) left it wider.

use std::path::Path;

/// Creates the data directory `0700` if it is missing, or narrows it to `0700`.
pub fn make_private(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", dir.display());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create data directory", e))?;
        let mode = std::fs::metadata(dir)
            .map_err(|e| fail("read data directory", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail("make private the data directory", e))?;
            tracing::warn!(
                data_dir = %dir.display(),
                was = format!("{:o}", mode & 0o777),
                "the data directory was readable by others; it is now 0700"
            );
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    Ok(())
}
