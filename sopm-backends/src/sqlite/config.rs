//! [`SqliteConfig`]: where the database lives and how it writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sopm_core::{Error, Result};

use super::error::io_error;
use super::SqliteStore;

/// How hard SQLite works to make each commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is synced to disk before it is acknowledged: an acknowledged job
    /// survives a crash of the process and a loss of power. The default.
    #[default]
    Full,
    /// Commits are synced at checkpoints only. In WAL mode the database never
    /// corrupts and an acknowledged job survives a crash of the process, but the last
    /// commits can be lost on a power failure or an OS crash. Faster where syncs are
    /// slow.
    Normal,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Settings of a [`SqliteStore`]: one database file holding the function registry
/// and the job records.
///
/// ```no_run
/// # fn demo() -> sopm_core::Result<()> {
/// use std::time::Duration;
/// use sopm_backends::SqliteConfig;
///
/// let store = SqliteConfig::new("/var/lib/sopm/sopm.db")
///     .with_job_retention(Duration::from_secs(3 * 24 * 3600))
///     .open()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub(crate) path: PathBuf,
    pub(crate) busy_timeout: Duration,
    pub(crate) synchronous: Synchronous,
    pub(crate) batch_size: usize,
    pub(crate) read_connections: usize,
    pub(crate) job_retention: Duration,
    pub(crate) retention_sweep_interval: Duration,
}

impl SqliteConfig {
    /// A database at `path` (created with its directories if missing), with defaults:
    /// 5 s busy timeout, `synchronous=FULL`, batches of up to 4096 writes per commit,
    /// 4 read connections, finished jobs kept 7 days.
    pub fn new(path: impl AsRef<Path>) -> Self {
        SqliteConfig {
            path: path.as_ref().to_path_buf(),
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Full,
            batch_size: 4096,
            read_connections: 4,
            job_retention: Duration::from_secs(7 * 24 * 3600),
            retention_sweep_interval: Duration::from_secs(60),
        }
    }

    /// How long a connection waits for a lock held by another connection (another
    /// process using the same file, a checkpoint) before failing.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How durable each commit is (default [`Synchronous::Full`]).
    pub fn with_synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Most writes committed together in one transaction (default 4096). Writes that
    /// arrive while a commit is syncing are committed together by the next one.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Most read connections (and so concurrent reads), default 4.
    pub fn with_read_connections(mut self, connections: usize) -> Self {
        self.read_connections = connections;
        self
    }

    /// How long finished jobs are kept, counted from when they finished (default 7
    /// days). A sweep in the writer, between batches, deletes older ones;
    /// `Duration::MAX` keeps them forever.
    pub fn with_job_retention(mut self, retention: Duration) -> Self {
        self.job_retention = retention;
        self
    }

    /// How often the retention sweep runs (default every minute).
    pub fn with_retention_sweep_interval(mut self, interval: Duration) -> Self {
        self.retention_sweep_interval = interval;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() || self.path.to_str() == Some(":memory:") {
            return Err(Error::invalid(
                "sqlite: the store needs a file path (WAL and its read connections share a file)",
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("sqlite: batch_size must be at least 1"));
        }
        if self.read_connections == 0 {
            return Err(Error::invalid(
                "sqlite: read_connections must be at least 1",
            ));
        }
        if self.retention_sweep_interval.is_zero() {
            return Err(Error::invalid(
                "sqlite: retention_sweep_interval must be above zero",
            ));
        }
        Ok(())
    }

    /// Opens the database: creates the file and its directories if needed, switches it
    /// to WAL, applies the schema migrations, opens one read connection, and starts the
    /// writer and checkpointer threads. Blocks on file I/O; call it at start-up (or
    /// from `spawn_blocking`).
    ///
    /// The database is private to its owner: a missing directory is created `0700`, the
    /// file `0600`, and an existing file (with its `-wal` and `-shm`, which SQLite
    /// creates with the file's mode) is narrowed to `0600`.
    pub fn open(self) -> Result<SqliteStore> {
        self.validate()?;
        self.make_files_private()?;
        SqliteStore::open(self)
    }

    #[cfg(unix)]
    fn make_files_private(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_error("creating the directory", dir))?;
            }
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io_error("creating the database file", &self.path))?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            let file = PathBuf::from(name);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.map_err(io_error("making the database private", &file))?,
            }
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn make_files_private(&self) -> Result<()> {
        Ok(())
    }
}
